//! The holder's part of returns (docs/return.md): every clone it creates tracks the
//! workload's writes in a durable set next to its metadata (`<volume>.clone-written`,
//! meshdrain_clone::written), reopened when the holder is restarted from its metadata; it
//! answers the agent's `written` request; and a clone of a return starts over the copy
//! this node kept, fetching only the regions written since.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use meshdrain_clone::written::{Written, coarsen};
use meshdrain_clone::{BlockSource, CloneError, Engine, EngineConfig, FileDest, FileMeta, ReconnectingSource};
use tracing::{info, warn};

use super::protocol::{HolderSpec, MAX_WRITTEN_RANGES, Reply, WrittenReply};
use crate::decide::returns::ReturnPlan;

/// Where the written set of a clone lives: beside its metadata.
pub(super) fn written_path(spec: &HolderSpec) -> PathBuf {
    spec.clone_spec.metadata.with_extension("clone-written")
}

/// Attaches write tracking to `engine`: a fresh set for a clone just `created`, else the
/// set the holder before this one kept (refused, and so no tracking, if it is not this
/// very clone's). Never fails the clone: without tracking a return is a full move.
pub(super) fn track(spec: &HolderSpec, engine: &Engine, created: bool) {
    let path = written_path(spec);
    let volume = &spec.clone_spec.volume;
    let Some(bind) = engine.written_binding() else {
        info!(%volume, "no write tracking: version 1 clone metadata has no clone id to bind it to");
        return;
    };
    let set = if created {
        FileMeta::create(&path).and_then(|store| Written::create(Box::new(store), bind)).map_err(|e| e.to_string())
    } else {
        FileMeta::open(&path).map_err(|e| e.to_string()).and_then(|store| Written::open(Box::new(store), bind))
    };
    match set.and_then(|set| engine.track_writes(set).map_err(|e| e.to_string())) {
        Ok(()) => info!(%volume, path = %path.display(), "tracking the workload's writes (for a cheap return)"),
        Err(e) => {
            info!(%volume, path = %path.display(), "no write tracking (a return will be a full move): {e}");
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The `written` request: the tracked ranges, coarsened to fit a reply. A set whose file
/// was removed (the agent dropped it: the volume was used outside this engine) is
/// dropped here too.
pub(super) fn reply(spec: &HolderSpec, engine: &Engine) -> Reply {
    if !written_path(spec).exists() {
        let _ = engine.stop_tracking("its file was removed (the volume was used outside this clone engine)");
    }
    let Some(w) = engine.written_since() else {
        return Reply::err("this clone does not track its writes (its set was lost or refused)");
    };
    let ranges = coarsen(w.ranges, MAX_WRITTEN_RANGES).into_iter().map(|r| [r.start, r.end - r.start]).collect();
    let written = WrittenReply { clone: hex::encode(w.binding.clone_id), epoch: w.binding.epoch, ranges };
    Reply { written: Some(written), ..Reply::ok() }
}

/// What [`open_over_kept`] made of a return.
#[derive(Debug)]
pub(super) enum OverKept {
    /// The clone over the copy kept here (created, or resumed from this lease's metadata).
    Opened(Arc<Engine>),
    /// Not a delta: the ordinary path (a full clone) goes on.
    NotDelta,
    /// A delta was planned but the copy kept here is not trusted: the ordinary path (a full
    /// clone) goes on, and the holder publishes why (docs/return.md).
    Refused(String),
}

/// A return's clone over the copy kept here (`spec.clone_spec.base` is a delta): resumed
/// when this lease's metadata exists; else created over the copy, whose bits are set for
/// every region outside the written ranges, provided the copy is the very one handed
/// off (its inode unchanged since: a copy touched since is not trusted, [`OverKept::Refused`]).
pub(super) fn open_over_kept(
    spec: &HolderSpec,
    source: &Arc<dyn BlockSource>,
    cfg: &EngineConfig,
    reading: Option<&ReconnectingSource>,
) -> Result<OverKept, String> {
    let Some(ReturnPlan::Delta { grain, bits, since_ms }) = &spec.clone_spec.base else {
        return Ok(OverKept::NotDelta);
    };
    // Checked when the grant was taken; checked again: the spec file is the only input here.
    let stale = crate::decide::returns::decode(bits, spec.clone_spec.size, *grain)?;
    let (dest_path, meta_path) = (&spec.clone_spec.dest, &spec.clone_spec.metadata);
    let volume = &spec.clone_spec.volume;
    if meta_path.exists() {
        let dest = FileDest::open_existing(dest_path).map_err(|e| format!("dest {}: {e}", dest_path.display()))?;
        let meta = FileMeta::open(meta_path).map_err(|e| format!("metadata {}: {e}", meta_path.display()))?;
        match Engine::open(source.clone(), Box::new(dest), Box::new(meta), cfg.clone()) {
            Ok(engine) => {
                track(spec, &engine, false);
                return Ok(OverKept::Opened(engine));
            }
            Err(CloneError::ForeignMetadata { .. }) => {} // the copy's own, older metadata
            Err(e) => return Err(e.to_string()),
        }
    }
    if let Err(why) = untouched(dest_path, spec.clone_spec.size, *since_ms) {
        warn!(%volume, "return: full move: {why}");
        return Ok(OverKept::Refused(why));
    }
    if spec.clone_spec.verify
        && let Some(source) = reading
    {
        // --verify: the regions kept count as read, so the owner's check covers them.
        digest_kept(dest_path, spec.clone_spec.size, &stale, source)?;
    }
    if meta_path.exists() {
        std::fs::remove_file(meta_path).map_err(|e| format!("metadata {}: {e}", meta_path.display()))?;
    }
    let dest =
        FileDest::open(dest_path, spec.clone_spec.size).map_err(|e| format!("dest {}: {e}", dest_path.display()))?;
    let meta = FileMeta::create(meta_path).map_err(|e| format!("metadata {}: {e}", meta_path.display()))?;
    let engine = Engine::create_over(source.clone(), Box::new(dest), Box::new(meta), cfg.clone(), &stale)
        .map_err(|e| e.to_string())?;
    let bytes: u64 = stale.iter().map(|r| r.end - r.start).sum();
    info!(%volume, ranges = stale.len(), bytes, "return: cloning over the copy kept here; only the regions written since it was handed off are fetched");
    track(spec, &engine, true);
    Ok(OverKept::Opened(engine))
}

/// Feeds the `--verify` digest every byte of the kept copy outside `stale`, region by region
/// (a region that `stale` touches is left to the source, read when fetched or at the end).
fn digest_kept(
    path: &std::path::Path,
    size: u64,
    stale: &[std::ops::Range<u64>],
    source: &ReconnectingSource,
) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    const GRAIN: u64 = 64 << 10; // a multiple of any region size the digest uses
    let file = std::fs::File::open(path).map_err(|e| format!("the copy kept here ({}): {e}", path.display()))?;
    let mut buf = vec![0u8; GRAIN as usize];
    let mut at = 0;
    while at < size {
        let len = GRAIN.min(size - at);
        if !stale.iter().any(|s| s.start < at + len && at < s.end) {
            file.read_exact_at(&mut buf[..len as usize], at).map_err(|e| format!("the copy kept here: {e}"))?;
            source.feed_digest(at, &buf[..len as usize]);
        }
        at += len;
    }
    Ok(())
}

/// Whether the file at `path` is the copy handed off at `since_ms`: it exists, holds the
/// volume, and its inode has not changed since (ctime: any write, truncation, rename over
/// it, or attribute change moves it).
fn untouched(path: &std::path::Path, size: u64, since_ms: u64) -> Result<(), String> {
    let m = std::fs::metadata(path).map_err(|e| format!("the copy kept here ({}) is gone: {e}", path.display()))?;
    if m.len() < size {
        return Err(format!("the copy kept here ({}) is {} bytes, the volume {size}", path.display(), m.len()));
    }
    let ctime_ms = (m.ctime().max(0) as u64) * 1000 + (m.ctime_nsec().max(0) as u64) / 1_000_000;
    if ctime_ms > since_ms {
        return Err(format!(
            "the copy kept here ({}) changed {} ms after it was handed off",
            path.display(),
            ctime_ms - since_ms
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use meshdrain_clone::FileSource;

    use super::*;
    use crate::dataplane::executor::CloneSpec;
    use crate::decide::model::ExportEndpoint;

    const SIZE: u64 = 1 << 20;

    fn spec(dir: &Path, base: Option<ReturnPlan>) -> HolderSpec {
        let clone_spec = CloneSpec {
            volume: "a".into(),
            export: ExportEndpoint { addr: "10.0.0.2:3260".into(), iqn: "iqn.x:n2.a".into() },
            initiator_iqn: "iqn.x:n1.a.e4".into(),
            epoch: 4,
            size: SIZE,
            dest: dir.join("a.img"),
            metadata: dir.join("a.clone-meta"),
            rate_limit: None,
            verify: false,
            base,
        };
        HolderSpec {
            clone_spec,
            region_size: 65536,
            parallelism: 1,
            batch_regions: 1,
            read_through: true,
            prepare_delay_ms: 0,
            mountpoint: dir.join("fuse"),
            link: dir.join("dev"),
            hydrating: false,
            workload_started: false,
            start_hook: None,
            source_lost: false,
            expose: Default::default(),
        }
    }

    /// docs/return.md: the holder, not the plan, has the last word; what it says is what
    /// the agent publishes (`return_full` in its state, `DataEvent::ReturnFull`).
    #[test]
    fn a_kept_copy_changed_since_its_hand_off_makes_the_return_a_full_move_that_says_why() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("src"), vec![7u8; SIZE as usize]).unwrap();
        let dest = dir.path().join("a.img");
        std::fs::write(&dest, vec![1u8; SIZE as usize]).unwrap();
        let m = std::fs::metadata(&dest).unwrap();
        let ctime_ms = m.ctime() as u64 * 1000 + m.ctime_nsec() as u64 / 1_000_000;
        let source: Arc<dyn BlockSource> = Arc::new(FileSource::open(&dir.path().join("src")).unwrap());
        let cfg = EngineConfig { region_size: 65536, epoch: 4, ..Default::default() };
        let bits = crate::decide::returns::encode(std::slice::from_ref(&(0..65536)), SIZE, 65536);
        let delta = |since_ms| Some(ReturnPlan::Delta { grain: 65536, bits: bits.clone(), since_ms });

        // Handed off an hour before the copy's inode last changed: not trusted.
        let s = spec(dir.path(), delta(ctime_ms - 3_600_000));
        match open_over_kept(&s, &source, &cfg, None).unwrap() {
            OverKept::Refused(why) => assert_eq!(
                why,
                format!("the copy kept here ({}) changed 3600000 ms after it was handed off", dest.display())
            ),
            other => panic!("a touched copy must be refused, got {other:?}"),
        }
        assert!(!dir.path().join("a.clone-meta").exists(), "nothing is cloned over a refused copy");
        assert_eq!(std::fs::read(&dest).unwrap(), vec![1u8; SIZE as usize]);

        // Gone: refused too, naming the path.
        let gone = spec(&dir.path().join("nowhere"), delta(ctime_ms));
        assert!(
            matches!(open_over_kept(&gone, &source, &cfg, None).unwrap(), OverKept::Refused(why) if why.contains("is gone")),
        );
        // A full plan is not the holder's to change.
        let full = spec(dir.path(), Some(ReturnPlan::Full { reason: "x".into() }));
        assert!(matches!(open_over_kept(&full, &source, &cfg, None).unwrap(), OverKept::NotDelta));
        // Untouched since its hand-off: the clone goes over the copy; only the written region is missing.
        let s = spec(dir.path(), delta(ctime_ms));
        let OverKept::Opened(engine) = open_over_kept(&s, &source, &cfg, None).unwrap() else {
            panic!("an untouched copy is cloned over")
        };
        let mut got = vec![0u8; SIZE as usize];
        engine.read(0, &mut got).unwrap();
        assert_eq!(engine.fetches(), 1, "only the written region comes from the owner");
        assert!(got[..65536].iter().all(|b| *b == 7) && got[65536..].iter().all(|b| *b == 1));
    }
}
