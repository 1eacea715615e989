//! Fault injection for the crash tests: with `CODEB_FAULT_KILL_AFTER=N`, the process sends itself
//! SIGKILL right after its N-th journal commit, so a test can stop a rollout at every step boundary
//! (after an intent is committed and before the action; an outcome is committed with the next
//! intent, or at the end). Unset, it costs one relaxed atomic increment per commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static WRITES: AtomicU64 = AtomicU64::new(0);

fn limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("CODEB_FAULT_KILL_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
    })
}

#[cfg(test)]
thread_local! {
    static CRASH_AFTER: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// For in-process crash tests against the fake backends (whose state a real SIGKILL would take
/// with it): the `n`-th journal commit from now on this thread panics right after it committed,
/// so that the executor stops exactly where a `kill -9` would have stopped it (the store holds
/// what was committed, the fake hosts what was done). `None` turns it off.
#[cfg(test)]
pub fn crash_after(n: Option<u64>) {
    CRASH_AFTER.set(n);
}

/// Called after every journal commit.
pub fn journal_written() {
    #[cfg(test)]
    if let Some(n) = CRASH_AFTER.get() {
        if n <= 1 {
            CRASH_AFTER.set(None);
            panic!("fault: crash right after a journal commit");
        }
        CRASH_AFTER.set(Some(n - 1));
    }
    let n = WRITES.fetch_add(1, Ordering::Relaxed) + 1;
    if limit() == Some(n) {
        // A real SIGKILL (not abort or exit): no destructor, no flush, exactly like `kill -9`.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        loop {
            std::thread::park();
        }
    }
}

/// Called by the env store right before it commits a new env version: with
/// `CODEB_FAULT_KILL_BEFORE_ENV_COMMIT=1` the process is killed there, so a test sees that an
/// uncommitted version leaves the store as it was.
pub fn before_env_commit() {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("CODEB_FAULT_KILL_BEFORE_ENV_COMMIT").is_some()) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        loop {
            std::thread::park();
        }
    }
}

/// Called after every commit of an env version or of the data catalog (credentials and what codeb
/// created in PostgreSQL and Redis): with `CODEB_FAULT_KILL_AFTER_DATA=N` the process is killed
/// right after the N-th, so a test can stop provisioning and rotations at each of their writes.
pub fn data_written() {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    let limit = *LIMIT.get_or_init(|| {
        std::env::var("CODEB_FAULT_KILL_AFTER_DATA")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    let n = WRITES.fetch_add(1, Ordering::Relaxed) + 1;
    if limit == Some(n) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        loop {
            std::thread::park();
        }
    }
}
