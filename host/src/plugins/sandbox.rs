//! How much memory and time each attachment gets: the language a component was built
//! from, the defaults for that language, and the broker's maxima.
//!
//! An interpreter's component (CPython, StarlingMonkey) needs more memory and time per
//! batch than a compiled one, so the defaults depend on the language, read from the
//! component itself. An attachment may ask for its own limits ([`StageLimits`]) within
//! the maxima; what it does not set follows the language of the version running, so an
//! upgrade from Rust to JavaScript moves the stage to JavaScript's defaults.

use std::fmt;
use std::time::Duration;

use bytesize::ByteSize;
use quiver_protocol::StageLimits;

use crate::config::PluginsConfig;

/// The language a component was built from, as far as its contents tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    /// Rust, through the plugin SDK (`wit-bindgen-rust`).
    Rust,
    /// Python, through componentize-py (a CPython interpreter inside).
    Python,
    /// JavaScript, through componentize-js (a StarlingMonkey engine inside).
    JavaScript,
    /// Any other toolchain: treated as compiled code, like Rust.
    Other,
}

impl Language {
    /// Reads the language from a component: the `producers` sections of its modules
    /// (componentize-js and wit-bindgen name themselves there) and the libraries its
    /// modules link against (componentize-py links `libpython*.so`). Never fails: what
    /// cannot be read is [`Language::Other`].
    pub fn of(wasm: &[u8]) -> Self {
        let mut found = Found::default();
        for payload in wasmparser::Parser::new(0).parse_all(wasm) {
            let Ok(payload) = payload else { break };
            match payload {
                wasmparser::Payload::CustomSection(section) => {
                    if let wasmparser::KnownCustom::Producers(fields) = section.as_known() {
                        for field in fields.into_iter().flatten() {
                            for value in field.values.into_iter().flatten() {
                                found.producer(field.name, value.name);
                            }
                        }
                    }
                }
                wasmparser::Payload::ImportSection(imports) => {
                    for import in imports.into_imports().flatten() {
                        found.python |= import.module.starts_with("libpython");
                    }
                }
                _ => {}
            }
            if found.python || found.javascript {
                break;
            }
        }
        found.language()
    }

    /// Its name in settings and status: `rust`, `python`, `javascript`, `other`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::Python => "python",
            Self::JavaScript => "javascript",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`Language::of`] has seen so far.
#[derive(Debug, Default)]
struct Found {
    python: bool,
    javascript: bool,
    rust: bool,
}

impl Found {
    fn producer(&mut self, field: &str, value: &str) {
        match (field, value) {
            ("language", "JavaScript") | ("processed-by", "ComponentizeJS") => {
                self.javascript = true;
            }
            ("processed-by", "componentize-py") => self.python = true,
            ("language", "Rust") | ("processed-by", "wit-bindgen-rust" | "rustc") => {
                self.rust = true;
            }
            _ => {}
        }
    }

    /// An interpreter's engine is itself written in C, C++ and Rust, so its signs
    /// win over Rust's.
    fn language(&self) -> Language {
        if self.javascript {
            Language::JavaScript
        } else if self.python {
            Language::Python
        } else if self.rust {
            Language::Rust
        } else {
            Language::Other
        }
    }
}

/// The memory cap and call deadline one instance runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sandbox {
    /// Linear memory per instance, in bytes.
    pub memory_bytes: usize,
    /// Time per call.
    pub call_timeout: Duration,
}

impl Sandbox {
    fn from_settings(memory: ByteSize, call_timeout: Duration) -> Self {
        Self {
            memory_bytes: usize::try_from(memory.as_u64()).unwrap_or(usize::MAX),
            call_timeout,
        }
    }
}

/// The defaults for each language and the maxima an attachment may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxPolicy {
    /// Rust and any other compiled language.
    pub compiled: Sandbox,
    /// Python (componentize-py).
    pub python: Sandbox,
    /// JavaScript (componentize-js).
    pub javascript: Sandbox,
    /// The most an attachment may ask for.
    pub max: Sandbox,
}

impl SandboxPolicy {
    /// The policy the `[plugins]` settings describe.
    pub fn from_settings(plugins: &PluginsConfig) -> Self {
        Self {
            compiled: Sandbox::from_settings(plugins.memory_limit, plugins.call_timeout),
            python: Sandbox::from_settings(
                plugins.python.memory_limit,
                plugins.python.call_timeout,
            ),
            javascript: Sandbox::from_settings(
                plugins.javascript.memory_limit,
                plugins.javascript.call_timeout,
            ),
            max: Sandbox::from_settings(plugins.max_memory_limit, plugins.max_call_timeout),
        }
    }

    /// The defaults for `language`.
    pub fn default_for(&self, language: Language) -> Sandbox {
        match language {
            Language::Python => self.python,
            Language::JavaScript => self.javascript,
            Language::Rust | Language::Other => self.compiled,
        }
    }

    /// Checks what an attachment asks for against the maxima.
    pub fn check(&self, limits: StageLimits) -> Result<(), String> {
        if let Some(memory) = limits.memory {
            if memory < 1 << 20 {
                return Err(format!(
                    "a memory limit of {} is too small: at least 1 MiB",
                    ByteSize::b(memory).display().iec()
                ));
            }
            if memory > self.max.memory_bytes as u64 {
                return Err(format!(
                    "a memory limit of {} is over the broker's maximum of {} \
                     (plugins.max_memory_limit)",
                    ByteSize::b(memory).display().iec(),
                    ByteSize::b(self.max.memory_bytes as u64).display().iec()
                ));
            }
        }
        if let Some(ms) = limits.call_timeout_ms {
            let timeout = Duration::from_millis(ms);
            if timeout.is_zero() {
                return Err("a call deadline must be longer than zero".into());
            }
            if timeout > self.max.call_timeout {
                return Err(format!(
                    "a call deadline of {} is over the broker's maximum of {} \
                     (plugins.max_call_timeout)",
                    humantime::format_duration(timeout),
                    humantime::format_duration(self.max.call_timeout)
                ));
            }
        }
        Ok(())
    }

    /// The sandbox an attachment of a `language` plugin runs in: what it asked for,
    /// the language's defaults for the rest, never above the maxima (which may have
    /// been lowered since it was attached).
    pub fn resolve(&self, language: Language, limits: StageLimits) -> Sandbox {
        let default = self.default_for(language);
        let memory = limits.memory.map_or(default.memory_bytes, |m| {
            usize::try_from(m).unwrap_or(usize::MAX)
        });
        let call_timeout = limits
            .call_timeout_ms
            .map_or(default.call_timeout, Duration::from_millis);
        Sandbox {
            memory_bytes: memory.min(self.max.memory_bytes),
            call_timeout: call_timeout.min(self.max.call_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SandboxPolicy {
        SandboxPolicy::from_settings(&PluginsConfig::default())
    }

    #[test]
    fn unset_limits_follow_the_language() {
        let policy = policy();
        let none = StageLimits::default();
        assert_eq!(policy.resolve(Language::Rust, none), policy.compiled);
        assert_eq!(policy.resolve(Language::Other, none), policy.compiled);
        assert_eq!(policy.resolve(Language::Python, none), policy.python);
        assert_eq!(
            policy.resolve(Language::JavaScript, none),
            policy.javascript
        );
        let memory_only = StageLimits {
            memory: Some(8 << 20),
            call_timeout_ms: None,
        };
        let sandbox = policy.resolve(Language::JavaScript, memory_only);
        assert_eq!(sandbox.memory_bytes, 8 << 20);
        assert_eq!(sandbox.call_timeout, policy.javascript.call_timeout);
    }

    #[test]
    fn limits_beyond_the_maxima_are_refused_or_capped() {
        let policy = policy();
        let too_big = StageLimits {
            memory: Some(policy.max.memory_bytes as u64 + 1),
            call_timeout_ms: None,
        };
        assert!(
            policy
                .check(too_big)
                .unwrap_err()
                .contains("max_memory_limit")
        );
        let too_long = StageLimits {
            memory: None,
            call_timeout_ms: Some(u64::try_from(policy.max.call_timeout.as_millis()).unwrap() + 1),
        };
        assert!(
            policy
                .check(too_long)
                .unwrap_err()
                .contains("max_call_timeout")
        );
        let tiny = StageLimits {
            memory: Some(1000),
            call_timeout_ms: Some(0),
        };
        assert!(policy.check(tiny).unwrap_err().contains("at least 1 MiB"));
        assert!(policy.check(StageLimits::default()).is_ok());
        // Maxima lowered after an attachment was made: it runs at the maximum.
        assert_eq!(
            policy.resolve(Language::Rust, too_big).memory_bytes,
            policy.max.memory_bytes
        );
        assert_eq!(
            policy.resolve(Language::Rust, too_long).call_timeout,
            policy.max.call_timeout
        );
    }

    #[test]
    fn the_language_of_what_is_not_a_component_is_other() {
        assert_eq!(Language::of(b"not wasm"), Language::Other);
        assert_eq!(Language::of(b""), Language::Other);
        let mut found = Found::default();
        found.producer("language", "Rust");
        found.producer("processed-by", "ComponentizeJS");
        assert_eq!(
            found.language(),
            Language::JavaScript,
            "an engine's Rust does not count"
        );
    }
}
