use std::sync::Mutex;

use super::*;
use crate::decide::model::Hydration;

#[derive(Default)]
struct FakeExports {
    calls: Mutex<Vec<String>>,
}

impl ExportService for FakeExports {
    fn open(&self, g: &ExportGrant) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!(
            "open {} {} {} {} {}",
            g.volume,
            g.path.display(),
            g.iqn,
            g.holder_addr,
            g.initiator_iqn
        ));
        Ok(())
    }
    fn close(&self, volume: &str) {
        self.calls.lock().unwrap().push(format!("close {volume}"));
    }
}

/// A clone that hydrates one region per progress call; `fail_prepare` injects a login failure.
#[derive(Default)]
struct FakeClones {
    fail_prepare: bool,
    hydrated: Mutex<u64>,
    calls: Mutex<Vec<String>>,
}

impl CloneService for FakeClones {
    fn prepare(&self, spec: &CloneSpec) -> Result<PathBuf, String> {
        self.calls.lock().unwrap().push(format!("prepare {} {} {}", spec.volume, spec.initiator_iqn, spec.export.addr));
        if self.fail_prepare {
            Err("login refused by the target (ACL)".into())
        } else {
            Ok(PathBuf::from("/dev/loop9"))
        }
    }
    fn start_hydration(&self, volume: &str) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("hydrate {volume}"));
        Ok(())
    }
    fn progress(&self, _: &str) -> Option<CloneProgress> {
        let mut h = self.hydrated.lock().unwrap();
        *h = (*h + 1).min(3);
        let hydration =
            Hydration { hydrated: *h, total: 3, bytes_per_s: 10, fetched_bytes: *h * 10, read_through_bytes: 0 };
        Some(CloneProgress { hydration, stalled: false, error: None })
    }
    fn set_rate_limit(&self, volume: &str, rate: Option<u64>) {
        self.calls.lock().unwrap().push(format!("rate {volume} {rate:?}"));
    }
    fn finalize(&self, volume: &str) -> Result<Option<String>, String> {
        self.calls.lock().unwrap().push(format!("finalize {volume}"));
        Ok(None)
    }
    fn discard(&self, volume: &str, _dest: &Path, _metadata: &Path) {
        self.calls.lock().unwrap().push(format!("discard {volume}"));
    }
}

struct Rig {
    plane: Executor,
    /// The owner loop's volume paths, handed over with each command.
    volumes: BTreeMap<String, PathBuf>,
    exports: Arc<FakeExports>,
    clones: Arc<FakeClones>,
    tx: mpsc::UnboundedSender<DataEvent>,
    rx: mpsc::UnboundedReceiver<DataEvent>,
    dir: tempfile::TempDir,
}

fn rig(fail_prepare: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let volumes = BTreeMap::from([("db".to_owned(), dir.path().join("db.img"))]);
    let exports = Arc::new(FakeExports::default());
    let clones = Arc::new(FakeClones { fail_prepare, ..Default::default() });
    let plane = Executor::new("n1", dir.path(), exports.clone(), clones.clone(), Duration::from_millis(1));
    let (tx, rx) = mpsc::unbounded_channel();
    Rig { plane, volumes, exports, clones, tx, rx, dir }
}

impl Rig {
    /// Hands `cmd` over as the owner loop does: with the volume's local path.
    fn execute(&mut self, cmd: DataCommand) {
        let local = self.volumes.get(cmd.volume().as_str()).cloned();
        self.plane.execute(cmd, local, self.tx.clone());
    }
}

/// `PrepareClone` of volume `db` from `n1` (no rate limit, no `--verify`): the command
/// most tests here and in holder_tests.rs start with.
pub(super) fn prepare_db(export: Option<ExportEndpoint>, epoch: u64, size: u64) -> DataCommand {
    DataCommand::PrepareClone {
        volume: "db".parse().unwrap(),
        source: "n1".parse().unwrap(),
        export,
        epoch,
        size,
        rate_limit: None,
        verify: false,
        base: None,
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<DataEvent>) -> DataEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("an event within 5 s").expect("channel open")
}

/// The stop hook's outcome is reported for its epoch; the export waits for the lease to
/// ask (after `WorkloadStopped`, src/decide/lease/source.rs), so a failed hook exports nothing.
#[tokio::test]
async fn a_stop_hook_reports_stopped_or_failed_and_exports_nothing_by_itself() {
    let mut r = rig(false);
    r.execute(DataCommand::StopWorkload {
        volume: "db".parse().unwrap(),
        hook: Some("echo busy >&2; exit 2".into()),
        epoch: 3,
    });
    match next(&mut r.rx).await {
        DataEvent::HookFailed { volume, reason } => {
            assert_eq!(volume, "db");
            assert!(reason.starts_with("stop hook of volume db failed (exit status: 2)"), "{reason}");
            assert!(reason.ends_with(": busy"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(r.rx.try_recv().is_err(), "a failed stop hook reported something more");
    assert!(r.exports.calls.lock().unwrap().is_empty(), "exported an unquiesced volume");

    // The next grant's stop succeeds and says so for its epoch; the lease then asks for the
    // export, which opens ACL'd to the holder and its epoch.
    r.execute(DataCommand::StopWorkload { volume: "db".parse().unwrap(), hook: Some("true".into()), epoch: 4 });
    assert_eq!(next(&mut r.rx).await, DataEvent::WorkloadStopped { volume: "db".parse().unwrap(), epoch: 4 });
    assert!(r.exports.calls.lock().unwrap().is_empty(), "exported before the lease asked");
    r.execute(DataCommand::OpenExport {
        volume: "db".parse().unwrap(),
        holder: "n2".parse().unwrap(),
        holder_addr: "fd00::2".into(),
        epoch: 4,
    });
    // What a return needs is taken before the export opens (docs/return.md).
    let result = Err("no userspace clone of db here tracks its writes".to_owned());
    assert_eq!(next(&mut r.rx).await, DataEvent::Written { volume: "db".parse().unwrap(), epoch: 4, result });
    assert_eq!(next(&mut r.rx).await, DataEvent::ExportOpened { volume: "db".parse().unwrap(), epoch: 4 });
    let calls = r.exports.calls.lock().unwrap().clone();
    let want = format!(
        "open db {} iqn.2026-11.dev.meshdrain:n1.db fd00::2 iqn.2026-11.dev.meshdrain:n2.db.e4",
        r.dir.path().join("db.img").display()
    );
    assert_eq!(calls, vec![want]);
}

#[tokio::test]
async fn a_holder_prepares_starts_hydrates_and_finalizes_in_order() {
    let mut r = rig(false);
    let marker = r.dir.path().join("started");
    let export = ExportEndpoint { addr: "[fd00::1]:3260".into(), iqn: "iqn.x".into() };
    let cmds = [
        prepare_db(Some(export), 4, 1 << 20),
        DataCommand::StartHeldWorkload {
            volume: "db".parse().unwrap(),
            hook: Some(format!("echo $MESHDRAIN_DEVICE > {}", marker.display())),
        },
    ];
    for c in cmds {
        r.execute(c);
    }
    assert_eq!(next(&mut r.rx).await, DataEvent::CloneReady { volume: "db".parse().unwrap(), epoch: 4 });
    let mut last = 0;
    loop {
        match next(&mut r.rx).await {
            DataEvent::Progress { progress, .. } => {
                let Hydration { hydrated, total, .. } = progress.hydration;
                assert!(hydrated >= last && total == 3);
                last = hydrated;
            }
            DataEvent::Hydrated { volume } => {
                assert_eq!(volume, "db");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "/dev/loop9\n", "start hook sees the clone device");
    r.execute(DataCommand::Finalize { volume: "db".parse().unwrap(), done_hook: None });
    assert_eq!(next(&mut r.rx).await, DataEvent::Finalized { volume: "db".parse().unwrap(), digest: None });
    let calls = r.clones.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec!["prepare db iqn.2026-11.dev.meshdrain:n1.db.e4 [fd00::1]:3260", "hydrate db", "finalize db"]
    );
}

#[tokio::test]
async fn a_refused_login_is_reported_with_its_reason() {
    let mut r = rig(true);
    let export = ExportEndpoint { addr: "[fd00::1]:3260".into(), iqn: "iqn.x".into() };
    r.execute(prepare_db(Some(export), 2, 1));
    assert_eq!(
        next(&mut r.rx).await,
        DataEvent::CloneFailed {
            volume: "db".parse().unwrap(),
            epoch: 2,
            reason: "login refused by the target (ACL)".into()
        }
    );
    r.execute(prepare_db(None, 3, 1));
    assert!(
        matches!(next(&mut r.rx).await, DataEvent::CloneFailed { reason, .. } if reason.contains("no export endpoint"))
    );
}

#[tokio::test]
async fn only_pool_files_are_deleted_after_hand_off() {
    let mut r = rig(false);
    let outside = tempfile::tempdir().unwrap();
    let device = outside.path().join("nvme-part");
    std::fs::write(&device, b"data").unwrap();
    r.volumes.insert("ext".into(), device.clone());
    std::fs::write(r.dir.path().join("db.img"), b"data").unwrap();
    r.execute(DataCommand::DeleteData { volume: "db".parse().unwrap() });
    r.execute(DataCommand::DeleteData { volume: "ext".parse().unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!r.dir.path().join("db.img").exists());
    assert!(device.exists(), "a device outside the pool is never deleted");
    // The table entry is the owner loop's to drop (store::volumes::VolumeTable::path_for,
    // whose test asserts it); the data plane only ever reads the path it was handed.
}

/// docs/return.md: a written set must not outlive a use of the volume outside the engine
/// that keeps it: the source's start hook (on the volume's file), or a clone backend that
/// does not track writes.
#[tokio::test]
async fn a_volume_used_outside_its_clone_engine_loses_its_written_set() {
    let mut r = rig(false);
    let set = r.dir.path().join("db.clone-written");
    std::fs::write(&set, b"set").unwrap();
    r.execute(DataCommand::StartWorkload { volume: "db".parse().unwrap(), hook: None });
    let open = DataCommand::OpenExport {
        volume: "db".parse().unwrap(),
        holder: "n2".parse().unwrap(),
        holder_addr: "fd00::2".into(),
        epoch: 4,
    };
    r.execute(open);
    assert!(matches!(next(&mut r.rx).await, DataEvent::Written { .. }), "commands of a volume run in order");
    assert!(!set.exists(), "the start hook ran on the file: the set is gone");
    std::fs::write(&set, b"set").unwrap();
    let export = ExportEndpoint { addr: "[fd00::1]:3260".into(), iqn: "iqn.x".into() };
    r.execute(prepare_db(Some(export), 5, 1));
    loop {
        if let DataEvent::CloneReady { .. } = next(&mut r.rx).await {
            break;
        }
    }
    assert!(!set.exists(), "a backend that does not track writes leaves no set behind");
}

/// docs/return.md: a return planned as a delta on a backend that cannot clone over a kept
/// copy (the default) is reported as a full move, with why, before the clone is ready; a
/// plan that is full already, or none, is not.
#[tokio::test]
async fn a_delta_the_clone_backend_cannot_use_is_reported_as_a_full_move_before_ready() {
    use crate::decide::returns::ReturnPlan;
    let export = ExportEndpoint { addr: "10.0.0.1:3260".into(), iqn: "iqn.x".into() };
    let with = |base: Option<ReturnPlan>| match prepare_db(Some(export.clone()), 4, 1 << 20) {
        DataCommand::PrepareClone { volume, source, export, epoch, size, rate_limit, verify, .. } => {
            DataCommand::PrepareClone { volume, source, export, epoch, size, rate_limit, verify, base }
        }
        _ => unreachable!(),
    };
    let db = || "db".parse().unwrap();
    let mut r = rig(false);
    r.execute(with(Some(ReturnPlan::Delta { grain: 65536, bits: "00".repeat(2), since_ms: 1 })));
    assert_eq!(
        next(&mut r.rx).await,
        DataEvent::ReturnFull {
            volume: db(),
            epoch: 4,
            reason: "this node's clone backend cannot clone over the copy kept here (only the userspace engine can)"
                .into()
        }
    );
    assert_eq!(next(&mut r.rx).await, DataEvent::CloneReady { volume: db(), epoch: 4 });
    let mut r = rig(false);
    r.execute(with(Some(ReturnPlan::Full { reason: "x".into() })));
    assert_eq!(next(&mut r.rx).await, DataEvent::CloneReady { volume: db(), epoch: 4 });
}
