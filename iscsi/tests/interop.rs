//! Our initiator against tgtd and against our target: a 256 MiB file reads
//! back byte for byte through both (with CRC32C digests against tgtd), and a
//! session survives its target restarting (the caller sees only latency).
//! Needs `tgt` (tgtd, tgtadm); fails with a clear message when missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{IQN, require, start};
use meshdrain_iscsi::{BlockReader, InitiatorConfig, Session, TargetConfig};

/// A tgtd on a free port with one LUN; killed and reaped on drop.
struct Tgtd {
    child: Child,
    port: u16,
}

impl Tgtd {
    fn start(file: &Path, iqn: &str) -> Tgtd {
        let tgtd = require("tgtd", "tgt");
        let tgtadm = require("tgtadm", "tgt");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // tgtd refuses a control port above 32767; 20000.. keeps clear of clone/tests/process.rs (10000..).
        let control = 20000 + (std::process::id() % 12000) as u16;
        let child = Command::new(tgtd)
            .args(["-f", "--iscsi", &format!("portal=127.0.0.1:{port}"), "-C", &control.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tgtd");
        let mut t = Tgtd { child, port };
        let adm = |args: &[&str]| {
            // tgtd can take seconds to come up on a loaded machine.
            for _ in 0..300 {
                let o =
                    Command::new(&tgtadm).arg("-C").arg(control.to_string()).args(args).output().expect("run tgtadm");
                if o.status.success() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("tgtadm {args:?} kept failing; is tgtd able to start (root needed)?");
        };
        adm(&["--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1", "-T", iqn]);
        adm(&[
            "--lld",
            "iscsi",
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            file.to_str().unwrap(),
        ]);
        adm(&["--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"]);
        t.port = port;
        t
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SIZE: usize = 256 << 20;

/// Reads the whole LUN with 32 reads of 1 MiB in flight and compares.
async fn read_all_and_compare(s: &Session, want: &[u8]) {
    assert_eq!(s.blocks() * s.block_size() as u64, want.len() as u64);
    let chunk_blocks: u32 = 2048;
    let n = want.len() / (chunk_blocks as usize * 512);
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0usize;
    let mut done = 0usize;
    while done < n {
        while next < n && set.len() < 32 {
            let s = s.clone();
            let i = next;
            set.spawn(async move { (i, s.read_blocks(i as u64 * chunk_blocks as u64, chunk_blocks).await) });
            next += 1;
        }
        let (i, r) = set.join_next().await.unwrap().unwrap();
        let data = r.expect("read");
        let off = i * chunk_blocks as usize * 512;
        assert!(data[..] == want[off..off + data.len()], "bytes differ in chunk {i}");
        done += 1;
    }
}

fn big_file(dir: &Path) -> PathBuf {
    common::pattern_file(dir, "big.img", SIZE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initiator_reads_256mib_through_tgtd_and_our_target() {
    let dir = tempfile::tempdir().unwrap();
    let path = big_file(dir.path());
    let want = std::fs::read(&path).unwrap();
    let tgt = Tgtd::start(&path, "iqn.2026-11.dev.meshdrain:tgtd");
    let cfg = InitiatorConfig::from_url(&format!("iscsi://127.0.0.1:{}/iqn.2026-11.dev.meshdrain:tgtd/1", tgt.port))
        .unwrap()
        .with_digests(true);
    let s = Session::connect(cfg).await.expect("login to tgtd with digests");
    read_all_and_compare(&s, &want).await;
    drop(s);
    drop(tgt);

    let (r, _) = start(vec![TargetConfig::new(IQN, path.clone())], 0).await;
    for digests in [false, true] {
        let cfg = InitiatorConfig::from_url(&r.url(IQN)).unwrap().with_digests(digests);
        let s = Session::connect(cfg).await.expect("login to our target");
        read_all_and_compare(&s, &want).await;
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_survives_target_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::pattern_file(dir.path(), "small.img", 4 << 20);
    let want = std::fs::read(&path).unwrap();
    let (r, _) = start(vec![TargetConfig::new(IQN, path.clone())], 0).await;
    let port = r.addr.port();
    let s = Session::connect_url(&r.url(IQN)).await.unwrap();
    assert_eq!(&s.read(0, 8).await.unwrap()[..], &want[..4096]);
    r.stop().await;
    let reader = {
        let s = s.clone();
        tokio::spawn(async move { s.read(16, 8).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (r2, _) = start(vec![TargetConfig::new(IQN, path)], port).await;
    let got = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("no hang")
        .unwrap()
        .expect("read after reconnect");
    assert_eq!(&got[..], &want[16 * 512..24 * 512]);
    r2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_lba_status_reports_holes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparse.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 1 << 20], 2 << 20).unwrap();
    f.sync_all().unwrap();
    let (r, _) = start(vec![TargetConfig::new(IQN, p)], 0).await;
    let s = Session::connect_url(&r.url(IQN)).await.unwrap();
    let ext = s.get_lba_status(0).await.unwrap();
    assert!(!ext.is_empty());
    assert_eq!(ext[0].lba, 0);
    let covered: u64 = ext.iter().map(|e| e.blocks).sum();
    assert_eq!(covered, 16384, "extents cover the LUN: {ext:?}");
    // Every block holding data is reported allocated (never skip data).
    for e in &ext {
        if !e.allocated {
            let (a, b) = (e.lba * 512, (e.lba + e.blocks) * 512);
            assert!(b <= 2 << 20 || a >= 3 << 20, "deallocated extent {e:?} overlaps data");
        }
    }
    if ext.len() > 1 {
        assert!(!ext[0].allocated, "leading hole reported: {ext:?}");
    }
    r.stop().await;
}
