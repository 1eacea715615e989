//! Finding 8 of the shared-host safety issue, "endpoints and keys are the operator's, not the
//! manifest author's", reproduced with the real `codeb` binary and shown not to happen any more:
//! a Zone could name any `http://` PowerDNS API and any environment variable as its key variable,
//! so `codeb diff` on a pull request sent the CI's `GITHUB_TOKEN` to an address of the PR author's
//! choice (and a later `delete` used the recorded zone); a Host could name plaintext `tcp://`
//! Podman anywhere.
//!
//! No test sends anything to an address off this machine: the refusal of `tcp://10.0.0.5:8888`
//! is shown by tracing codeb's `connect` calls, which must not include it. Every wait is bounded.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// A CI secret a manifest author would like to have.
const CANARY: &str = "ghp_canary_0123456789abcdefABCDEF";

/// Host, a managed Zone whose API and key variable the manifest author chose, and a project in it.
fn zone_manifests(sb: &Sandbox, zone: &str, api: &str, key_env: &str, name: &str) -> String {
    let head = format!(
        "{}{}",
        sb.stack.host_doc("127.0.0.1"),
        managed_zone(zone, api, key_env)
    );
    let mut p = ProjectYaml::new(name, "localhost/codeb-test-app:v1");
    p.zone = zone;
    let dir = sb.write_docs(&head, &[p]);
    dir.to_str().unwrap().to_string()
}

/// What a pull request's author would write: a Zone whose API is a listener of the test's own
/// (on loopback, non-blocking, to count connections) and whose key variable is `GITHUB_TOKEN`.
/// Returns the listener, the zone and the manifest directory.
fn github_token_zone(sb: &Sandbox, prefix: &str) -> (TcpListener, String, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let api = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
    let zone = format!("{}.test", unique(&format!("z{prefix}")));
    let dir = zone_manifests(sb, &zone, &api, "GITHUB_TOKEN", &unique(prefix));
    (l, zone, dir)
}

/// Answers every request on `l` with a 500 until `stop`; returns the requests' heads.
fn answer_500(l: &TcpListener, stop: &AtomicBool) -> Vec<String> {
    let mut requests = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                requests.push(String::from_utf8_lossy(&buf[..n]).to_string());
                let _ = s.write_all(
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    requests
}

fn connected(l: &TcpListener) -> bool {
    match l.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

#[test]
fn finding_8_diff_never_reads_a_ci_token_a_zone_names_nor_contacts_its_api() {
    let _l = lock();
    let sb = Sandbox::new();
    let (l, zone, dir) = github_token_zone(&sb, "gh");

    let out = sb.codeb_env(&["diff", "-f", &dir], &[("GITHUB_TOKEN", CANARY)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "Zone {zone}: spec.powerdns.apiKeyEnv names GITHUB_TOKEN"
        )) && err.contains("keyVariables")
            && err.contains(&sb.state().join("config.yaml").display().to_string()),
        "names the Zone, the variable and where to allow it: {err}"
    );
    assert!(!text(&out).contains(CANARY), "{}", text(&out));
    assert!(!connected(&l), "the Zone's API got a connection");

    // `apply --dry-run` the same: refused, nothing contacted.
    let out = sb.codeb_env(
        &["apply", "--dry-run", "-f", &dir],
        &[("GITHUB_TOKEN", CANARY)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!text(&out).contains(CANARY), "{}", text(&out));
    assert!(!connected(&l), "the Zone's API got a connection");
}

#[test]
fn finding_8_an_operator_config_is_what_lets_a_key_variable_through() {
    let _l = lock();
    let sb = Sandbox::new();
    let (l, _zone, dir) = github_token_zone(&sb, "ok");
    let config = sb.dir.path().join("operator.yaml");
    std::fs::write(&config, "keyVariables: [PDNS_API_KEY, GITHUB_TOKEN]\n").unwrap();

    // The operator allowed it: codeb reads the variable and asks the API, which here is the
    // test's listener; it answers 500, so the zone cannot be observed (diff's exit 3).
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (l, stop) = (l.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || answer_500(&l, &stop))
    };
    let out = sb.codeb_env(
        &["--config", config.to_str().unwrap(), "diff", "-f", &dir],
        &[("GITHUB_TOKEN", CANARY)],
    );
    stop.store(true, Ordering::Relaxed);
    let requests = server.join().unwrap();
    assert!(
        !requests.is_empty(),
        "the allowed API was never asked: {}",
        text(&out)
    );
    assert!(
        requests
            .iter()
            .all(|r| r.to_ascii_lowercase().contains("x-api-key: ") && r.contains(CANARY)),
        "the allowed variable is the key sent: {requests:?}"
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(!text(&out).contains(CANARY), "{}", text(&out));

    // A configuration others can write is not the operator's: refused, exit 2.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = sb.codeb_env(
        &["--config", config.to_str().unwrap(), "diff", "-f", &dir],
        &[("GITHUB_TOKEN", CANARY)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writable by group or others"),
        "{}",
        text(&out)
    );
    assert!(
        !connected(&l),
        "the API got a connection under a refused configuration"
    );
}

/// `codeb ARGS…` under `strace -f -e trace=connect`: its output and every address it dialed.
fn traced(state: &Path, args: &[&str]) -> (Output, String) {
    let log = state.with_extension("strace");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=connect", "-o"])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_codeb"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("strace runs (apt install strace; deploy/stack.sh up installs it)");
    let connects = std::fs::read_to_string(&log).unwrap_or_default();
    (out, connects)
}

#[test]
fn finding_8_plaintext_podman_off_this_machine_is_refused_before_any_connection() {
    let _l = lock();
    let sb = Sandbox::new();
    let host = sb
        .stack
        .host_doc("127.0.0.1")
        .replace(&sb.stack.podman, "tcp://10.0.0.5:8888");
    assert!(host.contains("tcp://10.0.0.5:8888"));
    let dir = sb.write_docs(
        &format!("{host}---\napiVersion: codeb.kr/v1\nkind: Zone\nmetadata:\n  name: codeb.test\n"),
        &[ProjectYaml::new(
            &unique("tcp"),
            "localhost/codeb-test-app:v1",
        )],
    );
    for args in [
        vec!["diff", "-f", dir.to_str().unwrap()],
        vec!["apply", "-f", dir.to_str().unwrap()],
    ] {
        let (out, connects) = traced(&sb.state(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Host local: spec.podman tcp://10.0.0.5:8888 is plaintext to an address off this machine")
                && err.contains("endpoints.podman"),
            "{err}"
        );
        assert!(
            !connects.contains("10.0.0.5"),
            "{args:?} dialed 10.0.0.5:\n{connects}"
        );
        assert!(
            !connects.contains("AF_INET"),
            "{args:?} made a network connection before refusing:\n{connects}"
        );
    }
}

#[test]
fn finding_8_the_stack_s_own_zone_and_key_on_loopback_still_work() {
    let _l = lock();
    let (sb, pdns) = (Sandbox::new(), Pdns::get());
    let zone = format!("{}.test", unique("zdef"));
    let dir = zone_manifests(&sb, &zone, &pdns.api, "PDNS_API_KEY", &unique("def"));
    let out = sb.codeb(&["diff", "-f", &dir]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "no configuration: PDNS_API_KEY and loopback are allowed: {}",
        text(&out)
    );
    assert!(!text(&out).contains(&pdns.key), "{}", text(&out));
}

#[test]
fn finding_8_a_recorded_zone_the_configuration_no_longer_allows_is_not_contacted_by_delete() {
    let _l = lock();
    let (sb, pdns) = (Sandbox::new(), Pdns::get());
    let zone = format!("{}.test", unique("zdel"));
    let name = unique("del");
    let dir = zone_manifests(&sb, &zone, &pdns.api, "PDNS_API_KEY", &name);
    let out = sb.codeb(&["apply", "-f", &dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The operator narrows the configuration: no PowerDNS endpoint at all.
    let config = sb.state().join("config.yaml");
    std::fs::write(&config, "endpoints:\n  powerdns: []\n").unwrap();
    let (out, connects) = traced(&sb.state(), &["delete", "project", &name]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("Zone {zone}: spec.powerdns.api {}", pdns.api))
            && err.contains("endpoints.powerdns")
            && err.contains(&config.display().to_string()),
        "{err}"
    );
    let pdns_port = pdns.api.rsplit(':').next().unwrap();
    assert!(
        !connects.contains(&format!("htons({pdns_port})")),
        "delete dialed the refused PowerDNS:\n{connects}"
    );
    assert!(
        !containers(&name).is_empty(),
        "a refused delete removes nothing"
    );

    std::fs::remove_file(&config).unwrap();
    let out = sb.codeb(&["delete", "project", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    pdns.delete_zone(&zone);
}
