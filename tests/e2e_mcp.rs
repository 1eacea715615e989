//! MCP end to end, with the SDK's own client (rmcp) against the real Podman, Caddy and PowerDNS:
//! over streamable HTTP to a `codeb serve` and over stdio to `codeb mcp` (through the daemon's
//! socket, and through `--server URL`). The whole flow (deploy planned then confirmed, the preview
//! serving, promote, rollback) moves traffic through Caddy; every tool × role answers as the
//! permission table says and refusals are audited; a stale plan id, an id of another environment
//! and a made-up one are refused; a canary secret shows up in no answer; bad input, oversized
//! bodies, bad names and a flood of bad keys are refused.
//!
//! Every wait is a bounded poll. Each daemon runs as a child that is killed when its guard drops.

mod common;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use codeb::auth::{allows, Role};
use codeb::mcp::tools::Effect;
use codeb::mcp::TOOLS;
use common::*;
use rmcp::model::{CallToolRequestParams, Tool};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};

const START: Duration = Duration::from_secs(20);
const APP_V1: &str = "localhost/codeb-test-app:v1";
const APP_V2: &str = "localhost/codeb-test-app:v2";
const APP_V3: &str = "localhost/codeb-test-app:v3";

/// One tool call's answer: its text, and whether it is a tool error (`isError`).
#[derive(Debug, Clone)]
struct Answer {
    error: bool,
    text: String,
}

impl Answer {
    /// The plan id a changing tool's first call returns.
    fn plan_id(&self) -> String {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix("plan_id: "))
            .unwrap_or_else(|| panic!("no plan_id in {self:?}"))
            .trim()
            .to_string()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// A blocking MCP client (the SDK's, on a runtime of its own), which keeps every text it was
/// answered (the canary test searches them all).
struct Mcp {
    rt: tokio::runtime::Runtime,
    client: Option<RunningService<RoleClient, ()>>,
    seen: Mutex<Vec<String>>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

impl Mcp {
    /// Over streamable HTTP to `serve`'s `/mcp`, the key as `X-API-Key` (as `claude mcp add
    /// --transport http … --header "X-API-Key: …"` sends it).
    fn http(serve: &ServeProcess, key: &str) -> Mcp {
        let mut headers = HashMap::new();
        headers.insert(
            reqwest::header::HeaderName::from_static("x-api-key"),
            reqwest::header::HeaderValue::from_str(key).unwrap(),
        );
        let config = StreamableHttpClientTransportConfig::with_uri(serve.url("/mcp"))
            .custom_headers(headers);
        Mcp::connect(|| async move {
            ().serve(StreamableHttpClientTransport::from_config(config))
                .await
        })
    }

    /// Over HTTP with the key as `Authorization: Bearer`.
    fn bearer(serve: &ServeProcess, key: &str) -> Mcp {
        let config =
            StreamableHttpClientTransportConfig::with_uri(serve.url("/mcp")).auth_header(key);
        Mcp::connect(|| async move {
            ().serve(StreamableHttpClientTransport::from_config(config))
                .await
        })
    }

    /// Over stdio to `codeb mcp ARGS…` as a child process, with these environment variables.
    fn stdio(sb: &Sandbox, args: &[&str], vars: &[(&str, &str)]) -> Mcp {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_codeb"));
        cmd.arg("--state-dir").arg(sb.state()).arg("mcp").args(args);
        cmd.envs(vars.iter().copied());
        let log = std::fs::File::create(sb.dir.path().join("codeb-mcp.log")).unwrap();
        Mcp::connect(|| async move {
            let (child, _) = TokioChildProcess::builder(cmd).stderr(log).spawn().unwrap();
            ().serve(child).await
        })
    }

    fn connect<F, Fut, E>(make: F) -> Mcp
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<RunningService<RoleClient, ()>, E>>,
        E: std::fmt::Debug,
    {
        let rt = runtime();
        let client = rt
            .block_on(async { tokio::time::timeout(START, make()).await })
            .expect("initialized in time")
            .expect("the MCP handshake succeeds");
        Mcp {
            rt,
            client: Some(client),
            seen: Mutex::new(Vec::new()),
        }
    }

    fn client(&self) -> &RunningService<RoleClient, ()> {
        self.client.as_ref().unwrap()
    }

    fn tools(&self) -> Vec<Tool> {
        self.rt.block_on(self.client().list_all_tools()).unwrap()
    }

    /// `tools/call`; `Err` for a protocol error.
    fn try_call(&self, tool: &str, args: Value) -> Result<Answer, String> {
        let params = CallToolRequestParams::new(tool.to_string())
            .with_arguments(args.as_object().cloned().unwrap_or_default());
        let result = self
            .rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(90), self.client().call_tool(params)).await
            })
            .expect("answered within 90 s")
            .map_err(|e| format!("{e}"))?;
        let text: String = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect::<Vec<_>>()
            .join("\n");
        self.seen.lock().unwrap().push(text.clone());
        Ok(Answer {
            error: result.is_error == Some(true),
            text,
        })
    }

    fn call(&self, tool: &str, args: Value) -> Answer {
        self.try_call(tool, args)
            .unwrap_or_else(|e| panic!("{tool}: protocol error {e}"))
    }

    /// A changing tool in its two steps: the plan (nothing done), then the confirmation.
    fn plan_then_confirm(&self, tool: &str, args: Value) -> (Answer, Answer) {
        let plan = self.call(tool, args.clone());
        assert!(!plan.error, "{tool} plan: {plan:?}");
        let mut confirmed = args;
        confirmed["plan_id"] = json!(plan.plan_id());
        let done = self.call(tool, confirmed);
        (plan, done)
    }

    fn seen(&self) -> String {
        self.seen.lock().unwrap().join("\n")
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), c.cancel()).await });
        }
    }
}

/// `codeb audit -o json` (the CLI, an admin), as JSON.
fn audit(sb: &Sandbox) -> Vec<Value> {
    let out = sb.codeb(&["audit", "--limit", "10000", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The slot of `project` whose image is `image`, from `list_projects`.
fn slot_with(mcp: &Mcp, project: &str, image: &str) -> Option<(String, String)> {
    let list = mcp.call("list_projects", json!({}));
    assert!(!list.error, "{list:?}");
    let row = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["project"] == project)
        .cloned()?;
    ["blue", "green"].into_iter().find_map(|s| {
        (row[s]["image"] == image)
            .then(|| (s.to_string(), row[s]["state"].as_str().unwrap().to_string()))
    })
}

/// The preview hostname of the slot running `image`, from `describe_project`.
fn preview_of(mcp: &Mcp, project: &str, image: &str) -> String {
    let d = mcp.call("describe_project", json!({"project": project}));
    assert!(!d.error, "{d:?}");
    let v = d.json();
    let slot = v["environments"][0]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["image"] == image)
        .cloned()
        .unwrap_or_else(|| panic!("no slot runs {image}: {v}"));
    slot["previewUrl"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// Deploy v2 (planned, confirmed), preview it, promote, roll back: checked through Caddy.
fn the_whole_flow(sb: &Sandbox, mcp: &Mcp, name: &str, between: impl Fn()) {
    let host = format!("{name}.codeb.test");
    let args = json!({"project": name, "image": APP_V2});
    let plan = mcp.call("deploy", args.clone());
    assert!(!plan.error, "{plan:?}");
    assert!(
        plan.text.contains(APP_V2),
        "the plan names the image: {plan:?}"
    );
    assert!(plan.text.contains("Nothing was done"), "{plan:?}");
    // The plan did nothing.
    assert_eq!(slot_with(mcp, name, APP_V2), None, "planned only");
    between();
    let mut confirmed = args;
    confirmed["plan_id"] = json!(plan.plan_id());
    let done = mcp.call("deploy", confirmed);
    assert!(!done.error, "{done:?}");
    assert!(done.text.contains("converged"), "{done:?}");
    assert_eq!(
        slot_with(mcp, name, APP_V2).map(|s| s.1),
        Some("deployed".to_string())
    );
    let preview = preview_of(mcp, name, APP_V2);
    assert!(
        serves(sb, &preview, "v2"),
        "the preview {preview} serves v2"
    );
    assert!(serves(sb, &host, "v1"), "manual promotion waits");

    let (_, promoted) = mcp.plan_then_confirm("promote", json!({"project": name}));
    assert!(!promoted.error, "{promoted:?}");
    assert!(serves(sb, &host, "v2"), "live after the promote");

    let (plan, rolled) = mcp.plan_then_confirm(
        "rollback",
        json!({"project": name, "environment": "production"}),
    );
    assert!(plan.text.contains("Plan ("), "{plan:?}");
    assert!(!rolled.error, "{rolled:?}");
    assert!(serves(sb, &host, "v1"), "back to v1 after the rollback");
}

#[test]
fn over_http_a_deploy_is_planned_then_confirmed_previewed_promoted_and_rolled_back_through_caddy() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("mflow");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let dir = sb.save(&[manual(&name, APP_V1)]);
    let serve = sb.serve(&dir, &["--resync", "1s"]);
    assert!(
        eventually(START, || serves(&sb, &format!("{name}.codeb.test"), "v1")),
        "{}",
        serve.log()
    );
    let key = sb.key(&["--role", "developer", "--name", "agent"]);
    let id = sb.key_id("agent");
    let mcp = Mcp::http(&serve, &key);
    let info = mcp.client().peer_info().expect("initialized");
    assert_eq!(info.server_info.as_ref().unwrap().name, "codeb");
    assert!(info
        .instructions
        .as_deref()
        .unwrap_or("")
        .contains("plan_id"));

    let tools = mcp.tools();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, TOOLS.iter().map(|t| t.name).collect::<Vec<_>>());
    assert!(tools.len() <= 15);
    let bytes = serde_json::to_vec(&json!({ "tools": tools }))
        .unwrap()
        .len();
    assert!(bytes < 12 * 1024, "tools/list is {bytes} bytes");
    for t in &tools {
        let a = t.annotations.as_ref().unwrap();
        assert!(
            a.read_only_hint.is_some()
                && a.destructive_hint.is_some()
                && a.idempotent_hint.is_some()
        );
    }

    // A plan id outlives resyncs of a converged loop (which writes nothing).
    the_whole_flow(&sb, &mcp, &name, || {
        assert!(
            serve.wait_sweeps(2, Duration::from_secs(10)),
            "{}",
            serve.log()
        );
    });

    // The logs of the active slot, marked as untrusted output.
    let logs = mcp.call("logs", json!({"project": name, "lines": 5}));
    assert!(!logs.error, "{logs:?}");
    assert!(
        logs.text.contains("untrusted application output"),
        "{logs:?}"
    );
    assert!(logs.text.contains("codeb-test-app v1"), "{logs:?}");

    // Every change is in the audit, with the tool's name and the key.
    let entries = mcp.call("audit", json!({"project": name, "limit": 50}));
    assert!(!entries.error, "{entries:?}");
    let entries = entries.json();
    for tool in ["mcp:deploy", "mcp:promote", "mcp:rollback"] {
        let e = entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == tool)
            .unwrap_or_else(|| panic!("no {tool} entry: {entries}"));
        assert_eq!(e["outcome"]["kind"], "ok", "{e}");
        assert_eq!(e["keyId"], id.as_str(), "{e}");
        assert!(!e["steps"].as_array().unwrap().is_empty(), "{e}");
    }
    let health = mcp.call("health", json!({}));
    assert!(!health.error, "{health:?}");
    assert_eq!(health.json()["hosts"][0]["name"], "local", "{health:?}");
}

#[test]
fn over_stdio_codeb_mcp_runs_the_whole_flow_through_the_daemon_socket_and_through_server() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("mstdio");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    // No daemon: codeb mcp says so and never reaches for the hosts itself.
    let out = sb.codeb(&["mcp"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no codeb serve or codeb watch answers"),
        "{}",
        text(&out)
    );

    let dir = sb.save(&[manual(&name, APP_V1)]);
    let serve = sb.serve(&dir, &["--resync", "2s"]);
    assert!(eventually(START, || serves(
        &sb,
        &format!("{name}.codeb.test"),
        "v1"
    )));
    let mode = std::fs::metadata(sb.state().join("codeb-mcp.sock")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let local = Mcp::stdio(&sb, &[], &[]);
    assert_eq!(local.tools().len(), TOOLS.len());
    the_whole_flow(&sb, &local, &name, || {});
    // The socket's caller is its user, named as the CLI names it.
    let entries = audit(&sb);
    let deploy = entries
        .iter()
        .rev()
        .find(|e| e["action"] == "mcp:deploy")
        .unwrap_or_else(|| panic!("{entries:?}"));
    assert!(
        deploy["actor"].as_str().unwrap().starts_with("cli (uid"),
        "{deploy}"
    );
    drop(local);

    // --server URL with the key from CODEB_API_KEY: the same tools, the same refusals.
    let viewer = sb.key(&["--role", "viewer", "--name", "remote"]);
    let url = serve.url("");
    let remote = Mcp::stdio(&sb, &["--server", &url], &[("CODEB_API_KEY", &viewer)]);
    assert_eq!(remote.tools().len(), TOOLS.len());
    let list = remote.call("list_projects", json!({}));
    assert!(!list.error && list.text.contains(&name), "{list:?}");
    let refused = remote.call("deploy", json!({"project": name, "image": APP_V3}));
    assert!(
        refused.error && refused.text.starts_with("forbidden:"),
        "{refused:?}"
    );
    drop(remote);
    // A bad key through --server: the agent's request gets a JSON-RPC error naming the 401; no
    // tool runs. The end of stdin ends codeb mcp, exit 0.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_codeb"))
        .args(["mcp", "--server", &url])
        .env("CODEB_API_KEY", "codeb_admin_0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "list_projects", "arguments": {}}});
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        format!("{call}\n").as_bytes(),
    )
    .unwrap();
    let bad = child.wait_with_output().unwrap();
    assert_eq!(bad.status.code(), Some(0), "{}", text(&bad));
    let answer: Value =
        serde_json::from_slice(&bad.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&bad)));
    assert_eq!(answer["id"], 7, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("401") && message.contains("API key"),
        "{answer}"
    );
    let missing = sb.codeb_env(&["mcp", "--server", &url], &[]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(
        text(&missing).contains("CODEB_API_KEY"),
        "{}",
        text(&missing)
    );
    let mut serve = serve;
    let status = serve.terminate(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{}", serve.log());
    assert!(
        !sb.state().join("codeb-mcp.sock").exists(),
        "the MCP socket is removed"
    );
}

#[test]
fn through_caddy_mcp_answers_on_the_published_hostname_and_refuses_other_names() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("mpub");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let api_host = format!("{name}-api.codeb.test");
    let dir = sb.save(&[ProjectYaml::new(&name, APP_V1)]);
    let serve = sb.serve(&dir, &["--publish", &api_host, "--resync", "1s"]);
    let key = sb.key(&["--role", "viewer", "--name", "remote-agent"]);
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let post = |addr: &str, host: &str, origin: Option<&str>| {
        let mut req = http
            .post(format!("http://{addr}/mcp"))
            .header("Host", host)
            .header("X-API-Key", &key)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream");
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        match req.body(list.to_string()).send() {
            Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    };
    // Through Caddy, on the published hostname (the route appears within a resync).
    let caddy = sb.stack.http.clone();
    assert!(
        eventually(START, || post(&caddy, &api_host, None).0 == 200),
        "{}",
        serve.log()
    );
    let (_, body) = post(&caddy, &api_host, Some(&format!("https://{api_host}")));
    assert!(body.contains("\"list_projects\""), "{body}");
    // The daemon itself refuses a name that is neither loopback nor published.
    let (status, body) = post(&serve.addr, "other.codeb.test", None);
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(&serve.addr, &api_host, Some("https://evil.example"));
    assert_eq!(status, 403, "{body}");
}

/// Arguments that pass each tool's schema, naming `project` (changing tools without plan_id:
/// only a plan, nothing is done).
fn valid_args(tool: &str, sb: &Sandbox, project: &str) -> Value {
    let yaml = manifests(sb, &[manual(project, APP_V1)]);
    match tool {
        "list_projects" | "health" => json!({}),
        "describe_project" => json!({"project": project}),
        "logs" => json!({"project": project, "lines": 1}),
        "plan" => json!({"project": project, "image": APP_V2}),
        "audit" => json!({"project": project}),
        "env" | "releases" => json!({"project": project}),
        "deploy" => json!({"project": project, "image": APP_V2}),
        "promote" | "rollback" => json!({"project": project}),
        "apply" => json!({"manifests": yaml}),
        "prune" => json!({"manifests": yaml, "projects": [project]}),
        other => panic!("no arguments for {other}"),
    }
}

#[test]
fn every_tool_answers_each_role_as_the_permission_table_says_and_refusals_are_audited() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("mroles");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let dir = sb.save(&[manual(&name, APP_V1)]);
    let serve = sb.serve(&dir, &["--resync", "2s"]);
    assert!(eventually(START, || serves(
        &sb,
        &format!("{name}.codeb.test"),
        "v1"
    )));
    // A slot to promote and roll back between, so that their plans exist.
    let key = sb.key(&["--role", "developer", "--name", "setup"]);
    let setup = Mcp::bearer(&serve, &key);
    let (_, done) = setup.plan_then_confirm("deploy", json!({"project": name, "image": APP_V2}));
    assert!(!done.error, "{done:?}");
    drop(setup);

    let mut refused = Vec::new();
    for role in Role::ALL {
        let key = sb.key(&["--role", role.as_str(), "--name", &format!("r-{role}")]);
        let key_id = sb.key_id(&format!("r-{role}"));
        let mcp = Mcp::bearer(&serve, &key);
        for tool in TOOLS {
            let answer = mcp.call(tool.name, valid_args(tool.name, &sb, &name));
            let allowed = tool.permissions.iter().all(|p| allows(role, *p));
            let forbidden = answer.error && answer.text.starts_with("forbidden:");
            assert_eq!(!forbidden, allowed, "{role} × {}: {answer:?}", tool.name);
            if allowed && tool.effect == Effect::Read {
                assert!(!answer.error, "{role} × {}: {answer:?}", tool.name);
            }
            if !allowed {
                refused.push((key_id.clone(), format!("mcp:{}", tool.name)));
                assert!(
                    answer
                        .text
                        .contains(&format!("needs the {} role", tool.least_role())),
                    "{answer:?}"
                );
            }
        }
    }
    // Every refusal is in the audit log, with the tool's name and the key.
    let entries = audit(&sb);
    for (key_id, action) in &refused {
        assert!(
            entries.iter().any(|e| e["keyId"] == key_id.as_str()
                && e["action"] == action.as_str()
                && e["outcome"]["kind"] == "denied"),
            "{action} refused to {key_id} is not audited"
        );
    }
    assert!(!refused.is_empty());
    // A key limited to another project is refused this one's changes and reads.
    let other = sb.key(&[
        "--role",
        "developer",
        "--name",
        "elsewhere",
        "--project",
        "not-this-one",
    ]);
    let mcp = Mcp::bearer(&serve, &other);
    for tool in ["describe_project", "deploy", "promote", "logs"] {
        let answer = mcp.call(tool, valid_args(tool, &sb, &name));
        assert!(
            answer.error && answer.text.starts_with("forbidden:"),
            "{tool}: {answer:?}"
        );
    }
    let list = mcp.call("list_projects", json!({}));
    assert_eq!(
        list.json(),
        json!([]),
        "a limited key lists only its projects"
    );

    // A destructive call with a viewer key, with a made-up plan id too: refused and audited.
    let viewer = sb.key(&["--role", "viewer", "--name", "peek"]);
    let viewer_id = sb.key_id("peek");
    let mcp = Mcp::http(&serve, &viewer);
    let fake = format!("{}.{}", "a".repeat(32), "b".repeat(32));
    let answer = mcp.call("rollback", json!({"project": name, "plan_id": fake}));
    assert!(
        answer.error && answer.text.starts_with("forbidden:"),
        "{answer:?}"
    );
    let entries = audit(&sb);
    let denied: Vec<&Value> = entries
        .iter()
        .filter(|e| e["keyId"] == viewer_id.as_str() && e["outcome"]["kind"] == "denied")
        .collect();
    assert!(
        denied
            .iter()
            .any(|e| e["action"] == "mcp:rollback" && e["outcome"]["permission"] == "rollback"),
        "{denied:?}"
    );
    // Nothing a refused or planned call did: v1 active, v2 still only deployed.
    assert!(serves(&sb, &format!("{name}.codeb.test"), "v1"));
    drop(serve);
}

#[test]
fn a_stale_plan_id_an_id_for_another_environment_and_a_forged_one_are_refused_and_ids_survive_a_restart(
) {
    let _l = lock();
    let sb = Sandbox::new();
    let a = unique("mstale");
    let b = format!("{a}-b");
    let _cleanup = Cleanup(&sb, vec![a.clone(), b.clone()]);
    let dir = sb.save(&[manual(&a, APP_V1), manual(&b, APP_V1)]);
    let mut serve = sb.serve(&dir, &["--resync", "2s"]);
    assert!(eventually(START, || serves(
        &sb,
        &format!("{a}.codeb.test"),
        "v1"
    ) && serves(
        &sb,
        &format!("{b}.codeb.test"),
        "v1"
    )));
    let key = sb.key(&["--role", "developer", "--name", "agent"]);
    let id = sb.key_id("agent");
    let mcp = Mcp::http(&serve, &key);

    // Planned for v2; then the environment changes under the plan (v3 deployed).
    let stale = mcp.call("deploy", json!({"project": a, "image": APP_V2}));
    assert!(!stale.error, "{stale:?}");
    let (_, v3) = mcp.plan_then_confirm("deploy", json!({"project": a, "image": APP_V3}));
    assert!(!v3.error, "{v3:?}");
    let refused = mcp.call(
        "deploy",
        json!({"project": a, "image": APP_V2, "plan_id": stale.plan_id()}),
    );
    assert!(refused.error, "{refused:?}");
    assert!(
        refused.text.starts_with("conflict:") && refused.text.contains("plan again"),
        "{refused:?}"
    );
    assert_eq!(slot_with(&mcp, &a, APP_V2), None, "v2 was not deployed");

    // The id of one environment's plan does not pass for another's, nor for another image.
    let plan_a = mcp.call("promote", json!({"project": a}));
    assert!(!plan_a.error, "{plan_a:?}");
    let other_env = mcp.call(
        "promote",
        json!({"project": b, "plan_id": plan_a.plan_id()}),
    );
    assert!(
        other_env.error && other_env.text.contains("not made for promote"),
        "{other_env:?}"
    );
    let other_tool = mcp.call(
        "rollback",
        json!({"project": a, "plan_id": plan_a.plan_id()}),
    );
    assert!(
        other_tool.error && other_tool.text.contains("not made for rollback"),
        "{other_tool:?}"
    );
    let malformed = mcp.call("promote", json!({"project": a, "plan_id": "yes"}));
    assert!(
        malformed.error && malformed.text.contains("malformed"),
        "{malformed:?}"
    );
    assert!(serves(&sb, &format!("{b}.codeb.test"), "v1"), "b untouched");
    let entries = audit(&sb);
    let failed: Vec<&Value> = entries
        .iter()
        .filter(|e| e["keyId"] == id.as_str() && e["outcome"]["kind"] == "failed")
        .collect();
    assert!(
        failed.iter().any(|e| e["action"] == "mcp:deploy"
            && e["outcome"]["message"]
                .as_str()
                .unwrap()
                .contains("plan again")),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|e| e["action"] == "mcp:promote" && e["project"] == b.as_str()),
        "{failed:?}"
    );
    assert!(
        failed.iter().any(|e| e["action"] == "mcp:rollback"),
        "{failed:?}"
    );

    // The id signed before a restart of the daemon is good after it.
    drop(mcp);
    assert!(serve
        .terminate(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
    drop(serve);
    let serve = sb.serve(&dir, &["--resync", "2s"]);
    let mcp = Mcp::http(&serve, &key);
    let promoted = mcp.call(
        "promote",
        json!({"project": a, "plan_id": plan_a.plan_id()}),
    );
    assert!(!promoted.error, "{promoted:?}");
    assert!(serves(&sb, &format!("{a}.codeb.test"), "v3"), "v3 promoted");
    // Used once: the state changed, so the same id is refused now.
    let again = mcp.call(
        "promote",
        json!({"project": a, "plan_id": plan_a.plan_id()}),
    );
    assert!(again.error, "{again:?}");
    drop(serve);
}

#[test]
fn a_canary_secret_in_a_manifest_appears_in_no_mcp_answer_nor_audit_entry() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("mcanary");
    let other = format!("{name}-o");
    let _cleanup = Cleanup(&sb, vec![other.clone(), name.clone()]);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let canary = format!("canary-{nanos:x}");
    let posted_canary = format!("canary-posted-{nanos:x}");
    let watched_env = [("SECRET_CANARY", canary.as_str())];
    let posted_env = [("SECRET_CANARY", posted_canary.as_str())];
    let mut p = manual(&name, APP_V1);
    p.env = &watched_env;
    let dir = sb.save(&[p]);
    let serve = sb.serve(&dir, &["--resync", "2s"]);
    assert!(eventually(START, || serves(
        &sb,
        &format!("{name}.codeb.test"),
        "v1"
    )));
    let admin = Mcp::http(&serve, &sb.key(&["--role", "admin", "--name", "ops"]));
    let dev = Mcp::http(&serve, &sb.key(&["--role", "developer", "--name", "dev"]));

    // The project whose release carries the secret: deployed, promoted; every read.
    let (_, done) = dev.plan_then_confirm("deploy", json!({"project": name, "image": APP_V2}));
    assert!(!done.error, "{done:?}");
    let (_, done) = dev.plan_then_confirm("promote", json!({"project": name}));
    assert!(!done.error, "{done:?}");
    // A stored secret too (set through the daemon's socket, rolled out): two versions to diff.
    let stored = format!("canary-stored-{nanos:x}");
    for value in [format!("{stored}-1"), stored.clone()] {
        let out = sb.codeb(&["env", "set", &name, &format!("STORED_CANARY={value}")]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let env = dev.call("env", json!({"project": name}));
    assert!(
        env.text.contains("STORED_CANARY"),
        "names are shown: {env:?}"
    );
    for mcp in [&admin, &dev] {
        for (tool, args) in [
            ("env", json!({"project": name})),
            ("env", json!({"project": name, "view": "history"})),
            (
                "env",
                json!({"project": name, "view": "diff", "from": 1, "to": 2}),
            ),
            ("list_projects", json!({})),
            ("health", json!({})),
            ("describe_project", json!({"project": name})),
            ("logs", json!({"project": name})),
            ("audit", json!({"project": name})),
            ("plan", json!({"project": name, "image": APP_V3})),
        ] {
            let a = mcp.call(tool, args);
            assert!(!a.error, "{tool}: {a:?}");
        }
    }
    let describe = dev.call("describe_project", json!({"project": name}));
    assert!(
        describe.text.contains("SECRET_CANARY"),
        "the variable's name is shown: {describe:?}"
    );

    // Manifests carrying a secret: a plan, an apply of another project, and errors in its line.
    let mut q = manual(&name, APP_V2);
    q.env = &posted_env;
    let changed = manifests(&sb, &[q]);
    let plan = admin.call("plan", json!({"manifests": changed}));
    assert!(!plan.error, "{plan:?}");
    let mut r = manual(&other, APP_V1);
    r.env = &posted_env;
    let (_, applied) = admin.plan_then_confirm("apply", json!({"manifests": manifests(&sb, &[r])}));
    assert!(!applied.error, "{applied:?}");
    for bad in [
        changed.replace(
            &format!("SECRET_CANARY: \"{posted_canary}\""),
            &format!("SECRET_CANARY: [\"{posted_canary}\"]"),
        ),
        changed.replace(
            &format!("SECRET_CANARY: \"{posted_canary}\""),
            &format!("SECRET_CANARY: \"{posted_canary}"),
        ),
        format!("{changed}\n  oops: \"{posted_canary}\"\n"),
    ] {
        assert!(bad.contains(&posted_canary));
        for tool in ["plan", "apply"] {
            let a = admin.call(tool, json!({"manifests": bad}));
            assert!(a.error && a.text.starts_with("invalid:"), "{tool}: {a:?}");
        }
    }
    // A canary as a plan id, and as an argument that does not fit.
    let a = dev.call(
        "promote",
        json!({"project": name, "plan_id": posted_canary}),
    );
    assert!(a.error, "{a:?}");
    let a = dev.call("logs", json!({"project": name, "lines": posted_canary}));
    assert!(a.error, "{a:?}");

    let seen = format!("{}\n{}", admin.seen(), dev.seen());
    for secret in [&canary, &posted_canary, &stored] {
        let in_answers = seen.matches(secret.as_str()).count();
        // The one place a canary may come back is the "invalid arguments" echo of a value the
        // caller sent itself in a wrong place; never a value of a manifest's env.
        assert!(
            !seen
                .lines()
                .any(|l| l.contains(secret.as_str()) && !l.starts_with("invalid arguments")),
            "an MCP answer holds {secret} ({in_answers}×):\n{seen}"
        );
        let entries = serde_json::to_string(&audit(&sb)).unwrap();
        assert!(
            !entries.contains(secret.as_str()),
            "the audit holds {secret}"
        );
        assert!(
            !serve.log().contains(secret.as_str()),
            "serve's log holds {secret}"
        );
    }
}

#[test]
fn bad_input_is_answered_with_tool_or_protocol_errors_and_bad_names_bodies_and_key_floods_are_refused(
) {
    let _l = lock();
    let sb = Sandbox::new();
    let dir = sb.save(&[]);
    let serve = sb.serve(&dir, &[]);
    let key = sb.key(&["--role", "developer", "--name", "agent"]);
    let mcp = Mcp::http(&serve, &key);

    let unknown = mcp.try_call("rm_rf", json!({}));
    assert!(
        unknown.as_ref().is_err_and(|e| e.contains("unknown tool")),
        "{unknown:?}"
    );
    for (tool, args, says) in [
        ("describe_project", json!({"project": 5}), "invalid type"),
        ("deploy", json!({"project": "x"}), "missing field `image`"),
        ("deploy", json!({}), "missing field"),
        (
            "logs",
            json!({"project": "x", "lines": "many"}),
            "invalid type",
        ),
        (
            "logs",
            json!({"project": "x", "slot": "purple"}),
            "unknown variant",
        ),
        ("list_projects", json!({"all": true}), "unknown field"),
        ("plan", json!({"project": "x"}), "either manifests"),
        ("audit", json!({"limit": 100000}), "limit"),
        ("env", json!({"project": "x", "view": "diff"}), "give both"),
        (
            "env",
            json!({"project": "x", "from": 1}),
            "view `diff` only",
        ),
        (
            "env",
            json!({"project": "x", "view": "values"}),
            "unknown variant",
        ),
        (
            "logs",
            json!({"project": "x", "lines": 1001}),
            "between 1 and 1000",
        ),
    ] {
        let a = mcp.call(tool, args);
        assert!(a.error && a.text.contains(says), "{tool}: {a:?}");
    }
    let missing = mcp.call("describe_project", json!({"project": "no-such-project"}));
    assert!(
        missing.error && missing.text.starts_with("not-found:"),
        "{missing:?}"
    );

    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let post = |headers: &[(&str, &str)], body: String| {
        let mut req = http
            .post(serve.url("/mcp"))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.body(body).send().unwrap();
        (res.status().as_u16(), res.text().unwrap_or_default())
    };
    let (status, body) = post(&[("X-API-Key", &key)], init.to_string());
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"protocolVersion\""), "{body}");
    // No key, a bad key: 401 before any tool runs.
    assert_eq!(post(&[], init.to_string()).0, 401);
    assert_eq!(
        post(&[("X-API-Key", "codeb_admin_nope")], init.to_string()).0,
        401
    );
    // A body over 4 MiB: 413 as the API answers it, and the connection closes (sent from a
    // socket that reads the answer as soon as it comes, as e2e_serve does).
    let (head, body, mut stream) = over_the_limit_on(&serve, "/mcp", &key, "application/json");
    assert!(head.starts_with("http/1.1 413"), "{head}{body}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(body.contains("too-large"), "{body}");
    assert!(read_answer(&mut stream).is_none(), "the connection closes");
    // DNS rebinding: a foreign Host or Origin is refused before the key is looked at.
    let (status, body) = post(
        &[("X-API-Key", &key), ("Host", "evil.example")],
        init.to_string(),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(
        &[("X-API-Key", &key), ("Origin", "http://evil.example")],
        init.to_string(),
    );
    assert_eq!(status, 403, "{body}");
    let (status, _) = post(
        &[("X-API-Key", &key), ("Origin", "http://localhost:5173")],
        init.to_string(),
    );
    assert_eq!(status, 200, "a loopback origin passes");
    // Stateless: no stream to open, no session to end.
    let get = http
        .get(serve.url("/mcp"))
        .header("X-API-Key", &key)
        .header("Accept", "text/event-stream")
        .send()
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);
    // No OAuth metadata advertised.
    let meta = http
        .get(serve.url("/.well-known/oauth-protected-resource"))
        .send()
        .unwrap();
    assert_eq!(meta.status().as_u16(), 404);

    // A flood of bad keys: rate-limited, no growth, and a valid key is still served.
    for _ in 0..20 {
        post(&[("X-API-Key", &key)], init.to_string());
    }
    let before = serve.rss_kib();
    let mut statuses = Vec::new();
    for i in 0..600u32 {
        let bad = format!("codeb_admin_{:044x}", u128::from(i) * 7919 + 1);
        statuses.push(post(&[("X-API-Key", &bad)], init.to_string()).0);
    }
    let count = |s: u16| statuses.iter().filter(|x| **x == s).count();
    assert_eq!(count(401) + count(429), 600, "{statuses:?}");
    assert!(count(429) >= 450, "mostly 429: {} of 600", count(429));
    assert_eq!(post(&[("X-API-Key", &key)], init.to_string()).0, 200);
    let after = serve.rss_kib();
    assert!(
        after < before + 10 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert!(!mcp.call("list_projects", json!({})).error);
}

#[test]
fn an_apply_with_a_database_and_a_cache_is_planned_then_confirmed() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("mdata");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let dir = sb.save(&[]);
    let serve = sb.serve(&dir, &[]);
    let admin = Mcp::http(&serve, &sb.key(&["--role", "admin", "--name", "ops"]));
    let text = format!(
        "{}---\napiVersion: codeb.kr/v1\nkind: Project\nmetadata:\n  name: {name}\nspec:\n  host: local\n  zone: codeb.test\n  environments:\n    production:\n      image: localhost/codeb-test-data:v1\n      port: 8080\n      healthCheck: {{path: /health, timeout: 20s}}\n      promotion: auto\n      database: postgres\n      cache: redis\n      onDelete: drop\n",
        sb.stack.data_host_yaml()
    );
    let (plan, applied) = admin.plan_then_confirm("apply", json!({"manifests": text}));
    assert!(plan.text.contains("ensure database"), "{plan:?}");
    assert!(
        !applied.error,
        "the plan with data steps is confirmed: {applied:?}"
    );
    let host = format!("{name}.codeb.test");
    assert!(
        eventually(START, || {
            let (status, body) = http_get(&sb.stack.http, &host, "/cgi-bin/cache");
            status == 200 && body.contains('1')
        }),
        "the app reaches its cache"
    );
}
