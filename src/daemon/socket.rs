//! The daemon's unix socket: `codeb watch`/`serve` holds the store, so a CLI command that finds it
//! held sends its typed [`Request`] (a `service` request) to the daemon over a unix socket in the
//! state directory, and renders the typed answer as it would have rendered its own. The daemon
//! runs the very same service, so answers and exit codes are the same as without it.
//!
//! Protocol 2 (this codeb's, [`PROTOCOL`]): the client sends one JSON line
//! `{"protocol": 2, "request": REQUEST}`; the daemon sends back zero or more event lines
//! `{"event": EVENT}` ([`Event`]: a step started or ended, a wait's state, a followed log line)
//! while the request runs, then one answer line `{"answer": {"Ok": RESPONSE} | {"Err": ERROR}}`,
//! and closes the connection. A client that closes its side first ends a request that changes
//! nothing (a followed log) at once; a change runs to its end, as it would without a client.
//!
//! Versions: protocol 1 (codeb before live progress) was one bare [`Request`] line and one bare
//! [`Answer`] line. The daemon still answers such a line that way (no events). A client of this
//! version that gets a bare answer back is talking to a protocol-1 daemon, and says so; a daemon
//! that gets a protocol it does not speak answers with an error naming both versions. A client
//! skips events it cannot read (a newer daemon's), but never an answer.
//!
//! The socket is created mode 0600: only the user that runs the daemon (who can read the store
//! anyway) may ask it; the daemon names the caller by the peer's uid.

use std::future::Future;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::reconcile::{Event, Progress};

/// The socket's name in the state directory.
pub const SOCKET: &str = "codeb.sock";

/// The largest request read: manifests on stdin are bounded by the loader's limits (a few MiB);
/// this only stops a runaway client.
const MAX_REQUEST: u64 = 64 << 20;

pub use crate::service::Request;

/// The daemon's answer to one request.
pub type Answer = Result<crate::service::Response, crate::service::Error>;

/// The version of the socket's protocol this codeb speaks (see the module's documentation).
pub const PROTOCOL: u32 = 2;

/// A client's line (protocol 2 and later).
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    protocol: u32,
    request: serde_json::Value,
}

/// One line from the daemon (protocol 2).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Frame {
    Event(Event),
    Answer(Box<Answer>),
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
    /// The daemon speaks protocol 1: it answered without events, in the old form.
    #[error("codeb watch on {path} is an older codeb (socket protocol 1, this codeb speaks {PROTOCOL}): restart it with this codeb. It answered: {answer}")]
    OldDaemon { path: PathBuf, answer: String },
    /// The events' reader went away (stdout closed under a followed log): the exchange was
    /// dropped, which ends the daemon's side of it.
    #[error("the reader of the answer went away")]
    ReaderGone,
}

/// Sends `req` to the daemon of `state_dir` and waits for its answer, however long the command
/// takes (an apply waits for health checks).
///
/// # Errors
/// `NoDaemon` when nothing listens on the socket; the others when the exchange broke.
pub async fn forward(state_dir: &Path, req: &Request) -> Result<Answer, Error> {
    forward_with(state_dir, req, &Progress::none()).await
}

/// As [`forward`], passing the events the daemon sends before its answer to `progress`.
///
/// # Errors
/// As [`forward`]; `OldDaemon` when the daemon speaks protocol 1; `ReaderGone` when `progress`
/// has a reader that went away.
pub async fn forward_with(
    state_dir: &Path,
    req: &Request,
    progress: &Progress,
) -> Result<Answer, Error> {
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
    // The write half stays open until the answer: closing it tells the daemon we went away.
    let (read, mut write) = stream.into_split();
    let hello = Hello {
        protocol: PROTOCOL,
        request: serde_json::to_value(req).expect("requests serialize"),
    };
    let mut line = serde_json::to_vec(&hello).expect("requests serialize");
    line.push(b'\n');
    write.write_all(&line).await.map_err(io)?;
    let mut read = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = tokio::select! {
            n = read.read_line(&mut line) => n.map_err(io)?,
            // The events' reader went away while the daemon had nothing to send.
            () = progress.closed() => return Err(Error::ReaderGone),
        };
        if n == 0 {
            return Err(Error::NoAnswer);
        }
        match serde_json::from_str::<Frame>(&line) {
            Ok(Frame::Answer(answer)) => return Ok(*answer),
            Ok(Frame::Event(event)) => {
                if progress.send(event).await.is_err() && progress.is_sink() {
                    return Err(Error::ReaderGone);
                }
            }
            Err(e) => {
                let value: serde_json::Value =
                    serde_json::from_str(&line).map_err(Error::Unreadable)?;
                if value.get("event").is_some() {
                    continue; // a newer daemon's event: progress is advisory
                }
                // A protocol-1 daemon's bare answer (most likely its refusal of our line).
                if let Ok(answer) = serde_json::from_value::<Answer>(value) {
                    let answer = match answer {
                        Ok(_) => "a result".to_string(),
                        Err(e) => e.message,
                    };
                    return Err(Error::OldDaemon { path, answer });
                }
                return Err(Error::Unreadable(e));
            }
        }
    }
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
/// `answer` gets the request and the peer's uid; it reports no progress (see
/// [`serve_streaming`]).
pub async fn serve<F, Fut>(listener: UnixListener, answer: F, shutdown: CancellationToken)
where
    F: Fn(Request, u32) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    serve_streaming(listener, move |req, uid, _| answer(req, uid), shutdown).await
}

/// As [`serve`], with `answer` also given the sink of the request's progress events, which go to
/// the client before the answer. At `shutdown`, a request that changes nothing (a followed log)
/// is ended; changes are waited for.
pub async fn serve_streaming<F, Fut>(listener: UnixListener, answer: F, shutdown: CancellationToken)
where
    F: Fn(Request, u32, Progress) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    in_flight.spawn(one(stream, answer.clone(), shutdown.clone()));
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

/// A client's line, read: its protocol and request, or why it cannot be answered.
enum Read {
    /// Protocol 1: a bare request, answered with a bare answer.
    Legacy(Result<Request, String>),
    /// Protocol 2: answered with frames.
    Framed(Result<Request, String>),
}

fn read_request(line: &str) -> Read {
    let unreadable = |e: serde_json::Error| {
        format!("codeb could not read the request (is the client another version of codeb?): {e}")
    };
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return Read::Legacy(Err(unreadable(e))),
    };
    if value.get("protocol").is_none() {
        return Read::Legacy(serde_json::from_value(value).map_err(unreadable));
    }
    Read::Framed(match serde_json::from_value::<Hello>(value) {
        Ok(h) if h.protocol == PROTOCOL => serde_json::from_value(h.request).map_err(unreadable),
        Ok(h) => Err(format!(
            "this codeb watch speaks socket protocol {PROTOCOL} and the client {}: run the same version of codeb for both",
            h.protocol
        )),
        Err(e) => Err(unreadable(e)),
    })
}

async fn one<F, Fut>(stream: UnixStream, answer: F, shutdown: CancellationToken)
where
    F: Fn(Request, u32, Progress) -> Fut,
    Fut: Future<Output = Answer>,
{
    // The socket is 0600, so the peer is the daemon's user; its uid names it in the audit.
    let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut read = BufReader::new(read.take(MAX_REQUEST));
    let got = match read.read_line(&mut line).await {
        Ok(_) => read_request(&line),
        Err(e) => Read::Legacy(Err(e.to_string())),
    };
    let invalid = crate::service::Error::invalid;
    let mut out = match got {
        Read::Legacy(req) => {
            let response = match req {
                Ok(req) => {
                    debug!(op = req.op(), uid, protocol = 1, "client request");
                    answer(req, uid, Progress::none()).await
                }
                Err(e) => Err(invalid(e)),
            };
            serde_json::to_vec(&response).expect("responses serialize")
        }
        Read::Framed(Err(e)) => frame(&Frame::Answer(Box::new(Err(invalid(e))))),
        Read::Framed(Ok(req)) => {
            debug!(op = req.op(), uid, "client request");
            match streamed(req, uid, answer, &mut read, &mut write, &shutdown).await {
                Some(response) => frame(&Frame::Answer(Box::new(response))),
                None => return, // the client went away from a request that changes nothing
            }
        }
    };
    out.push(b'\n');
    if let Err(e) = write.write_all(&out).await {
        debug!(error = %e, "client went away before its answer");
    }
}

fn frame(f: &Frame) -> Vec<u8> {
    serde_json::to_vec(f).expect("frames serialize")
}

/// Runs `req` with a progress sink whose events go to the client as they come, and returns the
/// answer, after every event. `None`: the client closed its side (or the daemon stops) while a
/// request that changes nothing ran; it was dropped. A change runs to its end either way.
async fn streamed<F, Fut, R>(
    req: Request,
    uid: u32,
    answer: F,
    read: &mut R,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    shutdown: &CancellationToken,
) -> Option<Answer>
where
    F: Fn(Request, u32, Progress) -> Fut,
    Fut: Future<Output = Answer>,
    R: tokio::io::AsyncRead + Unpin,
{
    let droppable = !req.changes();
    let (progress, mut events) = Progress::channel();
    let run = answer(req, uid, progress);
    tokio::pin!(run);
    // Cleared when a write fails: the rest of a change's events are drained and dropped.
    let mut writing = true;
    let mut hung_up = false;
    let mut scratch = [0u8; 256];
    let response = loop {
        tokio::select! {
            biased;
            Some(event) = events.recv() => {
                if writing {
                    let mut line = frame(&Frame::Event(event));
                    line.push(b'\n');
                    if write.write_all(&line).await.is_err() {
                        if droppable {
                            return None;
                        }
                        writing = false;
                    }
                }
            }
            response = &mut run => break response,
            // The client sends nothing after its line: a read that ends is its hang-up.
            n = read.read(&mut scratch), if !hung_up => {
                if matches!(n, Ok(0) | Err(_)) {
                    if droppable {
                        debug!(uid, "client went away; its request is dropped");
                        return None;
                    }
                    hung_up = true;
                }
            }
            _ = shutdown.cancelled(), if droppable => {
                break Err(crate::service::Error::busy("codeb watch is stopping"));
            }
        }
    };
    while let Ok(event) = events.try_recv() {
        if writing {
            let mut line = frame(&Frame::Event(event));
            line.push(b'\n');
            writing = write.write_all(&line).await.is_ok();
        }
    }
    Some(response)
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

    fn diff(steps: &[&str]) -> Response {
        Response::Diff(PlanView {
            changes: vec![],
            steps: steps.iter().map(|s| s.to_string()).collect(),
            notes: vec![],
        })
    }

    #[tokio::test]
    async fn events_arrive_in_order_before_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_streaming(
            bind(dir.path()).unwrap(),
            |_req: Request, _uid: u32, progress: Progress| async move {
                progress.started("one");
                progress
                    .send(Event::Log { line: "two".into() })
                    .await
                    .unwrap();
                progress.ended("one", std::time::Duration::from_millis(5), None);
                Ok(diff(&["done"]))
            },
            shutdown.clone(),
        ));
        let (progress, mut events) = Progress::channel();
        let req = Request::Get {
            what: crate::service::GetWhat::Hosts,
        };
        let answer = forward_with(dir.path(), &req, &progress).await.unwrap();
        assert_eq!(answer, Ok(diff(&["done"])));
        drop(progress);
        let mut got = Vec::new();
        while let Some(e) = events.recv().await {
            got.push(e);
        }
        assert_eq!(
            got,
            [
                Event::StepStarted { step: "one".into() },
                Event::Log { line: "two".into() },
                Event::StepEnded {
                    step: "one".into(),
                    duration_ms: 5,
                    error: None
                },
            ]
        );
        shutdown.cancel();
        server.await.unwrap();
    }

    /// Sends `line` raw and returns the daemon's lines.
    async fn raw(dir: &Path, line: &str) -> Vec<String> {
        let mut stream = UnixStream::connect(dir.join(SOCKET)).await.unwrap();
        stream.write_all(line.as_bytes()).await.unwrap();
        stream.write_all(b"\n").await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[tokio::test]
    async fn a_protocol_1_client_gets_a_bare_answer_and_another_version_a_clear_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_streaming(
            bind(dir.path()).unwrap(),
            |_req: Request, _uid: u32, progress: Progress| async move {
                progress.started("a step");
                Ok(diff(&["done"]))
            },
            shutdown.clone(),
        ));
        // Protocol 1: the bare request, the bare answer, no event.
        let lines = raw(dir.path(), r#"{"op":"get","what":"hosts"}"#).await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        let answer: Answer = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(answer, Ok(diff(&["done"])));
        // Protocol 3: refused, naming both versions.
        let lines = raw(
            dir.path(),
            r#"{"protocol":3,"request":{"op":"get","what":"hosts"}}"#,
        )
        .await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        let Frame::Answer(answer) = serde_json::from_str(&lines[0]).unwrap() else {
            panic!("{lines:?}")
        };
        let e = answer.unwrap_err();
        assert!(
            e.message.contains("protocol 2") && e.message.contains("client 3"),
            "{e:?}"
        );
        shutdown.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_meets_a_protocol_1_daemon_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).unwrap();
        // The old daemon: reads a line, answers a bare refusal (it cannot read ours).
        let old = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            BufReader::new(read).read_line(&mut line).await.unwrap();
            let refusal: Answer = Err(crate::service::Error::invalid(
                "codeb could not read the request (is the client another version of codeb?)",
            ));
            let mut out = serde_json::to_vec(&refusal).unwrap();
            out.push(b'\n');
            write.write_all(&out).await.unwrap();
        });
        let req = Request::KeyList;
        let e = forward(dir.path(), &req).await.unwrap_err();
        assert!(matches!(e, Error::OldDaemon { .. }), "{e:?}");
        assert!(e.to_string().contains("protocol 1"), "{e}");
        old.await.unwrap();
    }

    #[tokio::test]
    async fn a_read_whose_client_hangs_up_is_dropped_and_a_change_runs_on() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let dropped = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        let shutdown = CancellationToken::new();
        let (d, f) = (dropped.clone(), finished.clone());
        let server = tokio::spawn(serve_streaming(
            bind(dir.path()).unwrap(),
            move |req: Request, _uid: u32, _progress: Progress| {
                let (d, f) = (d.clone(), f.clone());
                async move {
                    if req.changes() {
                        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                        f.store(true, Ordering::SeqCst);
                    } else {
                        let _flag = Flag(d);
                        std::future::pending::<()>().await;
                    }
                    Ok(diff(&[]))
                }
            },
            shutdown.clone(),
        ));
        for req in [
            r#"{"protocol":2,"request":{"op":"get","what":"hosts"}}"#,
            r#"{"protocol":2,"request":{"op":"key-revoke","id":"x"}}"#,
        ] {
            let mut stream = UnixStream::connect(dir.path().join(SOCKET)).await.unwrap();
            stream.write_all(req.as_bytes()).await.unwrap();
            stream.write_all(b"\n").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            drop(stream);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !(dropped.load(Ordering::SeqCst) && finished.load(Ordering::SeqCst)) {
            assert!(
                std::time::Instant::now() < deadline,
                "dropped {dropped:?}, finished {finished:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
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
