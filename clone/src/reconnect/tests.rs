use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshdrain_iscsi::{Target, TargetConfig};
use tokio::sync::oneshot;

use super::*;
use crate::digest::digest_file;

const IQN: &str = "iqn.2026-11.dev.meshdrain:src.v";
const INITIATOR: &str = "iqn.2026-11.dev.meshdrain:dst.v.e1";
const REGION: u64 = 64 * 1024;

type Served = (Arc<Target>, SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>);

/// Our target on 127.0.0.1:`port`, serving `path` at once or only when the test opens it.
fn serve(rt: &tokio::runtime::Runtime, path: Option<&Path>, port: u16) -> Served {
    let target = Target::new();
    if let Some(path) = path {
        target.open_export(TargetConfig::new(IQN, path.to_path_buf())).expect("open export");
    }
    let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).expect("bind");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = rt.spawn(meshdrain_iscsi::serve(listener, target.clone(), async move {
        let _ = rx.await;
    }));
    (target, addr, tx, task)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8).collect()
}

#[test]
fn a_restarted_source_is_logged_in_again_and_the_digest_covers_every_region() {
    let dir = tempfile::tempdir().unwrap();
    let size = 16 * REGION;
    let data = pattern(size as usize);
    let src = dir.path().join("src.img");
    std::fs::write(&src, &data).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (_, addr, tx, task) = serve(&rt, Some(&src), 0);

    let source =
        ReconnectingSource::connect(&addr.to_string(), IQN, INITIATOR, Some(VolumeDigest::new(size, REGION))).unwrap();
    assert_eq!((source.size(), source.identity()), (size, IQN.to_owned()));
    let read = |r: u64| {
        let mut buf = vec![0u8; REGION as usize];
        source.read_at(r * REGION, &mut buf).map(|()| buf)
    };
    for r in [0, 1, 2, 4] {
        assert_eq!(read(r).unwrap(), data[(r * REGION) as usize..((r + 1) * REGION) as usize]);
    }

    // The source restarts and answers "no such target" until its agent re-opens the
    // export: the initiator takes that as final, the reconnecting source logs in again.
    let _ = tx.send(());
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await }).expect("target stops").ok();
    let (target, _, _tx, _task) = serve(&rt, None, addr.port());
    let reopen = std::thread::spawn({
        let src = src.clone();
        move || {
            std::thread::sleep(Duration::from_millis(500));
            target.open_export(TargetConfig::new(IQN, src)).expect("re-open export");
        }
    });
    let start = Instant::now();
    let region5 = loop {
        match read(5) {
            Ok(buf) => break buf,
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                debug!("read while the source restarts: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("no read 20 s after the source came back: {e}"),
        }
    };
    reopen.join().unwrap();
    assert_eq!(region5, data[(5 * REGION) as usize..(6 * REGION) as usize]);

    // Regions never read (3, 6..16) are read now: the digest is the source file's.
    let digest = source.finish_digest().unwrap().expect("a digest was asked for");
    assert_eq!(digest, digest_file(&src, size, REGION).unwrap());
}

#[test]
fn a_refused_login_names_the_address_and_the_export() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (_, addr, _tx, _task) = serve(&rt, None, 0);
    let err = ReconnectingSource::connect(&addr.to_string(), IQN, INITIATOR, None).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with(&format!("login to {addr} ({IQN}): ")), "{text}");
    assert!(matches!(err, SourceError::Login { .. }), "{err:?}");
}

#[test]
fn a_planned_logout_leaves_the_export_without_sessions_and_never_logs_in_again() {
    let dir = tempfile::tempdir().unwrap();
    let size = 4 * REGION;
    let src = dir.path().join("src.img");
    std::fs::write(&src, pattern(size as usize)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (target, addr, _tx, _task) = serve(&rt, Some(&src), 0);
    let export = target.export(IQN).expect("the export");

    let source = ReconnectingSource::connect(&addr.to_string(), IQN, INITIATOR, None).unwrap();
    let mut buf = vec![0u8; REGION as usize];
    source.read_at(0, &mut buf).unwrap();
    assert_eq!(export.session_count(), 2, "a bulk and a foreground session");

    let start = Instant::now();
    source.log_out();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the logout waited {:?} (a session did not end)",
        start.elapsed()
    );
    // The target saw both sessions log out: closing the export now drops nothing.
    let deadline = Instant::now() + Duration::from_secs(2);
    while export.session_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(export.session_count(), 0, "sessions left after the logout");
    let err = source.read_at(0, &mut buf).unwrap_err();
    assert_eq!(err.to_string(), "logged out of the source after hand-off");
    std::thread::sleep(RELOGIN_EVERY + Duration::from_millis(200));
    let _ = source.read_at(0, &mut buf);
    assert_eq!(export.session_count(), 0, "a read after the logout logged in again");
    source.log_out(); // idempotent
}
