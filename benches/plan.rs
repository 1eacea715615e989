//! `plan` for 10,000 projects against in-memory state (target: under 20 ms).
//!
//! Two worlds: converged (the plan is empty: what every no-op apply and every resync computes) and
//! a new release everywhere (every environment gets deploy, probe and route steps). Then the same
//! converged world with its zone managed through PowerDNS (30,000 codeb rrsets observed), and with
//! all of them missing (one PATCH of 30,000 changes).

use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use std::net::{Ipv4Addr, SocketAddrV4};

use codeb::model::dns::{PowerDnsRef, ZoneRef};
use codeb::model::observed::{
    ObservedAccessLog, ObservedContainer, ObservedLoopback, ObservedProxy, ObservedService,
    ObservedServices, ObservedZone, ServiceRule,
};
use codeb::model::ownership::{LABEL_ENVIRONMENT, LABEL_PROJECT, LABEL_RELEASE, LABEL_SLOT};
use codeb::model::writes::{AccessLog, RrsetChange, ServiceTarget};
use codeb::model::{
    Desired, DesiredEnv, EnvKey, EnvRecord, HostRef, Promotion, Recorded, Release, Slot,
    SlotRecord, SlotState,
};
use codeb::plan::{
    plan, routes, server_spec, Action, HostObservation, KernelObservation, Observed, Published,
    ZoneObservation,
};

/// Kernel mode: every environment's service address on this gateway.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

const PROJECTS: usize = 10_000;

fn host() -> HostRef {
    HostRef {
        name: "app".into(),
        address: "127.0.0.1".into(),
        podman: "unix:///x".into(),
        caddy_admin: "http://127.0.0.1:2019".into(),
        listen: vec![":80".into()],
        tls: codeb::spec::Tls::Off,
        publish_address: "127.0.0.1".into(),
        image_allow: vec![],
        postgres: None,
        redis: None,
        backups: None,
        access_log: Some(AccessLog::default_for("app")),
        ssh: None,
    }
}

fn release(image: &str) -> Release {
    Release::new(
        image,
        None,
        BTreeMap::from([("LOG_LEVEL".into(), "info".into())]),
        8080,
    )
}

/// A converged world of `n` projects: blue active everywhere, its container running, its routes
/// and its service address's NAT rule in place.
fn world(n: usize) -> (Desired, Observed, Recorded) {
    let h = host();
    let mut desired = Desired {
        hosts: BTreeMap::from([("app".into(), h.clone())]),
        envs: BTreeMap::new(),
        zones: BTreeMap::new(),
    };
    let mut recorded = Recorded {
        hosts: desired.hosts.clone(),
        envs: BTreeMap::new(),
        zones: BTreeMap::new(),
    };
    let mut containers = Vec::new();
    let mut proxy = ObservedProxy {
        server: Some(server_spec(&h)),
        routes: Vec::new(),
        access_log: ObservedAccessLog::Is(AccessLog::default_for("app")),
    };
    let mut services = ObservedServices {
        chain: true,
        hooks: 1,
        ..Default::default()
    };
    // codeb publishes slot ports on loopback: each active slot's port has its rule too.
    let mut published = services.clone();
    for i in 0..n {
        let key = EnvKey::new(format!("p{i}"), "production");
        let rel = release("app:v1");
        desired.envs.insert(
            key.clone(),
            DesiredEnv {
                key: key.clone(),
                host: "app".into(),
                hostname: format!("p{i}.example.test"),
                release: rel.clone(),
                health_path: "/health".into(),
                health_timeout: Duration::from_secs(60),
                promotion: Promotion::Auto,
                grace_period: Duration::from_secs(3600),
                migration_grace: codeb::model::DEFAULT_MIGRATION_GRACE,
                env_from: Default::default(),
                data: Default::default(),
            },
        );
        // Ports are recorded per key; the benchmark gives every key its own pair (wrapping is fine
        // for planning, which compares and does not bind).
        let base = 10_000 + (i as u16 % 20_000) * 2;
        let mut rec = EnvRecord::new(
            key.clone(),
            "app".into(),
            format!("p{i}.example.test"),
            base,
        );
        rec.active = Some(Slot::Blue);
        rec.blue = SlotRecord {
            state: SlotState::Active,
            release: Some(rel.clone()),
            ..SlotRecord::default()
        };
        let ip = Ipv4Addr::from(u32::from(GATEWAY) + 1 + i as u32);
        proxy
            .routes
            .extend(routes(&rec, &h, Some(SocketAddrV4::new(GATEWAY, base))));
        // One DNAT rule to the blue container, as codeb writes it.
        let rule = |label: String| ObservedService {
            dispatch: 1,
            chain: true,
            rules: vec![ServiceRule::Dnat(ServiceTarget {
                to: SocketAddrV4::new(ip, 8080),
                label,
            })],
        };
        services.services.insert(base, rule(key.to_string()));
        published.services.insert(base, rule(format!("{key}/blue")));
        containers.push(ObservedContainer {
            id: format!("id{i}"),
            name: key.container_name(Slot::Blue),
            image: "app:v1".into(),
            labels: BTreeMap::from([
                (LABEL_PROJECT.to_string(), key.project.clone()),
                (LABEL_ENVIRONMENT.to_string(), key.env.clone()),
                (LABEL_SLOT.to_string(), "blue".to_string()),
                (LABEL_RELEASE.to_string(), rel.hash().to_string()),
            ]),
            running: true,
            state: "running".into(),
            host_port: None,
            ip: Some(ip),
        });
        recorded.envs.insert(key, rec);
    }
    let observed = Observed {
        hosts: BTreeMap::from([(
            "app".into(),
            HostObservation::Reachable {
                containers,
                proxy,
                kernel: KernelObservation::Managed {
                    gateway: GATEWAY,
                    services,
                    publish: Some(Box::new(Published {
                        address: Ipv4Addr::LOCALHOST,
                        bridge: "podman1".into(),
                        services: published,
                        loopback: ObservedLoopback {
                            masquerade: 1,
                            guard: 1,
                            route_localnet: true,
                            mac_pinned: true,
                            bridge_missing: false,
                        },
                    })),
                    isolated: true,
                    bridge: None,
                },
                owner: Default::default(),
            },
        )]),
        zones: BTreeMap::new(),
    };
    (desired, observed, recorded)
}

fn bench(c: &mut Criterion) {
    let (desired, observed, recorded) = world(PROJECTS);
    assert!(
        plan(&desired, &observed, &recorded, &[], 0).is_empty(),
        "the benchmark world is converged"
    );
    c.bench_function("plan 10k projects, converged", |b| {
        b.iter(|| plan(&desired, &observed, &recorded, &[], 0))
    });

    let mut v2 = desired.clone();
    for d in v2.envs.values_mut() {
        d.release = release("app:v2");
    }
    assert_eq!(
        plan(&v2, &observed, &recorded, &[], 0).steps.len(),
        PROJECTS * 3,
        "deploy, probe and preview route each"
    );
    c.bench_function("plan 10k projects, new release everywhere", |b| {
        b.iter(|| plan(&v2, &observed, &recorded, &[], 0))
    });

    // The zone `example.test` managed: first empty (every record missing), then holding exactly
    // the records the plan wrote.
    let mut dns = desired.clone();
    dns.zones.insert(
        "example.test".into(),
        ZoneRef {
            name: "example.test".into(),
            powerdns: Some(PowerDnsRef {
                api: "http://127.0.0.1:8081".into(),
                server_id: "localhost".into(),
                api_key_env: "PDNS_API_KEY".into(),
            }),
            ttl: 300,
        },
    );
    let mut empty = observed.clone();
    empty.zones.insert(
        "example.test".into(),
        ZoneObservation::Present(ObservedZone::default()),
    );
    let first = plan(&dns, &empty, &recorded, &[], 0);
    let [step] = first.steps.as_slice() else {
        panic!("one step for the whole zone: {}", first.steps.len());
    };
    let Action::DnsPatch { changes, .. } = &step.action else {
        panic!("a PATCH");
    };
    assert_eq!(changes.len(), PROJECTS * 3);
    c.bench_function("plan 10k projects with DNS, 30k records missing", |b| {
        b.iter(|| plan(&dns, &empty, &recorded, &[], 0))
    });
    let rrsets = changes
        .iter()
        .filter_map(|c| match &c.change {
            RrsetChange::Replace(r) => Some(r.clone()),
            RrsetChange::Delete { .. } => None,
        })
        .collect();
    let mut full = observed.clone();
    full.zones.insert(
        "example.test".into(),
        ZoneObservation::Present(ObservedZone { rrsets }),
    );
    assert!(plan(&dns, &full, &recorded, &[], 0).is_empty());
    c.bench_function("plan 10k projects with DNS, converged", |b| {
        b.iter(|| plan(&dns, &full, &recorded, &[], 0))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
