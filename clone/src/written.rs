//! Write tracking: the regions a workload wrote through this engine since its clone was
//! created (that is, since cut-over: the workload starts only then, docs/lease-protocol.md),
//! so a later move back to the node the clone came from copies only those regions
//! (docs/return.md).
//!
//! The set is durable before the write that first dirties a region is acknowledged: the
//! engine calls [`Written::mark`] before it writes the dest, and `mark` writes the
//! touched bitmap block and syncs before it returns. A region already marked costs
//! nothing. A crash between the sync and the dest write leaves the bit set for a write
//! that never happened: a superset, which only over-copies. The set never misses a write
//! it acknowledged, which is all a return needs.
//!
//! # Format (version 1)
//!
//! Its own file next to the clone metadata (`<pool>/<volume>.clone-written`):
//! - bytes 0..4096, the header: magic, version, region size, volume size, lease epoch,
//!   the clone id of the metadata it belongs to, a crc32c over it all;
//! - from 4096, 4 KiB bitmap blocks like [`crate::metadata`]'s: crc32c (seeded with a
//!   domain string and the clone id, so neither a metadata block nor another clone's
//!   block passes), the block's index, 4088 bytes of bits.
//!
//! [`Written::open`] refuses (writing nothing) a file of another clone id, epoch or
//! geometry, a failed checksum, or stray bits: the caller then has no tracking, and a
//! return is a full move. Only [`Written::create`] starts an empty set, and only for a
//! fresh clone (a resumed clone whose set is gone must not pretend nothing was written).
use std::collections::BTreeSet;
use std::ops::Range;
use std::path::PathBuf;

use crate::core::Region;
use crate::identity::CLONE_ID_LEN;
use crate::io::MetaStore;

const MAGIC: &[u8; 8] = b"MDWRITN\0";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 4096;
const BLOCK_LEN: usize = 4096;
const BLOCK_BITS: usize = BLOCK_LEN - 8;
const CRC_AT: usize = 508;
const DOMAIN: &[u8] = b"meshdrain written v1\0";

/// What a written set belongs to: it is refused for anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The clone id of the engine's metadata.
    pub clone_id: [u8; CLONE_ID_LEN],
    /// The lease epoch of the clone.
    pub epoch: u64,
    /// Volume size in bytes.
    pub size: u64,
    /// Bytes per region.
    pub region_size: u64,
}

impl Binding {
    fn regions(&self) -> u64 {
        self.size.div_ceil(self.region_size.max(1))
    }
    fn blocks(&self) -> usize {
        (self.regions().div_ceil(8) as usize).div_ceil(BLOCK_BITS)
    }
}

/// The durable set of regions written since the clone was created.
pub struct Written {
    bind: Binding,
    bits: Vec<u8>,
    store: Box<dyn MetaStore>,
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Written").field("bind", &self.bind).finish_non_exhaustive()
    }
}

fn encode_header(b: &Binding) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&b.region_size.to_le_bytes());
    h[24..32].copy_from_slice(&b.size.to_le_bytes());
    h[32..40].copy_from_slice(&b.epoch.to_le_bytes());
    h[40..56].copy_from_slice(&b.clone_id);
    let crc = crc32c::crc32c(&h[..CRC_AT]);
    h[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    h
}

fn block_crc(clone_id: &[u8; CLONE_ID_LEN], block: &[u8]) -> u32 {
    let seed = crc32c::crc32c_append(crc32c::crc32c(DOMAIN), clone_id);
    crc32c::crc32c_append(seed, &block[4..])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default())
}

impl Written {
    /// An empty set for a fresh clone: written whole, synced, then published (a
    /// [`crate::FileMeta::create`] store renames it over any old file in one step).
    pub fn create(store: Box<dyn MetaStore>, bind: Binding) -> std::io::Result<Self> {
        let w = Self { bind, bits: vec![0u8; bind.regions().div_ceil(8) as usize], store };
        let blocks = bind.blocks();
        let mut image = vec![0u8; HEADER_LEN as usize + blocks * BLOCK_LEN];
        image[..512].copy_from_slice(&encode_header(&bind));
        for k in 0..blocks {
            let at = HEADER_LEN as usize + k * BLOCK_LEN;
            w.encode_block(k, &mut image[at..at + BLOCK_LEN]);
        }
        w.store.write_at(0, &image)?;
        w.store.sync()?;
        w.store.publish()?;
        Ok(w)
    }

    /// Reopens the set of the clone `bind` describes (a holder restarted from its
    /// metadata). `Err` says why it cannot be trusted; nothing is written.
    pub fn open(store: Box<dyn MetaStore>, bind: Binding) -> Result<Self, String> {
        let len = store.len().map_err(|e| format!("cannot size it: {e}"))?;
        let need = HEADER_LEN + (bind.blocks() * BLOCK_LEN) as u64;
        if len < need {
            return Err(format!("it is {len} bytes, {need} expected"));
        }
        let mut h = [0u8; 512];
        store.read_at(0, &mut h).map_err(|e| format!("cannot read it: {e}"))?;
        if &h[0..8] != MAGIC || u32::from_le_bytes(h[8..12].try_into().unwrap_or_default()) != VERSION {
            return Err("it is not a version 1 written set".into());
        }
        if u32::from_le_bytes(h[CRC_AT..CRC_AT + 4].try_into().unwrap_or_default()) != crc32c::crc32c(&h[..CRC_AT]) {
            return Err("its header fails its checksum".into());
        }
        if h[40..56] != bind.clone_id {
            return Err("it belongs to another clone (clone id differs)".into());
        }
        let found = (u64_at(&h, 16), u64_at(&h, 24), u64_at(&h, 32));
        if found != (bind.region_size, bind.size, bind.epoch) {
            return Err(format!(
                "it describes region size {}, size {}, epoch {}; the clone has {}, {}, {}",
                found.0, found.1, found.2, bind.region_size, bind.size, bind.epoch
            ));
        }
        let mut w = Self { bind, bits: vec![0u8; bind.regions().div_ceil(8) as usize], store };
        let mut block = vec![0u8; BLOCK_LEN];
        for k in 0..bind.blocks() {
            w.store.read_at(HEADER_LEN + (k * BLOCK_LEN) as u64, &mut block).map_err(|e| format!("read: {e}"))?;
            let crc = u32::from_le_bytes(block[0..4].try_into().unwrap_or_default());
            let index = u32::from_le_bytes(block[4..8].try_into().unwrap_or_default());
            if crc != block_crc(&bind.clone_id, &block) || index as usize != k {
                return Err(format!("its block {k} fails its checksum"));
            }
            let lo = k * BLOCK_BITS;
            let hi = (lo + BLOCK_BITS).min(w.bits.len());
            w.bits[lo..hi].copy_from_slice(&block[8..8 + hi - lo]);
        }
        let tail = bind.regions() % 8;
        if tail != 0 && w.bits.last().is_some_and(|b| b >> tail != 0) {
            return Err("it has bits past the last region".into());
        }
        Ok(w)
    }

    /// What it is bound to.
    pub fn binding(&self) -> Binding {
        self.bind
    }

    /// Where it lives (for messages and for invalidating it).
    pub fn path(&self) -> PathBuf {
        self.store.path()
    }

    fn is_set(&self, r: Region) -> bool {
        self.bits.get((r / 8) as usize).is_some_and(|b| b & (1 << (r % 8)) != 0)
    }

    /// Marks `regions` written and makes that durable before returning: the blocks of
    /// newly set bits are rewritten whole, then one sync. Regions already marked cost no
    /// I/O. Returns how many regions were newly marked. On an error the set must be
    /// dropped (the caller invalidates it): what is on disk may lack the new bits.
    pub fn mark(&mut self, regions: Range<Region>) -> std::io::Result<u64> {
        let end = regions.end.min(self.bind.regions());
        let fresh = newly_dirty(&self.bits, regions.start..end);
        if fresh.is_empty() {
            return Ok(0);
        }
        let mut touched = BTreeSet::new();
        for r in &fresh {
            self.bits[(r / 8) as usize] |= 1 << (r % 8);
            touched.insert((r / 8) as usize / BLOCK_BITS);
        }
        let mut buf = vec![0u8; BLOCK_LEN];
        for k in touched {
            self.encode_block(k, &mut buf);
            self.store.write_at(HEADER_LEN + (k * BLOCK_LEN) as u64, &buf)?;
        }
        self.store.sync()?;
        Ok(fresh.len() as u64)
    }

    /// Regions marked.
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    /// The written byte ranges, ascending, neighbours merged.
    pub fn ranges(&self) -> Vec<Range<u64>> {
        let rs = self.bind.region_size;
        let mut out: Vec<Range<u64>> = Vec::new();
        for r in (0..self.bind.regions()).filter(|r| self.is_set(*r)) {
            let (lo, hi) = (r * rs, ((r + 1) * rs).min(self.bind.size));
            match out.last_mut() {
                Some(last) if last.end == lo => last.end = hi,
                _ => out.push(lo..hi),
            }
        }
        out
    }

    fn encode_block(&self, k: usize, out: &mut [u8]) {
        out.fill(0);
        out[4..8].copy_from_slice(&(k as u32).to_le_bytes());
        let lo = k * BLOCK_BITS;
        let hi = (lo + BLOCK_BITS).min(self.bits.len());
        out[8..8 + hi - lo].copy_from_slice(&self.bits[lo..hi]);
        let crc = block_crc(&self.bind.clone_id, out);
        out[0..4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// The regions of `regions` whose bit is not set in `bits` (pure: the part of
/// [`Written::mark`] that decides what must become durable).
pub fn newly_dirty(bits: &[u8], regions: Range<Region>) -> Vec<Region> {
    regions.filter(|r| bits.get((r / 8) as usize).is_some_and(|b| b & (1 << (r % 8)) == 0)).collect()
}

/// Merges the two neighbours with the smallest gap until at most `max` ranges remain.
/// Every input byte stays covered (a superset: over-copying is always safe). Input
/// ascending and disjoint.
pub fn coarsen(mut ranges: Vec<Range<u64>>, max: usize) -> Vec<Range<u64>> {
    let max = max.max(1);
    while ranges.len() > max {
        // Merge every gap no wider than the k-th smallest at once: O(n log n) per pass,
        // and each pass at least halves the excess.
        let mut gaps: Vec<u64> = ranges.windows(2).map(|w| w[1].start - w[0].end).collect();
        gaps.sort_unstable();
        let excess = ranges.len() - max;
        let limit = gaps[excess - 1];
        let mut merged = excess;
        let mut out: Vec<Range<u64>> = Vec::with_capacity(max);
        for r in ranges {
            match out.last_mut() {
                Some(last) if merged > 0 && r.start - last.end <= limit => {
                    last.end = r.end;
                    merged -= 1;
                }
                _ => out.push(r),
            }
        }
        ranges = out;
    }
    ranges
}

#[cfg(test)]
#[path = "written_tests.rs"]
mod tests;
