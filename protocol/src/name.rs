//! Topic names and subscription patterns: the grammar, parsing and matching.
//!
//! A topic name is one or more dot-separated tokens (`sensors.eu.temp`). A token is
//! one or more of `A-Z a-z 0-9 _ -`. A name is at most [`MAX_NAME_LEN`] bytes.
//!
//! A pattern has the same shape, except that a token may be `*` (exactly one token)
//! and the last token may be `>` (one or more trailing tokens): `sensors.*.temp`,
//! `sensors.>`.
//!
//! Invariant: a [`TopicName`] or [`TopicPattern`] value always satisfies its grammar;
//! the only way to build one is [`TopicName::parse`] / [`TopicPattern::parse`].

use std::fmt;

/// The longest topic name or pattern, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Why a string is not a valid topic name or pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The string is empty.
    #[error("a topic name cannot be empty")]
    Empty,
    /// The string is longer than [`MAX_NAME_LEN`].
    #[error("{len} bytes is longer than the limit of {MAX_NAME_LEN} bytes")]
    TooLong {
        /// The length of the rejected string.
        len: usize,
    },
    /// Two dots in a row, or a dot at the start or end.
    #[error("token {position} is empty (names are dot-separated tokens like `sensors.eu.temp`)")]
    EmptyToken {
        /// One-based index of the empty token.
        position: usize,
    },
    /// A character outside `A-Z a-z 0-9 _ -`.
    #[error("character {ch:?} is not allowed (tokens use A-Z a-z 0-9 _ -)")]
    InvalidChar {
        /// The rejected character.
        ch: char,
    },
    /// `*` or `>` used in a topic name, or `>` used before the last token of a pattern.
    #[error("{0}")]
    MisplacedWildcard(&'static str),
}

/// A valid topic name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// Parses a topic name, checking the grammar in the module docs.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check_length(name)?;
        for (i, token) in name.split('.').enumerate() {
            if token == "*" || token == ">" {
                return Err(NameError::MisplacedWildcard(
                    "wildcards `*` and `>` belong in subscription patterns, not topic names",
                ));
            }
            check_token(token, i + 1)?;
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dot-separated tokens of the name.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by topic name are searched with a `&str`: a name is compared, ordered and
/// hashed exactly as its string.
impl std::borrow::Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for TopicName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// One token of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PatternToken {
    Literal(String),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more trailing tokens (only last).
    Rest,
}

/// A valid subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicPattern {
    raw: String,
    tokens: Vec<PatternToken>,
}

impl TopicPattern {
    /// Parses a pattern, checking the grammar in the module docs.
    pub fn parse(pattern: &str) -> Result<Self, NameError> {
        check_length(pattern)?;
        let count = pattern.split('.').count();
        let mut tokens = Vec::with_capacity(count);
        for (i, token) in pattern.split('.').enumerate() {
            tokens.push(match token {
                "*" => PatternToken::One,
                ">" if i + 1 == count => PatternToken::Rest,
                ">" => {
                    return Err(NameError::MisplacedWildcard(
                        "`>` matches the remaining tokens and must be the last token",
                    ));
                }
                literal => {
                    check_token(literal, i + 1)?;
                    PatternToken::Literal(literal.to_owned())
                }
            });
        }
        Ok(Self {
            raw: pattern.to_owned(),
            tokens,
        })
    }

    /// `>`: every topic.
    pub fn every() -> Self {
        Self {
            raw: ">".to_owned(),
            tokens: vec![PatternToken::Rest],
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// True when the pattern has no wildcard, i.e. it names exactly one topic.
    pub fn is_literal(&self) -> bool {
        self.tokens
            .iter()
            .all(|t| matches!(t, PatternToken::Literal(_)))
    }

    /// Whether `name` matches this pattern.
    pub fn matches(&self, name: &TopicName) -> bool {
        let mut names = name.tokens();
        for token in &self.tokens {
            match token {
                PatternToken::Rest => return names.next().is_some(),
                PatternToken::One => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                PatternToken::Literal(lit) => {
                    if names.next() != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }

    /// Whether every topic `other` matches is matched by this pattern too, i.e. a
    /// right granted on `self` covers a subscription to `other`.
    pub fn covers(&self, other: &TopicPattern) -> bool {
        let mut theirs = other.tokens.iter();
        for token in &self.tokens {
            let Some(their) = theirs.next() else {
                return false;
            };
            match (token, their) {
                // `>` takes one or more tokens, whatever they are.
                (PatternToken::Rest, _) => return true,
                // `*` takes exactly one token; `>` may take more.
                (PatternToken::One, PatternToken::Rest) => return false,
                (PatternToken::One, _) => {}
                (PatternToken::Literal(ours), PatternToken::Literal(their)) if ours == their => {}
                (PatternToken::Literal(_), _) => return false,
            }
        }
        theirs.next().is_none()
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl std::str::FromStr for TopicPattern {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn check_length(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: s.len() });
    }
    Ok(())
}

fn check_token(token: &str, position: usize) -> Result<(), NameError> {
    if token.is_empty() {
        return Err(NameError::EmptyToken { position });
    }
    match token
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(ch) => Err(NameError::InvalidChar { ch }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> TopicName {
        TopicName::parse(s).unwrap()
    }

    #[test]
    fn valid_names() {
        for s in [
            "a",
            "sensors.eu.temp",
            "A-b_c.0.9",
            &"x".repeat(MAX_NAME_LEN),
        ] {
            assert_eq!(TopicName::parse(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn invalid_names() {
        assert_eq!(TopicName::parse(""), Err(NameError::Empty));
        assert_eq!(
            TopicName::parse(&"x".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong {
                len: MAX_NAME_LEN + 1
            })
        );
        assert_eq!(
            TopicName::parse("a..b"),
            Err(NameError::EmptyToken { position: 2 })
        );
        assert_eq!(
            TopicName::parse(".a"),
            Err(NameError::EmptyToken { position: 1 })
        );
        assert_eq!(
            TopicName::parse("a b"),
            Err(NameError::InvalidChar { ch: ' ' })
        );
        assert_eq!(
            TopicName::parse("caf\u{e9}"),
            Err(NameError::InvalidChar { ch: '\u{e9}' })
        );
        assert!(matches!(
            TopicName::parse("a.*"),
            Err(NameError::MisplacedWildcard(_))
        ));
        assert!(matches!(
            TopicName::parse("a.>"),
            Err(NameError::MisplacedWildcard(_))
        ));
    }

    #[test]
    fn pattern_grammar() {
        assert!(TopicPattern::parse("a.>.b").is_err());
        assert!(TopicPattern::parse("a..b").is_err());
        assert!(TopicPattern::parse("a.b*").is_err());
        assert!(TopicPattern::parse(">").is_ok());
        assert!(TopicPattern::parse("*.*").is_ok());
        assert!(TopicPattern::parse("a.b").unwrap().is_literal());
        assert!(!TopicPattern::parse("a.*").unwrap().is_literal());
    }

    #[test]
    fn matching() {
        let cases = [
            ("sensors.*.temp", "sensors.eu.temp", true),
            ("sensors.*.temp", "sensors.eu.hum", false),
            ("sensors.*.temp", "sensors.temp", false),
            ("sensors.*.temp", "sensors.eu.x.temp", false),
            ("sensors.>", "sensors.eu", true),
            ("sensors.>", "sensors.eu.temp.max", true),
            ("sensors.>", "sensors", false),
            (">", "a", true),
            (">", "a.b.c", true),
            ("*", "a", true),
            ("*", "a.b", false),
            ("a.b", "a.b", true),
            ("a.b", "a.b.c", false),
            ("a.b.c", "a.b", false),
        ];
        for (pattern, topic, expected) in cases {
            let p = TopicPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(&name(topic)), expected, "{pattern} vs {topic}");
        }
    }

    #[test]
    fn covering() {
        let cases = [
            (">", ">", true),
            (">", "a.*.c", true),
            ("a.>", "a.b", true),
            ("a.>", "a.*", true),
            ("a.>", "a.>", true),
            ("a.>", "a", false),
            ("a.>", ">", false),
            ("a.*", "a.b", true),
            ("a.*", "a.*", true),
            ("a.*", "a.>", false),
            ("a.*", "a.b.c", false),
            ("*.b", "a.b", true),
            ("a.b", "a.b", true),
            ("a.b", "a.*", false),
            ("a.b", "a.b.c", false),
            ("a.b.c", "a.b", false),
            ("b.>", "a.>", false),
        ];
        for (ours, theirs, expected) in cases {
            let (ours, theirs) = (pattern(ours), pattern(theirs));
            assert_eq!(ours.covers(&theirs), expected, "{ours} covers {theirs}");
        }
        assert!(TopicPattern::every().covers(&pattern("x.y")));
        assert_eq!(TopicPattern::every(), pattern(">"));
    }

    /// `covers` agrees with `matches` on concrete topics: a literal pattern is covered
    /// exactly when its one topic matches.
    #[test]
    fn covering_a_literal_is_matching_it() {
        let patterns = [">", "a.>", "a.*", "*.b", "a.b", "*", "*.*.c"];
        let topics = ["a", "a.b", "a.c", "b.b", "a.b.c", "x.y.c"];
        for p in patterns {
            for t in topics {
                assert_eq!(
                    pattern(p).covers(&pattern(t)),
                    pattern(p).matches(&name(t)),
                    "{p} vs {t}"
                );
            }
        }
    }

    fn pattern(s: &str) -> TopicPattern {
        TopicPattern::parse(s).unwrap()
    }
}
