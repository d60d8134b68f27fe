//! Fleet admission: an ed25519 fleet CA signs node certificates (public key, name, mesh
//! address, expiry) and revocation lists. Verification is pure: certificate, CA key,
//! revocations and `now` in; admitted node or a reason out.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};

use crate::address::FleetPrefix;
use crate::error::{AdmissionError, IdentityError};
use crate::keys::{PublicKey, decode32};
use crate::refusals::clip;

/// Certificate format version; bumped on incompatible change.
pub const CERT_VERSION: u32 = 1;
/// Longest node name the CA signs: names travel in every join datagram and gossip record.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a node name before signing: 1 to [`MAX_NAME_LEN`] letters, digits, `.`, `-`, `_`
/// (it shows up in logs and status, and must keep a join datagram small).
pub fn check_name(name: &str) -> Result<(), IdentityError> {
    let bad = |reason: &str| IdentityError::BadName { name: clip(name, MAX_NAME_LEN), reason: reason.to_owned() };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad(&format!("{} bytes, not 1 to {MAX_NAME_LEN}", name.len())));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
        return Err(bad(&format!("character {c:?} is not a letter, digit, '.', '-' or '_'")));
    }
    Ok(())
}

/// The fleet CA's secret key. Kept off the nodes in real use: it only signs.
pub struct FleetCa {
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FleetCa({})", self.public().fleet_id())
    }
}

/// The fleet CA's public key: what every node needs to check certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CaPublicKey(pub [u8; 32]);

impl TryFrom<String> for CaPublicKey {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, IdentityError> {
        decode32(s.trim(), "fleet CA public key").map(Self)
    }
}

impl From<CaPublicKey> for String {
    fn from(k: CaPublicKey) -> String {
        k.fleet_id()
    }
}

impl CaPublicKey {
    /// The fleet's id as printed in certificates and logs (base64 CA key).
    pub fn fleet_id(&self) -> String {
        B64.encode(self.0)
    }

    /// The fleet's mesh /48.
    pub fn prefix(&self) -> FleetPrefix {
        FleetPrefix::from_ca_key(&self.0)
    }

    fn verifying_key(&self) -> Option<ed25519_dalek::VerifyingKey> {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0).ok()
    }

    fn verify(&self, msg: &[u8], sig_b64: &str) -> Result<(), String> {
        let vk = self.verifying_key().ok_or("CA key is not a valid ed25519 point")?;
        let sig = B64.decode(sig_b64).map_err(|e| format!("signature not base64: {e}"))?;
        let sig = ed25519_dalek::Signature::from_slice(&sig).map_err(|e| format!("bad signature: {e}"))?;
        vk.verify(msg, &sig).map_err(|_| "signature does not verify".to_owned())
    }
}

impl FleetCa {
    /// A fresh CA.
    pub fn generate() -> Self {
        Self { key: ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>()) }
    }

    /// From the base64 secret stored by `meshdrain mesh init`.
    pub fn from_base64(s: &str) -> Result<Self, IdentityError> {
        decode32(s.trim(), "fleet CA secret key").map(|b| Self { key: ed25519_dalek::SigningKey::from_bytes(&b) })
    }

    /// The base64 secret, for the CA file only.
    pub fn secret_base64(&self) -> String {
        B64.encode(self.key.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> CaPublicKey {
        CaPublicKey(self.key.verifying_key().to_bytes())
    }

    /// Issues a certificate for `request`, valid until `not_after`. The address is always
    /// derived here, never taken from the request.
    pub fn sign(&self, request: &SigningRequest, not_after: SystemTime) -> Result<Certificate, IdentityError> {
        check_name(&request.name)?;
        let node = PublicKey::from_base64(&request.public_key)?;
        let ca = self.public();
        let body = CertificateBody {
            version: CERT_VERSION,
            fleet: ca.fleet_id(),
            name: request.name.clone(),
            public_key: node.to_base64(),
            address: ca.prefix().node_address(&node),
            not_after: unix(not_after),
        };
        let signature = B64.encode(self.key.sign(&body.signed_bytes()).to_bytes());
        Ok(Certificate { body, signature })
    }

    /// Signs a revocation list naming `revoked` keys, with a serial that only grows so a node
    /// keeps the newest list it has seen.
    pub fn revocations(&self, serial: u64, revoked: BTreeSet<String>) -> RevocationList {
        let body = RevocationBody { fleet: self.public().fleet_id(), serial, revoked };
        let signature = B64.encode(self.key.sign(&body.signed_bytes()).to_bytes());
        RevocationList { body, signature }
    }
}

/// What a node hands the CA operator to be enrolled (`meshdrain mesh keygen` writes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningRequest {
    /// Node name.
    pub name: String,
    /// Its WireGuard public key (base64).
    pub public_key: String,
}

/// The signed part of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateBody {
    /// Format version ([`CERT_VERSION`]).
    pub version: u32,
    /// The issuing fleet (base64 CA public key).
    pub fleet: String,
    /// Node name.
    pub name: String,
    /// The node's WireGuard public key (base64): its identity.
    pub public_key: String,
    /// Its mesh address, derived from the fleet prefix and the key.
    pub address: Ipv6Addr,
    /// Expiry, unix seconds.
    pub not_after: u64,
}

impl CertificateBody {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut v = b"meshdrain node certificate\0".to_vec();
        v.extend(serde_json::to_vec(self).unwrap_or_default());
        v
    }
}

/// A node certificate: published in gossip so every agent can decide admission alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// What the CA vouches for.
    #[serde(flatten)]
    pub body: CertificateBody,
    /// ed25519 signature over the body (base64).
    pub signature: String,
}

/// A node that passed admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Node name.
    pub name: String,
    /// WireGuard public key.
    pub public_key: PublicKey,
    /// Mesh address.
    pub address: Ipv6Addr,
}

impl Certificate {
    /// Checks fleet, signature, address derivation, expiry and revocation, in that order.
    pub fn verify(
        &self,
        ca: &CaPublicKey,
        revoked: &RevocationList,
        now: SystemTime,
    ) -> Result<Admitted, AdmissionError> {
        let b = &self.body;
        // Until the signature verifies, every field is the sender's text: clip it for errors.
        let name = clip(&b.name, MAX_NAME_LEN);
        let forged = |reason: String| AdmissionError::Forged { name: name.clone(), reason };
        if b.fleet != ca.fleet_id() {
            return Err(AdmissionError::OtherFleet {
                name: name.clone(),
                fleet: clip(&b.fleet, 64),
                ours: ca.fleet_id(),
            });
        }
        if b.version != CERT_VERSION {
            return Err(forged(format!("unknown certificate version {}", b.version)));
        }
        ca.verify(&b.signed_bytes(), &self.signature).map_err(forged)?;
        let key = PublicKey::from_base64(&b.public_key).map_err(|e| forged(e.to_string()))?;
        if ca.prefix().node_address(&key) != b.address {
            return Err(forged(format!("address {} is not derived from the key", b.address)));
        }
        if unix(now) >= b.not_after {
            return Err(AdmissionError::Expired { name, expired_at: b.not_after });
        }
        if revoked.is_revoked(&b.public_key) {
            return Err(AdmissionError::Revoked { name, public_key: b.public_key.clone() });
        }
        Ok(Admitted { name: b.name.clone(), public_key: key, address: b.address })
    }
}

/// The signed part of a revocation list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationBody {
    /// The issuing fleet.
    pub fleet: String,
    /// Grows with every list; newer wins.
    pub serial: u64,
    /// Revoked WireGuard public keys (base64).
    pub revoked: BTreeSet<String>,
}

impl RevocationBody {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut v = b"meshdrain revocation list\0".to_vec();
        v.extend(serde_json::to_vec(self).unwrap_or_default());
        v
    }
}

/// The fleet's revocation list, signed by the CA so any node may republish it in gossip.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    /// The list.
    #[serde(flatten)]
    pub body: RevocationBody,
    /// ed25519 signature (base64); empty for the empty default list.
    pub signature: String,
}

impl RevocationList {
    /// Whether `public_key` (base64) is revoked.
    pub fn is_revoked(&self, public_key: &str) -> bool {
        self.body.revoked.contains(public_key)
    }

    /// Checks that our CA signed this list; an unsigned or foreign list must be ignored.
    pub fn verify(&self, ca: &CaPublicKey) -> Result<(), AdmissionError> {
        let forged = |reason: String| AdmissionError::Forged { name: "revocation list".into(), reason };
        if self.body.fleet != ca.fleet_id() {
            return Err(forged(format!("issued by fleet {}", self.body.fleet)));
        }
        ca.verify(&self.body.signed_bytes(), &self.signature).map_err(forged)
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::NodeKey;
    use std::time::Duration;

    fn setup() -> (FleetCa, NodeKey, Certificate, SystemTime) {
        let ca = FleetCa::generate();
        let node = NodeKey::generate();
        let now = SystemTime::now();
        let req = SigningRequest { name: "n1".into(), public_key: node.public().to_base64() };
        let cert = ca.sign(&req, now + Duration::from_secs(3600)).unwrap();
        (ca, node, cert, now)
    }

    #[test]
    fn valid_certificate_is_admitted() {
        let (ca, node, cert, now) = setup();
        let a = cert.verify(&ca.public(), &RevocationList::default(), now).unwrap();
        assert_eq!(a.public_key, node.public());
        assert_eq!(a.address, ca.public().prefix().node_address(&node.public()));
        let json = serde_json::to_string(&cert).unwrap();
        assert_eq!(serde_json::from_str::<Certificate>(&json).unwrap(), cert);
    }

    #[test]
    fn expired_is_refused() {
        let (ca, _, cert, now) = setup();
        let e = cert.verify(&ca.public(), &RevocationList::default(), now + Duration::from_secs(3601));
        assert!(matches!(e, Err(AdmissionError::Expired { .. })), "{e:?}");
    }

    #[test]
    fn other_fleet_is_refused() {
        let (_, _, cert, now) = setup();
        let other = FleetCa::generate();
        let e = cert.verify(&other.public(), &RevocationList::default(), now);
        assert!(matches!(e, Err(AdmissionError::OtherFleet { .. })), "{e:?}");
    }

    #[test]
    fn forged_is_refused() {
        let (ca, _, cert, now) = setup();
        let mut longer = cert.clone();
        longer.body.not_after += 1_000_000;
        let e = longer.verify(&ca.public(), &RevocationList::default(), now);
        assert!(matches!(e, Err(AdmissionError::Forged { .. })), "{e:?}");
        // Self-signed by an impostor CA that claims our fleet id.
        let impostor = FleetCa::generate();
        let mut fake = impostor
            .sign(
                &SigningRequest { name: "x".into(), public_key: cert.body.public_key.clone() },
                now + Duration::from_secs(60),
            )
            .unwrap();
        fake.body.fleet = ca.public().fleet_id();
        let e = fake.verify(&ca.public(), &RevocationList::default(), now);
        assert!(matches!(e, Err(AdmissionError::Forged { .. })), "{e:?}");
    }

    #[test]
    fn revoked_is_refused_and_lists_verify() {
        let (ca, node, cert, now) = setup();
        let rl = ca.revocations(1, [node.public().to_base64()].into());
        rl.verify(&ca.public()).unwrap();
        let e = cert.verify(&ca.public(), &rl, now);
        assert!(matches!(e, Err(AdmissionError::Revoked { .. })), "{e:?}");
        let mut tampered = rl.clone();
        tampered.body.revoked.clear();
        assert!(tampered.verify(&ca.public()).is_err());
        assert!(FleetCa::generate().revocations(1, BTreeSet::new()).verify(&ca.public()).is_err());
    }

    #[test]
    fn ca_round_trips() {
        let ca = FleetCa::generate();
        assert_eq!(FleetCa::from_base64(&ca.secret_base64()).unwrap().public(), ca.public());
    }

    #[test]
    fn the_ca_signs_only_plain_bounded_names() {
        let ca = FleetCa::generate();
        let key = NodeKey::generate().public().to_base64();
        let sign = |name: &str| {
            let req = SigningRequest { name: name.into(), public_key: key.clone() };
            ca.sign(&req, SystemTime::now()).map(|c| c.body.name).map_err(|e| e.to_string())
        };
        assert_eq!(sign("node-1.rack_2"), Ok("node-1.rack_2".into()));
        assert_eq!(
            sign(""),
            Err("node name \"\" refused: 0 bytes, not 1 to 64 (pick another `--name` at `meshdrain mesh keygen`)"
                .into())
        );
        assert_eq!(
            sign(&"n".repeat(65)),
            Err(format!(
                "node name \"{}…\" refused: 65 bytes, not 1 to 64 (pick another `--name` at `meshdrain mesh keygen`)",
                "n".repeat(64)
            ))
        );
        assert_eq!(
            sign("a\nb"),
            Err("node name \"a\\\\nb\" refused: character '\\n' is not a letter, digit, '.', '-' or '_' \
                 (pick another `--name` at `meshdrain mesh keygen`)"
                .into())
        );
    }

    #[test]
    fn malformed_certificates_and_requests_get_clear_errors() {
        let (ca, _, cert, now) = setup();
        let json = serde_json::to_string(&cert).unwrap();
        let parse = |s: &str| serde_json::from_str::<Certificate>(s).map_err(|e| e.to_string());
        let cut = json.len() - 1;
        assert_eq!(parse(&json[..cut]), Err(format!("EOF while parsing an object at line 1 column {cut}")));
        assert_eq!(parse("[]"), Err("invalid type: sequence, expected struct Certificate at line 1 column 0".into()));
        // Bad base64 and wrong lengths in signature and key: refused, never a panic.
        let none = RevocationList::default();
        let mut c = cert.clone();
        c.signature = "QUJD".into();
        assert_eq!(
            c.verify(&ca.public(), &none, now).unwrap_err().to_string(),
            "certificate of node n1 is forged or corrupt (bad signature: signature error): refuse it and check who publishes it"
        );
        c.signature = "A".repeat(100_000);
        assert!(c.verify(&ca.public(), &none, now).unwrap_err().to_string().contains("is forged or corrupt"));
        // A CSR whose key is not a key.
        let req = |k: &str| SigningRequest { name: "n1".into(), public_key: k.into() };
        assert_eq!(
            ca.sign(&req("not base64!"), now).unwrap_err().to_string(),
            "bad key public key: Invalid symbol 32, offset 3. (expected 32 bytes in base64, as printed by `meshdrain mesh keygen`)"
        );
        assert_eq!(
            ca.sign(&req("QUJD"), now).unwrap_err().to_string(),
            "bad key public key: 3 bytes (expected 32 bytes in base64, as printed by `meshdrain mesh keygen`)"
        );
        assert_eq!(
            ca.sign(&req(&"A".repeat(1 << 20)), now).unwrap_err().to_string(),
            "bad key public key: 1048576 characters (expected 32 bytes in base64, as printed by `meshdrain mesh keygen`)"
        );
        assert!(
            serde_json::from_str::<SigningRequest>("{\"name\":\"n\",\"public_key\":\"k\",\"x\":1}")
                .unwrap_err()
                .to_string()
                .starts_with("unknown field `x`")
        );
    }
}
