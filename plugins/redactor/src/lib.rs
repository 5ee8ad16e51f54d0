//! Masks personal data: e-mail addresses and card numbers anywhere in the payload, and
//! whole JSON fields by name.
//!
//! Parameters:
//! - `fields`: comma-separated dotted JSON paths replaced by `mask` (`ssn,contact.phone`);
//! - `mask`: the text that replaces those fields (default `[REDACTED]`);
//! - `emails`: `false` to leave e-mail addresses (default `true`: each becomes `[email]`);
//! - `cards`: `false` to leave card numbers (default `true`: 13 to 19 digits, spaces or
//!   dashes allowed between them, passing the Luhn check, become `[card ****1234]`).
//!
//! JSON payloads are masked value by value; other UTF-8 payloads as text. A record that
//! needed masking is replaced by the masked one with a `quiver-redactions` header
//! counting the masks; others are kept as they are.

use quiver_plugin_sdk::json::{Value, field_mut, serde_json};
use quiver_plugin_sdk::{Event, Header, Outcome, Plugin, export_plugin, param};

struct Redactor;

struct Settings {
    fields: Vec<String>,
    mask: String,
    emails: bool,
    cards: bool,
}

impl Settings {
    fn from_params() -> Result<Self, String> {
        let flag = |name: &str| match param(name).as_deref() {
            None | Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(format!(
                "parameter `{name}` must be true or false, not `{other}`"
            )),
        };
        Ok(Self {
            fields: param("fields")
                .map(|f| {
                    f.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            mask: param("mask").unwrap_or_else(|| "[REDACTED]".into()),
            emails: flag("emails")?,
            cards: flag("cards")?,
        })
    }

    /// Masks e-mails and card numbers in a text; counts what it masked.
    fn mask_text(&self, text: &str, masks: &mut u32) -> String {
        let mut out = text.to_owned();
        if self.emails {
            out = mask_emails(&out, masks);
        }
        if self.cards {
            out = mask_cards(&out, masks);
        }
        out
    }

    fn mask_json(&self, value: &mut Value, masks: &mut u32) {
        match value {
            Value::String(s) => {
                let masked = self.mask_text(s, masks);
                *s = masked;
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.mask_json(v, masks)),
            Value::Object(map) => map.values_mut().for_each(|v| self.mask_json(v, masks)),
            _ => {}
        }
    }

    fn decide(&self, event: &Event) -> Outcome {
        let mut masks = 0;
        let payload = match serde_json::from_slice::<Value>(&event.payload) {
            Ok(mut json) => {
                for path in &self.fields {
                    if let Some(found) = field_mut(&mut json, path) {
                        *found = Value::String(self.mask.clone());
                        masks += 1;
                    }
                }
                self.mask_json(&mut json, &mut masks);
                serde_json::to_vec(&json).unwrap_or_else(|_| event.payload.clone())
            }
            Err(_) => match std::str::from_utf8(&event.payload) {
                Ok(text) => self.mask_text(text, &mut masks).into_bytes(),
                Err(_) => return Outcome::Keep, // binary: nothing to read
            },
        };
        if masks == 0 {
            return Outcome::Keep;
        }
        let mut record = event.to_new();
        record.payload = payload;
        record.headers.push(Header {
            name: "quiver-redactions".into(),
            value: masks.to_string().into_bytes(),
        });
        Outcome::Replace(vec![record])
    }
}

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._%+-".contains(&b)
}

fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'-'
}

/// Replaces `local@domain.tld` with `[email]`.
fn mask_emails(text: &str, masks: &mut u32) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'@' {
            i += 1;
            continue;
        }
        let mut start = i;
        while start > copied && is_local(bytes[start - 1]) {
            start -= 1;
        }
        let mut end = i + 1;
        while end < bytes.len() && is_domain(bytes[end]) {
            end += 1;
        }
        while end > i + 1 && !bytes[end - 1].is_ascii_alphanumeric() {
            end -= 1; // a trailing dot ends the sentence, not the domain
        }
        let domain = &text[i + 1..end];
        let valid = start < i
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.starts_with('-');
        if valid {
            out.push_str(&text[copied..start]);
            out.push_str("[email]");
            *masks += 1;
            copied = end;
            i = end;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Replaces card numbers (13 to 19 digits passing the Luhn check) with their last four.
fn mask_cards(text: &str, masks: &mut u32) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let starts_number =
            bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric());
        if !starts_number {
            i += 1;
            continue;
        }
        let mut digits = Vec::new();
        let mut end = i;
        let mut j = i;
        while j < bytes.len() && digits.len() <= 19 {
            match bytes[j] {
                b'0'..=b'9' => {
                    digits.push(bytes[j] - b'0');
                    end = j + 1;
                }
                b' ' | b'-' if j + 1 < bytes.len() && bytes[j + 1].is_ascii_digit() => {}
                _ => break,
            }
            j += 1;
        }
        let whole = end >= bytes.len() || !bytes[end].is_ascii_alphanumeric();
        if whole && (13..=19).contains(&digits.len()) && luhn(&digits) {
            let last4: String = digits[digits.len() - 4..]
                .iter()
                .map(|d| char::from(b'0' + d))
                .collect();
            out.push_str(&text[copied..i]);
            out.push_str(&format!("[card ****{last4}]"));
            *masks += 1;
            copied = end;
            i = end;
        } else {
            i = end.max(i + 1);
        }
    }
    out.push_str(&text[copied..]);
    out
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

impl Plugin for Redactor {
    fn process(_topic: String, events: Vec<Event>) -> Result<Vec<Outcome>, String> {
        let settings = Settings::from_params()?;
        Ok(events.iter().map(|e| settings.decide(e)).collect())
    }
}

export_plugin!(Redactor);
