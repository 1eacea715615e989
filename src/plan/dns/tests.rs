//! DNS planning against the fake PowerDNS (and the fake hosts): one write per zone, none when
//! converged, foreign rrsets never touched, conflicts refused per environment, drift repaired,
//! removed environments' records removed and only theirs.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::backend::fake::{FakeDns, FakeProber, World};
use crate::model::dns::{PowerDnsRef, ZoneRef};
use crate::plan::tests::env;
use crate::plan::{plan as plan_all, HostObservation};
use crate::reconcile::{self, Backends, HostBackends, Outcome, Target};
use crate::store::Store;

const ZONE: &str = "example.test";

fn managed(name: &str) -> ZoneRef {
    ZoneRef {
        name: name.into(),
        powerdns: Some(PowerDnsRef {
            api: "http://fake-pdns".into(),
            server_id: "localhost".into(),
            api_key_env: "PDNS_API_KEY".into(),
        }),
        ttl: 300,
    }
}

fn desired(projects: &[&str]) -> Desired {
    let mut d = crate::plan::tests::desired(projects.iter().map(|p| env(p)));
    d.zones.insert(ZONE.into(), managed(ZONE));
    d
}

fn rrset(name: &str, rtype: &str, content: &str, mark: Option<&str>) -> Rrset {
    Rrset {
        name: format!("{name}."),
        rtype: rtype.into(),
        ttl: 3600,
        records: vec![content.into()],
        mark: mark.map(str::to_string),
    }
}

/// Foreign rrsets of every kind the issue names, at names codeb does not want, plus the apex.
fn foreign() -> Vec<Rrset> {
    vec![
        rrset(
            ZONE,
            "SOA",
            "ns1.example.test. hostmaster.example.test. 1 10800 3600 604800 3600",
            None,
        ),
        rrset(ZONE, "MX", "10 mail.example.test.", None),
        rrset(
            ZONE,
            "TXT",
            "\"v=spf1 include:_spf.example.com ~all\"",
            None,
        ),
        rrset("www.example.test", "A", "192.0.2.10", None),
        rrset("alias.example.test", "CNAME", "www.example.test.", None),
    ]
}

struct Fixture {
    world: World,
    dns: FakeDns,
    store: Store,
    backends: Backends<World, World, World, FakeDns>,
    prober: FakeProber,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A fake host and a fake PowerDNS holding the zone with [`foreign`] rrsets.
    fn new() -> Self {
        let f = Self::without_zone();
        f.dns.state().zones.insert(ZONE.into(), foreign());
        f
    }

    fn without_zone() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let world = World::new();
        let dns = FakeDns::new();
        let mut backends = Backends::hosts(BTreeMap::from([(
            "app".to_string(),
            HostBackends {
                runtime: world.clone(),
                proxy: world.clone(),
                kernel: world.clone(),
                publish: Some(std::net::Ipv4Addr::LOCALHOST),
                owner: None,
                agent: None,
            },
        )]));
        backends = backends.with_zone(ZONE, dns.clone());
        Fixture {
            store: Store::open(dir.path()).unwrap(),
            prober: FakeProber(vec![world.clone()]),
            world,
            dns,
            backends,
            _dir: dir,
        }
    }

    async fn converge(&self, d: &Desired, remove: Vec<EnvKey>) -> Outcome {
        let target = Target {
            desired: d,
            remove,
            dry_run: false,
        };
        reconcile::converge(target, &self.store, &self.backends, &self.prober)
            .await
            .unwrap()
    }

    /// `codeb delete` of these environments: plan from a fresh observation, execute.
    async fn delete(&self, keys: &[EnvKey]) -> Plan {
        let observed = reconcile::observe(&self.backends).await;
        let p = crate::plan::plan_delete(keys, &observed, &self.store.load().unwrap());
        reconcile::execute(&p, &self.store, &self.backends, &self.prober)
            .await
            .unwrap();
        p
    }

    async fn apply(&self, d: &Desired) -> Outcome {
        self.converge(d, vec![]).await
    }

    async fn replan(&self, d: &Desired) -> Plan {
        let observed = reconcile::observe(&self.backends).await;
        let recorded = self.store.load().unwrap();
        plan_all(d, &observed, &recorded, &[], reconcile::now_ms())
    }

    fn rrsets(&self) -> Vec<Rrset> {
        self.dns.state().zones[ZONE].clone()
    }

    fn content(&self, name: &str, rtype: &str) -> Option<Vec<String>> {
        let name = format!("{name}.");
        self.rrsets()
            .into_iter()
            .find(|r| r.name == name && r.rtype == rtype)
            .map(|r| r.records)
    }

    fn foreign_now(&self) -> Vec<Rrset> {
        let mut v: Vec<Rrset> = self
            .rrsets()
            .into_iter()
            .filter(|r| r.mark.is_none())
            .collect();
        v.sort_by(|a, b| (&a.name, &a.rtype).cmp(&(&b.name, &b.rtype)));
        v
    }
}

fn sorted(mut v: Vec<Rrset>) -> Vec<Rrset> {
    v.sort_by(|a, b| (&a.name, &a.rtype).cmp(&(&b.name, &b.rtype)));
    v
}

fn dns_steps(p: &Plan) -> Vec<&Step> {
    p.steps
        .iter()
        .filter(|s| s.action.zone().is_some())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn every_environment_s_records_go_in_one_patch_and_a_converged_zone_gets_no_write() {
    let f = Fixture::new();
    let d = desired(&["a", "b", "c"]);
    let out = f.apply(&d).await;
    assert!(out.converged(), "{:?} {:?}", out.failures, out.notes);
    assert_eq!(f.dns.state().patches, 1);
    assert_eq!(f.dns.state().creates, 0);
    for p in ["a", "b", "c"] {
        for name in [
            format!("{p}.{ZONE}"),
            format!("blue.{p}.{ZONE}"),
            format!("green.{p}.{ZONE}"),
        ] {
            assert_eq!(
                f.content(&name, "A"),
                Some(vec!["127.0.0.1".to_string()]),
                "{name}"
            );
        }
    }
    assert_eq!(f.foreign_now(), sorted(foreign()));

    let again = f.apply(&d).await;
    assert!(again.converged());
    assert!(again.executed.is_empty(), "{:?}", again.executed);
    assert_eq!(
        f.dns.writes(),
        1,
        "a converged zone gets no write: its serial does not move"
    );
    assert!(f.replan(&d).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_missing_zone_is_created_then_written_once() {
    let f = Fixture::without_zone();
    let d = desired(&["a"]);
    let first = f.replan(&d).await;
    let steps = dns_steps(&first);
    assert!(
        matches!(steps[0].action, Action::EnsureZone { .. }),
        "{first}"
    );
    assert!(
        matches!(steps[1].action, Action::DnsPatch { .. }),
        "{first}"
    );
    assert!(f.apply(&d).await.converged());
    let (creates, patches) = {
        let s = f.dns.state();
        (s.creates, s.patches)
    };
    assert_eq!((creates, patches), (1, 1));
    assert!(f.replan(&d).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_name_holding_a_foreign_record_is_a_conflict_for_that_environment_only() {
    let f = Fixture::new();
    // `alias` holds a foreign CNAME; `blue.b` a foreign TXT (any type conflicts).
    f.dns.state().zones.get_mut(ZONE).unwrap().push(rrset(
        "blue.b.example.test",
        "TXT",
        "\"hand made\"",
        None,
    ));
    let before = f.foreign_now();
    let d = desired(&["a", "alias", "b"]);
    let out = f.apply(&d).await;
    assert!(!out.converged(), "a conflict is a problem: apply exits 1");
    let conflicts: Vec<String> = out
        .notes
        .iter()
        .filter(|n| matches!(n, Note::DnsConflict { .. }))
        .map(|n| n.to_string())
        .collect();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    assert!(conflicts[0].starts_with(
        "alias/production: alias.example.test already holds a foreign CNAME record (www.example.test.) in Zone example.test"
    ), "{conflicts:?}");
    assert!(conflicts[1].contains("blue.b.example.test already holds a foreign TXT record"));
    assert_eq!(f.foreign_now(), before, "foreign rrsets are untouched");
    assert_eq!(
        f.content("a.example.test", "A"),
        Some(vec!["127.0.0.1".into()])
    );
    assert_eq!(
        f.content("b.example.test", "A"),
        None,
        "none of b's records are written"
    );
    assert_eq!(f.content("green.alias.example.test", "A"), None);
    // Container and Caddy work goes on, for the conflicting projects too.
    for p in ["a", "alias", "b"] {
        assert_eq!(
            f.store
                .env(&EnvKey::new(p, "production"))
                .unwrap()
                .unwrap()
                .active,
            Some(crate::model::Slot::Blue),
            "{p}"
        );
    }
    let again = f.apply(&d).await;
    assert!(again.executed.is_empty(), "{:?}", again.executed);
    assert_eq!(f.dns.state().patch_attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_record_deleted_or_changed_by_hand_is_restored_by_the_next_apply() {
    let f = Fixture::new();
    let d = desired(&["a", "b"]);
    assert!(f.apply(&d).await.converged());
    {
        let mut s = f.dns.state();
        let rrsets = s.zones.get_mut(ZONE).unwrap();
        rrsets.retain(|r| r.name != "a.example.test.");
        let b = rrsets
            .iter_mut()
            .find(|r| r.name == "b.example.test.")
            .unwrap();
        b.records = vec!["10.0.0.9".into()];
        b.ttl = 60;
    }
    let p = f.replan(&d).await;
    let text = p.to_string();
    assert!(
        text.contains("+ A a.example.test 127.0.0.1 ttl 300 (a/production)"),
        "{text}"
    );
    assert!(
        text.contains("~ A b.example.test 127.0.0.1 ttl 300 (b/production), was 10.0.0.9 ttl 60 (b/production)"),
        "{text}"
    );
    assert_eq!(dns_steps(&p).len(), 1);
    assert!(f.apply(&d).await.converged());
    assert_eq!(
        f.content("a.example.test", "A"),
        Some(vec!["127.0.0.1".into()])
    );
    assert_eq!(
        f.content("b.example.test", "A"),
        Some(vec!["127.0.0.1".into()])
    );
    assert_eq!(f.dns.state().patches, 2);
    assert_eq!(f.foreign_now(), sorted(foreign()));
}

#[tokio::test(start_paused = true)]
async fn a_record_whose_mark_was_removed_by_hand_is_foreign_from_then_on() {
    let f = Fixture::new();
    let d = desired(&["a"]);
    assert!(f.apply(&d).await.converged());
    for r in f.dns.state().zones.get_mut(ZONE).unwrap() {
        if r.name == "a.example.test." {
            r.mark = None;
        }
    }
    let out = f.apply(&d).await;
    assert!(out
        .notes
        .iter()
        .any(|n| matches!(n, Note::DnsConflict { .. })));
    assert!(
        f.rrsets().iter().any(|r| r.name == "blue.a.example.test."),
        "not deleted either"
    );
    assert_eq!(f.dns.state().patches, 1);
}

#[tokio::test(start_paused = true)]
async fn pruning_an_environment_removes_its_records_and_only_its_records() {
    let f = Fixture::new();
    // Records of an environment another codeb (another state directory) manages in this zone.
    let other = "managed by codeb: elsewhere/production";
    f.dns.state().zones.get_mut(ZONE).unwrap().push(rrset(
        "elsewhere.example.test",
        "A",
        "192.0.2.99",
        Some(other),
    ));
    assert!(f.apply(&desired(&["a", "b"])).await.converged());
    let d = desired(&["b"]);
    let out = f.converge(&d, vec![EnvKey::new("a", "production")]).await;
    assert!(out.converged(), "{:?}", out.notes);
    assert_eq!(f.content("a.example.test", "A"), None);
    assert_eq!(f.content("green.a.example.test", "A"), None);
    assert_eq!(
        f.content("b.example.test", "A"),
        Some(vec!["127.0.0.1".into()])
    );
    assert_eq!(
        f.content("elsewhere.example.test", "A"),
        Some(vec!["192.0.2.99".into()])
    );
    assert_eq!(f.foreign_now(), sorted(foreign()));
    assert_eq!(f.dns.state().patches, 2);
}

#[tokio::test(start_paused = true)]
async fn delete_removes_the_records_of_the_deleted_environments_only() {
    let f = Fixture::new();
    assert!(f.apply(&desired(&["a", "b"])).await.converged());
    let observed = reconcile::observe(&f.backends).await;
    let recorded = f.store.load().unwrap();
    let keys = [EnvKey::new("a", "production")];
    let p = crate::plan::plan_delete(&keys, &observed, &recorded);
    assert!(
        matches!(p.steps[0].action, Action::DnsPatch { .. }),
        "DNS goes first: {p}"
    );
    let report = reconcile::execute(&p, &f.store, &f.backends, &f.prober)
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(f.content("blue.a.example.test", "A"), None);
    assert_eq!(
        f.content("blue.b.example.test", "A"),
        Some(vec!["127.0.0.1".into()])
    );
    assert_eq!(f.foreign_now(), sorted(foreign()));
}

#[tokio::test(start_paused = true)]
async fn a_delete_while_powerdns_is_down_keeps_the_record_until_its_dns_records_are_gone() {
    let f = Fixture::new();
    assert!(f.apply(&desired(&["a"])).await.converged());
    let keys = [EnvKey::new("a", "production")];
    f.dns.state().down = true;
    let p = f.delete(&keys).await;
    assert!(
        p.notes
            .iter()
            .any(|n| matches!(n, Note::ZoneUnreachable { .. })),
        "{p}"
    );
    assert!(f.world.state().containers.is_empty(), "containers still go");
    assert!(
        f.store.env(&keys[0]).unwrap().is_some(),
        "the record is kept"
    );
    f.dns.state().down = false;
    f.delete(&keys).await;
    assert_eq!(f.content("a.example.test", "A"), None);
    assert!(f.store.env(&keys[0]).unwrap().is_none());
    assert_eq!(f.foreign_now(), sorted(foreign()));
}

#[tokio::test(start_paused = true)]
async fn a_delete_whose_zone_write_fails_keeps_the_record_too() {
    let f = Fixture::new();
    assert!(f.apply(&desired(&["a"])).await.converged());
    let keys = [EnvKey::new("a", "production")];
    f.dns.state().refuse_patches = true;
    f.delete(&keys).await;
    assert!(f.store.env(&keys[0]).unwrap().is_some());
    f.dns.state().refuse_patches = false;
    f.delete(&keys).await;
    assert_eq!(f.content("green.a.example.test", "A"), None);
    assert!(f.store.env(&keys[0]).unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_new_hostname_or_address_family_replaces_the_old_records_in_the_same_patch() {
    let f = Fixture::new();
    assert!(f.apply(&desired(&["a"])).await.converged());
    let mut d = desired(&["a"]);
    d.envs.values_mut().next().unwrap().hostname = "www2.example.test".into();
    d.hosts.get_mut("app").unwrap().address = "2001:DB8:0::1".into();
    let p = f.replan(&d).await;
    let steps = dns_steps(&p);
    assert_eq!(steps.len(), 1, "{p}");
    f.apply(&d).await;
    assert_eq!(f.content("a.example.test", "A"), None);
    assert_eq!(
        f.content("www2.example.test", "AAAA"),
        Some(vec!["2001:db8::1".into()])
    );
    assert_eq!(
        f.content("green.www2.example.test", "AAAA"),
        Some(vec!["2001:db8::1".into()])
    );
    assert!(
        f.replan(&d).await.is_empty(),
        "the address is compared in PowerDNS's form"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_powerdns_holds_back_no_container_work() {
    let f = Fixture::new();
    f.dns.state().down = true;
    let out = f.apply(&desired(&["a"])).await;
    assert!(!out.converged());
    let note = out
        .notes
        .iter()
        .find(|n| matches!(n, Note::ZoneUnreachable { .. }))
        .expect("a note names the zone")
        .to_string();
    assert!(
        note.starts_with("zone example.test: PowerDNS's API at http://fake-pdns did not answer"),
        "{note}"
    );
    assert_eq!(
        f.store
            .env(&EnvKey::new("a", "production"))
            .unwrap()
            .unwrap()
            .active,
        Some(crate::model::Slot::Blue)
    );
    let port = f
        .store
        .env(&EnvKey::new("a", "production"))
        .unwrap()
        .unwrap()
        .base_port;
    assert!(f.world.healthy_at(&format!("http://127.0.0.1:{port}/")));
}

#[tokio::test(start_paused = true)]
async fn a_failed_zone_write_is_tried_once_and_the_deploy_still_completes() {
    let f = Fixture::new();
    f.dns.state().refuse_patches = true;
    let out = f.apply(&desired(&["a"])).await;
    assert_eq!(out.failures.len(), 1, "{:?}", out.failures);
    assert!(out.failures[0]
        .error
        .to_string()
        .starts_with("zone example.test: PowerDNS at http://fake-pdns refused"));
    assert_eq!(
        f.dns.state().patch_attempts,
        1,
        "not retried within the apply"
    );
    assert_eq!(
        f.store
            .env(&EnvKey::new("a", "production"))
            .unwrap()
            .unwrap()
            .active,
        Some(crate::model::Slot::Blue),
        "the switch in a later round still happened"
    );
}

#[tokio::test(start_paused = true)]
async fn a_foreign_record_created_after_the_plan_stops_the_write() {
    let f = Fixture::new();
    let d = desired(&["a"]);
    let p = f.replan(&d).await;
    f.dns.state().zones.get_mut(ZONE).unwrap().push(rrset(
        "green.a.example.test",
        "CNAME",
        "elsewhere.example.com.",
        None,
    ));
    let dns_only = Plan {
        steps: dns_steps(&p).into_iter().cloned().collect(),
        notes: vec![],
    };
    let report = reconcile::execute(&dns_only, &f.store, &f.backends, &f.prober)
        .await
        .unwrap();
    let err = report.failures[0].error.to_string();
    assert!(
        err.contains("green.a.example.test now holds a foreign CNAME record"),
        "{err}"
    );
    assert_eq!(f.dns.state().patches, 0);
}

#[test]
fn zones_without_powerdns_and_names_in_no_zone_get_no_records() {
    let mut d = desired(&["a"]);
    d.zones.get_mut(ZONE).unwrap().powerdns = None;
    let mut p = Plan::default();
    plan_apply(&d, &Observed::default(), &Recorded::default(), &[], &mut p);
    assert_eq!(
        p,
        Plan::default(),
        "unmanaged: nothing at all, not even a note"
    );

    let mut d = desired(&["a"]);
    d.envs.values_mut().next().unwrap().hostname = "a.elsewhere.test".into();
    let observed = Observed {
        zones: BTreeMap::from([(
            ZONE.into(),
            ZoneObservation::Present(ObservedZone::default()),
        )]),
        ..Default::default()
    };
    let mut p = Plan::default();
    plan_apply(&d, &observed, &Recorded::default(), &[], &mut p);
    assert!(p.steps.is_empty(), "{p}");
    assert_eq!(
        p.notes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        ["a/production: a.elsewhere.test is in no declared Zone; codeb writes no DNS record for it"]
    );
    assert!(!p.has_problems());
}

#[test]
fn a_name_goes_to_the_most_specific_declared_zone() {
    let mut d = desired(&["a"]);
    d.envs.values_mut().next().unwrap().hostname = "a.dev.example.test".into();
    d.zones
        .insert("dev.example.test".into(), managed("dev.example.test"));
    let observed = Observed {
        zones: BTreeMap::from([
            (
                ZONE.into(),
                ZoneObservation::Present(ObservedZone::default()),
            ),
            (
                "dev.example.test".into(),
                ZoneObservation::Present(ObservedZone::default()),
            ),
        ]),
        ..Default::default()
    };
    let mut p = Plan::default();
    plan_apply(&d, &observed, &Recorded::default(), &[], &mut p);
    let zones: Vec<&str> = p.steps.iter().filter_map(|s| s.action.zone()).collect();
    assert_eq!(zones, ["dev.example.test"]);
}

#[test]
fn a_dry_run_plan_shows_dns_changes_and_never_a_key() {
    let d = desired(&["a"]);
    let observed = Observed {
        hosts: BTreeMap::from([(
            "app".into(),
            HostObservation::Reachable {
                containers: vec![],
                proxy: Default::default(),
                kernel: crate::plan::KernelObservation::Unavailable {
                    reason: "test".into(),
                    leftover: None,
                },
                owner: Default::default(),
            },
        )]),
        zones: BTreeMap::from([(ZONE.into(), ZoneObservation::Missing)]),
    };
    let text = plan_all(&d, &observed, &Recorded::default(), &[], 0).to_string();
    assert!(text.starts_with(
        "  zone example.test: create the zone (Native, default SOA) in PowerDNS at http://fake-pdns\n  zone example.test: change 3 rrsets in one PATCH\n      + A a.example.test 127.0.0.1 ttl 300 (a/production)\n"
    ), "{text}");
    assert!(!text.contains("PDNS_API_KEY"), "{text}");
}

/// Two managed zones, `example.test` and `other.test`, both observed as holding `rrsets`.
fn two_zones(d: &mut Desired, example: Vec<Rrset>, other: Vec<Rrset>) -> Observed {
    d.zones.insert("other.test".into(), managed("other.test"));
    let present = |rrsets| ZoneObservation::Present(ObservedZone { rrsets });
    Observed {
        zones: BTreeMap::from([
            (ZONE.into(), present(example)),
            ("other.test".into(), present(other)),
        ]),
        ..Default::default()
    }
}

#[test]
fn a_zone_s_plan_is_the_apply_plan_restricted_to_that_zone() {
    let mut d = desired(&["a", "b"]);
    d.envs
        .get_mut(&EnvKey::new("b", "production"))
        .unwrap()
        .hostname = "b.other.test".into();
    let observed = two_zones(&mut d, foreign(), vec![]);
    let mut whole = Plan::default();
    plan_apply(&d, &observed, &Recorded::default(), &[], &mut whole);
    assert_eq!(dns_steps(&whole).len(), 2, "{whole}");
    for zone in [ZONE, "other.test"] {
        let one = plan_zone(zone, &d, &observed, &Recorded::default(), &[]);
        let expected: Vec<&Step> = whole
            .steps
            .iter()
            .filter(|s| s.action.zone() == Some(zone))
            .collect();
        assert_eq!(one.steps.iter().collect::<Vec<_>>(), expected, "{zone}");
    }
}

#[test]
fn a_zone_s_plan_deletes_the_stale_record_of_a_hostname_that_moved_to_another_zone() {
    let mut d = desired(&["a"]);
    d.envs.values_mut().next().unwrap().hostname = "a.other.test".into();
    let mark = "managed by codeb: a/production";
    let old = vec![rrset("a.example.test", "A", "127.0.0.1", Some(mark))];
    let observed = two_zones(&mut d, old.clone(), vec![]);
    let p = plan_zone(ZONE, &d, &observed, &Recorded::default(), &[]);
    let Some(Action::DnsPatch { changes, .. }) = p.steps.first().map(|s| &s.action) else {
        panic!("{p}");
    };
    assert_eq!(changes.len(), 1, "{p}");
    assert!(
        matches!(changes[0].change, RrsetChange::Delete { .. }),
        "{p}"
    );
    // The environment owns a record here, so the zone its names are in now joins the scope.
    let scope = zone_scope(
        ZONE,
        &d,
        Some(&ObservedZone {
            rrsets: old.clone(),
        }),
    );
    assert_eq!(
        scope.iter().map(String::as_str).collect::<Vec<_>>(),
        ["example.test", "other.test"]
    );
    // In conflict in its new zone, its old record stays, as `apply` leaves it.
    let taken = vec![rrset("a.other.test", "CNAME", "elsewhere.test.", None)];
    let observed = two_zones(&mut d, old, taken);
    let p = plan_zone(ZONE, &d, &observed, &Recorded::default(), &[]);
    assert!(p.steps.is_empty(), "{p}");
    assert!(
        p.notes.is_empty(),
        "the conflict is other.test's to report: {p}"
    );
}

#[test]
fn a_zone_s_scope_is_the_zone_alone_unless_an_environment_spans_two_zones() {
    let mut d = desired(&["a", "b"]);
    d.zones.insert("other.test".into(), managed("other.test"));
    let scope = |d: &Desired| zone_scope(ZONE, d, Some(&ObservedZone::default()));
    assert_eq!(scope(&d), BTreeSet::from([ZONE.to_string()]));
    // A Zone declared at a preview name takes that name out of the hostname's zone.
    d.zones
        .insert("blue.a.example.test".into(), managed("blue.a.example.test"));
    assert_eq!(
        scope(&d),
        BTreeSet::from([ZONE.to_string(), "blue.a.example.test".to_string()])
    );
}

#[test]
fn only_the_zones_a_saved_change_can_affect_are_changed() {
    let mut old = desired(&["a", "b"]);
    old.zones.insert("other.test".into(), managed("other.test"));
    let names = |z: BTreeSet<String>| z.into_iter().collect::<Vec<_>>();
    // A new image: no zone.
    let mut new = old.clone();
    new.envs.values_mut().next().unwrap().release =
        crate::model::Release::new("app:v2", None, BTreeMap::new(), 8080);
    assert!(zones_changed(&old, &new).is_empty());
    // A hostname moving from one zone to another: both.
    let mut new = old.clone();
    new.envs.values_mut().next().unwrap().hostname = "a.other.test".into();
    assert_eq!(
        names(zones_changed(&old, &new)),
        ["example.test", "other.test"]
    );
    // A project added or removed: its zone.
    let mut new = old.clone();
    new.envs.remove(&EnvKey::new("b", "production"));
    assert_eq!(names(zones_changed(&old, &new)), ["example.test"]);
    assert_eq!(names(zones_changed(&new, &old)), ["example.test"]);
    // A Host address or a Zone changed: every managed zone.
    let mut new = old.clone();
    new.hosts.get_mut("app").unwrap().address = "::1".into();
    assert_eq!(
        names(zones_changed(&old, &new)),
        ["example.test", "other.test"]
    );
    let mut new = old.clone();
    new.zones.get_mut("other.test").unwrap().ttl = 60;
    assert_eq!(
        names(zones_changed(&old, &new)),
        ["example.test", "other.test"]
    );
    // Unmanaged zones are never named.
    new.zones.get_mut("other.test").unwrap().powerdns = None;
    assert_eq!(names(zones_changed(&old, &new)), ["example.test"]);
}

// ---------------------------------------------------------------------------------------------
// Property: whatever the zone holds and whatever the manifests want, the plan writes each zone at
// most once, never names a name that holds a foreign rrset, never touches a foreign rrset or one
// of an environment it does not know, and converges in one write.

/// Names drawn from a small pool so that wants, foreign rrsets and codeb's rrsets collide often.
fn pool_name() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..4u8).prop_map(|i| format!("p{i}.{ZONE}")),
        (0..4u8, prop_oneof![Just("blue"), Just("green")])
            .prop_map(|(i, s)| format!("{s}.p{i}.{ZONE}")),
        Just(ZONE.to_string()),
    ]
}

fn any_rrset() -> impl Strategy<Value = Rrset> {
    let owner = prop_oneof![
        Just(None),
        (0..6u8).prop_map(|i| Some(format!("managed by codeb: p{i}/production"))),
        Just(Some("managed by codeb: unreadable".to_string())),
    ];
    (
        pool_name(),
        prop_oneof![
            Just("A"),
            Just("AAAA"),
            Just("TXT"),
            Just("CNAME"),
            Just("MX")
        ],
        owner,
        1..1000u32,
    )
        .prop_map(|(name, rtype, mark, ttl)| Rrset {
            name: format!("{name}."),
            rtype: rtype.into(),
            ttl,
            records: vec!["192.0.2.1".into()],
            mark,
        })
}

/// Applies changes as PowerDNS does.
fn apply_changes(rrsets: &mut Vec<Rrset>, changes: &[DnsChange]) {
    for c in changes {
        rrsets.retain(|r| !(r.name == c.change.name() && r.rtype == c.change.rtype()));
        if let RrsetChange::Replace(r) = &c.change {
            rrsets.push(r.clone());
        }
    }
}

fn plan_example_zone(d: &Desired, rrsets: &[Rrset], prune: &[EnvKey]) -> Plan {
    let observed = Observed {
        zones: BTreeMap::from([(
            ZONE.into(),
            ZoneObservation::Present(ObservedZone {
                rrsets: rrsets.to_vec(),
            }),
        )]),
        ..Default::default()
    };
    let recorded = Recorded {
        zones: d.zones.clone(),
        ..Default::default()
    };
    let mut p = Plan::default();
    plan_apply(d, &observed, &recorded, prune, &mut p);
    p
}

proptest! {
    #[test]
    fn dns_plans_touch_only_codeb_s_rrsets_and_converge_in_one_write(
        start in proptest::collection::vec(any_rrset(), 0..12),
        wanted in proptest::collection::btree_set(0..4u8, 0..4),
        pruned in proptest::collection::btree_set(4..6u8, 0..2),
    ) {
        // Unique (name, type), as in a real zone.
        let mut seen = std::collections::BTreeSet::new();
        let start: Vec<Rrset> = start
            .into_iter()
            .filter(|r| seen.insert((r.name.clone(), r.rtype.clone())))
            .collect();
        let names: Vec<String> = wanted.iter().map(|i| format!("p{i}")).collect();
        let d = desired(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let prune: Vec<EnvKey> = pruned.iter().map(|i| EnvKey::new(format!("p{i}"), "production")).collect();

        let p = plan_example_zone(&d, &start, &prune);
        let patches: Vec<&Vec<DnsChange>> = p.steps.iter().filter_map(|s| match &s.action {
            Action::DnsPatch { changes, .. } => Some(changes),
            _ => None,
        }).collect();
        prop_assert!(patches.len() <= 1, "one write per zone: {p}");
        let foreign_names: std::collections::BTreeSet<&str> =
            start.iter().filter(|r| r.mark.is_none()).map(|r| r.name.as_str()).collect();
        // Every environment wanting a name held by a foreign rrset is refused, with a note.
        for i in &wanted {
            let names = [format!("p{i}.{ZONE}."), format!("blue.p{i}.{ZONE}."), format!("green.p{i}.{ZONE}.")];
            if names.iter().any(|n| foreign_names.contains(n.as_str())) {
                let key = EnvKey::new(format!("p{i}"), "production");
                prop_assert!(p.notes.iter().any(|n| matches!(n, Note::DnsConflict { key: k, .. } if *k == key)), "{p}");
            }
        }
        let mut after = start.clone();
        for changes in &patches {
            for c in changes.iter() {
                if let RrsetChange::Replace(_) = c.change {
                    prop_assert!(!foreign_names.contains(c.change.name()), "writes at a foreign name: {p}");
                }
            }
            apply_changes(&mut after, changes);
        }
        // Foreign rrsets, and codeb's for environments this run does not know, are as they were.
        let known: Vec<String> = wanted.iter().chain(&pruned).map(|i| format!("managed by codeb: p{i}/production")).collect();
        let untouchable = |r: &&Rrset| match r.mark.as_deref() {
            None => true,
            Some(m) => crate::model::dns::parse_owner(m).is_some() && !known.iter().any(|k| k == m),
        };
        let keep: Vec<&Rrset> = start.iter().filter(untouchable).collect();
        for r in &keep {
            prop_assert!(after.contains(r), "{r:?} changed: {p}");
        }
        // No record of a pruned environment is left.
        for i in &pruned {
            let mark = format!("managed by codeb: p{i}/production");
            prop_assert!(!after.iter().any(|r| r.mark.as_deref() == Some(mark.as_str())), "{p}");
        }
        // The executor's last check before writing agrees with the plan.
        for changes in &patches {
            let zone = ObservedZone { rrsets: start.clone() };
            prop_assert_eq!(recheck(changes, Some(&zone)), Ok(()));
        }
        // Converged in one write.
        let again = plan_example_zone(&d, &after, &prune);
        prop_assert!(again.steps.is_empty(), "not converged after one write: {again}");
    }
}
