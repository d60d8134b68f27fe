//! The agent's durable state directory: small JSON documents written atomically
//! (temp file, fsync, rename, fsync of the directory), so a crash leaves either the old
//! document or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub mod volumes;
use serde::de::DeserializeOwned;

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem error on a named path.
    #[error("state dir: {op} {path}: {source} (check state_dir exists, is writable and not full)")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A document exists but does not parse: kept aside, never silently dropped.
    #[error("state dir: {path} is corrupt ({message}); it was left in place: move it away to start fresh")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
}

/// A directory of atomically written JSON documents.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating, mode 0700) the directory.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().recursive(true).mode(0o700).create(root).map_err(|source| StoreError::Io {
            op: "create",
            path: root.to_owned(),
            source,
        })?;
        Ok(Self { root: root.to_owned() })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads a document; `None` if it does not exist.
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        let path = self.root.join(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { op: "read", path, source }),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError::Corrupt { path, message: e.to_string() })
    }

    /// Writes a document atomically and durably.
    pub fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let path = self.root.join(name);
        let tmp = self.root.join(format!(".{name}.tmp"));
        let io = |op, p: &Path| {
            let p = p.to_owned();
            move |source| StoreError::Io { op, path: p, source }
        };
        let bytes = serde_json::to_vec_pretty(value).expect("state documents serialize");
        let mut f =
            OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        File::open(&self.root).and_then(|d| d.sync_all()).map_err(io("fsync", &self.root))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(&dir.path().join("state")).unwrap();
        assert_eq!(s.load::<Vec<u32>>("doc.json").unwrap(), None);
        s.save("doc.json", &vec![1u32, 2]).unwrap();
        s.save("doc.json", &vec![3u32]).unwrap();
        assert_eq!(s.load::<Vec<u32>>("doc.json").unwrap(), Some(vec![3]));
        let names: Vec<_> = fs::read_dir(s.root()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("doc.json")]);
    }

    #[test]
    fn corrupt_document_is_reported_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        fs::write(dir.path().join("doc.json"), b"{half").unwrap();
        let err = s.load::<Vec<u32>>("doc.json").unwrap_err();
        assert!(err.to_string().contains("is corrupt"), "{err}");
        assert!(dir.path().join("doc.json").exists());
    }
}
