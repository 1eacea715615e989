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
//! - Bad input: a project moved to a Host that does not exist, or whose Host lacks a label its
//!   `hostSelector` requires, is refused (exit 2, file:line:column); a Host at an address nothing
//!   answers and a Host whose key is refused are named (exit 1) and hold back no other host; an
//!   apply with a wrong `knownHosts` keeps the Host's record that a later `delete` needs.
//!
//! Only host 3's link is ever taken down (other suites use hosts 1 and 2 meanwhile), and it is
//! always put back up by a guard. Needs the stack's env and `deploy/hosts.sh up 3`'s (or more).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::hosts::{ssh_sandbox, Host};
use common::{
    eventually, http_get_within, lock, managed_zone, text, unique, Pdns, ProjectYaml, Sandbox,
};

/// codeb's Caddy server on each host's address (not :80, the harness's own server).
const CODEB_PORT: u16 = 8088;

/// The tests of this file run one at a time: the partition test takes host 3's link down, which
/// every other test here also deploys to (run beside it, their health gates on host 3 time out).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds [`ONE_AT_A_TIME`] for a test (a test that failed while holding it does not stop the next).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The Host document of harness host `h`, named `fl-hN`, with these `metadata.labels`.
fn host_doc(h: &Host, labels: &str) -> String {
    format!(
        "---\n{}",
        h.doc(&format!("fl-h{}", h.n), &h.known_hosts, labels, CODEB_PORT)
    )
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
        let sb = ssh_sandbox(&hosts.iter().collect::<Vec<_>>());
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

    /// The manifests: the three Hosts (labelled `role: app`), the Zone, each project on its host
    /// running `image` and requiring `role: app` of it.
    fn write(&self, image: &str) -> PathBuf {
        self.write_with(image, |_, doc| doc)
    }

    /// As [`Fleet::write`], each project's document passed through `edit` first.
    fn write_with(&self, image: &str, edit: impl Fn(&Placed, String) -> String) -> PathBuf {
        let mut head: String = self
            .hosts
            .iter()
            .map(|h| host_doc(h, "  labels:\n    role: app\n"))
            .collect();
        head.push_str(&managed_zone(&self.zone, &self.pdns.api, "PDNS_API_KEY"));
        let mut text = head;
        for p in &self.projects {
            let mut y = ProjectYaml::new(&p.name, image);
            y.zone = &self.zone;
            let doc = y.render().replace(
                "  host: local\n",
                &format!(
                    "  host: fl-h{}\n  hostSelector: {{role: app}}\n",
                    self.hosts[p.host].n
                ),
            );
            text.push_str(&edit(p, doc));
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

/// Host `h`'s Caddy config of codeb's server, through ssh: its settings and the routes of these
/// projects (other suites' routes come and go on the shared hosts meanwhile).
fn caddy_config(h: &Host, projects: &[&str]) -> serde_json::Value {
    let out = h.ssh(&format!(
        "curl -s {}/config/apps/http/servers/codeb",
        h.caddy_admin
    ));
    assert!(out.status.success(), "{}", text(&out));
    let mut server: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    if let Some(routes) = server.get_mut("routes").and_then(|r| r.as_array_mut()) {
        routes.retain(|r| {
            r["@id"].as_str().is_some_and(|id| {
                projects
                    .iter()
                    .any(|p| id.starts_with(&format!("codeb-{p}_")))
            })
        });
    }
    server
}

fn apply(sb: &Sandbox, dir: &Path) -> std::process::Output {
    sb.codeb(&["apply", "-f", dir.to_str().unwrap(), "--progress", "none"])
}

/// `get hosts -o json`, by host name.
fn get_hosts(sb: &Sandbox) -> serde_json::Map<String, serde_json::Value> {
    try_get_hosts(sb).unwrap_or_else(|e| panic!("{e}"))
}

/// As [`get_hosts`]; `Err` when the command failed (a daemon not answering on its socket yet).
fn try_get_hosts(sb: &Sandbox) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let out = sb.codeb(&["get", "hosts", "-o", "json"]);
    if out.status.code() != Some(0) {
        return Err(text(&out));
    }
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Ok(rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r.clone()))
        .collect())
}

#[test]
fn ten_projects_on_three_hosts_converge_in_one_apply_each_served_and_named_by_its_own_host() {
    let _one = one_at_a_time();
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
        before.push((on, caddy_config(h, &names)));
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
        assert_eq!(
            &caddy_config(h, &names),
            caddy,
            "host {}'s Caddy config",
            h.n
        );
    }
    assert_eq!(
        fleet.pdns.serial(&fleet.zone),
        serial,
        "the zone was written"
    );
    assert_eq!(fleet.sb.slots(), slots, "the store's slots changed");

    // Bad input, refused before anything is observed (exit 2, file:line:column), nothing changed:
    // a project moved to a Host that does not exist, and one whose Host lacks a label it needs.
    let first = &fleet.projects[0];
    let moved = fleet.write_with("localhost/codeb-test-app:v1", |p, doc| {
        if p.name == first.name {
            doc.replace("  host: fl-h1\n", "  host: fl-h9\n")
        } else {
            doc
        }
    });
    let out = apply(&fleet.sb, &moved);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("all.yaml:")
            && all.contains(
                "unknown host `fl-h9`: no Host with this name (defined: fl-h1, fl-h2, fl-h3)"
            ),
        "{all}"
    );
    let needs_db = fleet.write_with("localhost/codeb-test-app:v1", |p, doc| {
        if p.name == first.name {
            doc.replace("hostSelector: {role: app}", "hostSelector: {role: db}")
        } else {
            doc
        }
    });
    let out = apply(&fleet.sb, &needs_db);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("all.yaml:")
            && all.contains("spec.hostSelector requires the label `role: db` but Host `fl-h1`")
            && all.contains("(it has `role: app`)"),
        "{all}"
    );
    for (h, (on, caddy)) in fleet.hosts.iter().zip(&before) {
        assert_eq!(&containers(h, &names), on, "host {}'s containers", h.n);
        assert_eq!(
            &caddy_config(h, &names),
            caddy,
            "host {}'s Caddy config",
            h.n
        );
    }
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

/// Puts host 3's link back up however the test ends.
struct LinkUp<'a>(&'a Host);

impl Drop for LinkUp<'_> {
    fn drop(&mut self) {
        self.0.set_link(true);
    }
}

/// The ids of host 3's containers of these projects, as its Podman lists them through `fwd`.
fn ids_through(fwd: &common::hosts::Forward, projects: &[&str]) -> Option<Vec<String>> {
    let (code, body) = fwd.request("GET", "/v4.0.0/libpod/containers/json?all=true", None);
    if code != 200 {
        return None;
    }
    let list: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut ids: Vec<String> = list
        .as_array()?
        .iter()
        .filter(|c| {
            c["Labels"]["codeb.project"]
                .as_str()
                .is_some_and(|p| projects.contains(&p))
        })
        .filter_map(|c| c["Id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    Some(ids)
}

#[test]
fn a_host_partitioned_mid_apply_is_unknown_keeps_what_runs_and_converges_within_one_backoff_step() {
    let _one = one_at_a_time();
    let _l = lock();
    let fleet = Fleet::new("flp", &[2, 2, 2]);
    let h3 = &fleet.hosts[2];
    let on3: Vec<&str> = fleet
        .projects
        .iter()
        .filter(|p| p.host == 2)
        .map(|p| p.name.as_str())
        .collect();
    let dir = fleet.write("localhost/codeb-test-app:v1");
    let out = apply(&fleet.sb, &dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v1_on3: Vec<String> = containers(h3, &on3).into_iter().map(|c| c.2).collect();
    assert_eq!(v1_on3.len(), 2, "{v1_on3:?}");

    // v2 everywhere; host 3's link goes down as soon as its first v2 container exists (the
    // deploy's create answered: its start, or its health check, is in flight).
    let dir = fleet.write("localhost/codeb-test-app:v2");
    let socks = tempfile::tempdir().unwrap();
    let fwd = h3.forward(&socks.path().join("podman.sock"), &h3.podman_sock);
    let link = LinkUp(h3);
    let applying = std::process::Command::new(env!("CARGO_BIN_EXE_codeb"))
        .arg("--state-dir")
        .arg(fleet.sb.state())
        .args(["apply", "-f", dir.to_str().unwrap(), "--progress", "none"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deploying = eventually(Duration::from_secs(30), || {
        ids_through(&fwd, &on3).is_some_and(|ids| ids.len() > v1_on3.len())
    });
    if !deploying {
        let out = applying.wait_with_output().unwrap();
        panic!(
            "host 3 never got a v2 container: {:?} {}",
            ids_through(&fwd, &on3),
            text(&out)
        );
    }
    h3.set_link(false);
    let down_at = Instant::now();
    drop(fwd);
    let out = applying.wait_with_output().unwrap();
    let all = text(&out);
    eprintln!(
        "apply with host 3 partitioned ({:?} after the link went down): {all}",
        down_at.elapsed()
    );
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("fl-h3"),
        "the apply does not name host 3: {all}"
    );
    // Seen within seconds (ssh's keep-alives, then a connect that finds no route), not at the
    // 15 s health timeout of the check that was in flight.
    assert!(
        down_at.elapsed() < Duration::from_secs(13),
        "the partition took {:?} to end the apply: {all}",
        down_at.elapsed()
    );
    // Hosts 1 and 2 converged all the same.
    for p in fleet.projects.iter().filter(|p| p.host != 2) {
        assert_eq!(fleet.front(p), (200, "v2".to_string()), "{}: {all}", p.name);
    }

    // The loop, with host 3 still cut off: `get hosts` says Unknown, since when and why.
    let mut watch = fleet.sb.watch(&dir, &["--resync", "1s"]);
    // Not before it holds the store: a read open at its start would keep it from opening it.
    assert!(
        watch.wait_log(Duration::from_secs(20), "swept"),
        "{}",
        watch.log()
    );
    let mut row = serde_json::Value::Null;
    let unknown = eventually(Duration::from_secs(30), || {
        let Ok(hosts) = try_get_hosts(&fleet.sb) else {
            return false;
        };
        row = hosts["fl-h3"].clone();
        row["reachable"] == "Unknown"
            && hosts["fl-h1"]["reachable"] == "yes"
            && hosts["fl-h2"]["reachable"] == "yes"
    });
    assert!(unknown, "host 3 never Unknown: {row} {}", watch.log());
    eprintln!("get hosts, host 3 partitioned: {row}");
    let since = row["unknownSinceMs"].as_u64().expect("since when");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(since <= now && now - since < 60_000, "{row}");
    assert!(
        row["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("fl-h3") || e.contains("10.250.3.2")),
        "{row}"
    );
    let table = fleet.sb.codeb(&["get", "hosts"]);
    assert_eq!(
        table.status.code(),
        Some(0),
        "{} {}",
        text(&table),
        watch.log()
    );
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    eprintln!("{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("fl-h3") && l.contains("Unknown since")),
        "{table}"
    );
    // A few more tries of host 3 while it is cut off: nothing is planned for it.
    assert!(
        watch.wait_sweeps(3, Duration::from_secs(20)),
        "{}",
        watch.log()
    );

    // The link back: nothing on host 3 was removed, and it converges within one backoff step.
    drop(link);
    let up_at = Instant::now();
    // ssh answers again once ARP does (a second or two).
    assert!(
        eventually(Duration::from_secs(15), || h3.ssh("true").status.success()),
        "host 3 unreachable after its link came back"
    );
    let on_host: Vec<String> = containers(h3, &on3).into_iter().map(|c| c.2).collect();
    for id in &v1_on3 {
        assert!(
            on_host.contains(id),
            "host 3's v1 container {id} was removed: {on_host:?}"
        );
    }
    let bound = codeb::reconcile::backoff::MAX_DELAY * 2 + Duration::from_secs(15);
    let converged = eventually(bound, || {
        fleet
            .projects
            .iter()
            .filter(|p| p.host == 2)
            .all(|p| fleet.front(p) == (200, "v2".to_string()))
    });
    eprintln!(
        "host 3 converged {:?} after its link came back",
        up_at.elapsed()
    );
    assert!(
        converged,
        "host 3 not converged within {bound:?} of its link coming back: {}",
        watch.log()
    );
    let hosts = get_hosts(&fleet.sb);
    assert_eq!(hosts["fl-h3"]["reachable"], "yes", "{:?}", hosts["fl-h3"]);
    assert!(watch.terminate(Duration::from_secs(15)).is_some());
    // The v1 containers are still there (their grace period is an hour).
    let on_host: Vec<String> = containers(h3, &on3).into_iter().map(|c| c.2).collect();
    for id in &v1_on3 {
        assert!(on_host.contains(id), "{id} removed: {on_host:?}");
    }
}

/// A key pair host `h` does not accept, and a known_hosts file pinning another key for it.
fn strangers(dir: &Path, h: &Host) -> (PathBuf, PathBuf) {
    let mut made = Vec::new();
    for name in ["stranger", "impostor"] {
        let key = dir.join(name);
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        made.push(key);
    }
    let public = std::fs::read_to_string(made[1].with_extension("pub")).unwrap();
    let public: Vec<&str> = public.split_whitespace().take(2).collect();
    let known = dir.join("known_hosts");
    std::fs::write(&known, format!("{} {}\n", h.address, public.join(" "))).unwrap();
    (made.remove(0), known)
}

/// Bad input that only the host can refuse: a Host whose address answers nothing, and a Host
/// whose identityFile it does not accept. Each is a clear error naming the Host (apply exits 1:
/// not converged, as for any host that cannot be observed; 2 is for what validation refuses),
/// and holds back nothing else: the other hosts' projects converge in the same apply.
#[test]
fn an_unreachable_address_and_a_refused_credential_name_their_host_and_hold_back_nothing_else() {
    let _one = one_at_a_time();
    let _l = lock();
    let fleet = Fleet::new("flb", &[1, 1, 1]);
    let keys = tempfile::tempdir().unwrap();
    let h3 = &fleet.hosts[2];
    let (stranger, _) = strangers(keys.path(), h3);
    // Host 3 with a key it refuses; a fourth Host at an address nothing answers (the harness
    // routes 10.250.0.0/16 nowhere but to its hosts).
    let dead = "10.250.99.2";
    let dir = fleet.write_with("localhost/codeb-test-app:v1", |_, doc| doc);
    let text_of = std::fs::read_to_string(dir.join("all.yaml")).unwrap();
    let text_of = text_of.replace(
        &format!(
            "identityFile: {}\n    knownHosts: {}",
            h3.key.display(),
            h3.known_hosts.display()
        ),
        &format!(
            "identityFile: {}\n    knownHosts: {}",
            stranger.display(),
            h3.known_hosts.display()
        ),
    );
    assert!(text_of.contains(&stranger.display().to_string()));
    let dead_host = host_doc(&fleet.hosts[0], "")
        .replace("name: fl-h1", "name: fl-dead")
        .replace(&fleet.hosts[0].address, dead);
    let mut dead_project = ProjectYaml::new("flb-dead-app", "localhost/codeb-test-app:v1");
    dead_project.zone = &fleet.zone;
    let dead_project = dead_project
        .render()
        .replace("  host: local\n", "  host: fl-dead\n");
    std::fs::write(
        dir.join("all.yaml"),
        format!("{text_of}{dead_host}{dead_project}"),
    )
    .unwrap();
    let config = fleet.sb.state().join("config.yaml");
    let allowed = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        allowed.replace("ssh: [", &format!("ssh: [\"root@{dead}\", ")),
    )
    .unwrap();

    let t0 = Instant::now();
    let out = apply(&fleet.sb, &dir);
    let all = text(&out);
    eprintln!(
        "apply with a dead Host and a refused key ({:?}): {all}",
        t0.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("host fl-dead") && all.contains(&format!("root@{dead}")),
        "the dead Host is not named: {all}"
    );
    assert!(
        all.contains("host fl-h3") && all.contains("no credential it accepts"),
        "the refused credential is not named: {all}"
    );
    // Hosts 1 and 2 converged in the same apply.
    for p in fleet.projects.iter().filter(|p| p.host != 2) {
        assert_eq!(fleet.front(p), (200, "v1".to_string()), "{}: {all}", p.name);
    }
    // `get hosts` shows both Unknown, with why; the others reachable.
    let hosts = get_hosts(&fleet.sb);
    for (name, why) in [
        ("fl-dead", "cannot reach"),
        ("fl-h3", "no credential it accepts"),
    ] {
        let row = &hosts[name];
        assert_eq!(row["reachable"], "Unknown", "{row}");
        assert!(row["unknownSinceMs"].as_u64().is_some(), "{row}");
        assert!(
            row["lastError"]
                .as_str()
                .is_some_and(|e| e.contains(&format!("host {name}")) && e.contains(why)),
            "{row}"
        );
    }
    assert_eq!(hosts["fl-h1"]["reachable"], "yes");
}

/// A Host recorded by a good apply keeps that record through an apply whose `knownHosts` pins
/// another key (refused, naming the Host): a later `delete` without manifests still reaches it.
#[test]
fn a_failed_apply_with_a_wrong_known_hosts_keeps_the_record_a_later_delete_needs() {
    let _one = one_at_a_time();
    let _l = lock();
    let fleet = Fleet::new("flk", &[0, 0, 1]);
    let h3 = &fleet.hosts[2];
    let p = &fleet.projects[0];
    let dir = fleet.write("localhost/codeb-test-app:v1");
    let out = apply(&fleet.sb, &dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fleet.front(p), (200, "v1".to_string()));

    let keys = tempfile::tempdir().unwrap();
    let (_, impostor) = strangers(keys.path(), h3);
    let text_of = std::fs::read_to_string(dir.join("all.yaml")).unwrap();
    std::fs::write(
        dir.join("all.yaml"),
        text_of.replace(
            &h3.known_hosts.display().to_string(),
            &impostor.display().to_string(),
        ),
    )
    .unwrap();
    let out = apply(&fleet.sb, &dir);
    let all = text(&out);
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("host fl-h3") && all.contains("known_hosts pins"),
        "{all}"
    );

    // Without manifests: the recorded Host (with the pinned key that works) is used.
    let out = fleet
        .sb
        .codeb(&["delete", "project", &p.name, "--progress", "none"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(containers(h3, &[p.name.as_str()]).is_empty());
}
