//! Join requests: how a new (or returning) node gets through a seed's WireGuard.
//!
//! WireGuard drops handshakes from keys it does not know, and a node is only learnt from
//! gossip, which itself rides WireGuard. So a joining node first sends each seed one small
//! UDP datagram on the underlay (the seed's WireGuard port + [`JOIN_PORT_OFFSET`]) carrying
//! its certificate. The seed checks the certificate like any gossip advert (fleet,
//! signature, expiry, revocation) and that the sender holds the certified key: the datagram
//! carries an HMAC keyed by the X25519 secret shared by the two nodes, which only the key's
//! holder can compute. The seed then adds the joiner as a peer for a while; gossip takes over
//! from there. Nothing here is trusted beyond what the CA signed.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cert::{Admitted, CaPublicKey, Certificate, RevocationList};
use crate::error::AdmissionError;
use crate::keys::{NodeKey, PublicKey};

/// The join port is the WireGuard listen port plus this.
pub const JOIN_PORT_OFFSET: u16 = 1;
/// How far a join's timestamp may be from our clock (bounds replays).
pub const JOIN_CLOCK_SKEW: Duration = Duration::from_secs(120);
/// Format version of the datagram.
const JOIN_VERSION: u32 = 1;

/// The datagram a joining node sends to a seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Format version.
    pub v: u32,
    /// The joiner's certificate.
    pub certificate: Certificate,
    /// The seed it is meant for (base64 key): a join for another seed is refused.
    pub to: String,
    /// The joiner's WireGuard listen port (the datagram comes from its join port).
    pub wg_port: u16,
    /// Unix seconds when sent.
    pub at: u64,
    /// HMAC-SHA256 over the fields above, keyed by the X25519 shared secret (base64).
    pub mac: String,
}

/// A join that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The admitted node.
    pub admitted: Admitted,
    /// Its certificate (to treat it like a gossip advert).
    pub certificate: Certificate,
    /// Its WireGuard endpoint: the datagram's source address with its WireGuard port.
    pub endpoint: SocketAddr,
}

/// Why a join datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// Not a join datagram of a version we read.
    #[error("malformed join request: {0}")]
    Malformed(String),
    /// Addressed to another node.
    #[error("join request for another seed ({0})")]
    WrongSeed(String),
    /// Too old or from the future.
    #[error("join request timestamp {at} is more than {JOIN_CLOCK_SKEW:?} from our clock (check NTP)")]
    Stale {
        /// Its timestamp.
        at: u64,
    },
    /// The certificate is refused.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// The sender does not hold the certified key.
    #[error("join request from {0} does not prove possession of the certified key")]
    BadMac(String),
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn signed_bytes(cert: &Certificate, to: &str, wg_port: u16, at: u64) -> Vec<u8> {
    let mut v = b"meshdrain join v1\0".to_vec();
    v.extend(to.as_bytes());
    v.push(0);
    v.extend(wg_port.to_be_bytes());
    v.extend(at.to_be_bytes());
    v.extend(serde_json::to_vec(cert).unwrap_or_default());
    v
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(key);
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new().chain_update(&ipad).chain_update(msg).finalize();
    Sha256::new().chain_update(&opad).chain_update(inner).finalize().into()
}

impl JoinRequest {
    /// Builds the datagram for `seed`; `None` if the seed's key is degenerate.
    pub fn new(
        key: &NodeKey,
        certificate: &Certificate,
        seed: &PublicKey,
        wg_port: u16,
        now: SystemTime,
    ) -> Option<Self> {
        let shared = key.agree(seed)?;
        let to = seed.to_base64();
        let at = unix(now);
        let mac = B64.encode(hmac(&shared, &signed_bytes(certificate, &to, wg_port, at)));
        Some(Self { v: JOIN_VERSION, certificate: certificate.clone(), to, wg_port, at, mac })
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks a received datagram from `from` against our key, CA, revocations and clock.
    pub fn verify(
        datagram: &[u8],
        from: SocketAddr,
        me: &NodeKey,
        ca: &CaPublicKey,
        revoked: &RevocationList,
        now: SystemTime,
    ) -> Result<Joined, JoinError> {
        let req: JoinRequest = serde_json::from_slice(datagram).map_err(|e| JoinError::Malformed(e.to_string()))?;
        if req.v != JOIN_VERSION {
            return Err(JoinError::Malformed(format!("version {}", req.v)));
        }
        if req.to != me.public().to_base64() {
            return Err(JoinError::WrongSeed(req.to));
        }
        let skew = unix(now).abs_diff(req.at);
        if skew > JOIN_CLOCK_SKEW.as_secs() {
            return Err(JoinError::Stale { at: req.at });
        }
        let admitted = req.certificate.verify(ca, revoked, now)?;
        let name = admitted.name.clone();
        let shared = me.agree(&admitted.public_key).ok_or_else(|| JoinError::BadMac(name.clone()))?;
        let want = hmac(&shared, &signed_bytes(&req.certificate, &req.to, req.wg_port, req.at));
        let got = B64.decode(&req.mac).map_err(|_| JoinError::BadMac(name.clone()))?;
        // Constant-time enough: compare every byte.
        if got.len() != 32 || got.iter().zip(want.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
            return Err(JoinError::BadMac(name));
        }
        let endpoint = SocketAddr::new(from.ip().to_canonical(), req.wg_port);
        Ok(Joined { admitted, certificate: req.certificate, endpoint })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::{FleetCa, SigningRequest};

    fn enrol(ca: &FleetCa, name: &str, valid: Duration) -> (NodeKey, Certificate) {
        let key = NodeKey::generate();
        let req = SigningRequest { name: name.into(), public_key: key.public().to_base64() };
        let cert = ca.sign(&req, SystemTime::now() + valid).unwrap();
        (key, cert)
    }

    #[test]
    fn hmac_matches_a_reference_implementation() {
        // Python: hmac.new(b"\x0b" * 32, b"Hi There", hashlib.sha256).hexdigest()
        let mac = hmac(&[0x0b; 32], b"Hi There");
        assert_eq!(
            mac.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7"
        );
    }

    #[test]
    fn valid_join_is_admitted_with_source_ip_and_wg_port() {
        let ca = FleetCa::generate();
        let (seed, _) = enrol(&ca, "seed", Duration::from_secs(60));
        let (joiner, cert) = enrol(&ca, "joiner", Duration::from_secs(60));
        let now = SystemTime::now();
        let dg = JoinRequest::new(&joiner, &cert, &seed.public(), 51820, now).unwrap().encode();
        let from: SocketAddr = "[::ffff:198.18.0.3]:51821".parse().unwrap();
        let j = JoinRequest::verify(&dg, from, &seed, &ca.public(), &RevocationList::default(), now).unwrap();
        assert_eq!(j.admitted.public_key, joiner.public());
        assert_eq!(j.endpoint, "198.18.0.3:51820".parse().unwrap());
    }

    #[test]
    fn joins_are_refused_for_every_reason() {
        let ca = FleetCa::generate();
        let other = FleetCa::generate();
        let (seed, _) = enrol(&ca, "seed", Duration::from_secs(60));
        let (joiner, cert) = enrol(&ca, "joiner", Duration::from_secs(60));
        let now = SystemTime::now();
        let from: SocketAddr = "198.18.0.3:51821".parse().unwrap();
        let none = RevocationList::default();
        let check = |dg: &[u8], revoked: &RevocationList| {
            JoinRequest::verify(dg, from, &seed, &ca.public(), revoked, now).unwrap_err().to_string()
        };
        // Foreign fleet.
        let (fk, fc) = enrol(&other, "foreign", Duration::from_secs(60));
        let dg = JoinRequest::new(&fk, &fc, &seed.public(), 51820, now).unwrap().encode();
        assert!(check(&dg, &none).contains("belongs to fleet"));
        // Expired.
        let (ek, ec) = enrol(&ca, "old", Duration::ZERO);
        let dg = JoinRequest::new(&ek, &ec, &seed.public(), 51820, now + Duration::from_secs(1)).unwrap().encode();
        assert!(
            JoinRequest::verify(&dg, from, &seed, &ca.public(), &none, now + Duration::from_secs(1))
                .unwrap_err()
                .to_string()
                .contains("expired")
        );
        // Someone else's certificate, without its key.
        let thief = NodeKey::generate();
        let dg = JoinRequest::new(&thief, &cert, &seed.public(), 51820, now).unwrap().encode();
        assert!(check(&dg, &none).contains("does not prove possession"));
        // Revoked.
        let list = ca.revocations(1, [joiner.public().to_base64()].into());
        let dg = JoinRequest::new(&joiner, &cert, &seed.public(), 51820, now).unwrap().encode();
        assert!(check(&dg, &list).contains("revoked"));
        // For another seed.
        let dg = JoinRequest::new(&joiner, &cert, &NodeKey::generate().public(), 51820, now).unwrap().encode();
        assert!(check(&dg, &none).contains("another seed"));
        // Replayed much later.
        let dg =
            JoinRequest::new(&joiner, &cert, &seed.public(), 51820, now - Duration::from_secs(600)).unwrap().encode();
        assert!(check(&dg, &none).contains("from our clock"));
        assert!(check(b"nonsense", &none).contains("malformed"));
    }
}
