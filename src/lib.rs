//! meshdrain drains machines that hold stateful workloads, peer to peer: agents gossip
//! over a WireGuard mesh, a draining node exports its volumes read-only over iSCSI, and
//! each volume's new holder clones it post-copy (workload first, hydration after).
//!
//! Dependencies point one way: `cli` → `agent` → `control` → `api` → `decide`, and
//! `agent` → {`decide`, `cluster`, `store`} plus the `meshdrain-{mesh,iscsi,clone}`
//! crates. `api` is the agent's requests, answers and errors, written once; the control
//! socket carries it without knowing the agent. `decide` is pure: it reads the gossip view
//! (`cluster::view`), and the gossip schema reads its types (`decide::model`), never the
//! agent's.

pub mod agent;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod decide;
pub mod host;
pub mod store;
