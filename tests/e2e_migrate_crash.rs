//! kill -9 of codeb at every journal write of a migration on the real hosts (issue #18): a project
//! on host 1 (A) moved to host 2 (B) with `CODEB_FAULT_KILL_AFTER=N`, then applied again without
//! the fault until converged, reaches the same end state as an unkilled migration, with nothing
//! left over: on B one running container and the hostname and preview routes to it; on A the
//! serving slot's container only, stopped (kept for the grace period), and the hostname route
//! only, forwarding to B's Caddy; every DNS record of the project names B with the zone's TTL.
//!
//! Then `delete project` of the last one, in its grace period, removes it from both hosts.
//!
//! The projects are deployed on A together first (one apply), so that each kill point costs only
//! its migration. Needs the stack's env and `deploy/hosts.sh up 2`'s.

mod common;

use std::process::Command;
use std::time::Duration;

use common::migrate::*;
use common::{lock, text, unique};

/// The end state of a migration of `name` in its grace period, with nothing left over.
fn assert_migrated(pair: &Pair, name: &str, context: &str) {
    let hostname = pair.hostname(name);
    let via_b = format!("{}:{PORT}", pair.b.address);
    let b_cs = containers_on(&pair.b, name);
    assert!(
        b_cs.len() == 1 && b_cs[0].1 == "running",
        "{context}: B's containers {b_cs:?}"
    );
    let b_routes = routes_on(&pair.b, name);
    let via_a = format!("{}:{PORT}", pair.a.address);
    assert!(
        serve_themselves(&pair.b, name, &b_routes, &via_a),
        "{context}: B's hostname route dials its service address, its preview its slot {b_routes:?}"
    );
    let a_cs = containers_on(&pair.a, name);
    assert!(
        a_cs.len() == 1 && a_cs[0].1 == "exited",
        "{context}: A keeps exactly its stopped serving container {a_cs:?}"
    );
    let a_routes = routes_on(&pair.a, name);
    assert!(
        a_routes.len() == 1 && a_routes[0].1 == vec![via_b.clone()],
        "{context}: A's only route forwards to B {a_routes:?}"
    );
    for n in [
        hostname.clone(),
        format!("blue.{hostname}"),
        format!("green.{hostname}"),
    ] {
        assert_eq!(
            pair.dig(&n),
            (vec![pair.b.address.clone()], Some(ZONE_TTL)),
            "{context}: {n}"
        );
    }
    assert_eq!(
        common::http_get_within(
            &format!("{}:{PORT}", pair.a.address),
            &hostname,
            "/",
            Duration::from_secs(3)
        ),
        (200, "v1".to_string()),
        "{context}: through A"
    );
    assert_eq!(
        common::http_get_within(&via_b, &hostname, "/", Duration::from_secs(3)),
        (200, "v1".to_string()),
        "{context}: through B"
    );
}

/// Kill points: the journal writes of one migration, 1 to `LAST`. A migration from a converged A
/// made 18 commits here (measured: the 19th point finished unkilled; begin; B's deploy, health
/// gate, preview route, switch, hostname route; A's forward; the DNS phase and its PATCH; the
/// grace; A's preview route; the TTL's PATCH; each step's intent and outcome): each point is
/// killed once, and the first count past the end lets the migration finish unkilled.
const LAST: u64 = 22;

/// The kill points run: every one with `CODEB_MIGRATE_CRASH_ALL=1` (about 9 s each here: 19
/// points, 3.3 min), else every third one (1, 4, 7, …: intents and outcomes alike, as a step writes
/// two), which keeps the file near a minute
/// and still stops the migration in each of its phases (deploying, forwarding, dns, grace: each spans more than one write).
fn points() -> Vec<u64> {
    let all = std::env::var_os("CODEB_MIGRATE_CRASH_ALL").is_some();
    (1..=LAST).filter(|n| all || n % 3 == 1).collect()
}

#[test]
fn a_migration_killed_at_every_journal_write_converges_on_the_next_apply() {
    let _l = lock();
    let zone = format!("{}.test", unique("mgk"));
    let pair = Pair::new(&zone);
    let points = points();
    let names: Vec<String> = points.iter().map(|n| unique(&format!("mg-k{n}"))).collect();
    struct Clean<'a>(&'a Pair, &'a [String]);
    impl Drop for Clean<'_> {
        fn drop(&mut self) {
            for n in self.1 {
                let _ = self
                    .0
                    .sb
                    .codeb(&["delete", "project", n, "--progress", "none"]);
            }
            for n in self.1 {
                self.0.cleanup(n);
            }
        }
    }
    let _clean = Clean(&pair, &names);

    // Every project on A, in one apply.
    let dir = pair.write_many(&names, &|_| "a");
    pair.converge(&dir, 4);

    let mut killed = 0;
    for (i, name) in names.iter().enumerate() {
        let n = points[i];
        // Projects before this one are on B (migrated), this one moves now, the rest stay on A.
        let dir = pair.write_many(&names, &|j| if j <= i { "b" } else { "a" });
        let first = Command::new(env!("CARGO_BIN_EXE_codeb"))
            .arg("--state-dir")
            .arg(pair.sb.state())
            .args(["apply", "-f", dir.to_str().unwrap(), "--progress", "none"])
            .env("CODEB_FAULT_KILL_AFTER", n.to_string())
            .output()
            .unwrap();
        let was_killed = first.status.code().is_none();
        let outs = pair.converge(&dir, 6);
        let context = format!("killed after journal write {n}");
        assert_migrated(&pair, name, &context);
        eprintln!(
            "{context}: killed {was_killed}, then {} apply(s) to converge",
            outs.len()
        );
        if !was_killed {
            assert!(text(&first).contains("converged"), "{}", text(&first));
            break;
        }
        killed += 1;
    }
    // `delete project` of an environment in its migration's grace period removes both hosts'
    // parts (it connects to the source too), and its records.
    let last = &names[killed];
    let out = pair
        .sb
        .codeb(&["delete", "project", last, "--progress", "none"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for h in [&pair.a, &pair.b] {
        assert!(containers_on(h, last).is_empty(), "host {}: {last}", h.n);
        assert!(routes_on(h, last).is_empty(), "host {}: {last}", h.n);
    }
    assert!(pair.dig(&pair.hostname(last)).0.is_empty());
    assert!(
        killed >= points.iter().filter(|n| **n <= 16).count(),
        "a migration has at least sixteen journal writes: every point up to 16 kills ({killed})"
    );
}
