//! Who may do what: API keys, roles and permissions, the caller of a request, and the shape of
//! an audit entry.
//!
//! Every front end (the HTTP API now, MCP next, the local socket) turns its request into a
//! [`Caller`] and asks [`authorize`] before it acts, so that one table ([`Permission::least_role`])
//! decides for all of them and a new front end cannot grow its own idea of a role.
//!
//! This module is pure apart from drawing random bytes for new keys: no store, no clock (times
//! are passed in). Persisting keys and audit entries is the store's (`store::keys`,
//! `store::audit`), which depends on this module and not the other way round.

mod audit;
mod keys;
mod roles;

pub use audit::{AuditEntry, AuditRetention, AuditScope, Outcome};
pub(crate) use keys::{hex, HmacSecret, KeyTag};
pub use keys::{parse_key, IssuedKey, KeyRecord, NewKey, ParsedKey, Rejection, KEY_PREFIX};
pub use roles::{
    allows, audit_scope, authorize, Caller, Denied, DenyReason, Permission, Role, UnknownName, Who,
};
