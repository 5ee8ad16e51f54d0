//! A hostile plugin: loops forever. The broker's CPU deadline must interrupt it.

use quiver_plugin_sdk::{Event, Outcome, Plugin, export_plugin};

struct Spin;

impl Plugin for Spin {
    fn process(_topic: String, events: Vec<Event>) -> Result<Vec<Outcome>, String> {
        let mut n: u64 = events.len() as u64;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
            if n == 0 {
                break;
            }
        }
        Ok(vec![Outcome::Keep; events.len()])
    }
}

export_plugin!(Spin);
