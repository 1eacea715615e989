//! From validated manifests to the desired state the planner reads.

use super::data::{BackupPolicy, DataWants, OnDelete, PostgresRef, RedisRef, Schedule};
use super::dns::{PowerDnsRef, ZoneRef};
use std::collections::BTreeMap;

use super::{Confinement, Desired, DesiredEnv, EnvKey, HostRef, Override, Promotion, Release};
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
        image_allow: h.containers.images.allow.clone(),
        postgres: h.postgres.as_ref().map(|p| PostgresRef {
            url: p.url.clone(),
            password_env: p.password_env.clone(),
            app_host: p.app_host.clone(),
        }),
        redis: h.redis.as_ref().map(|r| RedisRef {
            url: r.url.clone(),
            password_env: r.password_env.clone(),
            app_host: r.app_host.clone(),
        }),
        backups: h.backups.as_ref().map(|b| {
            let schedule = |s: &spec::ScheduleSpec| Schedule {
                every_secs: s.every.as_secs(),
                keep: s.keep,
            };
            BackupPolicy {
                dir: b.dir.clone(),
                database: schedule(&b.database),
                cache: schedule(&b.cache),
            }
        }),
        access_log: h
            .caddy
            .access_log
            .then(|| super::writes::AccessLog::default_for(name)),
        ssh: h.ssh.as_ref().map(|s| super::SshRef {
            target: s.target.clone(),
            port: s.port,
            identity_file: s.identity_file.clone(),
            known_hosts: s.known_hosts.clone(),
            agent: s.agent.clone(),
        }),
    }
}

/// What an environment asks of its Host's data services.
pub fn data_wants(e: &spec::EnvironmentSpec) -> DataWants {
    DataWants {
        database: e.database.is_some(),
        cache: e.cache.is_some(),
        on_delete: match e.on_delete {
            spec::OnDeleteSpec::Retain => OnDelete::Retain,
            spec::OnDeleteSpec::Drop => OnDelete::Drop,
        },
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
        let policy = m
            .hosts
            .get(&p.spec.host)
            .map(|h| (*h.spec.containers).clone())
            .unwrap_or_default();
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
                    )
                    .with_confinement(Confinement::new(&policy, policy.limits(&e.resources)))
                    // Validated: whole seconds, at most 5 minutes.
                    .with_stop_timeout(e.stop_timeout.as_secs() as u32),
                    health_path: e.health_check.path.clone(),
                    health_timeout: e.health_check.timeout,
                    promotion: match e.promotion {
                        spec::Promotion::Manual => Promotion::Manual,
                        spec::Promotion::Auto => Promotion::Auto,
                    },
                    grace_period: e.grace_period,
                    migration_grace: e.migration_grace,
                    env_from: e.env_from,
                    data: data_wants(e),
                },
            );
        }
    }
    out
}

/// The environment with the override's image, when the override still holds: the manifests name
/// the image it replaced. `None` when it does not hold (the manifests moved on: they win).
pub fn overridden(env: &DesiredEnv, over: &Override) -> Option<DesiredEnv> {
    if env.release.image != over.manifest_image {
        return None;
    }
    let r = &env.release;
    Some(DesiredEnv {
        release: Release::new(
            over.image.clone(),
            r.command.clone(),
            BTreeMap::new(),
            r.port,
        )
        .with_inline_env(r.env.clone())
        .with_env_version(r.env_version)
        .with_confinement(r.confinement.clone())
        .with_stop_timeout(r.stop_timeout_secs),
        ..env.clone()
    })
}

/// The desired state with the release overrides that still hold laid over (see [`overridden`]).
/// Also returns the keys whose override no longer holds (superseded by the manifests).
pub fn overlay(d: &Desired, overrides: &BTreeMap<EnvKey, Override>) -> (Desired, Vec<EnvKey>) {
    let mut out = d.clone();
    let mut superseded = Vec::new();
    for (key, over) in overrides {
        let Some(env) = out.envs.get_mut(key) else {
            continue;
        };
        match overridden(env, over) {
            Some(new) => *env = new,
            None => superseded.push(key.clone()),
        }
    }
    (out, superseded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(image: &str) -> DesiredEnv {
        DesiredEnv {
            key: EnvKey::new("app", "production"),
            host: "h".into(),
            hostname: "app.example".into(),
            release: Release::new(image, None, BTreeMap::new(), 8080),
            health_path: "/".into(),
            health_timeout: Duration::from_secs(5),
            promotion: Promotion::Auto,
            grace_period: Duration::from_secs(60),
            migration_grace: crate::model::DEFAULT_MIGRATION_GRACE,
            env_from: Default::default(),
            data: Default::default(),
        }
    }

    fn over(image: &str, manifest_image: &str) -> Override {
        Override {
            image: image.into(),
            manifest_image: manifest_image.into(),
            by: "cli (uid 0)".into(),
            at_ms: 1,
        }
    }

    #[test]
    fn a_release_is_confined_by_its_hosts_policy_and_its_environments_resources() {
        let host = "apiVersion: codeb.kr/v1\nkind: Host\nmetadata: {name: h}\nspec: {address: \
                    127.0.0.1, podman: 'unix:///p.sock', caddy: {admin: 'http://127.0.0.1:2019'}\
                    CONTAINERS}\n---\napiVersion: codeb.kr/v1\nkind: Zone\nmetadata: {name: z.test}\n\
                    ---\napiVersion: codeb.kr/v1\nkind: Project\nmetadata: {name: p}\nspec: {host: \
                    h, zone: z.test, environments: {production: {image: a, port: 80RESOURCES}}}\n";
        let release = |containers: &str, resources: &str| {
            let text = host
                .replace("CONTAINERS", containers)
                .replace("RESOURCES", resources);
            let m = crate::spec::load_str("t.yaml", &text).unwrap();
            desired(&m).envs[&EnvKey::new("p", "production")]
                .release
                .clone()
        };
        let plain = release("", "");
        assert_eq!(plain.confinement, Confinement::default());
        let confined = release(
            ", containers: {resources: {pids: 128}, maxResources: {memory: 2Gi}, \
             capabilities: {add: [NET_RAW]}, readOnlyRootFs: true, user: '1000:1000'}",
            ", resources: {memory: 2Gi, cpus: 0.5}",
        );
        let c = &confined.confinement;
        assert_eq!((c.memory_bytes, c.millicpus, c.pids), (2 << 30, 500, 128));
        assert!(c.capabilities.contains(&"NET_RAW".to_string()));
        assert!(c.read_only_root_fs && c.no_new_privileges);
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_ne!(
            plain.hash(),
            confined.hash(),
            "a change of limits is a new release"
        );
        let over = over("b", "a");
        let overridden = overridden(&desired_env(confined.clone()), &over).unwrap();
        assert_eq!(overridden.release.confinement, confined.confinement);
    }

    fn desired_env(release: Release) -> DesiredEnv {
        DesiredEnv {
            release,
            ..env("a")
        }
    }

    #[test]
    fn an_override_holds_while_the_manifests_name_the_image_it_replaced() {
        let mut d = Desired::default();
        let e = env("app:v1");
        d.envs.insert(e.key.clone(), e.clone());
        let overrides = BTreeMap::from([(e.key.clone(), over("app:sha-abc", "app:v1"))]);
        let (out, superseded) = overlay(&d, &overrides);
        assert_eq!(out.envs[&e.key].release.image, "app:sha-abc");
        assert!(superseded.is_empty());

        let moved = BTreeMap::from([(e.key.clone(), over("app:sha-abc", "app:v0"))]);
        let (out, superseded) = overlay(&d, &moved);
        assert_eq!(
            out.envs[&e.key].release.image, "app:v1",
            "the manifests win"
        );
        assert_eq!(superseded, vec![e.key]);
    }
}
