//! Plain reference versions of the name grammar and of pattern matching
//! (docs/protocol.md), written as simply as possible for `quiver_protocol::name` to be
//! checked against: by the property tests here and by the `names` fuzz target, which
//! includes this file by path.

/// The longest topic name or pattern, in bytes.
const MAX_NAME_LEN: usize = 255;

/// Whether `s` is a valid topic name (or, with `pattern`, a valid pattern):
/// dot-separated, non-empty tokens of `A-Z a-z 0-9 _ -`, at most 255 bytes in all; in a
/// pattern a token may also be `*`, and the last one `>`.
pub fn reference_is_valid(s: &str, pattern: bool) -> bool {
    let tokens: Vec<&str> = s.split('.').collect();
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && tokens.iter().enumerate().all(|(i, token)| {
            let literal = !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            let wildcard = *token == "*" || (*token == ">" && i + 1 == tokens.len());
            literal || (pattern && wildcard)
        })
}

/// Whether the pattern's tokens match the name's, by recursion on the two token lists:
/// `*` takes one token, a final `>` one or more, a literal itself.
pub fn reference_matches(pattern: &[&str], name: &[&str]) -> bool {
    match (pattern, name) {
        ([], []) => true,
        ([">"], rest) => !rest.is_empty(),
        (["*", p @ ..], [_, n @ ..]) => reference_matches(p, n),
        ([literal, p @ ..], [token, n @ ..]) => literal == token && reference_matches(p, n),
        _ => false,
    }
}
