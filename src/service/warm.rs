//! Warm observations: what the last switch of an environment read from Podman and Caddy, kept by
//! the daemon so that the next promote or rollback reads only the kernel's rules (0.1-0.5 ms here)
//! instead of Podman's list and Caddy's config (2.5-3.5 ms and 1-3 ms).
//!
//! An observation is reused only while it is still true as far as codeb can know:
//! - the host's container event stream stayed open and delivered no event since it was taken
//!   ([`crate::reconcile::controller::HostEvents`]): any container start, stop, death, creation or
//!   removal on the host makes the next switch observe afresh;
//! - the journal holds no step of the environment, nor a host-wide step of its host, since then
//!   (a reconcile, deploy, delete, or any other codeb process on the store, changed something);
//! - it is younger than [`MAX_AGE`] (Caddy sends no events: a route changed by hand is seen by the
//!   next fresh observation at the latest);
//! - and the switch that took it changed nothing but the records and the kernel's rules.
//!
//! A switch is still health-gated on a warm observation: it probes the address it moves traffic
//! to, so a container that died an instant ago (Podman reports events ~250 ms late) is not given
//! traffic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::EnvKey;
use crate::reconcile::HostParts;
use crate::store::Store;

/// How long an observation may be reused at most.
pub const MAX_AGE: Duration = Duration::from_secs(30);

/// The kept observations, by environment.
#[derive(Default)]
pub struct Warm(Mutex<HashMap<EnvKey, Entry>>);

#[derive(Clone)]
struct Entry {
    host: String,
    /// When the parts were read from Podman and Caddy.
    at: Instant,
    /// The host's event epoch read before they were.
    epoch: u64,
    /// The journal's last seq after the switch that kept them.
    seq: u64,
    parts: HostParts,
}

impl Warm {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<EnvKey, Entry>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The parts kept for `key` on `host`, with when they were read, if they are still true
    /// at `epoch` (`None`: the host's event stream is not open) and against `store`'s journal.
    pub fn get(
        &self,
        key: &EnvKey,
        host: &str,
        epoch: Option<u64>,
        store: &Store,
    ) -> crate::store::Result<Option<(HostParts, Instant)>> {
        let Some(entry) = self.entries().remove(key) else {
            return Ok(None);
        };
        if Some(entry.epoch) != epoch || entry.host != host || entry.at.elapsed() > MAX_AGE {
            return Ok(None);
        }
        let changed = store
            .journaled_since(entry.seq)?
            .iter()
            .any(|e| e.host == host && e.key.as_ref().is_none_or(|k| k == key));
        if changed {
            return Ok(None);
        }
        Ok(Some((entry.parts, entry.at)))
    }

    /// Keeps `parts` of `key` on `host`, read at `at` with the host at `epoch`; `seq` is the
    /// journal's last seq now.
    pub fn put(
        &self,
        key: EnvKey,
        host: &str,
        at: Instant,
        epoch: u64,
        seq: u64,
        parts: HostParts,
    ) {
        let entry = Entry {
            host: host.to_string(),
            at,
            epoch,
            seq,
            parts,
        };
        self.entries().insert(key, entry);
    }
}
