//! `codeb watch` end to end against the real Podman, Caddy and PowerDNS: saved changes go live,
//! drift is repaired by events and resyncs (DNS records too), a broken save changes nothing,
//! PowerDNS stopped holds back no deploy and its zone recovers, SIGTERM is prompt and leaves the
//! apps serving, and the CLI keeps working beside the daemon through its socket.
//!
//! Every wait is a bounded poll. Each daemon runs as a child that is killed when its guard drops.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const START: Duration = Duration::from_secs(20);

#[test]
fn a_saved_image_change_goes_live_and_a_broken_save_removes_nothing() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("wsave");
    let host = format!("{name}.codeb.test");
    let dir = sb.save(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    // A resync far away: only the file watcher can see the save in time.
    let w = sb.watch(&dir, &["--resync", "10m"]);
    assert!(
        eventually(START, || serves(&sb, &host, "v1")),
        "{}",
        w.log()
    );
    // `codeb version` names the daemon's build beside its own.
    let out = sb.codeb(&["version", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["daemon"]["version"], v["version"], "{v}");
    assert_eq!(v["daemon"]["commit"], v["commit"], "{v}");
    sb.save(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v2")]);
    assert!(
        eventually(Duration::from_secs(10), || serves(&sb, &host, "v2")),
        "{}",
        w.log()
    );
    drop(w);
    // With no daemon, only its own.
    let out = sb.codeb(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.get("daemon").is_none(), "{v}");

    // With resyncs every 2 s, a typo saved over the good manifests: reported with file and
    // line, nothing removed, however many resyncs read it again.
    let w = sb.watch(&dir, &["--resync", "2s"]);
    assert!(w.wait_sweeps(1, START), "{}", w.log());
    let before = containers(&name);
    let good = std::fs::read_to_string(dir.join("all.yaml")).unwrap();
    sb.save_text(&good.replace("      port: 8080", "      prot: 8080"));
    assert!(
        w.wait_log(Duration::from_secs(10), "all.yaml:"),
        "{}",
        w.log()
    );
    let log = w.log();
    let line = log.lines().find(|l| l.contains("all.yaml:")).unwrap();
    assert!(line.contains("prot") && line.contains("invalid"), "{line}");
    assert!(w.wait_sweeps(2, Duration::from_secs(10)), "{}", w.log());
    assert!(serves(&sb, &host, "v2"));
    assert_eq!(containers(&name), before, "nothing was touched");
    // Half a file (a save caught mid-write) is no different.
    sb.save_text(&good[..good.len() / 2]);
    assert!(w.wait_sweeps(2, Duration::from_secs(10)));
    assert!(serves(&sb, &host, "v2"));
    assert_eq!(containers(&name), before);
    // A valid save is taken again.
    sb.save(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v3")]);
    assert!(
        eventually(Duration::from_secs(15), || serves(&sb, &host, "v3")),
        "{}",
        w.log()
    );
    drop(w);
    cleanup(&sb, &name);
}

#[test]
fn an_active_container_removed_or_stopped_by_hand_comes_back_on_its_event() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("wkill");
    let host = format!("{name}.codeb.test");
    let dir = sb.save(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    // A resync far away: only the Podman event can bring it back in time.
    let w = sb.watch(&dir, &["--resync", "10m"]);
    assert!(
        eventually(START, || serves(&sb, &host, "v1")),
        "{}",
        w.log()
    );
    assert!(w.wait_log(START, "watching container events"));
    // The resync is 10 minutes away, so coming back within the poll window proves the event path.
    // How fast is measured by benches/watch.sh, not asserted here.
    for _ in 0..2 {
        let rm = podman(&["rm", "-f", &format!("{name}-production-blue")]);
        assert!(rm.status.success(), "{}", text(&rm));
        assert!(
            eventually(Duration::from_secs(10), || serves(&sb, &host, "v1")),
            "{}",
            w.log()
        );
    }
    // Stopped by hand: Podman's restart policy leaves a stopped container alone; codeb starts it.
    let stop = podman(&["stop", "-t", "1", &format!("{name}-production-blue")]);
    assert!(stop.status.success(), "{}", text(&stop));
    assert!(
        eventually(Duration::from_secs(10), || serves(&sb, &host, "v1")),
        "{}",
        w.log()
    );
    assert!(w.log().contains("container event"), "{}", w.log());
    drop(w);
    cleanup(&sb, &name);
}

#[test]
fn a_route_deleted_from_caddy_or_lost_in_a_restart_comes_back_within_one_resync() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("wroute");
    let host = format!("{name}.codeb.test");
    let dir = sb.save(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let w = sb.watch(&dir, &["--resync", "2s"]);
    assert!(
        eventually(START, || serves(&sb, &host, "v1")),
        "{}",
        w.log()
    );

    // The deploy's last round (which would put a route deleted before it back at once) is over
    // by the next sweep.
    assert!(w.wait_sweeps(1, Duration::from_secs(10)), "{}", w.log());
    let route = format!("codeb-{name}_production");
    assert_eq!(
        caddy_admin(&sb.stack.caddy_admin, "DELETE", &format!("/id/{route}"), ""),
        200
    );
    assert!(!serves(&sb, &host, "v1"));
    assert!(
        eventually(Duration::from_secs(5), || serves(&sb, &host, "v1")),
        "{}",
        w.log()
    );

    let restart = std::process::Command::new("bash")
        .arg(format!("{}/deploy/stack.sh", env!("CARGO_MANIFEST_DIR")))
        .arg("restart-caddy")
        .output()
        .unwrap();
    assert!(restart.status.success(), "{}", text(&restart));
    assert!(
        eventually(Duration::from_secs(5), || serves(&sb, &host, "v1")),
        "{}",
        w.log()
    );
    drop(w);
    cleanup(&sb, &name);
}

#[test]
fn sigterm_exits_0_promptly_and_leaves_the_apps_serving_and_a_restart_changes_nothing() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("wterm");
    let host = format!("{name}.codeb.test");
    let dir = sb.save(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let mut w = sb.watch(&dir, &["--resync", "2s", "--log-format", "json"]);
    assert!(
        eventually(START, || serves(&sb, &host, "v1")),
        "{}",
        w.log()
    );
    assert!(w.wait_sweeps(1, Duration::from_secs(5)));
    let before = containers(&name);

    let status = w
        .terminate(Duration::from_secs(10))
        .expect("exits within 10 s");
    assert_eq!(status.code(), Some(0), "{}", w.log());
    assert!(serves(&sb, &host, "v1"));
    assert!(
        !sb.state().join("codeb.sock").exists(),
        "the socket is removed"
    );
    // One JSON object per line, one line per reconcile with its key, result, duration and actions.
    let log = w.log();
    let reconciles: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect(l))
        .filter(|v| v["fields"]["message"] == "reconciled")
        .collect();
    let deploy = reconciles
        .iter()
        .find(|v| v["fields"]["work"] == format!("{name}/production"))
        .expect("a reconcile of the project");
    for field in ["result", "duration_ms", "actions"] {
        assert!(!deploy["fields"][field].is_null(), "{field}: {deploy}");
    }

    // A restart picks up where it stopped: here, nothing to do.
    let w = sb.watch(&dir, &["--resync", "2s"]);
    assert!(w.wait_sweeps(2, START), "{}", w.log());
    assert_eq!(containers(&name), before);
    assert!(serves(&sb, &host, "v1"));
    drop(w);
    cleanup(&sb, &name);
}

#[test]
fn the_cli_works_through_the_daemon_and_a_promote_or_rollback_is_not_undone() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("wcli");
    let host = format!("{name}.codeb.test");
    let manual = |image| {
        let mut p = ProjectYaml::new(&name, image);
        p.promotion = "manual";
        p
    };
    let dir = sb.save(&[manual("localhost/codeb-test-app:v1")]);
    let w = sb.watch(&dir, &["--resync", "2s"]);
    assert!(
        eventually(START, || serves(&sb, &host, "v1")),
        "{}",
        w.log()
    );
    assert!(sb.state().join("codeb.sock").exists());
    // The daemon's sweeps record how the host switches traffic: `get hosts` through it shows it.
    assert!(
        eventually(Duration::from_secs(10), || {
            let out = sb.codeb(&["get", "hosts", "-o", "json"]);
            let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            hosts[0]["switch"] == "kernel" || hosts[0]["switch"] == "caddy-admin"
        }),
        "{}",
        w.log()
    );

    sb.save(&[manual("localhost/codeb-test-app:v2")]);
    assert!(
        eventually(Duration::from_secs(15), || sb.slot_state(&name, "green")
            == "deployed"),
        "{}",
        w.log()
    );
    // Manual promotion waits: v2 is never served before a promote. (Once in a clean-clone CI run
    // the single GET here did not get v1 right after green was recorded deployed, and the test
    // printed nothing more; it now says what it got, and v1 must be served within 5 s.)
    let (status, body) = http_get_within(&sb.stack.http, &host, "/", Duration::from_secs(1));
    assert_ne!(body, "v2", "manual promotion waits\n{}", w.log());
    assert!(
        eventually(Duration::from_secs(5), || serves(&sb, &host, "v1")),
        "manual promotion waits: v1 is served (first GET: {status} {body:?})\n{}",
        w.log()
    );
    let slots = sb.slots();
    assert!(slots
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["project"] == name));

    let diff = sb.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    assert_eq!(diff.status.code(), Some(0), "{}", text(&diff));

    let promote = sb.codeb(&["promote", &name]);
    assert_eq!(promote.status.code(), Some(0), "{}", text(&promote));
    assert!(serves(&sb, &host, "v2"), "at once");
    assert!(w.wait_sweeps(2, Duration::from_secs(10)));
    assert_eq!(
        sb.get(&host, "/"),
        (200, "v2".into()),
        "not undone by the loop\n{}",
        w.log()
    );

    let rollback = sb.codeb(&["rollback", &name]);
    assert_eq!(rollback.status.code(), Some(0), "{}", text(&rollback));
    assert!(serves(&sb, &host, "v1"));
    assert!(w.wait_sweeps(2, Duration::from_secs(10)));
    assert_eq!(
        sb.get(&host, "/"),
        (200, "v1".into()),
        "the rollback holds against the loop\n{}",
        w.log()
    );

    // The same exit codes as without the daemon.
    let none = sb.codeb(&["promote", &name, "--env", "staging"]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
    let describe = sb.codeb(&["describe", "project", &name]);
    assert_eq!(describe.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&describe.stdout).contains("Held:"));
    let delete = sb.codeb(&["delete", "project", &name]);
    assert_eq!(delete.status.code(), Some(2), "{}", text(&delete));
    assert!(
        String::from_utf8_lossy(&delete.stderr).contains("keeps in force"),
        "{}",
        text(&delete)
    );

    // apply -f through the daemon, from a relative path: applied once, outside the watched dir.
    let other = unique("wother");
    let extra = sb.dir.path().join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(
        extra.join("other.yaml"),
        format!(
            "{}{}",
            sb.stack.host_yaml(),
            ProjectYaml::new(&other, "localhost/codeb-test-app:v3").render()
        ),
    )
    .unwrap();
    let apply = std::process::Command::new(env!("CARGO_BIN_EXE_codeb"))
        .current_dir(sb.dir.path())
        .arg("--state-dir")
        .arg(sb.state())
        .args(["apply", "-f", "extra"])
        .output()
        .unwrap();
    assert_eq!(apply.status.code(), Some(0), "{}", text(&apply));
    assert!(
        String::from_utf8_lossy(&apply.stdout).contains("leaves them as applied"),
        "{}",
        text(&apply)
    );
    assert!(serves(&sb, &format!("{other}.codeb.test"), "v3"));
    assert!(w.wait_sweeps(2, Duration::from_secs(10)));
    assert!(serves(&sb, &format!("{other}.codeb.test"), "v3"));
    let delete = sb.codeb(&["delete", "project", &other]);
    assert_eq!(delete.status.code(), Some(0), "{}", text(&delete));
    drop(w);
    cleanup(&sb, &name);
}

#[test]
fn watch_refuses_invalid_manifests_at_start_with_exit_2_and_applies_nothing() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("wbad");
    let dir = sb.save(&[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")]);
    let good = std::fs::read_to_string(dir.join("all.yaml")).unwrap();
    sb.save_text(&good.replace("      port: 8080", "      prot: 8080"));
    let mut w = sb.watch(&dir, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = w.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(2));
    assert!(w.log().contains("all.yaml:"), "{}", w.log());
    assert!(containers(&name).is_empty());
}

/// A zone of this test's own, seeded with a foreign A record, and the manifests' head (Host and
/// managed Zone) for it.
fn dns_sandbox(sb: &Sandbox, pdns: &Pdns, prefix: &str) -> (String, String) {
    let zone = format!("{}.test", unique(prefix));
    pdns.create_zone(
        &zone,
        json!([{
            "name": format!("www.{zone}."), "type": "A", "ttl": 3600,
            "records": [{"content": "192.0.2.10", "disabled": false}],
        }]),
    );
    let head = format!(
        "{}{}",
        sb.stack.host_doc("127.0.0.1"),
        managed_zone(&zone, &pdns.api, "PDNS_API_KEY")
    );
    (zone, head)
}

/// Saves `head` and these projects as the watched manifests.
fn save_docs(sb: &Sandbox, head: &str, projects: &[ProjectYaml]) -> std::path::PathBuf {
    let mut text = head.to_string();
    for p in projects {
        text.push_str(&p.render());
    }
    sb.save_text(&text)
}

/// `hostname` and both its preview names resolve to the Host's address through PowerDNS.
fn resolves(pdns: &Pdns, hostname: &str) -> bool {
    ["", "blue.", "green."]
        .iter()
        .all(|p| pdns.dig(&format!("{p}{hostname}"), "A") == "127.0.0.1")
}

/// None of `hostname`'s names has an A record.
fn gone(pdns: &Pdns, hostname: &str) -> bool {
    ["", "blue.", "green."]
        .iter()
        .all(|p| pdns.dig(&format!("{p}{hostname}"), "A").is_empty())
}

#[test]
fn watched_dns_records_appear_come_back_within_one_resync_and_follow_a_saved_hostname() {
    let _l = lock();
    let (sb, pdns) = (Sandbox::new(), Pdns::get());
    let (zone, head) = dns_sandbox(&sb, &pdns, "wzone");
    let foreign = pdns.foreign(&zone);
    let name = unique("wdns");
    let host = format!("{name}.{zone}");
    let moved = format!("moved-{name}.{zone}");
    let project = |hostname| {
        let mut p = ProjectYaml::new(&name, "localhost/codeb-test-app:v1");
        p.zone = &zone;
        p.hostname = hostname;
        p
    };
    let dir = save_docs(&sb, &head, &[project(None)]);
    let w = sb.watch(&dir, &["--resync", "2s"]);
    assert!(
        eventually(START, || resolves(&pdns, &host) && serves(&sb, &host, "v1")),
        "{}",
        w.log()
    );
    assert_eq!(pdns.foreign(&zone), foreign);

    // Edited by hand: one record deleted, another pointed elsewhere. Nothing but the resync (every
    // 2 s) can notice: PowerDNS sends no event.
    pdns.patch(
        &zone,
        json!([
            {"name": format!("{host}."), "type": "A", "changetype": "DELETE"},
            {"name": format!("blue.{host}."), "type": "A", "ttl": 60, "changetype": "REPLACE",
             "records": [{"content": "10.9.9.9", "disabled": false}]},
        ]),
    );
    assert!(!resolves(&pdns, &host));
    assert!(
        eventually(Duration::from_secs(10), || resolves(&pdns, &host)),
        "{}",
        w.log()
    );
    assert_eq!(pdns.foreign(&zone), foreign);

    // A saved hostname change: the records move with it, in the same write.
    save_docs(&sb, &head, &[project(Some(moved.as_str()))]);
    assert!(
        eventually(Duration::from_secs(15), || resolves(&pdns, &moved)
            && gone(&pdns, &host)
            && serves(&sb, &moved, "v1")),
        "{}",
        w.log()
    );
    assert_eq!(pdns.foreign(&zone), foreign);
    assert!(!w.log().contains(&pdns.key), "the key is never logged");
    drop(w);
    cleanup(&sb, &name);
    assert!(
        pdns.codeb_rrsets(&zone).is_empty(),
        "delete took the records"
    );
    pdns.delete_zone(&zone);
}

/// Starts PowerDNS again when dropped, so a failing test leaves the stack whole.
struct StartAgain;

impl Drop for StartAgain {
    fn drop(&mut self) {
        let _ = stack(&["up"]);
    }
}

fn stack(args: &[&str]) -> std::process::Output {
    std::process::Command::new("bash")
        .arg(format!("{}/deploy/stack.sh", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn powerdns_stopped_holds_back_no_deploy_and_its_zone_recovers_once_it_is_back() {
    let _l = lock();
    let (sb, pdns) = (Sandbox::new(), Pdns::get());
    let (zone, head) = dns_sandbox(&sb, &pdns, "wdown");
    let (a, b) = (unique("wdowna"), unique("wdownb"));
    let project = |name, image| {
        let mut p = ProjectYaml::new(name, image);
        p.zone = &zone;
        p
    };
    let dir = save_docs(&sb, &head, &[project(&a, "localhost/codeb-test-app:v1")]);
    let w = sb.watch(&dir, &["--resync", "2s"]);
    let host_a = format!("{a}.{zone}");
    let host_b = format!("{b}.{zone}");
    assert!(
        eventually(START, || resolves(&pdns, &host_a)
            && serves(&sb, &host_a, "v1")),
        "{}",
        w.log()
    );

    let _start_again = StartAgain;
    let stop = stack(&["stop", "pdns"]);
    assert!(stop.status.success(), "{}", text(&stop));
    // A new image for `a` and a new project `b`, saved while PowerDNS is down: both go live.
    save_docs(
        &sb,
        &head,
        &[
            project(&a, "localhost/codeb-test-app:v2"),
            project(&b, "localhost/codeb-test-app:v1"),
        ],
    );
    assert!(
        eventually(Duration::from_secs(20), || serves(&sb, &host_a, "v2")
            && serves(&sb, &host_b, "v1")),
        "{}",
        w.log()
    );
    assert!(
        w.wait_log(
            Duration::from_secs(10),
            &format!(
                "zone {zone} is unreachable: cannot reach PowerDNS's API at {}",
                pdns.api
            )
        ),
        "{}",
        w.log()
    );

    let up = stack(&["up"]);
    assert!(up.status.success(), "{}", text(&up));
    // Within one backoff step (at most 30 s) of PowerDNS answering again.
    assert!(
        eventually(Duration::from_secs(35), || resolves(&pdns, &host_b)),
        "{}",
        w.log()
    );
    assert!(resolves(&pdns, &host_a));
    assert!(!w.log().contains(&pdns.key), "the key is never logged");
    drop(w);
    cleanup(&sb, &a);
    cleanup(&sb, &b);
    pdns.delete_zone(&zone);
}

#[test]
fn watch_refuses_a_managed_zone_whose_key_variable_is_unset_with_exit_2() {
    let _l = lock();
    let (sb, pdns) = (Sandbox::new(), Pdns::get());
    let name = unique("wnokey");
    let zone = format!("{}.test", unique("wnokey"));
    let head = format!(
        "{}{}",
        sb.stack.host_doc("127.0.0.1"),
        managed_zone(&zone, &pdns.api, "CODEB_TEST_NO_SUCH_KEY")
    );
    let mut p = ProjectYaml::new(&name, "localhost/codeb-test-app:v1");
    p.zone = &zone;
    let dir = save_docs(&sb, &head, &[p]);
    let mut w = sb.watch(&dir, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = w.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(2), "{}", w.log());
    let log = w.log();
    assert!(
        log.contains(&format!("Zone {zone}")) && log.contains("CODEB_TEST_NO_SUCH_KEY"),
        "{log}"
    );
    assert!(containers(&name).is_empty(), "nothing was applied");
    assert!(pdns.zone(&zone).is_none());
}

#[test]
fn watch_prune_removes_a_dropped_project_s_records_and_then_forgets_it() {
    let _l = lock();
    let (sb, pdns) = (Sandbox::new(), Pdns::get());
    let (zone, head) = dns_sandbox(&sb, &pdns, "wprune");
    let foreign = pdns.foreign(&zone);
    let (keep, drop_) = (unique("wkeep"), unique("wdrop"));
    let project = |name| {
        let mut p = ProjectYaml::new(name, "localhost/codeb-test-app:v1");
        p.zone = &zone;
        p
    };
    let dir = save_docs(&sb, &head, &[project(&keep), project(&drop_)]);
    let w = sb.watch(&dir, &["--resync", "2s", "--prune"]);
    let (host_keep, host_drop) = (format!("{keep}.{zone}"), format!("{drop_}.{zone}"));
    assert!(
        eventually(START, || resolves(&pdns, &host_keep)
            && resolves(&pdns, &host_drop)
            && serves(&sb, &host_drop, "v1")),
        "{}",
        w.log()
    );
    let recorded = |name: &str| {
        let out = sb.codeb(&["get", "projects", "-o", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).contains(&format!("\"{name}\""))
    };
    assert!(recorded(&drop_) && recorded(&keep));
    save_docs(&sb, &head, &[project(&keep)]);
    assert!(
        eventually(Duration::from_secs(15), || gone(&pdns, &host_drop)
            && containers(&drop_).is_empty()
            && !recorded(&drop_)),
        "{}",
        w.log()
    );
    assert!(resolves(&pdns, &host_keep) && serves(&sb, &host_keep, "v1"));
    assert_eq!(pdns.foreign(&zone), foreign);
    drop(w);
    cleanup(&sb, &keep);
    pdns.delete_zone(&zone);
}
