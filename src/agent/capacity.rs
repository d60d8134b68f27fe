//! How much room this node offers placement for incoming volumes, re-read every tick so
//! volumes that arrived (or were created) since the agent started count against it.
//!
//! Volumes in the pool are sparse files: a 20 GiB volume 5 % written occupies 1 GiB, and
//! its workload may fill the rest at any time. So the room offered is what the pool
//! filesystem has free *minus what its volumes may still grow into* (or, with a fixed
//! `pool.capacity_bytes`, that capacity minus their full sizes). Volumes claimed but not
//! landed yet are subtracted by the decision core on top of this (`Core::update_claims`).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::store::volumes::VolumeTable;

/// The offer is rounded down to this granularity, so a workload writing in the pool does
/// not change the node's gossip record on every tick.
pub const GRANULE: u64 = 16 << 20;

/// What bounds the room for incoming volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capacity {
    /// `pool.capacity_bytes`: a fixed budget for the pool's volumes.
    Fixed(u64),
    /// The free space of the filesystem holding the pool directory (created at start by
    /// [`Capacity::for_pool`]).
    Filesystem(PathBuf),
}

/// One pool volume: its size and the bytes its file occupies now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolVolume {
    /// Full size (what the workload may write).
    pub size: u64,
    /// Bytes allocated on disk now.
    pub allocated: u64,
}

impl Capacity {
    /// A fixed budget, else the pool's filesystem: the pool directory is created here once,
    /// so the per-tick read is one statvfs.
    pub fn for_pool(capacity_bytes: Option<u64>, pool_dir: PathBuf) -> Self {
        match capacity_bytes {
            Some(cap) => Capacity::Fixed(cap),
            None => {
                let _ = std::fs::create_dir_all(&pool_dir);
                Capacity::Filesystem(pool_dir)
            }
        }
    }

    /// The room offered now, given the volumes whose files live in the pool.
    pub fn free_for_incoming(&self, table: &VolumeTable) -> u64 {
        let pool: Vec<PoolVolume> = table
            .volumes
            .values()
            .filter(|v| v.created)
            // Pool volumes are regular files: one stat gives both numbers (a file that
            // cannot be stat'ed counts as nothing, its size being unknown).
            .map(|v| {
                std::fs::metadata(&v.path).map_or(PoolVolume { size: 0, allocated: 0 }, |m| PoolVolume {
                    size: m.len(),
                    allocated: m.blocks() * 512,
                })
            })
            .collect();
        let available = match self {
            Capacity::Fixed(cap) => *cap,
            Capacity::Filesystem(dir) => {
                nix::sys::statvfs::statvfs(dir).map_or(0, |s| s.blocks_available() * s.fragment_size())
            }
        };
        offer(self, available, &pool)
    }
}

/// The pure rule: fixed budgets count each pool volume's full size; a filesystem's free
/// space counts what each volume may still grow into (its allocated part is already used).
pub fn offer(capacity: &Capacity, available: u64, pool: &[PoolVolume]) -> u64 {
    let reserved: u64 = match capacity {
        Capacity::Fixed(_) => pool.iter().map(|v| v.size).sum(),
        Capacity::Filesystem(_) => pool.iter().map(|v| v.size.saturating_sub(v.allocated)).sum(),
    };
    let free = available.saturating_sub(reserved);
    free - free % GRANULE
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn a_fixed_budget_shrinks_by_every_pool_volume_whole() {
        let cap = Capacity::Fixed(10 * GIB);
        let pool = [PoolVolume { size: 4 * GIB, allocated: 0 }, PoolVolume { size: GIB, allocated: GIB }];
        assert_eq!(offer(&cap, 10 * GIB, &pool), 5 * GIB);
        assert_eq!(offer(&cap, 10 * GIB, &[PoolVolume { size: 11 * GIB, allocated: 0 }]), 0);
    }

    #[test]
    fn a_filesystem_reserves_what_sparse_volumes_may_still_grow_into() {
        let fs = Capacity::Filesystem("/nonexistent".into());
        // 8 GiB free on disk; a 4 GiB volume with 1 GiB written may still take 3 GiB more.
        let pool = [PoolVolume { size: 4 * GIB, allocated: GIB }];
        assert_eq!(offer(&fs, 8 * GIB, &pool), 5 * GIB);
        // Rounded down to the granule, so small writes do not churn gossip.
        assert_eq!(offer(&fs, 5 * GIB + GRANULE - 1, &[]), 5 * GIB);
    }

    #[test]
    fn a_received_volume_reduces_the_offer_on_the_next_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = VolumeTable::default();
        let cap = Capacity::Fixed(GIB);
        assert_eq!(cap.free_for_incoming(&table), GIB);
        let path = dir.path().join("v.img");
        crate::store::volumes::create_sparse(&path, 256 << 20).unwrap();
        table.volumes.insert("v".into(), crate::store::volumes::LocalVolume { path, created: true });
        assert_eq!(cap.free_for_incoming(&table), GIB - (256 << 20));
    }
}
