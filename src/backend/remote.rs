//! The client side of codeb's transport to a remote Host (issue #18, docs/multi-host.md): one kept
//! `ssh … codeb agent --stdio` session per host, and a local relay that lets the Podman and Caddy
//! adapters speak to that host unchanged.
//!
//! A [`Session`] owns the ssh child: it reads the agent's hello and refuses another codeb version
//! before sending anything, then multiplexes requests by id over the one connection (each waits
//! for its own answer, with its own deadline), and notices when the connection ends (the agent
//! exits, ssh's keep-alives give up on a silent partition): the next request connects again. Why a
//! connection failed is read from ssh's stderr and named for the operator: a host key that is not
//! the pinned one, a refused credential, an unreachable host, a missing agent.
//!
//! A [`Relay`] serves two unix sockets per host in a 0700 directory of the state directory, one
//! for Podman and one for Caddy's admin API. The adapters connect there exactly as to a local
//! socket (HTTP/1.1), and each HTTP request becomes one agent request. This keeps the adapters'
//! code, their errors and their tests the same for local and remote hosts; the cost is one
//! local socket hop (microseconds) beside the SSH round trip.
//!
//! Podman's events, the one answer the agent streams (lines with the request's id, protocol 3),
//! leave the relay as a chunked body, so bollard reads them as from a local socket
//! ([`Session::stream`]). Not carried yet, and refused here with a message that says so: container
//! logs (binary, and followed ones stream). Must not: decide anything, or reach anything but its
//! session.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::oneshot;

use crate::agent::{Hello, KernelAnswer, KernelOp, Request, Response, Target, MAX_BODY, MAX_LINE};
use crate::model::SshRef;

/// How long a new session may take to say hello: ssh's `ConnectTimeout=5` for the TCP connect,
/// then the key exchange (0.3-0.6 s measured) and the agent's start.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);
/// Each request's own deadline: longer than the adapters' own (Podman's 30 s, Caddy's 10 s), so
/// that theirs speaks first; a host that accepted the request and never answers is given up on.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(45);
/// A failed connect is the answer for this long: the requests of one observation (four at once)
/// get its error instead of each running ssh again; the next use after it tries anew.
const FAILED_CONNECT_HOLD: Duration = Duration::from_secs(2);
/// The longest answer line read from the agent: its bodies are bounded at [`MAX_BODY`], and JSON
/// escaping (a `"` becomes `\"`) can about double one, so a request's line bound would cut a big
/// container list.
const MAX_ANSWER_LINE: usize = 2 * MAX_BODY + 64 * 1024;
/// How much of ssh's stderr is kept for a failure's message.
const STDERR_TAIL: usize = 4096;

/// Why a request to a remote host failed. Every variant names the Host and the SSH target.
/// Worth a retry (a later request connects again): `Unreachable`, `Lost`, `Timeout`; the others
/// need the operator (a key, a credential, an install).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("host {host}: ssh to {target} refused the host's key: {what}; the host is not trusted, nothing was sent ({detail})")]
    HostKey {
        host: String,
        target: String,
        /// "it changed: it is not the one known_hosts pins", or that none is pinned.
        what: &'static str,
        detail: String,
    },
    #[error("host {host}: ssh to {target} was refused: no credential it accepts (check spec.ssh.identityFile and the host's authorized_keys) ({detail})")]
    Credential {
        host: String,
        target: String,
        detail: String,
    },
    #[error("host {host}: the agent `{agent}` is not on {target}: install codeb there ({detail})")]
    NoAgent {
        host: String,
        target: String,
        agent: String,
        detail: String,
    },
    #[error("host {host}: the agent on {target} is codeb {agent} (protocol {agent_protocol}), this is codeb {ours} (protocol {our_protocol}): install the same version there")]
    Version {
        host: String,
        target: String,
        agent: String,
        agent_protocol: u32,
        ours: String,
        our_protocol: u32,
    },
    #[error("host {host}: cannot reach {target} over ssh: {detail}")]
    Unreachable {
        host: String,
        target: String,
        detail: String,
    },
    #[error("host {host}: the session with the agent on {target} ended: {detail}")]
    Lost {
        host: String,
        target: String,
        detail: String,
    },
    #[error("host {host}: no answer from the agent on {target} within {secs} s")]
    Timeout {
        host: String,
        target: String,
        secs: f64,
    },
    #[error("host {host}: the agent on {target}: {message}")]
    Agent {
        host: String,
        target: String,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One remote host's session: connected on first use, again after it ended.
pub struct Session {
    host: String,
    ssh: SshRef,
    /// The agent's command line after `ssh … TARGET` (validated: no shell metacharacters).
    command: String,
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
    failed: Mutex<Option<(tokio::time::Instant, Error)>>,
    deadline: Duration,
}

/// A request waiting for its answer: one line, or the lines of a stream.
enum Waiting {
    One(oneshot::Sender<Result<Response>>),
    /// Bounded: a consumer [`STREAM_BUFFER`] lines behind loses its stream (it ends, and the
    /// daemon's follower reconnects and re-observes), so the reader never waits on it.
    Stream(tokio::sync::mpsc::Sender<Result<Response>>),
}

/// Lines of a stream held for a consumer that has not read them yet. A restart burst is four
/// events; a host's whole deploy a few dozen.
const STREAM_BUFFER: usize = 1024;

/// A running ssh child past the hellos.
struct Live {
    stdin: tokio::sync::Mutex<ChildStdin>,
    pending: Mutex<HashMap<u64, Waiting>>,
    next: AtomicU64,
    /// Set (with why) once the session ended; no request is sent on it after.
    closed: Mutex<Option<String>>,
    _child: Mutex<Child>,
}

impl Live {
    fn closed(&self) -> Option<String> {
        self.closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Ends the session: every request waiting gets `error(why)`.
    fn close(&self, why: String, error: impl Fn(String) -> Error) {
        self.closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(why.clone());
        let waiting: Vec<_> = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        for (_, waiting) in waiting {
            match waiting {
                Waiting::One(tx) => {
                    let _ = tx.send(Err(error(why.clone())));
                }
                Waiting::Stream(tx) => {
                    let _ = tx.try_send(Err(error(why.clone())));
                }
            }
        }
    }
}

impl Session {
    /// A session for Host `host`, whose agent serves `podman_socket` and `caddy_admin`
    /// (`127.0.0.1:2019`) there. Connects on first use.
    pub fn new(host: &str, ssh: &SshRef, podman_socket: &str, caddy_admin: &str) -> Session {
        Session {
            host: host.to_string(),
            ssh: ssh.clone(),
            command: format!(
                "{} agent --stdio --podman-socket {podman_socket} --caddy-admin {caddy_admin}",
                ssh.agent
            ),
            live: tokio::sync::Mutex::new(None),
            failed: Mutex::new(None),
            deadline: REQUEST_DEADLINE,
        }
    }

    /// The same session with another per-request deadline (default [`REQUEST_DEADLINE`]).
    pub fn with_deadline(mut self, deadline: Duration) -> Session {
        self.deadline = deadline;
        self
    }

    /// The ssh command line, without the agent's command.
    pub fn ssh_args(ssh: &SshRef) -> Vec<String> {
        let mut args: Vec<String> = [
            "-T",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=5",
            // Not optional: over a silent partition a kept connection hangs forever without them
            // (measured in ENVIRONMENT.md); with them it ends within about 4 s.
            "-o",
            "ServerAliveInterval=1",
            "-o",
            "ServerAliveCountMax=3",
        ]
        .map(String::from)
        .to_vec();
        if let Some(port) = ssh.port {
            args.extend(["-p".into(), port.to_string()]);
        }
        if let Some(key) = &ssh.identity_file {
            args.extend([
                "-i".into(),
                key.clone(),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
            ]);
        }
        if let Some(known) = &ssh.known_hosts {
            args.extend(["-o".into(), format!("UserKnownHostsFile={known}")]);
        }
        args.extend(["--".into(), ssh.target.clone()]);
        args
    }

    /// One request, answered by the host's backend: (HTTP status, body).
    ///
    /// # Errors
    /// [`Error`]: the session could not be opened, ended before the answer, or the deadline
    /// passed; or the agent refused the request or could not reach its backend.
    pub async fn request(
        &self,
        target: Target,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String)> {
        self.send(target, method, path, body, None).await
    }

    /// The Host this session reaches.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// One kernel op, run by the agent in the host's network namespace.
    ///
    /// # Errors
    /// As [`Session::request`]; an answer that does not read as a [`KernelAnswer`].
    pub async fn kernel(&self, op: KernelOp) -> Result<KernelAnswer> {
        let (_, body) = self.send(Target::Kernel, "", "", None, Some(op)).await?;
        serde_json::from_str(&body)
            .map_err(|e| self.agent_error(format!("a kernel answer that does not read: {e}")))
    }

    /// A health probe of `url` made from the host by its agent: `Ok` on a 2xx or 3xx answer,
    /// else what came back, worded as codeb's own prober words it (`connection refused`, `timed
    /// out`, `HTTP 503`), or why the session failed.
    pub async fn probe(&self, url: &str) -> std::result::Result<(), String> {
        match self.send(Target::Probe, "GET", url, None, None).await {
            Ok((status, _)) if (200..400).contains(&status) => Ok(()),
            Ok((status, _)) => Err(format!("HTTP {status}")),
            Err(Error::Agent { message, .. }) => Err(message),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn send(
        &self,
        target: Target,
        method: &str,
        path: &str,
        body: Option<String>,
        kernel: Option<KernelOp>,
    ) -> Result<(u16, String)> {
        let live = self.live().await?;
        let (tx, rx) = oneshot::channel();
        let request = Request {
            id: 0,
            target,
            method: method.to_string(),
            path: path.to_string(),
            body,
            kernel,
        };
        let id = self.start(&live, Waiting::One(tx), request).await?;
        let answer = match tokio::time::timeout(self.deadline, rx).await {
            Ok(Ok(answer)) => answer?,
            Ok(Err(_)) => return Err(self.lost("the session ended".into())),
            Err(_) => {
                live.pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                return Err(Error::Timeout {
                    host: self.host.clone(),
                    target: self.ssh.display(),
                    secs: self.deadline.as_secs_f64(),
                });
            }
        };
        match (answer.status, answer.error) {
            (_, Some(message)) => Err(self.agent_error(message)),
            (Some(status), None) => Ok((status, answer.body.unwrap_or_default())),
            (None, None) => Err(self.agent_error("an answer with neither status nor error".into())),
        }
    }

    /// Registers `waiting` under a new id and writes `request` with it on `live`.
    async fn start(&self, live: &Arc<Live>, waiting: Waiting, mut request: Request) -> Result<u64> {
        let id = live.next.fetch_add(1, Ordering::Relaxed);
        request.id = id;
        live.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, waiting);
        // Closed between `live()` and the insert: the close drained before this was there.
        if let Some(why) = live.closed() {
            live.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            return Err(self.lost(why));
        }
        let mut line = serde_json::to_vec(&request).expect("a request serializes");
        line.push(b'\n');
        if line.len() > MAX_LINE {
            live.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            return Err(self.agent_error(format!(
                "the request is over the agent's {MAX_LINE}-byte line bound"
            )));
        }
        if let Err(e) = write(live, &line).await {
            live.close(format!("writing to ssh: {e}"), |d| self.lost(d));
        }
        Ok(id)
    }

    /// A `GET` whose answer may stream (Podman's events, the one the agent streams): the whole
    /// answer when it does not (a refusal, Podman's error), else its status and its lines.
    ///
    /// # Errors
    /// As [`Session::request`], for the answer's head; what ends the stream later (the session
    /// ended, the agent's error) is the stream's last item.
    pub async fn stream(&self, target: Target, path: &str) -> Result<Streamed> {
        let live = self.live().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let request = Request {
            id: 0,
            target,
            method: "GET".into(),
            path: path.to_string(),
            body: None,
            kernel: None,
        };
        let id = self.start(&live, Waiting::Stream(tx), request).await?;
        let mut lines = Lines {
            rx,
            live: live.clone(),
            id,
            ended: false,
            host: self.host.clone(),
            target: self.ssh.display(),
        };
        let head = match tokio::time::timeout(self.deadline, lines.rx.recv()).await {
            Ok(Some(head)) => head?,
            Ok(None) => return Err(self.lost("the session ended".into())),
            Err(_) => {
                return Err(Error::Timeout {
                    host: self.host.clone(),
                    target: self.ssh.display(),
                    secs: self.deadline.as_secs_f64(),
                })
            }
        };
        if head.more {
            return Ok(Streamed::Lines(head.status.unwrap_or(200), lines));
        }
        lines.ended = true;
        match (head.status, head.error) {
            (_, Some(message)) => Err(self.agent_error(message)),
            (Some(status), None) => Ok(Streamed::Whole(status, head.body.unwrap_or_default())),
            (None, None) => Err(self.agent_error("an answer with neither status nor error".into())),
        }
    }

    /// Whether a session is open now (no connection is made).
    pub async fn connected(&self) -> bool {
        let live = self.live.lock().await;
        live.as_ref().is_some_and(|l| l.closed().is_none())
    }

    fn lost(&self, detail: String) -> Error {
        Error::Lost {
            host: self.host.clone(),
            target: self.ssh.display(),
            detail,
        }
    }

    fn agent_error(&self, message: String) -> Error {
        Error::Agent {
            host: self.host.clone(),
            target: self.ssh.display(),
            message,
        }
    }

    /// The open session, or a new one. One connect at a time: concurrent requests wait for it.
    async fn live(&self) -> Result<Arc<Live>> {
        let mut slot = self.live.lock().await;
        if let Some(live) = slot.as_ref().filter(|l| l.closed().is_none()) {
            return Ok(live.clone());
        }
        *slot = None;
        {
            let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, e)) = failed.as_ref() {
                if at.elapsed() < FAILED_CONNECT_HOLD {
                    return Err(e.clone());
                }
            }
        }
        match self.connect().await {
            Ok(live) => {
                *slot = Some(live.clone());
                Ok(live)
            }
            Err(e) => {
                tracing::warn!(host = %self.host, error = %e, "agent session could not be opened");
                *self.failed.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((tokio::time::Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<Arc<Live>> {
        let mut child = tokio::process::Command::new("ssh")
            .args(Self::ssh_args(&self.ssh))
            .arg(&self.command)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Unreachable {
                host: self.host.clone(),
                target: self.ssh.display(),
                detail: format!("cannot run ssh: {e}"),
            })?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let stderr = child.stderr.take().expect("piped");
        let tail = Arc::new(Mutex::new(String::new()));
        let stderr_done = tokio::spawn(keep_tail(stderr, tail.clone()));

        let first = tokio::time::timeout(HELLO_TIMEOUT, read_line(&mut stdout)).await;
        let line = match first {
            Ok(Ok(Some(line))) => line,
            Ok(_) => {
                // ssh ended (or the agent said nothing): its stderr says why.
                let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), stderr_done).await;
                let text = tail.lock().unwrap_or_else(PoisonError::into_inner).clone();
                return Err(self.classify(&text));
            }
            Err(_) => {
                return Err(Error::Unreachable {
                    host: self.host.clone(),
                    target: self.ssh.display(),
                    detail: format!("no hello from the agent within {HELLO_TIMEOUT:?}"),
                })
            }
        };
        #[derive(serde::Deserialize)]
        struct HelloLine {
            hello: Hello,
        }
        let theirs = serde_json::from_slice::<HelloLine>(&line)
            .map_err(|e| Error::Agent {
                host: self.host.clone(),
                target: self.ssh.display(),
                message: format!(
                    "not an agent's hello ({e}): {:.120}",
                    String::from_utf8_lossy(&line)
                ),
            })?
            .hello;
        let ours = Hello::ours();
        if theirs != ours {
            // Nothing is sent to an agent of another version; dropping the child ends it.
            return Err(Error::Version {
                host: self.host.clone(),
                target: self.ssh.display(),
                agent: theirs.version,
                agent_protocol: theirs.protocol,
                ours: ours.version,
                our_protocol: ours.protocol,
            });
        }
        let mut stdin = stdin;
        let mut hello = serde_json::to_vec(&serde_json::json!({ "hello": ours })).expect("json");
        hello.push(b'\n');
        let sent = match stdin.write_all(&hello).await {
            Ok(()) => stdin.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            return Err(self.lost(format!("sending the hello: {e}")));
        }
        let live = Arc::new(Live {
            stdin: tokio::sync::Mutex::new(stdin),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            closed: Mutex::new(None),
            _child: Mutex::new(child),
        });
        tracing::info!(host = %self.host, target = %self.ssh.display(), "agent session open");
        let reader = Reader {
            live: Arc::downgrade(&live),
            host: self.host.clone(),
            target: self.ssh.display(),
            tail,
        };
        tokio::spawn(reader.run(stdout));
        Ok(live)
    }

    /// A connection that ended before the hello, named from ssh's stderr.
    fn classify(&self, stderr: &str) -> Error {
        let (host, target) = (self.host.clone(), self.ssh.display());
        let detail = last_lines(stderr);
        if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || stderr.contains("Host key verification failed")
            || stderr.to_ascii_lowercase().contains("host key is known")
        {
            Error::HostKey {
                host,
                target,
                what: if stderr.contains("HAS CHANGED") || stderr.contains("has changed") {
                    "it changed: it is not the one known_hosts pins for it"
                } else {
                    "known_hosts pins no key for it (accept it on purpose, e.g. with ssh-keyscan checked by hand)"
                },
                detail,
            }
        } else if stderr.contains("Permission denied") || stderr.contains("Too many authentication")
        {
            Error::Credential {
                host,
                target,
                detail,
            }
        } else if stderr.contains("command not found")
            || (stderr.contains(&self.ssh.agent) && stderr.contains("No such file"))
        {
            Error::NoAgent {
                host,
                target,
                agent: self.ssh.agent.clone(),
                detail,
            }
        } else if stderr.contains("codeb agent:") {
            Error::Agent {
                host,
                target,
                message: detail,
            }
        } else {
            Error::Unreachable {
                host,
                target,
                detail: if detail.is_empty() {
                    "ssh ended without a word".into()
                } else {
                    detail
                },
            }
        }
    }
}

async fn write(live: &Live, line: &[u8]) -> std::io::Result<()> {
    let mut stdin = live.stdin.lock().await;
    stdin.write_all(line).await?;
    stdin.flush().await
}

/// The answer of [`Session::stream`].
pub enum Streamed {
    /// A whole answer: the agent's or Podman's refusal.
    Whole(u16, String),
    /// A stream: its status, and its lines.
    Lines(u16, Lines),
}

/// The lines of a stream. Dropped before its end, it asks the agent to end it.
pub struct Lines {
    rx: tokio::sync::mpsc::Receiver<Result<Response>>,
    live: Arc<Live>,
    id: u64,
    ended: bool,
    host: String,
    target: String,
}

impl Lines {
    /// The next line; `None` after the end, which is `Err` when the stream did not end cleanly
    /// (the session ended, the agent's error, a consumer that fell behind).
    pub async fn next(&mut self) -> Option<Result<String>> {
        if self.ended {
            return None;
        }
        let lost = |detail: String| Error::Lost {
            host: self.host.clone(),
            target: self.target.clone(),
            detail,
        };
        let item = match self.rx.recv().await {
            Some(Ok(line)) if line.more => return Some(Ok(line.body.unwrap_or_default())),
            Some(Ok(end)) => match end.error {
                Some(message) => Err(Error::Agent {
                    host: self.host.clone(),
                    target: self.target.clone(),
                    message,
                }),
                None => {
                    self.ended = true;
                    return None;
                }
            },
            Some(Err(e)) => Err(e),
            None => Err(lost(format!(
                "the stream fell {STREAM_BUFFER} lines behind"
            ))),
        };
        self.ended = true;
        Some(item)
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.live
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
        if self.ended || self.live.closed().is_some() {
            return;
        }
        // Its answer (200, or 404 when the end crossed it) finds no one waiting: dropped.
        let cancel = Request {
            id: self.live.next.fetch_add(1, Ordering::Relaxed),
            target: Target::Agent,
            method: "DELETE".into(),
            path: format!("/streams/{}", self.id),
            body: None,
            kernel: None,
        };
        let mut line = serde_json::to_vec(&cancel).expect("a request serializes");
        line.push(b'\n');
        let live = self.live.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = write(&live, &line).await;
            });
        }
    }
}

/// Reads the agent's answers and hands each to its request; ends the session at the end of
/// its output (the agent or ssh exited: a dropped connection, keep-alives that gave up).
struct Reader {
    live: std::sync::Weak<Live>,
    host: String,
    target: String,
    tail: Arc<Mutex<String>>,
}

impl Reader {
    async fn run(self, mut stdout: BufReader<ChildStdout>) {
        let why = loop {
            match read_line(&mut stdout).await {
                Ok(Some(line)) => {
                    let Some(live) = self.live.upgrade() else {
                        return;
                    };
                    match serde_json::from_slice::<Response>(&line) {
                        Ok(answer) => {
                            let id = answer.id;
                            let mut pending =
                                live.pending.lock().unwrap_or_else(PoisonError::into_inner);
                            match pending.remove(&id) {
                                // Kept while its consumer keeps up: one gone or too far
                                // behind loses its stream (its sender dropped: it sees the end).
                                Some(Waiting::Stream(tx)) if answer.more => {
                                    let kept = tx.try_send(Ok(answer)).is_ok().then_some(tx);
                                    pending.extend(kept.map(|tx| (id, Waiting::Stream(tx))));
                                }
                                Some(Waiting::Stream(tx)) => {
                                    let _ = tx.try_send(Ok(answer));
                                }
                                Some(Waiting::One(tx)) => {
                                    let _ = tx.send(Ok(answer));
                                }
                                None => {}
                            }
                        }
                        Err(e) => break format!("an answer that does not read: {e}"),
                    }
                }
                Ok(None) => {
                    // Give ssh a moment to say why on stderr.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
                    let said = last_lines(&tail);
                    break if said.is_empty() {
                        "the agent's output ended".to_string()
                    } else {
                        said
                    };
                }
                Err(e) => break format!("reading the agent's output: {e}"),
            }
        };
        tracing::info!(host = %self.host, target = %self.target, why = %why, "agent session ended");
        if let Some(live) = self.live.upgrade() {
            let (host, target) = (self.host.clone(), self.target.clone());
            live.close(why, |detail| Error::Lost {
                host: host.clone(),
                target: target.clone(),
                detail,
            });
        }
    }
}

/// One line, bounded by [`MAX_ANSWER_LINE`]; `None` at the end of the output.
async fn read_line(input: &mut BufReader<ChildStdout>) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = (&mut *input)
        .take(MAX_ANSWER_LINE as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') && line.len() >= MAX_ANSWER_LINE {
        return Err(std::io::Error::other(format!(
            "a line longer than {MAX_ANSWER_LINE} bytes"
        )));
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(Some(line))
}

/// Keeps the last [`STDERR_TAIL`] bytes of ssh's stderr.
async fn keep_tail(mut stderr: tokio::process::ChildStderr, tail: Arc<Mutex<String>>) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut t = tail.lock().unwrap_or_else(PoisonError::into_inner);
        t.push_str(&String::from_utf8_lossy(&buf[..n]));
        if t.len() > STDERR_TAIL {
            let cut = t.len() - STDERR_TAIL;
            let cut = (cut..t.len()).find(|i| t.is_char_boundary(*i)).unwrap_or(0);
            t.drain(..cut);
        }
    }
}

/// The last few non-empty lines of ssh's stderr, on one line (its `@@@` banner left out).
fn last_lines(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("@@@"))
        .collect();
    let start = lines.len().saturating_sub(3);
    lines[start..].join(" / ")
}

/// The local unix sockets of one remote host, each HTTP request on them one agent request.
pub struct Relay {
    pub podman: PathBuf,
    pub caddy: PathBuf,
    session: Arc<Session>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.podman);
        let _ = std::fs::remove_file(&self.caddy);
    }
}

/// The longest unix socket path (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

impl Relay {
    /// Serves `session` on `dir/podman.sock` and `dir/caddy.sock`, `dir` made 0700 and the
    /// sockets 0600 (whoever can connect drives the host). Must be called on a Tokio runtime.
    ///
    /// # Errors
    /// The directory or a socket cannot be made (a path too long for a unix socket, say).
    pub fn start(dir: &Path, session: Arc<Session>) -> std::io::Result<Relay> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let mut tasks = Vec::new();
        let mut paths = Vec::new();
        for (file, target) in [
            ("podman.sock", Target::Podman),
            ("caddy.sock", Target::Caddy),
        ] {
            let path = dir.join(file);
            if path.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(std::io::Error::other(format!(
                    "{} is too long for a unix socket ({MAX_SOCKET_PATH} bytes at most): use a shorter state directory",
                    path.display()
                )));
            }
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            tasks.push(tokio::spawn(serve(listener, session.clone(), target)));
            paths.push(path);
        }
        let caddy = paths.pop().expect("two");
        let podman = paths.pop().expect("two");
        Ok(Relay {
            podman,
            caddy,
            session,
            tasks,
        })
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Whether its sockets are still served (not when the runtime that served them ended).
    fn alive(&self) -> bool {
        self.tasks.iter().all(|t| !t.is_finished()) && self.podman.exists()
    }
}

async fn serve(listener: tokio::net::UnixListener, session: Arc<Session>, target: Target) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: not a reason to spin.
                tracing::warn!(error = %e, "relay accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let session = session.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let session = session.clone();
                async move { Ok::<_, std::convert::Infallible>(relay(&session, target, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

type Body = http_body_util::combinators::UnsyncBoxBody<hyper::body::Bytes, std::io::Error>;

/// One HTTP request from an adapter, as one agent request.
async fn relay(
    session: &Session,
    target: Target,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    use http_body_util::BodyExt;
    let method = req.method().as_str().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if let Some(why) = not_carried(target, &path) {
        return answer(501, &error_body(&format!("host {}: {why}", session.host)));
    }
    if streams(target, &path) {
        return match session.stream(target, &path).await {
            Ok(Streamed::Whole(status, body)) => answer(status, &body),
            Ok(Streamed::Lines(status, lines)) => stream_answer(status, lines),
            Err(e) => answer(502, &error_body(&e.to_string())),
        };
    }
    let limited = http_body_util::Limited::new(req.into_body(), MAX_LINE - 4096);
    let body = match limited.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return answer(413, &error_body(&format!("request body: {e}"))),
    };
    let body = if body.is_empty() {
        None
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(text) => Some(text),
            Err(_) => {
                return answer(
                    400,
                    &error_body("the agent carries text (JSON) request bodies only"),
                )
            }
        }
    };
    match session.request(target, &method, &path, body).await {
        Ok((status, body)) => answer(status, &body),
        Err(e) => answer(502, &error_body(&e.to_string())),
    }
}

/// What the agent cannot carry yet: container logs (binary, and followed ones stream).
fn not_carried(target: Target, path: &str) -> Option<&'static str> {
    let route = path.split('?').next().unwrap_or(path);
    (target == Target::Podman && route.ends_with("/logs")).then_some(
        "container logs of a remote host are not carried yet (the agent answers with whole text bodies, and streams only Podman's events)",
    )
}

/// Whether the answer streams: Podman's events (the agent checks the query).
fn streams(target: Target, path: &str) -> bool {
    let route = path.split('?').next().unwrap_or(path);
    target == Target::Podman && route.ends_with("/events")
}

/// A streamed answer as a chunked HTTP body, one event line per chunk. How the stream ended
/// badly (the session ended) is the body's error: hyper aborts the connection, and the adapter
/// sees its stream fail, not a clean end.
fn stream_answer(status: u16, lines: Lines) -> hyper::Response<Body> {
    use http_body_util::BodyExt;
    let chunks = futures_util::stream::unfold(lines, |mut lines| async move {
        let item = lines.next().await?;
        let frame = item
            .map(|line| hyper::body::Frame::data(hyper::body::Bytes::from(line + "\n")))
            .map_err(std::io::Error::other);
        Some((frame, lines))
    });
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(http_body_util::StreamBody::new(chunks).boxed_unsync())
        .unwrap_or_else(|_| answer(502, &error_body("the host answered an invalid status")))
}

/// Podman's and Caddy's error shape: `{"message": …}` (bollard shows `message`).
fn error_body(message: &str) -> String {
    serde_json::json!({ "message": message, "error": message }).to_string()
}

fn answer(status: u16, body: &str) -> hyper::Response<Body> {
    let trimmed = body.trim_start();
    let json = trimmed.starts_with('{') || trimmed.starts_with('[') || trimmed.starts_with('"');
    hyper::Response::builder()
        .status(status)
        .header(
            "content-type",
            if json {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            },
        )
        .body(full(body.to_string()))
        .unwrap_or_else(|_| {
            hyper::Response::builder()
                .status(502)
                .body(full(error_body("the host answered an invalid status")))
                .expect("a plain response builds")
        })
}

fn full(body: String) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(hyper::body::Bytes::from(body))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Each relay by its directory, with the settings it was made for.
type Relays = HashMap<PathBuf, (String, Arc<Relay>)>;

/// The relays of this process, one per remote Host, kept across connects: one ssh session per
/// host for the whole process (a daemon's every reconcile, a command's every step).
fn relays() -> &'static Mutex<Relays> {
    static RELAYS: OnceLock<Mutex<Relays>> = OnceLock::new();
    RELAYS.get_or_init(Default::default)
}

/// The relay of Host `host` under `state_dir/remote/HOST`: the kept one when its settings are
/// the same, else a new one (the old one's session ends when the last client drops it).
///
/// # Errors
/// The relay's directory or sockets cannot be made.
pub fn relay_for(
    state_dir: &Path,
    host: &str,
    ssh: &SshRef,
    podman_socket: &str,
    caddy_admin: &str,
) -> std::io::Result<Arc<Relay>> {
    // Absolute: the adapters take `unix:///ABSOLUTE` endpoints.
    let dir = std::path::absolute(state_dir.join("remote").join(host))?;
    let settings = format!("{ssh:?} {podman_socket} {caddy_admin}");
    let mut all = relays().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((kept, relay)) = all.get(&dir) {
        if *kept == settings && relay.alive() {
            return Ok(relay.clone());
        }
    }
    all.remove(&dir);
    let session = Arc::new(Session::new(host, ssh, podman_socket, caddy_admin));
    let relay = Arc::new(Relay::start(&dir, session)?);
    all.insert(dir, (settings, relay.clone()));
    Ok(relay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh() -> SshRef {
        SshRef {
            target: "root@10.0.0.2".into(),
            port: Some(2222),
            identity_file: Some("/k/id".into()),
            known_hosts: Some("/k/known".into()),
            agent: "/usr/local/bin/codeb".into(),
        }
    }

    #[test]
    fn ssh_never_prompts_pins_the_host_key_and_keeps_alive() {
        let args = Session::ssh_args(&ssh()).join(" ");
        for needed in [
            "-o BatchMode=yes",
            "-o StrictHostKeyChecking=yes",
            "-o ConnectTimeout=5",
            "-o ServerAliveInterval=1",
            "-o ServerAliveCountMax=3",
            "-p 2222",
            "-i /k/id",
            "-o UserKnownHostsFile=/k/known",
        ] {
            assert!(args.contains(needed), "{needed} missing: {args}");
        }
        assert!(args.ends_with("-- root@10.0.0.2"), "{args}");
    }

    #[test]
    fn a_failed_connection_is_named_from_what_ssh_said() {
        let s = Session::new("web", &ssh(), "/run/podman/podman.sock", "127.0.0.1:2019");
        let changed = "@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@\nHost key verification failed.\n";
        let e = s.classify(changed);
        assert!(matches!(e, Error::HostKey { .. }), "{e}");
        assert!(e.to_string().contains("host web"), "{e}");
        assert!(matches!(
            s.classify("root@10.0.0.2: Permission denied (publickey)."),
            Error::Credential { .. }
        ));
        assert!(matches!(
            s.classify("bash: line 1: /usr/local/bin/codeb: No such file or directory"),
            Error::NoAgent { .. }
        ));
        let e = s.classify("ssh: connect to host 10.0.0.2 port 2222: No route to host");
        assert!(matches!(e, Error::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("No route to host"), "{e}");
    }

    #[test]
    fn logs_are_refused_for_now_events_stream_and_the_rest_is_carried() {
        assert!(not_carried(Target::Podman, "/v1.41/events?filters=x").is_none());
        assert!(streams(Target::Podman, "/v1.41/events?filters=x"));
        assert!(!streams(Target::Podman, "/v1.41/containers/json"));
        assert!(not_carried(Target::Podman, "/v1.41/containers/abc/logs?follow=true").is_some());
        assert!(not_carried(Target::Podman, "/v1.41/containers/json?all=true").is_none());
        assert!(not_carried(Target::Caddy, "/config/").is_none());
    }
}
