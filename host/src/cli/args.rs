//! Argument parsers and values several subcommands share: headers and parameters
//! (`NAME=VALUE`), where to start reading, and a stage's failure policy.

use clap::ValueEnum;
use quiver_client::{OnError, StartAt};

/// Parses `NAME=VALUE` (headers and plugin parameters).
pub(super) fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    if name.is_empty() {
        return Err(format!("`{s}` has an empty header name"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// Parses where to start reading: `earliest`, `latest`, an offset, an RFC 3339 time or
/// `-DURATION` (a time ago).
pub(super) fn parse_start(s: &str) -> Result<StartAt, String> {
    match s {
        "earliest" => return Ok(StartAt::Earliest),
        "latest" => return Ok(StartAt::Latest),
        _ => {}
    }
    if let Ok(offset) = s.parse::<u64>() {
        return Ok(StartAt::Offset(offset));
    }
    let time = if let Some(ago) = s.strip_prefix('-') {
        let ago = humantime::parse_duration(ago).map_err(|e| format!("`{s}`: {e}"))?;
        std::time::SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("`{s}` is before the Unix epoch"))?
    } else {
        humantime::parse_rfc3339_weak(s).map_err(|_| {
            format!("`{s}` is not earliest, latest, an offset, an RFC 3339 time or -DURATION")
        })?
    };
    let ms = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("`{s}` is before the Unix epoch"))?
        .as_millis();
    Ok(StartAt::Timestamp(u64::try_from(ms).unwrap_or(u64::MAX)))
}

/// A stage's failure policy on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Policy {
    /// Records pass the stage unchanged while it is quarantined.
    FailOpen,
    /// Publishes are refused (subscriptions end) while it is quarantined.
    FailClosed,
}

impl From<Policy> for OnError {
    fn from(policy: Policy) -> Self {
        match policy {
            Policy::FailOpen => OnError::FailOpen,
            Policy::FailClosed => OnError::FailClosed,
        }
    }
}
