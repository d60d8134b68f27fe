//! `meshdrain export serve`: serve one file or block device read-only as
//! LUN 1 over iSCSI, for tests, benchmarks and operators debugging an export
//! outside the agent. Prints the iscsi:// URL; runs until SIGINT/SIGTERM.
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use meshdrain_iscsi::chap::ChapCredentials;
use meshdrain_iscsi::target::Limits;
use meshdrain_iscsi::{Acl, Target, TargetConfig};

/// Subcommands of `meshdrain export`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve a file or block device read-only as LUN 1 until SIGINT/SIGTERM.
    Serve(ServeArgs),
}

/// Arguments of `meshdrain export serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address and port to listen on (port 0 picks a free one; the URL shows it).
    #[arg(long, default_value = "127.0.0.1:3260")]
    pub listen: SocketAddr,
    /// Target IQN initiators log in to, e.g. iqn.2026-11.dev.meshdrain:vol1.
    #[arg(long)]
    pub iqn: String,
    /// Only these initiator addresses may log in (repeatable; default: any).
    #[arg(long = "allow-address")]
    pub allow_address: Vec<std::net::IpAddr>,
    /// Only these initiator IQNs may log in (repeatable; default: any).
    #[arg(long = "allow-initiator")]
    pub allow_initiator: Vec<String>,
    /// Require CHAP with this user (secret from MESHDRAIN_CHAP_SECRET).
    #[arg(long = "chap-user")]
    pub chap_user: Option<String>,
    /// Most connections logged in to this export at once; the login past it is
    /// refused with status 0x0302 (out of resources) and a log line [default: 32].
    #[arg(long = "max-connections", value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub max_connections: Option<u32>,
    /// File or block device to export.
    pub path: PathBuf,
}

/// Runs one `meshdrain export` subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(a) => serve(a).await,
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let chap = match a.chap_user {
        Some(user) => {
            let secret = std::env::var("MESHDRAIN_CHAP_SECRET")
                .context("--chap-user needs the secret in MESHDRAIN_CHAP_SECRET (kept out of argv)")?;
            Some(ChapCredentials { user, secret })
        }
        None => None,
    };
    let mut limits = Limits::default();
    let mut config = TargetConfig::new(&a.iqn, a.path.clone())
        .with_acl(Acl { addresses: a.allow_address, initiators: a.allow_initiator });
    if let Some(n) = a.max_connections {
        // One export: the portal's own cap must leave room for it and for discovery.
        limits.max_connections_per_export = n as usize;
        limits.max_connections = limits.max_connections.max(n as usize + limits.max_discovery_sessions);
        config = config.with_max_connections(n as usize);
    }
    let target = Target::with_limits(std::time::Duration::from_secs(10), limits);
    config.chap = chap;
    target.open_export(config)?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}: is another target using the port?", a.listen))?;
    let local = listener.local_addr()?;
    let host = match local {
        SocketAddr::V4(v) => v.ip().to_string(),
        SocketAddr::V6(v) => format!("[{}]", v.ip()),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "iscsi://{host}:{}/{}/1", local.port(), a.iqn)?;
    out.flush()?;
    drop(out);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    meshdrain_iscsi::serve(listener, target, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
