//! `meshdrain agent`: run this node's agent until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::exit::{Exit, USAGE};
use crate::config::AgentConfig;

/// Examples shown at the end of `meshdrain agent --help`.
pub const EXAMPLES: &str = "\
Examples:
  meshdrain agent --config /etc/meshdrain/agent.toml --check   # validate, print the settings
  meshdrain agent -c /etc/meshdrain/agent.toml                  # run (systemd does this)
  meshdrain agent -c agent.toml --log-format json               # JSON log lines (or [log] format)";

/// Run the agent of this node (normally started by systemd: see systemd/meshdrain.service).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Agent configuration file (TOML).
    #[arg(long, short = 'c', value_name = "FILE", default_value = "/etc/meshdrain/agent.toml")]
    pub config: PathBuf,
    /// Check the configuration, print the resolved settings, and exit.
    #[arg(long)]
    pub check: bool,
}

/// Loads the config (exit 2 with the key named if it is bad) and runs the agent.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (config, addrs) = AgentConfig::load(&args.config).map_err(|e| anyhow::Error::new(Exit(USAGE)).context(e))?;
    if args.check {
        println!("config {} is valid: node {} gossips on {}", args.config.display(), config.name, addrs.gossip_listen);
        return Ok(ExitCode::SUCCESS);
    }
    crate::agent::run::run_process(config, addrs, shutdown_signal()).await.context("agent failed")?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
