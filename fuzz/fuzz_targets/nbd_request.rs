//! NBD transmission-phase requests (clone/src/nbd/server.rs `read_request`), as the holder's
//! reader sees them on its socket (docs/exposures.md, "Bounded").
//! Invariants: reading never panics; a header that parses re-encodes to the same 28 bytes;
//! a bad magic or a length over `MAX_REQUEST` ends the connection; a request is served only
//! when it lies inside the volume, and only then is the in-flight budget taken (its cost is
//! the payload's length for a read or a write, 0 otherwise) and a buffer sized from its
//! length (a write's payload, exactly the bytes that followed the header); one past the end
//! is refused (ENOSPC for a write, EINVAL otherwise) without any allocation from its length.
//! The allocation bound is checked by a counting global allocator: every allocation made
//! while a request is read stays under 4 KiB unless it is the served write's payload.
//! Input: `[volume size u64 LE]` then the byte stream of requests (and write payloads).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use meshdrain_clone::nbd::server::{Header, Incoming, MAX_REQUEST, REQUEST_LEN, cmd, read_request};

/// Records the largest single allocation since the last reset.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Error strings and the like: anything sized from a request's length is far bigger.
const SMALL: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((size, stream)) = data.split_first_chunk::<8>() else { return };
    let size = u64::from_le_bytes(*size);
    let mut r = Cursor::new(stream);
    for _ in 0..64 {
        let at = r.position() as usize;
        let peek: Option<[u8; REQUEST_LEN]> = stream.get(at..at + REQUEST_LEN).map(|b| b.try_into().expect("28"));
        let parsed = peek.map(|b| (b, Header::parse(&b)));
        if let Some((b, Ok(h))) = &parsed {
            assert_eq!(&h.encode(), b, "{h:?} does not re-encode to its bytes");
        }
        let mut took = Vec::new();
        LARGEST.store(0, Ordering::Relaxed);
        let res = read_request(&mut r, size, &mut |n| took.push(n));
        let largest = LARGEST.load(Ordering::Relaxed);
        match res {
            Ok(None) => {
                assert_eq!(at, stream.len(), "end of stream reported with bytes left");
                assert!(took.is_empty());
                return;
            }
            Ok(Some(Incoming::Disconnect)) => {
                let Some((_, Ok(h))) = parsed else { panic!("disconnect from no header") };
                assert_eq!(h.kind, cmd::DISC);
                assert!(h.len <= MAX_REQUEST);
                assert!(took.is_empty() && largest <= SMALL, "a disconnect sized {largest} bytes");
            }
            Ok(Some(Incoming::Refused { header, error })) => {
                let Some((_, Ok(h))) = parsed else { panic!("a refusal from no header") };
                assert_eq!(header, h);
                assert!(h.len <= MAX_REQUEST && h.kind != cmd::DISC);
                assert!(h.offset.checked_add(u64::from(h.len)).is_none_or(|end| end > size), "{h:?} refused in range");
                assert_eq!(error, if h.kind == cmd::WRITE { 28 } else { 22 });
                assert!(took.is_empty(), "a refused request took budget");
                assert!(largest <= SMALL, "a refused request of {} bytes sized {largest} bytes", h.len);
                let skipped = if h.kind == cmd::WRITE { h.len as usize } else { 0 };
                assert_eq!(
                    r.position() as usize,
                    at + REQUEST_LEN + skipped,
                    "the refused payload was not consumed whole"
                );
            }
            Ok(Some(Incoming::Serve { header, data, cost })) => {
                let Some((_, Ok(h))) = parsed else { panic!("a request served from no header") };
                assert_eq!(header, h);
                assert!(h.len <= MAX_REQUEST && h.kind != cmd::DISC);
                assert!(
                    h.offset.checked_add(u64::from(h.len)).is_some_and(|end| end <= size),
                    "{h:?} served past {size}"
                );
                let want = if h.kind == cmd::READ || h.kind == cmd::WRITE { u64::from(h.len) } else { 0 };
                assert_eq!((took.as_slice(), cost), (&[want][..], want), "budget of {h:?}");
                let start = at + REQUEST_LEN;
                if h.kind == cmd::WRITE {
                    assert_eq!(data.as_slice(), &stream[start..start + h.len as usize]);
                } else {
                    assert!(data.is_empty());
                }
                assert!(largest <= SMALL.max(data.len()), "{h:?} sized {largest} bytes");
                assert_eq!(r.position() as usize, start + data.len());
            }
            Err(e) => {
                match parsed {
                    None => assert!(e.contains("cut short"), "{e}"),
                    Some((_, Err(_))) => assert!(e.contains("bad request magic"), "{e}"),
                    Some((_, Ok(h))) if h.len > MAX_REQUEST => {
                        assert!(e.contains("cap"), "{e}");
                        assert!(took.is_empty());
                    }
                    Some((_, Ok(h))) => {
                        // A write whose payload is cut short: only one that would have been
                        // served (checked, budget taken) may have sized its buffer.
                        assert_eq!(h.kind, cmd::WRITE, "{h:?} failed: {e}");
                        assert!(
                            stream.len() - at - REQUEST_LEN < h.len as usize,
                            "{h:?} failed with its payload there: {e}"
                        );
                        let in_range = h.offset.checked_add(u64::from(h.len)).is_some_and(|end| end <= size);
                        let bound = if in_range { SMALL.max(h.len as usize) } else { SMALL };
                        assert!(largest <= bound, "{h:?} (in range: {in_range}) sized {largest} bytes ({e})");
                        assert_eq!(took.len(), usize::from(in_range), "budget of {h:?}");
                        return;
                    }
                }
                assert!(largest <= SMALL, "a refused stream sized {largest} bytes ({e})");
                return;
            }
        }
    }
});
