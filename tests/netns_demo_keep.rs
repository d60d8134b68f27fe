//! `meshdrain demo --keep`: the commands it prints work as printed (the binary's full path,
//! not a `meshdrain` that may not be on PATH), and its teardown leaves nothing behind: no
//! agent, no network namespace, no state dir. Root only (netns, loop, FUSE).

mod common;

use std::path::Path;
use std::process::Command;

fn sh(command: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(command).output().expect("running sh")
}

#[test]
fn netns_demo_keep_prints_commands_that_work_and_its_teardown_removes_everything() {
    let out =
        common::meshdrain(&["demo", "--json", "--no-mesh", "--nodes", "2", "--size", "64M", "--fill", "5", "--keep"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let s: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("a summary")).unwrap();
    let dir = s["dir"].as_str().unwrap().to_owned();
    let cleanup: Vec<String> =
        s["cleanup"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    let netns: Vec<String> =
        s["kept"].as_array().unwrap().iter().map(|n| n["netns"].as_str().unwrap().into()).collect();

    // Each node's CLI line, run as printed (the trailing `# ...` is a shell comment).
    let bin = std::fs::canonicalize(env!("CARGO_BIN_EXE_meshdrain")).unwrap();
    let cli: Vec<&str> = stderr.lines().filter(|l| l.starts_with("demo:   ") && l.contains(" --control ")).collect();
    assert_eq!(cli.len(), 2, "{stderr}");
    let mut status_ok = Vec::new();
    for line in &cli {
        let command = line.trim_start_matches("demo:").trim();
        assert!(
            command.starts_with(&format!("{} --control ", bin.display())),
            "not the full path: {command}\n{stderr}"
        );
        let run = sh(command);
        status_ok.push((run.status.code(), String::from_utf8_lossy(&run.stdout).contains("node1")));
    }
    // The teardown, run as printed, before any assertion can leave the fleet up.
    let printed: Vec<&str> = stderr
        .lines()
        .skip_while(|l| !l.contains("tear it down with:"))
        .skip(1)
        .map(|l| l.trim_start_matches("demo:").trim())
        .collect();
    let results: Vec<(String, Option<i32>)> = cleanup.iter().map(|c| (c.clone(), sh(c).status.code())).collect();

    assert_eq!(status_ok, [(Some(0), true), (Some(0), true)], "{stderr}");
    assert_eq!(printed, cleanup.iter().map(String::as_str).collect::<Vec<_>>(), "stderr and JSON differ");
    assert_eq!(cleanup.last().unwrap(), &format!("rm -rf --one-file-system {dir}"));
    for (command, code) in &results {
        assert_eq!(*code, Some(0), "{command}");
    }
    assert!(!Path::new(&dir).exists(), "the teardown removes the state dir {dir}");
    let holders = String::from_utf8_lossy(&sh("ps -eo args=").stdout).into_owned();
    assert!(!holders.lines().any(|l| l.contains(" clone hold ") && l.contains(&dir)), "holders left: {holders}");
    let left = String::from_utf8_lossy(&sh("ip netns list").stdout).into_owned();
    for n in &netns {
        assert!(!left.contains(n.as_str()), "namespace {n} left: {left}");
    }
}
