//! Tidy: the walls ARCHITECTURE.md promises, checked on every test run. Each outside
//! library that Quiver keeps behind one wall is named only inside it (quinn, rustls,
//! rcgen and x509-parser in the transport, sled in storage, wasmtime in the plugin
//! runtime, the MQTT codec in the MQTT listener's packets, the HTTP stack and the
//! metrics client in the HTTP listener), and every Rust source file opens with a `//!`
//! line saying what it is for.
//! Reads the source as text; fast.

use std::path::{Path, PathBuf};

/// A library and the only places (paths from the repository root; a trailing `/`
/// means everything below) that may name it.
const WALLS: &[(&str, &[&str])] = &[
    ("quinn", &["host/src/transport/", "client/src/connection/"]),
    ("rustls", &["host/src/transport/", "client/src/connection/"]),
    (
        "rustls_pki_types",
        &["host/src/transport/", "client/src/connection/"],
    ),
    ("tokio_rustls", &["host/src/transport/"]),
    ("rcgen", &["host/src/transport/"]),
    ("x509_parser", &["host/src/transport/"]),
    ("sled", &["host/src/storage/"]),
    ("wasmtime", &["host/src/plugins/runtime.rs"]),
    ("rmqtt_codec", &["host/src/mqtt/packet.rs"]),
    ("rumqttc", &["host/src/bench/mqtt.rs"]),
    ("axum", &["host/src/http/"]),
    ("hyper", &["host/src/http/"]),
    ("hyper_util", &["host/src/http/"]),
    (
        "prometheus_client",
        &["host/src/http/", "host/src/storage/metrics.rs"],
    ),
];

/// Where the walls stand: the broker's and the SDK's sources.
const WALLED: &[&str] = &["host/src", "client/src", "protocol/src"];

/// Every folder of Rust source that must open each file with `//!`.
const DOCUMENTED: &[&str] = &[
    "host",
    "client",
    "protocol",
    "tests/src",
    "tests/tests",
    "plugin-sdk/src",
    "plugins",
    "tests/plugins",
    "fuzz/fuzz_targets",
    "fuzz/src",
    "fuzz/examples",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_owned()
}

/// Every `.rs` file below `dir`, build output left out.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .expect("below the root")
        .to_string_lossy()
        .replace('\\', "/")
}

/// The code of a line: comments cut off (a `//` outside a string literal).
fn code(line: &str) -> &str {
    let mut in_string = false;
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Whether `code` names the crate `name` in a path (`name::…`) or a `use name`.
fn names(code: &str, name: &str) -> bool {
    let mut from = 0;
    while let Some(at) = code[from..].find(name) {
        let start = from + at;
        let end = start + name.len();
        let before = code[..start].chars().next_back();
        let after = &code[end..];
        let word_start = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let as_path =
            after.starts_with("::") || after.starts_with(';') || after.starts_with(" as ");
        // `crate::x` or `self.sled` are not the crate.
        let qualified = code[..start].ends_with("::") || code[..start].ends_with('.');
        if word_start && as_path && !qualified {
            return true;
        }
        from = end;
    }
    false
}

#[test]
fn outside_libraries_stay_behind_their_walls() {
    let root = root();
    let mut files = Vec::new();
    for dir in WALLED {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "the sources were found ({})", files.len());
    let mut breaches = Vec::new();
    for file in &files {
        let path = relative(file);
        let text = std::fs::read_to_string(file).expect("readable source");
        for (number, line) in text.lines().enumerate() {
            let code = code(line);
            for (name, allowed) in WALLS {
                let inside = allowed.iter().any(|a| match a.strip_suffix('/') {
                    Some(dir) => path.starts_with(&format!("{dir}/")),
                    None => path == *a,
                });
                if !inside && names(code, name) {
                    breaches.push(format!("{path}:{}: names `{name}`", number + 1));
                }
            }
        }
    }
    assert!(
        breaches.is_empty(),
        "outside libraries named outside their walls (ARCHITECTURE.md, Boundary):\n{}",
        breaches.join("\n")
    );
}

#[test]
fn every_source_file_says_what_it_is_for() {
    let root = root();
    let mut files = Vec::new();
    for dir in DOCUMENTED {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(
        files.len() > 100,
        "the sources were found ({})",
        files.len()
    );
    let undocumented: Vec<String> = files
        .iter()
        .filter(|file| {
            let text = std::fs::read_to_string(file).expect("readable source");
            !text.trim_start().starts_with("//!")
        })
        .map(|file| relative(file))
        .collect();
    assert!(
        undocumented.is_empty(),
        "files that do not open with a `//!` line:\n{}",
        undocumented.join("\n")
    );
}

#[test]
fn the_checks_can_fail() {
    assert!(names("use sled::Db;", "sled"));
    assert!(names("let db: sled::Db = open();", "sled"));
    assert!(names("use quinn;", "quinn"));
    assert!(!names(code("// sled::Db in a comment"), "sled"));
    assert!(!names("let sledge = 1;", "sled"));
    assert!(!names("crate::storage::sled_error()", "sled"));
    assert!(!names(code("let x = 1; // uses sled::Db"), "sled"));
    assert_eq!(
        code(r#"let url = "http://x"; // note"#),
        r#"let url = "http://x"; "#
    );
}
