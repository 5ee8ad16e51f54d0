//! A hostile plugin: allocates memory until the broker's memory cap stops it.

use quiver_plugin_sdk::{Event, Outcome, Plugin, export_plugin};

struct MemoryBomb;

impl Plugin for MemoryBomb {
    fn process(_topic: String, events: Vec<Event>) -> Result<Vec<Outcome>, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&hoard);
            if hoard.len() == usize::MAX {
                break;
            }
        }
        Ok(vec![Outcome::Keep; events.len()])
    }
}

export_plugin!(MemoryBomb);
