//! `meshdrain completions <shell>` and the hidden `meshdrain manpages <dir>`: shell
//! completions and man pages generated from the clap definitions, so they never drift from
//! the CLI. `scripts/build-deb` runs both with the binary it packages and the Debian package
//! ships the output; without the package, an operator sources the completions directly.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

/// The examples at the end of `meshdrain completions --help`.
pub const EXAMPLES: &str = "\
Examples:
  meshdrain completions bash > /etc/bash_completion.d/meshdrain
  meshdrain completions zsh > \"${fpath[1]}/_meshdrain\"
  meshdrain completions fish > ~/.config/fish/completions/meshdrain.fish
  source <(meshdrain completions bash)          # this shell only";

/// The shells we generate completions for (the ones Debian ships completion directories for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// GNU bash (bash-completion).
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

impl Shell {
    fn generator(self) -> clap_complete::Shell {
        match self {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// `meshdrain completions <shell>`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to print the completion script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `meshdrain manpages <dir>` (hidden: a build step of the package, not an operator's command).
#[derive(Debug, clap::Args)]
pub struct ManpagesArgs {
    /// Directory to write one roff page per command and subcommand into (created if missing).
    pub dir: PathBuf,
}

/// The completion script for `shell`, as bytes.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut cmd = visible_cli();
    let mut out = Vec::new();
    clap_complete::generate(shell.generator(), &mut cmd, "meshdrain", &mut out);
    out
}

/// The CLI as operators see it: clap_complete offers hidden subcommands too, so the scripts
/// are generated from a copy without them (the package's `manpages` build step).
fn visible_cli() -> clap::Command {
    let full = super::Cli::command();
    let visible: Vec<clap::Command> = full.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    let mut cmd = clap::Command::new("meshdrain").version(env!("CARGO_PKG_VERSION")).subcommand_required(true);
    for arg in full.get_arguments().filter(|a| !a.is_hide_set()).cloned() {
        cmd = cmd.arg(arg);
    }
    cmd.subcommands(visible)
}

/// Prints the completion script for the shell on stdout.
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    let script = completion_script(args.shell);
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&script).and_then(|()| stdout.flush()).context("writing the completion script to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `meshdrain.1`, `meshdrain-drain.1`, `meshdrain-volume-create.1`, ... into the
/// directory (hidden commands get no page) and names each file on stdout.
pub fn manpages(args: &ManpagesArgs) -> anyhow::Result<ExitCode> {
    let written = write_manpages(&args.dir)?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the man pages into `dir` and returns their paths, sorted.
pub fn write_manpages(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating the man page directory {}", dir.display()))?;
    clap_mangen::generate_to(super::Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    let mut written: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_scripts_name_the_binary_and_its_commands() {
        let bash = String::from_utf8(completion_script(Shell::Bash)).unwrap();
        assert!(bash.contains("complete -F _meshdrain"), "{bash}");
        assert!(bash.contains("drain"), "{bash}");
        let zsh = String::from_utf8(completion_script(Shell::Zsh)).unwrap();
        assert!(zsh.starts_with("#compdef meshdrain"), "{zsh}");
        let fish = String::from_utf8(completion_script(Shell::Fish)).unwrap();
        assert!(fish.contains("complete -c meshdrain"), "{fish}");
        // The hidden build step is not offered to operators.
        assert!(bash.lines().any(|l| l.trim_start().starts_with("opts=") && l.contains(" completions ")), "{bash}");
        for script in [&bash, &zsh, &fish] {
            assert!(!script.contains("manpages"), "{script}");
        }
    }

    #[test]
    fn one_man_page_per_visible_command_and_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_manpages(dir.path()).unwrap();
        let names: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for page in ["meshdrain.1", "meshdrain-drain.1", "meshdrain-agent.1", "meshdrain-completions.1"] {
            assert!(names.iter().any(|n| n == page), "{page} missing from {names:?}");
        }
        assert!(names.iter().any(|n| n.starts_with("meshdrain-volume-")), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("manpages") || n.ends_with("-help.1")), "{names:?}");
        let drain = std::fs::read_to_string(dir.path().join("meshdrain-drain.1")).unwrap();
        assert!(drain.starts_with(".ie \\n(.g .ds Aq") || drain.contains(".TH meshdrain-drain 1"), "{drain}");
    }
}
