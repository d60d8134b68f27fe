//! A clone whose source was declared lost for good (docs/failures.md): a workload read of
//! a region not yet here fails at once with `SourceLost` (EIO through the exposure), also
//! one already waiting for the source; what is here is still served; keeping the partial
//! copy makes the missing regions zeros and the clone complete.
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod common;

use common::{FakeDest, FakeMeta, FakeSource, Faults, Image, pattern};
use meshdrain_clone::engine::SourceLost;
use meshdrain_clone::{CloneError, Engine, EngineConfig};

const RS: u64 = 4096;

#[test]
fn reads_of_missing_regions_fail_at_once_once_the_source_is_lost() {
    let size = 8 * RS;
    let data = pattern(7, size as usize);
    let src = FakeSource::new(data.clone(), RS);
    let faults = Faults::new(None);
    let dest = Image::new(vec![0; size as usize], faults.clone());
    let meta = Image::new(Vec::new(), faults);
    let cfg = EngineConfig { region_size: RS, on_demand_timeout: Duration::from_secs(60), ..Default::default() };
    let e = Engine::create(src.clone(), Box::new(FakeDest(dest)), Box::new(FakeMeta(meta)), cfg).unwrap();
    e.wait_scanned();
    let read = |e: &Engine, r: u64| {
        let mut b = vec![0u8; RS as usize];
        e.read(r * RS, &mut b).map(|()| b)
    };
    assert_eq!(read(&e, 1).unwrap(), data[RS as usize..2 * RS as usize]);
    // The source goes away: a read of a missing region waits for it (up to a minute here)...
    src.gone.store(true, Ordering::SeqCst);
    let waiting = std::thread::spawn({
        let e = e.clone();
        move || {
            let t = Instant::now();
            (read(&e, 5), t.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    // ...until the source is declared lost: then it fails, and so does every later one.
    assert_eq!(e.declare_source_lost(), SourceLost { missing_regions: 7, total_regions: 8 });
    let (res, waited) = waiting.join().unwrap();
    assert!(matches!(res, Err(CloneError::SourceLost { offset }) if offset == 5 * RS), "{res:?}");
    assert!(waited < Duration::from_secs(3), "the waiting read took {waited:?}");
    let t = Instant::now();
    assert!(matches!(read(&e, 6), Err(CloneError::SourceLost { offset }) if offset == 6 * RS));
    assert!(t.elapsed() < Duration::from_millis(100), "a read after the declaration took {:?}", t.elapsed());
    // A partial write of a missing region needs its old bytes: refused the same way.
    assert!(matches!(e.write(3 * RS + 10, &[1, 2, 3]), Err(CloneError::SourceLost { .. })));
    // What is here is served, and a whole-region write needs no source.
    assert_eq!(read(&e, 1).unwrap(), data[RS as usize..2 * RS as usize]);
    e.write(2 * RS, &vec![9u8; RS as usize]).unwrap();
    assert_eq!(read(&e, 2).unwrap(), vec![9u8; RS as usize]);

    // The operator keeps the partial copy: the six regions still missing read as zeros.
    assert_eq!(e.accept_partial().unwrap(), 6);
    for r in [0, 3, 4, 5, 6, 7] {
        assert_eq!(read(&e, r).unwrap(), vec![0u8; RS as usize], "region {r}");
    }
    assert_eq!(read(&e, 1).unwrap(), data[RS as usize..2 * RS as usize]);
    assert_eq!(read(&e, 2).unwrap(), vec![9u8; RS as usize]);
    e.commit(true).unwrap();
    assert!(e.try_handoff().unwrap(), "every region is on the dest: the clone hands off");
}
