//! How the CLI prints records and topics.
//!
//! JSON output follows one rule for every byte field: text when it is UTF-8, otherwise
//! base64 under the field's name with `_base64` appended.

use std::fmt::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytesize::ByteSize;
use quiver_client::{Record, TopicInfo};
use serde_json::{Map, Value, json};

/// Puts `bytes` under `field` as text, or under `field_base64` when not UTF-8.
fn put_bytes(object: &mut Map<String, Value>, field: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(field.to_owned(), Value::from(text)),
        Err(_) => object.insert(format!("{field}_base64"), Value::from(BASE64.encode(bytes))),
    };
}

/// One record as a JSON object.
pub(super) fn record_json(record: &Record) -> Value {
    let mut object = Map::new();
    object.insert("topic".into(), Value::from(&*record.topic));
    object.insert("offset".into(), Value::from(record.offset));
    object.insert("timestamp".into(), Value::from(record.timestamp));
    match &record.key {
        Some(key) => put_bytes(&mut object, "key", key),
        None => {
            object.insert("key".into(), Value::Null);
        }
    }
    let mut headers = Map::new();
    let mut binary_headers = Map::new();
    for header in &record.headers {
        match std::str::from_utf8(&header.value) {
            Ok(text) => headers.insert(header.name.clone(), Value::from(text)),
            Err(_) => binary_headers.insert(
                header.name.clone(),
                Value::from(BASE64.encode(&header.value)),
            ),
        };
    }
    object.insert("headers".into(), Value::Object(headers));
    if !binary_headers.is_empty() {
        object.insert("headers_base64".into(), Value::Object(binary_headers));
    }
    put_bytes(&mut object, "payload", &record.payload);
    Value::Object(object)
}

/// One topic as a JSON object.
pub(super) fn topic_json(topic: &TopicInfo) -> Value {
    json!({
        "name": topic.name,
        "records": topic.records,
        "bytes": topic.bytes,
        "first_offset": topic.first_offset,
        "last_offset": topic.last_offset(),
        "next_offset": topic.next_offset,
        "created_ms": topic.created_ms,
        "retention": {
            "max_age_ms": topic.retention.max_age_ms,
            "max_bytes": topic.retention.max_bytes,
            "max_records": topic.retention.max_records,
        },
    })
}

fn retention_text(topic: &TopicInfo) -> String {
    let r = &topic.retention;
    let mut parts = Vec::new();
    if let Some(ms) = r.max_age_ms {
        parts.push(format!(
            "age {}",
            humantime::format_duration(std::time::Duration::from_millis(ms))
        ));
    }
    if let Some(bytes) = r.max_bytes {
        parts.push(format!("size {}", ByteSize(bytes)));
    }
    if let Some(records) = r.max_records {
        parts.push(format!("records {records}"));
    }
    if parts.is_empty() {
        "unlimited".into()
    } else {
        parts.join(", ")
    }
}

fn last_text(topic: &TopicInfo) -> String {
    topic
        .last_offset()
        .map_or_else(|| "-".into(), |o| o.to_string())
}

/// Topics as an aligned table.
pub(super) fn topic_table(topics: &[TopicInfo]) -> String {
    let rows: Vec<[String; 6]> = topics
        .iter()
        .map(|t| {
            [
                t.name.clone(),
                t.records.to_string(),
                ByteSize(t.bytes).to_string(),
                t.first_offset.to_string(),
                last_text(t),
                retention_text(t),
            ]
        })
        .collect();
    let header = ["NAME", "RECORDS", "BYTES", "FIRST", "LAST", "RETENTION"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// One topic as `key: value` lines.
pub(super) fn topic_details(topic: &TopicInfo) -> String {
    let created = std::time::UNIX_EPOCH + std::time::Duration::from_millis(topic.created_ms);
    format!(
        "name:         {}\nrecords:      {}\nbytes:        {} ({})\nfirst offset: {}\nlast offset:  {}\nnext offset:  {}\nretention:    {}\ncreated:      {}\n",
        topic.name,
        topic.records,
        topic.bytes,
        ByteSize(topic.bytes),
        topic.first_offset,
        last_text(topic),
        topic.next_offset,
        retention_text(topic),
        humantime::format_rfc3339_millis(created),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use quiver_client::Header;

    fn record(payload: &'static [u8], key: Option<&'static [u8]>) -> Record {
        Record {
            topic: "a.b".into(),
            offset: 3,
            timestamp: 9,
            key: key.map(Bytes::from_static),
            headers: vec![
                Header {
                    name: "h".into(),
                    value: Bytes::from_static(b"v"),
                },
                Header {
                    name: "bin".into(),
                    value: Bytes::from_static(&[0xff]),
                },
            ],
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn text_fields_stay_text() {
        let v = record_json(&record(b"hello", Some(b"k")));
        assert_eq!(v["topic"], "a.b");
        assert_eq!(v["offset"], 3);
        assert_eq!(v["timestamp"], 9);
        assert_eq!(v["key"], "k");
        assert_eq!(v["payload"], "hello");
        assert_eq!(v["headers"]["h"], "v");
        assert_eq!(v["headers_base64"]["bin"], "/w==");
        assert!(v.get("payload_base64").is_none());
    }

    #[test]
    fn binary_fields_become_base64() {
        let v = record_json(&record(&[0, 159, 146, 150], None));
        assert!(v.get("payload").is_none());
        assert_eq!(v["payload_base64"], "AJ+Slg==");
        assert_eq!(v["key"], Value::Null);
    }
}
