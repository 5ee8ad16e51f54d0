//! Topic names and patterns: parsing agrees with a plain reference of the grammar,
//! matching agrees with a reference matcher, and a pattern that covers another matches
//! every name the other matches.
//!
//! The input is UTF-8 text of up to three lines: a pattern, another pattern, a name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quiver_fuzz::{reference_is_valid, reference_matches};
use quiver_protocol::{TopicName, TopicPattern};

fn check_pattern(s: &str) -> Option<TopicPattern> {
    let parsed = TopicPattern::parse(s);
    assert_eq!(
        parsed.is_ok(),
        reference_is_valid(s, true),
        "pattern {s:?}: {parsed:?}"
    );
    let pattern = parsed.ok()?;
    assert_eq!(pattern.as_str(), s);
    Some(pattern)
}

fuzz_target!(|text: &str| {
    let mut lines = text.split('\n');
    let pattern = lines.next().and_then(check_pattern);
    let other = lines.next().and_then(check_pattern);
    let Some(name) = lines.next() else {
        return;
    };
    let parsed = TopicName::parse(name);
    assert_eq!(
        parsed.is_ok(),
        reference_is_valid(name, false),
        "name {name:?}: {parsed:?}"
    );
    let Ok(name) = parsed else {
        return;
    };

    // A name is a pattern that matches itself only.
    let literal = TopicPattern::parse(name.as_str()).expect("a name is a valid pattern");
    assert!(literal.is_literal() && literal.matches(&name));

    let name_tokens: Vec<&str> = name.tokens().collect();
    for p in [&pattern, &other].into_iter().flatten() {
        let tokens: Vec<&str> = p.as_str().split('.').collect();
        assert_eq!(
            p.matches(&name),
            reference_matches(&tokens, &name_tokens),
            "{p} against {name}"
        );
    }
    if let (Some(pattern), Some(other)) = (pattern, other)
        && pattern.covers(&other)
        && other.matches(&name)
    {
        assert!(
            pattern.matches(&name),
            "{pattern} covers {other}, which matches {name}"
        );
    }
});
