//! The agent's health probe: one HTTP/1.1 GET from the host to a slot on it, with the rules of
//! codeb's own prober (`reconcile::probe`): no proxy (a plain socket), no redirect followed (the
//! status is the answer, a 3xx the slot's own), connected within 1 s and answered within 2 s in
//! all, the body never read. What it may dial is bounded too: the host's loopback, its own
//! addresses and its bridges' subnets ([`crate::backend::netfilter::probe_reaches`]), never an
//! address beyond the host, and only by IP (no name is resolved).

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

/// The longest probe path (the health path and query of a manifest are far shorter).
const MAX_PATH: usize = 2048;
/// How much of the answer is read: its status line is in the first packet.
const MAX_HEAD: usize = 4096;
const CONNECT: Duration = Duration::from_secs(1);
const TOTAL: Duration = Duration::from_secs(2);

/// The address and path of a probe's `http://IP:PORT/path` URL.
///
/// # Errors
/// Another scheme, a name, user info, a missing port or a path that is not plain printable text.
pub fn probe_target(url: &str) -> Result<(SocketAddrV4, String), String> {
    let refuse = |why: &str| Err(format!("not allowed by the agent: probe {url:.200}: {why}"));
    let Some(rest) = url.strip_prefix("http://") else {
        return refuse("not an http:// URL");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Ok(addr) = authority.parse::<SocketAddrV4>() else {
        return refuse("expected IPv4:PORT (no name, no user info)");
    };
    if addr.port() == 0 {
        return refuse("port 0");
    }
    if path.len() > MAX_PATH || !path.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return refuse("the path must be printable ASCII without spaces");
    }
    Ok((addr, path.to_string()))
}

/// Probes `url` from this host: the slot's HTTP status.
///
/// # Errors
/// A refused URL or destination ("not allowed by the agent: …"), `connection refused`, `timed
/// out`, or what else went wrong, as codeb's prober words it.
pub fn probe(url: &str) -> Result<u16, String> {
    let (addr, path) = probe_target(url)?;
    if !crate::backend::netfilter::probe_reaches(*addr.ip()) {
        return Err(format!(
            "not allowed by the agent: probe {url:.200}: {} is not on this host (its loopback, its addresses, its bridges)",
            addr.ip()
        ));
    }
    exchange(addr, &path)
}

fn exchange(addr: SocketAddrV4, path: &str) -> Result<u16, String> {
    let started = Instant::now();
    let mut s = match TcpStream::connect_timeout(&SocketAddr::V4(addr), CONNECT) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err("timed out".into()),
        Err(_) => return Err("connection refused".into()),
    };
    let rest = || {
        TOTAL
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1))
    };
    let _ = s.set_nodelay(true);
    s.set_write_timeout(Some(rest()))
        .map_err(|e| e.to_string())?;
    // One write of the whole request (`write!` would send each piece of the format on its own).
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: codeb-probe\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
            return status(&head[..end]);
        }
        if head.len() >= MAX_HEAD {
            return Err("the answer has no status line".into());
        }
        if started.elapsed() >= TOTAL {
            return Err("timed out".into());
        }
        s.set_read_timeout(Some(rest()))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => return Err("the connection closed before an answer".into()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("timed out".into())
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// `HTTP/1.1 200 OK` → 200.
fn status(line: &[u8]) -> Result<u16, String> {
    let line = String::from_utf8_lossy(line);
    line.strip_prefix("HTTP/1.")
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:.80}"))
}
