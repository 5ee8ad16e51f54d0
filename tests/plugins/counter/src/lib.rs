//! Stamps each record with a `count` header: 1 for the first record of its topic, 2
//! for the next, and so on, the last count kept in the plugin's state under the topic's
//! name. The broker stores that state in the same commit as the records it stamped,
//! so after any crash or power cut a topic whose every record passed through here holds
//! counts 1, 2, 3… at offsets 0, 1, 2…: state behind its records repeats a count,
//! state ahead of them skips one. The crash and power-cut harnesses check exactly that.

use quiver_plugin_sdk::{Event, Header, Outcome, Plugin, export_plugin, state};

struct Counter;

impl Plugin for Counter {
    fn process(topic: String, events: Vec<Event>) -> Result<Vec<Outcome>, String> {
        let mut count = match state::get(topic.as_bytes()) {
            None => 0,
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .try_into()
                    .map_err(|_| "the stored count is not 8 bytes".to_owned())?,
            ),
        };
        let outcomes = events
            .iter()
            .map(|event| {
                count += 1;
                let mut stamped = event.to_new();
                stamped.headers.push(Header {
                    name: "count".into(),
                    value: count.to_string().into_bytes(),
                });
                Outcome::Replace(vec![stamped])
            })
            .collect();
        state::set(topic.as_bytes(), &count.to_be_bytes());
        Ok(outcomes)
    }
}

export_plugin!(Counter);
