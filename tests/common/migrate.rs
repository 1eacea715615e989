//! A project moved between two hosts of `deploy/hosts.sh` (issue #18): host 1 is the source A,
//! host 2 the target B, both remote Hosts reached over ssh, with a managed Zone in the stack's
//! PowerDNS. Shared by `tests/e2e_migrate.rs` and `tests/e2e_migrate_crash.rs`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::hosts::Host;
use super::load::read_response;
use super::{managed_zone, text, Pdns, Sandbox};

/// codeb's Caddy server port on each host's address (not 80: the harness's own server is there).
pub const PORT: u16 = 8088;
/// The Zone's TTL, and the one a migration lowers it to.
pub const ZONE_TTL: u32 = 300;
pub const MIGRATION_TTL: u32 = 60;

/// The two hosts and the zone of one test.
pub struct Pair {
    pub a: Host,
    pub b: Host,
    pub sb: Sandbox,
    pub pdns: Pdns,
    pub zone: String,
}

impl Pair {
    /// Hosts 1 (`a`) and 2 (`b`), a sandbox whose configuration allows both ssh targets, and an
    /// empty zone `zone` in the stack's PowerDNS.
    pub fn new(zone: &str) -> Pair {
        let (a, b) = (Host::get(1), Host::get(2));
        let sb = super::hosts::ssh_sandbox(&[&a, &b]);
        let pdns = Pdns::get();
        pdns.delete_zone(zone);
        pdns.create_zone(zone, serde_json::json!([]));
        Pair {
            a,
            b,
            sb,
            pdns,
            zone: zone.to_string(),
        }
    }

    pub fn hostname(&self, project: &str) -> String {
        format!("{project}.{}", self.zone)
    }

    /// Writes the manifests: both Hosts, the Zone, and `project` on host `on` ("a" or "b").
    pub fn write(&self, project: &str, on: &str, grace: &str) -> PathBuf {
        let text = format!(
            "{}{}{}---
apiVersion: codeb.kr/v1
kind: Project
metadata:
  name: {project}
spec:
  host: {on}
  zone: {zone}
  environments:
    production:
      image: localhost/codeb-test-app:v1
      port: 8080
      healthCheck:
        path: /health
        timeout: 15s
      promotion: auto
      gracePeriod: 1h
      migrationGrace: {grace}
",
            host_doc("a", &self.a),
            host_doc("b", &self.b),
            managed_zone(&self.zone, &self.pdns.api, "PDNS_API_KEY"),
            zone = self.zone,
        );
        self.sb.save_text(&text)
    }

    /// Writes the manifests with `names[i]` on host `on(i)` ("a" or "b"), `migrationGrace` 1h.
    pub fn write_many(&self, names: &[String], on: &dyn Fn(usize) -> &'static str) -> PathBuf {
        let mut text = String::new();
        for (i, name) in names.iter().enumerate() {
            let one =
                std::fs::read_to_string(self.write(name, on(i), "1h").join("all.yaml")).unwrap();
            if i == 0 {
                text.push_str(&one);
            } else {
                // Only the project document of the others.
                let at = one
                    .rfind("---\napiVersion: codeb.kr/v1\nkind: Project")
                    .unwrap();
                text.push_str(&one[at..]);
            }
        }
        self.sb.save_text(&text)
    }

    pub fn apply(&self, dir: &std::path::Path, extra: &[(&str, &str)]) -> Output {
        self.sb.codeb_env(
            &["apply", "-f", dir.to_str().unwrap(), "--progress", "none"],
            extra,
        )
    }

    /// Applies until an apply has nothing to do (at most `rounds` applies), each exiting 0 (or
    /// failing only because the shared PowerDNS was busy: see [`pdns_busy`]). Returns every
    /// apply's output.
    pub fn converge(&self, dir: &std::path::Path, rounds: usize) -> Vec<String> {
        let mut outs = Vec::new();
        for _ in 0..rounds {
            let out = self.apply(dir, &[]);
            let all = text(&out);
            if out.status.code() != Some(0) && pdns_busy(&all) {
                eprintln!("PowerDNS was busy, applying again: {all}");
                outs.push(all);
                continue;
            }
            assert_eq!(out.status.code(), Some(0), "apply: {all}");
            let done = String::from_utf8_lossy(&out.stdout).contains("nothing to do");
            outs.push(all);
            if done {
                return outs;
            }
        }
        panic!(
            "not converged after {rounds} applies:\n{}",
            outs.join("\n----\n")
        );
    }

    /// `dig @stack-pdns NAME A`: (addresses, TTL of the answer).
    pub fn dig(&self, name: &str) -> (Vec<String>, Option<u32>) {
        let (host, port) = self.pdns.dns.rsplit_once(':').unwrap();
        let out = std::process::Command::new("dig")
            .args([
                &format!("@{host}"),
                "-p",
                port,
                "+noall",
                "+answer",
                "+time=2",
                "+tries=1",
                name,
                "A",
            ])
            .output()
            .expect("dig runs");
        assert!(out.status.success(), "{}", text(&out));
        let mut addrs = Vec::new();
        let mut ttl = None;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 5 && f[3] == "A" {
                ttl = f[1].parse().ok();
                addrs.push(f[4].to_string());
            }
        }
        addrs.sort();
        (addrs, ttl)
    }

    /// Removes `project` from both hosts and the zone, however the test ended.
    pub fn cleanup(&self, project: &str) {
        let _ = self
            .sb
            .codeb(&["delete", "project", project, "--progress", "none"]);
        for h in [&self.a, &self.b] {
            let _ = h.ssh(&remove_script(h, project));
        }
        self.pdns.delete_zone(&self.zone);
    }
}

/// The stack's PowerDNS (SQLite) is shared with every other suite on the machine: under their
/// writes it answers a PATCH `500` ("database is locked", seen in its log). codeb reports that
/// step as failed and the next apply repairs it; the tests let exactly this failure through.
pub fn pdns_busy(output: &str) -> bool {
    output.contains("PowerDNS at") && output.contains("answered 500")
}

/// The Host document of `h`, named `name`, reached over ssh, its Caddy on `address:PORT`.
pub fn host_doc(name: &str, h: &Host) -> String {
    format!("{}---\n", h.doc(name, &h.known_hosts, "", PORT))
}

/// A shell script for the host that removes `project`'s containers and codeb's routes naming it.
fn remove_script(h: &Host, project: &str) -> String {
    format!(
        r#"S={sock}; A={admin}
for id in $(curl -s --unix-socket $S "http://d/v4.0.0/libpod/containers/json?all=true&filters=%7B%22label%22%3A%5B%22codeb.project%3D{p}%22%5D%7D" | grep -o '"Id":"[0-9a-f]*"' | cut -d'"' -f4); do
  curl -s -X DELETE --unix-socket $S "http://d/v4.0.0/libpod/containers/$id?force=true&timeout=0" >/dev/null
done
for r in $(curl -s $A/config/apps/http/servers/codeb/routes | grep -o '"@id":"codeb-{p}_[^"]*"' | cut -d'"' -f4); do
  curl -s -X DELETE $A/id/$r >/dev/null
done
true"#,
        sock = h.podman_sock,
        admin = h.caddy_admin,
        p = project
    )
}

/// `(name, state)` of `project`'s containers on `h`, sorted.
pub fn containers_on(h: &Host, project: &str) -> Vec<(String, String)> {
    let out = h.ssh(&format!(
        "curl -sf --unix-socket {} 'http://d/v4.0.0/libpod/containers/json?all=true'",
        h.podman_sock
    ));
    assert!(out.status.success(), "list on host {}: {}", h.n, text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut found: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["Labels"]["codeb.project"] == project)
        .map(|c| {
            (
                c["Names"][0].as_str().unwrap_or_default().to_string(),
                c["State"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    found.sort();
    found
}

/// Whether `routes` are a host serving `project` itself, in kernel mode: the hostname route and one
/// preview route, each dialing one address; the hostname route the host's service address (not
/// the other host's Caddy, `forward`), the preview route its slot's port on `h`'s address.
pub fn serve_themselves(
    h: &Host,
    project: &str,
    routes: &[(String, Vec<String>)],
    forward: &str,
) -> bool {
    let hostname_route = format!("codeb-{project}_production");
    let one = |id: &str| {
        routes
            .iter()
            .find(|r| r.0 == id)
            .filter(|r| r.1.len() == 1)
            .map(|r| r.1[0].clone())
    };
    let preview = ["blue", "green"]
        .into_iter()
        .find_map(|s| one(&format!("{hostname_route}_{s}")));
    routes.len() == 2
        && one(&hostname_route).is_some_and(|d| d != forward)
        && preview.is_some_and(|d| d.starts_with(&format!("{}:", h.address)))
}

/// codeb's routes of `project` on `h`'s Caddy: `(id, upstream dials)`.
pub fn routes_on(h: &Host, project: &str) -> Vec<(String, Vec<String>)> {
    let out = h.ssh(&format!(
        "curl -s {}/config/apps/http/servers/codeb/routes",
        h.caddy_admin
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    let routes: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let mut found = Vec::new();
    for r in routes.as_array().into_iter().flatten() {
        let id = r["@id"].as_str().unwrap_or_default();
        if !id.starts_with(&format!("codeb-{project}_")) {
            continue;
        }
        let mut dials = Vec::new();
        collect_dials(r, &mut dials);
        found.push((id.to_string(), dials));
    }
    found.sort();
    found
}

fn collect_dials(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "dial" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    collect_dials(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_dials(v, out)),
        _ => {}
    }
}

/// One request as a client saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub at: Duration,
    /// 0: a socket error.
    pub status: u16,
    pub body: String,
    /// The request was sent again on a new connection because the kept one was closed by the
    /// server before any byte of the answer (what browsers, curl and Go's client do for a GET).
    pub retried: bool,
}

/// A client sending `GET /` with one Host header to one address, over a kept connection, as
/// HTTP/1.1 clients do: a request on a kept connection that the server closed before answering
/// anything is sent once more on a new connection (RFC 9110 §9.2.2: a GET may be retried; Caddy
/// closes idle kept connections when its config is reloaded, which a switch through its admin API
/// does). Anything else is a failure: a refused or reset fresh connection, a timeout, a status
/// other than 200, an answer cut short.
pub struct Hammer {
    stop: Arc<AtomicBool>,
    started: Instant,
    workers: Vec<JoinHandle<Vec<Hit>>>,
}

impl Hammer {
    pub fn start(addr: &str, host: &str, workers: usize) -> Hammer {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let (addr, host, stop) = (addr.to_string(), host.to_string(), stop.clone());
                std::thread::spawn(move || hammer(&addr, &host, started, &stop))
            })
            .collect();
        Hammer {
            stop,
            started,
            workers,
        }
    }

    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn stop(self) -> Vec<Hit> {
        self.stop.store(true, Ordering::Relaxed);
        let mut hits: Vec<Hit> = self
            .workers
            .into_iter()
            .flat_map(|w| w.join().expect("client thread"))
            .collect();
        hits.sort_by_key(|h| h.at);
        hits
    }
}

type Conn = BufReader<TcpStream>;

fn connect(addr: &str) -> std::io::Result<Conn> {
    let s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    Ok(BufReader::new(s))
}

/// Sends one GET on `conn`: `Err(true)` when the connection was closed before any byte of the
/// answer (the request may be sent again), `Err(false)` for any other failure.
fn send(conn: &mut Conn, host: &str) -> Result<(u16, String, bool), (bool, std::io::Error)> {
    let written = write!(
        conn.get_mut(),
        "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: codeb-migrate-test\r\n\r\n"
    );
    if let Err(e) = written {
        return Err((true, e));
    }
    match conn.fill_buf() {
        Ok([]) => {
            return Err((
                true,
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before answering"),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Err((true, e)),
        Err(e) => return Err((false, e)),
        Ok(_) => {}
    }
    read_response(conn).map_err(|e| (false, e))
}

fn hammer(addr: &str, host: &str, started: Instant, stop: &AtomicBool) -> Vec<Hit> {
    let mut hits = Vec::new();
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(300) {
        let at = started.elapsed();
        let mut retried = false;
        let result = loop {
            let kept = conn.is_some();
            let c = match conn.take() {
                Some(c) => c,
                None => match connect(addr) {
                    Ok(c) => c,
                    Err(e) => break Err(e),
                },
            };
            let mut c = c;
            match send(&mut c, host) {
                Ok((status, body, close)) => {
                    if !close {
                        conn = Some(c);
                    }
                    break Ok((status, body));
                }
                Err((true, _)) if kept && !retried => retried = true,
                Err((_, e)) => break Err(e),
            }
        };
        let (status, body) = match result {
            Ok(r) => r,
            Err(e) => (0, e.to_string()),
        };
        let failed = status != 200;
        hits.push(Hit {
            at,
            status,
            body,
            retried,
        });
        if failed {
            // A refused connection (nothing served yet) is not retried hot.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    hits
}

/// The failures among `hits` from `from` on, and a summary line.
pub fn failures(hits: &[Hit], from: Duration) -> (Vec<&Hit>, String) {
    let after: Vec<&Hit> = hits.iter().filter(|h| h.at >= from).collect();
    let failed: Vec<&Hit> = after.iter().copied().filter(|h| h.status != 200).collect();
    let mut s = format!(
        "{} requests from {:?}, {} failed, {} sent again after the server closed a kept connection",
        after.len(),
        from,
        failed.len(),
        after.iter().filter(|h| h.retried).count()
    );
    for f in failed.iter().take(5) {
        s.push_str(&format!("\n  at {:?}: {} {:?}", f.at, f.status, f.body));
    }
    (failed, s)
}

/// Distinct DNS answers in order: when first seen, the addresses, the TTL.
pub type Answers = Vec<(Duration, Vec<String>, Option<u32>)>;

/// A thread digging `name` every 50 ms: the distinct (addresses, TTL) answers in order, each with
/// when it was first seen.
pub struct DigWatch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Answers>,
}

impl DigWatch {
    pub fn start(pair: &Pair, name: &str, started: Instant) -> DigWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (host, port) = pair.pdns.dns.rsplit_once(':').unwrap();
        let (host, port, name, flag) = (
            host.to_string(),
            port.to_string(),
            name.to_string(),
            stop.clone(),
        );
        let handle = std::thread::spawn(move || {
            let mut seen: Answers = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let out = std::process::Command::new("dig")
                    .args([
                        &format!("@{host}"),
                        "-p",
                        &port,
                        "+noall",
                        "+answer",
                        "+time=2",
                        "+tries=1",
                        &name,
                        "A",
                    ])
                    .output();
                if let Ok(out) = out {
                    let mut addrs = Vec::new();
                    let mut ttl = None;
                    for line in String::from_utf8_lossy(&out.stdout).lines() {
                        let f: Vec<&str> = line.split_whitespace().collect();
                        if f.len() == 5 && f[3] == "A" {
                            ttl = f[1].parse().ok();
                            addrs.push(f[4].to_string());
                        }
                    }
                    addrs.sort();
                    if seen.last().map(|(_, a, t)| (a, t)) != Some((&addrs, &ttl)) {
                        seen.push((started.elapsed(), addrs, ttl));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        });
        DigWatch { stop, handle }
    }

    pub fn stop(self) -> Answers {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("dig thread")
    }
}
