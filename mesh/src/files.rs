//! On-disk forms of the fleet CA, certificates, signing requests and revocation lists, shared
//! by the CLI (which writes them) and the agent (which reads them at start).

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cert::{CaPublicKey, FleetCa};
use crate::error::IdentityError;
use crate::keys::{MAX_KEY_FILE, read_bounded, read_secret_file, write_secret_file};

/// Largest JSON file read (certificate, signing request, revocation list): a revocation list
/// of ~20,000 keys fits; a certificate is under 1 KiB.
pub const MAX_JSON_FILE: u64 = 1 << 20;

/// File name of the CA secret made by `meshdrain mesh init` (keep it off the nodes).
pub const CA_KEY_FILE: &str = "fleet-ca.key";
/// File name of the CA public key every node is given (`mesh.fleet_ca`).
pub const CA_PUB_FILE: &str = "fleet-ca.pub";

/// Writes a new CA into `dir`, refusing to overwrite one (that would orphan every node).
pub fn create_ca(dir: &Path) -> Result<(FleetCa, PathBuf, PathBuf), IdentityError> {
    let key_path = dir.join(CA_KEY_FILE);
    let pub_path = dir.join(CA_PUB_FILE);
    if key_path.exists() {
        return Err(IdentityError::Exists { path: key_path });
    }
    fs::create_dir_all(dir).map_err(|source| IdentityError::Io { path: dir.to_owned(), source })?;
    let ca = FleetCa::generate();
    write_secret_file(&key_path, &ca.secret_base64())?;
    fs::write(&pub_path, format!("{}\n", ca.public().fleet_id()))
        .map_err(|source| IdentityError::Io { path: pub_path.clone(), source })?;
    Ok((ca, key_path, pub_path))
}

/// Loads the CA secret (must be mode 0600).
pub fn load_ca(path: &Path) -> Result<FleetCa, IdentityError> {
    FleetCa::from_base64(&read_secret_file(path)?)
        .map_err(|e| IdentityError::Corrupt { path: path.to_owned(), reason: e.to_string() })
}

/// Loads the CA public key file.
pub fn load_ca_public(path: &Path) -> Result<CaPublicKey, IdentityError> {
    let text = read_bounded(path, MAX_KEY_FILE)?;
    CaPublicKey::try_from(text).map_err(|e| IdentityError::Corrupt { path: path.to_owned(), reason: e.to_string() })
}

/// Reads a JSON file (certificate, signing request, revocation list).
pub fn load_json<T: DeserializeOwned>(path: &Path) -> Result<T, IdentityError> {
    let text = read_bounded(path, MAX_JSON_FILE)?;
    serde_json::from_str(&text).map_err(|e| IdentityError::Corrupt { path: path.to_owned(), reason: e.to_string() })
}

/// Writes a JSON file atomically (not secret: 0644).
pub fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io { path: path.to_owned(), source };
    let text = serde_json::to_string_pretty(value).map_err(|e| io(std::io::Error::other(e)))?;
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text + "\n").map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_round_trip_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, key, public) = create_ca(dir.path()).unwrap();
        assert_eq!(load_ca(&key).unwrap().public(), ca.public());
        assert_eq!(load_ca_public(&public).unwrap(), ca.public());
        assert!(create_ca(dir.path()).is_err());
    }

    #[test]
    fn oversized_binary_or_broken_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.cert.json");
        let load = |bytes: &[u8]| {
            fs::write(&p, bytes).unwrap();
            load_json::<crate::cert::Certificate>(&p).unwrap_err().to_string()
        };
        let shown = p.display();
        let hint = "(restore it from backup or recreate it with `meshdrain mesh keygen`/`init`)";
        assert_eq!(
            load(&vec![b' '; (MAX_JSON_FILE + 1) as usize]),
            format!("{shown}: larger than 1048576 bytes {hint}")
        );
        assert_eq!(load(&[0xff, 0xfe, b'{']), format!("{shown}: not UTF-8 text {hint}"));
        assert_eq!(
            load(b"{\"version\": 1"),
            format!("{shown}: EOF while parsing an object at line 1 column 13 {hint}")
        );
        fs::write(&p, "A".repeat(5000)).unwrap();
        assert_eq!(load_ca_public(&p).unwrap_err().to_string(), format!("{shown}: larger than 4096 bytes {hint}"));
        fs::write(&p, "QUJD\n").unwrap();
        assert!(load_ca_public(&p).unwrap_err().to_string().contains("3 bytes"));
    }
}
