//! What the reconcile tests share: the fake host's clients, and a container codeb does not own.

use std::collections::BTreeMap;

use super::HostBackends;
use crate::backend::fake::World;
use crate::model::observed::ObservedContainer;
use crate::model::writes::ContainerSpec;

/// The clients of a host that is the fake `world`, publishing slot ports on loopback.
pub fn fake_host(world: &World) -> HostBackends<World, World, World> {
    HostBackends {
        runtime: world.clone(),
        proxy: world.clone(),
        kernel: world.clone(),
        publish: Some(std::net::Ipv4Addr::LOCALHOST),
        owner: None,
        agent: None,
    }
}

/// Puts a running container that codeb does not own (no labels) under `name`, with the id
/// `foreign`: every create of a container of that name fails, and codeb never removes it.
pub fn hold_name(world: &World, name: &str) {
    let foreign = ObservedContainer {
        id: "foreign".into(),
        name: name.into(),
        image: "other".into(),
        labels: BTreeMap::new(),
        running: true,
        state: "running".into(),
        host_port: None,
        ip: None,
    };
    let spec = ContainerSpec {
        name: name.into(),
        image: "other".into(),
        command: None,
        env: Default::default(),
        env_source: Default::default(),
        labels: BTreeMap::new(),
        container_port: 80,
        host_ip: "127.0.0.1".into(),
        host_port: 1,
        publish: true,
        network: "other".into(),
        mac: None,
        confinement: Default::default(),
        stop_timeout_secs: 10,
    };
    world
        .state()
        .containers
        .insert("foreign".into(), (foreign, spec));
}
