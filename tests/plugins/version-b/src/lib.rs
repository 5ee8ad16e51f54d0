//! Version `b` of a plugin that tags every record with the version that processed it.

use quiver_plugin_sdk::{Event, Header, Outcome, Plugin, export_plugin};

struct Versioned;

impl Plugin for Versioned {
    fn on_event(_topic: &str, event: &Event) -> Outcome {
        let mut record = event.to_new();
        record.headers.push(Header {
            name: "version".into(),
            value: b"b".to_vec(),
        });
        Outcome::Replace(vec![record])
    }
}

export_plugin!(Versioned);
