//! Who a client is (authentication) and what it may do (authorization).
//!
//! A client proves a principal with a token in its hello or with a client certificate
//! whose subject common name maps to one (mutual TLS). [`Authenticator`] holds the
//! auth file ([`file`]) compiled for lookups and re-reads it when it changes.
//! [`Access`] is one connection's view: every request is checked against the
//! principal's grants *as they are now*, so a revoked grant or a removed principal
//! takes effect on live connections at their next request (a revoked token only stops
//! new connections).
//!
//! Rights are independent of each other: `publish` (publish and request to a topic),
//! `subscribe` (subscriptions, and so answering requests), `group` (create, join,
//! reset, delete and describe durable groups on the topics they consume) and `admin`
//! (create, delete and configure topics, attach plugins to them; deploying, upgrading
//! and removing plugin binaries needs `admin` on `>`, every topic).
//!
//! A broker whose auth file names no principal requires no authentication: every
//! client may do everything (start-up refuses this on a non-loopback address unless
//! anonymous access is explicitly allowed). Once one principal exists, clients must
//! authenticate; if anonymous access is allowed, clients without credentials get the
//! grants of the principal named `anonymous`, if any.

pub mod file;
pub mod token;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use quiver_protocol::{TopicName, TopicPattern};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use file::{ANONYMOUS, AuthFile, TokenEntry};

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// Publish (and send requests) to the topics.
    Publish,
    /// Subscribe to the topics (and so answer requests sent to them).
    Subscribe,
    /// Create, join, reset, describe and delete durable groups on the topics.
    Group,
    /// Create, delete and configure the topics and attach plugins to them.
    Admin,
}

impl Right {
    /// What the right lets one do, for messages: "publish to".
    fn verb(self) -> &'static str {
        match self {
            Self::Publish => "publish to",
            Self::Subscribe => "subscribe to",
            Self::Group => "consume as a group",
            Self::Admin => "administer",
        }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Group => "group",
            Self::Admin => "admin",
        })
    }
}

/// Why authentication or the auth file failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The auth file could not be read, parsed or written.
    #[error("auth file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No randomness for a new token.
    #[error("no randomness for a token: {0}")]
    Random(String),
    /// The client's credentials were missing or not accepted.
    #[error("{0}")]
    Unauthenticated(String),
}

impl AuthError {
    fn file(path: &Path, reason: impl fmt::Display) -> Self {
        Self::File {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// A request the principal has no grant for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("principal `{who}` may not {action} `{target}`: {needs}")]
pub struct Denied {
    /// The principal (`anonymous` for a client without credentials).
    pub who: String,
    /// What it tried: "publish to", "describe"….
    pub action: &'static str,
    /// The topic or pattern.
    pub target: String,
    /// The grant it lacks.
    pub needs: String,
}

/// One principal's grants, compiled.
#[derive(Debug, Default)]
struct Rights {
    grants: Vec<(Right, TopicPattern)>,
}

impl Rights {
    fn covers_topic(&self, right: Right, topic: &TopicName) -> bool {
        self.grants
            .iter()
            .any(|(r, pattern)| *r == right && pattern.matches(topic))
    }

    fn covers_pattern(&self, right: Right, wanted: &TopicPattern) -> bool {
        self.grants
            .iter()
            .any(|(r, pattern)| *r == right && pattern.covers(wanted))
    }

    fn any_on(&self, topic: &TopicName) -> bool {
        self.grants
            .iter()
            .any(|(_, pattern)| pattern.matches(topic))
    }
}

/// The auth file, compiled for lookups.
#[derive(Debug, Default)]
struct Registry {
    /// At least one principal exists: clients must authenticate.
    required: bool,
    /// Token id → (principal, token).
    tokens: HashMap<String, (String, TokenEntry)>,
    /// Certificate common name → principal.
    cert_names: HashMap<String, String>,
    rights: HashMap<String, Arc<Rights>>,
}

impl Registry {
    fn compile(file: &AuthFile, mutual_tls: bool) -> Self {
        let mut registry = Self {
            required: file.is_configured() || mutual_tls,
            ..Self::default()
        };
        for (name, principal) in &file.principals {
            for token in &principal.tokens {
                registry
                    .tokens
                    .insert(token.id.clone(), (name.clone(), token.clone()));
            }
            for cert in &principal.cert_names {
                registry.cert_names.insert(cert.clone(), name.clone());
            }
            let grants = principal
                .grants
                .iter()
                // The file was validated on load, so every pattern parses.
                .filter_map(|g| Some((g.right, TopicPattern::parse(&g.pattern).ok()?)))
                .collect();
            registry
                .rights
                .insert(name.clone(), Arc::new(Rights { grants }));
        }
        registry
    }
}

/// Settings for [`Authenticator::open`].
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The auth file.
    pub file: PathBuf,
    /// Let clients without credentials in even when principals exist (with the grants
    /// of the `anonymous` principal), or on a non-loopback address without any.
    pub allow_anonymous: bool,
    /// Client certificates are accepted (a client CA is configured): authentication
    /// is required even before the auth file names a principal.
    pub mutual_tls: bool,
}

/// When the auth file was last read: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

/// Authenticates clients against the auth file and answers authorization questions.
#[derive(Debug)]
pub struct Authenticator {
    settings: AuthSettings,
    registry: RwLock<Arc<Registry>>,
    stamp: Mutex<Stamp>,
}

impl Authenticator {
    /// Reads the auth file. A file that exists but cannot be used is an error: the
    /// broker must not start with different rights than the operator wrote.
    pub fn open(settings: AuthSettings) -> Result<Self, AuthError> {
        let stamp = stamp(&settings.file);
        let file = AuthFile::load(&settings.file)?;
        Ok(Self {
            registry: RwLock::new(Arc::new(Registry::compile(&file, settings.mutual_tls))),
            stamp: Mutex::new(stamp),
            settings,
        })
    }

    /// True when clients must authenticate (the auth file names a principal, or
    /// client certificates are accepted).
    pub fn is_required(&self) -> bool {
        self.registry().required
    }

    /// True when clients without credentials are let in although principals exist.
    pub fn allows_anonymous(&self) -> bool {
        self.settings.allow_anonymous
    }

    /// The auth file this authenticator reads.
    pub fn file(&self) -> &Path {
        &self.settings.file
    }

    /// Re-reads the auth file if it changed since it was last read. A file that no
    /// longer parses is logged and ignored: the rights in force stay as they were.
    pub fn refresh(&self) {
        let now = stamp(&self.settings.file);
        let mut last = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        if *last == now {
            return;
        }
        *last = now;
        match AuthFile::load(&self.settings.file) {
            Ok(file) => {
                let registry = Registry::compile(&file, self.settings.mutual_tls);
                info!(principals = registry.rights.len(), "auth file reloaded");
                *self
                    .registry
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(registry);
            }
            Err(e) => {
                warn!(error = %e, "auth file not reloaded; the previous rights stay in force")
            }
        }
    }

    /// Finds the principal a client proves with its token (first) or certificate.
    pub fn authenticate(
        self: &Arc<Self>,
        token: Option<&str>,
        cert_name: Option<&str>,
    ) -> Result<Access, AuthError> {
        self.refresh();
        let registry = self.registry();
        let refuse = |reason: String| Err(AuthError::Unauthenticated(reason));
        let principal = if let Some(token) = token {
            let Some((id, secret)) = token::parse(token) else {
                return refuse("the token is malformed (expected qvt_<id>_<secret>)".into());
            };
            match registry.tokens.get(id) {
                Some((principal, entry)) if token::verify(entry, secret) => Some(principal.clone()),
                _ => return refuse(format!("token {id} is not valid (unknown or revoked)")),
            }
        } else if let Some(cert_name) = cert_name {
            match registry.cert_names.get(cert_name) {
                Some(principal) => Some(principal.clone()),
                None => {
                    return refuse(format!(
                        "the client certificate's subject CN=`{cert_name}` maps to no principal"
                    ));
                }
            }
        } else if registry.required && !self.settings.allow_anonymous {
            return refuse(
                "this broker requires authentication: connect with a token (--token) or a \
                 client certificate"
                    .into(),
            );
        } else {
            None
        };
        Ok(Access {
            auth: Arc::clone(self),
            principal,
        })
    }

    /// The access a named principal has (for work done on its behalf later, such as
    /// an attached plugin's routes).
    pub fn access_of(self: &Arc<Self>, principal: Option<String>) -> Access {
        Access {
            auth: Arc::clone(self),
            principal,
        }
    }

    fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry.read().unwrap_or_else(PoisonError::into_inner))
    }
}

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// One client's (or attachment's) standing: its principal, checked against the
/// grants in force at each question.
#[derive(Debug, Clone)]
pub struct Access {
    auth: Arc<Authenticator>,
    principal: Option<String>,
}

impl Access {
    /// The authenticated principal; `None` for a client without credentials.
    pub fn principal(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    /// May the client use `right` on `topic`? Denials are logged.
    pub fn check_topic(&self, right: Right, topic: &TopicName) -> Result<(), Denied> {
        self.decide(right, topic.as_str(), |rights| {
            rights.covers_topic(right, topic)
        })
    }

    /// May the client use `right` on every topic `pattern` matches? Denials are logged.
    pub fn check_pattern(&self, right: Right, pattern: &TopicPattern) -> Result<(), Denied> {
        self.decide(right, pattern.as_str(), |rights| {
            rights.covers_pattern(right, pattern)
        })
    }

    /// May the client describe `topic` (it holds some right on it)? Denials are
    /// logged.
    pub fn check_visible(&self, topic: &TopicName) -> Result<(), Denied> {
        if self.may_see(topic) {
            return Ok(());
        }
        Err(self.denied("describe", topic.as_str(), "it holds no grant on it".into()))
    }

    /// Whether the client may use `right` on every topic `pattern` matches (for
    /// filtering lists: not logged).
    pub fn allows_pattern(&self, right: Right, pattern: &TopicPattern) -> bool {
        self.rights()
            .is_none_or(|rights| rights.covers_pattern(right, pattern))
    }

    /// May the client know `topic` exists (it holds some right on it)?
    pub fn may_see(&self, topic: &TopicName) -> bool {
        self.rights().is_none_or(|rights| rights.any_on(topic))
    }

    /// True when nothing is checked: the broker requires no authentication.
    pub fn is_unrestricted(&self) -> bool {
        self.rights().is_none()
    }

    fn decide(
        &self,
        right: Right,
        target: &str,
        allowed: impl FnOnce(&Rights) -> bool,
    ) -> Result<(), Denied> {
        if self.rights().is_none_or(|rights| allowed(&rights)) {
            return Ok(());
        }
        Err(self.denied(
            right.verb(),
            target,
            format!("no `{right}` grant covers it"),
        ))
    }

    fn denied(&self, action: &'static str, target: &str, needs: String) -> Denied {
        let who = self.principal.as_deref().unwrap_or(ANONYMOUS);
        warn!(principal = who, action, target, "request denied");
        Denied {
            who: who.to_owned(),
            action,
            target: target.to_owned(),
            needs,
        }
    }

    /// The principal's grants now; `None` when no authentication is configured and
    /// everything is allowed.
    fn rights(&self) -> Option<Arc<Rights>> {
        let registry = self.auth.registry();
        if !registry.required {
            return None;
        }
        let name = match &self.principal {
            Some(name) => name.as_str(),
            None if self.auth.settings.allow_anonymous => ANONYMOUS,
            None => return Some(Arc::default()),
        };
        Some(registry.rights.get(name).cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests;
