//! Journal entries: one line of what codeb was about to do, or what came of it.

use serde::{Deserialize, Serialize};

use crate::model::EnvKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Written before the step runs.
    Intent,
    /// The step succeeded.
    Done,
    /// The step failed; `message` says why.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Assigned by the store.
    #[serde(default)]
    pub seq: u64,
    pub at_ms: u64,
    pub host: String,
    pub key: Option<EnvKey>,
    pub phase: Phase,
    /// The step as the plan prints it (never an env value).
    pub step: String,
    /// For outcomes: the seq of the intent they close.
    pub intent: Option<u64>,
    pub message: Option<String>,
}
