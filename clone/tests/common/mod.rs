//! Fault-injecting fakes at the engine's I/O boundary (like crucible's fake downstairs):
//! an in-memory source that counts reads per region and can go away, and a dest and
//! metadata store that keep volatile and durable images and can "crash" at the k-th
//! I/O operation (dropping everything not yet synced).
#![allow(dead_code)]
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use meshdrain_clone::{BlockSource, Dest, MetaStore};

/// In-memory source.
pub struct FakeSource {
    pub data: Vec<u8>,
    pub region_size: u64,
    pub reads: Mutex<Vec<u32>>,
    pub gone: AtomicBool,
    /// Reads refused while `gone`.
    pub failed_reads: AtomicU64,
    pub holes: Option<Vec<Range<u64>>>,
    /// Reads at this grain (not whole regions) are allowed: workload reads passed
    /// through to the source, counted apart from region copies.
    pub grain: Option<u64>,
    pub partial_reads: AtomicU64,
    /// While set, `deallocated` does not answer (a slow GET LBA STATUS scan).
    pub scan_hold: AtomicBool,
    /// While set, region copies (whole-region reads) do not answer; `held` says one waits.
    pub copy_hold: AtomicBool,
    pub held: AtomicBool,
}

impl FakeSource {
    pub fn new(data: Vec<u8>, region_size: u64) -> Arc<Self> {
        let n = (data.len() as u64).div_ceil(region_size) as usize;
        Arc::new(Self {
            data,
            region_size,
            reads: Mutex::new(vec![0; n]),
            gone: AtomicBool::new(false),
            failed_reads: AtomicU64::new(0),
            holes: None,
            grain: None,
            partial_reads: AtomicU64::new(0),
            scan_hold: AtomicBool::new(false),
            copy_hold: AtomicBool::new(false),
            held: AtomicBool::new(false),
        })
    }
    /// A source that reads at `grain` (workload reads pass through).
    pub fn new_fine(data: Vec<u8>, region_size: u64, grain: u64) -> Arc<Self> {
        let mut s = Arc::into_inner(Self::new(data, region_size)).expect("fresh");
        s.grain = Some(grain);
        Arc::new(s)
    }
    /// Most copies of one region (whole-region reads; passed-through reads not counted).
    pub fn max_reads(&self) -> u32 {
        self.reads.lock().unwrap().iter().copied().max().unwrap_or(0)
    }
}

impl BlockSource for FakeSource {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn identity(&self) -> String {
        "fake:source".into()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let whole_regions = offset.is_multiple_of(self.region_size)
            && (end.is_multiple_of(self.region_size) || end == self.data.len() as u64);
        if whole_regions {
            // Bounded: a test releases the hold within seconds.
            for _ in 0..10_000 {
                if !self.copy_hold.load(Ordering::SeqCst) {
                    break;
                }
                self.held.store(true, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        if self.gone.load(Ordering::SeqCst) {
            self.failed_reads.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::new(io::ErrorKind::TimedOut, "source gone"));
        }
        if let Some(g) = self.grain {
            assert_eq!(offset % g, 0, "source reads are {g}-aligned");
            assert!(end.is_multiple_of(g) || end == self.data.len() as u64, "source reads end {g}-aligned");
            if !whole_regions {
                self.partial_reads.fetch_add(1, Ordering::SeqCst);
                buf.copy_from_slice(&self.data[offset as usize..end as usize]);
                return Ok(());
            }
        }
        assert!(whole_regions, "source reads are region-aligned");
        let mut reads = self.reads.lock().unwrap();
        for r in offset / self.region_size..end.div_ceil(self.region_size) {
            reads[r as usize] += 1;
        }
        drop(reads);
        buf.copy_from_slice(&self.data[offset as usize..end as usize]);
        Ok(())
    }
    fn deallocated(&self) -> io::Result<Option<Vec<Range<u64>>>> {
        // Bounded: a test releases the hold within seconds.
        for _ in 0..10_000 {
            if !self.scan_hold.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(self.holes.clone())
    }
    fn read_granularity(&self) -> Option<u64> {
        self.grain
    }
}

/// Shared crash switch: the op numbered `crash_at` and every later one fail.
#[derive(Default)]
pub struct Faults {
    pub ops: AtomicU64,
    pub crash_at: AtomicU64,
    pub crashed: AtomicBool,
}

impl Faults {
    pub fn new(crash_at: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            ops: AtomicU64::new(0),
            crash_at: AtomicU64::new(crash_at.unwrap_or(u64::MAX)),
            crashed: AtomicBool::new(false),
        })
    }
    fn step(&self) -> io::Result<()> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        if self.crashed.load(Ordering::SeqCst) || n >= self.crash_at.load(Ordering::SeqCst) {
            self.crashed.store(true, Ordering::SeqCst);
            return Err(io::Error::other("injected crash"));
        }
        Ok(())
    }
}

/// A volatile image over a durable one.
pub struct Image {
    pub volatile: Mutex<Vec<u8>>,
    pub durable: Mutex<Vec<u8>>,
    pub faults: Arc<Faults>,
    /// While set, writes fail as on a full filesystem (ENOSPC).
    pub full: AtomicBool,
}

impl Image {
    pub fn new(bytes: Vec<u8>, faults: Arc<Faults>) -> Arc<Self> {
        Arc::new(Self {
            volatile: Mutex::new(bytes.clone()),
            durable: Mutex::new(bytes),
            faults,
            full: AtomicBool::new(false),
        })
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.faults.step()?;
        let mut v = self.volatile.lock().unwrap();
        let end = offset as usize + data.len();
        if v.len() < end {
            v.resize(end, 0);
        }
        v[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let v = self.volatile.lock().unwrap();
        let end = offset as usize + buf.len();
        if end > v.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "past end"));
        }
        buf.copy_from_slice(&v[offset as usize..end]);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        self.faults.step()?;
        *self.durable.lock().unwrap() = self.volatile.lock().unwrap().clone();
        Ok(())
    }
    /// The image after a crash: only what was synced.
    pub fn after_crash(&self, faults: Arc<Faults>) -> Arc<Self> {
        Self::new(self.durable.lock().unwrap().clone(), faults)
    }
}

/// Fake dest over an [`Image`].
pub struct FakeDest(pub Arc<Image>);
impl Dest for FakeDest {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.volatile.lock().unwrap().len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write(offset, data)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync()
    }
    fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.write(offset, &vec![0u8; len as usize])
    }
}

/// Fake metadata store over an [`Image`].
pub struct FakeMeta(pub Arc<Image>);
impl MetaStore for FakeMeta {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.volatile.lock().unwrap().len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write(offset, data)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync()
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("fake-meta")
    }
}

pub use meshdrain_testkit::pattern;
