//! A remote export that logs in again when its session gives up. The initiator retries a
//! lost connection on its own, but treats some answers of a restarting source (target
//! not found while its agent re-opens exports) as final. In meshdrain the lease, not the
//! initiator, decides when a move is abandoned, so the holder keeps trying, at most every
//! [`RELOGIN_EVERY`].
//!
//! With `--verify` it also digests every byte read as it passes ([`crate::digest`]), and
//! completes the digest at the end by reading what it never saw.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use meshdrain_iscsi::InitiatorConfig;
use tracing::{debug, info};

use crate::digest::VolumeDigest;
use crate::io::{BlockSource, DestWriteFailed, Lane, RunSink};
use crate::iscsi::IscsiSource;

/// How long one source read may take before the engine counts a failure (and, after its
/// own threshold, reports `stalled`).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The initiator keeps reconnecting this long; the lease, not the initiator, decides when
/// a move is abandoned.
const RECONNECT_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Least time between two fresh logins of one source.
pub const RELOGIN_EVERY: Duration = Duration::from_secs(2);
/// How long a planned logout waits for the target's answer.
const LOGOUT_WAIT: Duration = Duration::from_secs(2);
/// What a read after the planned logout fails with.
const LOGGED_OUT: &str = "logged out of the source after hand-off";

/// Why a reconnecting source could not be opened or its digest completed; each names the
/// export and the step.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The export's address and name do not make an iSCSI URL.
    #[error("{0}")]
    Url(String),
    /// The login was refused or timed out.
    #[error("login to {address} ({identity}): {source}")]
    Login {
        /// `ip:port` of the source.
        address: String,
        /// The export's name.
        identity: String,
        /// What the initiator said.
        source: std::io::Error,
    },
    /// The source would not say which ranges it holds no data for.
    #[error("digest: deallocated ranges of the source: {0}")]
    Deallocated(std::io::Error),
    /// Reading a region the digest never saw failed, also after logging in again.
    #[error("digest: reading the regions never fetched from the source: {0}")]
    Reread(std::io::Error),
}

/// An iSCSI export that logs in again when its session gives up (see the module doc).
pub struct ReconnectingSource {
    url: String,
    config: InitiatorConfig,
    identity: String,
    size: u64,
    /// The session in use (`None` after [`ReconnectingSource::log_out`]: no more logins).
    current: RwLock<Option<Arc<IscsiSource>>>,
    last_login: Mutex<Instant>,
    /// With `--verify`: the digest of every byte read, as it passes.
    digest: Option<Mutex<VolumeDigest>>,
}

impl std::fmt::Debug for ReconnectingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconnectingSource").field("url", &self.url).field("size", &self.size).finish()
    }
}

impl ReconnectingSource {
    /// Logs in to export `iqn` at `addr` (`ip:port`) as `initiator`. `digest` (with
    /// `--verify`) is fed every byte read. Call from a plain thread, not inside a runtime.
    pub fn connect(addr: &str, iqn: &str, initiator: &str, digest: Option<VolumeDigest>) -> Result<Self, SourceError> {
        let url = format!("iscsi://{addr}/{iqn}/1");
        let mut config = InitiatorConfig::from_url(&url).map_err(|e| SourceError::Url(e.to_string()))?;
        config = config.with_initiator_name(initiator);
        config.reconnect_for = RECONNECT_FOR;
        // The identity recorded in the metadata is the export's name, not its address:
        // a source that comes back on another port is still the same volume.
        let identity = iqn.to_owned();
        let first = login(&config, &identity)?;
        let size = first.size();
        Ok(Self {
            url,
            config,
            identity,
            size,
            current: RwLock::new(Some(Arc::new(first))),
            last_login: Mutex::new(Instant::now()),
            digest: digest.map(Mutex::new),
        })
    }

    fn tap(&self, offset: u64, pieces: &[&[u8]]) {
        if let Some(d) = &self.digest {
            let mut d = d.lock().expect("digest lock");
            let mut at = offset;
            for p in pieces {
                d.feed(at, p);
                at += p.len() as u64;
            }
        }
    }

    /// Feeds the `--verify` digest bytes of the source the clone already holds (a return
    /// over the copy kept on the dest, docs/return.md): they count as read from the source,
    /// so the owner's check covers them. Nothing without a digest.
    pub fn feed_digest(&self, offset: u64, data: &[u8]) {
        self.tap(offset, &[data]);
    }

    /// Completes the `--verify` digest: regions never read (overwritten whole by the
    /// workload, or read before an agent restart) are read from the source now; those it
    /// reports deallocated are zeros. `None` without a digest.
    pub fn finish_digest(&self) -> Result<Option<String>, SourceError> {
        let Some(d) = &self.digest else { return Ok(None) };
        let mut d = d.lock().expect("digest lock");
        let missing = d.missing().len();
        let deallocated = if missing > 0 {
            self.session().and_then(|s| s.deallocated()).map_err(SourceError::Deallocated)?
        } else {
            None
        };
        let read = |offset: u64, buf: &mut [u8]| {
            let mut last = None;
            for _ in 0..5 {
                match self.session().and_then(|s| s.read_at(offset, buf)) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = Some(e),
                }
                self.relogin();
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(last.expect("an attempt failed"))
        };
        let digest = d.complete(&deallocated.unwrap_or_default(), read).map_err(SourceError::Reread)?;
        info!(url = %self.url, regions_not_seen = missing, regions_read_again = d.read_again(), "digest of the bytes read from the source complete");
        Ok(Some(digest))
    }

    /// A planned close (the hand-off is done): logs out of the export and never logs in
    /// again, so the source closing its export afterwards drops no session and neither
    /// side logs a lost connection. Reads after it fail. Idempotent.
    pub fn log_out(&self) {
        let session = self.current.write().expect("source lock").take();
        let Some(session) = session else { return };
        match Arc::try_unwrap(session) {
            Ok(s) => {
                s.log_out(LOGOUT_WAIT);
                info!(url = %self.url, "logged out of the source (hand-off)");
            }
            // A read still holds it (none should after hand-off): it ends with the read.
            Err(_) => debug!(url = %self.url, "source still in use at logout; its sessions close with it"),
        }
    }

    fn relogin(&self) {
        if self.current.read().expect("source lock").is_none() {
            return; // logged out on purpose
        }
        {
            let mut last = self.last_login.lock().expect("login lock");
            if last.elapsed() < RELOGIN_EVERY {
                return;
            }
            *last = Instant::now();
        }
        match login(&self.config, &self.identity) {
            Ok(fresh) => {
                let mut current = self.current.write().expect("source lock");
                if current.is_some() {
                    info!(url = %self.url, "logged in to the source again");
                    *current = Some(Arc::new(fresh));
                }
            }
            Err(e) => debug!(url = %self.url, "login again failed (retried): {e}"),
        }
    }

    fn session(&self) -> std::io::Result<Arc<IscsiSource>> {
        self.current.read().expect("source lock").clone().ok_or_else(|| std::io::Error::other(LOGGED_OUT))
    }
}

/// Logs in: a bulk session for hydration and a foreground one for the workload's reads,
/// each on the runtime the source owns.
fn login(config: &InitiatorConfig, identity: &str) -> Result<IscsiSource, SourceError> {
    IscsiSource::connect_config(identity, config.clone(), READ_TIMEOUT).map_err(|source| SourceError::Login {
        address: config.address.to_string(),
        identity: identity.to_owned(),
        source,
    })
}

impl BlockSource for ReconnectingSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let result = self.session().and_then(|s| s.read_at(offset, buf));
        match &result {
            Ok(()) => self.tap(offset, &[buf]),
            Err(_) => self.relogin(),
        }
        result
    }

    fn deallocated(&self) -> std::io::Result<Option<Vec<std::ops::Range<u64>>>> {
        self.session()?.deallocated()
    }

    fn read_runs(&self, lane: Lane, runs: &[std::ops::Range<u64>], sink: &mut RunSink<'_>) -> Vec<std::io::Result<()>> {
        let results = if self.digest.is_some() {
            let mut tapped = |offset: u64, pieces: &[&[u8]]| {
                self.tap(offset, pieces);
                sink(offset, pieces)
            };
            match self.session() {
                Ok(s) => s.read_runs(lane, runs, &mut tapped),
                Err(e) => runs.iter().map(|_| Err(std::io::Error::other(e.to_string()))).collect(),
            }
        } else {
            match self.session() {
                Ok(s) => s.read_runs(lane, runs, sink),
                Err(e) => runs.iter().map(|_| Err(std::io::Error::other(e.to_string()))).collect(),
            }
        };
        // A dest that cannot take the bytes (full disk) is no reason to log in again.
        if results.iter().any(|r| r.as_ref().is_err_and(|e| !DestWriteFailed::is(e))) {
            self.relogin();
        }
        results
    }

    fn read_granularity(&self) -> Option<u64> {
        self.session().ok()?.read_granularity()
    }
}

#[cfg(test)]
mod tests;
