//! The agent's one streaming answer: Podman's container events, for the daemon's event follower
//! (src/daemon/events.rs). The request is `GET /events` (any API version prefix) whose query is
//! exactly `filters=` codeb's [`EVENT_FILTERS`]: nothing else of Podman's event API (no `since`,
//! no other type) is reachable. It is answered with a head line (Podman's status, `more`), one
//! line per event (its JSON, at most [`MAX_EVENT_LINE`] bytes), and an end line (`more` false),
//! all with the request's id. It ends when Podman closes it, when the client sends
//! `DELETE /streams/ID`, or when the session ends; at most [`MAX_STREAMS`] run at once.
//!
//! Must not: read Podman's stream without bound, or outlive its session by more than
//! [`STREAM_POLL`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::{
    allowed, Endpoints, Request, Response, Target, MAX_EVENT_LINE, MAX_STREAMS, STREAM_POLL,
};
use crate::backend::podman::EVENT_FILTERS;

/// The streams of one session.
#[derive(Default)]
pub(super) struct Streams {
    /// Ids of the streams running, and whether each was asked to end.
    open: Mutex<BTreeMap<u64, bool>>,
    /// The session's input ended: every stream stops.
    closing: AtomicBool,
}

impl Streams {
    pub(super) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    fn stopped(&self, id: u64) -> bool {
        self.closing.load(Ordering::SeqCst)
            || self
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .copied()
                .unwrap_or(true)
    }
}

/// Whether a request asks for the event stream (allowed or not: [`events`] answers a refusal).
pub(super) fn is_stream(request: &Request) -> bool {
    let route = request.path.split('?').next().unwrap_or("");
    request.target == Target::Podman && super::strip_api_version(route) == "/events"
}

/// Whether a request is a stream's end asked by the client (`DELETE /streams/ID`).
pub(super) fn is_cancel(request: &Request) -> bool {
    request.target == Target::Agent && request.method == "DELETE"
}

/// `/streams/ID` → `ID`.
pub(super) fn cancelled_id(route: &str) -> Option<u64> {
    let n = route.strip_prefix("/streams/")?;
    if n.is_empty() || n.len() > 20 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Whether a query is exactly `filters=` codeb's [`EVENT_FILTERS`] (URL-encoded JSON, its lists
/// in any order, as bollard sends them).
pub(super) fn fixed_query(query: &str) -> bool {
    let Some(json) = query.strip_prefix("filters=").and_then(percent_decode) else {
        return false;
    };
    let Ok(theirs) = serde_json::from_str::<BTreeMap<String, BTreeSet<String>>>(&json) else {
        return false;
    };
    let ours: BTreeMap<String, BTreeSet<String>> = EVENT_FILTERS
        .iter()
        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect();
    theirs == ours
}

/// `%XX` and `+` decoded; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `DELETE /streams/ID`: asks stream `ID` to end (it sends its end line within [`STREAM_POLL`]).
pub(super) fn cancel(request: &Request, streams: &Streams) -> Response {
    let mut answer = Response {
        id: request.id,
        status: None,
        body: None,
        error: None,
        more: false,
    };
    if let Err(why) = allowed(request.target, &request.method, &request.path) {
        answer.error = Some(why);
        return answer;
    }
    let id = cancelled_id(&request.path).expect("allowed");
    let mut open = streams.open.lock().unwrap_or_else(|e| e.into_inner());
    match open.get_mut(&id) {
        Some(stop) => {
            *stop = true;
            answer.status = Some(200);
        }
        // Ended already (its end line crossed the request): nothing to do.
        None => answer.status = Some(404),
    }
    answer.body = Some(String::new());
    answer
}

/// Serves one event stream request to its end, writing each of its lines with `emit`.
pub(super) fn events(
    request: &Request,
    endpoints: &Endpoints,
    streams: &Streams,
    emit: &dyn Fn(&Response),
) {
    let line = |status: Option<u16>, body: Option<String>, error: Option<String>, more| Response {
        id: request.id,
        status,
        body,
        error,
        more,
    };
    if let Err(why) = allowed(request.target, &request.method, &request.path) {
        return emit(&line(None, None, Some(why), false));
    }
    if request.body.is_some() {
        return emit(&line(
            None,
            None,
            Some("not allowed by the agent: an event stream request has no body".into()),
            false,
        ));
    }
    {
        let mut open = streams.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.len() >= MAX_STREAMS || open.contains_key(&request.id) {
            return emit(&line(
                None,
                None,
                Some(format!(
                    "not allowed by the agent: at most {MAX_STREAMS} event streams per session"
                )),
                false,
            ));
        }
        open.insert(request.id, false);
    }
    let end = follow(request, endpoints, streams, emit);
    streams
        .open
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&request.id);
    emit(&match end {
        Ok(Some((status, body))) => line(Some(status), Some(body), None, false),
        Ok(None) => line(Some(200), Some(String::new()), None, false),
        Err(e) => line(None, None, Some(e), false),
    });
}

/// Podman's event stream, line by line: `Ok(None)` when it ended (Podman closed it, the client
/// cancelled, the session ended); `Ok(Some(answer))` when Podman answered something other than
/// 200 (the whole answer, bounded).
fn follow(
    request: &Request,
    endpoints: &Endpoints,
    streams: &Streams,
    emit: &dyn Fn(&Response),
) -> Result<Option<(u16, String)>, String> {
    let podman =
        |e: std::io::Error| format!("Podman at {}: {e}", endpoints.podman_socket.display());
    let mut stream = UnixStream::connect(&endpoints.podman_socket).map_err(podman)?;
    stream.set_read_timeout(Some(STREAM_POLL)).map_err(podman)?;
    // HTTP/1.0: Podman streams the body up to the close, never chunked.
    let head = format!("GET {} HTTP/1.0\r\nHost: d\r\n\r\n", request.path);
    stream.write_all(head.as_bytes()).map_err(podman)?;
    let mut reader = BufReader::new(stream);
    let stop = || streams.stopped(request.id);
    let mut status = None;
    let mut headers = 0;
    loop {
        let Some(line) = read_bounded(&mut reader, &stop)? else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches('\r');
        if status.is_none() {
            status = Some(
                line.split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse::<u16>().ok())
                    .ok_or_else(|| format!("no status in Podman's answer: {line:.80}"))?,
            );
        } else if line.is_empty() {
            break;
        } else {
            headers += 1;
            if headers > 100 {
                return Err("Podman's answer has over 100 headers".into());
            }
        }
    }
    let status = status.expect("read before the headers' end");
    if status != 200 {
        let mut body = Vec::new();
        let _ = reader.take(MAX_EVENT_LINE as u64).read_to_end(&mut body);
        return Ok(Some((status, String::from_utf8_lossy(&body).into_owned())));
    }
    emit(&Response {
        id: request.id,
        status: Some(200),
        body: None,
        error: None,
        more: true,
    });
    while let Some(line) = read_bounded(&mut reader, &stop)? {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        emit(&Response {
            id: request.id,
            status: None,
            body: Some(String::from_utf8_lossy(&line).into_owned()),
            error: None,
            more: true,
        });
    }
    Ok(None)
}

/// One line of Podman's answer without its newline, at most [`MAX_EVENT_LINE`] bytes; `None` at
/// its end or once `stop` says so (looked at every [`STREAM_POLL`] while Podman is quiet).
fn read_bounded(
    reader: &mut impl BufRead,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Vec<u8>>, String> {
    let mut line = Vec::new();
    loop {
        if stop() {
            return Ok(None);
        }
        let room = (MAX_EVENT_LINE + 1).saturating_sub(line.len()) as u64;
        // Bytes read before a timeout stay in `line`: the next round goes on from them.
        match reader.by_ref().take(room).read_until(b'\n', &mut line) {
            Ok(0) => return Ok((!line.is_empty()).then_some(line)),
            Ok(_) if line.last() == Some(&b'\n') => {
                line.pop();
                return Ok(Some(line));
            }
            Ok(_) if line.len() > MAX_EVENT_LINE => {
                return Err(format!("an event line over {MAX_EVENT_LINE} bytes"))
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("reading Podman's events: {e}")),
        }
    }
}
