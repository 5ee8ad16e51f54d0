//! A hostile plugin that tries to leave the sandbox, as each payload says: `file`
//! reads a file, `env` reads the environment, `net` opens a socket, `clock` reads the
//! system clock. Each must trap; any other payload is kept.

use quiver_plugin_sdk::{Event, Outcome, Plugin, export_plugin};

struct Escape;

impl Plugin for Escape {
    fn on_event(_topic: &str, event: &Event) -> Outcome {
        let got = match event.payload.as_slice() {
            b"file" => std::fs::read("/etc/passwd")
                .map(|b| b.len().to_string())
                .map_err(|e| e.to_string()),
            b"env" => std::env::var("HOME").map_err(|e| e.to_string()),
            b"net" => std::net::TcpStream::connect("127.0.0.1:1")
                .map(|_| "connected".into())
                .map_err(|e| e.to_string()),
            b"clock" => Ok(format!("{:?}", std::time::SystemTime::now())),
            _ => return Outcome::Keep,
        };
        // Reaching this line means the attempt did not trap: report what leaked.
        Outcome::Reject(format!("escaped: {got:?}"))
    }
}

export_plugin!(Escape);
