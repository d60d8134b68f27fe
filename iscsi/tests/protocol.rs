//! The live target under protocol abuse: truncated, oversized, bad digest,
//! out-of-window CmdSN and garbage PDUs get the protocol's answer (Reject,
//! silence, or a dropped connection), never a panic or a hang; and the
//! target keeps serving other connections afterwards.

mod common;

use bytes::Bytes;
use common::{IQN, Raw, raw_login, start};
use meshdrain_iscsi::TargetConfig;
use meshdrain_iscsi::pdu::{Opcode, Pdu};
use tokio::io::AsyncWriteExt;

async fn setup() -> (common::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = common::pattern_file(dir.path(), "lun.img", 1 << 20);
    let (r, _) = start(vec![TargetConfig::new(IQN, p)], 0).await;
    (r, dir)
}

async fn still_serving(r: &common::Running) {
    let mut c = raw_login(r.addr, IQN, false).await;
    let t = c.tur(77);
    c.send(t).await;
    let rsp = c.recv(5000).await.expect("TUR answered");
    assert_eq!((rsp.opcode(), rsp.itt(), rsp.scsi_status()), (Some(Opcode::ScsiResponse), 77, 0));
}

#[tokio::test]
async fn garbage_before_login_drops_the_connection() {
    let (r, _d) = setup().await;
    let mut s = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    s.write_all(&[0x3e; 200]).await.unwrap();
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut s, &mut b))
        .await
        .expect("no hang")
        .unwrap_or(0);
    assert_eq!(n, 0, "target closed the connection");
    still_serving(&r).await;
}

#[tokio::test]
async fn garbage_after_login_drops_the_connection() {
    let (r, _d) = setup().await;
    let mut c = raw_login(r.addr, IQN, false).await;
    c.sock.write_all(&[0x17; 96]).await.unwrap();
    assert!(c.closed_within(5000).await);
    still_serving(&r).await;
}

#[tokio::test]
async fn truncated_pdu_then_close_does_not_hang_the_target() {
    let (r, _d) = setup().await;
    let mut c = raw_login(r.addr, IQN, false).await;
    let t = c.tur(1);
    let mut buf = bytes::BytesMut::new();
    c.codec.encode(&t, &mut buf);
    c.sock.write_all(&buf[..30]).await.unwrap();
    assert!(c.recv(300).await.is_none(), "half a PDU gets no answer");
    drop(c);
    still_serving(&r).await;
}

#[tokio::test]
async fn oversized_data_segment_drops_the_connection() {
    let (r, _d) = setup().await;
    let mut c = raw_login(r.addr, IQN, false).await;
    let mut p = Pdu::nop_out(5, 0xffff_ffff, c.cmd_sn, c.exp_stat_sn, Bytes::new());
    p.data = Bytes::from(vec![0u8; 300_000]); // we declared 262144
    let mut buf = bytes::BytesMut::new();
    c.codec.encode(&p, &mut buf);
    let _ = c.sock.write_all(&buf).await;
    assert!(c.closed_within(5000).await);
}

#[tokio::test]
async fn bad_header_digest_drops_and_bad_data_digest_is_rejected() {
    let (r, _d) = setup().await;
    let mut c = raw_login(r.addr, IQN, true).await;
    let p = Pdu::nop_out(9, 0xffff_ffff, c.cmd_sn, c.exp_stat_sn, Bytes::from_static(b"ping"));
    let mut buf = bytes::BytesMut::new();
    c.codec.encode(&p, &mut buf);
    let mut bad = buf.clone();
    bad[56] ^= 0xff; // data digest
    c.sock.write_all(&bad).await.unwrap();
    let rej = c.recv(5000).await.expect("reject");
    assert_eq!((rej.opcode(), rej.bhs[2]), (Some(Opcode::Reject), 0x02));
    // Digests still work for a good PDU on the same connection.
    c.sock.write_all(&buf).await.unwrap();
    let nop = c.recv(5000).await.expect("nop-in");
    assert_eq!((nop.opcode(), nop.itt(), &nop.data[..]), (Some(Opcode::NopIn), 9, &b"ping"[..]));
    let mut bad = buf.clone();
    bad[10] ^= 0xff; // header digest
    c.sock.write_all(&bad).await.unwrap();
    assert!(c.closed_within(5000).await);
}

#[tokio::test]
async fn out_of_window_cmdsn_is_ignored_and_the_session_continues() {
    let (r, _d) = setup().await;
    let mut c = raw_login(r.addr, IQN, false).await;
    let good = c.cmd_sn;
    let too_high = Pdu::scsi_command(1 << 48, 1, good.wrapping_add(1000), c.exp_stat_sn, &[0; 6], 0, false);
    c.send(too_high).await;
    let too_low = Pdu::scsi_command(1 << 48, 2, good.wrapping_sub(1), c.exp_stat_sn, &[0; 6], 0, false);
    c.send(too_low).await;
    assert!(c.recv(300).await.is_none(), "out-of-window commands get no answer");
    let t = c.tur(3);
    c.send(t).await;
    let rsp = c.recv(5000).await.expect("in-window TUR answered");
    assert_eq!(rsp.itt(), 3);
    assert_eq!(rsp.exp_cmd_sn(), good.wrapping_add(1));
}

#[tokio::test]
async fn reads_split_into_data_in_and_writes_are_protected() {
    let (r, _d) = setup().await;
    let mut c: Raw = raw_login(r.addr, IQN, false).await;
    // READ(10) of 256 blocks = 128 KiB; we declared 64 KiB segments.
    let cdb = [0x28, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    let p = Pdu::scsi_command(1 << 48, 10, c.cmd_sn, c.exp_stat_sn, &cdb, 131072, true);
    c.cmd_sn += 1;
    c.send(p).await;
    let mut got = 0;
    loop {
        let d = c.recv(5000).await.expect("data-in");
        assert_eq!(d.opcode(), Some(Opcode::DataIn));
        assert!(d.data.len() <= 65536);
        got += d.data.len();
        if d.flags() & 1 != 0 {
            assert_eq!(d.scsi_status(), 0);
            break;
        }
    }
    assert_eq!(got, 131072);
    let w = Pdu::scsi_command(1 << 48, 11, c.cmd_sn, c.exp_stat_sn, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512, false);
    c.cmd_sn += 1;
    c.send(w).await;
    let rsp = c.recv(5000).await.unwrap();
    assert_eq!((rsp.scsi_status(), rsp.sense()[2], rsp.sense()[12]), (2, 0x07, 0x27));
    let u = Pdu::scsi_command(1 << 48, 12, c.cmd_sn, c.exp_stat_sn, &[0xc7, 0, 0, 0, 0, 0], 0, false);
    c.cmd_sn += 1;
    c.send(u).await;
    let rsp = c.recv(5000).await.unwrap();
    assert_eq!((rsp.scsi_status(), rsp.sense()[2], rsp.sense()[12]), (2, 0x05, 0x20));
}

#[tokio::test]
async fn nop_tmf_text_and_logout() {
    let (r, _d) = setup().await;
    let mut c = raw_login(r.addr, IQN, false).await;
    let tmf = Pdu::tmf_request(5, 1 << 48, 20, 0xffff_ffff, c.cmd_sn, c.exp_stat_sn);
    c.send(tmf).await;
    let rsp = c.recv(5000).await.unwrap();
    assert_eq!((rsp.opcode(), rsp.bhs[2]), (Some(Opcode::TaskMgmtResponse), 0));
    let txt = Pdu::text_request(21, 0xffff_ffff, c.cmd_sn, c.exp_stat_sn, Bytes::from_static(b"SendTargets=All\0"));
    c.send(txt).await;
    let rsp = c.recv(5000).await.unwrap();
    let pairs = meshdrain_iscsi::text::parse(&rsp.data).unwrap();
    assert_eq!(meshdrain_iscsi::text::get(&pairs, "TargetName"), Some(IQN));
    let lo = Pdu::logout_request(22, 0, c.cmd_sn, c.exp_stat_sn);
    c.send(lo).await;
    let rsp = c.recv(5000).await.unwrap();
    assert_eq!((rsp.opcode(), rsp.bhs[2]), (Some(Opcode::LogoutResponse), 0));
    assert!(c.closed_within(5000).await);
}

#[tokio::test]
async fn target_pings_idle_initiators_and_drops_silent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::pattern_file(dir.path(), "lun.img", 1 << 20);
    let target = meshdrain_iscsi::Target::with_nop_interval(std::time::Duration::from_millis(200));
    let (r, _) = common::start_with(target, vec![TargetConfig::new(IQN, p)], 0).await;
    let mut c = raw_login(r.addr, IQN, false).await;
    let ping = c.recv(2000).await.expect("NOP-In ping");
    assert_eq!((ping.opcode(), ping.itt()), (Some(Opcode::NopIn), 0xffff_ffff));
    assert_ne!(ping.ttt(), 0xffff_ffff);
    let reply = Pdu::nop_out(0xffff_ffff, ping.ttt(), c.cmd_sn, c.exp_stat_sn, Bytes::new());
    c.send(reply).await;
    // Answered: the session lives on; now stay silent and get dropped.
    assert!(c.closed_within(3000).await, "silent initiator dropped after unanswered pings");
}
