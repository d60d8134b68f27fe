//! Access control: logins from addresses or IQNs outside the ACL are refused
//! with status 0x0202; CHAP is enforced; a fenced initiator loses its session
//! at once, its next command fails and it cannot log in again, while other
//! initiators keep reading.

mod common;

use std::time::Duration;

use common::{IQN, start};
use meshdrain_iscsi::chap::ChapCredentials;
use meshdrain_iscsi::target::Initiator;
use meshdrain_iscsi::{Acl, InitiatorConfig, InitiatorError, Session, TargetConfig};

fn cfg(addr: std::net::SocketAddr, who: &str) -> InitiatorConfig {
    let mut c = InitiatorConfig::from_url(&format!("iscsi://{addr}/{IQN}/1")).unwrap().with_initiator_name(who);
    c.reconnect_for = Duration::from_secs(2);
    c
}

fn refused(e: InitiatorError) -> (u8, u8) {
    match e {
        InitiatorError::LoginRefused { class, detail, .. } => (class, detail),
        other => panic!("expected a refused login, got {other}"),
    }
}

#[tokio::test]
async fn address_and_iqn_acl() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::pattern_file(dir.path(), "lun.img", 1 << 20);
    let acl = Acl { addresses: vec!["127.0.0.2".parse().unwrap()], initiators: Vec::new() };
    let (r, exports) = start(vec![TargetConfig::new(IQN, p).with_acl(acl)], 0).await;
    // We connect from 127.0.0.1: not allowed.
    let e = Session::connect(cfg(r.addr, "iqn.2026-11.dev.meshdrain:a")).await.unwrap_err();
    assert_eq!(refused(e), (2, 2));
    // Allow our address but only one IQN.
    exports[0].set_acl(
        Acl { addresses: vec!["127.0.0.1".parse().unwrap()], initiators: vec!["iqn.2026-11.dev.meshdrain:a".into()] },
        2,
    );
    let e = Session::connect(cfg(r.addr, "iqn.2026-11.dev.meshdrain:b")).await.unwrap_err();
    assert_eq!(refused(e), (2, 2));
    let s = Session::connect(cfg(r.addr, "iqn.2026-11.dev.meshdrain:a")).await.unwrap();
    assert_eq!(s.capacity().blocks, 2048);
}

#[tokio::test]
async fn wrong_target_name_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::pattern_file(dir.path(), "lun.img", 1 << 20);
    let (r, _) = start(vec![TargetConfig::new(IQN, p)], 0).await;
    let c = InitiatorConfig::from_url(&format!("iscsi://{}/iqn.2026-11.dev.meshdrain:nope/1", r.addr)).unwrap();
    assert_eq!(refused(Session::connect(c).await.unwrap_err()), (2, 3));
}

#[tokio::test]
async fn chap_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::pattern_file(dir.path(), "lun.img", 1 << 20);
    let creds = ChapCredentials { user: "holder".into(), secret: "twelve-bytes-secret".into() };
    let (r, _) = start(vec![TargetConfig::new(IQN, p).with_chap(creds.clone())], 0).await;
    let mut c = cfg(r.addr, "iqn.2026-11.dev.meshdrain:a");
    assert_eq!(refused(Session::connect(c.clone()).await.unwrap_err()), (2, 1), "no CHAP offered");
    c.chap = Some(ChapCredentials { user: "holder".into(), secret: "wrong-secret-value".into() });
    assert_eq!(refused(Session::connect(c.clone()).await.unwrap_err()), (2, 1), "wrong secret");
    c.chap = Some(creds);
    let s = Session::connect(c).await.unwrap();
    assert_eq!(s.read(0, 1).await.unwrap().len(), 512);
}

#[tokio::test]
async fn fenced_initiator_fails_and_cannot_return_while_others_stay() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::pattern_file(dir.path(), "lun.img", 1 << 20);
    let (r, exports) = start(vec![TargetConfig::new(IQN, p.clone())], 0).await;
    let old = Session::connect(cfg(r.addr, "iqn.2026-11.dev.meshdrain:old")).await.unwrap();
    let new = Session::connect(cfg(r.addr, "iqn.2026-11.dev.meshdrain:new")).await.unwrap();
    assert_eq!(exports[0].session_count(), 2);
    old.read(0, 8).await.unwrap();
    let dropped = exports[0].fence(Initiator::Name("iqn.2026-11.dev.meshdrain:old".into()));
    assert_eq!(dropped, 1);
    let e = tokio::time::timeout(Duration::from_secs(10), old.read(0, 8)).await.expect("no hang").unwrap_err();
    assert!(matches!(e, InitiatorError::Closed { .. }), "fenced read failed with {e}");
    let e = Session::connect(cfg(r.addr, "iqn.2026-11.dev.meshdrain:old")).await.unwrap_err();
    assert_eq!(refused(e), (2, 2));
    let want = std::fs::read(&p).unwrap();
    assert_eq!(&new.read(8, 8).await.unwrap()[..], &want[8 * 512..16 * 512]);
    assert_eq!(exports[0].session_count(), 1);
    // Closing the export drops the rest.
    assert!(r.target.close_export(IQN));
    let e = tokio::time::timeout(Duration::from_secs(10), new.read(0, 1)).await.expect("no hang").unwrap_err();
    assert!(matches!(e, InitiatorError::Closed { .. }));
}
