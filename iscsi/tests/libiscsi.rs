//! libiscsi's tools against our target, started in-process on 127.0.0.1.
//! Needs `libiscsi-bin`; fails (never skips) when it is missing.
//!
//! Full `iscsi-test-cu -n -t ALL` against our target (64 MiB sparse LUN,
//! recorded 2026-11-23; tgtd on the same machine: 222/230):
//!
//! ```text
//!   suites     51     51    n/a      0        0
//!    tests    230    230    212     18        0
//!  asserts  10856  10856  10724    132      n/a
//! ```
//!
//! The 18 failing tests, and why:
//! - WriteVerify10.Dpo, WriteVerify12.Dpo, WriteVerify16.Dpo: WRITE AND
//!   VERIFY gets DATA PROTECT / WRITE PROTECTED (write on a read-only export).
//! - ProutRegister.Simple, ProutReserve.Simple and the twelve
//!   ProutReserve.Access*/Ownership* tests, PrinReadKeys.Truncate (not writes):
//!   PERSISTENT RESERVE IN/OUT (0x5e/0x5f) are not implemented and answer
//!   INVALID COMMAND OPERATION CODE. These suites do not check support before
//!   asserting, so they count as failures. meshdrain does not use SCSI
//!   reservations: exclusivity of an export comes from its ACL (the lease
//!   holder's mesh address) and fencing, enforced at login. Their follow-up
//!   assertions ("WRITE10 failed with WRITE PROTECTED", "READ10 succeeded
//!   when expected to fail") are consequences of the same two facts.

mod common;

use std::process::Command;

use common::{IQN, require, start};
use meshdrain_iscsi::TargetConfig;

/// The read subset the issue requires to pass 100 %.
const READ_SUBSET: &[&str] = &[
    "ALL.Inquiry",
    "ALL.ReadCapacity10",
    "ALL.ReadCapacity16",
    "ALL.Read6",
    "ALL.Read10",
    "ALL.Read12",
    "ALL.Read16",
    "ALL.TestUnitReady",
    "ALL.ReportSupportedOpcodes",
    "ALL.ModeSense6",
    "ALL.NoMedia",
    "ALL.ReadOnly",
    "iSCSI",
];

/// Parses CUnit's "tests  <total> <ran> <passed> <failed> <inactive>" line.
fn tests_line(out: &str) -> Option<(u32, u32, u32, u32)> {
    let line = out.lines().find(|l| l.trim_start().starts_with("tests "))?;
    let n: Vec<u32> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    (n.len() >= 4).then(|| (n[0], n[1], n[2], n[3]))
}

fn lun_file(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("lun.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"meshdrain", 1 << 20).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iscsi_test_cu_read_subset_passes_fully() {
    let bin = require("iscsi-test-cu", "libiscsi-bin");
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = start(vec![TargetConfig::new(IQN, lun_file(dir.path()))], 0).await;
    let url = running.url(IQN);
    let mut failures = Vec::new();
    for t in READ_SUBSET {
        let (bin, url, t2) = (bin.clone(), url.clone(), t.to_string());
        let out = tokio::task::spawn_blocking(move || Command::new(bin).args(["-n", "-t", &t2, &url]).output().expect("run iscsi-test-cu"))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        match tests_line(&text) {
            Some((total, ran, passed, failed)) if total > 0 && ran == total && passed == total && failed == 0 => {}
            other => failures.push(format!("{t}: {other:?}\n{text}")),
        }
    }
    running.stop().await;
    assert!(failures.is_empty(), "iscsi-test-cu read subset failures:\n{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iscsi_ls_inq_readcapacity16_against_our_target() {
    let ls = require("iscsi-ls", "libiscsi-bin");
    let inq = require("iscsi-inq", "libiscsi-bin");
    let rc16 = require("iscsi-readcapacity16", "libiscsi-bin");
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = start(vec![TargetConfig::new(IQN, lun_file(dir.path()))], 0).await;
    let url = running.url(IQN);
    let portal = format!("iscsi://{}", running.addr);
    let run = |bin: std::path::PathBuf, args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let o = Command::new(&bin).args(&args).output().expect("run libiscsi tool");
            assert!(o.status.success(), "{} {:?} failed: {}", bin.display(), args, String::from_utf8_lossy(&o.stderr));
            String::from_utf8_lossy(&o.stdout).into_owned()
        })
    };
    let out = run(ls, vec!["-s".into(), portal]).await.unwrap();
    assert!(out.contains(IQN) && out.contains("Lun:1") && out.contains("DIRECT_ACCESS"), "iscsi-ls output: {out}");
    let out = run(inq.clone(), vec![url.clone()]).await.unwrap();
    assert!(out.contains("Vendor:MESHDRN") && out.contains("DIRECT_ACCESS"), "iscsi-inq output: {out}");
    let out = run(inq, vec!["-e".into(), "1".into(), "-c".into(), "131".into(), url.clone()]).await.unwrap();
    assert!(out.contains("DEVICE_IDENTIFICATION") && out.contains("(3) NAA"), "iscsi-inq VPD 83 output: {out}");
    let out = run(rc16, vec![url]).await.unwrap();
    assert!(out.contains("RETURNED LOGICAL BLOCK ADDRESS:131071") && out.contains("LBPME:1"), "iscsi-readcapacity16 output: {out}");
    running.stop().await;
}
