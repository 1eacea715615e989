//! The kernel switch on a remote Host (issue #18): codeb in the root namespace deploys a project
//! onto host 4 of `deploy/hosts.sh` through `ssh … codeb agent --stdio`, and the agent runs
//! codeb's own netfilter code in host 4's network namespace. `get hosts` says `kernel`; the app
//! answers through host 4's Caddy on 10.250.4.2:8089, whose route dials the service address on
//! host 4's bridge; the slot port is published on host 4's loopback by a rule of codeb's table
//! there; promote and rollback under a keep-alive load through host 4's Caddy fail no request and
//! never change its config; the rules are in host 4's `ip codeb` table and not in the root
//! namespace's; a second apply changes nothing; `delete` removes rules, routes and containers
//! from host 4. Under `codeb watch`, a container of host 4 restarted by its policy or by hand is
//! followed within seconds through the agent's event stream, also after a partition. Needs the
//! stack's env and `deploy/hosts.sh up 4`'s (host 4 only).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::hosts::{ssh_sandbox, Host, OnHost};
use common::load::{fresh_get, Load};
use common::{eventually, http_get_within, lock, text, unique, ProjectYaml, Sandbox};

/// The port of codeb's Caddy server on host 4's address: not 80, where the harness's own server
/// listens on every address (a server bound to the host's address would take that port's
/// connections from the wildcard one), and not e2e_remote's 8088.
const CODEB_PORT: u16 = 8089;
/// Promote/rollback cycles under load (each is two switches).
const CYCLES: usize = 5;
/// Keep-alive clients through host 4's Caddy.
const WORKERS: usize = 4;

/// Host 4 as a remote Host publishing slot ports on its own loopback (the agent probes there).
fn host_doc(h: &Host) -> String {
    host_doc_with(h, env!("CARGO_BIN_EXE_codeb"))
}

/// As [`host_doc`], with this agent command on host 4.
fn host_doc_with(h: &Host, agent: &str) -> String {
    format!(
        "{}---\napiVersion: codeb.kr/v1\nkind: Zone\nmetadata:\n  name: codeb.test\n",
        h.doc_with("local", &h.known_hosts, "", CODEB_PORT, "127.0.0.1", agent)
    )
}

/// Runs `command` on host 4, which must succeed; its stdout.
fn on_host(h: &Host, command: &str) -> String {
    let out = h.ssh(command);
    assert!(out.status.success(), "{command} on host 4: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// codeb's table in host 4's network namespace, as `nft` prints it there (empty when missing).
fn host_rules(h: &Host) -> String {
    on_host(h, "nft list table ip codeb 2>/dev/null || true")
}

/// codeb's table in the root namespace (empty when missing).
fn root_rules() -> String {
    let out = Command::new("nft")
        .args(["list", "table", "ip", "codeb"])
        .output()
        .expect("nft runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The chains of `rules` holding a rule with this exact comment, and each one's DNAT target.
fn chains_with(rules: &str, comment: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chain = String::new();
    let quoted = format!("comment \"{comment}\"");
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("chain ") {
            chain = name.trim_end_matches(" {").to_string();
        } else if line.ends_with(&quoted) {
            let to = line
                .split("dnat to ")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .unwrap_or_default();
            out.push((chain.clone(), to.to_string()));
        }
    }
    out
}

/// Host 4's Caddy config of codeb's server.
fn host_caddy(h: &Host) -> String {
    on_host(
        h,
        &format!("curl -s {}/config/apps/http/servers/codeb", h.caddy_admin),
    )
}

/// The address of a container on host 4.
fn host_container_ip(h: &Host, name: &str) -> String {
    let json = on_host(
        h,
        &format!(
            "curl -sf --unix-socket {} http://d/v4.0.0/libpod/containers/{name}/json",
            h.podman_sock
        ),
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["NetworkSettings"]["Networks"]["codeb-main"]["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Host 4's containers of `project`.
fn project_containers(h: &Host, project: &str) -> Vec<String> {
    let json = on_host(
        h,
        &format!(
            "curl -sf --unix-socket {} 'http://d/v4.0.0/libpod/containers/json?all=true'",
            h.podman_sock
        ),
    );
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["Labels"]["codeb.project"] == project)
        .map(|c| c["Names"][0].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

/// Loads `image` into host 4's Podman from the root stack's, unless it is there (the harness
/// loads v1 only): saved through the stack's socket, loaded through ssh's stdin.
fn ensure_image(h: &Host, image: &str) {
    let enc = image.replace('/', "%2F");
    let have = h.ssh(&format!(
        "curl -sf --unix-socket {} http://d/v4.0.0/libpod/images/{enc}/json",
        h.podman_sock
    ));
    if have.status.success() {
        return;
    }
    let saved = Command::new("curl")
        .args(["-sf", "--max-time", "60", "--unix-socket"])
        .arg(common::hosts::stack_podman_sock())
        .arg(format!(
            "http://d/v4.0.0/libpod/images/{enc}/get?format=docker-archive"
        ))
        .output()
        .expect("curl runs");
    assert!(saved.status.success(), "save {image}: {}", text(&saved));
    let mut load = Command::new("ssh")
        .args(h.ssh_args(&h.known_hosts))
        .arg(format!("root@{}", h.address))
        .arg(format!(
            "curl -sf --max-time 60 -X POST -H 'Content-Type: application/x-tar' --data-binary @- --unix-socket {} http://d/v4.0.0/libpod/images/load",
            h.podman_sock
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ssh runs");
    {
        use std::io::Write;
        let mut stdin = load.stdin.take().unwrap();
        stdin.write_all(&saved.stdout).unwrap();
    }
    let out = load.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "load {image} into host 4: {}",
        text(&out)
    );
}

fn apply(sb: &Sandbox, dir: &Path) -> std::process::Output {
    sb.codeb(&["apply", "-f", dir.to_str().unwrap(), "--progress", "none"])
}

fn front_addr(h: &Host) -> String {
    format!("{}:{CODEB_PORT}", h.address)
}

#[test]
fn a_remote_host_switches_in_its_own_kernel_with_no_failed_request_and_is_cleaned_up_there() {
    let _l = lock();
    let h4 = Host::get(4);
    ensure_image(&h4, "localhost/codeb-test-app:v2");
    let sb = ssh_sandbox(&[&h4]);
    let name = unique("rk-app");
    let hostname = format!("{name}.codeb.test");
    let head = host_doc(&h4);
    let mut p = ProjectYaml::new(&name, "localhost/codeb-test-app:v1");
    p.promotion = "manual";
    let dir = sb.write_docs(&head, &[p]);
    let _cleanup = OnHost {
        sb: &sb,
        host: &h4,
        project: name.clone(),
    };

    let out = apply(&sb, &dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let front = front_addr(&h4);
    let mut last = (0, String::new());
    assert!(
        eventually(Duration::from_secs(10), || {
            last = http_get_within(&front, &hostname, "/", Duration::from_secs(2));
            last == (200, "v1".to_string())
        }),
        "{front} with Host {hostname} never answered v1: {last:?}"
    );

    // `get hosts`: reached over ssh, switched in the kernel (the agent's).
    let hosts = sb.codeb(&["get", "hosts", "-o", "json"]);
    assert_eq!(hosts.status.code(), Some(0), "{}", text(&hosts));
    let hosts: serde_json::Value = serde_json::from_slice(&hosts.stdout).unwrap();
    eprintln!("get hosts: {hosts}");
    assert_eq!(hosts[0]["transport"], format!("ssh root@{}", h4.address));
    assert_eq!(hosts[0]["switch"], "kernel", "{hosts}");

    // The route dials a service address on host 4's bridge; codeb's table there maps it to blue,
    // and publishes blue's slot port on host 4's loopback. The root namespace has neither.
    let label = format!("{name}/production");
    let blue = format!(
        "{}:8080",
        host_container_ip(&h4, &format!("{name}-production-blue"))
    );
    let rules = host_rules(&h4);
    let service = chains_with(&rules, &format!("codeb {label}"));
    assert_eq!(service.len(), 1, "{rules}");
    assert_eq!(service[0].1, blue, "{rules}");
    let caddy = host_caddy(&h4);
    let dial_port = service[0].0.rsplit('-').next().unwrap();
    assert!(
        caddy.contains(&format!(":{dial_port}\"")),
        "the route dials the service address: {caddy}"
    );
    let published = chains_with(&rules, &format!("codeb {label}/blue"));
    assert_eq!(published.len(), 1, "{rules}");
    assert!(published[0].0.starts_with("CODEB-7f000001-"), "{rules}");
    let slot_port = published[0].0.rsplit('-').next().unwrap().to_string();
    assert_eq!(
        on_host(
            &h4,
            &format!("curl -s --max-time 2 http://127.0.0.1:{slot_port}/")
        )
        .trim(),
        "v1",
        "the slot port on host 4's loopback"
    );
    let root = root_rules();
    assert!(
        !root.contains(&format!("codeb {label}")),
        "the remote host's rule is in the root namespace's table: {root}"
    );

    // v2 deployed beside it (manual promotion: green waits).
    let mut p = ProjectYaml::new(&name, "localhost/codeb-test-app:v2");
    p.promotion = "manual";
    let dir = sb.write_docs(&head, &[p]);
    let out = apply(&sb, &dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(sb.slot_state(&name, "green"), "deployed");
    let green = format!(
        "{}:8080",
        host_container_ip(&h4, &format!("{name}-production-green"))
    );
    let caddy_before = host_caddy(&h4);

    // Promote, then rollbacks back and forth, under keep-alive load through host 4's Caddy.
    let load = Load::start(&front, &hostname, "/", WORKERS);
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..CYCLES * 2 {
        let (verb, want, target) = match (i, i % 2) {
            (0, _) => ("promote", "v2", &green),
            (_, 0) => ("rollback", "v2", &green),
            _ => ("rollback", "v1", &blue),
        };
        let out = sb.codeb(&[verb, &name]);
        assert_eq!(out.status.code(), Some(0), "switch {i}: {}", text(&out));
        assert_eq!(
            fresh_get(&front, &hostname, "/").unwrap(),
            (200, want.to_string()),
            "switch {i}: a new connection reaches the new slot once the command returned"
        );
        let now = chains_with(&host_rules(&h4), &format!("codeb {label}"));
        assert_eq!(
            now,
            vec![(service[0].0.clone(), target.clone())],
            "switch {i}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = load.stop();
    eprintln!("{} switches on host 4: {}", CYCLES * 2, report.describe());
    assert!(report.socket_errors().is_empty(), "{}", report.describe());
    assert!(report.non_2xx().is_empty(), "{}", report.describe());
    assert!(report.count_body("v1") > 10 && report.count_body("v2") > 10);
    assert_eq!(
        host_caddy(&h4),
        caddy_before,
        "promote and rollback must not change host 4's Caddy config"
    );
    assert!(!root_rules().contains(&format!("codeb {label}")));

    // A second apply changes nothing on the host: same containers, rules and Caddy config.
    let (rules_before, containers_before) = (host_rules(&h4), project_containers(&h4, &name));
    let again = apply(&sb, &dir);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to do"),
        "{}",
        text(&again)
    );
    assert_eq!(host_rules(&h4), rules_before);
    assert_eq!(project_containers(&h4, &name), containers_before);
    assert_eq!(host_caddy(&h4), caddy_before);

    // Delete: rules, routes and containers gone from host 4.
    let out = sb.codeb(&["delete", "project", &name, "--progress", "none"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(project_containers(&h4, &name).is_empty());
    let rules = host_rules(&h4);
    assert!(!rules.contains(&format!("codeb {label}")), "{rules}");
    assert!(!host_caddy(&h4).contains(&format!("codeb-{name}_")));
    assert!(
        eventually(Duration::from_secs(10), || {
            http_get_within(&front, &hostname, "/", Duration::from_secs(1)).1 != "v1"
        }),
        "host 4's Caddy still serves the deleted project"
    );
}

/// The fallback stays: with `CODEB_SWITCH=caddy-admin` host 4 switches through its Caddy's admin
/// API, `get hosts` says so and why, Podman publishes the slot port on host 4's loopback (probed
/// there by the agent), and codeb writes no rule of the project in host 4's table.
#[test]
fn a_remote_host_asked_to_switch_through_caddy_does_so_and_says_why() {
    let _l = lock();
    let h4 = Host::get(4);
    ensure_image(&h4, "localhost/codeb-test-app:v2");
    let sb = ssh_sandbox(&[&h4]);
    let name = unique("rk-cad");
    let hostname = format!("{name}.codeb.test");
    let head = host_doc(&h4);
    let caddy_mode = [("CODEB_SWITCH", "caddy-admin")];
    let _cleanup = OnHost {
        sb: &sb,
        host: &h4,
        project: name.clone(),
    };
    let front = front_addr(&h4);
    for image in ["localhost/codeb-test-app:v1", "localhost/codeb-test-app:v2"] {
        let mut p = ProjectYaml::new(&name, image);
        p.promotion = "manual";
        let dir = sb.write_docs(&head, &[p]);
        let out = sb.codeb_env(
            &["apply", "-f", dir.to_str().unwrap(), "--progress", "none"],
            &caddy_mode,
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let hosts = sb.codeb_env(&["get", "hosts", "-o", "json"], &caddy_mode);
    let hosts: serde_json::Value = serde_json::from_slice(&hosts.stdout).unwrap();
    assert_eq!(hosts[0]["switch"], "caddy-admin", "{hosts}");
    assert!(
        hosts[0]["switchReason"]
            .as_str()
            .is_some_and(|r| r.contains("CODEB_SWITCH=caddy-admin")),
        "{hosts}"
    );
    assert_eq!(
        http_get_within(&front, &hostname, "/", Duration::from_secs(2)),
        (200, "v1".to_string())
    );
    let out = sb.codeb_env(&["promote", &name], &caddy_mode);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        eventually(Duration::from_secs(5), || {
            http_get_within(&front, &hostname, "/", Duration::from_secs(2)).1 == "v2"
        }),
        "the promote through host 4's Caddy never served v2"
    );
    let rules = host_rules(&h4);
    assert!(
        !rules.contains(&format!("codeb {name}/")),
        "a rule of a caddy-admin project: {rules}"
    );
    let out = sb.codeb_env(
        &["delete", "project", &name, "--progress", "none"],
        &caddy_mode,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(project_containers(&h4, &name).is_empty());
}

/// codeb's loopback guard on a remote host fails closed while a daemon's session is open: a
/// `nft flush chain ip codeb input` on host 4 (the guard gone, `route_localnet` still on) makes
/// the agent turn `route_localnet` off on host 4's bridge at once, not at the daemon's next
/// resync (an hour away here); the next apply puts the guard back and `route_localnet` on.
#[test]
fn a_remote_hosts_loopback_guard_removed_by_hand_fails_closed_while_a_session_is_open() {
    let _l = lock();
    let h4 = Host::get(4);
    let sb = ssh_sandbox(&[&h4]);
    let name = unique("rk-guard");
    let hostname = format!("{name}.codeb.test");
    let dir = sb.write_docs(
        &host_doc(&h4),
        &[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")],
    );
    let _cleanup = OnHost {
        sb: &sb,
        host: &h4,
        project: name.clone(),
    };
    let front = front_addr(&h4);
    let mut watch = sb.watch(&dir, &["--resync", "1h"]);
    assert!(
        eventually(Duration::from_secs(30), || http_get_within(
            &front,
            &hostname,
            "/",
            Duration::from_secs(1)
        )
        .1 == "v1"),
        "codeb watch never served the project on host 4: {}",
        watch.log()
    );
    // The bridge codeb masquerades loopback connections onto (codeb-main's, on host 4).
    let rules = host_rules(&h4);
    let bridge = rules
        .lines()
        .find(|l| l.contains("masquerade"))
        .and_then(|l| l.split("oifname \"").nth(1))
        .and_then(|l| l.split('"').next())
        .unwrap_or_else(|| panic!("no masquerade rule on host 4: {rules}"))
        .to_string();
    let route_localnet = || {
        on_host(
            &h4,
            &format!("cat /proc/sys/net/ipv4/conf/{bridge}/route_localnet"),
        )
        .trim()
        .to_string()
    };
    assert_eq!(route_localnet(), "1");
    on_host(&h4, "nft flush chain ip codeb input");
    assert!(
        eventually(Duration::from_secs(3), || route_localnet() == "0"),
        "route_localnet stayed on without the guard on host 4: {}",
        host_rules(&h4)
    );
    assert!(watch.terminate(Duration::from_secs(15)).is_some());
    let out = apply(&sb, &dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(route_localnet(), "1", "{}", text(&out));
    assert!(host_rules(&h4).contains("ct status ! dnat drop"));
}

/// Draining on a remote host counts the old slot's connections in host 4's conntrack, through the
/// agent: with a zero grace period, the apply after a promote retires blue only once its request
/// in flight (2 s) has finished, and that request is answered by blue.
#[test]
fn a_remote_slot_is_retired_only_after_its_requests_in_flight_finish() {
    let _l = lock();
    let h4 = Host::get(4);
    ensure_image(&h4, "localhost/codeb-test-app:v2");
    let sb = ssh_sandbox(&[&h4]);
    let name = unique("rk-drain");
    let hostname = format!("{name}.codeb.test");
    let head = host_doc(&h4);
    let _cleanup = OnHost {
        sb: &sb,
        host: &h4,
        project: name.clone(),
    };
    let mut dir = std::path::PathBuf::new();
    for image in ["localhost/codeb-test-app:v1", "localhost/codeb-test-app:v2"] {
        let mut p = ProjectYaml::new(&name, image);
        p.promotion = "manual";
        p.grace = "0s";
        dir = sb.write_docs(&head, &[p]);
        let out = apply(&sb, &dir);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let front = front_addr(&h4);
    let started = std::time::Instant::now();
    let slow = common::load::InFlight::start(&front, &hostname, "/cgi-bin/slow");
    // Not a stand-in for a condition: the request must be in flight when the switch happens.
    std::thread::sleep(Duration::from_millis(300));
    let out = sb.codeb(&["promote", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let left = Duration::from_secs(2).saturating_sub(started.elapsed());
    let t = std::time::Instant::now();
    let out = apply(&sb, &dir);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("retire blue"),
        "{}",
        text(&out)
    );
    assert_eq!(slow.join().unwrap(), (200, "slow-v1".to_string()));
    eprintln!("apply took {took:?}; the slow request had {left:?} left");
    if left > Duration::from_millis(500) {
        assert!(
            took >= left - Duration::from_millis(300),
            "the retire waited for the request ({took:?}, {left:?} left)"
        );
    }
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(
        project_containers(&h4, &name),
        vec![format!("{name}-production-green")]
    );
}

/// An agent that cannot manage host 4's rules (root, but without `CAP_NET_ADMIN`: its netlink
/// read is refused) makes the host switch through Caddy, with the agent's reason in `get hosts`;
/// the project still deploys, is probed by the agent and serves, and no rule of it is written.
#[test]
fn a_remote_host_whose_agent_cannot_manage_its_rules_switches_through_caddy_and_says_why() {
    use std::os::unix::fs::PermissionsExt;
    let _l = lock();
    let h4 = Host::get(4);
    let sb = ssh_sandbox(&[&h4]);
    let agent = sb.dir.path().join("agent-without-net-admin");
    std::fs::write(
        &agent,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set -net_admin -- {} \"$@\"\n",
            env!("CARGO_BIN_EXE_codeb")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let name = unique("rk-nocap");
    let hostname = format!("{name}.codeb.test");
    let dir = sb.write_docs(
        &host_doc_with(&h4, agent.to_str().unwrap()),
        &[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")],
    );
    let _cleanup = OnHost {
        sb: &sb,
        host: &h4,
        project: name.clone(),
    };
    let out = apply(&sb, &dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let hosts = sb.codeb(&["get", "hosts", "-o", "json"]);
    let hosts: serde_json::Value = serde_json::from_slice(&hosts.stdout).unwrap();
    assert_eq!(hosts[0]["switch"], "caddy-admin", "{hosts}");
    let reason = hosts[0]["switchReason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("on the host") && reason.contains("CAP_NET_ADMIN"),
        "{hosts}"
    );
    assert_eq!(
        http_get_within(&front_addr(&h4), &hostname, "/", Duration::from_secs(2)),
        (200, "v1".to_string())
    );
    let rules = host_rules(&h4);
    assert!(!rules.contains(&format!("codeb {name}/")), "{rules}");
    let out = sb.codeb(&["delete", "project", &name, "--progress", "none"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(project_containers(&h4, &name).is_empty());
}

/// `(StartedAt in ns, restart count, running)` of a container on host 4, as its Podman says.
fn host_started(h: &Host, name: &str) -> (u128, u64, bool) {
    let line = on_host(
        h,
        &format!(
            "podman --remote --url unix://{} inspect --format '{{{{.State.StartedAt.UnixNano}}}} {{{{.RestartCount}}}} {{{{.State.Running}}}}' {name}",
            h.podman_sock
        ),
    );
    let mut f = line.split_whitespace();
    (
        f.next().unwrap().parse().unwrap(),
        f.next().unwrap().parse().unwrap(),
        f.next() == Some("true"),
    )
}

/// Wall-clock nanoseconds since the epoch: Podman's `StartedAt` on host 4 is on this clock (the
/// simulated hosts are network namespaces of this machine).
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// On a remote host the daemon follows Podman's events through the agent's stream, as on a
/// local one: under `codeb watch --resync 1h` (so only an event can act), the app's process in
/// the slot's container on host 4 is killed and the restart policy brings it back, then the
/// container is restarted by hand (`podman restart`: Podman 4.3 gives it a new address; the
/// policy's restart kept it on host 4, measured); each time, within a few seconds host 4's table
/// points at the container's address and its Caddy serves again, and nothing fails after that.
/// Then a silent partition of host 4: the stream ends within seconds and comes back with the
/// link, and the next restart is followed again. The failed requests through host 4's Caddy and
/// the re-point delays are printed (`-- --nocapture`).
#[test]
fn a_remote_container_restarted_by_its_policy_gets_its_traffic_back_from_the_event_stream() {
    let _l = lock();
    let h4 = Host::get(4);
    let sb = ssh_sandbox(&[&h4]);
    let name = unique("rk-ev");
    let hostname = format!("{name}.codeb.test");
    let dir = sb.write_docs(
        &host_doc(&h4),
        &[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")],
    );
    // Declared before the daemon: dropped (killed) first, it cannot deploy the project again.
    let _cleanup = OnHost {
        sb: &sb,
        host: &h4,
        project: name.clone(),
    };
    let w = sb.watch(&dir, &["--resync", "1h"]);
    let front = front_addr(&h4);
    assert!(
        eventually(Duration::from_secs(60), || {
            http_get_within(&front, &hostname, "/", Duration::from_secs(1)) == (200, "v1".into())
        }),
        "host 4's Caddy never served v1:\n{}",
        w.log()
    );
    assert!(
        w.wait_log(Duration::from_secs(20), "watching container events"),
        "no event stream from host 4:\n{}",
        w.log()
    );
    let label = format!("codeb {name}/production");
    let container = format!("{name}-production-blue");
    assert_eq!(
        chains_with(&host_rules(&h4), &label)[0].1,
        format!("{}:8080", host_container_ip(&h4, &container))
    );

    let poller = Poller::start(&front, &hostname);
    std::thread::sleep(Duration::from_millis(300));
    let mut episodes = Vec::new();
    for what in ["app killed, restarted by its policy", "podman restart"] {
        let ip_before = host_container_ip(&h4, &container);
        let (_, count, _) = host_started(&h4, &container);
        let down_at = now_ns();
        let podman = format!("podman --remote --url unix://{}", h4.podman_sock);
        // The exec session may end with the container: its own exit status is not the point.
        let _ = match what {
            "podman restart" => h4.ssh(&format!("{podman} restart -t 1 {container}")),
            _ => h4.ssh(&format!(
                "{podman} exec {container} sh -c 'kill -KILL $(pidof httpd)'"
            )),
        };
        let mut back_at = 0;
        assert!(
            eventually(Duration::from_secs(15), || {
                let (at, n, running) = host_started(&h4, &container);
                back_at = at;
                running && (n > count || at > down_at)
            }),
            "{what}: {container} did not run again on host 4"
        );
        let ip_after = host_container_ip(&h4, &container);
        let want = vec![(
            chains_with(&host_rules(&h4), &label)[0].0.clone(),
            format!("{ip_after}:8080"),
        )];
        let mut repointed_at = 0;
        assert!(
            eventually(Duration::from_secs(5), || {
                repointed_at = now_ns();
                chains_with(&host_rules(&h4), &label) == want
            }),
            "{what}: host 4's rule does not follow {container} to {ip_after} within 5 s:\n{}\n{}",
            host_rules(&h4),
            w.log()
        );
        assert!(
            eventually(Duration::from_secs(5), || {
                http_get_within(&front, &hostname, "/", Duration::from_secs(1))
                    == (200, "v1".into())
            }),
            "{what}: host 4's Caddy does not serve again"
        );
        let served_at = now_ns();
        // Long enough to see that nothing fails once it is back.
        std::thread::sleep(Duration::from_millis(1500));
        episodes.push((
            what,
            ip_before,
            ip_after,
            down_at,
            back_at,
            repointed_at,
            served_at,
        ));
    }
    let end = now_ns();
    let samples = poller.stop();
    let ms = |ns: u128| ns as f64 / 1e6;
    let mut lines = String::new();
    for (i, (what, before, after, down_at, back_at, repointed_at, served_at)) in
        episodes.iter().enumerate()
    {
        let until = episodes.get(i + 1).map_or(end, |e| e.3);
        let in_window: Vec<&(u128, bool)> = samples
            .iter()
            .filter(|(at, _)| (*down_at..until).contains(at))
            .collect();
        let failed = |from: u128, to: u128| {
            in_window
                .iter()
                .filter(|(at, ok)| !ok && (from..to).contains(at))
                .count()
        };
        // The client's first success after the container ran again: when host 4 served again.
        let first_ok = in_window
            .iter()
            .find(|(at, ok)| *ok && *at >= *back_at)
            .map_or(*served_at, |(at, _)| *at);
        lines.push_str(&format!(
            "{what}: {before} -> {after}, down {:.0} ms; the client through host 4's Caddy was served \
             again {:.0} ms after the container ran again (the rule seen re-pointed at most \
             {:.0} ms after, polled over ssh); {} requests: {} failed while down, {} after it \
             ran again, {} after the first success\n",
            ms(back_at.saturating_sub(*down_at)),
            ms(first_ok.saturating_sub(*back_at)),
            ms(repointed_at.saturating_sub(*back_at)),
            in_window.len(),
            failed(*down_at, *back_at),
            failed(*back_at, first_ok),
            failed(first_ok.max(*served_at), until),
        ));
        assert_eq!(
            failed(first_ok.max(*served_at), until),
            0,
            "{what}: failures after it was back\n{lines}"
        );
    }
    eprintln!("{lines}");
    // `podman restart` moved the address (Podman 4.3), and the rule followed (checked above).
    let moved = &episodes[1];
    assert_ne!(
        moved.1, moved.2,
        "podman restart kept the address:\n{lines}"
    );
    let log = w.log();
    assert!(
        log.lines()
            .any(|l| l.contains("container event") && l.contains("action=start")),
        "the daemon did not act on host 4's start event:\n{log}"
    );
    assert!(samples.iter().filter(|(_, ok)| *ok).count() > 10, "{lines}");

    // A silent partition of host 4 ends the stream within seconds (ssh's keep-alives end the
    // session: the follower does not hang on it), and once the link is back the follower
    // reconnects over a new session and follows the next restart again.
    let _link = LinkUp(&h4);
    h4.set_link(false);
    let cut = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(20), || {
            let log = w.log();
            log.contains("container event stream failed")
                || log.contains("container event stream ended")
        }),
        "the event stream outlived host 4's partition:\n{}",
        w.log()
    );
    let ended_in = cut.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    h4.set_link(true);
    let up = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(60), || w
            .count("watching container events")
            >= 2),
        "the event stream did not come back after the partition:\n{}",
        w.log()
    );
    let back_in = up.elapsed();
    let restarted = now_ns();
    let _ = h4.ssh(&format!(
        "podman --remote --url unix://{} restart -t 1 {container}",
        h4.podman_sock
    ));
    let ip = host_container_ip(&h4, &container);
    let want = format!("{ip}:8080");
    assert!(
        eventually(Duration::from_secs(5), || {
            chains_with(&host_rules(&h4), &label)
                .first()
                .is_some_and(|(_, to)| *to == want)
        }),
        "after the partition, host 4's rule does not follow {container} to {ip}:\n{}",
        w.log()
    );
    eprintln!(
        "partition: the stream ended {:.1} s after the link went down, was open again {:.1} s \
         after it came back; the next restart re-pointed within {:.0} ms of the command",
        ended_in.as_secs_f64(),
        back_in.as_secs_f64(),
        (now_ns() - restarted) as f64 / 1e6
    );
}

/// Puts host 4's link back up however the test ends.
struct LinkUp<'a>(&'a Host);

impl Drop for LinkUp<'_> {
    fn drop(&mut self) {
        self.0.set_link(true);
    }
}

/// A client polling host 4's Caddy, each request on a fresh connection with a short timeout (a
/// rule to an address nobody holds leaves a connection hanging: the poll goes on meanwhile), as
/// tests/e2e_restart.rs does locally. Every request: when it went out (ns), and whether it was
/// answered `v1`.
struct Poller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(u128, bool)>>>,
}

impl Poller {
    fn start(addr: &str, host: &str) -> Poller {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (addr, host, flag) = (addr.to_string(), host.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            // Bounded whatever the test does: it never runs this long.
            let give_up = now_ns() + Duration::from_secs(300).as_nanos();
            while !flag.load(Ordering::Relaxed) && now_ns() < give_up {
                let at = now_ns();
                let answer = http_get_within(&addr, &host, "/", Duration::from_millis(500));
                samples.push((at, answer == (200, "v1".to_string())));
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        });
        Poller {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<(u128, bool)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().expect("once").join().expect("poller")
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
