//! CHAP (iscsi/src/chap.rs) and the target's CHAP_R check (iscsi/src/login.rs).
//! Invariants: `from_hex` never panics and accepts exactly `0x`/`0X` + an even, non-zero
//! number of hex digits, decoding to what `to_hex` encodes back (up to case); in a full
//! login exchange the target accepts CHAP_R exactly when it decodes to MD5(id, secret,
//! challenge), and always for the correct response.
//! Input: byte 0 bit 0 = send the correct response instead of the input; the rest is
//! the CHAP_R value (lossy UTF-8).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshdrain_fuzz::{CHAP_SECRET, CHAP_USER, TARGET_NAME, login_machine, login_pdu};
use meshdrain_iscsi::chap;
use meshdrain_iscsi::login::{LoginEvent, Refusal, stage};
use meshdrain_iscsi::text;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let value = String::from_utf8_lossy(rest);
    check_hex(&value);
    if value.contains('\0') || value.len() > text::MAX_VALUE_LEN {
        return;
    }
    let mut m = login_machine(true);
    let names = format!("InitiatorName=iqn.2026-11.dev.meshdrain:i\0TargetName={TARGET_NAME}\0AuthMethod=CHAP,None\0");
    let (_, ev) = m.step(&login_pdu(0, stage::SECURITY, stage::OPERATIONAL, false, false, names.as_bytes()));
    assert_eq!(ev, LoginEvent::Continue);
    let (rsp, ev) = m.step(&login_pdu(1, stage::SECURITY, stage::OPERATIONAL, false, false, b"CHAP_A=5\0"));
    assert_eq!(ev, LoginEvent::Continue);
    let pairs = text::parse(&rsp.data).expect("challenge text parses");
    let id: u8 = text::get(&pairs, "CHAP_I").expect("CHAP_I").parse().expect("CHAP_I is a byte");
    let challenge = chap::from_hex(text::get(&pairs, "CHAP_C").expect("CHAP_C")).expect("CHAP_C is hex");
    let want = chap::response(id, CHAP_SECRET.as_bytes(), &challenge);
    let sent = if sel & 1 != 0 { chap::to_hex(&want) } else { value.into_owned() };
    let answer = format!("CHAP_N={CHAP_USER}\0CHAP_R={sent}\0");
    let (_, ev) = m.step(&login_pdu(2, stage::SECURITY, stage::OPERATIONAL, true, false, answer.as_bytes()));
    let correct = chap::from_hex(&sent).is_some_and(|got| got == want);
    match ev {
        LoginEvent::Continue => assert!(correct, "target accepted CHAP_R={sent}"),
        LoginEvent::Refused(Refusal::AuthenticationFailed, _) => assert!(!correct, "target refused the correct CHAP_R"),
        other => panic!("unexpected outcome {other:?} for CHAP_R={sent}"),
    }
});

fn check_hex(v: &str) {
    let decoded = chap::from_hex(v);
    let digits = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X"));
    let well_formed =
        digits.is_some_and(|h| !h.is_empty() && h.len() % 2 == 0 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(decoded.is_some(), well_formed, "from_hex({v:?}) = {decoded:?}");
    if let Some(bytes) = decoded {
        assert_eq!(bytes.len() * 2 + 2, v.len());
        assert!(chap::to_hex(&bytes).eq_ignore_ascii_case(v));
        assert_eq!(chap::from_hex(&chap::to_hex(&bytes)), Some(bytes));
    }
}
