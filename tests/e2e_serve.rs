//! `codeb serve` end to end: its HTTP API over real HTTP (reqwest, raw sockets for a slow client)
//! against the real Podman, Caddy and PowerDNS. A deploy through `/api/tool` goes live through
//! Caddy, promote, rollback, logs and posted manifests work; the OpenAPI document is valid and
//! lists every route; every route and tool × role × bad key answers as the permission table
//! says; a secret env value shows up nowhere; bad input, floods and slow clients are refused
//! without holding anyone else back; concurrent deploys and SIGTERM leave a consistent state.
//!
//! Every wait is a bounded poll. Each daemon runs as a child that is killed when its guard drops.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use codeb::api::{ROUTES, TOOLS};
use codeb::auth::{allows, Role};
use common::*;
use serde_json::{json, Value};

const START: Duration = Duration::from_secs(20);
const APP_V1: &str = "localhost/codeb-test-app:v1";
const APP_V2: &str = "localhost/codeb-test-app:v2";
const APP_V3: &str = "localhost/codeb-test-app:v3";
const UNHEALTHY: &str = "localhost/codeb-test-unhealthy:v1";

/// One HTTP answer.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {self:?}"))
    }

    /// The `error.code` of a JSON error answer.
    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not a JSON error: {self:?}"))
            .to_string()
    }
}

/// A real HTTP client of one `codeb serve`, which keeps every body it was answered (the canary
/// test searches them all).
struct Client {
    base: String,
    http: reqwest::blocking::Client,
    seen: Mutex<Vec<String>>,
}

impl Client {
    fn new(serve: &ServeProcess) -> Client {
        Client::from_source(serve, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// A client whose connections come from `source` (any 127.0.0.0/8 address reaches a
    /// loopback listener): the daemon limits failed keys per source address.
    fn from_source(serve: &ServeProcess, source: IpAddr) -> Client {
        Client {
            base: serve.url(""),
            http: reqwest::blocking::Client::builder()
                .local_address(source)
                // A deploy waits on health checks: 15 s at most in these manifests.
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            seen: Mutex::new(Vec::new()),
        }
    }

    /// `method path` with `X-API-Key: key` and a body of `content_type`.
    fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<(&str, String)>,
    ) -> Answer {
        self.try_send(method, path, key, body)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// As [`Client::send`]; `Err` when no answer came (the connection failed or was closed).
    fn try_send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<(&str, String)>,
    ) -> Result<Answer, String> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.header("X-API-Key", key);
        }
        if let Some((content_type, body)) = body {
            req = req.header("Content-Type", content_type).body(body);
        }
        let res = req.send().map_err(|e| format!("{e:?}"))?;
        let answer = Answer {
            status: res.status().as_u16(),
            body: res.text().map_err(|e| format!("{e:?}"))?,
        };
        self.seen.lock().unwrap().push(answer.body.clone());
        Ok(answer)
    }

    fn get(&self, path: &str, key: Option<&str>) -> Answer {
        self.send("GET", path, key, None)
    }

    fn post_json(&self, path: &str, key: Option<&str>, body: &Value) -> Answer {
        self.send(
            "POST",
            path,
            key,
            Some(("application/json", body.to_string())),
        )
    }

    fn post_yaml(&self, path: &str, key: Option<&str>, yaml: &str) -> Answer {
        self.send("POST", path, key, Some(("application/yaml", yaml.into())))
    }

    /// `POST /api/tool` with this body.
    fn tool(&self, key: &str, body: Value) -> Answer {
        self.post_json("/api/tool", Some(key), &body)
    }

    /// Every body answered so far, joined.
    fn seen(&self) -> String {
        self.seen.lock().unwrap().join("\n")
    }
}

/// The slot rows of `project` from `GET /api/v1/slots`.
fn slots_of(api: &Client, key: &str, project: &str) -> Vec<Value> {
    let slots = api.get("/api/v1/slots", Some(key));
    assert_eq!(slots.status, 200, "{slots:?}");
    slots
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["project"] == project)
        .cloned()
        .collect()
}

/// The production environment of `project` from `GET /api/v1/projects/{project}`.
fn environment(api: &Client, key: &str, project: &str) -> Value {
    let describe = api.get(&format!("/api/v1/projects/{project}"), Some(key));
    assert_eq!(describe.status, 200, "{describe:?}");
    describe.json()["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["environment"] == "production")
        .cloned()
        .unwrap_or_else(|| panic!("no production environment: {describe:?}"))
}

/// A project with these env values.
fn with_env<'a>(name: &'a str, image: &'a str, env: &'a [(&'a str, &'a str)]) -> ProjectYaml<'a> {
    let mut p = ProjectYaml::new(name, image);
    p.env = env;
    p
}

/// A `codeb serve` of `name` (manual promotion, v1) with `--resync resync`, once v1 serves.
fn serving_v1(sb: &Sandbox, name: &str, resync: &str) -> ServeProcess {
    let dir = sb.save(&[manual(name, APP_V1)]);
    let serve = sb.serve(&dir, &["--resync", resync]);
    let host = format!("{name}.codeb.test");
    assert!(
        eventually(START, || serves(sb, &host, "v1")),
        "{}",
        serve.log()
    );
    serve
}

#[test]
fn the_tool_interface_deploys_promotes_rolls_back_and_tails_logs_through_caddy() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("stool");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let host = format!("{name}.codeb.test");
    let serve = serving_v1(&sb, &name, "2s");
    let api = Client::new(&serve);
    let health = api.get("/health", None);
    assert_eq!(health.status, 200, "no key needed: {health:?}");
    assert_eq!(health.json()["version"], env!("CARGO_PKG_VERSION"));

    let key = sb.key(&["--role", "developer", "--name", "ci-bot"]);
    let id = sb.key_id("ci-bot");
    let status = api.tool(&key, json!({"tool": "status"}));
    assert_eq!(status.status, 200, "{status:?}");
    assert_eq!(status.json()["ok"], true);
    assert!(
        status.json()["projects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["project"] == name.as_str()),
        "{status:?}"
    );
    // The same key as a bearer token.
    let bearer = api
        .http
        .post(serve.url("/api/tool"))
        .bearer_auth(&key)
        .json(&json!({"tool": "status", "project": name}))
        .send()
        .unwrap();
    assert_eq!(bearer.status(), 200);

    // A deploy through the API: manual promotion, so v2 is on the preview and `/` keeps v1.
    let deploy = api.tool(
        &key,
        json!({"tool": "deploy", "project": name, "image": APP_V2}),
    );
    assert_eq!(deploy.status, 200, "{deploy:?}\n{}", serve.log());
    assert_eq!(deploy.json()["ok"], true, "{deploy:?}");
    assert_eq!(deploy.json()["converged"], true, "{deploy:?}");
    let slots = api.tool(&key, json!({"tool": "slots", "project": name}));
    assert_eq!(slots.status, 200, "{slots:?}");
    let rows = slots.json()["slots"].as_array().unwrap().clone();
    assert!(
        rows.iter().all(|s| s["project"] == name.as_str()),
        "{slots:?}"
    );
    let v2 = rows
        .iter()
        .find(|s| s["image"] == APP_V2)
        .unwrap_or_else(|| panic!("v2 is in a slot: {slots:?}"));
    assert_eq!(v2["state"], "deployed", "{slots:?}");
    let preview = v2["previewUrl"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    assert!(
        serves(&sb, &preview, "v2"),
        "the preview {preview} serves v2"
    );
    assert!(serves(&sb, &host, "v1"), "manual promotion waits");

    // Who set the release override: the key's id and name.
    let env = environment(&api, &key, &name);
    let over = &env["releaseOverride"];
    assert_eq!(over["image"], APP_V2, "{env}");
    assert_eq!(over["manifestImage"], APP_V1, "{env}");
    let by = over["by"].as_str().unwrap();
    assert!(by.contains(&id) && by.contains("ci-bot"), "{env}");

    let promote = api.tool(&key, json!({"tool": "promote", "project": name}));
    assert_eq!(promote.status, 200, "{promote:?}");
    assert_eq!(promote.json()["ok"], true, "{promote:?}");
    assert!(serves(&sb, &host, "v2"), "live at once after the promote");
    // Not undone by the loop's resyncs.
    assert!(serve.wait_sweeps(2, Duration::from_secs(10)));
    assert!(serves(&sb, &host, "v2"), "{}", serve.log());

    let rollback = api.tool(&key, json!({"tool": "rollback", "project": name}));
    assert_eq!(rollback.status, 200, "{rollback:?}");
    assert_eq!(rollback.json()["ok"], true, "{rollback:?}");
    assert!(serves(&sb, &host, "v1"), "back to v1 at once");

    // Logs: the active slot's tail, at most `lines` lines, and no more than 1000 ever.
    let logs = api.tool(&key, json!({"tool": "logs", "project": name, "lines": 1}));
    assert_eq!(logs.status, 200, "{logs:?}");
    let lines = logs.json()["lines"].as_array().unwrap().clone();
    assert_eq!(lines.len(), 1, "{logs:?}");
    assert!(
        lines[0].as_str().unwrap().contains("codeb-test-app v1"),
        "{logs:?}"
    );
    let rest = api.get(
        &format!("/api/v1/projects/{name}/environments/production/logs?lines=1001"),
        Some(&key),
    );
    assert_eq!(rest.status, 400, "{rest:?}");
    let rest = api.get(
        &format!("/api/v1/projects/{name}/environments/production/logs?lines=0"),
        Some(&key),
    );
    assert_eq!(rest.status, 400, "{rest:?}");
}

/// The daemon's count of switches that observed their host `observation` (`warm` or `fresh`).
fn switch_observations(api: &Client, key: &str, observation: &str) -> u64 {
    let metrics = api.get("/metrics", Some(key));
    assert_eq!(metrics.status, 200, "{metrics:?}");
    let sample = format!("codeb_switch_observations_total{{observation=\"{observation}\"}} ");
    metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix(&sample))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Promotes or rolls back `name` through the API; returns the image now served.
fn switch_once(api: &Client, key: &str, sb: &Sandbox, name: &str, rollback: bool) -> &'static str {
    let tool = if rollback { "rollback" } else { "promote" };
    let answer = api.tool(key, json!({"tool": tool, "project": name}));
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["ok"], true, "{answer:?}");
    let host = format!("{name}.codeb.test");
    let body = if rollback { "v1" } else { "v2" };
    assert!(serves(sb, &host, body), "{tool} serves {body} at once");
    body
}

#[test]
fn switches_plan_from_the_last_switchs_observation_until_podman_reports_a_change() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("swarm");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let serve = serving_v1(&sb, &name, "1h");
    let api = Client::new(&serve);
    let key = sb.key(&["--role", "developer", "--name", "switcher"]);
    let deploy = api.tool(
        &key,
        json!({"tool": "deploy", "project": name, "image": APP_V2}),
    );
    assert_eq!(deploy.json()["converged"], true, "{deploy:?}");

    // The first switch observes afresh. Podman reports the deploy's container events up to a
    // few hundred ms late, and each makes the next switch fresh too: switch until one is warm.
    let fresh = switch_observations(&api, &key, "fresh");
    let warm = switch_observations(&api, &key, "warm");
    let mut rollback = false;
    let became_warm = eventually(Duration::from_secs(15), || {
        switch_once(&api, &key, &sb, &name, rollback);
        rollback = !rollback;
        switch_observations(&api, &key, "warm") > warm
    });
    assert!(
        became_warm,
        "no switch reused an observation\n{}",
        serve.log()
    );
    assert!(switch_observations(&api, &key, "fresh") > fresh);
    // Warm switches move traffic as fresh ones do, both ways.
    for _ in 0..4 {
        switch_once(&api, &key, &sb, &name, rollback);
        rollback = !rollback;
    }

    // A change Podman reports: the grace slot's container is stopped by hand. Its `die` event
    // reaches the daemon (which starts it again: the grace slot is kept running), and the next
    // switch observes afresh.
    let slots = slots_of(&api, &key, &name);
    let grace = slots
        .iter()
        .find(|s| s["state"] == "grace")
        .unwrap_or_else(|| panic!("a grace slot: {slots:?}"));
    let container = format!("{name}-production-{}", grace["slot"].as_str().unwrap());
    let warm = switch_observations(&api, &key, "warm");
    let fresh = switch_observations(&api, &key, "fresh");
    let started = |c: &str| {
        let out = common::podman(&[
            "inspect",
            "-f",
            "{{.State.Running}} {{.State.StartedAt}}",
            c,
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = started(&container);
    // The daemon may start it again before `podman stop` returns; either way it stopped.
    let _ = common::podman(&["stop", "-t", "0", &container]);
    let restarted = eventually(START, || {
        let now = started(&container);
        now.starts_with("true") && now != before
    });
    assert!(
        restarted,
        "the daemon starts the grace slot again\n{}",
        serve.log()
    );
    switch_once(&api, &key, &sb, &name, rollback);
    rollback = !rollback;
    assert_eq!(
        switch_observations(&api, &key, "warm"),
        warm,
        "{}",
        serve.log()
    );
    assert_eq!(switch_observations(&api, &key, "fresh"), fresh + 1);

    // Another codeb takes the host over (its owner mark is a Podman volume, whose events move the
    // host's epoch too): the daemon's switches observe afresh and are refused, naming the owner.
    let intruder = Sandbox::new();
    let as_intruder = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_codeb"))
            .arg("--state-dir")
            .arg(intruder.state())
            .args(args)
            .env("CODEB_INSTANCE", "intruder")
            .output()
            .unwrap()
    };
    let manifests = intruder.write(&[manual(&name, APP_V1)]);
    // Refused (the host is this daemon's), but it records the Host it names.
    let out = as_intruder(&["apply", "-f", manifests.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let out = as_intruder(&["host", "adopt", "local"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let refused = eventually(START, || {
        let tool = if rollback { "rollback" } else { "promote" };
        let answer = api.tool(&key, json!({"tool": tool, "project": name}));
        if answer.status == 200 {
            rollback = !rollback;
        }
        answer.status == 503 && answer.body.contains("owned by another codeb, intruder")
    });
    assert!(refused, "{}", serve.log());
    // Adopted back through the daemon's socket; switches work again.
    let out = sb.codeb(&["host", "adopt", "local"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    switch_once(&api, &key, &sb, &name, rollback);
}

#[test]
fn a_manifest_change_of_the_image_supersedes_a_release_override_set_through_the_api() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("ssuper");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let serve = serving_v1(&sb, &name, "2s");
    let api = Client::new(&serve);
    let key = sb.key(&["--role", "developer", "--name", "ci-bot"]);
    let deploy = api.tool(
        &key,
        json!({"tool": "deploy", "project": name, "image": APP_V2}),
    );
    assert_eq!(deploy.json()["converged"], true, "{deploy:?}");
    assert_eq!(
        environment(&api, &key, &name)["releaseOverride"]["image"],
        APP_V2
    );
    let has = |env: &Value, image: &str| {
        env["slots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["image"] == image)
    };

    // The manifests now name v3: v3 is rolled out, and the override is gone.
    sb.save(&[manual(&name, APP_V3)]);
    assert!(
        eventually(Duration::from_secs(20), || has(
            &environment(&api, &key, &name),
            APP_V3
        )),
        "{}",
        serve.log()
    );
    assert!(serve.wait_sweeps(1, Duration::from_secs(10)));
    let env = environment(&api, &key, &name);
    assert!(
        env["releaseOverride"].is_null(),
        "the manifests' v3 is deployed, yet describe still shows the override: {env}"
    );

    // And the manifests back at v1 (the image the override once overrode) deploy no v2.
    sb.save(&[manual(&name, APP_V1)]);
    assert!(serve.wait_sweeps(3, Duration::from_secs(15)));
    let env = environment(&api, &key, &name);
    assert!(
        !has(&env, APP_V2),
        "a superseded override came back into force: {env}"
    );
}

#[test]
fn a_posted_manifest_is_applied_and_a_dry_run_changes_nothing() {
    let _l = lock();
    let sb = Sandbox::new();
    let watched = unique("swatched");
    let posted = unique("sposted");
    let _cleanup = Cleanup(&sb, vec![posted.clone(), watched.clone()]);
    let host = format!("{posted}.codeb.test");
    let dir = sb.save(&[ProjectYaml::new(&watched, APP_V1)]);
    let serve = sb.serve(&dir, &[]);
    let api = Client::new(&serve);
    let admin = sb.key(&["--role", "admin", "--name", "ops"]);

    let yaml = manifests(&sb, &[ProjectYaml::new(&posted, APP_V1)]);
    let apply = api.post_yaml("/api/v1/apply", Some(&admin), &yaml);
    assert_eq!(apply.status, 200, "{apply:?}\n{}", serve.log());
    assert_eq!(apply.json()["dryRun"], false, "{apply:?}");
    assert_eq!(apply.json()["outcome"]["converged"], true, "{apply:?}");
    assert!(serves(&sb, &host, "v1"), "{apply:?}");

    // The same manifests with v2, as a dry run and as a plan: steps shown, nothing changed.
    let before = slots_of(&api, &admin, &posted);
    let changed = manifests(&sb, &[ProjectYaml::new(&posted, APP_V2)]);
    for path in ["/api/v1/apply?dryRun=true", "/api/v1/plan"] {
        let dry = api.post_yaml(path, Some(&admin), &changed);
        assert_eq!(dry.status, 200, "{path}: {dry:?}");
        let plan = if path.contains("apply") {
            assert_eq!(dry.json()["dryRun"], true);
            assert!(dry.json()["outcome"].is_null(), "{dry:?}");
            dry.json()["plan"].clone()
        } else {
            dry.json()
        };
        assert!(
            !plan["steps"].as_array().unwrap().is_empty(),
            "{path}: the plan has the rollout's steps: {dry:?}"
        );
    }
    assert_eq!(slots_of(&api, &admin, &posted), before);
    assert!(serves(&sb, &host, "v1"));
    assert!(containers(&posted)
        .iter()
        .all(|(n, _, _)| n.ends_with("-blue")));

    // The JSON form of the same request is taken too.
    let json_form = api.post_json(
        "/api/v1/apply?dryRun=true",
        Some(&admin),
        &json!({"manifests": [{"name": "posted.yaml", "text": changed}]}),
    );
    assert_eq!(json_form.status, 200, "{json_form:?}");
    // A broken manifest: 400 with the line and column, nothing applied.
    let broken = api.post_yaml(
        "/api/v1/apply",
        Some(&admin),
        &changed.replace("      port: 8080", "      prot: 8080"),
    );
    assert_eq!(broken.status, 400, "{broken:?}");
    assert_eq!(broken.code(), "invalid");
    let message = broken.json()["error"]["message"].to_string();
    assert!(
        message.contains("<request>:") && message.contains("prot"),
        "{broken:?}"
    );
    assert_eq!(slots_of(&api, &admin, &posted), before);
    assert!(serves(&sb, &host, "v1"));
}

#[test]
fn the_openapi_document_is_valid_openapi_3_1_and_lists_every_route() {
    let _l = lock();
    let sb = Sandbox::new();
    let dir = sb.save(&[]);
    let serve = sb.serve(&dir, &[]);
    let api = Client::new(&serve);
    let doc = api.get("/api/v1/openapi.json", None);
    assert_eq!(doc.status, 200, "no key needed: {doc:?}");
    let spec = doc.json();
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        spec["openapi"]
    );
    let file = sb.dir.path().join("openapi.json");
    std::fs::write(&file, &doc.body).unwrap();
    let check = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 runs (deploy/test.sh installs openapi-spec-validator)");
    assert!(check.status.success(), "{}", text(&check));

    let mut missing = Vec::new();
    for route in ROUTES {
        let op = &spec["paths"][route.path][route.method.to_lowercase()];
        if !op.is_object() {
            missing.push(format!("{} {}", route.method, route.path));
        } else if route.permission.is_some() && route.path != "/api/tool" {
            assert!(
                op["security"].is_array(),
                "{} {} needs a key but declares no security",
                route.method,
                route.path
            );
        }
    }
    assert!(missing.is_empty(), "not in the document: {missing:?}");
    // And the document lists nothing that is not served.
    let methods = ["get", "post", "put", "patch", "delete"];
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in methods.iter().filter(|m| item.get(**m).is_some()) {
            assert!(
                ROUTES
                    .iter()
                    .any(|r| r.path == path && r.method.eq_ignore_ascii_case(method)),
                "{method} {path} is documented but not in ROUTES"
            );
        }
    }
}

/// Clients for requests whose key fails: the daemon answers at most 20 of them at once per source
/// address (then 10 a second) before it answers 429, so every 15 requests come from another
/// loopback address.
struct BadKeys<'a> {
    serve: &'a ServeProcess,
    client: Client,
    used: usize,
    next: u32,
}

impl<'a> BadKeys<'a> {
    fn new(serve: &'a ServeProcess) -> Self {
        BadKeys {
            serve,
            client: Client::new(serve),
            used: usize::MAX,
            next: 0,
        }
    }

    fn client(&mut self) -> &Client {
        if self.used >= 15 {
            self.next += 1;
            let ip = Ipv4Addr::new(127, 77, (self.next >> 8) as u8, (self.next & 0xff) as u8);
            self.client = Client::from_source(self.serve, IpAddr::V4(ip));
            self.used = 0;
        }
        self.used += 1;
        &self.client
    }
}

/// One request of the permission matrix.
struct Probe {
    /// `GET /api/v1/projects/{project}`, `tool deploy`.
    name: String,
    method: &'static str,
    path: String,
    body: Option<(&'static str, String)>,
    permission: Option<codeb::auth::Permission>,
}

#[test]
fn every_route_and_tool_answers_each_role_and_each_bad_key_as_the_permission_table_says() {
    let _l = lock();
    let sb = Sandbox::new();
    let dir = sb.save(&[]);
    let serve = sb.serve(&dir, &[]);
    let api = Client::new(&serve);
    let mut bad = BadKeys::new(&serve);
    // A project that is never recorded: every request that is allowed is refused with 400 or
    // 404 and changes nothing.
    let nowhere = unique("snowhere");
    let mine = unique("smine");

    let valid: Vec<(Role, String)> = Role::ALL
        .iter()
        .map(|r| (*r, sb.key(&["--role", r.as_str(), "--name", r.as_str()])))
        .collect();
    let mut keys: Vec<(String, String)> = vec![
        ("malformed".into(), "not-a-codeb-key".into()),
        (
            "unknown".into(),
            // Well-formed (44 lowercase hex digits), never issued.
            format!("codeb_admin_{:044x}", 0x0123_4567_89ab_cdef_u128),
        ),
    ];
    // Expired (created with 1 s to live) and revoked keys of every role.
    for role in Role::ALL {
        let expired = sb.key(&["--role", role.as_str(), "--expires", "1s"]);
        let revoked_name = format!("revoked-{role}");
        let revoked = sb.key(&["--role", role.as_str(), "--name", &revoked_name]);
        assert_eq!(api.get("/api/v1/projects", Some(&revoked)).status, 200);
        let out = sb.codeb(&["key", "revoke", &sb.key_id(&revoked_name)]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        keys.push((format!("expired {role}"), expired));
        keys.push((format!("revoked {role}"), revoked));
    }
    for (what, key) in keys.iter().filter(|(w, _)| w.starts_with("expired")) {
        assert!(
            eventually(Duration::from_secs(10), || bad
                .client()
                .get("/api/v1/projects", Some(key))
                .status
                == 401),
            "the {what} key is refused once its second is over"
        );
    }

    // The requests: every route of the table with dummy parameters, every tool.
    let post_body = json!({"image": APP_V1}).to_string();
    let mut requests: Vec<Probe> = ROUTES
        .iter()
        .filter(|r| r.path != "/api/tool")
        .map(|r| {
            let path = r
                .path
                .replace("{project}", &nowhere)
                .replace("{environment}", "production");
            // Deploy reads `{"image"}`; plan and apply read it as YAML, which is no manifest.
            let body = (r.method == "POST").then(|| ("text/plain", post_body.clone()));
            Probe {
                name: format!("{} {}", r.method, r.path),
                method: r.method,
                path,
                body,
                permission: r.permission,
            }
        })
        .collect();
    for (tool, permission) in TOOLS {
        let body =
            json!({"tool": tool, "project": nowhere, "image": APP_V1, "lines": 1}).to_string();
        requests.push(Probe {
            name: format!("tool {tool}"),
            method: "POST",
            path: "/api/tool".into(),
            body: Some(("application/json", body)),
            permission: Some(*permission),
        });
    }
    // A route that needs no key is a decision made here too: a new route added to the table
    // without a permission fails until it is named below.
    let open: Vec<String> = ROUTES
        .iter()
        .filter(|r| r.permission.is_none())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        open,
        ["GET /health", "GET /api/v1/openapi.json", "POST /api/tool"],
        "routes without a permission"
    );

    let mut wrong = Vec::new();
    let mut unauthorized: Option<String> = None;
    for Probe {
        name,
        method,
        path,
        body,
        permission,
    } in &requests
    {
        // No key, and every key that does not authenticate.
        let no_key = bad.client().send(method, path, None, body.clone());
        let mut tries: Vec<(&str, Answer)> = vec![("no key", no_key)];
        for (what, key) in &keys {
            tries.push((
                what,
                bad.client().send(method, path, Some(key), body.clone()),
            ));
        }
        for (what, answer) in tries {
            match permission {
                None if answer.status >= 400 => {
                    wrong.push(format!("{name} with {what}: needs no key, got {answer:?}"))
                }
                None => {}
                Some(_) if answer.status != 401 => {
                    wrong.push(format!("{name} with {what}: want 401, got {answer:?}"))
                }
                Some(_) => match &unauthorized {
                    None => unauthorized = Some(answer.body),
                    Some(first) if *first != answer.body => wrong.push(format!(
                        "{name} with {what}: a 401 unlike the others: {} vs {first}",
                        answer.body
                    )),
                    Some(_) => {}
                },
            }
        }
        // Every role's valid key: 403 exactly when the role lacks the permission.
        for (role, key) in &valid {
            let answer = api.send(method, path, Some(key), body.clone());
            let Some(p) = permission else {
                if answer.status >= 400 {
                    wrong.push(format!("{name} as {role}: got {answer:?}"));
                }
                continue;
            };
            let denied = !allows(*role, *p);
            let fallback = answer.status == 404 && answer.body.contains("no such route");
            if denied && answer.status != 403 {
                wrong.push(format!("{name} as {role}: want 403, got {answer:?}"));
            } else if denied && !answer.body.contains(p.as_str()) {
                wrong.push(format!(
                    "{name} as {role}: the 403 names no permission {p}: {answer:?}"
                ));
            } else if !denied && matches!(answer.status, 401 | 403 | 405 | 429 | 500) {
                wrong.push(format!("{name} as {role}: allowed, got {answer:?}"));
            } else if fallback {
                wrong.push(format!("{name}: not served: {answer:?}"));
            }
        }
    }
    let unauthorized = unauthorized.expect("some 401");
    assert!(
        !unauthorized.contains("expired") && !unauthorized.contains("revoked"),
        "{unauthorized}"
    );

    // A developer limited to one project: 403 on another one, listings filtered.
    let scoped = sb.key(&[
        "--role",
        "developer",
        "--project",
        &mine,
        "--name",
        "scoped",
    ]);
    for (target, want_forbidden) in [(&nowhere, true), (&mine, false)] {
        for path in [
            format!("/api/v1/projects/{target}/environments/production/promote"),
            format!("/api/v1/projects/{target}/environments/production/deploy"),
        ] {
            let answer = api.send(
                "POST",
                &path,
                Some(&scoped),
                Some(("application/json", post_body.clone())),
            );
            if want_forbidden != (answer.status == 403) {
                wrong.push(format!("scoped developer, {path}: got {answer:?}"));
            }
        }
        let tool = api.tool(
            &scoped,
            json!({"tool": "deploy", "project": target, "image": APP_V1}),
        );
        if want_forbidden != (tool.status == 403) {
            wrong.push(format!(
                "scoped developer, deploy tool on {target}: got {tool:?}"
            ));
        }
    }
    let describe = api.get(&format!("/api/v1/projects/{nowhere}"), Some(&scoped));
    if describe.status != 403 || !describe.body.contains("outside") {
        wrong.push(format!(
            "scoped developer, describe another project: {describe:?}"
        ));
    }
    let listing = api.get("/api/v1/projects", Some(&scoped));
    if listing.status != 200 {
        wrong.push(format!("scoped developer, list projects: {listing:?}"));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Refusals are audited; the admin reads them.
    let admin = &valid.iter().find(|(r, _)| *r == Role::Admin).unwrap().1;
    let audit = api.get("/api/v1/audit?limit=10000", Some(admin));
    assert_eq!(audit.status, 200, "{audit:?}");
    let entries = audit.json();
    let kinds: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["outcome"]["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"rejected") && kinds.contains(&"denied"),
        "{kinds:?}"
    );
    let every_key = keys
        .iter()
        .map(|(_, k)| k)
        .chain(valid.iter().map(|(_, k)| k));
    for key in every_key {
        assert!(!audit.body.contains(key.as_str()), "the audit holds no key");
    }
}

#[test]
fn a_secret_env_value_appears_in_no_answer_metric_log_line_or_audit_record() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("scanary");
    let other = unique("scanary2");
    let _cleanup = Cleanup(&sb, vec![other.clone(), name.clone()]);
    let host = format!("{name}.codeb.test");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let canary = format!("canary-{nanos:x}");
    // Another value of the same variable, posted only.
    let posted_canary = format!("canary-posted-{nanos:x}");
    let watched_env = [("SECRET_CANARY", canary.as_str())];
    let posted_env = [("SECRET_CANARY", posted_canary.as_str())];
    let dir = sb.save(&[with_env(&name, APP_V1, &watched_env)]);
    let serve = sb.serve(&dir, &["--resync", "2s"]);
    assert!(
        eventually(START, || serves(&sb, &host, "v1")),
        "{}",
        serve.log()
    );
    let api = Client::new(&serve);
    let admin = sb.key(&["--role", "admin", "--name", "ops"]);
    let dev = sb.key(&["--role", "developer", "--name", "dev"]);

    // A deploy through the API of the project whose release carries the secret.
    let deploy = api.tool(
        &dev,
        json!({"tool": "deploy", "project": name, "image": APP_V2}),
    );
    assert_eq!(deploy.status, 200, "{deploy:?}");
    assert_eq!(deploy.json()["converged"], true, "{deploy:?}");
    assert!(serves(&sb, &host, "v2"));

    // Every read, as every role that may make it.
    for key in [&admin, &dev] {
        for path in [
            "/health".to_string(),
            "/metrics".to_string(),
            "/api/v1/openapi.json".to_string(),
            "/api/v1/projects".to_string(),
            format!("/api/v1/projects/{name}"),
            "/api/v1/slots".to_string(),
            "/api/v1/hosts".to_string(),
            format!("/api/v1/projects/{name}/environments/production/logs"),
            "/api/v1/audit?limit=10000".to_string(),
        ] {
            let answer = api.get(&path, Some(key));
            assert_eq!(answer.status, 200, "{path}: {answer:?}");
        }
        for tool in ["health_check", "status", "slots", "logs"] {
            let answer = api.tool(key, json!({"tool": tool, "project": name}));
            assert_eq!(answer.status, 200, "{tool}: {answer:?}");
        }
    }
    let describe = environment(&api, &admin, &name);
    assert!(
        describe.to_string().contains("SECRET_CANARY"),
        "the variable's name is shown: {describe}"
    );

    // Manifests that carry a secret, posted: a plan and a dry run that change it, an apply of
    // another project, and manifests whose error is in the secret's own line.
    let changed = manifests(&sb, &[with_env(&name, APP_V2, &posted_env)]);
    for path in ["/api/v1/plan", "/api/v1/apply?dryRun=true"] {
        let answer = api.post_yaml(path, Some(&admin), &changed);
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
    }
    let applied = api.post_yaml(
        "/api/v1/apply",
        Some(&admin),
        &manifests(&sb, &[with_env(&other, APP_V1, &posted_env)]),
    );
    assert_eq!(applied.status, 200, "{applied:?}");
    let mut errors = vec![
        changed.replace(
            &format!("SECRET_CANARY: \"{posted_canary}\""),
            &format!("SECRET_CANARY: [\"{posted_canary}\"]"),
        ),
        changed.replace(
            &format!("SECRET_CANARY: \"{posted_canary}\""),
            &format!("SECRET_CANARY: \"{posted_canary}\"\n        BAD NAME: \"{posted_canary}\""),
        ),
        changed.replace(
            &format!("SECRET_CANARY: \"{posted_canary}\""),
            &format!("SECRET_CANARY: \"{posted_canary}"),
        ),
    ];
    errors.push(format!("{changed}\n  oops: \"{posted_canary}\"\n"));
    for text in &errors {
        assert!(text.contains(&posted_canary));
        let answer = api.post_yaml("/api/v1/apply", Some(&admin), text);
        assert_eq!(answer.status, 400, "{answer:?}");
    }
    // Presented as a key (a secret too): refused, never echoed or recorded.
    let as_key = api.get("/api/v1/projects", Some(&posted_canary));
    assert_eq!(as_key.status, 401, "{as_key:?}");

    let seen = api.seen();
    assert!(!seen.is_empty());
    for secret in [&canary, &posted_canary] {
        assert!(
            !seen.contains(secret.as_str()),
            "an API answer holds {secret}:\n{seen}"
        );
        let metrics = api.get("/metrics", Some(&admin)).body;
        assert!(!metrics.contains(secret.as_str()), "{metrics}");
        let log = serve.log();
        assert!(
            !log.contains(secret.as_str()),
            "serve's log holds {secret}:\n{log}"
        );
        let audit = sb.codeb(&["audit", "--limit", "10000", "-o", "json"]);
        assert_eq!(audit.status.code(), Some(0), "{}", text(&audit));
        assert!(
            !String::from_utf8_lossy(&audit.stdout).contains(secret.as_str()),
            "the audit holds {secret}: {}",
            text(&audit)
        );
    }
}

#[test]
fn bad_input_gets_a_json_error_with_the_right_status() {
    let _l = lock();
    let sb = Sandbox::new();
    let dir = sb.save(&[]);
    let serve = sb.serve(&dir, &[]);
    let api = Client::new(&serve);
    let key = sb.key(&["--role", "admin", "--name", "ops"]);
    let raw = |body: &str| {
        api.send(
            "POST",
            "/api/tool",
            Some(&key),
            Some(("application/json", body.into())),
        )
    };

    let malformed = raw("{\"tool\": \"status\"");
    assert_eq!(
        (malformed.status, malformed.code().as_str()),
        (400, "invalid"),
        "{malformed:?}"
    );
    let wrong_type = raw("{\"tool\": 5}");
    assert_eq!(
        (wrong_type.status, wrong_type.code().as_str()),
        (400, "invalid"),
        "{wrong_type:?}"
    );
    let missing = raw("{}");
    assert_eq!(missing.status, 400, "{missing:?}");
    let unknown = raw("{\"tool\": \"drop_database\"}");
    assert_eq!(
        (unknown.status, unknown.code().as_str()),
        (400, "invalid"),
        "{unknown:?}"
    );
    for (tool, _) in TOOLS {
        assert!(
            unknown.body.contains(tool),
            "the known tools are listed: {unknown:?}"
        );
    }
    let no_project = raw("{\"tool\": \"deploy\", \"image\": \"x\"}");
    assert_eq!(no_project.status, 400, "{no_project:?}");

    // 5 MiB announced, on a JSON route and on a manifest route: 413 once the body passes the
    // 4 MiB limit. Sent from a socket that reads the answer as soon as it comes: the daemon
    // answers without reading the rest of the body and closes the connection, so a client that
    // insists on writing all 5 MiB first (reqwest) now and then gets a broken pipe instead of
    // the answer (see `a_413_answer_tells_a_keep_alive_client_that_the_connection_closes`).
    for (path, content_type) in [
        ("/api/tool", "application/json"),
        ("/api/v1/apply", "application/yaml"),
    ] {
        let (head, body) = over_the_limit(&serve, path, &key, content_type);
        assert!(head.starts_with("http/1.1 413"), "{path}: {head}{body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["code"], "too-large", "{body}");
    }

    let route = api.get("/api/v2/nothing", Some(&key));
    assert_eq!(
        (route.status, route.code().as_str()),
        (404, "not-found"),
        "{route:?}"
    );
    let route = api.get("/api/v2/nothing", None);
    assert_eq!(route.status, 404, "{route:?}");
    // Still serving.
    assert_eq!(api.tool(&key, json!({"tool": "status"})).status, 200);
}

#[test]
fn a_known_route_asked_with_the_wrong_method_gets_a_json_error() {
    let _l = lock();
    let sb = Sandbox::new();
    let dir = sb.save(&[]);
    let serve = sb.serve(&dir, &[]);
    let api = Client::new(&serve);
    let key = sb.key(&["--role", "admin", "--name", "ops"]);
    let wrong = api.get("/api/tool", Some(&key));
    assert_eq!(wrong.status, 405, "{wrong:?}");
    assert!(
        serde_json::from_str::<Value>(&wrong.body).is_ok_and(|v| v["error"]["code"].is_string()),
        "errors are JSON {{\"error\": {{\"code\", \"message\"}}}}: {wrong:?}"
    );
}

#[test]
fn a_thousand_bad_keys_are_rate_limited_while_a_valid_key_is_served_and_memory_stays_flat() {
    let _l = lock();
    let sb = Sandbox::new();
    let dir = sb.save(&[]);
    let serve = sb.serve(&dir, &[]);
    let key = sb.key(&["--role", "viewer", "--name", "dashboard"]);
    let api = Client::new(&serve);
    // Warm up: the allocator's arenas, the connection pool, the limiter's first entries.
    for _ in 0..50 {
        assert_eq!(api.get("/api/v1/projects", Some(&key)).status, 200);
    }
    let before = serve.rss_kib();

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (statuses, served) = std::thread::scope(|s| {
        // Meanwhile, from the same address, a valid key every 20 ms.
        let valid = s.spawn(|| {
            let client = Client::new(&serve);
            let mut got = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                got.push(client.get("/api/v1/projects", Some(&key)).status);
                std::thread::sleep(Duration::from_millis(20));
            }
            got
        });
        let flood = Client::new(&serve);
        let mut statuses = Vec::new();
        for i in 0..1000u32 {
            let bad = format!("codeb_admin_{:044x}", u128::from(i) * 7919 + 1);
            let answer = flood.get("/api/v1/projects", Some(&bad));
            if answer.status == 429 {
                assert_eq!(answer.code(), "rate-limited");
            }
            statuses.push(answer.status);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (statuses, valid.join().unwrap())
    });
    let count = |s: u16| statuses.iter().filter(|x| **x == s).count();
    assert_eq!(count(401) + count(429), 1000, "{statuses:?}");
    assert!(count(429) >= 800, "mostly 429: {} of 1000", count(429));
    assert!(
        !served.is_empty() && served.iter().all(|s| *s == 200),
        "{served:?}"
    );
    let after = serve.rss_kib();
    assert!(
        after < before + 10 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn clients_that_trickle_their_headers_are_cut_off_while_others_are_served() {
    use std::io::{Read, Write};
    let _l = lock();
    let sb = Sandbox::new();
    let dir = sb.save(&[]);
    let serve = sb.serve(&dir, &[]);
    let api = Client::new(&serve);
    let start = Instant::now();
    let closed_after = std::thread::scope(|s| {
        let slow: Vec<_> = (0..20)
            .map(|_| {
                let addr = serve.addr.clone();
                s.spawn(move || {
                    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let request = format!(
                        "GET /health HTTP/1.1\r\nHost: {addr}\r\nX-Padding: {}",
                        "a".repeat(200)
                    );
                    let started = Instant::now();
                    for byte in request.bytes().cycle() {
                        if started.elapsed() > Duration::from_secs(20) {
                            return None;
                        }
                        if stream.write_all(&[byte]).is_err() {
                            return Some(started.elapsed());
                        }
                        let mut buf = [0u8; 512];
                        match stream.read(&mut buf) {
                            // Closed, or an error answer (408) and then closed.
                            Ok(_) => return Some(started.elapsed()),
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => return Some(started.elapsed()),
                        }
                    }
                    None
                })
            })
            .collect();
        // Meanwhile the daemon answers everyone else, promptly.
        let mut answered = 0;
        while start.elapsed() < Duration::from_secs(9) {
            let t = Instant::now();
            assert_eq!(api.get("/health", None).status, 200);
            assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
            answered += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(answered > 10);
        slow.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for closed in closed_after {
        let closed = closed.expect("the daemon closed the connection within 20 s");
        assert!(
            closed >= Duration::from_secs(9) && closed <= Duration::from_secs(15),
            "closed after {closed:?} (headers are allowed 10 s)"
        );
    }
}

#[test]
fn two_deploys_of_one_environment_at_once_both_answer_and_leave_one_active_slot() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("sconc");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let host = format!("{name}.codeb.test");
    let dir = sb.save(&[ProjectYaml::new(&name, APP_V1)]);
    let serve = sb.serve(&dir, &["--resync", "2s"]);
    assert!(
        eventually(START, || serves(&sb, &host, "v1")),
        "{}",
        serve.log()
    );
    let key = sb.key(&["--role", "developer", "--name", "ci"]);
    let barrier = std::sync::Barrier::new(2);
    let answers: Vec<(Answer, Instant, &str)> = std::thread::scope(|s| {
        let threads: Vec<_> = [APP_V2, APP_V3]
            .into_iter()
            .map(|image| {
                let (serve, key, name, barrier) = (&serve, &key, &name, &barrier);
                s.spawn(move || {
                    let client = Client::new(serve);
                    barrier.wait();
                    let answer = client.tool(
                        key,
                        json!({"tool": "deploy", "project": name, "image": image}),
                    );
                    (answer, Instant::now(), image)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (answer, _, image) in &answers {
        assert!(
            answer.status == 200 || answer.status == 409,
            "{image}: {answer:?}"
        );
        if answer.status == 409 {
            assert_eq!(answer.code(), "busy");
        }
    }
    let done: Vec<_> = answers.iter().filter(|(a, _, _)| a.status == 200).collect();
    assert!(!done.is_empty(), "one of them ran: {answers:?}");
    let last = done.iter().max_by_key(|(_, at, _)| *at).unwrap();
    assert_eq!(last.0.json()["converged"], true, "{:?}", last.0);

    let api = Client::new(&serve);
    let slots = slots_of(&api, &key, &name);
    let active: Vec<_> = slots.iter().filter(|s| s["state"] == "active").collect();
    assert_eq!(active.len(), 1, "{slots:?}");
    assert_eq!(
        active[0]["image"], last.2,
        "the last deploy is live: {slots:?}"
    );
    let version = last.2.rsplit(':').next().unwrap();
    assert!(serves(&sb, &host, version));
    assert_eq!(
        environment(&api, &key, &name)["releaseOverride"]["image"],
        last.2
    );
    // One after the other: the steps each deploy logs do not interleave. The first rollout
    // (deploy into the idle slot … switch traffic) is over before the second one's starts.
    let log = serve.log();
    let steps: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once(&format!("done step={name}/production: ")))
        .map(|(_, step)| step)
        .filter(|step| !step.contains(APP_V1))
        .collect();
    let starts: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, step)| step.starts_with("deploy localhost/codeb-test-app:v"))
        .map(|(i, _)| i)
        .collect();
    if let [first, second] = starts[..] {
        assert!(
            steps[first..second]
                .iter()
                .any(|step| step.starts_with("promote: switch traffic")),
            "two rollouts of {name}/production at once:\n{}",
            steps.join("\n")
        );
    } else {
        assert_eq!(starts.len(), 1, "{}", steps.join("\n"));
        assert!(answers.iter().any(|(a, _, _)| a.status == 409));
    }
    // Still so after the loop's resyncs.
    assert!(serve.wait_sweeps(2, Duration::from_secs(10)));
    assert!(serves(&sb, &host, version), "{}", serve.log());
}

#[test]
fn sigterm_lets_an_in_flight_deploy_answer_and_exits_0() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("sterm");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let host = format!("{name}.codeb.test");
    let mut project = ProjectYaml::new(&name, APP_V1);
    project.timeout = "4s";
    let dir = sb.save(&[project]);
    let mut serve = sb.serve(&dir, &[]);
    assert!(
        eventually(START, || serves(&sb, &host, "v1")),
        "{}",
        serve.log()
    );
    let key = sb.key(&["--role", "developer", "--name", "ci"]);
    let api = Client::new(&serve);
    let (answer, status, stopped_in, answered_in) = std::thread::scope(|s| {
        let deploy = s.spawn(|| {
            let body = json!({"tool": "deploy", "project": name, "image": UNHEALTHY});
            let answer = api.try_send(
                "POST",
                "/api/tool",
                Some(&key),
                Some(("application/json", body.to_string())),
            );
            (answer, Instant::now())
        });
        // The unhealthy release is starting: its health check runs for up to 4 s.
        assert!(
            eventually(Duration::from_secs(10), || containers(&name)
                .iter()
                .any(|(n, _, state)| n.ends_with("-green") && state == "running")),
            "{}",
            serve.log()
        );
        let sent = Instant::now();
        let status = serve.terminate(Duration::from_secs(10));
        let stopped_in = sent.elapsed();
        let (answer, at) = deploy.join().unwrap();
        (
            answer,
            status,
            stopped_in,
            at.saturating_duration_since(sent),
        )
    });
    let log = serve.log();
    let status = status.unwrap_or_else(|| panic!("serve did not exit within 10 s\n{log}"));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(stopped_in < Duration::from_secs(10));
    let answer = answer.unwrap_or_else(|e| {
        panic!(
            "the deploy in flight got no answer: serve exited {stopped_in:?} after SIGTERM, the request failed {answered_in:?} after it: {e}\n{log}"
        )
    });
    assert_eq!(answer.status, 200, "{answer:?}\n{log}");
    let json = answer.json();
    assert_eq!(json["converged"], false, "{answer:?}");
    assert!(
        !json["failures"].as_array().unwrap().is_empty(),
        "{answer:?}"
    );
    assert!(serves(&sb, &host, "v1"), "v1 keeps serving");
}

#[test]
fn serve_refuses_a_non_loopback_address_with_exit_2() {
    let sb = Sandbox::new();
    let dir = sb.save(&[]);
    let out = sb.codeb(&[
        "serve",
        "-f",
        dir.to_str().unwrap(),
        "--listen",
        "0.0.0.0:9100",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback"),
        "{}",
        text(&out)
    );
    assert!(
        !sb.state().join("codeb.sock").exists(),
        "nothing was started"
    );
}

#[test]
fn health_reports_whether_each_host_and_zone_was_observed() {
    let _l = lock();
    let (sb, pdns) = (Sandbox::new(), Pdns::get());
    let zone = format!("{}.test", unique("shealth"));
    pdns.create_zone(&zone, json!([]));
    let head = format!(
        "{}{}",
        sb.stack.host_doc("127.0.0.1"),
        managed_zone(&zone, &pdns.api, "PDNS_API_KEY")
    );
    let dir = sb.save_text(&head);
    let serve = sb.serve(&dir, &["--resync", "2s"]);
    assert!(serve.wait_sweeps(1, START), "{}", serve.log());
    let api = Client::new(&serve);
    let observed = |kind: &str, name: &str| {
        let health = api.get("/health", None);
        health.status == 200
            && health.json()["targets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["kind"] == kind && t["name"] == name && t["observed"] == true)
    };
    let seen = eventually(Duration::from_secs(10), || {
        observed("host", "local") && observed("zone", &zone)
    });
    let last = api.get("/health", None);
    drop(serve);
    pdns.delete_zone(&zone);
    assert!(
        seen,
        "/health lists the host and the zone, observed: {last:?}"
    );
}

#[test]
fn a_413_answer_tells_a_keep_alive_client_that_the_connection_closes() {
    let _l = lock();
    let sb = Sandbox::new();
    let dir = sb.save(&[]);
    let serve = sb.serve(&dir, &[]);
    let key = sb.key(&["--role", "admin", "--name", "ops"]);
    let (head, body, mut stream) = over_the_limit_on(&serve, "/api/tool", &key, "application/json");
    assert!(head.starts_with("http/1.1 413"), "{head}{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "too-large"
    );
    // The rest of the body is never read, so the daemon closes the connection after this answer;
    // unless the answer says so, a keep-alive client (reqwest's pool) sends its next request
    // into the closing connection and gets no answer (hyper: IncompleteMessage).
    let closed = read_answer(&mut stream).is_none();
    assert!(closed, "the connection stays open after a 413");
    assert!(
        head.contains("connection: close"),
        "the 413 closes the connection without `Connection: close`:\n{head}"
    );
}

/// `--publish HOSTNAME`: the API answers through the Host's Caddy on that hostname, a route removed
/// by hand comes back at the next resync, and a daemon started without `--publish` removes it.
#[test]
fn the_api_published_through_caddy_answers_on_its_hostname_and_goes_when_no_longer_published() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("spub");
    let api_host = format!("{name}-api.codeb.test");
    let dir = sb.save(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let through_caddy =
        || http_get_within(&sb.stack.http, &api_host, "/health", Duration::from_secs(1));
    let answers = |(status, body): (u16, String)| status == 200 && body.contains("\"version\"");
    let serve = sb.serve(&dir, &["--publish", &api_host, "--resync", "1s"]);
    assert!(
        eventually(Duration::from_secs(20), || answers(through_caddy())),
        "{}",
        serve.log()
    );
    // Drift: the route deleted by hand comes back within a resync or two.
    assert_eq!(
        caddy_admin(&sb.stack.caddy_admin, "DELETE", "/id/codeb-api", ""),
        200
    );
    assert!(
        eventually(Duration::from_secs(10), || answers(through_caddy())),
        "{}",
        serve.log()
    );
    drop(serve);
    // Without --publish, the route an earlier daemon left goes.
    let serve = sb.serve(&dir, &[]);
    assert!(
        eventually(Duration::from_secs(10), || !caddy_config(
            &sb.stack.caddy_admin
        )
        .contains("codeb-api")),
        "{}",
        serve.log()
    );
    drop(serve);
    cleanup(&sb, &name);
}

#[test]
fn publish_refuses_a_hostname_an_environment_serves_with_exit_2() {
    let sb = Sandbox::new();
    let name = unique("spubx");
    let dir = sb.save(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let taken = format!("{name}.codeb.test");
    let out = sb.codeb(&[
        "serve",
        "-f",
        dir.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--publish",
        &taken,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already serves that hostname"),
        "{}",
        text(&out)
    );
}
