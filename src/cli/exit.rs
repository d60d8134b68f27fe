//! Exit codes, stable for operators' scripts: 0 success, 1 failure, 2 usage or
//! configuration error, 3 agent unreachable, 4 deadline passed.
use std::process::ExitCode;

/// Success.
pub const OK: u8 = 0;
/// The operation failed (a drain failed, a check did not hold).
pub const FAILURE: u8 = 1;
/// Bad usage or bad configuration: the message names the key and the fix.
pub const USAGE: u8 = 2;
/// The local agent could not be reached on its control socket.
pub const UNREACHABLE: u8 = 3;
/// A `--deadline` passed before the operation finished.
pub const DEADLINE: u8 = 4;

/// Prints an error chain to stderr and picks the exit code from an [`Exit`] marker in
/// the chain (default [`FAILURE`]).
pub fn report(err: &anyhow::Error) -> ExitCode {
    // The chain without its exit-code marker: the operator reads the message, the shell the code.
    let chain: Vec<String> = err.chain().filter(|e| !e.is::<Exit>()).map(ToString::to_string).collect();
    eprintln!("error: {}", chain.join(": "));
    let code = err.chain().find_map(|e| e.downcast_ref::<Exit>()).map_or(FAILURE, |e| e.0);
    ExitCode::from(code)
}

/// An error marker carrying the exit code a command wants:
/// `Err(anyhow::Error::new(Exit(USAGE)).context("…"))`.
#[derive(Debug, Clone, Copy)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}
impl std::error::Error for Exit {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_marker_picks_the_code_and_is_not_printed() {
        let err = anyhow::Error::new(Exit(USAGE)).context("no node named \"x\"");
        let chain: Vec<String> = err.chain().filter(|e| !e.is::<Exit>()).map(ToString::to_string).collect();
        assert_eq!(chain, ["no node named \"x\""]);
        assert_eq!(report(&err), ExitCode::from(USAGE));
    }
}
