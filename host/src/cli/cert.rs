//! `quiver cert`: the broker's TLS certificate as clients see it, read from the data
//! dir (or a file) without a broker running.

use std::path::PathBuf;

use clap::Subcommand;

use crate::config::DEFAULT_DATA_DIR;
use crate::transport::tls::{default_cert_path, describe};

#[derive(Debug, Subcommand)]
pub(super) enum CertCommand {
    /// Print the certificate's names, validity and SHA-256 fingerprint (what a client
    /// pins).
    Show {
        /// The broker's data dir, whose self-signed certificate to read.
        #[arg(long, env = "QUIVER_DATA", default_value = DEFAULT_DATA_DIR)]
        data: PathBuf,
        /// A certificate file instead (PEM; the first certificate is shown).
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
    },
}

pub(super) fn run(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Show { data, cert } => {
            let path = cert.unwrap_or_else(|| default_cert_path(&data));
            let summary = describe(&path)?;
            println!("certificate  {}", path.display());
            println!("subject      {}", summary.subject);
            println!("names        {}", summary.names.join(", "));
            println!(
                "valid        {} to {}",
                summary.not_before, summary.not_after
            );
            println!("sha256       {}", summary.sha256);
            Ok(())
        }
    }
}
