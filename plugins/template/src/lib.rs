//! A new plugin, as `quiver plugin new NAME --lang rust` writes it: change `on_event`.
//! As it stands it adds a header to every record, which is useful on its own (tag
//! records with where they came in).
//!
//! Parameters: `name` and `value` of the header to add (default `tagged-by=quiver`).

use quiver_plugin_sdk::{Event, Header, Outcome, Plugin, export_plugin, param};

struct AddHeader;

impl Plugin for AddHeader {
    fn on_event(_topic: &str, event: &Event) -> Outcome {
        let mut record = event.to_new();
        record.headers.push(Header {
            name: param("name").unwrap_or_else(|| "tagged-by".into()),
            value: param("value")
                .unwrap_or_else(|| "quiver".into())
                .into_bytes(),
        });
        Outcome::Replace(vec![record])
    }
}

export_plugin!(AddHeader);
