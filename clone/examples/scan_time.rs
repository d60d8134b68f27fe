//! What stands between a clone and its device on the drain's cut-over path (a
//! diagnostic; bench/clone.sh times the whole `clone run --expose`):
//! `scan_time <iscsi-url> <dest-dir>` prints the seconds of the GET LBA
//! STATUS scan alone, the number of deallocated ranges, the bytes they cover, and the
//! seconds of `Engine::create` (which starts that scan and returns) onto a fresh dest in
//! `dest-dir`, then of the scan's whole effect (until background hydration may start).
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshdrain_clone::{BlockSource, Engine, EngineConfig, FileDest, FileMeta, IscsiSource};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 3 {
        return Err("usage: scan_time <iscsi-url> <dest-dir>".into());
    }
    let src = Arc::new(IscsiSource::connect(&a[1], Duration::from_secs(10))?);
    let t = Instant::now();
    let holes = src.deallocated()?.unwrap_or_default();
    let scan = t.elapsed().as_secs_f64();
    let bytes: u64 = holes.iter().map(|r| r.end - r.start).sum();
    let dir = Path::new(&a[2]);
    let (img, meta) = (dir.join("scan.img"), dir.join("scan.meta"));
    let _ = (std::fs::remove_file(&img), std::fs::remove_file(&meta));
    let t = Instant::now();
    let dest = FileDest::open(&img, src.size())?;
    let engine = Engine::create(src, Box::new(dest), Box::new(FileMeta::create(&meta)?), EngineConfig::default())?;
    let open = t.elapsed().as_secs_f64();
    engine.wait_scanned();
    let scanned = t.elapsed().as_secs_f64();
    drop(engine);
    let _ = (std::fs::remove_file(&img), std::fs::remove_file(&meta));
    let line = format!("{scan:.3} {} {bytes} {open:.3} {scanned:.3}\n", holes.len());
    std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes())?;
    Ok(())
}
