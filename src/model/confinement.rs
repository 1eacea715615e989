//! How a slot's container is confined: its resource limits and privileges, as numbers and names
//! the adapters hand to the runtime.
//!
//! A [`Confinement`] is part of a [`Release`](super::Release): a change of limits is a new
//! release, rolled out blue/green like a new image. Plain data: the manifest's quantities are
//! parsed by `spec`, and only the Podman adapter knows how the runtime spells these.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::spec::resources::{Limits, DEFAULT_MEMORY_BYTES, DEFAULT_MILLICPUS, DEFAULT_PIDS};

/// The limits and privileges of one container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Confinement {
    pub memory_bytes: u64,
    /// Thousandths of a CPU.
    pub millicpus: u32,
    pub pids: u32,
    pub no_new_privileges: bool,
    /// The capabilities kept (without `CAP_`, sorted): every other one is dropped.
    pub capabilities: Vec<String>,
    pub read_only_root_fs: bool,
    /// Runs the app as this user (`uid[:gid]` or a name) instead of the image's.
    pub user: Option<String>,
}

/// codeb's defaults (see `spec::resources`): what a Host that sets nothing gives every container. A release recorded by
/// a codeb that knew no confinement deserializes with these.
impl Default for Confinement {
    fn default() -> Self {
        let mut capabilities: Vec<String> = crate::spec::KEPT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect();
        capabilities.sort();
        Self {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            millicpus: DEFAULT_MILLICPUS,
            pids: DEFAULT_PIDS,
            no_new_privileges: true,
            capabilities,
            read_only_root_fs: false,
            user: None,
        }
    }
}

impl Confinement {
    /// The confinement a Host's `containers` policy gives an environment with these limits.
    pub fn new(policy: &crate::spec::ContainerPolicy, limits: Limits) -> Self {
        Self {
            memory_bytes: limits.memory_bytes,
            millicpus: limits.millicpus,
            pids: limits.pids,
            no_new_privileges: policy.no_new_privileges,
            capabilities: policy.kept_capabilities(),
            read_only_root_fs: policy.read_only_root_fs,
            user: policy.user.clone(),
        }
    }

    /// Feeds the release hash. Nothing for the defaults: a release hashes as it did before
    /// codeb confined containers, so upgrading codeb redeploys no environment whose Host and
    /// Project set no limit (its containers get the defaults at their next release).
    pub(super) fn hash_into(&self, h: &mut Sha256) {
        if self == &Self::default() {
            return;
        }
        h.update([4]);
        h.update(self.memory_bytes.to_be_bytes());
        h.update(self.millicpus.to_be_bytes());
        h.update(self.pids.to_be_bytes());
        h.update([
            u8::from(self.no_new_privileges),
            u8::from(self.read_only_root_fs),
        ]);
        for cap in &self.capabilities {
            h.update(cap.as_bytes());
            h.update([5]);
        }
        if let Some(user) = &self.user {
            h.update([6]);
            h.update(user.as_bytes());
        }
    }
}
