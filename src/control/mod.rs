//! The control socket: the CLI talks to its node's agent over a Unix socket (mode 0600, so
//! only root can drain), one JSON line each way ([`crate::api::wire`]). It carries
//! [`crate::api`] and knows nothing of the agent behind it.

pub mod client;
pub mod server;
