//! Planner tests against the in-memory fake world: every scenario executes plans until convergence
//! and then checks that planning again yields nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::backend::fake::{FakeProber, World, FAKE_GATEWAY};
use crate::model::ownership::LABEL_PROJECT;
use crate::model::writes::Route;
use crate::model::{DesiredEnv, EnvKey, HostRef, Promotion, Release, Slot, SlotState};
use crate::reconcile::{self, Backends, HostBackends, Target};
use crate::store::Store;

pub(crate) fn host() -> HostRef {
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

/// `env("myapp")` is a production environment on host `app` running `app:v1`, auto-promoted.
pub(crate) fn env(project: &str) -> DesiredEnv {
    DesiredEnv {
        key: EnvKey::new(project, "production"),
        host: "app".into(),
        hostname: format!("{project}.example.test"),
        release: Release::new(
            "app:v1",
            None,
            BTreeMap::from([("DATABASE_URL".into(), "postgres://secret".into())]),
            8080,
        ),
        health_path: "/health".into(),
        health_timeout: Duration::from_secs(5),
        promotion: Promotion::Auto,
        grace_period: Duration::from_secs(3600),
        migration_grace: crate::model::DEFAULT_MIGRATION_GRACE,
        env_from: Default::default(),
        data: Default::default(),
    }
}

trait EnvExt {
    fn image(self, image: &str) -> Self;
    fn manual(self) -> Self;
    fn grace(self, d: Duration) -> Self;
}

impl EnvExt for DesiredEnv {
    fn image(mut self, image: &str) -> Self {
        self.release = Release::new(
            image,
            self.release.command.clone(),
            Default::default(),
            self.release.port,
        )
        .with_inline_env(self.release.env.clone())
        .with_env_version(self.release.env_version);
        self
    }
    fn manual(mut self) -> Self {
        self.promotion = Promotion::Manual;
        self
    }
    fn grace(mut self, d: Duration) -> Self {
        self.grace_period = d;
        self
    }
}

pub(crate) fn desired(envs: impl IntoIterator<Item = DesiredEnv>) -> Desired {
    Desired {
        hosts: BTreeMap::from([("app".into(), host())]),
        envs: envs.into_iter().map(|e| (e.key.clone(), e)).collect(),
        ..Default::default()
    }
}

pub(super) struct Fixture {
    world: World,
    store: Store,
    backends: Backends<World, World, World>,
    prober: FakeProber,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture::on(World::new())
    }

    /// A fixture with a store of its own (a fresh state directory) on this world.
    fn on(world: World) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            store: Store::open(dir.path()).unwrap(),
            backends: Backends::hosts(BTreeMap::from([(
                "app".into(),
                HostBackends {
                    runtime: world.clone(),
                    proxy: world.clone(),
                    kernel: world.clone(),
                    publish: Some(std::net::Ipv4Addr::LOCALHOST),
                    owner: None,
                    agent: None,
                },
            )])),
            prober: FakeProber(vec![world.clone()]),
            world,
            _dir: dir,
        }
    }

    async fn apply(&self, d: &Desired) -> reconcile::Outcome {
        reconcile::converge(
            Target {
                desired: d,
                remove: vec![],
                dry_run: false,
            },
            &self.store,
            &self.backends,
            &self.prober,
        )
        .await
        .unwrap()
    }

    /// `myapp` with v1 applied, then v2: green serves v2, blue keeps v1 in its grace period.
    async fn v1_active_v2_in_grace(&self) {
        for image in ["app:v1", "app:v2"] {
            assert!(self
                .apply(&desired([env("myapp").image(image)]))
                .await
                .converged());
        }
    }

    /// Plans against the current fake world and store, as a second apply would.
    async fn replan(&self, d: &Desired) -> Plan {
        let observed = reconcile::observe(&self.backends).await;
        plan(
            d,
            &observed,
            &self.store.load().unwrap(),
            &[],
            reconcile::now_ms(),
        )
    }

    fn record(&self, project: &str) -> crate::model::EnvRecord {
        self.store
            .env(&EnvKey::new(project, "production"))
            .unwrap()
            .unwrap()
    }

    /// Plans `codeb promote` (or `rollback`) against the current world and executes it.
    async fn switch(&self, project: &str, rollback: bool) -> reconcile::Report {
        let rec = self.record(project);
        let observed = reconcile::observe(&self.backends).await;
        let view = observed.hosts["app"].view().unwrap();
        let now = reconcile::now_ms();
        let p = if rollback {
            plan_rollback(&rec, &host(), view, now)
        } else {
            plan_promote(&rec, &host(), view, now)
        }
        .unwrap();
        reconcile::execute(&p, &self.store, &self.backends, &self.prober)
            .await
            .unwrap()
    }

    /// The image answering `project`'s hostname through the fake Caddy and kernel.
    fn serving(&self, project: &str) -> Option<String> {
        self.world.serving(&format!("{project}.example.test"))
    }

    fn route_upstream(&self, id: &str) -> Option<String> {
        self.world
            .state()
            .routes
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.upstream.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_release_is_promoted_when_healthy_even_with_manual_promotion() {
    let f = Fixture::new();
    let d = desired([env("myapp").manual()]);
    let out = f.apply(&d).await;
    assert!(out.converged(), "{:?}", out.failures);
    let rec = f.record("myapp");
    assert_eq!(rec.active, Some(Slot::Blue));
    assert_eq!(rec.blue.state, SlotState::Active);
    assert_eq!(
        f.route_upstream(&rec.key.route_id()),
        Some(format!("{FAKE_GATEWAY}:{}", rec.base_port)),
        "the hostname route dials the environment's service address"
    );
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v1"));
    assert!(f.replan(&d).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_converged_system_gets_no_mutating_call() {
    let f = Fixture::new();
    let d = desired([env("a"), env("b"), env("c").manual()]);
    assert!(f.apply(&d).await.converged());
    let before = f.world.mutations();
    let out = f.apply(&d).await;
    assert!(out.converged());
    assert!(out.executed.is_empty(), "{:?}", out.executed);
    assert_eq!(f.world.mutations(), before);
}

#[tokio::test(start_paused = true)]
async fn the_access_log_follows_a_restarted_server_moves_in_one_write_and_is_removed_once_when_off()
{
    use crate::model::writes::AccessLog;
    let f = Fixture::new();
    let mut d = desired([env("a")]);
    let out = f.apply(&d).await;
    assert!(out.converged());
    assert!(
        out.executed.iter().any(|s| s
            == "host app: write Caddy's access log of server `codeb` to \
                /var/log/caddy/codeb-app.access.log (JSON, rolled at 100 MB, 10 kept)"),
        "{:?}",
        out.executed
    );
    assert_eq!(
        f.world.state().access_log,
        Some(AccessLog::default_for("app"))
    );

    // A Caddy restart loses the server and its `logs`: the server comes first, then the log.
    f.world.state().server = None;
    let observed = reconcile::observe(&f.backends).await;
    let plan = plan(&d, &observed, &f.store.load().unwrap(), &[], 0);
    let host_actions: Vec<&Action> = plan
        .steps
        .iter()
        .filter(|s| s.key.is_none())
        .map(|s| &s.action)
        .collect();
    assert!(
        matches!(
            host_actions[..],
            [
                Action::EnsureServer(_),
                Action::EnsureAccessLog(Some(_)),
                ..
            ]
        ),
        "{host_actions:?}"
    );
    assert!(f.apply(&d).await.converged());

    // Moved by the operator's configuration: one write, then none.
    let moved = AccessLog {
        file: "/srv/log/app.log".into(),
        roll_size_mb: 5,
        roll_keep: 2,
    };
    d.hosts.get_mut("app").unwrap().access_log = Some(moved.clone());
    let before = f.world.mutations();
    assert!(f.apply(&d).await.converged());
    assert_eq!(f.world.mutations(), before + 1);
    assert_eq!(f.world.state().access_log, Some(moved));
    assert!(f.replan(&d).await.is_empty());

    // Off: removed once, then nothing is planned for it.
    d.hosts.get_mut("app").unwrap().access_log = None;
    let out = f.apply(&d).await;
    assert!(out.converged());
    assert_eq!(
        out.executed,
        ["host app: remove codeb's Caddy access log"],
        "{:?}",
        out.executed
    );
    assert_eq!(f.world.state().access_log, None);
    assert!(f.replan(&d).await.is_empty());
}

#[test]
fn the_access_log_diff_writes_only_what_differs() {
    use crate::model::observed::ObservedAccessLog::{Absent, Is, Other};
    use crate::model::writes::AccessLog;
    let a = AccessLog::default_for("app");
    let b = AccessLog {
        roll_keep: 3,
        ..a.clone()
    };
    assert_eq!(access_log_diff(&Is(a.clone()), Some(&a)), None);
    assert_eq!(access_log_diff(&Absent, None), None);
    assert_eq!(
        access_log_diff(&Is(b.clone()), Some(&a)),
        Some(Some(a.clone()))
    );
    assert_eq!(access_log_diff(&Absent, Some(&a)), Some(Some(a.clone())));
    assert_eq!(access_log_diff(&Other, Some(&a)), Some(Some(a.clone())));
    assert_eq!(access_log_diff(&Is(b), None), Some(None));
    assert_eq!(access_log_diff(&Other, None), Some(None));
}

#[tokio::test(start_paused = true)]
async fn a_new_release_goes_to_the_idle_slot_and_waits_for_manual_promotion() {
    let f = Fixture::new();
    f.apply(&desired([env("myapp").manual()])).await;
    let d2 = desired([env("myapp").manual().image("app:v2")]);
    let out = f.apply(&d2).await;
    assert!(out.converged());
    let rec = f.record("myapp");
    assert_eq!(
        rec.active,
        Some(Slot::Blue),
        "manual promotion must not switch"
    );
    assert_eq!(rec.green.state, SlotState::Deployed);
    assert!(out.notes.iter().any(|n| matches!(
        n,
        Note::AwaitingPromotion {
            slot: Slot::Green,
            ..
        }
    )));
    // Its preview route exists; the hostname still goes to blue.
    assert_eq!(
        f.route_upstream(&rec.key.preview_route_id(Slot::Green)),
        Some(format!("127.0.0.1:{}", rec.base_port + 1))
    );
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v1"));
    assert!(f.replan(&d2).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn promote_switches_and_the_previous_slot_enters_grace() {
    let f = Fixture::new();
    f.apply(&desired([env("myapp").manual()])).await;
    let d2 = desired([env("myapp").manual().image("app:v2")]);
    f.apply(&d2).await;
    let report = f.switch("myapp", false).await;
    assert!(report.failures.is_empty());
    let rec = f.record("myapp");
    assert_eq!(rec.active, Some(Slot::Green));
    assert_eq!(rec.blue.state, SlotState::Grace);
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v2"));
    assert!(f.replan(&d2).await.is_empty());
}

/// Issue 13, finding 10: the tenant isolation is a host step planned from what is observed, before
/// any container is created; a converged host does not write it again; removed by someone else,
/// it is put back by the next apply, and nothing else is written.
#[tokio::test(start_paused = true)]
async fn the_tenant_isolation_comes_before_the_first_container_and_back_when_removed() {
    let f = Fixture::new();
    let d = desired([env("myapp")]);
    let first = f.replan(&d).await;
    let isolate = first
        .steps
        .iter()
        .position(|s| matches!(s.action, Action::Isolate))
        .expect("an isolation step");
    let deploy = first
        .steps
        .iter()
        .position(|s| matches!(s.action, Action::Deploy { .. }))
        .expect("a deploy");
    assert!(isolate < deploy, "{:?}", first.steps);
    assert!(first.steps[isolate].key.is_none(), "a host step");
    assert!(f.apply(&d).await.converged());
    assert!(f.world.state().isolated);
    assert!(f.replan(&d).await.is_empty());

    f.world.state().isolated = false;
    let again = f.replan(&d).await;
    assert_eq!(again.steps.len(), 1, "{:?}", again.steps);
    assert!(matches!(again.steps[0].action, Action::Isolate));
    assert!(f.apply(&d).await.converged());
    assert!(f.world.state().isolated);
}

/// Every container codeb creates carries its tenant MAC (what the isolation recognises), a
/// function of its name and release.
#[tokio::test(start_paused = true)]
async fn every_container_codeb_creates_carries_its_tenant_mac() {
    let f = Fixture::new();
    f.apply(&desired([env("myapp")])).await;
    let blue_mac = |s: &crate::backend::fake::State| {
        s.containers
            .values()
            .find(|(c, _)| c.name == "myapp-production-blue")
            .and_then(|(_, spec)| spec.mac.clone())
    };
    let first = {
        let s = f.world.state();
        assert!(!s.containers.is_empty());
        for (_, spec) in s.containers.values() {
            let release = &spec.labels[crate::model::ownership::LABEL_RELEASE];
            assert_eq!(
                spec.mac.as_deref(),
                Some(crate::model::ownership::tenant_mac(&spec.name, release).as_str())
            );
        }
        blue_mac(&s)
    };
    // A new release starts beside the one it replaces, under the same name (that one renamed
    // aside, running until the switch): never with its MAC.
    f.apply(&desired([env("myapp").image("app:v2")])).await;
    f.apply(&desired([env("myapp").image("app:v3")])).await;
    let again = blue_mac(&f.world.state());
    assert!(first.is_some() && again.is_some());
    assert_ne!(first, again);
}

#[tokio::test(start_paused = true)]
async fn promote_and_rollback_write_one_rule_and_never_a_route() {
    let f = Fixture::new();
    f.apply(&desired([env("myapp").manual()])).await;
    f.apply(&desired([env("myapp").manual().image("app:v2")]))
        .await;
    let routes_before = f.world.state().routes.clone();
    for (rollback, image) in [(false, "app:v2"), (true, "app:v1"), (true, "app:v2")] {
        let (r0, k0) = {
            let s = f.world.state();
            (s.route_writes, s.kernel_writes)
        };
        let report = f.switch("myapp", rollback).await;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let s = f.world.state();
        assert_eq!(s.route_writes, r0, "{:?}", report.executed);
        assert_eq!(s.kernel_writes, k0 + 1, "{:?}", report.executed);
        drop(s);
        assert_eq!(f.serving("myapp").as_deref(), Some(image));
    }
    assert_eq!(f.world.state().routes, routes_before);
}

#[tokio::test(start_paused = true)]
async fn without_kernel_management_promote_moves_the_hostname_route() {
    let f = Fixture::new();
    f.world.state().kernel_unsupported = Some("not root".into());
    f.apply(&desired([env("myapp").manual()])).await;
    let d2 = desired([env("myapp").manual().image("app:v2")]);
    f.apply(&d2).await;
    let rec = f.record("myapp");
    assert_eq!(
        f.route_upstream(&rec.key.route_id()),
        Some(format!("127.0.0.1:{}", rec.base_port))
    );
    let report = f.switch("myapp", false).await;
    assert!(report.failures.is_empty());
    assert_eq!(
        f.route_upstream(&rec.key.route_id()),
        Some(format!("127.0.0.1:{}", rec.base_port + 1))
    );
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v2"));
    assert_eq!(f.world.state().kernel_writes, 0);
    assert_eq!(
        f.store.switch_modes().unwrap()["app"],
        (
            crate::model::SwitchMode::CaddyAdmin,
            Some("not root".into())
        )
    );
    assert!(f.replan(&d2).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn auto_promotion_keeps_the_previous_slot_until_its_grace_period_ends() {
    let f = Fixture::new();
    f.apply(&desired([env("myapp").grace(Duration::from_secs(3600))]))
        .await;
    f.apply(&desired([env("myapp")
        .image("app:v2")
        .grace(Duration::from_secs(3600))]))
        .await;
    let rec = f.record("myapp");
    assert_eq!(rec.active, Some(Slot::Green));
    assert_eq!(rec.blue.state, SlotState::Grace);
    assert_eq!(f.world.state().containers.len(), 2);
    // With a zero grace period the next apply retires blue, after its preview route is gone.
    let d0 = desired([env("myapp").image("app:v2").grace(Duration::ZERO)]);
    let out = f.apply(&d0).await;
    let route_at = out
        .executed
        .iter()
        .position(|s| s.contains("delete route"))
        .unwrap();
    let retire_at = out
        .executed
        .iter()
        .position(|s| s.contains("retire blue"))
        .unwrap();
    assert!(route_at < retire_at, "{:?}", out.executed);
    assert_eq!(f.record("myapp").blue.state, SlotState::Empty);
    assert_eq!(f.world.state().containers.len(), 1);
    assert!(f.replan(&d0).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_release_fails_and_the_active_slot_keeps_serving() {
    let f = Fixture::new();
    f.apply(&desired([env("myapp")])).await;
    let bad = desired([env("myapp").image("app:unhealthy")]);
    let out = f.apply(&bad).await;
    assert!(!out.converged());
    let rec = f.record("myapp");
    assert_eq!(rec.active, Some(Slot::Blue));
    assert_eq!(rec.green.state, SlotState::Failed);
    assert!(!rec.green.log_tail.is_empty());
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v1"));
    // Kept, stopped, and not redeployed by the next apply.
    let again = f.apply(&bad).await;
    assert!(again.executed.is_empty(), "{:?}", again.executed);
    assert!(again.notes.iter().any(|n| matches!(n, Note::Failed { .. })));
    let state = f.world.state();
    assert!(state
        .containers
        .values()
        .any(|(c, _)| c.name == "myapp-production-green" && !c.running));
}

#[tokio::test(start_paused = true)]
async fn a_switchs_probe_started_ahead_is_the_url_its_plan_probes() {
    let f = Fixture::new();
    f.apply(&desired([env("myapp").manual()])).await;
    f.apply(&desired([env("myapp").manual().image("app:v2")]))
        .await;
    let rec = f.record("myapp");
    let observed = reconcile::observe(&f.backends).await;
    let view = observed.hosts["app"].view().unwrap();
    assert!(view.kernel.published(&host()).is_some());
    let switch_url = |p: &Plan| {
        p.steps.iter().find_map(|s| match &s.action {
            Action::Switch { url, .. } => Some(url.clone()),
            _ => None,
        })
    };
    let p = plan_promote(&rec, &host(), view, reconcile::now_ms()).unwrap();
    let ahead = crate::plan::probe_ahead(&rec, view.containers, false);
    assert!(ahead.is_some());
    assert_eq!(ahead, switch_url(&p));
    // Nothing in grace yet: no rollback, so nothing to probe ahead.
    assert_eq!(crate::plan::probe_ahead(&rec, view.containers, true), None);
    // Without its container, nothing is probed ahead (the plan then refuses the switch).
    assert_eq!(crate::plan::probe_ahead(&rec, &[], false), None);
}

#[tokio::test(start_paused = true)]
async fn a_rollback_holds_until_the_manifests_name_another_release() {
    let f = Fixture::new();
    f.apply(&desired([env("myapp")])).await;
    let d2 = desired([env("myapp").image("app:v2")]);
    f.apply(&d2).await;
    let rec = f.record("myapp");
    let observed = reconcile::observe(&f.backends).await;
    let view = observed.hosts["app"].view().unwrap();
    let before = f.world.state().containers.len();
    let p = plan_rollback(&rec, &host(), view, reconcile::now_ms()).unwrap();
    assert!(p.steps.iter().all(|s| !matches!(
        s.action,
        Action::Deploy { .. } | Action::Recreate { .. } | Action::Start { .. }
    )));
    reconcile::execute(&p, &f.store, &f.backends, &f.prober)
        .await
        .unwrap();
    assert_eq!(f.record("myapp").active, Some(Slot::Blue));
    assert_eq!(f.world.state().containers.len(), before);
    // The same manifests again: nothing moves.
    let out = f.apply(&d2).await;
    assert!(out.executed.is_empty(), "{:?}", out.executed);
    assert_eq!(f.record("myapp").active, Some(Slot::Blue));
    // A new release goes out as usual.
    f.apply(&desired([env("myapp").image("app:v3")])).await;
    let rec = f.record("myapp");
    assert_eq!(rec.active, Some(Slot::Green));
    assert_eq!(rec.green.release.unwrap().image, "app:v3");
}

#[tokio::test(start_paused = true)]
async fn drift_is_repaired_and_foreign_objects_are_never_touched() {
    let f = Fixture::new();
    {
        let mut s = f.world.state();
        s.routes.push(Route {
            id: "theirs".into(),
            hosts: vec!["x.test".into()],
            upstream: "127.0.0.1:9".into(),
            keep_alive: true,
        });
    }
    let foreign = crate::model::writes::ContainerSpec {
        name: "not-ours".into(),
        image: "x".into(),
        command: None,
        env: Default::default(),
        env_source: Default::default(),
        labels: BTreeMap::new(),
        container_port: 1,
        host_ip: "127.0.0.1".into(),
        host_port: 9,
        publish: true,
        network: "other".into(),
        mac: None,
        confinement: Default::default(),
        stop_timeout_secs: 10,
    };
    use crate::backend::Runtime;
    f.world.create(&foreign).await.unwrap();
    let d = desired([env("myapp")]);
    f.apply(&d).await;
    let rec = f.record("myapp");
    // Remove the active container and the hostname route by hand, and "restart Caddy".
    {
        let mut s = f.world.state();
        s.containers
            .retain(|_, (c, _)| c.name != "myapp-production-blue");
        s.server = None;
        s.routes.retain(|r| r.id != rec.key.route_id());
    }
    let out = f.apply(&d).await;
    assert!(out.converged());
    let s = f.world.state();
    assert!(s
        .containers
        .values()
        .any(|(c, _)| c.name == "myapp-production-blue" && c.running));
    assert!(s.server.is_some());
    assert!(s.routes.iter().any(|r| r.id == rec.key.route_id()));
    assert!(s.routes.iter().any(|r| r.id == "theirs"));
    assert!(s
        .containers
        .values()
        .any(|(c, _)| c.name == "not-ours" && !c.labels.contains_key(LABEL_PROJECT)));
}

#[tokio::test(start_paused = true)]
async fn a_deleted_project_loses_its_containers_routes_and_record() {
    let f = Fixture::new();
    let d = desired([env("a"), env("b")]);
    f.apply(&d).await;
    let observed = reconcile::observe(&f.backends).await;
    let p = plan_delete(
        &[EnvKey::new("a", "production")],
        &observed,
        &f.store.load().unwrap(),
    );
    reconcile::execute(&p, &f.store, &f.backends, &f.prober)
        .await
        .unwrap();
    let s = f.world.state();
    assert!(s
        .containers
        .values()
        .all(|(c, _)| !c.name.starts_with("a-")));
    assert!(s.routes.iter().all(|r| !r.id.starts_with("codeb-a_")));
    assert!(s.routes.iter().any(|r| r.id.starts_with("codeb-b_")));
    drop(s);
    assert!(f
        .store
        .env(&EnvKey::new("a", "production"))
        .unwrap()
        .is_none());
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_host_is_reported_and_nothing_is_planned_for_it() {
    let f = Fixture::new();
    f.world.state().podman_down = true;
    let out = f.apply(&desired([env("myapp")])).await;
    assert!(!out.converged());
    assert!(out
        .notes
        .iter()
        .any(|n| matches!(n, Note::Unreachable { .. })));
    assert_eq!(f.world.mutations(), 0);
}

#[test]
fn a_host_without_an_owner_mark_is_marked_before_anything_else_and_a_marked_one_is_not() {
    use crate::model::observed::OwnerMark;
    let d = desired([env("myapp")]);
    let observed = |owner| Observed {
        hosts: BTreeMap::from([(
            "app".into(),
            HostObservation::Reachable {
                containers: vec![],
                proxy: Default::default(),
                kernel: KernelObservation::Unavailable {
                    reason: "test".into(),
                    leftover: None,
                },
                owner,
            },
        )]),
        ..Default::default()
    };
    let p = plan(
        &d,
        &observed(OwnerMark::Absent),
        &Default::default(),
        &[],
        0,
    );
    let first_host_step = p.steps.iter().position(|s| s.host == "app").unwrap();
    assert_eq!(p.steps[first_host_step].action, Action::MarkHost, "{p}");
    assert_eq!(
        p.steps
            .iter()
            .filter(|s| s.action == Action::MarkHost)
            .count(),
        1
    );
    assert!(p.steps.len() > 1, "the rest of the plan follows: {p}");
    for owner in [OwnerMark::Mine, OwnerMark::Unchecked] {
        let p = plan(&d, &observed(owner), &Default::default(), &[], 0);
        assert!(
            p.steps.iter().all(|s| s.action != Action::MarkHost),
            "{owner:?}: {p}"
        );
    }
}

#[test]
fn two_new_environments_never_share_a_port_pair() {
    let d = desired([env("ab"), env("ba")]); // same character sum: same preferred base
    let observed = Observed {
        hosts: BTreeMap::from([(
            "app".into(),
            HostObservation::Reachable {
                containers: vec![],
                proxy: Default::default(),
                kernel: KernelObservation::Unavailable {
                    reason: "test".into(),
                    leftover: None,
                },
                owner: Default::default(),
            },
        )]),
        ..Default::default()
    };
    let p = plan(&d, &observed, &Default::default(), &[], 0);
    let bases: Vec<u16> = p
        .steps
        .iter()
        .filter_map(|s| {
            if let Action::Register(r) = &s.action {
                Some(r.base_port)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(bases.len(), 2);
    assert!(bases[0].abs_diff(bases[1]) >= 2, "{bases:?}");
}

#[test]
fn the_printed_plan_never_shows_an_env_value() {
    let d = desired([env("myapp")]);
    let observed = Observed {
        hosts: BTreeMap::from([(
            "app".into(),
            HostObservation::Reachable {
                containers: vec![],
                proxy: Default::default(),
                kernel: KernelObservation::Unavailable {
                    reason: "test".into(),
                    leftover: None,
                },
                owner: Default::default(),
            },
        )]),
        ..Default::default()
    };
    let text = plan(&d, &observed, &Default::default(), &[], 0).to_string();
    assert!(text.contains("deploy app:v1 into blue"), "{text}");
    assert!(!text.contains("postgres://secret"), "{text}");
}

/// The NAT rule of `project`'s service address: its one target, or a description of the fault.
fn nat_target(f: &Fixture, project: &str) -> Result<std::net::SocketAddrV4, String> {
    let base = f.record(project).base_port;
    let s = f.world.state();
    let service = s.nat.services.get(&base).ok_or("no service address")?;
    match service.rules.as_slice() {
        [crate::model::observed::ServiceRule::Dnat(t)] if service.dispatch == 1 => Ok(t.to),
        other => Err(format!(
            "{} dispatch rules, rules {other:?}",
            service.dispatch
        )),
    }
}

/// `plan` writes `n` kernel rules (service addresses or published ports) and does nothing else.
fn assert_rule_writes_only(plan: &Plan, n: usize) {
    assert!(
        plan.steps
            .iter()
            .all(|s| matches!(s.action, Action::SetService(_))),
        "{plan}"
    );
    assert_eq!(plan.steps.len(), n, "{plan}");
}

/// Plans a rollback or a promote of `project` against the fixture's current state.
pub(super) async fn switch_with(
    f: &Fixture,
    project: &str,
    rollback: bool,
) -> Result<Plan, SwitchError> {
    let rec = f.record(project);
    let observed = reconcile::observe(&f.backends).await;
    let view = observed.hosts["app"].view().unwrap();
    let now = reconcile::now_ms();
    if rollback {
        plan_rollback(&rec, &host(), view, now)
    } else {
        plan_promote(&rec, &host(), view, now)
    }
}

#[tokio::test(start_paused = true)]
async fn a_zero_grace_period_retires_the_old_slot_only_after_its_requests_finish() {
    let f = Fixture::new();
    let d0 = |image: &str| desired([env("myapp").image(image).grace(Duration::ZERO)]);
    f.apply(&d0("app:v1")).await;
    let blue = nat_target(&f, "myapp").unwrap();
    // A request stays open on blue for the whole drain period.
    f.world.state().open.insert(blue, 1);
    let started = tokio::time::Instant::now();
    let out = f.apply(&d0("app:v2")).await;
    assert!(out.converged(), "{:?}", out.failures);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(DRAIN_MS - 1_000),
        "retired after {waited:?}"
    );
    let retire = out.executed.iter().position(|s| s.contains("retire blue"));
    let switch = out
        .executed
        .iter()
        .position(|s| s.contains("service address"));
    assert!(switch < retire && retire.is_some(), "{:?}", out.executed);
    assert!(out.executed[retire.unwrap()].contains("in flight"));
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v2"));

    // With nothing open, the same retire happens at once.
    let green = nat_target(&f, "myapp").unwrap();
    f.world.state().open.insert(green, 0);
    let started = tokio::time::Instant::now();
    f.apply(&d0("app:v3")).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v3"));
}

#[tokio::test(start_paused = true)]
async fn nat_rules_changed_or_removed_by_hand_are_repaired_by_the_next_apply() {
    let f = Fixture::new();
    let d = desired([env("a"), env("b")]);
    f.apply(&d).await;
    let a = nat_target(&f, "a").unwrap();
    let (base_a, base_b) = (f.record("a").base_port, f.record("b").base_port);
    {
        let mut s = f.world.state();
        // a: a second target added by hand; b: its chain removed; the hook gone.
        let sa = s.nat.services.get_mut(&base_a).unwrap();
        let mut extra = sa.rules[0].clone();
        if let crate::model::observed::ServiceRule::Dnat(t) = &mut extra {
            t.to.set_port(9);
        }
        sa.rules.push(extra);
        s.nat.services.remove(&base_b);
        s.nat.hooks = 0;
    }
    assert!(f.world.serving("a.example.test").is_none());
    let out = f.apply(&d).await;
    assert!(out.converged(), "{:?}", out.failures);
    assert_eq!(nat_target(&f, "a"), Ok(a));
    assert!(nat_target(&f, "b").is_ok());
    assert_eq!(f.serving("a").as_deref(), Some("app:v1"));
    assert_eq!(f.serving("b").as_deref(), Some("app:v1"));
    assert!(f.replan(&d).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_switch_recorded_but_not_applied_is_finished_by_the_next_apply() {
    let f = Fixture::new();
    f.apply(&desired([env("myapp").manual()])).await;
    let d2 = desired([env("myapp").manual().image("app:v2")]);
    f.apply(&d2).await;
    // As after a kill between the record's write and the kernel's: execute the Switch step only.
    let rec = f.record("myapp");
    let observed = reconcile::observe(&f.backends).await;
    let view = observed.hosts["app"].view().unwrap();
    let mut p = plan_promote(&rec, &host(), view, reconcile::now_ms()).unwrap();
    p.steps.truncate(1);
    reconcile::execute(&p, &f.store, &f.backends, &f.prober)
        .await
        .unwrap();
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v1"));
    assert_rule_writes_only(&f.replan(&d2).await, 1);
    f.apply(&d2).await;
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v2"));
}

#[tokio::test(start_paused = true)]
async fn deleting_a_project_removes_its_service_address_and_no_other() {
    let f = Fixture::new();
    f.apply(&desired([env("a"), env("b")])).await;
    let base_a = f.record("a").base_port;
    let b = nat_target(&f, "b").unwrap();
    let observed = reconcile::observe(&f.backends).await;
    let p = plan_delete(
        &[EnvKey::new("a", "production")],
        &observed,
        &f.store.load().unwrap(),
    );
    let route = p
        .steps
        .iter()
        .position(|s| matches!(s.action, Action::DeleteRoute { .. }));
    let rule = p
        .steps
        .iter()
        .position(|s| matches!(&s.action, Action::SetService(w) if w.target.is_none()));
    assert!(route < rule && route.is_some(), "{p}");
    reconcile::execute(&p, &f.store, &f.backends, &f.prober)
        .await
        .unwrap();
    assert!(!f.world.state().nat.services.contains_key(&base_a));
    assert_eq!(nat_target(&f, "b"), Ok(b));
}

#[tokio::test(start_paused = true)]
async fn a_promote_to_a_slot_whose_container_is_gone_is_refused_in_kernel_mode() {
    let f = Fixture::new();
    f.apply(&desired([env("myapp").manual()])).await;
    f.apply(&desired([env("myapp").manual().image("app:v2")]))
        .await;
    f.world
        .state()
        .containers
        .retain(|_, (c, _)| c.name != "myapp-production-green");
    let rec = f.record("myapp");
    let observed = reconcile::observe(&f.backends).await;
    let view = observed.hosts["app"].view().unwrap();
    assert!(matches!(
        plan_promote(&rec, &host(), view, 0),
        Err(SwitchError::NotRunning {
            slot: Slot::Green,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn promote_after_a_rollback_rolls_forward_but_never_to_an_older_release() {
    let f = Fixture::new();
    f.apply(&desired([env("myapp").manual()])).await;
    let d2 = desired([env("myapp").manual().image("app:v2")]);
    f.apply(&d2).await;
    let p = switch_with(&f, "myapp", false).await.unwrap();
    reconcile::execute(&p, &f.store, &f.backends, &f.prober)
        .await
        .unwrap();
    assert_eq!(f.record("myapp").active, Some(Slot::Green));
    // v1 is in grace now: promoting it would be a rollback, so promote refuses.
    assert!(matches!(
        switch_with(&f, "myapp", false).await,
        Err(SwitchError::NothingToPromote { .. })
    ));
    let p = switch_with(&f, "myapp", true).await.unwrap();
    reconcile::execute(&p, &f.store, &f.backends, &f.prober)
        .await
        .unwrap();
    assert_eq!(f.record("myapp").active, Some(Slot::Blue));
    // After the rollback, promote rolls forward to v2 again and clears the hold.
    let p = switch_with(&f, "myapp", false).await.unwrap();
    reconcile::execute(&p, &f.store, &f.backends, &f.prober)
        .await
        .unwrap();
    let rec = f.record("myapp");
    assert_eq!(rec.active, Some(Slot::Green));
    assert_eq!(rec.held, None);
    assert!(f.replan(&d2).await.is_empty());
}

mod properties {
    //! Random sequences of user actions and drift against the fake world: the invariants hold after
    //! every one of them.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Apply `app:v{n}` (n == 0: a release that never gets healthy).
        Apply {
            n: u8,
            manual: bool,
            zero_grace: bool,
        },
        Promote,
        Rollback,
        RemoveContainer(bool),
        DeleteRoutes,
        RestartCaddy,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4, any::<bool>(), any::<bool>()).prop_map(|(n, manual, zero_grace)| Op::Apply { n, manual, zero_grace }),
            2 => Just(Op::Promote),
            2 => Just(Op::Rollback),
            1 => any::<bool>().prop_map(Op::RemoveContainer),
            1 => Just(Op::DeleteRoutes),
            1 => Just(Op::RestartCaddy),
        ]
    }

    fn desired_for(n: u8, manual: bool, zero_grace: bool) -> Desired {
        let image = if n == 0 {
            "app:unhealthy".to_string()
        } else {
            format!("app:v{n}")
        };
        let mut e = env("p").image(&image).grace(if zero_grace {
            Duration::ZERO
        } else {
            Duration::from_secs(3600)
        });
        e.health_timeout = Duration::from_millis(300);
        if manual {
            e = e.manual();
        }
        desired([e])
    }

    /// At most one active slot, the record's `active` is it, and the hostname route (if any) leads
    /// to the active slot, which runs a healthy container.
    fn check(f: &Fixture, context: &str) {
        let Some(rec) = f.store.env(&EnvKey::new("p", "production")).unwrap() else {
            return;
        };
        let actives: Vec<Slot> = Slot::ALL
            .into_iter()
            .filter(|s| rec.slot(*s).state == SlotState::Active)
            .collect();
        assert!(actives.len() <= 1, "{context}: two active slots: {rec:?}");
        assert_eq!(actives.first().copied(), rec.active, "{context}: {rec:?}");
        if let Some(up) = f.route_upstream(&rec.key.route_id()) {
            let a = rec
                .active
                .expect("a hostname route exists only for an active slot");
            // Kernel mode: the route dials the service address, whose one NAT rule leads to the
            // active slot's container.
            assert_eq!(
                up,
                format!("{FAKE_GATEWAY}:{}", rec.base_port),
                "{context}: the hostname route dials the service address"
            );
            let to = nat_target(f, "p").unwrap_or_else(|e| panic!("{context}: {e}"));
            let s = f.world.state();
            let (c, spec) = s
                .containers
                .values()
                .find(|(c, _)| c.running && c.ip == Some(*to.ip()))
                .unwrap_or_else(|| panic!("{context}: the service address leads nowhere"));
            assert_eq!(
                c.name,
                rec.key.container_name(a),
                "{context}: the hostname routes to the active slot"
            );
            assert!(
                !spec.image.contains("unhealthy"),
                "{context}: the hostname routes to a slot that is not healthy"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn the_hostname_only_ever_routes_to_one_healthy_active_slot(ops in proptest::collection::vec(op(), 1..12)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
            rt.block_on(async {
                let f = Fixture::new();
                let mut last = desired_for(1, false, false);
                f.apply(&last).await;
                for (i, op) in ops.iter().enumerate() {
                    let context = format!("after op {i} {op:?} of {ops:?}");
                    match op {
                        Op::Apply { n, manual, zero_grace } => {
                            last = desired_for(*n, *manual, *zero_grace);
                            let out = f.apply(&last).await;
                            let again = f.replan(&last).await;
                            assert!(again.is_empty(), "{context}: not converged: {again}\n{:?}", out.failures);
                        }
                        Op::Promote | Op::Rollback => {
                            if let Ok(p) = switch_with(&f, "p", matches!(op, Op::Rollback)).await {
                                reconcile::execute(&p, &f.store, &f.backends, &f.prober).await.unwrap();
                            }
                        }
                        Op::RemoveContainer(blue) => {
                            let name = format!("p-production-{}", if *blue { "blue" } else { "green" });
                            f.world.state().containers.retain(|_, (c, _)| c.name != name);
                            // Drift: the route may now dial nothing; the next apply repairs it.
                            f.apply(&last).await;
                        }
                        Op::DeleteRoutes => {
                            f.world.state().routes.clear();
                            f.apply(&last).await;
                        }
                        Op::RestartCaddy => {
                            {
                                let mut s = f.world.state();
                                s.routes.clear();
                                s.server = None;
                            }
                            f.apply(&last).await;
                        }
                    }
                    check(&f, &context);
                }
            });
        }
    }
}

mod kernel_properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Apply(u8),
        Promote,
        Rollback,
        /// Drift: the service chain flushed by hand.
        FlushRule,
        /// Drift: the active container removed by hand.
        KillActive,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..4).prop_map(Op::Apply),
            Just(Op::Promote),
            Just(Op::Rollback),
            Just(Op::FlushRule),
            Just(Op::KillActive),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// After every apply, and after every promote or rollback that succeeds, the service
        /// address leads to exactly one target, the active slot's container, and the hostname is
        /// served by the active slot's release.
        #[test]
        fn the_service_address_always_leads_to_the_active_slot_and_only_there(
            ops in proptest::collection::vec(op(), 1..12)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let f = Fixture::new();
                f.apply(&desired([env("p").manual()])).await;
                for op in ops {
                    let check = match op {
                        Op::Apply(v) => {
                            let image = format!("app:v{v}");
                            f.apply(&desired([env("p").manual().image(&image)])).await;
                            true
                        }
                        Op::Promote | Op::Rollback => {
                            let rec = f.record("p");
                            let observed = reconcile::observe(&f.backends).await;
                            let view = observed.hosts["app"].view().unwrap();
                            let now = reconcile::now_ms();
                            let p = if matches!(op, Op::Rollback) {
                                plan_rollback(&rec, &host(), view, now)
                            } else {
                                plan_promote(&rec, &host(), view, now)
                            };
                            // The probe a warm switch starts ahead is the one its plan asks for.
                            let ahead = crate::plan::probe_ahead(
                                &rec,
                                view.containers,
                                matches!(op, Op::Rollback),
                            );
                            if let (Ok(p), Some(_)) = (&p, view.kernel.published(&host())) {
                                let url = p.steps.iter().find_map(|s| match &s.action {
                                    Action::Switch { url, .. } => Some(url.clone()),
                                    _ => None,
                                });
                                assert_eq!(ahead, url, "{rec:?}");
                            }
                            match p {
                                Ok(p) => {
                                    let r = reconcile::execute(&p, &f.store, &f.backends, &f.prober)
                                        .await
                                        .unwrap();
                                    r.failures.is_empty()
                                }
                                Err(_) => false,
                            }
                        }
                        Op::FlushRule => {
                            let base = f.record("p").base_port;
                            if let Some(s) = f.world.state().nat.services.get_mut(&base) {
                                s.rules.clear();
                            }
                            false
                        }
                        Op::KillActive => {
                            let active = f.record("p").active.unwrap();
                            let name = EnvKey::new("p", "production").container_name(active);
                            f.world.state().containers.retain(|_, (c, _)| c.name != name);
                            false
                        }
                    };
                    if !check {
                        continue;
                    }
                    let rec = f.record("p");
                    let active = rec.active.expect("an active slot");
                    let want = rec.slot(active).release.as_ref().unwrap().image.clone();
                    let to = nat_target(&f, "p").map_err(TestCaseError::fail)?;
                    let s = f.world.state();
                    let c = s
                        .containers
                        .values()
                        .find(|(c, _)| c.ip == Some(*to.ip()))
                        .map(|(c, _)| c.name.clone());
                    drop(s);
                    prop_assert_eq!(c, Some(rec.key.container_name(active)));
                    prop_assert_eq!(f.serving("p"), Some(want));
                }
                Ok(())
            })?;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_promote_restores_a_lost_hook_before_it_writes_the_rule() {
    let f = Fixture::new();
    f.apply(&desired([env("myapp").manual()])).await;
    f.apply(&desired([env("myapp").manual().image("app:v2")]))
        .await;
    {
        // As after a firewall reload that dropped codeb's chains.
        let mut s = f.world.state();
        s.nat = Default::default();
    }
    let report = f.switch("myapp", false).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.executed[0].contains("hook"), "{:?}", report.executed);
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v2"));
}

#[tokio::test(start_paused = true)]
async fn a_release_starts_beside_the_container_it_replaces_which_goes_after_the_switch() {
    let f = Fixture::new();
    f.v1_active_v2_in_grace().await;
    // Blue is in grace with v1; v3 goes into blue.
    let old_blue = f
        .world
        .state()
        .containers
        .values()
        .find(|(c, _)| c.name == "myapp-production-blue")
        .map(|(c, _)| c.id.clone())
        .unwrap();
    let d = desired([env("myapp").image("app:v3")]);
    let out = f.apply(&d).await;
    assert!(out.converged(), "{:?}", out.failures);
    let at = |what: &str| {
        out.executed
            .iter()
            .position(|s| s.contains(what))
            .unwrap_or_else(|| panic!("no step {what:?}: {:#?}", out.executed))
    };
    // Renamed, not removed, before the new container starts; removed only after the switch.
    assert!(out.executed[at("deploy app:v3")].contains("beside its container"));
    assert!(at("deploy app:v3") < at("promote: switch traffic to blue"));
    assert!(at("published port 127.0.0.1") < at("remove container myapp-production-blue-replaced"));
    assert!(at("promote: switch traffic to blue") < at("remove container"));
    assert!(!f.world.state().containers.contains_key(&old_blue));
    // Podman publishes nothing; the slot ports lead to each slot's own release.
    let rec = f.record("myapp");
    assert!(f
        .world
        .state()
        .containers
        .values()
        .all(|(c, spec)| !spec.publish && c.host_port.is_none()));
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v3"));
    for (slot, image) in [(Slot::Blue, "app:v3"), (Slot::Green, "app:v2")] {
        let url = format!("http://127.0.0.1:{}/health", slot.port(rec.base_port));
        assert!(f.world.healthy_at(&url), "{slot} on {url}");
        let s = f.world.state();
        let rule = &s.published.services[&slot.port(rec.base_port)];
        let crate::model::observed::ServiceRule::Dnat(t) = &rule.rules[0] else {
            panic!("{rule:?}")
        };
        let behind = s
            .containers
            .values()
            .find(|(c, _)| c.ip == Some(*t.to.ip()));
        assert_eq!(behind.map(|(_, spec)| spec.image.as_str()), Some(image));
    }
    assert!(f.replan(&d).await.is_empty());
}

/// Finding 9 of issue 13: Podman gives a restarted container a new address.
#[tokio::test(start_paused = true)]
async fn a_restarted_container_on_a_new_address_gets_its_rules_repointed_and_nothing_else() {
    let f = Fixture::new();
    f.v1_active_v2_in_grace().await;
    let d = desired([env("myapp").image("app:v2")]);
    let before = nat_target(&f, "myapp").unwrap();
    // Both slots restart (green active with v2, blue in its grace period with v1).
    f.world.restart("myapp-production-green");
    f.world.restart("myapp-production-blue");
    assert_eq!(
        f.serving("myapp"),
        None,
        "the rule leads to the old address"
    );
    // The service address and both published ports, and nothing else: no start, no deploy, no
    // route (a Caddy reload).
    assert_rule_writes_only(&f.replan(&d).await, 3);
    let routes = f.world.state().route_writes;
    let out = f.apply(&d).await;
    assert!(out.converged(), "{:?}", out.failures);
    assert_eq!(f.world.state().route_writes, routes);
    let after = nat_target(&f, "myapp").unwrap();
    assert_ne!(after.ip(), before.ip());
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v2"));
    let rec = f.record("myapp");
    for slot in Slot::ALL {
        let url = format!("http://127.0.0.1:{}/health", slot.port(rec.base_port));
        assert!(f.world.healthy_at(&url), "{slot} on {url}");
    }
    assert!(f.replan(&d).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_release_beside_a_healthy_old_container_is_judged_by_its_own_health() {
    let f = Fixture::new();
    f.v1_active_v2_in_grace().await;
    // Blue's slot port still leads to the healthy v1 container while the unhealthy release
    // starts beside it: the probe must go to the new container, which never answers.
    let out = f
        .apply(&desired([env("myapp").image("app:unhealthy-v3")]))
        .await;
    assert!(!out.converged());
    let rec = f.record("myapp");
    assert_eq!(rec.blue.state, SlotState::Failed);
    assert_eq!(rec.active, Some(Slot::Green));
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v2"));
}

#[tokio::test(start_paused = true)]
async fn a_plan_made_on_threads_is_the_plan_one_thread_makes() {
    let f = Fixture::new();
    let n = 60;
    let names: Vec<String> = (0..n).map(|i| format!("p{i:04}")).collect();
    let d = desired(names.iter().map(|p| env(p)));
    assert!(f.apply(&d).await.converged());
    // Every third gets a new release, every fifth a new hostname, one loses its container.
    let changed = desired(names.iter().enumerate().map(|(i, p)| {
        let mut e = env(p);
        if i % 3 == 0 {
            e = e.image("app:v2");
        }
        if i % 5 == 0 {
            e.hostname = format!("{p}.moved.test");
        }
        e
    }));
    f.world
        .state()
        .containers
        .retain(|_, (c, _)| c.name != "p0007-production-blue");
    let observed = reconcile::observe(&f.backends).await;
    let recorded = f.store.load().unwrap();
    let one = super::plan_on(&changed, &observed, &recorded, &[], 1, 1, 0);
    for threads in [2, 3, 4] {
        let many = super::plan_on(&changed, &observed, &recorded, &[], 1, threads, 0);
        assert_eq!(one, many, "{threads} threads");
    }
    assert!(one.steps.len() > n, "{}", one.steps.len());
}

#[tokio::test(start_paused = true)]
async fn a_fresh_store_adopts_what_the_host_runs_and_changes_nothing_there() {
    let f = Fixture::new();
    f.v1_active_v2_in_grace().await;
    let before = f.record("myapp");
    let fresh = Fixture::on(f.world.clone());
    let d = desired([env("myapp").image("app:v2")]);

    // One step, shown: green serves v2 (the manifests' release), blue keeps v1 for a rollback.
    let p = fresh.replan(&d).await;
    let [step] = &p.steps[..] else {
        panic!("one adoption step: {p}")
    };
    let Action::Adopt(a) = &step.action else {
        panic!("{p}")
    };
    let r = &a.record;
    assert_eq!(r.base_port, before.base_port);
    assert_eq!(r.hostname, before.hostname);
    assert_eq!(r.active, Some(Slot::Green));
    assert_eq!(r.green.state, SlotState::Active);
    assert_eq!(
        r.green.release, before.green.release,
        "the manifests' release"
    );
    assert_eq!(r.blue.state, SlotState::Grace);
    assert_eq!(r.blue.hash(), before.blue.hash(), "known by its label");
    let shown = p.to_string();
    assert!(
        shown.contains("adopt what the host holds by codeb's marks: blue grace app:v1")
            && shown.contains("green active app:v2")
            && shown.contains(&format!("ports {}/", before.base_port)),
        "{shown}"
    );

    let writes = f.world.mutations();
    assert!(fresh.apply(&d).await.converged());
    assert_eq!(f.world.mutations(), writes, "nothing on the host changed");
    assert!(fresh.replan(&d).await.is_empty());
    // A rollback to the slot known by its label only works from the fresh store.
    let report = fresh.switch("myapp", true).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v1"));
}

#[tokio::test(start_paused = true)]
async fn a_fresh_store_never_reallocates_the_ports_of_an_adopted_environment() {
    let f = Fixture::new();
    assert!(f.apply(&desired([env("ab")])).await.converged());
    let taken = f.record("ab").base_port;
    let fresh = Fixture::on(f.world.clone());
    // `ba` prefers the same base as `ab`: the adopted pair stays `ab`'s.
    let d = desired([env("ab"), env("ba")]);
    assert!(fresh.apply(&d).await.converged());
    assert_eq!(fresh.record("ab").base_port, taken);
    assert!(fresh.record("ba").base_port.abs_diff(taken) >= 2);
    assert!(fresh.replan(&d).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn what_the_host_holds_that_nothing_declares_is_named_and_only_a_prune_removes_it() {
    let f = Fixture::new();
    assert!(f.apply(&desired([env("a"), env("b")])).await.converged());
    let fresh = Fixture::on(f.world.clone());
    let d = desired([env("a")]);
    let observed = reconcile::observe(&fresh.backends).await;
    let recorded = fresh.store.load().unwrap();
    let notes = undeclared(&d, &observed, &recorded, &[]);
    assert_eq!(
        notes,
        vec![Note::Undeclared {
            host: "app".into(),
            keys: vec![EnvKey::new("b", "production")]
        }]
    );
    assert!(notes[0].to_string().contains("`codeb delete project b`"));
    let p = plan(&d, &observed, &recorded, &[], reconcile::now_ms());
    assert!(
        p.steps
            .iter()
            .all(|s| s.key != Some(EnvKey::new("b", "production"))),
        "not declared, not pruned: untouched: {p}"
    );

    // Pruned, it goes as the host holds it, with no record to go by.
    let prune = [EnvKey::new("b", "production")];
    assert!(undeclared(&d, &observed, &recorded, &prune).is_empty());
    let out = reconcile::converge(
        Target {
            desired: &d,
            remove: prune.to_vec(),
            dry_run: false,
        },
        &fresh.store,
        &fresh.backends,
        &fresh.prober,
    )
    .await
    .unwrap();
    assert!(out.converged(), "{:?}", out.failures);
    let s = f.world.state();
    assert!(s
        .containers
        .values()
        .all(|(c, _)| !c.name.starts_with("b-")));
    assert!(s.routes.iter().all(|r| !r.id.starts_with("codeb-b_")));
    assert!(s.routes.iter().any(|r| r.id.starts_with("codeb-a_")));
}

// Finding 1 of the issue, the switch mode: a property of the host, and each mode removes what the
// other left.

#[tokio::test(start_paused = true)]
async fn finding_1_a_host_without_its_network_yet_is_in_kernel_mode_from_the_first_apply() {
    let f = Fixture::new();
    f.world.state().no_network = true;
    let d = desired([env("myapp")]);
    let observed = reconcile::observe(&f.backends).await;
    let view = observed.hosts["app"].view().unwrap();
    assert_eq!(view.kernel, &KernelObservation::NoNetwork);
    assert_eq!(view.kernel.mode(), crate::model::SwitchMode::Kernel);
    // `get hosts` says why there are no service addresses yet.
    reconcile::record_switch_modes(&f.store, &observed).unwrap();
    assert_eq!(
        f.store.switch_modes().unwrap()["app"],
        (
            crate::model::SwitchMode::Kernel,
            Some(NO_NETWORK_YET.into())
        )
    );
    // The network first, and nothing of the environment: it is planned in kernel mode once the
    // network's gateway is known, never deployed through Podman's publication first.
    let p = plan(&d, &observed, &f.store.load().unwrap(), &[], 0);
    assert!(
        p.steps.iter().any(|s| s.action
            == Action::EnsureNetwork {
                name: NETWORK.into()
            }),
        "{p}"
    );
    assert!(p.steps.iter().all(|s| s.key.is_none()), "{p}");

    let out = f.apply(&d).await;
    assert!(out.converged(), "{:?}", out.failures);
    assert!(
        f.world
            .state()
            .containers
            .values()
            .all(|(_, spec)| !spec.publish),
        "no container was ever published by Podman"
    );
    assert_eq!(
        f.store.switch_modes().unwrap()["app"].0,
        crate::model::SwitchMode::Kernel
    );
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v1"));
    assert!(f.replan(&d).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn finding_1_a_kernel_runs_slot_port_rules_are_removed_before_a_caddy_mode_deploy() {
    let f = Fixture::new();
    f.v1_active_v2_in_grace().await;
    let mut observed = reconcile::observe(&f.backends).await;
    let Some(HostObservation::Reachable { kernel, .. }) = observed.hosts.get_mut("app") else {
        panic!("reachable");
    };
    let KernelObservation::Managed {
        publish: Some(p), ..
    } = kernel.clone()
    else {
        panic!("kernel-published: {kernel:?}");
    };
    assert_eq!(p.services.services.len(), 2, "both slot ports have a rule");
    // The same host, now switching through Caddy (`CODEB_SWITCH=caddy-admin`).
    *kernel = KernelObservation::Unavailable {
        reason: "CODEB_SWITCH=caddy-admin".into(),
        leftover: Some(p),
    };
    let d3 = desired([env("myapp").image("app:v3")]);
    let plan = plan(&d3, &observed, &f.store.load().unwrap(), &[], 0);
    let removals: Vec<usize> = (0..plan.steps.len())
        .filter(|i| matches!(&plan.steps[*i].action, Action::SetService(w) if w.target.is_none()))
        .collect();
    assert_eq!(removals.len(), 2, "{plan}");
    let deploy = plan
        .steps
        .iter()
        .position(|s| matches!(s.action, Action::Deploy { .. }))
        .expect("v3 deploys");
    assert!(removals.iter().all(|i| *i < deploy), "{plan}");
    // Blue's v1 container, published by no Podman, is not repaired first: the deploy replaces it
    // (a recreation would only take the name v3's container needs). Green's is.
    let recreated: Vec<Slot> = plan
        .steps
        .iter()
        .filter_map(|s| match s.action {
            Action::Recreate { slot, .. } => Some(slot),
            _ => None,
        })
        .collect();
    assert_eq!(recreated, [Slot::Green], "{plan}");

    // Carried out: without the removal, the leftover rule led v3's probe to blue's old address.
    f.world.state().kernel_fallback = Some("CODEB_SWITCH=caddy-admin".into());
    let out = f.apply(&d3).await;
    assert!(out.converged(), "{:?} {:?}", out.failures, out.notes);
    assert!(f.world.state().published.services.is_empty());
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v3"));
    assert_eq!(
        f.store.switch_modes().unwrap()["app"].0,
        crate::model::SwitchMode::CaddyAdmin
    );
    assert!(f.replan(&d3).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn finding_1_a_container_podman_publishes_is_recreated_without_in_kernel_mode() {
    let f = Fixture::new();
    let d = desired([env("myapp")]);
    assert!(f.apply(&d).await.converged());
    // As a Caddy-mode run left it: Podman publishes the slot's port.
    let base = f.record("myapp").base_port;
    for (c, spec) in f.world.state().containers.values_mut() {
        c.host_port = Some(base);
        spec.publish = true;
    }
    let p = f.replan(&d).await;
    assert!(
        p.steps.iter().any(|s| matches!(
            &s.action,
            Action::Recreate { slot: Slot::Blue, container, replace: Some(_) } if !container.publish
        )),
        "{p}"
    );
    assert!(f.apply(&d).await.converged());
    assert!(f
        .world
        .state()
        .containers
        .values()
        .all(|(c, spec)| !spec.publish && c.host_port.is_none()));
    assert_eq!(f.serving("myapp").as_deref(), Some("app:v1"));
    assert!(f.replan(&d).await.is_empty());
}

/// A kernel-mode host that does not publish slot ports on loopback (a remote Host publishing on
/// its own address) still gets its bridge's MAC pinned: right after the first container starts
/// (before the next one joins and changes it), or at once where the bridge exists; a pinned
/// bridge is left alone.
#[tokio::test(start_paused = true)]
async fn the_bridge_mac_is_pinned_after_the_first_container_starts_on_it() {
    let f = Fixture::new();
    let d = desired([env("myapp"), env("other")]);
    let with_bridge = |observed: &mut Observed, present: bool, mac_pinned: bool| {
        let Some(HostObservation::Reachable { kernel, .. }) = observed.hosts.get_mut("app") else {
            panic!("reachable");
        };
        let KernelObservation::Managed {
            publish, bridge, ..
        } = kernel
        else {
            panic!("kernel mode: {kernel:?}");
        };
        *publish = None;
        *bridge = Some(Box::new(ObservedBridge {
            name: "podman1".into(),
            present,
            mac_pinned,
        }));
    };
    let pins = |p: &Plan| {
        p.steps
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(&s.action, Action::PinMac { bridge } if bridge == "podman1"))
            .map(|(i, s)| (i, s.key.clone()))
            .collect::<Vec<_>>()
    };
    // No bridge yet: pinned right after the first deploy, once.
    let mut observed = reconcile::observe(&f.backends).await;
    with_bridge(&mut observed, false, false);
    let p = plan(&d, &observed, &f.store.load().unwrap(), &[], 0);
    let first_deploy = p
        .steps
        .iter()
        .position(|s| matches!(s.action, Action::Deploy { .. }))
        .expect("deploys");
    // A step of the deployed environment's: the daemon's reconcile of it carries it out.
    let key = p.steps[first_deploy].key.clone();
    assert!(key.is_some());
    assert_eq!(pins(&p), [(first_deploy + 1, key)], "{p}");
    assert!(
        p.steps[first_deploy + 2..]
            .iter()
            .any(|s| matches!(s.action, Action::Deploy { .. })),
        "the second deploy comes after the pin: {p}"
    );
    // Deployed (with ports Podman must now publish: recreated), the bridge there but not pinned:
    // after the first recreation, which joins the bridge again.
    assert!(f.apply(&d).await.converged());
    let mut observed = reconcile::observe(&f.backends).await;
    with_bridge(&mut observed, true, false);
    let p = plan(&d, &observed, &f.store.load().unwrap(), &[], 0);
    let first = p
        .steps
        .iter()
        .position(|s| matches!(s.action, Action::Recreate { .. }))
        .expect("recreations");
    assert_eq!(pins(&p), [(first + 1, p.steps[first].key.clone())], "{p}");
    // Pinned: nothing.
    with_bridge(&mut observed, true, true);
    let p = plan(&d, &observed, &f.store.load().unwrap(), &[], 0);
    assert!(pins(&p).is_empty(), "{p}");
    // Where no container starts: a host step at once if the bridge exists, else nothing.
    let bridge = |present| ObservedBridge {
        name: "podman1".into(),
        present,
        mac_pinned: false,
    };
    let mut none_start = Plan::default();
    pin_bridge(&mut none_start, "app".into(), &bridge(false));
    assert!(none_start.steps.is_empty());
    pin_bridge(&mut none_start, "app".into(), &bridge(true));
    assert_eq!(pins(&none_start), [(0, None)]);
    // Where slot ports are published on loopback and the bridge exists, the loopback write pins
    // it (its own step), not this one.
    let mut observed = reconcile::observe(&f.backends).await;
    if let Some(HostObservation::Reachable {
        kernel: KernelObservation::Managed { bridge, .. },
        ..
    }) = observed.hosts.get_mut("app")
    {
        *bridge = Some(Box::new(ObservedBridge {
            name: "podman1".into(),
            present: true,
            mac_pinned: false,
        }));
    }
    assert!(pins(&plan(&d, &observed, &f.store.load().unwrap(), &[], 0)).is_empty());
}
