//! Limits on manifest input, so hostile or broken files are refused quickly and in bounded
//! memory: sizes, YAML nesting, events, aliases, the number of files, directory entries,
//! documents and errors; and the largest durations a manifest may set.
//!
//! A real manifest set is a few KiB: a Project with 20 environments of 50 variables each is about
//! 5,000 YAML events and 7 levels deep; every limit here is ten times that or more. serde-saphyr
//! reads about one event per microsecond (release build) and each document is read twice, so a
//! document at the event limit costs about 0.1 s. Measured by `tests/spec_hostile.rs` (release;
//! debug builds are about 10 times slower): an alias bomb is refused in 20 ms, 10,000-deep
//! nesting in 0.3 ms, a 5 MiB file in 0.1 ms (by its size, unread).

use std::time::Duration;

use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{Budget, Options};

/// A file larger than this is refused before it is read (`stat`), or as soon as this many bytes
/// were read from a pipe or stdin.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// All inputs of one load together.
pub const MAX_TOTAL_BYTES: u64 = 32 * 1024 * 1024;
/// Documents in one file.
pub const MAX_DOCUMENTS_PER_FILE: usize = 1_000;
/// Manifest files (or sources a client sent) in one load. A file per Project for a host full of
/// projects is a few hundred; without a bound, a directory of many small files (or a request of
/// many empty sources, which the byte limits do not count) costs an open and a parse each.
pub const MAX_FILES: usize = 1_000;
/// Documents in all inputs of one load together: each becomes a typed spec and (when an origin
/// is asked for) a node tree kept until validation ends, so the per-file limit times [`MAX_FILES`] (a million) is too many. A
/// thousand Projects with their Hosts and Zones is about 1,000 documents.
pub const MAX_DOCUMENTS: usize = 10_000;
/// Directory entries examined while looking for manifests below the directories given (every
/// entry counts, manifest or not). A manifest directory holds tens of files; `-f .` in a
/// checkout with a build directory holds hundreds of thousands, and walking them is slow and not
/// meant.
pub const MAX_DIRECTORY_ENTRIES: usize = 10_000;
/// The longest health check timeout. codeb waits this long for a new slot before it is `failed`,
/// and the environment is held (claimed from the loop, the store in use for a CLI apply) while
/// it waits; a new slot that needs more than an hour to answer is broken.
pub const MAX_HEALTH_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest grace period: how long the previous slot is kept for a rollback. Longer keeps a
/// container and a port pair for no purpose; a month is more than any rollback window.
pub const MAX_GRACE_PERIOD: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long an app is given between its stop signal (SIGTERM) and SIGKILL when no `stopTimeout`
/// is set: Docker's and Podman's default, so an app written for them drains within it.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `stopTimeout`. Every removal (a retire, a replaced release, `delete`) waits up to
/// this long for the app, and holds its environment meanwhile; an app that needs more than five
/// minutes to drain is better drained by its own endpoint before the delete.
pub const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(300);
/// Problems kept per document (unknown top-level keys and the like); the rest are dropped.
pub const MAX_PROBLEMS_PER_DOCUMENT: usize = 20;
/// Errors reported; loading stops once this many were found.
pub const MAX_ERRORS: usize = 200;
/// Nesting of mappings and sequences (a manifest needs 7).
pub const MAX_DEPTH: usize = 32;
/// YAML events (scalars, collection starts and ends) per document. serde-saphyr reads about one
/// event per microsecond (release build), and each document is read twice.
pub const MAX_EVENTS: usize = 50_000;
/// Nodes (scalars and collections) per document.
pub const MAX_NODES: usize = 20_000;
/// Aliases (`*name`) and anchors (`&name`) per document.
pub const MAX_ALIASES: usize = 256;
pub const MAX_ANCHORS: usize = 256;
/// Events produced by expanding aliases, per document: this stops the "billion laughs".
pub const MAX_REPLAYED_EVENTS: usize = 20_000;
/// Bytes retained for anchored content. With [`MAX_ALIASES`] it bounds the text aliases can
/// copy into memory to 16 MiB.
pub const MAX_ANCHORED_BYTES: usize = 64 * 1024;

/// The serde-saphyr options every manifest is read with.
pub(crate) fn options() -> Options {
    let mut budget = Budget::default();
    budget.max_reader_input_bytes = Some(MAX_FILE_BYTES as usize);
    budget.max_depth = MAX_DEPTH;
    budget.flow_nesting_limit = MAX_DEPTH;
    budget.max_events = MAX_EVENTS;
    budget.max_nodes = MAX_NODES;
    budget.max_aliases = MAX_ALIASES;
    budget.max_anchors = MAX_ANCHORS;
    budget.max_recorded_anchor_bytes = MAX_ANCHORED_BYTES;
    budget.max_recorded_anchor_events = MAX_REPLAYED_EVENTS;
    budget.max_total_scalar_bytes = 2 * MAX_FILE_BYTES as usize;
    budget.max_documents = MAX_DOCUMENTS_PER_FILE;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = MAX_REPLAYED_EVENTS;
    options.alias_limits.max_replay_stack_depth = MAX_DEPTH;
    // Our messages are built from the plain error; a snippet could show a secret.
    options.with_snippet = false;
    options
}

/// What was exceeded, in words, with the limit.
pub(crate) fn describe_breach(breach: &BudgetBreach) -> String {
    let what = match breach {
        BudgetBreach::Events { .. } => {
            format!("more than {MAX_EVENTS} YAML events in one document")
        }
        BudgetBreach::Aliases { .. } => format!("more than {MAX_ALIASES} aliases in one document"),
        BudgetBreach::Anchors { .. } => format!("more than {MAX_ANCHORS} anchors in one document"),
        BudgetBreach::Depth { .. } => format!("nested deeper than {MAX_DEPTH} levels"),
        BudgetBreach::Nodes { .. } => format!("more than {MAX_NODES} YAML nodes in one document"),
        BudgetBreach::Documents { .. } => format!("more than {MAX_DOCUMENTS_PER_FILE} documents"),
        BudgetBreach::ScalarBytes { .. } => "too much text in one document".to_string(),
        BudgetBreach::InputBytes { .. } => format!("larger than {} MiB", MAX_FILE_BYTES >> 20),
        BudgetBreach::AliasAnchorRatio { .. } => {
            "too many aliases for the anchors defined".to_string()
        }
        BudgetBreach::RecordedAnchorEvents { .. } => format!(
            "anchors that expand to more than {MAX_REPLAYED_EVENTS} YAML events (an alias bomb?)"
        ),
        BudgetBreach::RecordedAnchorBytes { .. } => {
            format!(
                "anchored content larger than {} KiB",
                MAX_ANCHORED_BYTES >> 10
            )
        }
        other => format!("a YAML limit exceeded ({other:?})"),
    };
    format!("input refused: {what}; manifests are expected to be small")
}
