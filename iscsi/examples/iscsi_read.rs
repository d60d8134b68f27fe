//! Sequential-read throughput of our initiator, for bench/iscsi.sh:
//! `iscsi_read <url> <sessions> <queue-depth> <block-bytes> <seconds>`.
//! Each session reads its own stripe of the LUN in order, wrapping at the
//! end; prints the aggregate MB/s (10^6 bytes) on stdout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshdrain_iscsi::{BlockReader, InitiatorConfig, Session};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        return Err("usage: iscsi_read <url> <sessions> <queue-depth> <block-bytes> <seconds>".into());
    }
    let (sessions, qd, bytes, secs): (u64, usize, u32, u64) =
        (a[2].parse()?, a[3].parse()?, a[4].parse()?, a[5].parse()?);
    let total = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..sessions {
        let mut cfg = InitiatorConfig::from_url(&a[1])?;
        cfg.queue_depth = qd;
        cfg.initiator_name = format!("iqn.2026-11.dev.meshdrain:bench-{i}");
        let s = Session::connect(cfg).await?;
        let blocks = bytes / s.block_size();
        let span = s.blocks() / sessions;
        let start = span * i;
        for q in 0..qd as u64 {
            let (s, total) = (s.clone(), Arc::clone(&total));
            tasks.spawn(async move {
                let mut lba = start + q * blocks as u64;
                while Instant::now() < deadline {
                    if lba + blocks as u64 > start + span {
                        lba = start + (lba + blocks as u64 - start - span) % span.max(1);
                        if lba + blocks as u64 > start + span {
                            lba = start;
                        }
                    }
                    let d = s.read_blocks(lba, blocks).await.expect("read");
                    total.fetch_add(d.len() as u64, Ordering::Relaxed);
                    lba += blocks as u64 * qd as u64;
                }
            });
        }
    }
    let t0 = Instant::now();
    while tasks.join_next().await.is_some() {}
    let mbs = total.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64() / 1e6;
    let mut out = std::io::stdout().lock();
    std::io::Write::write_fmt(&mut out, format_args!("{mbs:.0}\n"))?;
    Ok(())
}
