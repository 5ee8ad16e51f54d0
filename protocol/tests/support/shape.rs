//! The shape of a message as serde sees it: every struct's field names in order and
//! every enum variant's index, name and fields, gathered by a serializer that walks a
//! value without encoding it. The wire format is that shape (postcard writes fields in
//! order and variants by index), so comparing it with docs/protocol.md's tables checks
//! the document.

use std::collections::BTreeMap;
use std::fmt;

use serde::ser::{self, Serialize};

/// What an enum variant carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Carries {
    /// Nothing.
    Unit,
    /// One value: the struct of that name, or something else (`None`).
    Newtype(Option<&'static str>),
    /// Named fields, in order.
    Fields(Vec<&'static str>),
    /// Unnamed fields.
    Tuple(usize),
}

/// Every struct and enum variant seen.
#[derive(Debug, Default)]
pub(crate) struct Shapes {
    /// Struct name → field names in order.
    pub(crate) structs: BTreeMap<&'static str, Vec<&'static str>>,
    /// (enum name, variant index) → (variant name, what it carries).
    pub(crate) variants: BTreeMap<(&'static str, u32), (&'static str, Carries)>,
}

impl Shapes {
    /// Walks `value`, recording what it is made of.
    pub(crate) fn record<T: Serialize>(&mut self, value: &T) {
        value
            .serialize(Walker { shapes: self })
            .expect("every message walks");
    }
}

#[derive(Debug)]
pub(crate) struct Never;

impl fmt::Display for Never {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unsupported")
    }
}

impl std::error::Error for Never {}

impl ser::Error for Never {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Never
    }
}

/// Walks a value; what a compound value holds is walked too.
struct Walker<'a> {
    shapes: &'a mut Shapes,
}

/// The name of the struct a newtype variant holds, found by a walk that stops there.
struct StructName;

macro_rules! leaves {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method(self, _: $ty) -> Result<Self::Ok, Self::Error> {
            Ok(Default::default())
        }
    )*};
}

impl<'a> ser::Serializer for Walker<'a> {
    type Ok = ();
    type Error = Never;
    type SerializeSeq = Walker<'a>;
    type SerializeTuple = Walker<'a>;
    type SerializeTupleStruct = Walker<'a>;
    type SerializeTupleVariant = Walker<'a>;
    type SerializeMap = Walker<'a>;
    type SerializeStruct = Fields<'a>;
    type SerializeStructVariant = Fields<'a>;

    leaves!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    );

    fn serialize_none(self) -> Result<(), Never> {
        Ok(())
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Never> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Never> {
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<(), Never> {
        self.shapes
            .variants
            .insert((name, index), (variant, Carries::Unit));
        Ok(())
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Never> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Never> {
        let inner = value.serialize(StructName).ok().flatten();
        self.shapes
            .variants
            .insert((name, index), (variant, Carries::Newtype(inner)));
        value.serialize(self)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Walker<'a>, Never> {
        Ok(self)
    }

    fn serialize_tuple(self, _: usize) -> Result<Walker<'a>, Never> {
        Ok(self)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Walker<'a>, Never> {
        Ok(self)
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Walker<'a>, Never> {
        self.shapes
            .variants
            .insert((name, index), (variant, Carries::Tuple(len)));
        Ok(self)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Walker<'a>, Never> {
        Ok(self)
    }

    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Fields<'a>, Never> {
        Ok(Fields {
            shapes: self.shapes,
            owner: Owner::Struct(name),
            names: Vec::new(),
        })
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Fields<'a>, Never> {
        Ok(Fields {
            shapes: self.shapes,
            owner: Owner::Variant(name, index, variant),
            names: Vec::new(),
        })
    }
}

macro_rules! elements {
    ($($trait:ident::$method:ident),* $(,)?) => {$(
        impl ser::$trait for Walker<'_> {
            type Ok = ();
            type Error = Never;

            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Never> {
                value.serialize(Walker { shapes: self.shapes })
            }

            fn end(self) -> Result<(), Never> {
                Ok(())
            }
        }
    )*};
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl ser::SerializeMap for Walker<'_> {
    type Ok = ();
    type Error = Never;

    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), Never> {
        key.serialize(Walker {
            shapes: self.shapes,
        })
    }

    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Never> {
        value.serialize(Walker {
            shapes: self.shapes,
        })
    }

    fn end(self) -> Result<(), Never> {
        Ok(())
    }
}

enum Owner {
    Struct(&'static str),
    Variant(&'static str, u32, &'static str),
}

/// A struct's (or a struct variant's) fields, named and walked in order.
struct Fields<'a> {
    shapes: &'a mut Shapes,
    owner: Owner,
    names: Vec<&'static str>,
}

impl Fields<'_> {
    fn field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> Result<(), Never> {
        self.names.push(key);
        value.serialize(Walker {
            shapes: self.shapes,
        })
    }

    fn finish(self) {
        match self.owner {
            Owner::Struct(name) => {
                self.shapes.structs.insert(name, self.names);
            }
            Owner::Variant(name, index, variant) => {
                self.shapes
                    .variants
                    .insert((name, index), (variant, Carries::Fields(self.names)));
            }
        }
    }
}

impl ser::SerializeStruct for Fields<'_> {
    type Ok = ();
    type Error = Never;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Never> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Never> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeStructVariant for Fields<'_> {
    type Ok = ();
    type Error = Never;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Never> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Never> {
        self.finish();
        Ok(())
    }
}

macro_rules! not_a_struct {
    ($($method:ident($($ty:ty),*)),* $(,)?) => {$(
        fn $method(self, $(_: $ty),*) -> Result<Option<&'static str>, Never> {
            Ok(None)
        }
    )*};
}

impl ser::Serializer for StructName {
    type Ok = Option<&'static str>;
    type Error = Never;
    type SerializeSeq = ser::Impossible<Option<&'static str>, Never>;
    type SerializeTuple = ser::Impossible<Option<&'static str>, Never>;
    type SerializeTupleStruct = ser::Impossible<Option<&'static str>, Never>;
    type SerializeTupleVariant = ser::Impossible<Option<&'static str>, Never>;
    type SerializeMap = ser::Impossible<Option<&'static str>, Never>;
    type SerializeStruct = NameOnly;
    type SerializeStructVariant = ser::Impossible<Option<&'static str>, Never>;

    not_a_struct!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<Self::Ok, Never> {
        Ok(None)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<Self::Ok, Never> {
        Ok(None)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Self::Ok, Never> {
        Ok(None)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Never> {
        Err(Never)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Never> {
        Err(Never)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Never> {
        Err(Never)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Never> {
        Err(Never)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Never> {
        Err(Never)
    }

    fn serialize_struct(
        self,
        name: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, Never> {
        Ok(NameOnly(name))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Never> {
        Err(Never)
    }
}

/// A struct whose name is all that is wanted.
struct NameOnly(&'static str);

impl ser::SerializeStruct for NameOnly {
    type Ok = Option<&'static str>;
    type Error = Never;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        _: &'static str,
        _: &T,
    ) -> Result<(), Never> {
        Ok(())
    }

    fn end(self) -> Result<Self::Ok, Never> {
        Ok(Some(self.0))
    }
}
