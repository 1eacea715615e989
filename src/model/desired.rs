//! From validated manifests to the desired state the planner reads.

use super::dns::{PowerDnsRef, ZoneRef};
use super::{Desired, DesiredEnv, EnvKey, HostRef, Promotion, Release};
use crate::spec::{self, Manifests};

/// The hostname of an environment: as written, or `{project}.{zone}` for production and
/// `{project}-{environment}.{zone}` otherwise.
pub fn hostname(project: &str, env: &str, zone: &str, explicit: Option<&str>) -> String {
    match explicit {
        Some(h) => h.to_string(),
        None if env == "production" => format!("{project}.{zone}"),
        None => format!("{project}-{env}.{zone}"),
    }
}

pub fn zone_ref(name: &str, z: &spec::ZoneSpec) -> ZoneRef {
    ZoneRef {
        name: name.to_string(),
        powerdns: z.powerdns.as_ref().map(|p| PowerDnsRef {
            api: p.api.clone(),
            server_id: p.server_id.clone(),
            api_key_env: p.api_key_env.clone(),
        }),
        ttl: z.ttl,
    }
}

pub fn host_ref(name: &str, h: &spec::HostSpec) -> HostRef {
    HostRef {
        name: name.to_string(),
        address: h.address.clone(),
        podman: h.podman.clone(),
        caddy_admin: h.caddy.admin.clone(),
        listen: h.caddy.listen.clone(),
        tls: h.caddy.tls,
        publish_address: h.publish_address.clone(),
    }
}

/// Every host and project environment the manifests declare.
pub fn desired(m: &Manifests) -> Desired {
    let mut out = Desired::default();
    for (name, h) in &m.hosts {
        out.hosts.insert(name.clone(), host_ref(name, &h.spec));
    }
    for (name, z) in &m.zones {
        out.zones.insert(name.clone(), zone_ref(name, &z.spec));
    }
    for (project, p) in &m.projects {
        for (env, e) in &p.spec.environments {
            let key = EnvKey::new(project.clone(), env.clone());
            out.envs.insert(
                key.clone(),
                DesiredEnv {
                    key,
                    host: p.spec.host.clone(),
                    hostname: hostname(project, env, &p.spec.zone, e.hostname.as_deref()),
                    release: Release::new(
                        e.image.clone(),
                        e.command.clone(),
                        e.env.clone(),
                        e.port,
                    ),
                    health_path: e.health_check.path.clone(),
                    health_timeout: e.health_check.timeout,
                    promotion: match e.promotion {
                        spec::Promotion::Manual => Promotion::Manual,
                        spec::Promotion::Auto => Promotion::Auto,
                    },
                    grace_period: e.grace_period,
                },
            );
        }
    }
    out
}
