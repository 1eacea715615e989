//! A migration under load on the real hosts (issue #18): a project on host 1 (A) moves to host 2
//! (B) by changing `host:` and applying until converged, while one client hammers the hostname
//! through A's Caddy and another through B's. Zero failed requests through A from start to end,
//! and through B from the first answer B's Caddy gives with the app (before it, B has no route
//! for the hostname); `dig` against the stack's PowerDNS moves from A's address to B's, TTL
//! lowered to 60 s during the move and restored afterwards; after the grace period A holds
//! nothing of the project. Needs the stack's env and `deploy/hosts.sh up 2`'s.

mod common;

use std::time::{Duration, Instant};

use common::migrate::*;
use common::{eventually, http_get_within, lock, unique};

/// The distinct DNS answers must go A → B, each (address, TTL) state in this order, never back.
fn assert_dns_moves(seen: &Answers, a: &str, b: &str, restored: bool) {
    let rank = |(addrs, ttl): (&Vec<String>, &Option<u32>)| -> Option<u32> {
        match (addrs.as_slice(), ttl) {
            ([x], Some(t)) if x == a && *t == ZONE_TTL => Some(0),
            ([x], Some(t)) if x == a && *t == MIGRATION_TTL => Some(1),
            ([x], Some(t)) if x == b && *t == MIGRATION_TTL => Some(2),
            ([x], Some(t)) if x == b && *t == ZONE_TTL => Some(3),
            _ => None,
        }
    };
    let ranks: Vec<Option<u32>> = seen.iter().map(|(_, x, t)| rank((x, t))).collect();
    assert!(
        ranks.iter().all(Option::is_some),
        "an unexpected DNS answer: {seen:?}"
    );
    let ranks: Vec<u32> = ranks.into_iter().flatten().collect();
    assert!(
        ranks.windows(2).all(|w| w[0] < w[1]),
        "DNS went back: {seen:?}"
    );
    assert_eq!(
        ranks.first(),
        Some(&0),
        "first answer A with the zone's TTL: {seen:?}"
    );
    assert!(
        ranks.contains(&1),
        "A's answer never had its TTL lowered: {seen:?}"
    );
    assert_eq!(
        ranks.last(),
        Some(&if restored { 3 } else { 2 }),
        "{seen:?}"
    );
}

#[test]
fn a_project_moves_from_host_a_to_host_b_under_load_with_zero_failed_requests() {
    let _l = lock();
    let zone = format!("{}.test", unique("mgz"));
    let pair = Pair::new(&zone);
    let name = unique("mg-move");
    let hostname = pair.hostname(&name);
    struct Clean<'a>(&'a Pair, &'a str);
    impl Drop for Clean<'_> {
        fn drop(&mut self) {
            self.0.cleanup(self.1);
        }
    }
    let _clean = Clean(&pair, &name);
    let (a_addr, b_addr) = (pair.a.address.clone(), pair.b.address.clone());
    let grace = Duration::from_secs(20);

    // On A, serving.
    let dir = pair.write(&name, "a", "20s");
    pair.converge(&dir, 4);
    let via_a = format!("{a_addr}:{PORT}");
    let via_b = format!("{b_addr}:{PORT}");
    assert!(
        eventually(Duration::from_secs(10), || http_get_within(
            &via_a,
            &hostname,
            "/",
            Duration::from_secs(2)
        ) == (200, "v1".to_string())),
        "A never served the project"
    );
    assert_eq!(pair.dig(&hostname), (vec![a_addr.clone()], Some(ZONE_TTL)));

    // Both clients from the start; the DNS answers watched throughout.
    let t0 = Instant::now();
    let load_a = Hammer::start(&via_a, &hostname, 2);
    let load_b = Hammer::start(&via_b, &hostname, 2);
    let dns = DigWatch::start(&pair, &hostname, t0);
    std::thread::sleep(Duration::from_millis(500)); // some load before anything moves

    let dir = pair.write(&name, "b", "20s");
    let moved_at = Instant::now();
    let outs = pair.converge(&dir, 8);
    let migrated_in = moved_at.elapsed();
    eprintln!(
        "migration applies ({migrated_in:?}):\n{}",
        outs.join("\n----\n")
    );

    // In grace: B serves, A forwards to B and keeps its container stopped, DNS names B.
    assert_eq!(pair.dig(&hostname).0, vec![b_addr.clone()]);
    let a_routes = routes_on(&pair.a, &name);
    assert!(
        a_routes.len() == 1 && a_routes[0].1 == vec![via_b.clone()],
        "A's only route of the project forwards to B's Caddy: {a_routes:?}"
    );
    let a_cs = containers_on(&pair.a, &name);
    assert!(
        a_cs.len() == 1 && a_cs[0].1 == "exited",
        "A keeps one stopped container in grace: {a_cs:?}"
    );
    let b_cs = containers_on(&pair.b, &name);
    assert!(b_cs.iter().any(|c| c.1 == "running"), "{b_cs:?}");
    std::thread::sleep(Duration::from_millis(500)); // load on the settled state too

    // After the grace period (from the start of phase grace), an apply cleans A up; traffic
    // still flows meanwhile. Applied every second until the grace note is gone.
    let mut last = String::new();
    let cleaned = eventually(grace + Duration::from_secs(20), || {
        let out = pair.apply(&dir, &[]);
        last = common::text(&out);
        assert_eq!(out.status.code(), Some(0), "{last}");
        let done = !last.contains("keeps a forwarding route");
        if !done {
            std::thread::sleep(Duration::from_secs(1));
        }
        done
    });
    assert!(cleaned, "the grace period never ended: {last}");
    eprintln!("after grace:\n{last}");
    let again = pair.converge(&dir, 2);
    assert_eq!(again.len(), 1, "{again:?}");
    let hits_a = load_a.stop();
    let hits_b = load_b.stop();
    let seen = dns.stop();
    eprintln!("DNS answers: {seen:?}");

    assert!(
        containers_on(&pair.a, &name).is_empty(),
        "A keeps a container after grace"
    );
    assert!(
        routes_on(&pair.a, &name).is_empty(),
        "A keeps a route after grace"
    );
    assert_eq!(pair.dig(&hostname), (vec![b_addr.clone()], Some(ZONE_TTL)));
    assert_dns_moves(&seen, &a_addr, &b_addr, true);

    let (failed_a, summary_a) = failures(&hits_a, Duration::ZERO);
    eprintln!("through A: {summary_a}");
    assert!(failed_a.is_empty(), "through A: {summary_a}");
    assert!(
        hits_a.iter().filter(|h| h.body == "v1").count() > 100,
        "{summary_a}"
    );
    // B serves the hostname from its first answer with the app; from then on nothing fails.
    let first_b = hits_b
        .iter()
        .find(|h| h.status == 200 && h.body == "v1")
        .map(|h| h.at)
        .expect("B never served the hostname");
    let (failed_b, summary_b) = failures(&hits_b, first_b);
    eprintln!("through B: {summary_b} (B first served at {first_b:?})");
    assert!(failed_b.is_empty(), "through B: {summary_b}");
}

#[test]
fn a_rollback_in_grace_moves_traffic_back_to_host_a_with_zero_failed_requests() {
    let _l = lock();
    let zone = format!("{}.test", unique("mgr"));
    let pair = Pair::new(&zone);
    let name = unique("mg-back");
    let hostname = pair.hostname(&name);
    struct Clean<'a>(&'a Pair, &'a str);
    impl Drop for Clean<'_> {
        fn drop(&mut self) {
            self.0.cleanup(self.1);
        }
    }
    let _clean = Clean(&pair, &name);
    let (a_addr, b_addr) = (pair.a.address.clone(), pair.b.address.clone());
    let via_a = format!("{a_addr}:{PORT}");
    let via_b = format!("{b_addr}:{PORT}");
    let grace = Duration::from_secs(15);

    pair.converge(&pair.write(&name, "a", "15s"), 4);
    let load_a = Hammer::start(&via_a, &hostname, 2);
    let load_b = Hammer::start(&via_b, &hostname, 2);
    // Moved to B: in grace, A forwards and keeps its container stopped.
    let dir = pair.write(&name, "b", "15s");
    pair.converge(&dir, 8);
    assert_eq!(pair.dig(&hostname).0, vec![b_addr.clone()]);
    assert_eq!(containers_on(&pair.a, &name)[0].1, "exited");

    // Rolled back during the grace period.
    let t = Instant::now();
    let out = pair.sb.codeb(&["rollback", &name, "--progress", "none"]);
    let all = common::text(&out);
    eprintln!("rollback ({:?}): {all}", t.elapsed());
    assert_eq!(out.status.code(), Some(0), "{all}");
    // A serves itself again (its kept container, running), B forwards to A, DNS names A.
    let a_cs = containers_on(&pair.a, &name);
    assert!(a_cs.len() == 1 && a_cs[0].1 == "running", "{a_cs:?}");
    let a_routes = routes_on(&pair.a, &name);
    assert!(
        !a_routes.is_empty() && a_routes.iter().all(|r| r.1.len() == 1 && r.1[0] != via_b),
        "A's routes dial A's own slot: {a_routes:?}"
    );
    let b_routes = routes_on(&pair.b, &name);
    assert!(
        b_routes.len() == 1 && b_routes[0].1 == vec![via_a.clone()],
        "B's only route forwards to A: {b_routes:?}"
    );
    assert_eq!(pair.dig(&hostname), (vec![a_addr.clone()], Some(ZONE_TTL)));

    // The manifests still say `host: b`: not acted on, and diff and apply say why.
    let diff = pair.sb.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    let text = common::text(&diff);
    assert!(
        text.contains("rolled back to host a from host b by"),
        "diff does not show the rollback mark: {text}"
    );
    let described = pair.sb.codeb(&["describe", &name]);
    let text = common::text(&described);
    assert!(
        text.contains("Rolled back: rolled back to host a from host b by")
            && text.contains("Migrating: from host b to host a, phase grace"),
        "describe does not show the rollback: {text}"
    );
    let again = pair.apply(&dir, &[]);
    assert_eq!(again.status.code(), Some(0), "{}", common::text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to do"),
        "{}",
        common::text(&again)
    );
    std::thread::sleep(Duration::from_millis(500));
    // B's client until B's cleanup (after which B has no route for the hostname).
    let hits_b = load_b.stop();

    // After B's grace, B holds nothing; A still serves.
    let mut last = String::new();
    let cleaned = eventually(grace + Duration::from_secs(20), || {
        let out = pair.apply(&dir, &[]);
        last = common::text(&out);
        assert_eq!(out.status.code(), Some(0), "{last}");
        let done = !last.contains("keeps a forwarding route");
        if !done {
            std::thread::sleep(Duration::from_secs(1));
        }
        done
    });
    assert!(cleaned, "B's grace period never ended: {last}");
    let hits_a = load_a.stop();
    assert!(
        containers_on(&pair.b, &name).is_empty(),
        "B keeps a container"
    );
    assert!(routes_on(&pair.b, &name).is_empty(), "B keeps a route");
    assert_eq!(pair.dig(&hostname), (vec![a_addr.clone()], Some(ZONE_TTL)));
    assert!(last.contains("rolled back to host a"), "{last}");

    let (failed_a, summary_a) = failures(&hits_a, Duration::ZERO);
    eprintln!("through A: {summary_a}");
    assert!(failed_a.is_empty(), "through A: {summary_a}");
    let first_b = hits_b
        .iter()
        .find(|h| h.status == 200 && h.body == "v1")
        .map(|h| h.at)
        .expect("B never served the hostname");
    let (failed_b, summary_b) = failures(&hits_b, first_b);
    eprintln!("through B: {summary_b} (B first served at {first_b:?})");
    assert!(failed_b.is_empty(), "through B: {summary_b}");
}

/// `codeb watch` carries the migration alone (issue #18's daemon gap): with a resync of an hour,
/// only the file watch and the loop's own timers act. The manifest's `host:` is changed on disk
/// from a to b; no `codeb apply` runs at any point. Polled, never slept: B serves, DNS names B,
/// and once the (short) grace period has ended A holds nothing of the project; a client through
/// A's Caddy meanwhile gets no failed request until A's cleanup.
#[test]
fn watch_alone_migrates_when_the_manifest_host_changes_and_cleans_a_up_after_the_grace() {
    let _l = lock();
    let zone = format!("{}.test", unique("mgw"));
    let pair = Pair::new(&zone);
    let name = unique("mg-watch");
    let hostname = pair.hostname(&name);
    struct Clean<'a>(&'a Pair, &'a str);
    impl Drop for Clean<'_> {
        fn drop(&mut self) {
            self.0.cleanup(self.1);
        }
    }
    let _clean = Clean(&pair, &name);
    let (a_addr, b_addr) = (pair.a.address.clone(), pair.b.address.clone());
    let via_a = format!("{a_addr}:{PORT}");
    let via_b = format!("{b_addr}:{PORT}");
    let serves = |via: &str| {
        http_get_within(via, &hostname, "/", Duration::from_secs(2)) == (200, "v1".to_string())
    };

    // The daemon deploys it on A itself (its start is an apply of the manifests as they are).
    let dir = pair.write(&name, "a", "5s");
    let mut w = pair.sb.watch(&dir, &["--resync", "1h"]);
    assert!(
        eventually(Duration::from_secs(90), || serves(&via_a)
            && pair.dig(&hostname) == (vec![a_addr.clone()], Some(ZONE_TTL))),
        "A never served the project, or DNS never named A: {}",
        w.log()
    );
    let load_a = Hammer::start(&via_a, &hostname, 1);

    // Only the file changes.
    let t0 = Instant::now();
    pair.write(&name, "b", "5s");
    assert!(
        eventually(Duration::from_secs(90), || serves(&via_b)
            && pair.dig(&hostname).0 == vec![b_addr.clone()]),
        "B never served, or DNS never named B: {}",
        w.log()
    );
    let moved = t0.elapsed();
    assert!(serves(&via_a), "A does not forward to B");
    // The grace period (5 s from its start) ends on the loop's timer: A is cleaned up then.
    assert!(
        eventually(Duration::from_secs(60), || containers_on(&pair.a, &name)
            .is_empty()
            && routes_on(&pair.a, &name).is_empty()),
        "A still holds the project: containers {:?}, routes {:?}\n{}",
        containers_on(&pair.a, &name),
        routes_on(&pair.a, &name),
        w.log()
    );
    let cleaned = t0.elapsed();
    let hits_a = load_a.stop();
    eprintln!(
        "B serves and DNS names B {moved:?} after the file changed; A empty after {cleaned:?}"
    );
    assert!(serves(&via_b));
    assert_eq!(pair.dig(&hostname), (vec![b_addr.clone()], Some(ZONE_TTL)));
    let b_cs = containers_on(&pair.b, &name);
    assert!(
        b_cs.len() == 1 && b_cs[0].1 == "running",
        "B runs one container: {b_cs:?}"
    );
    // Through A, from before the move until A's route went (a request after that gets Caddy's
    // own answer, not the app's): zero failures up to the last answer with the app's body.
    let last = hits_a
        .iter()
        .rev()
        .find(|h| h.status == 200 && h.body == "v1")
        .map(|h| h.at)
        .expect("A never answered");
    let until: Vec<_> = hits_a.into_iter().filter(|h| h.at <= last).collect();
    let (failed, summary) = failures(&until, Duration::ZERO);
    eprintln!("through A: {summary}");
    assert!(failed.is_empty(), "through A: {summary}");
    assert!(w.terminate(Duration::from_secs(15)).is_some());
}

/// A rollback in the grace period of a migration the daemon made, sent to the running `codeb
/// watch` (the CLI goes through its socket), with no `apply` anywhere: the loop moves it back (A
/// serves, `dig` names A) and cleans B up after B's grace period, the manifests still saying
/// `host: b`.
#[test]
fn watch_alone_carries_a_rollback_in_grace_back_and_cleans_b_up_after_its_grace() {
    let _l = lock();
    let zone = format!("{}.test", unique("mgwr"));
    let pair = Pair::new(&zone);
    let name = unique("mg-wback");
    let hostname = pair.hostname(&name);
    struct Clean<'a>(&'a Pair, &'a str);
    impl Drop for Clean<'_> {
        fn drop(&mut self) {
            self.0.cleanup(self.1);
        }
    }
    let _clean = Clean(&pair, &name);
    let (a_addr, b_addr) = (pair.a.address.clone(), pair.b.address.clone());
    let via_a = format!("{a_addr}:{PORT}");
    let via_b = format!("{b_addr}:{PORT}");
    let serves = |via: &str| {
        http_get_within(via, &hostname, "/", Duration::from_secs(2)) == (200, "v1".to_string())
    };
    let dir = pair.write(&name, "a", "10s");
    let mut w = pair.sb.watch(&dir, &["--resync", "1h"]);
    assert!(
        eventually(Duration::from_secs(90), || serves(&via_a)),
        "A never served the project: {}",
        w.log()
    );
    pair.write(&name, "b", "10s");
    // In A's grace period: A forwards to B and keeps its container stopped, DNS names B.
    assert!(
        eventually(Duration::from_secs(60), || {
            let routes = routes_on(&pair.a, &name);
            let cs = containers_on(&pair.a, &name);
            routes.len() == 1
                && routes[0].1 == vec![via_b.clone()]
                && cs.len() == 1
                && cs[0].1 == "exited"
                && pair.dig(&hostname) == (vec![b_addr.clone()], Some(ZONE_TTL))
        }),
        "never in A's grace period: {}",
        w.log()
    );
    let t0 = Instant::now();
    let out = pair.sb.codeb(&["rollback", &name, "--progress", "none"]);
    let all = common::text(&out);
    eprintln!("rollback through the daemon ({:?}): {all}", t0.elapsed());
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        eventually(Duration::from_secs(30), || serves(&via_a)
            && pair.dig(&hostname) == (vec![a_addr.clone()], Some(ZONE_TTL))),
        "A does not serve, or DNS does not name A: {}",
        w.log()
    );
    // B's grace period (10 s) ends on the loop's timer: B is cleaned up then.
    assert!(
        eventually(Duration::from_secs(60), || containers_on(&pair.b, &name)
            .is_empty()
            && routes_on(&pair.b, &name).is_empty()),
        "B still holds the project: containers {:?}, routes {:?}\n{}",
        containers_on(&pair.b, &name),
        routes_on(&pair.b, &name),
        w.log()
    );
    eprintln!("B empty {:?} after the rollback", t0.elapsed());
    assert!(serves(&via_a));
    let a_cs = containers_on(&pair.a, &name);
    assert!(
        a_cs.len() == 1 && a_cs[0].1 == "running",
        "A runs one container: {a_cs:?}"
    );
    assert_eq!(pair.dig(&hostname), (vec![a_addr.clone()], Some(ZONE_TTL)));
    assert!(w.terminate(Duration::from_secs(15)).is_some());
}
