//! A hook's stdout or stderr, read without ever holding up the hook: a pump task reads the
//! pipe into a bounded tail; the hook is done when its process exits, not when the pipe
//! closes (a daemon started in the background may keep it open for ever, docs/hooks.md).
//! After the exit the caller takes the tail; whatever background processes write later is
//! forwarded to the log line by line (so they never meet a closed pipe and SIGPIPE).

use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::info;

/// Bytes of each stream a hook keeps: the last 64 KiB.
pub const TAIL_BYTES: usize = 64 * 1024;

/// The longest line forwarded from a background process as one log event; a longer run
/// without a newline is logged in pieces of this size.
const LINE_BYTES: usize = 4096;

/// What a hook wrote on one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The last [`TAIL_BYTES`] bytes at most.
    pub tail: Vec<u8>,
    /// Everything written until the hook was done, kept or not.
    pub total: u64,
}

impl Captured {
    /// Whether bytes were dropped from the front.
    pub fn truncated(&self) -> bool {
        self.total > self.tail.len() as u64
    }

    /// The tail as text, one entry per line, with control characters escaped so that a
    /// line stays one line in the journal.
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.tail).lines().map(printable).collect()
    }

    /// `0 bytes`, `12 bytes`, or `10485760 bytes, last 65536 kept` for the log line.
    pub fn describe(&self) -> String {
        if self.truncated() {
            format!("{} bytes, last {} kept", self.total, self.tail.len())
        } else {
            format!("{} bytes", self.total)
        }
    }
}

/// A line with control characters (other than tab) escaped.
pub fn printable(line: &str) -> String {
    line.chars()
        .flat_map(|c| if c.is_control() && c != '\t' { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect()
}

/// How a stream's later output is logged: the message's label and the volume field.
#[derive(Debug, Clone)]
pub struct Forward {
    /// E.g. `start hook background stderr`.
    pub label: String,
    /// The hook's volume (a log field).
    pub volume: String,
}

impl Forward {
    fn log(&self, line: &[u8]) {
        let (label, volume) = (&self.label, &self.volume);
        info!(%volume, "{label}: {}", printable(&String::from_utf8_lossy(line)));
    }
}

/// Where read bytes go: into the tail until the hook is done, then to the log.
#[derive(Debug, Default)]
struct State {
    captured: Captured,
    /// Set when the hook is done: how bytes read from now on are logged.
    forward_as: Option<Forward>,
    /// A forwarded line not yet ended by a newline.
    partial: Vec<u8>,
}

impl State {
    fn push(&mut self, bytes: &[u8]) {
        match &self.forward_as {
            None => {
                let tail = &mut self.captured.tail;
                tail.extend_from_slice(bytes);
                // Trim in batches (amortised): at most twice the bound is ever held.
                if tail.len() > 2 * TAIL_BYTES {
                    tail.drain(..tail.len() - TAIL_BYTES);
                }
                self.captured.total += bytes.len() as u64;
            }
            Some(forward) => {
                for &b in bytes {
                    if b == b'\n' || self.partial.len() >= LINE_BYTES {
                        forward.log(&std::mem::take(&mut self.partial));
                        if b == b'\n' {
                            continue;
                        }
                    }
                    self.partial.push(b);
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Some(forward) = &self.forward_as
            && !self.partial.is_empty()
        {
            forward.log(&std::mem::take(&mut self.partial));
        }
    }
}

/// One stream being read by its pump task.
pub struct Stream {
    state: Arc<Mutex<State>>,
    pump: tokio::task::JoinHandle<()>,
}

impl Stream {
    /// Starts reading `pipe` (a child's stdout or stderr).
    pub fn start(mut pipe: impl AsyncRead + Unpin + Send + 'static) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let pump = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => shared.lock().unwrap_or_else(PoisonError::into_inner).push(&buf[..n]),
                }
            }
            shared.lock().unwrap_or_else(PoisonError::into_inner).finish();
        });
        Self { state, pump }
    }

    /// Waits up to `grace` for the pipe to close (every writer gone), then takes what was
    /// captured; bytes written after that are logged under `forward_as` instead.
    pub async fn finish(mut self, grace: std::time::Duration, forward_as: Forward) -> Captured {
        let _ = tokio::time::timeout(grace, &mut self.pump).await;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut captured = std::mem::take(&mut state.captured);
        let keep = captured.tail.len().min(TAIL_BYTES);
        captured.tail.drain(..captured.tail.len() - keep);
        state.forward_as = Some(forward_as);
        // The pump task is not aborted: a background process keeps writing into a pipe
        // that is still read, and the task ends when the last writer closes it.
        captured
    }
}
