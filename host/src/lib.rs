//! The Quiver broker and the `quiver` command-line tool.
//!
//! The binary's `main` only calls [`cli::main`]; everything else lives here so that
//! tests can reach the parts. ARCHITECTURE.md at the repository root maps the modules.

pub mod auth;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod files;
pub mod groups;
pub mod http;
pub mod links;
pub mod memory;
pub mod mqtt;
pub mod plugins;
pub mod retention;
pub mod server;
pub mod session;
pub mod storage;
pub mod transport;
pub mod util;
