//! meshdrain drains machines that hold stateful workloads, peer to peer: agents gossip
//! over a WireGuard mesh, a draining node exports its volumes read-only over iSCSI, and
//! each volume's new holder clones it post-copy (workload first, hydration after).
//!
//! Dependencies point one way: `cli` → `control` → `agent` → {`decide`, `cluster`,
//! `store`} plus the `meshdrain-{mesh,iscsi,clone}` crates. `decide` is pure: it reads
//! the gossip view (`cluster::view`), and the gossip schema reads its types
//! (`decide::model`), never the agent's.

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod decide;
pub mod host;
pub mod store;
