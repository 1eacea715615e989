//! Crash safety against the real Podman and Caddy: a rollout killed with SIGKILL at every step
//! boundary, and at timed points inside long steps, is converged by the next apply with exactly one
//! active slot, no stray container and no route to a missing slot.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Checks the invariants after a recovery apply: v2 serves, one active slot whose container runs,
/// every container belongs to a non-empty slot, every codeb route of the project dials a running slot.
fn assert_converged(sb: &Sandbox, name: &str, context: &str) {
    assert_serves(sb, name, "v2", context);
}

/// As [`assert_converged`], with `version` serving.
fn assert_serves(sb: &Sandbox, name: &str, version: &str, context: &str) {
    let host = format!("{name}.codeb.test");
    assert_eq!(sb.get(&host, "/").1, version, "{context}");
    let slots = sb.slots();
    let mine: Vec<&serde_json::Value> = slots
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["project"] == name)
        .collect();
    let active: Vec<_> = mine.iter().filter(|s| s["state"] == "active").collect();
    assert_eq!(active.len(), 1, "{context}: {mine:?}");
    let live: Vec<String> = mine
        .iter()
        .filter(|s| s["state"] != "empty")
        .map(|s| s["container"].as_str().unwrap().to_string())
        .collect();
    for (cname, _, state) in containers(&format!("{name}-")) {
        assert!(live.contains(&cname), "{context}: stray container {cname}");
        assert_eq!(state, "running", "{context}: {cname}");
    }
    let config = caddy_config(&sb.stack.caddy_admin);
    let routes = config.matches(&format!("\"codeb-{name}_")).count();
    assert_eq!(
        routes,
        live.len() + 1,
        "{context}: one hostname route and one preview route per live slot\n{config}"
    );
}

/// Rolls v1 → v2 with a SIGKILL after journal write `n`, then applies again and checks.
/// Returns whether the process was killed (false: the rollout had fewer than `n` journal writes).
fn rollout_killed_after(n: u64) -> bool {
    let sb = Sandbox::new();
    let name = unique(&format!("crash{n}"));
    assert_eq!(
        sb.apply(&sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]))
            .status
            .code(),
        Some(0)
    );
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v2")]);
    let killed = apply_killed_after(&sb, &dir, n);
    assert_converged(&sb, &name, &format!("killed after journal write {n}"));
    cleanup(&sb, &name);
    killed
}

/// Applies `dir` with a SIGKILL after journal write `n`, then again to completion (exit 0).
/// Returns whether the first apply was killed.
fn apply_killed_after(sb: &Sandbox, dir: &std::path::Path, n: u64) -> bool {
    let first = Command::new(env!("CARGO_BIN_EXE_codeb"))
        .arg("--state-dir")
        .arg(sb.state())
        .args(["apply", "-f", dir.to_str().unwrap()])
        .env("CODEB_FAULT_KILL_AFTER", n.to_string())
        .output()
        .unwrap();
    let out = sb.apply(dir);
    assert_eq!(
        out.status.code(),
        Some(0),
        "recovery after kill at journal write {n}: {}",
        text(&out)
    );
    first.status.code().is_none()
}

#[test]
fn a_rollout_killed_at_every_step_boundary_converges_on_the_next_apply() {
    let _l = lock();
    // A v1 → v2 rollout with auto promotion commits the journal about once per step (an
    // outcome goes with the next step's intent): kill after each commit until a count past
    // the end lets the rollout finish unkilled.
    let mut killed = 0;
    for n in 1..=40u64 {
        if !rollout_killed_after(n) {
            break;
        }
        killed += 1;
    }
    assert!(
        killed >= 6,
        "a rollout has at least six steps, so at least six kill points ({killed})"
    );
}

/// Rolls v1 → v2 → v3, the last one into the slot whose container still runs v1 (grace): where
/// codeb publishes slot ports, the deploy renames that container aside and removes it after the
/// switch. SIGKILL after journal write `n` of the v3 rollout, then apply again and check: no
/// container set aside is left, v3 serves, and each slot's port leads to its own release.
fn replacement_killed_after(n: u64) -> bool {
    let sb = Sandbox::new();
    let name = unique(&format!("aside{n}"));
    for v in ["v1", "v2"] {
        let dir = sb.write(&[ProjectYaml::new(
            &name,
            &format!("localhost/codeb-test-app:{v}"),
        )]);
        assert_eq!(sb.apply(&dir).status.code(), Some(0));
    }
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v3")]);
    let killed = apply_killed_after(&sb, &dir, n);
    let context = format!("killed after journal write {n} of the replacement");
    assert_serves(&sb, &name, "v3", &context);
    // Each live slot's published port answers with that slot's release.
    for slot in sb.slots().as_array().unwrap() {
        if slot["project"] != name.as_str() || slot["state"] == "empty" {
            continue;
        }
        let port = slot["port"].as_u64().unwrap();
        let image = slot["image"].as_str().unwrap();
        let (status, body) = common::load::fresh_get(
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{port}"),
            "/",
        )
        .unwrap_or_else(|e| panic!("{context}: slot port {port}: {e}"));
        assert_eq!(status, 200, "{context}: slot port {port}");
        assert!(
            image.ends_with(&format!(":{body}")),
            "{context}: {image} on {port} answered {body}"
        );
    }
    cleanup(&sb, &name);
    killed
}

#[test]
fn a_release_deployed_beside_the_one_it_replaces_killed_at_every_step_converges() {
    let _l = lock();
    let mut killed = 0;
    for n in 1..=40u64 {
        if !replacement_killed_after(n) {
            break;
        }
        killed += 1;
    }
    assert!(
        killed >= 6,
        "a replacement has at least six steps, so at least six kill points ({killed})"
    );
}

#[test]
fn a_rollout_killed_at_timed_points_inside_steps_converges_on_the_next_apply() {
    let _l = lock();
    for delay_ms in [150u64, 400, 700, 1000] {
        let sb = Sandbox::new();
        let name = unique(&format!("crasht{delay_ms}"));
        assert_eq!(
            sb.apply(&sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]))
                .status
                .code(),
            Some(0)
        );
        let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v2")]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_codeb"))
            .arg("--state-dir")
            .arg(sb.state())
            .args(["apply", "-f", dir.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Not a sleep standing in for a condition: the point is to stop the process at an
        // arbitrary moment of its rollout.
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let out = sb.apply(&dir);
        assert_eq!(
            out.status.code(),
            Some(0),
            "recovery after kill at {delay_ms} ms: {}",
            text(&out)
        );
        assert_converged(&sb, &name, &format!("killed at {delay_ms} ms"));
        cleanup(&sb, &name);
    }
}
