//! Where a volume's files go in the pool, written once: a volume meshdrain creates and a
//! volume that moves here both live at `<pool>/<id>.img` (so a moved volume is a local
//! one the moment its clone is handed off), its clone metadata beside it. Export and
//! initiator names are [`export_iqn`](crate::decide::model::export_iqn) and
//! [`initiator_iqn`](crate::decide::model::initiator_iqn): the core publishes them.

use std::path::{Path, PathBuf};

/// The file holding volume `id` in the pool (created, or the dest of an incoming clone).
pub fn volume_file(pool: &Path, id: &str) -> PathBuf {
    pool.join(format!("{id}.img"))
}

/// The clone metadata (region bitmap) of volume `id` coming in.
pub fn clone_metadata(pool: &Path, id: &str) -> PathBuf {
    pool.join(format!("{id}.clone-meta"))
}

/// The written set of volume `id`'s clone (docs/return.md): what its workload wrote since
/// the cut-over, beside the clone metadata.
pub fn clone_written(pool: &Path, id: &str) -> PathBuf {
    pool.join(format!("{id}.clone-written"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_volume_lands_where_a_created_one_lives() {
        let pool = Path::new("/var/lib/meshdrain/pool");
        assert_eq!(volume_file(pool, "db"), Path::new("/var/lib/meshdrain/pool/db.img"));
        assert_eq!(clone_metadata(pool, "db"), Path::new("/var/lib/meshdrain/pool/db.clone-meta"));
    }
}
