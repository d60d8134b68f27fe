//! The operations guide's command lines still parse: every `meshdrain` command in
//! docs/operations.md, run by the root test or not, names subcommands and flags that exist
//! (checked against `--help`), so a renamed flag fails here in the unit tier, not in front
//! of an operator.

mod guide;

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_meshdrain");

fn help(path: &[String]) -> String {
    let out = Command::new(BIN).args(path).arg("--help").output().expect("meshdrain --help");
    assert!(out.status.success(), "meshdrain {} --help: {}", path.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The subcommands listed under `Commands:` in a help text.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn operations_guide_flags_exist() {
    let markdown = std::fs::read_to_string(guide::path()).unwrap();
    let mut checked = 0;
    for block in guide::blocks(&markdown) {
        for words in guide::meshdrain_commands(&block.text) {
            let mut path: Vec<String> = Vec::new();
            let mut text = help(&path);
            for w in &words[1..] {
                if w.starts_with('-') {
                    break;
                }
                if subcommands(&text).contains(w) {
                    path.push(w.clone());
                    text = help(&path);
                } else {
                    break;
                }
            }
            for w in words.iter().filter(|w| w.starts_with("--")) {
                let flag = w.split('=').next().unwrap();
                assert!(
                    text.contains(&format!("{flag} ")) || text.contains(&format!("{flag}\n")),
                    "operations.md line {}: `meshdrain {}` has no flag {flag}",
                    block.line,
                    path.join(" ")
                );
            }
            assert!(!path.is_empty(), "operations.md line {}: no subcommand in {words:?}", block.line);
            checked += 1;
        }
    }
    assert!(checked >= 20, "the guide's meshdrain commands were found ({checked})");
}
