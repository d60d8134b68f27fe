//! meshdrain-clone: post-copy clone engines (userspace and dm-clone) behind one
//! [`CloneBackend`] trait.
//!
//! A clone device lets the workload start on a volume before its bytes arrive: reads
//! of regions not yet on the dest are fetched from the source on demand, the rest is
//! copied in the background, each region exactly once, and a region's bit is set only
//! after its data is durable on the dest.
//!
//! # How the agent drives a userspace clone
//!
//! ```no_run
//! # fn demo(source: std::sync::Arc<dyn meshdrain_clone::BlockSource>) -> meshdrain_clone::Result<()> {
//! use meshdrain_clone::{Engine, EngineConfig, FileDest, FileMeta, UserspaceClone, expose};
//! use std::path::Path;
//! let cfg = EngineConfig { epoch: 7, rate_limit: Some(200 << 20), ..Default::default() };
//! let dest = FileDest::open(Path::new("/var/lib/meshdrain/vol/v1.img"), source.size())
//!     .map_err(|e| meshdrain_clone::CloneError::Io { what: "open dest", path: "v1.img".into(), source: e })?;
//! let meta_path = Path::new("/var/lib/meshdrain/vol/v1.meta");
//! let engine = if meta_path.exists() {
//!     // Resume: refused (dest untouched) unless the metadata is intact and bound to this source and dest.
//!     let meta = FileMeta::open(meta_path)
//!         .map_err(|e| meshdrain_clone::CloneError::Io { what: "open metadata", path: "v1.meta".into(), source: e })?;
//!     Engine::open(source, Box::new(dest), Box::new(meta), cfg)?
//! } else {
//!     // A new clone: fresh metadata, published by rename once written.
//!     let meta = FileMeta::create(meta_path)
//!         .map_err(|e| meshdrain_clone::CloneError::Io { what: "create metadata", path: "v1.meta".into(), source: e })?;
//!     Engine::create(source, Box::new(dest), Box::new(meta), cfg)?
//! };
//! let exposed = expose::Exposed::start(engine.clone(), Path::new("/run/meshdrain/fuse/v1"),
//!     Some(Path::new("/var/lib/meshdrain/dev/v1")))?;                    // /dev/loopN for the workload
//! let clone = UserspaceClone::start(engine);                              // background hydration
//! let mut progress = clone.subscribe();   // hydrated/total, bytes/s, ETA, phase (Stalled + last_error)
//! clone.set_rate_limit(Some(50 << 20));   // change while running
//! clone.pause(); clone.resume();
//! // ... when progress.borrow().phase == Phase::Complete the handoff is done:
//! // the dest file is the volume and the source is no longer read.
//! # let _ = (exposed, &mut progress); Ok(()) }
//! ```
//!
//! The dm-clone backend ([`dm`]) offers the same [`CloneBackend`] surface where the
//! kernel has dm-clone.

pub mod core;
pub mod digest;
pub mod dm;
pub mod engine;
pub mod error;
pub mod expose;
pub mod exposure;
mod fetch;
pub mod hydrate;
pub mod identity;
pub mod io;
pub mod iscsi;
pub mod loopdev;
pub mod metadata;
pub mod nbd;
pub mod progress;
pub mod ratelimit;
pub mod reconnect;
mod tracking;
pub mod ublk;
mod workload;
pub mod written;

use std::path::PathBuf;

pub use engine::{Engine, EngineConfig};
pub use error::{CloneError, Result, START_OVER};
pub use hydrate::UserspaceClone;
pub use identity::DestIdentity;
pub use io::{BlockSource, Dest, FileDest, FileMeta, FileSource, Lane, MetaStore, RunSink};
pub use iscsi::IscsiSource;
pub use progress::{Phase, Progress};
pub use ratelimit::parse_rate;
pub use reconnect::ReconnectingSource;
pub use tracking::WrittenSince;

/// What the agent needs from either backend once a clone runs: watch it, steer its
/// bandwidth, pause it, and learn the device the workload uses.
pub trait CloneBackend: Send + Sync {
    /// The latest progress snapshot.
    fn progress(&self) -> Progress;
    /// Every new snapshot; the last one has `Phase::Complete` (handoff done).
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Progress>;
    /// Changes the background bandwidth limit (bytes/s; `None`: unlimited).
    fn set_rate_limit(&self, rate: Option<u64>) -> Result<()>;
    /// Pauses background hydration (on-demand reads go on).
    fn pause(&self) -> Result<()>;
    /// Resumes background hydration.
    fn resume(&self) -> Result<()>;
    /// The block device the workload uses, once there is one.
    fn device(&self) -> Option<PathBuf>;
}

impl CloneBackend for UserspaceClone {
    fn progress(&self) -> Progress {
        UserspaceClone::progress(self)
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Progress> {
        UserspaceClone::subscribe(self)
    }
    fn set_rate_limit(&self, rate: Option<u64>) -> Result<()> {
        UserspaceClone::set_rate_limit(self, rate);
        Ok(())
    }
    fn pause(&self) -> Result<()> {
        UserspaceClone::pause(self);
        Ok(())
    }
    fn resume(&self) -> Result<()> {
        UserspaceClone::resume(self);
        Ok(())
    }
    fn device(&self) -> Option<PathBuf> {
        None
    }
}
