//! Where each local volume's bytes live. The table is kept beside the agent state (the
//! pure core knows ids, sizes, labels and hooks, not paths).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{StateDir, StoreError};
use crate::decide::core::DataCommand;

/// Document name in the state dir.
pub const VOLUMES_FILE: &str = "volumes.json";

/// One local volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalVolume {
    /// File or block device holding the bytes.
    pub path: PathBuf,
    /// Whether meshdrain created the file (and may delete it after hand-off).
    pub created: bool,
}

/// The local volume table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeTable {
    /// By volume id.
    pub volumes: BTreeMap<String, LocalVolume>,
}

impl VolumeTable {
    /// Loads the table (empty if none yet).
    pub fn load(dir: &StateDir) -> Result<Self, StoreError> {
        Ok(dir.load(VOLUMES_FILE)?.unwrap_or_default())
    }

    /// Saves it atomically.
    pub fn save(&self, dir: &StateDir) -> Result<(), StoreError> {
        dir.save(VOLUMES_FILE, self)
    }

    /// The local path `cmd` works on, as the owner loop hands it to the data plane (`None`:
    /// not a volume of this node). `DeleteData` also takes the volume out of the table
    /// (the caller saves it). The owner loop is the table's only writer; the data plane
    /// sees a path only this way.
    pub fn path_for(&mut self, cmd: &DataCommand) -> Option<PathBuf> {
        let volume = cmd.volume().as_str();
        match cmd {
            DataCommand::DeleteData { .. } => self.volumes.remove(volume).map(|v| v.path),
            _ => self.volumes.get(volume).map(|v| v.path.clone()),
        }
    }
}

/// Creates a sparse file of `size` bytes for a new volume; refuses to overwrite.
pub fn create_sparse(path: &Path, size: u64) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    f.set_len(size)?;
    f.sync_all()
}

/// The size of a file or block device.
pub fn size_of(path: &Path) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::End(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_get_the_path_and_a_deletion_leaves_the_table() {
        let mut table = VolumeTable::default();
        table.volumes.insert("db".into(), LocalVolume { path: "/pool/db.img".into(), created: true });
        let db = || "db".parse().unwrap();
        let close = DataCommand::CloseExport { volume: db() };
        assert_eq!(table.path_for(&close), Some(PathBuf::from("/pool/db.img")));
        assert!(table.volumes.contains_key("db"), "only a deletion changes the table");
        assert_eq!(table.path_for(&DataCommand::DeleteData { volume: db() }), Some(PathBuf::from("/pool/db.img")));
        assert!(!table.volumes.contains_key("db"));
        assert_eq!(table.path_for(&close), None);
    }
}
