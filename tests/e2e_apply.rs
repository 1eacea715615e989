//! End to end against the real Podman and Caddy: deploy, idempotence, promote/rollback, failed
//! releases, drift repair, bad input and unreachable backends.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn apply_deploys_a_project_that_serves_through_caddy_and_a_second_apply_changes_nothing() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("idem");
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        sb.get(&format!("{name}.codeb.test"), "/"),
        (200, "v1".to_string())
    );
    assert_eq!(
        sb.get(&format!("blue.{name}.codeb.test"), "/"),
        (200, "v1".to_string())
    );
    assert_eq!(sb.slot_state(&name, "blue"), "active");

    let ids_before = containers(&name);
    let caddy_before = caddy_config(&sb.stack.caddy_admin);
    let again = sb.apply(&dir);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to do"),
        "{}",
        text(&again)
    );
    assert_eq!(containers(&name), ids_before);
    assert_eq!(caddy_config(&sb.stack.caddy_admin), caddy_before);

    let diff = sb.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    assert_eq!(diff.status.code(), Some(0), "{}", text(&diff));
    cleanup(&sb, &name);
    assert!(containers(&name).is_empty());
    assert_eq!(
        sb.get(&format!("{name}.codeb.test"), "/").0,
        200,
        "Caddy answers an empty 200 for unknown hosts"
    );
}

#[test]
fn manual_promotion_waits_then_promote_and_rollback_switch_and_the_rollback_holds() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("promo");
    let host = format!("{name}.codeb.test");
    let mut p = ProjectYaml::new(&name, "localhost/codeb-test-app:v1");
    p.promotion = "manual";
    assert_eq!(sb.apply(&sb.write(&[p])).status.code(), Some(0));
    assert_eq!(
        sb.get(&host, "/").1,
        "v1",
        "the first release is promoted whatever the mode"
    );

    let mut p2 = ProjectYaml::new(&name, "localhost/codeb-test-app:v2");
    p2.promotion = "manual";
    let dir = sb.write(&[p2]);
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("codeb promote"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.get(&host, "/").1, "v1");
    assert_eq!(
        sb.get(&format!("green.{host}"), "/").1,
        "v2",
        "the new release is on its preview URL"
    );
    assert_eq!(sb.slot_state(&name, "green"), "deployed");

    let diff = sb.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    assert_eq!(
        diff.status.code(),
        Some(0),
        "awaiting promotion is converged: {}",
        text(&diff)
    );

    let promote = sb.codeb(&["promote", &name]);
    assert_eq!(promote.status.code(), Some(0), "{}", text(&promote));
    assert_eq!(sb.get(&host, "/").1, "v2");
    assert_eq!(sb.slot_state(&name, "blue"), "grace");

    let rollback = sb.codeb(&["rollback", &name]);
    assert_eq!(rollback.status.code(), Some(0), "{}", text(&rollback));
    assert_eq!(sb.get(&host, "/").1, "v1");
    assert_eq!(sb.slot_state(&name, "green"), "grace");

    let again = sb.apply(&dir);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(
        sb.get(&host, "/").1,
        "v1",
        "a rollback holds against re-applying the same manifests"
    );

    let none = sb.codeb(&["promote", &name, "--env", "staging"]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
    cleanup(&sb, &name);
}

#[test]
fn a_release_that_never_gets_healthy_fails_and_the_active_slot_keeps_serving() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("bad");
    let host = format!("{name}.codeb.test");
    assert_eq!(
        sb.apply(&sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]))
            .status
            .code(),
        Some(0)
    );
    let mut bad = ProjectYaml::new(&name, "localhost/codeb-test-unhealthy:v1");
    bad.timeout = "2s";
    let dir = sb.write(&[bad]);
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(sb.get(&host, "/").1, "v1");
    assert_eq!(sb.slot_state(&name, "green"), "failed");
    let kept = containers(&format!("{name}-production-green"));
    assert_eq!(kept.len(), 1, "the failed container is kept for inspection");
    assert_ne!(kept[0].2, "running");
    let describe = sb.codeb(&["describe", "project", &name]);
    let d = String::from_utf8_lossy(&describe.stdout);
    assert!(d.contains("failed"), "{d}");
    assert!(
        d.contains("unhealthy app starting"),
        "the log tail is shown: {d}"
    );
    // Not redeployed in a loop: the same manifests exit 1 again without touching anything.
    let again = sb.apply(&dir);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(containers(&format!("{name}-production-green")), kept);
    // Not in sync, though nothing is left to do: `diff` and a dry run say so (exit 1), so a CI
    // gate on them does not pass a failed release.
    let diff = sb.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff));
    assert!(text(&diff).contains("failed"), "{}", text(&diff));
    let dry = sb.codeb(&["apply", "--dry-run", "-f", dir.to_str().unwrap()]);
    assert_eq!(dry.status.code(), Some(1), "{}", text(&dry));
    assert!(text(&dry).contains("not converged"), "{}", text(&dry));
    cleanup(&sb, &name);
}

#[test]
fn drift_is_repaired_by_the_next_apply() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("drift");
    let host = format!("{name}.codeb.test");
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    assert_eq!(sb.apply(&dir).status.code(), Some(0));

    // A container removed by hand.
    let c = format!("{name}-production-blue");
    assert!(podman(&["rm", "-f", &c]).status.success());
    assert_eq!(sb.apply(&dir).status.code(), Some(0));
    assert!(eventually(Duration::from_secs(10), || sb.get(&host, "/").1 == "v1"));

    // A container stopped by hand.
    assert!(podman(&["stop", "-t", "1", &c]).status.success());
    assert_eq!(sb.apply(&dir).status.code(), Some(0));
    assert!(eventually(Duration::from_secs(10), || sb.get(&host, "/").1 == "v1"));

    // A route deleted from Caddy.
    let route = format!("codeb-{name}_production");
    assert_eq!(
        caddy_admin(&sb.stack.caddy_admin, "DELETE", &format!("/id/{route}"), ""),
        200
    );
    assert_ne!(sb.get(&host, "/").1, "v1");
    assert_eq!(sb.apply(&dir).status.code(), Some(0));
    assert_eq!(sb.get(&host, "/").1, "v1");

    // Caddy restarted and lost its config.
    let restart = std::process::Command::new("bash")
        .arg(format!("{}/deploy/stack.sh", env!("CARGO_MANIFEST_DIR")))
        .arg("restart-caddy")
        .output()
        .unwrap();
    assert!(restart.status.success(), "{}", text(&restart));
    assert_ne!(sb.get(&host, "/").1, "v1");
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(sb.get(&host, "/").1, "v1");
    cleanup(&sb, &name);
}

#[test]
fn invalid_manifests_exit_2_and_change_nothing() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("typo");
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let file = dir.join("all.yaml");
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, good.replace("      port: 8080", "      prot: 8080")).unwrap();
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("all.yaml:") && err.contains("prot") && err.contains("port"),
        "{err}"
    );
    assert!(containers(&name).is_empty(), "nothing was applied");
}

#[test]
fn an_unreachable_podman_names_the_host_and_endpoint_and_exits_1() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("down");
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let file = dir.join("all.yaml");
    let text_ = std::fs::read_to_string(&file)
        .unwrap()
        .replace(&sb.stack.podman, "unix:///nonexistent/podman.sock");
    std::fs::write(&file, text_).unwrap();
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("local") && all.contains("/nonexistent/podman.sock"),
        "{all}"
    );
}

#[test]
fn env_values_never_appear_in_output() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("secret");
    let mut p = ProjectYaml::new(&name, "localhost/codeb-test-app:v1");
    // Not a protected key (DATABASE_URL is: a manifest may not set it, see tests/cli_env.rs).
    p.env = &[("SESSION_SECRET", "postgres://u:hunter2-secret@db/x")];
    let dir = sb.write(&[p]);
    let outs = [
        sb.codeb(&["apply", "--dry-run", "-f", dir.to_str().unwrap()]),
        sb.apply(&dir),
        sb.codeb(&["get", "slots", "-o", "yaml"]),
        sb.codeb(&["describe", "project", &name]),
        sb.codeb(&["-vv", "diff", "-f", dir.to_str().unwrap()]),
    ];
    for out in &outs {
        assert!(!text(out).contains("hunter2"), "{}", text(out));
    }
    assert!(
        text(&outs[3]).contains("SESSION_SECRET"),
        "env keys are shown, values hidden"
    );
    cleanup(&sb, &name);
}

#[test]
fn prune_removes_dropped_projects_refuses_to_empty_everything_and_delete_f_removes_a_file_s_projects(
) {
    let _l = lock();
    let sb = Sandbox::new();
    let (a, b) = (unique("prunea"), unique("pruneb"));
    let dir = sb.write(&[
        ProjectYaml::new(&a, "localhost/codeb-test-app:v1"),
        ProjectYaml::new(&b, "localhost/codeb-test-app:v1"),
    ]);
    assert_eq!(sb.apply(&dir).status.code(), Some(0));
    assert_eq!(containers(&format!("{b}-")).len(), 1);

    // Without --prune, dropping b from the manifests leaves it alone.
    let only_a = sb.write(&[ProjectYaml::new(&a, "localhost/codeb-test-app:v1")]);
    assert_eq!(sb.apply(&only_a).status.code(), Some(0));
    assert_eq!(sb.get(&format!("{b}.codeb.test"), "/").1, "v1");
    // With --prune it goes: containers, routes and records.
    let out = sb.codeb(&["apply", "--prune", "-f", only_a.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(containers(&format!("{b}-")).is_empty());
    assert_ne!(sb.get(&format!("{b}.codeb.test"), "/").1, "v1");
    assert!(!sb
        .slots()
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["project"] == b.as_str()));

    // Manifests with no project at all: --prune refuses unless --allow-empty.
    let none = sb.write(&[]);
    let refused = sb.codeb(&["apply", "--prune", "-f", none.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("--allow-empty"),
        "{}",
        text(&refused)
    );
    assert_eq!(containers(&format!("{a}-")).len(), 1, "nothing was removed");

    // delete -f removes the projects a file declares.
    let file = sb.write(&[ProjectYaml::new(&a, "localhost/codeb-test-app:v1")]);
    let del = sb.codeb(&["delete", "-f", file.to_str().unwrap()]);
    assert_eq!(del.status.code(), Some(0), "{}", text(&del));
    assert!(containers(&format!("{a}-")).is_empty());
    let again = sb.codeb(&["delete", "project", &a]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "deleting what is not recorded is a usage error: {}",
        text(&again)
    );
}

/// Everything a store records, as codeb reads it back: slots, hosts, the project's history.
fn recorded(sb: &Sandbox, name: &str) -> Vec<String> {
    [
        vec!["get", "slots", "-o", "json"],
        vec!["get", "hosts", "-o", "json"],
        vec!["describe", "project", name, "-o", "json"],
    ]
    .iter()
    .map(|args| {
        let out = sb.codeb(args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let answer = String::from_utf8(out.stdout).unwrap();
        if args[1] != "hosts" {
            return answer;
        }
        // `get hosts` also says what each host answers now (its round trip varies): only what
        // is recorded is compared.
        let mut hosts: serde_json::Value = serde_json::from_str(&answer).unwrap();
        for h in hosts.as_array_mut().unwrap() {
            let h = h.as_object_mut().unwrap();
            for live in [
                "reachable",
                "unknownSinceMs",
                "lastError",
                "rttUs",
                "podmanVersion",
                "caddyVersion",
            ] {
                h.remove(live);
            }
        }
        hosts.to_string()
    })
    .collect()
}

/// A dry run and a diff record nothing: not the hosts or zones they name, not how a host switches,
/// not a journal line; the store's file is byte-identical after them (they, and `get`, open it
/// read-only: a database opened for writing rewrites its allocator state when it closes).
#[test]
fn a_dry_run_and_a_diff_record_nothing() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("dry");
    let dir = sb.write(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = recorded(&sb, &name);
    // A new release, and a Host of another name: an apply would record both.
    let changed = sb.write_docs(
        &format!(
            "{}---\n{}",
            sb.stack.host_yaml(),
            sb.stack
                .host_doc("127.0.0.1")
                .replace("name: local", "name: spare")
        ),
        &[ProjectYaml::new(&name, "localhost/codeb-test-app:v2")],
    );
    let file = sb.state().join("codeb.redb");
    let bytes = std::fs::read(&file).unwrap();
    let dry = sb.codeb(&["apply", "--dry-run", "-f", changed.to_str().unwrap()]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("deploy"),
        "{}",
        text(&dry)
    );
    let diff = sb.codeb(&["diff", "-f", changed.to_str().unwrap()]);
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff));
    assert!(
        std::fs::read(&file).unwrap() == bytes,
        "a dry run or a diff changed the store's file"
    );
    assert_eq!(
        recorded(&sb, &name),
        before,
        "a dry run or a diff recorded something"
    );
    cleanup(&sb, &name);
}

/// Reads never wait for writes: while a one-shot `apply` holds the store, waiting on a health
/// check, `get`, `describe`, `diff` and `apply --dry-run` are answered from a read-only open of the
/// store, and a change (`promote`) is refused at once, naming what holds the store.
#[test]
fn reads_are_answered_while_an_apply_waits_on_a_health_check_and_a_change_is_refused_naming_it() {
    let _l = lock();
    let sb = Sandbox::new();
    let up = unique("reader");
    let slow = unique("waiting");
    let out = sb.apply(&sb.write(&[ProjectYaml::new(&up, "localhost/codeb-test-app:v1")]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Never healthy: the apply waits its whole health timeout.
    let mut waiting = ProjectYaml::new(&slow, "localhost/codeb-test-unhealthy:v1");
    waiting.timeout = "12s";
    let dir = sb.write(&[
        ProjectYaml::new(&up, "localhost/codeb-test-app:v1"),
        waiting,
    ]);
    let dir_s = dir.to_str().unwrap();
    let mut apply = std::process::Command::new(env!("CARGO_BIN_EXE_codeb"))
        .arg("--state-dir")
        .arg(sb.state())
        .args(["apply", "-f", dir_s])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The apply holds the store and its new container runs (so it waits on the health check).
    let waits = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(sb.state().join("codeb.lock"))
            .is_ok_and(|t| t.contains("codeb apply"))
            && !containers(&slow).is_empty()
    });
    assert!(waits, "the apply never got to its health check");

    let slots = sb.codeb(&["get", "slots", "-o", "json"]);
    assert_eq!(slots.status.code(), Some(0), "{}", text(&slots));
    assert!(
        String::from_utf8_lossy(&slots.stdout).contains(&up),
        "{}",
        text(&slots)
    );
    let describe = sb.codeb(&["describe", "project", &up]);
    assert_eq!(describe.status.code(), Some(0), "{}", text(&describe));
    let releases = sb.codeb(&["releases", &up, "-o", "json"]);
    assert_eq!(releases.status.code(), Some(0), "{}", text(&releases));
    assert!(
        String::from_utf8_lossy(&releases.stdout).contains("\"active\""),
        "{}",
        text(&releases)
    );
    let diff = sb.codeb(&["diff", "-f", dir_s]);
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff));
    let dry = sb.codeb(&["apply", "--dry-run", "-f", dir_s]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let promote = sb.codeb(&["promote", &up]);
    assert_eq!(promote.status.code(), Some(1), "{}", text(&promote));
    let refusal = String::from_utf8_lossy(&promote.stderr);
    assert!(
        refusal.contains("`codeb apply` (pid ")
            && refusal.contains(&apply.id().to_string())
            && refusal.contains("nothing was done"),
        "{}",
        text(&promote)
    );
    assert!(
        apply.try_wait().unwrap().is_none(),
        "the apply ended before the reads: they proved nothing"
    );
    let done = apply.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(1), "{}", text(&done));
    cleanup(&sb, &slow);
    cleanup(&sb, &up);
}

/// kubectl habits: `get` takes singular or plural and a NAME (nothing matching is exit 2), and
/// `describe` may leave out the word `project`.
#[test]
fn get_takes_a_name_in_singular_or_plural_and_describe_needs_no_kind_word() {
    let _l = lock();
    let sb = Sandbox::new();
    let (one, other) = (unique("named"), unique("other"));
    let dir = sb.write(&[
        ProjectYaml::new(&one, "localhost/codeb-test-app:v1"),
        ProjectYaml::new(&other, "localhost/codeb-test-app:v1"),
    ]);
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = sb.codeb(&all);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    };
    let plural = rows(&["get", "projects"]);
    assert!(plural.iter().any(|r| r["project"] == one.as_str()));
    assert!(plural.iter().any(|r| r["project"] == other.as_str()));
    for args in [["get", "project", &one], ["get", "projects", &one]] {
        let named = rows(&args);
        assert!(!named.is_empty());
        assert!(
            named.iter().all(|r| r["project"] == one.as_str()),
            "{named:?}"
        );
    }
    let slots = rows(&["get", "slot", &one]);
    assert!(!slots.is_empty() && slots.iter().all(|r| r["project"] == one.as_str()));
    let hosts = rows(&["get", "host", "local"]);
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    let missing = sb.codeb(&["get", "project", "no-such-project"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(text(&missing).contains("no project `no-such-project` is recorded"));

    let short = sb.codeb(&["describe", &one, "-o", "json"]);
    assert_eq!(short.status.code(), Some(0), "{}", text(&short));
    let long = sb.codeb(&["describe", "project", &one, "-o", "json"]);
    assert_eq!(long.status.code(), Some(0), "{}", text(&long));
    let (short, long): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&short.stdout).unwrap(),
        serde_json::from_slice(&long.stdout).unwrap(),
    );
    assert_eq!(short["project"], long["project"]);
    assert_eq!(short["project"], one.as_str(), "{short}");
    let wrong = sb.codeb(&["describe", "host", "local"]);
    assert_eq!(wrong.status.code(), Some(2), "{}", text(&wrong));
    cleanup(&sb, &one);
    cleanup(&sb, &other);
}
