//! meshdrain-mesh: node identity, fleet admission and the WireGuard mesh (pure core + backends).
