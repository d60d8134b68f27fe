//! Clone metadata (clone/src/metadata.rs) resumed from arbitrary bytes through an
//! in-memory `MetaStore` and `Dest`, as a restart after a crash, a torn write or a
//! tampered disk would see it: "nothing on disk is trusted without a checksum"
//! (docs/threat-model.md).
//! Invariants: never panics; an empty or zeroed store is refused (only `create` starts a
//! clone); whatever opens matches the wanted source, epoch and geometry; metadata we
//! created reopens with exactly the persisted regions and complete flag; any damage either
//! leaves those bits exact or is refused (never a region claimed that was not persisted,
//! never one lost); a truncated store or another dest is refused.
//! Input: `[mode][region sel][size u32 LE][epoch][persist count]` then mode bit 0 clear:
//! the raw store bytes; set: XOR patches `[u16 LE offset][xor byte]` on metadata we
//! created (bit 1: mark complete, bit 2: truncate at the first patch's offset, bit 3: the
//! dest names itself, bit 4: resume onto a dest of another size).
//! The volume size is bounded so the bitmap spans at most two blocks: it is sized from
//! the caller's geometry, never from the file.
#![no_main]

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use meshdrain_clone::identity::{CLONE_ID_LEN, DestIdentity, DestKind};
use meshdrain_clone::metadata::{BLOCK_BITS, Header, Metadata};
use meshdrain_clone::{CloneError, Dest, MetaStore};

#[derive(Clone, Default)]
struct MemMeta(Arc<Mutex<Vec<u8>>>);

impl MetaStore for MemMeta {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.lock().expect("lock").len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let v = self.0.lock().expect("lock");
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| v.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut v = self.0.lock().expect("lock");
        let end = offset as usize + data.len();
        if v.len() < end {
            v.resize(end, 0);
        }
        v[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("/fuzz/clone.meta")
    }
}

/// A dest that only answers identity questions (the metadata never touches its data).
struct MemDest {
    size: u64,
    named: bool,
    marker: Mutex<Option<[u8; CLONE_ID_LEN]>>,
}

impl Dest for MemDest {
    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }
    fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other("the metadata does not read the dest"))
    }
    fn write_at(&self, _: u64, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other("the metadata does not write the dest"))
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn punch(&self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn identity(&self) -> Option<DestIdentity> {
        self.named.then_some(DestIdentity {
            kind: DestKind::File,
            dev: 9,
            ino: 42,
            born: Some((1, 2)),
            size: self.size,
        })
    }
    fn set_marker(&self, id: &[u8; CLONE_ID_LEN]) -> io::Result<bool> {
        *self.marker.lock().expect("lock") = Some(*id);
        Ok(self.named)
    }
    fn marker(&self) -> io::Result<Option<[u8; CLONE_ID_LEN]>> {
        Ok(*self.marker.lock().expect("lock"))
    }
}

fn open(store: &MemMeta, want: &Header, dest: &MemDest) -> meshdrain_clone::Result<Metadata> {
    Metadata::open(Box::new(store.clone()), want, dest)
}

fn bytes(store: &MemMeta) -> std::sync::MutexGuard<'_, Vec<u8>> {
    store.0.lock().expect("lock")
}

fuzz_target!(|data: &[u8]| {
    let [mode, rsel, s0, s1, s2, s3, epoch, count, ref rest @ ..] = *data else { return };
    let region_size = match rsel {
        0xff => 1000,
        0xfe => 0,
        _ => 512 * (1 + u64::from(rsel % 16)),
    };
    let max_size = region_size.max(1) * 8 * 2 * BLOCK_BITS as u64;
    let size = u64::from(u32::from_le_bytes([s0, s1, s2, s3])) % (max_size + 1);
    let source = format!("iqn.fuzz:src{}", epoch % 3);
    let want = Header { region_size, size, source, epoch: u64::from(epoch / 3), complete: false };
    let dest = MemDest { size: size + 4096, named: mode & 8 != 0, marker: Mutex::new(None) };
    if region_size == 0 || region_size % 512 != 0 {
        assert!(matches!(open(&MemMeta::default(), &want, &dest), Err(CloneError::Config(_))));
        return;
    }
    let regions = want.regions();
    if mode & 1 == 0 {
        let store = MemMeta(Arc::new(Mutex::new(rest.to_vec())));
        match open(&store, &want, &dest) {
            Ok(m) => {
                let h = m.header();
                assert_eq!(
                    (&h.source, h.epoch, h.size, h.region_size),
                    (&want.source, want.epoch, want.size, want.region_size)
                );
                assert!(rest.iter().any(|b| *b != 0));
                let _ = (0..regions).filter(|r| m.is_set(*r)).count();
            }
            Err(CloneError::Io { .. }) => panic!("in-memory store cannot fail"),
            Err(e) => {
                if rest.iter().take(512).all(|b| *b == 0) {
                    assert!(matches!(e, CloneError::BadMetadata { .. }), "{e}");
                }
            }
        }
        assert_eq!(&bytes(&store)[..], rest, "a refused or resumed open wrote to the store");
        return;
    }
    let store = MemMeta::default();
    let clone_id = [epoch ^ 0x5a; CLONE_ID_LEN];
    let mut m = Metadata::create(Box::new(store.clone()), &want, &dest, clone_id).expect("fresh metadata");
    let persisted: Vec<u64> = if regions == 0 {
        Vec::new()
    } else {
        (0..u64::from(count)).map(|i| (i * 7919 + u64::from(count) * 131) % regions).collect()
    };
    m.persist(&persisted).expect("persist");
    if mode & 2 != 0 {
        m.mark_complete().expect("mark complete");
    }
    drop(m);
    let len = bytes(&store).len();
    let patches: Vec<(usize, u8)> =
        rest.chunks_exact(3).map(|p| (u16::from_le_bytes([p[0], p[1]]) as usize % len, p[2])).collect();
    if mode & 4 != 0 {
        let cut = patches.first().map_or(0, |p| p.0);
        bytes(&store).truncate(cut);
        let r = open(&store, &want, &dest);
        assert!(matches!(r, Err(CloneError::BadMetadata { .. })), "store truncated at {cut} of {len}: {r:?}");
        return;
    }
    let original = bytes(&store).clone();
    for (at, x) in &patches {
        bytes(&store)[*at] ^= x;
    }
    let moved =
        MemDest { size: dest.size + 512, named: dest.named, marker: Mutex::new(*dest.marker.lock().expect("lock")) };
    let r = open(&store, &want, if mode & 16 != 0 { &moved } else { &dest });
    match r {
        Ok(m) => {
            assert!(mode & 16 == 0, "resumed onto another dest");
            assert_eq!(m.header().complete, mode & 2 != 0);
            let mut want_set = vec![false; regions as usize];
            for r in &persisted {
                want_set[*r as usize] = true;
            }
            for (r, set) in want_set.into_iter().enumerate() {
                assert_eq!(m.is_set(r as u64), set, "region {r} after patches {patches:?}");
            }
        }
        Err(CloneError::Io { .. }) => panic!("in-memory store cannot fail"),
        Err(e) => {
            let unchanged = *bytes(&store) == original;
            assert!(!unchanged || mode & 16 != 0, "our own metadata refused: {e}");
        }
    }
});
