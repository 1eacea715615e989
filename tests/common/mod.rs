//! Shared helpers for the end-to-end tests against the real stack started by `deploy/stack.sh`.
//!
//! The tests share one Podman and one Caddy, so each takes [`lock`] and uses project names of its
//! own. A missing stack is a loud failure, never a skip.
#![allow(dead_code)]

pub mod hosts;
pub mod kernel;
pub mod load;
pub mod migrate;

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static LOCK: Mutex<()> = Mutex::new(());

/// Serializes the tests of one binary: they share ports, Caddy's server and Podman.
pub fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the stack with `deploy/stack.sh up && deploy/stack.sh images` and run `eval \"$(deploy/stack.sh env)\"` (deploy/test.sh does all of it)")
    })
}

/// The stack's endpoints.
pub struct Stack {
    pub podman: String,
    pub caddy_admin: String,
    /// Where codeb's Caddy server listens (`127.0.0.1:18080`).
    pub http: String,
}

impl Stack {
    pub fn get() -> Stack {
        Stack {
            podman: env("CODEB_TEST_PODMAN"),
            caddy_admin: env("CODEB_TEST_CADDY_ADMIN"),
            http: env("CODEB_TEST_HTTP"),
        }
    }

    /// A Host and a Zone document for this stack.
    pub fn host_yaml(&self) -> String {
        format!(
            "{}---\napiVersion: codeb.kr/v1\nkind: Zone\nmetadata:\n  name: codeb.test\n",
            self.host_doc("127.0.0.1")
        )
    }

    /// A Host document declaring the stack's PostgreSQL and Redis (`database: postgres`, `cache:
    /// redis`), and the Zone.
    pub fn data_host_yaml(&self) -> String {
        format!(
            "{}  postgres: {{url: \"{}\", passwordEnv: PG_ADMIN_PASSWORD, appHost: \"{}\"}}\n  redis: {{url: \"{}\", passwordEnv: REDIS_ADMIN_PASSWORD, appHost: \"{}\"}}\n---\napiVersion: codeb.kr/v1\nkind: Zone\nmetadata:\n  name: codeb.test\n",
            self.host_doc("127.0.0.1"),
            env("CODEB_TEST_PG_URL"),
            env("CODEB_TEST_PG_APP_HOST"),
            env("CODEB_TEST_REDIS_URL"),
            env("CODEB_TEST_REDIS_APP_HOST"),
        )
    }

    /// The Host document alone, with this `address` (what DNS records point at).
    ///
    /// Containers publish on `CODEB_TEST_PUBLISH_ADDRESS` (default `127.0.0.1`): stacks of other
    /// engineers on the same machine publish on 127.0.0.1 from the same port ranges, so a stack
    /// of one's own can take another loopback address (say `127.0.89.110`) and never collide.
    pub fn host_doc(&self, address: &str) -> String {
        let publish =
            std::env::var("CODEB_TEST_PUBLISH_ADDRESS").unwrap_or_else(|_| "127.0.0.1".into());
        format!(
            "apiVersion: codeb.kr/v1\nkind: Host\nmetadata:\n  name: local\nspec:\n  address: \"{address}\"\n  podman: {}\n  caddy:\n    admin: {}\n    listen: [\"{}\"]\n    tls: off\n  publishAddress: \"{publish}\"\n",
            self.podman, self.caddy_admin, self.http
        )
    }
}

/// One production environment of a project, as YAML.
pub struct ProjectYaml<'a> {
    pub name: &'a str,
    /// The Zone (`codeb.test` unless set).
    pub zone: &'a str,
    /// An explicit hostname (default: `{name}.{zone}`).
    pub hostname: Option<&'a str>,
    pub image: &'a str,
    pub promotion: &'a str,
    pub grace: &'a str,
    pub timeout: &'a str,
    pub env: &'a [(&'a str, &'a str)],
}

impl<'a> ProjectYaml<'a> {
    pub fn new(name: &'a str, image: &'a str) -> Self {
        ProjectYaml {
            name,
            zone: "codeb.test",
            hostname: None,
            image,
            promotion: "auto",
            grace: "1h",
            timeout: "15s",
            env: &[],
        }
    }

    pub fn render(&self) -> String {
        let mut env = String::new();
        if !self.env.is_empty() {
            env.push_str("      env:\n");
            for (k, v) in self.env {
                env.push_str(&format!("        {k}: \"{v}\"\n"));
            }
        }
        let hostname = self
            .hostname
            .map(|h| format!("      hostname: {h}\n"))
            .unwrap_or_default();
        format!(
            "---\napiVersion: codeb.kr/v1\nkind: Project\nmetadata:\n  name: {}\nspec:\n  host: local\n  zone: {}\n  environments:\n    production:\n      image: {}\n      port: 8080\n      healthCheck:\n        path: /health\n        timeout: {}\n      promotion: {}\n      gracePeriod: {}\n{hostname}{env}",
            self.name, self.zone, self.image, self.timeout, self.promotion, self.grace
        )
    }
}

/// A state directory and a manifest directory for one test.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub stack: Stack,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
            stack: Stack::get(),
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes the manifests (host, zone and these projects) to `manifests/all.yaml`.
    pub fn write(&self, projects: &[ProjectYaml]) -> PathBuf {
        let dir = self.dir.path().join("manifests");
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = self.stack.host_yaml();
        for p in projects {
            text.push_str(&p.render());
        }
        std::fs::write(dir.join("all.yaml"), text).unwrap();
        dir
    }

    /// Writes `head` (Host and Zone documents) and these projects to `manifests/all.yaml`.
    pub fn write_docs(&self, head: &str, projects: &[ProjectYaml]) -> PathBuf {
        let dir = self.dir.path().join("manifests");
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = head.to_string();
        for p in projects {
            text.push_str(&p.render());
        }
        std::fs::write(dir.join("all.yaml"), text).unwrap();
        dir
    }

    pub fn codeb(&self, args: &[&str]) -> Output {
        codeb(&self.state(), args)
    }

    /// codeb with these extra environment variables.
    pub fn codeb_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_codeb"))
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .envs(vars.iter().copied())
            .output()
            .expect("codeb runs")
    }

    pub fn apply(&self, manifests: &Path) -> Output {
        self.codeb(&["apply", "-f", manifests.to_str().unwrap()])
    }

    /// `get slots -o json` as JSON.
    pub fn slots(&self) -> serde_json::Value {
        let out = self.codeb(&["get", "slots", "-o", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The state of one slot of `project`'s production environment.
    pub fn slot_state(&self, project: &str, slot: &str) -> String {
        let slots = self.slots();
        slots
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["project"] == project && s["slot"] == slot)
            .map(|s| s["state"].as_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// GET through codeb's Caddy server with this Host header.
    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        http_get(&self.stack.http, host, path)
    }
}

pub fn codeb(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_codeb"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("codeb runs")
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A plain HTTP/1.1 GET with `Connection: close`; (0, error) when the connection fails.
pub fn http_get(addr: &str, host: &str, path: &str) -> (u16, String) {
    http_get_within(addr, host, path, Duration::from_secs(5))
}

/// As [`http_get`], giving up on the connection and on an answer after `timeout` each: a poll
/// that must notice recovery promptly should not sit in one request that went out while the
/// upstream was gone (a connection DNATed to an address nobody holds waits for SYN retries).
pub fn http_get_within(addr: &str, host: &str, path: &str, timeout: Duration) -> (u16, String) {
    let attempt = || -> std::io::Result<(u16, String)> {
        let to = addr.to_socket_addrs()?.next().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("no address {addr}"),
            )
        })?;
        let mut s = TcpStream::connect_timeout(&to, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        let status = buf
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.trim().to_string())
            .unwrap_or_default();
        Ok((status, body))
    };
    attempt().unwrap_or_else(|e| (0, e.to_string()))
}

/// One request through Caddy answers `body`. Bounded at 1 s: a request sent while the app was
/// gone can hang in the dial (an address with no container answers no ARP) and would hide the
/// recovery from the poll.
pub fn serves(sb: &Sandbox, host: &str, body: &str) -> bool {
    http_get_within(&sb.stack.http, host, "/", Duration::from_secs(1)).1 == body
}

/// Deletes these projects when dropped, whichever way the test ends. Declare it before a daemon:
/// dropped after it, so the delete runs on the store once the daemon has gone (a daemon refuses to
/// delete what its manifests declare).
pub struct Cleanup<'a>(pub &'a Sandbox, pub Vec<String>);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for name in &self.1 {
            cleanup(self.0, name);
        }
    }
}

/// A project with manual promotion.
pub fn manual<'a>(name: &'a str, image: &'a str) -> ProjectYaml<'a> {
    let mut p = ProjectYaml::new(name, image);
    p.promotion = "manual";
    p
}

/// The manifests' head (the stack's Host and Zone) and these projects as one YAML text.
pub fn manifests(sb: &Sandbox, projects: &[ProjectYaml]) -> String {
    let mut text = sb.stack.host_yaml();
    for p in projects {
        text.push_str(&p.render());
    }
    text
}

/// Polls `f` until it returns true or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Caddy's whole config, as JSON text. Caddy replaces its admin server after every config change;
/// a read landing in that window is reset, so it is repeated (at most 20 times).
pub fn caddy_config(admin: &str) -> String {
    let addr = admin.trim_start_matches("http://");
    let mut answer = http_get(addr, addr, "/config/");
    for _ in 0..20 {
        if answer.0 != 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        answer = http_get(addr, addr, "/config/");
    }
    let (status, body) = answer;
    assert_eq!(status, 200, "{body}");
    body
}

/// Sends a request to Caddy's admin API; the connection is tried again (at most 20 times) while the
/// admin server is being replaced after a config change.
pub fn caddy_admin(admin: &str, method: &str, path: &str, body: &str) -> u16 {
    let addr = admin.trim_start_matches("http://");
    let mut attempt = 0;
    let mut s = loop {
        attempt += 1;
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if attempt >= 20 => panic!("Caddy's admin API at {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The podman CLI against the stack's store (CONTAINERS_CONF etc. come from `deploy/stack.sh env`).
pub fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman runs")
}

/// `(name, id, state)` of every container whose name starts with `prefix`; state is Podman's word
/// (`running`, `exited`, ...).
pub fn containers(prefix: &str) -> Vec<(String, String, String)> {
    let out = podman(&["ps", "-a", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut found: Vec<(String, String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["Names"][0].as_str().unwrap_or_default().to_string(),
                c["Id"].as_str().unwrap_or_default().to_string(),
                c["State"].as_str().unwrap_or_default().to_string(),
            )
        })
        .filter(|(n, _, _)| n.starts_with(prefix))
        .collect();
    found.sort();
    found
}

/// A project name no other run uses.
pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 1_000_000;
    format!("{prefix}-{n}-{}", std::process::id() % 1000)
}

/// Removes a project's containers and routes through codeb itself at the end of a test.
pub fn cleanup(sb: &Sandbox, project: &str) {
    let _ = sb.codeb(&["delete", "project", project]);
}

/// The stack's PowerDNS: its HTTP API (with the key from `PDNS_API_KEY`) and its DNS port.
pub struct Pdns {
    /// `http://127.0.0.1:PORT`.
    pub api: String,
    /// `127.0.0.1:PORT`, for dig.
    pub dns: String,
    pub key: String,
}

impl Pdns {
    pub fn get() -> Pdns {
        Pdns {
            api: env("CODEB_TEST_PDNS_API"),
            dns: env("CODEB_TEST_PDNS_DNS"),
            key: env("PDNS_API_KEY"),
        }
    }

    /// One API request under `/api/v1/servers/localhost/`; (status, body).
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let addr = self.api.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).expect("PowerDNS's API answers");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "{method} /api/v1/servers/localhost/{path} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.key,
            body.len()
        )
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        let status = buf
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// Creates `zone` (Native) with these rrsets (PowerDNS JSON, names canonical).
    pub fn create_zone(&self, zone: &str, rrsets: serde_json::Value) {
        let body = serde_json::json!({
            "name": format!("{zone}."),
            "kind": "Native",
            "nameservers": [format!("ns1.{zone}.")],
            "rrsets": rrsets,
        });
        let (status, text) = self.request("POST", "zones", &body.to_string());
        assert_eq!(status, 201, "{text}");
    }

    pub fn delete_zone(&self, zone: &str) {
        let _ = self.request("DELETE", &format!("zones/{zone}."), "");
    }

    /// The zone as the API answers it; `None` when it does not exist.
    pub fn zone(&self, zone: &str) -> Option<serde_json::Value> {
        let (status, body) = self.request("GET", &format!("zones/{zone}."), "");
        match status {
            200 => Some(serde_json::from_str(&body).unwrap()),
            404 => None,
            _ => panic!("GET zone {zone}: {status} {body}"),
        }
    }

    /// The zone's rrsets, sorted by name and type.
    pub fn rrsets(&self, zone: &str) -> Vec<serde_json::Value> {
        let z = self.zone(zone).expect("the zone exists");
        let mut v = z["rrsets"].as_array().unwrap().clone();
        v.sort_by_key(|r| (r["name"].to_string(), r["type"].to_string()));
        v
    }

    /// The rrsets without codeb's comment, exactly as the API answers them (comments and their
    /// timestamps included), as JSON text: equal text means untouched. The SOA is left out: every
    /// write to the zone bumps its serial.
    pub fn foreign(&self, zone: &str) -> String {
        let v: Vec<serde_json::Value> = self
            .rrsets(zone)
            .into_iter()
            .filter(|r| r["type"] != "SOA" && !is_codeb(r))
            .collect();
        serde_json::to_string_pretty(&v).unwrap()
    }

    /// codeb's rrsets: (name, type, contents, comment).
    pub fn codeb_rrsets(&self, zone: &str) -> Vec<(String, String, Vec<String>, String)> {
        self.rrsets(zone)
            .into_iter()
            .filter(is_codeb)
            .map(|r| {
                let comment = r["comments"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["account"] == "codeb")
                    .map(|c| c["content"].as_str().unwrap().to_string())
                    .unwrap();
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["type"].as_str().unwrap().to_string(),
                    r["records"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x["content"].as_str().unwrap().to_string())
                        .collect(),
                    comment,
                )
            })
            .collect()
    }

    /// The zone's SOA serial.
    pub fn serial(&self, zone: &str) -> u64 {
        self.zone(zone).expect("the zone exists")["serial"]
            .as_u64()
            .unwrap()
    }

    /// A PATCH of the zone, as a person editing it by hand would send.
    pub fn patch(&self, zone: &str, rrsets: serde_json::Value) {
        let body = serde_json::json!({ "rrsets": rrsets });
        let (status, text) = self.request("PATCH", &format!("zones/{zone}."), &body.to_string());
        assert_eq!(status, 204, "{text}");
    }

    /// `dig @127.0.0.1 -p PORT +short NAME TYPE`, one answer per line.
    pub fn dig(&self, name: &str, rtype: &str) -> String {
        let (host, port) = self.dns.rsplit_once(':').unwrap();
        let out = Command::new("dig")
            .args([
                &format!("@{host}"),
                "-p",
                port,
                "+short",
                "+time=2",
                "+tries=1",
            ])
            .args([name, rtype])
            .output()
            .expect("dig runs (apt install dnsutils; deploy/stack.sh up installs it)");
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn is_codeb(r: &serde_json::Value) -> bool {
    r["comments"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["account"] == "codeb"))
}

/// A Zone document managed through the stack's PowerDNS, the key read from `key_env`.
pub fn managed_zone(zone: &str, api: &str, key_env: &str) -> String {
    format!(
        "---\napiVersion: codeb.kr/v1\nkind: Zone\nmetadata:\n  name: {zone}\nspec:\n  powerdns:\n    api: {api}\n    apiKeyEnv: {key_env}\n  ttl: 300\n"
    )
}

impl Sandbox {
    /// Replaces `manifests/all.yaml` the way editors save: a temporary file renamed over it.
    pub fn save(&self, projects: &[ProjectYaml]) -> PathBuf {
        let mut text = self.stack.host_yaml();
        for p in projects {
            text.push_str(&p.render());
        }
        self.save_text(&text)
    }

    /// Saves `text` as `manifests/all.yaml` (temporary file, then rename).
    pub fn save_text(&self, text: &str) -> PathBuf {
        let dir = self.dir.path().join("manifests");
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(".all.yaml.swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join("all.yaml")).unwrap();
        dir
    }

    /// Starts `codeb watch -f manifests ARGS…` on this sandbox's state directory, logging to a file.
    pub fn watch(&self, manifests: &Path, args: &[&str]) -> WatchProcess {
        self.daemon(&["watch", "-f", manifests.to_str().unwrap()], args)
    }

    /// Starts `codeb COMMAND… ARGS…` as a daemon on this sandbox's state directory, its log in a
    /// file of its own.
    fn daemon(&self, command: &[&str], args: &[&str]) -> WatchProcess {
        let log = self.dir.path().join(format!(
            "{}-{}.log",
            command[0],
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_codeb"))
            .arg("--state-dir")
            .arg(self.state())
            .args(command)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("codeb {} starts: {e}", command[0]));
        WatchProcess { child, log }
    }
}

/// A running `codeb watch`. Dropping it kills (SIGKILL) and reaps it, so no test leaves one behind,
/// whatever path it takes out.
pub struct WatchProcess {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl WatchProcess {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, within: Duration, needle: &str) -> bool {
        eventually(within, || self.log().contains(needle))
    }

    /// Waits until `n` more host sweeps than now have been logged (each resync makes one).
    pub fn wait_sweeps(&self, n: usize, within: Duration) -> bool {
        let start = self.count("swept");
        eventually(within, || self.count("swept") >= start + n)
    }

    /// Sends SIGTERM and waits for the exit; `None` when it did not exit within `within`.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WatchProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `codeb serve` on a loopback port of its own. Dropping it kills and reaps it (the
/// [`WatchProcess`] inside); its log is the daemon's stderr.
pub struct ServeProcess {
    pub daemon: WatchProcess,
    /// `127.0.0.1:PORT`, where its HTTP API answers.
    pub addr: String,
}

impl std::ops::Deref for ServeProcess {
    type Target = WatchProcess;
    fn deref(&self) -> &WatchProcess {
        &self.daemon
    }
}

impl std::ops::DerefMut for ServeProcess {
    fn deref_mut(&mut self) -> &mut WatchProcess {
        &mut self.daemon
    }
}

impl ServeProcess {
    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The daemon's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.daemon.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

/// A loopback port nobody listens on now (the kernel's pick for port 0). Another process could
/// take it before codeb binds it; [`Sandbox::serve`] then fails loudly with the daemon's log.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sandbox {
    /// Starts `codeb serve -f manifests --listen 127.0.0.1:PORT ARGS…` on this sandbox's state
    /// directory and waits (at most 20 s) until `GET /health` answers 200.
    pub fn serve(&self, manifests: &Path, args: &[&str]) -> ServeProcess {
        let addr = format!("127.0.0.1:{}", free_port());
        let daemon = self.daemon(
            &[
                "serve",
                "-f",
                manifests.to_str().unwrap(),
                "--listen",
                &addr,
            ],
            args,
        );
        let mut serve = ServeProcess { daemon, addr };
        let up = eventually(Duration::from_secs(20), || {
            if let Some(status) = serve.daemon.child.try_wait().unwrap() {
                panic!("codeb serve exited with {status}\n{}", serve.log());
            }
            http_get_within(&serve.addr, &serve.addr, "/health", Duration::from_secs(1)).0 == 200
        });
        assert!(up, "GET /health never answered 200\n{}", serve.log());
        serve
    }

    /// `codeb key create ARGS…`: the key, from the first line of its output.
    pub fn key(&self, args: &[&str]) -> String {
        let out = self.codeb(&[&["key", "create"], args].concat());
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let key = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(key.starts_with("codeb_"), "{}", text(&out));
        key
    }

    /// The id of the key named `name`, from `codeb key list -o json`.
    pub fn key_id(&self, name: &str) -> String {
        let out = self.codeb(&["key", "list", "-o", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        keys.as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .and_then(|k| k["id"].as_str())
            .unwrap_or_else(|| panic!("no key named {name}: {keys}"))
            .to_string()
    }
}

/// Reads one HTTP/1.1 answer with a `content-length` from `stream`: (status line and headers
/// in lower case, body); `None` when the connection closes first.
pub fn read_answer(stream: &mut std::net::TcpStream) -> Option<(String, String)> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some((head, String::from_utf8_lossy(&body).into_owned()))
}

/// Announces a 5 MiB body to `path`, sends a little over the 4 MiB limit, and reads the answer:
/// (status line and headers in lower case, body), and the connection, open still. It accepts
/// JSON and event streams, as MCP's `/mcp` requires (the API's routes ignore `Accept`).
pub fn over_the_limit_on(
    serve: &ServeProcess,
    path: &str,
    key: &str,
    content_type: &str,
) -> (String, String, std::net::TcpStream) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(&serve.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\nContent-Type: {content_type}\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
        serve.addr,
        5 << 20
    )
    .unwrap();
    stream
        .write_all(&vec![b'x'; (4 << 20) + (64 << 10)])
        .unwrap();
    let (head, body) = read_answer(&mut stream).expect("an answer");
    (head, body, stream)
}

pub fn over_the_limit(
    serve: &ServeProcess,
    path: &str,
    key: &str,
    content_type: &str,
) -> (String, String) {
    let (head, body, _) = over_the_limit_on(serve, path, key, content_type);
    (head, body)
}
