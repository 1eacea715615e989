//! The domain model shared by `plan`, `store`, `reconcile` and the backend adapters: slots, their
//! states, releases, desired environments and what is recorded about them; what the backends
//! report ([`observed`]) and are asked to write ([`writes`]); the marks that say what is
//! codeb's ([`ownership`]); and each environment's release history ([`releases`]).
//!
//! Plain data only: no I/O, no clock, no backend types. Nothing here imports `backend`: the
//! adapters convert to these types, never the other way round.

pub mod confinement;
pub mod data;
pub mod desired;
pub mod dns;
pub mod observed;
pub mod ownership;
pub mod ports;
pub mod releases;
pub mod vars;
pub mod writes;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use confinement::Confinement;

/// One of the two slots of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    Blue,
    Green,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::Blue, Slot::Green];

    pub fn other(self) -> Slot {
        match self {
            Slot::Blue => Slot::Green,
            Slot::Green => Slot::Blue,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        }
    }

    /// Blue is the base port, green the base + 1.
    pub fn port(self, base: u16) -> u16 {
        match self {
            Slot::Blue => base,
            Slot::Green => base + 1,
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "blue" => Some(Slot::Blue),
            "green" => Some(Slot::Green),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The life cycle of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Nothing runs here.
    #[default]
    Empty,
    /// A release is being created, started and health-checked.
    Deploying,
    /// Healthy and on its preview URL, not serving the hostname.
    Deployed,
    /// Serving the hostname.
    Active,
    /// The previous active slot, kept running for rollback until its grace period ends.
    Grace,
    /// Never became healthy; its container is stopped and kept for inspection.
    Failed,
}

impl SlotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Empty => "empty",
            SlotState::Deploying => "deploying",
            SlotState::Deployed => "deployed",
            SlotState::Active => "active",
            SlotState::Grace => "grace",
            SlotState::Failed => "failed",
        }
    }

    /// States whose container is expected to be running.
    pub fn wants_running(self) -> bool {
        matches!(
            self,
            SlotState::Deploying | SlotState::Deployed | SlotState::Active | SlotState::Grace
        )
    }
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A project environment: the unit of planning, locking and reconciling.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EnvKey {
    pub project: String,
    pub env: String,
}

impl EnvKey {
    pub fn new(project: impl Into<String>, env: impl Into<String>) -> Self {
        Self {
            project: project.into(),
            env: env.into(),
        }
    }

    /// `{project}-{environment}-{slot}`.
    pub fn container_name(&self, slot: Slot) -> String {
        format!("{}-{}-{}", self.project, self.env, slot)
    }

    /// The `@id` of the route serving the hostname. `_` cannot occur in a DNS-1123 label, so ids of
    /// different keys never collide.
    pub fn route_id(&self) -> String {
        format!(
            "{}{}_{}",
            ownership::ROUTE_ID_PREFIX,
            self.project,
            self.env
        )
    }

    /// The `@id` of a slot's preview route.
    pub fn preview_route_id(&self, slot: Slot) -> String {
        format!("{}_{}", self.route_id(), slot)
    }

    /// The store key.
    pub fn store_key(&self) -> String {
        format!("{}/{}", self.project, self.env)
    }
}

impl fmt::Display for EnvKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.project, self.env)
    }
}

/// What runs in a slot. A change of any field is a new release.
///
/// The hash is computed once per value (planning 10,000 environments compares it several times
/// each); build a new `Release` rather than editing the fields of one whose hash was read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Release {
    pub image: String,
    pub command: Option<Vec<String>>,
    /// The manifest's inline `env:`: recorded as names and a keyed digest, never values (see
    /// [`vars::InlineEnv`]).
    pub env: vars::InlineEnv,
    /// The stored env version this release runs with (`codeb env`; `None`: none, as with
    /// `envFrom: none` or before any `codeb env set`). Rollback runs the version its slot pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_version: Option<u64>,
    pub port: u16,
    /// Limits and privileges of its container; absent in records of a codeb that knew none
    /// (they read as the defaults).
    #[serde(default)]
    pub confinement: Confinement,
    /// Seconds between the stop signal and SIGKILL (the manifest's `stopTimeout`); absent in
    /// records of a codeb that knew none (they read as the default, 10).
    #[serde(default = "default_stop_timeout_secs")]
    pub stop_timeout_secs: u32,
    /// Set on a release known only from its container's labels: adopted by a state directory
    /// that did not deploy it (see `plan::Action::Adopt`), running another release than the
    /// manifests name. Its hash is the label's, which its other fields (the image aside, the rest
    /// defaults) cannot reproduce; its container is never recreated from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<String>,
    #[serde(skip)]
    hash: std::sync::OnceLock<String>,
}

fn default_stop_timeout_secs() -> u32 {
    crate::spec::limits::DEFAULT_STOP_TIMEOUT.as_secs() as u32
}

impl PartialEq for Release {
    fn eq(&self, other: &Self) -> bool {
        self.image == other.image
            && self.command == other.command
            && self.env == other.env
            && self.env_version == other.env_version
            && self.port == other.port
            && self.confinement == other.confinement
            && self.stop_timeout_secs == other.stop_timeout_secs
            && self.adopted == other.adopted
    }
}

impl Eq for Release {}

/// Empty, with the default confinement and stop timeout (a derived default would give a stop
/// timeout of 0, and another hash).
impl Default for Release {
    fn default() -> Self {
        Release::new(String::new(), None, BTreeMap::new(), 0)
    }
}

impl Release {
    pub fn new(
        image: impl Into<String>,
        command: Option<Vec<String>>,
        env: BTreeMap<String, String>,
        port: u16,
    ) -> Self {
        Release {
            image: image.into(),
            command,
            env: vars::InlineEnv::unbound(env),
            env_version: None,
            port,
            confinement: Confinement::default(),
            stop_timeout_secs: default_stop_timeout_secs(),
            adopted: None,
            hash: Default::default(),
        }
    }

    /// A release known only by what its host shows: its container's image and `codeb.release`
    /// label (the field of the same name), and the port codeb's rules lead to in it.
    pub fn adopted(image: impl Into<String>, hash: impl Into<String>, port: u16) -> Self {
        Release {
            adopted: Some(hash.into()),
            ..Release::new(image, None, BTreeMap::new(), port)
        }
    }

    /// The release with this grace period between the stop signal and SIGKILL.
    pub fn with_stop_timeout(self, stop_timeout_secs: u32) -> Self {
        Release {
            stop_timeout_secs,
            hash: Default::default(),
            ..self
        }
    }

    /// The release with this inline env (bound or not).
    pub fn with_inline_env(self, env: vars::InlineEnv) -> Self {
        Release {
            env,
            hash: Default::default(),
            ..self
        }
    }

    /// The release pinned to this stored env version.
    pub fn with_env_version(self, env_version: Option<u64>) -> Self {
        Release {
            env_version,
            hash: Default::default(),
            ..self
        }
    }

    /// The release with these limits and privileges.
    pub fn with_confinement(self, confinement: Confinement) -> Self {
        Release {
            confinement,
            hash: Default::default(),
            ..self
        }
    }

    /// A short, stable hash of every field (the container label `codeb.release`).
    pub fn hash(&self) -> &str {
        if let Some(label) = &self.adopted {
            return label;
        }
        self.hash.get_or_init(|| {
            let mut h = Sha256::new();
            h.update(self.image.as_bytes());
            h.update([0]);
            if let Some(cmd) = &self.command {
                for arg in cmd {
                    h.update(arg.as_bytes());
                    h.update([1]);
                }
            }
            h.update([0]);
            // Keyed once bound: the label on a container lets nobody test a guess of a value.
            self.env.hash_into(&mut h);
            h.update(self.port.to_be_bytes());
            self.confinement.hash_into(&mut h);
            // Nothing for the default: a release hashes as it did before codeb knew stop
            // timeouts, so upgrading codeb redeploys nothing.
            if self.stop_timeout_secs != default_stop_timeout_secs() {
                h.update([7]);
                h.update(self.stop_timeout_secs.to_be_bytes());
            }
            // Nothing without a stored version: a release hashes as before the env store.
            if let Some(v) = self.env_version {
                h.update([8]);
                h.update(v.to_be_bytes());
            }
            const HEX: &[u8; 16] = b"0123456789abcdef";
            h.finalize()
                .iter()
                .take(8)
                .flat_map(|b| {
                    [
                        HEX[(b >> 4) as usize] as char,
                        HEX[(b & 15) as usize] as char,
                    ]
                })
                .collect()
        })
    }
}

/// Promotion mode of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Promotion {
    Manual,
    Auto,
}

/// How promote and rollback move traffic on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchMode {
    /// The kernel maps each environment's stable service address to its active slot; Caddy's
    /// config does not change on promote or rollback.
    Kernel,
    /// The hostname route is pointed at the active slot through Caddy's admin API: every switch is
    /// a graceful reload of Caddy, which closes idle client keep-alive connections.
    CaddyAdmin,
}

impl SwitchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchMode::Kernel => "kernel",
            SwitchMode::CaddyAdmin => "caddy-admin",
        }
    }
}

impl fmt::Display for SwitchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Host as codeb needs it to act, recorded so that `delete` works without manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRef {
    pub name: String,
    pub address: String,
    pub podman: String,
    pub caddy_admin: String,
    pub listen: Vec<String>,
    pub tls: crate::spec::Tls,
    pub publish_address: String,
    /// The Host's image allow-list (`spec.containers.images.allow`; empty: any image), so that
    /// `deploy` of an image refuses what an apply would.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_allow: Vec<String>,
    /// The shared PostgreSQL of the Host's environments (`spec.postgres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<data::PostgresRef>,
    /// The shared Redis of the Host's environments (`spec.redis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<data::RedisRef>,
    /// Where the Host's databases and caches are backed up (`spec.backups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<data::BackupPolicy>,
    /// codeb's access log in the Host's Caddy; `None`: off (the manifest's `caddy.accessLog:
    /// false`, or the operator's `accessLogs.enabled: false`). Read from the manifests alone it is
    /// in [`writes::AccessLog::DEFAULT_DIR`]; the operator's configuration places it
    /// (`crate::config::Config::place_access_logs`) before anything is planned. Absent in hosts
    /// recorded before codeb wrote access logs: off until the next apply records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<writes::AccessLog>,
    /// A remote Host's SSH transport (`spec.ssh`): `podman` and `caddy_admin` are then as seen on
    /// that host. Absent: the Host is the machine codeb runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshRef>,
}

/// How codeb reaches a remote Host: `ssh [-p PORT] [-i IDENTITY] [-o UserKnownHostsFile=…]
/// TARGET AGENT agent --stdio …` (see `backend::remote`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SshRef {
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<String>,
    pub agent: String,
}

impl SshRef {
    /// `target` with its port when one is set: `root@10.0.0.2:2222`, as messages and
    /// `get hosts` name the transport.
    pub fn display(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.target),
            None => self.target.clone(),
        }
    }
}

/// One project environment as the manifests want it. Recorded as declared (see
/// `store::Store::put_declared`), so that a `deploy` of a new image can roll it out without the
/// manifests at hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredEnv {
    pub key: EnvKey,
    pub host: String,
    pub hostname: String,
    pub release: Release,
    pub health_path: String,
    pub health_timeout: Duration,
    pub promotion: Promotion,
    pub grace_period: Duration,
    /// How long the host the environment leaves in a migration keeps its forwarding route and
    /// its stopped slot for a rollback (`migrationGrace`); absent in specs recorded before it
    /// existed (they read as the default, 48 hours).
    #[serde(default = "default_migration_grace")]
    pub migration_grace: Duration,
    /// Whether releases pin the stored env's latest version (`envFrom`); absent in specs
    /// recorded before it existed (they read as `stored`, the default).
    #[serde(default)]
    pub env_from: crate::spec::EnvFrom,
    /// Its database and cache (`database:`, `cache:`, `onDelete:`).
    #[serde(default, skip_serializing_if = "data::DataWants::is_default")]
    pub data: data::DataWants,
}

/// A migration's grace period unless the manifests say otherwise: the original platform's 48
/// hours.
pub const DEFAULT_MIGRATION_GRACE: Duration = Duration::from_secs(48 * 3600);

fn default_migration_grace() -> Duration {
    DEFAULT_MIGRATION_GRACE
}

impl DesiredEnv {
    /// The preview hostname of a slot: `{slot}.{hostname}`.
    pub fn preview_hostname(&self, slot: Slot) -> String {
        preview_hostname(&self.hostname, slot)
    }
}

pub fn preview_hostname(hostname: &str, slot: Slot) -> String {
    format!("{slot}.{hostname}")
}

/// An image set by `deploy` for one environment instead of the manifests' (recorded in the
/// store; laid over the manifests by [`desired::overlay`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    pub image: String,
    /// The image the manifests named when it was set: while they still name it, the override
    /// holds; once they name another, the manifests win.
    pub manifest_image: String,
    /// Who set it (`cli (uid 0)`, `key 3f9a… (ci)`).
    pub by: String,
    pub at_ms: u64,
}

/// Everything the manifests want, keyed for the planner.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    pub hosts: BTreeMap<String, HostRef>,
    pub envs: BTreeMap<EnvKey, DesiredEnv>,
    /// Every declared Zone, managed or not, by domain.
    pub zones: BTreeMap<String, dns::ZoneRef>,
}

/// What is recorded about one slot.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SlotRecord {
    pub state: SlotState,
    /// The release in this slot (absent when empty).
    pub release: Option<Release>,
    /// When the slot entered its state (unix ms): grace periods count from here.
    pub since_ms: u64,
    /// The health path and timeout the release was deployed with.
    #[serde(default)]
    pub health_path: String,
    #[serde(default)]
    pub health_timeout_ms: u64,
    /// The last health-check result, for `describe`.
    #[serde(default)]
    pub last_health: Option<String>,
    /// The last lines of a failed slot's log.
    #[serde(default)]
    pub log_tail: Vec<String>,
}

impl SlotRecord {
    pub fn hash(&self) -> Option<&str> {
        self.release.as_ref().map(Release::hash)
    }
}

/// What is recorded about one project environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvRecord {
    pub key: EnvKey,
    pub host: String,
    pub hostname: String,
    /// Blue's port; green's is `base_port + 1`. Allocated once, kept for life.
    pub base_port: u16,
    /// The slot the hostname routes to.
    pub active: Option<Slot>,
    /// Set by a rollback: the release rolled away from, which apply must not promote again until
    /// the manifests name another release.
    pub held: Option<String>,
    pub grace_period_ms: u64,
    pub blue: SlotRecord,
    pub green: SlotRecord,
    /// Bumped by every write; a plan's steps carry the generation they were computed from.
    pub generation: u64,
    /// Set while the environment moves to `host` from another host (see [`Migration`]); absent
    /// in records of a codeb that knew no migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Box<Migration>>,
    /// Set by `codeb rollback` during a migration: the environment was moved back to `host`
    /// from `from`, and the manifests' `host: FROM` is not acted on (no new migration) until
    /// they name another host; then the mark goes. Like a release override, shown by `diff`
    /// and `describe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<RolledBack>,
}

/// Who moved an environment back to its host during a migration, from which host, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    /// The host the migration was moving to (the manifests' host when it was rolled back).
    pub from: String,
    pub by: String,
    pub at_ms: u64,
}

/// A move of an environment to the host its record names (`EnvRecord::host`, the target) from
/// the one it ran on (`source.host`), recorded when it begins and advanced phase by phase, each
/// phase written before the step that acts on it (see docs/multi-host.md, "Migration").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    /// The environment's record on the host it leaves, as it was when the migration began: its
    /// ports, slots and active slot, which stay there until the cleanup (the planner removes
    /// them from it).
    pub source: EnvRecord,
    pub phase: MigrationPhase,
    /// When `phase` was entered (unix ms): the grace period counts from the entry into `Grace`.
    pub since_ms: u64,
    /// How long the source keeps its forwarding route and its stopped slot after the DNS moved.
    pub grace_ms: u64,
}

impl Migration {
    /// The release the target starts with: the one that served on the source (`None` when
    /// nothing served there, or when its release is known by its label only and cannot be
    /// rebuilt: the manifests' release is deployed then).
    pub fn release(&self) -> Option<&Release> {
        let active = self.source.active?;
        self.source
            .slot(active)
            .release
            .as_ref()
            .filter(|r| r.adopted.is_none())
    }

    /// When the grace period ends (meaningful in `Grace`).
    pub fn grace_ends_ms(&self) -> u64 {
        self.since_ms.saturating_add(self.grace_ms)
    }
}

/// The recorded phases of a migration; each one's completion is read from what is observed,
/// never from the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationPhase {
    /// The target deploys the source's serving release and health-checks it (the ordinary
    /// first deploy, on ports allocated for the target). DNS still names the source, its TTL
    /// lowered.
    Deploying,
    /// The source's hostname route forwards to the target's Caddy.
    Forwarding,
    /// The DNS records name the target's address (TTL still lowered).
    Dns,
    /// The source keeps the forwarding route and its serving slot's container, stopped, until
    /// the grace period ends; then it is cleaned up and the migration record goes. DNS TTL back.
    Grace,
}

impl MigrationPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationPhase::Deploying => "deploying",
            MigrationPhase::Forwarding => "forwarding",
            MigrationPhase::Dns => "dns",
            MigrationPhase::Grace => "grace",
        }
    }
}

impl fmt::Display for MigrationPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EnvRecord {
    pub fn new(key: EnvKey, host: String, hostname: String, base_port: u16) -> Self {
        Self {
            key,
            host,
            hostname,
            base_port,
            active: None,
            held: None,
            grace_period_ms: 3_600_000,
            blue: SlotRecord::default(),
            green: SlotRecord::default(),
            generation: 0,
            migration: None,
            rolled_back: None,
        }
    }

    pub fn slot(&self, slot: Slot) -> &SlotRecord {
        match slot {
            Slot::Blue => &self.blue,
            Slot::Green => &self.green,
        }
    }

    pub fn slot_mut(&mut self, slot: Slot) -> &mut SlotRecord {
        match slot {
            Slot::Blue => &mut self.blue,
            Slot::Green => &mut self.green,
        }
    }
}

/// Everything recorded in the store, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recorded {
    pub hosts: BTreeMap<String, HostRef>,
    pub envs: BTreeMap<EnvKey, EnvRecord>,
    /// The Zones of the last apply, so that `delete` finds a project's records without manifests.
    pub zones: BTreeMap<String, dns::ZoneRef>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(image: &str) -> Release {
        Release::new(image, None, BTreeMap::new(), 8080)
    }

    #[test]
    fn release_hash_changes_with_every_field() {
        let base = release("app:v1");
        let env = Release::new(
            "app:v1",
            None,
            BTreeMap::from([("A".into(), "1".into())]),
            8080,
        );
        let pinned = base.clone().with_env_version(Some(1));
        let keyed = env.clone().with_inline_env(env.env.bind("d1".into()));
        let mut cmd = base.clone();
        cmd.command = Some(vec!["x".into()]);
        let mut port = base.clone();
        port.port = 8081;
        let v2 = release("app:v2");
        let limited = base.clone().with_confinement(Confinement {
            pids: 64,
            ..Confinement::default()
        });
        let patient = base.clone().with_stop_timeout(30);
        let hashes = [
            base.hash(),
            v2.hash(),
            env.hash(),
            cmd.hash(),
            port.hash(),
            limited.hash(),
            patient.hash(),
            pinned.hash(),
            keyed.hash(),
        ];
        let unique: std::collections::BTreeSet<_> = hashes.iter().collect();
        assert_eq!(unique.len(), hashes.len());
        assert_eq!(base.hash(), release("app:v1").hash());
    }

    #[test]
    fn a_release_with_the_default_confinement_keeps_the_hash_it_had_before_confinement() {
        // The hash codeb computed for this release before releases carried a confinement: an
        // upgrade must not redeploy environments whose Host and Project set no limit.
        let r = Release::new(
            "localhost/app:v1",
            Some(vec!["httpd".into()]),
            BTreeMap::from([("A".into(), "1".into())]),
            8080,
        );
        assert_eq!(r.hash(), "effba14e66784977");
        assert_eq!(
            r.clone().with_stop_timeout(10).hash(),
            "effba14e66784977",
            "the default stop timeout (10 s) keeps the hash too"
        );
        let old: Release = serde_json::from_str(
            r#"{"image":"localhost/app:v1","command":["httpd"],"env":{"A":"1"},"port":8080}"#,
        )
        .unwrap();
        assert_eq!(
            old, r,
            "a recorded release without a confinement reads as the defaults"
        );
    }

    #[test]
    fn a_legacy_record_with_plaintext_env_keeps_its_hash_and_the_bound_release_differs_once() {
        // Recorded by a codeb older than the env store: the container it labels is recognised...
        let old: Release = serde_json::from_str(
            r#"{"image":"localhost/app:v1","command":["httpd"],"env":{"A":"1"},"port":8080}"#,
        )
        .unwrap();
        assert_eq!(old.hash(), "effba14e66784977");
        // ...and the desired release, bound to its keyed digest, is another one: the next apply
        // redeploys once, and its record holds no value.
        let bound = old.clone().with_inline_env(old.env.bind("d".into()));
        assert_ne!(bound.hash(), old.hash());
        let json = serde_json::to_string(&bound).unwrap();
        assert!(!json.contains("\"A\":\"1\""), "{json}");
        let back: Release = serde_json::from_str(&json).unwrap();
        assert_eq!(back.hash(), bound.hash(), "read back, it hashes the same");
        assert_eq!(back, bound);
    }

    #[test]
    fn route_ids_of_different_keys_never_collide() {
        let a = EnvKey::new("a-b", "c");
        let b = EnvKey::new("a", "b-c");
        assert_ne!(a.route_id(), b.route_id());
        assert_ne!(
            a.preview_route_id(Slot::Blue),
            b.preview_route_id(Slot::Blue)
        );
    }
}
