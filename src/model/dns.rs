//! DNS in the domain model: the Zones codeb knows, which one holds a name, and the mark that says
//! an rrset is codeb's and which environment it belongs to.
//!
//! Plain data and pure functions only: no PowerDNS wire types, no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::EnvKey;

/// A Zone as codeb needs it to act, recorded so that `delete` can remove records without manifests.
///
/// Holds the NAME of the environment variable with the API key, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneRef {
    /// The domain, without a trailing dot (`codeb.kr`).
    pub name: String,
    /// `None`: a domain whose records codeb does not manage.
    pub powerdns: Option<PowerDnsRef>,
    /// The TTL of codeb's records.
    pub ttl: u32,
}

/// Where a managed Zone lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerDnsRef {
    pub api: String,
    pub server_id: String,
    pub api_key_env: String,
}

impl ZoneRef {
    pub fn is_managed(&self) -> bool {
        self.powerdns.is_some()
    }
}

/// The start of the comment codeb puts on each rrset it writes; the rest is the owner `project/env`.
pub const OWNER_PREFIX: &str = "managed by codeb: ";

/// The comment content that marks an rrset as `key`'s.
pub fn owner_mark(key: &EnvKey) -> String {
    format!("{OWNER_PREFIX}{key}")
}

/// The environment an ownership comment names, when it is one codeb wrote.
pub fn parse_owner(mark: &str) -> Option<EnvKey> {
    owner_of(mark).map(|(project, env)| EnvKey::new(project, env))
}

/// [`parse_owner`] without allocating: `(project, environment)`.
pub fn owner_of(mark: &str) -> Option<(&str, &str)> {
    let (project, env) = mark.strip_prefix(OWNER_PREFIX)?.split_once('/')?;
    let valid = |s: &str| !s.is_empty() && !s.contains(['/', ' ']);
    (valid(project) && valid(env)).then_some((project, env))
}

/// True when `name` is `zone` or a name under it (both without trailing dots).
pub fn in_zone(name: &str, zone: &str) -> bool {
    name == zone
        || name
            .strip_suffix(zone)
            .is_some_and(|head| head.ends_with('.'))
}

/// The most specific Zone holding `name`: with Zones `codeb.kr` and `dev.codeb.kr` declared,
/// `x.dev.codeb.kr` is in the second (a record in the parent would be hidden by the delegation).
pub fn zone_of<'a>(name: &str, zones: &'a BTreeMap<String, ZoneRef>) -> Option<&'a ZoneRef> {
    let mut rest = name;
    loop {
        if let Some(z) = zones.get(rest) {
            return Some(z);
        }
        rest = rest.split_once('.')?.1;
    }
}

/// The canonical form PowerDNS's API wants (and answers with): a trailing dot.
pub fn canonical(name: &str) -> String {
    format!("{name}.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> (String, ZoneRef) {
        (
            name.to_string(),
            ZoneRef {
                name: name.to_string(),
                powerdns: None,
                ttl: 300,
            },
        )
    }

    #[test]
    fn the_most_specific_zone_holds_a_name() {
        let zones = BTreeMap::from([zone("codeb.kr"), zone("dev.codeb.kr")]);
        let of = |n| zone_of(n, &zones).map(|z| z.name.as_str());
        assert_eq!(of("a.codeb.kr"), Some("codeb.kr"));
        assert_eq!(of("blue.a.dev.codeb.kr"), Some("dev.codeb.kr"));
        assert_eq!(of("codeb.kr"), Some("codeb.kr"));
        assert_eq!(of("xcodeb.kr"), None);
        assert_eq!(of("example.com"), None);
    }

    #[test]
    fn in_zone_needs_a_label_boundary() {
        assert!(in_zone("a.codeb.kr", "codeb.kr"));
        assert!(in_zone("codeb.kr", "codeb.kr"));
        assert!(!in_zone("acodeb.kr", "codeb.kr"));
    }

    #[test]
    fn owner_marks_round_trip_and_foreign_text_is_no_owner() {
        let key = EnvKey::new("hello", "production");
        assert_eq!(owner_mark(&key), "managed by codeb: hello/production");
        assert_eq!(parse_owner(&owner_mark(&key)), Some(key));
        assert_eq!(parse_owner("managed by codeb: nokey"), None);
        assert_eq!(parse_owner("set by hand"), None);
        assert_eq!(parse_owner("managed by codeb: a/b/c"), None);
    }
}
