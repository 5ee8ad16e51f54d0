//! The auth file, `<data dir>/auth.toml`: principals, their grants, the certificate
//! names that map to them, and their tokens (only a SHA-256 of each secret is kept).
//!
//! `quiver auth` edits it; the broker re-reads it when it changes, so principals,
//! grants and tokens take effect without a restart. It is written whole to a temporary
//! file and renamed over the old one, so a reader never sees half of it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use quiver_protocol::TopicPattern;
use serde::{Deserialize, Serialize};

use super::{AuthError, Right};

/// The auth file's name inside the data dir.
pub const FILE_NAME: &str = "auth.toml";

/// The auth file of a data dir.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// Principals by name.
    #[serde(default)]
    pub principals: BTreeMap<String, PrincipalEntry>,
}

/// One principal: who it is and what it may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalEntry {
    /// Client-certificate subject common names (CN) that authenticate as this principal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_names: Vec<String>,
    /// What the principal may do, on which topics.
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// Its tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenEntry>,
}

/// A right on the topics a pattern matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The right.
    pub right: Right,
    /// The topics: a name or a pattern (`sensors.>`; `>` is every topic).
    pub pattern: String,
}

/// A token, as stored: its public id and the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The token's public id (also the part of the token after `qvt_`).
    pub id: String,
    /// Hex SHA-256 of the token's secret part.
    pub sha256: String,
    /// When it was created, in ms since the Unix epoch.
    pub created_ms: u64,
    /// What the operator called it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
}

/// The name of the principal whose grants apply to clients without credentials, on a
/// broker that requires authentication but allows anonymous access.
pub const ANONYMOUS: &str = "anonymous";

impl AuthFile {
    /// Reads the file; a missing file is an empty one (no principals).
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(AuthError::file(path, e)),
        };
        let file: Self = toml::from_str(&text).map_err(|e| AuthError::file(path, e))?;
        file.validate().map_err(|e| AuthError::file(path, e))?;
        Ok(file)
    }

    /// Writes the file atomically and durably (`files::write_atomically`), readable by
    /// its owner only.
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        self.validate().map_err(|e| AuthError::file(path, e))?;
        let text = toml::to_string_pretty(self).map_err(|e| AuthError::file(path, e))?;
        let header = "# Quiver principals, grants and token hashes. Managed by `quiver auth`;\n\
                      # the broker re-reads this file when it changes.\n\n";
        crate::files::write_atomically(path, format!("{header}{text}").as_bytes(), 0o600)
            .map_err(|e| AuthError::file(path, e))
    }

    /// True when the file names at least one principal: the broker then requires
    /// clients to authenticate.
    pub fn is_configured(&self) -> bool {
        !self.principals.is_empty()
    }

    /// Checks what serde cannot: names, patterns, unique token ids and certificate
    /// names.
    fn validate(&self) -> Result<(), String> {
        let mut token_ids = BTreeMap::new();
        let mut cert_names = BTreeMap::new();
        for (name, principal) in &self.principals {
            check_principal_name(name)?;
            for grant in &principal.grants {
                TopicPattern::parse(&grant.pattern).map_err(|e| {
                    format!("principal `{name}`: grant pattern `{}`: {e}", grant.pattern)
                })?;
            }
            for token in &principal.tokens {
                if let Some(other) = token_ids.insert(token.id.as_str(), name) {
                    return Err(format!(
                        "token id `{}` belongs to both `{other}` and `{name}`",
                        token.id
                    ));
                }
            }
            for cert in &principal.cert_names {
                if let Some(other) = cert_names.insert(cert.as_str(), name) {
                    return Err(format!(
                        "certificate name `{cert}` maps to both `{other}` and `{name}`"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Principal names: 1 to 64 ASCII letters, digits, `-`, `_`, `.` or `@`.
pub fn check_principal_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid principal name `{name}`: use 1 to 64 ASCII letters, digits, `-`, `_`, `.` or `@`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_file_loads_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let mut file = AuthFile::default();
        file.principals.insert(
            "alice".into(),
            PrincipalEntry {
                cert_names: vec!["alice.example".into()],
                grants: vec![Grant {
                    right: Right::Publish,
                    pattern: "sensors.>".into(),
                }],
                tokens: vec![TokenEntry {
                    id: "0123456789abcdef".into(),
                    sha256: "00".repeat(32),
                    created_ms: 1,
                    label: "ci".into(),
                }],
            },
        );
        file.save(&path).unwrap();
        assert_eq!(AuthFile::load(&path).unwrap(), file);
    }

    #[test]
    fn a_missing_file_has_no_principals() {
        let dir = tempfile::tempdir().unwrap();
        let file = AuthFile::load(&path_in(dir.path())).unwrap();
        assert!(!file.is_configured());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        for (text, expected) in [
            (
                "[principals.alice]\ngrants = [{ right = \"fly\", pattern = \"a\" }]",
                "fly",
            ),
            (
                "[principals.alice]\ngrants = [{ right = \"publish\", pattern = \"a..b\" }]",
                "a..b",
            ),
            ("[principals.\"a b\"]", "invalid principal name"),
            ("[principals.alice]\ncolour = 1", "colour"),
            (
                "[principals.a]\ncert_names = [\"x\"]\n[principals.b]\ncert_names = [\"x\"]",
                "maps to both",
            ),
        ] {
            fs::write(&path, text).unwrap();
            let error = AuthFile::load(&path).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(error.contains(FILE_NAME), "{error}");
        }
    }
}
