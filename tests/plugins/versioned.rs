//! A plugin that tags every record with the version that processed it: built twice,
//! as `version-a` and `version-b` (the crate name says which), for the upgrade test.

use quiver_plugin_sdk::{Event, Header, Outcome, Plugin, export_plugin};

/// `a` or `b`, from the crate's name.
const VERSION: &str = match env!("CARGO_PKG_NAME").as_bytes() {
    [.., b'a'] => "a",
    _ => "b",
};

struct Versioned;

impl Plugin for Versioned {
    fn on_event(_topic: &str, event: &Event) -> Outcome {
        let mut record = event.to_new();
        record.headers.push(Header {
            name: "version".into(),
            value: VERSION.as_bytes().to_vec(),
        });
        Outcome::Replace(vec![record])
    }
}

export_plugin!(Versioned);
