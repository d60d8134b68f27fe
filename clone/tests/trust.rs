//! Clone metadata is trusted only when intact and bound to its source and dest (see
//! the `metadata` module doc): the Trust issue's scenarios, on real files in a tempdir.
//! Each refusal names the metadata file and the fix, and leaves the dest's bytes as
//! they were.
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::pattern;
use meshdrain_clone::metadata::{BLOCK_LEN, HEADER_LEN};
use meshdrain_clone::{BlockSource, CloneError, Engine, EngineConfig, FileDest, FileMeta, FileSource, START_OVER};

const MIB: u64 = 1 << 20;

struct Files {
    _dir: tempfile::TempDir,
    src: PathBuf,
    dest: PathBuf,
    meta: PathBuf,
    data: Vec<u8>,
}

fn files(size: u64) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let (src, dest, meta) = (dir.path().join("src"), dir.path().join("dest"), dir.path().join("meta"));
    let data = pattern(17, size as usize);
    std::fs::write(&src, &data).unwrap();
    Files { _dir: dir, src, dest, meta, data }
}

fn source(f: &Files) -> Arc<dyn BlockSource> {
    Arc::new(FileSource::open(&f.src).unwrap())
}

/// No background hydration unless asked (1 KiB/s): the clone stays partial.
fn slow() -> EngineConfig {
    EngineConfig { rate_limit: Some(1024), ..Default::default() }
}

fn create(f: &Files, cfg: EngineConfig) -> Arc<Engine> {
    let s = source(f);
    let dest = FileDest::open(&f.dest, s.size()).unwrap();
    Engine::create(s, Box::new(dest), Box::new(FileMeta::create(&f.meta).unwrap()), cfg).unwrap()
}

fn resume(f: &Files, cfg: EngineConfig) -> meshdrain_clone::Result<Arc<Engine>> {
    let dest = FileDest::open_existing(&f.dest).unwrap();
    Engine::open(source(f), Box::new(dest), Box::new(FileMeta::open(&f.meta).unwrap()), cfg)
}

/// Runs a clone to its handoff (hydration and commits driven inline).
fn finish(e: &Engine) {
    e.wait_scanned();
    for _ in 0..100_000 {
        if e.try_handoff().unwrap() {
            return;
        }
        e.hydrate_step().unwrap();
        e.commit(true).unwrap();
    }
    panic!("clone did not complete");
}

/// The refusal names the file and the fix, and says what did not match.
fn assert_refused(err: &CloneError, meta: &Path, what: &str) {
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("metadata {} ", meta.display())), "{msg}");
    assert!(msg.contains(what), "want {what:?} in: {msg}");
    assert!(msg.ends_with(&format!("the dest was not touched: {START_OVER}")), "{msg}");
}

/// The first scenario: a partial clone, a workload write at 40 MiB (flushed),
/// the clone interrupted, the metadata emptied (`truncate -s 0`) or zeroed. Resuming is
/// refused and the write survives; only an explicit start-over recopies.
#[test]
fn emptied_or_zeroed_metadata_is_refused_and_the_workload_write_survives() {
    for how in ["empty", "zeroed"] {
        let f = files(48 * MIB);
        let e = create(&f, slow());
        let write = pattern(99, 64 * 1024);
        e.write(40 * MIB, &write).unwrap();
        e.flush().unwrap();
        drop(e);
        let before = std::fs::read(&f.dest).unwrap();
        assert_eq!(&before[(40 * MIB) as usize..][..write.len()], &write[..]);
        let len = std::fs::metadata(&f.meta).unwrap().len();
        match how {
            "empty" => std::fs::File::options().write(true).open(&f.meta).unwrap().set_len(0).unwrap(),
            _ => std::fs::write(&f.meta, vec![0u8; len as usize]).unwrap(),
        }
        let err = resume(&f, slow()).unwrap_err();
        let reason = if how == "empty" { "the file is empty (0 bytes)" } else { "its header is all zeros" };
        assert_refused(&err, &f.meta, reason);
        assert!(std::fs::read(&f.dest).unwrap() == before, "{how}: a refused resume changed the dest");
        // Asking again does not wear the refusal down.
        assert!(matches!(resume(&f, slow()), Err(CloneError::BadMetadata { .. })), "{how}");
        // The explicit way out recopies everything, the write included.
        finish(&create(&f, EngineConfig::default()));
        assert!(std::fs::read(&f.dest).unwrap() == f.data, "{how}: start-over did not recopy the source");
    }
}

/// The second scenario: a bitmap overwritten with ones would say "complete"
/// while the dest holds zeros; its block checksums refuse it.
#[test]
fn an_all_ones_bitmap_is_refused_by_its_checksum() {
    let f = files(4 * MIB);
    drop(create(&f, slow()));
    let mut meta = std::fs::read(&f.meta).unwrap();
    meta[HEADER_LEN as usize..].fill(0xff);
    std::fs::write(&f.meta, &meta).unwrap();
    let err = resume(&f, slow()).unwrap_err();
    assert_refused(&err, &f.meta, "bitmap block 0 (regions 0..64) fails its checksum (torn or damaged)");
    assert!(std::fs::read(&f.dest).unwrap().iter().all(|b| *b == 0), "the dest was written");
}

/// One flipped bit in a committed bitmap block is refused, naming the block.
#[test]
fn a_flipped_bitmap_bit_is_refused() {
    let f = files(4 * MIB);
    let e = create(&f, slow());
    e.write(0, &pattern(5, 64 * 1024)).unwrap();
    e.flush().unwrap();
    drop(e);
    let mut meta = std::fs::read(&f.meta).unwrap();
    assert_eq!(meta.len(), HEADER_LEN as usize + BLOCK_LEN, "one bitmap block for 64 regions");
    meta[HEADER_LEN as usize + 8] ^= 0b10; // region 1: never written
    std::fs::write(&f.meta, &meta).unwrap();
    let err = resume(&f, slow()).unwrap_err();
    assert_refused(&err, &f.meta, "bitmap block 0 (regions 0..64) fails its checksum");
}

/// A header torn mid-write (its second half from elsewhere) fails the header checksum;
/// so does a header cut short by truncation, and a file cut inside the bitmap.
#[test]
fn a_torn_header_or_a_truncated_file_is_refused() {
    let f = files(4 * MIB);
    drop(create(&f, slow()));
    let good = std::fs::read(&f.meta).unwrap();
    let mut torn = good.clone();
    torn[256..512].fill(0x5a);
    std::fs::write(&f.meta, &torn).unwrap();
    assert_refused(&resume(&f, slow()).unwrap_err(), &f.meta, "its header fails its checksum (torn or damaged)");
    std::fs::write(&f.meta, &good[..300]).unwrap();
    assert_refused(&resume(&f, slow()).unwrap_err(), &f.meta, "its header fails its checksum");
    std::fs::write(&f.meta, &good[..HEADER_LEN as usize + 100]).unwrap();
    let want = format!("it is truncated: {} bytes, {} expected for 64 regions", HEADER_LEN + 100, good.len());
    assert_refused(&resume(&f, slow()).unwrap_err(), &f.meta, &want);
    std::fs::write(&f.meta, b"garbage, not metadata").unwrap();
    assert_refused(&resume(&f, slow()).unwrap_err(), &f.meta, "it does not start with the clone metadata magic");
    std::fs::write(&f.meta, &good).unwrap();
    assert!(resume(&f, slow()).is_ok(), "the intact file resumes");
}

/// The third scenario: finished metadata reused with a new, empty dest
/// (another path, or the same path recreated) is refused, not reported complete.
#[test]
fn finished_metadata_with_a_new_empty_dest_is_refused() {
    let f = files(4 * MIB);
    finish(&create(&f, EngineConfig::default()));
    assert!(std::fs::read(&f.dest).unwrap() == f.data);
    let done = resume(&f, slow()).unwrap();
    assert_eq!(done.fetches(), 0, "a complete clone resumes without reading the source");
    drop(done);

    // Another file at the same path: another inode, no marker.
    std::fs::rename(&f.dest, f.dest.with_extension("old")).unwrap();
    std::fs::File::create(&f.dest).unwrap().set_len(4 * MIB).unwrap();
    let err = resume(&f, slow()).unwrap_err();
    assert_refused(&err, &f.meta, &format!("records progress on another dest than {}: it was inode", f.dest.display()));
    assert!(std::fs::read(&f.dest).unwrap().iter().all(|b| *b == 0), "the new dest was written");

    // Recreated empty (what a fresh `--dest` is before a clone extends it): refused.
    std::fs::remove_file(&f.dest).unwrap();
    std::fs::File::create(&f.dest).unwrap();
    let err = resume(&f, slow()).unwrap_err();
    assert_refused(&err, &f.meta, &format!("it held {} bytes, now 0", 4 * MIB));

    // The original dest, cut short, is refused as well.
    std::fs::rename(f.dest.with_extension("old"), &f.dest).unwrap();
    std::fs::File::options().write(true).open(&f.dest).unwrap().set_len(MIB).unwrap();
    assert_refused(&resume(&f, slow()).unwrap_err(), &f.meta, &format!("it held {} bytes, now {}", 4 * MIB, MIB));
}

/// The marker vouches for the dest file: a dest whose marker names another clone, or
/// that lost it, is refused even at the recorded inode.
#[test]
fn a_dest_without_its_clone_marker_is_refused() {
    let f = files(4 * MIB);
    drop(create(&f, slow()));
    assert_eq!(xattr_of(&f.dest).map(|v| v.len()), Some(16), "the tempdir's filesystem keeps user xattrs");
    set_xattr(&f.dest, &[7u8; 16]);
    assert_refused(&resume(&f, slow()).unwrap_err(), &f.meta, "the dest carries the marker of another clone");
    remove_xattr(&f.dest);
    assert_refused(&resume(&f, slow()).unwrap_err(), &f.meta, "the dest carries no clone marker");
}

/// Writes version 1 metadata (as the previous build did) with `set` regions' bits.
fn write_v1(f: &Files, source: &str, regions: u64, set: &[u64], stray: bool) {
    let mut h = [0u8; 512];
    h[0..8].copy_from_slice(b"MDCLONE\0");
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[16..24].copy_from_slice(&(64u64 * 1024).to_le_bytes());
    h[24..32].copy_from_slice(&(f.data.len() as u64).to_le_bytes());
    h[32..40].copy_from_slice(&1u64.to_le_bytes());
    h[40..42].copy_from_slice(&(source.len() as u16).to_le_bytes());
    h[42..42 + source.len()].copy_from_slice(source.as_bytes());
    let crc = crc32c::crc32c(&h[..508]);
    h[508..512].copy_from_slice(&crc.to_le_bytes());
    let mut file = vec![0u8; HEADER_LEN as usize + regions.div_ceil(8) as usize];
    file[..512].copy_from_slice(&h);
    for r in set {
        file[HEADER_LEN as usize + (r / 8) as usize] |= 1 << (r % 8);
    }
    if stray {
        *file.last_mut().unwrap() |= 0x80;
    }
    std::fs::write(&f.meta, file).unwrap();
}

/// Metadata of the previous format (version 1) resumes when it is consistent, so an
/// upgrade mid-move does not recopy; one with bits past the last region does not.
#[test]
fn version_1_metadata_resumes_when_consistent() {
    let f = files(MIB + 4096); // 17 regions: the bitmap's last byte has 7 spare bits
    let src = format!("file:{}", f.src.canonicalize().unwrap().display());
    // Regions 0 and 16 are on the dest already (as a v1 run left them).
    let mut dest = vec![0u8; f.data.len()];
    dest[..65536].copy_from_slice(&f.data[..65536]);
    dest[16 * 65536..].copy_from_slice(&f.data[16 * 65536..]);
    std::fs::write(&f.dest, &dest).unwrap();
    write_v1(&f, &src, 17, &[0, 16], false);
    let e = resume(&f, EngineConfig::default()).unwrap();
    finish(&e);
    assert_eq!(e.fetches(), 15, "the two regions marked in the v1 bitmap were not fetched again");
    drop(e);
    assert!(std::fs::read(&f.dest).unwrap() == f.data);
    assert!(resume(&f, slow()).is_ok(), "the v1 file marked complete resumes");
    write_v1(&f, &src, 17, &[0], true);
    let err = resume(&f, slow()).unwrap_err();
    assert_refused(&err, &f.meta, "its bitmap has bits set past the last of 17 regions");
}

/// The same metadata for another source or epoch names both and the fix.
#[test]
fn another_source_or_epoch_is_refused_naming_both() {
    let f = files(MIB);
    drop(create(&f, slow()));
    let err = resume(&f, EngineConfig { epoch: 2, ..slow() }).unwrap_err();
    let src = format!("file:{}", f.src.canonicalize().unwrap().display());
    assert_refused(&err, &f.meta, &format!("belongs to source {src} epoch 1, not {src} epoch 2"));
}

/// A crash while fresh metadata is written leaves the old file (or none), never a
/// half-written one: the new bytes go to `<meta>.new` until renamed over it.
#[test]
fn fresh_metadata_replaces_the_old_file_only_once_complete() {
    let f = files(MIB);
    drop(create(&f, slow()));
    let old = std::fs::read(&f.meta).unwrap();
    let store = FileMeta::create(&f.meta).unwrap();
    let pending = PathBuf::from(format!("{}.new", f.meta.display()));
    assert!(pending.exists() && std::fs::read(&f.meta).unwrap() == old, "the old metadata stays until publish");
    drop(store); // "crash": never published
    assert!(resume(&f, slow()).is_ok(), "the old metadata still resumes");
    drop(create(&f, slow()));
    assert!(!pending.exists(), "published by rename");
    assert_ne!(std::fs::read(&f.meta).unwrap(), old, "a new clone id and header");
}

fn xattr_of(p: &Path) -> Option<Vec<u8>> {
    let name = c"user.meshdrain.clone-id";
    let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: getxattr writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

fn set_xattr(p: &Path, v: &[u8]) {
    let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: setxattr reads v.len() bytes from v.
    let rc =
        unsafe { libc::setxattr(path.as_ptr(), c"user.meshdrain.clone-id".as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(rc, 0, "setxattr {}", std::io::Error::last_os_error());
}

fn remove_xattr(p: &Path) {
    let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: removexattr reads two NUL-terminated strings.
    let rc = unsafe { libc::removexattr(path.as_ptr(), c"user.meshdrain.clone-id".as_ptr()) };
    assert_eq!(rc, 0, "removexattr {}", std::io::Error::last_os_error());
}

/// A bitmap of several blocks: bits land in the right block, reopen intact, and damage
/// in the second block is refused naming it and its regions.
#[test]
fn a_multi_block_bitmap_round_trips_and_names_a_damaged_block() {
    use common::{FakeDest, FakeMeta, Faults, Image};
    use meshdrain_clone::metadata::{BLOCK_BITS, Header, Metadata};
    let regions = 40_000u64; // 5000 bytes of bits: two blocks
    let want = Header { region_size: 512, size: regions * 512, source: "s".into(), epoch: 1, complete: false };
    let dest = Image::new(vec![0; (regions * 512) as usize], Faults::new(None));
    let meta = Image::new(Vec::new(), Faults::new(None));
    let mut m = Metadata::create(Box::new(FakeMeta(meta.clone())), &want, &FakeDest(dest.clone()), [9; 16]).unwrap();
    let last_of_first = (BLOCK_BITS * 8 - 1) as u64;
    m.persist(&[0, last_of_first, last_of_first + 1, regions - 1]).unwrap();
    drop(m);
    let m = Metadata::open(Box::new(FakeMeta(meta.clone())), &want, &FakeDest(dest.clone())).unwrap();
    let set: Vec<u64> = (0..regions).filter(|r| m.is_set(*r)).collect();
    assert_eq!(set, vec![0, last_of_first, last_of_first + 1, regions - 1]);
    assert_eq!(m.version(), 2);
    drop(m);
    meta.volatile.lock().unwrap()[HEADER_LEN as usize + BLOCK_LEN + 100] ^= 1;
    let err = Metadata::open(Box::new(FakeMeta(meta)), &want, &FakeDest(dest)).unwrap_err();
    assert_refused(&err, Path::new("fake-meta"), "bitmap block 1 (regions 32704..40000) fails its checksum");
}

/// Another region size or volume size is refused naming both geometries.
#[test]
fn another_geometry_is_refused_naming_both() {
    let f = files(MIB);
    drop(create(&f, slow()));
    let err = resume(&f, EngineConfig { region_size: 128 * 1024, ..slow() }).unwrap_err();
    assert_refused(&err, &f.meta, &format!("describes {MIB} bytes in 65536-byte regions, not {MIB} in 131072"));
}
