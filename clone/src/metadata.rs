//! The userspace engine's metadata: what a resume may trust about a half-done clone.
//! docs/threat-model.md ("Corrupt a clone silently"): nothing on disk is trusted
//! without a checksum. A region's bit is written only after its data is durable on the
//! dest, and a resume believes a bit only when its block's checksum holds and the
//! metadata is bound to this very source and dest.
//!
//! # Format (version 2)
//!
//! - Bytes 0..4096, the header: magic, version, flags (complete, marker), region size,
//!   volume size, lease epoch, a random 16-byte clone id, the dest's identity (kind,
//!   size, device, inode, birth time; see [`crate::identity`]), the source's identity,
//!   and a crc32c over all of it. Written once when the clone is created and once at
//!   handoff (the complete flag).
//! - From byte 4096, the bitmap in 4 KiB blocks: crc32c (4 bytes, seeded with the clone
//!   id, so a block of another clone's file does not pass), the block's index (4), and
//!   4088 bytes of bits. A commit rewrites only the blocks its regions touch, whole,
//!   each page-aligned, then syncs once. A process killed mid-commit cannot tear a
//!   one-page write, so each block is old or new, and both are safe: the old one lacks
//!   only bits whose commit never returned, whose regions are fetched again. A block
//!   torn by power loss on a device without atomic 4 KiB writes fails its checksum and
//!   the clone is refused rather than guessed at.
//!
//! # Binding and refusals
//!
//! A resume ([`Metadata::open`]) refuses, naming the file and the fix
//! ([`CloneError::BadMetadata`], [`CloneError::DestMismatch`], ...): an empty, zeroed,
//! short or garbage file, a failed checksum, another source, epoch or geometry, and a
//! dest that is not the one recorded: for a file its inode number and birth time must
//! match and, where the filesystem keeps user xattrs, the `user.meshdrain.clone-id`
//! marker on the dest must carry the clone id (so a recreated file that reuses the
//! inode number is caught too); for a block device its device number and size. A
//! refused resume writes nothing. Starting over is never implied by what is on disk:
//! only [`Metadata::create`] (`meshdrain clone run --start-over`, or the agent starting
//! the clone of a new lease) writes fresh metadata, and with [`crate::FileMeta::create`]
//! it replaces the old file in one rename.
//!
//! Version 1 files (header checksum, raw bitmap, no dest binding) are still resumed
//! when internally consistent (magic, checksum, length, no stray bits), so an upgrade
//! mid-move does not recopy; they stay version 1 until the next fresh clone.
use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::core::Region;
use crate::error::{CloneError, Result};
use crate::identity::{CLONE_ID_LEN, DestIdentity, DestKind};
use crate::io::{Dest, MetaStore};

const MAGIC: &[u8; 8] = b"MDCLONE\0";
const VERSION: u32 = 2;
const V1: u32 = 1;
/// Bytes before the bitmap.
pub const HEADER_LEN: u64 = 4096;
/// Bytes of one bitmap block on disk (version 2).
pub const BLOCK_LEN: usize = 4096;
/// Bytes of bits in one bitmap block (after its checksum and index).
pub const BLOCK_BITS: usize = BLOCK_LEN - 8;
const CRC_AT: usize = 508;
const MAX_IDENTITY: usize = 400;
const FLAG_COMPLETE: u32 = 1;
const FLAG_MARKER: u32 = 2;

/// What a clone's metadata describes; a resume must match it exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Bytes per region.
    pub region_size: u64,
    /// Volume size in bytes.
    pub size: u64,
    /// The source's identity ([`crate::BlockSource::identity`]).
    pub source: String,
    /// The lease epoch this clone was granted under.
    pub epoch: u64,
    /// Set at handoff: every region is on the dest and the source is no longer read.
    pub complete: bool,
}

impl Header {
    /// Number of regions (the last may be short).
    pub fn regions(&self) -> u64 {
        self.size.div_ceil(self.region_size)
    }

    fn bitmap_len(&self) -> usize {
        self.regions().div_ceil(8) as usize
    }
}

/// What binds version 2 metadata to its dest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Binding {
    clone_id: [u8; CLONE_ID_LEN],
    /// `None`: the dest could not name itself (test fakes); its size still binds it.
    dest: Option<DestIdentity>,
    dest_size: u64,
    /// The dest carries the clone id as a marker.
    marker: bool,
}

#[derive(Clone, Copy, Debug)]
enum Format {
    V1,
    V2(Binding),
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default())
}

fn encode(h: &Header, format: &Format) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..8].copy_from_slice(MAGIC);
    let mut flags = if h.complete { FLAG_COMPLETE } else { 0 };
    b[16..24].copy_from_slice(&h.region_size.to_le_bytes());
    b[24..32].copy_from_slice(&h.size.to_le_bytes());
    b[32..40].copy_from_slice(&h.epoch.to_le_bytes());
    let id = h.source.as_bytes();
    let n = id.len().min(MAX_IDENTITY);
    match format {
        Format::V1 => {
            b[8..12].copy_from_slice(&V1.to_le_bytes());
            b[40..42].copy_from_slice(&(n as u16).to_le_bytes());
            b[42..42 + n].copy_from_slice(&id[..n]);
        }
        Format::V2(bind) => {
            b[8..12].copy_from_slice(&VERSION.to_le_bytes());
            flags |= if bind.marker { FLAG_MARKER } else { 0 };
            b[40..56].copy_from_slice(&bind.clone_id);
            let d = bind.dest;
            b[56..60].copy_from_slice(&DestKind::code(d.map(|d| d.kind)).to_le_bytes());
            b[64..72].copy_from_slice(&bind.dest_size.to_le_bytes());
            if let Some(d) = d {
                b[72..80].copy_from_slice(&d.dev.to_le_bytes());
                b[80..88].copy_from_slice(&d.ino.to_le_bytes());
                if let Some((s, ns)) = d.born {
                    b[88..96].copy_from_slice(&s.to_le_bytes());
                    b[60..64].copy_from_slice(&ns.to_le_bytes());
                    b[96..100].copy_from_slice(&1u32.to_le_bytes());
                }
            }
            b[100..102].copy_from_slice(&(n as u16).to_le_bytes());
            b[102..102 + n].copy_from_slice(&id[..n]);
        }
    }
    b[12..16].copy_from_slice(&flags.to_le_bytes());
    let crc = crc32c::crc32c(&b[..CRC_AT]);
    b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8; 512]) -> std::result::Result<(Header, Format), String> {
    if b.iter().all(|x| *x == 0) {
        return Err("its header is all zeros".into());
    }
    if &b[0..8] != MAGIC {
        return Err("it does not start with the clone metadata magic".into());
    }
    if u32_at(b, CRC_AT) != crc32c::crc32c(&b[..CRC_AT]) {
        return Err("its header fails its checksum (torn or damaged)".into());
    }
    let flags = u32_at(b, 12);
    let header = |source: &[u8]| Header {
        region_size: u64_at(b, 16),
        size: u64_at(b, 24),
        epoch: u64_at(b, 32),
        source: String::from_utf8_lossy(source).into_owned(),
        complete: flags & FLAG_COMPLETE != 0,
    };
    match u32_at(b, 8) {
        V1 => {
            let n = (u16::from_le_bytes([b[40], b[41]]) as usize).min(MAX_IDENTITY);
            Ok((header(&b[42..42 + n]), Format::V1))
        }
        VERSION => {
            let n = (u16::from_le_bytes([b[100], b[101]]) as usize).min(MAX_IDENTITY);
            let kind =
                DestKind::from_code(u32_at(b, 56)).map_err(|c| format!("its header names dest kind {c}, unknown"))?;
            let born = (u32_at(b, 96) == 1).then(|| (u64_at(b, 88) as i64, u32_at(b, 60)));
            let dest_size = u64_at(b, 64);
            let dest =
                kind.map(|kind| DestIdentity { kind, dev: u64_at(b, 72), ino: u64_at(b, 80), born, size: dest_size });
            let mut clone_id = [0u8; CLONE_ID_LEN];
            clone_id.copy_from_slice(&b[40..56]);
            let bind = Binding { clone_id, dest, dest_size, marker: flags & FLAG_MARKER != 0 };
            Ok((header(&b[102..102 + n]), Format::V2(bind)))
        }
        v => Err(format!("it is format version {v}; this build reads versions {V1} and {VERSION}")),
    }
}

fn block_crc(clone_id: &[u8; CLONE_ID_LEN], block: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(clone_id), &block[4..])
}

/// The open metadata: header, in-memory bitmap, and its store.
pub struct Metadata {
    header: Header,
    format: Format,
    bitmap: Vec<u8>,
    store: Box<dyn MetaStore>,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata").field("header", &self.header).finish_non_exhaustive()
    }
}

fn check_region_size(want: &Header) -> Result<()> {
    if want.region_size == 0 || !want.region_size.is_multiple_of(512) {
        return Err(CloneError::Config(format!("region size {} must be a non-zero multiple of 512", want.region_size)));
    }
    Ok(())
}

fn io_err(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CloneError {
    let path = path.to_path_buf();
    move |source| CloneError::Io { what, path, source }
}

impl Metadata {
    /// Starts a clone afresh: marks `dest` with `clone_id` (where it can hold a
    /// marker), then writes new metadata for `want` (complete flag ignored) bound to
    /// `dest`, syncs and publishes it. Whatever the store held is discarded: callers
    /// reach this only on an explicit start-over or when no metadata exists.
    pub fn create(
        store: Box<dyn MetaStore>,
        want: &Header,
        dest: &dyn Dest,
        clone_id: [u8; CLONE_ID_LEN],
    ) -> Result<Self> {
        check_region_size(want)?;
        let path = store.path();
        let dest_path = dest.path().unwrap_or_else(|| PathBuf::from("dest"));
        let dest_size = dest.size().map_err(io_err("size dest", &dest_path))?;
        let identity = dest.identity().map(|id| DestIdentity { size: dest_size, ..id });
        let marker = dest.set_marker(&clone_id).map_err(io_err("mark dest", &dest_path))?;
        let header = Header { complete: false, ..want.clone() };
        let format = Format::V2(Binding { clone_id, dest: identity, dest_size, marker });
        let bitmap = vec![0u8; want.bitmap_len()];
        let meta = Self { header, format, bitmap, store };
        let blocks = meta.blocks();
        let mut image = vec![0u8; HEADER_LEN as usize + blocks * BLOCK_LEN];
        image[..512].copy_from_slice(&encode(&meta.header, &meta.format));
        for k in 0..blocks {
            let at = HEADER_LEN as usize + k * BLOCK_LEN;
            meta.encode_block(k, &mut image[at..at + BLOCK_LEN]);
        }
        meta.store.write_at(0, &image).map_err(io_err("write metadata", &path))?;
        meta.store.sync().map_err(io_err("sync metadata", &path))?;
        meta.store.publish().map_err(io_err("publish metadata", &path))?;
        tracing::info!(metadata = %path.display(), dest = %dest_path.display(), marker, "fresh clone metadata written");
        Ok(meta)
    }

    /// Resumes the metadata in `store` for `want` (complete flag ignored) onto `dest`.
    /// Refuses, writing nothing, anything it cannot trust (see the module doc).
    pub fn open(store: Box<dyn MetaStore>, want: &Header, dest: &dyn Dest) -> Result<Self> {
        check_region_size(want)?;
        let path = store.path();
        let bad = |reason: String| CloneError::BadMetadata { path: path.clone(), reason };
        let len = store.len().map_err(io_err("size metadata", &path))?;
        if len == 0 {
            return Err(bad("the file is empty (0 bytes)".into()));
        }
        let mut raw = [0u8; 512];
        let n = len.min(512) as usize;
        store.read_at(0, &mut raw[..n]).map_err(io_err("read metadata", &path))?;
        let (header, format) = decode(&raw).map_err(&bad)?;
        if header.source != want.source || header.epoch != want.epoch {
            return Err(CloneError::ForeignMetadata {
                path: path.clone(),
                found_source: header.source,
                found_epoch: header.epoch,
                want_source: want.source.clone(),
                want_epoch: want.epoch,
            });
        }
        if header.size != want.size || header.region_size != want.region_size {
            return Err(CloneError::GeometryMismatch {
                path: path.clone(),
                found_size: header.size,
                found_region: header.region_size,
                want_size: want.size,
                want_region: want.region_size,
            });
        }
        let bitmap = vec![0u8; want.bitmap_len()];
        let mut meta = Self { header, format, bitmap, store };
        let need = meta.disk_len();
        if len < need {
            return Err(bad(format!("it is truncated: {len} bytes, {need} expected for {} regions", want.regions())));
        }
        meta.read_bitmap().map_err(|e| match e {
            Ok(reason) => bad(reason),
            Err(source) => CloneError::Io { what: "read metadata", path: path.clone(), source },
        })?;
        match meta.format {
            Format::V1 => {
                tracing::warn!(metadata = %path.display(), "resuming version 1 metadata, which is not bound to its dest; the next fresh clone writes version 2")
            }
            Format::V2(bind) => check_binding(&bind, dest, &path)?,
        }
        Ok(meta)
    }

    fn blocks(&self) -> usize {
        self.bitmap.len().div_ceil(BLOCK_BITS)
    }

    fn disk_len(&self) -> u64 {
        HEADER_LEN
            + match self.format {
                Format::V1 => self.bitmap.len() as u64,
                Format::V2(_) => (self.blocks() * BLOCK_LEN) as u64,
            }
    }

    /// Reads and checks the bitmap: `Err(Ok(reason))` when it cannot be trusted.
    fn read_bitmap(&mut self) -> std::result::Result<(), std::result::Result<String, std::io::Error>> {
        let regions = self.header.regions();
        match self.format {
            Format::V1 => {
                self.store.read_at(HEADER_LEN, &mut self.bitmap).map_err(Err)?;
                let tail = regions % 8;
                if tail != 0 && self.bitmap.last().is_some_and(|b| b >> tail != 0) {
                    return Err(Ok(format!("its bitmap has bits set past the last of {regions} regions")));
                }
            }
            Format::V2(bind) => {
                let mut raw = vec![0u8; self.blocks() * BLOCK_LEN];
                self.store.read_at(HEADER_LEN, &mut raw).map_err(Err)?;
                for (k, block) in raw.chunks_exact(BLOCK_LEN).enumerate() {
                    let first = (k * BLOCK_BITS * 8) as u64;
                    let last = (first + (BLOCK_BITS * 8) as u64).min(regions);
                    if u32_at(block, 0) != block_crc(&bind.clone_id, block) {
                        return Err(Ok(format!(
                            "bitmap block {k} (regions {first}..{last}) fails its checksum (torn or damaged)"
                        )));
                    }
                    if u32_at(block, 4) as usize != k {
                        return Err(Ok(format!("bitmap block {k} holds block {} (misplaced)", u32_at(block, 4))));
                    }
                    let lo = k * BLOCK_BITS;
                    let hi = (lo + BLOCK_BITS).min(self.bitmap.len());
                    self.bitmap[lo..hi].copy_from_slice(&block[8..8 + hi - lo]);
                }
            }
        }
        Ok(())
    }

    /// Block `k` of the bitmap as stored (checksum, index, bits, zero padding).
    fn encode_block(&self, k: usize, out: &mut [u8]) {
        let Format::V2(bind) = &self.format else { return };
        out.fill(0);
        out[4..8].copy_from_slice(&(k as u32).to_le_bytes());
        let lo = k * BLOCK_BITS;
        let hi = (lo + BLOCK_BITS).min(self.bitmap.len());
        out[8..8 + hi - lo].copy_from_slice(&self.bitmap[lo..hi]);
        let crc = block_crc(&bind.clone_id, out);
        out[0..4].copy_from_slice(&crc.to_le_bytes());
    }

    /// The header as stored.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The on-disk format version (1: resumed from an older build; 2: current).
    pub fn version(&self) -> u32 {
        match self.format {
            Format::V1 => V1,
            Format::V2(_) => VERSION,
        }
    }

    /// Whether region `r`'s bit is set.
    pub fn is_set(&self, r: Region) -> bool {
        self.bitmap[(r / 8) as usize] & (1 << (r % 8)) != 0
    }

    /// Sets the bits of `regions` and makes them durable: the touched bitmap blocks
    /// are rewritten whole (one write per contiguous run), then one sync. Call only
    /// after the regions' data is durable on the dest.
    pub fn persist(&mut self, regions: &[Region]) -> Result<()> {
        let mut touched = BTreeSet::new();
        for r in regions {
            let byte = (r / 8) as usize;
            self.bitmap[byte] |= 1 << (r % 8);
            touched.insert(match self.format {
                Format::V1 => byte,
                Format::V2(_) => byte / BLOCK_BITS,
            });
        }
        if touched.is_empty() {
            return Ok(());
        }
        let path = self.store.path();
        let touched: Vec<usize> = touched.into_iter().collect();
        for run in touched.chunk_by(|a, b| *b == *a + 1) {
            let (lo, hi) = (run[0], run[run.len() - 1]);
            let res = match self.format {
                Format::V1 => self.store.write_at(HEADER_LEN + lo as u64, &self.bitmap[lo..=hi]),
                Format::V2(_) => {
                    let mut buf = vec![0u8; run.len() * BLOCK_LEN];
                    for (i, k) in (lo..=hi).enumerate() {
                        self.encode_block(k, &mut buf[i * BLOCK_LEN..(i + 1) * BLOCK_LEN]);
                    }
                    self.store.write_at(HEADER_LEN + (lo * BLOCK_LEN) as u64, &buf)
                }
            };
            res.map_err(io_err("write metadata bitmap", &path))?;
        }
        self.store.sync().map_err(io_err("sync metadata", &path))
    }

    /// The clone id binding version 2 metadata to its dest (`None` for version 1); a
    /// written set ([`crate::written`]) is bound to it too.
    pub fn clone_id(&self) -> Option<[u8; CLONE_ID_LEN]> {
        match self.format {
            Format::V2(bind) => Some(bind.clone_id),
            Format::V1 => None,
        }
    }

    /// Sets, durably, the bit of every region `here` says the dest already holds: a
    /// fresh clone onto a dest that is the volume but for some regions (a return,
    /// docs/return.md). One write of the whole bitmap, one sync. Version 2 only.
    pub fn preset(&mut self, here: impl Fn(Region) -> bool) -> Result<()> {
        let Format::V2(_) = self.format else {
            return Err(CloneError::Config("only fresh (version 2) metadata can be preset".into()));
        };
        for r in (0..self.header.regions()).filter(|r| here(*r)) {
            self.bitmap[(r / 8) as usize] |= 1 << (r % 8);
        }
        let blocks = self.blocks();
        let mut buf = vec![0u8; blocks * BLOCK_LEN];
        for k in 0..blocks {
            self.encode_block(k, &mut buf[k * BLOCK_LEN..(k + 1) * BLOCK_LEN]);
        }
        let path = self.store.path();
        self.store.write_at(HEADER_LEN, &buf).map_err(io_err("write metadata bitmap", &path))?;
        self.store.sync().map_err(io_err("sync metadata", &path))
    }

    /// Marks the clone complete (the handoff's last durable step).
    pub fn mark_complete(&mut self) -> Result<()> {
        self.header.complete = true;
        let path = self.store.path();
        self.store.write_at(0, &encode(&self.header, &self.format)).map_err(io_err("write metadata header", &path))?;
        self.store.sync().map_err(io_err("sync metadata", &path))
    }
}

/// Refuses a dest that is not the one `bind` records.
fn check_binding(bind: &Binding, dest: &dyn Dest, path: &std::path::Path) -> Result<()> {
    let dest_path = dest.path().unwrap_or_else(|| PathBuf::from("dest"));
    let refuse =
        |reason: String| CloneError::DestMismatch { path: path.to_path_buf(), dest: dest_path.clone(), reason };
    match (&bind.dest, dest.identity()) {
        (Some(want), Some(found)) => {
            if let Some(why) = want.mismatch(&found, bind.marker) {
                return Err(refuse(why));
            }
        }
        (Some(_), None) => return Err(refuse("the dest cannot tell its identity".into())),
        (None, _) => {
            let size = dest.size().map_err(io_err("size dest", &dest_path))?;
            if size != bind.dest_size {
                return Err(refuse(format!("it held {} bytes, now {size}", bind.dest_size)));
            }
        }
    }
    if bind.marker {
        match dest.marker().map_err(io_err("read dest marker", &dest_path))? {
            Some(id) if id == bind.clone_id => {}
            Some(_) => return Err(refuse("the dest carries the marker of another clone".into())),
            None => return Err(refuse("the dest carries no clone marker (another or a recreated file)".into())),
        }
    }
    Ok(())
}
