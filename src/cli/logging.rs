//! Log output for every command: text or JSON lines on stderr (README.md, "Configuration":
//! `[log] format`, `--log-format`), colour only on a terminal (journald stores escape codes
//! as they are), and never through a progress bar: while `drain --wait` shows bars, each
//! log line is written with the bars hidden, then they are redrawn.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::MultiProgress;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// The bars on screen now, if any (one command shows them at a time).
static BARS: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// While the guard lives, log lines are written around `bars` instead of through them.
pub struct BarsShown(());

impl Drop for BarsShown {
    fn drop(&mut self) {
        *BARS.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Routes log lines around `bars` until the returned guard is dropped.
pub fn show_bars(bars: &MultiProgress) -> BarsShown {
    *BARS.lock().unwrap_or_else(|p| p.into_inner()) = Some(bars.clone());
    BarsShown(())
}

/// Installs the global subscriber: `default` filter unless MESHDRAIN_LOG is set.
pub fn init(format: LogFormat, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MESHDRAIN_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(Stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
}

/// stderr, a line at a time, around any bars shown.
#[derive(Clone, Copy)]
struct Stderr;

/// One log line being formatted; written out whole when dropped.
struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let bars = BARS.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.0);
        };
        match bars {
            Some(b) => b.suspend(write),
            None => write(),
        }
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_go_around_bars_only_while_they_are_shown() {
        let bars = MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden());
        {
            let _shown = show_bars(&bars);
            assert!(BARS.lock().unwrap().is_some());
            // A line written now goes through `suspend` (hidden target: nothing drawn) whole.
            let mut line = Stderr.make_writer();
            line.write_all(b"a log line\n").unwrap();
            assert_eq!(line.0, b"a log line\n");
        }
        assert!(BARS.lock().unwrap().is_none(), "the guard's drop stops the routing");
    }
}
