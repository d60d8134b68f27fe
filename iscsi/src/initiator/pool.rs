//! Reused receive buffers for Data-In payloads. A fresh buffer per PDU costs the
//! session's one thread a page fault and a zeroed page per 4 KiB on top of the copy
//! from the socket (perf on a 1 GiB hydration: a fifth of that thread's time); a
//! buffer handed back by the last reader of its payload is warm and mapped.
//!
//! Buffers are page-aligned, so a dest opened with O_DIRECT takes payloads as they are.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Alignment of every buffer (a page; also every logical block size).
pub(super) const ALIGN: usize = 4096;
/// Most idle buffers a pool keeps; more are freed as they come back.
const KEEP: usize = 64;

/// One page-aligned, zero-initialised allocation.
struct Buf {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: a `Buf` owns its allocation outright; moving it between threads moves that
// ownership.
unsafe impl Send for Buf {}

impl Buf {
    fn new(cap: usize) -> Buf {
        let layout = Layout::from_size_align(cap.max(1), ALIGN).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        Buf { ptr: NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout)), cap: cap.max(1) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Layout::from_size_align(self.cap, ALIGN).expect("valid")) };
    }
}

/// The idle buffers of one connection.
#[derive(Default)]
pub(super) struct Pool {
    idle: Mutex<Vec<Buf>>,
}

/// A buffer being filled: `len` bytes are wanted.
pub(super) struct Filling {
    buf: Buf,
    len: usize,
    pool: Arc<Pool>,
}

impl Pool {
    /// A buffer for a payload of `len` bytes (reused when an idle one is big enough).
    pub(super) fn take(self: &Arc<Pool>, len: usize) -> Filling {
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.iter().position(|b| b.cap >= len).map(|i| idle.swap_remove(i))
        };
        let buf = reused.unwrap_or_else(|| Buf::new(len.div_ceil(ALIGN) * ALIGN));
        Filling { buf, len, pool: self.clone() }
    }

    fn give_back(&self, buf: Buf) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < KEEP {
            idle.push(buf);
        }
    }
}

impl Filling {
    /// The `len` bytes to fill.
    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the allocation holds at least `len` initialised bytes we own.
        unsafe { std::slice::from_raw_parts_mut(self.buf.ptr.as_ptr(), self.len) }
    }

    /// The filled payload, returned to the pool when its last reference drops.
    pub(super) fn freeze(self) -> Bytes {
        Bytes::from_owner(Filled(Some(self)))
    }
}

/// Owner of a filled buffer inside a [`Bytes`]; gives the buffer back on drop.
struct Filled(Option<Filling>);

impl AsRef<[u8]> for Filled {
    fn as_ref(&self) -> &[u8] {
        let f = self.0.as_ref().expect("present until drop");
        // SAFETY: as in `bytes_mut`; shared now, and never written again.
        unsafe { std::slice::from_raw_parts(f.buf.ptr.as_ptr(), f.len) }
    }
}

impl Drop for Filled {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f.pool.give_back(f.buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_come_back_for_reuse() {
        let pool = Arc::new(Pool::default());
        let mut f = pool.take(10_000);
        f.bytes_mut().fill(5);
        let first = f.bytes_mut().as_ptr() as usize;
        assert_eq!(first % ALIGN, 0);
        let b = f.freeze();
        assert_eq!(b.len(), 10_000);
        assert!(b.iter().all(|x| *x == 5));
        let half = b.slice(100..200);
        drop(b);
        assert!(pool.idle.lock().unwrap().is_empty(), "still referenced by a slice");
        drop(half);
        let mut again = pool.take(8192);
        assert_eq!(again.bytes_mut().as_ptr() as usize, first, "the same buffer again");
        assert_eq!(again.bytes_mut().len(), 8192);
    }
}
