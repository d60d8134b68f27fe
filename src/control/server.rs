//! Serves the control API on a Unix socket: newline-delimited JSON requests, one JSON
//! response line each, answered by the agent's owner loop through an [`AgentHandle`].

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use super::protocol::{Request, Response};
use crate::agent::AgentHandle;

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another agent already answers on this socket.
    #[error("control socket {0} is in use by a running agent (stop it, or set control.socket to another path)")]
    InUse(PathBuf),
    /// Filesystem or bind error.
    #[error("cannot open control socket {path}: {source} (check control.socket and that its directory is writable)")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Binds the socket (removing a stale one left by a crashed agent) with mode 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Answers requests until `shutdown` resolves.
pub async fn serve(listener: UnixListener, agent: AgentHandle, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, agent.clone()));
                }
                Err(e) => {
                    warn!("control accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn connection(stream: UnixStream, agent: AgentHandle) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(req) => answer(&agent, req).await,
            Err(e) => Response::Error { message: format!("malformed control request: {e}") },
        };
        let mut out = serde_json::to_string(&response).expect("responses serialize");
        out.push('\n');
        if let Err(e) = write.write_all(out.as_bytes()).await {
            debug!("control client went away: {e}");
            return;
        }
    }
}

async fn answer(agent: &AgentHandle, req: Request) -> Response {
    let stopping = || Response::Error { message: "the agent is shutting down".to_owned() };
    match req {
        Request::Status => agent.status().await.map_or_else(stopping, Response::Status),
        Request::Plan { node } => agent.plan(&node).await.map_or_else(stopping, |plan| Response::Plan { plan }),
        Request::NodeAction { node, action, force, options } => {
            match agent.node_action_with(&node, action, force, options).await {
                Ok(report) => Response::NodeAction(report),
                Err(message) => Response::Error { message },
            }
        }
        Request::VolumeAdd(new) => match agent.add_volume(new).await {
            Ok(message) => Response::Ok { message },
            Err(message) => Response::Error { message },
        },
        Request::MeshStatus => agent.mesh_status().await.map_or_else(stopping, |mesh| Response::Mesh { mesh }),
        Request::Volumes => agent.volumes().await.map_or_else(stopping, |volumes| Response::Volumes { volumes }),
        Request::Gc => agent
            .gc()
            .await
            .map_or_else(stopping, |()| Response::Ok { message: "handed-off copies deleted".to_owned() }),
    }
}
