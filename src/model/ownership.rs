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

/// The first two bytes of the MAC address of every container codeb creates (a tenant): `0a` is a
/// locally administered unicast address (bit 1 set, bit 0 clear), so no vendor's card has it, and
/// `cb` is codeb's. codeb's tenant isolation (the table `bridge codeb`) drops frames between a port
/// with such an address and any other port of the bridge. Podman keeps a MAC set at create across
/// restarts (measured on 4.3.1: `podman restart` drew a new IP and kept the MAC; without one set,
/// both changed), so the rules need no change when a container comes back on another address.
/// A container cannot change its MAC or send a frame with another (no `CAP_NET_ADMIN`, no
/// `CAP_NET_RAW`: see [`super::confinement`]).
pub const TENANT_MAC_PREFIX: [u8; 2] = [0x0a, 0xcb];

/// The MAC address codeb gives the container named `name` that runs the release `release` (its
/// hash): [`TENANT_MAC_PREFIX`] and the 32-bit FNV-1a hash of both, written as Podman takes it
/// (`0a:cb:12:34:56:78`). A function of what the plan knows, so that a plan decides it without
/// looking at anything, and the same container recreated gets the same address. The release is
/// in it because a new release starts beside the container it replaces, under the same name
/// (that one renamed aside): both run on the bridge until the switch, and one MAC for two ports
/// made the bridge send one's frames to the other (a health probe timed out in e2e_crash). Two
/// of a host's containers get the same address only if their hashes collide (with 300 containers
/// on a host, a chance of 1 in 100,000): those two then share a MAC on one bridge, which breaks
/// their own networking, not the isolation, as the rules drop every frame between tenants
/// whichever they are.
pub fn tenant_mac(name: &str, release: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for b in name.bytes().chain(*b"/").chain(release.bytes()) {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let [a, b, c, d] = hash.to_be_bytes();
    let [p, q] = TENANT_MAC_PREFIX;
    format!("{p:02x}:{q:02x}:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// True when the container carries the ownership labels of this key.
pub fn belongs_to(c: &ObservedContainer, key: &EnvKey) -> bool {
    c.labels.get(LABEL_PROJECT) == Some(&key.project)
        && c.labels.get(LABEL_ENVIRONMENT) == Some(&key.env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_mac_is_a_locally_administered_unicast_address_with_codebs_prefix_and_the_names_hash(
    ) {
        let mac = tenant_mac("shop-production-blue", "9c6a0a03d93f5105");
        assert_eq!(
            mac,
            tenant_mac("shop-production-blue", "9c6a0a03d93f5105"),
            "a function of the name and the release"
        );
        assert_ne!(mac, tenant_mac("shop-production-green", "9c6a0a03d93f5105"));
        // The release that starts beside it under the same name: another address.
        assert_ne!(mac, tenant_mac("shop-production-blue", "0d9a66d07d971adf"));
        let bytes: Vec<u8> = mac
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        assert_eq!(bytes.len(), 6);
        assert_eq!(bytes[..2], TENANT_MAC_PREFIX);
        assert_eq!(bytes[0] & 0b11, 0b10, "locally administered, unicast");
        // FNV-1a of "a/" is fixed, not the process's random hash: the same on every run.
        assert_eq!(tenant_mac("a", ""), tenant_mac("a", ""));
        assert_eq!(tenant_mac("a", "").len(), 17);
    }
}
