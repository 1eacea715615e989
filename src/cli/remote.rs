//! The CLI beside the daemon: `codeb watch` holds the store, so another command that finds it held
//! sends its whole command line to the daemon over a unix socket in the state directory, and prints
//! the answer with the daemon's exit code. The daemon runs the very same command functions, so the
//! answers and exit codes are the same as without it.
//!
//! Protocol: one JSON [`Request`] line from the client, one JSON [`Response`] line back, then the
//! connection closes. The socket is created mode 0600: only the user that runs the daemon (who can
//! read the store anyway) may ask it.

use std::future::Future;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
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

/// A command to run in the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The command line after the program name, as typed.
    pub argv: Vec<String>,
    /// The client's working directory: relative paths are resolved against it.
    pub cwd: PathBuf,
    /// The client's standard input, when a path is `-`.
    pub stdin: Option<String>,
}

/// What the command printed, and its exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

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
pub async fn forward(state_dir: &Path, req: &Request) -> Result<Response, Error> {
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
    use std::os::unix::fs::PermissionsExt;
    let path = state_dir.join(SOCKET);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers each connection with `answer` until `shutdown`, then waits for the answers in flight.
pub async fn serve<F, Fut>(listener: UnixListener, answer: F, shutdown: CancellationToken)
where
    F: Fn(Request) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response> + Send + 'static,
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
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
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
            debug!(argv = ?req.argv, "client request");
            answer(req).await
        }
        Err(e) => Response {
            stdout: String::new(),
            stderr: format!("error: codeb watch could not read the request: {e}\n"),
            code: 2,
        },
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

    #[tokio::test]
    async fn a_request_is_answered_over_the_socket_and_a_missing_daemon_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let req = Request {
            argv: vec!["get".into(), "slots".into()],
            cwd: "/x".into(),
            stdin: Some("a: b\n".into()),
        };
        assert!(matches!(
            forward(dir.path(), &req).await,
            Err(Error::NoDaemon { .. })
        ));
        let listener = bind(dir.path()).unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            |req: Request| async move {
                Response {
                    stdout: req.argv.join(" "),
                    stderr: req.stdin.unwrap_or_default(),
                    code: 3,
                }
            },
            shutdown.clone(),
        ));
        let answer = forward(dir.path(), &req).await.unwrap();
        assert_eq!(
            answer,
            Response {
                stdout: "get slots".into(),
                stderr: "a: b\n".into(),
                code: 3
            }
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
