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

/// Examples shown at the end of `meshdrain export --help` and `meshdrain export serve --help`.
pub const EXAMPLES: &str = "\
Examples:
  meshdrain export serve /dev/nvme0n1p4 --iqn iqn.2026-11.dev.meshdrain:db1 \\
      --listen '[fd00::1]:3260' --allow-address fd00::2
      # prints iscsi://[fd00::1]:3260/iqn.2026-11.dev.meshdrain:db1/1 for `meshdrain clone run`
  MESHDRAIN_CHAP_SECRET=... meshdrain export serve db1.img --iqn iqn.2026-11.dev.meshdrain:db1 \\
      --listen 0.0.0.0:3260 --allow-initiator iqn.2026-11.dev.meshdrain:node2 --chap-user node2

Without --allow-address or --allow-initiator any initiator that can reach the port may
log in (a warning says so).";

/// Subcommands of `meshdrain export`.
#[derive(Debug, clap::Subcommand)]
#[command(after_help = EXAMPLES)]
pub enum Command {
    /// Serve a file or block device read-only as LUN 1 until SIGINT/SIGTERM.
    #[command(after_help = EXAMPLES)]
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

/// Without `--allow-address` or `--allow-initiator` the target admits every initiator
/// (`meshdrain_iscsi::Acl`: an empty list admits anyone): say so, with the fix.
fn open_access_warning(a: &ServeArgs, listening: SocketAddr) -> Option<String> {
    if !a.allow_address.is_empty() || !a.allow_initiator.is_empty() {
        return None;
    }
    let who = if a.chap_user.is_some() { "any initiator with the CHAP secret" } else { "any initiator" };
    Some(format!(
        "no access list: {who} that can reach {} may log in to {} and read {}; \
         limit it with --allow-address and/or --allow-initiator",
        listening,
        a.iqn,
        a.path.display()
    ))
}

async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let chap = match a.chap_user.clone() {
        Some(user) => {
            let secret = std::env::var("MESHDRAIN_CHAP_SECRET")
                .context("--chap-user needs the secret in MESHDRAIN_CHAP_SECRET (kept out of argv)")?;
            Some(ChapCredentials { user, secret })
        }
        None => None,
    };
    let mut limits = Limits::default();
    let mut config = TargetConfig::new(&a.iqn, a.path.clone())
        .with_acl(Acl { addresses: a.allow_address.clone(), initiators: a.allow_initiator.clone() });
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
    if let Some(warning) = open_access_warning(&a, local) {
        // Said twice on purpose: on the terminal, and in the log (the journal) of a service.
        eprintln!("warning: {warning}");
        tracing::warn!("{warning}");
    }
    let host = match local {
        SocketAddr::V4(v) => v.ip().to_string(),
        SocketAddr::V6(v) => format!("[{}]", v.ip()),
    };
    // Handlers first: a script may send SIGTERM as soon as it has read the URL.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "iscsi://{host}:{}/{}/1", local.port(), a.iqn)?;
    out.flush()?;
    drop(out);
    let shutdown = async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    };
    meshdrain_iscsi::serve(listener, target, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    const LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 3260));

    fn args(extra: &[&str]) -> ServeArgs {
        let cli = crate::cli::Cli::parse_from(
            ["meshdrain", "export", "serve", "--iqn", "iqn.2026-11.dev.meshdrain:v", "/srv/v.img"].iter().chain(extra),
        );
        let crate::cli::Command::Export(Command::Serve(a)) = cli.command else { unreachable!() };
        a
    }

    #[test]
    fn serving_without_an_access_list_warns_that_any_initiator_may_log_in() {
        assert_eq!(
            open_access_warning(&args(&[]), LISTEN).unwrap(),
            "no access list: any initiator that can reach 127.0.0.1:3260 may log in to \
             iqn.2026-11.dev.meshdrain:v and read /srv/v.img; limit it with --allow-address and/or --allow-initiator"
        );
        assert!(open_access_warning(&args(&["--chap-user", "u"]), LISTEN).unwrap().starts_with(
            "no access list: any initiator with the CHAP secret that can reach 127.0.0.1:3260 may log in"
        ));
        assert_eq!(open_access_warning(&args(&["--allow-address", "fd00::2"]), LISTEN), None);
        assert_eq!(open_access_warning(&args(&["--allow-initiator", "iqn.2026-11.x:y"]), LISTEN), None);
    }
}
