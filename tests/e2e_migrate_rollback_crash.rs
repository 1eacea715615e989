//! kill -9 of `codeb rollback` at its journal writes during a migration's grace period on the real
//! hosts (issue #18): a project migrated from host 1 (A) to host 2 (B), in grace, rolled back with
//! `CODEB_FAULT_KILL_AFTER=N`; the operator then runs `codeb rollback` again (which resumes the
//! rollback once its intent was written, and writes it otherwise) and `apply` with the manifests
//! still saying `host: b` until converged. The end state is the same for every N, with nothing left over: on A one
//! running container with the hostname and preview routes to it; on B its serving container only,
//! stopped (kept for B's grace period), and the hostname route only, forwarding to A's Caddy; every
//! DNS record names A with the zone's TTL; both Caddies answer with the app.
//!
//! The projects are deployed on A and migrated to B together first (two applies), so each kill
//! point costs only its rollback. Needs the stack's env and `deploy/hosts.sh up 2`'s.

mod common;

use std::process::Command;
use std::time::Duration;

use common::migrate::*;
use common::{lock, text, unique};

/// The end state of a rollback of `name` in B's grace period, with nothing left over.
fn assert_rolled_back(pair: &Pair, name: &str, context: &str) {
    let hostname = pair.hostname(name);
    let via_a = format!("{}:{PORT}", pair.a.address);
    let via_b = format!("{}:{PORT}", pair.b.address);
    let a_cs = containers_on(&pair.a, name);
    assert!(
        a_cs.len() == 1 && a_cs[0].1 == "running",
        "{context}: A's containers {a_cs:?}"
    );
    let a_routes = routes_on(&pair.a, name);
    assert!(
        serve_themselves(&pair.a, name, &a_routes, &via_b),
        "{context}: A's hostname route dials its service address, its preview its slot {a_routes:?}"
    );
    let b_cs = containers_on(&pair.b, name);
    assert!(
        b_cs.len() == 1 && b_cs[0].1 == "exited",
        "{context}: B keeps exactly its stopped serving container {b_cs:?}"
    );
    let b_routes = routes_on(&pair.b, name);
    assert!(
        b_routes.len() == 1 && b_routes[0].1 == vec![via_a.clone()],
        "{context}: B's only route forwards to A {b_routes:?}"
    );
    for n in [
        hostname.clone(),
        format!("blue.{hostname}"),
        format!("green.{hostname}"),
    ] {
        assert_eq!(
            pair.dig(&n),
            (vec![pair.a.address.clone()], Some(ZONE_TTL)),
            "{context}: {n}"
        );
    }
    for via in [&via_a, &via_b] {
        assert_eq!(
            common::http_get_within(via, &hostname, "/", Duration::from_secs(3)),
            (200, "v1".to_string()),
            "{context}: through {via}"
        );
    }
}

/// A rollback in grace made 18 journal commits here (measured: the 19th point finished unkilled;
/// the intent; A's container started and its health check; A's hostname and preview routes; B's
/// forward; phase dns; B's grace and preview route; the zone's PATCHes; each step's intent and
/// outcome); the first count past the end lets it finish unkilled.
const LAST: u64 = 22;

/// Every point with `CODEB_MIGRATE_CRASH_ALL=1` (19 runs, 3.5 min here), else every
/// third one (1, 4, 7, …, 22: intents and outcomes alike), which keeps the file near a minute.
fn points() -> Vec<u64> {
    let all = std::env::var_os("CODEB_MIGRATE_CRASH_ALL").is_some();
    (1..=LAST).filter(|n| all || n % 3 == 1).collect()
}

#[test]
fn a_rollback_killed_at_its_journal_writes_converges_on_the_next_rollback_and_apply() {
    let _l = lock();
    let zone = format!("{}.test", unique("mgkr"));
    let pair = Pair::new(&zone);
    let points = points();
    let names: Vec<String> = points
        .iter()
        .map(|n| unique(&format!("mg-kr{n}")))
        .collect();
    struct Clean<'a>(&'a Pair, &'a [String]);
    impl Drop for Clean<'_> {
        fn drop(&mut self) {
            for n in self.1 {
                self.0.cleanup(n);
            }
        }
    }
    let _clean = Clean(&pair, &names);

    // Every project on A, then every one migrated to B (in its grace period, 1 h).
    pair.converge(&pair.write_many(&names, &|_| "a"), 4);
    let dir = pair.write_many(&names, &|_| "b");
    pair.converge(&dir, 8);

    let mut killed = 0;
    for (i, name) in names.iter().enumerate() {
        let n = points[i];
        let codeb = |fault: Option<u64>| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_codeb"));
            c.arg("--state-dir").arg(pair.sb.state()).args([
                "rollback",
                name,
                "--progress",
                "none",
            ]);
            if let Some(n) = fault {
                c.env("CODEB_FAULT_KILL_AFTER", n.to_string());
            }
            c.output().unwrap()
        };
        let first = codeb(Some(n));
        let was_killed = first.status.code().is_none();
        let context = format!("rollback killed after journal write {n}");
        if was_killed {
            // What an operator does next: the rollback again (it resumes one whose intent is
            // recorded), then an apply of the unchanged manifests.
            let again = codeb(None);
            let all = text(&again);
            assert!(
                again.status.code() == Some(0) || pdns_busy(&all),
                "{context}: rollback again: {all}"
            );
            killed += 1;
        } else {
            let all = text(&first);
            assert!(first.status.code() == Some(0) || pdns_busy(&all), "{all}");
        }
        let outs = pair.converge(&dir, 6);
        assert!(
            outs.last()
                .unwrap()
                .contains("rolled back to host a from host b"),
            "{context}: {}",
            outs.join("\n---\n")
        );
        assert_rolled_back(&pair, name, &context);
        eprintln!(
            "{context}: killed {was_killed}, then {} apply(s) to converge",
            outs.len()
        );
        if !was_killed {
            break;
        }
    }
    assert!(
        killed >= points.iter().filter(|n| **n <= 16).count(),
        "a rollback has at least sixteen journal writes: every point up to 16 kills ({killed})"
    );
}
