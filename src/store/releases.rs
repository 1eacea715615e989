//! Each environment's release history ([`crate::model::releases`]), kept beside its record.
//!
//! [`Writer::put_env`](super::Writer::put_env) and [`Writer::delete_env`](super::Writer::delete_env)
//! follow every record write in the same transaction: a write that changes a slot's release or
//! state updates the history (one read and one write of this table's row), any other write does
//! not touch it, and a deleted environment's history goes with its record.
//!
//! Who starts a release is not a record's business: the service layer says who acts on which
//! environments ([`Store::act_as`], held for the claim of a request) and the history reads it
//! when a new release enters a slot. Anything else (`codeb watch`'s loop, tests) is the default
//! actor ([`Store::set_default_actor`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{ReadableTable, TableDefinition};

use super::{decode, storage, Result, Store};
use crate::model::releases::{concerns, Actor, History};
use crate::model::{EnvKey, EnvRecord};

/// Release histories by store key (`project/environment`), as JSON.
pub(super) const RELEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("releases");

/// Who acts on which environment now, and who acts on the others.
#[derive(Debug)]
pub(super) struct Actors {
    by_key: BTreeMap<EnvKey, Actor>,
    default: String,
}

impl Default for Actors {
    fn default() -> Self {
        Actors {
            by_key: BTreeMap::new(),
            default: crate::auth::Caller::internal().label(),
        }
    }
}

/// Gives the environments of [`Store::act_as`] back to whoever acted on them before.
#[must_use = "the actor holds only while the guard lives"]
pub struct ActorGuard {
    store: Arc<Store>,
    before: Vec<(EnvKey, Option<Actor>)>,
}

impl Drop for ActorGuard {
    fn drop(&mut self) {
        let mut actors = self.store.actors();
        for (key, before) in self.before.drain(..).rev() {
            match before {
                Some(a) => actors.by_key.insert(key, a),
                None => actors.by_key.remove(&key),
            };
        }
    }
}

impl Store {
    fn actors(&self) -> std::sync::MutexGuard<'_, Actors> {
        self.actors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Releases that start in `keys` are `actor`'s until the guard drops (a request holds it
    /// for as long as it holds the environments' claim: nobody else writes their records then).
    pub fn act_as(
        self: &Arc<Self>,
        keys: impl IntoIterator<Item = EnvKey>,
        actor: &Actor,
    ) -> ActorGuard {
        let mut actors = self.actors();
        let before = keys
            .into_iter()
            .map(|k| {
                let was = actors.by_key.insert(k.clone(), actor.clone());
                (k, was)
            })
            .collect();
        drop(actors);
        ActorGuard {
            store: self.clone(),
            before,
        }
    }

    /// Who starts releases in environments nobody [`act_as`](Store::act_as) (default: `codeb`).
    pub fn set_default_actor(&self, by: impl Into<String>) {
        self.actors().default = by.into();
    }

    pub(super) fn actor(&self, key: &EnvKey) -> Actor {
        let actors = self.actors();
        actors
            .by_key
            .get(key)
            .cloned()
            .unwrap_or_else(|| Actor::new(actors.default.clone()))
    }

    /// An environment's release history as recorded (empty when it has none).
    pub fn releases(&self, key: &EnvKey) -> Result<History> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(RELEASES).map_err(storage)?;
        let sk = key.store_key();
        let v = table.get(sk.as_str()).map_err(storage)?;
        Ok(v.map(|v| decode(&sk, v.value()))
            .transpose()?
            .unwrap_or_default())
    }
}

/// Follows one record write in `txn` (see the module's documentation): `after` `None` deletes
/// the history.
pub(super) fn follow(
    store: &Store,
    txn: &redb::WriteTransaction,
    key: &EnvKey,
    before: Option<&EnvRecord>,
    after: Option<&EnvRecord>,
) -> Result<()> {
    let sk = key.store_key();
    let mut table = txn.open_table(RELEASES).map_err(storage)?;
    if after.is_none() {
        table.remove(sk.as_str()).map_err(storage)?;
        return Ok(());
    }
    if !concerns(before, after) {
        return Ok(());
    }
    let mut history: History = match table.get(sk.as_str()).map_err(storage)? {
        Some(v) => decode(&sk, v.value())?,
        None => History::default(),
    };
    if history.follow(before, after, &store.actor(key), now_ms()) {
        let bytes = serde_json::to_vec(&history).expect("histories serialize");
        table
            .insert(sk.as_str(), bytes.as_slice())
            .map_err(storage)?;
    }
    Ok(())
}

/// The time of an entry: read here, since a record write carries none (a slot's `since_ms` is
/// not set on every change, and not at all on an emptied slot).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
