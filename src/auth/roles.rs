//! Roles, permissions and the one decision: may this caller do this, to this project?
//!
//! The roles are those of the platform codeb replaces: an admin does everything; a developer
//! reads, deploys, promotes and rolls back (within its projects when its key names some), lists
//! env names and writes env values except protected keys, but sees no env values and changes no
//! keys, hosts, zones or manifests; a viewer only reads (nothing of env).
//! Because each role holds every permission of the roles below it, the table is one column:
//! the least role that holds each permission ([`Permission::least_role`]). Should a role ever
//! hold a permission that a higher role lacks, that column becomes a matrix; the tests iterate
//! every permission × role against a matrix written out once, so such a change shows.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::audit::AuditScope;
use super::keys::KeyRecord;

/// What a key (or a local user) is entitled to. The role in a key's text is a label for people;
/// the authority is the role in the stored [`KeyRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Developer,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Developer, Role::Viewer];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
        }
    }

    /// Roles are nested: a higher rank holds every permission of a lower one.
    const fn rank(self) -> u8 {
        match self {
            Role::Viewer => 0,
            Role::Developer => 1,
            Role::Admin => 2,
        }
    }
}

/// One thing a front end may be asked to do. Routes and MCP tools each name the one permission
/// they need.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    /// See projects, environments, releases, hosts, plans (`get`, `diff`, `status`). Never env
    /// values: those are [`Permission::EnvRead`].
    Read,
    /// Read an application's container logs. Not a viewer's: applications print secrets to
    /// their logs more often than they should.
    Logs,
    /// Start a new release of an environment (a new image or config in the idle slot).
    Deploy,
    /// Switch an environment's traffic to its other slot.
    Promote,
    /// Switch back to the previous release's slot.
    Rollback,
    /// Apply manifests: can change anything they declare, hosts and zones included.
    Apply,
    /// Remove what no manifest declares any more (containers, routes, records).
    Prune,
    /// Delete an environment or a project and everything codeb runs for it.
    Delete,
    /// List a project's env: names, keyed digests, versions, history and diffs; never values.
    EnvList,
    /// Read env values (secrets, often): `env get`, `env export`, `env backup`.
    EnvRead,
    /// Set, unset, import and restore env values, except protected keys (those are kept as
    /// stored, and the answer says so). A developer's: the platform codeb replaces let developers
    /// upload env files whose protected keys were kept.
    EnvWrite,
    /// Set or remove protected env keys (`DATABASE_URL`, ...), with an explicit `--protected`.
    EnvProtected,
    /// Add, change or remove hosts.
    HostsWrite,
    /// Add, change or remove DNS zones.
    ZonesWrite,
    /// Create, list and revoke API keys.
    KeysManage,
    /// Read the audit log (a developer only its projects' entries: see [`audit_scope`]).
    AuditRead,
    /// List a project's backups and run one now (`backup list`, `backup run`). A developer's:
    /// a backup changes no data, and the files stay on the backup destination.
    Backup,
    /// Restore a backup (`restore`): a new database, or a cache's keys written over live ones.
    Restore,
}

impl Permission {
    pub const ALL: [Permission; 18] = [
        Permission::Read,
        Permission::Logs,
        Permission::Deploy,
        Permission::Promote,
        Permission::Rollback,
        Permission::Apply,
        Permission::Prune,
        Permission::Delete,
        Permission::EnvList,
        Permission::EnvRead,
        Permission::EnvWrite,
        Permission::EnvProtected,
        Permission::HostsWrite,
        Permission::ZonesWrite,
        Permission::KeysManage,
        Permission::AuditRead,
        Permission::Backup,
        Permission::Restore,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Logs => "logs",
            Permission::Deploy => "deploy",
            Permission::Promote => "promote",
            Permission::Rollback => "rollback",
            Permission::Apply => "apply",
            Permission::Prune => "prune",
            Permission::Delete => "delete",
            Permission::EnvList => "env-list",
            Permission::EnvRead => "env-read",
            Permission::EnvWrite => "env-write",
            Permission::EnvProtected => "env-protected",
            Permission::HostsWrite => "hosts-write",
            Permission::ZonesWrite => "zones-write",
            Permission::KeysManage => "keys-manage",
            Permission::AuditRead => "audit-read",
            Permission::Backup => "backup",
            Permission::Restore => "restore",
        }
    }

    /// The table: the least role that holds this permission.
    pub const fn least_role(self) -> Role {
        match self {
            Permission::Read => Role::Viewer,
            Permission::Logs
            | Permission::Deploy
            | Permission::Promote
            | Permission::Rollback
            | Permission::EnvList
            | Permission::EnvWrite
            | Permission::AuditRead
            | Permission::Backup => Role::Developer,
            Permission::Apply
            | Permission::Prune
            | Permission::Delete
            | Permission::EnvRead
            | Permission::EnvProtected
            | Permission::HostsWrite
            | Permission::ZonesWrite
            | Permission::KeysManage
            | Permission::Restore => Role::Admin,
        }
    }

    /// Listings a caller limited to some projects may ask for without naming a project: the
    /// front end then shows only what [`Caller::may_see`] admits.
    pub const fn is_listing(self) -> bool {
        matches!(self, Permission::Read | Permission::AuditRead)
    }
}

/// Does `role` hold permission `p`? The one table every front end's decision comes from.
pub const fn allows(role: Role, p: Permission) -> bool {
    role.rank() >= p.least_role().rank()
}

/// A name that is no role or no permission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?} (expected one of: {expected})")]
pub struct UnknownName {
    pub kind: &'static str,
    pub name: String,
    pub expected: String,
}

/// Parses `s` as one of `all`, by their names.
fn parse_name<T: Copy>(
    kind: &'static str,
    all: &[T],
    name: fn(T) -> &'static str,
    s: &str,
) -> Result<T, UnknownName> {
    all.iter()
        .copied()
        .find(|v| name(*v) == s)
        .ok_or_else(|| UnknownName {
            kind,
            name: s.to_string(),
            expected: all.iter().map(|v| name(*v)).collect::<Vec<_>>().join(", "),
        })
}

impl FromStr for Role {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Role, UnknownName> {
        parse_name("role", &Role::ALL, Role::as_str, s)
    }
}

impl FromStr for Permission {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Permission, UnknownName> {
        parse_name("permission", &Permission::ALL, Permission::as_str, s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// An API key (by its id, which is no secret, and its name).
    Key { id: String, name: Option<String> },
    /// A local user of the CLI, through the daemon's socket.
    Cli { uid: u32 },
    /// codeb itself (the watch loop reconciling on a change).
    Internal,
}

/// The caller of one request, as every front end describes it to [`authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub who: Who,
    pub role: Role,
    /// The projects the caller is limited to; `None`: every project.
    pub projects: Option<BTreeSet<String>>,
    /// The peer address, for the audit log.
    pub source: Option<String>,
}

impl Caller {
    /// A local CLI user. An admin: the daemon's socket is reachable only by root (its file mode
    /// is the gate), and root on the host can do anything codeb can anyway.
    pub fn cli(uid: u32) -> Caller {
        Caller {
            who: Who::Cli { uid },
            role: Role::Admin,
            projects: None,
            source: None,
        }
    }

    /// codeb's own loop: an admin of every project.
    pub fn internal() -> Caller {
        Caller {
            who: Who::Internal,
            role: Role::Admin,
            projects: None,
            source: None,
        }
    }

    /// The caller a verified key makes; its authority is the stored record's.
    pub fn from_key(rec: &KeyRecord, source: Option<String>) -> Caller {
        Caller {
            who: Who::Key {
                id: rec.id.clone(),
                name: rec.name.clone(),
            },
            role: rec.role,
            projects: rec.projects.clone(),
            source,
        }
    }

    /// For people and the audit log: `cli (uid 0)`, `key 3f9a0c1d2e4b (ci-bot)`, `codeb`.
    pub fn label(&self) -> String {
        match &self.who {
            Who::Key { id, name: Some(n) } => format!("key {id} ({n})"),
            Who::Key { id, name: None } => format!("key {id}"),
            Who::Cli { uid } => format!("cli (uid {uid})"),
            Who::Internal => "codeb".to_string(),
        }
    }

    pub fn key_id(&self) -> Option<&str> {
        match &self.who {
            Who::Key { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Whether `project` is within the caller's projects (for filtering listings).
    pub fn may_see(&self, project: &str) -> bool {
        self.projects.as_ref().is_none_or(|ps| ps.contains(project))
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// The caller's role does not hold the permission.
    RoleLacks { role: Role },
    /// The project is outside the projects the caller is limited to.
    OutsideProjects { project: String },
    /// The caller is limited to some projects, and the request names none (only listings may).
    NeedsProject,
}

/// A refusal: the permission asked for and why. The HTTP layer answers 403 with its message,
/// which names no secret (and, to a caller that could authenticate, hides nothing it may not
/// know: its own role and projects).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{permission} is not allowed: {}", self.reason_text())]
pub struct Denied {
    pub permission: Permission,
    pub reason: DenyReason,
}

impl Denied {
    pub fn reason_text(&self) -> String {
        match &self.reason {
            DenyReason::RoleLacks { role } => format!("the {role} role does not have it"),
            DenyReason::OutsideProjects { project } => {
                format!("project {project} is outside the key's projects")
            }
            DenyReason::NeedsProject => "the key is limited to some projects; name one".into(),
        }
    }
}

/// May `caller` do `p` (to `project`, when the request concerns one)?
///
/// # Guarantees
/// Allowed only when the caller's role holds `p` ([`allows`]) and, for a caller limited to some
/// projects, `project` is one of them; a limited caller may name no project only for a listing
/// ([`Permission::is_listing`]), whose results the front end filters with [`Caller::may_see`].
///
/// # Errors
/// [`Denied`], naming the permission and the reason.
pub fn authorize(caller: &Caller, p: Permission, project: Option<&str>) -> Result<(), Denied> {
    let deny = |reason| {
        Err(Denied {
            permission: p,
            reason,
        })
    };
    if !allows(caller.role, p) {
        return deny(DenyReason::RoleLacks { role: caller.role });
    }
    match (&caller.projects, project) {
        (None, _) => Ok(()),
        (Some(ps), Some(project)) if !ps.contains(project) => deny(DenyReason::OutsideProjects {
            project: project.to_string(),
        }),
        (Some(_), Some(_)) => Ok(()),
        (Some(_), None) if p.is_listing() => Ok(()),
        (Some(_), None) => deny(DenyReason::NeedsProject),
    }
}

/// Which audit entries `caller` may read: an admin all of them; a developer only entries of its
/// projects (entries that concern no project, such as key changes, are the admins').
///
/// # Errors
/// [`Denied`] when the role lacks [`Permission::AuditRead`].
pub fn audit_scope(caller: &Caller) -> Result<AuditScope, Denied> {
    authorize(caller, Permission::AuditRead, None)?;
    Ok(match (&caller.projects, caller.role) {
        (None, Role::Admin) => AuditScope::All,
        (None, _) => AuditScope::AnyProject,
        (Some(ps), _) => AuditScope::Projects(ps.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_caller(role: Role, projects: Option<&[&str]>) -> Caller {
        Caller {
            who: Who::Key {
                id: "0123456789ab".into(),
                name: Some("ci-bot".into()),
            },
            role,
            projects: projects.map(|ps| ps.iter().map(|p| p.to_string()).collect()),
            source: Some("192.0.2.1:4000".into()),
        }
    }

    #[test]
    fn every_permission_and_role_matches_the_platform_matrix() {
        use Permission::*;
        // Columns: admin, developer, viewer. Written once, here; `allows` must agree.
        let expected: [(Permission, [bool; 3]); 18] = [
            (Read, [true, true, true]),
            (Logs, [true, true, false]),
            (Deploy, [true, true, false]),
            (Promote, [true, true, false]),
            (Rollback, [true, true, false]),
            (Apply, [true, false, false]),
            (Prune, [true, false, false]),
            (Delete, [true, false, false]),
            (EnvList, [true, true, false]),
            (EnvRead, [true, false, false]),
            (EnvWrite, [true, true, false]),
            (EnvProtected, [true, false, false]),
            (HostsWrite, [true, false, false]),
            (ZonesWrite, [true, false, false]),
            (KeysManage, [true, false, false]),
            (AuditRead, [true, true, false]),
            (Backup, [true, true, false]),
            (Restore, [true, false, false]),
        ];
        assert_eq!(
            expected.map(|(p, _)| p),
            Permission::ALL,
            "the matrix lists every permission, in order"
        );
        for (p, row) in expected {
            for (role, want) in Role::ALL.into_iter().zip(row) {
                assert_eq!(allows(role, p), want, "{role} × {p}");
                let caller = key_caller(role, None);
                assert_eq!(
                    authorize(&caller, p, Some("shop")).is_ok(),
                    want,
                    "{role} × {p}"
                );
            }
        }
    }

    #[test]
    fn names_round_trip_through_display_from_str_and_serde() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{role}\""));
        }
        for p in Permission::ALL {
            assert_eq!(p.to_string().parse::<Permission>(), Ok(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        let err = "root".parse::<Role>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown role \"root\" (expected one of: admin, developer, viewer)"
        );
    }

    #[test]
    fn a_developer_limited_to_projects_acts_only_on_them() {
        let dev = key_caller(Role::Developer, Some(&["shop"]));
        assert_eq!(authorize(&dev, Permission::Deploy, Some("shop")), Ok(()));
        let err = authorize(&dev, Permission::Deploy, Some("blog")).unwrap_err();
        assert_eq!(
            err.reason,
            DenyReason::OutsideProjects {
                project: "blog".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "deploy is not allowed: project blog is outside the key's projects"
        );
        assert_eq!(
            authorize(&dev, Permission::Promote, None)
                .unwrap_err()
                .reason,
            DenyReason::NeedsProject
        );
        assert_eq!(authorize(&dev, Permission::Read, None), Ok(()));
        assert!(dev.may_see("shop") && !dev.may_see("blog"));
    }

    #[test]
    fn a_role_that_lacks_a_permission_is_named_in_the_refusal() {
        let viewer = key_caller(Role::Viewer, None);
        let err = authorize(&viewer, Permission::Deploy, Some("shop")).unwrap_err();
        assert_eq!(err.permission, Permission::Deploy);
        assert_eq!(
            err.to_string(),
            "deploy is not allowed: the viewer role does not have it"
        );
    }

    #[test]
    fn audit_reads_are_scoped_by_role_and_projects() {
        assert_eq!(audit_scope(&Caller::cli(0)), Ok(AuditScope::All));
        assert_eq!(
            audit_scope(&key_caller(Role::Developer, None)),
            Ok(AuditScope::AnyProject)
        );
        assert_eq!(
            audit_scope(&key_caller(Role::Developer, Some(&["shop"]))),
            Ok(AuditScope::Projects(["shop".to_string()].into()))
        );
        assert!(audit_scope(&key_caller(Role::Viewer, None)).is_err());
    }

    #[test]
    fn labels_name_the_caller_for_people() {
        assert_eq!(Caller::cli(0).label(), "cli (uid 0)");
        assert_eq!(
            key_caller(Role::Viewer, None).label(),
            "key 0123456789ab (ci-bot)"
        );
        assert_eq!(Caller::internal().label(), "codeb");
    }
}
