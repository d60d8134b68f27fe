//! The userspace engine's metadata: a 4 KiB header (magic, version, region size,
//! size, source identity, lease epoch, complete flag, crc32c) followed by the region
//! bitmap. Bits only ever go from 0 to 1, so a torn bitmap write leaves each bit
//! either old or new, and both are safe because a bit is written only after its
//! region's data is durable on the dest.
use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::core::Region;
use crate::error::{CloneError, Result};
use crate::io::MetaStore;

const MAGIC: &[u8; 8] = b"MDCLONE\0";
const VERSION: u32 = 1;
/// Bytes before the bitmap.
pub const HEADER_LEN: u64 = 4096;
const CRC_AT: usize = 508;
const MAX_IDENTITY: usize = 400;
const FLAG_COMPLETE: u32 = 1;

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

    fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let flags = if self.complete { FLAG_COMPLETE } else { 0 };
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.region_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.size.to_le_bytes());
        b[32..40].copy_from_slice(&self.epoch.to_le_bytes());
        let id = self.source.as_bytes();
        let n = id.len().min(MAX_IDENTITY);
        b[40..42].copy_from_slice(&(n as u16).to_le_bytes());
        b[42..42 + n].copy_from_slice(&id[..n]);
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8; 512]) -> std::result::Result<Option<Self>, String> {
        if b.iter().all(|x| *x == 0) {
            return Ok(None);
        }
        if &b[0..8] != MAGIC {
            return Err("bad magic".into());
        }
        let crc = u32::from_le_bytes(b[CRC_AT..CRC_AT + 4].try_into().unwrap_or_default());
        if crc != crc32c::crc32c(&b[..CRC_AT]) {
            return Err("header checksum mismatch".into());
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let version = u32::from_le_bytes(b[8..12].try_into().unwrap_or_default());
        if version != VERSION {
            return Err(format!("version {version}, this build reads {VERSION}"));
        }
        let flags = u32::from_le_bytes(b[12..16].try_into().unwrap_or_default());
        let n = (u16::from_le_bytes([b[40], b[41]]) as usize).min(MAX_IDENTITY);
        Ok(Some(Self {
            region_size: u64_at(16),
            size: u64_at(24),
            epoch: u64_at(32),
            source: String::from_utf8_lossy(&b[42..42 + n]).into_owned(),
            complete: flags & FLAG_COMPLETE != 0,
        }))
    }
}

/// The open metadata: header, in-memory bitmap, and its store.
pub struct Metadata {
    header: Header,
    bitmap: Vec<u8>,
    store: Box<dyn MetaStore>,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata").field("header", &self.header).finish_non_exhaustive()
    }
}

impl Metadata {
    /// Opens the metadata in `store` for `want` (complete flag ignored), creating it
    /// when the store is empty or zeroed; refuses another source, epoch or geometry.
    pub fn open(store: Box<dyn MetaStore>, want: &Header) -> Result<Self> {
        let path = store.path();
        let io = |what: &'static str, path: &PathBuf| {
            let path = path.clone();
            move |source| CloneError::Io { what, path, source }
        };
        if want.region_size == 0 || !want.region_size.is_multiple_of(512) {
            return Err(CloneError::Config(format!(
                "region size {} must be a non-zero multiple of 512",
                want.region_size
            )));
        }
        let bitmap_len = want.regions().div_ceil(8) as usize;
        let len = store.len().map_err(io("size metadata", &path))?;
        let mut raw = [0u8; 512];
        if len > 0 {
            let n = len.min(512) as usize;
            store.read_at(0, &mut raw[..n]).map_err(io("read metadata", &path))?;
        }
        let found = Header::decode(&raw).map_err(|reason| CloneError::BadMetadata { path: path.clone(), reason })?;
        let Some(header) = found else {
            let header = Header { complete: false, ..want.clone() };
            let mut block = vec![0u8; HEADER_LEN as usize + bitmap_len];
            block[..512].copy_from_slice(&header.encode());
            store.write_at(0, &block).map_err(io("write metadata", &path))?;
            store.sync().map_err(io("sync metadata", &path))?;
            return Ok(Self { header, bitmap: vec![0; bitmap_len], store });
        };
        if header.source != want.source || header.epoch != want.epoch {
            return Err(CloneError::ForeignMetadata {
                path,
                found_source: header.source,
                found_epoch: header.epoch,
                want_source: want.source.clone(),
                want_epoch: want.epoch,
            });
        }
        if header.size != want.size || header.region_size != want.region_size {
            return Err(CloneError::GeometryMismatch {
                path,
                found_size: header.size,
                found_region: header.region_size,
                want_size: want.size,
                want_region: want.region_size,
            });
        }
        let mut bitmap = vec![0u8; bitmap_len];
        if len < HEADER_LEN + bitmap_len as u64 {
            return Err(CloneError::BadMetadata { path, reason: format!("truncated at {len} bytes") });
        }
        store.read_at(HEADER_LEN, &mut bitmap).map_err(io("read metadata", &path))?;
        Ok(Self { header, bitmap, store })
    }

    /// The header as stored.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Whether region `r`'s bit is set.
    pub fn is_set(&self, r: Region) -> bool {
        self.bitmap[(r / 8) as usize] & (1 << (r % 8)) != 0
    }

    /// Sets the bits of `regions` and makes them durable (one write of the touched
    /// span, then a sync). Call only after the regions' data is durable on the dest.
    pub fn persist(&mut self, regions: &[Region]) -> Result<()> {
        let mut touched = BTreeSet::new();
        for r in regions {
            self.bitmap[(r / 8) as usize] |= 1 << (r % 8);
            touched.insert((r / 8) as usize);
        }
        let (Some(&lo), Some(&hi)) = (touched.first(), touched.last()) else { return Ok(()) };
        let path = self.store.path();
        self.store.write_at(HEADER_LEN + lo as u64, &self.bitmap[lo..=hi]).map_err(|source| CloneError::Io {
            what: "write metadata bitmap",
            path: path.clone(),
            source,
        })?;
        self.store.sync().map_err(|source| CloneError::Io { what: "sync metadata", path, source })
    }

    /// Marks the clone complete (the handoff's last durable step).
    pub fn mark_complete(&mut self) -> Result<()> {
        self.header.complete = true;
        let path = self.store.path();
        self.store.write_at(0, &self.header.encode()).map_err(|source| CloneError::Io {
            what: "write metadata header",
            path: path.clone(),
            source,
        })?;
        self.store.sync().map_err(|source| CloneError::Io { what: "sync metadata", path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::FileMeta;

    fn hdr(source: &str, epoch: u64) -> Header {
        Header { region_size: 4096, size: 10 * 4096 + 100, source: source.into(), epoch, complete: false }
    }

    #[test]
    fn create_persist_reopen_and_refuse_foreign() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        let mut m = Metadata::open(Box::new(FileMeta::open(&p).unwrap()), &hdr("s", 3)).unwrap();
        assert_eq!(m.header().regions(), 11);
        m.persist(&[0, 9, 10]).unwrap();
        drop(m);
        let mut m = Metadata::open(Box::new(FileMeta::open(&p).unwrap()), &hdr("s", 3)).unwrap();
        assert!(m.is_set(0) && m.is_set(9) && m.is_set(10) && !m.is_set(1));
        m.mark_complete().unwrap();
        drop(m);
        let m = Metadata::open(Box::new(FileMeta::open(&p).unwrap()), &hdr("s", 3)).unwrap();
        assert!(m.header().complete);
        let e = Metadata::open(Box::new(FileMeta::open(&p).unwrap()), &hdr("t", 4)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("belongs to source s epoch 3, not t epoch 4"), "{msg}");
        let mut other = hdr("s", 3);
        other.region_size = 8192;
        assert!(matches!(
            Metadata::open(Box::new(FileMeta::open(&p).unwrap()), &other),
            Err(CloneError::GeometryMismatch { .. })
        ));
        std::fs::write(&p, b"garbage, not metadata").unwrap();
        assert!(matches!(
            Metadata::open(Box::new(FileMeta::open(&p).unwrap()), &hdr("s", 3)),
            Err(CloneError::BadMetadata { .. })
        ));
    }
}
