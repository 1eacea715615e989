//! The manifest types (apiVersion `codeb.kr/v1`), exactly as users write them.
//!
//! These types are the schema: `crds-schema/*.json` is generated from them with schemars, and every
//! doc comment here is the documentation editors show. Defaults are applied by serde, so a loaded
//! manifest is complete. No I/O and no cross-document checks here (see `validate`).

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use super::document::origin;
use super::patterns;
use super::tree::DocTree;

/// The only apiVersion codeb reads.
pub const API_VERSION: &str = "codeb.kr/v1";

/// `metadata` of every kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// A DNS-1123 label: lowercase letters, digits and `-`, starting with a letter, ending with a
    /// letter or digit, at most 63 characters. A Zone's name is its DNS domain, e.g. `codeb.test`.
    pub name: String,
    /// Labels, as in Kubernetes: `role: app`. A Project may require labels of its Host
    /// (`spec.hostSelector`). Keys: an optional DNS-subdomain prefix and `/`, then at most 63
    /// letters, digits, `-`, `_` and `.`; values: at most 63 of the same, or empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "propertyNames" = {"pattern": patterns::LABEL_KEY, "maxLength": 317},
        "additionalProperties" = {"type": "string", "pattern": patterns::LABEL_VALUE}
    ))]
    pub labels: BTreeMap<String, String>,
}

/// `kind: Host`: a server codeb manages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostSpec {
    /// Where the host is reached: an IPv4 or IPv6 address (DNS records point here).
    #[schemars(regex(pattern = patterns::ip_address()))]
    pub address: String,
    /// Podman's Docker-compatible API: `unix:///path/podman.sock` or `tcp://host:port`. With
    /// `ssh`, the socket on the remote host (`unix:///run/podman/podman.sock`).
    #[schemars(regex(pattern = patterns::podman_endpoint()))]
    pub podman: String,
    /// A remote host: codeb runs `codeb agent --stdio` there over SSH, one kept connection, and
    /// reaches `podman` and `caddy.admin` through it, as they are seen on that host. Omitted: the
    /// host is the machine codeb runs on. The target must be allowed by codeb's configuration
    /// (`endpoints.ssh`), as every other endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshSpec>,
    /// Caddy on this host.
    pub caddy: CaddySpec,
    /// The address container ports are published on, and health checks dial.
    #[serde(default = "default_publish_address")]
    #[schemars(regex(pattern = patterns::ip_address()))]
    pub publish_address: String,
    /// How the containers of this Host's projects are confined: limits, privileges and the images
    /// they may run. Omitted: codeb's defaults (see [`ContainerPolicy`]).
    // Boxed: most of a Host's size, which would size every document.
    #[serde(default, skip_serializing_if = "is_default_policy")]
    pub containers: Box<ContainerPolicy>,
    /// The shared PostgreSQL whose databases this Host's environments get (`database: postgres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("allOf" = [{"properties": {"url": {"pattern": "^postgres://"}}}]))]
    pub postgres: Option<Box<DataServerSpec>>,
    /// The shared Redis whose ACL users this Host's environments get (`cache: redis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("allOf" = [{"properties": {"url": {"pattern": "^redis://"}}}]))]
    pub redis: Option<Box<DataServerSpec>>,
    /// Where this Host's databases and caches are backed up, and how often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<Box<BackupsSpec>>,
    /// The projects that may run on this Host: exact names (`shop`), or a prefix and `*`
    /// (`team-a-*`). Omitted: any project. A project naming this Host that is not listed is
    /// refused: the Host is its operator's document, so only that operator lets a team's project
    /// onto it (as a Zone grants hostnames outside itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(regex(pattern = patterns::project_grant())))]
    pub projects: Option<Vec<String>>,
}

impl HostSpec {
    /// Whether `project` may run on this Host (see [`HostSpec::projects`]).
    pub fn admits(&self, project: &str) -> bool {
        self.projects.as_ref().is_none_or(|grants| {
            grants.iter().any(|g| match g.strip_suffix('*') {
                Some(prefix) => project.starts_with(prefix),
                None => g == project,
            })
        })
    }
}

/// `spec.ssh` of a Host: how codeb reaches a remote host (docs/multi-host.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshSpec {
    /// `[user@]host` as ssh takes it: `root@203.0.113.10`. Letters, digits, `.`, `-`, `_` and
    /// one `@`; an IP address or a name.
    #[schemars(regex(pattern = patterns::SSH_TARGET))]
    pub target: String,
    /// sshd's port (default: ssh's own, 22 or what the operator's ssh config says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// The private key ssh offers (`-i`), an absolute path on codeb's machine. Omitted: ssh's
    /// own (the operator's ssh config, agent or default keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::SSH_PATH))]
    pub identity_file: Option<String>,
    /// A known_hosts file that pins the host's key (`UserKnownHostsFile`), an absolute path on
    /// codeb's machine. Omitted: ssh's own. An unknown or changed key is always refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::SSH_PATH))]
    pub known_hosts: Option<String>,
    /// The codeb binary on the remote host, run as `AGENT agent --stdio`: `codeb` (found on the
    /// PATH there) or an absolute path. It must be the same codeb version as this one.
    #[serde(default = "default_agent")]
    #[schemars(regex(pattern = patterns::SSH_AGENT))]
    pub agent: String,
}

/// `spec.postgres` or `spec.redis` of a Host: a shared server codeb administers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataServerSpec {
    /// The admin connection, without a password: `postgres://codeb_admin@127.0.0.1:5432/postgres`
    /// or `redis://127.0.0.1:6379` (Redis's admin user is `default` unless the URL names one).
    #[schemars(regex(pattern = patterns::data_url("(postgres|redis)")))]
    pub url: String,
    /// The name of the environment variable that holds the admin password, e.g.
    /// `PG_ADMIN_PASSWORD`. The password itself never goes in a manifest.
    #[schemars(regex(pattern = patterns::ENV_NAME))]
    pub password_env: String,
    /// `host:port` written into apps' URLs, when containers reach the server elsewhere than codeb
    /// does (e.g. the bridge's gateway `10.89.0.1:5432`). Default: the admin URL's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::host_port()))]
    pub app_host: Option<String>,
}

/// `spec.backups` of a Host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupsSpec {
    /// The destination directory, an absolute path (the backup host's mount).
    #[schemars(regex(pattern = patterns::BACKUP_DIR), length(max = 4096))]
    pub dir: String,
    /// Logical dumps of each database: `{every: 24h, keep: 7}` by default.
    #[serde(default = "default_database_schedule")]
    pub database: ScheduleSpec,
    /// Dumps of each cache's keys: `{every: 1h, keep: 24}` by default.
    #[serde(default = "default_cache_schedule")]
    pub cache: ScheduleSpec,
}

/// How often a kind of backup runs and how many are kept per environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleSpec {
    /// e.g. `24h`, `1h`; `1m` to `366d`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String", regex(pattern = patterns::duration()))]
    pub every: Duration,
    /// 1 to 1000.
    #[schemars(range(min = 1, max = 1000))]
    pub keep: u32,
}

fn default_database_schedule() -> ScheduleSpec {
    ScheduleSpec {
        every: Duration::from_secs(24 * 3600),
        keep: 7,
    }
}

fn default_cache_schedule() -> ScheduleSpec {
    ScheduleSpec {
        every: Duration::from_secs(3600),
        keep: 24,
    }
}

/// `database:` of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    /// A database and roles of its own in the Host's `postgres`.
    Postgres,
}

/// `cache:` of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CacheKind {
    /// An ACL user of its own, confined to its key prefix, in the Host's `redis`.
    Redis,
}

/// `onDelete:` of an environment: what becomes of its database and cache when it is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnDeleteSpec {
    /// They stay (the default).
    #[default]
    Retain,
    /// They are dropped with the environment (shown in `diff` as destructive).
    Drop,
}

impl OnDeleteSpec {
    pub fn is_retain(&self) -> bool {
        *self == OnDeleteSpec::Retain
    }
}

/// `spec.containers` of a Host, set by its admin: what every container of every project on it
/// gets. The defaults confine a tenant: no new privileges, capabilities dropped to
/// [`KEPT_CAPABILITIES`] (no `NET_RAW`), at most 1 GiB of memory, 1 CPU and 512 processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPolicy {
    /// What an environment gets when its `resources` leave a field out. Each field left out
    /// here is codeb's default: `memory: 1Gi`, `cpus: 1`, `pids: 512`.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// The most an environment's `resources` may ask for. Each field left out here is the
    /// Host's `resources` value: an environment may then ask for less, never more.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub max_resources: Resources,
    /// Set `no-new-privileges`: setuid binaries and file capabilities grant nothing (default
    /// `true`).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub no_new_privileges: bool,
    /// Mount the image's root filesystem read-only (default `false`: many images write to it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only_root_fs: bool,
    /// Run the app as this user instead of the image's: `uid`, `uid:gid` or a name the image
    /// knows, e.g. `1000:1000`. Default: the image's user (often root, with only the kept
    /// capabilities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::user()))]
    pub user: Option<String>,
    /// Changes to the capabilities kept. Every other capability is dropped.
    #[serde(default, skip_serializing_if = "Capabilities::is_empty")]
    pub capabilities: Capabilities,
    /// The images the Host's projects may run.
    #[serde(default, skip_serializing_if = "ImagePolicy::is_empty")]
    pub images: ImagePolicy,
}

impl ContainerPolicy {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

impl Default for ContainerPolicy {
    fn default() -> Self {
        Self {
            resources: Resources::default(),
            max_resources: Resources::default(),
            no_new_privileges: true,
            read_only_root_fs: false,
            user: None,
            capabilities: Capabilities::default(),
            images: ImagePolicy::default(),
        }
    }
}

/// Resource limits of a container. Every field is optional; see where it is used for what an
/// omitted one means.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// Memory, in bytes or with a binary suffix: `512Mi`, `1Gi` (`Ki`, `Mi`, `Gi`, `Ti`); at
    /// least `6Mi`. Swap is not added to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "memory_schema")]
    pub memory: Option<Quantity>,
    /// CPUs, e.g. `0.5`, `1`, `2`; in hundredths, at least `0.01`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "cpus_schema")]
    pub cpus: Option<Quantity>,
    /// Processes and threads the container may hold at once (1-4194304): a fork bomb stops here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4_194_304))]
    pub pids: Option<u32>,
}

/// The schema of `memory`: a string as [`patterns::memory`] reads it, or a number of bytes, at
/// least `6Mi`.
fn memory_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [
            { "type": "string", "pattern": patterns::memory() },
            { "type": "integer", "minimum": super::resources::MIN_MEMORY_BYTES, "maximum": i64::MAX },
            { "type": "null" },
        ]
    })
}

/// The schema of `cpus`: more than 0, at most two decimals (a YAML number's decimals are
/// codeb's to check: `multipleOf: 0.01` fails on floats in editors).
fn cpus_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [
            { "type": "string", "pattern": patterns::CPUS },
            { "type": "number", "exclusiveMinimum": 0, "maximum": 999_999.99 },
            { "type": "null" },
        ]
    })
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// A number as written, `1.5` or `512Mi`: read from a YAML number or string, checked by
/// validation (which reports it where it was written).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(with = "QuantitySchema")]
pub struct Quantity(pub String);

/// The schema of a [`Quantity`]: a number or a string.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum QuantitySchema {
    Number(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a string such as `512Mi`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The capabilities a container keeps when its Host changes nothing: what a web app may need
/// to start as root and drop to a user of its own (`CHOWN`, `DAC_OVERRIDE`, `FOWNER`, `SETGID`,
/// `SETUID`), bind a port under 1024 (`NET_BIND_SERVICE`) and signal its own processes
/// (`KILL`). Podman's defaults also keep `FSETID`, `SETFCAP`, `SETPCAP`, `SYS_CHROOT`,
/// `MKNOD`, `AUDIT_WRITE` and `NET_RAW`; raw sockets (`NET_RAW`) let a container forge packets
/// to its neighbours and the host.
pub const KEPT_CAPABILITIES: [&str; 7] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "KILL",
    "NET_BIND_SERVICE",
    "SETGID",
    "SETUID",
];

/// Changes to [`KEPT_CAPABILITIES`]: the kept set is those plus `add`, minus `drop`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capabilities {
    /// Capabilities kept besides the defaults, e.g. `[NET_RAW]` for an app that pings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = patterns::capability(false))))]
    pub add: Vec<String>,
    /// Default capabilities dropped too, e.g. `[CHOWN]`, or `[ALL]` to keep none (then only
    /// `add` is kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = patterns::capability(true))))]
    pub drop: Vec<String>,
}

impl Capabilities {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.drop.is_empty()
    }
}

/// Which images a Host runs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImagePolicy {
    /// Prefixes of the image references allowed, e.g. `ghcr.io/acme/` (a registry namespace:
    /// end it with `/`) or `localhost/acme-` (a name prefix). When set, an image must be written
    /// with its registry (`docker.io/library/nginx`, not `nginx`: a short name could resolve to
    /// any image on the host) and start with one of them. Empty (the default): any image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = patterns::image_prefix())))]
    pub allow: Vec<String>,
}

impl ImagePolicy {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty()
    }
}

/// How codeb drives the Caddy of a Host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaddySpec {
    /// Caddy's admin API, `http://127.0.0.1:2019`.
    #[schemars(regex(pattern = patterns::http_url(false)))]
    pub admin: String,
    /// Where codeb's Caddy server listens: `host:port` or `:port`, at least one.
    #[serde(default = "default_listen")]
    #[schemars(length(min = 1), inner(regex(pattern = patterns::listen_address())))]
    pub listen: Vec<String>,
    /// `auto` (ACME), `internal` (Caddy's own CA) or `off` (plain HTTP).
    #[serde(default)]
    pub tls: Tls,
    /// Whether Caddy writes an access log of codeb's server on this Host: one JSON line per
    /// request, with its hostname and status. On by default. Where the file is and how it is
    /// rolled is the operator's to say (`accessLogs` in codeb's configuration), never a
    /// manifest's: by default `/var/log/caddy/codeb-HOST.access.log` on the Caddy's machine.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub access_log: bool,
}

/// TLS mode of codeb's Caddy server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    #[default]
    Auto,
    Internal,
    Off,
}

/// `kind: Zone`: a DNS domain. With `powerdns`, codeb writes an A (or AAAA) record for every
/// hostname and preview hostname in it, and only ever touches records it marked as its own; without
/// it, the domain's records are not codeb's business.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneSpec {
    /// The PowerDNS authoritative server holding this zone. The zone is created (Native, with
    /// PowerDNS's default SOA) when it does not exist; an existing zone is used as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub powerdns: Option<PowerDnsSpec>,
    /// The TTL in seconds of the records codeb writes (1-2147483647).
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 1, max = 2_147_483_647))]
    pub ttl: u32,
    /// Hostnames outside this zone that projects naming it may serve: an exact name
    /// (`shop.example.com`) or `*.example.com` for every name under that one. A project hostname
    /// outside its zone and not granted here is refused: the Zone is its DNS owner's document, so
    /// only that owner lets a project take traffic for a name elsewhere. codeb writes no record for
    /// such a name (point it at the Host where its DNS is kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = patterns::hostname_grant())))]
    pub external_hostnames: Vec<String>,
}

impl Default for ZoneSpec {
    fn default() -> Self {
        Self {
            powerdns: None,
            ttl: default_ttl(),
            external_hostnames: Vec::new(),
        }
    }
}

impl ZoneSpec {
    /// Whether `hostname`, outside the zone, is granted by `externalHostnames`.
    pub fn grants(&self, hostname: &str) -> bool {
        self.external_hostnames
            .iter()
            .any(|g| match g.strip_prefix("*.") {
                Some(parent) => hostname
                    .strip_suffix(parent)
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                None => g == hostname,
            })
    }
}

/// How codeb reaches the PowerDNS HTTP API of a Zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PowerDnsSpec {
    /// The API's base URL, without a path: `http://127.0.0.1:8081`.
    #[schemars(regex(pattern = patterns::http_url(true)))]
    pub api: String,
    /// The server id in `/api/v1/servers/{serverId}`.
    #[serde(default = "default_server_id")]
    #[schemars(regex(pattern = patterns::SERVER_ID))]
    pub server_id: String,
    /// The name of the environment variable that holds the API key, e.g. `PDNS_API_KEY`. The key
    /// itself is never written in a manifest, and codeb never prints or stores it.
    #[schemars(regex(pattern = patterns::ENV_NAME))]
    pub api_key_env: String,
}

/// `kind: Project`: an app deployed blue/green to one Host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectSpec {
    /// The `metadata.name` of a Host.
    pub host: String,
    /// Labels the Host must carry (its `metadata.labels`), as a Pod's `nodeSelector`: each key
    /// with exactly this value. A Host without them is refused at validation, naming the label.
    /// E.g. `{role: app}` for the original platform's app servers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "propertyNames" = {"pattern": patterns::LABEL_KEY, "maxLength": 317},
        "additionalProperties" = {"type": "string", "pattern": patterns::LABEL_VALUE}
    ))]
    pub host_selector: BTreeMap<String, String>,
    /// The `metadata.name` of a Zone.
    pub zone: String,
    /// Environment name (a DNS-1123 label) → its release. `production` and `staging` use the port
    /// ranges 4000-4499 and 4500-4999; other names use 5000-5499. At least one.
    #[schemars(extend("propertyNames" = {"pattern": patterns::DNS_LABEL}, "minProperties" = 1))]
    pub environments: BTreeMap<String, EnvironmentSpec>,
}

/// One environment of a Project: what runs there and how it is rolled out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = environment_rules)]
pub struct EnvironmentSpec {
    /// The container image, e.g. `ghcr.io/acme/myapp:1.4.2`. Pulled only when not present locally.
    #[schemars(regex(pattern = patterns::IMAGE))]
    pub image: String,
    /// The port the app listens on inside the container (1-65535).
    #[schemars(schema_with = "port_schema")]
    pub port: u16,
    /// Replaces the image's command (not empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub command: Option<Vec<String>>,
    /// Environment variables that are not secret (they are in git). Values are never printed by
    /// codeb. Secrets belong in the stored env (`codeb env set`), whose value wins when both name
    /// a key; a protected key (`DATABASE_URL`, ...) may not be written here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "propertyNames" = {"pattern": patterns::ENV_NAME},
        // A YAML scalar's text is the value: `PORT: 8080` and `DEBUG: true` are strings.
        "additionalProperties" = {"type": ["string", "number", "boolean"]},
    ))]
    pub env: BTreeMap<String, String>,
    /// `stored` (the default): the containers also get the project environment's stored env
    /// (`codeb env`), pinned per release; `none`: only the inline `env:`.
    #[serde(default, skip_serializing_if = "EnvFrom::is_stored")]
    pub env_from: EnvFrom,
    /// How a new slot is probed before it may serve.
    #[serde(default)]
    pub health_check: HealthCheck,
    /// `manual`: a healthy release waits for `codeb promote`; `auto`: it is promoted at once.
    #[serde(default)]
    pub promotion: Promotion,
    /// How long the previous slot is kept for rollback, e.g. `1h`, `30m`; at most `30d`.
    #[serde(default = "default_grace", with = "humantime_serde")]
    #[schemars(with = "String", regex(pattern = patterns::duration()))]
    pub grace_period: Duration,
    /// When the environment moves to another Host (its `host:` changed): how long the Host it
    /// leaves keeps a route forwarding to the new one and its stopped slot, after the DNS records
    /// moved, e.g. `48h`; at most `30d`, default `48h`.
    #[serde(default = "default_migration_grace", with = "humantime_serde")]
    #[schemars(with = "String", regex(pattern = patterns::duration()))]
    pub migration_grace: Duration,
    /// How long the app is given to finish after its stop signal (SIGTERM unless the image's
    /// `STOPSIGNAL` says otherwise) before SIGKILL, whenever codeb stops or removes one of its
    /// containers; whole seconds, `1s` to `5m`, default `10s`. A change is a new release.
    #[serde(default = "default_stop_timeout", with = "humantime_serde")]
    #[schemars(with = "String", regex(pattern = patterns::duration()))]
    pub stop_timeout: Duration,
    /// Default: `{project}.{zone}` for production, `{project}-{environment}.{zone}` otherwise.
    /// At most 247 characters, so that its preview hostnames (`blue.`, `green.` before it) are
    /// DNS names; unique across every applied environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::dns_name()), length(min = 1, max = 247))]
    pub hostname: Option<String>,
    /// Memory, CPUs and processes for each slot's container. A field left out is the Host's
    /// `containers.resources` value; none may be over its `containers.maxResources`.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// `postgres`: a database of its own in the Host's `postgres`; its `DATABASE_URL`,
    /// `POSTGRES_USER` and `POSTGRES_PASSWORD` become protected keys of the stored env.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseKind>,
    /// `redis`: an ACL user of its own in the Host's `redis`; its `REDIS_URL` and `REDIS_PREFIX`
    /// become protected keys of the stored env.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheKind>,
    /// What becomes of the database and cache when the environment is removed: `retain` (the
    /// default) or `drop`.
    #[serde(default, skip_serializing_if = "OnDeleteSpec::is_retain")]
    pub on_delete: OnDeleteSpec,
}

/// The HTTP health check of a slot: it passes on a 2xx or 3xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// The path probed, starting with `/`, without spaces.
    #[serde(default = "default_health_path")]
    #[schemars(regex(pattern = patterns::HEALTH_PATH))]
    pub path: String,
    /// How long a new slot may take to become healthy before it is `failed`, e.g. `60s`; at
    /// most `1h`.
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    #[schemars(with = "String", regex(pattern = patterns::duration()))]
    pub timeout: Duration,
}

/// The schema of `port`: 1-65535, as a number or quoted (codeb reads a scalar's text, so
/// `port: "8080"` is the port 8080).
fn port_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [
            { "type": "integer", "minimum": 1, "maximum": 65535 },
            { "type": "string", "pattern": format!("^{}$", patterns::PORT) },
        ]
    })
}

/// The rules of an environment between its fields: `database` or `cache` need the stored env
/// (`envFrom` not `none`), and the keys codeb derives from them may not be in `env`.
fn environment_rules(schema: &mut Schema) {
    let derived = |field: &str, keys: &[&str]| {
        serde_json::json!({
            "if": { "required": [field], "properties": { field: { "type": "string" } } },
            "then": {
                "properties": {
                    "envFrom": { "not": { "const": "none" } },
                    "env": { "propertyNames": { "not": { "enum": keys } } },
                },
            },
        })
    };
    schema.insert(
        "allOf".into(),
        serde_json::json!([
            derived("database", &crate::model::data::DATABASE_KEYS),
            derived("cache", &crate::model::data::CACHE_KEYS),
        ]),
    );
}

impl ProjectSpec {
    /// The hostname `environment` is served at: its `hostname`, or by default
    /// `{project}.{zone}` for `production` and `{project}-{environment}.{zone}` otherwise.
    /// `None` when the project has no such environment.
    pub fn hostname(&self, project: &str, environment: &str) -> Option<String> {
        let env = self.environments.get(environment)?;
        Some(match (&env.hostname, environment) {
            (Some(hostname), _) => hostname.clone(),
            (None, "production") => format!("{project}.{}", self.zone),
            (None, _) => format!("{project}-{environment}.{}", self.zone),
        })
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            path: default_health_path(),
            timeout: default_health_timeout(),
        }
    }
}

/// Where an environment's containers take env values from besides the inline `env:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EnvFrom {
    /// The stored env of the project environment (`codeb env set`), its latest version at each
    /// release.
    #[default]
    Stored,
    /// None: the inline `env:` only.
    None,
}

impl EnvFrom {
    pub fn is_stored(&self) -> bool {
        *self == EnvFrom::Stored
    }
}

/// Promotion mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Promotion {
    #[default]
    Manual,
    Auto,
}

fn is_default_policy(p: &ContainerPolicy) -> bool {
    p.is_default()
}
fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn default_agent() -> String {
    "codeb".to_string()
}
fn default_publish_address() -> String {
    "127.0.0.1".to_string()
}
fn default_listen() -> Vec<String> {
    vec![":80".to_string(), ":443".to_string()]
}
fn default_stop_timeout() -> Duration {
    super::limits::DEFAULT_STOP_TIMEOUT
}
fn default_grace() -> Duration {
    Duration::from_secs(3600)
}
fn default_migration_grace() -> Duration {
    crate::model::DEFAULT_MIGRATION_GRACE
}
fn default_health_path() -> String {
    "/".to_string()
}
fn default_ttl() -> u32 {
    300
}
fn default_server_id() -> String {
    "localhost".to_string()
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Where a document came from, for error messages: `file:line:column`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Origin {
    /// The path as given on the command line (or `<stdin>`).
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A loaded document of one kind, with its name and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named<T> {
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// Where the document's `metadata.name` value is.
    pub origin: Origin,
    pub spec: T,
}

/// Every document of an applied set, validated: names are unique per kind and every reference
/// resolves. Keys are `metadata.name`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifests {
    pub hosts: BTreeMap<String, Named<HostSpec>>,
    pub zones: BTreeMap<String, Named<ZoneSpec>>,
    pub projects: BTreeMap<String, Named<ProjectSpec>>,
    /// Where each environment was written, by `(project, environment)`: for the checks against
    /// what the store records (see [`check_recorded`](super::check_recorded)).
    pub env_origins: BTreeMap<(String, String), EnvOrigins>,
}

/// Where one environment of a Project was written, found when asked: from its document's located
/// tree, which is parsed on the first ask (a set applied without a mistake never asks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvOrigins {
    pub(crate) file: String,
    pub(crate) tree: DocTree,
    /// The environment's name (its key under `environments`).
    pub(crate) env: String,
    /// Whether it has a `hostname`.
    pub(crate) explicit_hostname: bool,
}

impl EnvOrigins {
    /// The environment's name (its key under `environments`).
    pub fn name(&self) -> Origin {
        let path = ["spec", "environments", self.env.as_str()];
        origin(&self.file, self.tree.get().key_location(&path))
    }

    /// Its `hostname` value, or its name when the hostname is the default.
    pub fn hostname(&self) -> Origin {
        if !self.explicit_hostname {
            return self.name();
        }
        let path = ["spec", "environments", self.env.as_str(), "hostname"];
        origin(&self.file, self.tree.get().value_location(&path))
    }

    /// Its inline `env:` key `key` (for the check against the operator's protected keys).
    pub fn env_key(&self, key: &str) -> Origin {
        let path = ["spec", "environments", self.env.as_str(), "env", key];
        origin(&self.file, self.tree.get().key_location(&path))
    }
}

impl Manifests {
    /// The hostname environment `env` of Project `project` is served at (see
    /// [`ProjectSpec::hostname`]). `None` when there is no such project or environment.
    pub fn hostname(&self, project: &str, env: &str) -> Option<String> {
        self.projects.get(project)?.spec.hostname(project, env)
    }
}
