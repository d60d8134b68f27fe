//! The local control API: the CLI talks to its node's agent over a Unix socket (mode
//! 0600, so only root can drain), and operators scrape metrics over HTTP.

pub mod client;
pub mod metrics;
pub mod protocol;
pub mod server;
