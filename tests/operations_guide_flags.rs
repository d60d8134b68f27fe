//! The documented command lines still parse: every `meshdrain` command in
//! docs/operations.md (run by the root test or not), and in the command blocks of the
//! README and docs/usage.md, names subcommands and flags that exist (checked against
//! `--help`), so a renamed flag fails here in the unit tier, not in front of an operator.

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

/// Checks every command of `blocks` (from `doc`); returns how many.
fn check(doc: &str, blocks: Vec<guide::Block>) -> usize {
    let mut checked = 0;
    for block in blocks {
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
                    "{doc} line {}: `meshdrain {}` has no flag {flag}",
                    block.line,
                    path.join(" ")
                );
            }
            assert!(!path.is_empty(), "{doc} line {}: no subcommand in {words:?}", block.line);
            checked += 1;
        }
    }
    checked
}

#[test]
fn operations_guide_flags_exist() {
    let markdown = std::fs::read_to_string(guide::path()).unwrap();
    let checked = check("docs/operations.md", guide::blocks(&markdown));
    assert!(checked >= 20, "the guide's meshdrain commands were found ({checked})");
}

#[test]
fn readme_and_reference_flags_exist() {
    for (doc, at_least) in [("README.md", 10), ("docs/usage.md", 10)] {
        let markdown = std::fs::read_to_string(guide::doc(doc)).unwrap();
        let checked = check(doc, guide::command_fences(&markdown));
        assert!(checked >= at_least, "{doc}: its meshdrain commands were found ({checked})");
    }
}
