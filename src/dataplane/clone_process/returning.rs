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

/// A return's clone over the copy kept here (`spec.clone_spec.base` is a delta): resumed
/// when this lease's metadata exists; else created over the copy, whose bits are set for
/// every region outside the written ranges, provided the copy is the very one handed
/// off (its inode unchanged since: a copy touched since is not trusted). `Ok(None)`: not
/// applicable, the ordinary path (a full clone) goes on.
pub(super) fn open_over_kept(
    spec: &HolderSpec,
    source: &Arc<dyn BlockSource>,
    cfg: &EngineConfig,
    reading: Option<&ReconnectingSource>,
) -> Result<Option<Arc<Engine>>, String> {
    let Some(ReturnPlan::Delta { grain, bits, since_ms }) = &spec.clone_spec.base else { return Ok(None) };
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
                return Ok(Some(engine));
            }
            Err(CloneError::ForeignMetadata { .. }) => {} // the copy's own, older metadata
            Err(e) => return Err(e.to_string()),
        }
    }
    if let Err(why) = untouched(dest_path, spec.clone_spec.size, *since_ms) {
        warn!(%volume, "return: full move: {why}");
        return Ok(None);
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
    Ok(Some(engine))
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
