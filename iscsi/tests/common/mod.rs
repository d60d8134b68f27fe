//! Helpers shared by the iSCSI integration tests: an in-process target on
//! 127.0.0.1:0 and test images.
#![allow(dead_code)]

pub mod fake;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshdrain_iscsi::{Export, Target, TargetConfig};
use tokio::sync::oneshot;

/// A target serving in the background until dropped.
pub struct Running {
    pub target: Arc<Target>,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    pub fn url(&self, iqn: &str) -> String {
        format!("iscsi://{}/{}/1", self.addr, iqn)
    }
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Starts `serve` on 127.0.0.1 (port 0 unless given) with one export.
pub async fn start(configs: Vec<TargetConfig>, port: u16) -> (Running, Vec<Arc<Export>>) {
    start_with(Target::new(), configs, port).await
}

/// Like [`start`] with a target built by the caller.
pub async fn start_with(target: Arc<Target>, configs: Vec<TargetConfig>, port: u16) -> (Running, Vec<Arc<Export>>) {
    let exports = configs.into_iter().map(|c| target.open_export(c).expect("open export")).collect();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind 127.0.0.1");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(meshdrain_iscsi::serve(listener, Arc::clone(&target), async move {
        let _ = rx.await;
    }));
    (Running { target, addr, stop: Some(tx), task: Some(task) }, exports)
}

/// A file of `len` bytes with a deterministic, non-repeating pattern.
pub fn pattern_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    let p = dir.join(name);
    let mut v = vec![0u8; len];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    std::fs::write(&p, &v).unwrap();
    p
}

pub const IQN: &str = "iqn.2026-11.dev.meshdrain:test";

use bytes::{Bytes, BytesMut};
use meshdrain_iscsi::pdu::{Codec, Opcode, Pdu};
use meshdrain_iscsi::wire::{read_pdu, write_pdus};
use tokio::net::TcpStream;

/// A raw connection logged in by hand, for protocol-level tests.
pub struct Raw {
    pub sock: TcpStream,
    pub buf: BytesMut,
    pub codec: Codec,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Logs in with one operational round; `digests` asks for CRC32C both ways.
pub async fn raw_login(addr: SocketAddr, iqn: &str, digests: bool) -> Raw {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let mut buf = BytesMut::new();
    let c0 = Codec::default();
    let d = if digests { "CRC32C" } else { "None" };
    let keys =
        format!("InitiatorName=iqn.2026-11.dev.meshdrain:raw\0TargetName={iqn}\0SessionType=Normal\0AuthMethod=None\0");
    let req = Pdu::login_request([0x80, 0, 0, 0, 1, 0], 0, 1, 1, 0, 0, 1, true, Bytes::from(keys));
    write_pdus(&mut sock, &c0, &[req]).await.unwrap();
    let rsp = read_pdu(&mut sock, &mut buf, &c0).await.unwrap();
    assert_eq!(rsp.login_status(), (0, 0));
    let keys = format!("HeaderDigest={d}\0DataDigest={d}\0MaxRecvDataSegmentLength=65536\0");
    let req = Pdu::login_request([0x80, 0, 0, 0, 1, 0], 0, 1, 1, rsp.stat_sn() + 1, 1, 3, true, Bytes::from(keys));
    write_pdus(&mut sock, &c0, &[req]).await.unwrap();
    let rsp = read_pdu(&mut sock, &mut buf, &c0).await.unwrap();
    assert_eq!(rsp.opcode(), Some(Opcode::LoginResponse));
    assert_eq!(rsp.login_status(), (0, 0));
    assert!(rsp.login_stages().0, "transit to full feature");
    let codec = Codec { header_digest: digests, data_digest: digests, max_recv_data: 1 << 20 };
    Raw { sock, buf, codec, cmd_sn: rsp.exp_cmd_sn(), exp_stat_sn: rsp.stat_sn() + 1 }
}

impl Raw {
    pub async fn send(&mut self, p: Pdu) {
        write_pdus(&mut self.sock, &self.codec, &[p]).await.unwrap();
    }
    /// Next PDU within `ms`, `None` on timeout; panics if the connection drops.
    pub async fn recv(&mut self, ms: u64) -> Option<Pdu> {
        match tokio::time::timeout(
            std::time::Duration::from_millis(ms),
            read_pdu(&mut self.sock, &mut self.buf, &self.codec),
        )
        .await
        {
            Ok(r) => Some(r.expect("connection still up")),
            Err(_) => None,
        }
    }
    /// Whether the target closed the connection within `ms`.
    pub async fn closed_within(&mut self, ms: u64) -> bool {
        let until = tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
        loop {
            match tokio::time::timeout_at(until, read_pdu(&mut self.sock, &mut self.buf, &self.codec)).await {
                Err(_) => return false,
                Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }
    pub fn tur(&mut self, itt: u32) -> Pdu {
        let p = Pdu::scsi_command(1 << 48, itt, self.cmd_sn, self.exp_stat_sn, &[0; 6], 0, false);
        self.cmd_sn += 1;
        p
    }
}

/// Logs in with these security-stage keys (transit to operational), then one
/// operational round declaring a 1 MiB MaxRecvDataSegmentLength. The refusal
/// status of either step is the error; on success, the keys the target
/// answered in both.
pub async fn login_with(addr: SocketAddr, security: &str) -> Result<(Raw, Vec<(String, String)>), (u8, u8)> {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let mut buf = BytesMut::new();
    let c0 = Codec::default();
    let req = Pdu::login_request([0x80, 0, 0, 0, 2, 0], 0, 1, 1, 0, 0, 1, true, Bytes::from(security.to_string()));
    write_pdus(&mut sock, &c0, &[req]).await.unwrap();
    let rsp = read_pdu(&mut sock, &mut buf, &c0).await.unwrap();
    if rsp.login_status() != (0, 0) {
        return Err(rsp.login_status());
    }
    let mut pairs = meshdrain_iscsi::text::parse(&rsp.data).unwrap();
    let keys = "HeaderDigest=None\0DataDigest=None\0MaxRecvDataSegmentLength=1048576\0";
    let req = Pdu::login_request([0x80, 0, 0, 0, 2, 0], 0, 1, 1, rsp.stat_sn() + 1, 1, 3, true, Bytes::from(keys));
    write_pdus(&mut sock, &c0, &[req]).await.unwrap();
    let rsp = read_pdu(&mut sock, &mut buf, &c0).await.unwrap();
    if rsp.login_status() != (0, 0) {
        return Err(rsp.login_status());
    }
    assert!(rsp.login_stages().0, "transit to full feature");
    pairs.extend(meshdrain_iscsi::text::parse(&rsp.data).unwrap());
    let codec = Codec { header_digest: false, data_digest: false, max_recv_data: 1 << 20 };
    Ok((Raw { sock, buf, codec, cmd_sn: rsp.exp_cmd_sn(), exp_stat_sn: rsp.stat_sn() + 1 }, pairs))
}

/// Security keys of a normal session from `initiator` to `target`.
pub fn normal(initiator: &str, target: &str) -> String {
    format!("InitiatorName={initiator}\0TargetName={target}\0SessionType=Normal\0AuthMethod=None\0")
}

/// Security keys of a discovery session from `initiator`.
pub fn discovery(initiator: &str) -> String {
    format!("InitiatorName={initiator}\0SessionType=Discovery\0AuthMethod=None\0")
}
