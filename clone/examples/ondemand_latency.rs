//! On-demand read latency, for bench/clone.sh:
//! `ondemand_latency <iscsi-url> <dest-dir> <reads> [loop]` prints, in microseconds, the
//! medians of 4 KiB reads through our initiator's foreground session ("plain"), of
//! engine reads within unhydrated 64 KiB regions with the default configuration (read
//! through: the 4 KiB alone come from the source), of the same with whole regions
//! fetched first (`read_through` off), and of those last reads again (hydrated). With
//! `loop` (root) the engine reads are 4 KiB O_DIRECT reads of the clones exposed as loop
//! devices over FUSE, as a workload does them.
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshdrain_clone::{BlockSource, Engine, EngineConfig, FileDest, FileMeta, IscsiSource, expose::Exposed};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Any error of the example.
type Error = Box<dyn std::error::Error>;

/// One timed 4 KiB read at an offset.
type ReadFn<'a> = dyn FnMut(&mut [u8], u64) -> Result<(), Error> + 'a;

/// The opened device, the exposure (with `loop`) and the engine, in drop order: the
/// device closes before its loop device is detached and the FUSE file unmounted.
type Probe = (Option<std::fs::File>, Option<Exposed>, Arc<Engine>);

/// A page-aligned 4 KiB buffer for O_DIRECT reads.
#[repr(C, align(4096))]
struct Page([u8; 4096]);

fn main() -> Result<(), Error> {
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
    let defaults = EngineConfig { rate_limit: Some(1024), ..EngineConfig::default() };
    // One clone per policy, each on its own dest; hydration stays held at 1 KiB/s.
    let clone = |name: &str, read_through: bool| -> Result<Probe, Error> {
        let dest = FileDest::open(&dir.join(format!("{name}.img")), size)?;
        // A fresh clone per run: every region starts missing.
        let meta = FileMeta::create(&dir.join(format!("{name}.meta")))?;
        let cfg = EngineConfig { read_through, ..defaults.clone() };
        let engine = Engine::create(src.clone(), Box::new(dest), Box::new(meta), cfg)?;
        let exposed = if through_loop {
            Some(Exposed::start(engine.clone(), &dir.join(format!("{name}.fuse")), None)?)
        } else {
            None
        };
        let device = match &exposed {
            Some(x) => Some(std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(x.device())?),
            None => None,
        };
        Ok((device, exposed, engine))
    };
    let through = clone("lat-through", true)?;
    let whole = clone("lat-whole", false)?;
    // Distinct regions, spread over the volume (a multiplicative walk, no RNG crate).
    let pick = |i: u64, salt: u64| ((i * 2_654_435_761 + salt) % regions) * 65536 + (i % 16) * 4096;
    let mut page = Box::new(Page([0u8; 4096]));
    let buf = &mut page.0;
    let mut timed = |f: &mut ReadFn<'_>, salt: u64| {
        let mut v = Vec::new();
        for i in 0..n {
            let t = Instant::now();
            f(buf, pick(i, salt))?;
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok::<f64, Error>(median(v))
    };
    let plain = timed(&mut |b, o| Ok(src.read_at(o, b)?), 7)?;
    let read = |c: &Probe, b: &mut [u8], o: u64| -> Result<(), Error> {
        match &c.0 {
            Some(dev) => dev.read_exact_at(b, o)?,
            None => c.2.read(o, b)?,
        }
        Ok(())
    };
    let un = timed(&mut |b, o| read(&through, b, o), 99_991)?;
    let un_whole = timed(&mut |b, o| read(&whole, b, o), 7_919)?;
    let hy = timed(&mut |b, o| read(&whole, b, o), 7_919)?;
    drop((through, whole));
    let line = format!("{plain:.0} {un:.0} {un_whole:.0} {hy:.0}\n");
    std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes())?;
    Ok(())
}
