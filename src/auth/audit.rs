//! The audit log's entries: who changed what, or was refused, and how it ended.
//!
//! An entry holds names, addresses and the steps as the plan prints them; never a key, an env
//! value or a request body (the front end builds it from a [`Caller`] and the route, not from the
//! request). The store appends and trims them (`store::audit`).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::keys::Rejection;
use super::roles::{Caller, Denied, Permission, Role};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Assigned by the store.
    #[serde(default)]
    pub seq: u64,
    pub at_ms: u64,
    /// [`Caller::label`], or `unauthenticated` for a rejected key.
    pub actor: String,
    pub key_id: Option<String>,
    /// `None` when the caller could not be authenticated.
    pub role: Option<Role>,
    /// The peer address.
    pub source: Option<String>,
    /// The route or tool (`POST /projects/{p}/deploy`, `deploy`).
    pub action: String,
    pub project: Option<String>,
    pub environment: Option<String>,
    pub outcome: Outcome,
    /// The executed steps as the plan prints them (never an env value).
    #[serde(default)]
    pub steps: Vec<String>,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Outcome {
    Ok,
    Failed {
        message: String,
    },
    /// Authenticated, but not allowed (403).
    Denied {
        permission: Permission,
        reason: String,
    },
    /// Not authenticated (401): the precise reason, which the caller is never told.
    Rejected {
        reason: String,
    },
}

impl AuditEntry {
    /// An entry for `caller` doing `action`, `Ok` until told otherwise; set the project,
    /// environment, outcome and steps on the fields.
    pub fn new(at_ms: u64, caller: &Caller, action: impl Into<String>) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at_ms,
            actor: caller.label(),
            key_id: caller.key_id().map(str::to_string),
            role: Some(caller.role),
            source: caller.source.clone(),
            action: action.into(),
            project: None,
            environment: None,
            outcome: Outcome::Ok,
            steps: Vec::new(),
        }
    }

    /// An entry for a request whose key was rejected (no caller: its role is unknown).
    pub fn rejected(
        at_ms: u64,
        source: Option<String>,
        action: impl Into<String>,
        why: &Rejection,
    ) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at_ms,
            actor: "unauthenticated".to_string(),
            key_id: why.key_id().map(str::to_string),
            role: None,
            source,
            action: action.into(),
            project: None,
            environment: None,
            outcome: Outcome::Rejected {
                reason: why.to_string(),
            },
            steps: Vec::new(),
        }
    }
}

impl From<&Denied> for Outcome {
    fn from(d: &Denied) -> Outcome {
        Outcome::Denied {
            permission: d.permission,
            reason: d.reason_text(),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Failed { message } => write!(f, "failed: {message}"),
            Outcome::Denied { permission, .. } => write!(f, "denied: {permission}"),
            Outcome::Rejected { reason } => write!(f, "rejected: {reason}"),
        }
    }
}

/// Which entries a reader may see ([`super::audit_scope`] decides it from the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditScope {
    All,
    /// Entries of any project; not those that concern none (key changes, hosts, zones).
    AnyProject,
    /// Entries of these projects only.
    Projects(BTreeSet<String>),
}

impl AuditScope {
    pub fn admits(&self, project: Option<&str>) -> bool {
        match (self, project) {
            (AuditScope::All, _) => true,
            (_, None) => false,
            (AuditScope::AnyProject, Some(_)) => true,
            (AuditScope::Projects(ps), Some(p)) => ps.contains(p),
        }
    }
}

/// How much of the audit log is kept. Trimmed on each append, oldest first, so the log never
/// outgrows either bound by more than the one entry being appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    pub max_entries: u64,
    pub max_age: Duration,
}

impl Default for AuditRetention {
    /// 10,000 entries and 90 days: a busy CI deploying every few minutes fills 10,000 in about
    /// a month; a quiet one keeps a quarter of history. Entries are about 300 bytes, so the log
    /// stays under 3 MB.
    fn default() -> AuditRetention {
        AuditRetention {
            max_entries: 10_000,
            max_age: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::authorize;

    #[test]
    fn a_denied_request_records_the_permission_and_the_reason() {
        let viewer = Caller {
            role: Role::Viewer,
            ..Caller::cli(1000)
        };
        let denied = authorize(&viewer, Permission::Delete, Some("shop")).unwrap_err();
        let mut entry = AuditEntry::new(5, &viewer, "DELETE /projects/shop");
        entry.outcome = Outcome::from(&denied);
        assert_eq!(entry.outcome.to_string(), "denied: delete");
        let json = serde_json::to_string(&entry).unwrap();
        assert!(
            json.contains(r#""outcome":{"kind":"denied","permission":"delete","reason":"the viewer role does not have it"}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<AuditEntry>(&json).unwrap(), entry);
    }

    #[test]
    fn a_scope_of_projects_admits_no_entry_without_a_project() {
        let scope = AuditScope::Projects(["shop".to_string()].into());
        assert!(scope.admits(Some("shop")));
        assert!(!scope.admits(Some("blog")));
        assert!(!scope.admits(None));
        assert!(!AuditScope::AnyProject.admits(None));
        assert!(AuditScope::All.admits(None));
    }
}
