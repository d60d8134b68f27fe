//! Command-line interface: clap definitions and one module per command family.
//! Every command is a thin call into the library; exit codes are in [`exit`].
//! This is the one module that prints to stdout (the rest of the library logs).
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{AgentConfig, DEFAULT_CONTROL_SOCKET};
use crate::decide::node::NodeAction;

pub mod agent;
pub mod clone;
pub mod demo;
pub mod drain;
pub mod exit;
pub mod export;
pub mod mesh;
pub mod node;
pub mod status;
pub mod table;
pub mod units;
pub mod volume;

const LONG_ABOUT: &str = "\
meshdrain empties a machine of its stateful workloads without a control plane.

Every node runs `meshdrain agent`. Agents gossip over a WireGuard mesh. Draining a
node (from that node or any other) cordons it, places each of its volumes on another
node through a gossip lease, exports it read-only over iSCSI, and lets the new holder
start the workload at once on a post-copy clone that hydrates in the background. The
source deletes its copy only after the holder confirms every region.

Commands other than `agent`, `export`, `clone`, `mesh` and `demo` talk to the local
agent through its control socket (see --control).

Exit codes: 0 success, 1 failure, 2 usage or configuration error, 3 agent unreachable,
4 deadline passed.";

/// meshdrain: drain machines holding stateful workloads, peer to peer.
#[derive(Debug, Parser)]
#[command(name = "meshdrain", version, about, long_about = LONG_ABOUT)]
pub struct Cli {
    /// The local agent's control socket [default: MESHDRAIN_CONTROL, else control.socket
    /// from /etc/meshdrain/agent.toml, else /run/meshdrain/control.sock].
    #[arg(long, global = true, value_name = "PATH", env = "MESHDRAIN_CONTROL")]
    pub control: Option<PathBuf>,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run this node's agent.
    Agent(agent::Args),
    /// Show every node of the fleet: state, liveness, heartbeat age, capacity.
    Status(status::Args),
    /// Cordon and move every volume off a node (run on any node of the fleet).
    Drain(drain::DrainArgs),
    /// Cancel a drain: volumes not yet cut over stay here; the node becomes active.
    Undrain(node::Args),
    /// Stop placing new volumes on a node; its volumes stay.
    Cordon(node::Args),
    /// Let a cordoned node take volumes again.
    Uncordon(node::Args),
    /// Create, register and list volumes.
    #[command(subcommand)]
    Volume(volume::Command),
    /// Delete copies on this node that were handed off, before the retention window ends.
    Gc,
    /// Run a local demo fleet on an embedded default and drain a node.
    Demo(demo::Args),
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

/// Where the CLI finds the local agent.
#[derive(Debug, Clone)]
pub struct ControlTarget {
    /// The control socket path.
    pub socket: PathBuf,
}

impl ControlTarget {
    /// `--control` / `MESHDRAIN_CONTROL`, else the socket of the default config, else the default.
    pub fn resolve(flag: Option<PathBuf>) -> Self {
        if let Some(socket) = flag {
            return Self { socket };
        }
        let default_config = Path::new("/etc/meshdrain/agent.toml");
        let from_config = std::fs::read_to_string(default_config)
            .ok()
            .and_then(|text| AgentConfig::parse(default_config, &text).ok())
            .map(|c| c.control.socket);
        Self { socket: from_config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)) }
    }
}

/// Marks a client error as "agent unreachable" (exit 3) when it is one.
pub fn unreachable(err: crate::control::client::ClientError) -> anyhow::Error {
    let code = match err {
        crate::control::client::ClientError::Unreachable { .. } => exit::UNREACHABLE,
        _ => exit::FAILURE,
    };
    anyhow::Error::new(exit::Exit(code)).context(err)
}

/// Entry point used by `main.rs`: parse, run, map errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates on stdout; its agents' logs would drown it unless asked for.
    init_tracing(if matches!(cli.command, Command::Demo(_)) { "warn" } else { "info" });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let control = ControlTarget::resolve(cli.control);
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Agent(a) => agent::run(a).await,
            Command::Status(a) => status::run(a, &control).await,
            Command::Drain(a) => drain::run(a, &control).await,
            Command::Undrain(a) => node::run(NodeAction::Undrain, a, &control).await,
            Command::Cordon(a) => node::run(NodeAction::Cordon, a, &control).await,
            Command::Uncordon(a) => node::run(NodeAction::Uncordon, a, &control).await,
            Command::Volume(c) => volume::run(c, &control).await,
            Command::Gc => volume::gc(&control).await,
            Command::Demo(a) => demo::run(a).await,
            Command::Export(c) => export::run(c).await,
            Command::Clone(c) => clone::run(c).await,
            Command::Mesh(c) => mesh::run(c, &control).await,
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(err) => exit::report(&err),
    }
}

fn init_tracing(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MESHDRAIN_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
