//! The daemon's unix socket: `codeb watch`/`serve` holds the store, so a CLI command that finds it
//! held sends its typed [`Request`] (a `service` request) to the daemon over a unix socket in the
//! state directory, and renders the typed answer as it would have rendered its own. The daemon
//! runs the very same service, so answers and exit codes are the same as without it.
//!
//! Protocol: one JSON [`Request`] line from the client, one JSON [`Answer`] line back, then the
//! connection closes. The socket is created mode 0600: only the user that runs the daemon (who can
//! read the store anyway) may ask it; the daemon names the caller by the peer's uid.

use std::future::Future;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The socket's name in the state directory.
pub const SOCKET: &str = "codeb.sock";

/// The largest request read: manifests on stdin are bounded by the loader's limits (a few MiB);
/// this only stops a runaway client.
const MAX_REQUEST: u64 = 64 << 20;

pub use crate::service::Request;

/// The daemon's answer to one request.
pub type Answer = Result<crate::service::Response, crate::service::Error>;

/// Client errors. `NoDaemon` means nothing answers on the socket: the store is held by another
/// kind of codeb process (an `apply` in progress), and the caller reports that instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no codeb watch answers on {path}")]
    NoDaemon {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to codeb watch on {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("codeb watch closed the connection without an answer (did it stop?)")]
    NoAnswer,
    #[error("codeb watch answered something unreadable (is it another version of codeb?)")]
    Unreadable(#[source] serde_json::Error),
}

/// Sends `req` to the daemon of `state_dir` and waits for its answer, however long the command
/// takes (an apply waits for health checks).
///
/// # Errors
/// `NoDaemon` when nothing listens on the socket; the others when the exchange broke.
pub async fn forward(state_dir: &Path, req: &Request) -> Result<Answer, Error> {
    let path = state_dir.join(SOCKET);
    let stream = UnixStream::connect(&path)
        .await
        .map_err(|source| Error::NoDaemon {
            path: path.clone(),
            source,
        })?;
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req).expect("requests serialize");
    line.push(b'\n');
    write.write_all(&line).await.map_err(io)?;
    let mut answer = String::new();
    BufReader::new(read)
        .read_line(&mut answer)
        .await
        .map_err(io)?;
    if answer.is_empty() {
        return Err(Error::NoAnswer);
    }
    serde_json::from_str(&answer).map_err(Error::Unreadable)
}

/// Binds the daemon's socket in `state_dir`, mode 0600.
///
/// # Assumptions
/// The caller holds the store's lock, so no other daemon serves this directory and a socket file
/// found there is a stale one (a daemon that was killed); it is replaced.
pub fn bind(state_dir: &Path) -> std::io::Result<UnixListener> {
    bind_private(&state_dir.join(SOCKET))
}

/// Binds a unix socket at `path`, mode 0600, replacing a stale file there (see [`bind`]).
pub fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers each connection with `answer` until `shutdown`, then waits for the answers in flight.
/// `answer` gets the request and the peer's uid.
pub async fn serve<F, Fut>(listener: UnixListener, answer: F, shutdown: CancellationToken)
where
    F: Fn(Request, u32) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    in_flight.spawn(one(stream, answer.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    warn!(error = %e, "cannot accept a client connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.join_next().await.is_some() {}
}

async fn one<F, Fut>(stream: UnixStream, answer: F)
where
    F: Fn(Request, u32) -> Fut,
    Fut: Future<Output = Answer>,
{
    // The socket is 0600, so the peer is the daemon's user; its uid names it in the audit.
    let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await;
    let response = match read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str::<Request>(&line).map_err(|e| e.to_string()))
    {
        Ok(req) => {
            debug!(op = req.op(), uid, "client request");
            answer(req, uid).await
        }
        Err(e) => Err(crate::service::Error::invalid(format!(
            "codeb could not read the request (is the client another version of codeb?): {e}"
        ))),
    };
    let mut out = serde_json::to_vec(&response).expect("responses serialize");
    out.push(b'\n');
    if let Err(e) = write.write_all(&out).await {
        debug!(error = %e, "client went away before its answer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{view::PlanView, Response};

    #[tokio::test]
    async fn a_request_is_answered_over_the_socket_and_a_missing_daemon_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let req = Request::Describe {
            project: "app".into(),
        };
        assert!(matches!(
            forward(dir.path(), &req).await,
            Err(Error::NoDaemon { .. })
        ));
        let listener = bind(dir.path()).unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            |req: Request, uid: u32| async move {
                Ok(Response::Diff(PlanView {
                    changes: vec![],
                    steps: vec![format!("{} by {uid}", req.op())],
                    notes: vec![],
                }))
            },
            shutdown.clone(),
        ));
        let answer = forward(dir.path(), &req).await.unwrap();
        let me = std::fs::metadata("/proc/self").map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid()
        });
        assert_eq!(
            answer,
            Ok(Response::Diff(PlanView {
                changes: vec![],
                steps: vec![format!("describe by {}", me.unwrap())],
                notes: vec![],
            }))
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(SOCKET))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        shutdown.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        drop(bind(dir.path()).unwrap());
        assert!(dir.path().join(SOCKET).exists());
        assert!(bind(dir.path()).is_ok());
    }
}
