//! The seam between the owner loop and the WireGuard mesh. Each tick the loop hands the
//! mesh the fresh view (it converges its peer set to the admitted, alive nodes) and asks
//! what to advertise in this node's record (key, endpoints, certificate). The mesh crate
//! provides the implementation; `NoMesh` is for `mesh.backend = "none"`.

use crate::cluster::view::ClusterView;
use crate::decide::model::WireguardAdvert;

/// What the agent needs from the mesh.
pub trait MeshPort: Send + 'static {
    /// Converges WireGuard peers to the view (add, update endpoint, remove).
    fn converge(&mut self, view: &ClusterView);
    /// This node's WireGuard identity for its `node` record.
    fn advert(&self) -> Option<WireguardAdvert>;
    /// Peers, handshake ages, bytes (for `meshdrain mesh status`), as JSON.
    fn status(&self) -> serde_json::Value;
}

/// No mesh: gossip runs directly on the configured addresses.
#[derive(Debug, Default)]
pub struct NoMesh;

impl MeshPort for NoMesh {
    fn converge(&mut self, _view: &ClusterView) {}
    fn advert(&self) -> Option<WireguardAdvert> {
        None
    }
    fn status(&self) -> serde_json::Value {
        serde_json::json!({ "backend": "none", "peers": [] })
    }
}
