//! [`BlockSource`] over our iSCSI initiator (meshdrain-iscsi's [`BlockReader`]):
//! the engine's threads are plain threads, so the adapter owns a small tokio runtime
//! and blocks on each read, with a timeout so a vanished target turns into an error
//! the engine retries and reports as `stalled`.
use std::io;
use std::ops::Range;
use std::time::Duration;

use meshdrain_iscsi::{BlockReader, Session};

use crate::io::BlockSource;

/// Largest single READ issued (bytes).
const MAX_READ: u64 = 1 << 20;

/// A remote LUN as a clone source.
pub struct IscsiSource<R: BlockReader = Session> {
    reader: R,
    rt: Option<tokio::runtime::Runtime>,
    identity: String,
    timeout: Duration,
}

impl<R: BlockReader> std::fmt::Debug for IscsiSource<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IscsiSource").field("identity", &self.identity).finish()
    }
}

impl IscsiSource<Session> {
    /// Logs in to `url` (`iscsi://host:port/<iqn>/<lun>`) on a runtime of its own.
    /// Call from a plain thread (or `spawn_blocking`), not from inside a runtime.
    pub fn connect(url: &str, timeout: Duration) -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("clone-iscsi")
            .enable_all()
            .build()?;
        let session = rt
            .block_on(async { tokio::time::timeout(timeout, Session::connect_url(url)).await })
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("login to {url} timed out")))?
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self { reader: session, rt: Some(rt), identity: url.to_string(), timeout })
    }
}

impl<R: BlockReader> IscsiSource<R> {
    /// Wraps any [`BlockReader`] (tests use in-memory ones).
    pub fn new(reader: R, identity: String, timeout: Duration) -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Self { reader, rt: Some(rt), identity, timeout })
    }

    fn block_on<T>(&self, f: impl Future<Output = T>) -> io::Result<T> {
        let rt = self.rt.as_ref().ok_or_else(|| io::Error::other("runtime gone"))?;
        rt.block_on(async { tokio::time::timeout(self.timeout, f).await })
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("iSCSI read timed out after {:?}", self.timeout)))
    }
}

impl<R: BlockReader> Drop for IscsiSource<R> {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl<R: BlockReader> BlockSource for IscsiSource<R> {
    fn size(&self) -> u64 {
        self.reader.blocks() * self.reader.block_size() as u64
    }

    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let bs = self.reader.block_size() as u64;
        if !offset.is_multiple_of(bs) || !(buf.len() as u64).is_multiple_of(bs) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("read {offset}+{} not {bs}-byte aligned", buf.len())));
        }
        let mut done = 0u64;
        // Bounded: each turn consumes up to MAX_READ bytes of the buffer.
        while done < buf.len() as u64 {
            let n = (buf.len() as u64 - done).min(MAX_READ);
            let lba = (offset + done) / bs;
            let data = self
                .block_on(self.reader.read_blocks(lba, (n / bs) as u32))?
                .map_err(|e| io::Error::other(e.to_string()))?;
            if data.len() as u64 != n {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("short read at lba {lba}: {} of {n} bytes", data.len())));
            }
            buf[done as usize..(done + n) as usize].copy_from_slice(&data);
            done += n;
        }
        Ok(())
    }

    fn deallocated(&self) -> io::Result<Option<Vec<Range<u64>>>> {
        let bs = self.reader.block_size() as u64;
        let blocks = self.reader.blocks();
        let mut holes = Vec::new();
        let mut lba = 0;
        for _ in 0..1_000_000 {
            if lba >= blocks {
                return Ok(Some(holes));
            }
            let extents = self.block_on(self.reader.lba_status(lba))?.map_err(|e| io::Error::other(e.to_string()))?;
            let Some(last) = extents.last() else { break };
            for e in &extents {
                if !e.allocated && e.blocks > 0 {
                    holes.push(e.lba * bs..(e.lba + e.blocks).min(blocks) * bs);
                }
            }
            let next = last.lba + last.blocks;
            if next <= lba {
                break;
            }
            lba = next;
        }
        // The target stopped answering sensibly: fetch everything (always safe).
        Ok(None)
    }
}
