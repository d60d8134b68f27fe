//! The clone layer's one error enum: every message names the file or device and what
//! the operator can do about it.
use std::path::PathBuf;

/// Errors of the clone engines (userspace and dm-clone) and their metadata.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    /// The metadata belongs to another source or lease epoch: resuming would serve
    /// data of another volume, so the engine refuses.
    #[error(
        "metadata {path} belongs to source {found_source} epoch {found_epoch}, not {want_source} epoch {want_epoch}; the dest was not touched: {START_OVER}"
    )]
    ForeignMetadata {
        /// Metadata path.
        path: PathBuf,
        /// Source identity recorded in the metadata.
        found_source: String,
        /// Epoch recorded in the metadata.
        found_epoch: u64,
        /// Source identity asked for.
        want_source: String,
        /// Epoch asked for.
        want_epoch: u64,
    },
    /// The metadata's geometry disagrees with the volume being cloned.
    #[error(
        "metadata {path} describes {found_size} bytes in {found_region}-byte regions, not {want_size} in {want_region}; the dest was not touched: {START_OVER}"
    )]
    GeometryMismatch {
        /// Metadata path.
        path: PathBuf,
        /// Size recorded.
        found_size: u64,
        /// Region size recorded.
        found_region: u64,
        /// Size asked for.
        want_size: u64,
        /// Region size asked for.
        want_region: u64,
    },
    /// The metadata cannot be trusted: empty, zeroed, truncated, not ours, or a
    /// checksum fails. It is never taken for a new clone (nothing on disk is
    /// trusted without a checksum; docs/threat-model.md).
    #[error("metadata {path} cannot be resumed: {reason}; the dest was not touched: {START_OVER}")]
    BadMetadata {
        /// Metadata path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The metadata records progress on another dest (or this path recreated): its
    /// bits would vouch for bytes this dest does not hold.
    #[error(
        "metadata {path} records progress on another dest than {dest}: {reason}; the dest was not touched: {START_OVER}"
    )]
    DestMismatch {
        /// Metadata path.
        path: PathBuf,
        /// The dest given now.
        dest: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// The dest is smaller than the source.
    #[error("dest {path} holds {dest_size} bytes but the source has {source_size}: give a dest at least as large")]
    DestTooSmall {
        /// Dest path.
        path: PathBuf,
        /// Dest size.
        dest_size: u64,
        /// Source size.
        source_size: u64,
    },
    /// A configuration value is unusable.
    #[error("invalid clone configuration: {0}")]
    Config(String),
    /// An I/O error on a named object.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("write dest", "sync metadata", ...).
        what: &'static str,
        /// The file or device.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The source could not be read (after retries).
    #[error(
        "source {identity} unreadable at byte {offset}: {message} (the engine retries; check the export and the mesh link)"
    )]
    Source {
        /// Source identity.
        identity: String,
        /// First byte of the failed read.
        offset: u64,
        /// The error text.
        message: String,
    },
    /// Fetched bytes could not be written to the dest: a full filesystem most often.
    /// Hydration retries; a workload request hears at once.
    #[error(
        "dest unwritable for the region at byte {offset}: {message} (free space on the dest's filesystem or fix its device; the engine retries)"
    )]
    Dest {
        /// First byte of the region.
        offset: u64,
        /// The error text.
        message: String,
        /// The dest's filesystem is full (the workload hears ENOSPC, not EIO).
        no_space: bool,
    },
    /// An access past the end of the volume.
    #[error("access at {offset}+{len} is past the end of the {size}-byte volume")]
    OutOfRange {
        /// First byte.
        offset: u64,
        /// Length.
        len: u64,
        /// Volume size.
        size: u64,
    },
    /// The engine was stopped.
    #[error("clone engine stopped")]
    Stopped,
    /// The region is not here and its source was declared lost for good (docs/failures.md):
    /// the workload hears EIO at once rather than waiting for a source that will not return.
    #[error(
        "the region at byte {offset} was never copied here and its source was declared lost (keep the partial copy with `meshdrain partial accept`, or delete it)"
    )]
    SourceLost {
        /// First byte of the region.
        offset: u64,
    },
    /// A FUSE or loop device exposure failed.
    #[error("expose {path}: {reason}")]
    Expose {
        /// Mount point, file or loop device.
        path: PathBuf,
        /// What failed and what to check.
        reason: String,
    },
    /// The device-mapper backend failed.
    #[error("dm-clone {device}: {reason}")]
    Dm {
        /// dm device name.
        device: String,
        /// What failed.
        reason: String,
    },
}

/// The fix every metadata refusal names: the only way to discard a progress record.
pub const START_OVER: &str = "run again with --start-over to recopy from the source; the dest will be overwritten";

/// Result alias of the clone layer.
pub type Result<T, E = CloneError> = std::result::Result<T, E>;

impl CloneError {
    /// The errno a workload's I/O hears for this error, the same through every exposure
    /// (FUSE + loop, NBD, ublk; docs/exposures.md): a full dest stays ENOSPC, so the
    /// filesystem reports a full disk rather than an I/O error; an access past the end is
    /// EINVAL; anything else is EIO. Positive, as in `errno.h`.
    pub fn errno(&self) -> i32 {
        match self {
            Self::OutOfRange { .. } => libc::EINVAL,
            Self::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => libc::ENOSPC,
            Self::Dest { no_space: true, .. } => libc::ENOSPC,
            _ => libc::EIO,
        }
    }
}
