//! The simulated remote hosts of `deploy/hosts.sh` (issue #18), as the tests reach them: only
//! through each host's sshd, with the harness's client key and a known_hosts file that pins the
//! host's key. Nothing here enters a host's namespaces; the one exception is [`Host::set_link`],
//! which plays the network (a cable pulled), not the operator.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{env, eventually, text, Sandbox};

/// One host of the harness, from the `CODEB_HOST_N_*` variables of `deploy/hosts.sh env`.
pub struct Host {
    pub n: u32,
    /// The netns's name (`cbh1`), for [`Host::set_link`].
    pub name: String,
    /// `10.250.N.2`: sshd on :22 and Caddy's server on :80 answer there.
    pub address: String,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    /// Inside the host: `/run/podman/podman.sock`.
    pub podman_sock: String,
    /// Inside the host: `http://127.0.0.1:2019`.
    pub caddy_admin: String,
}

impl Host {
    /// A remote Host document for this host, reached over ssh with the harness's key, pinned by
    /// `known_hosts`, codeb's Caddy server on `address:port`; `labels` is inserted as written
    /// under `metadata` (empty, or `  labels:\n    role: app\n`). No `---` around it.
    pub fn doc(&self, name: &str, known_hosts: &Path, labels: &str, port: u16) -> String {
        self.doc_with(
            name,
            known_hosts,
            labels,
            port,
            &self.address,
            env!("CARGO_BIN_EXE_codeb"),
        )
    }

    /// As [`Host::doc`], with slot ports published on `publish` and `agent` as the command run
    /// over ssh.
    pub fn doc_with(
        &self,
        name: &str,
        known_hosts: &Path,
        labels: &str,
        port: u16,
        publish: &str,
        agent: &str,
    ) -> String {
        format!(
            "apiVersion: codeb.kr/v1
kind: Host
metadata:
  name: {name}
{labels}spec:
  address: \"{addr}\"
  podman: unix://{sock}
  ssh:
    target: root@{addr}
    identityFile: {key}
    knownHosts: {known}
    agent: {agent}
  caddy:
    admin: {admin}
    listen: [\"{addr}:{port}\"]
    tls: off
    accessLog: false
  publishAddress: \"{publish}\"
",
            addr = self.address,
            sock = self.podman_sock,
            key = self.key.display(),
            known = known_hosts.display(),
            admin = self.caddy_admin,
        )
    }

    /// Host `n`; a missing harness is a loud failure, never a skip.
    pub fn get(n: u32) -> Host {
        let var = |key: &str| {
            std::env::var(format!("CODEB_HOST_{n}_{key}")).unwrap_or_else(|_| {
                panic!("CODEB_HOST_{n}_{key} is not set: start the hosts with `deploy/hosts.sh up 4` and run `eval \"$(deploy/hosts.sh env)\"` (deploy/test.sh does both)")
            })
        };
        Host {
            n,
            name: var("NAME"),
            address: var("ADDRESS"),
            key: var("SSH_KEY").into(),
            known_hosts: var("KNOWN_HOSTS").into(),
            podman_sock: var("PODMAN_SOCK"),
            caddy_admin: var("CADDY_ADMIN"),
        }
    }

    /// The client options every connection uses: no config file, no agent, no prompt, the host's
    /// key pinned (a changed key is refused, an unknown one too), and keep-alives, because an open
    /// connection over a silent partition otherwise hangs forever (measured in ENVIRONMENT.md).
    pub fn ssh_args(&self, known_hosts: &Path) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-i",
            &self.key.to_string_lossy(),
            "-o",
            &format!("UserKnownHostsFile={}", known_hosts.display()),
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "ServerAliveInterval=1",
            "-o",
            "ServerAliveCountMax=3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Runs `command` on the host over ssh, with this known_hosts file.
    pub fn ssh_with(&self, known_hosts: &Path, command: &str) -> Output {
        Command::new("ssh")
            .args(self.ssh_args(known_hosts))
            .arg(format!("root@{}", self.address))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    }

    pub fn ssh(&self, command: &str) -> Output {
        self.ssh_with(&self.known_hosts, command)
    }

    /// A kept ssh connection forwarding the local Unix socket `local` to `remote` on the host (a
    /// Unix socket path or `127.0.0.1:PORT`), ready when this returns.
    pub fn forward(&self, local: &Path, remote: &str) -> Forward {
        let child = Command::new("ssh")
            .args(self.ssh_args(&self.known_hosts))
            .args([
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "StreamLocalBindUnlink=yes",
            ])
            .arg("-L")
            .arg(format!("{}:{remote}", local.display()))
            .arg(format!("root@{}", self.address))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ssh -L");
        // Caddy's admin API refuses a Host header other than its own address.
        let authority = if remote.starts_with('/') { "d" } else { remote };
        let mut forward = Forward {
            child,
            local: local.to_path_buf(),
            authority: authority.to_string(),
        };
        let ready = eventually(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(local).is_ok()
                || forward.child.try_wait().ok().flatten().is_some()
        });
        if !ready || forward.child.try_wait().ok().flatten().is_some() {
            let out = stderr_of(&mut forward.child);
            panic!(
                "ssh -L {} to host {} did not come up: {out}",
                local.display(),
                self.n
            );
        }
        forward
    }

    /// Takes the host end of the host's veth down or up: a silent partition (no RST, no FIN). Up
    /// also restores the host's route to the other hosts, which the kernel removed with the link.
    pub fn set_link(&self, up: bool) {
        let out = Command::new("ip")
            .args(["-n", &self.name, "link", "set", &format!("{}-h", self.name)])
            .arg(if up { "up" } else { "down" })
            .output()
            .expect("run ip");
        assert!(out.status.success(), "ip link set: {}", super::text(&out));
        if up {
            // The kernel dropped the route to the other hosts with the link; the host's network
            // configuration puts it back when the link comes up (as `deploy/hosts.sh up` does).
            let n = self.n;
            let out = Command::new("ip")
                .args(["-n", &self.name, "route", "replace", "10.250.0.0/16", "via"])
                .arg(format!("10.250.{n}.1"))
                .output()
                .expect("run ip");
            assert!(
                out.status.success(),
                "ip route replace: {}",
                super::text(&out)
            );
        }
    }
}

/// A running `ssh -N -L`; killed when dropped.
pub struct Forward {
    pub child: Child,
    pub local: PathBuf,
    /// The URL's host, so the Host header is what the far end expects.
    pub authority: String,
}

impl Forward {
    /// `curl --unix-socket` through the forward: (HTTP status, body); status 0 when curl failed.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        unix_request_to(&self.local, &self.authority, method, path, body)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.local);
    }
}

/// The stderr of an ssh that exited (killed first if not), for a failure message.
fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

/// One HTTP request over a Unix socket with curl (bounded at 10 s): (status, body), status 0 and
/// curl's error when it failed.
pub fn unix_request(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    unix_request_to(sock, "d", method, path, body)
}

/// As [`unix_request`], with this Host header (the URL's authority).
pub fn unix_request_to(
    sock: &Path,
    authority: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--unix-socket"])
        .arg(sock)
        .args(["-X", method, "-w", "\n%{http_code}"]);
    if let Some(body) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let out = cmd
        .arg(format!("http://{authority}{path}"))
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", ""));
    match code.trim().parse() {
        Ok(code) if out.status.success() => (code, body.to_string()),
        _ => (0, String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// The root namespace's view of `CODEB_TEST_PODMAN` (the stack's socket path).
pub fn stack_podman_sock() -> PathBuf {
    env("CODEB_TEST_PODMAN")
        .trim_start_matches("unix://")
        .into()
}

/// A sandbox whose configuration lets manifests reach these hosts over ssh (and nothing else
/// remote).
pub fn ssh_sandbox(hosts: &[&Host]) -> Sandbox {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let sb = Sandbox::new();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(sb.state())
        .unwrap();
    let config = sb.state().join("config.yaml");
    let targets: Vec<String> = hosts
        .iter()
        .map(|h| format!("\"root@{}\"", h.address))
        .collect();
    std::fs::write(
        &config,
        format!("endpoints:\n  ssh: [{}]\n", targets.join(", ")),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    sb
}

/// Removes `project` from `host` however the test ends: through codeb, then whatever is left
/// through ssh (containers by the project's label, codeb's routes naming it).
pub struct OnHost<'a> {
    pub sb: &'a Sandbox,
    pub host: &'a Host,
    pub project: String,
}

impl Drop for OnHost<'_> {
    fn drop(&mut self) {
        let _ = self.sb.codeb(&["delete", "project", &self.project]);
        // Through the host's APIs (its podman CLI would need the host's own configuration).
        let out = self.host.ssh(&format!(
            r#"S={sock}; A={admin}
for id in $(curl -s --unix-socket $S "http://d/v4.0.0/libpod/containers/json?all=true&filters=%7B%22label%22%3A%5B%22codeb.project%3D{p}%22%5D%7D" | grep -o '"Id":"[0-9a-f]*"' | cut -d'"' -f4); do
  curl -s -X DELETE --unix-socket $S "http://d/v4.0.0/libpod/containers/$id?force=true&timeout=0" >/dev/null
done
for r in $(curl -s $A/config/apps/http/servers/codeb/routes | grep -o '"@id":"codeb-{p}_[^"]*"' | cut -d'"' -f4); do
  curl -s -X DELETE $A/id/$r >/dev/null
done
true"#,
            sock = self.host.podman_sock,
            admin = self.host.caddy_admin,
            p = self.project
        ));
        assert!(
            out.status.success() || std::thread::panicking(),
            "cleanup on host {}: {}",
            self.host.n,
            text(&out)
        );
    }
}
