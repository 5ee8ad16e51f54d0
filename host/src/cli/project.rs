//! Plugin projects: `quiver plugin new` writes one that builds as it is, anywhere, and
//! `quiver plugin build` runs its language's toolchain and says where the component is.
//!
//! The binary carries everything a project needs (the WIT contract, the guest library,
//! an example plugin and its test), so no clone of this repository is needed. The
//! files come from the repository itself (`plugin-sdk/`, `plugins/template/`), compiled
//! in, so what `plugin new` writes is what this repository builds and tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::Value;

/// The languages a plugin project can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Language {
    /// Rust, built with cargo for `wasm32-wasip2`.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
}

impl Language {
    fn name(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::Python => "Python",
            Language::Js => "JavaScript",
        }
    }

    /// The files of a new project in this language, beside [`COMMON`].
    fn files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Language::Rust => RUST,
            Language::Python => PYTHON,
            Language::Js => JS,
        }
    }
}

/// Files every project gets, whatever its language: the contract, and sample records
/// with the outcomes the template plugin gives them (the same in every language).
const COMMON: &[(&str, &str)] = &[
    (
        "test/records.jsonl",
        include_str!("../../../plugin-sdk/templates/test/records.jsonl"),
    ),
    (
        "test/expected.jsonl",
        include_str!("../../../plugin-sdk/templates/test/expected.jsonl"),
    ),
];

const WIT: &str = include_str!("../../../plugin-sdk/wit/quiver.wit");

/// A Rust project: the SDK crate under `sdk/`, the template plugin as `src/lib.rs`.
const RUST: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../../plugin-sdk/templates/rust/Cargo.toml"),
    ),
    (
        // The SDK's lock file: the project builds with the versions Quiver tests.
        "Cargo.lock",
        include_str!("../../../plugin-sdk/Cargo.lock"),
    ),
    (
        "README.md",
        include_str!("../../../plugin-sdk/templates/rust/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../../plugin-sdk/templates/rust/gitignore"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../plugins/template/src/lib.rs"),
    ),
    (
        "sdk/Cargo.toml",
        include_str!("../../../plugin-sdk/Cargo.toml"),
    ),
    (
        "sdk/src/lib.rs",
        include_str!("../../../plugin-sdk/src/lib.rs"),
    ),
    ("sdk/wit/quiver.wit", WIT),
];

/// A Python project: the guest library beside the plugin (`app.py`).
const PYTHON: &[(&str, &str)] = &[
    (
        "app.py",
        include_str!("../../../plugin-sdk/templates/python/app.py"),
    ),
    (
        "quiver_plugin.py",
        include_str!("../../../plugin-sdk/python/quiver_plugin.py"),
    ),
    (
        "quiver_json.py",
        include_str!("../../../plugin-sdk/python/quiver_json.py"),
    ),
    (
        "requirements.txt",
        include_str!("../../../plugin-sdk/templates/python/requirements.txt"),
    ),
    (
        "README.md",
        include_str!("../../../plugin-sdk/templates/python/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../../plugin-sdk/templates/python/gitignore"),
    ),
    ("wit/quiver.wit", WIT),
];

/// A JavaScript project: the guest library beside the plugin (`plugin.js`); its
/// `package.json` is made from `plugin-sdk/js/package.json` (see [`js_package`]).
const JS: &[(&str, &str)] = &[
    (
        "plugin.js",
        include_str!("../../../plugin-sdk/templates/js/plugin.js"),
    ),
    (
        "quiver-plugin.js",
        include_str!("../../../plugin-sdk/js/quiver-plugin.js"),
    ),
    (
        "quiver-json.js",
        include_str!("../../../plugin-sdk/js/quiver-json.js"),
    ),
    (
        "package-lock.json",
        include_str!("../../../plugin-sdk/js/package-lock.json"),
    ),
    (
        "README.md",
        include_str!("../../../plugin-sdk/templates/js/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../../plugin-sdk/templates/js/gitignore"),
    ),
    ("wit/quiver.wit", WIT),
];

/// The JavaScript toolchain's pins, which a project's `package.json` gets.
const JS_TOOLCHAIN: &str = include_str!("../../../plugin-sdk/js/package.json");

/// The files in which `{{name}}` and `{{crate}}` (the name with `_` for `-`) are
/// replaced; every other file is written as it is.
const RENDERED: &[&str] = &["Cargo.toml", "README.md"];

/// componentize-js with every WASI feature off: the component imports only the host
/// interface.
const JS_NO_WASI: &[&str] = &["-d", "stdio", "random", "clocks", "http", "fetch-event"];

#[derive(Debug, Args)]
pub(super) struct NewArgs {
    /// The project's name: it names the folder, the package and (in its README's
    /// commands) the plugin. Letters, digits, `-` and `_`, starting with a letter.
    #[arg(value_parser = parse_project_name)]
    name: String,
    /// The language to write it in.
    #[arg(long, value_enum, default_value_t = Language::Rust)]
    lang: Language,
    /// Where to write it [default: ./NAME]; it must not exist or be empty.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct BuildArgs {
    /// The project folder.
    #[arg(default_value = ".")]
    dir: PathBuf,
}

/// The longest project name.
const MAX_NAME: usize = 64;

fn parse_project_name(name: &str) -> Result<String, String> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_fits = chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !starts_with_letter || !rest_fits || name.len() > MAX_NAME {
        return Err(format!(
            "`{name}` cannot name a plugin project: use letters, digits, `-` and `_`, \
             starting with a letter, at most {MAX_NAME} characters"
        ));
    }
    Ok(name.to_owned())
}

/// `quiver plugin new`.
pub(super) fn new(args: NewArgs) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    if std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "{} exists and is not empty: choose another name, or a folder with --dir",
            dir.display()
        );
    }
    let crate_name = args.name.replace('-', "_");
    let mut files: Vec<(&str, String)> = args
        .lang
        .files()
        .iter()
        .chain(COMMON)
        .map(|(path, text)| {
            let text = if RENDERED.contains(path) {
                text.replace("{{name}}", &args.name)
                    .replace("{{crate}}", &crate_name)
            } else {
                (*text).to_owned()
            };
            (*path, text)
        })
        .collect();
    if args.lang == Language::Js {
        files.push(("package.json", js_package(&args.name)?));
    }
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "wrote a {} plugin project in {}; next: quiver plugin build {}",
        args.lang.name(),
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// A JavaScript project's `package.json`: the toolchain's pins, under the project's
/// name, with `plugin.js` as the module `plugin build` builds.
fn js_package(name: &str) -> anyhow::Result<String> {
    let mut package: Value =
        serde_json::from_str(JS_TOOLCHAIN).context("the JavaScript toolchain's pins")?;
    package["name"] = name.into();
    package["description"] = "A Quiver plugin".into();
    package["main"] = "plugin.js".into();
    Ok(serde_json::to_string_pretty(&package)? + "\n")
}

/// What `dir` holds, told by its files.
fn detect(dir: &Path) -> anyhow::Result<Language> {
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    if dir.join("Cargo.toml").is_file() {
        Ok(Language::Rust)
    } else if dir.join("package.json").is_file() {
        Ok(Language::Js)
    } else if dir.join("app.py").is_file() {
        Ok(Language::Python)
    } else {
        bail!(
            "{} is not a plugin project: no Cargo.toml (Rust), package.json (JavaScript) \
             or app.py (Python); `quiver plugin new NAME --lang rust|python|js` writes one",
            dir.display()
        )
    }
}

/// `quiver plugin build`.
pub(super) fn build(args: BuildArgs) -> anyhow::Result<()> {
    let component = match detect(&args.dir)? {
        Language::Rust => build_rust(&args.dir)?,
        Language::Python => build_python(&args.dir)?,
        Language::Js => build_js(&args.dir)?,
    };
    let size = std::fs::metadata(&component)
        .with_context(|| format!("reading {}", component.display()))?
        .len();
    // Said relative to where the command runs, when it is below it.
    let component = std::env::current_dir()
        .ok()
        .and_then(|here| component.strip_prefix(here).ok().map(Path::to_path_buf))
        .unwrap_or(component);
    eprintln!(
        "built {} ({})",
        component.display(),
        bytesize::ByteSize::b(size).display().si()
    );
    println!("{}", component.display());
    Ok(())
}

/// Runs `command`, its output going to stderr (stdout carries only the path built).
fn run(mut command: Command, what: &str, hint: &str) -> anyhow::Result<()> {
    let status = command
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| format!("running {what} ({hint})"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The project's folder, absolute, and its name (the folder's).
fn project(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("reading {}", dir.display()))?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("the project folder has no name")?
        .to_owned();
    Ok((dir, name))
}

/// Runs componentize-py over `app.py` into `build/NAME.wasm`, with WASI stubbed out
/// (so the component imports only the host interface). The toolchain is the project's
/// `.venv`, else `componentize-py` on `PATH`, else a `.venv` made now from
/// `requirements.txt`.
fn build_python(dir: &Path) -> anyhow::Result<PathBuf> {
    let (dir, name) = project(dir)?;
    let venv = dir.join(".venv/bin/componentize-py");
    let tool = if venv.is_file() {
        venv
    } else if on_path("componentize-py") {
        PathBuf::from("componentize-py")
    } else {
        eprintln!("no componentize-py: installing requirements.txt into .venv");
        let mut make_venv = Command::new("python3");
        make_venv.args(["-m", "venv", ".venv"]).current_dir(&dir);
        run(make_venv, "python3 -m venv", "is Python 3 installed?")?;
        let mut install = Command::new(dir.join(".venv/bin/pip"));
        install
            .args(["install", "--quiet", "-r", "requirements.txt"])
            .current_dir(&dir);
        run(install, "pip install -r requirements.txt", "pip in .venv")?;
        venv
    };
    let out = dir.join("build").join(format!("{name}.wasm"));
    std::fs::create_dir_all(dir.join("build")).context("creating build/")?;
    let mut componentize = Command::new(tool);
    componentize
        .args([
            "-d",
            "wit",
            "-w",
            "plugin",
            "componentize",
            "--stub-wasi",
            "-p",
            ".",
        ])
        .arg("app")
        .arg("-o")
        .arg(&out)
        .current_dir(&dir);
    run(
        componentize,
        "componentize-py",
        "pip install -r requirements.txt",
    )?;
    Ok(out)
}

/// Runs componentize-js over the package's `main` (default `plugin.js`) into
/// `build/NAME.wasm`, with every WASI feature disabled, after `npm ci` when the
/// toolchain is not installed yet.
fn build_js(dir: &Path) -> anyhow::Result<PathBuf> {
    let (dir, _) = project(dir)?;
    let manifest = dir.join("package.json");
    let package: Value = serde_json::from_str(
        &std::fs::read_to_string(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?,
    )
    .with_context(|| format!("reading {}", manifest.display()))?;
    let name = package["name"]
        .as_str()
        .context("package.json has no name")?
        .to_owned();
    let main = package["main"].as_str().unwrap_or("plugin.js");
    let tool = dir.join("node_modules/.bin/componentize-js");
    if !tool.is_file() {
        let verb = if dir.join("package-lock.json").is_file() {
            "ci"
        } else {
            "install"
        };
        let mut npm = Command::new("npm");
        npm.args([verb, "--no-audit", "--no-fund"])
            .current_dir(&dir);
        run(
            npm,
            &format!("npm {verb}"),
            "is Node.js with npm installed?",
        )?;
    }
    let out = dir.join("build").join(format!("{name}.wasm"));
    std::fs::create_dir_all(dir.join("build")).context("creating build/")?;
    // componentize-js loads the modules the entry imports from the folder it runs
    // in, given the entry's full path.
    let mut componentize = Command::new(tool);
    componentize
        .arg(dir.join(main))
        .args(["--wit", "wit", "--world-name", "plugin"])
        .args(JS_NO_WASI)
        .arg("-o")
        .arg(&out)
        .current_dir(&dir);
    run(componentize, "componentize-js", "npm ci")?;
    Ok(out)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Runs `cargo build` for `wasm32-wasip2` and returns the component it made, read from
/// cargo's own report (so a `CARGO_TARGET_DIR` or a renamed library is followed).
fn build_rust(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo (is Rust installed? https://rustup.rs)")?;
    if !output.status.success() {
        bail!(
            "cargo could not build {} ({}); if it says the `wasm32-wasip2` target is \
             missing: rustup target add wasm32-wasip2",
            manifest.display(),
            output.status
        );
    }
    let components: Vec<PathBuf> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact"
                && message["target"]["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"))
        })
        .flat_map(|message| {
            message["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|f| f.ends_with(".wasm"))
                .map(PathBuf::from)
                .collect::<Vec<_>>()
        })
        .collect();
    match components.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "cargo built {} but no component: the package needs `crate-type = [\"cdylib\"]` \
             under [lib]",
            manifest.display()
        ),
        many => bail!(
            "cargo built {} components ({}); build the one you want with cargo",
            many.len(),
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
