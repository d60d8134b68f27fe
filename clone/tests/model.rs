//! Model-based tests of the userspace engine: random interleavings of workload reads,
//! writes, discards, flushes and hydration steps against a plain byte array; crash at
//! every I/O step of the commit order, then resume.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use meshdrain_clone::core::CoreConfig;
use meshdrain_clone::{Engine, EngineConfig};
use proptest::prelude::*;

const RS: u64 = 4096;
const SIZE: u64 = 11 * RS + 1000; // last region short

#[derive(Clone, Debug)]
enum Op {
    Read(u64, u64),
    Write(u64, u64, u64),
    Discard(u64, u64),
    Flush,
    Hydrate,
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE).prop_flat_map(|off| (Just(off), 1..=(SIZE - off).min(3 * RS)));
    prop_oneof![
        range.clone().prop_map(|(o, l)| Op::Read(o, l)),
        (range.clone(), any::<u64>()).prop_map(|((o, l), s)| Op::Write(o, l, s)),
        // Region-aligned writes exercise the whole-region claim path.
        (0..11u64, 1..3u64, any::<u64>()).prop_map(|(r, n, s)| Op::Write(r * RS, (n * RS).min(SIZE - r * RS), s)),
        range.prop_map(|(o, l)| Op::Discard(o, l)),
        (0..11u64).prop_map(|r| Op::Discard(r * RS, RS)),
        Just(Op::Flush),
        Just(Op::Hydrate),
    ]
}

fn cfg() -> EngineConfig {
    EngineConfig {
        region_size: RS,
        batch_regions: 3,
        core: CoreConfig {
            commit_batch: 4,
            commit_interval: Duration::from_secs(3600),
            stall_after: Duration::from_secs(60),
        },
        on_demand_timeout: Duration::ZERO,
        read_through: true,
        ..Default::default()
    }
}

/// Resumes the clone recorded in `meta`, or creates one where `meta` holds nothing: the
/// fake's empty image stands for a metadata file that does not exist yet (a crash
/// before a fresh clone's metadata was synced and published leaves none).
fn open(
    src: &Arc<FakeSource>,
    dest: &Arc<Image>,
    meta: &Arc<Image>,
) -> Result<Arc<Engine>, meshdrain_clone::CloneError> {
    let fresh = meta.volatile.lock().unwrap().is_empty();
    let (d, m) = (Box::new(FakeDest(dest.clone())), Box::new(FakeMeta(meta.clone())));
    if fresh { Engine::create(src.clone(), d, m, cfg()) } else { Engine::open(src.clone(), d, m, cfg()) }
}

/// Applies one op to engine and model; Err when the engine failed (crash injected).
fn apply(e: &Engine, model: &mut [u8], op: &Op) -> Result<(), String> {
    match *op {
        Op::Read(o, l) => {
            let mut buf = vec![0u8; l as usize];
            e.read(o, &mut buf).map_err(|x| x.to_string())?;
            assert_eq!(buf, model[o as usize..(o + l) as usize], "stale read at {o}+{l}");
        }
        Op::Write(o, l, s) => {
            let data = pattern(s, l as usize);
            e.write(o, &data).map_err(|x| x.to_string())?;
            e.flush().map_err(|x| x.to_string())?;
            model[o as usize..(o + l) as usize].copy_from_slice(&data);
        }
        Op::Discard(o, l) => {
            e.discard(o, l).map_err(|x| x.to_string())?;
            e.flush().map_err(|x| x.to_string())?;
            // Discard zeroes whole regions and hydrated partial ranges; a partial range
            // of a missing region keeps its source bytes. The model reads the engine's
            // choice back through a read after the op.
            let mut buf = vec![0u8; l as usize];
            e.read(o, &mut buf).map_err(|x| x.to_string())?;
            for (i, b) in buf.iter().enumerate() {
                let m = &mut model[o as usize + i];
                assert!(*b == 0 || *b == *m, "discard produced neither zero nor old data");
                *m = *b;
            }
        }
        Op::Flush => e.flush().map_err(|x| x.to_string())?,
        Op::Hydrate => {
            e.hydrate_step()?;
        }
    }
    Ok(())
}

fn finish(e: &Engine) {
    for _ in 0..1000 {
        if e.try_handoff().unwrap() {
            return;
        }
        let _ = e.hydrate_step().unwrap();
        e.commit(true).unwrap();
    }
    panic!("hydration did not finish in 1000 steps");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_match_model_and_fetch_each_region_once(ops in prop::collection::vec(op(), 1..40), fine in any::<bool>()) {
        // `fine`: the source reads at 512 bytes, so reads within missing regions pass
        // through to the source (their bytes only); each region is still copied once.
        let src = if fine { FakeSource::new_fine(pattern(7, SIZE as usize), RS, 512) } else { FakeSource::new(pattern(7, SIZE as usize), RS) };
        let faults = Faults::new(None);
        let dest = Image::new(vec![0xAA; SIZE as usize], faults.clone());
        let meta = Image::new(Vec::new(), faults);
        let e = open(&src, &dest, &meta).unwrap();
        let mut model = src.data.clone();
        for op in &ops {
            apply(&e, &mut model, op).unwrap();
        }
        finish(&e);
        prop_assert_eq!(&*dest.durable.lock().unwrap(), &model);
        prop_assert!(src.max_reads() <= 1, "a region was fetched twice");
        // Complete metadata: reopening never reads the source again.
        let e2 = open(&src, &dest, &meta).unwrap();
        prop_assert!(e2.try_handoff().unwrap());
        let mut all = vec![0u8; SIZE as usize];
        e2.read(0, &mut all).unwrap();
        prop_assert_eq!(all, model);
        prop_assert!(src.max_reads() <= 1);
    }

    #[test]
    fn crash_at_every_io_step_then_resume_matches(ops in prop::collection::vec(op(), 1..14)) {
        // Count the I/O steps of a fault-free run.
        let src = FakeSource::new(pattern(9, SIZE as usize), RS);
        let faults = Faults::new(None);
        let dest = Image::new(vec![0x55; SIZE as usize], faults.clone());
        let meta = Image::new(Vec::new(), faults.clone());
        let e = open(&src, &dest, &meta).unwrap();
        let mut m = src.data.clone();
        for op in &ops { apply(&e, &mut m, op).unwrap(); }
        finish(&e);
        let total = faults.ops.load(std::sync::atomic::Ordering::SeqCst);
        for k in 0..total {
            let faults = Faults::new(Some(k));
            let dest = Image::new(vec![0x55; SIZE as usize], faults.clone());
            let meta = Image::new(Vec::new(), faults.clone());
            let mut model = src.data.clone();
            let mut torn: Option<(u64, u64, Vec<u8>)> = None;
            if let Ok(e) = open(&src, &dest, &meta) {
                let mut ok = true;
                for op in &ops {
                    let before = model.clone();
                    if apply(&e, &mut model, op).is_err() {
                        // The op in flight may have landed or not, byte by byte.
                        if let Op::Write(o, l, s) = *op { torn = Some((o, l, pattern(s, l as usize))); }
                        if let Op::Discard(o, l) = *op { torn = Some((o, l, vec![0; l as usize])); }
                        model = before;
                        ok = false;
                        break;
                    }
                }
                if ok { let _ = e.try_handoff().and_then(|_| e.commit(true)); finish_or_crash(&e); }
            }
            // Restart from what was durable.
            let f2 = Faults::new(None);
            let dest2 = dest.after_crash(f2.clone());
            let meta2 = meta.after_crash(f2);
            let e2 = open(&src, &dest2, &meta2).unwrap();
            finish(&e2);
            let got = dest2.durable.lock().unwrap().clone();
            for i in 0..SIZE as usize {
                let new = torn.as_ref().and_then(|(o, l, d)| (i as u64 >= *o && (i as u64) < o + l).then(|| d[i - *o as usize]));
                prop_assert!(got[i] == model[i] || Some(got[i]) == new,
                    "crash at step {} of {}: byte {} is {:#x}, want {:#x} (or {:?})", k, total, i, got[i], model[i], new);
            }
        }
    }
}

fn finish_or_crash(e: &Engine) {
    for _ in 0..1000 {
        match e.try_handoff() {
            Ok(true) | Err(_) => return,
            Ok(false) => {}
        }
        if e.hydrate_step().is_err() || e.commit(true).is_err() {
            return;
        }
    }
}

#[test]
fn concurrent_workload_and_hydration_fetch_each_region_once() {
    concurrent_workload_and_hydration(false);
}

#[test]
fn concurrent_workload_reads_passing_through_and_hydration_copy_each_region_once() {
    concurrent_workload_and_hydration(true);
}

/// Three reader threads against three hydration workers; `fine`: the source reads at
/// 512 bytes, so reads pass through (also past batches in flight).
fn concurrent_workload_and_hydration(fine: bool) {
    let rs = 4096;
    let size = 64 * rs;
    let data = pattern(3, size as usize);
    let src = if fine { FakeSource::new_fine(data, rs, 512) } else { FakeSource::new(data, rs) };
    let faults = Faults::new(None);
    let dest = Image::new(vec![0; size as usize], faults.clone());
    let meta = Image::new(Vec::new(), faults);
    let cfg = EngineConfig { region_size: rs, parallelism: 3, batch_regions: 2, ..Default::default() };
    let e = Engine::create(src.clone(), Box::new(FakeDest(dest.clone())), Box::new(FakeMeta(meta)), cfg).unwrap();
    let clone = meshdrain_clone::UserspaceClone::start(e.clone());
    let readers: Vec<_> = (0..3u64)
        .map(|t| {
            let e = e.clone();
            let src = src.clone();
            std::thread::spawn(move || {
                for i in 0..64u64 {
                    let off = ((i * 7 + t * 13) % 64) * rs + 100;
                    let mut b = vec![0u8; 5000];
                    let len = b.len().min((size - off) as usize);
                    e.read(off, &mut b[..len]).unwrap();
                    assert_eq!(&b[..len], &src.data[off as usize..off as usize + len]);
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    let p = clone.wait_complete(Duration::from_secs(30));
    assert_eq!(p.phase, meshdrain_clone::Phase::Complete, "{p:?}");
    assert_eq!(*dest.durable.lock().unwrap(), src.data);
    assert_eq!(src.max_reads(), 1, "every region fetched exactly once");
}

/// A source that reads at 512 bytes (so workload reads may pass through), an empty dest
/// and empty metadata, none failing.
fn fine_source_and_images(seed: u64) -> (Arc<FakeSource>, Arc<Image>, Arc<Image>) {
    let faults = Faults::new(None);
    (
        FakeSource::new_fine(pattern(seed, SIZE as usize), RS, 512),
        Image::new(vec![0xAA; SIZE as usize], faults.clone()),
        Image::new(Vec::new(), faults),
    )
}

#[test]
fn a_read_within_a_missing_region_passes_through_unless_it_shows_locality() {
    let (src, dest, meta) = fine_source_and_images(9);
    let e = open(&src, &dest, &meta).unwrap();
    let partial = || src.partial_reads.load(std::sync::atomic::Ordering::SeqCst);
    let copies = |r: usize| src.reads.lock().unwrap()[r];
    let check = |o: u64, len: usize| {
        let mut buf = vec![0u8; len];
        e.read(o, &mut buf).unwrap();
        assert_eq!(buf, src.data[o as usize..o as usize + len], "read at {o}+{len}");
    };
    // 700 bytes inside region 7: the source is asked for those bytes (at its grain) only.
    check(7 * RS + 1000, 700);
    assert_eq!((partial(), e.fetches(), copies(7)), (1, 0, 0), "passed through, nothing copied");
    // Region 7 again before hydration reached it: locality, so the region is fetched.
    check(7 * RS + 3000, 100);
    assert_eq!((partial(), copies(7)), (1, 1));
    // Region 10 passes through; a read starting where that one ended (region 11, the
    // short last one) is a stream and fetches its region.
    check(10 * RS + 3000, (RS - 3000) as usize);
    check(11 * RS, 500);
    assert_eq!((partial(), copies(10), copies(11)), (2, 0, 1));
    // The next hydration batch (3 regions) takes the wanted region 10 before the cursor's.
    assert_eq!(e.hydrate_step().unwrap(), 3);
    assert_eq!(src.reads.lock().unwrap()[..], [1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1]);
    // Now served by the dest: the source is not asked again.
    check(10 * RS + 3000, 50);
    assert_eq!(partial(), 2);
    // A read covering whole missing regions fetches them (the same bytes the source sends
    // anyway), so hydration does not read them again.
    check(3 * RS, 2 * RS as usize);
    assert_eq!((partial(), copies(3), copies(4)), (2, 1, 1));
    finish(&e);
    assert_eq!(*dest.durable.lock().unwrap(), src.data);
    assert_eq!(src.max_reads(), 1, "each region copied once");
}

/// Holds the source's region copies and starts one hydration step, returning once its
/// batch is waiting at the source (the caller clears `copy_hold` to let it finish).
fn start_held_batch(e: &Arc<Engine>, src: &FakeSource) -> std::thread::JoinHandle<Result<usize, String>> {
    let sc = std::sync::atomic::Ordering::SeqCst;
    src.copy_hold.store(true, sc);
    let batch = std::thread::spawn({
        let e = e.clone();
        move || e.hydrate_step()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !src.held.swap(false, sc) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!batch.is_finished(), "the hydration batch never waited at the source");
    batch
}

#[test]
fn a_read_of_a_region_in_a_hydration_batch_in_flight_does_not_wait_for_the_batch() {
    let (src, dest, meta) = fine_source_and_images(4);
    let cfg = EngineConfig { batch_regions: 12, ..cfg() };
    let e = Engine::create(src.clone(), Box::new(FakeDest(dest.clone())), Box::new(FakeMeta(meta)), cfg).unwrap();
    let sc = std::sync::atomic::Ordering::SeqCst;
    // One batch takes every region, in one source read that does not answer yet.
    let batch = start_held_batch(&e, &src);
    // Workload reads of regions in that batch answer from the source (one spans two).
    for (o, len) in [(5 * RS + 100, 200), (9 * RS + 600, 2000), (2 * RS + 4000, 300)] {
        let mut buf = vec![0u8; len as usize];
        e.read(o, &mut buf).unwrap();
        assert_eq!(buf, src.data[o as usize..(o + len) as usize], "read at {o}+{len}");
    }
    assert!(!batch.is_finished(), "the batch was still in flight while the reads answered");
    assert_eq!(src.partial_reads.load(sc), 3, "each read passed through");
    src.copy_hold.store(false, sc);
    assert_eq!(batch.join().unwrap().unwrap(), 12);
    finish(&e);
    assert_eq!(*dest.durable.lock().unwrap(), src.data);
}

#[test]
fn a_failed_pass_through_backs_off_and_the_read_is_answered_once_the_source_is_back() {
    let (src, dest, meta) = fine_source_and_images(6);
    let cfg = EngineConfig { batch_regions: 12, on_demand_timeout: Duration::from_secs(20), ..cfg() };
    let e = Engine::create(src.clone(), Box::new(FakeDest(dest.clone())), Box::new(FakeMeta(meta)), cfg).unwrap();
    let sc = std::sync::atomic::Ordering::SeqCst;
    let reader = |o: u64, len: u64| {
        let e = e.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; len as usize];
            e.read(o, &mut buf).map(|()| buf)
        })
    };
    // A missing region: the pass-through fails, then whole-region fetches back off.
    src.gone.store(true, sc);
    let r = reader(7 * RS + 100, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!r.is_finished(), "answered while the source was gone");
    let tries = src.failed_reads.load(sc);
    assert!((2..=12).contains(&tries), "{tries} source reads in 300 ms: no backoff, or no retry");
    src.gone.store(false, sc);
    assert_eq!(r.join().unwrap().unwrap(), src.data[(7 * RS + 100) as usize..(7 * RS + 300) as usize]);
    // A region in a batch in flight: after one failed pass-through the read waits for the
    // batch (it has no region of its own to fetch) instead of asking the source again.
    let batch = start_held_batch(&e, &src);
    src.gone.store(true, sc);
    let before = src.failed_reads.load(sc);
    let r = reader(2 * RS + 10, 100);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!r.is_finished(), "answered while the source was gone and the batch held");
    assert_eq!(src.failed_reads.load(sc) - before, 1, "the read kept asking the gone source");
    src.gone.store(false, sc);
    src.copy_hold.store(false, sc);
    assert!(batch.join().unwrap().unwrap() > 0);
    assert_eq!(r.join().unwrap().unwrap(), src.data[(2 * RS + 10) as usize..(2 * RS + 110) as usize]);
    finish(&e);
    assert_eq!(*dest.durable.lock().unwrap(), src.data);
}

#[test]
fn deallocated_source_ranges_are_never_fetched() {
    let rs = 4096;
    let mut data = pattern(5, 16 * rs as usize);
    data[4 * rs as usize..10 * rs as usize].fill(0);
    let mut src = FakeSource::new(data, rs);
    let hole = 4 * rs + 10..10 * rs;
    Arc::get_mut(&mut src).unwrap().holes = Some(std::iter::once(hole).collect());
    let faults = Faults::new(None);
    let dest = Image::new(vec![0xFF; 16 * rs as usize], faults.clone());
    let meta = Image::new(Vec::new(), faults);
    let e = Engine::create(
        src.clone(),
        Box::new(FakeDest(dest.clone())),
        Box::new(FakeMeta(meta)),
        EngineConfig { region_size: rs, ..Default::default() },
    )
    .unwrap();
    finish(&e);
    assert_eq!(*dest.durable.lock().unwrap(), src.data);
    let reads = src.reads.lock().unwrap().clone();
    assert_eq!(reads[4], 1, "partly allocated region is fetched");
    assert!(reads[5..10].iter().all(|n| *n == 0), "deallocated regions fetched: {reads:?}");
}

#[test]
fn device_is_usable_before_the_deallocated_scan_ends_and_hydration_waits_for_it() {
    let rs = 4096;
    let mut data = pattern(9, 16 * rs as usize);
    data[8 * rs as usize..].fill(0);
    let mut src = FakeSource::new(data, rs);
    Arc::get_mut(&mut src).unwrap().holes = Some(std::iter::once(8 * rs..16 * rs).collect());
    src.scan_hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let faults = Faults::new(None);
    let dest = Image::new(vec![0xFF; 16 * rs as usize], faults.clone());
    let e = Engine::create(
        src.clone(),
        Box::new(FakeDest(dest.clone())),
        Box::new(FakeMeta(Image::new(Vec::new(), faults))),
        EngineConfig { region_size: rs, ..Default::default() },
    )
    .unwrap();
    // The scan has not answered, yet the workload reads (and a region the scan will
    // skip may be fetched meanwhile).
    let mut buf = vec![0u8; 100];
    e.read(2 * rs + 7, &mut buf).unwrap();
    assert_eq!(buf, src.data[2 * rs as usize + 7..2 * rs as usize + 107]);
    e.read(9 * rs, &mut buf).unwrap();
    assert_eq!(buf, vec![0u8; 100]);
    let step = std::thread::spawn({
        let e = e.clone();
        move || e.hydrate_step()
    });
    std::thread::sleep(Duration::from_millis(150));
    assert!(!step.is_finished(), "background hydration started before the scan ended");
    src.scan_hold.store(false, std::sync::atomic::Ordering::SeqCst);
    step.join().unwrap().unwrap();
    finish(&e);
    assert_eq!(*dest.durable.lock().unwrap(), src.data);
    let reads = src.reads.lock().unwrap().clone();
    assert_eq!(reads[9], 1, "the region read during the scan was fetched once: {reads:?}");
    assert!(
        reads[8..16].iter().enumerate().all(|(i, n)| *n == u32::from(i == 1)),
        "scan-skipped regions fetched: {reads:?}"
    );
    assert!(reads[..8].iter().all(|n| *n == 1), "allocated regions fetched once: {reads:?}");
}

/// A 32-region source (whole-region reads) and its dest image, for the stall tests.
fn stall_fixture(seed: u64) -> (Arc<FakeSource>, Arc<Image>) {
    let size = 32 * RS as usize;
    (FakeSource::new(pattern(seed, size), RS), Image::new(vec![0; size], Faults::new(None)))
}

/// An engine over [`stall_fixture`]'s parts that reports `stalled` after 300 ms of
/// failed fetches and gives a workload request 200 ms.
fn stalling_engine(src: &Arc<FakeSource>, dest: &Arc<Image>) -> Arc<Engine> {
    let cfg = EngineConfig {
        region_size: RS,
        on_demand_timeout: Duration::from_millis(200),
        core: CoreConfig { stall_after: Duration::from_millis(300), ..Default::default() },
        ..Default::default()
    };
    let meta = Image::new(Vec::new(), Faults::new(None));
    Engine::create(src.clone(), Box::new(FakeDest(dest.clone())), Box::new(FakeMeta(meta)), cfg).unwrap()
}

/// The clone's progress once it reports `stalled` (within 5 s).
fn wait_stalled(clone: &meshdrain_clone::UserspaceClone) -> meshdrain_clone::Progress {
    for _ in 0..100 {
        let p = clone.progress();
        if p.phase == meshdrain_clone::Phase::Stalled {
            return p;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the clone never reported stalled: {:?}", clone.progress());
}

/// Once the fault is gone the clone completes by itself, every byte the source's.
fn assert_completes_with_source_bytes(clone: &meshdrain_clone::UserspaceClone, src: &FakeSource, dest: &Image) {
    let p = clone.wait_complete(Duration::from_secs(30));
    assert_eq!(p.phase, meshdrain_clone::Phase::Complete, "{p:?}");
    assert_eq!(*dest.durable.lock().unwrap(), src.data);
}

#[test]
fn source_gone_stalls_then_completes_when_back() {
    let (src, dest) = stall_fixture(11);
    src.gone.store(true, std::sync::atomic::Ordering::SeqCst);
    let clone = meshdrain_clone::UserspaceClone::start(stalling_engine(&src, &dest));
    let p = wait_stalled(&clone);
    assert!(p.last_error.as_deref().unwrap_or("").contains("source gone"), "{p:?}");
    src.gone.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_completes_with_source_bytes(&clone, &src, &dest);
}

#[test]
fn full_dest_stalls_naming_the_dest_and_completes_once_space_returns() {
    let (src, dest) = stall_fixture(12);
    dest.full.store(true, std::sync::atomic::Ordering::SeqCst);
    let e = stalling_engine(&src, &dest);
    // A workload read that must fetch whole regions (this source reads only whole
    // regions) gets the dest's error at once, not the source's after the timeout.
    let mut buf = vec![0u8; 2 * RS as usize];
    let err = e.read(0, &mut buf).unwrap_err();
    assert!(matches!(err, meshdrain_clone::CloneError::Dest { no_space: true, .. }), "{err:?}");
    let err = err.to_string();
    assert!(err.starts_with("dest unwritable for the region at byte 0:"), "{err}");
    assert!(err.contains("No space left on device") && err.contains("free space"), "{err}");
    let clone = meshdrain_clone::UserspaceClone::start(e);
    let p = wait_stalled(&clone);
    let why = p.last_error.clone().unwrap_or_default();
    assert!(why.starts_with("dest unwritable: write at byte"), "{p:?}");
    assert!(why.contains("No space left on device") && !why.contains("read "), "{p:?}");
    dest.full.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_completes_with_source_bytes(&clone, &src, &dest);
}

#[test]
fn on_a_full_dest_reads_come_from_the_source_and_partial_writes_get_no_space() {
    let (src, dest, meta) = fine_source_and_images(13);
    dest.full.store(true, std::sync::atomic::Ordering::SeqCst);
    let e = open(&src, &dest, &meta).unwrap();
    // Two whole regions: normally fetched (and written to the dest) before the answer.
    let mut buf = vec![0u8; 2 * RS as usize];
    e.read(RS, &mut buf).unwrap();
    assert_eq!(buf, src.data[RS as usize..3 * RS as usize]);
    // A write into part of a missing region needs the region first: ENOSPC, at once.
    let t = std::time::Instant::now();
    let err = e.write(5 * RS + 512, &[7u8; 512]).unwrap_err();
    assert!(matches!(err, meshdrain_clone::CloneError::Dest { no_space: true, .. }), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "waited {:?}", t.elapsed());
    // Space back: the same calls work the usual way and nothing was lost.
    dest.full.store(false, std::sync::atomic::Ordering::SeqCst);
    e.write(5 * RS + 512, &[7u8; 512]).unwrap();
    let mut want = src.data[5 * RS as usize..6 * RS as usize].to_vec();
    want[512..1024].fill(7);
    let mut got = vec![0u8; RS as usize];
    e.read(5 * RS, &mut got).unwrap();
    assert_eq!(got, want);
}

#[test]
fn flush_syncs_only_when_the_workload_wrote_and_its_write_survives_a_crash() {
    let src = FakeSource::new(pattern(11, SIZE as usize), RS);
    let faults = Faults::new(None);
    let dest = Image::new(vec![0x55; SIZE as usize], faults.clone());
    let meta = Image::new(Vec::new(), faults.clone());
    let e = open(&src, &dest, &meta).unwrap();
    let ops = || faults.ops.load(std::sync::atomic::Ordering::SeqCst);
    // An on-demand read fetches a region: nothing the workload could lose.
    let mut buf = vec![0u8; 100];
    e.read(RS + 7, &mut buf).unwrap();
    let before = ops();
    e.flush().unwrap();
    assert_eq!(ops(), before, "a flush without a workload write must not sync the dest");
    // A write, then a flush: durable (dest synced, bits written) and it survives a crash.
    let data = pattern(3, 300);
    e.write(2 * RS + 10, &data).unwrap();
    let before = ops();
    e.flush().unwrap();
    assert!(ops() > before, "a flush after a workload write must commit");
    let e2 = open(&src, &dest.after_crash(Faults::new(None)), &meta.after_crash(Faults::new(None))).unwrap();
    let mut got = vec![0u8; 300];
    e2.read(2 * RS + 10, &mut got).unwrap();
    assert_eq!(got, data, "the flushed write was lost in a crash");
    // The flag is spent: the next flush syncs nothing again.
    let before = ops();
    e.flush().unwrap();
    assert_eq!(ops(), before);
}
