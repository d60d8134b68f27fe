//! The CLI side of the control API.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::api::{Answer, ApiError, Outcome, Request, wire};

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent answers on the socket.
    #[error(
        "cannot reach the meshdrain agent at {path}: {source} (is the agent running? \
         start it with `systemctl start meshdrain`, or point --control / MESHDRAIN_CONTROL at its socket)"
    )]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The connection broke or the answer was not understood.
    #[error("control socket {path}: {message}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The agent refused the request; callers branch on the kind of refusal.
    #[error(transparent)]
    Refused(#[from] ApiError),
}

/// A connection to the local agent; several calls may share it (`--watch`).
pub struct Client {
    path: PathBuf,
    stream: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the agent's socket.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Unreachable { path: path.to_owned(), source })?;
        Ok(Self { path: path.to_owned(), stream: BufReader::new(stream) })
    }

    /// Sends one request and returns the answer; an agent-side refusal is an error.
    pub async fn call(&mut self, req: &Request) -> Result<Outcome, ClientError> {
        let protocol = |message: String| ClientError::Protocol { path: self.path.clone(), message };
        let mut line = serde_json::to_string(req).expect("requests serialize");
        line.push('\n');
        self.stream.get_mut().write_all(line.as_bytes()).await.map_err(|e| protocol(e.to_string()))?;
        let mut answer = String::new();
        let n = self.stream.read_line(&mut answer).await.map_err(|e| protocol(e.to_string()))?;
        if n == 0 {
            return Err(protocol("the agent closed the connection".to_owned()));
        }
        Ok(wire::decode(&answer).map_err(|e| protocol(format!("unreadable answer: {e}")))??)
    }

    /// Sends one request whose answer's payload the caller knows: `get::<StatusReport>(&Request::Status)`.
    pub async fn get<T: Answer>(&mut self, req: &Request) -> Result<T, ClientError> {
        T::from_outcome(self.call(req).await?).map_err(|other| ClientError::Protocol {
            path: self.path.clone(),
            message: format!("unexpected answer: {other:?}"),
        })
    }
}
