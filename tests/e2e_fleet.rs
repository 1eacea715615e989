//! Many hosts from one operator (issue #18): three remote hosts of `deploy/hosts.sh` (1, 2 and 3),
//! reached over ssh only, ten projects spread over them, applied at once.
//!
//! - One `codeb apply` deploys all ten; each project answers through its own host's Caddy, and its
//!   DNS name (a Zone in the stack's PowerDNS) points at its own host's address; a second apply
//!   says "nothing to do" and changes nothing on any host (containers, Caddy's config, the zone's
//!   serial, the store's records).
//! - A partition: host 3's link is taken down in the middle of an apply. The apply reports host 3
//!   unreachable, hosts 1 and 2 converge, nothing on host 3 is removed; `codeb watch` running
//!   meanwhile shows host 3 `Unknown` in `get hosts` (since when, the last error), and once the
//!   link is back host 3 converges within one step of the backoff.
//!
//! Only host 3's link is ever taken down (other suites use hosts 1 and 2 meanwhile), and it is
//! always put back up by a guard. Needs the stack's env and `deploy/hosts.sh up 3`'s (or more).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::hosts::Host;
use common::{
    eventually, http_get_within, lock, managed_zone, text, unique, Pdns, ProjectYaml, Sandbox,
};

/// codeb's Caddy server on each host's address (not :80, the harness's own server).
const CODEB_PORT: u16 = 8088;

/// The Host document of harness host `h`, named `fl-hN`, with these `metadata.labels`.
fn host_doc(h: &Host, labels: &str) -> String {
    format!(
        "---
apiVersion: codeb.kr/v1
kind: Host
metadata:
  name: fl-h{n}
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
    listen: [\"{addr}:{CODEB_PORT}\"]
    tls: off
    accessLog: false
  publishAddress: \"{addr}\"
",
        n = h.n,
        addr = h.address,
        sock = h.podman_sock,
        key = h.key.display(),
        known = h.known_hosts.display(),
        agent = env!("CARGO_BIN_EXE_codeb"),
        admin = h.caddy_admin,
    )
}

/// A sandbox whose configuration lets manifests reach these hosts over ssh.
fn sandbox(hosts: &[Host]) -> Sandbox {
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

/// One project of the fleet: its name and the index of its host in the fleet's hosts.
struct Placed {
    name: String,
    host: usize,
}

/// The test's sandbox, hosts, zone and projects; removes the projects from every host and the
/// zone from PowerDNS however the test ends (through codeb, then whatever is left through ssh),
/// and puts host 3's link back up first.
struct Fleet {
    sb: Sandbox,
    hosts: Vec<Host>,
    zone: String,
    projects: Vec<Placed>,
    pdns: Pdns,
}

impl Fleet {
    fn new(prefix: &str, per_host: &[usize]) -> Fleet {
        let hosts: Vec<Host> = (1..=3).map(Host::get).collect();
        let sb = sandbox(&hosts);
        let zone = format!("{}.test", unique(&format!("{prefix}z")));
        // One unique stem, a letter per project: `fl-481478-133a`, `fl-481478-133b`, ...
        let stem = unique(prefix);
        let mut projects = Vec::new();
        for (i, n) in per_host.iter().enumerate() {
            for _ in 0..*n {
                let letter = char::from(b'a' + projects.len() as u8);
                projects.push(Placed {
                    name: format!("{stem}{letter}"),
                    host: i,
                });
            }
        }
        Fleet {
            sb,
            hosts,
            zone,
            projects,
            pdns: Pdns::get(),
        }
    }

    fn hostname(&self, p: &Placed) -> String {
        format!("{}.{}", p.name, self.zone)
    }

    /// The manifests: the three Hosts, the Zone, each project on its host running `image`.
    fn write(&self, image: &str) -> PathBuf {
        let mut head: String = self.hosts.iter().map(|h| host_doc(h, "")).collect();
        head.push_str(&managed_zone(&self.zone, &self.pdns.api, "PDNS_API_KEY"));
        let mut text = head;
        for p in &self.projects {
            let mut y = ProjectYaml::new(&p.name, image);
            y.zone = &self.zone;
            text.push_str(&y.render().replace(
                "  host: local\n",
                &format!("  host: fl-h{}\n", self.hosts[p.host].n),
            ));
        }
        let dir = self.sb.dir.path().join("manifests");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("all.yaml"), text).unwrap();
        dir
    }

    /// What answers `p`'s hostname through its own host's Caddy.
    fn front(&self, p: &Placed) -> (u16, String) {
        let h = &self.hosts[p.host];
        http_get_within(
            &format!("{}:{CODEB_PORT}", h.address),
            &self.hostname(p),
            "/",
            Duration::from_secs(2),
        )
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.hosts[2].set_link(true);
        for p in &self.projects {
            let _ = self
                .sb
                .codeb(&["delete", "project", &p.name, "--progress", "none"]);
        }
        for (i, h) in self.hosts.iter().enumerate() {
            let mine: Vec<&str> = self
                .projects
                .iter()
                .filter(|p| p.host == i)
                .map(|p| p.name.as_str())
                .collect();
            if !mine.is_empty() {
                remove_on_host(h, &mine);
            }
        }
        self.pdns.delete_zone(&self.zone);
    }
}

/// Removes these projects' containers and routes from host `h` through its APIs, over ssh.
fn remove_on_host(h: &Host, projects: &[&str]) {
    let script: String = projects
        .iter()
        .map(|p| {
            format!(
                r#"for id in $(curl -s --unix-socket $S "http://d/v4.0.0/libpod/containers/json?all=true&filters=%7B%22label%22%3A%5B%22codeb.project%3D{p}%22%5D%7D" | grep -o '"Id":"[0-9a-f]*"' | cut -d'"' -f4); do
  curl -s -X DELETE --unix-socket $S "http://d/v4.0.0/libpod/containers/$id?force=true&timeout=0" >/dev/null
done
for r in $(curl -s $A/config/apps/http/servers/codeb/routes | grep -o '"@id":"codeb-{p}_[^"]*"' | cut -d'"' -f4); do
  curl -s -X DELETE $A/id/$r >/dev/null
done
"#
            )
        })
        .collect();
    let _ = h.ssh(&format!(
        "S={}; A={}\n{script}true",
        h.podman_sock, h.caddy_admin
    ));
}

/// `(project, name, id, running)` of host `h`'s containers of these projects, sorted.
fn containers(h: &Host, projects: &[&str]) -> Vec<(String, String, String, bool)> {
    let out = h.ssh(&format!(
        "curl -sf --unix-socket {} 'http://d/v4.0.0/libpod/containers/json?all=true'",
        h.podman_sock
    ));
    assert!(out.status.success(), "list on host {}: {}", h.n, text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut found: Vec<(String, String, String, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| {
            let project = c["Labels"]["codeb.project"].as_str()?;
            projects.contains(&project).then(|| {
                (
                    project.to_string(),
                    c["Names"][0].as_str().unwrap_or_default().to_string(),
                    c["Id"].as_str().unwrap_or_default().to_string(),
                    c["State"] == "running",
                )
            })
        })
        .collect();
    found.sort();
    found
}

/// Host `h`'s Caddy config of codeb's server, through ssh.
fn caddy_config(h: &Host) -> String {
    let out = h.ssh(&format!(
        "curl -s {}/config/apps/http/servers/codeb",
        h.caddy_admin
    ));
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply(sb: &Sandbox, dir: &Path) -> std::process::Output {
    sb.codeb(&["apply", "-f", dir.to_str().unwrap(), "--progress", "none"])
}

/// `get hosts -o json`, by host name.
fn get_hosts(sb: &Sandbox) -> serde_json::Map<String, serde_json::Value> {
    let out = sb.codeb(&["get", "hosts", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

#[test]
fn ten_projects_on_three_hosts_converge_in_one_apply_each_served_and_named_by_its_own_host() {
    let _l = lock();
    let fleet = Fleet::new("fl", &[4, 3, 3]);
    let dir = fleet.write("localhost/codeb-test-app:v1");
    let names: Vec<&str> = fleet.projects.iter().map(|p| p.name.as_str()).collect();

    let t0 = Instant::now();
    let out = apply(&fleet.sb, &dir);
    eprintln!("first apply of 10 projects on 3 hosts: {:?}", t0.elapsed());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Each project answers through its own host's Caddy, and only there.
    for p in &fleet.projects {
        let mut last = (0, String::new());
        assert!(
            eventually(Duration::from_secs(10), || {
                last = fleet.front(p);
                last == (200, "v1".to_string())
            }),
            "{} never answered v1 on host {}: {last:?}",
            p.name,
            fleet.hosts[p.host].n
        );
        let other = &fleet.hosts[(p.host + 1) % 3];
        // Caddy answers an unmatched request 200 with an empty body: the body tells.
        let (_, body) = http_get_within(
            &format!("{}:{CODEB_PORT}", other.address),
            &fleet.hostname(p),
            "/",
            Duration::from_secs(2),
        );
        assert_ne!(body, "v1", "host {} serves {}", other.n, p.name);
    }
    // Its containers are on its host's Podman and on no other.
    let mut before = Vec::new();
    for (i, h) in fleet.hosts.iter().enumerate() {
        let on = containers(h, &names);
        for p in &fleet.projects {
            let n = on.iter().filter(|c| c.0 == p.name).count();
            assert_eq!(
                n,
                usize::from(p.host == i),
                "{} on host {}: {on:?}",
                p.name,
                h.n
            );
        }
        before.push((on, caddy_config(h)));
    }
    // Its DNS name points at its own host's address.
    for p in &fleet.projects {
        assert_eq!(
            fleet.pdns.dig(&fleet.hostname(p), "A"),
            fleet.hosts[p.host].address,
            "{}",
            p.name
        );
    }

    // A second apply: nothing to do, nothing changed on any host or in the store.
    let serial = fleet.pdns.serial(&fleet.zone);
    let slots = fleet.sb.slots();
    let t0 = Instant::now();
    let again = apply(&fleet.sb, &dir);
    eprintln!("no-op apply of 10 projects on 3 hosts: {:?}", t0.elapsed());
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to do"),
        "{}",
        text(&again)
    );
    for (h, (on, caddy)) in fleet.hosts.iter().zip(&before) {
        assert_eq!(&containers(h, &names), on, "host {}'s containers", h.n);
        assert_eq!(&caddy_config(h), caddy, "host {}'s Caddy config", h.n);
    }
    assert_eq!(
        fleet.pdns.serial(&fleet.zone),
        serial,
        "the zone was written"
    );
    assert_eq!(fleet.sb.slots(), slots, "the store's slots changed");

    // `get hosts`: the three, reachable over ssh, each with its environments.
    let hosts = get_hosts(&fleet.sb);
    eprintln!("get hosts: {hosts:?}");
    for (i, h) in fleet.hosts.iter().enumerate() {
        let row = &hosts[&format!("fl-h{}", h.n)];
        assert_eq!(row["transport"], format!("ssh root@{}", h.address), "{row}");
        assert_eq!(row["reachable"], "yes", "{row}");
        let envs = fleet.projects.iter().filter(|p| p.host == i).count();
        assert_eq!(row["environments"], envs, "{row}");
        assert!(row["rttUs"].as_u64().is_some_and(|r| r > 0), "{row}");
        assert!(
            row["podmanVersion"].as_str().is_some_and(|v| !v.is_empty()),
            "{row}"
        );
        assert!(
            row["caddyVersion"].as_str().is_some_and(|v| !v.is_empty()),
            "{row}"
        );
    }
}
