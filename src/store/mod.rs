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

/// Written and removed at open: a state dir that cannot take a write fails there.
const PROBE_FILE: &str = ".write-probe.json";

/// A directory of atomically written JSON documents.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating) the directory, makes it private (0700: it holds the node's keys
    /// and its decisions), and proves it writable with a durable probe write, so an agent
    /// that could not persist its decisions refuses to start instead of acting on them.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let io = |op, source| StoreError::Io { op, path: root.to_owned(), source };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(root).map_err(|e| io("create", e))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(|e| io("chmod 0700", e))?;
        let dir = Self { root: root.to_owned() };
        dir.save(PROBE_FILE, &"meshdrain checks that its state dir is writable")?;
        fs::remove_file(root.join(PROBE_FILE)).map_err(|e| io("remove probe in", e))?;
        Ok(dir)
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

    /// Writes a document atomically and durably, readable by root only (0600).
    pub fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.root.join(name);
        let tmp = self.root.join(format!(".{name}.tmp"));
        let io = |op, p: &Path| {
            let p = p.to_owned();
            move |source| StoreError::Io { op, path: p, source }
        };
        let bytes = serde_json::to_vec_pretty(value).expect("state documents serialize");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
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
    fn the_dir_is_made_private_and_documents_are_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let s = StateDir::open(&root).unwrap();
        s.save("agent.json", &1u32).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("agent.json")), 0o600);
        assert!(!root.join(PROBE_FILE).exists());
    }

    #[test]
    fn an_unwritable_dir_is_refused_at_open_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A file where a directory component should be: no user, root included, can write there.
        fs::write(dir.path().join("file"), b"").unwrap();
        let root = dir.path().join("file").join("state");
        let err = StateDir::open(&root).unwrap_err();
        assert!(err.to_string().starts_with(&format!("state dir: create {}: ", root.display())), "{err}");
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
