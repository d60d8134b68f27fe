//! NBD's reader answers a lone request itself only while the source answers
//! (docs/exposures.md, "On-demand reads on the dispatch thread"): once a source read has
//! failed, a request waiting on the dead source never holds a read of hydrated data.
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

mod common;

use common::{FakeSource, pattern};
use meshdrain_clone::nbd::server::{self, Header, REPLY_LEN, REPLY_MAGIC, cmd};
use meshdrain_clone::{Engine, EngineConfig, FileDest, FileMeta};

const REGION: u64 = 64 * 1024;
const EIO: u32 = 5;

fn read_request(c: &mut UnixStream, handle: u64, offset: u64) {
    let h = Header { flags: 0, kind: cmd::READ, handle, offset, len: 4096 };
    c.write_all(&h.encode()).unwrap();
}

/// One reply: (error, handle), its 4 KiB of data read when the error is 0.
fn reply(c: &mut UnixStream) -> (u32, u64) {
    let mut h = [0u8; REPLY_LEN];
    c.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), REPLY_MAGIC);
    let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
    if err == 0 {
        let mut data = [0u8; 4096];
        c.read_exact(&mut data).unwrap();
    }
    (err, u64::from_be_bytes(h[8..16].try_into().unwrap()))
}

#[test]
fn after_a_failed_source_read_a_hydrated_read_is_not_held_behind_a_waiting_one() {
    let dir = tempfile::tempdir().unwrap();
    let source = FakeSource::new(pattern(9, 16 * REGION as usize), REGION);
    let dest = FileDest::open(&dir.path().join("dest"), source.data.len() as u64).unwrap();
    let meta = FileMeta::create(&dir.path().join("meta")).unwrap();
    // No background hydration; a workload request gives up on the source after 300 ms.
    let cfg =
        EngineConfig { rate_limit: Some(1024), on_demand_timeout: Duration::from_millis(300), ..Default::default() };
    let engine = Engine::create(source.clone(), Box::new(dest), Box::new(meta), cfg).unwrap();
    let (mut client, ours) = UnixStream::pair().unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let e = engine.clone();
    let server = std::thread::spawn(move || server::serve(e, ours, 4));

    // Region 0 on the dest while the source answers (the reader serves it itself).
    read_request(&mut client, 1, 0);
    assert_eq!(reply(&mut client), (0, 1));
    assert!(engine.source_answers());

    // The source goes away: a lone read of a missing region fails after the timeout.
    source.gone.store(true, Ordering::SeqCst);
    read_request(&mut client, 2, 2 * REGION);
    assert_eq!(reply(&mut client), (EIO, 2));
    assert!(!engine.source_answers(), "the failure is remembered");

    // Now a read waiting on the dead source (300 ms), then one of region 0: the second is
    // answered first (on the reader, it would have waited for the first to give up).
    // The second is sent once the reader has taken the first alone (nothing else queued).
    read_request(&mut client, 3, 3 * REGION);
    std::thread::sleep(Duration::from_millis(50));
    read_request(&mut client, 4, 0);
    assert_eq!(reply(&mut client), (0, 4), "the hydrated read is answered first");
    assert_eq!(reply(&mut client), (EIO, 3));

    // A disconnect ends the connection cleanly.
    let h = Header { flags: 0, kind: cmd::DISC, handle: 5, offset: 0, len: 0 };
    client.write_all(&h.encode()).unwrap();
    assert_eq!(server.join().unwrap(), Ok(()));
}
