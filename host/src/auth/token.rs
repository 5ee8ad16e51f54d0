//! Tokens: `qvt_<id>_<secret>`, 16 hex digits of public id and 64 of secret (256
//! random bits). The auth file keeps the id and a SHA-256 of the secret, never the
//! secret. A secret this long needs no slow password hash: nobody can guess it, and a
//! stolen auth file does not reveal it.

use sha2::{Digest, Sha256};

use super::AuthError;
use super::file::TokenEntry;
use crate::util::hex;

const PREFIX: &str = "qvt_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A new token: the text to hand to the client (shown once) and what to store.
pub fn generate(label: &str, now_ms: u64) -> Result<(String, TokenEntry), AuthError> {
    let mut random = [0u8; ID_BYTES + SECRET_BYTES];
    getrandom::fill(&mut random).map_err(|e| AuthError::Random(e.to_string()))?;
    let (id, secret) = random.split_at(ID_BYTES);
    let (id, secret) = (hex(id), hex(secret));
    let entry = TokenEntry {
        sha256: digest(&secret),
        id: id.clone(),
        created_ms: now_ms,
        label: label.to_owned(),
    };
    Ok((format!("{PREFIX}{id}_{secret}"), entry))
}

/// Splits a token into its id and secret; `None` when it is not shaped like one.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let hex_of =
        |s: &str, bytes: usize| s.len() == bytes * 2 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, ID_BYTES) && hex_of(secret, SECRET_BYTES)).then_some((id, secret))
}

/// Whether `secret` is the one `entry` was made for. Compares in constant time,
/// although comparing digests of 256-bit secrets leaks nothing useful anyway.
pub fn verify(entry: &TokenEntry, secret: &str) -> bool {
    let ours = digest(secret);
    ours.len() == entry.sha256.len()
        && ours
            .bytes()
            .zip(entry.sha256.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_parses_and_verifies() {
        let (token, entry) = generate("ci", 7).unwrap();
        let (id, secret) = parse(&token).unwrap();
        assert_eq!(id, entry.id);
        assert!(verify(&entry, secret));
        assert!(!token.contains(&entry.sha256));
    }

    #[test]
    fn a_changed_secret_does_not_verify() {
        let (token, entry) = generate("", 0).unwrap();
        let (_, secret) = parse(&token).unwrap();
        let mut other = secret.to_owned().into_bytes();
        other[0] = if other[0] == b'0' { b'1' } else { b'0' };
        assert!(!verify(&entry, std::str::from_utf8(&other).unwrap()));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        let (token, _) = generate("", 0).unwrap();
        for bad in [
            "",
            "qvt_",
            &token[..token.len() - 1],
            &token.replace("qvt_", "qvx_"),
            &format!("{token}0"),
            "qvt_0123456789abcdeg_00",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
