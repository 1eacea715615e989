//! The Caddy adapter against a real Caddy: routes codeb writes carry real requests to real
//! backends, its access log records them, and nothing that is not codeb's is touched.
//!
//! Needs `CODEB_TEST_CADDY_ADMIN` (e.g. `http://127.0.0.1:12019`): a Caddy with no apps,
//! `persist: false`, started by `deploy/stack.sh up` or by hand with
//! `caddy run --config base.json`. A missing variable fails the run; it never skips. Backends are
//! in-process TCP servers on 127.0.0.1; Caddy listens on free 127.0.0.1 ports.
//!
//! The tests that change Caddy's apps hold [`CADDY`] so that each one starts from (and leaves) a
//! Caddy with no apps, which the first test checks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use codeb::backend::caddy::{Caddy, Error};
use codeb::backend::Proxy;
use codeb::model::observed::{ObservedAccessLog, ObservedProxy};
use codeb::model::writes::{AccessLog, Route, ServerSpec, TlsMode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serialises the tests that write Caddy's config (see the module doc).
static CADDY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Prefix of every server these tests create, so leftovers of a crashed run can be recognised.
const TEST_SERVER_PREFIX: &str = "codebtest-";

fn admin_url() -> String {
    std::env::var("CODEB_TEST_CADDY_ADMIN").unwrap_or_else(|_| {
        panic!(
            "CODEB_TEST_CADDY_ADMIN is not set: start a Caddy whose admin API listens on \
             127.0.0.1 with persist:false (deploy/stack.sh up, or `caddy run --config base.json` \
             with {{\"admin\": {{\"listen\": \"127.0.0.1:12019\", \"config\": {{\"persist\": false}}}}}}) \
             and export CODEB_TEST_CADDY_ADMIN=http://127.0.0.1:12019"
        )
    })
}

/// Raw access to the admin API, for what the adapter must not do (foreign routes) and to check
/// what it did.
struct Admin {
    base: String,
    client: reqwest::Client,
}

impl Admin {
    fn new(base: &str) -> Admin {
        // No pooling: every config change replaces Caddy's admin server and its connections.
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Admin {
            base: base.trim_end_matches('/').to_string(),
            client,
        }
    }

    /// A GET, repeated (at most 20 times) when the connection breaks: Caddy replaces its admin
    /// server after every config change, and a request landing in that window is reset.
    async fn get(&self, path: &str) -> (u16, String) {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self.client.get(format!("{}{path}", self.base)).send().await;
            let read = match sent {
                Ok(response) => {
                    let status = response.status().as_u16();
                    response.text().await.map(|body| (status, body))
                }
                Err(e) => Err(e),
            };
            match read {
                Ok(answer) => return answer,
                Err(e) if attempt >= 20 => panic!("GET {path}: {e}"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }

    async fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Sends a request, again (at most 20 times) when Caddy's admin server was being replaced: any
    /// transport error for an idempotent request, a connect error (nothing reached Caddy) otherwise.
    async fn send(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
        idempotent: bool,
    ) -> reqwest::Response {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match make().send().await {
                Ok(response) => return response,
                Err(e) if attempt < 20 && (idempotent || e.is_connect()) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(e) => panic!("admin request: {e}"),
            }
        }
    }

    async fn post(&self, path: &str, body: &Value) {
        let url = format!("{}{path}", self.base);
        let response = self.send(|| self.client.post(&url).json(body), false).await;
        let status = response.status();
        assert!(
            status.is_success(),
            "POST {path}: {status} {}",
            response.text().await.unwrap()
        );
    }

    async fn put(&self, path: &str, body: &Value) {
        let url = format!("{}{path}", self.base);
        let response = self.send(|| self.client.put(&url).json(body), false).await;
        let status = response.status();
        assert!(
            status.is_success(),
            "PUT {path}: {status} {}",
            response.text().await.unwrap()
        );
    }

    async fn delete(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        let response = self.send(|| self.client.delete(&url), true).await;
        let status = response.status();
        assert!(
            status.is_success(),
            "DELETE {path}: {status} {}",
            response.text().await.unwrap()
        );
    }

    /// Removes what earlier runs of these tests left behind, then checks that Caddy has no apps.
    ///
    /// # Panics
    /// When Caddy holds anything else: these tests need a Caddy of their own.
    async fn reset(&self) {
        let mut apps = self.get_json("/config/apps").await;
        if apps.is_null() {
            return;
        }
        if let Some(servers) = apps
            .pointer_mut("/http/servers")
            .and_then(Value::as_object_mut)
        {
            // `codeb` is the server the end-to-end tests (other binaries, run before or after this
            // one, never at the same time) leave behind.
            servers.retain(|name, _| {
                !name.starts_with(TEST_SERVER_PREFIX) && name != codeb::plan::SERVER_NAME
            });
        }
        if let Some(policies) = apps
            .pointer_mut("/tls/automation/policies")
            .and_then(Value::as_array_mut)
        {
            policies.retain(|p| p.get("@id").and_then(Value::as_str) != Some("codeb-tls-internal"));
        }
        if let Some(cas) = apps
            .pointer_mut("/pki/certificate_authorities")
            .and_then(Value::as_object_mut)
        {
            cas.remove("codeb");
        }
        assert!(
            is_empty_tree(&apps),
            "the Caddy at {} must start with no apps (restart it: persist is false), but it holds {apps}",
            self.base
        );
        self.delete("/config/apps").await;
        assert!(self.get_json("/config/apps").await.is_null());
    }
}

fn is_empty_tree(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.values().all(is_empty_tree),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

/// An HTTP/1.1 server on 127.0.0.1 that answers every request with `name` and closes.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

/// A 127.0.0.1 port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET / through Caddy's plain-HTTP listener with this Host header; (status, body).
async fn through_caddy(port: u16, host: &str) -> (u16, String) {
    // A fresh connection per request: every config change reloads Caddy, which closes idle
    // keep-alive connections, and a pooled one could be reset under us.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let response = client
        .get(format!("http://127.0.0.1:{port}/"))
        .header(reqwest::header::HOST, host)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request for {host} through 127.0.0.1:{port}: {e}"));
    (response.status().as_u16(), response.text().await.unwrap())
}

fn route(id: &str, hosts: &[&str], upstream: SocketAddr) -> Route {
    Route {
        id: id.to_string(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        upstream: upstream.to_string(),
        keep_alive: true,
    }
}

/// Admin call timings, printed at the end of a test.
#[derive(Default)]
struct Timings(Vec<(&'static str, Duration)>);

impl Timings {
    async fn time<T>(
        &mut self,
        what: &'static str,
        call: impl std::future::Future<Output = T>,
    ) -> T {
        let started = Instant::now();
        let out = call.await;
        self.0.push((what, started.elapsed()));
        out
    }

    fn print(&self) {
        for (what, took) in &self.0 {
            println!("  {what:<40} {:>8.2} ms", took.as_secs_f64() * 1000.0);
        }
    }
}

#[tokio::test]
async fn codeb_routes_reach_their_backends_and_foreign_routes_stay_untouched() {
    let admin_url = admin_url();
    let _caddy_lock = CADDY.lock().await;
    let admin = Admin::new(&admin_url);
    admin.reset().await;

    let caddy = Caddy::new(&admin_url).unwrap();
    let mut timings = Timings::default();
    let pid = std::process::id();
    let name = format!("{TEST_SERVER_PREFIX}{pid}-off");
    let server_path = format!("/config/apps/http/servers/{name}");
    let port = free_port();
    let spec = ServerSpec {
        name: name.clone(),
        listen: vec![format!("127.0.0.1:{port}")],
        tls: TlsMode::Off,
    };

    // A fresh Caddy: no apps, so observing finds nothing, and one PUT creates apps, apps.http,
    // apps.http.servers and the server.
    let observed = timings
        .time("observe (no apps)", caddy.observe(&name))
        .await
        .unwrap();
    assert_eq!(observed, ObservedProxy::default());
    timings
        .time("ensure_server (create)", caddy.ensure_server(&spec))
        .await
        .unwrap();
    assert_eq!(caddy.writes(), 1);
    assert_eq!(
        admin.get_json(&server_path).await,
        json!({ "listen": [format!("127.0.0.1:{port}")], "routes": [], "automatic_https": { "disable": true } })
    );
    // Converged: a second call writes nothing.
    timings
        .time("ensure_server (no change)", caddy.ensure_server(&spec))
        .await
        .unwrap();
    assert_eq!(caddy.writes(), 1, "a second ensure_server must not write");
    let observed = timings
        .time("observe (empty server)", caddy.observe(&name))
        .await
        .unwrap();
    assert_eq!(
        observed,
        ObservedProxy {
            server: Some(spec.clone()),
            routes: vec![],
            ..ObservedProxy::default()
        }
    );

    // Foreign routes in codeb's server: one with a foreign @id, one with none.
    let foreign_id = format!("foreign-{pid}");
    let foreign = json!({
        "@id": foreign_id,
        "match": [{ "host": ["foreign.test"] }],
        "handle": [{ "handler": "static_response", "body": "foreign" }],
        "terminal": true,
    });
    let anonymous = json!({ "match": [{ "host": ["anon.test"] }], "handle": [{ "handler": "static_response", "body": "anon" }] });
    admin.post(&format!("{server_path}/routes"), &foreign).await;
    admin
        .post(&format!("{server_path}/routes"), &anonymous)
        .await;
    let foreign_before = admin.get(&format!("/id/{foreign_id}")).await;
    assert_eq!(foreign_before.0, 200);
    let foreign_routes = |routes: &Value| -> Vec<Value> {
        let all = routes.as_array().unwrap().iter();
        all.filter(|r| {
            !r.get("@id")
                .and_then(Value::as_str)
                .is_some_and(|id| id.starts_with("codeb-"))
        })
        .cloned()
        .collect()
    };
    let foreign_routes_before =
        foreign_routes(&admin.get_json(&format!("{server_path}/routes")).await);
    assert_eq!(foreign_routes_before.len(), 2);

    let a = backend("backend-a").await;
    let b = backend("backend-b").await;
    let one = route(&format!("codeb-test{pid}-one"), &["one.test"], a);
    let two = route(
        &format!("codeb-test{pid}-two"),
        &["two.test", "www.two.test"],
        a,
    );
    timings
        .time("add_route", caddy.add_route(&name, &one))
        .await
        .unwrap();
    timings
        .time("add_route", caddy.add_route(&name, &two))
        .await
        .unwrap();

    assert_eq!(
        through_caddy(port, "one.test").await,
        (200, "backend-a".to_string())
    );
    assert_eq!(
        through_caddy(port, "www.two.test").await,
        (200, "backend-a".to_string())
    );
    assert_eq!(
        through_caddy(port, "foreign.test").await,
        (200, "foreign".to_string())
    );
    assert_eq!(
        through_caddy(port, "anon.test").await,
        (200, "anon".to_string())
    );
    // No route matches: Caddy answers an empty 200, never a backend.
    assert_eq!(
        through_caddy(port, "nobody.test").await,
        (200, String::new())
    );

    let observed = timings
        .time("observe (2 codeb + 2 foreign routes)", caddy.observe(&name))
        .await
        .unwrap();
    assert_eq!(
        observed,
        ObservedProxy {
            server: Some(spec.clone()),
            routes: vec![one.clone(), two.clone()],
            ..ObservedProxy::default()
        }
    );

    // Blue/green switch: the same id, another upstream.
    let one_on_b = Route {
        upstream: b.to_string(),
        ..one.clone()
    };
    timings
        .time("replace_route", caddy.replace_route(&one_on_b))
        .await
        .unwrap();
    assert_eq!(
        through_caddy(port, "one.test").await,
        (200, "backend-b".to_string())
    );
    assert_eq!(
        through_caddy(port, "two.test").await,
        (200, "backend-a".to_string())
    );

    timings
        .time("delete_route", caddy.delete_route(&two.id))
        .await
        .unwrap();
    let writes = caddy.writes();
    timings
        .time("delete_route (already gone)", caddy.delete_route(&two.id))
        .await
        .unwrap();
    assert_eq!(caddy.writes(), writes);
    assert_eq!(through_caddy(port, "two.test").await, (200, String::new()));
    let observed = caddy.observe(&name).await.unwrap();
    assert_eq!(observed.routes, vec![one_on_b.clone()]);

    // Replacing a route that is gone is a retryable error (re-observe, then add it).
    let error = caddy.replace_route(&two).await.unwrap_err();
    assert!(
        matches!(error.downcast_ref(), Some(Error::Api { status: 404, .. })),
        "{error:?}"
    );
    assert!(error.retryable());
    // Foreign ids are refused before any request.
    let error = caddy.delete_route(&foreign_id).await.unwrap_err();
    assert!(
        matches!(error.downcast_ref(), Some(Error::InvalidName { .. })),
        "{error:?}"
    );

    // Moving the listener keeps every route, codeb's and foreign.
    let new_port = free_port();
    let moved = ServerSpec {
        listen: vec![format!("127.0.0.1:{new_port}")],
        ..spec.clone()
    };
    let writes = caddy.writes();
    timings
        .time("ensure_server (new listen)", caddy.ensure_server(&moved))
        .await
        .unwrap();
    assert_eq!(caddy.writes(), writes + 1, "only listen changes");
    assert_eq!(
        through_caddy(new_port, "one.test").await,
        (200, "backend-b".to_string())
    );
    assert_eq!(
        through_caddy(new_port, "foreign.test").await,
        (200, "foreign".to_string())
    );
    let observed = caddy.observe(&name).await.unwrap();
    assert_eq!(
        observed,
        ObservedProxy {
            server: Some(moved),
            routes: vec![one_on_b],
            ..ObservedProxy::default()
        }
    );

    // The foreign routes are exactly as they were written, byte for byte.
    assert_eq!(
        admin.get(&format!("/id/{foreign_id}")).await,
        foreign_before
    );
    assert_eq!(
        foreign_routes(&admin.get_json(&format!("{server_path}/routes")).await),
        foreign_routes_before
    );

    admin.delete(&server_path).await;
    admin.reset().await;
    println!("admin calls through the adapter ({admin_url}):");
    timings.print();
}

#[tokio::test]
async fn internal_tls_serves_codeb_routes_with_certificates_from_codebs_own_ca() {
    let admin_url = admin_url();
    let _caddy_lock = CADDY.lock().await;
    let admin = Admin::new(&admin_url);
    admin.reset().await;

    let caddy = Caddy::new(&admin_url).unwrap();
    let mut timings = Timings::default();
    let pid = std::process::id();
    let name = format!("{TEST_SERVER_PREFIX}{pid}-internal");
    let port = free_port();
    let spec = ServerSpec {
        name: name.clone(),
        listen: vec![format!("127.0.0.1:{port}")],
        tls: TlsMode::Internal,
    };

    timings
        .time(
            "ensure_server (internal, create)",
            caddy.ensure_server(&spec),
        )
        .await
        .unwrap();
    assert_eq!(caddy.writes(), 3, "CA, issuer policy, server");
    let apps = admin.get_json("/config/apps").await;
    assert_eq!(
        apps.pointer("/pki/certificate_authorities/codeb"),
        Some(&json!({ "install_trust": false }))
    );
    timings
        .time(
            "ensure_server (internal, no change)",
            caddy.ensure_server(&spec),
        )
        .await
        .unwrap();
    assert_eq!(caddy.writes(), 3, "a second ensure_server must not write");
    let observed = caddy.observe(&name).await.unwrap();
    assert_eq!(
        observed,
        ObservedProxy {
            server: Some(spec.clone()),
            routes: vec![],
            ..ObservedProxy::default()
        }
    );

    let c = backend("backend-c").await;
    let secure = route(&format!("codeb-test{pid}-secure"), &["secure.test"], c);
    caddy.add_route(&name, &secure).await.unwrap();

    // Trust only codeb's CA, as Caddy reports it.
    let ca = admin.get_json("/pki/ca/codeb").await;
    let root = ca["root_certificate"].as_str().unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .tls_certs_only([reqwest::Certificate::from_pem(root.as_bytes()).unwrap()])
        .resolve("secure.test", SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Caddy issues certificates in the background after a config load: the first handshakes
    // for a new name can fail until it is done. Wait for it, bounded.
    let started = Instant::now();
    let mut failures = Vec::new();
    let body = loop {
        match client
            .get(format!("https://secure.test:{port}/"))
            .send()
            .await
        {
            Ok(response) => break response.text().await.unwrap(),
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                failures.push(format!("{e:?}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no TLS answer for secure.test within 10 s: {e:?}"),
        }
    };
    println!(
        "first HTTPS answer for a new name after {:.0} ms, {} failed attempt(s) before: {:?}",
        started.elapsed().as_secs_f64() * 1000.0,
        failures.len(),
        failures.first()
    );
    assert_eq!(body, "backend-c");

    // Off: plain HTTP on the same listener, the route kept.
    let off = ServerSpec {
        tls: TlsMode::Off,
        ..spec.clone()
    };
    timings
        .time("ensure_server (internal -> off)", caddy.ensure_server(&off))
        .await
        .unwrap();
    assert_eq!(
        caddy.writes(),
        3 + 1 + 2,
        "one route, then automatic_https and tls_connection_policies"
    );
    assert_eq!(
        through_caddy(port, "secure.test").await,
        (200, "backend-c".to_string())
    );
    let observed = caddy.observe(&name).await.unwrap();
    assert_eq!(
        observed,
        ObservedProxy {
            server: Some(off),
            routes: vec![secure],
            ..ObservedProxy::default()
        }
    );

    admin
        .delete(&format!("/config/apps/http/servers/{name}"))
        .await;
    admin.reset().await;
    println!("admin calls through the adapter ({admin_url}):");
    timings.print();
}

#[tokio::test]
async fn an_unreachable_admin_api_is_a_retryable_error_naming_the_url() {
    let caddy = Caddy::new("http://127.0.0.1:1").unwrap();
    let spec = ServerSpec {
        name: "codeb".to_string(),
        listen: vec![":80".to_string()],
        tls: TlsMode::Off,
    };
    let route = route(
        "codeb-x",
        &["x.test"],
        SocketAddr::from(([127, 0, 0, 1], 9)),
    );
    let errors = [
        caddy.observe("codeb").await.unwrap_err(),
        caddy.ensure_server(&spec).await.unwrap_err(),
        caddy.add_route("codeb", &route).await.unwrap_err(),
        caddy.replace_route(&route).await.unwrap_err(),
        caddy.delete_route("codeb-x").await.unwrap_err(),
    ];
    for error in errors {
        assert!(
            matches!(error.downcast_ref(), Some(Error::Unreachable { admin, .. }) if admin == "http://127.0.0.1:1"),
            "{error:?}"
        );
        assert!(error.retryable());
        let message = error.to_string();
        assert!(
            message.contains("http://127.0.0.1:1") && message.contains("deploy/stack.sh up"),
            "{message}"
        );
    }
    println!("{}", caddy.observe("codeb").await.unwrap_err());
}

/// The entries of an access log file for `host`, each a JSON object. A line Caddy is still
/// writing (no newline yet) is not read.
fn log_entries(file: &std::path::Path, host: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let complete = text.rsplit_once('\n').map_or("", |(lines, _)| lines);
    complete
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|e| e["request"]["host"] == host)
        .collect()
}

/// Waits (at most 5 s) until `file` holds an entry for `host` with `status`.
async fn logged(file: &std::path::Path, host: &str, status: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if log_entries(file, host)
            .iter()
            .any(|e| e["status"] == status)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn codebs_access_log_is_written_once_logs_each_request_and_leaves_other_loggers_alone() {
    let admin_url = admin_url();
    let _caddy_lock = CADDY.lock().await;
    let admin = Admin::new(&admin_url);
    admin.reset().await;

    let caddy = Caddy::new(&admin_url).unwrap();
    let pid = std::process::id();
    let name = format!("{TEST_SERVER_PREFIX}{pid}-log");
    let server_path = format!("/config/apps/http/servers/{name}");
    let logger_path = format!("/config/logging/logs/{name}-access");
    let port = free_port();
    let spec = ServerSpec {
        name: name.clone(),
        listen: vec![format!("127.0.0.1:{port}")],
        tls: TlsMode::Off,
    };
    let foreign_path = format!("/config/logging/logs/{TEST_SERVER_PREFIX}{pid}-foreign");
    let foreign =
        json!({ "writer": { "output": "discard" }, "include": ["http.log.access.elsewhere"] });
    admin.put(&foreign_path, &foreign).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("made-by-caddy").join("access.log");
    let log = AccessLog {
        file: file.to_str().unwrap().to_string(),
        roll_size_mb: 1,
        roll_keep: 2,
    };

    // Without its server, an access log is refused before any write, and worth a retry (the
    // next round creates the server first).
    let refused = caddy
        .ensure_access_log(&name, Some(&log))
        .await
        .unwrap_err();
    assert!(refused.retryable(), "{refused}");
    assert_eq!(caddy.writes(), 0);

    caddy.ensure_server(&spec).await.unwrap();
    caddy.ensure_access_log(&name, Some(&log)).await.unwrap();
    assert_eq!(
        caddy.writes(),
        3,
        "the server, then codeb's logger and the server's logs"
    );
    assert_eq!(
        caddy.observe(&name).await.unwrap().access_log,
        ObservedAccessLog::Is(log.clone())
    );
    caddy.ensure_access_log(&name, Some(&log)).await.unwrap();
    assert_eq!(caddy.writes(), 3, "a converged access log gets no write");

    let ok = backend("ok").await;
    caddy
        .add_route(&name, &route("codeb-log-ok", &["ok.test"], ok))
        .await
        .unwrap();
    let closed = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    caddy
        .add_route(&name, &route("codeb-log-gone", &["gone.test"], closed))
        .await
        .unwrap();
    assert_eq!(
        through_caddy(port, "ok.test").await,
        (200, "ok".to_string())
    );
    assert_eq!(through_caddy(port, "gone.test").await.0, 502);
    assert!(
        logged(&file, "ok.test", 200).await,
        "{:?}",
        log_entries(&file, "ok.test")
    );
    assert!(
        logged(&file, "gone.test", 502).await,
        "{:?}",
        log_entries(&file, "gone.test")
    );
    assert_eq!(admin.get_json(&foreign_path).await, foreign);

    // Moved: one write, of the logger alone.
    let moved = AccessLog {
        file: dir.path().join("moved.log").to_str().unwrap().to_string(),
        ..log.clone()
    };
    let before = caddy.writes();
    caddy.ensure_access_log(&name, Some(&moved)).await.unwrap();
    assert_eq!(caddy.writes(), before + 1);

    // Off: the server's `logs`, then codeb's logger; the foreign logger is as it was.
    caddy.ensure_access_log(&name, None).await.unwrap();
    assert_eq!(caddy.writes(), before + 3);
    assert_eq!(admin.get_json(&logger_path).await, Value::Null);
    assert_eq!(
        admin.get_json(&format!("{server_path}/logs")).await,
        Value::Null
    );
    assert_eq!(
        caddy.observe(&name).await.unwrap().access_log,
        ObservedAccessLog::Absent
    );
    caddy.ensure_access_log(&name, None).await.unwrap();
    assert_eq!(caddy.writes(), before + 3, "nothing left to remove");
    assert_eq!(admin.get_json(&foreign_path).await, foreign);

    admin.delete(&foreign_path).await;
    admin.delete(&server_path).await;
}
