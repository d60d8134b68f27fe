//! Every `--help` ends with examples (issue 19): a walk over the whole clap command tree.
use clap::CommandFactory;

use super::Cli;

/// The visible commands under `cmd` (by full name, e.g. `meshdrain mesh sign`) whose
/// after-help text has no `Examples` section.
fn without_examples(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("{path} {}", sub.get_name());
        let after = sub.get_after_help().or_else(|| sub.get_after_long_help()).map(|t| t.to_string());
        if !after.is_some_and(|t| t.contains("Examples")) {
            missing.push(name.clone());
        }
        without_examples(sub, &name, missing);
    }
}

#[test]
fn every_command_help_ends_with_examples() {
    let mut missing = Vec::new();
    without_examples(&Cli::command(), "meshdrain", &mut missing);
    assert!(missing.is_empty(), "--help without an Examples section: {}", missing.join(", "));
}

#[test]
fn the_commands_of_mesh_export_demo_and_clone_end_with_examples() {
    let mut missing = Vec::new();
    without_examples(&Cli::command(), "meshdrain", &mut missing);
    let ours: Vec<&String> = missing
        .iter()
        .filter(|m| ["mesh", "export", "demo", "clone"].iter().any(|c| m.starts_with(&format!("meshdrain {c}"))))
        .collect();
    assert!(ours.is_empty(), "--help without an Examples section: {ours:?}");
}
