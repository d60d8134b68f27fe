//! Crash and privileged tests of the userspace clone:
//! - kill -9 of a hydrating process (this test binary re-executed as the child),
//!   then resume from the metadata: bytes equal, nothing durable refetched;
//! - `root_*`: ext4 on a 256 MiB source served by tgtd (an independent target),
//!   read through our initiator into the clone exposed via FUSE + loop; a dest on a
//!   filesystem that fills up (stalled, naming the dest) and then grows (completes).
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshdrain_clone::expose::Exposed;
use meshdrain_clone::{Engine, EngineConfig, FileDest, FileMeta, FileSource, IscsiSource, Phase, UserspaceClone};
use meshdrain_testkit::tgtd::Tgtd;
use sha2::{Digest, Sha256};

const CHILD_ENV: &str = "MESHDRAIN_CLONE_KILL9_CHILD";

/// Resumes the clone recorded at `meta`, or starts one where there is no metadata yet
/// (as `meshdrain clone run` does).
fn open_files(src: &Path, dest: &Path, meta: &Path, cfg: EngineConfig) -> Arc<Engine> {
    let source = Arc::new(FileSource::open(src).unwrap());
    let size = meshdrain_clone::BlockSource::size(&*source);
    if meta.exists() {
        let (d, m) = (FileDest::open_existing(dest).unwrap(), FileMeta::open(meta).unwrap());
        Engine::open(source, Box::new(d), Box::new(m), cfg).unwrap()
    } else {
        let (d, m) = (FileDest::open(dest, size).unwrap(), FileMeta::create(meta).unwrap());
        Engine::create(source, Box::new(d), Box::new(m), cfg).unwrap()
    }
}

/// The child half of the kill -9 test: hydrates slowly until killed.
#[test]
fn child_hydrate_for_kill9() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let dir = PathBuf::from(dir);
    let e = open_files(
        &dir.join("src"),
        &dir.join("dest"),
        &dir.join("meta"),
        EngineConfig { rate_limit: Some(4 << 20), ..Default::default() },
    );
    let clone = UserspaceClone::start(e);
    let _ = clone.wait_complete(Duration::from_secs(60));
}

/// Bits set in the metadata's bitmap blocks (each: checksum, index, then the bits).
fn bits_set(meta: &Path) -> u32 {
    use meshdrain_clone::metadata::{BLOCK_LEN, HEADER_LEN};
    let bytes = std::fs::read(meta).unwrap_or_default();
    let blocks = bytes.get(HEADER_LEN as usize..).unwrap_or_default().chunks(BLOCK_LEN);
    blocks.map(|b| b.iter().skip(8).map(|x| x.count_ones()).sum::<u32>()).sum()
}

#[test]
fn kill9_mid_hydration_then_resume_bytes_equal() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::pattern(42, 16 << 20);
    std::fs::write(dir.path().join("src"), &data).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_hydrate_for_kill9", "--nocapture"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let meta = dir.path().join("meta");
    let deadline = Instant::now() + Duration::from_secs(30);
    while bits_set(&meta) < 40 {
        assert!(Instant::now() < deadline, "child made no durable progress in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let durable = bits_set(&meta);
    assert!(durable < 256, "child finished before the kill ({durable} regions)");
    let e = open_files(&dir.path().join("src"), &dir.path().join("dest"), &meta, EngineConfig::default());
    let clone = UserspaceClone::start(e.clone());
    let p = clone.wait_complete(Duration::from_secs(60));
    assert_eq!(p.phase, Phase::Complete, "{p:?}");
    assert!(e.fetches() <= 256 - durable as u64, "durable regions were fetched again");
    clone.stop().unwrap();
    assert!(std::fs::read(dir.path().join("dest")).unwrap() == data, "dest differs from source after resume");
}

fn require_root(what: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{what} needs root (FUSE mount, loop devices, tgtd, mount): run as root or skip with `-E 'not test(/^root_/)'`"
    );
}

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("run {cmd}: {e} (is it installed?)"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sha(p: &Path) -> String {
    let mut h = Sha256::new();
    h.update(std::fs::read(p).unwrap());
    format!("{:x}", h.finalize())
}

struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn root_ext4_over_tgtd_through_initiator_fuse_loop() {
    require_root("root_ext4_over_tgtd_through_initiator_fuse_loop");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.img");
    std::fs::File::create(&src).unwrap().set_len(256 << 20).unwrap();
    run("mkfs.ext4", &["-q", "-F", src.to_str().unwrap()]);
    let smnt = d.join("smnt");
    std::fs::create_dir(&smnt).unwrap();
    run("mount", &["-o", "loop", src.to_str().unwrap(), smnt.to_str().unwrap()]);
    let mut old = Vec::new();
    for i in 0..24u64 {
        let name = format!("old-{i}.bin");
        std::fs::write(smnt.join(&name), common::pattern(i + 1, (i as usize * 397_001) % (6 << 20) + 1)).unwrap();
        old.push((name.clone(), sha(&smnt.join(&name))));
    }
    run("umount", &[smnt.to_str().unwrap()]);

    let iqn = "iqn.2026-11.dev.meshdrain:clonetest";
    let tgt = Tgtd::start(&src, iqn);
    let url = tgt.url();
    let source = Arc::new(IscsiSource::connect(&url, Duration::from_secs(10)).expect("log in to tgtd"));
    let dest = d.join("dest.img");
    let meta = d.join("meta");
    let cfg = EngineConfig { rate_limit: Some(48 << 20), ..Default::default() };
    let size = meshdrain_clone::BlockSource::size(&*source);
    assert_eq!(size, 256 << 20);
    let e = Engine::create(
        source,
        Box::new(FileDest::open(&dest, size).unwrap()),
        Box::new(FileMeta::create(&meta).unwrap()),
        cfg,
    )
    .unwrap();
    let link = d.join("state/dev/vol");
    let exposed = Exposed::start(e.clone(), &d.join("fuse"), Some(&link)).expect("expose");
    assert_eq!(std::fs::read_link(&link).unwrap(), exposed.device());
    let clone = UserspaceClone::start(e.clone());

    let mnt = d.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run("mount", &[exposed.device().to_str().unwrap(), mnt.to_str().unwrap()]);
    let guard = Mount(mnt.clone());
    let before = clone.progress();
    for (name, want) in &old {
        assert_eq!(&sha(&mnt.join(name)), want, "{name} differs through the clone");
    }
    let mut new = Vec::new();
    for i in 0..8u64 {
        let name = format!("new-{i}.bin");
        std::fs::write(mnt.join(&name), common::pattern(1000 + i, 1 << 20)).unwrap();
        new.push((name.clone(), sha(&mnt.join(&name))));
    }
    run("sync", &[]);
    let p = clone.wait_complete(Duration::from_secs(180));
    assert_eq!(p.phase, Phase::Complete, "{p:?}");
    eprintln!("hydrated before reads: {}/{}; fetched {} bytes", before.hydrated, before.total, p.fetched_bytes);
    drop(guard);
    exposed.stop().unwrap();
    clone.stop().unwrap();
    drop(tgt);
    run("fsck.ext4", &["-fn", dest.to_str().unwrap()]);
    let vmnt = d.join("vmnt");
    std::fs::create_dir(&vmnt).unwrap();
    run("mount", &["-o", "loop,ro", dest.to_str().unwrap(), vmnt.to_str().unwrap()]);
    let _g = Mount(vmnt.clone());
    for (name, want) in old.iter().chain(new.iter()) {
        assert_eq!(&sha(&vmnt.join(name)), want, "{name} differs on the dest");
    }
}

#[test]
fn root_full_dest_filesystem_stalls_naming_the_dest_then_completes_when_space_returns() {
    require_root("root_full_dest_filesystem_stalls_naming_the_dest_then_completes_when_space_returns");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = common::pattern(29, 16 << 20);
    std::fs::write(d.join("src"), &data).unwrap();
    // The dest lives on a 4 MiB tmpfs: a quarter of the volume fits.
    let small = d.join("small");
    std::fs::create_dir(&small).unwrap();
    run("mount", &["-t", "tmpfs", "-o", "size=4M", "tmpfs", small.to_str().unwrap()]);
    let _mounted = Mount(small.clone());
    let dest = small.join("dest");
    let cfg = EngineConfig {
        core: meshdrain_clone::core::CoreConfig { stall_after: Duration::from_millis(500), ..Default::default() },
        ..Default::default()
    };
    let clone = UserspaceClone::start(open_files(&d.join("src"), &dest, &d.join("meta"), cfg));
    let deadline = Instant::now() + Duration::from_secs(30);
    let p = loop {
        let p = clone.progress();
        if p.phase == Phase::Stalled || Instant::now() > deadline {
            break p;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(p.phase, Phase::Stalled, "{p:?}");
    let why = p.last_error.clone().unwrap_or_default();
    let named = format!("dest unwritable: {}: write at byte", dest.display());
    assert!(why.starts_with(&named) && why.contains("No space left on device"), "{why}");
    assert!(p.hydrated < p.total, "{p:?}");
    // Space comes back: hydration resumes by itself and every byte arrives.
    run("mount", &["-o", "remount,size=64M", small.to_str().unwrap()]);
    let p = clone.wait_complete(Duration::from_secs(60));
    assert_eq!(p.phase, Phase::Complete, "{p:?}");
    clone.stop().unwrap();
    assert!(std::fs::read(&dest).unwrap() == data, "dest differs from source after the dest had been full");
}

/// The Trust issue's first scenario through the exposed device: a partial clone exposed
/// via FUSE + loop, the workload writes 64 KiB at 40 MiB and fsyncs, the clone stops,
/// its metadata is emptied (`truncate -s 0`). The resume is refused naming the file and
/// `--start-over`, and the workload's write is still on the dest.
#[test]
fn root_exposed_write_survives_emptied_metadata() {
    use std::os::unix::fs::FileExt;
    require_root("root_exposed_write_survives_emptied_metadata");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = common::pattern(41, 48 << 20);
    std::fs::write(d.join("src"), &data).unwrap();
    let (dest, meta) = (d.join("dest"), d.join("meta"));
    // Hydration held at 1 KiB/s: the clone stays partial.
    let slow = EngineConfig { rate_limit: Some(1024), ..Default::default() };
    let e = open_files(&d.join("src"), &dest, &meta, slow.clone());
    let clone = UserspaceClone::start(e.clone());
    let exposed = Exposed::start(e.clone(), &d.join("fuse"), None).expect("expose");
    let write = common::pattern(77, 64 << 10);
    let dev = std::fs::OpenOptions::new().write(true).open(exposed.device()).unwrap();
    dev.write_all_at(&write, 40 << 20).unwrap();
    dev.sync_all().unwrap();
    drop(dev);
    exposed.stop().unwrap();
    clone.stop().unwrap();
    drop(e);
    let before = std::fs::read(&dest).unwrap();
    assert!(before[40 << 20..][..write.len()] == write[..], "the workload's write is not on the dest");
    assert!(before != data, "the clone was not partial");
    std::fs::File::options().write(true).open(&meta).unwrap().set_len(0).unwrap();

    let source = Arc::new(FileSource::open(&d.join("src")).unwrap());
    let err = Engine::open(
        source,
        Box::new(FileDest::open_existing(&dest).unwrap()),
        Box::new(FileMeta::open(&meta).unwrap()),
        slow,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "metadata {} cannot be resumed: the file is empty (0 bytes); the dest was not touched: {}",
            meta.display(),
            meshdrain_clone::START_OVER
        )
    );
    assert!(std::fs::read(&dest).unwrap() == before, "the refused resume changed the dest");
}
