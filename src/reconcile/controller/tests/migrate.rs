//! The loop carries a migration between two fake hosts `a` and `b` through to its end, with no
//! resync and no apply: a saved change of `host:` starts it, the loop and the zone's reconcile
//! hand it phase to phase, and the end of the grace period cleans the source up on its timer. The
//! same for a rollback's way back and the cleanup of `b` after its grace period.

use super::*;
use crate::model::dns::PowerDnsRef;
use crate::model::MigrationPhase;
use crate::plan::migrate::forward_upstream;

const A_ADDRESS: &str = "192.0.2.1";
const B_ADDRESS: &str = "192.0.2.2";
const HOSTNAME: &str = "myapp.example.test";
const GRACE: Duration = Duration::from_secs(60);

fn named(name: &str, address: &str) -> HostRef {
    HostRef {
        name: name.into(),
        address: address.into(),
        access_log: Some(crate::model::writes::AccessLog::default_for(name)),
        ..host()
    }
}

fn key() -> EnvKey {
    EnvKey::new("myapp", "production")
}

/// Both hosts and the managed zone declared; `myapp` on `on`.
fn on(host: &str) -> Arc<Desired> {
    let mut e = env("myapp", "app:v1");
    e.host = host.into();
    e.migration_grace = GRACE;
    Arc::new(Desired {
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
    })
}

struct Two {
    h: Harness,
    a: World,
    b: World,
}

fn start_two(d: Arc<Desired>) -> Two {
    start_two_with(d, false)
}

fn start_two_with(d: Arc<Desired>, prune: bool) -> Two {
    let (a, b) = (World::new(), World::new());
    // Distinct container addresses: a probe answered by the wrong host's container would hide
    // a failure.
    b.state().next_id = 1000;
    let h = start_with(
        d,
        prune,
        a.clone(),
        BTreeMap::from([("b".into(), b.clone())]),
    );
    Two { h, a, b }
}

impl Two {
    fn record(&self) -> EnvRecord {
        self.h.store.env(&key()).unwrap().unwrap()
    }

    fn phase(&self) -> Option<MigrationPhase> {
        self.record().migration.map(|m| m.phase)
    }

    /// The hostname's A record: its address and TTL.
    fn dns(&self) -> Option<(String, u32)> {
        let s = self.h.dns.state();
        let r = s
            .zones
            .get(ZONE)?
            .iter()
            .find(|r| r.name == format!("{HOSTNAME}.") && r.rtype == "A")?;
        Some((r.records[0].clone(), r.ttl))
    }

    /// The upstream of `myapp`'s hostname route on `world`.
    fn upstream(world: &World) -> Option<String> {
        let s = world.state();
        s.routes
            .iter()
            .find(|r| r.id == key().route_id())
            .map(|r| r.upstream.clone())
    }

    /// What a client sent to `host`'s Caddy gets: served there, or forwarded to the other host.
    fn via(&self, host: &str) -> Option<String> {
        let (here, there, to_there) = match host {
            "a" => (&self.a, &self.b, forward_upstream(&named("b", B_ADDRESS))),
            _ => (&self.b, &self.a, forward_upstream(&named("a", A_ADDRESS))),
        };
        if Self::upstream(here) == to_there {
            there.serving(HOSTNAME)
        } else {
            here.serving(HOSTNAME)
        }
    }

    /// What `myapp` `world` holds: its containers (running or not) and routes.
    fn held(world: &World) -> (usize, usize) {
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

    /// Waits until `myapp` serves on `a` with its records naming `a`.
    async fn on_a(&self) {
        self.h
            .until(10 * SEC, "served on a, named in DNS", |_| {
                self.a.serving(HOSTNAME).as_deref() == Some("app:v1")
                    && self.dns() == Some((A_ADDRESS.into(), 300))
            })
            .await;
    }

    /// The planner's clock when the migration's grace period ends.
    fn grace_ends(&self) -> u64 {
        self.record().migration.expect("migrating").grace_ends_ms()
    }
}

#[tokio::test(start_paused = true)]
async fn a_saved_host_change_migrates_and_the_source_is_cleaned_up_at_the_grace_end_without_apply()
{
    let t = start_two(on("a"));
    t.on_a().await;
    // Only the saved change: no resync, no apply, from here to the end.
    t.h.handle.set_desired(on("b"));
    t.h.until(10 * SEC, "in its grace period", |_| {
        t.phase() == Some(MigrationPhase::Grace) && t.dns() == Some((B_ADDRESS.into(), 300))
    })
    .await;
    assert_eq!(t.b.serving(HOSTNAME).as_deref(), Some("app:v1"));
    assert_eq!(t.via("a").as_deref(), Some("app:v1"), "a forwards to b");
    assert_eq!(
        Two::upstream(&t.a),
        forward_upstream(&named("b", B_ADDRESS))
    );
    assert_eq!(Two::held(&t.a), (1, 1), "a keeps its stopped container");
    assert!(!t.a.state().containers.values().any(|(c, _)| c.running));
    let ends = t.grace_ends();
    t.h.until(GRACE + 10 * SEC, "a cleaned up", |_| {
        t.phase().is_none() && Two::held(&t.a) == (0, 0)
    })
    .await;
    let cleaned = (t.h.clock)();
    assert!(
        cleaned >= ends && cleaned <= ends + 50,
        "cleaned up {} ms after the grace period ended",
        cleaned as i64 - ends as i64
    );
    assert_eq!(t.record().host, "b");
    assert_eq!(t.b.serving(HOSTNAME).as_deref(), Some("app:v1"));
    assert_eq!(t.dns(), Some((B_ADDRESS.into(), 300)));
    // `a`'s sweep followed: nothing of the manifests is left there, so no slot port is published
    // on its loopback any more.
    assert!(!t.a.state().loopback.route_localnet);
    // Converged: nothing more is written.
    let (writes_a, writes_b, dns) = (t.a.mutations(), t.b.mutations(), t.h.dns.writes());
    t.h.handle.resync();
    t.h.idle(5 * SEC).await;
    assert_eq!(
        (t.a.mutations(), t.b.mutations(), t.h.dns.writes()),
        (writes_a, writes_b, dns)
    );
    t.h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn after_a_rollback_in_grace_the_loop_moves_back_and_cleans_b_up_at_its_grace_end() {
    let t = start_two(on("a"));
    t.on_a().await;
    t.h.handle.set_desired(on("b"));
    t.h.until(10 * SEC, "in its grace period", |_| {
        t.phase() == Some(MigrationPhase::Grace) && t.dns() == Some((B_ADDRESS.into(), 300))
    })
    .await;
    // `codeb rollback` through the daemon: it claims the key, writes the intent (one journaled
    // step), and hands the key back to the loop (the manifests still say `host: b`).
    {
        let _claim = t.h.handle.claim(vec![Work::Env(key())]).await.unwrap();
        let rec = t.record();
        let back = plan::migrate::rollback_record(&rec, "tester", (t.h.clock)()).unwrap();
        let intent = Plan {
            steps: vec![Step {
                host: "a".into(),
                key: Some(key()),
                generation: Some(rec.generation),
                action: plan::Action::MigrateRollback(Box::new(back)),
            }],
            notes: vec![],
        };
        let backends: Backends<World, World, World, FakeDns> = Backends::hosts(BTreeMap::from([
            ("a".into(), crate::reconcile::fixtures::fake_host(&t.a)),
            ("b".into(), crate::reconcile::fixtures::fake_host(&t.b)),
        ]));
        let report = crate::reconcile::execute(
            &intent,
            &t.h.store,
            &backends,
            &FakeProber(vec![t.a.clone(), t.b.clone()]),
        )
        .await
        .unwrap();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        t.h.handle.trigger(Work::Env(key()), Duration::ZERO);
    }
    t.h.until(10 * SEC, "back on a, b in its grace period", |_| {
        t.record().host == "a"
            && t.phase() == Some(MigrationPhase::Grace)
            && t.dns() == Some((A_ADDRESS.into(), 300))
    })
    .await;
    assert_eq!(t.a.serving(HOSTNAME).as_deref(), Some("app:v1"));
    assert_eq!(t.via("b").as_deref(), Some("app:v1"), "b forwards to a");
    assert_eq!(Two::held(&t.b), (1, 1), "b keeps its stopped container");
    let ends = t.grace_ends();
    t.h.until(GRACE + 10 * SEC, "b cleaned up", |_| {
        t.phase().is_none() && Two::held(&t.b) == (0, 0)
    })
    .await;
    let cleaned = (t.h.clock)();
    assert!(
        cleaned >= ends && cleaned <= ends + 50,
        "cleaned up {} ms after the grace period ended",
        cleaned as i64 - ends as i64
    );
    let rec = t.record();
    assert_eq!(rec.host, "a");
    assert!(
        rec.rolled_back.is_some(),
        "the mark holds: the manifests say b"
    );
    assert_eq!(t.a.serving(HOSTNAME).as_deref(), Some("app:v1"));
    assert_eq!(t.dns(), Some((A_ADDRESS.into(), 300)));
    // The manifests' `host: b` is not acted on: nothing more is written.
    let (writes_a, writes_b, dns) = (t.a.mutations(), t.b.mutations(), t.h.dns.writes());
    t.h.handle.resync();
    t.h.idle(5 * SEC).await;
    assert_eq!(
        (t.a.mutations(), t.b.mutations(), t.h.dns.writes()),
        (writes_a, writes_b, dns)
    );
    t.h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_environment_pruned_in_its_migrations_grace_leaves_both_hosts_and_the_zone() {
    let t = start_two_with(on("a"), true);
    t.on_a().await;
    t.h.handle.set_desired(on("b"));
    t.h.until(10 * SEC, "in its grace period", |_| {
        t.phase() == Some(MigrationPhase::Grace) && t.dns() == Some((B_ADDRESS.into(), 300))
    })
    .await;
    let mut none = (*on("b")).clone();
    none.envs.clear();
    t.h.handle.set_desired(Arc::new(none));
    t.h.until(
        10 * SEC,
        "gone from both hosts, the zone and the store",
        |_| {
            Two::held(&t.a) == (0, 0)
                && Two::held(&t.b) == (0, 0)
                && t.dns().is_none()
                && t.h.store.env(&key()).unwrap().is_none()
        },
    )
    .await;
    t.h.stop().await;
}
