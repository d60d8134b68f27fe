//! The on-demand (foreground) session of an [`IscsiSource`] lives on a runtime that only
//! moves while a workload read blocks on it (or its keeper thread turns it): it must
//! still notice a dropped connection, log in again and answer, both for a read issued
//! after the target came back and for one issued while it was away.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::pattern;
use meshdrain_clone::{BlockSource, Engine, EngineConfig, FileDest, FileMeta, IscsiSource};
use meshdrain_iscsi::{Target, TargetConfig};
use tokio::sync::oneshot;

const IQN: &str = "iqn.2026-11.dev.meshdrain:fgtest";
const REGION: u64 = 64 * 1024;

/// Our target serving `path` on 127.0.0.1:`port` on `rt` until the sender fires.
fn serve(
    rt: &tokio::runtime::Runtime,
    path: &Path,
    port: u16,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let target = Target::new();
    target.open_export(TargetConfig::new(IQN, path.to_path_buf())).expect("open export");
    let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).expect("bind");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = rt.spawn(meshdrain_iscsi::serve(listener, target, async move {
        let _ = rx.await;
    }));
    (addr, tx, task)
}

fn stop(rt: &tokio::runtime::Runtime, tx: oneshot::Sender<()>, task: tokio::task::JoinHandle<std::io::Result<()>>) {
    let _ = tx.send(());
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await }).expect("target stops").ok();
}

#[test]
fn foreground_session_reconnects_after_the_target_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(3, 64 * REGION as usize);
    let src_path = dir.path().join("src.img");
    std::fs::write(&src_path, &data).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (addr, tx, task) = serve(&rt, &src_path, 0);
    let url = format!("iscsi://{addr}/{IQN}/1");
    let source = Arc::new(IscsiSource::connect(&url, Duration::from_secs(20)).expect("login"));
    let size = source.size();
    let dest = FileDest::open(&dir.path().join("dest.img"), size).unwrap();
    let meta = FileMeta::create(&dir.path().join("dest.meta")).unwrap();
    // No background hydration: every read below is an on-demand fetch on the foreground lane.
    let cfg = EngineConfig { rate_limit: Some(1024), ..Default::default() };
    let engine = Engine::create(source.clone(), Box::new(dest), Box::new(meta), cfg).unwrap();
    let read = |e: &Engine, at: u64| {
        let mut buf = vec![0u8; 4096];
        e.read(at, &mut buf).map(|()| buf)
    };
    let at = |r: u64| (r * REGION + 8192) as usize;
    assert_eq!(read(&engine, at(1) as u64).unwrap(), data[at(1)..at(1) + 4096]);

    // Restart: the session's connection drops while nobody reads; a read issued after
    // the target is back logs in again (the keeper thread or the read drives it).
    stop(&rt, tx, task);
    std::thread::sleep(Duration::from_millis(300));
    let (_, tx, task) = serve(&rt, &src_path, addr.port());
    let t = Instant::now();
    assert_eq!(read(&engine, at(5) as u64).expect("read after restart"), data[at(5)..at(5) + 4096]);
    assert!(t.elapsed() < Duration::from_secs(15), "read after restart took {:?}", t.elapsed());

    // A read issued while the target is away waits and is answered once it is back.
    stop(&rt, tx, task);
    let reader = std::thread::spawn({
        let engine = engine.clone();
        move || read(&engine, at(9) as u64)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!reader.is_finished(), "the read answered while the target was away");
    let (_, tx, task) = serve(&rt, &src_path, addr.port());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(reader.is_finished(), "the read issued during the outage never finished");
    assert_eq!(reader.join().unwrap().expect("read across the outage"), data[at(9)..at(9) + 4096]);
    // Reads within a region pass through to the source: no region was copied (hydration
    // is held). The plain foreground read path works too.
    assert_eq!(engine.fetches(), 0);
    let mut buf = vec![0u8; 512];
    source.read_at(20 * REGION, &mut buf).unwrap();
    assert_eq!(buf, data[20 * REGION as usize..20 * REGION as usize + 512]);
    drop(engine);
    stop(&rt, tx, task);
}
