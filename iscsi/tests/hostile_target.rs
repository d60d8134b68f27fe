//! A hostile or broken target must not make our initiator report success:
//! impossible READ CAPACITY answers and non-hex CHAP challenges are clear
//! errors, never a panic or a session with a made-up size.

mod common;

use std::time::Duration;

use common::fake::{self, Fake};
use meshdrain_iscsi::chap::ChapCredentials;
use meshdrain_iscsi::{InitiatorConfig, InitiatorError, Session};

fn cfg(addr: std::net::SocketAddr) -> InitiatorConfig {
    let mut c = InitiatorConfig::from_url(&format!("iscsi://{addr}/iqn.2026-11.dev.meshdrain:fake/1")).unwrap();
    c.reconnect_for = Duration::from_secs(1);
    c
}

async fn connect(f: Fake) -> Result<Session, InitiatorError> {
    let addr = fake::start(f).await;
    tokio::time::timeout(Duration::from_secs(10), Session::connect(cfg(addr))).await.expect("no hang")
}

fn protocol_why(e: InitiatorError) -> String {
    match e {
        InitiatorError::Protocol { why, .. } => why,
        other => panic!("expected a protocol error, got {other}"),
    }
}

#[tokio::test]
async fn impossible_read_capacity_answers_are_errors() {
    for (last_lba, block_size, want) in [
        (2047, 0, "block size of 0 bytes"),
        (2047, 1000, "block size of 1000 bytes"),
        (2047, 256, "block size of 256 bytes"),
        (2047, 128 * 1024, "block size of 131072 bytes"),
        (u64::MAX, 512, "last LBA 18446744073709551615"),
        (u64::MAX / 512, 4096, "a size past 2^64 bytes"),
    ] {
        let e = connect(Fake::Capacity { last_lba, block_size }).await.expect_err("a hostile capacity must fail");
        let why = protocol_why(e);
        assert!(why.contains(want) && why.contains("broken or hostile"), "{last_lba}/{block_size}: {why}");
    }
    let s = connect(Fake::Capacity { last_lba: 2047, block_size: 4096 }).await.unwrap();
    assert_eq!((s.capacity().blocks, s.capacity().block_size), (2048, 4096));
}

#[tokio::test]
async fn non_hex_chap_challenge_fails_authentication_without_a_panic() {
    for chal in ["0x0\u{e9}0", "0x\u{e9}", "0xabc", "0xzz", "abcd"] {
        let addr = fake::start(Fake::Challenge(chal.into())).await;
        let mut c = cfg(addr);
        c.chap = Some(ChapCredentials { user: "u".into(), secret: "twelve-bytes-secret".into() });
        let e = tokio::time::timeout(Duration::from_secs(10), Session::connect(c)).await.expect("no hang").unwrap_err();
        let why = protocol_why(e);
        assert!(why.starts_with("CHAP authentication failed: the target's CHAP_C"), "{chal:?}: {why}");
    }
}
