//! Admission before anything else: a normal session needs an export that admits
//! the initiator, a discovery session needs one and answers only SendTargets,
//! NOP-Out and Logout; connection caps refuse the excess login with 0x0302; the
//! whole login has a deadline and logins in progress are capped.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{IQN, discovery, login_with, normal, start_with};
use meshdrain_iscsi::pdu::{Codec, Opcode, Pdu};
use meshdrain_iscsi::target::Limits;
use meshdrain_iscsi::wire::{read_pdu, write_pdus};
use meshdrain_iscsi::{Acl, InitiatorConfig, Target, TargetConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OTHER: &str = "iqn.2026-11.dev.meshdrain:other";
const WHO: &str = "iqn.2026-11.dev.meshdrain:who";

fn elsewhere() -> Acl {
    Acl::address("127.0.0.2".parse().unwrap())
}

#[tokio::test]
async fn normal_and_discovery_logins_need_an_export_that_admits_the_initiator() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::pattern_file(dir.path(), "lun.img", 1 << 20);
    let (r, _) = start_with(Target::new(), vec![TargetConfig::new(IQN, p).with_acl(elsewhere())], 0).await;
    assert_eq!(login_with(r.addr, &normal(WHO, IQN)).await.err(), Some((2, 2)), "address not in the ACL");
    assert_eq!(login_with(r.addr, &normal(WHO, "")).await.err(), Some((2, 3)), "empty TargetName");
    assert_eq!(login_with(r.addr, &normal(WHO, OTHER)).await.err(), Some((2, 3)), "unknown target");
    assert_eq!(login_with(r.addr, &discovery(WHO)).await.err(), Some((2, 2)), "discovery admitted nowhere");
    assert_eq!(r.target.stats().connections, 0);
}

#[tokio::test]
async fn discovery_lists_only_admitted_targets_and_answers_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let a = common::pattern_file(dir.path(), "a.img", 1 << 20);
    let b = common::pattern_file(dir.path(), "b.img", 1 << 20);
    let configs = vec![TargetConfig::new(IQN, a), TargetConfig::new(OTHER, b).with_acl(elsewhere())];
    let (r, _) = start_with(Target::new(), configs, 0).await;
    let (mut c, keys) = login_with(r.addr, &discovery(WHO)).await.unwrap();
    assert_eq!(meshdrain_iscsi::text::get(&keys, "MaxRecvDataSegmentLength"), Some("8192"));
    assert_eq!(r.target.stats().discovery_sessions, 1);
    let st = Pdu::text_request(1, 0xffff_ffff, c.cmd_sn, c.exp_stat_sn, Bytes::from_static(b"SendTargets=All\0"));
    c.send(st).await;
    let rsp = c.recv(2000).await.expect("text response");
    let pairs = meshdrain_iscsi::text::parse(&rsp.data).unwrap();
    let names: Vec<&str> = pairs.iter().filter(|(k, _)| k == "TargetName").map(|(_, v)| v.as_str()).collect();
    assert_eq!(names, vec![IQN], "only the export that admits us");
    let mut nop = Pdu::nop_out(2, 0xffff_ffff, c.cmd_sn, c.exp_stat_sn, Bytes::from(vec![7u8; 100]));
    nop.set_immediate(true);
    c.send(nop).await;
    let echo = c.recv(2000).await.expect("NOP-In");
    assert_eq!((echo.opcode(), &echo.data[..]), (Some(Opcode::NopIn), &[7u8; 100][..]));
    let tur = c.tur(3);
    c.send(tur).await;
    let rej = c.recv(2000).await.expect("reject");
    assert_eq!(rej.opcode(), Some(Opcode::Reject));
    assert!(c.closed_within(2000).await, "a discovery session that sends a SCSI command is dropped");
    // A second discovery session: data past the 8 KiB it was offered drops it.
    let (mut c, _) = login_with(r.addr, &discovery(WHO)).await.unwrap();
    let mut nop = Pdu::nop_out(2, 0xffff_ffff, c.cmd_sn, c.exp_stat_sn, Bytes::from(vec![7u8; 9000]));
    nop.set_immediate(true);
    c.send(nop).await;
    assert!(c.closed_within(2000).await, "a 9000-byte segment on a discovery session is dropped");
}

#[tokio::test]
async fn connection_caps_refuse_the_excess_login_with_0302() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::pattern_file(dir.path(), "lun.img", 1 << 20);
    let limits = Limits { max_connections: 3, max_discovery_sessions: 1, ..Limits::default() };
    let target = Target::with_limits(Duration::from_secs(10), limits);
    let (r, _) = start_with(target, vec![TargetConfig::new(IQN, p).with_max_connections(2)], 0).await;
    let one = login_with(r.addr, &normal(WHO, IQN)).await.unwrap();
    let _two = login_with(r.addr, &normal(WHO, IQN)).await.unwrap();
    assert_eq!(login_with(r.addr, &normal(WHO, IQN)).await.err(), Some((3, 2)), "export cap of 2");
    let _d = login_with(r.addr, &discovery(WHO)).await.unwrap();
    assert_eq!(login_with(r.addr, &discovery(WHO)).await.err(), Some((3, 2)), "discovery cap of 1");
    let s = r.target.stats();
    assert_eq!((s.connections, s.discovery_sessions, s.refused_over_cap), (3, 1, 2));
    drop(one);
    for _ in 0..100 {
        if r.target.stats().connections == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _three = login_with(r.addr, &normal(WHO, IQN)).await.expect("a freed slot is taken again");
    // Our initiator names the status.
    let url = format!("iscsi://{}/{IQN}/1", r.addr);
    let e = meshdrain_iscsi::Session::connect_url(&url).await.unwrap_err().to_string();
    assert!(e.contains("status 0x03/0x02: out of resources"), "{e}");
}

#[tokio::test]
async fn chap_response_that_is_not_hex_is_an_authentication_failure() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::pattern_file(dir.path(), "lun.img", 1 << 20);
    let creds = meshdrain_iscsi::chap::ChapCredentials { user: "holder".into(), secret: "twelve-bytes-secret".into() };
    let (r, _) = start_with(Target::new(), vec![TargetConfig::new(IQN, p).with_chap(creds)], 0).await;
    for bad in ["0x0\u{e9}0", "0x\u{e9}", "0xabc"] {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        let (c, mut buf) = (Codec::default(), bytes::BytesMut::new());
        let mut exp_stat_sn = 0;
        let mut status = (0, 0);
        for (i, keys) in [
            format!("InitiatorName={WHO}\0TargetName={IQN}\0AuthMethod=CHAP\0"),
            "CHAP_A=5\0".to_string(),
            format!("CHAP_N=holder\0CHAP_R={bad}\0"),
        ]
        .into_iter()
        .enumerate()
        {
            let req = Pdu::login_request([0x80, 0, 0, 0, 3, 0], 0, 1, 1, exp_stat_sn, 0, 1, i == 2, Bytes::from(keys));
            write_pdus(&mut s, &c, &[req]).await.unwrap();
            let rsp = read_pdu(&mut s, &mut buf, &c).await.unwrap();
            exp_stat_sn = rsp.stat_sn() + 1;
            status = rsp.login_status();
        }
        assert_eq!(status, (2, 1), "CHAP_R={bad:?}");
    }
    // Still serving: a good login works.
    let mut c = InitiatorConfig::from_url(&r.url(IQN)).unwrap();
    c.chap =
        Some(meshdrain_iscsi::chap::ChapCredentials { user: "holder".into(), secret: "twelve-bytes-secret".into() });
    assert_eq!(meshdrain_iscsi::Session::connect(c).await.unwrap().capacity().blocks, 2048);
}

#[tokio::test]
async fn the_whole_login_has_a_deadline_and_logins_in_progress_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::pattern_file(dir.path(), "lun.img", 1 << 20);
    let limits = Limits { max_pending_logins: 2, login_timeout: Duration::from_millis(500), ..Limits::default() };
    let (r, _) =
        start_with(Target::with_limits(Duration::from_secs(10), limits), vec![TargetConfig::new(IQN, p)], 0).await;
    let mut slow = TcpStream::connect(r.addr).await.unwrap();
    slow.write_all(&[0x43, 0x87, 0, 0, 0, 0]).await.unwrap(); // a third of a login header, then nothing
    let mut idle = TcpStream::connect(r.addr).await.unwrap();
    for _ in 0..100 {
        if r.target.stats().pending_logins == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut third = TcpStream::connect(r.addr).await.unwrap();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_millis(500), third.read(&mut b)).await.expect("closed at once");
    assert!(matches!(n, Ok(0) | Err(_)), "past max_pending_logins the connection is closed unread");
    let t0 = std::time::Instant::now();
    for s in [&mut slow, &mut idle] {
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut b)).await.expect("closed by the deadline");
        assert!(matches!(n, Ok(0) | Err(_)));
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "login_timeout is 500 ms");
    assert_eq!(r.target.stats().pending_logins, 0);
    assert!(login_with(r.addr, &normal(WHO, IQN)).await.is_ok());
}
