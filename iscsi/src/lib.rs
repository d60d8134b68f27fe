//! meshdrain's own iSCSI stack: a read-only userspace target that exports a
//! draining volume, and an initiator the userspace clone engine reads it
//! with. Both speak RFC 7143 and SBC/SPC so open-iscsi, libiscsi and tgt
//! interoperate with them.
//!
//! Layers, innermost first, each sans-IO except the last:
//! - [`pdu`]: PDU types and the framing codec (digests, padding).
//! - [`text`]: `key=value\0` parsing with limits; [`negotiate`]: the RFC's
//!   negotiation rules and the session parameters they produce.
//! - [`login`]: the target's login state machine (ACL, CHAP).
//! - [`scsi`]: CDB in, data/sense out, for a read-only LUN over a [`store::BlockStore`].
//! - [`target`] and [`initiator`]: tokio shells around the above.

pub mod chap;
pub mod initiator;
pub mod login;
pub mod negotiate;
pub mod pdu;
pub mod scsi;
pub mod store;
pub mod target;
pub mod text;
pub mod url;
pub mod wire;

pub use initiator::{BlockReader, Extent, InitiatorConfig, InitiatorError, Session};
pub use store::{BlockStore, FileStore};
pub use target::{Acl, Export, Target, TargetConfig, TargetError, serve};
pub use url::IscsiUrl;
