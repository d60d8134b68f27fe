//! Command-line interface: clap definitions and one module per command family.
//! Every command is a thin call into the library; exit codes are in [`exit`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod clone;
pub mod exit;
pub mod export;
pub mod mesh;

/// meshdrain: drain machines holding stateful workloads, peer to peer.
#[derive(Debug, Parser)]
#[command(name = "meshdrain", version, about, long_about = None)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a file or block device read-only over iSCSI (debugging, tests, benchmarks).
    #[command(subcommand)]
    Export(export::Command),
    /// Post-copy clone a volume from an iSCSI URL or a path.
    #[command(subcommand)]
    Clone(clone::Command),
    /// Fleet CA, node keys and certificates, mesh status.
    #[command(subcommand)]
    Mesh(mesh::Command),
}

/// Entry point used by `main.rs`: parse, run, map errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Export(c) => export::run(c).await,
            Command::Clone(c) => clone::run(c).await,
            Command::Mesh(c) => mesh::run(c).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => exit::report(&err),
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MESHDRAIN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
