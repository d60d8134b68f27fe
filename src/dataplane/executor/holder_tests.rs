//! The executor with clones in holder processes (docs/holder-process.md): an adopted
//! clone's running workload is not started a second time, a restarted holder's new
//! device gets the start hook again.

use std::sync::Mutex;

use super::*;
use crate::decide::model::Hydration;

/// Holder processes as the executor sees them: `adopted` says whether the clone's
/// workload survived the agent's restart; `relaunch` hands out the relaunch channel.
struct Holders {
    adopted: bool,
    calls: Mutex<Vec<String>>,
    relaunches: Mutex<Option<mpsc::UnboundedReceiver<Relaunched>>>,
}

impl CloneService for Holders {
    fn prepare(&self, _: &CloneSpec) -> Result<PathBuf, String> {
        Ok(PathBuf::from("/dev/loop7"))
    }
    fn start_hydration(&self, volume: &str) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("hydrate {volume}"));
        Ok(())
    }
    fn progress(&self, _: &str) -> Option<CloneProgress> {
        let hydration = Hydration { hydrated: 1, total: 3, bytes_per_s: 1, fetched_bytes: 1, read_through_bytes: 0 };
        Some(CloneProgress { hydration, stalled: false, error: None })
    }
    fn set_rate_limit(&self, _: &str, _: Option<u64>) {}
    fn finalize(&self, _: &str) -> Result<Option<String>, String> {
        Ok(None)
    }
    fn discard(&self, _: &str, _: &Path, _: &Path) {}
    fn workload_running(&self, _: &str) -> bool {
        self.adopted
    }
    fn workload_started(&self, volume: &str, hook: Option<&str>) {
        self.calls.lock().unwrap().push(format!("started {volume} {}", hook.is_some()));
    }
    fn relaunches(&self) -> Option<mpsc::UnboundedReceiver<Relaunched>> {
        self.relaunches.lock().unwrap().take()
    }
}

/// Prepares and starts `db` with a hook appending its device to `marker`; returns the
/// relaunch sender and the holders.
async fn started(adopted: bool, dir: &Path, marker: &Path) -> (mpsc::UnboundedSender<Relaunched>, Arc<Holders>) {
    let hook = format!("echo $MESHDRAIN_DEVICE >> {}", marker.display());
    started_with(adopted, dir, &hook).await
}

/// [`started`] with the start hook `hook`.
async fn started_with(adopted: bool, dir: &Path, hook: &str) -> (mpsc::UnboundedSender<Relaunched>, Arc<Holders>) {
    let (relaunch_tx, relaunch_rx) = mpsc::unbounded_channel();
    let holders = Arc::new(Holders { adopted, calls: Mutex::default(), relaunches: Mutex::new(Some(relaunch_rx)) });
    let mut plane = Executor::new("n2", dir, Arc::new(NoExports), holders.clone(), Duration::from_millis(1));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let export = ExportEndpoint { addr: "10.0.0.1:3260".into(), iqn: "iqn.x".into() };
    let prepare = super::tests::prepare_db(Some(export), 4, 1 << 20);
    plane.execute(prepare, None, tx.clone());
    let hook = Some(hook.to_owned());
    plane.execute(DataCommand::StartHeldWorkload { volume: "db".parse().unwrap(), hook }, None, tx.clone());
    // The reporter's first progress: the start hook (if any) has run by then.
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("an event").expect("open");
        if matches!(ev, DataEvent::Progress { .. }) {
            break;
        }
    }
    (relaunch_tx, holders)
}

struct NoExports;

impl ExportService for NoExports {
    fn open(&self, _: &ExportGrant) -> Result<(), String> {
        Ok(())
    }
    fn close(&self, _: &str) {}
}

#[tokio::test]
async fn an_adopted_clone_with_its_workload_running_gets_hydration_but_not_a_second_start() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("starts");
    let (_tx, holders) = started(true, dir.path(), &marker).await;
    assert!(!marker.exists(), "the start hook ran again: {:?}", std::fs::read_to_string(&marker));
    assert_eq!(*holders.calls.lock().unwrap(), vec!["hydrate db".to_owned()]);
}

#[tokio::test]
async fn a_fresh_clone_starts_its_workload_and_a_relaunched_one_starts_it_again_on_the_new_device() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("starts");
    let (tx, holders) = started(false, dir.path(), &marker).await;
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "/dev/loop7\n");
    assert_eq!(*holders.calls.lock().unwrap(), vec!["hydrate db".to_owned(), "started db true".to_owned()]);

    let hook = Some(format!("echo $MESHDRAIN_DEVICE >> {}", marker.display()));
    tx.send(Relaunched { volume: "db".into(), device: PathBuf::from("/dev/loop8"), start_hook: Some(hook) }).unwrap();
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&marker).unwrap();
        if text.lines().count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(text, "/dev/loop7\n/dev/loop8\n", "the hook ran again on the new device");
    // A holder restarted before its workload started: the device changes, no hook yet.
    tx.send(Relaunched { volume: "db".into(), device: PathBuf::from("/dev/loop9"), start_hook: None }).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "/dev/loop7\n/dev/loop8\n");
}

#[tokio::test]
async fn a_start_hook_that_failed_is_not_recorded_as_a_started_workload() {
    let dir = tempfile::tempdir().unwrap();
    let (_tx, holders) = started_with(false, dir.path(), "exit 3").await;
    assert_eq!(*holders.calls.lock().unwrap(), vec!["hydrate db".to_owned()], "tried again after a restart");
}
