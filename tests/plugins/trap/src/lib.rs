//! A failing plugin: panics (which traps) on a record whose payload starts with `boom`,
//! and keeps every other record.

use quiver_plugin_sdk::{Event, Outcome, Plugin, export_plugin};

struct Trap;

impl Plugin for Trap {
    fn on_event(_topic: &str, event: &Event) -> Outcome {
        if event.payload.starts_with(b"boom") {
            panic!("boom");
        }
        Outcome::Keep
    }
}

export_plugin!(Trap);
