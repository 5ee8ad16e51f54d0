//! `quiver auth`: principals, grants and tokens in a data dir's auth file.
//!
//! These commands edit `<data>/auth.toml` directly (the operator's access to the data
//! dir is the credential); a running broker picks the change up within a second. A
//! token is printed once, on creation: only its hash is kept.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::auth::file::{self, AuthFile, Grant, PrincipalEntry, check_principal_name};
use crate::auth::{Right, token};
use crate::config::DEFAULT_DATA_DIR;
use crate::util::now_ms;

#[derive(Debug, Subcommand)]
pub(super) enum AuthCommand {
    /// Add, remove and list principals.
    #[command(subcommand)]
    Principal(PrincipalCommand),
    /// Give a principal rights: RIGHT:PATTERN, e.g. publish:sensors.> (rights:
    /// publish, subscribe, group, admin).
    Grant {
        #[command(flatten)]
        data: DataArg,
        /// The principal.
        name: String,
        /// RIGHT:PATTERN, one or more.
        #[arg(required = true, value_parser = parse_grant)]
        grants: Vec<Grant>,
    },
    /// Take rights away from a principal (exactly as granted).
    Revoke {
        #[command(flatten)]
        data: DataArg,
        /// The principal.
        name: String,
        /// RIGHT:PATTERN, one or more.
        #[arg(required = true, value_parser = parse_grant)]
        grants: Vec<Grant>,
    },
    /// Create and revoke tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub(super) enum PrincipalCommand {
    /// Add a principal.
    Add {
        #[command(flatten)]
        data: DataArg,
        /// Its name: letters, digits, `-`, `_`, `.`, `@`.
        name: String,
        /// RIGHT:PATTERN to grant (repeatable).
        #[arg(long = "grant", value_parser = parse_grant)]
        grants: Vec<Grant>,
        /// A client-certificate subject CN that authenticates as it (repeatable).
        #[arg(long = "cert-name", value_name = "CN")]
        cert_names: Vec<String>,
    },
    /// Remove a principal with its grants and tokens; its live connections lose
    /// every right at their next request.
    Remove {
        #[command(flatten)]
        data: DataArg,
        /// The principal.
        name: String,
    },
    /// List principals with their grants, certificate names and token ids.
    List {
        #[command(flatten)]
        data: DataArg,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Create a token for a principal and print it (the only time it is shown).
    Create {
        #[command(flatten)]
        data: DataArg,
        /// The principal.
        name: String,
        /// A note to recognise the token by in `principal list`.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a token by its id (as `principal list` shows it); connections already
    /// made with it keep their principal until they close.
    Revoke {
        #[command(flatten)]
        data: DataArg,
        /// The token's id.
        id: String,
    },
}

#[derive(Debug, Args)]
pub(super) struct DataArg {
    /// The broker's data dir [default: ./quiver-data, which must then be one].
    #[arg(long, env = "QUIVER_DATA")]
    data: Option<PathBuf>,
}

impl DataArg {
    /// The auth file of the data dir. The default dir must hold a broker's data:
    /// editing a `./quiver-data` of a folder no broker runs from would report success
    /// while the running broker never sees the change. A dir named with `--data` may
    /// be new (principals set up before the broker's first start).
    fn path(&self) -> anyhow::Result<PathBuf> {
        let storage = |dir: &Path| dir.join("db").exists();
        match &self.data {
            Some(dir) => {
                if !storage(dir) {
                    eprintln!(
                        "note: {} holds no broker data yet; a broker started with --data {} \
                         will use these principals",
                        dir.display(),
                        dir.display()
                    );
                }
                Ok(file::path_in(dir))
            }
            None => {
                let dir = Path::new(DEFAULT_DATA_DIR);
                if !storage(dir) {
                    bail!(
                        "no broker data dir here: {} holds no broker's data. Pass --data DIR \
                         (the data dir the broker's ready line names), or run this in the \
                         folder the broker runs from",
                        dir.display()
                    );
                }
                Ok(file::path_in(dir))
            }
        }
    }
}

fn parse_grant(text: &str) -> Result<Grant, String> {
    let (right, pattern) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}`: expected RIGHT:PATTERN, e.g. publish:sensors.>"))?;
    let right = <Right as clap::ValueEnum>::from_str(right, true)
        .map_err(|_| format!("`{right}` is not a right: use publish, subscribe, group or admin"))?;
    quiver_protocol::TopicPattern::parse(pattern)
        .map_err(|e| format!("`{pattern}` is not a topic pattern: {e}"))?;
    Ok(Grant {
        right,
        pattern: pattern.to_owned(),
    })
}

pub(super) fn run(command: AuthCommand) -> anyhow::Result<()> {
    match command {
        AuthCommand::Principal(PrincipalCommand::Add {
            data,
            name,
            grants,
            cert_names,
        }) => edit(&data.path()?, |file| {
            check_principal_name(&name).map_err(anyhow::Error::msg)?;
            if file.principals.contains_key(&name) {
                bail!(
                    "principal `{name}` exists already (change its rights with `quiver auth grant`)"
                );
            }
            let entry = PrincipalEntry {
                cert_names,
                grants,
                tokens: Vec::new(),
            };
            file.principals.insert(name.clone(), entry);
            eprintln!("added principal `{name}`");
            Ok(())
        }),
        AuthCommand::Principal(PrincipalCommand::Remove { data, name }) => {
            edit(&data.path()?, |file| {
                principal(file, &name)?;
                file.principals.remove(&name);
                eprintln!("removed principal `{name}`");
                Ok(())
            })
        }
        AuthCommand::Principal(PrincipalCommand::List { data }) => {
            let file = AuthFile::load(&data.path()?)?;
            print!("{}", list(&file));
            Ok(())
        }
        AuthCommand::Grant { data, name, grants } => edit(&data.path()?, |file| {
            let entry = principal(file, &name)?;
            for grant in grants {
                if !entry.grants.contains(&grant) {
                    entry.grants.push(grant);
                }
            }
            Ok(())
        }),
        AuthCommand::Revoke { data, name, grants } => edit(&data.path()?, |file| {
            let entry = principal(file, &name)?;
            for grant in &grants {
                let Some(at) = entry.grants.iter().position(|g| g == grant) else {
                    bail!(
                        "principal `{name}` holds no grant {}:{}",
                        grant.right,
                        grant.pattern
                    );
                };
                entry.grants.remove(at);
            }
            Ok(())
        }),
        AuthCommand::Token(TokenCommand::Create { data, name, label }) => {
            let mut created = None;
            edit(&data.path()?, |file| {
                let entry = principal(file, &name)?;
                let (token, stored) = token::generate(&label, now_ms())?;
                eprintln!(
                    "token {} for `{name}` (shown once; keep it secret):",
                    stored.id
                );
                entry.tokens.push(stored);
                created = Some(token);
                Ok(())
            })?;
            if let Some(token) = created {
                println!("{token}");
            }
            Ok(())
        }
        AuthCommand::Token(TokenCommand::Revoke { data, id }) => edit(&data.path()?, |file| {
            for (name, entry) in &mut file.principals {
                if let Some(at) = entry.tokens.iter().position(|t| t.id == id) {
                    entry.tokens.remove(at);
                    eprintln!("revoked token {id} of `{name}`");
                    return Ok(());
                }
            }
            bail!("no token has the id `{id}` (see `quiver auth principal list`)")
        }),
    }
}

/// Loads the auth file, applies `change` and saves it.
fn edit(
    path: &Path,
    change: impl FnOnce(&mut AuthFile) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut file = AuthFile::load(path)?;
    change(&mut file)?;
    file.save(path)
        .with_context(|| format!("saving {}", path.display()))
}

fn principal<'a>(file: &'a mut AuthFile, name: &str) -> anyhow::Result<&'a mut PrincipalEntry> {
    file.principals.get_mut(name).with_context(|| {
        format!("no principal `{name}` (add it with `quiver auth principal add {name}`)")
    })
}

/// One block per principal: grants, certificate names, token ids and labels.
fn list(file: &AuthFile) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if file.principals.is_empty() {
        out.push_str("no principals: clients need no credentials\n");
    }
    for (name, entry) in &file.principals {
        let _ = writeln!(out, "{name}");
        for grant in &entry.grants {
            let _ = writeln!(out, "  grant   {}:{}", grant.right, grant.pattern);
        }
        for cert in &entry.cert_names {
            let _ = writeln!(out, "  cert    CN={cert}");
        }
        for token in &entry.tokens {
            let label = if token.label.is_empty() {
                String::new()
            } else {
                format!(" ({})", token.label)
            };
            let _ = writeln!(out, "  token   {}{label}", token.id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_as_right_colon_pattern() {
        let grant = parse_grant("publish:sensors.>").unwrap();
        assert_eq!(grant.right, Right::Publish);
        assert_eq!(grant.pattern, "sensors.>");
        assert!(
            parse_grant("publish")
                .unwrap_err()
                .contains("RIGHT:PATTERN")
        );
        assert!(parse_grant("fly:a").unwrap_err().contains("not a right"));
        assert!(
            parse_grant("admin:a..b")
                .unwrap_err()
                .contains("not a topic pattern")
        );
    }
}
