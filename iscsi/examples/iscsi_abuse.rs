//! Abusive initiators for `bench/iscsi.sh`: N connections of each kind against a
//! target on loopback (or a namespace address), for a bounded time, then a
//! summary line per kind. Kinds:
//! - `discovery`: discovery login, then immediate NOP-Outs as large as the target
//!   allows, echoes never read;
//! - `nop`: normal login, immediate NOP-Outs with 256 KiB of data, never read;
//! - `ooo`: normal login, 63 commands with 256 KiB data segments ahead of a CmdSN gap;
//! - `slow`: normal login, 32 reads of 1 MiB, read back at ~200 KB/s;
//! - `junk`: a third of a login PDU, then silence.
//!
//! Usage: `iscsi_abuse HOST:PORT IQN COUNT_PER_KIND SECONDS [KIND,...]` (default: all kinds). Refuses addresses
//! other than loopback or fd00::/8 and more than 2000 connections per kind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use meshdrain_iscsi::pdu::{Codec, Pdu};
use meshdrain_iscsi::wire::{read_pdu, write_pdus};
use std::io::Write;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KINDS: [&str; 5] = ["discovery", "nop", "ooo", "slow", "junk"];

#[derive(Default)]
struct Tally {
    attempted: AtomicUsize,
    admitted: AtomicUsize,
    refused_cap: AtomicUsize,
    refused_other: AtomicUsize,
    failed: AtomicUsize,
    closed_by_target: AtomicUsize,
}

struct LoggedIn {
    sock: TcpStream,
    cmd_sn: u32,
    exp_stat_sn: u32,
    mrdsl: usize,
}

/// Logs in; `Err(status)` when refused, `Err((0xff, 0xff))` on a connection error.
async fn login(addr: SocketAddr, iqn: &str, who: &str, discovery: bool) -> Result<LoggedIn, (u8, u8)> {
    let io = |_| (0xff, 0xff);
    let mut sock = TcpStream::connect(addr).await.map_err(io)?;
    let (c, mut buf) = (Codec::default(), BytesMut::new());
    let sec = if discovery {
        format!("InitiatorName={who}\0SessionType=Discovery\0AuthMethod=None\0")
    } else {
        format!("InitiatorName={who}\0TargetName={iqn}\0SessionType=Normal\0AuthMethod=None\0")
    };
    let op = "HeaderDigest=None\0DataDigest=None\0MaxRecvDataSegmentLength=262144\0".to_string();
    let mut exp_stat_sn = 0;
    let mut mrdsl = 8192;
    for (csg, nsg, keys) in [(0u8, 1u8, sec), (1, 3, op)] {
        let req = Pdu::login_request([0x80, 0, 0, 0, 9, 0], 0, 1, 1, exp_stat_sn, csg, nsg, true, Bytes::from(keys));
        write_pdus(&mut sock, &c, &[req]).await.map_err(|_| (0xff, 0xff))?;
        let rsp = read_pdu(&mut sock, &mut buf, &c).await.map_err(|_| (0xff, 0xff))?;
        if rsp.login_status() != (0, 0) {
            return Err(rsp.login_status());
        }
        exp_stat_sn = rsp.stat_sn().wrapping_add(1);
        let pairs = meshdrain_iscsi::text::parse(&rsp.data).unwrap_or_default();
        if let Some(v) = meshdrain_iscsi::text::get(&pairs, "MaxRecvDataSegmentLength") {
            mrdsl = v.parse().unwrap_or(8192);
        }
        if csg == 1 {
            return Ok(LoggedIn { sock, cmd_sn: rsp.exp_cmd_sn(), exp_stat_sn, mrdsl });
        }
    }
    unreachable!("two login steps")
}

/// One abusive connection of `kind` until `until`; true if the target closed it first.
async fn abuse(kind: &str, addr: SocketAddr, iqn: &str, n: usize, t: &Tally, until: tokio::time::Instant) -> bool {
    t.attempted.fetch_add(1, Ordering::Relaxed);
    if kind == "junk" {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            t.failed.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let mut hdr = [0u8; 16];
        hdr[0] = 0x43;
        hdr[1] = 0x87;
        hdr[7] = 0x20; // announces 8 KiB of login text that never comes
        let _ = s.write_all(&hdr).await;
        let mut b = [0u8; 64];
        return matches!(tokio::time::timeout_at(until, s.read(&mut b)).await, Ok(Ok(0) | Err(_)));
    }
    let who = format!("iqn.2026-11.dev.meshdrain:abuse-{kind}-{n}");
    let c = match login(addr, iqn, &who, kind == "discovery").await {
        Ok(c) => c,
        Err((3, 2)) => {
            t.refused_cap.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        Err((0xff, 0xff)) => {
            t.failed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        Err(_) => {
            t.refused_other.fetch_add(1, Ordering::Relaxed);
            return false;
        }
    };
    t.admitted.fetch_add(1, Ordering::Relaxed);
    let LoggedIn { sock, cmd_sn, exp_stat_sn, mrdsl } = c;
    let (mut rd, mut wr) = sock.into_split();
    let codec = Codec { max_recv_data: 1 << 20, ..Codec::default() };
    let seg = Bytes::from(vec![0x5au8; mrdsl.min(256 * 1024)]);
    let send = async {
        match kind {
            "discovery" | "nop" => {
                for itt in 1u32.. {
                    let mut p = Pdu::nop_out(itt, 0xffff_ffff, cmd_sn, exp_stat_sn, seg.clone());
                    p.set_immediate(true);
                    if write_pdus(&mut wr, &codec, &[p]).await.is_err() {
                        break;
                    }
                }
            }
            "ooo" => {
                for k in 1..64u32 {
                    let mut p = Pdu::scsi_command(1 << 48, k, cmd_sn.wrapping_add(k), exp_stat_sn, &[0; 6], 0, false);
                    p.data = seg.clone();
                    if write_pdus(&mut wr, &codec, &[p]).await.is_err() {
                        break;
                    }
                }
            }
            _ => {
                for k in 0..32u32 {
                    let mut cdb = [0u8; 16];
                    cdb[0] = 0x88;
                    cdb[2..10].copy_from_slice(&((k as u64 % 8) * 2048).to_be_bytes());
                    cdb[10..14].copy_from_slice(&2048u32.to_be_bytes());
                    let p = Pdu::scsi_command(1 << 48, k, cmd_sn.wrapping_add(k), exp_stat_sn, &cdb, 1 << 20, true);
                    if write_pdus(&mut wr, &codec, &[p]).await.is_err() {
                        break;
                    }
                }
            }
        }
        std::future::pending::<()>().await
    };
    let recv = async {
        let mut b = vec![0u8; 20_000];
        loop {
            if kind == "slow" {
                // ~200 KB/s: 20 kB every 100 ms.
                match rd.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            } else {
                // Never reads: only notices the target closing (RST).
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut one = [0u8; 1];
                if matches!(rd.peek(&mut one).await, Ok(0) | Err(_)) {
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = send => false,
        _ = recv => true,
        _ = tokio::time::sleep_until(until) => false,
    }
}

fn allowed(a: &SocketAddr) -> bool {
    match a {
        SocketAddr::V4(v) => v.ip().is_loopback(),
        SocketAddr::V6(v) => v.ip().is_loopback() || v.ip().segments()[0] & 0xff00 == 0xfd00,
    }
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 5 && a.len() != 6 {
        eprintln!("usage: iscsi_abuse HOST:PORT IQN COUNT_PER_KIND SECONDS [KIND,KIND...]");
        std::process::exit(2);
    }
    let addr: SocketAddr = a[1].parse().expect("HOST:PORT");
    let (iqn, count, secs): (String, usize, u64) =
        (a[2].clone(), a[3].parse().expect("COUNT"), a[4].parse().expect("SECONDS"));
    assert!(allowed(&addr), "only loopback or fd00::/8 targets");
    assert!(count <= 2000 && secs <= 600, "at most 2000 connections per kind for at most 600 s");
    let lim = libc::rlimit { rlim_cur: 65536, rlim_max: 65536 };
    // SAFETY: a valid rlimit for the duration of the call.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let only: Vec<String> = a.get(5).map(|k| k.split(',').map(str::to_string).collect()).unwrap_or_default();
    let on = |k: &str| only.is_empty() || only.iter().any(|o| o == k);
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    let tallies: Arc<Vec<Tally>> = Arc::new(KINDS.iter().map(|_| Tally::default()).collect());
    let mut tasks = tokio::task::JoinSet::new();
    // Round-robin over the kinds so each gets a share of the caps; junk last.
    for n in 0..count {
        for (k, kind) in KINDS.iter().enumerate().filter(|(_, k)| **k != "junk" && on(k)) {
            let (t, iqn) = (Arc::clone(&tallies), iqn.clone());
            tasks.spawn(async move {
                if abuse(kind, addr, &iqn, n, &t[k], until).await {
                    t[k].closed_by_target.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        if n % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in (0..count).filter(|_| on("junk")) {
        let (t, iqn) = (Arc::clone(&tallies), iqn.clone());
        tasks.spawn(async move {
            if abuse("junk", addr, &iqn, n, &t[4], until).await {
                t[4].closed_by_target.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut admitted = 0;
    let mut out = std::io::stdout().lock();
    for (kind, t) in KINDS.iter().zip(tallies.iter()) {
        let g = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        admitted += g(&t.admitted);
        let _ = writeln!(
            out,
            "kind={kind} attempted={} admitted={} refused_0x0302={} refused_other={} failed={} closed_by_target={}",
            g(&t.attempted),
            g(&t.admitted),
            g(&t.refused_cap),
            g(&t.refused_other),
            g(&t.failed),
            g(&t.closed_by_target)
        );
    }
    let _ = writeln!(out, "admitted_total={admitted}");
}
