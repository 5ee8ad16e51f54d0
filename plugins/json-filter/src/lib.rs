//! Keeps JSON records whose field passes a comparison; drops the others.
//!
//! Parameters:
//! - `where` (required): `FIELD OP VALUE` or `FIELD exists`, with OP one of
//!   `==`, `!=`, `>`, `>=`, `<`, `<=`; FIELD is a dotted path (`meta.level`);
//! - `order` (optional): a comma-separated scale for comparing words
//!   (`trace,debug,info,warn,error` makes `level >= warn` mean warn or error);
//! - `invalid` (optional): what to do with a payload that is not JSON: `reject` (the
//!   default: dead-letter it), `drop` or `keep`.
//!
//! Values compare by their place in `order` when both are in it, as numbers when both
//! are numbers, and as text otherwise. A record without the field is dropped.

use std::cmp::Ordering;

use quiver_plugin_sdk::json::{Value, find, text};
use quiver_plugin_sdk::{Event, Outcome, Plugin, export_plugin, param};

struct JsonFilter;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Exists,
}

struct Condition {
    path: String,
    op: Op,
    value: String,
    /// `value` as a number, if it is one.
    number: Option<f64>,
    order: Vec<String>,
    invalid: Outcome,
}

impl Condition {
    fn from_params() -> Result<Self, String> {
        let expr = param("where")
            .ok_or("parameter `where` is required, e.g. --param 'where=level >= warn'")?;
        let mut parts = expr.split_whitespace();
        let path = parts.next().ok_or("`where` is empty")?.to_owned();
        let op = match parts.next().ok_or("`where` needs an operator")? {
            "==" => Op::Eq,
            "!=" => Op::Ne,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "exists" => Op::Exists,
            other => return Err(format!("unknown operator `{other}` in `where`")),
        };
        let value = parts.collect::<Vec<_>>().join(" ");
        if op != Op::Exists && value.is_empty() {
            return Err("`where` needs a value to compare with".into());
        }
        let order = param("order")
            .map(|o| o.split(',').map(|s| s.trim().to_owned()).collect())
            .unwrap_or_default();
        let invalid = match param("invalid").as_deref() {
            None | Some("reject") => Outcome::Reject("payload is not JSON".into()),
            Some("drop") => Outcome::Drop,
            Some("keep") => Outcome::Keep,
            Some(other) => {
                return Err(format!(
                    "`invalid` must be reject, drop or keep, not `{other}`"
                ));
            }
        };
        let value = value.trim_matches('"').to_owned();
        Ok(Self {
            path,
            op,
            number: value.parse().ok(),
            value,
            order,
            invalid,
        })
    }

    fn compare(&self, found: &Value) -> Option<Ordering> {
        // A JSON number against a number, with no scale of words: no text needed.
        if let (true, Some(a), Some(b)) = (self.order.is_empty(), found.as_f64(), self.number) {
            return a.partial_cmp(&b);
        }
        let found = text(found);
        let rank = |s: &str| self.order.iter().position(|o| o == s);
        if let (Some(a), Some(b)) = (rank(&found), rank(&self.value)) {
            return Some(a.cmp(&b));
        }
        if let (Ok(a), Some(b)) = (found.parse::<f64>(), self.number) {
            return a.partial_cmp(&b);
        }
        Some(found.as_str().cmp(self.value.as_str()))
    }

    fn decide(&self, payload: &[u8]) -> Outcome {
        // Only the field is built; the rest of the payload is checked and skipped.
        let found = match find(payload, &self.path) {
            Ok(Some(found)) => found,
            Ok(None) => return Outcome::Drop,
            Err(_) => return self.invalid.clone(),
        };
        let ordering = self.compare(&found);
        let pass = match self.op {
            Op::Exists => true,
            Op::Eq => ordering == Some(Ordering::Equal),
            Op::Ne => ordering != Some(Ordering::Equal),
            Op::Gt => ordering == Some(Ordering::Greater),
            Op::Ge => matches!(ordering, Some(Ordering::Greater | Ordering::Equal)),
            Op::Lt => ordering == Some(Ordering::Less),
            Op::Le => matches!(ordering, Some(Ordering::Less | Ordering::Equal)),
        };
        if pass { Outcome::Keep } else { Outcome::Drop }
    }
}

impl Plugin for JsonFilter {
    fn process(_topic: String, events: Vec<Event>) -> Result<Vec<Outcome>, String> {
        let condition = Condition::from_params()?;
        Ok(events
            .iter()
            .map(|e| condition.decide(&e.payload))
            .collect())
    }
}

export_plugin!(JsonFilter);
