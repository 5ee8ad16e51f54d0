//! Checks that JSON records carry required fields of the right types; records that do
//! not are rejected, so they go to the topic's dead-letter topic with the reason.
//!
//! Parameters:
//! - `required` (required): `PATH:TYPE,…` with TYPE one of `string`, `number`,
//!   `integer`, `boolean`, `array`, `object`, `any` (`id:string,amount:number`);
//! - `extra`: `false` to also reject top-level fields not listed in `required`
//!   (default `true`: extra fields are allowed).

use quiver_plugin_sdk::json::{Value, field, serde_json};
use quiver_plugin_sdk::{Event, Outcome, Plugin, export_plugin, param};

struct Validator;

struct Schema {
    required: Vec<(String, String)>,
    extra: bool,
}

const TYPES: &[&str] = &[
    "string", "number", "integer", "boolean", "array", "object", "any",
];

impl Schema {
    fn from_params() -> Result<Self, String> {
        let spec = param("required")
            .ok_or("parameter `required` is required, e.g. id:string,amount:number")?;
        let mut required = Vec::new();
        for item in spec.split(',').filter(|s| !s.trim().is_empty()) {
            let (path, kind) = item
                .split_once(':')
                .ok_or_else(|| format!("`{item}` is not PATH:TYPE"))?;
            let kind = kind.trim();
            if !TYPES.contains(&kind) {
                return Err(format!(
                    "unknown type `{kind}` (one of {})",
                    TYPES.join(", ")
                ));
            }
            required.push((path.trim().to_owned(), kind.to_owned()));
        }
        let extra = match param("extra").as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(format!(
                    "parameter `extra` must be true or false, not `{other}`"
                ));
            }
        };
        Ok(Self { required, extra })
    }

    fn check(&self, payload: &[u8]) -> Result<(), String> {
        let json: Value =
            serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
        if !json.is_object() {
            return Err("payload is not a JSON object".into());
        }
        for (path, kind) in &self.required {
            let value = field(&json, path).ok_or_else(|| format!("missing field `{path}`"))?;
            let ok = match kind.as_str() {
                "string" => value.is_string(),
                "number" => value.is_number(),
                "integer" => value.is_i64() || value.is_u64(),
                "boolean" => value.is_boolean(),
                "array" => value.is_array(),
                "object" => value.is_object(),
                _ => true,
            };
            if !ok {
                return Err(format!("field `{path}` is not of type {kind}"));
            }
        }
        if !self.extra
            && let Some(map) = json.as_object()
            && let Some(name) = map.keys().find(|k| {
                !self
                    .required
                    .iter()
                    .any(|(p, _)| p.split('.').next() == Some(k.as_str()))
            })
        {
            return Err(format!("unexpected field `{name}`"));
        }
        Ok(())
    }
}

impl Plugin for Validator {
    fn process(_topic: String, events: Vec<Event>) -> Result<Vec<Outcome>, String> {
        let schema = Schema::from_params()?;
        Ok(events
            .iter()
            .map(|e| match schema.check(&e.payload) {
                Ok(()) => Outcome::Keep,
                Err(reason) => Outcome::Reject(reason),
            })
            .collect())
    }
}

export_plugin!(Validator);
