//! The decision core: everything an agent decides, as pure code. No I/O, no clocks, no
//! tokio: a [`ClusterView`](crate::cluster::view::ClusterView), `now` and data-plane
//! events in; gossip keys, durable state and data-plane commands out. The owner loop
//! (`agent`) and the deterministic simulation (tests/sim_drain.rs) drive the same code.
//!
//! - [`model`]: the types the core, the gossip schema and the control API share.
//! - [`node`], [`request`]: the node lifecycle and node requests from anywhere.
//! - [`moves`]: one volume moved while its node stays active (`volume move`).
//! - [`placement`]: which node takes which volume.
//! - [`lease`]: one volume's move, source side and holder side.
//! - [`lost`]: nodes declared lost for good, and what that does to their volumes.
//! - [`roll`]: rolling the fleet under a fleet-wide availability lease.
//! - [`core`]: the agent's state machine that joins them.
//!
//! It imports nothing from `agent`, `control`, `cli`, `store` or the data plane; the
//! gossip schema (`cluster::schema`) imports its types, not the agent's.

pub mod core;
pub mod lease;
pub mod lost;
pub mod model;
pub mod moves;
pub mod node;
pub mod placement;
pub mod request;
pub mod returns;
pub mod roll;
