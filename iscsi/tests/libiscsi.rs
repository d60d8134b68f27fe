//! libiscsi's tools against our target, started in-process on 127.0.0.1.
//! Needs `libiscsi-bin`; fails (never skips) when it is missing.
//!
//! Full `iscsi-test-cu -n -t ALL`, same 64 MiB sparse LUN, same libiscsi,
//! recorded 2026-11-23 (tgtd 1.0.x on this machine in brackets):
//!
//! ```text
//!   suites     51     51    n/a      0        0
//!    tests    230    230    212     18        0     [tgtd: 230 230 209 21 0]
//!  asserts  10856  10856  10724    132      n/a
//! ```
//!
//! No test fails against us that passes against tgtd. tgtd fails our 18
//! plus GetLBAStatus.BeyondEol, PrinServiceactionRange.Range and
//! Reserve6.2Initiators. (An earlier note said tgtd passed 222; rerun on
//! the same LUN side by side it passes 209.) The 18, and why:
//! - WriteVerify10.Dpo, WriteVerify12.Dpo, WriteVerify16.Dpo: WRITE AND
//!   VERIFY gets DATA PROTECT / WRITE PROTECTED (write on a read-only
//!   export); tgtd fails them too.
//! - ProutRegister.Simple, ProutReserve.Simple and the twelve
//!   ProutReserve.Access*/Ownership* tests, PrinReadKeys.Truncate (not
//!   writes): PERSISTENT RESERVE IN/OUT (0x5e/0x5f) are not implemented and
//!   answer INVALID COMMAND OPERATION CODE (tgtd fails all 15 as well).
//!   These suites do not check support before asserting, so they count as
//!   failures. meshdrain does not use SCSI reservations: exclusivity of an
//!   export comes from its ACL (the lease holder's mesh address) and
//!   fencing, enforced at login. Their follow-up assertions ("WRITE10
//!   failed with WRITE PROTECTED", "READ10 succeeded when expected to
//!   fail") are consequences of the same two facts; the Access tests would
//!   fail on their WRITE step even with reservations implemented.
//!
//! `iscsi_test_cu_all_does_not_regress` keeps it that way: at least 212
//! pass, and every failure is one of the 18 above.

mod common;

use std::process::Command;

use common::{IQN, start};
use meshdrain_iscsi::TargetConfig;
use meshdrain_testkit::require_program as require;

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

/// The `-t ALL` tests known to fail on a read-only export (see the top).
const KNOWN_FAILURES: &[&str] = &[
    "WriteVerify10.Dpo",
    "WriteVerify12.Dpo",
    "WriteVerify16.Dpo",
    "PrinReadKeys.Truncate",
    "ProutRegister.Simple",
    "ProutReserve.Simple",
    "ProutReserve.AccessEA",
    "ProutReserve.AccessEAAR",
    "ProutReserve.AccessEARO",
    "ProutReserve.AccessWE",
    "ProutReserve.AccessWEAR",
    "ProutReserve.AccessWERO",
    "ProutReserve.OwnershipEA",
    "ProutReserve.OwnershipEAAR",
    "ProutReserve.OwnershipEARO",
    "ProutReserve.OwnershipWE",
    "ProutReserve.OwnershipWEAR",
    "ProutReserve.OwnershipWERO",
];
/// Tests of `-t ALL` that passed when the list above was recorded.
const ALL_PASSED: u32 = 212;

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
        let out = tokio::task::spawn_blocking(move || {
            Command::new(bin).args(["-n", "-t", &t2, &url]).output().expect("run iscsi-test-cu")
        })
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
    assert!(
        out.contains("RETURNED LOGICAL BLOCK ADDRESS:131071") && out.contains("LBPME:1"),
        "iscsi-readcapacity16 output: {out}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iscsi_test_cu_all_does_not_regress() {
    let bin = require("iscsi-test-cu", "libiscsi-bin");
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = start(vec![TargetConfig::new(IQN, lun_file(dir.path()))], 0).await;
    let url = running.url(IQN);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(600),
        tokio::task::spawn_blocking(move || {
            Command::new(bin).args(["-n", "-t", "ALL", &url]).output().expect("run iscsi-test-cu")
        }),
    )
    .await
    .expect("iscsi-test-cu -t ALL finishes within 600 s")
    .unwrap();
    running.stop().await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let (total, ran, passed, _) = tests_line(&text).unwrap_or_else(|| panic!("no CUnit summary in:\n{text}"));
    // "Suite Read10, Test Simple had failures:" -> "Read10.Simple".
    let failed: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Suite ")?.strip_suffix(" had failures:").map(str::to_string))
        .filter_map(|l| l.split_once(", Test ").map(|(s, t)| format!("{s}.{t}")))
        .collect();
    let unexpected: Vec<&String> = failed.iter().filter(|f| !KNOWN_FAILURES.contains(&f.as_str())).collect();
    assert!(unexpected.is_empty(), "new -t ALL failures {unexpected:?}\n{text}");
    assert_eq!(ran, total, "every test ran");
    assert_eq!(failed.len() as u32, ran - passed, "each failure named once: {failed:?}");
    assert!(passed >= ALL_PASSED, "{passed}/{total} passed, recorded {ALL_PASSED}: a regression\n{text}");
}
