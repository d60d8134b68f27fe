//! The cluster layer: chitchat behind the [`gossip::Gossip`] trait, the typed versioned
//! key [`schema`], and [`view::ClusterView`] snapshots for the pure cores.

pub mod gossip;
pub mod schema;
pub mod view;
