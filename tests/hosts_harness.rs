//! Proof that the simulated hosts of `deploy/hosts.sh` are separate machines as far as codeb can
//! tell (issue #18's harness): from the root namespace, and only through each host's sshd, host 1's
//! Podman answers and runs the test image, its Caddy routes to it on 10.250.1.2:80, no other
//! Podman (host 2's, the root stack's) sees that container, a changed host key is refused, and a
//! host whose link is down fails a new connection within seconds while a kept connection notices by
//! its keep-alives. The hosts share one network (host 2 reaches host 1's address through the root
//! namespace, as servers on one LAN do) but nothing of their state. Needs `deploy/hosts.sh up 2` (deploy/test.sh runs it) and the stack's env.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::hosts::{stack_podman_sock, unix_request, Host};
use common::{eventually, http_get_within, lock, text, unique};

/// Removes the test's container and Caddy route from host 1 whichever way the test ends, through
/// ssh as everything else.
struct OnHost<'a> {
    host: &'a Host,
    container: String,
    route: String,
}

impl Drop for OnHost<'_> {
    fn drop(&mut self) {
        let out = self.host.ssh(&format!(
            "podman rm -f -t 0 {c} >/dev/null; curl -sf -X DELETE {a}/id/{r} >/dev/null; podman container exists {c} && exit 1; exit 0",
            c = self.container,
            a = self.host.caddy_admin,
            r = self.route
        ));
        assert!(
            out.status.success() || std::thread::panicking(),
            "cleanup on host 1: {}",
            text(&out)
        );
    }
}

/// Names of all containers a Podman API lists, as JSON text (enough to look a name up in).
fn container_names(request: impl Fn(&str) -> (u16, String)) -> String {
    let (code, body) = request("/v4.0.0/libpod/containers/json?all=true");
    assert_eq!(code, 200, "containers/json: {body}");
    body
}

#[test]
fn a_container_run_on_host_one_through_ssh_serves_through_its_caddy_and_no_other_podman_sees_it() {
    let _l = lock();
    let (h1, h2) = (Host::get(1), Host::get(2));
    let dir = tempfile::tempdir().unwrap();
    let podman1 = h1.forward(&dir.path().join("p1.sock"), &h1.podman_sock);
    let podman2 = h2.forward(&dir.path().join("p2.sock"), &h2.podman_sock);
    let caddy1 = h1.forward(
        &dir.path().join("c1.sock"),
        h1.caddy_admin.trim_start_matches("http://"),
    );

    assert_eq!(podman1.request("GET", "/_ping", None), (200, "OK".into()));
    let name = unique("harness");
    let _cleanup = OnHost {
        host: &h1,
        container: name.clone(),
        route: format!("harness-{name}"),
    };
    let create =
        format!(r#"{{"name":"{name}","image":"localhost/codeb-test-app:v1","init":true}}"#);
    let (code, body) = podman1.request("POST", "/v4.0.0/libpod/containers/create", Some(&create));
    assert_eq!(code, 201, "create on host 1: {body}");
    let (code, body) = podman1.request(
        "POST",
        &format!("/v4.0.0/libpod/containers/{name}/start"),
        None,
    );
    assert_eq!(code, 204, "start on host 1: {body}");
    let (code, body) = podman1.request(
        "GET",
        &format!("/v4.0.0/libpod/containers/{name}/json"),
        None,
    );
    assert_eq!(code, 200, "inspect on host 1: {body}");
    let inspect: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ip = inspect["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!ip.is_empty(), "no address for the container: {body}");

    // Caddy inside host 1 dials the container on host 1's bridge; the root namespace reaches only
    // Caddy's server on the host's address.
    let hostname = format!("{name}.harness.test");
    let route = format!(
        r#"{{"@id":"harness-{name}","match":[{{"host":["{hostname}"]}}],"handle":[{{"handler":"reverse_proxy","upstreams":[{{"dial":"{ip}:8080"}}]}}]}}"#
    );
    let (code, body) = caddy1.request(
        "POST",
        "/config/apps/http/servers/harness/routes",
        Some(&route),
    );
    assert_eq!(code, 200, "route on host 1's Caddy: {body}");
    let front = format!("{}:80", h1.address);
    let mut last = (0, String::new());
    assert!(
        eventually(Duration::from_secs(10), || {
            last = http_get_within(&front, &hostname, "/", Duration::from_secs(1));
            last == (200, "v1".to_string())
        }),
        "{front} with Host {hostname} never answered v1: {last:?}"
    );

    // Seen by host 1's Podman, by no other: not host 2's, not the root stack's.
    assert!(container_names(|p| podman1.request("GET", p, None)).contains(&name));
    let on_host2 = container_names(|p| podman2.request("GET", p, None));
    assert!(
        !on_host2.contains(&name),
        "host 2 lists host 1's container: {on_host2}"
    );
    let stack = stack_podman_sock();
    let on_stack = container_names(|p| unix_request(&stack, "GET", p, None));
    assert!(
        !on_stack.contains(&name),
        "the root stack lists host 1's container"
    );
    // Nor does host 2's Caddy route the hostname.
    let other = http_get_within(
        &format!("{}:80", h2.address),
        &hostname,
        "/",
        Duration::from_secs(2),
    );
    assert_ne!(other.1, "v1", "host 2's Caddy served host 1's app");

    // Separate state, one network: from inside host 2 (a migration's source dialing its target),
    // host 1's address answers through the root namespace, and its Caddy serves host 1's app.
    let out = h2.ssh(&format!(
        "curl -sS --max-time 5 -H 'Host: {hostname}' http://{}:80/",
        h1.address
    ));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "v1",
        "host 2 does not reach host 1's Caddy at {}:80: {}",
        h1.address,
        text(&out)
    );
}

#[test]
fn a_changed_host_key_is_refused_by_ssh_and_the_pinned_one_is_accepted() {
    let _l = lock();
    let h1 = Host::get(1);
    assert!(
        h1.ssh("true").status.success(),
        "the pinned key must be accepted"
    );

    // Another key for the same address, as if the host had been replaced or intercepted.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("impostor");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let public: Vec<&str> = public.split_whitespace().take(2).collect();
    let known = dir.path().join("known_hosts");
    std::fs::write(&known, format!("{} {}\n", h1.address, public.join(" "))).unwrap();

    let out = h1.ssh_with(&known, "echo reached");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("reached"),
        "{}",
        text(&out)
    );
    assert!(
        stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            && stderr.contains("Host key verification failed"),
        "{}",
        text(&out)
    );
}

/// Puts host 2's link back up whichever way the test ends.
struct LinkUp<'a>(&'a Host);

impl Drop for LinkUp<'_> {
    fn drop(&mut self) {
        self.0.set_link(true);
    }
}

#[test]
fn a_host_whose_link_is_down_fails_new_connections_and_kept_ones_within_seconds() {
    let _l = lock();
    let h2 = Host::get(2);
    let dir = tempfile::tempdir().unwrap();
    let mut kept = h2.forward(&dir.path().join("p2.sock"), &h2.podman_sock);
    assert_eq!(kept.request("GET", "/_ping", None), (200, "OK".into()));

    let link = LinkUp(&h2);
    h2.set_link(false);
    let down_at = Instant::now();
    let t0 = Instant::now();
    let out = h2.ssh("true");
    let failed_after = t0.elapsed();
    assert!(
        !out.status.success(),
        "ssh reached a host whose link is down: {}",
        text(&out)
    );
    // Measured 2.1 s ("No route to host" once ARP gives up); ConnectTimeout=5 bounds it otherwise.
    assert!(
        failed_after < Duration::from_secs(7),
        "a new connection took {failed_after:?} to fail"
    );

    // The kept connection carries no traffic: only its keep-alives (1 s × 3) notice the silence.
    assert!(
        eventually(Duration::from_secs(10), || kept
            .child
            .try_wait()
            .ok()
            .flatten()
            .is_some()),
        "the kept ssh forward still hangs 10 s into the partition"
    );
    let kept_after = down_at.elapsed();
    eprintln!("partition: new ssh failed after {failed_after:?}, the kept forward ended after {kept_after:?}");

    // Back up: a new connection is served again, nothing restarted on the host.
    drop(link);
    assert!(
        eventually(Duration::from_secs(10), || h2.ssh("true").status.success()),
        "host 2 is unreachable 10 s after its link came back"
    );
    assert!(Path::new(&h2.known_hosts).exists());
}

/// `codeb agent --stdio` on host 1 over ssh, as a session of JSON lines.
struct Agent {
    child: std::process::Child,
    /// `None` once closed (the agent then sees the end of its input).
    input: Option<std::process::ChildStdin>,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl Agent {
    fn start(host: &Host) -> Agent {
        let mut child = Command::new("ssh")
            .args(host.ssh_args(&host.known_hosts))
            .arg(format!("root@{}", host.address))
            .arg(format!("{} agent --stdio", env!("CARGO_BIN_EXE_codeb")))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ssh codeb agent");
        let input = child.stdin.take();
        let output = std::io::BufReader::new(child.stdout.take().unwrap());
        Agent {
            child,
            input,
            output,
        }
    }

    fn send(&mut self, line: &str) {
        use std::io::Write;
        let input = self.input.as_mut().unwrap();
        writeln!(input, "{line}").unwrap();
        input.flush().unwrap();
    }

    fn recv(&mut self) -> serde_json::Value {
        use std::io::BufRead;
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_agent_over_ssh_forwards_allowed_requests_and_refuses_the_rest_and_other_versions() {
    let _l = lock();
    let h1 = Host::get(1);
    let version = env!("CARGO_PKG_VERSION");

    let mut agent = Agent::start(&h1);
    let hello = agent.recv();
    assert_eq!(hello["hello"]["version"], version, "{hello}");
    agent.send(&format!(
        r#"{{"hello":{{"protocol":{},"version":"{version}"}}}}"#,
        codeb::agent::PROTOCOL
    ));
    agent.send(r#"{"id":1,"target":"podman","method":"GET","path":"/v4.0.0/libpod/_ping"}"#);
    let ping = agent.recv();
    assert_eq!(
        (ping["id"].as_u64(), ping["status"].as_u64()),
        (Some(1), Some(200)),
        "{ping}"
    );
    assert_eq!(ping["body"], "OK");
    agent.send(r#"{"id":2,"target":"caddy","method":"GET","path":"/config/apps/http/servers/harness/listen"}"#);
    let listen = agent.recv();
    assert_eq!(listen["status"], 200, "{listen}");
    assert_eq!(listen["body"].as_str().unwrap().trim(), r#"[":80"]"#);
    agent.send(r#"{"id":3,"target":"podman","method":"POST","path":"/v1.41/containers/x/exec","body":"{}"}"#);
    let refused = agent.recv();
    assert!(
        refused["error"].as_str().unwrap().contains("not allowed"),
        "{refused}"
    );
    agent.send(r#"{"id":4,"target":"caddy","method":"POST","path":"/load","body":"{}"}"#);
    assert!(agent.recv()["error"]
        .as_str()
        .unwrap()
        .contains("not allowed"));

    // A round trip through the kept session (ssh, the agent, the host's Podman).
    let mut times = Vec::new();
    for id in 10..110 {
        let t0 = Instant::now();
        agent.send(&format!(
            r#"{{"id":{id},"target":"podman","method":"GET","path":"/_ping"}}"#
        ));
        assert_eq!(agent.recv()["status"], 200);
        times.push(t0.elapsed());
    }
    times.sort();
    eprintln!(
        "agent over ssh, _ping: p50 {:?}, p95 {:?}",
        times[50], times[95]
    );
    drop(agent);

    // Another version: refused with both named, exit 2, nothing served.
    let mut other = Agent::start(&h1);
    other.recv();
    other.send(r#"{"hello":{"protocol":1,"version":"0.0.0-elsewhere"}}"#);
    other.send(r#"{"id":1,"target":"podman","method":"GET","path":"/_ping"}"#);
    let error = other.recv();
    let text = error["error"].as_str().unwrap_or_default();
    assert!(
        text.contains(version) && text.contains("0.0.0-elsewhere"),
        "{error}"
    );
    other.input = None;
    let status = other.child.wait().unwrap();
    assert_eq!(status.code(), Some(2));
}
