//! What an admitted connection can make the target hold is bounded by what we
//! offer, whatever it sends: unread NOP-In echoes by `reply_bytes`, out-of-order
//! commands by `held_bytes` (SCSI commands park without their data), the read
//! buffer by our MaxRecvDataSegmentLength; a reader below the floor is dropped,
//! one above it keeps its session. Measured with the target's own accounting.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{IQN, Raw, login_with, normal, start_with};
use meshdrain_iscsi::pdu::{Opcode, Pdu};
use meshdrain_iscsi::target::Limits;
use meshdrain_iscsi::wire::write_pdus;
use meshdrain_iscsi::{Target, TargetConfig};
use tokio::io::AsyncReadExt;

const WHO: &str = "iqn.2026-11.dev.meshdrain:who";
const SEG: usize = 256 * 1024;

/// Largest `held_bytes` seen while `f` runs, sampled every 10 ms for `for_ms`.
async fn peak_held(target: &Target, for_ms: u64) -> usize {
    let mut peak = 0;
    for _ in 0..for_ms / 10 {
        peak = peak.max(target.stats().held_bytes);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    peak
}

/// Sends `pdus` from a task without reading anything; returns how many went out
/// before `ms` passed.
async fn send_unread(c: Raw, pdus: Vec<Pdu>, ms: u64) -> (usize, tokio::net::tcp::OwnedReadHalf) {
    let (rd, mut wr) = c.sock.into_split();
    let codec = c.codec;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = sent.clone();
    let task = tokio::spawn(async move {
        for p in pdus {
            if write_pdus(&mut wr, &codec, &[p]).await.is_err() {
                break;
            }
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        wr
    });
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let done = sent.load(std::sync::atomic::Ordering::Relaxed);
    task.abort();
    (done, rd)
}

#[tokio::test]
async fn unread_nop_echoes_are_bounded_by_the_reply_budget() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::pattern_file(dir.path(), "lun.img", 1 << 20);
    let (r, _) = start_with(Target::new(), vec![TargetConfig::new(IQN, p)], 0).await;
    let (c, _) = login_with(r.addr, &normal(WHO, IQN)).await.unwrap();
    let nops: Vec<Pdu> = (0..400u32)
        .map(|i| {
            let mut n = Pdu::nop_out(i + 1, 0xffff_ffff, c.cmd_sn, c.exp_stat_sn, Bytes::from(vec![1u8; SEG]));
            n.set_immediate(true);
            n
        })
        .collect();
    let r2 = &r;
    let (peak, (sent, _rd)) = tokio::join!(peak_held(&r2.target, 1500), send_unread(c, nops, 1500));
    let l = Limits::default();
    let bound = l.max_recv_data_segment_length as usize + 64 * 1024 + l.reply_bytes;
    assert!(sent < 400, "the target stopped reading once the echoes were not read (all 100 MiB went out)");
    assert!(peak >= l.reply_bytes / 2 && peak <= bound, "peak held {peak} bytes, bound {bound}");
}

#[tokio::test]
async fn out_of_order_commands_park_without_their_data_and_past_the_budget_drop() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::pattern_file(dir.path(), "lun.img", 1 << 20);
    let (r, _) = start_with(Target::new(), vec![TargetConfig::new(IQN, p)], 0).await;
    let (mut c, _) = login_with(r.addr, &normal(WHO, IQN)).await.unwrap();
    let first = c.cmd_sn;
    for k in 1..64u32 {
        let mut t = Pdu::scsi_command(1 << 48, k, first + k, c.exp_stat_sn, &[0; 6], 0, false);
        t.data = Bytes::from(vec![2u8; SEG]);
        c.send(t).await;
    }
    let peak = peak_held(&r.target, 300).await;
    let bound = SEG + 64 * 1024 + 63 * 48;
    assert!(peak <= bound, "63 parked commands with 256 KiB each hold {peak} bytes, bound {bound}");
    // The gap filled, all 64 run in order.
    let t = Pdu::scsi_command(1 << 48, 0, first, c.exp_stat_sn, &[0; 6], 0, false);
    c.send(t).await;
    let mut itts = Vec::new();
    while let Some(p) = c.recv(2000).await {
        assert_eq!(p.opcode(), Some(Opcode::ScsiResponse));
        itts.push(p.itt());
        if itts.len() == 64 {
            break;
        }
    }
    assert_eq!(itts, (0..64).collect::<Vec<u32>>());
    // Parked NOP-Outs keep their data: past held_bytes (256 KiB) the connection drops.
    let base = first + 64;
    for k in 1..=3u32 {
        let mut n = Pdu::nop_out(100 + k, 0xffff_ffff, base + k, c.exp_stat_sn, Bytes::from(vec![3u8; 100_000]));
        n.set_immediate(false);
        c.send(n).await;
    }
    assert!(c.closed_within(2000).await, "a third 100 kB parked NOP-Out is over held_bytes");
}

/// READ(16) of `blocks` 512-byte blocks at `lba`.
fn read16(c: &mut Raw, itt: u32, lba: u64, blocks: u32) -> Pdu {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    let p = Pdu::scsi_command(1 << 48, itt, c.cmd_sn, c.exp_stat_sn, &cdb, blocks * 512, true);
    c.cmd_sn += 1;
    p
}

#[tokio::test]
async fn a_reader_below_the_floor_is_dropped_and_one_above_it_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::pattern_file(dir.path(), "lun.img", 16 << 20);
    let limits =
        Limits { slow_reader_floor: 2 << 20, slow_reader_window: Duration::from_millis(500), ..Limits::default() };
    let target = Target::with_limits(Duration::from_secs(10), limits);
    let (r, _) = start_with(target, vec![TargetConfig::new(IQN, p.clone())], 0).await;
    // Slow: 32 reads of 1 MiB, read back at 64 KiB/s.
    let (mut c, _) = login_with(r.addr, &normal(WHO, IQN)).await.unwrap();
    for i in 0..32u32 {
        let p = read16(&mut c, i, (i as u64 % 16) * 2048, 2048);
        c.send(p).await;
    }
    let t0 = std::time::Instant::now();
    let mut b = vec![0u8; 16 * 1024];
    while r.target.stats().slow_readers_dropped == 0 && t0.elapsed() < Duration::from_secs(20) {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.sock.read(&mut b)).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(r.target.stats().slow_readers_dropped, 1, "a 64 KiB/s reader is dropped under a 2 MiB/s floor");
    assert!(t0.elapsed() < Duration::from_secs(10), "within a few floor windows: {:?}", t0.elapsed());
    // The connection is gone (reset: what was still buffered is thrown away).
    let t1 = std::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.sock.read(&mut b)).await.expect("no hang") {
            Ok(0) | Err(_) => break,
            Ok(_) => assert!(t1.elapsed() < Duration::from_secs(5), "still reading data after the drop"),
        }
    }
    // Fast: our initiator reads the whole LUN under the same floor, bytes equal.
    let s = meshdrain_iscsi::Session::connect_url(&r.url(IQN)).await.unwrap();
    let want = std::fs::read(&p).unwrap();
    for k in 0..16u64 {
        assert_eq!(&s.read(k * 2048, 2048).await.unwrap()[..], &want[(k as usize) << 20..((k as usize) + 1) << 20]);
    }
    assert_eq!(r.target.stats().slow_readers_dropped, 1);
}
