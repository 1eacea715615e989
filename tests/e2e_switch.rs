//! Zero failed requests during promote and rollback, against the real Podman, Caddy and kernel.
//!
//! A strict HTTP/1.1 keep-alive load (see `common::load`: no retries, every closed or reset
//! connection counts) runs through Caddy for the whole of each test. These tests need what CI has:
//! root and nf_tables, so that codeb switches through the kernel; a host that falls back to Caddy's
//! admin API fails them loudly instead of skipping.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::kernel::{
    assert_kernel_mode, container_ip, nat_rules, nat_targets, service_address, service_chain,
};
use common::load::{fresh_get, ms, InFlight, Load};
use common::*;

/// Promote/rollback cycles under load (each cycle is two switches).
const CYCLES: usize = 20;
/// Concurrent keep-alive clients: busybox httpd's listen backlog is 9, so more would measure
/// dropped SYNs rather than the switch.
const WORKERS: usize = 8;
/// Load between switches, so that every state serves requests on kept-alive connections.
const BETWEEN: Duration = Duration::from_millis(100);

/// A project on manual promotion with v1 active and v2 deployed in green.
fn two_releases(sb: &Sandbox, name: &str, grace: &str) -> std::path::PathBuf {
    let mut p = ProjectYaml::new(name, "localhost/codeb-test-app:v1");
    p.promotion = "manual";
    p.grace = grace;
    let out = sb.apply(&sb.write(&[p]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut p = ProjectYaml::new(name, "localhost/codeb-test-app:v2");
    p.promotion = "manual";
    p.grace = grace;
    let dir = sb.write(&[p]);
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(sb.slot_state(name, "green"), "deployed");
    dir
}

/// The recorded active slot and the version it serves.
fn active(sb: &Sandbox, name: &str) -> (String, String) {
    let slots = sb.slots();
    let s = slots
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["project"] == name && s["state"] == "active")
        .unwrap_or_else(|| panic!("no active slot: {slots}"));
    let image = s["image"].as_str().unwrap();
    (
        s["slot"].as_str().unwrap().to_string(),
        image.rsplit(':').next().unwrap().to_string(),
    )
}

/// `promote` when a slot waits for it, else `rollback` to the grace slot.
fn switch_verb(sb: &Sandbox, name: &str) -> &'static str {
    let slots = sb.slots();
    let deployed = slots
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["project"] == name && s["state"] == "deployed");
    if deployed {
        "promote"
    } else {
        "rollback"
    }
}

#[test]
fn promote_and_rollback_under_keep_alive_load_fail_no_request_and_never_change_caddy() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("sw");
    let host = format!("{name}.codeb.test");
    let http = sb.stack.http.clone();
    two_releases(&sb, &name, "1h");
    assert_kernel_mode(&sb);
    let service = service_address(&sb.stack.caddy_admin, &name);
    let blue = format!("{}:8080", container_ip(&format!("{name}-production-blue")));
    let green = format!("{}:8080", container_ip(&format!("{name}-production-green")));
    assert_eq!(nat_targets(service), vec![blue.clone()]);
    let config_before = caddy_config(&sb.stack.caddy_admin);

    let load = Load::start(&http, &host, "/", WORKERS);
    std::thread::sleep(BETWEEN);
    let mut windows = Vec::new();
    let mut commands = Vec::new();
    for i in 0..CYCLES * 2 {
        // First a promote to green, then rollbacks back and forth (each rollback's target is the
        // slot in grace).
        let (verb, want, target) = match (i, i % 2) {
            (0, _) => ("promote", "v2", &green),
            (_, 0) => ("rollback", "v2", &green),
            _ => ("rollback", "v1", &blue),
        };
        let from = load.now();
        let t = Instant::now();
        let out = sb.codeb(&[verb, &name]);
        commands.push(t.elapsed());
        assert_eq!(out.status.code(), Some(0), "switch {i}: {}", text(&out));
        // New connections reach the new slot as soon as the command returns.
        assert_eq!(
            fresh_get(&http, &host, "/").unwrap(),
            (200, want.to_string()),
            "switch {i}"
        );
        assert_eq!(nat_targets(service), vec![target.clone()], "switch {i}");
        windows.push((from, load.now() + Duration::from_millis(50)));
        std::thread::sleep(BETWEEN);
    }
    let report = load.stop();

    let all = [(Duration::ZERO, Duration::MAX)];
    eprintln!(
        "{} switches: {}; during switches p50 {:.2} ms p99 {:.2} ms, overall p50 {:.2} ms p99 {:.2} ms; \
         command p50 {:.1} ms max {:.1} ms",
        CYCLES * 2,
        report.describe(),
        ms(report.percentile(50.0, &windows).unwrap()),
        ms(report.percentile(99.0, &windows).unwrap()),
        ms(report.percentile(50.0, &all).unwrap()),
        ms(report.percentile(99.0, &all).unwrap()),
        ms(percentile(&mut commands, 50.0)),
        ms(percentile(&mut commands, 100.0)),
    );
    assert!(report.socket_errors().is_empty(), "{}", report.describe());
    assert!(report.non_2xx().is_empty(), "{}", report.describe());
    assert!(report.count_body("v1") > 100 && report.count_body("v2") > 100);
    assert!(report.total() > 1000, "{}", report.describe());
    assert_eq!(
        caddy_config(&sb.stack.caddy_admin),
        config_before,
        "promote and rollback must not change Caddy's config"
    );

    // `delete` removes the project's rules, and only them.
    let chain = service_chain(service);
    assert!(nat_rules().contains(&format!("chain {chain} {{")));
    cleanup(&sb, &name);
    let after = nat_rules();
    assert!(!after.contains(&chain), "{after}");
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p / 100.0).round() as usize]
}

#[test]
fn a_slow_request_in_flight_during_a_switch_completes_from_the_old_slot() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("slow");
    let host = format!("{name}.codeb.test");
    let http = sb.stack.http.clone();
    two_releases(&sb, &name, "1h");
    assert_kernel_mode(&sb);
    let load = Load::start(&http, &host, "/", 4);
    for (verb, old, new) in [("promote", "v1", "v2"), ("rollback", "v2", "v1")] {
        let slow = InFlight::start(&http, &host, "/cgi-bin/slow");
        // Not a stand-in for a condition: the request must be in flight (it takes 2 s) when the
        // switch happens.
        std::thread::sleep(Duration::from_millis(300));
        let out = sb.codeb(&[verb, &name]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(
            fresh_get(&http, &host, "/").unwrap(),
            (200, new.to_string())
        );
        assert_eq!(
            slow.join().unwrap(),
            (200, format!("slow-{old}")),
            "the request in flight during the {verb} finishes on the old slot"
        );
    }
    let report = load.stop();
    assert!(report.socket_errors().is_empty(), "{}", report.describe());
    assert!(report.non_2xx().is_empty(), "{}", report.describe());
    cleanup(&sb, &name);
}

#[test]
fn with_a_zero_grace_period_the_old_slot_is_removed_only_after_its_requests_finish() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("drain");
    let host = format!("{name}.codeb.test");
    let http = sb.stack.http.clone();
    let dir = two_releases(&sb, &name, "0s");
    assert_kernel_mode(&sb);
    let slow_started = Instant::now();
    let slow = InFlight::start(&http, &host, "/cgi-bin/slow");
    std::thread::sleep(Duration::from_millis(300));
    let promote = sb.codeb(&["promote", &name]);
    assert_eq!(promote.status.code(), Some(0), "{}", text(&promote));
    // The grace period is over at once: this apply retires blue, after its request finished.
    let left = Duration::from_secs(2).saturating_sub(slow_started.elapsed());
    let t = Instant::now();
    let out = sb.apply(&dir);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("retire blue"),
        "{}",
        text(&out)
    );
    assert_eq!(
        slow.join().unwrap(),
        (200, "slow-v1".to_string()),
        "the request in flight on blue finished before blue was removed"
    );
    eprintln!("apply took {took:?}; the slow request had {left:?} left when it started");
    // The drain ends with the request (conntrack), far before its 30 s bound.
    assert!(took < Duration::from_secs(20), "{took:?}");
    if left > Duration::from_millis(500) {
        assert!(
            took >= left - Duration::from_millis(300),
            "the retire waited for the request ({took:?}, {left:?} left)"
        );
    }
    assert!(containers(&format!("{name}-production-blue")).is_empty());
    assert_eq!(fresh_get(&http, &host, "/").unwrap(), (200, "v2".into()));
    cleanup(&sb, &name);
}

#[test]
fn codeb_killed_in_the_middle_of_a_switch_never_fails_traffic_and_the_next_apply_converges() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("kill");
    let host = format!("{name}.codeb.test");
    let http = sb.stack.http.clone();
    let dir = two_releases(&sb, &name, "1h");
    assert_kernel_mode(&sb);
    let service = service_address(&sb.stack.caddy_admin, &name);
    let config_before = caddy_config(&sb.stack.caddy_admin);
    let load = Load::start(&http, &host, "/", WORKERS);
    // A switch commits the journal twice: the record's intent, record and outcome with the
    // rule's intent (after the health probe, before the rule), then the rule's outcome. Kill
    // after each, then once past the end.
    let mut killed = 0;
    for n in 1..=3u64 {
        let verb = switch_verb(&sb, &name);
        let out = Command::new(env!("CARGO_BIN_EXE_codeb"))
            .arg("--state-dir")
            .arg(sb.state())
            .args([verb, &name])
            .env("CODEB_FAULT_KILL_AFTER", n.to_string())
            .output()
            .unwrap();
        killed += usize::from(out.status.code().is_none());
        let apply = sb.apply(&dir);
        assert_eq!(
            apply.status.code(),
            Some(0),
            "apply after a {verb} killed at journal write {n}: {}",
            text(&apply)
        );
        let (slot, version) = active(&sb, &name);
        let ip = container_ip(&format!("{name}-production-{slot}"));
        assert_eq!(
            nat_targets(service),
            vec![format!("{ip}:8080")],
            "killed at {n}"
        );
        assert_eq!(
            fresh_get(&http, &host, "/").unwrap(),
            (200, version),
            "killed at {n}"
        );
    }
    let report = load.stop();
    assert_eq!(killed, 2, "a switch has two journal commits");
    assert!(report.socket_errors().is_empty(), "{}", report.describe());
    assert!(report.non_2xx().is_empty(), "{}", report.describe());
    assert_eq!(caddy_config(&sb.stack.caddy_admin), config_before);
    cleanup(&sb, &name);
}
