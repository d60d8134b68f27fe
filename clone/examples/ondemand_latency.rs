//! On-demand read latency, for bench/clone.sh:
//! `ondemand_latency <iscsi-url> <dest-dir> <reads> [loop]` prints, in microseconds, the
//! median of 4 KiB reads through our initiator's foreground session ("plain"), of engine
//! reads of unhydrated 64 KiB regions (until the answer, and until the region is on the
//! dest), and of the same reads again (hydrated). With `loop` (root) the engine reads
//! are 4 KiB O_DIRECT reads of the clone exposed as a loop device over FUSE, as a
//! workload does them (the "until on dest" column then repeats the answer).
//! MESHDRAIN_LAT_WHOLE=1 turns the early answer off (whole regions before answering),
//! MESHDRAIN_LAT_EARLY=1 on (default: `EngineConfig::default()`).
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshdrain_clone::{BlockSource, Engine, EngineConfig, FileDest, FileMeta, IscsiSource, expose::Exposed};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A page-aligned 4 KiB buffer for O_DIRECT reads.
#[repr(C, align(4096))]
struct Page([u8; 4096]);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 4 && !(a.len() == 5 && a[4] == "loop") {
        return Err("usage: ondemand_latency <iscsi-url> <dest-dir> <reads> [loop]".into());
    }
    let n: u64 = a[3].parse()?;
    let through_loop = a.len() == 5;
    let src = Arc::new(IscsiSource::connect(&a[1], Duration::from_secs(10))?);
    let size = src.size();
    let regions = size / 65536;
    let dir = Path::new(&a[2]);
    let dest = FileDest::open(&dir.join("lat.img"), size)?;
    let meta = FileMeta::open(&dir.join("lat.meta"))?;
    let defaults = EngineConfig::default();
    let early_answer = (defaults.early_answer || std::env::var_os("MESHDRAIN_LAT_EARLY").is_some())
        && std::env::var_os("MESHDRAIN_LAT_WHOLE").is_none();
    let cfg = EngineConfig { rate_limit: Some(1024), early_answer, ..defaults };
    let engine = Engine::open(src.clone(), Box::new(dest), Box::new(meta), cfg)?;
    // MESHDRAIN_LAT_HYDRATE=1: background hydration threads run (held at 1 KiB/s).
    let _clone =
        std::env::var_os("MESHDRAIN_LAT_HYDRATE").map(|_| meshdrain_clone::UserspaceClone::start(engine.clone()));
    let exposed = if through_loop { Some(Exposed::start(engine.clone(), &dir.join("lat.fuse"), None)?) } else { None };
    let device = match &exposed {
        Some(x) => Some(std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(x.device())?),
        None => None,
    };
    // Distinct regions, spread over the volume (a multiplicative walk, no RNG crate).
    let pick = |i: u64, salt: u64| ((i * 2_654_435_761 + salt) % regions) * 65536 + (i % 16) * 4096;
    let mut page = Box::new(Page([0u8; 4096]));
    let buf = &mut page.0;
    let mut plain = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        src.read_at(pick(i, 7), buf)?;
        plain.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (mut un, mut whole, mut hy) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let t = Instant::now();
        let mut answered = None;
        match &device {
            Some(dev) => dev.read_exact_at(buf, pick(i, 99_991))?,
            None => engine.read_with(pick(i, 99_991), buf, &mut |_| answered = Some(t.elapsed()))?,
        }
        let all = t.elapsed();
        un.push(answered.unwrap_or(all).as_secs_f64() * 1e6);
        whole.push(all.as_secs_f64() * 1e6);
    }
    for i in 0..n {
        let t = Instant::now();
        match &device {
            Some(dev) => dev.read_exact_at(buf, pick(i, 99_991))?,
            None => engine.read(pick(i, 99_991), buf)?,
        }
        hy.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(device);
    drop(exposed);
    let line = format!("{:.0} {:.0} {:.0} {:.0}\n", median(plain), median(un), median(whole), median(hy));
    std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes())?;
    Ok(())
}
