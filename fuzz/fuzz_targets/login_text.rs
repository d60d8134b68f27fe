//! Login text and negotiation (iscsi/src/text.rs, negotiate.rs, login.rs).
//! Invariants: `text::parse` keeps its limits (pairs, key and value lengths) and
//! round-trips through `text::encode`; negotiated parameters stay inside what we
//! offered and the RFC allows; the login machine answers every request with a Login
//! Response whose text parses (no duplicate keys), and never reaches full feature
//! phase without CHAP when the export requires it.
//! Input: byte 0 bit 0 = export requires CHAP; then records `[flags][u16 len][text]`,
//! flags = transit(0x80) continue(0x40) CSG(bits 2-3) NSG(bits 0-1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshdrain_fuzz::{login_machine, login_pdu, records};
use meshdrain_iscsi::login::LoginEvent;
use meshdrain_iscsi::negotiate::{self, MAX_24, Offer, SessionParams, SessionType};
use meshdrain_iscsi::pdu::Opcode;
use meshdrain_iscsi::text::{self, MAX_KEY_LEN, MAX_PAIRS, MAX_VALUE_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    check_text(rest);
    let chap = sel & 1 != 0;
    let offer = Offer::default();
    let mut m = login_machine(chap);
    for (i, (flags, payload)) in records(rest, 16).into_iter().enumerate() {
        let (transit, cont, csg, nsg) = (flags & 0x80 != 0, flags & 0x40 != 0, flags >> 2 & 3, flags & 3);
        let (rsp, event) = m.step(&login_pdu(i as u32, csg, nsg, transit, cont, payload));
        assert_eq!(rsp.opcode(), Some(Opcode::LoginResponse));
        let answer = text::parse(&rsp.data).unwrap_or_else(|e| panic!("our login response text does not parse: {e}"));
        assert!(answer.len() <= MAX_PAIRS);
        match event {
            LoginEvent::Continue => {}
            LoginEvent::Refused(..) => {
                assert_ne!(rsp.login_status().0, 0, "refusal with success status");
                break;
            }
            LoginEvent::FullFeature(p) => {
                assert!(!chap, "full feature phase reached without CHAP on an export that requires it");
                assert!(p.first_burst_length <= p.max_burst_length);
                assert!(p.max_burst_length <= offer.max_burst_length);
                assert!((512..=MAX_24).contains(&p.max_xmit_data_segment_length));
                // Discovery declares less (SendTargets needs no more than the RFC default).
                assert!(p.max_recv_data_segment_length <= offer.max_recv_data_segment_length);
                if p.session_type == SessionType::Normal {
                    assert_eq!(p.max_recv_data_segment_length, offer.max_recv_data_segment_length);
                }
                assert_eq!((p.error_recovery_level, p.max_connections, p.max_outstanding_r2t), (0, 1, 1));
                assert!(p.default_time2retain <= 20);
                break;
            }
        }
    }
});

/// Text limits, round trip, and both sides' negotiation on the parsed pairs.
fn check_text(data: &[u8]) {
    let Ok(pairs) = text::parse(data) else { return };
    assert!(pairs.len() <= MAX_PAIRS);
    for (k, v) in &pairs {
        assert!(!k.is_empty() && k.len() <= MAX_KEY_LEN && v.len() <= MAX_VALUE_LEN);
        assert!(!k.contains('=') && !k.contains('\0') && !v.contains('\0'));
    }
    assert_eq!(text::parse(&text::encode(&pairs)).expect("encoded pairs parse"), pairs);
    let offer = Offer::default();
    let mut target = SessionParams::default();
    let mut initiator = SessionParams::default();
    for (k, v) in &pairs {
        let _ = negotiate::respond(&mut target, &offer, k, v).wire();
        let _ = negotiate::apply_answer(&mut initiator, k, v);
    }
    assert!(target.max_burst_length <= offer.max_burst_length);
    assert!(target.first_burst_length <= offer.first_burst_length);
    assert!((512..=MAX_24).contains(&target.max_xmit_data_segment_length));
    assert!(initiator.max_burst_length <= SessionParams::default().max_burst_length);
    assert_eq!(initiator.error_recovery_level, 0);
}
