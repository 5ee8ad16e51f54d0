//! Argument parsers and values several subcommands share: headers and parameters
//! (`NAME=VALUE`), where to start reading, a stage's failure policy, and
//! `--if-not-exists`.

use clap::{Args, ValueEnum};
use quiver_client::{ErrorCode, OnError};

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

/// `--if-not-exists` on a create command: that it exists already counts as done.
#[derive(Debug, Clone, Copy, Args)]
pub(super) struct IfNotExists {
    /// Succeed without changing anything if it exists already (its settings are left
    /// as they are, even if they differ).
    #[arg(long)]
    if_not_exists: bool,
}

impl IfNotExists {
    /// What a create returned, or `None` when it was refused with `exists` and the
    /// flag allows that.
    pub(super) fn allow<T>(
        self,
        created: quiver_client::Result<T>,
        exists: ErrorCode,
    ) -> quiver_client::Result<Option<T>> {
        match created {
            Ok(created) => Ok(Some(created)),
            Err(e) if self.if_not_exists && e.code() == Some(exists) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
