//! `weftctl`: command-line tool of the Weft service mesh.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weft_control_plane::certs;

/// Command-line tool of the Weft service mesh.
#[derive(Debug, Parser)]
#[command(name = "weftctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the mesh CA and workload certificates kept in a directory.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a CA: writes DIR/ca.crt and DIR/ca.key (mode 0600).
    Init {
        /// Directory to write the CA into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Trust domain the CA signs for.
        #[arg(long, default_value = certs::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Validity of the CA certificate, in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue a workload certificate from the CA in DIR: writes DIR/NAME.crt and DIR/NAME.key (mode 0600).
    Issue {
        /// Directory holding the CA (from `weftctl certs init`).
        #[arg(long)]
        dir: PathBuf,
        /// Namespace of the workload.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Service account of the workload; also names the files written.
        #[arg(long)]
        service_account: String,
        /// Validity of the certificate, in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
    /// Print the identity and expiry of a certificate (PEM file).
    Show {
        /// Certificate file.
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Certs(CertsCommand::Init {
            dir,
            trust_domain,
            days,
            force,
        }) => {
            let validity = Duration::from_secs(days.saturating_mul(24 * 3600));
            let report = certs::init(&dir, &trust_domain, validity, force)
                .context("cannot create the CA")?;
            println!("{report}");
        }
        Command::Certs(CertsCommand::Issue {
            dir,
            namespace,
            service_account,
            hours,
        }) => {
            let validity = Duration::from_secs(hours.saturating_mul(3600));
            let report = certs::issue(&dir, &namespace, &service_account, validity)
                .context("cannot issue the certificate")?;
            println!("{report}");
        }
        Command::Certs(CertsCommand::Show { file }) => {
            let summary = certs::show(&file).context("cannot read the certificate")?;
            println!("{summary}");
        }
    }
    Ok(())
}
