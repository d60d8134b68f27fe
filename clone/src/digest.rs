//! `drain --verify`: a digest of a volume's bytes as the holder read them from the source,
//! which the source checks against its own copy before it accepts `done`.
//!
//! The holder cannot digest its dest at the end: the workload has been writing to it since
//! the cut-over. So it digests the source's bytes as they pass through its initiator, in
//! whatever order hydration and the workload's reads fetch them, and at the end reads the
//! regions it never fetched (those the workload overwrote whole, or fetched before an agent
//! restart) once more from the source; regions the source reported deallocated are zeros.
//!
//! The digest is order-independent: for region `i` with bytes `b`, `e_i =
//! sha256(le64(i) ‖ sha256(b))`, and the digest is the sum of all `e_i` modulo 2^256.
//! Every region is added exactly once (a bitmap), so a region fetched twice (a retried
//! read) cannot cancel out. It detects corrupted or misplaced regions; it is not meant to
//! resist an adversary choosing the data (WireGuard authenticates every byte in flight).
//! Rendered as `sha256-regions-v1:<region size>:<volume size>:<hex>`.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// The scheme tag, so a future scheme is refused clearly rather than compared.
const SCHEME: &str = "sha256-regions-v1";

/// A volume digest under construction.
#[derive(Debug)]
pub struct VolumeDigest {
    region_size: u64,
    size: u64,
    /// Little-endian 64-bit limbs of the running sum.
    sum: [u64; 4],
    /// Regions already added.
    added: Vec<u64>,
    /// Regions whose bytes are arriving in pieces: hasher and bytes seen so far.
    partial: HashMap<u64, (Sha256, u64)>,
    /// Regions [`Self::complete`] had to read (not seen in passing, not deallocated).
    read_again: u64,
}

impl VolumeDigest {
    /// An empty digest of a `size`-byte volume in regions of `region_size` bytes.
    pub fn new(size: u64, region_size: u64) -> Self {
        let regions = size.div_ceil(region_size);
        Self {
            region_size,
            size,
            sum: [0; 4],
            added: vec![0; regions.div_ceil(64) as usize],
            partial: HashMap::new(),
            read_again: 0,
        }
    }

    fn regions(&self) -> u64 {
        self.size.div_ceil(self.region_size)
    }

    fn region_len(&self, index: u64) -> u64 {
        self.region_size.min(self.size - index * self.region_size)
    }

    fn is_added(&self, index: u64) -> bool {
        self.added[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Feeds bytes read from the source at `offset`. A region counts once all its bytes
    /// arrived in order; pieces out of order (a sub-region read) leave it to
    /// [`Self::complete`].
    pub fn feed(&mut self, mut offset: u64, mut data: &[u8]) {
        while !data.is_empty() && offset < self.size {
            let index = offset / self.region_size;
            let start = index * self.region_size;
            let len = self.region_len(index);
            let take = data.len().min((start + len - offset) as usize);
            let (piece, rest) = data.split_at(take);
            if !self.is_added(index) {
                let seen = self.partial.get(&index).map_or(0, |(_, n)| *n);
                if offset == start + seen {
                    let entry = self.partial.entry(index).or_insert_with(|| (Sha256::new(), 0));
                    entry.0.update(piece);
                    entry.1 += take as u64;
                    if entry.1 == len {
                        let (hasher, _) = self.partial.remove(&index).expect("present");
                        self.add(index, hasher.finalize().into());
                    }
                } else if offset == start {
                    // A new read of the region from its start: begin again.
                    let mut hasher = Sha256::new();
                    hasher.update(piece);
                    self.partial.insert(index, (hasher, take as u64));
                    if take as u64 == len {
                        let (hasher, _) = self.partial.remove(&index).expect("present");
                        self.add(index, hasher.finalize().into());
                    }
                } else {
                    self.partial.remove(&index);
                }
            }
            offset += take as u64;
            data = rest;
        }
    }

    /// Adds region `index` whose bytes hash to `inner`, unless it was added already.
    fn add(&mut self, index: u64, inner: [u8; 32]) {
        if self.is_added(index) {
            return;
        }
        self.added[(index / 64) as usize] |= 1 << (index % 64);
        let mut outer = Sha256::new();
        outer.update(index.to_le_bytes());
        outer.update(inner);
        let e: [u8; 32] = outer.finalize().into();
        let mut carry = 0u128;
        for (limb, chunk) in self.sum.iter_mut().zip(e.chunks_exact(8)) {
            let v = u128::from(*limb) + u128::from(u64::from_le_bytes(chunk.try_into().expect("8 bytes"))) + carry;
            *limb = v as u64;
            carry = v >> 64;
        }
    }

    /// Regions not added yet.
    pub fn missing(&self) -> Vec<u64> {
        (0..self.regions()).filter(|i| !self.is_added(*i)).collect()
    }

    /// Finishes the digest: regions wholly inside `deallocated` are zeros; every other
    /// missing region is read with `read` (from the source). Returns the rendered digest.
    pub fn complete(
        &mut self,
        deallocated: &[std::ops::Range<u64>],
        mut read: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<String> {
        let mut buf = vec![0u8; self.region_size as usize];
        let mut zeros: HashMap<u64, [u8; 32]> = HashMap::new();
        for index in self.missing() {
            let start = index * self.region_size;
            let len = self.region_len(index);
            let hole = deallocated.iter().any(|r| r.start <= start && start + len <= r.end);
            let inner = if hole {
                *zeros.entry(len).or_insert_with(|| Sha256::digest(vec![0u8; len as usize]).into())
            } else {
                read(start, &mut buf[..len as usize])?;
                self.read_again += 1;
                Sha256::digest(&buf[..len as usize]).into()
            };
            self.add(index, inner);
        }
        Ok(self.render())
    }

    /// How many regions [`Self::complete`] read from the source again.
    pub fn read_again(&self) -> u64 {
        self.read_again
    }

    fn render(&self) -> String {
        let mut hex = String::with_capacity(64);
        for limb in self.sum.iter().rev() {
            hex.push_str(&format!("{limb:016x}"));
        }
        format!("{SCHEME}:{}:{}:{hex}", self.region_size, self.size)
    }
}

/// Region size and volume size of a rendered digest; the error names what is wrong.
fn parse(digest: &str) -> Result<(u64, u64), String> {
    let mut parts = digest.split(':');
    let (Some(scheme), Some(region), Some(size), Some(hex), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("digest {digest:?} is not `{SCHEME}:<region>:<size>:<hex>`"));
    };
    if scheme != SCHEME {
        return Err(format!("digest scheme {scheme:?} is not understood (this agent knows {SCHEME}); upgrade it"));
    }
    let region: u64 = region.parse().map_err(|_| format!("digest region size {region:?} is not a number"))?;
    let size: u64 = size.parse().map_err(|_| format!("digest volume size {size:?} is not a number"))?;
    if region == 0 || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("digest {digest:?} is malformed"));
    }
    Ok((region, size))
}

/// Digests the first `size` bytes of the file or device at `path` the way a holder does,
/// skipping holes (they read as zeros) without reading them.
pub fn digest_file(path: &Path, size: u64, region_size: u64) -> io::Result<String> {
    let f = File::open(path)?;
    let mut d = VolumeDigest::new(size, region_size);
    let holes = holes(&f, size);
    d.complete(&holes, |offset, buf| f.read_exact_at(buf, offset))
}

/// Compares the holder's `digest` with the copy at `path`; `Err` says how they differ.
pub fn check_copy(path: &Path, digest: &str) -> Result<(), String> {
    let (region, size) = parse(digest)?;
    let ours = digest_file(path, size, region).map_err(|e| format!("cannot digest {}: {e}", path.display()))?;
    if ours == digest {
        Ok(())
    } else {
        Err(format!(
            "the holder read other bytes than {} holds (holder {digest}, here {ours}); the copy here is kept: \
             compare the two copies, then run the drain again without --verify to accept the holder's",
            path.display()
        ))
    }
}

/// Byte ranges in holes of `f` (SEEK_DATA/SEEK_HOLE); none if the filesystem cannot tell.
fn holes(f: &File, size: u64) -> Vec<std::ops::Range<u64>> {
    use nix::unistd::{Whence, lseek};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match lseek(f, pos as i64, Whence::SeekData) {
            Ok(data) => data,
            Err(nix::errno::Errno::ENXIO) => {
                out.push(pos..size); // no data past `pos`
                break;
            }
            Err(_) => break, // cannot tell: claim no more holes (reading zeros is safe)
        };
        let data = data as u64;
        if data > pos {
            out.push(pos..data.min(size));
        }
        let Ok(hole) = lseek(f, data as i64, Whence::SeekHole) else { break };
        pos = hole as u64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n as u64).map(|i| ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8).wrapping_add(seed)).collect()
    }

    #[test]
    fn order_and_piece_size_do_not_matter_and_the_file_digest_agrees() {
        let size = 10 * 4096 + 100;
        let data = bytes(size, 7);
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), &data).unwrap();
        let from_file = digest_file(tmp.path(), size as u64, 4096).unwrap();

        // Regions fed backwards, in uneven pieces, one region twice, one never (read at the end).
        let mut d = VolumeDigest::new(size as u64, 4096);
        for r in (1..11).rev() {
            let start = r * 4096;
            let end = (start + 4096).min(size);
            for chunk_start in (start..end).step_by(1000) {
                d.feed(chunk_start as u64, &data[chunk_start..(chunk_start + 1000).min(end)]);
            }
        }
        d.feed(4096, &data[4096..8192]);
        assert_eq!(d.missing(), vec![0]);
        let done = d
            .complete(&[], |o, buf| {
                buf.copy_from_slice(&data[o as usize..o as usize + buf.len()]);
                Ok(())
            })
            .unwrap();
        assert_eq!(done, from_file);
        assert!(check_copy(tmp.path(), &done).is_ok());
    }

    #[test]
    fn a_changed_byte_or_a_swapped_region_is_caught_with_a_clear_error() {
        let size = 8 * 4096;
        let data = bytes(size, 3);
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), &data).unwrap();
        let good = digest_file(tmp.path(), size as u64, 4096).unwrap();

        let mut changed = data.clone();
        changed[5 * 4096 + 17] ^= 1;
        let mut d = VolumeDigest::new(size as u64, 4096);
        d.feed(0, &changed);
        let bad = d.complete(&[], |_, _| unreachable!("all fed")).unwrap();
        assert_ne!(bad, good);
        let err = check_copy(tmp.path(), &bad).unwrap_err();
        assert!(err.contains("the holder read other bytes") && err.contains("without --verify"), "{err}");

        let mut swapped = data.clone();
        swapped.copy_within(0..4096, 4096);
        swapped[..4096].copy_from_slice(&data[4096..8192]);
        let mut d = VolumeDigest::new(size as u64, 4096);
        d.feed(0, &swapped);
        assert_ne!(d.complete(&[], |_, _| unreachable!()).unwrap(), good);
    }

    #[test]
    fn holes_count_as_zeros_on_both_sides() {
        let size = 64 * 4096u64;
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let f = tmp.as_file();
        f.set_len(size).unwrap();
        f.write_all_at(&bytes(4096, 9), 10 * 4096).unwrap();
        let from_file = digest_file(tmp.path(), size, 4096).unwrap();
        let mut d = VolumeDigest::new(size, 4096);
        d.feed(10 * 4096, &bytes(4096, 9));
        // The source reported everything but region 10 deallocated.
        let dealloc = [0..10 * 4096, 11 * 4096..size];
        assert_eq!(d.complete(&dealloc, |_, _| unreachable!("nothing to read")).unwrap(), from_file);
    }

    #[test]
    fn malformed_digests_name_the_problem() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        assert!(check_copy(tmp.path(), "nonsense").unwrap_err().contains("is not `sha256-regions-v1"));
        assert!(check_copy(tmp.path(), "md5:1:1:00").unwrap_err().contains("not understood"));
        let short = format!("{SCHEME}:4096:x:{}", "0".repeat(64));
        assert!(check_copy(tmp.path(), &short).unwrap_err().contains("volume size \"x\""));
    }
}
