//! What was declared for each environment, and the release overrides set by `deploy`.
//!
//! A `deploy` rolls a new image out to one environment without the manifests at hand (a CI job
//! that built `myapp:sha-abc`), so the store keeps the last declared spec of every environment and
//! the override: the image, the manifests' image it replaces, who set it and when. The effective
//! desired state is the declared one with its overrides laid over ([`crate::model::desired::overlay`]); a
//! manifest that names another image supersedes the override.

use std::collections::BTreeMap;

use super::{decode, read_all, storage, Result, Store, DECLARED, OVERRIDES};
use crate::model::{DesiredEnv, EnvKey, Override};

impl Store {
    /// Records the declared spec of these environments; writes only what changed. Their inline
    /// env is bound first (sealed in the store, its digest recorded): no value is written here.
    ///
    /// # Errors
    /// A store error, or an env key error (binding needs the key).
    pub fn put_declared<'a>(
        &self,
        envs: impl IntoIterator<Item = &'a DesiredEnv>,
    ) -> Result<(), super::secrets::EnvError> {
        let mut bound: Vec<(String, DesiredEnv)> = Vec::new();
        for e in envs {
            let mut e = e.clone();
            if e.release.env.is_unbound() {
                let inline = self.bind_inline(&e.key, &e.release.env, false)?;
                e.release = e.release.clone().with_inline_env(inline);
            }
            bound.push((e.key.store_key(), e));
        }
        Ok(self.put_changed(DECLARED, bound.iter().map(|(k, e)| (k.as_str(), e)))?)
    }

    /// The last declared spec of an environment.
    pub fn declared(&self, key: &EnvKey) -> Result<Option<DesiredEnv>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(DECLARED).map_err(storage)?;
        let sk = key.store_key();
        let v = table.get(sk.as_str()).map_err(storage)?;
        v.map(|v| decode(&sk, v.value())).transpose()
    }

    /// The last declared spec of each of `keys` that has one, read in one transaction (see
    /// [`Store::declared`]).
    pub fn declared_of<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a EnvKey>,
    ) -> Result<BTreeMap<EnvKey, DesiredEnv>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(DECLARED).map_err(storage)?;
        let mut out = BTreeMap::new();
        for key in keys {
            let sk = key.store_key();
            if let Some(v) = table.get(sk.as_str()).map_err(storage)? {
                out.insert(key.clone(), decode(&sk, v.value())?);
            }
        }
        Ok(out)
    }

    /// Every override, by environment.
    pub fn overrides(&self) -> Result<BTreeMap<EnvKey, Override>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let raw: BTreeMap<String, Override> = read_all(&txn, OVERRIDES)?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, o)| {
                let (p, e) = k.split_once('/')?;
                Some((EnvKey::new(p, e), o))
            })
            .collect())
    }

    /// Sets (or with `None` removes) the override of one environment.
    pub fn set_override(&self, key: &EnvKey, over: Option<&Override>) -> Result<()> {
        let sk = key.store_key();
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(OVERRIDES).map_err(storage)?;
            match over {
                Some(o) => {
                    let bytes = serde_json::to_vec(o).expect("overrides serialize");
                    table
                        .insert(sk.as_str(), bytes.as_slice())
                        .map_err(storage)?;
                }
                None => {
                    table.remove(sk.as_str()).map_err(storage)?;
                }
            }
        }
        txn.commit().map_err(storage)
    }

    /// Forgets what was declared and overridden for environments that are gone.
    pub fn forget_declared(&self, keys: &[EnvKey]) -> Result<()> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut declared = txn.open_table(DECLARED).map_err(storage)?;
            let mut overrides = txn.open_table(OVERRIDES).map_err(storage)?;
            for k in keys {
                let sk = k.store_key();
                declared.remove(sk.as_str()).map_err(storage)?;
                overrides.remove(sk.as_str()).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }
}
