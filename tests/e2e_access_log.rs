//! Caddy's access log of codeb's server, end to end against the stack's Caddy: after an apply, a
//! request through Caddy to a project's hostname is a JSON line in the Host's access log file,
//! with the hostname and the status, 5xx included; a second apply changes nothing in Caddy; the
//! operator's configuration places the file; a Host turned off removes codeb's logger and the
//! server's `logs`, and a logger codeb does not own is left byte for byte.
//!
//! The stack's Caddy runs as root (deploy/stack.sh), so it writes wherever it is told: the
//! default location (`/var/log/caddy/codeb-local.access.log`, the directory Debian's `caddy`
//! package creates) in the first test, a directory of the test's own in the second.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// The stack's Caddy config as JSON. Caddy replaces its admin server after every config change;
/// a read landing in that window is reset, so it is repeated (at most 20 times).
fn caddy_json(sb: &Sandbox) -> Value {
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("{}/config/", sb.stack.caddy_admin);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client.get(&url).send().and_then(|r| r.json::<Value>()) {
            Ok(config) => return config,
            Err(e) if attempt >= 20 => panic!("GET {url}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A request through codeb's Caddy server with this Host header: its status.
fn request(sb: &Sandbox, method: reqwest::Method, host: &str) -> u16 {
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    client
        .request(method, format!("http://{}/", sb.stack.http))
        .header("Host", host)
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or_else(|e| panic!("request to {host}: {e}"))
}

/// The access log entries of `file` for `host`, each a JSON object. A line Caddy is still
/// writing (no newline yet) is not read.
fn entries(file: &Path, host: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let complete = text.rsplit_once('\n').map_or("", |(lines, _)| lines);
    complete
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|e| e["request"]["host"] == host)
        .collect()
}

/// Waits until `file` holds an entry for `host` with `status`, and returns it.
fn entry_with_status(file: &Path, host: &str, status: u16) -> Value {
    let mut found = None;
    let seen = eventually(Duration::from_secs(5), || {
        found = entries(file, host)
            .into_iter()
            .find(|e| e["status"] == status);
        found.is_some()
    });
    assert!(
        seen,
        "no entry for {host} with status {status} in {}: {:?}",
        file.display(),
        entries(file, host)
    );
    found.unwrap()
}

/// A logger codeb does not own, put beside codeb's for the test and removed after it.
struct ForeignLogger<'a> {
    sb: &'a Sandbox,
    name: String,
}

impl<'a> ForeignLogger<'a> {
    fn put(sb: &'a Sandbox, name: &str) -> ForeignLogger<'a> {
        let body = json!({
            "writer": { "output": "discard" },
            "include": [format!("http.log.access.{name}")],
            "level": "WARN",
        });
        let status = caddy_admin(
            &sb.stack.caddy_admin,
            "PUT",
            &format!("/config/logging/logs/{name}"),
            &body.to_string(),
        );
        assert_eq!(status, 200, "PUT the foreign logger");
        ForeignLogger {
            sb,
            name: name.to_string(),
        }
    }

    /// The foreign logger as Caddy holds it now.
    fn now(&self) -> Value {
        caddy_json(self.sb)["logging"]["logs"][&self.name].clone()
    }
}

impl Drop for ForeignLogger<'_> {
    fn drop(&mut self) {
        caddy_admin(
            &self.sb.stack.caddy_admin,
            "DELETE",
            &format!("/config/logging/logs/{}", self.name),
            "",
        );
    }
}

#[test]
fn requests_and_5xx_are_logged_as_json_per_hostname_and_a_second_apply_writes_nothing() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("alog");
    let host = format!("{name}.codeb.test");
    let file = PathBuf::from("/var/log/caddy/codeb-local.access.log");
    let foreign = ForeignLogger::put(&sb, &format!("e2etest-{name}"));
    let theirs = foreign.now();
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // codeb's logger and its server's `logs`, as documented.
    let config = caddy_json(&sb);
    assert_eq!(
        config["logging"]["logs"]["codeb-access"],
        json!({
            "writer": { "output": "file", "filename": file, "roll_size_mb": 100, "roll_keep": 10 },
            "encoder": { "format": "json" },
            "include": ["http.log.access.codeb-access"],
        })
    );
    assert_eq!(
        config["apps"]["http"]["servers"]["codeb"]["logs"],
        json!({ "default_logger_name": "codeb-access" })
    );
    assert_eq!(foreign.now(), theirs, "a foreign logger is left as it was");

    // A 200, and two 5xx: the app's own (busybox httpd answers 501 to DELETE) and Caddy's 502
    // for an upstream that is gone.
    assert_eq!(request(&sb, reqwest::Method::GET, &host), 200);
    assert_eq!(request(&sb, reqwest::Method::DELETE, &host), 501);
    let ok = entry_with_status(&file, &host, 200);
    assert_eq!(ok["logger"], "http.log.access.codeb-access");
    assert_eq!(ok["msg"], "handled request");
    assert_eq!(ok["request"]["method"], "GET");
    assert_eq!(ok["request"]["uri"], "/");
    let app_5xx = entry_with_status(&file, &host, 501);
    assert_eq!(app_5xx["request"]["method"], "DELETE");
    let c = format!("{name}-production-blue");
    assert!(podman(&["stop", "-t", "1", &c]).status.success());
    assert_eq!(request(&sb, reqwest::Method::GET, &host), 502);
    let gone = entry_with_status(&file, &host, 502);
    assert_eq!(gone["level"], "error");

    // A second apply (it starts the stopped container again), then a third: nothing to do and
    // not one change of Caddy's config.
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(eventually(Duration::from_secs(10), || sb.get(&host, "/").1 == "v1"));
    let before = caddy_config(&sb.stack.caddy_admin);
    let again = sb.apply(&dir);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to do"),
        "{}",
        text(&again)
    );
    assert_eq!(caddy_config(&sb.stack.caddy_admin), before);
    let diff = sb.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    assert_eq!(diff.status.code(), Some(0), "{}", text(&diff));
    assert_eq!(foreign.now(), theirs);
}

#[test]
fn the_operator_places_the_file_and_a_host_turned_off_removes_only_codebs_log() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("alogoff");
    let host = format!("{name}.codeb.test");
    let logs = sb.dir.path().join("caddy-logs");
    let config = sb.dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "accessLogs:\n  dir: {}\n  rollSizeMb: 7\n  rollKeep: 2\n",
            logs.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let foreign = ForeignLogger::put(&sb, &format!("e2etest-{name}"));
    let theirs = foreign.now();
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let apply = |dir: &Path| sb.codeb(&["--config", config, "apply", "-f", dir.to_str().unwrap()]);
    let out = apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Where the configuration says, rolled as it says; Caddy made the directory.
    let file = logs.join("codeb-local.access.log");
    let logger = &caddy_json(&sb)["logging"]["logs"]["codeb-access"];
    assert_eq!(logger["writer"]["filename"], json!(file));
    assert_eq!(
        (
            &logger["writer"]["roll_size_mb"],
            &logger["writer"]["roll_keep"]
        ),
        (&json!(7), &json!(2))
    );
    assert_eq!(request(&sb, reqwest::Method::GET, &host), 200);
    entry_with_status(&file, &host, 200);
    let before = caddy_config(&sb.stack.caddy_admin);
    let again = apply(&dir);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to do"),
        "{}",
        text(&again)
    );
    assert_eq!(caddy_config(&sb.stack.caddy_admin), before);

    // The Host turns its access log off: codeb's logger and the server's `logs` go (without
    // `logs` Caddy emits no access entry), and nothing else of Caddy's logging changes.
    let manifests = dir.join("all.yaml");
    let written = std::fs::read_to_string(&manifests).unwrap();
    let off = written.replacen("    tls: off\n", "    tls: off\n    accessLog: false\n", 1);
    assert_ne!(off, written);
    std::fs::write(&manifests, off).unwrap();
    let diff = sb.codeb(&["--config", config, "diff", "-f", dir.to_str().unwrap()]);
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff));
    assert!(
        String::from_utf8_lossy(&diff.stdout)
            .contains("host local: remove codeb's Caddy access log"),
        "{}",
        text(&diff)
    );
    let out = apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let now = caddy_json(&sb);
    assert_eq!(now["logging"]["logs"].get("codeb-access"), None, "{now}");
    assert_eq!(
        now["apps"]["http"]["servers"]["codeb"].get("logs"),
        None,
        "{now}"
    );
    assert_eq!(foreign.now(), theirs);
    assert_eq!(request(&sb, reqwest::Method::GET, &host), 200);
    let again = apply(&dir);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to do"),
        "{}",
        text(&again)
    );
}
