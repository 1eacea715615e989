//! Environment variable values in memory, and how a release refers to them without holding them.
//!
//! A value is often a secret. Every type here prints names only (`Debug`), so that a plan, a
//! record, a log line or an error that holds one of them shows no value. What a release keeps is
//! a reference: the stored env version it pins (see `store::secrets`) and the keyed digest of the
//! manifest's inline `env:` ([`InlineEnv`]); the executor turns both into values right before it
//! creates the container.
//!
//! Must not: print, serialize into a record or hash a value without a key.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Variable values: `Debug` shows the names only; serialization is the values' own (it is how
/// they reach the one place that may see them: an admin's `env get`/`export`, the container).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EnvValues(pub BTreeMap<String, String>);

impl fmt::Debug for EnvValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl EnvValues {
    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

/// A text that may hold secrets (a dotenv file, one value): `Debug` says how long it is.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretText(pub String);

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes, not shown>", self.0.len())
    }
}

/// A manifest's inline `env:` as a release carries it.
///
/// - *Bound* (the normal case): its keyed digest (HMAC under a key derived from the env key
///   file, see `store::secrets`) and its names are what records, plans and the release hash hold;
///   the values travel in memory only, from the manifests to the executor, which also keeps them
///   sealed in the store so that a slot can be recreated later.
/// - *Unbound*: values and no digest. Manifests load this way (loading has no key) until
///   `service::env::bind` binds them; a record written by a codeb older than the env store reads
///   this way too (its values were kept in plaintext), and hashes as it did then, so that the
///   running containers are recognised. Such a release is replaced by the next rollout (see
///   docs/security.md).
#[derive(Clone, Default)]
pub struct InlineEnv {
    values: Option<Arc<EnvValues>>,
    names: Vec<String>,
    digest: Option<String>,
}

impl InlineEnv {
    /// Unbound values, as loaded from manifests.
    pub fn unbound(values: BTreeMap<String, String>) -> InlineEnv {
        InlineEnv {
            names: values.keys().cloned().collect(),
            values: Some(Arc::new(EnvValues(values))),
            digest: None,
        }
    }

    /// The same values under their keyed digest.
    pub fn bind(&self, digest: String) -> InlineEnv {
        InlineEnv {
            values: self.values.clone(),
            names: self.names.clone(),
            digest: Some(digest),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The keyed digest, once bound.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The values, where this process has them (loaded manifests, a legacy record); a bound
    /// release read back from the store has none: they are sealed in the store by digest.
    pub fn values(&self) -> Option<&EnvValues> {
        self.values.as_deref()
    }

    /// Needs binding: it has values and no digest.
    pub fn is_unbound(&self) -> bool {
        self.digest.is_none() && !self.names.is_empty()
    }

    /// Feeds the release hash: the digest when bound; for an unbound env, its values as codeb
    /// hashed them before the env store existed (nothing for an empty env), so that an older
    /// record keeps the hash its containers are labelled with.
    pub(super) fn hash_into(&self, h: &mut sha2::Sha256) {
        use sha2::Digest;
        match (&self.digest, &self.values) {
            (Some(d), _) => {
                h.update([9]);
                h.update(d.as_bytes());
            }
            (None, Some(v)) => {
                for (k, v) in &v.0 {
                    h.update(k.as_bytes());
                    h.update([2]);
                    h.update(v.as_bytes());
                    h.update([3]);
                }
            }
            (None, None) => {}
        }
    }
}

impl PartialEq for InlineEnv {
    fn eq(&self, other: &Self) -> bool {
        match (&self.digest, &other.digest) {
            (Some(a), Some(b)) => a == b,
            (None, None) => {
                self.values.as_deref().map(|v| &v.0) == other.values.as_deref().map(|v| &v.0)
                    || (self.names.is_empty() && other.names.is_empty())
            }
            _ => false,
        }
    }
}

impl Eq for InlineEnv {}

impl fmt::Debug for InlineEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InlineEnv")
            .field("names", &self.names)
            .field("digest", &self.digest)
            .finish()
    }
}

/// How a bound inline env is recorded: names and digest.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bound {
    names: Vec<String>,
    digest: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Recorded {
    Bound(Bound),
    /// Written by a codeb older than the env store: the values themselves.
    Legacy(BTreeMap<String, String>),
}

impl Serialize for InlineEnv {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (&self.digest, &self.values) {
            (Some(d), _) => Bound {
                names: self.names.clone(),
                digest: d.clone(),
            }
            .serialize(s),
            // Only a legacy record (or an empty env) gets here: bind runs before anything is
            // recorded (`service::env::bind`).
            (None, Some(v)) => v.0.serialize(s),
            (None, None) => BTreeMap::<String, String>::new().serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for InlineEnv {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Recorded::deserialize(d)? {
            Recorded::Bound(b) => InlineEnv {
                values: None,
                names: b.names,
                digest: Some(b.digest),
            },
            Recorded::Legacy(m) => InlineEnv::unbound(m),
        })
    }
}

/// Where a container's environment comes from: what the executor resolves into values right
/// before it creates the container (see `reconcile::execute`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvSource {
    /// The environment whose stored versions and sealed inline env are read.
    pub key: Option<super::EnvKey>,
    /// The stored env version pinned by the release; its values win over inline ones.
    pub version: Option<u64>,
    pub inline: InlineEnv,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_names_never_values() {
        let v = InlineEnv::unbound(BTreeMap::from([("TOKEN".into(), "s3cr3t-canary".into())]));
        let text = format!(
            "{v:?} {:?} {:?}",
            v.values().unwrap(),
            SecretText("s3cr3t-canary".into())
        );
        assert!(text.contains("TOKEN"), "{text}");
        assert!(!text.contains("s3cr3t-canary"), "{text}");
        let bound = v.bind("abc".into());
        let json = serde_json::to_string(&bound).unwrap();
        assert!(!json.contains("s3cr3t-canary"), "{json}");
        assert_eq!(json, r#"{"names":["TOKEN"],"digest":"abc"}"#);
    }

    #[test]
    fn a_legacy_record_reads_as_unbound_values_and_a_bound_one_as_its_digest() {
        let legacy: InlineEnv = serde_json::from_str(r#"{"A":"1"}"#).unwrap();
        assert!(legacy.is_unbound());
        assert_eq!(legacy.values().unwrap().0["A"], "1");
        let bound: InlineEnv = serde_json::from_str(r#"{"names":["A"],"digest":"d"}"#).unwrap();
        assert_eq!(bound.digest(), Some("d"));
        assert!(bound.values().is_none());
        assert_eq!(bound, legacy.bind("d".into()), "equal by digest");
    }
}
