//! `meshdrain clone`: placeholder until its issue lands.
use std::process::ExitCode;

/// Subcommands of `meshdrain clone`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Not built yet.
    #[command(hide = true)]
    Pending,
}

/// Runs one `meshdrain clone` subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Pending => anyhow::bail!("`meshdrain clone` is not built yet"),
    }
}
