//! The typed results of the use cases: what every front end shows, as data. The CLI renders them
//! as tables and text, the API answers them as JSON, and the OpenAPI document describes them from
//! these very types.
//!
//! Views never hold an environment variable's value: only its name.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{preview_hostname, EnvRecord, HostRef, Recorded, Slot};
use crate::plan::{fields, Note, Plan};
use crate::reconcile::Outcome;
use crate::spec::Tls;
use crate::store::{Override, SwitchModes};

/// One note of a plan: what a person should know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NoteView {
    pub text: String,
    /// The desired state was not reached because of it.
    pub problem: bool,
    /// A host or a zone could not be observed.
    #[serde(default)]
    pub unobserved: bool,
}

impl From<&Note> for NoteView {
    fn from(n: &Note) -> Self {
        NoteView {
            text: n.to_string(),
            problem: n.is_problem(),
            unobserved: n.is_unobserved(),
        }
    }
}

/// What becomes of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Not recorded yet.
    New,
    Changed,
    /// Recorded and no longer declared (pruned).
    Removed,
}

/// One field of an environment, old → new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldChangeView {
    /// As the manifest names it: `image`, `command`, `port`, `healthCheck.path`,
    /// `healthCheck.timeout`, `promotion`, `gracePeriod`, `hostname`, `stopTimeout`,
    /// `resources.memory`, `containers.user`, `envFrom`, `envVersion`, `database`, `cache`,
    /// `onDelete`, …
    pub field: String,
    /// Absent: not set (or unknown) before.
    pub from: Option<String>,
    pub to: Option<String>,
}

/// What happens to an environment variable. `unknown`: its old value could not be read, so it
/// may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VarChangeKind {
    Added,
    Changed,
    Removed,
    Unknown,
}

/// One environment variable that changes: its name, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VarChangeView {
    pub name: String,
    pub change: VarChangeKind,
}

/// What an apply changes in one environment, field by field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvChangesView {
    /// `project/environment`.
    pub environment: String,
    pub change: ChangeKind,
    pub fields: Vec<FieldChangeView>,
    /// The container's environment variables (inline `env:` and the stored env together, as
    /// the container gets them), by name.
    pub env: Vec<VarChangeView>,
}

impl From<&fields::EnvChanges> for EnvChangesView {
    fn from(c: &fields::EnvChanges) -> Self {
        EnvChangesView {
            environment: c.key.to_string(),
            change: match c.kind {
                fields::Kind::New => ChangeKind::New,
                fields::Kind::Changed => ChangeKind::Changed,
                fields::Kind::Removed => ChangeKind::Removed,
            },
            fields: c
                .fields
                .iter()
                .map(|f| FieldChangeView {
                    field: f.name.to_string(),
                    from: f.from.clone(),
                    to: f.to.clone(),
                })
                .collect(),
            env: c
                .vars
                .iter()
                .map(|v| VarChangeView {
                    name: v.name.clone(),
                    change: match v.change {
                        fields::VarChange::Added => VarChangeKind::Added,
                        fields::VarChange::Changed => VarChangeKind::Changed,
                        fields::VarChange::Removed => VarChangeKind::Removed,
                        fields::VarChange::Unknown => VarChangeKind::Unknown,
                    },
                })
                .collect(),
        }
    }
}

/// As `codeb diff` prints it: one line per field and per variable, `project/env: …`.
impl std::fmt::Display for EnvChangesView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env = &self.environment;
        match self.change {
            ChangeKind::New => writeln!(f, "{env}: new environment")?,
            ChangeKind::Removed => writeln!(f, "{env}: removed")?,
            ChangeKind::Changed => {}
        }
        for c in &self.fields {
            let to = c.to.as_deref().unwrap_or("(none)");
            match (&c.from, self.change) {
                (None, ChangeKind::New) => writeln!(f, "{env}: {} {to}", c.field)?,
                (from, _) => writeln!(
                    f,
                    "{env}: {} {} → {to}",
                    c.field,
                    from.as_deref().unwrap_or("(none)")
                )?,
            }
        }
        for v in &self.env {
            let what = match v.change {
                VarChangeKind::Added => "added",
                VarChangeKind::Changed => "changed",
                VarChangeKind::Removed => "removed",
                VarChangeKind::Unknown => "may have changed (its old value could not be read)",
            };
            writeln!(f, "{env}: env {} {what} (value hidden)", v.name)?;
        }
        Ok(())
    }
}

/// A plan as `codeb diff` prints it: what changes per environment, the steps in order, then
/// notes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanView {
    /// Per environment, what changes field by field (names only for env variables). Absent
    /// from an answer of a codeb that knew none.
    #[serde(default)]
    pub changes: Vec<EnvChangesView>,
    pub steps: Vec<String>,
    pub notes: Vec<NoteView>,
}

impl From<&Plan> for PlanView {
    fn from(p: &Plan) -> Self {
        PlanView {
            changes: vec![],
            steps: p.steps.iter().map(|s| s.to_string()).collect(),
            notes: p.notes.iter().map(NoteView::from).collect(),
        }
    }
}

impl PlanView {
    /// Sets these environments' changes (the empty ones left out).
    pub fn set_changes(&mut self, changes: &[fields::EnvChanges]) {
        self.changes = changes
            .iter()
            .filter(|c| !c.is_empty())
            .map(EnvChangesView::from)
            .collect();
    }

    pub fn unobserved(&self) -> bool {
        self.notes.iter().any(|n| n.unobserved)
    }

    /// Nothing to change: no field change, no step, no problem.
    pub fn converged(&self) -> bool {
        self.changes.is_empty() && self.steps.is_empty() && !self.has_problems()
    }

    /// A note says the desired state is not reached (an unobserved backend is one too).
    pub fn has_problems(&self) -> bool {
        self.notes.iter().any(|n| n.problem)
    }
}

/// As `codeb diff` prints it: the changes per environment, a step per line, then the notes (`!`
/// marks a problem).
impl std::fmt::Display for PlanView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.changes {
            write!(f, "{c}")?;
        }
        for step in &self.steps {
            writeln!(f, "  {step}")?;
        }
        for note in &self.notes {
            let mark = if note.problem { "!" } else { "·" };
            writeln!(f, "{mark} {}", note.text)?;
        }
        Ok(())
    }
}

/// A change's plan and the fingerprint of the state it was computed from: a change confirmed with
/// this fingerprint runs only while the state still has it (`service::Request::Guarded`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedView {
    pub plan: PlanView,
    /// 32 hex digits; no secret goes into it.
    pub fingerprint: String,
    /// The environments the change concerns (`project/environment`).
    pub environments: Vec<String>,
}

/// A step that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FailureView {
    pub step: String,
    pub error: String,
}

/// What an execution did: every step executed, every failure, the last plan's notes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeView {
    pub executed: Vec<String>,
    pub failures: Vec<FailureView>,
    pub notes: Vec<NoteView>,
    /// No step failed and no note is a problem.
    pub converged: bool,
    /// `apply --timeout` was reached: codeb stopped between steps (or cut a wait short) with work
    /// left, which the next apply resumes (exit 4).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
}

impl From<&Outcome> for OutcomeView {
    fn from(o: &Outcome) -> Self {
        OutcomeView {
            executed: o.executed.clone(),
            failures: o
                .failures
                .iter()
                .map(|f| FailureView {
                    step: f.step.clone(),
                    error: crate::backend::error_chain(&f.error),
                })
                .collect(),
            notes: o.notes.iter().map(NoteView::from).collect(),
            converged: o.converged(),
            timed_out: o.timed_out,
        }
    }
}

/// As the CLI prints it: `✓` per executed step, `✗` per failure, the notes, then whether it
/// converged.
impl std::fmt::Display for OutcomeView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for step in &self.executed {
            writeln!(f, "✓ {step}")?;
        }
        for failure in &self.failures {
            writeln!(f, "✗ {}: {}", failure.step, failure.error)?;
        }
        for note in &self.notes {
            let mark = if note.problem { "!" } else { "·" };
            writeln!(f, "{mark} {}", note.text)?;
        }
        if self.timed_out {
            writeln!(
                f,
                "! stopped: --timeout was reached with work left (the next apply resumes it)"
            )?;
        }
        match (self.converged, self.executed.is_empty()) {
            (true, true) => writeln!(f, "converged: nothing to do"),
            (true, false) => writeln!(f, "converged"),
            (false, _) => writeln!(f, "not converged"),
        }
    }
}

/// The result of `apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyView {
    pub dry_run: bool,
    /// The first plan: all a dry run does.
    pub plan: PlanView,
    /// What was executed; absent for a dry run.
    pub outcome: Option<OutcomeView>,
    /// What the daemon adds: the manifests it keeps in force set some of this back.
    pub daemon_notes: Vec<String>,
}

/// A codeb build: its version, the git commit it is built from and that commit's date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    pub version: String,
    pub commit: String,
    pub commit_date: String,
}

impl VersionView {
    /// This process's build.
    pub fn this_build() -> VersionView {
        VersionView {
            version: env!("CARGO_PKG_VERSION").into(),
            commit: env!("CODEB_GIT_COMMIT").into(),
            commit_date: env!("CODEB_GIT_DATE").into(),
        }
    }
}

/// One row of `get projects`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectRow {
    pub project: String,
    pub environment: String,
    pub url: String,
    #[schema(value_type = Option<String>)]
    pub active_slot: Option<Slot>,
    pub host: String,
    pub ports: String,
}

/// One row of `get slots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlotRow {
    pub project: String,
    pub environment: String,
    #[schema(value_type = String)]
    pub slot: Slot,
    pub state: String,
    pub image: Option<String>,
    pub release: Option<String>,
    /// The stored env version the slot's release runs with; none: no stored env.
    #[serde(default)]
    pub env_version: Option<u64>,
    pub port: u16,
    pub container: String,
    pub preview_url: String,
}

/// One release of `codeb releases` (newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseRow {
    pub project: String,
    pub environment: String,
    /// 1, 2, 3… per environment, never reused: what `rollback --to` names.
    pub number: u64,
    pub image: String,
    /// The stored env version it ran with; none: no stored env.
    pub env_version: Option<u64>,
    /// The release's hash (the container label `codeb.release`).
    pub release: String,
    /// The slot it was deployed into.
    #[schema(value_type = String)]
    pub slot: Slot,
    /// `deploying`, `deployed`, `active`, `grace`; or how it ended: `retired`, `failed`,
    /// `replaced`.
    pub state: String,
    /// Who started it (`cli (uid 0)`, `key 3f9a… (ci)`, `codeb watch`; `unknown` for one that ran
    /// before codeb kept a history).
    pub by: String,
    /// When it was deployed (unix ms).
    pub at_ms: u64,
    /// When it entered its state (unix ms).
    pub since_ms: u64,
    /// When it ended (unix ms), once it is retired, failed or replaced.
    pub ended_at_ms: Option<u64>,
    /// The release `rollback --to` rolled out again, when this one is such a rollback.
    pub rollback_of: Option<u64>,
}

impl ReleaseRow {
    pub fn new(key: &crate::model::EnvKey, e: &crate::model::releases::ReleaseEntry) -> Self {
        ReleaseRow {
            project: key.project.clone(),
            environment: key.env.clone(),
            number: e.number,
            image: e.image.clone(),
            env_version: e.env_version,
            release: e.hash.clone(),
            slot: e.slot,
            state: e.state.to_string(),
            by: e.by.clone(),
            at_ms: e.at_ms,
            since_ms: e.since_ms,
            ended_at_ms: e.state.ended().then_some(e.since_ms),
            rollback_of: e.rollback_of,
        }
    }
}

/// One row of `get hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostRow {
    pub name: String,
    pub address: String,
    pub podman: String,
    pub caddy_admin: String,
    pub listen: String,
    pub tls: String,
    /// How promote and rollback move traffic on this host, as last observed: `kernel` (a NAT rule
    /// behind a stable service address; Caddy's config does not change) or `caddy-admin` (the
    /// hostname route changes: a Caddy reload). `-` before the first observation.
    pub switch: String,
    /// Why the host falls back to `caddy-admin`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch_reason: Option<String>,
    /// How codeb reaches the host: `local` (this machine), or `ssh TARGET` (a remote Host, through
    /// `codeb agent --stdio`).
    #[serde(default)]
    pub transport: String,
    /// `yes` when the host answered (its Podman, its Caddy, and for a remote Host the session);
    /// `Unknown` when it could not be observed: nothing is planned or removed there meanwhile.
    /// `-` when not asked.
    #[serde(default)]
    pub reachable: String,
    /// Since when the host has been `Unknown`, in milliseconds since the Unix epoch (inside a
    /// daemon, its loop's first failure; outside one, this check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_since_ms: Option<u64>,
    /// Why the host is `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The round trip of codeb's connection to the host, in microseconds: for a remote Host the
    /// agent's `ping` over the kept ssh session, for a local one Podman's `_ping`.
    #[serde(default)]
    pub rtt_us: Option<u64>,
    /// The project environments recorded on the host.
    #[serde(default)]
    pub environments: usize,
    #[serde(default)]
    pub podman_version: Option<String>,
    /// `caddy version` on the host (Caddy's admin API does not say it).
    #[serde(default)]
    pub caddy_version: Option<String>,
}

fn scheme(host: Option<&HostRef>) -> &'static str {
    match host.map(|h| h.tls) {
        Some(Tls::Off) => "http",
        _ => "https",
    }
}

/// A hostname's URL as it works: the Host's scheme, and the port Caddy listens on when it does
/// not listen on the scheme's default (`http://hello.codeb.test:18080` on the test stack).
pub fn url(host: Option<&HostRef>, hostname: &str) -> String {
    let scheme = scheme(host);
    let default = if scheme == "https" { 443 } else { 80 };
    let ports: Vec<u16> = host
        .map(|h| {
            h.listen
                .iter()
                .filter_map(|l| l.rsplit_once(':')?.1.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    match ports.first() {
        Some(port) if !ports.contains(&default) => format!("{scheme}://{hostname}:{port}"),
        _ => format!("{scheme}://{hostname}"),
    }
}

pub fn project_rows(r: &Recorded) -> Vec<ProjectRow> {
    r.envs
        .values()
        .map(|e| ProjectRow {
            project: e.key.project.clone(),
            environment: e.key.env.clone(),
            url: url(r.hosts.get(&e.host), &e.hostname),
            active_slot: e.active,
            host: e.host.clone(),
            ports: format!("{}/{}", e.base_port, e.base_port + 1),
        })
        .collect()
}

pub fn slot_rows(r: &Recorded) -> Vec<SlotRow> {
    let mut out = Vec::new();
    for e in r.envs.values() {
        for slot in Slot::ALL {
            let s = e.slot(slot);
            out.push(SlotRow {
                project: e.key.project.clone(),
                environment: e.key.env.clone(),
                slot,
                state: s.state.to_string(),
                image: s.release.as_ref().map(|r| r.image.clone()),
                release: s.hash().map(str::to_string),
                env_version: s.release.as_ref().and_then(|r| r.env_version),
                port: slot.port(e.base_port),
                container: e.key.container_name(slot),
                preview_url: url(r.hosts.get(&e.host), &preview_hostname(&e.hostname, slot)),
            });
        }
    }
    out
}

pub fn host_rows(r: &Recorded, modes: &SwitchModes) -> Vec<HostRow> {
    r.hosts
        .values()
        .map(|h| HostRow {
            name: h.name.clone(),
            address: h.address.clone(),
            podman: h.podman.clone(),
            caddy_admin: h.caddy_admin.clone(),
            listen: h.listen.join(","),
            tls: format!("{:?}", h.tls).to_lowercase(),
            switch: modes
                .get(&h.name)
                .map_or("-".into(), |(m, _)| m.to_string()),
            switch_reason: modes.get(&h.name).and_then(|(_, r)| r.clone()),
            transport: h
                .ssh
                .as_ref()
                .map_or("local".into(), |s| format!("ssh {}", s.display())),
            reachable: "-".into(),
            unknown_since_ms: None,
            last_error: None,
            rtt_us: None,
            environments: r.envs.values().filter(|e| e.host == h.name).count(),
            podman_version: None,
            caddy_version: None,
        })
        .collect()
}

/// One slot in `describe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlotView {
    #[schema(value_type = String)]
    pub slot: Slot,
    pub state: String,
    pub image: Option<String>,
    pub release: Option<String>,
    /// The names of the release's inline environment variables; never their values.
    pub env_names: Vec<String>,
    /// The stored env version the release runs with (`codeb env history`); none: no stored env.
    #[serde(default)]
    pub env_version: Option<u64>,
    pub last_health: Option<String>,
    pub log_tail: Vec<String>,
}

/// An image set through `deploy` instead of the manifests, and who set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverrideView {
    pub image: String,
    /// The manifests' image it overrides; a manifest naming another image supersedes it.
    pub manifest_image: String,
    pub by: String,
    pub at_ms: u64,
}

impl From<&Override> for OverrideView {
    fn from(o: &Override) -> Self {
        OverrideView {
            image: o.image.clone(),
            manifest_image: o.manifest_image.clone(),
            by: o.by.clone(),
            at_ms: o.at_ms,
        }
    }
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// One environment in `describe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvView {
    pub environment: String,
    pub host: String,
    pub url: String,
    pub base_port: u16,
    #[schema(value_type = Option<String>)]
    pub active: Option<Slot>,
    pub grace_period_ms: u64,
    /// A release rolled away from, which apply does not promote again.
    pub held: Option<String>,
    /// Where the image comes from when it is not the manifests'.
    pub release_override: Option<OverrideView>,
    /// A migration in progress: from which host, its phase and since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    /// Set by `codeb rollback` during a migration: back on `host` from another, by whom and
    /// when; the manifests' host rolled away from is not acted on until they name another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<String>,
    pub slots: Vec<SlotView>,
    /// Its database, as codeb recorded it (`None`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseView>,
    /// Its cache, as codeb recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheView>,
}

/// An environment's database: where, its names, and which logins hold applied credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseView {
    /// `host:port` of the server.
    pub server: String,
    pub database: String,
    /// The login roles whose password codeb set (and has not disabled).
    pub logins: Vec<String>,
}

/// An environment's cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheView {
    pub server: String,
    pub user: String,
    pub prefix: String,
    /// How many passwords the user holds (2 during a rotation).
    pub passwords: usize,
}

impl EnvView {
    /// With what codeb recorded of its database and cache.
    pub fn with_data(mut self, rec: Option<&crate::model::data::DataRecord>) -> Self {
        let host = |url: &str| crate::model::data::url_host(url).unwrap_or(url).to_string();
        if let Some(d) = rec.and_then(|r| r.database.as_ref()) {
            self.database = Some(DatabaseView {
                server: host(&d.server),
                database: d.names.database.clone(),
                logins: d
                    .names
                    .logins
                    .iter()
                    .zip(&d.applied)
                    .filter(|(_, a)| a.is_some())
                    .map(|(l, _)| l.clone())
                    .collect(),
            });
        }
        if let Some(c) = rec.and_then(|r| r.cache.as_ref()) {
            self.cache = Some(CacheView {
                server: host(&c.server),
                user: c.names.user.clone(),
                prefix: c.names.prefix.clone(),
                passwords: c.applied.len(),
            });
        }
        self
    }
}

impl EnvView {
    pub fn new(e: &EnvRecord, host: Option<&HostRef>, over: Option<&Override>) -> Self {
        EnvView {
            environment: e.key.env.clone(),
            host: e.host.clone(),
            url: url(host, &e.hostname),
            base_port: e.base_port,
            active: e.active,
            grace_period_ms: e.grace_period_ms,
            held: e.held.clone(),
            release_override: over.map(OverrideView::from),
            migration: e.migration.as_deref().map(|m| {
                format!(
                    "from host {} to host {}, phase {} since {}",
                    m.source.host,
                    e.host,
                    m.phase,
                    rfc3339(m.since_ms)
                )
            }),
            rolled_back: e.rolled_back.as_ref().map(|m| {
                format!(
                    "rolled back to host {} from host {} by {} at {}; change `host:` in the \
                     manifests",
                    e.host,
                    m.from,
                    m.by,
                    rfc3339(m.at_ms)
                )
            }),
            database: None,
            cache: None,
            slots: Slot::ALL
                .into_iter()
                .map(|slot| {
                    let s = e.slot(slot);
                    SlotView {
                        slot,
                        state: s.state.to_string(),
                        image: s.release.as_ref().map(|r| r.image.clone()),
                        release: s.hash().map(str::to_string),
                        env_names: s
                            .release
                            .as_ref()
                            .map(|r| r.env.names().to_vec())
                            .unwrap_or_default(),
                        env_version: s.release.as_ref().and_then(|r| r.env_version),
                        last_health: s.last_health.clone(),
                        log_tail: s.log_tail.clone(),
                    }
                })
                .collect(),
        }
    }
}

/// One line of a project's history: a step's outcome from the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryLine {
    pub at_ms: u64,
    pub ok: bool,
    pub step: String,
    pub message: Option<String>,
}

/// `describe project NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectView {
    pub project: String,
    pub environments: Vec<EnvView>,
    /// The last 30 outcomes, oldest first.
    pub history: Vec<HistoryLine>,
    /// Steps that were in flight when a codeb process stopped.
    pub interrupted: Vec<String>,
}

/// A slot's log tail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogsView {
    pub project: String,
    pub environment: String,
    #[schema(value_type = String)]
    pub slot: Slot,
    pub container: String,
    /// Application output: untrusted text, control characters replaced.
    pub lines: Vec<String>,
}

/// The result of an env change (`set`, `unset`, `import`, `restore`): names only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvChangeView {
    pub project: String,
    pub environment: String,
    /// `set`, `unset`, `import` or `restore`.
    pub op: String,
    /// The version written; none when nothing changed.
    pub version: Option<u64>,
    /// The version before.
    pub previous: Option<u64>,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Protected keys the request named whose stored value was kept (it needs an admin with
    /// `--protected`).
    pub kept: Vec<String>,
    /// The release it rolled out (absent when the environment is not declared or nothing
    /// changed).
    pub rollout: Option<OutcomeView>,
    pub notes: Vec<String>,
}

/// One variable of `env list`: its name and the keyed digest of its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvListRow {
    pub name: String,
    /// 12 hex digits of an HMAC of the value under the env key: equal digests, equal values.
    pub digest: String,
    /// Only an admin with `--protected` changes it.
    pub protected: bool,
}

/// `env list`: the latest version's names and digests; never values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvListView {
    pub project: String,
    pub environment: String,
    pub version: Option<u64>,
    pub vars: Vec<EnvListRow>,
}

/// `env get`: one value (admin only, audited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvValueView {
    pub project: String,
    pub environment: String,
    pub version: u64,
    pub key: String,
    #[schema(value_type = String)]
    pub value: crate::model::vars::SecretText,
}

/// `env export`: the latest version as dotenv text (admin only, audited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvExportView {
    pub project: String,
    pub environment: String,
    pub version: u64,
    #[schema(value_type = String)]
    pub text: crate::model::vars::SecretText,
}

/// One version of `env history`: who, when, which names changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvHistoryRow {
    pub project: String,
    pub environment: String,
    pub version: u64,
    pub at_ms: u64,
    pub by: String,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// The version a restore copied.
    pub restored_from: Option<u64>,
}

/// `env diff V1 V2`: names only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvDiffView {
    pub project: String,
    pub environment: String,
    pub from: u64,
    pub to: u64,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

/// `env backup` / `env restore-backup`: what was written or read. The backup text holds sealed
/// values only (and no key); the CLI writes it to the directory named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvBackupView {
    pub versions: usize,
    pub environments: Vec<String>,
    #[schema(value_type = String)]
    pub backup: crate::model::vars::SecretText,
}

/// One backup of `backup list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRow {
    pub project: String,
    pub environment: String,
    pub id: String,
    /// `database` or `cache`.
    pub kind: String,
    /// RFC 3339 (empty when the manifest could not be read).
    pub created: String,
    /// Bytes of its files.
    pub size: u64,
    /// Database: rows over all tables; cache: keys.
    pub items: u64,
    /// `sizes` (every file there with its size: a listing's check), `verified` (every SHA-256
    /// read again: `--verify`) or `problem`.
    pub check: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One backup `backup run` made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupMade {
    pub project: String,
    pub environment: String,
    pub id: String,
    pub kind: String,
    pub size: u64,
    pub items: u64,
    pub elapsed_ms: u64,
    /// Older backups retention deleted after it.
    pub deleted: Vec<String>,
}

/// One backup `backup run` could not make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupFailed {
    pub project: String,
    pub environment: String,
    pub kind: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRunView {
    pub made: Vec<BackupMade>,
    pub failed: Vec<BackupFailed>,
}

/// One table of a database restore: its rows in the backup and in the restored database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TableCheck {
    pub table: String,
    pub expected: Option<u64>,
    pub actual: Option<u64>,
}

/// What `restore` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreView {
    pub project: String,
    pub environment: String,
    pub id: String,
    pub kind: String,
    /// Database: the new database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableCheck>,
    /// Cache: the prefix written under, and the keys in the backup and written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<(u64, u64)>,
    pub elapsed_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_the_port_caddy_listens_on_unless_it_is_the_schemes_default() {
        let mut h = crate::plan::tests::host();
        assert_eq!(url(Some(&h), "a.test"), "http://a.test:18080");
        h.listen = vec![":80".into(), ":443".into()];
        assert_eq!(url(Some(&h), "a.test"), "http://a.test");
        h.tls = Tls::Auto;
        assert_eq!(url(Some(&h), "a.test"), "https://a.test");
        h.listen = vec![":8443".into()];
        assert_eq!(url(Some(&h), "a.test"), "https://a.test:8443");
        assert_eq!(url(None, "a.test"), "https://a.test");
    }
}
