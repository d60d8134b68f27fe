//! Our initiator against tgtd and against our target: a 256 MiB file reads
//! back byte for byte through both (with CRC32C digests against tgtd), and a
//! session survives its target restarting (the caller sees only latency).
//! Needs `tgt` (tgtd, tgtadm); fails with a clear message when missing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{IQN, start};
use meshdrain_iscsi::{BlockReader, InitiatorConfig, Session, TargetConfig};
use meshdrain_testkit::tgtd::Tgtd;

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
    let cfg = InitiatorConfig::from_url(&tgt.url()).unwrap().with_digests(true);
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
