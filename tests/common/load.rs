//! A strict HTTP/1.1 keep-alive load generator for the switch tests.
//!
//! Each worker keeps one connection open and sends `GET` after `GET` on it, as browsers and
//! HTTP/1.1 clients do. Unlike `hey`, it never retries: a connection the server closes or resets
//! between or during requests is counted as a socket error, which is exactly what a Caddy reload
//! does to idle keep-alive connections. Every request is recorded (start, latency, status, body) so
//! that a test can look at the requests around each switch.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request as the client saw it.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the load started.
    pub at: Duration,
    pub latency: Duration,
    /// 0 for a socket error.
    pub status: u16,
    /// The body, or the socket error.
    pub body: String,
    /// The request went out on a connection that had already served one.
    pub reused: bool,
}

/// A running load; [`Load::stop`] ends it and returns every sample.
pub struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Vec<Sample>>>,
}

/// Every worker stops at the latest this long after the start, whatever the test does.
const MAX_RUN: Duration = Duration::from_secs(300);

impl Load {
    /// `workers` clients sending `GET path` with `Host: host` to `addr`.
    pub fn start(addr: &str, host: &str, path: &str, workers: usize) -> Load {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let (addr, host, path, stop) = (
                    addr.to_string(),
                    host.to_string(),
                    path.to_string(),
                    stop.clone(),
                );
                std::thread::spawn(move || worker(&addr, &host, &path, started, &stop))
            })
            .collect();
        Load {
            started,
            stop,
            workers,
        }
    }

    /// Time since the load started, on the samples' clock.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples: Vec<Sample> = self
            .workers
            .into_iter()
            .flat_map(|w| w.join().expect("load worker"))
            .collect();
        samples.sort_by_key(|s| s.at);
        Report { samples }
    }
}

fn worker(addr: &str, host: &str, path: &str, started: Instant, stop: &AtomicBool) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut conn: Option<(BufReader<TcpStream>, bool)> = None;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_RUN {
        let at = started.elapsed();
        let t = Instant::now();
        let reused = conn.as_ref().is_some_and(|(_, used)| *used);
        let result = (|| -> std::io::Result<(u16, String, bool)> {
            if conn.is_none() {
                let s = TcpStream::connect(addr)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.set_nodelay(true)?;
                conn = Some((BufReader::new(s), false));
            }
            let (reader, used) = conn.as_mut().expect("connected");
            *used = true;
            write!(
                reader.get_mut(),
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: codeb-load\r\n\r\n"
            )?;
            read_response(reader)
        })();
        let (status, body) = match result {
            Ok((status, body, close)) => {
                if close {
                    conn = None;
                }
                (status, body)
            }
            Err(e) => {
                conn = None;
                (0, e.to_string())
            }
        };
        out.push(Sample {
            at,
            latency: t.elapsed(),
            status,
            body,
            reused,
        });
    }
    out
}

/// Reads one response: (status, body, the server will close the connection).
pub fn read_response(r: &mut impl BufRead) -> std::io::Result<(u16, String, bool)> {
    let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed");
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(eof());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(eof());
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').unwrap_or((h, ""));
        let (name, value) = (name.to_ascii_lowercase(), value.trim().to_ascii_lowercase());
        match name.as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => close = value == "close",
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
        close = true;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned(), close))
}

/// What a load saw.
pub struct Report {
    pub samples: Vec<Sample>,
}

impl Report {
    pub fn total(&self) -> usize {
        self.samples.len()
    }

    pub fn socket_errors(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.status == 0).collect()
    }

    pub fn non_2xx(&self) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.status != 0 && !(200..300).contains(&s.status))
            .collect()
    }

    pub fn count_body(&self, body: &str) -> usize {
        self.samples.iter().filter(|s| s.body == body).count()
    }

    /// The `p`-th percentile latency of the samples that started within `windows`.
    pub fn percentile(&self, p: f64, windows: &[(Duration, Duration)]) -> Option<Duration> {
        let mut l: Vec<Duration> = self
            .samples
            .iter()
            .filter(|s| windows.iter().any(|(a, b)| s.at >= *a && s.at <= *b))
            .map(|s| s.latency)
            .collect();
        if l.is_empty() {
            return None;
        }
        l.sort();
        let i = ((l.len() as f64 - 1.0) * p / 100.0).round() as usize;
        Some(l[i])
    }

    /// A summary line, and the first few failures.
    pub fn describe(&self) -> String {
        let errors = self.socket_errors();
        let bad = self.non_2xx();
        let mut s = format!(
            "{} requests, {} socket errors, {} non-2xx, {} on reused connections",
            self.total(),
            errors.len(),
            bad.len(),
            self.samples.iter().filter(|s| s.reused).count()
        );
        for f in errors.iter().chain(bad.iter()).take(5) {
            s.push_str(&format!("\n  at {:?}: {} {:?}", f.at, f.status, f.body));
        }
        s
    }
}

/// One request on its own connection (`Connection: close`), for checks between switches.
pub fn fresh_get(addr: &str, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let (status, body, _) = read_response(&mut BufReader::new(s))?;
    Ok((status, body))
}

/// A request started on a thread now; its outcome when joined.
pub struct InFlight(JoinHandle<std::io::Result<(u16, String)>>);

impl InFlight {
    pub fn start(addr: &str, host: &str, path: &str) -> InFlight {
        let (addr, host, path) = (addr.to_string(), host.to_string(), path.to_string());
        InFlight(std::thread::spawn(move || fresh_get(&addr, &host, &path)))
    }

    pub fn join(self) -> std::io::Result<(u16, String)> {
        self.0.join().expect("in-flight request thread")
    }
}

/// Kept for tests that share one summary format.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
