//! Fuzzes key=value text parsing and the target's login state machine:
//! arbitrary login PDUs must yield a response and never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use meshdrain_iscsi::login::{LoginMachine, LoginPolicy};
use meshdrain_iscsi::negotiate::Offer;
use meshdrain_iscsi::pdu::Pdu;

fuzz_target!(|data: &[u8]| {
    let _ = meshdrain_iscsi::text::parse(data);
    let mut m = LoginMachine::new(LoginPolicy {
        target_name: "iqn.2026-11.dev.meshdrain:fuzz".into(),
        chap: None,
        offer: Offer::default(),
        tsih: 1,
        authorize: Box::new(|_| true),
    });
    for (i, chunk) in data.split(|b| *b == 0xff).take(8).enumerate() {
        let flags = chunk.first().copied().unwrap_or(0);
        let (csg, nsg) = ((flags >> 2) & 3, flags & 3);
        let req = Pdu::login_request([0x80, 0, 0, 0, 1, 0], 0, i as u32, 1, 0, csg, nsg, flags & 0x80 != 0, Bytes::copy_from_slice(chunk));
        let _ = m.step(&req);
    }
});
