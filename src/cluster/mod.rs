//! The cluster layer: chitchat behind the [`gossip::Gossip`] trait, the typed versioned
//! key [`schema`], and [`view::ClusterView`] snapshots for the pure cores. Gossip datagrams
//! pass [`transport::GuardedTransport`] (fleet-secret HMAC from [`auth`], the
//! decompression cap of [`wire`]) before chitchat reads them.

pub mod auth;
pub mod gossip;
pub mod identity;
pub mod schema;
pub mod transport;
pub mod view;
pub mod wire;
