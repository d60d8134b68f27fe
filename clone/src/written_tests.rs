#![allow(clippy::single_range_in_vec_init)] // ranges of one region are what these tests write
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::*;

/// A store that keeps a volatile and a durable image and logs every operation.
#[derive(Default)]
struct Store {
    volatile: Mutex<Vec<u8>>,
    durable: Mutex<Vec<u8>>,
    log: Arc<Mutex<Vec<&'static str>>>,
}

struct Handle(Arc<Store>);

impl MetaStore for Handle {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.volatile.lock().unwrap().len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let v = self.0.volatile.lock().unwrap();
        buf.copy_from_slice(&v[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.log.lock().unwrap().push("write");
        let mut v = self.0.volatile.lock().unwrap();
        let end = offset as usize + data.len();
        if v.len() < end {
            v.resize(end, 0);
        }
        v[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        self.0.log.lock().unwrap().push("sync");
        *self.0.durable.lock().unwrap() = self.0.volatile.lock().unwrap().clone();
        Ok(())
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("test-written")
    }
}

fn bind() -> Binding {
    Binding { clone_id: [7; CLONE_ID_LEN], epoch: 3, size: (4 << 30) + 512, region_size: 64 << 10 }
}

/// The durable image reopened (what a holder restarted after kill -9 finds).
fn reopen(store: &Store, b: Binding) -> Result<Written, String> {
    let s = Store { volatile: Mutex::new(store.durable.lock().unwrap().clone()), ..Default::default() };
    Written::open(Box::new(Handle(Arc::new(s))), b)
}

#[test]
fn a_new_region_is_durable_when_mark_returns_and_a_marked_one_costs_nothing() {
    let store = Arc::new(Store::default());
    let mut w = Written::create(Box::new(Handle(store.clone())), bind()).unwrap();
    store.log.lock().unwrap().clear();
    assert_eq!(w.mark(10..12).unwrap(), 2);
    assert_eq!(*store.log.lock().unwrap(), ["write", "sync"], "one block write, then one sync");
    assert_eq!(reopen(&store, bind()).unwrap().ranges(), vec![(10 << 16)..(12 << 16)], "durable on return");
    store.log.lock().unwrap().clear();
    assert_eq!(w.mark(11..12).unwrap(), 0);
    assert!(store.log.lock().unwrap().is_empty(), "no I/O for a region already marked");
    // Regions in two blocks: both blocks written, one sync.
    assert_eq!(w.mark(32_000..33_000).unwrap(), 1000);
    assert_eq!(*store.log.lock().unwrap(), ["write", "write", "sync"]);
    assert_eq!(w.count(), 1002);
}

#[test]
fn the_last_short_region_is_covered_and_marks_past_the_end_are_clipped() {
    let store = Arc::new(Store::default());
    let mut w = Written::create(Box::new(Handle(store.clone())), bind()).unwrap();
    assert_eq!(w.mark(65_536..65_600).unwrap(), 1);
    assert_eq!(w.ranges(), vec![(4 << 30)..((4 << 30) + 512)]);
}

#[test]
fn a_set_is_refused_for_another_clone_epoch_or_geometry_and_when_damaged() {
    let store = Arc::new(Store::default());
    let mut w = Written::create(Box::new(Handle(store.clone())), bind()).unwrap();
    w.mark(0..1).unwrap();
    let other = Binding { clone_id: [8; CLONE_ID_LEN], ..bind() };
    assert_eq!(reopen(&store, other).unwrap_err(), "it belongs to another clone (clone id differs)");
    let err = reopen(&store, Binding { epoch: 4, ..bind() }).unwrap_err();
    assert!(err.contains("epoch 3; the clone has 65536, 4294967808, 4"), "{err}");
    store.durable.lock().unwrap()[4096 + 9] ^= 1;
    assert_eq!(reopen(&store, bind()).unwrap_err(), "its block 0 fails its checksum");
    store.durable.lock().unwrap().truncate(100);
    assert!(reopen(&store, bind()).unwrap_err().contains("expected"));
}

#[test]
fn newly_dirty_names_only_unset_regions() {
    let bits = [0b0000_0101u8, 0];
    assert_eq!(newly_dirty(&bits, 0..4), vec![1, 3]);
    assert_eq!(newly_dirty(&bits, 14..20), vec![14, 15], "past the bitmap: nothing");
}

#[test]
fn coarsening_keeps_every_byte_and_the_bound() {
    let ranges: Vec<Range<u64>> = (0..1000u64).map(|i| (i * 100 + i % 7)..(i * 100 + 50)).collect();
    for max in [1, 2, 10, 999, 1000, 5000] {
        let c = coarsen(ranges.clone(), max);
        assert!(c.len() <= max.max(1), "{} > {max}", c.len());
        for r in &ranges {
            assert!(c.iter().any(|c| c.start <= r.start && r.end <= c.end), "{r:?} lost at {max}");
        }
        assert!(c.windows(2).all(|w| w[0].end < w[1].start), "ascending and disjoint");
    }
    assert_eq!(coarsen(vec![0..1, 10..11, 12..13], 2), vec![0..1, 10..13], "the smallest gap goes first");
}
