//! Findings 2, 3 and 4 of the shared-host safety issue, each reproduced against the real Podman,
//! Caddy and PowerDNS and shown not to happen any more:
//! - finding 2: `apply -f one.yaml --prune` sent to a running `codeb watch` removed every other
//!   watched project (an outage until the loop redeployed them); a prune of several projects
//!   needed no confirmation;
//! - finding 3: the state directory was 0755 and `codeb.redb` 0644 (env values readable by any
//!   local user), and with `HOME` unset the store went to the working directory;
//! - finding 4: with `HTTP_PROXY` pointing at a proxy answering 302, an app answering 404 on its
//!   health path was promoted.
//!
//! Every wait is a bounded poll.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

const START: Duration = Duration::from_secs(20);

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `codeb --state-dir STATE ARGS…` under umask 000, so that a mode seen is codeb's own choice.
fn codeb_umask_0(state: &Path, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_codeb"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("codeb runs")
}

/// Whether the unprivileged user `nobody` can read `path` (`setpriv` from util-linux).
fn nobody_reads(path: &Path) -> bool {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(path)
        .output()
        .expect("setpriv runs");
    out.status.success()
}

#[test]
fn finding_3_the_state_dir_is_private_an_unsafe_one_is_refused_and_none_is_guessed() {
    let _l = lock();
    let sb = Sandbox::new();
    // Let other users reach the sandbox, as they reach `~/.local/state` on most machines: only
    // the state directory's own modes may keep them out.
    chmod(sb.dir.path(), 0o755);
    let name = unique("f3");
    let mut p = ProjectYaml::new(&name, "localhost/codeb-test-app:v1");
    p.env = &[("API_TOKEN", "f3-canary-value")];
    let dir = sb.write(&[p]);
    let state = sb.state();

    // A fresh state directory, under umask 000: 0700, its files 0600 (they held 0755/0644).
    let out = codeb_umask_0(&state, &["apply", "-f", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(sb.get(&format!("{name}.codeb.test"), "/").1, "v1");
    let (redb, lock_file) = (state.join("codeb.redb"), state.join("codeb.lock"));
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&redb), 0o600);
    assert_eq!(mode(&lock_file), 0o600);
    assert!(
        !std::fs::read(&redb)
            .unwrap()
            .windows(15)
            .any(|w| w == b"f3-canary-value"),
        "the env value is sealed in the store (docs/env.md), never in plaintext"
    );
    let key_file = state.join("env.key");
    assert_eq!(mode(&key_file), 0o600, "the env key, made under umask 000");
    assert!(!nobody_reads(&redb), "another local user cannot read it");
    assert!(!nobody_reads(&key_file), "nor the key it is sealed under");

    // A state directory an earlier codeb left 0755 with a 0644 store: tightened, with a warning.
    chmod(&state, 0o755);
    chmod(&redb, 0o644);
    assert!(nobody_reads(&redb), "the reproduction: readable by anyone");
    let out = sb.codeb(&["get", "projects"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("set to 0700"), "{}", text(&out));
    assert_eq!((mode(&state), mode(&redb)), (0o700, 0o600));
    assert!(!nobody_reads(&redb));

    // World-writable: refused (exit 2) with the fix, and left as it is.
    chmod(&state, 0o777);
    let out = sb.codeb(&["apply", "-f", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("writable by group or others") && text(&out).contains("chmod 700"),
        "{}",
        text(&out)
    );
    assert_eq!(mode(&state), 0o777);
    chmod(&state, 0o700);

    // Owned by another user: refused with the chown that fixes it.
    std::os::unix::fs::chown(&state, Some(65534), None).unwrap();
    let out = sb.codeb(&["get", "projects"]);
    std::os::unix::fs::chown(&state, Some(0), None).unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("belongs to uid 65534") && text(&out).contains("chown"),
        "{}",
        text(&out)
    );

    // No --state-dir, CODEB_STATE_DIR, XDG_STATE_HOME nor HOME: refused, and nothing is created in
    // the working directory (before, the store went to ./.local/state/codeb).
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_codeb"))
        .args(["get", "projects"])
        .current_dir(cwd.path())
        .env_remove("HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("CODEB_STATE_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no state directory") && text(&out).contains("--state-dir"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);

    cleanup(&sb, &name);
}

/// A proxy on 127.0.0.1 that answers `302 Found` to every request, counting the connections it
/// gets.
fn redirecting_proxy() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 8192];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(
                b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (url, seen)
}

/// `codeb --state-dir STATE ARGS…` with every proxy variable pointing at `proxy` and no
/// exception for loopback addresses.
fn codeb_behind(sb: &Sandbox, proxy: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_codeb"));
    cmd.arg("--state-dir").arg(sb.state()).args(args);
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
    ] {
        cmd.env(var, proxy);
    }
    cmd.env_remove("NO_PROXY").env_remove("no_proxy");
    cmd.output().expect("codeb runs")
}

#[test]
fn finding_4_a_proxy_answering_302_neither_passes_the_health_gate_nor_sees_a_request() {
    let _l = lock();
    let (sb, pdns) = (Sandbox::new(), Pdns::get());
    let (proxy, seen) = redirecting_proxy();
    // A managed zone: PowerDNS's API (and its key) would be reached through the proxy too.
    let zone = format!("{}.test", unique("f4zone"));
    pdns.create_zone(&zone, json!([]));
    let head = format!(
        "{}{}",
        sb.stack.host_doc("127.0.0.1"),
        managed_zone(&zone, &pdns.api, "PDNS_API_KEY")
    );
    let name = unique("f4");
    let host = format!("{name}.{zone}");
    let project = |image, timeout| {
        let mut p = ProjectYaml::new(&name, image);
        p.zone = &zone;
        p.timeout = timeout;
        p
    };

    // A healthy release deploys with the variables set: Podman, Caddy's admin API, PowerDNS and
    // the probe are all reached directly.
    let dir = sb.write_docs(&head, &[project("localhost/codeb-test-app:v1", "15s")]);
    let out = codeb_behind(&sb, &proxy, &["apply", "-f", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(sb.get(&host, "/").1, "v1");
    assert_eq!(pdns.dig(&host, "A"), "127.0.0.1");

    // A release whose health path answers 404: with the proxy's 302 it was promoted; now it fails
    // its health check (exit 1) and the active slot keeps serving.
    let dir = sb.write_docs(&head, &[project("localhost/codeb-test-unhealthy:v1", "3s")]);
    let out = codeb_behind(&sb, &proxy, &["apply", "-f", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(sb.slot_state(&name, "green"), "failed");
    assert_eq!(sb.slot_state(&name, "blue"), "active");
    assert_eq!(sb.get(&host, "/").1, "v1");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the proxy never got a connection: no probe, no admin call, no API key went through it"
    );

    cleanup(&sb, &name);
    pdns.delete_zone(&zone);
}

/// A manifest file of its own, outside the watched directory: the Host, the Zone and `projects`.
fn one_file(sb: &Sandbox, file: &str, projects: &[ProjectYaml]) -> PathBuf {
    let dir = sb.dir.path().join("elsewhere");
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = sb.stack.host_yaml();
    for p in projects {
        text.push_str(&p.render());
    }
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn finding_2_a_prune_through_the_daemon_or_of_several_projects_needs_more_than_a_slip() {
    let _l = lock();
    let sb = Sandbox::new();
    let (a, b, c) = (unique("f2a"), unique("f2b"), unique("f2c"));
    let (host_a, host_b, host_c) = (
        format!("{a}.codeb.test"),
        format!("{b}.codeb.test"),
        format!("{c}.codeb.test"),
    );
    let app = |name| ProjectYaml::new(name, "localhost/codeb-test-app:v1");
    let watched = sb.save(&[app(&a), app(&b)]);
    let w = sb.watch(&watched, &["--resync", "2s", "--prune"]);
    assert!(
        eventually(START, || serves(&sb, &host_a, "v1")
            && serves(&sb, &host_b, "v1")),
        "{}",
        w.log()
    );
    let before = (containers(&format!("{a}-")), containers(&format!("{b}-")));

    // Through the daemon, a prune of what it keeps in force is refused, however confirmed.
    let one = one_file(&sb, "one.yaml", &[app(&a)]);
    for extra in [None, Some("--confirm=1")] {
        let mut args = vec!["apply", "-f", one.to_str().unwrap(), "--prune"];
        args.extend(extra);
        let out = sb.codeb(&args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let t = text(&out);
        assert!(
            t.contains(&format!("{b}/production"))
                && t.contains("keeps in force")
                && t.contains(watched.to_str().unwrap())
                && t.contains("nothing was applied"),
            "{t}"
        );
    }
    assert!(w.wait_sweeps(1, Duration::from_secs(10)), "{}", w.log());
    assert!(serves(&sb, &host_a, "v1") && serves(&sb, &host_b, "v1"));
    assert_eq!(
        (containers(&format!("{a}-")), containers(&format!("{b}-"))),
        before,
        "nothing was removed, so nothing was redeployed"
    );
    drop(w);

    // Without the daemon: a prune that would remove two projects is refused with the count and
    // the projects, and nothing is applied (c is not deployed either).
    let only_c = one_file(&sb, "c.yaml", &[app(&c)]);
    let only_c = only_c.to_str().unwrap();
    let out = sb.codeb(&["apply", "-f", only_c, "--prune"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("2 environments of 2 projects")
            && t.contains(&a)
            && t.contains(&b)
            && t.contains("--confirm=2"),
        "{t}"
    );
    let wrong = sb.codeb(&["apply", "-f", only_c, "--prune", "--confirm=1"]);
    assert_eq!(wrong.status.code(), Some(2), "{}", text(&wrong));
    assert!(serves(&sb, &host_a, "v1") && serves(&sb, &host_b, "v1"));
    assert!(containers(&format!("{c}-")).is_empty());

    // Confirmed with the count, it proceeds.
    let out = sb.codeb(&["apply", "-f", only_c, "--prune", "--confirm=2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(containers(&format!("{a}-")).is_empty() && containers(&format!("{b}-")).is_empty());
    assert!(serves(&sb, &host_c, "v1"));
    assert!(!serves(&sb, &host_a, "v1"));

    for p in [&a, &b, &c] {
        cleanup(&sb, p);
    }
}
