//! Codec properties: every PDU type round-trips with and without digests;
//! truncated input asks for more, oversized/garbage/bad-digest input is an
//! error, and nothing panics on arbitrary bytes.

use bytes::{Bytes, BytesMut};
use meshdrain_iscsi::pdu::{Codec, Opcode, Pdu, PduError, RejectReason, Residual};
use proptest::prelude::*;

fn all_types(data: Bytes) -> Vec<Pdu> {
    vec![
        Pdu::nop_out(1, 0xffff_ffff, 2, 3, data.clone()),
        Pdu::scsi_command(1 << 48, 7, 8, 9, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0], 512, true),
        Pdu::tmf_request(1, 1 << 48, 4, 5, 6, 7),
        Pdu::login_request([0x80, 1, 2, 3, 4, 0], 0, 1, 1, 0, 0, 1, true, data.clone()),
        Pdu::text_request(3, 0xffff_ffff, 4, 5, data.clone()),
        Pdu::data_out(1 << 48, 3, 4, 0, 0, data.clone(), true),
        Pdu::logout_request(9, 0, 10, 11),
        Pdu::snack(3, 0, 0, 0),
        Pdu::nop_in(0, 1, 0xffff_ffff, data.clone()),
        Pdu::scsi_response(
            5,
            2,
            &[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0],
            Residual::Underflow(512),
        ),
        Pdu::tmf_response(4, 0),
        Pdu::login_response(
            &Pdu::login_request([0; 6], 0, 1, 1, 0, 0, 1, true, Bytes::new()),
            1,
            0,
            1,
            true,
            0,
            0,
            data.clone(),
        ),
        Pdu::text_response(3, data.clone()),
        Pdu::data_in(1 << 48, 7, 0, 0, data.clone(), true, Some((0, Residual::None))),
        Pdu::logout_response(9, 0),
        Pdu::r2t(1 << 48, 3, 4, 0, 0, 4096),
        Pdu::async_message(1, 2),
        Pdu::reject(RejectReason::ProtocolError, &[0u8; 48]),
    ]
}

#[test]
fn every_opcode_is_covered() {
    let ops: Vec<Opcode> = all_types(Bytes::new()).iter().map(|p| p.opcode().unwrap()).collect();
    for op in Opcode::ALL {
        assert!(ops.contains(&op), "{op:?} has no constructor in the round-trip set");
    }
}

fn codecs() -> Vec<Codec> {
    let mut v = Vec::new();
    for h in [false, true] {
        for d in [false, true] {
            v.push(Codec { header_digest: h, data_digest: d, max_recv_data: 65536 });
        }
    }
    v
}

proptest! {
    #[test]
    fn round_trip_every_type(data in proptest::collection::vec(any::<u8>(), 0..3000), ahs_words in 0usize..3) {
        for codec in codecs() {
            for mut p in all_types(Bytes::from(data.clone())) {
                p.ahs = Bytes::from(vec![0xa5u8; ahs_words * 4]);
                let mut buf = BytesMut::new();
                codec.encode(&p, &mut buf);
                prop_assert_eq!(buf.len() % 4, 0);
                let wire = buf.clone();
                let got = codec.decode(&mut buf).unwrap().expect("complete");
                prop_assert!(buf.is_empty());
                prop_assert_eq!(got.opcode(), p.opcode());
                prop_assert_eq!(&got.data, &p.data);
                prop_assert_eq!(&got.ahs, &p.ahs);
                prop_assert_eq!(&got.bhs[8..], &p.bhs[8..]);
                // Every strict prefix is "need more", never an error or panic.
                for cut in [0, 1, 47, 48, wire.len() - 1] {
                    let mut part = BytesMut::from(&wire[..cut.min(wire.len() - 1)]);
                    prop_assert_eq!(codec.decode(&mut part), Ok(None));
                }
            }
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        for codec in codecs() {
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..64 {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
        let _ = meshdrain_iscsi::text::parse(&bytes);
    }
}

#[test]
fn oversized_and_unknown_and_digest_errors() {
    let codec = Codec { header_digest: true, data_digest: true, max_recv_data: 8192 };
    let big = Pdu::text_request(1, 0xffff_ffff, 1, 1, Bytes::from(vec![b'a'; 9000]));
    let mut buf = BytesMut::new();
    codec.encode(&big, &mut buf);
    assert!(matches!(codec.decode(&mut buf), Err(PduError::DataTooLong { len: 9000, max: 8192 })));

    let mut buf = BytesMut::from(&[0x3eu8; 48][..]);
    assert!(matches!(codec.decode(&mut buf), Err(PduError::UnknownOpcode(0x3e))));

    let p = Pdu::nop_out(1, 0xffff_ffff, 1, 1, Bytes::from_static(b"ping"));
    let mut buf = BytesMut::new();
    codec.encode(&p, &mut buf);
    let mut bad_header = buf.clone();
    bad_header[20] ^= 1;
    assert!(matches!(codec.decode(&mut bad_header), Err(PduError::HeaderDigest { .. })));
    let mut bad_data = buf.clone();
    bad_data[52] ^= 1;
    assert!(matches!(codec.decode(&mut bad_data), Err(PduError::DataDigest { opcode: Opcode::NopOut, .. })));
}

#[test]
fn crc32c_matches_rfc_3720_vector() {
    // RFC 3720 B.4: 32 bytes of zeros -> CRC aa 36 91 8a (bytes as on the wire).
    let codec = Codec { header_digest: false, data_digest: true, max_recv_data: 8192 };
    let p = Pdu::nop_out(1, 0xffff_ffff, 1, 1, Bytes::from(vec![0u8; 32]));
    let e = codec.encode_parts(&p);
    assert_eq!(&e.tail[..], &[0xaa, 0x36, 0x91, 0x8a]);
}
