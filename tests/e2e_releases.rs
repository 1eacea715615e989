//! Release history and `rollback --to N` end to end, against the real Podman and Caddy: releases
//! are numbered as they enter slots, with who, when, their env version and how they ended; a
//! rollback to a release no slot holds any more rolls it out again blue/green with its env
//! version and serves it through Caddy, as a new release marked as a rollback; a rollback to the
//! grace slot's release is the plain switch; a number the history does not hold is exit 2.
//! Through `codeb serve`: `GET .../releases` and `POST .../rollback {"to": N}` over real HTTP,
//! kept in force across the daemon's resyncs, with the roles of `rollback` and `read`.
//!
//! Every wait is a bounded poll.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const V1: &str = "localhost/codeb-test-app:v1";
const V2: &str = "localhost/codeb-test-app:v2";
const V3: &str = "localhost/codeb-test-app:v3";

fn ok(sb: &Sandbox, args: &[&str]) -> std::process::Output {
    let out = sb.codeb(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    out
}

/// `codeb releases NAME -o json`, parsed: newest first.
fn releases(sb: &Sandbox, name: &str) -> Vec<Value> {
    let out = ok(sb, &["releases", name, "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("releases -o json is not JSON ({e}): {}", text(&out)));
    v.as_array().expect("an array").clone()
}

/// `(number, image, state)` of each release, newest first.
fn summary(rows: &[Value]) -> Vec<(u64, String, String)> {
    rows.iter()
        .map(|r| {
            (
                r["number"].as_u64().unwrap(),
                r["image"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn row(rows: &[Value], n: u64) -> &Value {
    rows.iter()
        .find(|r| r["number"] == n)
        .unwrap_or_else(|| panic!("no release {n}: {rows:?}"))
}

/// The value of `key` inside the container serving `name` (busybox `env` in the test image).
fn serving_env(sb: &Sandbox, name: &str, key: &str) -> String {
    let slots = sb.slots();
    let active = slots
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["project"] == name && s["state"] == "active")
        .unwrap_or_else(|| panic!("no active slot: {slots}"));
    let out = podman(&[
        "exec",
        active["container"].as_str().unwrap(),
        "/bin/busybox",
        "env",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let prefix = format!("{key}=");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_default()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn rollback_to_a_release_in_no_slot_serves_it_again_with_its_env_as_a_new_marked_release() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("rel");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let host = format!("{name}.codeb.test");
    let started = now_ms();
    let apply = |image: &str| {
        let dir = sb.write(&[ProjectYaml::new(&name, image)]);
        ok(&sb, &["apply", "-f", dir.to_str().unwrap()]);
        dir
    };
    // 1: v1; 2: v1 with env 1 (COLOR=red); 3: v2 with env 1; 4: v2 with env 2 (COLOR=blue);
    // 5: v3 with env 2. Each goes to the idle slot: 1, 2 and 3 are in no slot after 5.
    apply(V1);
    ok(&sb, &["env", "set", &name, "COLOR=red"]);
    apply(V2);
    ok(&sb, &["env", "set", &name, "COLOR=blue"]);
    let v3 = apply(V3);
    assert_eq!(sb.get(&host, "/"), (200, "v3".to_string()));
    let rows = releases(&sb, &name);
    assert_eq!(
        summary(&rows),
        vec![
            (5, V3.into(), "active".into()),
            (4, V2.into(), "grace".into()),
            (3, V2.into(), "replaced".into()),
            (2, V1.into(), "replaced".into()),
            (1, V1.into(), "replaced".into()),
        ]
    );
    assert_eq!(row(&rows, 2)["envVersion"], 1);
    assert_eq!(row(&rows, 1)["envVersion"], Value::Null);
    for r in &rows {
        assert!(
            r["by"].as_str().unwrap().starts_with("cli (uid "),
            "who: {r}"
        );
        let at = r["atMs"].as_u64().unwrap();
        assert!(at >= started && at <= now_ms(), "when: {r}");
        assert_eq!(
            r["endedAtMs"].is_u64(),
            r["state"] == "replaced",
            "ended: {r}"
        );
    }

    // Release 2 (v1, COLOR=red) in no slot: rolled out again into the idle slot and serving.
    let out = ok(&sb, &["rollback", &name, "--to", "2"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("env version 1 restored as version 3"),
        "{said}"
    );
    assert_eq!(sb.get(&host, "/"), (200, "v1".to_string()));
    assert_eq!(
        serving_env(&sb, &name, "COLOR"),
        "red",
        "the env of release 2 is restored with its image"
    );
    let rows = releases(&sb, &name);
    assert_eq!(rows.len(), 6, "{rows:?}");
    let six = &rows[0];
    assert_eq!(
        (
            six["number"].as_u64(),
            six["image"].as_str(),
            six["state"].as_str(),
            six["rollbackOf"].as_u64(),
            six["envVersion"].as_u64(),
        ),
        (Some(6), Some(V1), Some("active"), Some(2), Some(3))
    );
    assert!(six["by"].as_str().unwrap().starts_with("cli (uid "));
    assert_eq!(row(&rows, 5)["state"], "grace");
    assert_eq!(
        row(&rows, 4)["state"],
        "replaced",
        "its slot took release 6"
    );
    assert!(row(&rows, 4)["endedAtMs"].as_u64().unwrap() >= six["atMs"].as_u64().unwrap());
    let history = ok(&sb, &["env", "history", &name, "-o", "json"]);
    let history: Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(history[2]["restoredFrom"], 1, "{history}");
    let table = ok(&sb, &["releases", &name]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.starts_with("RELEASE") && table.contains("rollback of 2"),
        "{table}"
    );

    // The manifests still name v3: the rollback holds as a release override, applied again.
    let again = ok(&sb, &["apply", "-f", v3.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to do"),
        "{}",
        text(&again)
    );
    assert_eq!(sb.get(&host, "/").1, "v1");
    assert_eq!(releases(&sb, &name).len(), 6);

    // Release 5 is the grace slot's: the plain rollback, starting nothing.
    let containers_before = containers(&name);
    ok(&sb, &["rollback", &name, "--to", "5"]);
    assert_eq!(sb.get(&host, "/").1, "v3");
    assert_eq!(serving_env(&sb, &name, "COLOR"), "blue");
    assert_eq!(containers(&name), containers_before, "nothing started");
    let rows = releases(&sb, &name);
    assert_eq!(rows.len(), 6, "no new release: {rows:?}");
    assert_eq!(row(&rows, 5)["state"], "active");
    assert_eq!(row(&rows, 6)["state"], "grace");

    // Numbers the history does not hold: exit 2, the numbers it holds named, nothing changed.
    for n in ["99", "0"] {
        let out = sb.codeb(&["rollback", &name, "--to", n]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("has no release {n}")) && err.contains("releases 1 to 6"),
            "{err}"
        );
    }
    let none = sb.codeb(&["rollback", "no-such-project", "--to", "1"]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
    assert_eq!(sb.get(&host, "/").1, "v3");
    assert_eq!(releases(&sb, &name).len(), 6);

    // Audited, with who did it, as every change is.
    let audit = ok(&sb, &["audit", "--project", &name, "-o", "json"]);
    let audit: Value = serde_json::from_slice(&audit.stdout).unwrap();
    let to: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "rollback --to")
        .collect();
    assert_eq!(to.len(), 4, "two done, two refused: {audit}");
    assert!(to[0]["actor"].as_str().unwrap().starts_with("cli (uid "));
    assert!(to.iter().any(|e| e["outcome"]["kind"] == "failed"));
}

#[test]
fn rollback_to_n_through_codeb_serve_holds_across_resyncs_with_the_roles_of_rollback() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("relsrv");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let host = format!("{name}.codeb.test");
    // v1, v2 and v3 in turn through the watched manifests: 1 ends in no slot.
    let dir = sb.save(&[ProjectYaml::new(&name, V1)]);
    let serve = sb.serve(&dir, &["--resync", "1s"]);
    for v in ["v1", "v2", "v3"] {
        sb.save(&[ProjectYaml::new(
            &name,
            &format!("localhost/codeb-test-app:{v}"),
        )]);
        assert!(
            eventually(Duration::from_secs(30), || serves(&sb, &host, v)),
            "{v} never served\n{}",
            serve.log()
        );
    }
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let path = |p: &str| {
        serve.url(&format!(
            "/api/v1/projects/{name}/environments/production{p}"
        ))
    };
    let viewer = sb.key(&["--role", "viewer", "--name", "looker"]);
    let developer = sb.key(&["--role", "developer", "--name", "ci", "--project", &name]);
    let send = |method: reqwest::Method, p: &str, key: &str, body: Option<Value>| {
        let mut req = http.request(method, path(p)).header("X-API-Key", key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().unwrap();
        let status = res.status().as_u16();
        (status, res.text().unwrap())
    };
    // Released by the daemon's loop from its manifests; a viewer may read them.
    assert!(
        eventually(Duration::from_secs(10), || {
            let (status, body) = send(reqwest::Method::GET, "/releases", &viewer, None);
            status == 200 && serde_json::from_str::<Value>(&body).unwrap()[0]["state"] == "active"
        }),
        "{}",
        serve.log()
    );
    let (_, body) = send(reqwest::Method::GET, "/releases", &viewer, None);
    let rows: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        summary(rows.as_array().unwrap()),
        vec![
            (3, V3.into(), "active".into()),
            (2, V2.into(), "grace".into()),
            (1, V1.into(), "replaced".into()),
        ]
    );
    assert_eq!(rows[0]["by"], "codeb serve", "{rows}");

    // A viewer may not roll back, with or without `to`; refused before anything is done.
    let (status, body) = send(
        reqwest::Method::POST,
        "/rollback",
        &viewer,
        Some(json!({"to": 1})),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("rollback"), "{body}");
    // A number the history does not hold: 404, a JSON error naming what it holds.
    let (status, body) = send(
        reqwest::Method::POST,
        "/rollback",
        &developer,
        Some(json!({"to": 42})),
    );
    assert_eq!(status, 404, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("releases 1 to 3"),
        "{body}"
    );
    let (status, body) = send(
        reqwest::Method::POST,
        "/rollback",
        &developer,
        Some(json!({"to": "one"})),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(sb.get(&host, "/").1, "v3");

    // The developer rolls back to 1: served through Caddy, and still after resyncs.
    let (status, body) = send(
        reqwest::Method::POST,
        "/rollback",
        &developer,
        Some(json!({"to": 1})),
    );
    assert_eq!(status, 200, "{body}");
    let outcome: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(outcome["converged"], true, "{body}");
    assert_eq!(sb.get(&host, "/"), (200, "v1".to_string()));
    assert!(
        serve.wait_sweeps(3, Duration::from_secs(20)),
        "{}",
        serve.log()
    );
    assert_eq!(
        sb.get(&host, "/").1,
        "v1",
        "the resyncs keep the rollback in force"
    );
    let (_, body) = send(reqwest::Method::GET, "/releases", &developer, None);
    let rows: Value = serde_json::from_str(&body).unwrap();
    let four = &rows[0];
    assert_eq!(
        (
            four["number"].as_u64(),
            four["image"].as_str(),
            four["rollbackOf"].as_u64()
        ),
        (Some(4), Some(V1), Some(1)),
        "{rows}"
    );
    assert!(
        four["by"].as_str().unwrap().ends_with("(ci)"),
        "the key that did it: {four}"
    );
    assert_eq!(rows.as_array().unwrap().len(), 4, "the resyncs made none");

    // The plain rollback (no body) still works, back to release 3.
    let (status, body) = send(reqwest::Method::POST, "/rollback", &developer, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(sb.get(&host, "/").1, "v3");
    // And the original platform's tool takes `to`: release 4 is the grace slot's now.
    let tool = http
        .post(serve.url("/api/tool"))
        .header("X-API-Key", &developer)
        .json(&json!({"tool": "rollback", "project": name, "to": 4}))
        .send()
        .unwrap();
    assert_eq!(tool.status().as_u16(), 200);
    let answer: Value = tool.json().unwrap();
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(sb.get(&host, "/").1, "v1");

    // Both rollbacks are in the audit log with the key.
    let audit = ok(&sb, &["audit", "--project", &name, "-o", "json"]);
    let audit: Value = serde_json::from_slice(&audit.stdout).unwrap();
    let by_ci = |action: &str| {
        audit.as_array().unwrap().iter().any(|e| {
            e["action"] == action
                && e["actor"].as_str().unwrap_or_default().ends_with("(ci)")
                && e["outcome"]["kind"] == "ok"
        })
    };
    assert!(by_ci("rollback --to") && by_ci("rollback"), "{audit}");
    // The viewer's refusal too (refused before its body is read: a plain `rollback` then).
    assert!(
        audit.as_array().unwrap().iter().any(|e| {
            e["action"] == "rollback"
                && e["outcome"]["kind"] == "denied"
                && e["outcome"]["permission"] == "rollback"
                && e["actor"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with("(looker)")
        }),
        "{audit}"
    );
}

#[test]
fn a_rollback_to_killed_around_its_env_and_override_commit_leaves_both_or_neither() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("relkill");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let host = format!("{name}.codeb.test");
    let apply = |image: &str| {
        let dir = sb.write(&[ProjectYaml::new(&name, image)]);
        sb.apply(&dir)
    };
    // 1: v1; 2: v1 with env 1 (red); 3: v2 with env 1; 4: v2 with env 2 (blue). 2 is in no slot.
    assert_eq!(apply(V1).status.code(), Some(0));
    ok(&sb, &["env", "set", &name, "COLOR=red"]);
    assert_eq!(apply(V2).status.code(), Some(0));
    ok(&sb, &["env", "set", &name, "COLOR=blue"]);
    assert_eq!(row(&releases(&sb, &name), 2)["state"], "replaced");
    let versions = |sb: &Sandbox| {
        let out = ok(sb, &["env", "history", &name, "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().unwrap().len()
    };

    // Killed right before the commit: neither the env version nor the override is written.
    let killed = sb.codeb_env(
        &["rollback", &name, "--to", "2"],
        &[("CODEB_FAULT_KILL_BEFORE_ENV_COMMIT", "1")],
    );
    assert_eq!(killed.status.code(), None, "killed: {}", text(&killed));
    assert_eq!(versions(&sb), 2);
    let again = apply(V2);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to do"),
        "{}",
        text(&again)
    );
    assert_eq!(sb.get(&host, "/").1, "v2");
    assert_eq!(serving_env(&sb, &name, "COLOR"), "blue");

    // Killed right after it, before the rollout: both are written, and the next apply finishes
    // the rollback (v1 with the env of release 2), rather than v2 with it or v1 without it.
    let killed = sb.codeb_env(
        &["rollback", &name, "--to", "2"],
        &[("CODEB_FAULT_KILL_AFTER_DATA", "1")],
    );
    assert_eq!(killed.status.code(), None, "killed: {}", text(&killed));
    assert_eq!(versions(&sb), 3);
    assert_eq!(sb.get(&host, "/").1, "v2", "nothing rolled out yet");
    let finish = apply(V2);
    assert_eq!(finish.status.code(), Some(0), "{}", text(&finish));
    assert_eq!(sb.get(&host, "/").1, "v1");
    assert_eq!(serving_env(&sb, &name, "COLOR"), "red");
    let rows = releases(&sb, &name);
    assert_eq!(
        (rows[0]["number"].as_u64(), rows[0]["envVersion"].as_u64()),
        (Some(5), Some(3)),
        "{rows:?}"
    );
}

#[test]
fn with_manual_promotion_a_rollback_to_n_serves_n_once_healthy_and_a_waiting_release_is_refused() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("relman");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let host = format!("{name}.codeb.test");
    let apply = |image: &str| {
        let dir = sb.write(&[manual(&name, image)]);
        ok(&sb, &["apply", "-f", dir.to_str().unwrap()]);
    };
    // 1: v1 serving; 2: v2 deployed and promoted; 3: v3 deployed into v1's slot, waiting.
    apply(V1);
    apply(V2);
    ok(&sb, &["promote", &name]);
    apply(V3);
    assert_eq!(
        summary(&releases(&sb, &name)),
        vec![
            (3, V3.into(), "deployed".into()),
            (2, V2.into(), "active".into()),
            (1, V1.into(), "replaced".into()),
        ]
    );
    // A release waiting for promotion is not a rollback's: refused, pointing at promote.
    let waiting = sb.codeb(&["rollback", &name, "--to", "3"]);
    assert_eq!(waiting.status.code(), Some(2), "{}", text(&waiting));
    assert!(
        String::from_utf8_lossy(&waiting.stderr).contains("codeb promote"),
        "{}",
        text(&waiting)
    );
    assert_eq!(sb.get(&host, "/").1, "v2");
    // Release 1 in no slot: deployed into the idle slot (replacing the waiting 3) and promoted as
    // soon as it is healthy, though the environment's promotion is manual.
    ok(&sb, &["rollback", &name, "--to", "1"]);
    assert_eq!(sb.get(&host, "/"), (200, "v1".to_string()));
    let rows = releases(&sb, &name);
    assert_eq!(
        summary(&rows),
        vec![
            (4, V1.into(), "active".into()),
            (3, V3.into(), "replaced".into()),
            (2, V2.into(), "grace".into()),
            (1, V1.into(), "replaced".into()),
        ]
    );
    assert_eq!(rows[0]["rollbackOf"], 1);
}
