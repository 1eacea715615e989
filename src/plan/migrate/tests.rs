//! Migrations between two fake hosts `a` and `b` with a fake PowerDNS: the phases in order,
//! traffic served at every round boundary (by the DNS answer and by a client still sent to `a`),
//! the grace period and the cleanup, refusals, and a crash after every journal commit.

use std::collections::BTreeMap;

use futures_util::FutureExt;

use super::*;
use crate::backend::fake::{FakeDns, FakeProber, World};
use crate::model::dns::{PowerDnsRef, ZoneRef};
use crate::model::writes::AccessLog;
use crate::model::{Desired, DesiredEnv, EnvKey, HostRef, MigrationPhase, SlotState};
use crate::plan::tests::{env, host};
use crate::plan::{plan, Plan};
use crate::reconcile::{self, Backends, HostBackends};
use crate::store::Store;

const ZONE: &str = "example.test";
const HOSTNAME: &str = "myapp.example.test";
const A_ADDRESS: &str = "192.0.2.1";
const B_ADDRESS: &str = "192.0.2.2";
const HOUR_MS: u64 = 3_600_000;

fn named(name: &str, address: &str) -> HostRef {
    HostRef {
        name: name.into(),
        address: address.into(),
        access_log: Some(AccessLog::default_for(name)),
        ..host()
    }
}

fn key() -> EnvKey {
    EnvKey::new("myapp", "production")
}

/// Both hosts and the managed zone declared; `myapp` on `on`, running `image`.
fn desired_on(on: &str, image: &str) -> Desired {
    let mut e = env("myapp");
    e.host = on.into();
    e.release = crate::model::Release::new(image, None, Default::default(), 8080);
    desired_with(e)
}

fn desired_with(e: DesiredEnv) -> Desired {
    Desired {
        hosts: BTreeMap::from([
            ("a".into(), named("a", A_ADDRESS)),
            ("b".into(), named("b", B_ADDRESS)),
        ]),
        envs: BTreeMap::from([(e.key.clone(), e)]),
        zones: BTreeMap::from([(
            ZONE.into(),
            ZoneRef {
                name: ZONE.into(),
                powerdns: Some(PowerDnsRef {
                    api: "http://fake-pdns".into(),
                    server_id: "localhost".into(),
                    api_key_env: "PDNS_API_KEY".into(),
                }),
                ttl: 300,
            },
        )]),
    }
}

fn fake(world: &World) -> HostBackends<World, World, World> {
    HostBackends {
        runtime: world.clone(),
        proxy: world.clone(),
        kernel: world.clone(),
        publish: Some(std::net::Ipv4Addr::LOCALHOST),
        owner: None,
        agent: None,
    }
}

struct Two {
    a: World,
    b: World,
    dns: FakeDns,
    backends: Backends<World, World, World, FakeDns>,
    prober: FakeProber,
    store: Option<Store>,
    dir: tempfile::TempDir,
}

impl Two {
    fn new() -> Self {
        let (a, b, dns) = (World::new(), World::new(), FakeDns::new());
        // Distinct container addresses on the two hosts: a probe answered by the wrong host's
        // container would hide a failure.
        b.state().next_id = 1000;
        dns.state().zones.insert(ZONE.into(), Vec::new());
        let mut backends = Backends::hosts(BTreeMap::from([
            ("a".to_string(), fake(&a)),
            ("b".to_string(), fake(&b)),
        ]));
        backends = backends.with_zone(ZONE, dns.clone());
        let dir = tempfile::tempdir().unwrap();
        Two {
            prober: FakeProber(vec![b.clone(), a.clone()]),
            store: Some(Store::open(dir.path()).unwrap()),
            a,
            b,
            dns,
            backends,
            dir,
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("open")
    }

    /// As a new process after a crash: the store as it was committed, opened again.
    fn reopen(&mut self) {
        self.store = None;
        self.store = Some(Store::open(self.dir.path()).unwrap());
    }

    fn record(&self) -> crate::model::EnvRecord {
        self.store().env(&key()).unwrap().unwrap()
    }

    async fn plan(&self, d: &Desired, now_ms: u64) -> Plan {
        let observed = reconcile::observe(&self.backends).await;
        plan(d, &observed, &self.store().load().unwrap(), &[], now_ms)
    }

    /// Plans and executes rounds at `now_ms` until a plan has no step; `check` runs after each
    /// round. Returns the last plan.
    async fn run(&self, d: &Desired, now_ms: u64, check: &mut dyn FnMut(&Two)) -> Plan {
        let hosts: Vec<HostRef> = d.hosts.values().cloned().collect();
        self.store().put_hosts(&hosts).unwrap();
        self.store().put_zones(d.zones.values()).unwrap();
        for _ in 0..40 {
            let p = self.plan(d, now_ms).await;
            if p.is_empty() {
                return p;
            }
            let report = reconcile::execute(&p, self.store(), &self.backends, &self.prober)
                .await
                .unwrap();
            assert!(report.failures.is_empty(), "{p}\n{:?}", report.failures);
            check(self);
        }
        panic!("no convergence in 40 rounds");
    }

    /// One round: plan at `now_ms` and execute.
    async fn round(&self, d: &Desired) {
        let p = self.plan(d, now()).await;
        let report = reconcile::execute(&p, self.store(), &self.backends, &self.prober)
            .await
            .unwrap();
        assert!(report.failures.is_empty(), "{p}\n{:?}", report.failures);
    }

    /// `myapp` v1 served on `a`, its records naming `a`.
    async fn on_a(&self) {
        let p = self
            .run(&desired_on("a", "app:v1"), now(), &mut |_| {})
            .await;
        assert!(!p.has_problems(), "{p}");
        assert_eq!(self.a.serving(HOSTNAME).as_deref(), Some("app:v1"));
        assert_eq!(self.dns_record(), Some((A_ADDRESS.to_string(), 300)));
    }

    /// The hostname's A record: its address and TTL.
    fn dns_record(&self) -> Option<(String, u32)> {
        let s = self.dns.state();
        let r = s
            .zones
            .get(ZONE)?
            .iter()
            .find(|r| r.name == format!("{HOSTNAME}.") && r.rtype == "A")?;
        Some((r.records[0].clone(), r.ttl))
    }

    /// What a client sent to `host`'s Caddy gets: `a` serves it itself or forwards it to `b`.
    fn via(&self, host: &str) -> Option<String> {
        let forward = forward_upstream(&named("b", B_ADDRESS)).unwrap();
        let back = forward_upstream(&named("a", A_ADDRESS)).unwrap();
        match host {
            // After a rollback, `b` forwards to `a`.
            "b" if self
                .b
                .state()
                .routes
                .iter()
                .any(|r| r.id == key().route_id() && r.upstream == back) =>
            {
                self.a.serving(HOSTNAME)
            }
            "a" => {
                let upstream = self
                    .a
                    .state()
                    .routes
                    .iter()
                    .find(|r| r.id == key().route_id())?
                    .upstream
                    .clone();
                if upstream == forward {
                    self.b.serving(HOSTNAME)
                } else {
                    self.a.serving(HOSTNAME)
                }
            }
            _ => self.b.serving(HOSTNAME),
        }
    }

    /// What a client that resolves the hostname now gets.
    fn by_dns(&self) -> Option<String> {
        match self.dns_record()?.0.as_str() {
            A_ADDRESS => self.via("a"),
            B_ADDRESS => self.via("b"),
            other => panic!("a record names {other}"),
        }
    }

    /// What of `myapp` host `a` still holds: containers, routes, kernel rules.
    fn left_on_a(&self) -> (usize, usize, usize) {
        let s = self.a.state();
        let containers = s
            .containers
            .values()
            .filter(|(c, _)| crate::model::ownership::belongs_to(c, &key()))
            .count();
        let routes = s
            .routes
            .iter()
            .filter(|r| crate::plan::route_key(&r.id) == Some(key()))
            .count();
        drop(s);
        let rules = self.rules_on_a();
        (containers, routes, rules)
    }

    fn rules_on_a(&self) -> usize {
        let s = self.a.state();
        let label = |t: &crate::model::observed::ServiceRule| matches!(t, crate::model::observed::ServiceRule::Dnat(t) if t.label.starts_with("myapp/production"));
        [&s.nat, &s.published]
            .iter()
            .flat_map(|rules| rules.services.values())
            .filter(|svc| svc.rules.iter().any(label))
            .count()
    }
}

/// The containers and routes of `myapp` a fake host holds.
fn held_by(world: &World) -> (usize, usize) {
    let s = world.state();
    let containers = s
        .containers
        .values()
        .filter(|(c, _)| crate::model::ownership::belongs_to(c, &key()))
        .count();
    let routes = s
        .routes
        .iter()
        .filter(|r| crate::plan::route_key(&r.id) == Some(key()))
        .count();
    (containers, routes)
}

fn now() -> u64 {
    reconcile::now_ms()
}

#[tokio::test(start_paused = true)]
async fn diff_shows_every_phase_before_anything_starts_and_changes_nothing() {
    let f = Two::new();
    f.on_a().await;
    let (a, b, dns) = (f.a.mutations(), f.b.mutations(), f.dns.writes());
    let p = f.plan(&desired_on("b", "app:v1"), now()).await;
    let begins: Vec<&Step> = p
        .steps
        .iter()
        .filter(|s| matches!(s.action, Action::MigrateBegin { .. }))
        .collect();
    assert_eq!(begins.len(), 1, "{p}");
    assert!(
        p.steps
            .iter()
            .all(|s| s.key.is_none() || matches!(s.action, Action::MigrateBegin { .. })),
        "only the start is planned for the environment this round: {p}"
    );
    assert!(!p.has_problems(), "{p}");
    let text = p.to_string();
    let release = f.record().blue.release.unwrap();
    for line in [
        "myapp/production: migrate from host a to host b, in phases".to_string(),
        format!(
            "1. deploy release {} (app:v1, serving on a) on b (ports ",
            release.hash()
        ),
        format!("2. a's route for {HOSTNAME} forwards to b's Caddy at {B_ADDRESS}:18080"),
        format!("3. DNS records of {HOSTNAME} name b's address (managed zones: TTL at most 60 s"),
        "4. grace on a for 48h: it keeps the forwarding route and its serving container, stopped"
            .to_string(),
        "5. then a's routes, kernel rules and containers of it are removed".to_string(),
    ] {
        assert!(text.contains(&line), "{line:?} not in:\n{text}");
    }
    assert!(!text.contains("secret"), "no env value is shown");
    assert_eq!(
        (f.a.mutations(), f.b.mutations(), f.dns.writes()),
        (a, b, dns)
    );
    assert!(f.record().migration.is_none(), "a plan records nothing");
}

#[tokio::test(start_paused = true)]
async fn a_migration_keeps_the_hostname_served_through_every_phase_then_cleans_the_source_after_grace(
) {
    let f = Two::new();
    f.on_a().await;
    let d = desired_on("b", "app:v1");
    let t0 = now();
    // After each round: a client that resolves the name, and one still sent to `a`, are served;
    // the records name `b` only once `a` forwards there; their TTL is lowered from the start.
    let mut phases = Vec::new();
    let mut ttls = Vec::new();
    // The phase recorded when the round was planned: the records may name `b` only in a round
    // planned in phase `dns` or later.
    let mut planned_in = None;
    let mut check = |f: &Two| {
        let rec = f.record();
        let phase = rec.migration.as_ref().map(|m| m.phase);
        let planned = std::mem::replace(&mut planned_in, phase);
        if phases.last() != Some(&phase) {
            phases.push(phase);
        }
        let (address, ttl) = f.dns_record().unwrap();
        ttls.push((phase, address.clone(), ttl));
        assert_eq!(
            f.by_dns().as_deref(),
            Some("app:v1"),
            "by DNS, in {phase:?}"
        );
        assert_eq!(
            f.via("a").as_deref(),
            Some("app:v1"),
            "through a, in {phase:?}"
        );
        if address == B_ADDRESS {
            assert!(
                planned >= Some(MigrationPhase::Dns),
                "the records moved in a round planned in {planned:?}"
            );
        }
    };
    let last = f.run(&d, t0, &mut check).await;
    assert_eq!(
        phases,
        [
            Some(MigrationPhase::Deploying),
            Some(MigrationPhase::Forwarding),
            Some(MigrationPhase::Dns),
            Some(MigrationPhase::Grace),
        ]
    );
    // The TTL went down before the records moved, and back after.
    let first_lowered = ttls.iter().position(|(_, _, t)| *t == 60).unwrap();
    let first_moved = ttls.iter().position(|(_, a, _)| a == B_ADDRESS).unwrap();
    assert!(first_lowered < first_moved, "{ttls:?}");
    assert_eq!(f.dns_record(), Some((B_ADDRESS.to_string(), 300)));

    // In the grace period: converged, `b` serves from its own ports, `a` keeps the forwarding
    // route and its serving container, stopped.
    assert!(!last.has_problems(), "{last}");
    assert!(last
        .notes
        .iter()
        .any(|n| matches!(n, Note::MigrationGrace { from, .. } if from == "a")));
    let rec = f.record();
    let m = rec.migration.as_deref().unwrap();
    assert_eq!((rec.host.as_str(), m.source.host.as_str()), ("b", "a"));
    assert_ne!(rec.base_port, m.source.base_port, "ports allocated for b");
    assert_eq!(rec.slot(rec.active.unwrap()).state, SlotState::Active);
    assert_eq!(f.b.serving(HOSTNAME).as_deref(), Some("app:v1"));
    assert_eq!(f.a.serving(HOSTNAME), None, "a serves nothing itself");
    let (containers, routes, _) = f.left_on_a();
    assert_eq!(
        (containers, routes),
        (1, 1),
        "the stopped slot and the forwarding route"
    );
    assert!(f.a.state().containers.values().all(|(c, _)| !c.running));
    let (a, b) = (f.a.mutations(), f.b.mutations());
    assert!(
        f.plan(&d, t0 + HOUR_MS).await.is_empty(),
        "nothing to do an hour later"
    );
    assert_eq!((f.a.mutations(), f.b.mutations()), (a, b));

    // After the grace period: `a` holds nothing of it, the migration's record is gone.
    let later = t0 + 49 * HOUR_MS;
    let last = f
        .run(&d, later, &mut |f| {
            assert_eq!(f.by_dns().as_deref(), Some("app:v1"));
        })
        .await;
    assert!(!last.has_problems(), "{last}");
    assert_eq!(f.left_on_a(), (0, 0, 0));
    assert!(f.record().migration.is_none());
    assert_eq!(f.record().host, "b");
    assert_eq!(f.b.serving(HOSTNAME).as_deref(), Some("app:v1"));
    assert_eq!(f.dns_record(), Some((B_ADDRESS.to_string(), 300)));
}

#[tokio::test(start_paused = true)]
async fn the_target_starts_with_the_release_that_served_and_rolls_the_new_one_out_after() {
    let f = Two::new();
    f.on_a().await;
    // Host and image changed in one commit: `b` first runs what served on `a` (v1), then v2
    // arrives blue/green on `b`.
    let d = desired_on("b", "app:v2");
    let mut first_on_b = None;
    f.run(&d, now(), &mut |f| {
        if first_on_b.is_none() {
            first_on_b = f.b.serving(HOSTNAME);
        }
    })
    .await;
    assert_eq!(first_on_b.as_deref(), Some("app:v1"));
    assert_eq!(f.b.serving(HOSTNAME).as_deref(), Some("app:v2"));
    let rec = f.record();
    let grace = rec.slot(rec.active.unwrap().other());
    assert_eq!(grace.state, SlotState::Grace);
    assert_eq!(grace.release.as_ref().unwrap().image, "app:v1");
}

#[tokio::test(start_paused = true)]
async fn a_host_change_during_a_migration_a_rollback_and_an_env_with_data_are_refused() {
    let f = Two::new();
    f.on_a().await;
    // A database's data does not move yet: not begun.
    let mut with_db = env("myapp");
    with_db.host = "b".into();
    with_db.data.database = true;
    let p = f.plan(&desired_with(with_db), now()).await;
    assert!(p.has_problems());
    assert!(
        p.notes
            .iter()
            .any(|n| matches!(n, Note::HostMoved { reason, .. } if reason.contains("database"))),
        "{p}"
    );
    assert!(p.steps.iter().all(|s| s.key.is_none()), "{p}");

    // Begun, then the manifests name `a` again: refused, nothing of it planned.
    f.run(&desired_on("b", "app:v1"), now(), &mut |_| {}).await;
    assert!(f.record().migration.is_some());
    let p = f.plan(&desired_on("a", "app:v1"), now()).await;
    assert!(p.has_problems());
    assert!(p.steps.iter().all(|s| s.key.is_none()), "{p}");
    assert!(
        p.to_string()
            .contains("a change of host once traffic moves is not built yet"),
        "{p}"
    );

    // A rollback in the grace period is refused, nothing changed.
    let observed = reconcile::observe(&f.backends).await;
    let view = observed.hosts["b"].view().unwrap();
    let err =
        crate::plan::plan_rollback(&f.record(), &named("b", B_ADDRESS), view, now()).unwrap_err();
    assert!(
        matches!(err, crate::plan::SwitchError::Migrating { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("as a migration of its own"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn delete_during_a_migration_removes_both_hosts_parts() {
    let f = Two::new();
    f.on_a().await;
    f.run(&desired_on("b", "app:v1"), now(), &mut |_| {}).await;
    let observed = reconcile::observe(&f.backends).await;
    let p = crate::plan::plan_delete(&[key()], &observed, &f.store().load().unwrap());
    let report = reconcile::execute(&p, f.store(), &f.backends, &f.prober)
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(f.left_on_a(), (0, 0, 0));
    assert_eq!(f.b.serving(HOSTNAME), None);
    assert!(f.store().env(&key()).unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn naming_the_source_again_while_the_target_deploys_aborts_and_leaves_the_source_as_it_was() {
    let f = Two::new();
    f.on_a().await;
    let before = f.record();
    let to_b = desired_on("b", "app:v1");
    // Begun, and `b` is deploying (its first container created).
    for _ in 0..10 {
        if held_by(&f.b).0 > 0 {
            break;
        }
        f.round(&to_b).await;
    }
    assert!(held_by(&f.b).0 > 0);
    assert_eq!(
        f.record().migration.map(|m| m.phase),
        Some(MigrationPhase::Deploying)
    );
    let back = desired_on("a", "app:v1");
    let p = f.plan(&back, now()).await;
    assert!(!p.has_problems(), "{p}");
    assert!(
        p.steps
            .iter()
            .any(|s| matches!(s.action, Action::MigrateAbort(_))),
        "{p}"
    );
    let last = f
        .run(&back, now(), &mut |f| {
            assert_eq!(f.by_dns().as_deref(), Some("app:v1"));
            assert_eq!(f.via("a").as_deref(), Some("app:v1"));
        })
        .await;
    assert!(!last.has_problems(), "{last}");
    let rec = f.record();
    assert!(rec.migration.is_none());
    assert_eq!(
        (rec.host.as_str(), rec.base_port, rec.active),
        ("a", before.base_port, before.active)
    );
    assert_eq!(held_by(&f.b), (0, 0), "b holds nothing of it");
    assert_eq!(
        f.dns_record(),
        Some((A_ADDRESS.to_string(), 300)),
        "TTL restored"
    );
}

#[tokio::test(start_paused = true)]
async fn in_the_grace_period_the_source_is_held_as_recorded_whatever_happened_to_it() {
    let f = Two::new();
    f.on_a().await;
    let d = desired_on("b", "app:v1");
    f.run(&d, now(), &mut |_| {}).await;
    let phase = f.record().migration.map(|m| m.phase);
    assert_eq!(phase, Some(MigrationPhase::Grace));
    // By hand on `a`: the forwarding route removed, the kept container started again.
    f.a.state().routes.retain(|r| r.id != key().route_id());
    let kept =
        f.a.state()
            .containers
            .values()
            .find(|(c, _)| crate::model::ownership::belongs_to(c, &key()))
            .map(|(c, _)| c.id.clone())
            .unwrap();
    crate::backend::Runtime::start(&f.a, &kept).await.unwrap();
    let p = f.plan(&d, now()).await;
    assert!(
        p.steps.iter().any(|s| s.host == "a"
            && matches!(&s.action, Action::MigrateForward { add: true, .. })),
        "{p}"
    );
    assert!(
        p.steps.iter().any(|s| s.host == "a"
            && matches!(&s.action, Action::Stop { container, .. } if *container == kept)),
        "{p}"
    );
    f.run(&d, now(), &mut |_| {}).await;
    assert_eq!(f.via("a").as_deref(), Some("app:v1"), "forwarded again");
    assert!(f.a.state().containers.values().all(|(c, _)| !c.running));
    assert_eq!(
        f.record().migration.map(|m| m.phase),
        phase,
        "still in grace"
    );
}

/// The end state of a whole migration (grace included), for the crash test: the record's host,
/// what `b` serves, what `a` still holds, the hostname's record, and whether it finished.
type EndState = (
    String,
    Option<String>,
    (usize, usize, usize),
    Option<(String, u32)>,
    bool,
);

fn end_state(f: &Two) -> EndState {
    let rec = f.record();
    (
        rec.host.clone(),
        f.b.serving(HOSTNAME),
        f.left_on_a(),
        f.dns_record(),
        rec.migration.is_none(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_crash_after_every_journal_commit_of_a_migration_converges_to_the_same_end() {
    // Past the grace period from the start, so that one run goes through every phase.
    let later = now() + 49 * HOUR_MS;
    let d = desired_on("b", "app:v1");
    let reference = {
        let f = Two::new();
        f.on_a().await;
        f.run(&d, later, &mut |_| {}).await;
        end_state(&f)
    };
    assert_eq!(reference.0, "b");
    assert!(reference.4, "finished");
    let mut crashes = 0;
    for n in 1.. {
        let mut f = Two::new();
        f.on_a().await;
        crate::reconcile::fault::crash_after(Some(n));
        let crashed = std::panic::AssertUnwindSafe(f.run(&d, later, &mut |_| {}))
            .catch_unwind()
            .await
            .is_err();
        crate::reconcile::fault::crash_after(None);
        if !crashed {
            break; // n is past the migration's last commit
        }
        crashes += 1;
        f.reopen();
        let last = f.run(&d, later, &mut |_| {}).await;
        assert!(!last.has_problems(), "after a crash at commit {n}: {last}");
        assert_eq!(end_state(&f), reference, "after a crash at commit {n}");
    }
    assert!(crashes > 10, "a migration commits at every step: {crashes}");
}

#[tokio::test(start_paused = true)]
async fn a_crash_after_every_journal_commit_of_an_abort_converges_to_the_source_as_it_was() {
    let (to_b, back) = (desired_on("b", "app:v1"), desired_on("a", "app:v1"));
    // `a` serving, a migration begun and `b` deploying.
    let deploying = || async {
        let f = Two::new();
        f.on_a().await;
        while held_by(&f.b).0 == 0 {
            f.round(&to_b).await;
        }
        f
    };
    let before = {
        let f = deploying().await;
        let source = f.record().migration.unwrap().source;
        (source.host, source.base_port, source.active)
    };
    let mut crashes = 0;
    for n in 1.. {
        let mut f = deploying().await;
        crate::reconcile::fault::crash_after(Some(n));
        let crashed = std::panic::AssertUnwindSafe(f.run(&back, now(), &mut |_| {}))
            .catch_unwind()
            .await
            .is_err();
        crate::reconcile::fault::crash_after(None);
        if !crashed {
            break;
        }
        crashes += 1;
        f.reopen();
        let last = f.run(&back, now(), &mut |_| {}).await;
        assert!(!last.has_problems(), "after a crash at commit {n}: {last}");
        let rec = f.record();
        assert!(rec.migration.is_none(), "after a crash at commit {n}");
        assert_eq!(
            (rec.host, rec.base_port, rec.active),
            before,
            "after a crash at commit {n}"
        );
        assert_eq!(held_by(&f.b), (0, 0), "after a crash at commit {n}");
        assert_eq!(f.a.serving(HOSTNAME).as_deref(), Some("app:v1"));
        assert_eq!(f.dns_record(), Some((A_ADDRESS.to_string(), 300)));
    }
    assert!(crashes > 2, "an abort commits at every step: {crashes}");
}

/// `codeb rollback`'s first step: the record back on `a`, marked, holding a migration from `b`.
async fn roll_back(f: &Two) {
    let rec = f.record();
    let back = rollback_record(&rec, "alice", now()).unwrap();
    let p = Plan {
        steps: vec![Step {
            host: "a".into(),
            key: Some(key()),
            generation: Some(rec.generation),
            action: Action::MigrateRollback(Box::new(back)),
        }],
        notes: vec![],
    };
    let report = reconcile::execute(&p, f.store(), &f.backends, &f.prober)
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

#[tokio::test(start_paused = true)]
async fn a_rollback_in_grace_moves_traffic_back_and_the_manifests_host_waits_until_changed() {
    let f = Two::new();
    f.on_a().await;
    let d = desired_on("b", "app:v1");
    f.run(&d, now(), &mut |_| {}).await;
    let rec = f.record();
    assert_eq!(rec.migration.as_ref().unwrap().phase, MigrationPhase::Grace);
    assert!(f.a.state().containers.values().all(|(c, _)| !c.running));

    roll_back(&f).await;
    let rec = f.record();
    assert_eq!(rec.host, "a");
    let mark = rec.rolled_back.clone().expect("marked");
    assert_eq!((mark.from.as_str(), mark.by.as_str()), ("b", "alice"));
    // Every round: a client by DNS, one sent to `a` and one sent to `b` are all served; `a`'s
    // route never dials its container before it runs (the kept one is started and gated first).
    let mut check = |f: &Two| {
        for (who, got) in [("dns", f.by_dns()), ("a", f.via("a")), ("b", f.via("b"))] {
            assert_eq!(got.as_deref(), Some("app:v1"), "via {who}");
        }
    };
    let p = f.run(&d, now(), &mut check).await;
    assert!(!p.has_problems(), "{p}");
    assert!(
        p.notes.iter().any(|n| matches!(n, Note::RolledBack { .. })),
        "{p}"
    );
    assert!(
        p.to_string()
            .contains("rolled back to host a from host b by alice"),
        "{p}"
    );
    // `a` serves itself again, the records name it; `b` forwards in its own grace period.
    assert_eq!(f.a.serving(HOSTNAME).as_deref(), Some("app:v1"));
    assert_eq!(f.dns_record(), Some((A_ADDRESS.to_string(), 300)));
    let m = f.record().migration.unwrap();
    assert_eq!(
        (m.source.host.as_str(), m.phase),
        ("b", MigrationPhase::Grace)
    );

    // After `b`'s grace: `b` holds nothing, the record is `a`'s, the mark stays.
    let later = now() + 49 * HOUR_MS;
    f.run(&d, later, &mut |f: &Two| {
        for (who, got) in [("dns", f.by_dns()), ("a", f.via("a"))] {
            assert_eq!(got.as_deref(), Some("app:v1"), "via {who}");
        }
    })
    .await;
    assert_eq!(held_by(&f.b), (0, 0));
    let rec = f.record();
    assert!(rec.migration.is_none() && rec.rolled_back.is_some());
    // The manifests still say `b`: nothing is planned (no new migration), the note says why.
    let p = f.plan(&d, later).await;
    assert!(p.is_empty(), "{p}");
    assert!(
        p.notes.iter().any(|n| matches!(n, Note::RolledBack { .. })),
        "{p}"
    );
    // They name `a`: the mark goes. Then `b` again: a new migration begins.
    f.run(&desired_on("a", "app:v1"), later, &mut |_| {}).await;
    assert!(f.record().rolled_back.is_none());
    let p = f.plan(&d, later).await;
    assert!(
        p.steps
            .iter()
            .any(|s| matches!(s.action, Action::MigrateBegin { .. })),
        "{p}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rollback_is_refused_while_the_target_deploys_and_once_rolled_back() {
    let f = Two::new();
    f.on_a().await;
    let d = desired_on("b", "app:v1");
    f.round(&d).await; // begun: deploying
    let e = rollback_record(&f.record(), "alice", now()).unwrap_err();
    assert!(
        e.contains("still deploying") && e.contains("host: a"),
        "{e}"
    );
    f.run(&d, now(), &mut |_| {}).await;
    roll_back(&f).await;
    let e = rollback_record(&f.record(), "bob", now()).unwrap_err();
    assert!(
        e.contains("already rolled back") && e.contains("alice"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_crash_after_every_journal_commit_of_a_rollback_converges_to_the_source() {
    let d = desired_on("b", "app:v1");
    let later = now() + 49 * HOUR_MS;
    let in_grace = || async {
        let f = Two::new();
        f.on_a().await;
        f.run(&d, now(), &mut |_| {}).await;
        roll_back(&f).await;
        f
    };
    let mut crashes = 0;
    for n in 1.. {
        let mut f = in_grace().await;
        crate::reconcile::fault::crash_after(Some(n));
        let crashed = std::panic::AssertUnwindSafe(f.run(&d, later, &mut |_| {}))
            .catch_unwind()
            .await
            .is_err();
        crate::reconcile::fault::crash_after(None);
        if !crashed {
            break;
        }
        crashes += 1;
        f.reopen();
        let last = f.run(&d, later, &mut |_| {}).await;
        assert!(!last.has_problems(), "after a crash at commit {n}: {last}");
        let rec = f.record();
        assert_eq!(rec.host, "a", "after a crash at commit {n}");
        assert!(
            rec.migration.is_none() && rec.rolled_back.is_some(),
            "after a crash at commit {n}"
        );
        assert_eq!(held_by(&f.b), (0, 0), "after a crash at commit {n}");
        assert_eq!(
            f.a.serving(HOSTNAME).as_deref(),
            Some("app:v1"),
            "after a crash at commit {n}"
        );
        assert_eq!(
            f.dns_record(),
            Some((A_ADDRESS.to_string(), 300)),
            "after a crash at commit {n}"
        );
    }
    assert!(crashes > 5, "a rollback commits at every step: {crashes}");
}
