//! Workload operations every exposure shares: write-zeroes claims whole regions without
//! fetching them, and the source's recent failures decide whether an exposure's dispatch
//! thread may answer an on-demand read itself (docs/exposures.md).
use std::sync::atomic::Ordering;
use std::time::Duration;

mod common;

use common::{FakeSource, pattern};
use meshdrain_clone::{Engine, EngineConfig, FileDest, FileMeta};

const REGION: u64 = 64 * 1024;

fn engine(dir: &std::path::Path, source: std::sync::Arc<FakeSource>, cfg: EngineConfig) -> std::sync::Arc<Engine> {
    let size = source.data.len() as u64;
    let dest = FileDest::open(&dir.join("dest"), size).unwrap();
    let meta = FileMeta::create(&dir.join("meta")).unwrap();
    Engine::create(source, Box::new(dest), Box::new(meta), cfg).unwrap()
}

#[test]
fn write_zeroes_claims_the_regions_it_covers_whole_and_fetches_only_the_edges() {
    let dir = tempfile::tempdir().unwrap();
    // 40 regions: more than one 1 MiB piece of zeros (16 regions each).
    let data = pattern(5, 40 * REGION as usize);
    let source = FakeSource::new(data.clone(), REGION);
    // No background hydration: every fetch below is the write-zeroes' own.
    let e = engine(dir.path(), source.clone(), EngineConfig { rate_limit: Some(1024), ..Default::default() });
    // From the middle of region 1 to the middle of region 37.
    let (at, len) = (REGION + 4096, 36 * REGION);
    e.write_zeroes(at, len).unwrap();
    let reads = source.reads.lock().unwrap().clone();
    assert_eq!((reads[1], reads[37]), (1, 1), "the two partial regions are fetched before the write");
    assert!(reads[2..37].iter().all(|&n| n == 0), "whole regions are claimed without a fetch: {reads:?}");
    let mut got = vec![0u8; data.len()];
    e.read(0, &mut got).unwrap();
    let end = (at + len) as usize;
    assert_eq!(&got[..at as usize], &data[..at as usize], "bytes before the range keep the source's");
    assert!(got[at as usize..end].iter().all(|&b| b == 0), "the range reads as zeros");
    assert_eq!(&got[end..], &data[end..], "bytes after the range keep the source's");
    // Past the end is refused before anything is written.
    let err = e.write_zeroes(39 * REGION, 2 * REGION).unwrap_err().to_string();
    assert!(err.contains("past the end of the"), "{err}");
}

#[test]
fn a_failed_source_read_stops_dispatch_threads_answering_on_demand_reads() {
    let dir = tempfile::tempdir().unwrap();
    let source = FakeSource::new(pattern(6, 8 * REGION as usize), REGION);
    let cfg =
        EngineConfig { rate_limit: Some(1024), on_demand_timeout: Duration::from_millis(50), ..Default::default() };
    let e = engine(dir.path(), source.clone(), cfg);
    assert!(e.source_answers(), "a fresh clone's source answers");
    let mut buf = vec![0u8; 4096];
    e.read(0, &mut buf).unwrap();
    assert!(e.source_answers(), "a served on-demand read changes nothing");
    source.gone.store(true, Ordering::SeqCst);
    e.read(REGION, &mut buf).expect_err("the source is gone past the request's timeout");
    assert!(!e.source_answers(), "after a failed source read, on-demand reads go to workers");
    source.gone.store(false, Ordering::SeqCst);
    e.read(REGION, &mut buf).unwrap();
    assert!(!e.source_answers(), "one good read does not clear the suspicion before it expires");
}
