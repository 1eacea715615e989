//! The loop against the in-memory fake host, with tokio's clock paused: time only moves when every
//! task waits, so backoffs, grace timers and shutdown deadlines are checked to the millisecond
//! without sleeping.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::backend::fake::{FakeDns, FakeProber, World};
use crate::model::dns::ZoneRef;
use crate::model::{DesiredEnv, Promotion, Release};
use crate::reconcile::backoff::{MAX_DELAY, MIN_DELAY};

fn host() -> HostRef {
    HostRef {
        name: "app".into(),
        address: "127.0.0.1".into(),
        podman: "unix:///fake".into(),
        caddy_admin: "http://127.0.0.1:1".into(),
        listen: vec!["127.0.0.1:18080".into()],
        tls: crate::spec::Tls::Off,
        publish_address: "127.0.0.1".into(),
        image_allow: vec![],
        postgres: None,
        redis: None,
        backups: None,
        access_log: Some(crate::model::writes::AccessLog::default_for("app")),
        ssh: None,
    }
}

fn env(project: &str, image: &str) -> DesiredEnv {
    DesiredEnv {
        key: EnvKey::new(project, "production"),
        host: "app".into(),
        hostname: format!("{project}.example.test"),
        release: Release::new(image, None, BTreeMap::new(), 8080),
        health_path: "/health".into(),
        health_timeout: Duration::from_secs(2),
        promotion: Promotion::Auto,
        grace_period: Duration::from_secs(3600),
        migration_grace: crate::model::DEFAULT_MIGRATION_GRACE,
        env_from: Default::default(),
        data: Default::default(),
    }
}

fn desired(envs: impl IntoIterator<Item = DesiredEnv>) -> Arc<Desired> {
    Arc::new(Desired {
        zones: Default::default(),
        hosts: BTreeMap::from([("app".into(), host())]),
        envs: envs.into_iter().map(|e| (e.key.clone(), e)).collect(),
    })
}

const ZONE: &str = "example.test";

/// As [`desired`], with the Zone `example.test` managed through the fake PowerDNS.
fn zoned(envs: impl IntoIterator<Item = DesiredEnv>) -> Arc<Desired> {
    use crate::model::dns::PowerDnsRef;
    let mut d = (*desired(envs)).clone();
    d.zones.insert(
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
    );
    Arc::new(d)
}

fn rrset(
    name: &str,
    rtype: &str,
    content: &str,
    mark: Option<String>,
) -> crate::model::writes::Rrset {
    crate::model::writes::Rrset {
        name: format!("{name}."),
        rtype: rtype.into(),
        ttl: 300,
        records: vec![content.into()],
        mark,
    }
}

struct Harness {
    world: World,
    dns: FakeDns,
    /// The planner's clock (tokio's, from the wall time at start).
    clock: Clock,
    store: Arc<Store>,
    handle: Handle,
    shutdown: CancellationToken,
    join: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn start(d: Arc<Desired>, prune: bool) -> Harness {
    start_with(d, prune, World::new(), BTreeMap::new())
}

/// As [`start`], every host being `world` but those named in `others`.
fn start_with(
    d: Arc<Desired>,
    prune: bool,
    world: World,
    others: BTreeMap<String, World>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let dns = FakeDns::new();
    let (w, z) = (world.clone(), dns.clone());
    let mut worlds: Vec<World> = others.values().cloned().collect();
    worlds.push(world.clone());
    let connect: Connectors<World, World, World, FakeDns> = Connectors {
        host: Box::new(move |h| {
            let on = others.get(&h.name).unwrap_or(&w);
            Ok(crate::reconcile::fixtures::fake_host(on))
        }),
        zone: Box::new(move |_| Ok(z.clone())),
    };
    // The planner's clock follows tokio's, so a paused test moves grace periods too.
    let (wall, base) = (super::super::now_ms(), Instant::now());
    let clock: Clock = Arc::new(move || wall + base.elapsed().as_millis() as u64);
    let config = Config {
        concurrency: 4,
        prune,
        clock: clock.clone(),
        shutdown_grace: Duration::from_secs(8),
    };
    let prober = FakeProber(worlds);
    let c = Controller::new(d, store.clone(), prober, connect, config).unwrap();
    let handle = c.handle();
    let shutdown = CancellationToken::new();
    let join = tokio::spawn(c.run(shutdown.clone()));
    Harness {
        world,
        dns,
        clock,
        store,
        handle,
        shutdown,
        join,
        _dir: dir,
    }
}

impl Harness {
    /// The image serving `project`'s hostname, if its route leads to a running container.
    fn live(&self, project: &str) -> Option<String> {
        self.world.serving(&format!("{project}.example.test"))
    }

    /// The contents of `name`'s A rrset in the fake zone.
    fn a(&self, name: &str) -> Option<String> {
        let canonical = format!("{name}.");
        let s = self.dns.state();
        s.zones
            .get(ZONE)?
            .iter()
            .find(|r| r.name == canonical && r.rtype == "A")
            .map(|r| r.records.join(","))
    }

    /// The names of `project`'s records (hostname and previews) that point at the host.
    fn resolves(&self, project: &str) -> bool {
        ["", "blue.", "green."]
            .iter()
            .all(|p| self.a(&format!("{p}{project}.{ZONE}")).as_deref() == Some("127.0.0.1"))
    }

    /// What the loop last recorded of the host `app`.
    fn host_health(&self) -> crate::reconcile::health::Seen {
        self.handle.health().snapshot().hosts["app"].clone()
    }

    fn containers(&self) -> usize {
        self.world.state().containers.len()
    }

    fn state(&self, project: &str, slot: Slot) -> SlotState {
        self.store
            .env(&EnvKey::new(project, "production"))
            .unwrap()
            .map_or(SlotState::Empty, |r| r.slot(slot).state)
    }

    /// Waits (in paused time: advancing it) until `f` holds; panics after `within`.
    async fn until(&self, within: Duration, what: &str, f: impl Fn(&Self) -> bool) -> Duration {
        let started = Instant::now();
        while !f(self) {
            assert!(started.elapsed() < within, "not within {within:?}: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }

    /// Lets the loop run for `d` of (paused) time.
    async fn idle(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.join.await.unwrap();
    }
}

const SEC: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn the_start_deploys_everything_and_a_converged_host_gets_no_write_on_resync() {
    let h = start(desired([env("a", "app:v1"), env("b", "app:v1")]), false);
    h.until(10 * SEC, "both serve", |h| {
        h.live("a").as_deref() == Some("app:v1") && h.live("b").as_deref() == Some("app:v1")
    })
    .await;
    h.idle(SEC).await;
    let writes = h.world.mutations();
    for _ in 0..5 {
        h.handle.resync();
        h.idle(SEC).await;
    }
    assert_eq!(
        h.world.mutations(),
        writes,
        "resyncs of a converged host write nothing"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn new_environments_swept_together_get_distinct_ports() {
    let envs = (0..6).map(|i| env(&format!("p{i}"), "app:v1"));
    let h = start(desired(envs), false);
    h.until(10 * SEC, "all serve", |h| {
        (0..6).all(|i| h.live(&format!("p{i}")).is_some())
    })
    .await;
    let recorded = h.store.load().unwrap();
    let ports: BTreeSet<u16> = recorded.envs.values().map(|r| r.base_port).collect();
    assert_eq!(ports.len(), 6, "{ports:?}");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_removed_container_comes_back_after_its_event_without_a_resync() {
    let h = start(desired([env("a", "app:v1")]), false);
    h.until(10 * SEC, "serves", |h| h.live("a").is_some()).await;
    let id = {
        let mut s = h.world.state();
        let id = s.containers.keys().next().unwrap().clone();
        s.containers.remove(&id);
        id
    };
    assert!(h.live("a").is_none());
    h.handle.trigger(
        Work::Env(EnvKey::new("a", "production")),
        Duration::from_millis(200),
    );
    let took = h.until(SEC, "back", |h| h.live("a").is_some()).await;
    assert!(took <= Duration::from_millis(300), "{took:?}");
    assert!(!h.world.state().containers.contains_key(&id));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_changed_manifest_goes_live_and_the_grace_period_ends_on_its_timer() {
    let mut e = env("a", "app:v1");
    e.grace_period = Duration::from_secs(5);
    let h = start(desired([e.clone()]), false);
    h.until(10 * SEC, "v1", |h| h.live("a").as_deref() == Some("app:v1"))
        .await;
    let mut v2 = e;
    v2.release = Release::new("app:v2", None, BTreeMap::new(), 8080);
    h.handle.set_desired(desired([v2]));
    h.until(SEC, "v2", |h| h.live("a").as_deref() == Some("app:v2"))
        .await;
    assert_eq!(h.state("a", Slot::Blue), SlotState::Grace);
    assert_eq!(h.containers(), 2);
    // The executor stamps the slot with the wall clock, the planner here reads tokio's paused one:
    // compare on the planner's clock, which is what the timer is computed on.
    let ends = h
        .store
        .env(&EnvKey::new("a", "production"))
        .unwrap()
        .unwrap()
        .blue
        .since_ms
        + 5000;
    // No resync and no event: only the timer the reconcile returned.
    h.until(10 * SEC, "grace over", |h| {
        h.state("a", Slot::Blue) == SlotState::Empty
    })
    .await;
    let retired = (h.clock)();
    assert!(
        retired >= ends && retired <= ends + 50,
        "retired {} ms after the grace period ended",
        retired as i64 - ends as i64
    );
    assert_eq!(h.containers(), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_release_that_fails_its_health_check_is_not_redeployed_until_it_changes() {
    let h = start(desired([env("a", "app:v1")]), false);
    h.until(10 * SEC, "v1", |h| h.live("a").is_some()).await;
    h.handle.set_desired(desired([env("a", "app:unhealthy")]));
    h.until(10 * SEC, "failed", |h| {
        h.state("a", Slot::Green) == SlotState::Failed
    })
    .await;
    h.idle(SEC).await;
    let writes = h.world.mutations();
    for _ in 0..10 {
        h.handle.resync();
        h.handle
            .trigger(Work::Env(EnvKey::new("a", "production")), Duration::ZERO);
        h.idle(5 * SEC).await;
    }
    assert_eq!(h.world.mutations(), writes, "no redeploy, no write");
    assert_eq!(h.live("a").as_deref(), Some("app:v1"));
    // A new release is deployed at once.
    h.handle.set_desired(desired([env("a", "app:v2")]));
    h.until(SEC, "v2", |h| h.live("a").as_deref() == Some("app:v2"))
        .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_host_that_is_down_is_retried_with_growing_backoff_and_recovers_within_one_step() {
    let h = start(desired([env("a", "app:v1")]), false);
    h.until(10 * SEC, "v1", |h| h.live("a").is_some()).await;
    h.world.state().podman_down = true;
    h.world.state().routes.clear();
    // Count sweeps by Caddy reads (observe reads Caddy even while Podman is down).
    let reads = h.world.state().caddy_reads;
    h.handle.resync();
    h.idle(60 * SEC).await;
    let attempts = h.world.state().caddy_reads - reads;
    // 0.8 s doubling (with up to 100 % jitter) to 15-30 s: 60 s hold between 4 and 8 attempts.
    assert!((4..=8).contains(&attempts), "{attempts} attempts in 60 s");
    h.world.state().podman_down = false;
    let took = h
        .until(31 * SEC, "recovered", |h| h.live("a").is_some())
        .await;
    assert!(took <= 30 * SEC, "{took:?}");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_host_whose_podman_is_down_shows_since_when_and_why_and_recovers_to_observed() {
    use crate::metrics::{metrics, ReconcileLabels};
    let host_errors = || {
        metrics()
            .reconciles
            .get_or_create(&ReconcileLabels {
                kind: "host",
                result: "error",
            })
            .get()
    };
    let h = start(desired([env("a", "app:v1")]), false);
    h.until(10 * SEC, "v1", |h| h.live("a").is_some()).await;
    let seen = h.host_health();
    assert!(
        seen.last_ok_ms.is_some() && seen.failing_since_ms.is_none(),
        "{seen:?}"
    );
    let errors = host_errors();
    h.world.state().podman_down = true;
    let down_at = (h.clock)();
    h.handle.resync();
    h.until(SEC, "failing", |h| {
        h.host_health().failing_since_ms.is_some()
    })
    .await;
    let first = h.host_health();
    let since = first.failing_since_ms.unwrap();
    assert!(
        since >= down_at && since < down_at + 100,
        "{since} vs {down_at}"
    );
    assert!(first.last_ok_ms.unwrap() <= down_at);
    let error = first.last_error.unwrap();
    assert!(error.contains("unix:///fake/podman.sock"), "{error}");
    // Retried on its backoff: still failing since the first failure.
    h.idle(60 * SEC).await;
    let later = h.host_health();
    assert_eq!(later.failing_since_ms, Some(since));
    assert!(later.failing_longer_than((h.clock)(), 59_000));
    assert!(host_errors() > errors, "counted as failed host reconciles");
    h.world.state().podman_down = false;
    h.until(31 * SEC, "observed again", |h| {
        h.host_health().failing_since_ms.is_none()
    })
    .await;
    let back = h.host_health();
    assert!(back.last_ok_ms.unwrap() > since && back.last_error.is_none());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_key_blocked_by_a_foreign_container_is_retried_at_the_longest_delay_not_at_every_resync()
{
    let h = start(desired([env("a", "app:v1")]), false);
    // A container codeb does not own holds the name: every create of a's container fails.
    crate::reconcile::fixtures::hold_name(&h.world, "a-production-blue");
    h.idle(SEC).await;
    // Each attempt is one failed create: one counted write.
    let before = h.world.mutations();
    for _ in 0..60 {
        h.handle.resync();
        h.idle(SEC).await;
    }
    let attempts = h.world.mutations() - before;
    // 60 resyncs, but a name in use is not retryable: the longest delay (15-30 s) at once allows
    // 2 to 4 attempts (a retryable failure would make 4 to 8, see the host that is down).
    assert!((2..=4).contains(&attempts), "{attempts} attempts");
    h.world.state().containers.remove("foreign");
    let took = h
        .until(31 * SEC, "recovered", |h| h.live("a").is_some())
        .await;
    assert!(took <= 30 * SEC);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_claim_waits_for_the_running_reconcile_and_holds_the_key_until_dropped() {
    let h = start(desired([env("a", "app:v1")]), false);
    h.until(10 * SEC, "v1", |h| h.live("a").is_some()).await;
    let key = Work::Env(EnvKey::new("a", "production"));
    let guard = h.handle.claim(vec![key.clone()]).await.expect("granted");
    // While claimed, a trigger does not run the key.
    h.world.state().routes.clear();
    h.handle.trigger(key.clone(), Duration::ZERO);
    h.idle(2 * SEC).await;
    assert!(h.live("a").is_none(), "the claimed key did not run");
    drop(guard);
    h.handle.trigger(key, Duration::ZERO);
    h.until(SEC, "repaired after the claim", |h| h.live("a").is_some())
        .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn prune_removes_environments_that_disappear_and_without_it_they_stay() {
    for prune in [false, true] {
        let h = start(desired([env("a", "app:v1"), env("b", "app:v1")]), prune);
        h.until(10 * SEC, "both", |h| {
            h.live("a").is_some() && h.live("b").is_some()
        })
        .await;
        h.handle.set_desired(desired([env("a", "app:v1")]));
        h.idle(5 * SEC).await;
        h.handle.resync();
        h.idle(5 * SEC).await;
        let b = h.store.env(&EnvKey::new("b", "production")).unwrap();
        if prune {
            assert!(b.is_none());
            assert!(h.live("b").is_none());
            assert_eq!(h.containers(), 1);
        } else {
            assert!(b.is_some());
            assert!(h.live("b").is_some());
        }
        assert!(h.live("a").is_some());
        h.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn stop_lets_the_step_in_flight_finish_and_abandons_a_long_one_after_the_grace() {
    let mut slow = env("a", "app:unhealthy");
    slow.health_timeout = Duration::from_secs(120);
    let h = start(desired([slow]), false);
    h.until(5 * SEC, "deploying", |h| {
        h.state("a", Slot::Blue) == SlotState::Deploying
    })
    .await;
    let stopped = Instant::now();
    h.shutdown.cancel();
    h.join.await.unwrap();
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_secs(8) && took < Duration::from_secs(9),
        "{took:?}"
    );
    // The probe was in flight: its intent has no outcome, and the slot stays deploying, which is
    // what the next start resumes from.
    assert_eq!(h.store.interrupted().unwrap().len(), 1);
    assert_eq!(
        h.store
            .env(&EnvKey::new("a", "production"))
            .unwrap()
            .unwrap()
            .blue
            .state,
        SlotState::Deploying
    );
}

#[tokio::test(start_paused = true)]
async fn stop_with_nothing_in_flight_returns_at_once() {
    let h = start(desired([env("a", "app:v1")]), false);
    h.until(10 * SEC, "v1", |h| h.live("a").is_some()).await;
    let stopped = Instant::now();
    h.stop().await;
    assert!(stopped.elapsed() < Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn a_managed_zone_gets_every_record_at_start_and_a_converged_zone_no_write_on_resync() {
    let h = start(zoned([env("a", "app:v1"), env("b", "app:v1")]), false);
    h.until(10 * SEC, "records and apps", |h| {
        h.resolves("a") && h.resolves("b") && h.live("a").is_some() && h.live("b").is_some()
    })
    .await;
    h.idle(SEC).await;
    // The missing zone was created, then written once.
    let (creates, patches) = {
        let s = h.dns.state();
        (s.creates, s.patches)
    };
    assert_eq!((creates, patches), (1, 1));
    let zone = h.store.load().unwrap().zones[ZONE].clone();
    assert_eq!(
        zone.powerdns.unwrap().api_key_env,
        "PDNS_API_KEY",
        "recorded by the variable's name"
    );
    let (writes, reads) = (h.dns.writes(), h.dns.state().reads);
    for _ in 0..5 {
        h.handle.resync();
        h.idle(SEC).await;
    }
    assert_eq!(h.dns.writes(), writes, "a converged zone gets no write");
    assert_eq!(h.dns.state().reads, reads + 5, "one read per resync");
    // A saved change that touches no name (a new image) does not even read the zone.
    h.handle
        .set_desired(zoned([env("a", "app:v2"), env("b", "app:v1")]));
    h.until(SEC, "v2", |h| h.live("a").as_deref() == Some("app:v2"))
        .await;
    assert_eq!(h.dns.state().reads, reads + 5);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_record_changed_or_deleted_by_hand_comes_back_at_the_next_resync() {
    let h = start(zoned([env("a", "app:v1"), env("b", "app:v1")]), false);
    h.until(10 * SEC, "records", |h| h.resolves("a") && h.resolves("b"))
        .await;
    {
        let mut s = h.dns.state();
        let rrsets = s.zones.get_mut(ZONE).unwrap();
        rrsets.retain(|r| r.name != "a.example.test.");
        let b = rrsets
            .iter_mut()
            .find(|r| r.name == "blue.b.example.test.")
            .unwrap();
        b.records = vec!["10.9.9.9".into()];
    }
    assert!(!h.resolves("a") && !h.resolves("b"));
    let patches = h.dns.state().patches;
    h.handle.resync();
    h.until(SEC, "repaired", |h| h.resolves("a") && h.resolves("b"))
        .await;
    assert_eq!(h.dns.state().patches, patches + 1, "both in one write");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_saved_hostname_change_moves_the_records_without_a_resync() {
    let h = start(zoned([env("a", "app:v1")]), false);
    h.until(10 * SEC, "records", |h| h.resolves("a")).await;
    let mut moved = env("a", "app:v1");
    moved.hostname = format!("a2.{ZONE}");
    h.handle.set_desired(zoned([moved]));
    h.until(SEC, "moved", |h| {
        h.resolves("a2")
            && ["", "blue.", "green."]
                .iter()
                .all(|p| h.a(&format!("{p}a.{ZONE}")).is_none())
    })
    .await;
    h.stop().await;
}

/// A managed zone whose PowerDNS fails every call (`fail` turns the failure on and off): the app
/// is served meanwhile, 60 resyncs in 60 s make `attempts` calls, and the zone recovers within
/// 30 s of the fix.
async fn zone_fails_and_recovers(
    fail: fn(&mut crate::backend::fake::DnsState, bool),
    attempts: std::ops::RangeInclusive<usize>,
) {
    let h = start(zoned([env("a", "app:v1")]), false);
    fail(&mut h.dns.state(), true);
    h.until(10 * SEC, "serves while PowerDNS fails", |h| {
        h.live("a").is_some()
    })
    .await;
    let calls = h.dns.state().calls;
    for _ in 0..60 {
        h.handle.resync();
        h.idle(SEC).await;
    }
    let made = h.dns.state().calls - calls;
    assert!(attempts.contains(&made), "{made} attempts in 60 s");
    assert!(!h.resolves("a"));
    let zone = |h: &Harness| h.handle.health().snapshot().zones[ZONE].clone();
    let failing = zone(&h);
    assert_eq!(failing.last_ok_ms, None, "never read since the start");
    assert!(
        failing.failing_longer_than((h.clock)(), 59_000),
        "{failing:?}"
    );
    let error = failing.last_error.unwrap();
    assert!(
        error.contains("http://fake-pdns"),
        "names the endpoint: {error}"
    );
    fail(&mut h.dns.state(), false);
    let took = h.until(31 * SEC, "recovered", |h| h.resolves("a")).await;
    assert!(took <= 30 * SEC, "{took:?}");
    let recovered = zone(&h);
    assert!(recovered.last_ok_ms.is_some() && recovered.failing_since_ms.is_none());
    assert_eq!(recovered.last_error, None);
    assert_eq!(h.live("a").as_deref(), Some("app:v1"));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn powerdns_down_holds_back_no_app_and_the_zone_recovers_within_one_backoff_step() {
    // The zone's backoff (0.8 s doubling to 15-30 s) allows 4 to 8 attempts in 60 s.
    zone_fails_and_recovers(|s, on| s.down = on, 4..=8).await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_api_key_is_retried_at_the_longest_delay_and_holds_back_no_app() {
    // Not retryable: the longest delay (15-30 s) from the first failure allows 2 to 4.
    zone_fails_and_recovers(|s, on| s.refuse_key = on, 2..=4).await;
}

#[tokio::test(start_paused = true)]
async fn a_name_held_by_a_foreign_record_gets_no_write_and_the_others_do() {
    let h = start(zoned([]), false);
    let foreign = rrset("blue.b.example.test", "TXT", "\"by hand\"", None);
    h.dns
        .state()
        .zones
        .insert(ZONE.into(), vec![foreign.clone()]);
    h.handle
        .set_desired(zoned([env("a", "app:v1"), env("b", "app:v1")]));
    h.until(10 * SEC, "a resolves, both serve", |h| {
        h.resolves("a") && h.live("a").is_some() && h.live("b").is_some()
    })
    .await;
    assert_eq!(h.a(&format!("b.{ZONE}")), None, "no write for b at all");
    assert!(h.dns.state().zones[ZONE].contains(&foreign));
    // The conflict is a problem, not a failure: no retries, no writes.
    let (writes, calls) = (h.dns.writes(), h.dns.state().calls);
    h.idle(60 * SEC).await;
    assert_eq!(h.dns.writes(), writes);
    assert_eq!(h.dns.state().calls, calls);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pruned_environment_takes_its_records_along_even_when_powerdns_was_down() {
    let h = start(zoned([env("a", "app:v1"), env("b", "app:v1")]), true);
    h.until(10 * SEC, "records", |h| h.resolves("a") && h.resolves("b"))
        .await;
    let b = EnvKey::new("b", "production");
    // Pruned while PowerDNS answers: records, containers and record go.
    h.handle.set_desired(zoned([env("a", "app:v1")]));
    h.until(SEC, "b gone", |h| {
        h.store.env(&b).unwrap().is_none() && h.a(&format!("b.{ZONE}")).is_none()
    })
    .await;
    assert!(h.live("b").is_none());
    assert!(h.resolves("a"));

    // Back, then pruned while PowerDNS is down: the apps go at once, the record waits.
    h.handle
        .set_desired(zoned([env("a", "app:v1"), env("b", "app:v1")]));
    h.until(10 * SEC, "b back", |h| {
        h.resolves("b") && h.live("b").is_some()
    })
    .await;
    h.dns.state().down = true;
    h.handle.set_desired(zoned([env("a", "app:v1")]));
    h.until(5 * SEC, "b's containers gone", |h| h.containers() == 1)
        .await;
    h.idle(10 * SEC).await;
    assert!(
        h.store.env(&b).unwrap().is_some(),
        "kept: its records remain"
    );
    assert!(h.a(&format!("b.{ZONE}")).is_some());
    h.dns.state().down = false;
    h.until(31 * SEC, "records and record gone", |h| {
        h.store.env(&b).unwrap().is_none()
            && ["", "blue.", "green."]
                .iter()
                .all(|p| h.a(&format!("{p}b.{ZONE}")).is_none())
    })
    .await;
    assert!(h.resolves("a"));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pruned_environment_whose_zone_is_busy_waits_for_it_without_spinning() {
    let h = start(zoned([env("a", "app:v1"), env("b", "app:v1")]), true);
    h.until(10 * SEC, "records", |h| h.resolves("a") && h.resolves("b"))
        .await;
    // A command holds the zone: b's reconcile finds its records there and hands them over, and
    // nothing runs again until the zone is free (a loop would keep paused time from moving).
    let zone = h
        .handle
        .claim(vec![Work::Zone(ZONE.into())])
        .await
        .expect("granted");
    h.handle.set_desired(zoned([env("a", "app:v1")]));
    h.until(5 * SEC, "b's containers gone", |h| h.containers() == 1)
        .await;
    let b = EnvKey::new("b", "production");
    let reads = h.dns.state().reads;
    h.idle(10 * SEC).await;
    assert!(
        h.store.env(&b).unwrap().is_some(),
        "kept while its records remain"
    );
    assert!(
        h.dns.state().reads <= reads + 1,
        "no loop between b and its host"
    );
    drop(zone);
    h.handle.trigger(Work::Zone(ZONE.into()), Duration::ZERO);
    h.until(SEC, "records and record gone", |h| {
        h.store.env(&b).unwrap().is_none() && h.a(&format!("b.{ZONE}")).is_none()
    })
    .await;
    h.stop().await;
}

#[test]
fn error_policy_waits_the_longest_delay_at_once_for_what_retrying_cannot_fix() {
    use crate::backend::podman;
    let mut backoffs = Backoffs::default();
    let (env_a, env_b) = (
        Work::Env(EnvKey::new("a", "production")),
        Work::Env(EnvKey::new("b", "production")),
    );
    let host = || "app".to_string();
    let backend = |e: podman::Error| {
        Error::Reconcile(crate::reconcile::Error::Backend {
            host: host(),
            source: e.into(),
        })
    };
    let down = backend(podman::Error::Unreachable {
        endpoint: "unix:///run/podman.sock".into(),
        reason: "connection refused".into(),
    });
    let name_in_use = backend(podman::Error::Api {
        op: "create container a-production-blue".into(),
        status: Some(500),
        message: "the container name \"a-production-blue\" is already in use".into(),
    });
    let short = MIN_DELAY..=MIN_DELAY * 2;
    let longest = MAX_DELAY..=MAX_DELAY * 2;

    // A backend that is down: the schedule starts short and grows.
    let first = error_policy(&env_a, &down, &mut backoffs);
    assert!(short.contains(&first), "{first:?}");
    // A name held by a foreign container: the longest delay at once, and it stays there, even
    // for a failure that would be retryable, until a success resets the key.
    for error in [&name_in_use, &down] {
        let d = error_policy(&env_a, error, &mut backoffs);
        assert!(longest.contains(&d), "{error}: {d:?}");
    }
    // Another key is not affected.
    let other = error_policy(&env_b, &down, &mut backoffs);
    assert!(short.contains(&other), "{other:?}");
    backoffs.reset(&env_a);
    let again = error_policy(&env_a, &down, &mut backoffs);
    assert!(short.contains(&again), "{again:?}");

    // What each kind of failure answers.
    let not_connected = Error::NotConnected {
        host: host(),
        error: "invalid Podman endpoint".into(),
    };
    let step = |retryable| Error::StepFailed {
        step: "create".into(),
        error: "refused".into(),
        retryable,
    };
    assert!(down.retryable() && step(true).retryable());
    assert!(!name_in_use.retryable() && !not_connected.retryable() && !step(false).retryable());
    assert!(!Error::Panicked.retryable());
}

#[test]
fn a_zone_step_is_never_the_hosts_work() {
    let step = |key: Option<EnvKey>, action| Step {
        host: String::new(),
        key,
        generation: None,
        action,
    };
    let patch = crate::plan::Action::DnsPatch {
        zone: ZONE.into(),
        changes: Vec::new(),
    };
    assert!(!super::host_wide(&step(None, patch)));
    let server = crate::plan::Action::EnsureServer(crate::plan::server_spec(&host()));
    assert!(super::host_wide(&step(None, server)));
}

#[test]
fn containers_codeb_stops_removes_or_starts_are_expected_and_others_are_not() {
    let key = EnvKey::new("a", "production");
    let step = |action| Step {
        host: "app".into(),
        key: Some(key.clone()),
        generation: Some(1),
        action,
    };
    let plan = Plan {
        steps: vec![
            step(plan::Action::RemoveContainer {
                id: "c1".into(),
                name: "a-production-blue".into(),
            }),
            step(plan::Action::Retire {
                slot: Slot::Green,
                container: Some("c2".into()),
                drain: None,
            }),
            step(plan::Action::Start {
                slot: Slot::Blue,
                container: "c3".into(),
            }),
        ],
        notes: vec![],
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let e = Expected::default();
        e.expect_plan(&plan);
        assert!(e.caused_by_codeb("app", "c1", ""));
        assert!(e.caused_by_codeb("app", "zzz", "c2"));
        assert!(!e.caused_by_codeb("app", "c3", "a-production-blue"));
        assert!(!e.caused_by_codeb("other", "c1", ""));
        // The start of c3 is codeb's own once; its next start (a restart after a crash) is not.
        assert!(!e.started_by_codeb("app", "c1", ""));
        assert!(e.started_by_codeb("app", "c3", "a-production-blue"));
        assert!(!e.started_by_codeb("app", "c3", "a-production-blue"));
    });
}

mod migrate;
