//! On-demand read latency inside the engine (no FUSE, no loop), for bench/clone.sh:
//! `ondemand_latency <iscsi-url> <dest-dir> <reads>` prints, in microseconds, the median
//! of 4 KiB reads through our initiator's foreground session ("plain"), of engine reads
//! of unhydrated 64 KiB regions (until the early answer, and until the region is on the
//! dest), and of the same reads again (hydrated).
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshdrain_clone::{BlockSource, Engine, EngineConfig, FileDest, FileMeta, IscsiSource};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 4 {
        return Err("usage: ondemand_latency <iscsi-url> <dest-dir> <reads>".into());
    }
    let n: u64 = a[3].parse()?;
    let src = Arc::new(IscsiSource::connect(&a[1], Duration::from_secs(10))?);
    let size = src.size();
    let regions = size / 65536;
    let dir = Path::new(&a[2]);
    let dest = FileDest::open(&dir.join("lat.img"), size)?;
    let meta = FileMeta::open(&dir.join("lat.meta"))?;
    // MESHDRAIN_LAT_EARLY=1: answer from the asked bytes, fill the region after.
    let early_answer = std::env::var_os("MESHDRAIN_LAT_EARLY").is_some();
    let cfg = EngineConfig { rate_limit: Some(1024), early_answer, ..Default::default() };
    let engine = Engine::open(src.clone(), Box::new(dest), Box::new(meta), cfg)?;
    // MESHDRAIN_LAT_HYDRATE=1: background hydration threads run (held at 1 KiB/s).
    let _clone =
        std::env::var_os("MESHDRAIN_LAT_HYDRATE").map(|_| meshdrain_clone::UserspaceClone::start(engine.clone()));
    // Distinct regions, spread over the volume (a multiplicative walk, no RNG crate).
    let pick = |i: u64, salt: u64| ((i * 2_654_435_761 + salt) % regions) * 65536 + (i % 16) * 4096;
    let mut buf = vec![0u8; 4096];
    let mut plain = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        src.read_at(pick(i, 7), &mut buf)?;
        plain.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (mut un, mut whole, mut hy) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let t = Instant::now();
        let mut answered = None;
        engine.read_with(pick(i, 99_991), &mut buf, &mut |_| answered = Some(t.elapsed()))?;
        let all = t.elapsed();
        un.push(answered.unwrap_or(all).as_secs_f64() * 1e6);
        whole.push(all.as_secs_f64() * 1e6);
    }
    for i in 0..n {
        let t = Instant::now();
        engine.read(pick(i, 99_991), &mut buf)?;
        hy.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let line = format!("{:.0} {:.0} {:.0} {:.0}\n", median(plain), median(un), median(whole), median(hy));
    std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes())?;
    Ok(())
}
