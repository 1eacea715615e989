//! `plan` for 10,000 projects against in-memory state (target: under 20 ms).
//!
//! Two worlds: converged (the plan is empty: what every no-op apply and every resync computes) and
//! a new release everywhere (every environment gets deploy, probe and route steps).

use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use std::net::{Ipv4Addr, SocketAddrV4};

use codeb::backend::{
    ObservedContainer, ObservedProxy, ObservedService, ObservedServices, ServiceRule,
    ServiceTarget, LABEL_ENVIRONMENT, LABEL_PROJECT, LABEL_RELEASE, LABEL_SLOT,
};
use codeb::model::{
    Desired, DesiredEnv, EnvKey, EnvRecord, HostRef, Promotion, Recorded, Release, Slot,
    SlotRecord, SlotState,
};
use codeb::plan::{plan, routes, server_spec, HostObservation, KernelObservation, Observed};

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
    };
    let mut recorded = Recorded {
        hosts: desired.hosts.clone(),
        envs: BTreeMap::new(),
    };
    let mut containers = Vec::new();
    let mut proxy = ObservedProxy {
        server: Some(server_spec(&h)),
        routes: Vec::new(),
    };
    let mut services = ObservedServices {
        chain: true,
        hooks: 1,
        ..Default::default()
    };
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
        services.services.insert(
            base,
            ObservedService {
                dispatch: 1,
                chain: true,
                rules: vec![ServiceRule::Dnat(ServiceTarget {
                    to: SocketAddrV4::new(ip, 8080),
                    label: key.to_string(),
                })],
            },
        );
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
            host_port: Some(base),
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
                },
            },
        )]),
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
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
