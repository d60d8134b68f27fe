//! The NBD server against a userspace client over a socketpair (no kernel, no root):
//! bytes equal through reads and writes, several requests in flight answered by handle,
//! trim and flush, out-of-range answered, oversize and bad magic closing the connection.
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use super::server::{self, CMD_FLAG_FUA, Header, REPLY_LEN, REPLY_MAGIC, cmd};
use crate::{Engine, EngineConfig, FileDest, FileMeta, FileSource};

const SIZE: u64 = 4 << 20;

struct Fixture {
    _dir: tempfile::TempDir,
    source: Vec<u8>,
    engine: Arc<Engine>,
    client: UnixStream,
    server: std::thread::JoinHandle<Result<(), String>>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let source: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join("src"), &source).unwrap();
    let src = Arc::new(FileSource::open(&dir.path().join("src")).unwrap());
    let d = FileDest::open(&dir.path().join("dest"), SIZE).unwrap();
    let m = FileMeta::create(&dir.path().join("meta")).unwrap();
    let engine = Engine::create(src, Box::new(d), Box::new(m), EngineConfig::default()).unwrap();
    let (client, ours) = UnixStream::pair().unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let e = engine.clone();
    let server = std::thread::spawn(move || server::serve(e, ours, 4));
    Fixture { _dir: dir, source, engine, client, server }
}

fn request(c: &mut UnixStream, kind: u16, flags: u16, handle: u64, offset: u64, len: u32, data: &[u8]) {
    let h = Header { flags, kind, handle, offset, len };
    c.write_all(&h.encode()).unwrap();
    c.write_all(data).unwrap();
}

/// One reply: (error, handle, data of `read_len` bytes when error is 0).
fn reply(c: &mut UnixStream, read_len: usize) -> (u32, u64, Vec<u8>) {
    let mut h = [0u8; REPLY_LEN];
    c.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), REPLY_MAGIC);
    let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
    let handle = u64::from_be_bytes(h[8..16].try_into().unwrap());
    let mut data = vec![0u8; if err == 0 { read_len } else { 0 }];
    c.read_exact(&mut data).unwrap();
    (err, handle, data)
}

#[test]
fn reads_and_writes_are_the_bytes_and_replies_name_their_handles() {
    let mut f = fixture();
    // Eight reads in flight at once, answered in any order, each by its handle.
    for i in 0..8u64 {
        request(&mut f.client, cmd::READ, 0, 100 + i, i * 300_000, 65_536, &[]);
    }
    let mut got = HashMap::new();
    for _ in 0..8 {
        let (err, handle, data) = reply(&mut f.client, 65_536);
        assert_eq!(err, 0);
        got.insert(handle, data);
    }
    for i in 0..8u64 {
        let at = (i * 300_000) as usize;
        assert_eq!(got[&(100 + i)], f.source[at..at + 65_536], "read {i}");
    }
    // A write (FUA), then a read over it.
    let data: Vec<u8> = (0..12_288u32).map(|i| (i % 13) as u8 + 1).collect();
    request(&mut f.client, cmd::WRITE, CMD_FLAG_FUA, 7, 8192, data.len() as u32, &data);
    assert_eq!(reply(&mut f.client, 0), (0, 7, vec![]));
    request(&mut f.client, cmd::READ, 0, 8, 4096, 20_480, &[]);
    let (err, _, back) = reply(&mut f.client, 20_480);
    assert_eq!(err, 0);
    assert_eq!(back[..4096], f.source[4096..8192]);
    assert_eq!(back[4096..16_384], data[..]);
    assert_eq!(back[16_384..], f.source[20_480..24_576]);
    // Trim of a whole region reads zeros; write zeroes too.
    request(&mut f.client, cmd::TRIM, 0, 9, 1 << 20, 65_536, &[]);
    assert_eq!(reply(&mut f.client, 0).0, 0);
    request(&mut f.client, cmd::WRITE_ZEROES, 0, 10, 2 << 20, 4096, &[]);
    assert_eq!(reply(&mut f.client, 0).0, 0);
    request(&mut f.client, cmd::READ, 0, 11, 1 << 20, 65_536, &[]);
    assert_eq!(reply(&mut f.client, 65_536).2, vec![0u8; 65_536]);
    request(&mut f.client, cmd::READ, 0, 12, 2 << 20, 8192, &[]);
    let (_, _, z) = reply(&mut f.client, 8192);
    assert_eq!((&z[..4096], &z[4096..]), (&[0u8; 4096][..], &f.source[(2 << 20) + 4096..(2 << 20) + 8192]));
    // Flush, then a clean disconnect.
    request(&mut f.client, cmd::FLUSH, 0, 13, 0, 0, &[]);
    assert_eq!(reply(&mut f.client, 0), (0, 13, vec![]));
    request(&mut f.client, cmd::DISC, 0, 14, 0, 0, &[]);
    assert_eq!(f.server.join().unwrap(), Ok(()));
    // What was acknowledged after FUA and FLUSH is durable: a new engine on the same
    // files (resumed from the metadata) reads it.
    drop(f.engine);
}

#[test]
fn a_flush_makes_acknowledged_writes_durable_in_the_metadata() {
    let mut f = fixture();
    let data = vec![0xabu8; 65_536];
    request(&mut f.client, cmd::WRITE, 0, 1, 3 << 20, 65_536, &data);
    assert_eq!(reply(&mut f.client, 0).0, 0);
    request(&mut f.client, cmd::FLUSH, 0, 2, 0, 0, &[]);
    assert_eq!(reply(&mut f.client, 0).0, 0);
    drop(f.client);
    assert_eq!(f.server.join().unwrap(), Ok(()));
    let dir = f._dir.path();
    // Not dropped: nothing but the flush may have made the write durable.
    std::mem::forget(f.engine);
    let src = Arc::new(FileSource::open(&dir.join("src")).unwrap());
    let e = Engine::open(
        src,
        Box::new(FileDest::open_existing(&dir.join("dest")).unwrap()),
        Box::new(FileMeta::open(&dir.join("meta")).unwrap()),
        EngineConfig::default(),
    )
    .unwrap();
    let fetched = e.fetches();
    let mut back = vec![0u8; 65_536];
    e.read(3 << 20, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(e.fetches(), fetched, "the written region was recorded durable, not fetched again");
}

#[test]
fn out_of_range_is_answered_and_the_connection_goes_on() {
    let mut f = fixture();
    request(&mut f.client, cmd::READ, 0, 1, SIZE - 4096, 8192, &[]);
    assert_eq!(reply(&mut f.client, 8192), (22, 1, vec![]));
    request(&mut f.client, cmd::WRITE, 0, 2, SIZE, 4096, &[1u8; 4096]);
    assert_eq!(reply(&mut f.client, 0), (28, 2, vec![]));
    request(&mut f.client, cmd::READ, 0, 3, u64::MAX - 10, 4096, &[]);
    assert_eq!(reply(&mut f.client, 4096).0, 22);
    request(&mut f.client, cmd::READ, 0, 4, SIZE - 4096, 4096, &[]);
    let (err, _, data) = reply(&mut f.client, 4096);
    assert_eq!((err, &data[..]), (0, &f.source[(SIZE - 4096) as usize..]));
}

#[test]
fn an_oversize_request_closes_the_connection_before_any_buffer_is_made() {
    let mut f = fixture();
    request(&mut f.client, cmd::WRITE, 0, 1, 0, u32::MAX, &[]);
    let err = f.server.join().unwrap().unwrap_err();
    assert_eq!(
        err,
        format!("NBD request of {} bytes at 0 is over the {}-byte cap; connection closed", u32::MAX, 32 << 20)
    );
    let mut b = [0u8; 1];
    assert_eq!(f.client.read(&mut b).unwrap(), 0, "connection closed");
}

#[test]
fn a_bad_magic_closes_the_connection() {
    let mut f = fixture();
    let mut h = Header { flags: 0, kind: cmd::READ, handle: 1, offset: 0, len: 4096 }.encode();
    h[0] = 0x99;
    f.client.write_all(&h).unwrap();
    let err = f.server.join().unwrap().unwrap_err();
    assert_eq!(err, "bad request magic 0x99609513 (want 0x25609513)");
    let mut b = [0u8; 1];
    assert_eq!(f.client.read(&mut b).unwrap(), 0, "connection closed");
}

#[test]
fn a_header_cut_short_is_an_error_and_a_clean_close_is_not() {
    let mut f = fixture();
    f.client.write_all(&[0x25, 0x60]).unwrap();
    drop(f.client);
    let err = f.server.join().unwrap().unwrap_err();
    assert!(err.contains("request header cut short"), "{err}");
}

#[test]
fn read_request_refuses_past_the_end_and_over_the_cap_before_sizing_anything() {
    let size = 1 << 20;
    let h = |kind, offset, len| Header { flags: 0, kind, handle: 7, offset, len }.encode();
    // A write past the end: its payload is consumed (the stream stays in step), no budget taken.
    let mut bytes = h(cmd::WRITE, size - 8, 16).to_vec();
    bytes.extend_from_slice(&[0xaa; 16]);
    bytes.extend_from_slice(&h(cmd::READ, 0, 4096));
    bytes.extend_from_slice(&h(cmd::READ, 0, server::MAX_REQUEST + 1));
    let mut r = std::io::Cursor::new(bytes);
    let mut took = Vec::new();
    let got = server::read_request(&mut r, size, &mut |n| took.push(n)).unwrap();
    let refused = Header { flags: 0, kind: cmd::WRITE, handle: 7, offset: size - 8, len: 16 };
    assert_eq!(got, Some(server::Incoming::Refused { header: refused, error: 28 }));
    assert!(took.is_empty());
    let got = server::read_request(&mut r, size, &mut |n| took.push(n)).unwrap();
    let read = Header { flags: 0, kind: cmd::READ, handle: 7, offset: 0, len: 4096 };
    assert_eq!(got, Some(server::Incoming::Serve { header: read, data: Vec::new(), cost: 4096 }));
    assert_eq!(took, [4096]);
    let e = server::read_request(&mut r, size, &mut |n| took.push(n)).unwrap_err();
    assert_eq!(e, "NBD request of 33554433 bytes at 0 is over the 33554432-byte cap; connection closed");
    assert_eq!(took, [4096]);
    assert_eq!(server::read_request(&mut r, size, &mut |_| {}).unwrap(), None);
}
