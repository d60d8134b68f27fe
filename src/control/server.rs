//! Serves the API on a Unix socket: each line is decoded into a [`Request`], answered by
//! whatever implements [`Api`] (the agent's handle), and the answer encoded as one line
//! ([`crate::api::wire`]).

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::api::{Api, ApiError, Request, wire};

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another agent already answers on this socket.
    #[error("control socket {0} is in use by a running agent (stop it, or set control.socket to another path)")]
    InUse(PathBuf),
    /// The path holds something that is not a socket: never deleted to make room.
    #[error(
        "control socket path {0} exists and is not a socket (it was left untouched: move it away, or set control.socket to another path)"
    )]
    NotASocket(PathBuf),
    /// Filesystem or bind error.
    #[error("cannot open control socket {path}: {source} (check control.socket and that its directory is writable)")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The longest request line answered: a request is a few hundred bytes, so anything near
/// this is a mistake or abuse, and it gets an error reply instead of growing the buffer.
pub const MAX_REQUEST_LINE: usize = 1 << 20;

/// Binds the socket (removing a stale one left by a crashed agent) with mode 0600. Only a
/// socket nobody answers on is removed: a regular file, directory or link at the path is
/// refused, so a mistyped `control.socket` never deletes data.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::FileTypeExt;
    let io = |source| ControlError::Io { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => return Err(ControlError::NotASocket(path.to_owned())),
        Ok(_) => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ControlError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Answers requests until `shutdown` resolves.
pub async fn serve(listener: UnixListener, api: impl Api, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, api.clone()));
                }
                Err(e) => {
                    warn!("control accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// One request line as read off the socket, bounded by [`MAX_REQUEST_LINE`].
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A complete line (without its newline).
    Text(Vec<u8>),
    /// A line longer than the bound: its bytes were read and dropped up to its newline.
    TooLong,
}

/// Reads one newline-terminated line, never holding more than `max` bytes of it.
async fn read_line(reader: &mut (impl AsyncBufRead + Unpin), max: usize) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            // EOF: a last line without newline still counts; nothing at all means done.
            return Ok(match (too_long, line.is_empty()) {
                (true, _) => Some(Line::TooLong),
                (false, true) => None,
                (false, false) => Some(Line::Text(line)),
            });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1),
            None => (buf, buf.len()),
        };
        let found_newline = done > chunk.len();
        if !too_long && line.len() + chunk.len() <= max {
            line.extend_from_slice(chunk);
        } else {
            too_long = true;
            line = Vec::new();
        }
        reader.consume(done);
        if found_newline {
            return Ok(Some(if too_long { Line::TooLong } else { Line::Text(line) }));
        }
    }
}

/// Parses one request line into a request, or the refusal naming what is wrong.
fn parse_request(line: Line) -> Result<Request, ApiError> {
    let bytes = match line {
        Line::Text(bytes) => bytes,
        Line::TooLong => return Err(ApiError::RequestTooLong { max: MAX_REQUEST_LINE }),
    };
    let text = std::str::from_utf8(&bytes).map_err(|e| ApiError::RequestNotUtf8 { reason: e.to_string() })?;
    serde_json::from_str::<Request>(text).map_err(|e| ApiError::MalformedRequest { reason: e.to_string() })
}

async fn connection(stream: UnixStream, api: impl Api) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    while let Ok(Some(line)) = read_line(&mut reader, MAX_REQUEST_LINE).await {
        let answer = match parse_request(line) {
            Ok(req) => api.ask(req).await,
            Err(refusal) => Err(refusal),
        };
        let mut out = wire::encode(&answer);
        out.push('\n');
        if let Err(e) = write.write_all(out.as_bytes()).await {
            debug!("control client went away: {e}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut reader = BufReader::with_capacity(7, input);
        let mut out = Vec::new();
        while let Some(l) = read_line(&mut reader, max).await.unwrap() {
            out.push(l);
        }
        out
    }

    #[tokio::test]
    async fn lines_longer_than_the_bound_are_dropped_and_the_next_line_is_read() {
        let got = lines(b"short\nthis line is far too long\nok\nlast", 10).await;
        assert_eq!(
            got,
            vec![
                Line::Text(b"short".to_vec()),
                Line::TooLong,
                Line::Text(b"ok".to_vec()),
                Line::Text(b"last".to_vec())
            ]
        );
    }

    #[test]
    fn non_utf8_and_oversized_lines_get_error_replies() {
        let Err(refusal) = parse_request(Line::Text(vec![b'{', 0xff, b'}'])) else { panic!("non-UTF-8 accepted") };
        let message = refusal.to_string();
        assert!(message.starts_with("control request is not UTF-8"), "{message}");
        let Err(refusal) = parse_request(Line::TooLong) else { panic!("too long accepted") };
        assert_eq!(refusal.to_string(), "control request longer than 1048576 bytes: refused");
    }

    #[tokio::test]
    async fn a_regular_file_at_the_socket_path_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        std::fs::write(&path, b"precious").unwrap();
        let err = bind(&path).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "control socket path {} exists and is not a socket (it was left untouched: move it away, or set control.socket to another path)",
                path.display()
            )
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind(&path).await.unwrap();
        assert!(UnixStream::connect(&path).await.is_ok());
        drop(listener);
    }
}
