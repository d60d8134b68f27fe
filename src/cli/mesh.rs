//! `meshdrain mesh`: placeholder until its issue lands.
use std::process::ExitCode;

/// Subcommands of `meshdrain mesh`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Not built yet.
    #[command(hide = true)]
    Pending,
}

/// Runs one `meshdrain mesh` subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Pending => anyhow::bail!("`meshdrain mesh` is not built yet"),
    }
}
