//! Write Quiver plugins in Rust.
//!
//! A plugin is a WebAssembly component implementing the `quiver:plugin` world
//! (`wit/quiver.wit` in this crate). This crate holds the generated bindings, a
//! [`Plugin`] trait with a per-event default, and [`export_plugin!`], so that a filter
//! is a few lines:
//!
//! ```ignore
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
}
