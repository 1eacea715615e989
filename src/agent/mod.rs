//! `codeb agent --stdio`: the far end of codeb's transport to a remote host (issue #18,
//! docs/multi-host.md). codeb runs it over SSH (`ssh host codeb agent --stdio`) and speaks JSON
//! lines with it on stdin/stdout: a hello each way (same protocol and same codeb version, or the
//! session ends naming both), then one request per line, one response per line, in order.
//!
//! The agent forwards only allow-listed HTTP requests: to the host's Podman socket, the calls
//! codeb's Podman adapter makes; to Caddy's admin API on the host's loopback, codeb's own paths
//! and reads of the config. It never opens a file or reaches another address, and runs one fixed
//! command only (`caddy version`, for `get hosts`: Caddy's admin API does not say its version).
//! Kernel requests are typed ops on codeb's own nf_tables tables, run with codeb's netfilter
//! adapter in the host's network namespace ([`KernelOp`]); probes are one bounded GET from the
//! host to a slot on it ([`probe`]). Every line is bounded (a longer one ends the session: the
//! agent never buffers without bound), and so is every answer. One answer streams: Podman's
//! container events, for the daemon's event follower (`GET …/events` with codeb's fixed filters
//! and nothing else, see [`allowed`]): a head line, one line per event, an end line, all with the
//! request's id ([`Response::more`]); the client ends it with `DELETE /streams/ID`. Followed logs
//! are not offered. It must not decide anything: what to ask is codeb's business.
//!
//! Blocking std I/O on purpose: one session serves one client. Requests are served at once, each
//! on a thread of its own (at most [`MAX_IN_FLIGHT`]), and each answer carries its request's id:
//! answers may come in another order than the requests, so that a slow call (a container stop
//! waiting out its timeout) holds back no read of the same host.

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::backend::netfilter::agent::{KernelAnswer, KernelOp};

mod probe;
mod stream;
pub use probe::{probe, probe_target};

/// The wire protocol's version; a change of any type below bumps it. 2: kernel ops and probes.
/// 3: the event stream ([`Response::more`], `DELETE /streams/ID`).
pub const PROTOCOL: u32 = 3;
/// The longest line either side may send, newline included. A Podman create or a Caddy route is a
/// few KiB; 1 MiB leaves room and still bounds what a session can make the agent hold.
pub const MAX_LINE: usize = 1 << 20;
/// The largest answer body the agent forwards (a container list of a busy host is ~100 KiB).
pub const MAX_BODY: usize = 4 << 20;
/// Requests of one session served at once; the next waits for one of them to end. codeb's
/// observation of a host makes four at once, a daemon's reconciles of several environments more.
pub const MAX_IN_FLIGHT: usize = 16;
/// A backend that accepts a request and never answers is given up on after this; codeb has its
/// own, shorter, deadline per request (docs/multi-host.md).
const BACKEND_TIMEOUT: Duration = Duration::from_secs(60);

/// The first line each side sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub protocol: u32,
    pub version: String,
}

impl Hello {
    /// This build's hello.
    pub fn ours() -> Hello {
        Hello {
            protocol: PROTOCOL,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Podman,
    Caddy,
    /// codeb's nf_tables tables on the host: `kernel` holds the op, the answer's body its
    /// [`KernelAnswer`] as JSON.
    Kernel,
    /// A health probe made from the host: `method` `GET`, `path` the probe's URL
    /// (`http://IP:PORT/path`); the answer's status is the slot's (see [`probe`]).
    Probe,
    /// The agent itself: `GET /ping` (answered at once: the session's round trip, for `get
    /// hosts`) and `GET /caddy-version` (`caddy version` on the host: Caddy's admin API does not
    /// say it). Nothing else.
    Agent,
}

/// The agent's own requests ([`Target::Agent`]), all `GET`; and `DELETE /streams/ID`, which ends
/// the event stream of request `ID`.
pub const AGENT_PATHS: &[&str] = &["/ping", "/caddy-version"];
/// Event streams of one session open at once: the daemon follows one per host, and a second
/// covers its reconnect while the first one's end is under way. Each holds a thread.
pub const MAX_STREAMS: usize = 2;
/// The longest event line forwarded: a container's event carries its labels (codeb's are a few
/// hundred bytes; Podman's own ~1 KiB). A longer one ends the stream with an error.
pub const MAX_EVENT_LINE: usize = 64 * 1024;
/// How often a stream that waits for Podman's next event looks whether it was cancelled or the
/// session ended: the longest a thread outlives its stream.
const STREAM_POLL: Duration = Duration::from_millis(500);
/// How long `caddy version` may take on the host.
const CADDY_VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub id: u64,
    pub target: Target,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// Path and query, starting with `/` (a probe: its URL).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// A JSON body as text, sent with `Content-Type: application/json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The kernel op of a [`Target::Kernel`] request, and of no other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelOp>,
}

/// One response line: the backend's status and body, or why the agent did not forward it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A line of a stream, more to come: the head (`status`, no body), then one per event (the
    /// event's JSON in `body`). The stream's last line has `more` false: `error`, or `status`
    /// 200 when Podman ended it. A stream Podman refused is one ordinary answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// Why a session ended early. None is worth a retry on the same session; a new session after
/// `Io` may work (the connection dropped).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the client's hello is missing or malformed: {0}")]
    BadHello(String),
    #[error("this agent is codeb {agent} (protocol {agent_protocol}), the client is codeb {client} (protocol {client_protocol}): run the same codeb version on both ends")]
    VersionMismatch {
        agent: String,
        agent_protocol: u32,
        client: String,
        client_protocol: u32,
    },
    #[error("a line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("reading or writing the session: {0}")]
    Io(#[from] std::io::Error),
}

/// The host's endpoints the agent forwards to.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub podman_socket: PathBuf,
    /// `127.0.0.1:2019`: Caddy's admin API, on the host's loopback only.
    pub caddy_admin: String,
}

/// Serves one session: the hellos, then requests until the client closes its side.
///
/// # Errors
/// A bad or different-version hello (after answering it with an error line), an over-long line,
/// or a failed read or write. A request that is malformed, refused or fails at the backend is an
/// error *line*, and the session goes on.
pub fn serve(
    input: &mut impl BufRead,
    output: &mut (impl Write + Send),
    endpoints: &Endpoints,
) -> Result<(), Error> {
    write_line(output, &serde_json::json!({ "hello": Hello::ours() }))?;
    let Some(line) = read_line(input)? else {
        return Ok(());
    };
    let theirs = serde_json::from_slice::<HelloLine>(&line)
        .map_err(|e| Error::BadHello(e.to_string()))?
        .hello;
    let ours = Hello::ours();
    if theirs != ours {
        let e = Error::VersionMismatch {
            agent: ours.version,
            agent_protocol: ours.protocol,
            client: theirs.version,
            client_protocol: theirs.protocol,
        };
        write_line(output, &serde_json::json!({ "error": e.to_string() }))?;
        return Err(e);
    }
    let output = std::sync::Mutex::new(output);
    let in_flight = (std::sync::Mutex::new(0usize), std::sync::Condvar::new());
    let streams = stream::Streams::default();
    // Every thread is joined before this returns: the answers of requests in flight when the
    // client closed its side are still written, and open streams see the end and stop.
    std::thread::scope(|scope| {
        let read = (|| {
            while let Some(line) = read_line(input)? {
                {
                    let mut n = in_flight.0.lock().unwrap_or_else(|e| e.into_inner());
                    while *n >= MAX_IN_FLIGHT {
                        n = in_flight.1.wait(n).unwrap_or_else(|e| e.into_inner());
                    }
                    *n += 1;
                }
                let (output, in_flight, streams) = (&output, &in_flight, &streams);
                scope.spawn(move || {
                    // A client that went away is seen by the reading side (the end of its input).
                    let emit = |response: &Response| {
                        let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
                        let _ = write_line(&mut **out, response);
                    };
                    match serde_json::from_slice::<Request>(&line) {
                        Ok(request) if stream::is_stream(&request) => {
                            stream::events(&request, endpoints, streams, &emit)
                        }
                        Ok(request) if stream::is_cancel(&request) => {
                            emit(&stream::cancel(&request, streams))
                        }
                        Ok(request) => emit(&handle(&request, endpoints)),
                        Err(e) => emit(&Response {
                            id: 0,
                            status: None,
                            body: None,
                            error: Some(format!("malformed request: {e}")),
                            more: false,
                        }),
                    }
                    *in_flight.0.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                    in_flight.1.notify_one();
                });
            }
            Ok(())
        })();
        streams.close();
        read
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HelloLine {
    hello: Hello,
}

fn handle(request: &Request, endpoints: &Endpoints) -> Response {
    let refused = |error: String| Response {
        id: request.id,
        status: None,
        body: None,
        error: Some(error),
        more: false,
    };
    match (request.target, &request.kernel) {
        (Target::Kernel, Some(op)) if request.method.is_empty() && request.path.is_empty() => {
            let answer = crate::backend::netfilter::agent::serve(op, &endpoints.podman_socket);
            return Response {
                id: request.id,
                status: Some(200),
                body: Some(serde_json::to_string(&answer).expect("an answer serializes")),
                error: None,
                more: false,
            };
        }
        (Target::Kernel, _) => {
            return refused("not allowed by the agent: a kernel request is one typed op".into())
        }
        (_, Some(_)) => {
            return refused("not allowed by the agent: a kernel op outside a kernel request".into())
        }
        (Target::Probe, None) => {
            if request.method != "GET" || request.body.is_some() {
                return refused(format!(
                    "not allowed by the agent: a probe is one GET without a body, not {}",
                    request.method
                ));
            }
            return match probe(&request.path) {
                Ok(status) => Response {
                    id: request.id,
                    status: Some(status),
                    body: Some(String::new()),
                    error: None,
                    more: false,
                },
                Err(e) => refused(e),
            };
        }
        _ => {}
    }
    if let Err(why) = allowed(request.target, &request.method, &request.path) {
        return refused(why);
    }
    let answer = match request.target {
        Target::Agent => own(&request.path),
        _ => forward(request, endpoints),
    };
    match answer {
        Ok((status, body)) => Response {
            id: request.id,
            status: Some(status),
            body: Some(body),
            error: None,
            more: false,
        },
        Err(e) => refused(e),
    }
}

/// Podman's calls, as `METHOD path` with the API version prefix (`/v4.0.0/libpod`, `/v1.41`)
/// removed; `*` is one path segment, `**` one or more (image names hold slashes).
const PODMAN_ALLOWED: &[(&str, &str)] = &[
    ("GET", "/_ping"),
    ("HEAD", "/_ping"),
    ("GET", "/version"),
    ("GET", "/info"),
    ("GET", "/containers/json"),
    ("POST", "/containers/create"),
    ("GET", "/containers/*/json"),
    ("POST", "/containers/*/start"),
    ("POST", "/containers/*/stop"),
    ("POST", "/containers/*/rename"),
    ("DELETE", "/containers/*"),
    ("GET", "/containers/*/logs"),
    ("GET", "/images/**/json"),
    ("POST", "/images/create"),
    ("POST", "/images/pull"),
    ("GET", "/networks/json"),
    ("GET", "/networks/*/json"),
    ("GET", "/networks/*"),
    ("POST", "/networks/create"),
    ("POST", "/volumes/create"),
    ("GET", "/volumes/*/json"),
    ("GET", "/volumes/*"),
    ("DELETE", "/volumes/*"),
];

/// Caddy admin prefixes codeb's adapter writes under (every method); reads of the whole config.
const CADDY_WRITABLE: &[&str] = &[
    "/config/apps/http/servers/codeb",
    "/config/apps/pki/certificate_authorities/codeb",
    "/config/apps/tls/automation/policies",
    "/config/logging/logs/codeb-access",
    "/id/codeb-",
];

/// Whether the agent forwards this request; the refusal says what was refused.
pub fn allowed(target: Target, method: &str, path: &str) -> Result<(), String> {
    let refuse = || {
        Err(format!(
            "not allowed by the agent: {target:?} {method} {path}"
        ))
    };
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    // No traversal, no encoded slashes or dots, nothing a backend could read as another path.
    let clean = route.starts_with('/')
        && !route.contains("//")
        && route.split('/').all(|s| s != "." && s != "..")
        && route
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.:@+%".contains(&b))
        && !route.to_ascii_lowercase().contains("%2e")
        && !route.to_ascii_lowercase().contains("%2f");
    if !clean {
        return refuse();
    }
    match target {
        Target::Podman => {
            let route = strip_api_version(route);
            if route == "/events" {
                // The one streaming answer: codeb's own filters, and no other parameter.
                return if method == "GET" && stream::fixed_query(query) {
                    Ok(())
                } else {
                    refuse()
                };
            }
            let ok = PODMAN_ALLOWED
                .iter()
                .any(|(m, pattern)| *m == method && matches(pattern, route));
            if ok {
                Ok(())
            } else {
                refuse()
            }
        }
        Target::Kernel | Target::Probe => refuse(),
        Target::Agent => {
            let own = method == "GET" && AGENT_PATHS.contains(&route);
            if own || (method == "DELETE" && path == route && stream::cancelled_id(route).is_some())
            {
                Ok(())
            } else {
                refuse()
            }
        }
        Target::Caddy => {
            let write = ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method)
                && CADDY_WRITABLE.iter().any(|p| route.starts_with(p));
            let read = method == "GET" && (route == "/config/" || route.starts_with("/config/"));
            if write || read {
                Ok(())
            } else {
                refuse()
            }
        }
    }
}

/// `/v4.0.0/libpod/x` and `/v1.41/x` → `/x`.
fn strip_api_version(route: &str) -> &str {
    let mut rest = route;
    if let Some(after) = route.strip_prefix("/v") {
        let end = after.find('/').unwrap_or(after.len());
        if end > 0
            && after[..end]
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.')
        {
            rest = &after[end..];
        }
    }
    rest.strip_prefix("/libpod").unwrap_or(rest)
}

fn matches(pattern: &str, route: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let r: Vec<&str> = route.split('/').collect();
    match p.iter().position(|s| *s == "**") {
        None => {
            p.len() == r.len()
                && p.iter()
                    .zip(&r)
                    .all(|(p, r)| *p == *r || (*p == "*" && !r.is_empty()))
        }
        Some(i) => {
            let tail = p.len() - i - 1;
            r.len() > i + tail
                && p[..i].iter().zip(&r[..i]).all(|(p, r)| p == r)
                && p[i + 1..]
                    .iter()
                    .zip(&r[r.len() - tail..])
                    .all(|(p, r)| p == r)
                && r[i..r.len() - tail].iter().all(|s| !s.is_empty())
        }
    }
}

/// The agent's own answers ([`Target::Agent`]): a pong, or the first line of `caddy version`
/// (the `caddy` on the agent's PATH, a fixed command line with nothing of the request in it,
/// bounded by [`CADDY_VERSION_TIMEOUT`]).
fn own(path: &str) -> Result<(u16, String), String> {
    match path {
        "/ping" => Ok((200, "pong".into())),
        "/caddy-version" => caddy_version().map(|v| (200, v)),
        other => Err(format!("not an agent request: {other}")),
    }
}

/// The first line of `caddy version` on this machine (`v2.6.2 h1:…` → `v2.6.2`).
pub fn caddy_version() -> Result<String, String> {
    let mut child = std::process::Command::new("caddy")
        .arg("version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("running `caddy version`: {e}"))?;
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < CADDY_VERSION_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`caddy version` did not answer within {CADDY_VERSION_TIMEOUT:?}"
                ));
            }
        }
    }
    let mut out = String::new();
    if let Some(o) = child.stdout.take() {
        let _ = o.take(4096).read_to_string(&mut out);
    }
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| "`caddy version` said nothing".to_string())
}

/// One HTTP/1.0 exchange: a 1.0 request makes the Go servers (Podman, Caddy) answer with the body
/// up to the close, never chunked, so reading to EOF is the whole answer.
fn forward(request: &Request, endpoints: &Endpoints) -> Result<(u16, String), String> {
    let (mut stream, host): (Box<dyn ReadWrite>, &str) = match request.target {
        Target::Kernel | Target::Probe => return Err("not an HTTP backend".into()),
        Target::Podman => {
            let s = UnixStream::connect(&endpoints.podman_socket)
                .map_err(|e| format!("Podman at {}: {e}", endpoints.podman_socket.display()))?;
            s.set_read_timeout(Some(BACKEND_TIMEOUT)).ok();
            (Box::new(s), "d")
        }
        Target::Caddy => {
            let s = std::net::TcpStream::connect(&endpoints.caddy_admin)
                .map_err(|e| format!("Caddy admin at {}: {e}", endpoints.caddy_admin))?;
            s.set_read_timeout(Some(BACKEND_TIMEOUT)).ok();
            // Caddy's admin API checks the Host header against its own address.
            (Box::new(s), endpoints.caddy_admin.as_str())
        }
        Target::Agent => return own(&request.path),
    };
    let body = request.body.as_deref().unwrap_or("");
    let mut head = format!(
        "{} {} HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n",
        request.method,
        request.path,
        body.len()
    );
    if request.body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str("\r\n");
    let io = |e: std::io::Error| format!("{:?} backend: {e}", request.target);
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(body.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take(MAX_BODY as u64 + 64 * 1024)
        .read_to_end(&mut answer)
        .map_err(io)?;
    parse_answer(&answer)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn parse_answer(answer: &[u8]) -> Result<(u16, String), String> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the backend's answer has no end of headers")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in the backend's answer: {head:.80}"))?;
    let body = &answer[split + 4..];
    if body.len() > MAX_BODY {
        return Err(format!("the backend's answer is over {MAX_BODY} bytes"));
    }
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

/// One line without its newline; `None` at the end of input. A line over [`MAX_LINE`] is an error
/// as soon as that many bytes arrived without a newline (never buffered further).
pub fn read_line(input: &mut impl BufRead) -> Result<Option<Vec<u8>>, Error> {
    let mut line = Vec::new();
    let n = input.take(MAX_LINE as u64).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(Some(line));
    }
    if line.len() > MAX_LINE - 1 {
        return Err(Error::LineTooLong);
    }
    Ok(Some(line)) // the last line, without a newline
}

fn write_line(output: &mut impl Write, value: &impl Serialize) -> Result<(), Error> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    output.write_all(&line)?;
    output.flush()?;
    Ok(())
}

/// `codeb agent --stdio`: serves stdin/stdout until the client closes; exit 0, or 2 for a refused
/// hello or an over-long line (the client's mistake), 1 for a broken session.
pub fn run_stdio(endpoints: &Endpoints) -> u8 {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    // `Stdout`, not its lock: answers are written from the request threads.
    let mut output = std::io::stdout();
    match serve(&mut input, &mut output, endpoints) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("codeb agent: {e}");
            match e {
                Error::Io(_) => 1,
                _ => 2,
            }
        }
    }
}

#[cfg(test)]
mod tests;
