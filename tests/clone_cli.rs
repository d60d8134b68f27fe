//! `meshdrain clone run` through the built binary: metadata it cannot trust is refused
//! with exit 2 (src/cli/exit.rs: usage or configuration, the operator decides), one
//! `error:` line naming the file and `--start-over`, and the dest left as it was;
//! `--start-over` recopies.
use std::path::Path;
use std::process::Command;

use meshdrain_testkit::pattern;

const BIN: &str = env!("CARGO_BIN_EXE_meshdrain");
const FIX: &str = "run again with --start-over to recopy from the source; the dest will be overwritten";

/// Runs `clone run` on the files in `dir`; returns the exit code and the `error:` line.
fn clone_run(dir: &Path, dest: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .current_dir(dir)
        .args(["clone", "run", "--backend", "userspace", "--json", "--source", "src", "--metadata", "meta"])
        .args(["--dest", dest])
        .args(extra)
        .env("NO_COLOR", "1")
        .output()
        .expect("run meshdrain");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_default().to_owned();
    (out.status.code().unwrap_or(-1), error)
}

#[test]
fn clone_run_refuses_untrusted_metadata_with_exit_2_and_leaves_the_dest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = pattern(3, 4 << 20);
    std::fs::write(d.join("src"), &data).unwrap();
    assert_eq!(clone_run(d, "dest", &[]), (0, String::new()));
    assert!(std::fs::read(d.join("dest")).unwrap() == data);

    // The workload writes to the finished dest; then the metadata is emptied.
    let mut written = data.clone();
    written[1 << 20..(1 << 20) + 4096].fill(0xab);
    std::fs::write(d.join("dest"), &written).unwrap();
    let finished = std::fs::read(d.join("meta")).unwrap();
    std::fs::write(d.join("meta"), b"").unwrap();
    let (code, error) = clone_run(d, "dest", &[]);
    assert_eq!(code, 2, "{error}");
    assert_eq!(
        error,
        format!("error: metadata meta cannot be resumed: the file is empty (0 bytes); the dest was not touched: {FIX}")
    );
    assert!(std::fs::read(d.join("dest")).unwrap() == written, "the refused run changed the dest");

    // The finished metadata with a new, empty dest.
    std::fs::write(d.join("meta"), &finished).unwrap();
    std::fs::write(d.join("new"), b"").unwrap();
    let (code, error) = clone_run(d, "new", &[]);
    assert_eq!(code, 2, "{error}");
    let want =
        format!("error: metadata meta records progress on another dest than new: it held {} bytes, now 0", 4 << 20);
    assert!(error.starts_with(&want) && error.contains(FIX), "{error}");
    assert_eq!(std::fs::metadata(d.join("new")).unwrap().len(), 0, "the refused run grew the new dest");

    // No dest at all: refused, and not created.
    let (code, error) = clone_run(d, "absent", &[]);
    assert_eq!(code, 2, "{error}");
    assert_eq!(error, format!("error: metadata meta records progress on dest absent, which does not exist: {FIX}"));
    assert!(!d.join("absent").exists());

    // The explicit way out recopies everything onto the new dest.
    assert_eq!(clone_run(d, "new", &["--start-over"]), (0, String::new()));
    assert!(std::fs::read(d.join("new")).unwrap() == data, "--start-over did not recopy the source");
    assert_eq!(clone_run(d, "new", &[]), (0, String::new()), "the fresh metadata resumes");
}
