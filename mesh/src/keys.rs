//! Node identity: a WireGuard X25519 key pair kept 0600 in the state dir; the node id is the
//! public key, so there is nothing to allocate and nothing to coordinate.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::error::IdentityError;

/// File name of the node's WireGuard private key inside the state dir.
pub const NODE_KEY_FILE: &str = "wireguard.key";

/// A WireGuard public key (32 bytes), the node's identity. Printed as base64 like `wg`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses the base64 form used in configs, gossip and `wg`.
    pub fn from_base64(s: &str) -> Result<Self, IdentityError> {
        decode32(s.trim(), "public key").map(Self)
    }

    /// The base64 form.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// The node's WireGuard key pair. The secret never leaves this struct except as the base64
/// string handed to the backend.
#[derive(Clone)]
pub struct NodeKey {
    secret: x25519_dalek::StaticSecret,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey(public={})", self.public())
    }
}

impl NodeKey {
    /// A fresh random key (clamping is done by X25519 itself).
    pub fn generate() -> Self {
        Self { secret: x25519_dalek::StaticSecret::from(rand::random::<[u8; 32]>()) }
    }

    /// From the base64 private key (`wg genkey` format).
    pub fn from_base64(s: &str) -> Result<Self, IdentityError> {
        decode32(s.trim(), "private key").map(|b| Self { secret: x25519_dalek::StaticSecret::from(b) })
    }

    /// The base64 private key, for the backend only.
    pub fn private_base64(&self) -> String {
        B64.encode(self.secret.to_bytes())
    }

    /// The public key: the node id.
    pub fn public(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.secret).to_bytes())
    }

    /// The X25519 shared secret with `peer`, or `None` for a low-order peer key (whose
    /// secret an attacker could predict). Used to authenticate join requests: only the holder
    /// of a key pair can compute it, so a join proves possession of the certified key.
    pub fn agree(&self, peer: &PublicKey) -> Option<[u8; 32]> {
        let shared = self.secret.diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        shared.was_contributory().then(|| shared.to_bytes())
    }

    /// Path of the key file in a state dir.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join(NODE_KEY_FILE)
    }

    /// Loads `<state_dir>/wireguard.key`, creating it (0600) on first start so a node keeps
    /// its identity, and therefore its mesh address, across restarts.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, IdentityError> {
        let path = Self::path_in(state_dir);
        match read_secret_file(&path) {
            Ok(text) => Self::from_base64(&text).map_err(|e| IdentityError::Corrupt { path, reason: e.to_string() }),
            Err(IdentityError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(state_dir)
                    .map_err(|source| IdentityError::Io { path: state_dir.to_owned(), source })?;
                let key = Self::generate();
                write_secret_file(&path, &key.private_base64())?;
                tracing::info!(path = %path.display(), public_key = %key.public(), "created node WireGuard key");
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }
}

pub(crate) fn decode32(s: &str, what: &str) -> Result<[u8; 32], IdentityError> {
    // 32 bytes are 44 base64 characters; a longer string is not a key and is not decoded.
    if s.len() > 64 {
        return Err(IdentityError::BadKey { what: what.to_owned(), reason: format!("{} characters", s.len()) });
    }
    let bytes = B64.decode(s).map_err(|e| IdentityError::BadKey { what: what.to_owned(), reason: e.to_string() })?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| IdentityError::BadKey { what: what.to_owned(), reason: format!("{} bytes", b.len()) })
}

/// Writes a secret atomically with mode 0600 (never briefly world-readable).
pub fn write_secret_file(path: &Path, contents: &str) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    let io = |source| IdentityError::Io { path: path.to_owned(), source };
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.write_all(b"\n").map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// Largest key file read (a key is 45 bytes; anything near this is not one).
pub const MAX_KEY_FILE: u64 = 4096;

/// Reads a text file of at most `max` bytes: a file that is not what we expect must give a
/// clear error, not an allocation of its size.
pub fn read_bounded(path: &Path, max: u64) -> Result<String, IdentityError> {
    use std::io::Read as _;
    let io = |source| IdentityError::Io { path: path.to_owned(), source };
    let mut text = String::new();
    let read = fs::File::open(path).map_err(io)?.take(max + 1).read_to_string(&mut text);
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(IdentityError::Corrupt { path: path.to_owned(), reason: "not UTF-8 text".into() });
        }
        r => r.map_err(io)?,
    };
    if text.len() as u64 > max {
        return Err(IdentityError::Corrupt { path: path.to_owned(), reason: format!("larger than {max} bytes") });
    }
    Ok(text)
}

/// Reads a secret file, refusing one that group or others can read.
pub fn read_secret_file(path: &Path) -> Result<String, IdentityError> {
    let io = |source| IdentityError::Io { path: path.to_owned(), source };
    let meta = fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions { path: path.to_owned(), mode });
    }
    read_bounded(path, MAX_KEY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_0600_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeKey::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(NodeKey::path_in(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = NodeKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public(), b.public());
    }

    #[test]
    fn world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        NodeKey::load_or_create(dir.path()).unwrap();
        let p = NodeKey::path_in(dir.path());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(NodeKey::load_or_create(dir.path()), Err(IdentityError::Permissions { .. })));
    }

    #[test]
    fn base64_round_trip() {
        let k = NodeKey::generate();
        let k2 = NodeKey::from_base64(&k.private_base64()).unwrap();
        assert_eq!(k.public(), k2.public());
        assert_eq!(PublicKey::from_base64(&k.public().to_base64()).unwrap(), k.public());
        assert!(PublicKey::from_base64("AAAA").is_err());
    }
}
