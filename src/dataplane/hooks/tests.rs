//! Hooks: the command, its environment, failure text, timeout, and output that never holds
//! up a hook (docs/hooks.md).
use super::*;

#[tokio::test]
async fn a_hook_sees_its_volume_and_reports_failure_with_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let cmd =
        format!("echo \"$MESHDRAIN_VOLUME $MESHDRAIN_DEVICE $MESHDRAIN_NODE $MESHDRAIN_HOOK\" > {}", out.display());
    run_hook(HookKind::Start, &cmd, "db1", Path::new("/dev/loop7"), "n2", Duration::from_secs(5)).await.unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "db1 /dev/loop7 n2 start\n");

    let err = run_hook(
        HookKind::Stop,
        "echo 'pg_ctl: server busy' >&2; exit 3",
        "db1",
        Path::new("/x"),
        "n1",
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        "stop hook of volume db1 failed (exit status: 3): `echo 'pg_ctl: server busy' >&2; exit 3`: pg_ctl: server busy"
    );
}

#[test]
fn a_unit_hook_becomes_systemctl_and_a_bad_unit_name_is_refused() {
    assert_eq!(
        hook_command(HookKind::Stop, "unit:postgresql@db1.service").unwrap(),
        "systemctl stop -- 'postgresql@db1.service'"
    );
    assert_eq!(hook_command(HookKind::Start, "unit:pg.service").unwrap(), "systemctl start -- 'pg.service'");
    assert_eq!(hook_command(HookKind::Done, "unit:pg").unwrap(), "systemctl try-reload-or-restart -- 'pg'");
    assert_eq!(hook_command(HookKind::Start, "mount $MESHDRAIN_DEVICE /srv").unwrap(), "mount $MESHDRAIN_DEVICE /srv");
    let err = hook_command(HookKind::Start, "unit:pg'; rm -rf /").unwrap_err();
    assert!(err.contains("is not a systemd unit name"), "{err}");
}

#[tokio::test]
async fn a_hung_hook_is_killed_after_its_timeout() {
    let err =
        run_hook(HookKind::Stop, "sleep 30", "v", Path::new("/x"), "n", Duration::from_millis(200)).await.unwrap_err();
    assert!(err.contains("did not finish within 200ms (it was killed)"), "{err}");
}

/// A hook that leaves a process behind; `pidfile` gets its pid so the test can end it.
fn kill_pidfile(pidfile: &Path) {
    let pid = std::fs::read_to_string(pidfile).unwrap();
    let pid: i32 = pid.trim().parse().unwrap();
    // SAFETY: kill(2) on a pid this test started; no memory is touched.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[tokio::test]
async fn a_hook_that_starts_a_daemon_holding_its_pipes_is_done_when_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    for (case, background) in [
        // The daemon's output redirected: the pipes close with the hook.
        ("redirected", "sleep 30 >/dev/null 2>&1 & echo $! > {pid}"),
        // `(daemon &)` inheriting stdout and stderr: the pipes stay open for 30 s.
        ("inherited", "(sleep 30 & echo $! > {pid})"),
    ] {
        let pid = dir.path().join(case);
        let cmd =
            format!("echo mounted; {}; echo started >&2", background.replace("{pid}", &pid.display().to_string()));
        let started = Instant::now();
        let run = run_hook_captured(HookKind::Start, &cmd, "db1", Path::new("/x"), "n2", Duration::from_secs(300))
            .await
            .unwrap();
        let took = started.elapsed();
        kill_pidfile(&pid);
        assert!(took < Duration::from_millis(500), "{case}: the hook took {took:?}");
        assert!(run.status.unwrap().success(), "{case}");
        assert_eq!(run.stdout, Captured { tail: b"mounted\n".to_vec(), total: 8 }, "{case}");
        assert_eq!(run.stderr, Captured { tail: b"started\n".to_vec(), total: 8 }, "{case}");
        assert!(outcome(HookKind::Start, "db1", &run, Duration::from_secs(300)).is_ok());
    }
}

#[tokio::test]
async fn a_hook_writing_10_mib_completes_and_keeps_a_bounded_tail() {
    let started = Instant::now();
    let run = run_hook_captured(
        HookKind::Start,
        "head -c 10485760 /dev/zero | tr '\\0' x; echo; echo last line",
        "v",
        Path::new("/x"),
        "n",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(run.status.unwrap().success());
    assert_eq!(run.stdout.total, 10 * 1024 * 1024 + 1 + 10);
    assert_eq!(run.stdout.tail.len(), TAIL_BYTES);
    assert!(run.stdout.truncated());
    assert!(run.stdout.tail.ends_with(b"xxxx\nlast line\n"));
    assert_eq!(run.stdout.describe(), "10485771 bytes, last 65536 kept");
    assert_eq!(run.stderr.describe(), "0 bytes");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_failed_hook_reports_its_exit_status_and_stderr_tail() {
    let run = run_hook_captured(
        HookKind::Stop,
        "echo one >&2; echo two >&2; echo three >&2; echo four >&2; echo out; exit 7",
        "db1",
        Path::new("/x"),
        "n1",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(run.status.unwrap().code(), Some(7));
    assert_eq!(run.stderr.lines(), ["one", "two", "three", "four"]);
    assert_eq!(run.stdout.lines(), ["out"]);
    assert_eq!(
        outcome(HookKind::Stop, "db1", &run, Duration::from_secs(5)).unwrap_err(),
        "stop hook of volume db1 failed (exit status: 7): `echo one >&2; echo two >&2; echo three >&2; \
         echo four >&2; echo out; exit 7`: two / three / four"
    );
}

#[tokio::test]
async fn the_timeout_kills_the_hook_process_only_and_keeps_its_output() {
    let started = Instant::now();
    let run = run_hook_captured(
        HookKind::Stop,
        "echo waiting >&2; sleep 30; echo never",
        "v",
        Path::new("/x"),
        "n",
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    // The killed shell's `sleep 30` still holds the pipes: the grace bounds the wait.
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(run.status, None);
    assert_eq!(run.stderr.lines(), ["waiting"]);
}

#[test]
fn control_characters_in_output_are_escaped_for_the_journal() {
    let tail = b"\x1b[32mok\ttab\rx\nnext\n".to_vec();
    let c = Captured { total: tail.len() as u64, tail };
    assert_eq!(c.lines(), ["\\u{1b}[32mok\ttab\\rx", "next"]);
}

#[tokio::test]
async fn a_background_process_can_still_write_after_the_hook_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let result = dir.path().join("late");
    // Writing to a closed pipe would kill the daemon (SIGPIPE) or fail its write.
    let cmd = format!("(sleep 0.3; echo late line; echo $? > {}) & echo started", result.display());
    let run =
        run_hook_captured(HookKind::Start, &cmd, "v", Path::new("/x"), "n", Duration::from_secs(5)).await.unwrap();
    assert!(run.elapsed < Duration::from_millis(250), "{:?}", run.elapsed);
    assert_eq!(run.stdout.lines(), ["started"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !result.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(std::fs::read_to_string(&result).unwrap(), "0\n");
}

/// A `MakeWriter` into a shared buffer, to read what was logged.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_hooks_end_and_output_are_logged_and_later_background_output_too() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let cmd = "echo mounted; (sleep 0.2; echo 'listening on :5432' >&2) & echo 'no config, using defaults' >&2";
    run_hook(HookKind::Start, cmd, "db1", Path::new("/x"), "n", Duration::from_secs(5)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let ended = lines.iter().find(|l| l.contains("start hook ended")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        ended.starts_with("INFO start hook ended (exit status: 0) in ")
            && ended.ends_with(": stdout 8 bytes, stderr 26 bytes volume=db1"),
        "{text}"
    );
    assert!(lines.contains(&"INFO start hook stdout: mounted volume=db1"), "{text}");
    assert!(lines.contains(&"INFO start hook stderr: no config, using defaults volume=db1"), "{text}");
    assert!(lines.contains(&"INFO start hook background stderr: listening on :5432 volume=db1"), "{text}");
}
