//! Write Quiver plugins in Rust.
//!
//! A plugin is a WebAssembly component implementing the `quiver:plugin` world
//! (`wit/quiver.wit` in this crate). This crate holds the generated bindings, a
//! [`Plugin`] trait with a per-event default, and [`export_plugin!`], so that a filter
//! is a few lines:
//!
//! ```no_run
//! use quiver_plugin_sdk::{Event, Outcome, Plugin, export_plugin};
//!
//! struct OnlyErrors;
//!
//! impl Plugin for OnlyErrors {
//!     fn on_event(_topic: &str, event: &Event) -> Outcome {
//!         if event.payload.starts_with(b"ERROR") { Outcome::Keep } else { Outcome::Drop }
//!     }
//! }
//!
//! export_plugin!(OnlyErrors);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release` (crate type `cdylib`) and
//! deploy the `.wasm` with `quiver plugin deploy`. docs/plugins.md walks through it.
//!
//! Host functions: [`param`], [`params`], [`now`], the [`log`] module and the [`state`]
//! module. A plugin reaches nothing else: any other import (files, sockets, environment,
//! clocks) traps.

#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export",
        default_bindings_module: "quiver_plugin_sdk::__bindings",
    });
}

use __bindings::quiver::plugin::host;
pub use __bindings::quiver::plugin::types::{Event, Header, NewEvent, Outcome};

/// A Quiver plugin. Implement [`Plugin::on_event`] to decide each event alone, or
/// [`Plugin::process`] to see the whole batch.
pub trait Plugin {
    /// What becomes of one event of `topic`. The default keeps it.
    fn on_event(topic: &str, event: &Event) -> Outcome {
        let _ = (topic, event);
        Outcome::Keep
    }

    /// Processes a batch: exactly one outcome per event, in order. The default calls
    /// [`Plugin::on_event`] for each. An `Err` fails the whole batch (every event goes
    /// to the dead-letter topic with the message).
    fn process(topic: String, events: Vec<Event>) -> Result<Vec<Outcome>, String> {
        Ok(events.iter().map(|e| Self::on_event(&topic, e)).collect())
    }
}

/// Exports a [`Plugin`] implementation as the component's `process` function.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        struct __QuiverPluginExport;

        impl $crate::__bindings::Guest for __QuiverPluginExport {
            fn process(
                topic: ::std::string::String,
                events: ::std::vec::Vec<$crate::Event>,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::Outcome>, ::std::string::String>
            {
                $crate::__report_panics();
                <$plugin as $crate::Plugin>::process(topic, events)
            }
        }

        $crate::__bindings::__export!(__QuiverPluginExport);
    };
}

/// Makes a panic log its message (as an error, which the broker attaches to the trap it
/// reports) instead of reaching for stderr and the environment, which plugins do not
/// have.
#[doc(hidden)]
pub fn __report_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            host::log(host::Level::Error, &info.to_string());
        }));
    });
}

impl NewEvent {
    /// A record with this payload and no key or headers.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self {
            key: None,
            headers: Vec::new(),
            payload: payload.into(),
        }
    }
}

impl Event {
    /// The first header with this name, if any.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_slice())
    }

    /// This event as a new record, to modify and return in [`Outcome::Replace`].
    pub fn to_new(&self) -> NewEvent {
        NewEvent {
            key: self.key.clone(),
            headers: self.headers.clone(),
            payload: self.payload.clone(),
        }
    }
}

/// The attachment's parameter `name` (`--param name=value`), if set.
pub fn param(name: &str) -> Option<String> {
    host::param(name)
}

/// Every parameter of the attachment, in no particular order.
pub fn params() -> Vec<(String, String)> {
    host::params()
}

/// The current time in ms since the Unix epoch (the only clock a plugin has).
pub fn now() -> u64 {
    host::now()
}

/// Logging into the broker's log, tagged with the plugin's name and version.
pub mod log {
    use super::host::{self, Level};

    /// Logs at debug level.
    pub fn debug(message: &str) {
        host::log(Level::Debug, message);
    }

    /// Logs at info level.
    pub fn info(message: &str) {
        host::log(Level::Info, message);
    }

    /// Logs at warn level.
    pub fn warn(message: &str) {
        host::log(Level::Warn, message);
    }

    /// Logs at error level.
    pub fn error(message: &str) {
        host::log(Level::Error, message);
    }
}

/// The plugin's key-value state: per plugin name, kept across restarts and upgrades,
/// and persisted together with the records of the call that changed it.
pub mod state {
    use super::host;

    /// The value under `key`, if any.
    pub fn get(key: &[u8]) -> Option<Vec<u8>> {
        host::state_get(key)
    }

    /// Sets `key` to `value`.
    pub fn set(key: &[u8], value: &[u8]) {
        host::state_set(key, value);
    }

    /// Removes `key`.
    pub fn delete(key: &[u8]) {
        host::state_delete(key);
    }
}

/// Helpers for JSON payloads (feature `json`).
#[cfg(feature = "json")]
pub mod json {
    use std::fmt;

    use serde::Deserialize;
    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
    pub use serde_json::{self, Value};

    /// The value at a dotted path (`meta.level`); array elements by index (`tags.0`).
    pub fn field<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
        path.split('.').try_fold(value, |v, token| match v {
            Value::Object(map) => map.get(token),
            Value::Array(items) => items.get(token.parse::<usize>().ok()?),
            _ => None,
        })
    }

    /// The value at a dotted path, mutably.
    pub fn field_mut<'v>(value: &'v mut Value, path: &str) -> Option<&'v mut Value> {
        path.split('.').try_fold(value, |v, token| match v {
            Value::Object(map) => map.get_mut(token),
            Value::Array(items) => items.get_mut(token.parse::<usize>().ok()?),
            _ => None,
        })
    }

    /// A value as text: strings as they are, everything else as JSON.
    pub fn text(value: &Value) -> String {
        match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    /// The value at a dotted path of a JSON document, like [`field`] on the parsed
    /// document, but building only that value: the rest is checked and skipped,
    /// never put in memory. Filters that read one field per record spend most of their
    /// time parsing, so this is much cheaper than parsing into a [`Value`].
    ///
    /// `Ok(None)`: the document has no such field. An error: it is not JSON.
    pub fn find(json: &[u8], path: &str) -> Result<Option<Value>, serde_json::Error> {
        let tokens: Vec<&str> = path.split('.').collect();
        let mut de = serde_json::Deserializer::from_slice(json);
        let found = Find(&tokens).deserialize(&mut de)?;
        de.end()?;
        Ok(found)
    }

    /// Looks for the rest of a path in the value being read.
    struct Find<'p>(&'p [&'p str]);

    impl<'de> DeserializeSeed<'de> for Find<'_> {
        type Value = Option<Value>;

        fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
            match self.0 {
                [] => Value::deserialize(de).map(Some),
                _ => de.deserialize_any(self),
            }
        }
    }

    impl<'de> Visitor<'de> for Find<'_> {
        type Value = Option<Value>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }

        // The path goes on past a scalar: nothing there.
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let Some((token, rest)) = self.0.split_first() else {
                return Ok(None);
            };
            // Like a parsed object, a repeated key's last value counts.
            let mut found = None;
            while let Some(wanted) = map.next_key_seed(Key(token))? {
                if wanted {
                    found = map.next_value_seed(Find(rest))?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let Some((token, rest)) = self.0.split_first() else {
                return Ok(None);
            };
            let wanted = token.parse::<usize>().ok();
            let mut found = None;
            for index in 0.. {
                let more = if Some(index) == wanted {
                    seq.next_element_seed(Find(rest))?
                        .map(|value| found = value)
                        .is_some()
                } else {
                    seq.next_element::<IgnoredAny>()?.is_some()
                };
                if !more {
                    break;
                }
            }
            Ok(found)
        }
    }

    /// Reads an object key, telling whether it is the one looked for.
    struct Key<'p>(&'p str);

    impl<'de> DeserializeSeed<'de> for Key<'_> {
        type Value = bool;

        fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<bool, D::Error> {
            de.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Key<'_> {
        type Value = bool;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object key")
        }

        fn visit_str<E>(self, key: &str) -> Result<bool, E> {
            Ok(key == self.0)
        }
    }
}

#[cfg(all(test, feature = "json"))]
mod tests {
    use super::json::{Value, field, find, serde_json};

    /// `find` agrees with parsing the whole document and taking `field`.
    #[test]
    fn find_reads_what_field_reads_on_the_whole_document() {
        let docs = [
            r#"{"level":"warn","n":3}"#,
            r#"{"meta":{"level":"error","tags":["a",{"b":true}]},"level":1}"#,
            r#"{"a":{"x":1},"a":{"y":2}}"#,
            r#"{"a":1,"a":{"b":2}}"#,
            r#"{"esc\"aped":7,"\u006cevel":"info"}"#,
            r#"[10,[20,30],{"k":null}]"#,
            r#""just a string""#,
            r#"{"":{"":5}}"#,
            "  {\"level\" : [ ] }  ",
        ];
        // Separated by `|`; the empty path and `.` are among them.
        let paths = "level|n|meta|meta.level|meta.tags.1.b|meta.tags.9|a|a.x|a.y|a.b|\
                     esc\"aped|0|1.1|2.k|2.k.z||.|level.0";
        for doc in docs {
            let whole: Value = serde_json::from_str(doc).unwrap();
            for path in paths.split('|') {
                let expected = field(&whole, path).cloned();
                assert_eq!(
                    find(doc.as_bytes(), path).unwrap(),
                    expected,
                    "{doc} at {path}"
                );
            }
        }
    }

    #[test]
    fn find_refuses_what_is_not_json() {
        for doc in [
            "",
            "not json",
            r#"{"level":"warn""#,
            r#"{"a":1} trailing"#,
            "{'a':1}",
        ] {
            assert!(find(doc.as_bytes(), "level").is_err(), "{doc:?}");
        }
    }
}
