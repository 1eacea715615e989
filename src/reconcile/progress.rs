//! Live progress: what an execution reports while it runs, for a person watching it.
//!
//! The executor reports each step when it starts and when it ends (with its duration), and each
//! change of a wait's state (a health check: "connection refused" → "HTTP 404" → passed; a drain:
//! connections still open), into a [`Progress`] sink that its caller gave it. The CLI renders
//! these [`Event`]s on stderr (a spinner on a terminal, one line per event otherwise); through
//! the daemon's socket they travel as lines before the answer (`daemon::socket`). The HTTP API,
//! MCP and the daemon's own loop give no sink, and nothing is reported.
//!
//! Progress is advisory: a sink that is full or whose reader went away drops events, and never
//! slows or stops the execution ([`Progress::emit`]). Only a followed log ([`Progress::send`])
//! waits for its reader, since its lines are the command's output.
//!
//! Must not: carry a secret. Events hold step texts (as the answer prints them), probe results
//! (a status or a connection error, never a body) and application log lines (control characters
//! replaced by the caller).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One thing worth telling while a request runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Event {
    /// A step starts (its text as the outcome lists it).
    StepStarted { step: String },
    /// A step ended after `duration_ms`: done, or failed with `error`.
    StepEnded {
        step: String,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A step waits (a health check, a drain), and what it waits on changed to `state`, `elapsed_ms`
    /// after the wait began. Sent once per change, never per probe.
    Waiting {
        step: String,
        state: String,
        elapsed_ms: u64,
    },
    /// Something the person should know that is no step (the `--timeout` was reached).
    Note { message: String },
    /// A line of a container's log (`codeb logs -f`): untrusted text, control characters replaced.
    Log { line: String },
}

/// Where a request's [`Event`]s go; cloned freely (a `Ctx` holds one). The default goes nowhere.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    tx: Option<mpsc::Sender<Event>>,
}

/// The events a sink may hold before [`Progress::emit`] drops one: a renderer reads them as they
/// come, and a step sends at most a few per second (a wait reports changes only).
pub const CAPACITY: usize = 256;

impl Progress {
    /// A sink that reports nothing (the HTTP API, MCP, the loop).
    pub fn none() -> Self {
        Progress { tx: None }
    }

    /// A sink and the receiver its renderer reads.
    pub fn channel() -> (Progress, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        (Progress { tx: Some(tx) }, rx)
    }

    /// True for a sink made by [`Progress::channel`] (whether or not its reader is still there).
    pub fn is_sink(&self) -> bool {
        self.tx.is_some()
    }

    /// True when someone reads the events: a request that only makes sense streamed (a followed
    /// log) is refused otherwise.
    pub fn streams(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| !tx.is_closed())
    }

    /// Reports `event` if there is room; never waits (progress must not slow an execution).
    pub fn emit(&self, event: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(event);
        }
    }

    /// Sends `event`, waiting for room: for output a reader must not lose (log lines).
    ///
    /// # Errors
    /// `Err(())` when no one reads any more (or no one ever did): the caller stops producing.
    pub async fn send(&self, event: Event) -> Result<(), ()> {
        match &self.tx {
            Some(tx) => tx.send(event).await.map_err(|_| ()),
            None => Err(()),
        }
    }

    /// Resolves once the reader went away (never for a sink without a reader, [`Progress::none`]):
    /// a producer waiting for its next line learns here that no one wants it.
    pub async fn closed(&self) {
        match &self.tx {
            Some(tx) => tx.closed().await,
            None => std::future::pending().await,
        }
    }

    /// Reports that `step` starts.
    pub fn started(&self, step: &str) {
        if self.tx.is_some() {
            self.emit(Event::StepStarted {
                step: step.to_string(),
            });
        }
    }

    /// Reports that `step` ended after `took`, with `error` if it failed.
    pub fn ended(&self, step: &str, took: Duration, error: Option<String>) {
        if self.tx.is_some() {
            self.emit(Event::StepEnded {
                step: step.to_string(),
                duration_ms: millis(took),
                error,
            });
        }
    }

    /// A reporter of one wait of `step`, which emits a state only when it differs from the last.
    pub fn wait<'p>(&'p self, step: &'p str) -> Wait<'p> {
        Wait {
            progress: self,
            step,
            started: Instant::now(),
            last: None,
        }
    }
}

/// One wait's reporter (see [`Progress::wait`]).
pub struct Wait<'p> {
    progress: &'p Progress,
    step: &'p str,
    started: Instant,
    last: Option<String>,
}

impl Wait<'_> {
    /// Reports `state` if it is not the last one reported.
    pub fn state(&mut self, state: &str) {
        if self.progress.tx.is_none() || self.last.as_deref() == Some(state) {
            return;
        }
        self.last = Some(state.to_string());
        self.progress.emit(Event::Waiting {
            step: self.step.to_string(),
            state: state.to_string(),
            elapsed_ms: millis(self.started.elapsed()),
        });
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What a caller gives an execution besides the plan: where its progress goes, and the instant
/// after which it starts no step and stops waiting (`apply --timeout`).
///
/// # Guarantees
/// Past the deadline, the executor starts no further step, and a health wait or a drain in
/// progress ends at once: the health wait as a failure that leaves its slot deploying (the next
/// apply resumes the check; the release is not marked failed), the drain as done. A step already
/// acting (a Podman or Caddy call) finishes and is journaled, so a stopped run leaves what a run
/// that ended there would leave, and the journal shows where it stopped.
#[derive(Debug, Clone, Default)]
pub struct Control {
    pub progress: Progress,
    pub deadline: Option<Instant>,
}

impl Control {
    /// True once the deadline has passed.
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_reports_each_state_once_until_it_changes() {
        let (progress, mut rx) = Progress::channel();
        let mut wait = progress.wait("app/production: await blue healthy");
        for state in [
            "connection refused",
            "connection refused",
            "HTTP 404",
            "HTTP 404",
            "passed",
        ] {
            wait.state(state);
        }
        drop(progress);
        let mut states = Vec::new();
        while let Some(e) = rx.recv().await {
            if let Event::Waiting { state, .. } = e {
                states.push(state);
            }
        }
        assert_eq!(states, ["connection refused", "HTTP 404", "passed"]);
    }

    #[tokio::test]
    async fn a_full_sink_drops_progress_and_never_blocks() {
        let (progress, mut rx) = Progress::channel();
        for i in 0..CAPACITY + 10 {
            progress.started(&format!("step {i}"));
        }
        drop(progress);
        let mut n = 0;
        while rx.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(n, CAPACITY);
        assert!(!Progress::none().streams());
        assert!(Progress::none()
            .send(Event::Log { line: "x".into() })
            .await
            .is_err());
    }

    #[test]
    fn events_read_as_tagged_json() {
        let e = Event::StepEnded {
            step: "s".into(),
            duration_ms: 12,
            error: None,
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text, r#"{"type":"step-ended","step":"s","duration_ms":12}"#);
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e);
    }
}
