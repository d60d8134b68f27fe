//! Write tracking through the engine (docs/return.md): a workload write is acknowledged
//! only after its region is durably in the written set, and a clone created over a
//! retained copy fetches only the regions that set names.
#![allow(clippy::single_range_in_vec_init)] // ranges of one region are what these tests write
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{FakeMeta, FakeSource, Faults, Image, pattern};
use meshdrain_clone::written::Written;
use meshdrain_clone::{Dest, Engine, EngineConfig, MetaStore, UserspaceClone};

const REGION: u64 = 64 * 1024;
type Log = Arc<Mutex<Vec<&'static str>>>;

/// A dest over memory that logs its writes and can refuse them.
struct LogDest {
    bytes: Mutex<Vec<u8>>,
    log: Log,
    fail: AtomicBool,
}
struct D(Arc<LogDest>);
impl Dest for D {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.bytes.lock().unwrap().len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.copy_from_slice(&self.0.bytes.lock().unwrap()[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.0.fail.load(Ordering::Relaxed) {
            return Err(io::Error::other("crash before the dest write"));
        }
        self.0.log.lock().unwrap().push("dest write");
        self.0.bytes.lock().unwrap()[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_at(offset, &vec![0; len as usize])
    }
}

/// A written-set store that logs syncs and keeps its durable image.
struct LogStore {
    volatile: Mutex<Vec<u8>>,
    durable: Mutex<Vec<u8>>,
    log: Log,
}
struct S(Arc<LogStore>);
impl MetaStore for S {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.volatile.lock().unwrap().len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.copy_from_slice(&self.0.volatile.lock().unwrap()[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut v = self.0.volatile.lock().unwrap();
        if v.len() < offset as usize + data.len() {
            v.resize(offset as usize + data.len(), 0);
        }
        v[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        self.0.log.lock().unwrap().push("written sync");
        *self.0.durable.lock().unwrap() = self.0.volatile.lock().unwrap().clone();
        Ok(())
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("/nonexistent/written")
    }
}

#[test]
fn a_write_is_acknowledged_only_after_its_region_is_durably_marked() {
    let log: Log = Arc::default();
    let data = pattern(1, 32 * REGION as usize);
    let source = FakeSource::new(data.clone(), REGION);
    let dest = Arc::new(LogDest { bytes: Mutex::new(vec![0; data.len()]), log: log.clone(), fail: false.into() });
    let meta = FakeMeta(Image::new(vec![], Faults::new(None)));
    let cfg = EngineConfig { region_size: REGION, ..Default::default() };
    let engine = Engine::create(source, Box::new(D(dest.clone())), Box::new(meta), cfg).unwrap();
    engine.wait_scanned();
    let store = Arc::new(LogStore { volatile: Mutex::default(), durable: Mutex::default(), log: log.clone() });
    let bind = engine.written_binding().expect("v2 metadata has a clone id");
    engine.track_writes(Written::create(Box::new(S(store.clone())), bind).unwrap()).unwrap();
    log.lock().unwrap().clear();
    engine.write(3 * REGION, &vec![9u8; REGION as usize]).unwrap();
    assert_eq!(*log.lock().unwrap(), ["written sync", "dest write"], "the mark is durable before the data is written");
    log.lock().unwrap().clear();
    engine.write(3 * REGION + 512, &[8u8; 512]).unwrap();
    assert_eq!(*log.lock().unwrap(), ["dest write"], "a region already marked costs no sync");
    // A crash between the mark and the dest write: the bit is there (a superset).
    dest.fail.store(true, Ordering::Relaxed);
    assert!(engine.write(7 * REGION, &vec![1u8; REGION as usize]).is_err(), "the write was not acknowledged");
    let durable = Arc::new(LogStore {
        volatile: Mutex::new(store.durable.lock().unwrap().clone()),
        durable: Mutex::default(),
        log: Arc::default(),
    });
    let reopened = Written::open(Box::new(S(durable)), bind).unwrap();
    assert_eq!(reopened.ranges(), vec![3 * REGION..4 * REGION, 7 * REGION..8 * REGION]);
    let since = engine.written_since().unwrap();
    assert_eq!(since.ranges, reopened.ranges());
}

#[test]
fn a_clone_over_a_retained_copy_fetches_only_the_written_regions() {
    // The retained copy: the volume as it was at cut-over. The source: the same with
    // 5 regions rewritten since (and one partial write inside a sixth).
    let base = pattern(2, 256 * REGION as usize);
    let mut now = base.clone();
    let stale = [10 * REGION..12 * REGION, 100 * REGION..103 * REGION, 200 * REGION + 100..200 * REGION + 200];
    for r in &stale {
        now[r.start as usize..r.end as usize].fill(0xAB);
    }
    let source = FakeSource::new(now.clone(), REGION);
    let dest = Arc::new(LogDest { bytes: Mutex::new(base), log: Arc::default(), fail: false.into() });
    let meta = FakeMeta(Image::new(vec![], Faults::new(None)));
    let cfg = EngineConfig { region_size: REGION, ..Default::default() };
    let engine = Engine::create_over(source.clone(), Box::new(D(dest.clone())), Box::new(meta), cfg, &stale).unwrap();
    let clone = UserspaceClone::start(engine.clone());
    for _ in 0..500 {
        if engine.try_handoff().unwrap() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(engine.try_handoff().unwrap(), "hydrated");
    let _ = clone.stop();
    assert_eq!(engine.fetches(), 6, "2 + 3 + 1 regions fetched, nothing else");
    assert_eq!(*dest.bytes.lock().unwrap(), now, "the copy equals the source");
}
