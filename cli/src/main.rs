//! `weft`: the front door of the Weft service mesh.
//!
//! `weft up` runs a complete local mesh (each service in a network namespace of its own with
//! transparent capture when it can, else on loopback): the control plane (embedded), the shop
//! sample's services with a sidecar beside each, a steady traffic generator, and a live view
//! of what the mesh carries. Ctrl-C stops everything.

mod edge;
mod mesh;
mod pods;
mod prometheus;
mod up;
mod view;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The Weft service mesh.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a complete local mesh: control plane, the shop sample (frontend, orders v1 and v2,
    /// inventory) with a sidecar each, live traffic and a live view. Ctrl-C stops it all.
    Up(up::UpArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.cmd {
        Cmd::Up(args) => runtime.block_on(up::run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}
