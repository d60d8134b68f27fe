//! Inputs the fuzz targets in fuzz/ found (scripts/fuzz-ci, bench/fuzz.sh), replayed as
//! plain tests so a fix stays fixed. Each names the target, the input and the invariant.

use bytes::Bytes;
use meshdrain_iscsi::login::{LoginEvent, LoginMachine, LoginPolicy, stage};
use meshdrain_iscsi::negotiate::Offer;
use meshdrain_iscsi::pdu::Pdu;
use meshdrain_iscsi::text;

const TARGET: &str = "iqn.2026-11.dev.meshdrain:fuzz";

fn machine() -> LoginMachine {
    LoginMachine::new(LoginPolicy {
        target_name: TARGET.into(),
        chap: None,
        offer: Offer::default(),
        tsih: 7,
        authorize: Box::new(|_| true),
    })
}

/// One login step to full feature phase from `csg`, returning the response's text.
fn answer(csg: u8, body: &str) -> (Result<Vec<(String, String)>, text::TextError>, LoginEvent) {
    let req = Pdu::login_request(
        [0x80, 0, 0, 0, 1, 0],
        0,
        1,
        1,
        0,
        csg,
        stage::FULL_FEATURE,
        true,
        Bytes::from(body.replace('|', "\0")),
    );
    let (rsp, event) = machine().step(&req);
    (text::parse(&rsp.data), event)
}

/// fuzz target `login_text`, crash-a6c3c8dd: a discovery login offering an invalid
/// MaxRecvDataSegmentLength got `MaxRecvDataSegmentLength=Reject` and then our own
/// declaration of the same key in one response; RFC 7143 §6.2 makes a key sent twice a
/// protocol error, so our own initiator (text::parse) refuses the answer.
#[test]
fn fuzz_login_invalid_mrdsl_is_answered_once() {
    let (pairs, event) = answer(
        stage::OPERATIONAL,
        "InitiatorName=iqn.2026-11.dev.meshdrain:i|SessionType=Discovery|MaxRecvDataSegmentLength=81,|",
    );
    let pairs = pairs.expect("the target's response text parses");
    let mrdsl: Vec<_> = pairs.iter().filter(|(k, _)| k == "MaxRecvDataSegmentLength").collect();
    assert_eq!(mrdsl.len(), 1, "{pairs:?}");
    assert!(matches!(event, LoginEvent::FullFeature(_) | LoginEvent::Refused(..)), "{event:?}");
}

/// fuzz target `login_text`: an initiator sending TargetPortalGroupTag (a target-only
/// key) in its first PDU got `TargetPortalGroupTag=1` and `TargetPortalGroupTag=Reject`.
#[test]
fn fuzz_login_initiator_tpgt_is_answered_once() {
    let body = format!(
        "InitiatorName=iqn.2026-11.dev.meshdrain:i|TargetName={TARGET}|TargetPortalGroupTag=1|AuthMethod=None|"
    );
    let (pairs, _) = answer(stage::SECURITY, &body);
    let pairs = pairs.expect("the target's response text parses");
    let tpgt: Vec<_> = pairs.iter().filter(|(k, _)| k == "TargetPortalGroupTag").collect();
    assert_eq!(tpgt.len(), 1, "{pairs:?}");
}

/// fuzz target `login_text`, crash-34ecca82: after the fix above, a normal session whose
/// initiator declared an invalid MaxRecvDataSegmentLength reached full feature phase without
/// our declaration, so the two sides disagreed on what we accept. Our declaration is now the
/// key's one answer, and the session accepts what we offered.
#[test]
fn fuzz_login_invalid_mrdsl_still_gets_our_declaration() {
    let body = format!(
        "InitiatorName=iqn.2026-11.dev.meshdrain:i|TargetName={TARGET}|SessionType=Normal|\
         MaxRecvDataSegmentLength=2621ev|"
    );
    let (pairs, event) = answer(stage::OPERATIONAL, &body);
    let pairs = pairs.expect("the target's response text parses");
    let mrdsl: Vec<_> = pairs.iter().filter(|(k, _)| k == "MaxRecvDataSegmentLength").collect();
    let ours = Offer::default().max_recv_data_segment_length.to_string();
    assert_eq!(mrdsl, vec![&("MaxRecvDataSegmentLength".to_owned(), ours)], "{pairs:?}");
    let LoginEvent::FullFeature(params) = event else { panic!("{event:?}") };
    assert_eq!(params.max_recv_data_segment_length, Offer::default().max_recv_data_segment_length);
}
