//! `meshdrain export serve` through the built binary: without an access list it warns on
//! stderr (and in its log) that any initiator may log in, prints the URL, and exits 0 on
//! SIGTERM; with one it says nothing of the kind.
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_meshdrain");

/// Serves a small file with `extra` flags until the URL is printed, then SIGTERM.
/// Returns (exit code, stdout's first line, stderr).
fn serve(extra: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("v.img");
    std::fs::write(&image, vec![7u8; 1 << 20]).unwrap();
    let mut child = Command::new(BIN)
        .args(["export", "serve", "--listen", "127.0.0.1:0", "--iqn", "iqn.2026-11.dev.meshdrain:v"])
        .args(extra)
        .arg(&image)
        .env("NO_COLOR", "1")
        .env_remove("MESHDRAIN_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut url).unwrap();
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let code = child.wait().unwrap().code().unwrap_or(-1);
    (
        code,
        url.trim_end().replace(&image.display().to_string(), "IMAGE"),
        stderr.replace(&image.display().to_string(), "IMAGE"),
    )
}

#[test]
fn export_serve_without_an_access_list_warns_that_any_initiator_may_log_in() {
    let (code, url, stderr) = serve(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(url.starts_with("iscsi://127.0.0.1:") && url.ends_with("/iqn.2026-11.dev.meshdrain:v/1"), "{url}");
    let port = url.trim_start_matches("iscsi://127.0.0.1:").split('/').next().unwrap();
    let warning = format!(
        "no access list: any initiator that can reach 127.0.0.1:{port} may log in to iqn.2026-11.dev.meshdrain:v \
         and read IMAGE; limit it with --allow-address and/or --allow-initiator"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.contains(&format!("warning: {warning}").as_str()), "{stderr}");
    assert!(lines.iter().any(|l| l.contains("WARN") && l.ends_with(&warning)), "no log line: {stderr}");
}

#[test]
fn export_serve_with_an_access_list_does_not_warn() {
    let (code, url, stderr) = serve(&["--allow-address", "127.0.0.1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(url.starts_with("iscsi://127.0.0.1:"), "{url}");
    assert!(!stderr.contains("access list"), "{stderr}");
}
