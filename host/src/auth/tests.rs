//! Authentication and grant checks against real auth files in temp dirs.

use super::file::{Grant, PrincipalEntry};
use super::*;

fn topic(s: &str) -> TopicName {
    TopicName::parse(s).unwrap()
}

fn pattern(s: &str) -> TopicPattern {
    TopicPattern::parse(s).unwrap()
}

/// An auth file with `alice` (publish `sensors.>`, subscribe `sensors.*.temp`,
/// certificate `alice.example`) and a token for her.
fn setup(allow_anonymous: bool) -> (tempfile::TempDir, Arc<Authenticator>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = file::path_in(dir.path());
    let (token, entry) = token::generate("test", 0).unwrap();
    let mut auth = AuthFile::default();
    auth.principals.insert(
        "alice".into(),
        PrincipalEntry {
            cert_names: vec!["alice.example".into()],
            grants: vec![
                Grant {
                    right: Right::Publish,
                    pattern: "sensors.>".into(),
                },
                Grant {
                    right: Right::Subscribe,
                    pattern: "sensors.*.temp".into(),
                },
            ],
            tokens: vec![entry],
        },
    );
    auth.save(&path).unwrap();
    let authenticator = Authenticator::open(AuthSettings {
        file: path,
        allow_anonymous,
        mutual_tls: false,
    })
    .unwrap();
    (dir, Arc::new(authenticator), token)
}

#[test]
fn without_principals_everyone_may_do_everything() {
    let dir = tempfile::tempdir().unwrap();
    let auth = Arc::new(
        Authenticator::open(AuthSettings {
            file: file::path_in(dir.path()),
            allow_anonymous: false,
            mutual_tls: false,
        })
        .unwrap(),
    );
    assert!(!auth.is_required());
    let access = auth.authenticate(None, None).unwrap();
    assert_eq!(access.principal(), None);
    access
        .check_topic(Right::Admin, &topic("any.thing"))
        .unwrap();
    access
        .check_pattern(Right::Subscribe, &pattern(">"))
        .unwrap();
}

#[test]
fn a_token_or_a_certificate_proves_a_principal() {
    let (_dir, auth, token) = setup(false);
    let by_token = auth.authenticate(Some(&token), None).unwrap();
    assert_eq!(by_token.principal(), Some("alice"));
    let by_cert = auth.authenticate(None, Some("alice.example")).unwrap();
    assert_eq!(by_cert.principal(), Some("alice"));
}

#[test]
fn bad_or_missing_credentials_are_refused_with_the_reason() {
    let (_dir, auth, token) = setup(false);
    let reason = |token: Option<&str>, cert: Option<&str>| {
        auth.authenticate(token, cert).unwrap_err().to_string()
    };
    assert!(reason(None, None).contains("requires authentication"));
    assert!(reason(Some("hunter2"), None).contains("malformed"));
    let forged = format!("{}0", &token[..token.len() - 1]);
    let forged = if forged == token {
        format!("{}1", &token[..token.len() - 1])
    } else {
        forged
    };
    assert!(reason(Some(&forged), None).contains("not valid"));
    assert!(reason(None, Some("mallory")).contains("maps to no principal"));
}

#[test]
fn grants_decide_per_right_and_topic() {
    let (_dir, auth, token) = setup(false);
    let alice = auth.authenticate(Some(&token), None).unwrap();
    alice
        .check_topic(Right::Publish, &topic("sensors.eu.temp"))
        .unwrap();
    let denied = alice
        .check_topic(Right::Publish, &topic("billing.invoices"))
        .unwrap_err();
    assert_eq!(
        denied.to_string(),
        "principal `alice` may not publish to `billing.invoices`: no `publish` grant covers it"
    );
    // Subscribing needs its own grant, covering the whole pattern.
    alice
        .check_pattern(Right::Subscribe, &pattern("sensors.eu.temp"))
        .unwrap();
    alice
        .check_pattern(Right::Subscribe, &pattern("sensors.*.temp"))
        .unwrap();
    alice
        .check_pattern(Right::Subscribe, &pattern("sensors.>"))
        .unwrap_err();
    alice
        .check_topic(Right::Admin, &topic("sensors.eu.temp"))
        .unwrap_err();
    assert!(alice.may_see(&topic("sensors.eu.temp")));
    assert!(!alice.may_see(&topic("billing.invoices")));
}

#[test]
fn anonymous_clients_get_the_anonymous_principals_grants_when_allowed() {
    let (_dir, auth, _) = setup(true);
    let anonymous = auth.authenticate(None, None).unwrap();
    anonymous
        .check_topic(Right::Publish, &topic("sensors.eu.temp"))
        .unwrap_err();
    let mut file = AuthFile::load(auth.file()).unwrap();
    file.principals.insert(
        ANONYMOUS.into(),
        PrincipalEntry {
            grants: vec![Grant {
                right: Right::Subscribe,
                pattern: "public.>".into(),
            }],
            ..PrincipalEntry::default()
        },
    );
    file.save(auth.file()).unwrap();
    auth.refresh();
    anonymous
        .check_pattern(Right::Subscribe, &pattern("public.news"))
        .unwrap();
}

#[test]
fn changes_to_the_file_apply_to_live_access_and_a_broken_file_changes_nothing() {
    let (_dir, auth, token) = setup(false);
    let alice = auth.authenticate(Some(&token), None).unwrap();
    let mut file = AuthFile::load(auth.file()).unwrap();
    file.principals.get_mut("alice").unwrap().grants.clear();
    file.save(auth.file()).unwrap();
    auth.refresh();
    alice
        .check_topic(Right::Publish, &topic("sensors.eu.temp"))
        .unwrap_err();

    std::fs::write(auth.file(), "this is not toml [").unwrap();
    auth.refresh();
    // The token still works: the broken file was not taken.
    assert_eq!(
        auth.authenticate(Some(&token), None).unwrap().principal(),
        Some("alice")
    );
}
