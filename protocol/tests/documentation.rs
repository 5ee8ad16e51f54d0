//! docs/protocol.md agrees with the code: a client written from the document alone
//! encodes what the broker decodes. The test reads the document's tables of variants
//! (`ClientFrame`, `Op`, `ServerFrame`, `OpReply`) and its definitions of structs and
//! enums ("`Subscribe` is `pattern: String`, …"), walks messages of every kind with a
//! serializer that records each struct's fields in order and each variant's index
//! (`support/shape.rs`), and compares the two. A field the document leaves out, a
//! variant out of order, a renamed field: each fails here.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

#[path = "support/shape.rs"]
mod shape;
#[path = "support/strategies.rs"]
mod strategies;

use std::collections::BTreeMap;

use bytes::BytesMut;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use quiver_protocol::frame;
use shape::{Carries, Shapes};

fn document() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).unwrap()
}

/// Messages of every kind, walked: random ones until every variant of every enum the
/// tables list has been seen (deterministic: the runner's seed is fixed).
fn shapes() -> Shapes {
    let mut shapes = Shapes::default();
    let mut runner = TestRunner::deterministic();
    let client = strategies::client_frame();
    let server = strategies::server_frame();
    for _ in 0..20_000 {
        shapes.record(&client.new_tree(&mut runner).unwrap().current());
        shapes.record(&server.new_tree(&mut runner).unwrap().current());
    }
    shapes
}

/// The backticked spans of a table cell or sentence, in order.
fn spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The field names a cell or definition lists (`name: Type` spans, and bare `name`
/// spans followed by a shared `: Type` span), in order.
fn field_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for span in spans(text) {
        let name = span.split(':').next().unwrap_or_default().trim();
        let is_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if is_name {
            names.push(name.to_owned());
        }
    }
    names
}

/// A table's rows under `heading`: (index, variant, fields cell).
fn table(doc: &str, heading: &str) -> Vec<(u32, String, String)> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("docs/protocol.md has no `{heading}`"));
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in doc[start..].lines().skip(1) {
        if !line.starts_with('|') {
            if in_table {
                break;
            }
            continue;
        }
        in_table = true;
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let Ok(index) = cells[0].parse() else {
            continue; // the header and the rule
        };
        rows.push((
            index,
            cells[1].trim_matches('`').to_owned(),
            cells[2].to_owned(),
        ));
    }
    assert!(!rows.is_empty(), "a table under `{heading}`");
    rows
}

/// The definitions "`Name` is …" of the document: name → the text up to the end of
/// its sentence (a `.` or `;` outside backticks and parentheses).
fn definitions(doc: &str) -> BTreeMap<String, String> {
    let text = doc.replace('\n', " ");
    let mut found = BTreeMap::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("` is ") {
        let before = &rest[..at];
        let name = before.rsplit('`').next().unwrap_or_default().to_owned();
        let body = &rest[at + 5..];
        let (mut ticks, mut parens, mut end) = (0, 0, body.len());
        for (i, c) in body.char_indices() {
            match c {
                '`' => ticks += 1,
                '(' if ticks % 2 == 0 => parens += 1,
                ')' if ticks % 2 == 0 => parens -= 1,
                '.' | ';' if ticks % 2 == 0 && parens == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        found.entry(name).or_insert_with(|| body[..end].to_owned());
        rest = &body[end..];
    }
    found
}

#[test]
fn every_variant_in_the_tables_is_the_one_the_code_encodes() {
    let doc = document();
    let shapes = shapes();
    let tables = [
        ("### Client to broker: `ClientFrame`", "ClientFrame"),
        ("`Op`:", "Op"),
        ("### Broker to client: `ServerFrame`", "ServerFrame"),
        ("`OpReply`:", "OpReply"),
    ];
    let mut wrong = Vec::new();
    for (heading, enumeration) in tables {
        let rows = table(&doc, heading);
        let in_code = shapes
            .variants
            .keys()
            .filter(|(name, _)| *name == enumeration)
            .count();
        if rows.len() != in_code {
            wrong.push(format!(
                "{enumeration}: the document lists {} variants, the code has {in_code}",
                rows.len()
            ));
        }
        for (index, variant, cell) in rows {
            let Some((name, carries)) = shapes.variants.get(&(enumeration, index)) else {
                wrong.push(format!(
                    "{enumeration} {index} `{variant}`: no such variant"
                ));
                continue;
            };
            if *name != variant {
                wrong.push(format!(
                    "{enumeration} {index}: the document says `{variant}`, the code `{name}`"
                ));
            }
            let named = field_names(&cell);
            let expected: Option<Vec<String>> = match carries {
                Carries::Fields(fields) => Some(fields.iter().map(|f| (*f).to_owned()).collect()),
                Carries::Newtype(Some(inner)) if !named.is_empty() => shapes
                    .structs
                    .get(inner)
                    .map(|fields| fields.iter().map(|f| (*f).to_owned()).collect()),
                Carries::Newtype(Some(inner)) => {
                    // The cell names the type instead of its fields.
                    let first = spans(&cell).first().copied().unwrap_or_default();
                    if !first.starts_with(inner) && !first.starts_with("Vec<") {
                        wrong.push(format!(
                            "{enumeration}::{name} holds a `{inner}`; the document says `{first}`"
                        ));
                    }
                    None
                }
                Carries::Unit => {
                    if !cell.starts_with("none") {
                        wrong.push(format!(
                            "{enumeration}::{name} carries nothing; the document says `{cell}`"
                        ));
                    }
                    None
                }
                Carries::Newtype(None) | Carries::Tuple(_) => None,
            };
            if let Some(expected) = expected
                && named != expected
            {
                wrong.push(format!(
                    "{enumeration}::{name}: the document lists fields {named:?}, the code \
                     encodes {expected:?}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/protocol.md disagrees:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_defined_struct_and_enum_is_the_one_the_code_encodes() {
    let doc = document();
    let shapes = shapes();
    let definitions = definitions(&doc);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (name, fields) in &shapes.structs {
        let Some(text) = definitions.get(*name) else {
            continue;
        };
        checked += 1;
        let documented = field_names(text);
        let encoded: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
        if documented != encoded {
            wrong.push(format!(
                "`{name}`: the document lists {documented:?}, the code encodes {encoded:?}"
            ));
        }
    }
    // Enums defined as "`StartAt` is `0 Earliest`, `1 Latest`, …".
    let mut enums: BTreeMap<&str, BTreeMap<u32, &str>> = BTreeMap::new();
    for ((enumeration, index), (variant, _)) in &shapes.variants {
        enums
            .entry(enumeration)
            .or_default()
            .insert(*index, variant);
    }
    for (enumeration, variants) in &enums {
        let Some(text) = definitions.get(*enumeration) else {
            continue;
        };
        let documented: BTreeMap<u32, String> = spans(text)
            .into_iter()
            .filter_map(|span| {
                let (index, rest) = span.split_once(' ')?;
                let variant = rest.split([' ', '(', '{']).next()?;
                Some((index.parse().ok()?, variant.to_owned()))
            })
            .collect();
        if documented.is_empty() {
            continue;
        }
        checked += 1;
        let encoded: BTreeMap<u32, String> = variants
            .iter()
            .map(|(i, v)| (*i, (*v).to_owned()))
            .collect();
        if documented != encoded {
            wrong.push(format!(
                "`{enumeration}`: the document lists {documented:?}, the code encodes {encoded:?}"
            ));
        }
    }
    assert!(checked >= 20, "{checked} definitions found in the document");
    assert!(
        wrong.is_empty(),
        "docs/protocol.md disagrees:\n{}",
        wrong.join("\n")
    );
}

/// The encodings of the framing table, byte for byte.
#[test]
fn the_encoding_table_holds() {
    let body = |msg: &dyn erased::Encode| msg.body();
    assert_eq!(body(&true), [0x01]);
    assert_eq!(body(&false), [0x00]);
    assert_eq!(body(&7u8), [0x07]);
    assert_eq!(body(&300u32), [0xac, 0x02], "unsigned LEB128");
    assert_eq!(body(&"ab".to_owned()), [0x02, b'a', b'b']);
    assert_eq!(body(&Option::<u8>::None), [0x00]);
    assert_eq!(body(&Some(5u8)), [0x01, 0x05]);
    assert_eq!(body(&vec![1u8, 2]), [0x02, 0x01, 0x02]);
    assert_eq!(body(&Result::<u8, u8>::Ok(3)), [0x00, 0x03]);
    assert_eq!(body(&Result::<u8, u8>::Err(4)), [0x01, 0x04]);
}

mod erased {
    use super::*;

    /// A value encoded alone, as one message body.
    pub(super) trait Encode {
        fn body(&self) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn body(&self) -> Vec<u8> {
            let mut buf = BytesMut::new();
            frame::encode(self, &mut buf).unwrap();
            buf[frame::LENGTH_PREFIX_LEN..].to_vec()
        }
    }
}
