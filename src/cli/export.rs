//! `meshdrain export`: placeholder until its issue lands.
use std::process::ExitCode;

/// Subcommands of `meshdrain export`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Not built yet.
    #[command(hide = true)]
    Pending,
}

/// Runs one `meshdrain export` subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Pending => anyhow::bail!("`meshdrain export` is not built yet"),
    }
}
