//! Command-line interface: clap definitions and one module per command family.
//! Every command is a thin call into the library; exit codes are in [`exit`].
//! This is the one module that prints to stdout (the rest of the library logs).
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{AgentConfig, DEFAULT_CONTROL_SOCKET, LogFormat};
use crate::decide::node::NodeAction;

pub mod agent;
pub mod clone;
pub mod completions;
pub mod demo;
pub mod drain;
pub mod exit;
pub mod export;
pub mod follow;
pub mod logging;
pub mod lost;
pub mod mesh;
pub mod node;
pub mod progress;
pub mod roll;
pub mod status;
pub mod table;
pub mod undrain;
pub mod units;
pub mod volume;
pub mod volume_move;

const LONG_ABOUT: &str = "\
meshdrain empties a machine of its stateful workloads without a control plane.

Every node runs `meshdrain agent`. Agents gossip over a WireGuard mesh. Draining a
node (from that node or any other) cordons it, places each of its volumes on another
node through a gossip lease, exports it read-only over iSCSI, and lets the new holder
start the workload at once on a post-copy clone that hydrates in the background. The
source deletes its copy only after the holder confirms every region.

Commands other than `agent`, `export`, `clone`, `mesh` and `demo` talk to the local
agent through its control socket (their --control; `mesh status` reads MESHDRAIN_CONTROL).

Exit codes: 0 success, 1 failure, 2 usage or configuration error, 3 agent unreachable,
4 deadline passed.";

/// meshdrain: drain machines holding stateful workloads, peer to peer.
#[derive(Debug, Parser)]
#[command(name = "meshdrain", version, about, long_about = LONG_ABOUT)]
pub struct Cli {
    /// The local agent's control socket, before the command (kept for scripts written so;
    /// the commands that use it take --control themselves).
    #[arg(long, value_name = "PATH", hide = true)]
    pub control: Option<PathBuf>,
    /// Log lines on stderr as `text` or `json` [default: `[log] format` of the agent's
    /// config for `agent`, else text]. Colour only when stderr is a terminal.
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run this node's agent.
    #[command(after_help = agent::EXAMPLES)]
    Agent(agent::Args),
    /// Show every node of the fleet: state, liveness, heartbeat age, capacity.
    #[command(after_help = status::EXAMPLES)]
    Status(status::Args),
    /// Cordon and move every volume off a node (run on any node of the fleet).
    #[command(after_help = drain::EXAMPLES)]
    Drain(drain::DrainArgs),
    /// Roll the fleet: drain each node in turn, run a command on it, bring it back.
    #[command(after_help = roll::EXAMPLES)]
    Roll(roll::RollArgs),
    /// Cancel a drain: volumes not yet cut over stay here; the node becomes active
    /// (`--return`: and the volumes that left it come back).
    #[command(after_help = undrain::EXAMPLES)]
    Undrain(undrain::UndrainArgs),
    /// Stop placing new volumes on a node; its volumes stay.
    #[command(after_help = node::CORDON_EXAMPLES)]
    Cordon(node::Args),
    /// Let a cordoned node take volumes again.
    #[command(after_help = node::UNCORDON_EXAMPLES)]
    Uncordon(node::Args),
    /// Create, register and list volumes.
    #[command(subcommand, after_help = volume::EXAMPLES)]
    Volume(volume::Command),
    /// Delete copies on this node that were handed off, before the retention window ends.
    #[command(after_help = volume::GC_EXAMPLES)]
    Gc(volume::GcArgs),
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
    /// A node gone for good: `node lost <node>` (docs/failures.md).
    #[command(subcommand, after_help = lost::LOST_EXAMPLES)]
    Node(lost::NodeCommand),
    /// Keep or delete an incomplete copy whose source was declared lost.
    #[command(subcommand, after_help = lost::PARTIAL_EXAMPLES)]
    Partial(lost::PartialCommand),
    /// Print the completion script for bash, zsh or fish on stdout (the Debian package installs all three).
    #[command(after_help = completions::EXAMPLES)]
    Completions(completions::CompletionsArgs),
    /// Write one man page per command into a directory (a build step of the package).
    #[command(hide = true)]
    Manpages(completions::ManpagesArgs),
}

/// `--control`, on the commands that talk to the local agent.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ControlArg {
    /// The local agent's control socket [default: MESHDRAIN_CONTROL, else control.socket
    /// from /etc/meshdrain/agent.toml, else /run/meshdrain/control.sock].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
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
        if let Some(socket) = flag.or_else(|| std::env::var_os("MESHDRAIN_CONTROL").map(PathBuf::from)) {
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

/// Marks a client error with its exit code: "agent unreachable" (3), a node name the fleet
/// does not know (2, a usage error), else 1.
pub fn unreachable(err: crate::control::client::ClientError) -> anyhow::Error {
    use crate::control::client::ClientError;
    let code = match err {
        ClientError::Unreachable { .. } => exit::UNREACHABLE,
        ClientError::Refused(crate::api::ApiError::UnknownNode { .. }) => exit::USAGE,
        _ => exit::FAILURE,
    };
    anyhow::Error::new(exit::Exit(code)).context(err)
}

/// Entry point used by `main.rs`: parse, run, map errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates on stdout; its agents' logs would drown it unless asked for.
    let default_filter = if matches!(cli.command, Command::Demo(_)) { "warn" } else { "info" };
    logging::init(log_format(&cli), default_filter);
    let control_flag = match command_control(&cli.command) {
        Some(flag) => flag.clone().or(cli.control.clone()),
        None if cli.control.is_some() => {
            eprintln!("error: --control is not used by this command (only by the commands that talk to the agent)");
            return ExitCode::from(exit::USAGE);
        }
        None => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let control = ControlTarget::resolve(control_flag);
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Agent(a) => agent::run(a).await,
            Command::Status(a) => status::run(a, &control).await,
            Command::Drain(a) => drain::run(a, &control).await,
            Command::Roll(a) => roll::run(a, &control).await,
            Command::Undrain(a) => undrain::run(a, &control).await,
            Command::Cordon(a) => node::run(NodeAction::Cordon, a, &control).await,
            Command::Uncordon(a) => node::run(NodeAction::Uncordon, a, &control).await,
            Command::Volume(c) => volume::run(c, &control).await,
            Command::Gc(_) => volume::gc(&control).await,
            Command::Demo(a) => demo::run(a).await,
            Command::Export(c) => export::run(c).await,
            Command::Clone(c) => clone::run(c).await,
            Command::Mesh(c) => mesh::run(c, &control).await,
            Command::Node(c) => lost::run_node(c, &control).await,
            Command::Partial(c) => lost::run_partial(c, &control).await,
            Command::Completions(a) => completions::completions(&a),
            Command::Manpages(a) => completions::manpages(&a),
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(err) => exit::report(&err),
    }
}

/// `--log-format`, else for `agent` its config's `[log] format` (a config that does not
/// load is reported by `agent` itself), else text.
fn log_format(cli: &Cli) -> LogFormat {
    if let Some(f) = cli.log_format {
        return f;
    }
    match &cli.command {
        Command::Agent(a) => std::fs::read_to_string(&a.config)
            .ok()
            .and_then(|text| AgentConfig::parse(&a.config, &text).ok())
            .map_or_else(LogFormat::default, |c| c.log.format),
        _ => LogFormat::default(),
    }
}

/// The command's own `--control`: `Some` for the commands that talk to the agent (the flag
/// itself may be absent), `None` for those that do not.
fn command_control(command: &Command) -> Option<&Option<PathBuf>> {
    static NONE: Option<PathBuf> = None;
    Some(match command {
        Command::Agent(_)
        | Command::Demo(_)
        | Command::Export(_)
        | Command::Clone(_)
        | Command::Completions(_)
        | Command::Manpages(_) => return None,
        Command::Status(a) => &a.control.control,
        Command::Drain(a) => &a.common.control.control,
        Command::Roll(a) => a.control(),
        Command::Undrain(a) => &a.common.control.control,
        Command::Cordon(a) | Command::Uncordon(a) => &a.control.control,
        Command::Volume(c) => c.control(),
        Command::Gc(a) => &a.control.control,
        Command::Node(c) => c.control(),
        Command::Partial(c) => c.control(),
        // `mesh status` takes the socket from MESHDRAIN_CONTROL or the flag before the command.
        _ => &NONE,
    })
}

#[cfg(test)]
mod help_tests;
#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
