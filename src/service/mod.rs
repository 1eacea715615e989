//! The use cases of codeb, once for every front end: the CLI (in its own process or through the
//! daemon's socket), the HTTP API, and MCP next. Each takes a typed [`Request`] and returns a
//! typed [`Response`] (views in [`view`]) or an [`Error`] whose kind maps to an exit code or an
//! HTTP status. Nothing here prints, parses argv or speaks HTTP.
//!
//! A use case runs on a [`Ctx`]: the store, and, inside `codeb watch`/`serve`, the [`Daemon`]
//! whose loop keeps the hosts converged. A use case that acts on environments claims them from
//! the loop's queue first, so that the loop and a request never run one environment at once.
//!
//! Must not: read a file a request names (manifests arrive as [`Source`] texts), print, or make a
//! decision the planner makes.

pub mod backup;
pub mod data;
pub mod env;
pub mod error;
pub mod hosts;
pub mod releases;
pub mod view;
pub mod warm;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use error::{Code, Error, Result};
use view::{ApplyView, LogsView, OutcomeView, PlanView, PlannedView, ProjectView};

use crate::auth::{self, AuditEntry, AuditRetention, Caller, KeyRecord, Permission, Role};
use crate::backend::Runtime;
use crate::model::desired::{desired, overlay, overridden};
use crate::model::dns::ZoneRef;
use crate::model::vars::{EnvValues, SecretText};
use crate::model::{Desired, EnvKey, Override, Slot};
use crate::plan::{self, HostObservation, Note};
use crate::reconcile::connect::{connect, connect_zones};
use crate::reconcile::controller::{ClaimGuard, Handle, Work};
use crate::reconcile::{self, HttpProber, Outcome, Target};
use crate::spec::Source;
use crate::store::Store;

/// What `get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GetWhat {
    Projects,
    Slots,
    Hosts,
}

/// Every use case, as data: what the socket, the HTTP API and MCP carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Converge the hosts to these manifests.
    Apply {
        manifests: Vec<Source>,
        #[serde(default)]
        dry_run: bool,
        /// Remove recorded environments the manifests no longer contain.
        #[serde(default)]
        prune: bool,
        /// With `prune`, allow removing every environment.
        #[serde(default)]
        allow_empty: bool,
        /// With `prune`, the number of environments it removes: needed when they belong to more
        /// than one project (see [`Prune`]).
        #[serde(default)]
        confirm: Option<usize>,
        /// With `prune`, only these projects' environments may be removed (none named: any).
        #[serde(default)]
        prune_projects: Vec<String>,
        /// Bounds the whole run (`apply --timeout`): past it no step starts and a health wait
        /// stops (the outcome says `timedOut`, exit 4); a step still acting [`HARD_STOP_MS`]
        /// later is abandoned (`Code::TimedOut`). None: unbounded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// What apply would change.
    Diff {
        manifests: Vec<Source>,
    },
    Get {
        what: GetWhat,
    },
    Describe {
        project: String,
    },
    Promote {
        project: String,
        environment: String,
    },
    /// Back to the grace slot at once; with `to`, back to release `to` of the environment's
    /// history (see [`releases`]).
    Rollback {
        project: String,
        environment: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<u64>,
    },
    /// An environment's release history, newest first.
    Releases {
        project: String,
        environment: String,
    },
    /// Remove projects: by name, or those the manifests declare.
    Delete {
        #[serde(default)]
        projects: Vec<String>,
        #[serde(default)]
        manifests: Vec<Source>,
    },
    /// Roll `image` out to one environment through the blue/green path, as a release override.
    Deploy {
        project: String,
        environment: String,
        image: String,
    },
    /// A slot's log tail (the active slot's when none is named); with `follow`, then every line
    /// it writes, as [`reconcile::Event::Log`] progress events, until the container's log ends or
    /// the client goes away (only a client that streams may follow: the CLI, or the daemon's
    /// socket).
    Logs {
        project: String,
        environment: String,
        #[serde(default)]
        slot: Option<Slot>,
        #[serde(default = "default_lines")]
        lines: usize,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        follow: bool,
    },
    /// Create an API key; its text is in the answer, and nowhere else ever.
    KeyCreate {
        role: Role,
        #[serde(default)]
        name: Option<String>,
        /// The projects a developer or viewer key is limited to; none: every project.
        #[serde(default)]
        projects: Vec<String>,
        /// Milliseconds until it expires; none: never.
        #[serde(default)]
        expires_in_ms: Option<u64>,
    },
    KeyList,
    /// The answering codeb's version (a daemon's, to `codeb version`).
    Version,
    KeyRevoke {
        id: String,
    },
    /// Take a host over from the codeb whose owner mark it carries (or mark an unmarked one).
    HostAdopt {
        host: String,
    },
    /// Forget a recorded host that no environment runs on, releasing this codeb's owner mark.
    HostDelete {
        host: String,
    },
    /// Audit entries, newest last, within what the caller may see.
    Audit {
        #[serde(default)]
        project: Option<String>,
        #[serde(default)]
        since_ms: Option<u64>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// The plan `change` would carry out now, and the fingerprint of the state it was computed
    /// from (see [`PlannedView`]). Changes nothing; needs only `read`.
    Plan {
        change: Change,
    },
    /// Carries out `change` only if, under the claim of what it acts on, the state's fingerprint
    /// is still `fingerprint` (the one its plan was shown with): a plan confirmed by someone is
    /// never carried out on a state they did not see. Otherwise `Conflict`, nothing done.
    Guarded {
        change: Change,
        fingerprint: String,
    },
    /// Set variables of an environment's stored env (a new version, rolled out).
    EnvSet {
        project: String,
        environment: String,
        vars: EnvValues,
        /// Change protected keys too (needs `env-protected`).
        #[serde(default)]
        protected: bool,
    },
    /// Remove variables (a new version, rolled out).
    EnvUnset {
        project: String,
        environment: String,
        keys: Vec<String>,
        #[serde(default)]
        protected: bool,
    },
    /// Replace the env with a dotenv file's (protected keys aside; a new version, rolled out).
    EnvImport {
        project: String,
        environment: String,
        file: EnvFile,
        #[serde(default)]
        protected: bool,
    },
    /// The latest version's names and keyed digests.
    EnvList {
        project: String,
        environment: String,
    },
    /// One value (audited).
    EnvGet {
        project: String,
        environment: String,
        key: String,
    },
    /// Every value as dotenv text (audited).
    EnvExport {
        project: String,
        environment: String,
    },
    EnvHistory {
        project: String,
        environment: String,
    },
    /// Which names differ between two versions.
    EnvDiff {
        project: String,
        environment: String,
        from: u64,
        to: u64,
    },
    /// A new version equal to `version` (history is never rewritten), rolled out.
    EnvRestore {
        project: String,
        environment: String,
        version: u64,
        #[serde(default)]
        protected: bool,
    },
    /// New credentials for the environment's database and cache: a new env version (the other
    /// login role, new passwords), rolled out blue/green; the old ones stay valid while a slot
    /// runs them.
    DbRotate {
        project: String,
        environment: String,
    },
    /// Every environment's versions, still sealed (the CLI writes them to a directory).
    EnvBackup,
    /// Versions from a backup, into a store that has none.
    EnvRestoreBackup {
        backup: SecretText,
    },
    /// Back up the databases and caches of a project's environments (or one's) now.
    BackupRun {
        project: String,
        #[serde(default)]
        environment: Option<String>,
        /// Only this kind (none: both).
        #[serde(default)]
        kind: Option<crate::backup::Kind>,
    },
    /// A project's backups.
    BackupList {
        project: String,
        #[serde(default)]
        environment: Option<String>,
        /// Read every file's SHA-256 again (otherwise only sizes are checked).
        #[serde(default)]
        verify: bool,
    },
    /// Restore a backup: a database into a new database (verified by row counts), a cache's keys
    /// back under the environment's prefix (only with `replace_keys`).
    Restore {
        project: String,
        #[serde(default)]
        environment: Option<String>,
        from: String,
        #[serde(default)]
        to_database: Option<String>,
        #[serde(default)]
        replace_keys: bool,
    },
}

/// A change that can be planned first and carried out later, unchanged: what MCP's two-step
/// tools plan and then confirm ([`Request::Plan`], [`Request::Guarded`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum Change {
    Deploy {
        project: String,
        environment: String,
        image: String,
    },
    Promote {
        project: String,
        environment: String,
    },
    Rollback {
        project: String,
        environment: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<u64>,
    },
    /// Apply manifests; with `prune`, remove the recorded environments of `prune_projects`
    /// (at least one: a confirmed plan names what it removes) that they do not declare.
    Apply {
        manifests: Vec<Source>,
        #[serde(default)]
        prune: bool,
        #[serde(default)]
        prune_projects: Vec<String>,
    },
}

impl Change {
    /// The request that makes this change unguarded: its permissions, project and name are the
    /// change's.
    pub fn request(&self) -> Request {
        match self.clone() {
            Change::Deploy {
                project,
                environment,
                image,
            } => Request::Deploy {
                project,
                environment,
                image,
            },
            Change::Promote {
                project,
                environment,
            } => Request::Promote {
                project,
                environment,
            },
            Change::Rollback {
                project,
                environment,
                to,
            } => Request::Rollback {
                project,
                environment,
                to,
            },
            Change::Apply {
                manifests,
                prune,
                prune_projects,
            } => Request::Apply {
                manifests,
                dry_run: false,
                prune,
                allow_empty: false,
                confirm: None,
                prune_projects,
                timeout_ms: None,
            },
        }
    }
}

/// A dotenv file as a client read it: its name (for errors) and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvFile {
    pub name: String,
    pub text: SecretText,
}

fn default_lines() -> usize {
    100
}

/// The most log lines one request returns.
pub const MAX_LOG_LINES: usize = 1000;
/// How long after an `apply --timeout` deadline a step still acting (a Podman call, an image
/// pull) may run before the request abandons it, as a crash would (the journal shows the step
/// interrupted and the next apply re-plans it): the whole run ends within its timeout plus this.
pub const HARD_STOP_MS: u64 = 10_000;
/// The longest image reference accepted (registries allow 255 for the name plus a tag or digest).
const MAX_IMAGE_LEN: usize = 512;

impl Request {
    /// The project the request acts on, when it names one (for authorization and the audit).
    pub fn project(&self) -> Option<&str> {
        match self {
            Request::Plan { change } | Request::Guarded { change, .. } => match change {
                Change::Deploy { project, .. }
                | Change::Promote { project, .. }
                | Change::Rollback { project, .. } => Some(project),
                Change::Apply { .. } => None,
            },
            Request::Describe { project }
            | Request::Promote { project, .. }
            | Request::Rollback { project, .. }
            | Request::Releases { project, .. }
            | Request::Deploy { project, .. }
            | Request::Logs { project, .. }
            | Request::EnvSet { project, .. }
            | Request::EnvUnset { project, .. }
            | Request::EnvImport { project, .. }
            | Request::EnvList { project, .. }
            | Request::EnvGet { project, .. }
            | Request::EnvExport { project, .. }
            | Request::EnvHistory { project, .. }
            | Request::EnvDiff { project, .. }
            | Request::EnvRestore { project, .. }
            | Request::DbRotate { project, .. }
            | Request::BackupRun { project, .. }
            | Request::BackupList { project, .. }
            | Request::Restore { project, .. } => Some(project),
            _ => None,
        }
    }

    /// The environment the request acts on, when it names one.
    pub fn environment(&self) -> Option<&str> {
        match self {
            Request::Plan { change } | Request::Guarded { change, .. } => match change {
                Change::Deploy { environment, .. }
                | Change::Promote { environment, .. }
                | Change::Rollback { environment, .. } => Some(environment),
                Change::Apply { .. } => None,
            },
            Request::Promote { environment, .. }
            | Request::Rollback { environment, .. }
            | Request::Releases { environment, .. }
            | Request::Deploy { environment, .. }
            | Request::Logs { environment, .. }
            | Request::EnvSet { environment, .. }
            | Request::EnvUnset { environment, .. }
            | Request::EnvImport { environment, .. }
            | Request::EnvList { environment, .. }
            | Request::EnvGet { environment, .. }
            | Request::EnvExport { environment, .. }
            | Request::EnvHistory { environment, .. }
            | Request::EnvDiff { environment, .. }
            | Request::EnvRestore { environment, .. }
            | Request::DbRotate { environment, .. } => Some(environment),
            Request::BackupRun { environment, .. }
            | Request::BackupList { environment, .. }
            | Request::Restore { environment, .. } => environment.as_deref(),
            _ => None,
        }
    }

    /// The bound of the request's whole run (`apply --timeout`), when it has one.
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Request::Apply {
                timeout_ms: Some(ms),
                dry_run: false,
                ..
            } => Some(Duration::from_millis(*ms)),
            _ => None,
        }
    }

    /// The request's name in logs and the audit (`apply`, `promote`, ...).
    pub fn op(&self) -> &'static str {
        match self {
            Request::Apply { dry_run: true, .. } => "apply --dry-run",
            Request::Apply { .. } => "apply",
            Request::Diff { .. } => "diff",
            Request::Get { .. } => "get",
            Request::Describe { .. } => "describe",
            Request::Promote { .. } => "promote",
            Request::Rollback { to: Some(_), .. } => "rollback --to",
            Request::Rollback { .. } => "rollback",
            Request::Releases { .. } => "releases",
            Request::Delete { .. } => "delete",
            Request::Deploy { .. } => "deploy",
            Request::Logs { .. } => "logs",
            Request::KeyCreate { .. } => "key create",
            Request::KeyList => "key list",
            Request::Version => "version",
            Request::KeyRevoke { .. } => "key revoke",
            Request::HostAdopt { .. } => "host adopt",
            Request::HostDelete { .. } => "delete host",
            Request::Audit { .. } => "audit",
            Request::Plan { change } => match change {
                Change::Deploy { .. } => "plan deploy",
                Change::Promote { .. } => "plan promote",
                Change::Rollback { to: Some(_), .. } => "plan rollback --to",
                Change::Rollback { .. } => "plan rollback",
                Change::Apply { prune: true, .. } => "plan apply --prune",
                Change::Apply { .. } => "plan apply",
            },
            Request::Guarded { change, .. } => match change {
                Change::Apply { prune: true, .. } => "apply --prune",
                other => other.request().op(),
            },
            Request::EnvSet { .. } => "env set",
            Request::EnvUnset { .. } => "env unset",
            Request::EnvImport { .. } => "env import",
            Request::EnvList { .. } => "env list",
            Request::EnvGet { .. } => "env get",
            Request::EnvExport { .. } => "env export",
            Request::EnvHistory { .. } => "env history",
            Request::EnvDiff { .. } => "env diff",
            Request::EnvRestore { .. } => "env restore",
            Request::DbRotate { .. } => "db rotate",
            Request::EnvBackup => "env backup",
            Request::EnvRestoreBackup { .. } => "env restore-backup",
            Request::BackupRun { .. } => "backup run",
            Request::BackupList { .. } => "backup list",
            Request::Restore { .. } => "restore",
        }
    }

    /// The permissions the request needs (each checked against [`Request::project`], or, for
    /// requests that carry manifests or name several projects, against each of them).
    pub fn permissions(&self) -> Vec<Permission> {
        match self {
            Request::Apply { dry_run: true, .. }
            | Request::Diff { .. }
            | Request::Get { .. }
            | Request::Describe { .. }
            | Request::Releases { .. }
            | Request::Version => vec![Permission::Read],
            Request::Apply { prune: true, .. } => vec![Permission::Apply, Permission::Prune],
            Request::Apply { .. } => vec![Permission::Apply],
            Request::Promote { .. } => vec![Permission::Promote],
            Request::Rollback { .. } => vec![Permission::Rollback],
            Request::Delete { .. } => vec![Permission::Delete],
            Request::Deploy { .. } => vec![Permission::Deploy],
            Request::Logs { .. } => vec![Permission::Logs],
            Request::KeyCreate { .. } | Request::KeyList | Request::KeyRevoke { .. } => {
                vec![Permission::KeysManage]
            }
            Request::HostAdopt { .. } | Request::HostDelete { .. } => {
                vec![Permission::HostsWrite]
            }
            Request::Audit { .. } => vec![Permission::AuditRead],
            Request::Plan { .. } => vec![Permission::Read],
            Request::Guarded { change, .. } => change.request().permissions(),
            Request::EnvSet { protected, .. }
            | Request::EnvUnset { protected, .. }
            | Request::EnvImport { protected, .. }
            | Request::EnvRestore { protected, .. } => {
                let mut p = vec![Permission::EnvWrite];
                if *protected {
                    p.push(Permission::EnvProtected);
                }
                p
            }
            Request::EnvList { .. } | Request::EnvHistory { .. } | Request::EnvDiff { .. } => {
                vec![Permission::EnvList]
            }
            Request::EnvGet { .. } | Request::EnvExport { .. } | Request::EnvBackup => {
                vec![Permission::EnvRead]
            }
            Request::EnvRestoreBackup { .. } => {
                vec![Permission::EnvWrite, Permission::EnvProtected]
            }
            // It writes protected keys only.
            Request::DbRotate { .. } => vec![Permission::EnvProtected],
            Request::BackupRun { .. } | Request::BackupList { .. } => vec![Permission::Backup],
            Request::Restore { .. } => vec![Permission::Restore],
        }
    }

    /// Whether the request changes something (it is then audited, whatever its outcome).
    pub fn changes(&self) -> bool {
        match self {
            Request::Apply { dry_run, .. } => !dry_run,
            Request::Promote { .. }
            | Request::Rollback { .. }
            | Request::Delete { .. }
            | Request::Deploy { .. }
            | Request::KeyCreate { .. }
            | Request::KeyRevoke { .. }
            | Request::HostAdopt { .. }
            | Request::HostDelete { .. }
            | Request::Guarded { .. }
            | Request::EnvSet { .. }
            | Request::EnvUnset { .. }
            | Request::EnvImport { .. }
            | Request::EnvRestore { .. }
            | Request::EnvRestoreBackup { .. }
            | Request::DbRotate { .. }
            | Request::BackupRun { .. }
            | Request::Restore { .. } => true,
            _ => false,
        }
    }

    /// Whether the request only reads the store (and the hosts): a process that does not hold the
    /// store answers it from a read-only open, beside an `apply` that holds it, and leaves the
    /// store's file byte-identical. Reads of env values are not among them: they are audited.
    pub fn reads_only(&self) -> bool {
        matches!(
            self,
            Request::Apply { dry_run: true, .. }
                | Request::Diff { .. }
                | Request::Get { .. }
                | Request::Describe { .. }
                | Request::Releases { .. }
                | Request::Logs { .. }
                | Request::KeyList
                | Request::Version
                | Request::Audit { .. }
                | Request::EnvList { .. }
                | Request::EnvHistory { .. }
                | Request::EnvDiff { .. }
                | Request::BackupList { .. }
        )
    }

    /// Whether the request plans manifests against the store (`diff`, `apply --dry-run`): with no
    /// store yet, it plans against nothing recorded rather than failing.
    pub fn plans_only(&self) -> bool {
        matches!(
            self,
            Request::Apply { dry_run: true, .. } | Request::Diff { .. }
        )
    }

    /// Whether the request is audited whatever its outcome: every change, and every read of env
    /// values.
    pub fn audited(&self) -> bool {
        self.changes()
            || matches!(
                self,
                Request::EnvGet { .. } | Request::EnvExport { .. } | Request::EnvBackup
            )
    }
}

/// Every use case's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "result", rename_all = "kebab-case")]
pub enum Response {
    Apply(ApplyView),
    Diff(PlanView),
    Projects(Vec<view::ProjectRow>),
    Slots(Vec<view::SlotRow>),
    Hosts(Vec<view::HostRow>),
    Project(ProjectView),
    /// Promote, rollback, delete and deploy: what was executed.
    Outcome(OutcomeView),
    /// An environment's release history, newest first.
    Releases(Vec<view::ReleaseRow>),
    Logs(LogsView),
    /// The new key's text (shown this once) and its record.
    KeyCreated {
        key: String,
        record: KeyRecord,
    },
    Keys(Vec<KeyRecord>),
    Version(view::VersionView),
    KeyRevoked(KeyRecord),
    Audit(Vec<AuditEntry>),
    /// A change's plan and the fingerprint that confirms it ([`Request::Plan`]).
    Planned(PlannedView),
    EnvChanged(view::EnvChangeView),
    EnvList(view::EnvListView),
    EnvValue(view::EnvValueView),
    EnvExport(view::EnvExportView),
    EnvHistory(Vec<view::EnvHistoryRow>),
    EnvDiff(view::EnvDiffView),
    /// `env backup` and `env restore-backup`.
    EnvBackup(view::EnvBackupView),
    BackupRun(view::BackupRunView),
    Backups(Vec<view::BackupRow>),
    Restored(view::RestoreView),
}

impl Response {
    /// The CLI's exit code for this result (see `cli`'s table).
    ///
    /// `diff` exits 0 only when converged: a plan with steps, with a field change and no step
    /// (a health check path that apply only records), or with a problem note and no step (an
    /// environment moved to another host, a release that failed and is not retried, a DNS name
    /// held by a foreign record), is not in sync, so a CI gate on `diff` must not pass it.
    /// `apply --dry-run` exits as the apply would end before it runs anything: 1 when the plan
    /// already carries a problem, 0 otherwise (steps are what a dry run is for).
    pub fn exit_code(&self) -> u8 {
        match self {
            Response::Apply(a) => match &a.outcome {
                None => u8::from(a.plan.has_problems()),
                Some(o) if o.timed_out => TIMED_OUT,
                Some(o) => u8::from(!o.converged),
            },
            Response::Diff(p) if p.unobserved() => 3,
            Response::Diff(p) => u8::from(!p.converged()),
            Response::Planned(p) => u8::from(p.plan.has_problems()),
            Response::Outcome(o) if o.timed_out => TIMED_OUT,
            Response::Outcome(o) => u8::from(!o.converged),
            Response::EnvChanged(v) => u8::from(!env::change_converged(v)),
            Response::BackupRun(v) => u8::from(!v.failed.is_empty()),
            _ => 0,
        }
    }

    /// True when the request reached what it asked for (the API's `ok`).
    pub fn ok(&self) -> bool {
        match self {
            Response::Diff(p) => !p.unobserved(),
            other => other.exit_code() == 0,
        }
    }
}

/// The exit code of a run that `--timeout` stopped (`Code::TimedOut` too).
pub const TIMED_OUT: u8 = 4;

/// The daemon's part of a context: the loop that keeps the hosts converged, and the manifests it
/// keeps in force.
pub struct Daemon {
    pub controller: Handle,
    /// The manifests in force as loaded (the last valid ones), without overrides.
    pub watched: watch::Receiver<Arc<Desired>>,
    pub paths: Vec<PathBuf>,
    pub prune: bool,
    /// Clients of each host, kept across requests (a promote through the API then opens no
    /// socket and builds no client: its whole path was 23 ms with fresh ones, most of it setup).
    pub clients: std::sync::Mutex<
        BTreeMap<String, (crate::model::HostRef, Arc<crate::reconcile::connect::Real>)>,
    >,
    /// What the last switch of each environment observed (see [`warm`]).
    pub warm: warm::Warm,
}

impl Daemon {
    fn dir(&self) -> String {
        let names: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        names.join(", ")
    }

    /// Hands the loop the watched manifests with the overrides that hold laid over, and forgets
    /// the overrides they superseded (so that one cannot come back if the manifests return to the
    /// image it replaced).
    pub fn publish(&self, store: &Store) -> Result<()> {
        let loaded = self.watched.borrow().clone();
        self.controller
            .set_desired(Arc::new(effective(store, &loaded, false)?));
        Ok(())
    }

    /// What a person applying `d` through the daemon should know: the watched manifests stay in
    /// force, so what they declare differently is set back at the next resync.
    fn apply_notes(&self, d: &Desired) -> Vec<String> {
        let watched = self.watched.borrow().clone();
        let mut differ = Vec::new();
        let mut extra = Vec::new();
        for (key, env) in &d.envs {
            match watched.envs.get(key) {
                Some(w) if w == env => {}
                Some(_) => differ.push(key.to_string()),
                None => extra.push(key.to_string()),
            }
        }
        let mut notes = Vec::new();
        if !differ.is_empty() {
            notes.push(format!(
                "codeb watch keeps {} in force: {} will be set back to it at the next resync",
                self.dir(),
                differ.join(", ")
            ));
        }
        if !extra.is_empty() {
            let fate = if self.prune {
                "codeb watch --prune removes them at the next resync"
            } else {
                "codeb watch leaves them as applied"
            };
            notes.push(format!(
                "{} {} not in {}: {fate}",
                extra.join(", "),
                if extra.len() == 1 { "is" } else { "are" },
                self.dir()
            ));
        }
        notes
    }

    /// The environments among `keys` that the watched manifests declare: the daemon keeps them
    /// in force, so removing one through it would be undone at the next resync.
    fn in_force(&self, keys: &[EnvKey]) -> Vec<String> {
        let watched = self.watched.borrow().clone();
        keys.iter()
            .filter(|k| watched.envs.contains_key(*k))
            .map(|k| k.to_string())
            .collect()
    }

    /// A delete through the daemon of an environment that the watched manifests declare would be
    /// undone at once; refused with what to do instead.
    fn check_delete(&self, keys: &[EnvKey]) -> Result<()> {
        let declared = self.in_force(keys);
        if declared.is_empty() {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "{} {} declared in {}, which codeb watch keeps in force: remove it from there (with `codeb watch --prune` the removal follows), or stop codeb watch first",
            declared.join(", "),
            if declared.len() == 1 { "is" } else { "are" },
            self.dir()
        )))
    }

    /// A prune through the daemon of environments the watched manifests declare is an outage: they
    /// go (containers, routes, records, grace slots) and the loop deploys them again a moment
    /// later. Refused, nothing applied, with what to do instead.
    fn check_prune(&self, remove: &[EnvKey]) -> Result<()> {
        let declared = self.in_force(remove);
        if declared.is_empty() {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "--prune would remove {}, declared in {}, which codeb watch keeps in force (it would deploy {} again at once); nothing was applied. To remove {}, delete {} from {} (with `codeb watch --prune` the removal follows); to prune other projects only, name them with --prune-project NAME",
            declared.join(", "),
            self.dir(),
            if declared.len() == 1 { "it" } else { "them" },
            if declared.len() == 1 { "it" } else { "them" },
            if declared.len() == 1 { "its manifest" } else { "their manifests" },
            self.dir()
        )))
    }
}

/// What a use case runs on.
#[derive(Clone)]
pub struct Ctx {
    pub store: Arc<Store>,
    /// Set inside `codeb watch`/`serve`.
    pub daemon: Option<Arc<Daemon>>,
    /// Who asks: what they may do, and how the audit and overrides name them.
    pub caller: Caller,
    pub retention: AuditRetention,
    /// The operator's configuration: the endpoints and key variables manifests may name.
    pub config: Arc<crate::config::Config>,
    /// How the audit names the action, when the front end names it itself (MCP: `mcp:deploy`,
    /// the tool); otherwise the request's [`Request::op`].
    pub action: Option<String>,
    /// Where the executor reports the steps and waits of this request as they happen (the CLI
    /// renders them; through the daemon they travel over its socket). The HTTP API and MCP give
    /// none.
    pub progress: reconcile::Progress,
    /// After this, no step starts (set from `apply --timeout` for the request's run).
    pub deadline: Option<tokio::time::Instant>,
    /// Manifests the client loaded from the sources it sends (see [`Loaded`]).
    pub loaded: Option<Arc<Loaded>>,
}

/// Manifests a one-shot command loaded, and validated, from the sources of its request before it
/// opened the store (it refuses a mistake first): the request run in the same process takes them
/// instead of loading the same text again. Loading is a pure function of the sources' text (no
/// I/O, no clock, nothing stored), so they are what a load here would give; they are taken only
/// when the request's sources are these, byte for byte.
#[derive(Debug)]
pub struct Loaded {
    pub sources: Vec<Source>,
    pub manifests: crate::spec::Manifests,
}

impl Ctx {
    /// The clients of one host: the daemon's kept ones (made anew when the host's endpoints
    /// changed), or fresh ones outside a daemon.
    fn host_clients(
        &self,
        host: &crate::model::HostRef,
    ) -> Result<Arc<crate::reconcile::connect::Real>> {
        let Some(daemon) = &self.daemon else {
            return Ok(Arc::new(connect_or_invalid(self, [host], [])?));
        };
        let mut kept = daemon
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((endpoints, clients)) = kept.get(&host.name) {
            if endpoints == host {
                return Ok(clients.clone());
            }
        }
        let clients = Arc::new(connect_or_invalid(self, [host], [])?);
        kept.insert(host.name.clone(), (host.clone(), clients.clone()));
        Ok(clients)
    }

    /// A context for `caller` on `store`, outside any daemon, under `config`.
    pub fn local(store: Arc<Store>, caller: Caller, config: Arc<crate::config::Config>) -> Ctx {
        Ctx {
            store,
            daemon: None,
            caller,
            retention: AuditRetention::default(),
            config,
            action: None,
            progress: reconcile::Progress::none(),
            deadline: None,
            loaded: None,
        }
    }

    /// This context with the manifests its client loaded from the request's sources.
    pub fn with_loaded(self, loaded: Option<Loaded>) -> Ctx {
        Ctx {
            loaded: loaded.map(Arc::new),
            ..self
        }
    }

    /// The manifests of `sources`, loaded and validated: the client's (see [`Loaded`]) when it
    /// loaded these very sources, else loaded here.
    ///
    /// # Errors
    /// As [`crate::spec::load_sources`].
    fn load_sources(
        &self,
        sources: &[Source],
    ) -> Result<crate::spec::Manifests, crate::spec::Errors> {
        match self.loaded.as_deref() {
            Some(loaded) if loaded.sources == sources => Ok(loaded.manifests.clone()),
            _ => crate::spec::load_sources(sources),
        }
    }

    /// This context reporting into `progress`.
    pub fn with_progress(self, progress: reconcile::Progress) -> Ctx {
        Ctx { progress, ..self }
    }

    /// What the executor is given: this request's progress sink and deadline.
    fn control(&self) -> reconcile::Control {
        reconcile::Control {
            progress: self.progress.clone(),
            deadline: self.deadline,
        }
    }

    /// Checks `permissions` for `project` (`None`: none named), recording a refusal.
    fn authorize(&self, req: &Request, project: Option<&str>) -> Result<()> {
        for p in req.permissions() {
            if let Err(denied) = auth::authorize(&self.caller, p, project) {
                let mut entry = self.entry(req);
                entry.project = project.map(str::to_string).or(entry.project);
                entry.outcome = auth::Outcome::from(&denied);
                self.record(entry);
                return Err(Error::new(Code::Forbidden, denied.to_string()));
            }
        }
        Ok(())
    }

    fn entry(&self, req: &Request) -> AuditEntry {
        let action = self.action.as_deref().unwrap_or(req.op());
        let mut entry = AuditEntry::new(reconcile::now_ms(), &self.caller, action);
        entry.project = req.project().map(str::to_string);
        entry.environment = req.environment().map(str::to_string);
        entry
    }

    /// Appends to the audit log; a store that fails to record is logged, and the request's own
    /// result stands (it already happened).
    fn record(&self, entry: AuditEntry) {
        if let Err(e) = self.store.audit(entry, &self.retention) {
            tracing::error!(error = %crate::backend::error_chain(&e), "cannot record an audit entry");
        }
    }

    /// In the daemon, waits until no reconcile runs on `works` and holds them off until the guard
    /// drops. Outside it nothing else runs: no claim. Either way, releases that start in the
    /// claimed environments until then are the caller's (their history names them).
    async fn claim(&self, works: Vec<Work>) -> Result<Claimed> {
        let claim = match &self.daemon {
            None => None,
            Some(d) => Some(
                d.controller
                    .claim(works.clone())
                    .await
                    .ok_or_else(|| Error::busy("codeb is stopping; nothing was done"))?,
            ),
        };
        let envs = works.into_iter().filter_map(|w| match w {
            Work::Env(key) => Some(key),
            _ => None,
        });
        let actor = self.store.act_as(
            envs,
            &crate::model::releases::Actor::new(self.caller.label()),
        );
        Ok(Claimed {
            _actor: actor,
            _claim: claim,
        })
    }
}

/// What [`Ctx::claim`] holds: the work claimed from the loop, and who acts on its environments.
/// Dropped, both are given back (the actor first: nothing writes the records while the claim
/// still holds).
pub(crate) struct Claimed {
    _actor: crate::store::ActorGuard,
    _claim: Option<ClaimGuard>,
}

/// Records in the audit log that a front end refused `req` for `ctx.caller` before it reached a
/// use case (an MCP confirmation that was not made for it, say), with `reason`.
pub fn record_refusal(ctx: &Ctx, req: &Request, reason: &str) {
    let mut entry = ctx.entry(req);
    entry.outcome = auth::Outcome::Failed {
        message: format!("refused: {reason}"),
    };
    ctx.record(entry);
}

/// Checks whether `ctx.caller` may make `req` (its permissions, for the project it names),
/// recording a refusal in the audit log. `call` does it too; a front end calls it first when it
/// must read more of a request (a body) before it can build it whole, so that a caller without
/// the permission is told so rather than about its body.
///
/// # Errors
/// `Forbidden`, naming the permission.
pub fn authorize(ctx: &Ctx, req: &Request) -> Result<()> {
    ctx.authorize(req, req.project())
}

/// Runs one request for `ctx.caller`: authorized first (a refusal is audited and nothing runs),
/// then run, then audited when it changes something, whatever its outcome.
///
/// # Errors
/// `Forbidden` when the caller lacks a permission; the use case's own errors otherwise.
pub async fn call(ctx: &Ctx, req: Request) -> Result<Response> {
    tracing::debug!(op = req.op(), caller = %ctx.caller.label(), "request");
    ctx.authorize(&req, req.project())?;
    // Requests that name several projects, or carry manifests, are checked against each, for a
    // caller limited to some projects (no other caller can be refused a project).
    if ctx.caller.projects.is_some() {
        for project in targets(&req) {
            ctx.authorize(&req, Some(&project))?;
        }
    }
    let changes = req.audited();
    let entry = ctx.entry(&req);
    let result = match req.timeout() {
        None => run(ctx, req).await,
        Some(timeout) => bounded(ctx, req, timeout).await,
    };
    // An apply that found nothing to do changed nothing: no entry (a no-op apply writes nothing;
    // `codeb watch`'s resyncs are not requests either).
    if changes && !result.as_ref().is_ok_and(changed_nothing) {
        let mut entry = entry;
        match &result {
            Ok(r) => {
                entry.steps = steps(r);
                if r.exit_code() != 0 {
                    entry.outcome = auth::Outcome::Failed {
                        message: "not converged".into(),
                    };
                }
                if let Response::KeyCreated { record, .. } | Response::KeyRevoked(record) = r {
                    entry.steps = vec![format!("key {} ({})", record.id, record.role)];
                }
                if let Some(steps) = env::audit_steps(r) {
                    entry.steps = steps;
                }
            }
            Err(e) => {
                entry.outcome = auth::Outcome::Failed {
                    message: e.message.clone(),
                }
            }
        }
        ctx.record(entry);
    }
    result
}

/// The projects a request names beyond [`Request::project`]: those of its manifests, or the
/// ones it deletes. Manifests that do not load are left to the use case (its error is theirs).
fn targets(req: &Request) -> Vec<String> {
    let projects = |sources: &[Source]| -> Vec<String> {
        crate::spec::load_sources(sources)
            .map(|m| m.projects.keys().cloned().collect())
            .unwrap_or_default()
    };
    match req {
        Request::Apply { manifests, .. } | Request::Diff { manifests } => projects(manifests),
        Request::Delete {
            projects: names,
            manifests,
        } => names.iter().cloned().chain(projects(manifests)).collect(),
        Request::Audit {
            project: Some(p), ..
        } => vec![p.clone()],
        Request::Plan { change } | Request::Guarded { change, .. } => targets(&change.request()),
        _ => vec![],
    }
}

/// The executed steps a result reports, for the audit.
/// An apply that planned no step, found no field to change and executed nothing, converged.
fn changed_nothing(r: &Response) -> bool {
    match r {
        Response::Apply(ApplyView {
            dry_run: false,
            plan,
            outcome: Some(o),
            ..
        }) => {
            plan.steps.is_empty()
                && plan.changes.is_empty()
                && o.executed.is_empty()
                && r.exit_code() == 0
        }
        _ => false,
    }
}

fn steps(r: &Response) -> Vec<String> {
    match r {
        Response::Apply(ApplyView {
            outcome: Some(o), ..
        })
        | Response::Outcome(o) => o.executed.clone(),
        _ => vec![],
    }
}

/// Runs a request bounded by `timeout` (see [`Request::Apply`]'s `timeout_ms`): the executor
/// stops at the deadline between steps; a step still acting [`HARD_STOP_MS`] later is abandoned.
async fn bounded(ctx: &Ctx, req: Request, timeout: Duration) -> Result<Response> {
    let deadline = tokio::time::Instant::now() + timeout;
    let ctx = Ctx {
        deadline: Some(deadline),
        ..ctx.clone()
    };
    let hard = deadline + Duration::from_millis(HARD_STOP_MS);
    match tokio::time::timeout_at(hard, run(&ctx, req)).await {
        Ok(result) => result,
        Err(_) => {
            let text = humantime::format_duration(timeout);
            let late = HARD_STOP_MS / 1000;
            ctx.progress.emit(reconcile::Event::Note {
                message: format!(
                    "--timeout {text} reached, and the run was still busy {late} s later: abandoned"
                ),
            });
            Err(Error::new(
                Code::TimedOut,
                format!(
                    "--timeout {text} reached: the run, still busy {late} s later (a step acting, or a host observed, that did not answer), was abandoned as a crash would leave it (a step in flight shows as interrupted in the journal; the next apply observes and resumes)"
                ),
            ))
        }
    }
}

async fn run(ctx: &Ctx, req: Request) -> Result<Response> {
    match req {
        Request::Apply {
            manifests,
            dry_run,
            prune,
            allow_empty,
            confirm,
            prune_projects,
            timeout_ms: _,
        } => {
            let prune = prune.then(|| Prune {
                allow_empty,
                confirm,
                projects: prune_projects.into_iter().collect(),
            });
            apply(ctx, &manifests, dry_run, prune.as_ref(), None)
                .await
                .map(|(view, _)| Response::Apply(view))
        }
        Request::Plan { change } => plan_change(ctx, change).await.map(Response::Planned),
        Request::Guarded {
            change,
            fingerprint,
        } => run_guarded(ctx, change, &fingerprint).await,
        Request::Diff { manifests } => diff(ctx, &manifests).await.map(Response::Diff),
        Request::Get {
            what: GetWhat::Hosts,
        } => get_hosts(ctx).await,
        Request::Get { what } => get(ctx, what),
        Request::Describe { project } => describe(ctx, &project).map(Response::Project),
        Request::Promote {
            project,
            environment,
        } => switch(ctx, EnvKey::new(project, environment), false, None)
            .await
            .map(Response::Outcome),
        Request::Rollback {
            project,
            environment,
            to: None,
        } if migrating(ctx, &EnvKey::new(project.clone(), environment.clone()))? => {
            migrate_rollback(ctx, EnvKey::new(project, environment))
                .await
                .map(Response::Outcome)
        }
        Request::Rollback {
            project,
            environment,
            to: None,
        } => switch(ctx, EnvKey::new(project, environment), true, None)
            .await
            .map(Response::Outcome),
        Request::Rollback {
            project,
            environment,
            to: Some(n),
        } => releases::rollback_to(ctx, EnvKey::new(project, environment), n, None)
            .await
            .map(Response::Outcome),
        Request::Releases {
            project,
            environment,
        } => releases::list(ctx, &EnvKey::new(project, environment)).map(Response::Releases),
        Request::Delete {
            projects,
            manifests,
        } => delete(ctx, projects, &manifests)
            .await
            .map(Response::Outcome),
        Request::HostAdopt { host } => adopt(ctx, &host).await.map(Response::Outcome),
        Request::HostDelete { host } => delete_host(ctx, &host).await.map(Response::Outcome),
        Request::Deploy {
            project,
            environment,
            image,
        } => deploy(ctx, EnvKey::new(project, environment), &image, None)
            .await
            .map(Response::Outcome),
        Request::Logs {
            project,
            environment,
            slot,
            lines,
            follow,
        } => logs(ctx, EnvKey::new(project, environment), slot, lines, follow)
            .await
            .map(Response::Logs),
        Request::KeyCreate {
            role,
            name,
            projects,
            expires_in_ms,
        } => {
            let spec = auth::NewKey {
                role,
                name,
                projects: (!projects.is_empty()).then(|| projects.into_iter().collect()),
                expires_in: expires_in_ms.map(Duration::from_millis),
            };
            let (record, issued) = ctx
                .store
                .create_key(&spec, reconcile::now_ms())
                .map_err(key_error)?;
            Ok(Response::KeyCreated {
                key: issued.expose().to_string(),
                record,
            })
        }
        Request::KeyList => Ok(Response::Keys(ctx.store.keys()?)),
        Request::Version => Ok(Response::Version(view::VersionView::this_build())),
        Request::KeyRevoke { id } => ctx
            .store
            .revoke_key(&id, reconcile::now_ms())
            .map(Response::KeyRevoked)
            .map_err(key_error),
        Request::Audit {
            project,
            since_ms,
            limit,
        } => {
            let scope = auth::audit_scope(&ctx.caller)
                .map_err(|d| Error::new(Code::Forbidden, d.to_string()))?;
            let filter = crate::store::AuditFilter {
                project,
                since_ms,
                limit: Some(limit.unwrap_or(100).min(MAX_AUDIT_ENTRIES)),
                scope,
            };
            Ok(Response::Audit(ctx.store.audit_entries(&filter)?))
        }
        Request::EnvSet {
            project,
            environment,
            vars,
            protected,
        } => {
            for (i, (k, v)) in vars.0.iter().enumerate() {
                env::check_var(&format!("variable {}", i + 1), k, v)?;
            }
            let key = EnvKey::new(project, environment);
            env::change(ctx, key, env::Change::Set(vars), protected)
                .await
                .map(Response::EnvChanged)
        }
        Request::EnvUnset {
            project,
            environment,
            keys,
            protected,
        } => env::change(
            ctx,
            EnvKey::new(project, environment),
            env::Change::Unset(keys),
            protected,
        )
        .await
        .map(Response::EnvChanged),
        Request::EnvImport {
            project,
            environment,
            file,
            protected,
        } => {
            let vars = env::parse_dotenv(&file.name, &file.text.0)?;
            let key = EnvKey::new(project, environment);
            env::change(ctx, key, env::Change::Import(vars), protected)
                .await
                .map(Response::EnvChanged)
        }
        Request::EnvRestore {
            project,
            environment,
            version,
            protected,
        } => env::change(
            ctx,
            EnvKey::new(project, environment),
            env::Change::Restore(version),
            protected,
        )
        .await
        .map(Response::EnvChanged),
        Request::EnvList {
            project,
            environment,
        } => env::list(ctx, &EnvKey::new(project, environment)).map(Response::EnvList),
        Request::EnvGet {
            project,
            environment,
            key,
        } => env::get(ctx, &EnvKey::new(project, environment), &key).map(Response::EnvValue),
        Request::EnvExport {
            project,
            environment,
        } => env::export(ctx, &EnvKey::new(project, environment)).map(Response::EnvExport),
        Request::EnvHistory {
            project,
            environment,
        } => env::history(ctx, &EnvKey::new(project, environment)).map(Response::EnvHistory),
        Request::EnvDiff {
            project,
            environment,
            from,
            to,
        } => env::diff(ctx, &EnvKey::new(project, environment), from, to).map(Response::EnvDiff),
        Request::DbRotate {
            project,
            environment,
        } => env::change(
            ctx,
            EnvKey::new(project, environment),
            env::Change::Rotate,
            true,
        )
        .await
        .map(Response::EnvChanged),
        Request::EnvBackup => env::backup(ctx).map(Response::EnvBackup),
        Request::EnvRestoreBackup { backup } => {
            env::restore_backup(ctx, &backup).map(Response::EnvBackup)
        }
        Request::BackupRun {
            project,
            environment,
            kind,
        } => backup::run(ctx, &project, environment.as_deref(), kind)
            .await
            .map(Response::BackupRun),
        Request::BackupList {
            project,
            environment,
            verify,
        } => backup::list(ctx, &project, environment.as_deref(), verify)
            .await
            .map(Response::Backups),
        Request::Restore {
            project,
            environment,
            from,
            to_database,
            replace_keys,
        } => backup::restore(
            ctx,
            &project,
            environment.as_deref(),
            &from,
            to_database.as_deref(),
            replace_keys,
        )
        .await
        .map(Response::Restored),
    }
}

/// The most audit entries one request returns.
pub const MAX_AUDIT_ENTRIES: usize = 10_000;

/// The prune of a change: only the named projects' environments (a confirmed plan names what it
/// may remove, so no count is needed; see [`Prune`]).
fn change_prune(prune: bool, projects: Vec<String>) -> Result<Option<Prune>> {
    if !prune {
        return Ok(None);
    }
    if projects.is_empty() {
        return Err(Error::invalid(
            "a planned prune names the projects whose environments it may remove (prune_projects)",
        ));
    }
    Ok(Some(Prune {
        projects: projects.into_iter().collect(),
        ..Prune::default()
    }))
}

/// [`Request::Plan`]: the change's plan as a dry run computes it, and its fingerprint.
async fn plan_change(ctx: &Ctx, change: Change) -> Result<PlannedView> {
    match change {
        Change::Deploy {
            project,
            environment,
            image,
        } => plan_deploy(ctx, EnvKey::new(project, environment), &image).await,
        Change::Promote {
            project,
            environment,
        } => plan_switch(ctx, EnvKey::new(project, environment), false).await,
        Change::Rollback {
            project,
            environment,
            to: None,
        } => plan_switch(ctx, EnvKey::new(project, environment), true).await,
        Change::Rollback {
            project,
            environment,
            to: Some(n),
        } => releases::plan_rollback_to(ctx, EnvKey::new(project, environment), n).await,
        Change::Apply {
            manifests,
            prune,
            prune_projects,
        } => {
            let prune = change_prune(prune, prune_projects)?;
            let (view, keys) = apply(ctx, &manifests, true, prune.as_ref(), None).await?;
            planned(ctx, view.plan, keys)
        }
    }
}

/// [`Request::Guarded`]: the change, carried out only if its fingerprint still holds.
async fn run_guarded(ctx: &Ctx, change: Change, expected: &str) -> Result<Response> {
    let expect = Some(expected);
    match change {
        Change::Deploy {
            project,
            environment,
            image,
        } => deploy(ctx, EnvKey::new(project, environment), &image, expect)
            .await
            .map(Response::Outcome),
        Change::Promote {
            project,
            environment,
        } => switch(ctx, EnvKey::new(project, environment), false, expect)
            .await
            .map(Response::Outcome),
        Change::Rollback {
            project,
            environment,
            to: None,
        } => switch(ctx, EnvKey::new(project, environment), true, expect)
            .await
            .map(Response::Outcome),
        Change::Rollback {
            project,
            environment,
            to: Some(n),
        } => releases::rollback_to(ctx, EnvKey::new(project, environment), n, expect)
            .await
            .map(Response::Outcome),
        Change::Apply {
            manifests,
            prune,
            prune_projects,
        } => {
            let prune = change_prune(prune, prune_projects)?;
            apply(ctx, &manifests, false, prune.as_ref(), expect)
                .await
                .map(|(view, _)| Response::Apply(view))
        }
    }
}

/// A plan with the fingerprint of the state it was computed from.
fn planned(ctx: &Ctx, plan: PlanView, keys: Vec<EnvKey>) -> Result<PlannedView> {
    Ok(PlannedView {
        fingerprint: fingerprint(&plan, &ctx.store, &keys)?,
        environments: keys.iter().map(EnvKey::to_string).collect(),
        plan,
    })
}

/// The fingerprint of the state a plan was computed from: the plan as shown (its steps and
/// notes), and, for each environment it concerns, the record's generation (bumped by every
/// write, untouched while the loop finds nothing to do) and its release override. Equal
/// fingerprints: the same plan from the same records. No env value is hashed (a release's is
/// covered by the generation), so a fingerprint tells nothing about one.
///
/// 128 bits of SHA-256, hex.
fn fingerprint(plan: &PlanView, store: &Store, keys: &[EnvKey]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let overrides = store.overrides()?;
    let mut h = Sha256::new();
    // Steps and notes: the field changes are read from the same records, and a confirmed apply
    // checks against its plan's steps and notes.
    h.update(serde_json::to_vec(&(&plan.steps, &plan.notes)).expect("plans serialize"));
    for key in keys {
        let generation = store.env(key)?.map(|r| r.generation);
        let part = (key.to_string(), generation, overrides.get(key));
        h.update(serde_json::to_vec(&part).expect("records serialize"));
    }
    Ok(h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Refuses a guarded change whose state no longer has the fingerprint its plan was shown with.
fn check_fingerprint(
    expected: &str,
    plan: &PlanView,
    store: &Store,
    keys: &[EnvKey],
) -> Result<()> {
    if fingerprint(plan, store, keys)? == expected {
        return Ok(());
    }
    let what: Vec<String> = keys.iter().map(EnvKey::to_string).collect();
    Err(Error::conflict(format!(
        "{} changed since the plan was made (a deploy, a promote or the loop acted on it); nothing was done: plan again",
        if what.is_empty() { "the state".to_string() } else { what.join(", ") }
    )))
}

fn key_error(e: crate::store::KeyError) -> Error {
    match e {
        crate::store::KeyError::NotFound { .. } => Error::not_found(e.to_string()),
        crate::store::KeyError::Store(_) | crate::store::KeyError::Random(_) => {
            Error::failed(crate::backend::error_chain(&e))
        }
        other => Error::invalid(other.to_string()),
    }
}

/// Loads and validates manifests, and checks their Hosts and Zones against the operator's
/// configuration; any error is `Invalid` with nothing applied.
fn load(ctx: &Ctx, sources: &[Source]) -> Result<Desired> {
    let m = ctx
        .load_sources(sources)
        .map_err(|e| Error::invalid(e.to_string()))?;
    crate::spec::check_protected(&m, ctx.config.protected_env())
        .map_err(|e| Error::invalid(e.to_string()))?;
    allowed(&ctx.config, desired(&m))
}

/// `d`, when the operator's configuration allows every endpoint and key variable it names, with
/// its Hosts' access logs where the configuration places them.
fn allowed(config: &crate::config::Config, mut d: Desired) -> Result<Desired> {
    config
        .check_desired(&d)
        .map_err(|e| Error::invalid(e.to_string()))?;
    config.place_access_logs(&mut d);
    Ok(d)
}

/// As [`load`], and refused (`Invalid`, nothing applied) when a manifest environment needs a
/// container name or a hostname that the store records for an environment the manifests do not
/// declare: each error names the manifest's file:line:column and the holder (see
/// [`crate::spec::check_recorded`]).
fn load_unheld(ctx: &Ctx, sources: &[Source]) -> Result<Desired> {
    let store = &ctx.store;
    let m = ctx
        .load_sources(sources)
        .map_err(|e| Error::invalid(e.to_string()))?;
    let recorded = store.recorded()?;
    let held = recorded.envs.values().map(|r| crate::spec::RecordedEnv {
        project: &r.key.project,
        environment: &r.key.env,
        hostname: &r.hostname,
        host: &r.host,
    });
    crate::spec::check_recorded(&m, held).map_err(|e| Error::invalid(e.to_string()))?;
    crate::spec::check_protected(&m, ctx.config.protected_env())
        .map_err(|e| Error::invalid(e.to_string()))?;
    allowed(&ctx.config, desired(&m))
}

/// The manifests' desired state with the overrides that hold laid over, bound to the env store
/// (each release pins its environment's latest stored env version, its inline env by keyed
/// digest: see [`env::bind`]); overrides the manifests superseded are forgotten (unless `dry`: a
/// dry run writes nothing).
pub fn effective(store: &Store, declared: &Desired, dry: bool) -> Result<Desired> {
    let (mut d, superseded) = overlay(declared, &store.overrides()?);
    if !dry {
        for key in superseded {
            store.set_override(&key, None)?;
        }
    }
    let t = std::time::Instant::now();
    data::credentials(store, &d, dry)?;
    let credentials = t.elapsed();
    env::bind(store, &mut d, dry)?;
    tracing::debug!(
        credentials_us = credentials.as_micros() as u64,
        bind_us = (t.elapsed() - credentials).as_micros() as u64,
        "desired state bound"
    );
    Ok(d)
}

/// Clients for these hosts and zones, as far as the operator's configuration allows them
/// (`Invalid` otherwise, before any connection is made or key variable read).
fn connect_or_invalid<'a>(
    ctx: &Ctx,
    hosts: impl IntoIterator<Item = &'a crate::model::HostRef>,
    zones: impl IntoIterator<Item = &'a ZoneRef>,
) -> Result<crate::reconcile::connect::Real> {
    let owner =
        crate::reconcile::connect::owner(&ctx.store).map_err(|e| Error::invalid(e.to_string()))?;
    let mut backends = connect(hosts, &ctx.config, &owner, ctx.store.dir())
        .map_err(|e| Error::invalid(e.to_string()))?;
    backends.zones = connect_zones(zones, &ctx.config)
        .map_err(|e| Error::invalid(e.to_string()))?
        .into_iter()
        .map(|(z, d)| (z, std::sync::Arc::new(d)))
        .collect();
    Ok(backends)
}

/// Applies manifests (or plans it, `dry_run`); with `expect`, only if the state under the claim
/// still has that fingerprint. Returns the view and the environments it concerns.
async fn apply(
    ctx: &Ctx,
    sources: &[Source],
    dry_run: bool,
    prune: Option<&Prune>,
    expect: Option<&str>,
) -> Result<(ApplyView, Vec<EnvKey>)> {
    let store = &ctx.store;
    let declared = load_unheld(ctx, sources)?;
    let remove = match prune {
        Some(p) => {
            let mut remove = p.prunable(&declared, &store.load()?)?;
            // What the manifests' hosts hold by codeb's marks that neither they nor the store
            // know goes too when its project is named (`--prune-project`: a fresh state
            // directory's prune of what it was shown), never by a prune that names none: other
            // state directories of the same codeb may run it. Found here so that the count to
            // confirm and the daemon's refusal see it; the planner removes it as observed.
            if !declared.hosts.is_empty() && !p.projects.is_empty() {
                let backends = connect_or_invalid(ctx, declared.hosts.values(), [])?;
                let observed = reconcile::observe(&backends).await;
                let recorded = store.load()?;
                for note in plan::undeclared(&declared, &observed, &recorded, &remove) {
                    if let plan::Note::Undeclared { keys, .. } = note {
                        remove.extend(keys.into_iter().filter(|k| p.selects(k)));
                    }
                }
                remove.sort();
                remove.dedup();
            }
            // A dry run changes nothing: its plan shows what would go, unconfirmed. What the
            // daemon keeps in force is refused first: no confirmation makes that prune right.
            if !dry_run {
                if let Some(daemon) = &ctx.daemon {
                    daemon.check_prune(&remove)?;
                }
                p.check_confirmed(&remove)?;
            }
            remove
        }
        None => vec![],
    };
    let zones = apply_zones(&declared, store, &remove)?;
    let _claim = if dry_run {
        None
    } else {
        let hosts = declared.hosts.keys().cloned().map(Work::Host);
        let envs = declared.envs.keys().chain(&remove).cloned().map(Work::Env);
        let zones = managed(&zones).map(Work::Zone);
        Some(ctx.claim(hosts.chain(envs).chain(zones).collect()).await?)
    };
    let keys: Vec<EnvKey> = declared.envs.keys().chain(&remove).cloned().collect();
    if let Some(expected) = expect {
        // The plan as the dry run showed it: data steps first, releases whose data is not ready
        // left out.
        let d = effective(store, &declared, true)?;
        let backends = connect_or_invalid(ctx, d.hosts.values(), zones.values())?;
        let data = data::converge(store, &ctx.config, &d, &remove, true).await?;
        let target = Target {
            desired: &data::without_blocked(&d, &data),
            remove: remove.clone(),
            dry_run: true,
        };
        let dry = reconcile::converge(target, store, &backends, &HttpProber::new()).await?;
        let mut view = PlanView::from(&dry.first_plan);
        data::add_to_plan(&mut view, &data);
        check_fingerprint(expected, &view, store, &keys)?;
    }
    let d = effective(store, &declared, dry_run)?;
    let backends = connect_or_invalid(ctx, d.hosts.values(), zones.values())?;
    // Before the declared specs are recorded: they are what the changes are compared with.
    let before = store.recorded()?;
    let mut changes = env::field_changes_from(store, &before, &d, &remove, &BTreeMap::new())?;
    if !dry_run {
        store.put_declared(declared.envs.values())?;
    }
    // Databases and caches first: a release whose data is not ready waits.
    let mut data =
        data::converge_with(store, &ctx.config, &d, &remove, dry_run, &ctx.progress).await?;
    let ready = data::without_blocked(&d, &data);
    let outcome = reconcile::converge_with(
        Target {
            desired: &ready,
            remove: remove.clone(),
            dry_run,
        },
        store,
        &backends,
        &HttpProber::new(),
        &ctx.control(),
    )
    .await?;
    if !dry_run && !outcome.executed.is_empty() {
        // Slots changed: credentials only a replaced slot ran are retired now, not next time.
        data::then(
            &mut data,
            data::converge_with(store, &ctx.config, &d, &[], false, &ctx.progress).await?,
        );
    }
    if !dry_run && !remove.is_empty() {
        let gone: Vec<EnvKey> = remove
            .into_iter()
            .filter(|k| store.env(k).is_ok_and(|r| r.is_none()))
            .collect();
        store.forget_declared(&gone)?;
    }
    let daemon_notes = ctx
        .daemon
        .as_ref()
        .map(|daemon| daemon.apply_notes(&declared))
        .unwrap_or_default();
    // An environment the plan adopted is compared with what the host ran, not as a new one.
    let adopted = plan::adoptions(&outcome.first_plan);
    if !adopted.is_empty() {
        let only = Desired {
            envs: d
                .envs
                .iter()
                .filter(|(k, _)| adopted.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Desired::default()
        };
        changes.retain(|c| !adopted.contains_key(&c.key));
        changes.extend(env::field_changes_from(
            store,
            &before,
            &only,
            &[],
            &adopted,
        )?);
    }
    let mut view = ApplyView {
        dry_run,
        plan: PlanView::from(&outcome.first_plan),
        outcome: (!dry_run).then(|| OutcomeView::from(&outcome)),
        daemon_notes,
    };
    data::add_to_plan(&mut view.plan, &data);
    view.plan.set_changes(&changes);
    if let Some(o) = view.outcome.as_mut() {
        data::add_to_outcome(o, &data);
    }
    Ok((view, keys))
}

async fn diff(ctx: &Ctx, sources: &[Source]) -> Result<PlanView> {
    let declared = load(ctx, sources)?;
    let d = effective(&ctx.store, &declared, true)?;
    let backends = connect_or_invalid(ctx, d.hosts.values(), d.zones.values())?;
    let (observed, data) = tokio::join!(
        reconcile::observe(&backends),
        data::converge(&ctx.store, &ctx.config, &d, &[], true)
    );
    let recorded = ctx.store.load()?;
    let mut p = plan::plan(&d, &observed, &recorded, &[], reconcile::now_ms());
    p.notes
        .extend(plan::undeclared(&d, &observed, &recorded, &[]));
    let mut view = PlanView::from(&p);
    data::add_to_plan(&mut view, &data?);
    view.set_changes(&env::field_changes_from(
        &ctx.store,
        &recorded,
        &d,
        &[],
        &plan::adoptions(&p),
    )?);
    Ok(view)
}

fn get(ctx: &Ctx, what: GetWhat) -> Result<Response> {
    let r = ctx.store.recorded()?;
    // A key limited to some projects lists only those.
    let mine = |project: &str| ctx.caller.may_see(project);
    Ok(match what {
        GetWhat::Projects => {
            let mut rows = view::project_rows(&r);
            rows.retain(|row| mine(&row.project));
            Response::Projects(rows)
        }
        GetWhat::Slots => {
            let mut rows = view::slot_rows(&r);
            rows.retain(|row| mine(&row.project));
            Response::Slots(rows)
        }
        GetWhat::Hosts => Response::Hosts(view::host_rows(&r, &ctx.store.switch_modes()?)),
    })
}

/// `get hosts`: the recorded hosts, each asked now (see [`hosts`]).
async fn get_hosts(ctx: &Ctx) -> Result<Response> {
    let r = ctx.store.recorded()?;
    let mut rows = view::host_rows(&r, &ctx.store.switch_modes()?);
    let refs: Vec<&crate::model::HostRef> = r.hosts.values().collect();
    hosts::fill(ctx, &refs, &mut rows).await;
    Ok(Response::Hosts(rows))
}

fn describe(ctx: &Ctx, project: &str) -> Result<ProjectView> {
    let store = &ctx.store;
    let r = store.load()?;
    let overrides = store.overrides()?;
    let data = store.data_records()?;
    let environments: Vec<view::EnvView> = r
        .envs
        .values()
        .filter(|e| e.key.project == project)
        .map(|e| {
            view::EnvView::new(e, r.hosts.get(&e.host), overrides.get(&e.key))
                .with_data(data.get(&e.key))
        })
        .collect();
    if environments.is_empty() {
        return Err(no_project(project));
    }
    let entries = store.journal_entries(Some(project))?;
    let done: Vec<view::HistoryLine> = entries
        .iter()
        .filter(|e| e.phase != crate::store::Phase::Intent)
        .map(|e| view::HistoryLine {
            at_ms: e.at_ms,
            ok: e.phase != crate::store::Phase::Failed,
            step: e.step.clone(),
            message: e.message.clone(),
        })
        .collect();
    let history = done[done.len().saturating_sub(30)..].to_vec();
    let interrupted = store
        .interrupted()?
        .into_iter()
        .filter(|e| e.key.as_ref().is_some_and(|k| k.project == project))
        .map(|e| e.step)
        .collect();
    Ok(ProjectView {
        project: project.to_string(),
        environments,
        history,
        interrupted,
    })
}

fn no_project(project: &str) -> Error {
    Error::not_found(format!(
        "no recorded project named {project} (see `codeb get projects`)"
    ))
}

/// How an apply asks to prune, and what confirms it.
///
/// A prune removes every recorded environment the manifests do not declare, so a manifest file
/// given alone (`apply -f one.yaml --prune`) removes every other project. So that this never
/// happens by a slip:
/// - manifests that declare nothing remove nothing without `allow_empty`;
/// - a prune that removes environments of more than one project needs `confirm` equal to the
///   number it removes (a count seen in the refusal or in `--dry-run`, so a confirmation given
///   for one state does not pass for a bigger one), or a selector: `projects` names the only
///   projects whose environments may go (then nothing else can be removed by surprise);
/// - a `confirm` that is given must match, whatever the number of projects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Prune {
    allow_empty: bool,
    confirm: Option<usize>,
    projects: BTreeSet<String>,
}

impl Prune {
    /// The recorded environments the prune removes: those `d` does not declare, within the
    /// selected projects.
    ///
    /// # Errors
    /// `Invalid` when `d` declares nothing and would remove something without `allow_empty`.
    fn prunable(&self, d: &Desired, recorded: &crate::model::Recorded) -> Result<Vec<EnvKey>> {
        let remove: Vec<EnvKey> = recorded
            .envs
            .keys()
            .filter(|k| !d.envs.contains_key(*k))
            .filter(|k| self.selects(k))
            .cloned()
            .collect();
        if d.envs.is_empty() && !remove.is_empty() && !self.allow_empty {
            return Err(Error::invalid(format!(
                "--prune would remove every project ({} environments) because the manifests declare none; add --allow-empty if that is meant",
                remove.len()
            )));
        }
        Ok(remove)
    }

    /// Whether the prune may remove `key` (no project named: any).
    fn selects(&self, key: &EnvKey) -> bool {
        self.projects.is_empty() || self.projects.contains(&key.project)
    }

    /// Whether removing `remove` is confirmed (see [`Prune`]).
    ///
    /// # Errors
    /// `Invalid`, naming the count and the projects and how to confirm, when it is not.
    fn check_confirmed(&self, remove: &[EnvKey]) -> Result<()> {
        let projects: BTreeSet<&str> = remove.iter().map(|k| k.project.as_str()).collect();
        let n = remove.len();
        let what = || {
            format!(
                "--prune would remove {n} environment{} of {} project{} ({})",
                if n == 1 { "" } else { "s" },
                projects.len(),
                if projects.len() == 1 { "" } else { "s" },
                projects.iter().copied().collect::<Vec<_>>().join(", ")
            )
        };
        match self.confirm {
            Some(c) if c == n => Ok(()),
            Some(c) => Err(Error::invalid(format!(
                "{}, not the {c} that --confirm={c} confirms; nothing was applied. Check the list (`--dry-run` shows it), then confirm with --confirm={n}",
                what()
            ))),
            None if projects.len() <= 1 || !self.projects.is_empty() => Ok(()),
            None => Err(Error::invalid(format!(
                "{}; nothing was applied. If that is meant, add --confirm={n}; to prune some projects only, name each with --prune-project NAME",
                what()
            ))),
        }
    }
}

/// The zones an apply writes: every declared managed Zone, and recorded ones no longer declared
/// that hold a pruned environment's names (its records go too).
fn apply_zones(d: &Desired, store: &Store, remove: &[EnvKey]) -> Result<BTreeMap<String, ZoneRef>> {
    let mut zones = d.zones.clone();
    if !remove.is_empty() {
        let recorded = store.load()?;
        let hostnames = remove
            .iter()
            .filter_map(|k| recorded.envs.get(k))
            .map(|r| r.hostname.as_str());
        for (name, z) in plan::dns::zones_for(hostnames, &recorded.zones) {
            zones.entry(name).or_insert(z);
        }
    }
    Ok(zones)
}

/// The names of the managed zones among `zones`.
fn managed(zones: &BTreeMap<String, ZoneRef>) -> impl Iterator<Item = String> + '_ {
    zones
        .values()
        .filter(|z| z.is_managed())
        .map(|z| z.name.clone())
}

fn outcome(report: reconcile::Report, notes: Vec<Note>) -> OutcomeView {
    OutcomeView::from(&Outcome {
        executed: report.executed,
        failures: report.failures,
        notes,
        ..Outcome::default()
    })
}

async fn delete(ctx: &Ctx, names: Vec<String>, sources: &[Source]) -> Result<OutcomeView> {
    let store = &ctx.store;
    let (projects, declared): (BTreeSet<String>, Option<Desired>) =
        match (names.is_empty(), sources.is_empty()) {
            (false, true) => (names.into_iter().collect(), None),
            (true, false) => {
                let d = load(ctx, sources)?;
                (d.envs.keys().map(|k| k.project.clone()).collect(), Some(d))
            }
            _ => {
                return Err(Error::invalid(
                    "use `codeb delete project NAME` or `codeb delete -f PATH…`",
                ))
            }
        };
    let recorded = store.load()?;
    let keys: Vec<EnvKey> = recorded
        .envs
        .keys()
        .filter(|k| projects.contains(&k.project))
        .cloned()
        .collect();
    if keys.is_empty() {
        return delete_unrecorded(ctx, &projects, declared.as_ref()).await;
    }
    if let Some(daemon) = &ctx.daemon {
        daemon.check_delete(&keys)?;
    }
    let hostnames = keys
        .iter()
        .filter_map(|k| recorded.envs.get(k))
        .map(|r| r.hostname.as_str());
    let zones = plan::dns::zones_for(hostnames, &recorded.zones);
    let works = keys.iter().cloned().map(Work::Env);
    let claim = ctx
        .claim(works.chain(managed(&zones).map(Work::Zone)).collect())
        .await?;
    // A migrating environment is on two hosts: its record's and its migration's source.
    let hosts: BTreeSet<&String> = keys
        .iter()
        .filter_map(|k| recorded.envs.get(k))
        .flat_map(|r| {
            std::iter::once(&r.host).chain(r.migration.as_deref().map(|m| &m.source.host))
        })
        .collect();
    let backends = connect_or_invalid(
        ctx,
        recorded.hosts.values().filter(|h| hosts.contains(&h.name)),
        zones.values(),
    )?;
    let observed = reconcile::observe(&backends).await;
    // Planned from the records as they are now that the keys are held.
    let recorded = store.load()?;
    let p = plan::plan_delete(&keys, &observed, &recorded);
    let report = reconcile::execute_with(
        &p,
        store,
        &backends,
        &HttpProber::new(),
        &ctx.control(),
        &|| false,
    )
    .await?;
    let gone: Vec<EnvKey> = keys
        .iter()
        .filter(|k| store.env(k).is_ok_and(|r| r.is_none()))
        .cloned()
        .collect();
    // Their databases and caches go as their onDelete says, read from what was declared.
    let data = data::converge_with(
        store,
        &ctx.config,
        &Desired::default(),
        &gone,
        false,
        &ctx.progress,
    )
    .await?;
    store.forget_declared(&gone)?;
    drop(claim);
    // A name the deleted environments held may be wanted by another one: its zone looks.
    if let Some(daemon) = &ctx.daemon {
        for zone in managed(&zones) {
            daemon.controller.trigger(Work::Zone(zone), Duration::ZERO);
        }
    }
    let mut view = outcome(report, p.notes);
    data::add_to_outcome(&mut view, &data);
    Ok(view)
}

/// Deletes what the hosts hold of `projects` by codeb's marks when the store records none of
/// them (its state directory was lost, or is a fresh one): the recorded hosts, and those of the
/// manifests given, are observed, and the environments found there are removed as if recorded
/// (`plan::orphans`). Their DNS records are not: without a record, codeb does not know their
/// zones.
async fn delete_unrecorded(
    ctx: &Ctx,
    projects: &BTreeSet<String>,
    declared: Option<&Desired>,
) -> Result<OutcomeView> {
    let store = &ctx.store;
    let mut recorded = store.load()?;
    let mut hosts = recorded.hosts.clone();
    if let Some(d) = declared {
        hosts.extend(d.hosts.clone());
    }
    let names: Vec<&str> = projects.iter().map(String::as_str).collect();
    if hosts.is_empty() {
        return Err(Error::not_found(format!(
            "no recorded project named {}, and no recorded host to look for it on (delete -f with its manifests names them)",
            names.join(", ")
        )));
    }
    let backends = connect_or_invalid(ctx, hosts.values(), [])?;
    let observed = reconcile::observe(&backends).await;
    let found = plan::orphans(projects, &observed, &recorded);
    if found.is_empty() {
        let on: Vec<&str> = hosts.keys().map(String::as_str).collect();
        return Err(Error::not_found(format!(
            "no recorded project named {}, and nothing of it carries codeb's marks on {}",
            names.join(", "),
            on.join(", ")
        )));
    }
    let keys: Vec<EnvKey> = found.iter().map(|r| r.key.clone()).collect();
    if let Some(daemon) = &ctx.daemon {
        daemon.check_delete(&keys)?;
    }
    let _claim = ctx
        .claim(keys.iter().cloned().map(Work::Env).collect())
        .await?;
    recorded.hosts.extend(hosts);
    // No record says which zones hold their names: no DNS step is planned.
    recorded.zones.clear();
    for rec in found {
        recorded.envs.insert(rec.key.clone(), rec);
    }
    let p = plan::plan_delete(&keys, &observed, &recorded);
    let report = reconcile::execute_with(
        &p,
        store,
        &backends,
        &HttpProber::new(),
        &ctx.control(),
        &|| false,
    )
    .await?;
    let mut notes = p.notes;
    notes.push(plan::Note::Unrecorded { keys });
    Ok(outcome(report, notes))
}

/// Marks `name` (a recorded Host, or one the daemon's manifests declare) as this codeb's, whoever
/// marked it before: the way out of "owned by another codeb" for an operator who means it.
async fn adopt(ctx: &Ctx, name: &str) -> Result<OutcomeView> {
    let _claim = ctx.claim(vec![Work::Host(name.to_string())]).await?;
    let declared = ctx
        .daemon
        .as_ref()
        .and_then(|d| d.watched.borrow().hosts.get(name).cloned());
    let host = match declared {
        Some(h) => h,
        None => ctx.store.hosts()?.remove(name).ok_or_else(|| {
            Error::not_found(format!(
                "no Host {name} is recorded or declared (see `codeb get hosts`)"
            ))
        })?,
    };
    let owner =
        crate::reconcile::connect::owner(&ctx.store).map_err(|e| Error::invalid(e.to_string()))?;
    let backends = connect_or_invalid(ctx, [&host], [])?;
    let b = backends
        .hosts
        .get(name)
        .ok_or_else(|| Error::failed(format!("host {name}: no client")))?;
    let unavailable = |e: crate::backend::Error| {
        Error::unavailable(format!("host {name}: {}", crate::backend::error_chain(&e)))
    };
    let before = b.runtime.owner().await.map_err(unavailable)?;
    let mut view = OutcomeView {
        executed: vec![],
        failures: vec![],
        notes: vec![],
        converged: true,
        timed_out: false,
    };
    if before.as_ref().is_some_and(|o| o.id == owner.id) {
        return Ok(view);
    }
    b.runtime.mark_owner(&owner).await.map_err(unavailable)?;
    if let Some(d) = &ctx.daemon {
        d.controller
            .trigger(Work::Host(name.to_string()), Duration::ZERO);
    }
    let was = before.map_or_else(|| "no owner".to_string(), |o| format!("owned by {o}"));
    view.executed.push(format!(
        "host {name}: mark the host as owned by {owner} (was {was})"
    ));
    Ok(view)
}

/// Forgets the recorded host `name`, which no recorded or declared environment may still run on,
/// and releases its owner mark when it is this codeb's (another's is left as it is). Nothing is
/// forgotten when the host cannot be reached: its mark would stay behind.
async fn delete_host(ctx: &Ctx, name: &str) -> Result<OutcomeView> {
    let _claim = ctx.claim(vec![Work::Host(name.to_string())]).await?;
    let recorded = ctx.store.recorded()?;
    let host = recorded.hosts.get(name).cloned().ok_or_else(|| {
        Error::not_found(format!(
            "no Host {name} is recorded (see `codeb get hosts`)"
        ))
    })?;
    let mut users: BTreeSet<String> = recorded
        .envs
        .values()
        .filter(|r| r.host == name)
        .map(|r| r.key.to_string())
        .collect();
    if let Some(d) = &ctx.daemon {
        let watched = d.watched.borrow();
        if watched.hosts.contains_key(name) {
            return Err(Error::invalid(format!(
                "Host {name} is declared in the watched manifests ({}): remove it there first",
                d.dir()
            )));
        }
        users.extend(
            watched
                .envs
                .values()
                .filter(|e| e.host == name)
                .map(|e| e.key.to_string()),
        );
    }
    if !users.is_empty() {
        let names: Vec<String> = users.into_iter().collect();
        return Err(Error::invalid(format!(
            "Host {name} still runs {}: delete them first (`codeb delete project NAME`)",
            names.join(", ")
        )));
    }
    let owner =
        crate::reconcile::connect::owner(&ctx.store).map_err(|e| Error::invalid(e.to_string()))?;
    let backends = connect_or_invalid(ctx, [&host], [])?;
    let b = backends
        .hosts
        .get(name)
        .ok_or_else(|| Error::failed(format!("host {name}: no client")))?;
    let unavailable = |e: crate::backend::Error| {
        Error::unavailable(format!(
            "host {name}: {}; nothing was forgotten",
            crate::backend::error_chain(&e)
        ))
    };
    let mark = b.runtime.owner().await.map_err(unavailable)?;
    let mut executed = Vec::new();
    match mark {
        Some(o) if o.id == owner.id => {
            b.runtime.unmark_owner().await.map_err(unavailable)?;
            executed.push(format!("host {name}: release this codeb's owner mark"));
        }
        Some(o) => executed.push(format!(
            "host {name}: its owner mark is another codeb's ({o}): left as it is"
        )),
        None => {}
    }
    ctx.store.delete_host(name)?;
    if let Some(d) = &ctx.daemon {
        d.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }
    executed.push(format!("host {name}: forget the recorded host"));
    Ok(OutcomeView {
        executed,
        failures: vec![],
        notes: vec![],
        converged: true,
        timed_out: false,
    })
}

/// A recorded environment, its host and the host's clients.
type RecordedEnv = (
    crate::model::EnvRecord,
    crate::model::HostRef,
    Arc<crate::reconcile::connect::Real>,
);

fn recorded_env(ctx: &Ctx, key: &EnvKey) -> Result<RecordedEnv> {
    let recorded = ctx.store.recorded()?;
    let rec = recorded.envs.get(key).cloned().ok_or_else(|| {
        Error::not_found(format!(
            "no recorded environment {key} (see `codeb get projects`)"
        ))
    })?;
    let host = recorded
        .hosts
        .get(&rec.host)
        .cloned()
        .ok_or_else(|| Error::failed(format!("host {} of {key} is not recorded", rec.host)))?;
    let backends = ctx.host_clients(&host)?;
    Ok((rec, host, backends))
}

/// The host of a recorded environment, observed for that environment alone.
async fn observe_recorded(ctx: &Ctx, key: &EnvKey) -> Result<(RecordedEnv, plan::Observed)> {
    let (rec, host, backends) = recorded_env(ctx, key)?;
    let observed = match backends.hosts.get(&host.name) {
        Some(b) => reconcile::observe_env(&host.name, b, key).await,
        None => reconcile::observe(&backends).await,
    };
    Ok(((rec, host, backends), observed))
}

/// The plan of a promote (or a rollback) of `key`, without the claim: nothing is run or recorded.
async fn plan_switch(ctx: &Ctx, key: EnvKey, rollback: bool) -> Result<PlannedView> {
    let ((rec, host, _), observed) = observe_recorded(ctx, &key).await?;
    let p = switch_plan(&rec, &host, &observed, rollback)?;
    planned(ctx, PlanView::from(&p), vec![key])
}

/// Promotes (or rolls back) `key`; with `expect`, only if the state under the claim still has
/// that fingerprint.
async fn switch(
    ctx: &Ctx,
    key: EnvKey,
    rollback: bool,
    expect: Option<&str>,
) -> Result<OutcomeView> {
    let _claim = ctx.claim(vec![Work::Env(key.clone())]).await?;
    let store = &ctx.store;
    let (rec, host, backends) = recorded_env(ctx, &key)?;
    // Read before observing: an event during the observation makes it stale.
    let epoch = ctx
        .daemon
        .as_ref()
        .and_then(|d| d.controller.host_events().epoch(&host.name));
    let kept = match &ctx.daemon {
        Some(d) => d.warm.get(&key, &host.name, epoch, store)?,
        None => None,
    };
    let (observed, parts, prober) = match (backends.hosts.get(&host.name), kept) {
        (Some(b), Some((parts, at))) => {
            count_observation("warm");
            // The target's address is known from the kept containers: its health probe runs
            // while the kernel's table is read and the plan made.
            let ahead = plan::probe_ahead(&rec, &parts.containers, rollback);
            let prober = reconcile::Ahead::new(HttpProber::new(), ahead, b.agent.clone());
            let started = std::time::Instant::now();
            let observed = reconcile::observe_env_warm(&host.name, b, parts.clone()).await;
            tracing::debug!(
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                "switch read the kernel's table"
            );
            (observed, Some((parts, at)), prober)
        }
        (Some(b), None) => {
            count_observation("fresh");
            let at = std::time::Instant::now();
            let (observed, parts) = reconcile::observe_env_parts(&host.name, b, &key).await;
            let prober = reconcile::Ahead::new(HttpProber::new(), None, None);
            (observed, parts.map(|p| (p, at)), prober)
        }
        (None, _) => {
            let prober = reconcile::Ahead::new(HttpProber::new(), None, None);
            (reconcile::observe(&backends).await, None, prober)
        }
    };
    reconcile::record_switch_modes(store, &observed)?;
    let p = switch_plan(&rec, &host, &observed, rollback)?;
    tracing::debug!(steps = p.steps.len(), "switch planned");
    if let Some(expected) = expect {
        check_fingerprint(
            expected,
            &PlanView::from(&p),
            store,
            std::slice::from_ref(&key),
        )?;
    }
    let report =
        reconcile::execute_with(&p, store, &backends, &prober, &ctx.control(), &|| false).await?;
    // Kept for the next switch when this one changed only records and kernel rules: Podman's
    // containers and Caddy's routes are then as observed.
    let only_rules = p.steps.iter().all(|s| {
        matches!(
            s.action,
            plan::Action::Switch { .. } | plan::Action::SetService(_)
        )
    });
    if let (Some(d), Some(epoch), Some((parts, at)), true, true) = (
        &ctx.daemon,
        epoch,
        parts,
        only_rules,
        report.failures.is_empty(),
    ) {
        d.warm
            .put(key, &host.name, at, epoch, store.journal_seq()?, parts);
    }
    Ok(outcome(report, vec![]))
}

/// Whether `key`'s record holds a migration (a rollback then moves it back to its source).
fn migrating(ctx: &Ctx, key: &EnvKey) -> Result<bool> {
    Ok(ctx.store.env(key)?.is_some_and(|r| r.migration.is_some()))
}

/// `codeb rollback` during a migration: records the intent first (one journaled step writes the
/// record back on the source, marked rolled back, holding a migration back from the target; see
/// [`plan::migrate::rollback_record`]), then converges both hosts from the recorded state and the
/// declared spec. Killed anywhere after that write, the next `apply` or `rollback` goes on from
/// the record (a rollback of an environment already moving back writes nothing and resumes).
async fn migrate_rollback(ctx: &Ctx, key: EnvKey) -> Result<OutcomeView> {
    let _claim = ctx.claim(vec![Work::Env(key.clone())]).await?;
    let store = &ctx.store;
    let rec = store
        .env(&key)?
        .ok_or_else(|| Error::not_found(format!("no recorded environment {key}")))?;
    // Already rolled back and still moving back (a rollback killed after its intent): resumed.
    let resume = rec.rolled_back.is_some() && rec.migration.is_some();
    let back = if resume {
        None
    } else {
        Some(
            plan::migrate::rollback_record(&rec, &ctx.caller.label(), reconcile::now_ms())
                .map_err(|e| Error::new(Code::Failed, e))?,
        )
    };
    let (to, from) = match (&back, rec.migration.as_deref()) {
        (Some(b), _) => (b.host.clone(), rec.host.clone()),
        (None, Some(m)) => (rec.host.clone(), m.source.host.clone()),
        (None, None) => unreachable!("resume needs a migration"),
    };
    let declared = declared_env(ctx, &key)?.ok_or_else(|| {
        Error::not_found(format!(
            "no declared environment {key}: apply its manifests first"
        ))
    })?;
    let recorded = store.load()?;
    let mut hosts = BTreeMap::new();
    for name in [&to, &from] {
        let host = recorded
            .hosts
            .get(name)
            .cloned()
            .ok_or_else(|| Error::failed(format!("host {name} of {key} is not recorded")))?;
        hosts.insert(name.clone(), host);
    }
    let zones = plan::dns::zones_for([declared.hostname.as_str()], &recorded.zones);
    let d = Desired {
        hosts,
        envs: BTreeMap::from([(key.clone(), declared)]),
        zones,
    };
    let d = effective(store, &d, false)?;
    let backends = connect_or_invalid(ctx, d.hosts.values(), d.zones.values())?;
    let intent = plan::Plan {
        steps: back
            .into_iter()
            .map(|back| plan::Step {
                host: to.clone(),
                key: Some(key.clone()),
                generation: Some(rec.generation),
                action: plan::Action::MigrateRollback(Box::new(back)),
            })
            .collect(),
        notes: vec![],
    };
    let prober = HttpProber::new();
    let report =
        reconcile::execute_with(&intent, store, &backends, &prober, &ctx.control(), &|| {
            false
        })
        .await?;
    if !report.failures.is_empty() {
        return Ok(outcome(report, vec![]));
    }
    let mut result = reconcile::converge_with(
        Target {
            desired: &d,
            remove: vec![],
            dry_run: false,
        },
        store,
        &backends,
        &prober,
        &ctx.control(),
    )
    .await?;
    result.executed.splice(0..0, report.executed);
    if let Some(daemon) = &ctx.daemon {
        daemon.publish(store)?;
        // The loop takes the environment over once the claim is given back: it carries the move
        // back on and cleans the other host up at the end of its grace period.
        daemon.controller.trigger(Work::Env(key), Duration::ZERO);
    }
    Ok(OutcomeView::from(&result))
}

/// The switch's plan from one environment's observation.
fn switch_plan(
    rec: &crate::model::EnvRecord,
    host: &crate::model::HostRef,
    observed: &plan::Observed,
    rollback: bool,
) -> Result<plan::Plan> {
    let view = match observed.hosts.get(&host.name) {
        Some(obs @ HostObservation::Reachable { .. }) => obs.view().expect("reachable"),
        Some(HostObservation::Unreachable { error }) => {
            return Err(Error::unavailable(format!("host {}: {error}", host.name)))
        }
        None => {
            return Err(Error::unavailable(format!(
                "host {} was not observed",
                host.name
            )))
        }
    };
    let now = reconcile::now_ms();
    let p = if rollback {
        plan::plan_rollback(rec, host, view, now)
    } else {
        plan::plan_promote(rec, host, view, now)
    };
    p.map_err(|e| Error::new(Code::Failed, e.to_string()))
}

fn count_observation(observation: &'static str) {
    tracing::debug!(observation, "switch observes its host");
    crate::metrics::metrics()
        .switch_observations
        .get_or_create(&crate::metrics::ObservationLabels { observation })
        .inc();
}

/// Checks an image reference a request sends: bounded, printable, no whitespace.
fn check_image(image: &str) -> Result<()> {
    if image.is_empty() {
        return Err(Error::invalid("image: must not be empty"));
    }
    if image.len() > MAX_IMAGE_LEN {
        return Err(Error::invalid(format!(
            "image: longer than {MAX_IMAGE_LEN} characters"
        )));
    }
    if image
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err(Error::invalid(
            "image: must be a printable ASCII reference without spaces (e.g. registry/app:tag)",
        ));
    }
    Ok(())
}

/// Refuses an image the Host's allow-list does not hold, as an apply would.
fn check_image_allowed(host: &crate::model::HostRef, image: &str) -> Result<()> {
    let policy = crate::spec::ImagePolicy {
        allow: host.image_allow.clone(),
    };
    if policy.allows(image) {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "image: Host {} allows only images starting with {} (its `containers.images.allow`), \
         written with their registry",
        host.name,
        host.image_allow.join(", ")
    )))
}

/// The declared spec of an environment: the watched manifests' inside the daemon (it keeps them
/// in force), else the last one applied.
fn declared_env(ctx: &Ctx, key: &EnvKey) -> Result<Option<crate::model::DesiredEnv>> {
    let watched = ctx
        .daemon
        .as_ref()
        .and_then(|d| d.watched.borrow().envs.get(key).cloned());
    match watched {
        Some(env) => Ok(Some(env)),
        None => Ok(ctx.store.declared(key)?),
    }
}

/// What a rollout of `declared` works on: its host, its zones, and the works it claims.
fn rollout_scope(
    ctx: &Ctx,
    declared: &crate::model::DesiredEnv,
) -> Result<(crate::model::HostRef, BTreeMap<String, ZoneRef>, Vec<Work>)> {
    let recorded = ctx.store.load()?;
    let host = recorded.hosts.get(&declared.host).cloned().ok_or_else(|| {
        Error::failed(format!(
            "host {} of {} is not recorded",
            declared.host, declared.key
        ))
    })?;
    let zones = plan::dns::zones_for([declared.hostname.as_str()], &recorded.zones);
    let works = [
        Work::Host(host.name.clone()),
        Work::Env(declared.key.clone()),
    ]
    .into_iter()
    .chain(managed(&zones).map(Work::Zone))
    .collect();
    Ok((host, zones, works))
}

/// Rolls one environment's declared spec out through the blue/green path, with its override
/// laid over and bound to the env store (its latest version), under the caller's claim. The
/// daemon's loop is handed the new desired state before this returns, whatever the outcome, so
/// that the claim is dropped only after the loop knows (else it could plan from the old state
/// between the rollout and the hand-over).
async fn roll_out(
    ctx: &Ctx,
    key: &EnvKey,
    declared: crate::model::DesiredEnv,
    host: crate::model::HostRef,
    zones: BTreeMap<String, ZoneRef>,
) -> Result<OutcomeView> {
    let store = &ctx.store;
    let d = Desired {
        hosts: BTreeMap::from([(host.name.clone(), host)]),
        envs: BTreeMap::from([(key.clone(), declared)]),
        zones: zones.clone(),
    };
    let d = effective(store, &d, false)?;
    let backends = connect_or_invalid(ctx, d.hosts.values(), zones.values())?;
    let mut data = data::converge_with(store, &ctx.config, &d, &[], false, &ctx.progress).await?;
    let result = reconcile::converge_with(
        Target {
            desired: &data::without_blocked(&d, &data),
            remove: vec![],
            dry_run: false,
        },
        store,
        &backends,
        &HttpProber::new(),
        &ctx.control(),
    )
    .await;
    if let Some(daemon) = &ctx.daemon {
        daemon.publish(store)?;
    }
    let result = result?;
    if !result.executed.is_empty() {
        data::then(
            &mut data,
            data::converge_with(store, &ctx.config, &d, &[], false, &ctx.progress).await?,
        );
    }
    let mut view = OutcomeView::from(&result);
    data::add_to_outcome(&mut view, &data);
    Ok(view)
}

/// What a deploy of an image to one environment converges: its declared spec with the image laid
/// over as a release override, its host, and the zones of its hostname.
struct DeployTarget {
    /// The environment as declared (the manifests' image).
    declared: crate::model::DesiredEnv,
    host: crate::model::HostRef,
    zones: BTreeMap<String, ZoneRef>,
    /// The declared spec with the image laid over, on its host: what the deploy converges.
    desired: Desired,
    /// The override to record (`None`: the manifests' own image, and any override is dropped).
    over: Option<Override>,
    /// What the deploy claims from the loop.
    works: Vec<Work>,
}

fn deploy_target(ctx: &Ctx, key: &EnvKey, image: &str) -> Result<DeployTarget> {
    check_image(image)?;
    // The watched manifests are what the daemon keeps in force; otherwise the last declared spec.
    let declared = declared_env(ctx, key)?.ok_or_else(|| {
        Error::not_found(format!(
            "no declared environment {key}: apply its manifests first (see `codeb get projects`)"
        ))
    })?;
    let (host, zones, works) = rollout_scope(ctx, &declared)?;
    check_image_allowed(&host, image)?;
    // The manifests' own image: no override is needed, and any is dropped.
    let over = (declared.release.image != image).then(|| Override {
        image: image.to_string(),
        manifest_image: declared.release.image.clone(),
        by: ctx.caller.label(),
        at_ms: reconcile::now_ms(),
    });
    let env = match &over {
        Some(o) => overridden(&declared, o).expect("made from this declaration"),
        None => declared.clone(),
    };
    let desired = Desired {
        hosts: BTreeMap::from([(host.name.clone(), host.clone())]),
        envs: BTreeMap::from([(key.clone(), env)]),
        zones: zones.clone(),
    };
    Ok(DeployTarget {
        declared,
        host,
        zones,
        desired,
        over,
        works,
    })
}

/// The plan of a deploy, as a dry run computes it without the claim: nothing is run or recorded.
async fn plan_deploy(ctx: &Ctx, key: EnvKey, image: &str) -> Result<PlannedView> {
    let t = deploy_target(ctx, &key, image)?;
    let plan = deploy_plan(ctx, &t.desired).await?;
    planned(ctx, plan, vec![key])
}

/// The dry run of a deploy of `d` (bound to the env store as the rollout will be).
async fn deploy_plan(ctx: &Ctx, d: &Desired) -> Result<PlanView> {
    let mut d = d.clone();
    env::bind(&ctx.store, &mut d, true)?;
    dry_plan(ctx, &d).await
}

/// The first plan of converging `d` (bound to the env store already), as a dry run computes it.
async fn dry_plan(ctx: &Ctx, d: &Desired) -> Result<PlanView> {
    let backends = connect_or_invalid(ctx, d.hosts.values(), d.zones.values())?;
    let target = Target {
        desired: d,
        remove: vec![],
        dry_run: true,
    };
    let dry = reconcile::converge(target, &ctx.store, &backends, &HttpProber::new()).await?;
    Ok(PlanView::from(&dry.first_plan))
}

/// Deploys `image` to `key`; with `expect`, only if the state under the claim still has that
/// fingerprint.
async fn deploy(ctx: &Ctx, key: EnvKey, image: &str, expect: Option<&str>) -> Result<OutcomeView> {
    let store = &ctx.store;
    let t = deploy_target(ctx, &key, image)?;
    let claim = ctx.claim(t.works.clone()).await?;
    if let Some(expected) = expect {
        let plan = deploy_plan(ctx, &t.desired).await?;
        check_fingerprint(expected, &plan, store, std::slice::from_ref(&key))?;
    }
    store.set_override(&key, t.over.as_ref())?;
    // The loop keeps the override in force from now on, whatever the rollout's outcome.
    let result = roll_out(ctx, &key, t.declared, t.host, t.zones).await;
    drop(claim);
    result
}

/// Replaces control characters (escape sequences, carriage returns) in application output, so a
/// log line cannot drive a terminal or forge lines.
pub fn sanitize(line: &str) -> String {
    line.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

async fn logs(
    ctx: &Ctx,
    key: EnvKey,
    slot: Option<Slot>,
    lines: usize,
    follow: bool,
) -> Result<LogsView> {
    // A follow may start with no line of the past (`--tail 0`); a tail needs one.
    let least = usize::from(!follow);
    if lines < least || lines > MAX_LOG_LINES {
        return Err(Error::invalid(format!(
            "lines: must be between {least} and {MAX_LOG_LINES}"
        )));
    }
    if follow && !ctx.progress.streams() {
        return Err(Error::invalid(
            "follow: only a client that streams can follow a log (the CLI, `codeb logs -f`); ask for a bounded tail instead",
        ));
    }
    let ((rec, host, backends), observed) = observe_recorded(ctx, &key).await?;
    let slot = slot.or(rec.active).ok_or_else(|| {
        Error::not_found(format!(
            "{key} has no active slot; name one (blue or green)"
        ))
    })?;
    let name = key.container_name(slot);
    let container = observed
        .hosts
        .get(&host.name)
        .and_then(|o| o.view())
        .and_then(|v| v.containers.iter().find(|c| c.name == name).cloned())
        .ok_or_else(|| Error::not_found(format!("{key}: no container in slot {slot}")))?;
    let runtime = &backends.hosts[&host.name].runtime;
    let unavailable =
        |e: crate::backend::Error| Error::unavailable(format!("host {}: {e}", host.name));
    let tail = if follow {
        use futures_util::StreamExt;
        let mut stream = runtime.logs_follow(&container.id, lines);
        loop {
            // The reader may go away while the container is quiet: no line would tell.
            let line = tokio::select! {
                line = stream.next() => line,
                () = ctx.progress.closed() => break,
            };
            let Some(line) = line else { break };
            let line = sanitize(&line.map_err(unavailable)?);
            if ctx
                .progress
                .send(reconcile::Event::Log { line })
                .await
                .is_err()
            {
                break; // the reader went away (Ctrl-C, a closed pipe): nothing left to do
            }
        }
        // Every line went out as an event.
        Vec::new()
    } else {
        runtime
            .logs_tail(&container.id, lines)
            .await
            .map_err(unavailable)?
    };
    Ok(LogsView {
        project: key.project.clone(),
        environment: key.env.clone(),
        slot,
        container: name,
        lines: tail.iter().map(|l| sanitize(l)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EnvRecord, Recorded};

    #[test]
    fn the_clients_manifests_are_taken_only_for_the_very_sources_it_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let config = crate::config::Config::defaults(dir.path().join("config.yaml"));
        let zone = |name: &str| Source {
            name: "m.yaml".into(),
            text: format!("apiVersion: codeb.kr/v1\nkind: Zone\nmetadata: {{name: {name}}}\n"),
        };
        let sources = vec![zone("a.test")];
        let mut loaded = crate::spec::load_sources(&sources).unwrap();
        // Marked, to tell the client's load from one made here.
        loaded
            .zones
            .get_mut("a.test")
            .unwrap()
            .labels
            .insert("by".into(), "client".into());
        let ctx = Ctx::local(store, Caller::cli(0), Arc::new(config)).with_loaded(Some(Loaded {
            sources: sources.clone(),
            manifests: loaded,
        }));
        let taken = ctx.load_sources(&sources).unwrap();
        assert_eq!(taken.zones["a.test"].labels["by"], "client");
        let other = vec![zone("b.test")];
        let fresh = ctx.load_sources(&other).unwrap();
        assert!(fresh.zones.contains_key("b.test") && !fresh.zones.contains_key("a.test"));
    }

    /// Manifests declaring these projects' production environments.
    fn declaring(projects: &[&str]) -> Desired {
        Desired {
            envs: projects
                .iter()
                .map(|p| (EnvKey::new(*p, "production"), crate::plan::tests::env(p)))
                .collect(),
            ..Desired::default()
        }
    }

    /// A store recording these `(project, environment)`s.
    fn recording(keys: &[(&str, &str)]) -> Recorded {
        Recorded {
            envs: keys
                .iter()
                .map(|(p, e)| {
                    let key = EnvKey::new(*p, *e);
                    let rec = EnvRecord::new(key.clone(), "app".into(), format!("{p}.test"), 20000);
                    (key, rec)
                })
                .collect(),
            ..Recorded::default()
        }
    }

    fn plan_view(steps: &[&str], notes: &[(bool, bool)]) -> PlanView {
        PlanView {
            changes: vec![],
            steps: steps.iter().map(|s| s.to_string()).collect(),
            notes: notes
                .iter()
                .map(|&(problem, unobserved)| view::NoteView {
                    text: "a note".into(),
                    problem,
                    unobserved,
                })
                .collect(),
        }
    }

    fn dry_run(plan: PlanView) -> Response {
        Response::Apply(ApplyView {
            dry_run: true,
            plan,
            outcome: None,
            daemon_notes: Vec::new(),
        })
    }

    #[test]
    fn a_fingerprint_changes_with_the_plan_a_record_write_or_an_override_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = EnvKey::new("shop", "production");
        let keys = std::slice::from_ref(&key);
        let plan = plan_view(&["deploy web"], &[]);
        let none = fingerprint(&plan, &store, keys).unwrap();
        assert_eq!(none.len(), 32);
        assert_eq!(fingerprint(&plan, &store, keys).unwrap(), none, "stable");
        assert_ne!(
            fingerprint(&plan_view(&["deploy api"], &[]), &store, keys).unwrap(),
            none,
            "another plan"
        );
        assert_ne!(
            fingerprint(&plan_view(&["deploy web"], &[(true, false)]), &store, keys).unwrap(),
            none,
            "a note more"
        );
        let rec = EnvRecord::new(key.clone(), "app".into(), "shop.test".into(), 20000);
        let rec = store.put_env(rec, None).unwrap();
        let first = fingerprint(&plan, &store, keys).unwrap();
        assert_ne!(first, none, "recorded");
        store.put_env(rec.clone(), Some(rec.generation)).unwrap();
        let second = fingerprint(&plan, &store, keys).unwrap();
        assert_ne!(second, first, "written again, even unchanged");
        let over = Override {
            image: "app:v3".into(),
            manifest_image: "app:v1".into(),
            by: "key 0123456789ab".into(),
            at_ms: 1,
        };
        store.set_override(&key, Some(&over)).unwrap();
        assert_ne!(
            fingerprint(&plan, &store, keys).unwrap(),
            second,
            "an override"
        );
        let stale = check_fingerprint(&second, &plan, &store, keys).unwrap_err();
        assert_eq!(stale.code, Code::Conflict);
        assert!(
            stale.message.contains("shop/production changed")
                && stale.message.contains("plan again"),
            "{}",
            stale.message
        );
    }

    #[test]
    fn a_planned_prune_names_the_projects_it_may_remove() {
        let refused = change_prune(true, vec![]).unwrap_err();
        assert_eq!(refused.code, Code::Invalid);
        assert!(
            refused.message.contains("prune_projects"),
            "{}",
            refused.message
        );
        assert_eq!(change_prune(false, vec![]).unwrap(), None);
        let p = change_prune(true, vec!["b".into()]).unwrap().unwrap();
        assert_eq!(p.projects, BTreeSet::from(["b".to_string()]));
        assert_eq!((p.allow_empty, p.confirm), (false, None));
    }

    #[test]
    fn diff_exits_1_for_steps_a_field_change_or_a_problem_note_and_0_only_when_converged() {
        let diff = |steps: &[&str], notes: &[(bool, bool)]| {
            Response::Diff(plan_view(steps, notes)).exit_code()
        };
        assert_eq!(diff(&[], &[]), 0, "converged");
        assert_eq!(diff(&[], &[(false, false)]), 0, "an informative note only");
        assert_eq!(diff(&[], &[(true, false)]), 1, "a problem and no step");
        assert_eq!(diff(&["deploy web"], &[]), 1, "steps");
        assert_eq!(diff(&["deploy web"], &[(true, true)]), 3, "unobserved");
        let mut changed = plan_view(&[], &[(false, false)]);
        changed.changes.push(view::EnvChangesView {
            environment: "web/production".into(),
            change: view::ChangeKind::Changed,
            fields: vec![view::FieldChangeView {
                field: "healthCheck.path".into(),
                from: Some("/".into()),
                to: Some("/healthz".into()),
            }],
            env: vec![],
        });
        assert_eq!(
            Response::Diff(changed.clone()).exit_code(),
            1,
            "a field change with no step (apply records it)"
        );
        assert_eq!(
            dry_run(changed).exit_code(),
            0,
            "a dry run's changes are its purpose"
        );
    }

    #[test]
    fn a_dry_run_exits_1_when_its_plan_carries_a_problem_and_0_for_steps_alone() {
        assert_eq!(dry_run(plan_view(&["deploy web"], &[])).exit_code(), 0);
        assert_eq!(dry_run(plan_view(&[], &[(false, false)])).exit_code(), 0);
        assert_eq!(dry_run(plan_view(&[], &[(true, false)])).exit_code(), 1);
        assert_eq!(
            dry_run(plan_view(&["deploy web"], &[(true, true)])).exit_code(),
            1
        );
    }

    fn confirm(n: usize) -> Prune {
        Prune {
            confirm: Some(n),
            ..Prune::default()
        }
    }

    #[test]
    fn a_prune_of_one_project_needs_no_confirmation() {
        let r = recording(&[("a", "production"), ("b", "production"), ("b", "staging")]);
        let remove = Prune::default().prunable(&declaring(&["a"]), &r).unwrap();
        assert_eq!(remove.len(), 2);
        Prune::default().check_confirmed(&remove).unwrap();
    }

    #[test]
    fn a_prune_of_two_projects_is_refused_with_the_count_until_confirmed_with_it() {
        let r = recording(&[
            ("a", "production"),
            ("b", "production"),
            ("c", "production"),
        ]);
        let remove = Prune::default().prunable(&declaring(&["a"]), &r).unwrap();
        let refused = Prune::default().check_confirmed(&remove).unwrap_err();
        assert_eq!(refused.code, Code::Invalid);
        let m = refused.message;
        assert!(
            m.contains("2 environments of 2 projects (b, c)") && m.contains("--confirm=2"),
            "{m}"
        );
        assert!(m.contains("--prune-project"), "{m}");
        confirm(2).check_confirmed(&remove).unwrap();
        let stale = confirm(1).check_confirmed(&remove).unwrap_err().message;
        assert!(
            stale.contains("not the 1") && stale.contains("--confirm=2"),
            "{stale}"
        );
        // A count given must match even for one project.
        assert!(confirm(3).check_confirmed(&remove[..1]).is_err());
    }

    #[test]
    fn a_project_selector_prunes_only_the_named_projects_without_a_count() {
        let r = recording(&[
            ("a", "production"),
            ("b", "production"),
            ("c", "production"),
        ]);
        let only_b = Prune {
            projects: BTreeSet::from(["b".to_string()]),
            ..Prune::default()
        };
        let remove = only_b.prunable(&declaring(&["a"]), &r).unwrap();
        assert_eq!(remove, vec![EnvKey::new("b", "production")]);
        only_b.check_confirmed(&remove).unwrap();
        let b_and_c = Prune {
            projects: BTreeSet::from(["b".to_string(), "c".to_string()]),
            ..Prune::default()
        };
        let remove = b_and_c.prunable(&declaring(&["a"]), &r).unwrap();
        assert_eq!(remove.len(), 2);
        b_and_c.check_confirmed(&remove).unwrap();
    }

    #[test]
    fn manifests_declaring_nothing_still_need_allow_empty_and_then_the_count() {
        let r = recording(&[("a", "production"), ("b", "production")]);
        let m = Prune::default()
            .prunable(&declaring(&[]), &r)
            .unwrap_err()
            .message;
        assert!(m.contains("--allow-empty"), "{m}");
        let empty = Prune {
            allow_empty: true,
            ..Prune::default()
        };
        let remove = empty.prunable(&declaring(&[]), &r).unwrap();
        assert!(empty.check_confirmed(&remove).is_err());
        let confirmed = Prune {
            allow_empty: true,
            confirm: Some(2),
            ..Prune::default()
        };
        confirmed.check_confirmed(&remove).unwrap();
    }
}
