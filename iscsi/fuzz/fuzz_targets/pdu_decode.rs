//! Fuzzes the PDU framing codec with every digest setting: decode must
//! never panic, and whatever decodes must re-encode and decode identically.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use meshdrain_iscsi::pdu::Codec;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let codec = Codec { header_digest: flags & 1 != 0, data_digest: flags & 2 != 0, max_recv_data: 65536 };
    let mut buf = BytesMut::from(rest);
    for _ in 0..16 {
        match codec.decode(&mut buf) {
            Ok(Some(pdu)) => {
                let mut again = BytesMut::new();
                codec.encode(&pdu, &mut again);
                let back = codec.decode(&mut again).expect("re-encoded PDU decodes").expect("complete");
                assert_eq!(back.data, pdu.data);
                assert_eq!(back.ahs, pdu.ahs);
            }
            _ => break,
        }
    }
});
