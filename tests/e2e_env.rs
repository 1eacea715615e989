//! The stored env against the real Podman, Caddy and kernel: a canary set with `codeb env set`
//! reaches the container and appears nowhere else; an env change rolls out blue/green under load
//! with no failed request, and a rollback restores the previous value with the image; protected
//! keys are kept against a developer's import through the API and changed by an admin with the
//! flag; a SIGKILL during the rollout an env change causes is converged by the next apply.

mod common;

use std::time::Duration;

use common::kernel::assert_kernel_mode;
use common::load::Load;
use common::*;

const V1: &str = "localhost/codeb-test-app:v1";

/// The active slot's row of `get slots -o json`.
fn active(sb: &Sandbox, name: &str) -> serde_json::Value {
    let slots = sb.slots();
    slots
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["project"] == name && s["state"] == "active")
        .cloned()
        .unwrap_or_else(|| panic!("no active slot of {name}: {slots}"))
}

/// The value of `key` in a running container's environment, read inside it (`env` of the test
/// image's busybox; read-only use of the stack's Podman). Empty when unset.
fn printenv(container: &str, key: &str) -> String {
    let out = podman(&["exec", container, "/bin/busybox", "env"]);
    assert!(out.status.success(), "{}", text(&out));
    let prefix = format!("{key}=");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_default()
}

/// The value of `key` in the container serving `name`, and that slot's env version.
fn serving(sb: &Sandbox, name: &str, key: &str) -> (String, Option<u64>) {
    let a = active(sb, name);
    (
        printenv(a["container"].as_str().unwrap(), key),
        a["envVersion"].as_u64(),
    )
}

fn ok(sb: &Sandbox, args: &[&str]) -> std::process::Output {
    let out = sb.codeb(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    out
}

fn deployed(sb: &Sandbox, name: &str, env: &[(&str, &str)]) -> std::path::PathBuf {
    let mut p = ProjectYaml::new(name, V1);
    p.env = env;
    let dir = sb.write(&[p]);
    ok(sb, &["apply", "-f", dir.to_str().unwrap()]);
    dir
}

/// Deletes the project through codeb when the test ends, passed or not.
struct Cleanup<'a>(&'a Sandbox, String);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        cleanup(self.0, &self.1);
    }
}

/// This project's routes in Caddy's config (`@id`s starting `codeb-{name}_`), as JSON text.
fn project_routes(sb: &Sandbox, name: &str) -> Vec<String> {
    let config: serde_json::Value =
        reqwest::blocking::get(format!("{}/config/", sb.stack.caddy_admin))
            .and_then(|r| r.json())
            .expect("Caddy's config as JSON");
    let prefix = format!("codeb-{name}_");
    let mut out: Vec<String> = config["apps"]["http"]["servers"]
        .as_object()
        .into_iter()
        .flat_map(|servers| servers.values())
        .flat_map(|server| server["routes"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["@id"].as_str().is_some_and(|id| id.starts_with(&prefix)))
        .map(|r| r.to_string())
        .collect();
    out.sort();
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every byte of every file under `dir`, recursively.
fn tree_bytes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(tree_bytes(&p));
        } else if p.is_file() {
            out.push((
                p.display().to_string(),
                std::fs::read(&p).unwrap_or_default(),
            ));
        }
    }
    out
}

#[test]
fn a_canary_set_with_env_set_reaches_the_container_and_appears_nowhere_else() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("envc");
    let _cleanup = Cleanup(&sb, name.clone());
    let canary = format!("canary-{}-5ecret", name.replace('-', ""));
    // The manifest names TOKEN too: the stored value wins. Its inline values are sealed in the
    // store as well: no record holds them (the inline canary is looked for as the stored one).
    let inline_canary = format!("inline-{}-c4nary", name.replace('-', ""));
    let dir = deployed(
        &sb,
        &name,
        &[
            ("GREETING", "hello"),
            ("TOKEN", "inline-default"),
            ("INLINE_CANARY", inline_canary.as_str()),
        ],
    );
    let dir_s = dir.to_str().unwrap();
    let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
    let mut record = |what: &str, out: std::process::Output| {
        seen.push((format!("{what} stdout"), out.stdout));
        seen.push((format!("{what} stderr"), out.stderr));
    };

    let set = sb.codeb(&[
        "-vv",
        "--log-format",
        "json",
        "env",
        "set",
        &name,
        &format!("TOKEN={canary}"),
    ]);
    assert_eq!(set.status.code(), Some(0), "{}", text(&set));
    assert!(
        String::from_utf8_lossy(&set.stderr).contains("\"level\""),
        "JSON logs"
    );
    record("env set -vv --log-format json", set);
    let set = sb.codeb(&["-vv", "env", "set", &name, "OTHER=plain"]);
    assert_eq!(set.status.code(), Some(0), "{}", text(&set));
    record("env set -vv", set);

    let (token, version) = serving(&sb, &name, "TOKEN");
    assert_eq!(
        token, canary,
        "the stored value reaches the container and wins over the inline one"
    );
    assert_eq!(version, Some(2));
    assert_eq!(
        serving(&sb, &name, "GREETING").0,
        "hello",
        "inline env still there"
    );
    assert_eq!(serving(&sb, &name, "INLINE_CANARY").0, inline_canary);
    assert_eq!(
        sb.get(&format!("{name}.codeb.test"), "/"),
        (200, "v1".into())
    );
    // The positive control: an admin reads it back.
    let got = ok(&sb, &["env", "get", &name, "TOKEN"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), canary);

    for format in ["table", "json", "yaml"] {
        for args in [
            vec!["get", "projects"],
            vec!["get", "slots"],
            vec!["get", "hosts"],
            vec!["describe", "project", &name],
            vec!["env", "list", &name],
            vec!["env", "history", &name],
            vec!["env", "diff", &name, "1", "2"],
            vec!["audit"],
        ] {
            let mut a = args.clone();
            a.extend(["-o", format]);
            let out = ok(&sb, &a);
            record(&a.join(" "), out);
        }
    }
    // JSON describe shows each slot's env version.
    let describe = ok(&sb, &["describe", "project", &name, "-o", "json"]);
    let d: serde_json::Value = serde_json::from_slice(&describe.stdout).unwrap();
    let slots = d["environments"][0]["slots"].as_array().unwrap();
    assert!(slots.iter().any(|s| s["envVersion"] == 2), "{d}");
    record("apply -vv", sb.codeb(&["-vv", "apply", "-f", dir_s]));
    record("diff -vv", sb.codeb(&["-vv", "diff", "-f", dir_s]));
    record(
        "apply --dry-run",
        sb.codeb(&["apply", "--dry-run", "-f", dir_s]),
    );
    // Errors.
    for args in [
        vec![
            "env".to_string(),
            "set".into(),
            name.clone(),
            format!("BAD-KEY={canary}"),
        ],
        vec!["env".into(), "get".into(), name.clone(), "NOPE".into()],
        vec![
            "env".into(),
            "diff".into(),
            name.clone(),
            "1".into(),
            "99".into(),
        ],
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sb.codeb(&a);
        assert_ne!(out.status.code(), Some(0), "{}", text(&out));
        record(&a.join(" "), out);
    }
    // Container labels.
    for (cname, _, _) in containers(&format!("{name}-")) {
        let out = podman(&["inspect", "--format", "{{json .Config.Labels}}", &cname]);
        assert!(out.status.success(), "{}", text(&out));
        record(&format!("labels of {cname}"), out);
    }
    // The backup directory.
    let backup = sb.dir.path().join("backup");
    record(
        "env backup",
        ok(&sb, &["env", "backup", "--to", backup.to_str().unwrap()]),
    );
    let mut files = tree_bytes(&sb.state());
    files.extend(tree_bytes(&backup));
    assert!(files.iter().any(|(p, _)| p.ends_with("codeb.redb")));
    seen.extend(files);

    let leaks: Vec<&String> = seen
        .iter()
        .filter(|(_, bytes)| contains(bytes, &canary) || contains(bytes, &inline_canary))
        .map(|(what, _)| what)
        .collect();
    assert!(leaks.is_empty(), "the canary leaked into: {leaks:?}");
}

#[test]
fn an_env_change_rolls_out_blue_green_under_load_and_rollback_restores_the_previous_value() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("envr");
    let _cleanup = Cleanup(&sb, name.clone());
    let host = format!("{name}.codeb.test");
    let dir = deployed(&sb, &name, &[]);
    ok(&sb, &["env", "set", &name, "MODE=one"]);
    assert_eq!(serving(&sb, &name, "MODE"), ("one".into(), Some(1)));
    assert_kernel_mode(&sb);
    let first = active(&sb, &name)["slot"].clone();

    // This project's Caddy routes must not change during the change (the kernel switches; each
    // Caddy reload closes idle keep-alive connections). Other tests share this Caddy: a reload of
    // theirs is named in a failure, not taken for ours.
    let routes_before = project_routes(&sb, &name);
    assert_eq!(
        routes_before.len(),
        3,
        "the hostname and both previews: {routes_before:?}"
    );
    let caddy_before = caddy_config(&sb.stack.caddy_admin);
    let load = Load::start(&sb.stack.http, &host, "/", 8);
    std::thread::sleep(Duration::from_millis(300));
    ok(&sb, &["env", "set", &name, "MODE=two"]);
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    let foreign_reload = caddy_config(&sb.stack.caddy_admin) != caddy_before;
    assert!(
        report.socket_errors().is_empty(),
        "{} (Caddy's config was changed meanwhile: {foreign_reload})",
        report.describe()
    );
    assert_eq!(
        project_routes(&sb, &name),
        routes_before,
        "an env change of a live environment changes none of its Caddy routes"
    );
    assert!(report.non_2xx().is_empty(), "{}", report.describe());
    assert!(report.total() > 100, "{}", report.describe());
    let now = active(&sb, &name);
    assert_ne!(
        now["slot"], first,
        "the change went to the other slot (blue/green)"
    );
    assert_eq!(serving(&sb, &name, "MODE"), ("two".into(), Some(2)));

    // Rollback restores the image and the env together: the grace slot runs version 1.
    ok(&sb, &["rollback", &name]);
    assert_eq!(active(&sb, &name)["slot"], first);
    assert_eq!(serving(&sb, &name, "MODE"), ("one".into(), Some(1)));
    // An apply does not promote the release rolled away from again.
    ok(&sb, &["apply", "-f", dir.to_str().unwrap()]);
    assert_eq!(serving(&sb, &name, "MODE"), ("one".into(), Some(1)));
    // A restore of version 2 is a new version (3) and a new release.
    ok(&sb, &["env", "restore", &name, "--version", "2"]);
    assert_eq!(serving(&sb, &name, "MODE"), ("two".into(), Some(3)));
}

/// A JSON request to the daemon's API.
fn api(
    serve: &ServeProcess,
    method: &str,
    path: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut req = client
        .request(method.parse().unwrap(), serve.url(path))
        .header("X-API-Key", key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().unwrap();
    let status = res.status().as_u16();
    (status, res.text().unwrap())
}

#[test]
fn protected_keys_are_kept_against_a_developers_import_through_the_api_and_changed_by_an_admin_with_the_flag(
) {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("envp");
    let _cleanup = Cleanup(&sb, name.clone());
    let canary = format!("canary-{}-api", name.replace('-', ""));
    let dir = sb.write(&[ProjectYaml::new(&name, V1)]);
    ok(&sb, &["apply", "-f", dir.to_str().unwrap()]);
    let admin = sb.key(&["--role", "admin", "--name", "ops"]);
    let dev = sb.key(&["--role", "developer", "--name", "ci"]);
    let viewer = sb.key(&["--role", "viewer", "--name", "look"]);
    let serve = sb.serve(&dir, &["--resync", "2s"]);
    let env = format!("/api/v1/projects/{name}/environments/production/env");
    let mut answers: Vec<String> = Vec::new();

    let (s, b) = api(
        &serve,
        "PUT",
        &env,
        &admin,
        Some(serde_json::json!({
        "vars": {"DATABASE_URL": "postgres://original", "TOKEN": canary}, "protected": true})),
    );
    assert_eq!(s, 200, "{b}");
    answers.push(b);
    let (s, b) = api(
        &serve,
        "POST",
        &format!("{env}/import"),
        &dev,
        Some(serde_json::json!({
        "name": "upload.env", "text": "DATABASE_URL=postgres://evil\nAPP_MODE=fast\n"})),
    );
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["kept"], serde_json::json!(["DATABASE_URL"]), "{v}");
    assert_eq!(v["rollout"]["converged"], true, "{v}");
    answers.push(b);
    // The import replaced the env: TOKEN is gone, DATABASE_URL kept, APP_MODE added.
    assert_eq!(
        serving(&sb, &name, "DATABASE_URL"),
        ("postgres://original".into(), Some(2))
    );
    assert_eq!(serving(&sb, &name, "APP_MODE").0, "fast");

    // A developer may not ask for the flag, nor read values; a viewer sees nothing of env.
    let (s, b) = api(
        &serve,
        "PUT",
        &env,
        &dev,
        Some(serde_json::json!({
        "vars": {"DATABASE_URL": "postgres://evil"}, "protected": true})),
    );
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("env-protected"), "{b}");
    let (s, b) = api(
        &serve,
        "POST",
        &format!("{env}/get"),
        &dev,
        Some(serde_json::json!({"key": "DATABASE_URL"})),
    );
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("env-read"), "{b}");
    let (s, b) = api(&serve, "GET", &env, &viewer, None);
    assert_eq!(s, 403, "{b}");
    let (s, b) = api(&serve, "GET", &env, &dev, None);
    assert_eq!(s, 200, "{b}");
    answers.push(b);
    let (s, b) = api(&serve, "GET", &format!("{env}/history"), &dev, None);
    assert_eq!(s, 200, "{b}");
    answers.push(b);
    let (s, b) = api(
        &serve,
        "GET",
        &format!("{env}/diff?from=1&to=2"),
        &dev,
        None,
    );
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("TOKEN"), "{b}");
    answers.push(b);

    // The admin changes it with the flag, through the CLI and the daemon's socket.
    let out = ok(
        &sb,
        &[
            "env",
            "set",
            &name,
            "--protected",
            "DATABASE_URL=postgres://rotated",
            &format!("TOKEN={canary}"),
        ],
    );
    answers.push(String::from_utf8_lossy(&out.stdout).into_owned());
    assert_eq!(
        serving(&sb, &name, "DATABASE_URL"),
        ("postgres://rotated".into(), Some(3))
    );
    // The loop keeps it: after its next sweeps the serving container is the same release.
    let before = active(&sb, &name);
    assert!(
        serve.wait_sweeps(2, Duration::from_secs(20)),
        "{}",
        serve.log()
    );
    assert_eq!(active(&sb, &name), before, "the loop did not move back");
    let (s, b) = api(
        &serve,
        "POST",
        &format!("{env}/get"),
        &admin,
        Some(serde_json::json!({"key": "TOKEN"})),
    );
    assert_eq!(
        (
            s,
            serde_json::from_str::<serde_json::Value>(&b).unwrap()["value"].clone()
        ),
        (200, serde_json::json!(canary))
    );
    for path in [
        "/api/v1/projects",
        &format!("/api/v1/projects/{name}"),
        "/api/v1/slots",
        "/api/v1/audit",
        &env,
        "/metrics",
    ] {
        let (s, b) = api(&serve, "GET", path, &admin, None);
        assert_eq!(s, 200, "{path}: {b}");
        answers.push(b);
    }
    for a in &answers {
        assert!(!a.contains(&canary), "the canary is in an answer: {a}");
    }
    assert!(
        !serve.log().contains(&canary),
        "the canary is in the daemon's log"
    );
    drop(serve);
}

#[test]
fn a_sigkill_during_the_rollout_of_an_env_change_is_converged_by_the_next_apply() {
    let _l = lock();
    for n in [1, 3, 5] {
        let sb = Sandbox::new();
        let name = unique(&format!("envk{n}"));
        let _cleanup = Cleanup(&sb, name.clone());
        let dir = deployed(&sb, &name, &[]);
        ok(&sb, &["env", "set", &name, "MODE=old"]);
        let out = sb.codeb_env(
            &["env", "set", &name, "MODE=new"],
            &[("CODEB_FAULT_KILL_AFTER", &n.to_string())],
        );
        assert_eq!(
            out.status.code(),
            None,
            "killed after journal write {n}: {}",
            text(&out)
        );
        // The version was committed before the rollout began: whole, and the latest.
        let list = ok(&sb, &["env", "list", &name, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        assert_eq!(v["version"], 2, "{v}");
        ok(&sb, &["apply", "-f", dir.to_str().unwrap()]);
        assert_eq!(
            serving(&sb, &name, "MODE"),
            ("new".into(), Some(2)),
            "kill point {n}"
        );
        let slots = sb.slots();
        let mine: Vec<_> = slots
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["project"] == name.as_str())
            .collect();
        assert_eq!(
            mine.iter().filter(|s| s["state"] == "active").count(),
            1,
            "{mine:?}"
        );
        for (cname, _, state) in containers(&format!("{name}-")) {
            assert!(
                mine.iter()
                    .any(|s| s["container"] == cname.as_str() && s["state"] != "empty"),
                "kill point {n}: stray container {cname}"
            );
            assert_eq!(state, "running", "{cname}");
        }
        assert_eq!(
            sb.get(&format!("{name}.codeb.test"), "/"),
            (200, "v1".into())
        );
    }
}

/// The manifests of `name` with this image, health path, inline env and `envFrom`.
fn manifest(
    sb: &Sandbox,
    name: &str,
    image: &str,
    health: &str,
    env: &[(&str, &str)],
    env_from: &str,
) -> std::path::PathBuf {
    let mut p = ProjectYaml::new(name, image);
    p.env = env;
    let project = p
        .render()
        .replace(
            "        path: /health\n",
            &format!("        path: {health}\n"),
        )
        .replace(
            "      promotion:",
            &format!("      envFrom: {env_from}\n      promotion:"),
        );
    sb.save_text(&format!("{}{project}", sb.stack.host_yaml()))
}

/// Everything the store tells of `name`: its records and history, its env versions, the audit.
fn records(sb: &Sandbox, name: &str) -> Vec<String> {
    [
        vec!["describe", "project", name, "-o", "json"],
        vec!["env", "history", name, "-o", "json"],
        vec!["get", "slots", "-o", "json"],
    ]
    .iter()
    .map(|args| String::from_utf8_lossy(&ok(sb, args).stdout).into_owned())
    .collect()
}

#[test]
fn diff_shows_each_changed_field_and_env_key_with_values_hidden_and_exits_1_then_0_after_apply() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("fdiff");
    let _cleanup = Cleanup(&sb, name.clone());
    let tag = name.replace('-', "");
    let canary = format!("canary-{tag}-st0red");
    let inline_old = format!("canary-{tag}-inl1ne");
    let inline_new = format!("canary-{tag}-inl2ne");
    // v1, its stored env not pinned (`envFrom: none`): an `env set` writes a version and rolls
    // nothing out, so the manifests' switch to `stored` is what brings API_TOKEN in.
    let dir = manifest(
        &sb,
        &name,
        V1,
        "/health",
        &[("GREETING", "hello"), ("INLINE_TOKEN", &inline_old)],
        "none",
    );
    let dir_s = dir.to_str().unwrap().to_string();
    ok(&sb, &["apply", "-f", &dir_s]);
    ok(&sb, &["env", "set", &name, &format!("API_TOKEN={canary}")]);
    let converged = sb.codeb(&["diff", "-f", &dir_s]);
    assert_eq!(converged.status.code(), Some(0), "{}", text(&converged));

    manifest(
        &sb,
        &name,
        "localhost/codeb-test-app:v2",
        "/",
        &[
            ("GREETING", "hello"),
            ("INLINE_TOKEN", &inline_new),
            ("NEW_KEY", "x"),
        ],
        "stored",
    );
    let state = records(&sb, &name);
    let diff = sb.codeb(&["diff", "-f", &dir_s]);
    let shown = String::from_utf8_lossy(&diff.stdout).to_string();
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff));
    let at = |line: &str| {
        shown
            .find(line)
            .unwrap_or_else(|| panic!("no {line:?} in:\n{shown}"))
    };
    let env = format!("{name}/production");
    let image = at(&format!(
        "{env}: image {V1} → localhost/codeb-test-app:v2\n"
    ));
    at(&format!("{env}: healthCheck.path /health → /\n"));
    at(&format!("{env}: envFrom none → stored\n"));
    at(&format!("{env}: envVersion (none) → 1\n"));
    at(&format!("{env}: env API_TOKEN added (value hidden)\n"));
    at(&format!("{env}: env INLINE_TOKEN changed (value hidden)\n"));
    at(&format!("{env}: env NEW_KEY added (value hidden)\n"));
    assert!(!shown.contains("GREETING"), "unchanged: not shown\n{shown}");
    let first_step = shown.find("\n  ").expect("steps") + 1;
    assert!(
        image < first_step,
        "the changes come before the steps\n{shown}"
    );

    let json = sb.codeb(&["diff", "-f", &dir_s, "-o", "json"]);
    assert_eq!(json.status.code(), Some(1), "{}", text(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let changes = v["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{v}");
    assert_eq!(changes[0]["environment"], env);
    assert_eq!(changes[0]["change"], "changed");
    let fields: Vec<(String, serde_json::Value, serde_json::Value)> = changes[0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["field"].as_str().unwrap().to_string(),
                f["from"].clone(),
                f["to"].clone(),
            )
        })
        .collect();
    assert_eq!(
        fields,
        vec![
            (
                "image".into(),
                V1.into(),
                "localhost/codeb-test-app:v2".into()
            ),
            ("envVersion".into(), serde_json::Value::Null, "1".into()),
            ("healthCheck.path".into(), "/health".into(), "/".into()),
            ("envFrom".into(), "none".into(), "stored".into()),
        ],
        "exactly those: {v}"
    );
    assert_eq!(
        changes[0]["env"],
        serde_json::json!([
            {"name": "API_TOKEN", "change": "added"},
            {"name": "INLINE_TOKEN", "change": "changed"},
            {"name": "NEW_KEY", "change": "added"},
        ])
    );
    assert!(!v["steps"].as_array().unwrap().is_empty(), "{v}");
    for out in [&diff, &json] {
        for secret in [&canary, &inline_old, &inline_new] {
            assert!(
                !contains(&out.stdout, secret) && !contains(&out.stderr, secret),
                "a value shown: {}",
                text(out)
            );
        }
    }
    // What the store holds, as codeb reads it, is as before (the redb file's bytes are not:
    // any process that opens it, `get` too, rewrites its header).
    assert_eq!(records(&sb, &name), state, "diff changed the store");

    ok(&sb, &["apply", "-f", &dir_s]);
    assert_eq!(serving(&sb, &name, "API_TOKEN"), (canary.clone(), Some(1)));
    assert_eq!(serving(&sb, &name, "INLINE_TOKEN").0, inline_new);
    let after = sb.codeb(&["diff", "-f", &dir_s, "-o", "json"]);
    assert_eq!(after.status.code(), Some(0), "{}", text(&after));
    let v: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(v["changes"], serde_json::json!([]), "{v}");
}
