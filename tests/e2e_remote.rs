//! A remote Host end to end (issue #18): codeb in the root namespace deploys a project onto host 1
//! of `deploy/hosts.sh` through `ssh … codeb agent --stdio` only, with its own relay sockets in
//! the state directory. The app then answers through host 1's Caddy on 10.250.1.2:8088, its
//! container is in host 1's Podman and not in the root stack's, the host switches in its own kernel, a second apply changes nothing
//! there, a known_hosts with another key for the host is refused naming the Host (and nothing is
//! removed because the host could not be observed), an SSH target the operator's configuration
//! does not list is refused before any connection, and `delete project` removes it from host 1.
//! Needs the stack's env and `deploy/hosts.sh up 2`'s.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::hosts::{ssh_sandbox, stack_podman_sock, unix_request, Host, OnHost};
use common::{eventually, http_get_within, lock, text, unique, ProjectYaml, Sandbox};

/// The port of codeb's Caddy server on host 1's address: not 80, where the harness's own server
/// listens on every address (`tests/hosts_harness.rs` routes there), since a server bound to the
/// host's address takes that port's connections from the wildcard one, and stays after the tests.
const CODEB_PORT: u16 = 8088;

/// The Host of this test: host 1 of the harness, reached over ssh with the harness's key and
/// the known_hosts file `known`, its Caddy server on the host's address.
fn host_doc(h: &Host, known: &Path) -> String {
    format!(
        "{}---
apiVersion: codeb.kr/v1
kind: Zone
metadata:
  name: codeb.test
",
        h.doc("local", known, "", CODEB_PORT)
    )
}

/// Host 1's containers (all of them), as its Podman lists them, through ssh.
fn host_containers(h: &Host) -> String {
    let out = h.ssh(&format!(
        "curl -sf --unix-socket {} 'http://d/v4.0.0/libpod/containers/json?all=true'",
        h.podman_sock
    ));
    assert!(out.status.success(), "list on host 1: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(name, id)` of host 1's containers of `project`.
fn project_containers(h: &Host, project: &str) -> Vec<(String, String)> {
    let list: serde_json::Value = serde_json::from_str(&host_containers(h)).unwrap();
    let mut found: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["Labels"]["codeb.project"] == project)
        .map(|c| {
            (
                c["Names"][0].as_str().unwrap_or_default().to_string(),
                c["Id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    found.sort();
    found
}

/// Host 1's Caddy config of codeb's server, through ssh.
fn host_caddy(h: &Host) -> String {
    let out = h.ssh(&format!(
        "curl -s {}/config/apps/http/servers/codeb",
        h.caddy_admin
    ));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply(sb: &Sandbox, dir: &Path) -> std::process::Output {
    sb.codeb(&["apply", "-f", dir.to_str().unwrap(), "--progress", "none"])
}

fn front(h: &Host, hostname: &str) -> (u16, String) {
    http_get_within(
        &format!("{}:{CODEB_PORT}", h.address),
        hostname,
        "/",
        Duration::from_secs(2),
    )
}

#[test]
fn a_project_applied_to_a_remote_host_over_ssh_runs_and_serves_there_and_is_deleted_there() {
    let _l = lock();
    let h1 = Host::get(1);
    let sb = ssh_sandbox(&[&h1]);
    let name = unique("rm-app");
    let hostname = format!("{name}.codeb.test");
    let dir = sb.write_docs(
        &host_doc(&h1, &h1.known_hosts),
        &[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")],
    );
    let _cleanup = OnHost {
        sb: &sb,
        host: &h1,
        project: name.clone(),
    };

    let out = apply(&sb, &dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut last = (0, String::new());
    assert!(
        eventually(Duration::from_secs(10), || {
            last = front(&h1, &hostname);
            last == (200, "v1".to_string())
        }),
        "{}:{CODEB_PORT} with Host {hostname} never answered v1: {last:?}",
        h1.address
    );

    // On host 1's Podman, and not on the root stack's.
    let on_host = project_containers(&h1, &name);
    assert_eq!(on_host.len(), 1, "{on_host:?}");
    let stack = stack_podman_sock();
    let (code, on_stack) = unix_request(
        &stack,
        "GET",
        "/v4.0.0/libpod/containers/json?all=true",
        None,
    );
    assert_eq!(code, 200, "{on_stack}");
    assert!(
        !on_stack.contains(&name),
        "the root stack runs the remote host's project"
    );

    // `get hosts`: reached over ssh, switched in the host's kernel by its agent (the fallback to
    // Caddy's admin API is tests/e2e_remote_kernel.rs's).
    let hosts = sb.codeb(&["get", "hosts", "-o", "json"]);
    assert_eq!(hosts.status.code(), Some(0), "{}", text(&hosts));
    let hosts: serde_json::Value = serde_json::from_slice(&hosts.stdout).unwrap();
    eprintln!("get hosts: {hosts}");
    let row = &hosts[0];
    assert_eq!(
        row["transport"],
        format!("ssh root@{}", h1.address),
        "{row}"
    );
    assert_eq!(row["switch"], "kernel", "{row}");

    // A second apply changes nothing on the host: same containers, same Caddy config.
    let caddy_before = host_caddy(&h1);
    let again = apply(&sb, &dir);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to do"),
        "{}",
        text(&again)
    );
    assert_eq!(project_containers(&h1, &name), on_host);
    assert_eq!(host_caddy(&h1), caddy_before);
    let diff = sb.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    assert_eq!(diff.status.code(), Some(0), "{}", text(&diff));

    // Delete: gone from host 1's Podman and Caddy.
    let out = sb.codeb(&["delete", "project", &name, "--progress", "none"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(project_containers(&h1, &name).is_empty());
    assert!(
        eventually(Duration::from_secs(10), || front(&h1, &hostname).1 != "v1"),
        "host 1's Caddy still serves the deleted project"
    );
}

#[test]
fn codeb_watch_converges_a_remote_host_over_one_kept_session() {
    let _l = lock();
    let h1 = Host::get(1);
    let sb = ssh_sandbox(&[&h1]);
    let name = unique("rm-watch");
    let hostname = format!("{name}.codeb.test");
    let dir = sb.write_docs(
        &host_doc(&h1, &h1.known_hosts),
        &[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")],
    );
    let _cleanup = OnHost {
        sb: &sb,
        host: &h1,
        project: name.clone(),
    };
    let mut watch = sb.watch(&dir, &["--resync", "1s"]);
    assert!(
        eventually(Duration::from_secs(30), || front(&h1, &hostname)
            == (200, "v1".to_string())),
        "codeb watch never served the project on host 1: {}",
        watch.log()
    );
    // Several resyncs of the host, each observing it through the agent: one ssh session.
    assert!(
        watch.wait_sweeps(3, Duration::from_secs(20)),
        "{}",
        watch.log()
    );
    assert_eq!(watch.count("agent session open"), 1, "{}", watch.log());
    // The host's container events stream over that same session, and stay open across resyncs.
    assert_eq!(
        watch.count("watching container events"),
        1,
        "{}",
        watch.log()
    );
    assert!(watch.terminate(Duration::from_secs(15)).is_some());
    assert_eq!(project_containers(&h1, &name).len(), 1);
}

/// A known_hosts file holding another key for the host's address.
fn impostor_known_hosts(dir: &Path, address: &str) -> PathBuf {
    let key = dir.join("impostor");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let public: Vec<&str> = public.split_whitespace().take(2).collect();
    let known = dir.join("known_hosts");
    std::fs::write(&known, format!("{address} {}\n", public.join(" "))).unwrap();
    known
}

#[test]
fn a_changed_host_key_is_refused_naming_the_host_and_nothing_there_is_removed() {
    let _l = lock();
    let h1 = Host::get(1);
    let sb = ssh_sandbox(&[&h1]);
    let name = unique("rm-key");
    let hostname = format!("{name}.codeb.test");
    let project = [ProjectYaml::new(&name, "localhost/codeb-test-app:v1")];
    let dir = sb.write_docs(&host_doc(&h1, &h1.known_hosts), &project);
    let _cleanup = OnHost {
        sb: &sb,
        host: &h1,
        project: name.clone(),
    };
    let out = apply(&sb, &dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let running = project_containers(&h1, &name);
    assert_eq!(running.len(), 1, "{running:?}");

    // The same manifests, but known_hosts pins another key: refused by ssh, named by codeb.
    let keys = tempfile::tempdir().unwrap();
    let known = impostor_known_hosts(keys.path(), &h1.address);
    let dir = sb.write_docs(&host_doc(&h1, &known), &project);
    for args in [
        vec!["apply", "-f", dir.to_str().unwrap(), "--progress", "none"],
        vec!["diff", "-f", dir.to_str().unwrap()],
    ] {
        let out = sb.codeb(&args);
        let all = text(&out);
        eprintln!("{args:?} with another key pinned: {all}");
        assert_ne!(out.status.code(), Some(0), "{all}");
        assert!(
            all.contains("host local") && all.contains("known_hosts pins"),
            "{args:?} does not name the host and the refused key: {all}"
        );
    }
    // Nothing on the host was removed or changed because it could not be observed.
    assert_eq!(project_containers(&h1, &name), running);
    assert_eq!(front(&h1, &hostname), (200, "v1".to_string()));

    // The pinned key again: the host is observed and found converged.
    let dir = sb.write_docs(&host_doc(&h1, &h1.known_hosts), &project);
    let out = apply(&sb, &dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to do"),
        "{}",
        text(&out)
    );
    assert_eq!(project_containers(&h1, &name), running);
}

#[test]
fn an_ssh_target_the_configuration_does_not_list_is_refused_before_any_connection() {
    let _l = lock();
    let h1 = Host::get(1);
    let sb = Sandbox::new(); // no configuration: no remote Host is allowed
    let name = unique("rm-cfg");
    let dir = sb.write_docs(
        &host_doc(&h1, &h1.known_hosts),
        &[ProjectYaml::new(&name, "localhost/codeb-test-app:v1")],
    );
    let out = sb.codeb(&["apply", "-f", dir.to_str().unwrap(), "--progress", "none"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("Host local") && all.contains("endpoints.ssh"),
        "{all}"
    );
    assert!(project_containers(&h1, &name).is_empty());
}

/// The session's own behaviour over real ssh to host 1, with agents that end or lie on purpose:
/// a script in a directory the host sees (it shares the machine's filesystem) that runs before
/// or instead of codeb's agent. They only read from the host, so they take no lock.
mod session {
    use super::*;
    use codeb::agent::Target;
    use codeb::backend::remote::{Error, Session};
    use codeb::model::SshRef;

    fn ssh(h: &Host, agent: &Path) -> SshRef {
        SshRef {
            target: format!("root@{}", h.address),
            port: None,
            identity_file: Some(h.key.display().to_string()),
            known_hosts: Some(h.known_hosts.display().to_string()),
            agent: agent.display().to_string(),
        }
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn session(h: &Host, agent: &Path) -> Session {
        Session::new(
            "far",
            &ssh(h, agent),
            &h.podman_sock,
            h.caddy_admin.trim_start_matches("http://"),
        )
    }

    fn ping(s: &Session) -> impl std::future::Future<Output = Result<(u16, String), Error>> + '_ {
        s.request(Target::Podman, "GET", "/v4.0.0/libpod/_ping", None)
    }

    #[tokio::test]
    async fn a_session_that_ended_is_opened_again_at_the_next_request() {
        let h1 = Host::get(1);
        let dir = tempfile::tempdir().unwrap();
        // Each session serves one request: the agent sees the end of its input after it.
        let agent = script(
            dir.path(),
            "one-request",
            &format!("head -n 2 | exec {} \"$@\"", env!("CARGO_BIN_EXE_codeb")),
        );
        let s = session(&h1, &agent);
        assert_eq!(ping(&s).await.unwrap(), (200, "OK".to_string()));
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while s.connected().await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(ended.is_ok(), "the session never noticed its agent ended");
        assert_eq!(ping(&s).await.unwrap(), (200, "OK".to_string()));
        // Several requests at once on one session: each gets its own answer.
        let s = session(&h1, Path::new(env!("CARGO_BIN_EXE_codeb")));
        let (a, b, c) = tokio::join!(
            ping(&s),
            s.request(
                Target::Caddy,
                "GET",
                "/config/apps/http/servers/harness/listen",
                None
            ),
            s.request(
                Target::Podman,
                "POST",
                "/v1.41/containers/x/exec",
                Some("{}".into())
            ),
        );
        assert_eq!(a.unwrap(), (200, "OK".to_string()));
        assert_eq!(b.unwrap().1.trim(), r#"[":80"]"#);
        let refused = c.unwrap_err().to_string();
        assert!(
            refused.contains("host far") && refused.contains("not allowed by the agent"),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn an_agent_of_another_version_is_refused_naming_the_host_and_both_versions() {
        let h1 = Host::get(1);
        let dir = tempfile::tempdir().unwrap();
        let agent = script(
            dir.path(),
            "old-agent",
            r#"echo '{"hello":{"protocol":1,"version":"0.0.0-elsewhere"}}'; cat >/dev/null"#,
        );
        let e = ping(&session(&h1, &agent)).await.unwrap_err();
        assert!(matches!(e, Error::Version { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("host far")
                && text.contains("0.0.0-elsewhere")
                && text.contains(env!("CARGO_PKG_VERSION")),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_agent_that_never_answers_is_given_up_on_at_the_deadline() {
        let h1 = Host::get(1);
        let dir = tempfile::tempdir().unwrap();
        let hello = format!(
            r#"{{"hello":{{"protocol":{},"version":"{}"}}}}"#,
            codeb::agent::PROTOCOL,
            env!("CARGO_PKG_VERSION")
        );
        let agent = script(
            dir.path(),
            "mute",
            &format!("echo '{hello}'; cat >/dev/null"),
        );
        let s = session(&h1, &agent).with_deadline(Duration::from_millis(500));
        let t0 = std::time::Instant::now();
        let e = ping(&s).await.unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("host far"), "{e}");
        // The connect (one ssh key exchange) and the deadline; never an endless wait.
        assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn a_missing_agent_and_a_refused_key_are_named() {
        let h1 = Host::get(1);
        let e = ping(&session(&h1, Path::new("/nonexistent/codeb")))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NoAgent { .. }), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let stranger = dir.path().join("stranger");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&stranger)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let mut creds = ssh(&h1, Path::new(env!("CARGO_BIN_EXE_codeb")));
        creds.identity_file = Some(stranger.display().to_string());
        let s = Session::new("far", &creds, &h1.podman_sock, "127.0.0.1:2019");
        let e = ping(&s).await.unwrap_err();
        assert!(matches!(e, Error::Credential { .. }), "{e}");
        assert!(e.to_string().contains("host far"), "{e}");
    }
}
