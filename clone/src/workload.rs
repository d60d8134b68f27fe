//! The workload's writes as every exposure hands them over: whole regions are claimed
//! without a fetch, partial ones fetched first, and a flush makes them durable (the
//! commit order is [`Engine::commit`]'s). Reads are [`crate::fetch`]'s.
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::core::{Intent, Region, Step};
use crate::engine::{Busy, Engine};
use crate::error::{CloneError, Result};

impl Engine {
    /// Waits until region `r` may be used for `intent`; returns true when the caller
    /// holds a claim (and must call `claim_done`). Marks `busy` once it has to wait on
    /// the source.
    pub(crate) fn ensure<'a>(&'a self, r: Region, intent: Intent, busy: &mut Option<Busy<'a>>) -> Result<bool> {
        let mut retry = self.on_demand_retry();
        let mut core = self.lock_core();
        loop {
            self.check_running()?;
            match core.acquire(r, intent) {
                Step::Ready => return Ok(false),
                Step::Claimed => return Ok(true),
                Step::Lost => return Err(CloneError::SourceLost { offset: self.region_range(r).start }),
                Step::Wait => {
                    busy.get_or_insert_with(|| self.workload_busy());
                    core = self.cv.wait_timeout(core, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
                }
                Step::Fetch => {
                    busy.get_or_insert_with(|| self.workload_busy());
                    drop(core);
                    let results = self.fetch_regions(crate::io::Lane::Foreground, &[r]);
                    let (guard, failed) = self.record_fetched(results);
                    core = self.back_off_on_failure(guard, failed, &mut retry)?;
                }
            }
        }
    }

    /// Workload write-zeroes (every exposure's): zeros written in pieces that end on region
    /// boundaries, so a region the range covers whole is claimed without fetching it.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
        self.check_range(offset, len)?;
        let rs = self.cfg.region_size;
        let big;
        let (zeros, step): (&[u8], u64) = if rs <= ZEROS.len() as u64 {
            (&ZEROS, ZEROS.len() as u64 / rs * rs)
        } else {
            big = vec![0u8; rs as usize];
            (&big, rs)
        };
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let piece_end = ((at / step + 1) * step).min(end);
            self.write(at, &zeros[..(piece_end - at) as usize])?;
            at = piece_end;
        }
        Ok(())
    }

    /// Workload write: a region covered whole is claimed without fetching; a partial
    /// write of a missing region fetches it first.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        self.note_written(self.regions_of(offset, data.len() as u64))?;
        let mut busy = None;
        for r in self.regions_of(offset, data.len() as u64) {
            let range = self.region_range(r);
            let lo = range.start.max(offset);
            let hi = range.end.min(offset + data.len() as u64);
            let part = &data[(lo - offset) as usize..(hi - offset) as usize];
            let whole = lo == range.start && hi == range.end;
            let claimed = self.ensure(r, if whole { Intent::Overwrite } else { Intent::Read }, &mut busy)?;
            let res = self.dest.write_at(lo, part);
            if claimed {
                self.lock_core().claim_done(r, res.is_ok(), self.now());
                self.cv.notify_all();
            }
            res.map_err(Self::dest_err("write dest"))?;
            self.workload_wrote.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Workload discard: regions covered whole become hydrated (zeros) and are punched;
    /// partial ranges of hydrated regions are punched; the rest is left alone.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        self.note_written(self.regions_of(offset, len))?;
        for r in self.regions_of(offset, len) {
            let range = self.region_range(r);
            let lo = range.start.max(offset);
            let hi = range.end.min(offset + len);
            if lo == range.start && hi == range.end {
                let claimed = self.ensure(r, Intent::Overwrite, &mut None)?;
                let res = self.dest.punch(lo, hi - lo);
                if claimed {
                    self.lock_core().claim_done(r, res.is_ok(), self.now());
                    self.cv.notify_all();
                }
                res.map_err(Self::dest_err("punch dest"))?;
            } else if self.lock_core().state(r).hydrated() {
                self.dest.punch(lo, hi - lo).map_err(Self::dest_err("punch dest"))?;
            }
            self.workload_wrote.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Workload flush: every completed workload write (with the bits of its regions)
    /// becomes durable. With no workload write or discard since the last flush the
    /// workload has nothing to lose, and hydration's own progress is the ticker's to
    /// commit, so it returns at once: a loop device flushes when attached and ext4 on
    /// mount and on fsync, and each would otherwise wait for a sync of the dest
    /// while hydration writes it at full speed (7-40 ms here).
    pub fn flush(&self) -> Result<()> {
        if !self.workload_wrote.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let res = self.commit(true);
        if res.is_err() {
            self.workload_wrote.store(true, Ordering::Release);
        }
        res
    }
}
