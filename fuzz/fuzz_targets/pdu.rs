//! iSCSI PDU framing (iscsi/src/pdu/codec.rs), every digest setting and segment limit.
//! Invariants: decode never panics; `Ok(None)` consumes nothing; a decoded PDU's data
//! segment is within MaxRecvDataSegmentLength and its AHS within the 1020 bytes the BHS
//! can announce; decode → encode gives the same frame length and decodes back equal.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use meshdrain_iscsi::pdu::{BHS_LEN, Codec};

const LIMITS: [usize; 4] = [512, 8192, 262_144, (1 << 24) - 1];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let codec = Codec {
        header_digest: sel & 1 != 0,
        data_digest: sel & 2 != 0,
        max_recv_data: LIMITS[(sel >> 2 & 3) as usize],
    };
    let mut buf = BytesMut::from(rest);
    for _ in 0..64 {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(pdu)) => {
                let used = before - buf.len();
                assert!(used >= BHS_LEN && used <= before);
                assert!(pdu.data.len() <= codec.max_recv_data, "data {} > limit", pdu.data.len());
                assert!(pdu.ahs.len() <= 255 * 4 && pdu.ahs.len() % 4 == 0);
                assert_eq!(pdu.data.len(), pdu.data_len_field());
                assert_eq!(pdu.ahs.len(), pdu.ahs_len());
                let mut out = BytesMut::new();
                codec.encode(&pdu, &mut out);
                assert_eq!(out.len(), used, "re-encoded frame length differs");
                let again = codec.decode(&mut out).expect("re-encoded PDU decodes").expect("complete frame");
                assert_eq!(again, pdu);
                assert!(out.is_empty());
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                break;
            }
            Err(_) => break,
        }
    }
});
