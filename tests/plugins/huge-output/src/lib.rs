//! A hostile plugin: replaces every record with 1,000 copies, far over the limit.

use quiver_plugin_sdk::{Event, Outcome, Plugin, export_plugin};

struct HugeOutput;

impl Plugin for HugeOutput {
    fn on_event(_topic: &str, event: &Event) -> Outcome {
        Outcome::Replace(vec![event.to_new(); 1_000])
    }
}

export_plugin!(HugeOutput);
