//! Ownership marks: how codeb tells its own objects from foreign ones in Podman, in Caddy and in
//! a zone.
//!
//! Container labels, the route `@id` prefix and the rrset comment account are written on every
//! object codeb creates and read back on every observation; anything without them is foreign and
//! is never changed or deleted. These are the marks themselves and the one predicate that reads
//! them off a container; the DNS comment's content (which environment an rrset belongs to) is in
//! [`super::dns`].
//!
//! Must not: do I/O or know any backend's wire format: adapters apply these marks, they do not
//! define them.

use super::observed::ObservedContainer;
use super::EnvKey;

/// Label keys that mark a container as codeb's. A container without [`LABEL_PROJECT`] is never touched.
pub const LABEL_PROJECT: &str = "codeb.project";
/// The Podman volume whose labels say which codeb owns a host ([`LABEL_OWNER_ID`],
/// [`LABEL_OWNER_NAME`]). A volume: Podman keeps it across restarts, lists it with its labels in
/// one call, reports its creation and removal as events, and it holds no data.
pub const OWNER_VOLUME: &str = "codeb-owner";
pub const LABEL_OWNER_ID: &str = "codeb.owner.id";
pub const LABEL_OWNER_NAME: &str = "codeb.owner.name";
pub const LABEL_ENVIRONMENT: &str = "codeb.environment";
pub const LABEL_SLOT: &str = "codeb.slot";
pub const LABEL_RELEASE: &str = "codeb.release";
/// The slot's host port, on every container: where codeb's kernel rules publish a container that
/// Podman does not, so that port allocation sees it (see [`super::writes::ContainerSpec::publish`]).
pub const LABEL_PORT: &str = "codeb.port";

/// Prefix of every Caddy route `@id` that codeb owns. Routes without it are never touched.
pub const ROUTE_ID_PREFIX: &str = "codeb-";

/// The `account` of the comment that marks an rrset as codeb's. An rrset without a comment of
/// this account is foreign: codeb never changes or deletes it.
pub const DNS_ACCOUNT: &str = "codeb";

/// True when the container carries the ownership labels of this key.
pub fn belongs_to(c: &ObservedContainer, key: &EnvKey) -> bool {
    c.labels.get(LABEL_PROJECT) == Some(&key.project)
        && c.labels.get(LABEL_ENVIRONMENT) == Some(&key.env)
}
