//! Drops a record whose key was already seen within a time window. Stateful: the time
//! each key was last let through is kept in the plugin's state, which the broker
//! persists with the records and keeps across restarts and upgrades.
//!
//! Parameters:
//! - `window`: how long a key stays seen: a number with `ms`, `s`, `m`, `h` or `d`
//!   (default `10m`);
//! - `field`: a dotted JSON path to deduplicate by instead of the record key;
//! - `missing`: what to do with records without a key (or field): `keep` (default) or
//!   `drop`.
//!
//! Time is the record's own timestamp (the publish time), so replays decide alike. A key
//! seen once stays in the state until it is seen again: state grows with the number of
//! distinct keys.

use quiver_plugin_sdk::json::{Value, field, serde_json, text};
use quiver_plugin_sdk::{Event, Outcome, Plugin, export_plugin, param, state};

struct Dedup;

fn parse_window(s: &str) -> Result<u64, String> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`window` must be like 10m, not `{s}`"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`window` unit must be ms, s, m, h or d, not `{unit}`"
            ));
        }
    };
    Ok(n * ms)
}

fn key_of(event: &Event, path: Option<&str>) -> Option<Vec<u8>> {
    match path {
        None => event.key.clone(),
        Some(path) => {
            let json: Value = serde_json::from_slice(&event.payload).ok()?;
            field(&json, path).map(|v| text(v).into_bytes())
        }
    }
}

impl Plugin for Dedup {
    fn process(_topic: String, events: Vec<Event>) -> Result<Vec<Outcome>, String> {
        let window = parse_window(&param("window").unwrap_or_else(|| "10m".into()))?;
        let path = param("field");
        let missing = match param("missing").as_deref() {
            None | Some("keep") => Outcome::Keep,
            Some("drop") => Outcome::Drop,
            Some(other) => return Err(format!("`missing` must be keep or drop, not `{other}`")),
        };
        Ok(events
            .iter()
            .map(|event| {
                let Some(key) = key_of(event, path.as_deref()) else {
                    return missing.clone();
                };
                let seen = state::get(&key)
                    .and_then(|v| v.try_into().ok())
                    .map(u64::from_be_bytes);
                if seen.is_some_and(|at| event.timestamp.saturating_sub(at) < window) {
                    return Outcome::Drop;
                }
                state::set(&key, &event.timestamp.to_be_bytes());
                Outcome::Keep
            })
            .collect())
    }
}

export_plugin!(Dedup);
