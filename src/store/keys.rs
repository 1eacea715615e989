//! API keys in the store: creating, listing, revoking and verifying them.
//!
//! Keys are stored by id, as their [`KeyRecord`] and the HMAC tag of the key (never the key).
//! The HMAC secret is created in the same transaction as the first key and kept in its own
//! table; nothing returns it.
//!
//! Verifying is one read transaction (the secret and the key by id) and one HMAC: 2.1 µs median
//! among 1,000 keys, a malformed key 19 ns (`benches/keys.rs`, 2 shared cores), well under the
//! 50 µs a request can spare. It writes nothing: recording
//! when a key was last used is [`Store::touch_key`]'s, at most once a minute per key.

use std::collections::BTreeMap;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::{decode, read_all, storage, Error, Store, AUTH_SECRET, KEYS};
use crate::auth::{parse_key, HmacSecret, IssuedKey, KeyRecord, KeyTag, NewKey, Rejection, Role};

/// The name of the HMAC secret in [`AUTH_SECRET`].
const HMAC_SECRET: &str = "key-hmac";

/// The name of the secret that signs MCP plan ids (`mcp::confirm`), in [`AUTH_SECRET`]: its own,
/// so that nothing signed with it can pass for a key's tag.
const PLAN_SECRET: &str = "mcp-plan-hmac";

/// How stale a recorded "last used" may be. A commit (and its fsync, a few ms) per request
/// would cost more than the request; a minute is as precise as anyone reads "last used".
pub const LAST_USED_RESOLUTION_MS: u64 = 60_000;

/// The longest key name: it is shown in listings and audit entries.
const MAX_NAME_LEN: usize = 64;

/// Key errors. `Rejected` is the one answer a front end gives a caller (401, with no detail);
/// `Store` is the store's (retry per its doc); the others are a person's mistake.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key rejected: {0}")]
    Rejected(Rejection),
    #[error("no key {id}")]
    NotFound { id: String },
    #[error("an admin key reaches every project (it manages keys); --project is for developer and viewer keys")]
    AdminWithProjects,
    #[error("a key limited to projects needs at least one")]
    NoProjects,
    #[error("a key name is 1 to {MAX_NAME_LEN} printable characters")]
    BadName,
    #[error("cannot draw random bytes for a key")]
    Random(#[source] getrandom::Error),
    #[error(transparent)]
    Store(#[from] Error),
}

impl KeyError {
    /// The precise reason a presented key was rejected (for the audit log, never the caller).
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            KeyError::Rejected(r) => Some(r),
            _ => None,
        }
    }
}

/// A key as stored: its record and its tag.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    #[serde(flatten)]
    record: KeyRecord,
    tag: KeyTag,
}

impl Store {
    /// Creates a key (and, with the first key, the state directory's HMAC secret).
    ///
    /// # Guarantees
    /// The returned [`IssuedKey`] is the only copy of the key's text; the store keeps its tag.
    ///
    /// # Errors
    /// `AdminWithProjects`, `NoProjects`, `BadName` for a request that makes no sense; `Random`
    /// when the OS gives no random bytes; `Store`.
    pub fn create_key(
        &self,
        spec: &NewKey,
        now_ms: u64,
    ) -> Result<(KeyRecord, IssuedKey), KeyError> {
        match (&spec.projects, spec.role) {
            (Some(_), Role::Admin) => return Err(KeyError::AdminWithProjects),
            (Some(ps), _) if ps.is_empty() => return Err(KeyError::NoProjects),
            _ => {}
        }
        if spec.name.as_ref().is_some_and(|n| {
            n.is_empty() || n.chars().count() > MAX_NAME_LEN || n.chars().any(char::is_control)
        }) {
            return Err(KeyError::BadName);
        }
        let txn = self.db.begin_write().map_err(storage)?;
        let out;
        {
            let mut secrets = txn.open_table(AUTH_SECRET).map_err(storage)?;
            let stored = secrets.get(HMAC_SECRET).map_err(storage)?;
            let secret = match stored {
                Some(v) => decode::<HmacSecret>(HMAC_SECRET, v.value())?,
                None => {
                    drop(stored);
                    let s = HmacSecret::generate().map_err(KeyError::Random)?;
                    let bytes = serde_json::to_vec(&s).expect("secrets serialize");
                    secrets
                        .insert(HMAC_SECRET, bytes.as_slice())
                        .map_err(storage)?;
                    s
                }
            };
            let mut keys = txn.open_table(KEYS).map_err(storage)?;
            // 48 random bits: a collision needs millions of keys, but costs only a retry.
            let issued = loop {
                let k = IssuedKey::generate(spec.role).map_err(KeyError::Random)?;
                if keys.get(k.id()).map_err(storage)?.is_none() {
                    break k;
                }
            };
            let record = KeyRecord {
                id: issued.id().to_string(),
                name: spec.name.clone(),
                role: spec.role,
                projects: spec.projects.clone(),
                created_ms: now_ms,
                last_used_ms: None,
                expires_ms: spec.expires_in.map(|d| {
                    now_ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                }),
                revoked_ms: None,
            };
            let stored = StoredKey {
                tag: secret.tag(issued.expose()),
                record,
            };
            put(&mut keys, &stored)?;
            out = (stored.record, issued);
        }
        txn.commit().map_err(storage)?;
        Ok(out)
    }

    /// The secret that signs MCP plan ids, made on first use and kept (a plan id stays good
    /// across a daemon restart). Nothing answers it to anyone.
    ///
    /// # Errors
    /// `Store`; `Random` when the OS gives no random bytes.
    pub(crate) fn plan_secret(&self) -> Result<HmacSecret, KeyError> {
        {
            let txn = self.db.begin_read().map_err(storage)?;
            let secrets = txn.open_table(AUTH_SECRET).map_err(storage)?;
            if let Some(v) = secrets.get(PLAN_SECRET).map_err(storage)? {
                return Ok(decode(PLAN_SECRET, v.value())?);
            }
        }
        let txn = self.db.begin_write().map_err(storage)?;
        let secret = {
            let mut secrets = txn.open_table(AUTH_SECRET).map_err(storage)?;
            let stored = secrets.get(PLAN_SECRET).map_err(storage)?;
            match stored {
                // Made by another request between the two transactions.
                Some(v) => decode::<HmacSecret>(PLAN_SECRET, v.value())?,
                None => {
                    drop(stored);
                    let s = HmacSecret::generate().map_err(KeyError::Random)?;
                    let bytes = serde_json::to_vec(&s).expect("secrets serialize");
                    secrets
                        .insert(PLAN_SECRET, bytes.as_slice())
                        .map_err(storage)?;
                    s
                }
            }
        };
        txn.commit().map_err(storage)?;
        Ok(secret)
    }

    /// Every key, oldest first (for `key list`: records only, never a key or its tag).
    pub fn keys(&self) -> Result<Vec<KeyRecord>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let all: BTreeMap<String, StoredKey> = read_all(&txn, KEYS)?;
        let mut out: Vec<KeyRecord> = all.into_values().map(|s| s.record).collect();
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    pub fn key(&self, id: &str) -> Result<Option<KeyRecord>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(KEYS).map_err(storage)?;
        let v = table.get(id).map_err(storage)?;
        Ok(v.map(|v| decode::<StoredKey>(id, v.value()))
            .transpose()?
            .map(|s| s.record))
    }

    /// Revokes key `id` (it stays listed, as revoked). Revoking it again changes nothing.
    ///
    /// # Errors
    /// `NotFound`; `Store`.
    pub fn revoke_key(&self, id: &str, now_ms: u64) -> Result<KeyRecord, KeyError> {
        self.update_key(id, |rec| {
            (rec.revoked_ms.is_none()).then(|| rec.revoked_ms = Some(now_ms))
        })?
        .ok_or_else(|| KeyError::NotFound { id: id.to_string() })
    }

    /// The record of the key `presented`, if it is a valid key now.
    ///
    /// Reads only. An unknown id costs an HMAC as a known one does, so the time taken does not
    /// tell whether an id exists.
    ///
    /// # Errors
    /// `Rejected` with the precise reason (malformed, unknown, wrong secret, revoked, expired:
    /// all one 401 to the caller); `Store`.
    pub fn verify_key(&self, presented: &str, now_ms: u64) -> Result<KeyRecord, KeyError> {
        let reject = |r| Err(KeyError::Rejected(r));
        let parsed = parse_key(presented).map_err(KeyError::Rejected)?;
        let id = parsed.id.to_string();
        let txn = self.db.begin_read().map_err(storage)?;
        let secrets = txn.open_table(AUTH_SECRET).map_err(storage)?;
        let Some(secret) = secrets.get(HMAC_SECRET).map_err(storage)? else {
            // No key was ever created.
            return reject(Rejection::Unknown { id });
        };
        let secret: HmacSecret = decode(HMAC_SECRET, secret.value())?;
        let keys = txn.open_table(KEYS).map_err(storage)?;
        let Some(stored) = keys.get(parsed.id).map_err(storage)? else {
            std::hint::black_box(secret.tag(presented));
            return reject(Rejection::Unknown { id });
        };
        let stored: StoredKey = decode(&id, stored.value())?;
        if !secret.verify(presented, &stored.tag) {
            return reject(Rejection::WrongSecret { id });
        }
        if stored.record.revoked_ms.is_some() {
            return reject(Rejection::Revoked { id });
        }
        if stored.record.is_expired(now_ms) {
            return reject(Rejection::Expired { id });
        }
        Ok(stored.record)
    }

    /// Records that key `id` was used at `now_ms`, if the recorded time is a minute
    /// ([`LAST_USED_RESOLUTION_MS`]) older or absent; returns whether it wrote.
    ///
    /// Called after each authenticated request: most calls are a read transaction and no
    /// commit, so that a busy key costs one fsync a minute, not one per request.
    pub fn touch_key(&self, id: &str, now_ms: u64) -> Result<bool> {
        let stale = |rec: &KeyRecord| {
            rec.last_used_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= LAST_USED_RESOLUTION_MS)
        };
        if !self.key(id)?.is_some_and(|rec| stale(&rec)) {
            return Ok(false);
        }
        let written = self.update_key(id, |rec| {
            stale(rec).then(|| rec.last_used_ms = Some(now_ms))
        })?;
        Ok(written.is_some())
    }

    /// Applies `change` to key `id` in one write transaction; commits only when `change`
    /// returns `Some` (it changed something). Returns the record, `None` when there is none.
    fn update_key(
        &self,
        id: &str,
        change: impl FnOnce(&mut KeyRecord) -> Option<()>,
    ) -> Result<Option<KeyRecord>> {
        let txn = self.db.begin_write().map_err(storage)?;
        let mut stored = {
            let keys = txn.open_table(KEYS).map_err(storage)?;
            let v = keys.get(id).map_err(storage)?;
            match v.map(|v| decode::<StoredKey>(id, v.value())).transpose()? {
                Some(s) => s,
                None => return Ok(None),
            }
        };
        if change(&mut stored.record).is_none() {
            txn.abort().map_err(storage)?;
            return Ok(Some(stored.record));
        }
        put(&mut txn.open_table(KEYS).map_err(storage)?, &stored)?;
        txn.commit().map_err(storage)?;
        Ok(Some(stored.record))
    }
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn put(keys: &mut redb::Table<&str, &[u8]>, stored: &StoredKey) -> Result<()> {
    let bytes = serde_json::to_vec(stored).expect("keys serialize");
    keys.insert(stored.record.id.as_str(), bytes.as_slice())
        .map_err(storage)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spec(role: Role) -> NewKey {
        NewKey {
            role,
            name: Some("ci-bot".into()),
            projects: None,
            expires_in: None,
        }
    }

    fn rejection(r: Result<KeyRecord, KeyError>) -> Rejection {
        match r {
            Err(KeyError::Rejected(why)) => why,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn a_created_key_verifies_and_carries_its_record() {
        let (_dir, store) = temp_store();
        let mut dev = spec(Role::Developer);
        dev.projects = Some(["shop".to_string()].into());
        let (rec, key) = store.create_key(&dev, 1_000).unwrap();
        assert!(key.expose().starts_with("codeb_developer_"));
        assert_eq!(rec.id, key.id());
        let verified = store.verify_key(key.expose(), 2_000).unwrap();
        assert_eq!(verified, rec);
        assert_eq!(verified.projects, dev.projects);
        assert_eq!(store.keys().unwrap(), vec![rec]);
    }

    #[test]
    fn unknown_ids_and_wrong_secrets_are_rejected_with_their_reason() {
        let (_dir, store) = temp_store();
        let never = IssuedKey::generate(Role::Admin).unwrap();
        assert_eq!(
            rejection(store.verify_key(never.expose(), 0)),
            Rejection::Unknown {
                id: never.id().into()
            },
            "before any key exists"
        );
        let (_, key) = store.create_key(&spec(Role::Viewer), 0).unwrap();
        assert_eq!(
            rejection(store.verify_key(never.expose(), 0)),
            Rejection::Unknown {
                id: never.id().into()
            }
        );
        let text = key.expose();
        let last = if text.ends_with('0') { "1" } else { "0" };
        let wrong = format!("{}{last}", &text[..text.len() - 1]);
        assert_eq!(
            rejection(store.verify_key(&wrong, 0)),
            Rejection::WrongSecret {
                id: key.id().into()
            }
        );
        assert_eq!(
            rejection(store.verify_key("codeb_viewer_nothex", 0)),
            Rejection::Malformed
        );
    }

    #[test]
    fn expired_and_revoked_keys_are_rejected() {
        let (_dir, store) = temp_store();
        let mut short = spec(Role::Viewer);
        short.expires_in = Some(Duration::from_secs(60));
        let (_, key) = store.create_key(&short, 1_000).unwrap();
        assert!(store.verify_key(key.expose(), 60_999).is_ok());
        assert_eq!(
            rejection(store.verify_key(key.expose(), 61_000)),
            Rejection::Expired {
                id: key.id().into()
            }
        );
        let (_, other) = store.create_key(&spec(Role::Admin), 1_000).unwrap();
        let revoked = store.revoke_key(other.id(), 5_000).unwrap();
        assert_eq!(revoked.revoked_ms, Some(5_000));
        assert_eq!(
            store.revoke_key(other.id(), 9_000).unwrap().revoked_ms,
            Some(5_000),
            "revoking again keeps the first time"
        );
        assert_eq!(
            rejection(store.verify_key(other.expose(), 6_000)),
            Rejection::Revoked {
                id: other.id().into()
            }
        );
        assert!(matches!(
            store.revoke_key("000000000000", 0),
            Err(KeyError::NotFound { .. })
        ));
    }

    #[test]
    fn keys_and_their_secret_survive_reopening_the_store() {
        let (dir, store) = temp_store();
        let (rec, key) = store.create_key(&spec(Role::Developer), 0).unwrap();
        let secret_of = |store: &Store| {
            let txn = store.db.begin_read().unwrap();
            let table = txn.open_table(AUTH_SECRET).unwrap();
            let v = table.get(HMAC_SECRET).unwrap().unwrap().value().to_vec();
            v
        };
        let before = secret_of(&store);
        store.create_key(&spec(Role::Viewer), 0).unwrap();
        assert_eq!(secret_of(&store), before, "created once");
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(secret_of(&store), before, "stable across reopening");
        assert_eq!(store.verify_key(key.expose(), 0).unwrap(), rec);
        assert_eq!(store.keys().unwrap().len(), 2);
    }

    #[test]
    fn the_plan_secret_is_made_once_and_survives_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = store.plan_secret().unwrap().sign(&[b"x"]);
        assert_eq!(store.plan_secret().unwrap().sign(&[b"x"]), first);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.plan_secret().unwrap().sign(&[b"x"]), first);
    }

    #[test]
    fn last_use_is_written_at_most_once_a_minute() {
        let (_dir, store) = temp_store();
        let (rec, _) = store.create_key(&spec(Role::Viewer), 0).unwrap();
        assert!(store.touch_key(&rec.id, 1_000).unwrap());
        assert!(!store.touch_key(&rec.id, 60_999).unwrap());
        assert_eq!(
            store.key(&rec.id).unwrap().unwrap().last_used_ms,
            Some(1_000)
        );
        assert!(store.touch_key(&rec.id, 61_000).unwrap());
        assert_eq!(
            store.key(&rec.id).unwrap().unwrap().last_used_ms,
            Some(61_000)
        );
        assert!(!store.touch_key("000000000000", 0).unwrap());
    }

    #[test]
    fn nonsensical_key_requests_are_refused() {
        let (_dir, store) = temp_store();
        let mut admin = spec(Role::Admin);
        admin.projects = Some(["shop".to_string()].into());
        assert!(matches!(
            store.create_key(&admin, 0),
            Err(KeyError::AdminWithProjects)
        ));
        let mut none = spec(Role::Developer);
        none.projects = Some(Default::default());
        assert!(matches!(
            store.create_key(&none, 0),
            Err(KeyError::NoProjects)
        ));
        let mut bad = spec(Role::Viewer);
        bad.name = Some("two\nlines".into());
        assert!(matches!(store.create_key(&bad, 0), Err(KeyError::BadName)));
        assert!(store.keys().unwrap().is_empty());
    }

    #[test]
    fn neither_the_record_nor_the_database_holds_a_key_or_its_secret() {
        let (dir, store) = temp_store();
        let (rec, key) = store.create_key(&spec(Role::Admin), 0).unwrap();
        store.verify_key(key.expose(), 0).unwrap();
        store.touch_key(&rec.id, 0).unwrap();
        let secret = parse_key(key.expose()).unwrap().secret.to_string();
        let json = serde_json::to_string(&rec).unwrap();
        assert!(!json.contains(&secret) && !json.contains("tag"), "{json}");
        drop(store);
        let bytes = std::fs::read(dir.path().join("codeb.redb")).unwrap();
        let found = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(found(rec.id.as_bytes()), "the search does find stored text");
        assert!(!found(secret.as_bytes()));
        assert!(!found(key.expose().as_bytes()));
    }
}
