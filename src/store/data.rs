//! The catalog of what codeb created in each environment's PostgreSQL and Redis: written before
//! it creates anything there (intent), with the digests of the credentials it last set.

use std::collections::BTreeMap;

use super::{decode, read_all, storage, Result, Store, DATA};
use crate::model::data::DataRecord;
use crate::model::EnvKey;

impl Store {
    /// Every environment's record.
    pub fn data_records(&self) -> Result<BTreeMap<EnvKey, DataRecord>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let raw: BTreeMap<String, DataRecord> = read_all(&txn, DATA)?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, r)| {
                let (p, e) = k.split_once('/')?;
                Some((EnvKey::new(p, e), r))
            })
            .collect())
    }

    /// One environment's record.
    pub fn data_record(&self, key: &EnvKey) -> Result<Option<DataRecord>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(DATA).map_err(storage)?;
        let sk = key.store_key();
        let v = table.get(sk.as_str()).map_err(storage)?;
        v.map(|v| decode(&sk, v.value())).transpose()
    }

    /// Sets (or with `None`, or an empty record, removes) one environment's record, in one
    /// transaction.
    pub fn put_data_record(&self, key: &EnvKey, record: Option<&DataRecord>) -> Result<()> {
        let sk = key.store_key();
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(DATA).map_err(storage)?;
            match record.filter(|r| r.database.is_some() || r.cache.is_some()) {
                Some(r) => {
                    let bytes = serde_json::to_vec(r).expect("records serialize");
                    table
                        .insert(sk.as_str(), bytes.as_slice())
                        .map_err(storage)?;
                }
                None => {
                    table.remove(sk.as_str()).map_err(storage)?;
                }
            }
        }
        self.commit_records(txn)?;
        crate::reconcile::fault::data_written();
        Ok(())
    }
}
