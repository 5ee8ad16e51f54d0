//! Argument parsers and values several subcommands share: headers and parameters
//! (`NAME=VALUE`), where to start reading, and a stage's failure policy.

use clap::ValueEnum;
use quiver_client::OnError;

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

pub(super) use crate::util::parse_start;

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
