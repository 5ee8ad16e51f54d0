//! The `quiver` binary: the broker (`quiver serve`) and its command-line clients.

fn main() -> std::process::ExitCode {
    quiver_host::cli::main()
}
