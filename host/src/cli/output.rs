//! How the CLI prints records and topics.
//!
//! JSON output follows one rule for every byte field: text when it is UTF-8, otherwise
//! base64 under the field's name with `_base64` appended.

use std::fmt::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use bytesize::ByteSize;
use quiver_client::{
    Durability, GroupInfo, GroupTopic, Header, NewRecord, OnError, Receipt, Record, Stage, StartAt,
    TopicInfo,
};
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
    put_record(
        &mut object,
        record.key.as_deref(),
        &record.headers,
        &record.payload,
    );
    Value::Object(object)
}

/// A new record (key, headers, payload) as a JSON object.
pub(super) fn new_record_json(record: &NewRecord) -> Value {
    let mut object = Map::new();
    put_record(
        &mut object,
        record.key.as_deref(),
        &record.headers,
        &record.payload,
    );
    Value::Object(object)
}

fn put_record(
    object: &mut Map<String, Value>,
    key: Option<&[u8]>,
    headers: &[Header],
    payload: &[u8],
) {
    match key {
        Some(key) => put_bytes(object, "key", key),
        None => {
            object.insert("key".into(), Value::Null);
        }
    }
    let mut text_headers = Map::new();
    let mut binary_headers = Map::new();
    for header in headers {
        match std::str::from_utf8(&header.value) {
            Ok(text) => text_headers.insert(header.name.clone(), Value::from(text)),
            Err(_) => binary_headers.insert(
                header.name.clone(),
                Value::from(BASE64.encode(&header.value)),
            ),
        };
    }
    object.insert("headers".into(), Value::Object(text_headers));
    if !binary_headers.is_empty() {
        object.insert("headers_base64".into(), Value::Object(binary_headers));
    }
    put_bytes(object, "payload", payload);
}

/// The fields of a record as [`record_json`] writes them: an object with none of them
/// is not a record (a JSON log line, say).
pub(super) const RECORD_FIELDS: [&str; 6] = [
    "payload",
    "payload_base64",
    "key",
    "key_base64",
    "headers",
    "headers_base64",
];

/// Reads a record written the way [`record_json`] writes them (every field optional;
/// `payload` or `payload_base64`, and likewise `key`). A `payload` that is JSON but
/// not a string (an object, say) is the payload as JSON text.
pub(super) fn record_from_json(value: &Value) -> Result<NewRecord, String> {
    let object = value.as_object().ok_or("a record must be a JSON object")?;
    let bytes = |field: &str| -> Result<Option<Bytes>, String> {
        match object.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => return Ok(Some(Bytes::from(text.clone()))),
            Some(json) if field == "payload" => return Ok(Some(Bytes::from(json.to_string()))),
            Some(_) => return Err(format!("{field} must be a string")),
        }
        match object.get(&format!("{field}_base64")) {
            Some(Value::String(b64)) => BASE64
                .decode(b64)
                .map(|b| Some(Bytes::from(b)))
                .map_err(|e| format!("{field}_base64: {e}")),
            Some(_) => Err(format!("{field}_base64 must be a string")),
            None => Ok(None),
        }
    };
    let mut headers = Vec::new();
    for (field, base64) in [("headers", false), ("headers_base64", true)] {
        let Some(map) = object.get(field) else {
            continue;
        };
        let map = map
            .as_object()
            .ok_or_else(|| format!("{field} must be an object"))?;
        for (name, value) in map {
            let text = value
                .as_str()
                .ok_or_else(|| format!("header `{name}` must be a string"))?;
            let value = if base64 {
                BASE64
                    .decode(text)
                    .map_err(|e| format!("header `{name}`: {e}"))?
            } else {
                text.as_bytes().to_vec()
            };
            headers.push(Header {
                name: name.clone(),
                value: value.into(),
            });
        }
    }
    Ok(NewRecord {
        key: bytes("key")?,
        headers,
        payload: bytes("payload")?.unwrap_or_default(),
    })
}

/// What became of one published record, in a word or an offset.
pub(super) fn receipt_text(receipt: &Receipt) -> String {
    let mut parts = Vec::new();
    match receipt.count {
        0 => {}
        1 => parts.push(receipt.base_offset.to_string()),
        n => parts.push(format!(
            "{}..={}",
            receipt.base_offset,
            receipt.base_offset + u64::from(n) - 1
        )),
    }
    for placement in &receipt.routed {
        parts.push(format!(
            "routed to {}@{}",
            placement.topic, placement.base_offset
        ));
    }
    if let Some(dead) = &receipt.dead_letter {
        parts.push(format!(
            "dead-lettered to {}@{}",
            dead.topic, dead.base_offset
        ));
    }
    if receipt.dropped > 0 {
        parts.push("dropped".into());
    }
    parts.join(", ")
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
        "dead_letter": topic.dead_letter,
        "pipeline": topic.pipeline.iter().map(|s| json!({
            "plugin": s.plugin,
            "params": s.params.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect::<Map<String, Value>>(),
            "on_error": on_error_text(s.on_error),
        })).collect::<Vec<_>>(),
        "durability": match topic.durability {
            Durability::Fsync => json!({ "mode": "fsync" }),
            Durability::Batched { interval_ms } => json!({ "mode": "batched", "flush_interval_ms": interval_ms }),
        },
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

/// Rows under a header, each column as wide as its widest cell.
pub(super) fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = header.map(String::from);
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
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
    table(
        ["NAME", "RECORDS", "BYTES", "FIRST", "LAST", "RETENTION"],
        &rows,
    )
}

/// How a failure policy reads on the command line.
pub(super) fn on_error_text(on_error: OnError) -> &'static str {
    match on_error {
        OnError::FailOpen => "fail-open",
        OnError::FailClosed => "fail-closed",
    }
}

/// A pipeline as `plugin(k=v, …; policy) → …`.
pub(super) fn pipeline_text(stages: &[Stage]) -> String {
    if stages.is_empty() {
        return "none".into();
    }
    let stage = |s: &Stage| {
        let params: Vec<String> = s.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let policy = on_error_text(s.on_error);
        match params.is_empty() {
            true => format!("{}({policy})", s.plugin),
            false => format!("{}({}; {policy})", s.plugin, params.join(", ")),
        }
    };
    stages.iter().map(stage).collect::<Vec<_>>().join(" -> ")
}

/// One topic as `key: value` lines.
pub(super) fn topic_details(topic: &TopicInfo) -> String {
    let created = std::time::UNIX_EPOCH + std::time::Duration::from_millis(topic.created_ms);
    format!(
        "name:         {}\nrecords:      {}\nbytes:        {} ({})\nfirst offset: {}\nlast offset:  {}\nnext offset:  {}\nretention:    {}\ndurability:   {}\ndead letter:  {}\npipeline:     {}\ncreated:      {}\n",
        topic.name,
        topic.records,
        topic.bytes,
        ByteSize(topic.bytes),
        topic.first_offset,
        last_text(topic),
        topic.next_offset,
        retention_text(topic),
        topic.durability,
        topic.dead_letter,
        pipeline_text(&topic.pipeline),
        humantime::format_rfc3339_millis(created),
    )
}

/// Where a group starts (or was reset to), as the command line spells it.
fn start_text(start: StartAt) -> String {
    match start {
        StartAt::Earliest => "earliest".into(),
        StartAt::Latest => "latest".into(),
        StartAt::Offset(offset) => format!("offset {offset}"),
        StartAt::Timestamp(ms) => humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string(),
    }
}

/// The sum of one figure over a group's topics.
fn group_total(group: &GroupInfo, figure: impl Fn(&GroupTopic) -> u64) -> u64 {
    group.topics.iter().map(figure).sum()
}

/// One group as a JSON object.
pub(super) fn group_json(group: &GroupInfo) -> Value {
    let s = &group.settings;
    json!({
        "name": group.name,
        "pattern": s.pattern,
        "from": start_text(s.from),
        "ack_timeout_ms": s.ack_timeout_ms,
        "max_deliveries": s.max_deliveries,
        "dead_letter": s.dead_letter,
        "prefetch": s.prefetch,
        "created_ms": group.created_ms,
        "members": group.members,
        "topics": group.topics.iter().map(|t| json!({
            "topic": t.topic,
            "cursor": t.cursor,
            "lag": t.lag,
            "pending": t.pending,
            "redelivered": t.redelivered,
            "dead_lettered": t.dead_lettered,
        })).collect::<Vec<_>>(),
    })
}

/// Groups as an aligned table, with their figures summed over topics.
pub(super) fn group_table(groups: &[GroupInfo]) -> String {
    let rows: Vec<[String; 7]> = groups
        .iter()
        .map(|g| {
            [
                g.name.clone(),
                g.settings.pattern.clone(),
                g.members.to_string(),
                group_total(g, |t| t.lag).to_string(),
                group_total(g, |t| t.pending).to_string(),
                group_total(g, |t| t.redelivered).to_string(),
                group_total(g, |t| t.dead_lettered).to_string(),
            ]
        })
        .collect();
    table(
        [
            "NAME",
            "PATTERN",
            "MEMBERS",
            "LAG",
            "PENDING",
            "REDELIVERED",
            "DEAD",
        ],
        &rows,
    )
}

/// One group as `key: value` lines, then its topics as a table.
pub(super) fn group_details(group: &GroupInfo) -> String {
    let s = &group.settings;
    let created = std::time::UNIX_EPOCH + std::time::Duration::from_millis(group.created_ms);
    let mut out = format!(
        "name:           {}\npattern:        {}\nstarted from:   {}\nack timeout:    {}\nmax deliveries: {}\ndead letter:    {}\nprefetch:       {}\nmembers:        {}\ncreated:        {}\n",
        group.name,
        s.pattern,
        start_text(s.from),
        humantime::format_duration(std::time::Duration::from_millis(s.ack_timeout_ms)),
        s.max_deliveries,
        s.dead_letter.as_deref().unwrap_or("each topic's"),
        s.prefetch,
        group.members,
        humantime::format_rfc3339_millis(created),
    );
    if group.topics.is_empty() {
        out.push_str("\nno topic matches yet\n");
        return out;
    }
    let rows: Vec<[String; 6]> = group
        .topics
        .iter()
        .map(|t| {
            [
                t.topic.clone(),
                t.cursor.to_string(),
                t.lag.to_string(),
                t.pending.to_string(),
                t.redelivered.to_string(),
                t.dead_lettered.to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        ["TOPIC", "CURSOR", "LAG", "PENDING", "REDELIVERED", "DEAD"],
        &rows,
    ));
    out
}

/// A progress bar on stderr for long work over `total` items (a spinner when the total
/// is unknown), drawn only when a person watches it: stderr is a terminal, and, for
/// work that prints a line per item (`lines`), stdout is not (the lines go to a file
/// or a pipe, not over the bar). Otherwise it is hidden and costs nothing.
pub(super) fn progress(total: Option<u64>, what: &str, lines: bool) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use std::io::IsTerminal;
    let watched = std::io::stderr().is_terminal() && !(lines && std::io::stdout().is_terminal());
    if !watched {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {pos} ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.set_message(what.to_owned());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use quiver_client::{Header, StoredRecord};

    fn record(payload: &'static [u8], key: Option<&'static [u8]>) -> Record {
        Record {
            topic: "a.b".into(),
            stored: StoredRecord {
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
            },
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
    fn records_read_back_what_was_written() {
        let written = record_json(&record(&[0, 159], Some(b"k")));
        let read = record_from_json(&written).unwrap();
        assert_eq!(read.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(&read.payload[..], &[0, 159]);
        assert_eq!(read.headers.len(), 2);
        assert!(record_from_json(&json!({"payload_base64": "%%"})).is_err());
        assert_eq!(record_from_json(&json!({})).unwrap(), NewRecord::default());
        // A payload given as JSON is its text; a key must be a string.
        let record = record_from_json(&json!({"payload": {"level": "warn"}})).unwrap();
        assert_eq!(&record.payload[..], br#"{"level":"warn"}"#);
        assert!(record_from_json(&json!({"key": 7})).is_err());
    }

    #[test]
    fn receipts_read_as_a_word_or_an_offset() {
        let mut receipt = Receipt {
            base_offset: 4,
            count: 1,
            routed: vec![],
            dead_letter: None,
            dropped: 0,
        };
        assert_eq!(receipt_text(&receipt), "4");
        receipt.count = 0;
        receipt.dropped = 1;
        assert_eq!(receipt_text(&receipt), "dropped");
        receipt.dropped = 0;
        receipt.routed.push(quiver_client::Placement {
            topic: "x".into(),
            base_offset: 9,
            count: 1,
        });
        assert_eq!(receipt_text(&receipt), "routed to x@9");
    }

    #[test]
    fn binary_fields_become_base64() {
        let v = record_json(&record(&[0, 159, 146, 150], None));
        assert!(v.get("payload").is_none());
        assert_eq!(v["payload_base64"], "AJ+Slg==");
        assert_eq!(v["key"], Value::Null);
    }
}
