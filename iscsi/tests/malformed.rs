//! Malformed PDUs from a seeded generator (stable Rust, reproducible by
//! seed): valid requests of every kind an initiator sends, mutated (header
//! bytes flipped, opcode, AHS and data lengths rewritten, truncated, junk
//! appended, digests broken).
//!
//! - The decoder: every case frames a PDU, asks for more bytes, or fails
//!   with an error that names the offending field. Never a panic.
//! - A live target: after each mutated PDU the connection either keeps
//!   working (an immediate NOP-Out is answered) or is closed, within a
//!   bound; any Reject carries a defined reason and echoes our header. No
//!   task panics, and the target still serves new logins afterwards.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{IQN, Raw, raw_login, start_with};
use meshdrain_iscsi::pdu::{Codec, Opcode, Pdu, PduError};
use meshdrain_iscsi::{Target, TargetConfig};
use tokio::io::AsyncWriteExt;

/// xorshift64*: a tiny deterministic generator, so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const LUN1: u64 = 1 << 48;

/// A valid request of one of the kinds an initiator may send.
fn base(rng: &mut Rng, cmd_sn: u32, exp_stat_sn: u32) -> Pdu {
    let itt = 0x100 + rng.below(1000) as u32;
    match rng.below(9) {
        0 => Pdu::nop_out(itt, 0xffff_ffff, cmd_sn, exp_stat_sn, Bytes::from_static(b"ping")),
        1 => {
            let mut cdb = [0u8; 10];
            cdb[0] = 0x28;
            cdb[5] = rng.below(64) as u8;
            cdb[8] = 1 + rng.below(16) as u8;
            Pdu::scsi_command(LUN1, itt, cmd_sn, exp_stat_sn, &cdb, cdb[8] as u32 * 512, true)
        }
        2 => Pdu::scsi_command(LUN1, itt, cmd_sn, exp_stat_sn, &[0x12, 0, 0, 0, 96, 0], 96, true),
        3 => Pdu::tmf_request(1 + rng.below(8) as u8, LUN1, itt, rng.next() as u32, cmd_sn, exp_stat_sn),
        4 => Pdu::text_request(itt, 0xffff_ffff, cmd_sn, exp_stat_sn, Bytes::from_static(b"SendTargets=All\0")),
        5 => Pdu::data_out(LUN1, itt, 0x55, 0, 0, Bytes::from(vec![7u8; 512]), true),
        6 => Pdu::snack(itt, 0, 0, 1),
        7 => Pdu::login_request(
            [0x80, 0, 0, 0, 1, 0],
            0,
            itt,
            cmd_sn,
            exp_stat_sn,
            1,
            3,
            true,
            Bytes::from_static(b"HeaderDigest=None\0"),
        ),
        _ => Pdu::scsi_command(LUN1, itt, cmd_sn, exp_stat_sn, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512, false),
    }
}

/// Encodes `p` and damages the bytes; returns what goes on the wire.
fn mutate(rng: &mut Rng, codec: &Codec, p: &Pdu) -> Vec<u8> {
    let mut b = BytesMut::new();
    codec.encode(p, &mut b);
    let mut v = b.to_vec();
    for _ in 0..1 + rng.below(3) {
        let kind = rng.below(8);
        if v.len() < 48 && kind < 5 {
            continue; // already truncated: header edits have nothing to edit
        }
        match kind {
            0 | 1 => {
                let i = rng.below(48) as usize;
                v[i] ^= 1u8 << rng.below(8);
            }
            2 => v[0] = (v[0] & 0xc0) | rng.below(64) as u8,
            3 => v[4] = rng.below(4) as u8, // AHS length in words
            4 => {
                let len = rng.below(3 * 65_536) as u32;
                v[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
            }
            5 => v.truncate(rng.below(v.len() as u64) as usize),
            6 => v.extend((0..rng.below(100)).map(|_| rng.next() as u8)),
            _ => {
                if v.len() > 48 {
                    let i = 48 + rng.below((v.len() - 48) as u64) as usize;
                    v[i] ^= 0xa5;
                }
            }
        }
    }
    v
}

/// Whether a decode error's text names the field that was wrong.
fn names_field(e: &PduError) -> bool {
    let s = e.to_string();
    let field = match e {
        PduError::UnknownOpcode(_) => "opcode",
        PduError::DataTooLong { .. } => "MaxRecvDataSegmentLength",
        PduError::HeaderDigest { .. } => "header digest",
        PduError::DataDigest { .. } => "data digest",
    };
    s.contains(field)
}

#[test]
fn decoder_frames_waits_or_names_the_field_for_every_mutation() {
    let mut rng = Rng(0x6d65_7368_6472_6169);
    let (mut framed, mut short, mut errors) = (0, 0, 0);
    for case in 0..20_000u32 {
        let digests = case % 3 == 0;
        let codec = Codec { header_digest: digests, data_digest: digests, max_recv_data: 65_536 };
        let p = base(&mut rng, case, case);
        let wire = mutate(&mut rng, &codec, &p);
        let mut buf = BytesMut::from(&wire[..]);
        match codec.decode(&mut buf) {
            Ok(Some(got)) => {
                framed += 1;
                assert_eq!(got.data.len(), got.data_len_field(), "case {case}: data length field matches the segment");
                assert_eq!(got.ahs.len(), got.ahs_len(), "case {case}: AHS length field matches");
            }
            Ok(None) => {
                short += 1;
                assert_eq!(buf.len(), wire.len(), "case {case}: nothing consumed while waiting for bytes");
            }
            Err(e) => {
                errors += 1;
                assert!(names_field(&e), "case {case}: error does not name the field: {e}");
            }
        }
    }
    // The generator must exercise all three outcomes, or it tests nothing.
    assert!(framed > 1000 && short > 1000 && errors > 1000, "framed {framed}, short {short}, errors {errors}");
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// What one mutated PDU led to on a live connection.
#[derive(Debug, Default)]
struct Outcome {
    alive: bool,
    closed: bool,
    rejects: usize,
}

/// Sends the damaged bytes, then an immediate NOP-Out; waits for its answer
/// or for the connection to close.
async fn probe(c: &mut Raw, wire: &[u8]) -> Outcome {
    let mut out = Outcome::default();
    if c.sock.write_all(wire).await.is_err() {
        out.closed = true;
        return out;
    }
    let mut ping = Pdu::nop_out(0xfeed, 0xffff_ffff, c.cmd_sn, c.exp_stat_sn, Bytes::new());
    ping.set_immediate(true);
    let mut b = BytesMut::new();
    c.codec.encode(&ping, &mut b);
    if c.sock.write_all(&b).await.is_err() {
        out.closed = true;
        return out;
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r =
            tokio::time::timeout_at(until, meshdrain_iscsi::wire::read_pdu(&mut c.sock, &mut c.buf, &c.codec)).await;
        match r {
            Err(_) => return out, // neither: a hang, reported by the caller
            Ok(Err(_)) => {
                out.closed = true;
                return out;
            }
            Ok(Ok(p)) => match p.opcode() {
                Some(Opcode::NopIn) if p.itt() == 0xfeed => {
                    out.alive = true;
                    return out;
                }
                Some(Opcode::Reject) => {
                    out.rejects += 1;
                    assert!(matches!(p.bhs[2], 0x02..=0x0c), "Reject reason {:#04x} is one RFC 7143 defines", p.bhs[2]);
                    assert_eq!(p.data.len(), 48, "Reject carries the rejected header");
                }
                _ => {}
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_target_rejects_or_closes_on_every_mutation_without_panic_or_hang() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        hook(info);
    }));
    let dir = tempfile::tempdir().unwrap();
    let path = common::pattern_file(dir.path(), "lun.img", 1 << 20);
    // A short ping interval: a PDU announcing more bytes than it sends
    // leaves the target waiting, and its NOP-In timeout must end that.
    let (r, _) =
        start_with(Target::with_nop_interval(Duration::from_millis(100)), vec![TargetConfig::new(IQN, path)], 0).await;
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let (mut alive, mut closed, mut rejects) = (0, 0, 0);
    for case in 0..200u32 {
        let digests = case % 4 == 0;
        let mut c = raw_login(r.addr, IQN, digests).await;
        let p = base(&mut rng, c.cmd_sn, c.exp_stat_sn);
        let wire = mutate(&mut rng, &c.codec, &p);
        let o = probe(&mut c, &wire).await;
        assert!(
            o.alive || o.closed,
            "case {case}: connection neither answered nor closed within 5 s after {p:?} mutated to {:02x?}",
            &wire[..wire.len().min(64)]
        );
        alive += o.alive as u32;
        closed += o.closed as u32;
        rejects += o.rejects;
    }
    let mut c = raw_login(r.addr, IQN, false).await;
    let t = c.tur(9);
    c.send(t).await;
    let rsp = c.recv(5000).await.expect("target still serves after 200 malformed PDUs");
    assert_eq!((rsp.opcode(), rsp.scsi_status()), (Some(Opcode::ScsiResponse), 0));
    r.stop().await;
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a target task panicked");
    assert!(
        alive > 0 && closed > 0 && rejects > 0,
        "alive {alive}, closed {closed}, rejects {rejects}: every outcome exercised"
    );
}
