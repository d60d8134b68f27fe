//! The engine's side of write tracking ([`crate::written`], docs/return.md): attach a
//! durable written set to a clone, mark regions before a workload write is acknowledged,
//! and hand the set out when the volume moves back to the node it came from.
use std::ops::Range;

use crate::core::Region;
use crate::engine::Engine;
use crate::error::{CloneError, Result};
use crate::written::{Binding, Written};

/// What a tracking engine says about the workload's writes since its clone was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenSince {
    /// What the set is bound to (clone id, epoch, geometry).
    pub binding: Binding,
    /// The written byte ranges, ascending, neighbours merged.
    pub ranges: Vec<Range<u64>>,
}

impl Engine {
    /// The clone id of this engine's metadata (`None` for version 1 metadata, which
    /// cannot bind a written set).
    pub fn clone_id(&self) -> Option<[u8; crate::identity::CLONE_ID_LEN]> {
        self.lock_meta().clone_id()
    }

    /// What a written set of this clone must be bound to.
    pub fn written_binding(&self) -> Option<Binding> {
        let clone_id = self.clone_id()?;
        Some(Binding { clone_id, epoch: self.cfg.epoch, size: self.size, region_size: self.cfg.region_size })
    }

    /// Tracks the workload's writes in `set` from now on. Refused when `set` belongs to
    /// another clone.
    pub fn track_writes(&self, set: Written) -> Result<()> {
        if Some(set.binding()) != self.written_binding() {
            return Err(CloneError::Config(format!("written set {} belongs to another clone", set.path().display())));
        }
        *self.written.lock().unwrap_or_else(|p| p.into_inner()) = Some(set);
        Ok(())
    }

    /// The tracked writes, or `None` when this engine does not track them (never
    /// attached, or invalidated).
    pub fn written_since(&self) -> Option<WrittenSince> {
        let w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        w.as_ref().map(|w| WrittenSince { binding: w.binding(), ranges: w.ranges() })
    }

    /// Stops tracking and removes the set's file, so nobody trusts it later (the volume
    /// is about to be exposed some other way). Errors if the file cannot be removed.
    pub fn stop_tracking(&self, why: &str) -> std::io::Result<()> {
        let Some(w) = self.written.lock().unwrap_or_else(|p| p.into_inner()).take() else { return Ok(()) };
        tracing::warn!(parent: &self.span, path = %w.path().display(), "write tracking stopped: {why}");
        remove(&w)
    }

    /// Makes `regions` durably marked before the write that touches them goes on. A set
    /// that cannot be written is dropped and its file removed (a return is then a full
    /// move); only if even that fails is the write refused, so no acknowledged write is
    /// ever missing from a set that still exists.
    pub(crate) fn note_written(&self, regions: Range<Region>) -> Result<()> {
        let mut guard = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = guard.as_mut() else { return Ok(()) };
        let Err(e) = w.mark(regions) else { return Ok(()) };
        let w = guard.take().expect("checked above");
        tracing::warn!(parent: &self.span, path = %w.path().display(), error = %e, "cannot record a written region; write tracking dropped (a return will be a full move)");
        remove(&w).map_err(|source| CloneError::Io { what: "remove written set", path: w.path(), source })
    }
}

fn remove(w: &Written) -> std::io::Result<()> {
    match std::fs::remove_file(w.path()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
