//! Gossip authentication without the mesh: every datagram carries an HMAC-SHA256 tag keyed
//! by the fleet secret (`[gossip] secret_file`) over the cluster id and the whole datagram.
//! The tag is checked before a byte reaches chitchat (docs/threat-model.md), so an outsider's
//! datagram is never decompressed, parsed or merged. A second key
//! (`secret_file_previous`) is accepted for verifying only, which makes rotation a
//! three-step rollout (see systemd/agent.example.toml).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The shortest secret accepted: 256 bits, what the HMAC-SHA256 key should carry.
pub const MIN_SECRET_BYTES: usize = 32;
/// The longest secret file read (a secret is a key, not a document).
pub const MAX_SECRET_BYTES: usize = 4096;

/// First bytes of an authenticated datagram: "MDg".
const MAGIC: [u8; 3] = *b"MDg";
/// Format byte of a whole chitchat message.
const WHOLE: u8 = 1;
/// Format byte of one part of a message split in two (it was too long for one datagram once
/// the tag was added); followed by a message id (u32) and the part's index and count.
const PART: u8 = 2;
/// Length of the tag kept (HMAC-SHA256 truncated to 128 bits, RFC 2104 section 5).
pub const TAG_LEN: usize = 16;
/// Bytes added in front of a whole chitchat datagram.
pub const FRAME_OVERHEAD: usize = MAGIC.len() + 1 + TAG_LEN;
/// Bytes added in front of one part of a split datagram.
pub const PART_OVERHEAD: usize = FRAME_OVERHEAD + 6;
/// Domain separation: a tag for gossip is never valid for anything else keyed the same.
const DOMAIN: &[u8] = b"meshdrain gossip v1\0";

/// Why a secret file cannot be used. Each message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Missing or unreadable.
    #[error(
        "gossip secret {path}: {source} (create it: head -c 32 /dev/urandom > {path} && chmod 600 {path}, \
         and copy the same file to every node of the fleet)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Shorter than [`MIN_SECRET_BYTES`] (or empty), or absurdly long.
    #[error(
        "gossip secret {path} holds {len} bytes; it needs {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} \
         (fix: head -c 32 /dev/urandom > {path} && chmod 600 {path}, on every node)"
    )]
    Length {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// Readable or writable by group or others.
    #[error("gossip secret {path} has mode {mode:o}, readable by others (fix: chmod 600 {path})")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// A loaded fleet secret (never printed: `Debug` shows only its length).
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// Reads `path`, refusing a missing, short, huge, or group/other-accessible file.
    pub fn load(path: &Path) -> Result<Secret, SecretError> {
        let read = |source| SecretError::Read { path: path.to_owned(), source };
        let meta = std::fs::metadata(path).map_err(read)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Permissions { path: path.to_owned(), mode });
        }
        if !(MIN_SECRET_BYTES as u64..=MAX_SECRET_BYTES as u64).contains(&meta.len()) {
            return Err(SecretError::Length { path: path.to_owned(), len: meta.len() });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(SecretError::Length { path: path.to_owned(), len: bytes.len() as u64 });
        }
        Ok(Secret(bytes))
    }

    /// A secret from bytes (tests, and callers that hold the key already).
    pub fn from_bytes(bytes: &[u8]) -> Secret {
        Secret(bytes.to_vec())
    }
}

/// The keys of one agent: the one it signs with, and the ones it accepts.
#[derive(Debug, Clone)]
pub struct GossipKeys {
    current: Secret,
    previous: Option<Secret>,
    cluster_id: String,
}

/// What checking a datagram found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Tag valid under the current key.
    Current,
    /// Tag valid under the previous key (a node not yet rotated).
    Previous,
    /// Not our frame, or too short to hold one.
    NoTag,
    /// A frame whose tag matches no key.
    BadTag,
}

impl GossipKeys {
    /// Keys for `cluster_id`; `previous` is accepted but never used to sign.
    pub fn new(current: Secret, previous: Option<Secret>, cluster_id: &str) -> Self {
        Self { current, previous, cluster_id: cluster_id.to_owned() }
    }

    fn tag(&self, key: &Secret, header: &[u8], payload: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).expect("HMAC takes any key length");
        mac.update(DOMAIN);
        mac.update(&(self.cluster_id.len() as u32).to_be_bytes());
        mac.update(self.cluster_id.as_bytes());
        mac.update(header);
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }

    /// Writes the frame (magic, format, part header if any, tag) then `payload` into `out`.
    pub fn seal_into(&self, part: Option<Part>, payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&MAGIC);
        match part {
            None => out.push(WHOLE),
            Some(p) => {
                out.push(PART);
                out.extend_from_slice(&p.id.to_be_bytes());
                out.extend_from_slice(&[p.index, p.count]);
            }
        }
        let tag = self.tag(&self.current, &out[..], payload);
        out.extend_from_slice(&tag[..TAG_LEN]);
        out.extend_from_slice(payload);
    }

    /// Checks `datagram`'s frame: the verdict, and when it is valid, the part header and the
    /// chitchat bytes it carries. Costs one or two HMACs and nothing else, whatever it holds.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> (Verdict, Option<Part>, &'a [u8]) {
        let header_len = match datagram.get(..4) {
            Some([a, b, c, WHOLE]) if [*a, *b, *c] == MAGIC => 4,
            Some([a, b, c, PART]) if [*a, *b, *c] == MAGIC => 10,
            _ => return (Verdict::NoTag, None, &[]),
        };
        if datagram.len() < header_len + TAG_LEN {
            return (Verdict::NoTag, None, &[]);
        }
        let (header, rest) = datagram.split_at(header_len);
        let (tag, payload) = rest.split_at(TAG_LEN);
        let matches = |key: &Secret| {
            let expect = self.tag(key, header, payload);
            constant_time_eq(&expect[..TAG_LEN], tag)
        };
        let verdict = if matches(&self.current) {
            Verdict::Current
        } else if self.previous.as_ref().is_some_and(matches) {
            Verdict::Previous
        } else {
            return (Verdict::BadTag, None, &[]);
        };
        let part = (header_len == 10).then(|| Part {
            id: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
            index: header[8],
            count: header[9],
        });
        (verdict, part, payload)
    }
}

/// Which part of a split message a datagram carries (authenticated with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// The sender's message id.
    pub id: u32,
    /// This part's index, from 0.
    pub index: u8,
    /// How many parts the message has.
    pub count: u8,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &[u8], previous: Option<&[u8]>) -> GossipKeys {
        GossipKeys::new(Secret::from_bytes(secret), previous.map(Secret::from_bytes), "fleet")
    }

    #[test]
    fn a_sealed_datagram_opens_only_with_the_same_key_and_cluster() {
        let a = keys(&[1; 32], None);
        let mut frame = Vec::new();
        a.seal_into(None, b"chitchat bytes", &mut frame);
        assert_eq!(frame.len(), FRAME_OVERHEAD + 14);
        assert_eq!(a.open(&frame), (Verdict::Current, None, &b"chitchat bytes"[..]));
        assert_eq!(keys(&[2; 32], None).open(&frame).0, Verdict::BadTag);
        let other_fleet = GossipKeys::new(Secret::from_bytes(&[1; 32]), None, "other");
        assert_eq!(other_fleet.open(&frame).0, Verdict::BadTag);
        // One flipped bit anywhere, header, tag or payload, and it is refused.
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 1;
            assert_ne!(a.open(&bad).0, Verdict::Current, "bit flip at byte {i}");
        }
        assert_eq!(a.open(b"plain chitchat").0, Verdict::NoTag);
        assert_eq!(a.open(&frame[..FRAME_OVERHEAD - 1]).0, Verdict::NoTag);
        let part = Part { id: 7, index: 1, count: 2 };
        a.seal_into(Some(part), b"tail", &mut frame);
        assert_eq!(frame.len(), PART_OVERHEAD + 4);
        assert_eq!(a.open(&frame), (Verdict::Current, Some(part), &b"tail"[..]));
    }

    #[test]
    fn the_previous_key_verifies_but_never_signs() {
        let old = keys(&[1; 32], None);
        let rotated = keys(&[2; 32], Some(&[1; 32]));
        let mut frame = Vec::new();
        old.seal_into(None, b"x", &mut frame);
        assert_eq!(rotated.open(&frame).0, Verdict::Previous);
        rotated.seal_into(None, b"x", &mut frame);
        assert_eq!(old.open(&frame).0, Verdict::BadTag);
        assert_eq!(keys(&[2; 32], None).open(&frame).0, Verdict::Current);
    }

    #[test]
    fn secret_files_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gossip.key");
        let err = Secret::load(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("gossip secret {}: No such file", path.display())), "{err}");
        assert!(err.contains(&format!("head -c 32 /dev/urandom > {0} && chmod 600 {0}", path.display())), "{err}");
        let write = |bytes: &[u8], mode: u32| {
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write(b"", 0o600);
        assert_eq!(
            Secret::load(&path).unwrap_err().to_string(),
            format!(
                "gossip secret {0} holds 0 bytes; it needs 32 to 4096 (fix: head -c 32 /dev/urandom > {0} && chmod 600 {0}, on every node)",
                path.display()
            )
        );
        write(&[7; 31], 0o600);
        assert!(matches!(Secret::load(&path), Err(SecretError::Length { len: 31, .. })));
        write(&[7; 32], 0o644);
        assert_eq!(
            Secret::load(&path).unwrap_err().to_string(),
            format!("gossip secret {0} has mode 644, readable by others (fix: chmod 600 {0})", path.display())
        );
        write(&[7; 32], 0o400);
        assert_eq!(format!("{:?}", Secret::load(&path).unwrap()), "Secret(32 bytes)");
    }
}
