//! Fixtures shared by the fuzz targets: fixed keys, a fixed clock and framing helpers,
//! so every run (and every crash file) reproduces without randomness. See docs/threat-model.md.

use bytes::Bytes;
use meshdrain_iscsi::login::{LoginMachine, LoginPolicy};
use meshdrain_iscsi::negotiate::Offer;
use meshdrain_iscsi::pdu::Pdu;

mod mesh_fixtures;
pub use mesh_fixtures::*;

/// The target name the login targets answer to.
pub const TARGET_NAME: &str = "iqn.2026-11.dev.meshdrain:fuzz";
/// The CHAP user and secret of the login targets that require CHAP.
pub const CHAP_USER: &str = "fuzzuser";
/// See [`CHAP_USER`].
pub const CHAP_SECRET: &str = "fuzz-secret-16b!";

/// A target-side login machine; `chap` makes it require CHAP.
pub fn login_machine(chap: bool) -> LoginMachine {
    LoginMachine::new(LoginPolicy {
        target_name: TARGET_NAME.into(),
        chap: chap
            .then(|| meshdrain_iscsi::chap::ChapCredentials { user: CHAP_USER.into(), secret: CHAP_SECRET.into() }),
        offer: Offer::default(),
        tsih: 7,
        authorize: Box::new(|iqn| !iqn.contains("denied")),
    })
}

/// A login request PDU for stage `csg` → `nsg` carrying `text`.
pub fn login_pdu(itt: u32, csg: u8, nsg: u8, transit: bool, cont: bool, text: &[u8]) -> Pdu {
    let mut p =
        Pdu::login_request([0x80, 0, 0, 0, 1, 0], 0, itt, 1, 0, csg, nsg, transit, Bytes::copy_from_slice(text));
    if cont {
        p.bhs[1] |= 0x40;
    }
    p
}

/// Splits fuzz input into records of `[header byte][u16 LE length][payload]`, at most
/// `max` of them; a short tail becomes the last payload. Seeds use the same framing.
pub fn records(mut data: &[u8], max: usize) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while out.len() < max && !data.is_empty() {
        let head = data[0];
        if data.len() < 3 {
            out.push((head, &data[1..]));
            break;
        }
        let len = (u16::from_le_bytes([data[1], data[2]]) as usize).min(data.len() - 3);
        out.push((head, &data[3..3 + len]));
        data = &data[3 + len..];
    }
    out
}

/// Builds one record in the [`records`] framing (for seed generation).
pub fn record(head: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![head];
    v.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    v.extend_from_slice(payload);
    v
}
