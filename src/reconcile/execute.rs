//! The executor: carries out a plan's steps in order, journaling intent before and outcome after.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::future::join_all;

use super::progress::Control;
use super::{now_ms, Backends, Error, HostBackends, Prober, Result};
use crate::backend::{Dns, Kernel, Proxy, Runtime};
use crate::model::{EnvKey, SlotRecord, SlotState};
use crate::plan::{self, Action, Drain, Plan, Step, SERVER_NAME};
use crate::store::{JournalEntry, Phase, Store};

/// How often a deploying slot is probed: every 10 ms during its first two seconds (Podman takes
/// 145-416 ms from create to first answer here, and every millisecond between the answer and the
/// probe that sees it is deploy time), every 100 ms after (a slow starter is not worth a busy loop).
/// A probe is one GET on loopback.
fn probe_interval(since_start: Duration) -> Duration {
    if since_start < Duration::from_secs(2) {
        Duration::from_millis(10)
    } else {
        Duration::from_millis(100)
    }
}
/// How often a failing health check asks whether its host still answers (one Podman `_ping`).
const HOST_CHECK: Duration = Duration::from_secs(1);
/// Lines of a failed slot's log kept for `describe`.
const LOG_TAIL: usize = 20;
/// How often a draining slot's open connections are counted: reading conntrack is cheap, and a
/// request that ends is noticed within this delay.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// A step that failed.
#[derive(Debug)]
pub struct StepFailure {
    pub step: String,
    pub key: Option<EnvKey>,
    pub error: Error,
}

/// What an execution did.
#[derive(Debug, Default)]
pub struct Report {
    pub executed: Vec<String>,
    pub failures: Vec<StepFailure>,
    pub skipped: usize,
}

/// Executes `plan` step by step.
///
/// # Guarantees
/// - Each step's intent is committed to the journal before the step acts, and its outcome after
///   (see [`Journal`] for how they share commits).
/// - A step of a key whose earlier step failed is skipped; other keys carry on.
///
/// # Errors
/// Only store failures abort the whole execution; backend and health failures are in the report.
pub async fn execute<R: Runtime, P: Proxy, K: Kernel, D: Dns, H: Prober>(
    plan: &Plan,
    store: &Store,
    backends: &Backends<R, P, K, D>,
    prober: &H,
) -> Result<Report> {
    execute_with(plan, store, backends, prober, &Control::default(), &|| {
        false
    })
    .await
}

/// As [`execute`], but starts no further step once `stop` returns true (the daemon is shutting
/// down): the step in flight finishes and is journaled, the rest count as skipped.
pub async fn execute_until<R: Runtime, P: Proxy, K: Kernel, D: Dns, H: Prober>(
    plan: &Plan,
    store: &Store,
    backends: &Backends<R, P, K, D>,
    prober: &H,
    stop: &(dyn Fn() -> bool + Send + Sync),
) -> Result<Report> {
    execute_with(plan, store, backends, prober, &Control::default(), stop).await
}

/// As [`execute_until`], reporting each step's start and end and each wait's state changes to
/// `control.progress`, and starting no step (ending a health wait or a drain at once) once
/// `control.deadline` has passed (see [`Control`]).
pub async fn execute_with<R: Runtime, P: Proxy, K: Kernel, D: Dns, H: Prober>(
    plan: &Plan,
    store: &Store,
    backends: &Backends<R, P, K, D>,
    prober: &H,
    control: &Control,
    stop: &(dyn Fn() -> bool + Send + Sync),
) -> Result<Report> {
    let (zones, hosts) = lanes(plan);
    // The zones' steps first (the planner puts them first; they are one write per zone): a
    // `Forget` on a host waits for the zone write that deletes its records.
    let (mut report, dns_left) = execute_lane(
        &zones,
        store,
        backends,
        prober,
        control,
        stop,
        BTreeSet::new(),
    )
    .await?;
    let runs = join_all(hosts.iter().map(|lane| {
        execute_lane(
            lane,
            store,
            backends,
            prober,
            control,
            stop,
            dns_left.clone(),
        )
    }))
    .await;
    let mut error = None;
    for run in runs {
        match run {
            Ok((r, _)) => {
                report.executed.extend(r.executed);
                report.failures.extend(r.failures);
                report.skipped += r.skipped;
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// The plan's steps as lanes that may run at once: the zones' steps (one lane, run first), then
/// one lane per host, in the plan's order within each. Hosts that share an environment (a
/// migration has steps on its source and its target) share a lane, so a failed step still skips
/// the rest of its environment's steps whatever host they act on.
fn lanes(plan: &Plan) -> (Plan, Vec<Plan>) {
    let mut zones = Plan::default();
    // Union-find of host names through the keys whose steps act on several hosts.
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    fn root<'a>(parent: &BTreeMap<&'a str, &'a str>, mut h: &'a str) -> &'a str {
        while let Some(&p) = parent.get(h).filter(|p| **p != h) {
            h = p;
        }
        h
    }
    let mut key_host: BTreeMap<&EnvKey, &str> = BTreeMap::new();
    for step in plan.steps.iter().filter(|s| !s.host.is_empty()) {
        parent
            .entry(step.host.as_str())
            .or_insert(step.host.as_str());
        if let Some(k) = &step.key {
            let first = *key_host.entry(k).or_insert(step.host.as_str());
            let (a, b) = (root(&parent, first), root(&parent, &step.host));
            if a != b {
                parent.insert(a.max(b), a.min(b));
            }
        }
    }
    let mut hosts: BTreeMap<&str, Plan> = BTreeMap::new();
    for step in &plan.steps {
        if step.host.is_empty() {
            zones.steps.push(step.clone());
        } else {
            hosts
                .entry(root(&parent, &step.host))
                .or_default()
                .steps
                .push(step.clone());
        }
    }
    (zones, hosts.into_values().collect())
}

/// One lane of [`execute_with`]: its steps in order, each key's steps skipped after one of them
/// failed. `dns_left` are the environments whose records a failed zone write was to delete;
/// returned with this lane's additions.
async fn execute_lane<R: Runtime, P: Proxy, K: Kernel, D: Dns, H: Prober>(
    plan: &Plan,
    store: &Store,
    backends: &Backends<R, P, K, D>,
    prober: &H,
    control: &Control,
    stop: &(dyn Fn() -> bool + Send + Sync),
    mut dns_left: BTreeSet<EnvKey>,
) -> Result<(Report, BTreeSet<EnvKey>)> {
    let mut report = Report::default();
    let mut failed: BTreeSet<EnvKey> = BTreeSet::new();
    // The generation each key's record is expected at: the plan's, then whatever our writes made it.
    let mut gens: BTreeMap<EnvKey, Option<u64>> = BTreeMap::new();
    // Environments whose DNS records a failed zone write was to delete: their store record is kept
    // (their `Forget` skipped), so that a later delete or prune still finds those records.
    let mut journal = Journal::new(store);
    for (i, step) in plan.steps.iter().enumerate() {
        // A switch whose rule was written by the step before this one: its records now.
        journal.settle(i, &mut gens)?;
        if stop() || control.expired() || blocked(step, &failed, &dns_left) {
            journal.skip(plan, i);
            report.skipped += 1;
            continue;
        }
        let text = step.to_string();
        let next = plan
            .steps
            .get(i + 1)
            .filter(|n| !blocked(n, &failed, &dns_left))
            .map(|n| (i + 1, n));
        let started = tokio::time::Instant::now();
        control.progress.started(&text);
        let result = if let Some(rule) = next.filter(|(_, n)| moves_traffic(step, n)) {
            run_switch(
                step,
                &text,
                i,
                rule,
                &mut journal,
                prober,
                agent(backends, step),
            )
            .await
        } else if records_only(&step.action) {
            let probe = (prober, agent(backends, step));
            run_records(step, &text, i, next, &mut journal, probe, &mut gens).await
        } else {
            let intent = journal.intent(i, step, &text)?;
            // Outside the step's backend time: a drain waits on connections (up to `DRAIN_MS`),
            // not on a backend, and would put every deploy in the histogram's top bucket.
            let result = match drain_owed(step, &text, backends, control).await {
                // Past the deadline: the step does not act (its slot's requests may still run).
                Err(stopped) => Err(stopped),
                Ok(()) => {
                    let started = tokio::time::Instant::now();
                    let result =
                        run(step, &text, store, backends, prober, control, &mut gens).await;
                    count(&step.action, started.elapsed(), &result);
                    result
                }
            };
            journal.outcome(step, &text, intent, &result);
            if result.is_ok() {
                journal.rule_written(i);
            }
            result
        };
        if records_only(&step.action) {
            count(&step.action, started.elapsed(), &result);
        }
        control.progress.ended(
            &text,
            started.elapsed(),
            result
                .as_ref()
                .err()
                .map(|e| crate::backend::error_chain(e)),
        );
        match result {
            Ok(()) => {
                tracing::info!(step = %text, "done");
                report.executed.push(text);
            }
            Err(Error::Store(e)) if !matches!(e, crate::store::Error::Conflict { .. }) => {
                return Err(Error::Store(e));
            }
            Err(error) => {
                if matches!(error, Error::Stopped { .. }) {
                    // Asked for (`--timeout`): what was left is in the answer, not a failure to log.
                    tracing::info!(step = %text, error = %error, "stopped");
                } else {
                    tracing::warn!(step = %text, error = %error, "failed");
                }
                if let Some(k) = &step.key {
                    failed.insert(k.clone());
                }
                // A switch whose rule failed did not happen: its records stay (see `settle`).
                if let Some(d) = journal.deferred.as_ref().filter(|d| d.after == i) {
                    report.executed.retain(|t| *t != d.text);
                }
                dns_left.extend(deleted_owners(&step.action));
                report.failures.push(StepFailure {
                    step: text,
                    key: step.key.clone(),
                    error,
                });
            }
        }
    }
    journal.settle(plan.steps.len(), &mut gens)?;
    journal.flush()?;
    Ok((report, dns_left))
}

/// The agent of the step's host, where its probes are made (a remote host), or `None`.
fn agent<'a, R, P, K, D>(
    backends: &'a Backends<R, P, K, D>,
    step: &Step,
) -> Option<&'a super::probe::Agent> {
    backends
        .hosts
        .get(&step.host)
        .and_then(|b| b.agent.as_ref())
}

/// Whether `next` is the kernel rule that moves `step`'s switch's traffic: the pair
/// [`run_switch`] runs, with the switch's records written after the rule.
fn moves_traffic(step: &Step, next: &Step) -> bool {
    matches!(step.action, Action::Switch { .. })
        && matches!(next.action, Action::SetService(_))
        && next.key == step.key
        && next.host == step.host
}

/// A switch whose traffic moves with the kernel rule of the next step (`rule`): one commit of both
/// intents, made while the health probe started ahead is still out (see [`super::Ahead`]), then the
/// probe's answer; the rule is written by the next step at once, and the switch's records and
/// outcome are committed after it ([`Journal::settle`]). So a promote's kernel write waits for
/// the probe or the commit, whichever is later, instead of the probe and then the commit.
///
/// A kill between the rule and the records leaves both steps interrupted, the record naming the
/// slot that served before and the rule leading to the probed one; the next reconcile re-plans
/// from that, and writes the rule back to the recorded slot: never traffic to a slot no probe
/// passed, never a record claiming a switch no rule made.
async fn run_switch<H: Prober>(
    step: &Step,
    text: &str,
    i: usize,
    (j, rule): (usize, &Step),
    journal: &mut Journal<'_>,
    prober: &H,
    agent: Option<&super::probe::Agent>,
) -> Result<()> {
    let Action::Switch { to, url, .. } = &step.action else {
        unreachable!("run_switch runs switches")
    };
    let begun = std::time::Instant::now();
    let mut w = journal.begin()?;
    tracing::debug!(
        elapsed_ms = begun.elapsed().as_secs_f64() * 1000.0,
        "switch began its transaction"
    );
    let intent = match journal.take_ahead(i) {
        Some(seq) => seq,
        None => w.journal(entry(step, Phase::Intent, text, None, None))?,
    };
    let rule_intent = w.journal(entry(rule, Phase::Intent, &rule.to_string(), None, None))?;
    let started = std::time::Instant::now();
    journal.commit(w)?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "switch intents committed"
    );
    journal.ahead = Some((j, rule_intent));
    if let Err(error) = gate(prober, agent, *to, url).await {
        let result = Err(error);
        journal.outcome(step, text, intent, &result);
        return result;
    }
    journal.deferred = Some(Deferred {
        after: j,
        step: step.clone(),
        text: text.to_string(),
        intent,
        rule_written: false,
    });
    Ok(())
}

/// Whether `step` is skipped: an earlier step of its key failed, or it forgets an environment
/// whose DNS records a failed zone write was to delete.
fn blocked(step: &Step, failed: &BTreeSet<EnvKey>, dns_left: &BTreeSet<EnvKey>) -> bool {
    let key = step.key.as_ref();
    key.is_some_and(|k| failed.contains(k))
        || (matches!(step.action, Action::Forget) && key.is_some_and(|k| dns_left.contains(k)))
}

/// Whether a step acts on the store only (after a read-only health probe, for a switch): its
/// intent, its records and its outcome can then be one commit.
fn records_only(action: &Action) -> bool {
    matches!(
        action,
        Action::Register(_)
            | Action::Adopt(_)
            | Action::Switch { .. }
            | Action::Forget
            | Action::Retire {
                container: None,
                drain: None,
                ..
            }
            | Action::MigrateBegin { .. }
            | Action::MigratePhase(_)
            | Action::MigrateFinish
            | Action::MigrateAbort(_)
            | Action::MigrateRollback(_)
            | Action::ClearRolledBack
    )
}

/// The executor's side of the journal, which costs one commit (one fsync) per step instead of two.
///
/// A step's intent is committed before the step acts; its outcome is owed, and is committed with
/// the next commit: the next step's intent, or the end of the execution. A process killed after a
/// step acted and before its outcome was committed leaves the step as interrupted, which the next
/// reconcile re-plans from what it observes, exactly as for a step killed while it acted. A step
/// that only writes records commits its intent, its records, its outcome and the next step's
/// intent in one transaction. A switch followed by its kernel rule commits both intents while its
/// probe is out, and its records after the rule ([`run_switch`]).
struct Journal<'s> {
    store: &'s Store,
    /// Outcomes not yet committed.
    owed: Vec<JournalEntry>,
    /// A step whose intent a record-only step committed ahead: its index and the intent's seq.
    ahead: Option<(usize, u64)>,
    /// A switch whose records wait for its kernel rule (see [`run_switch`]).
    deferred: Option<Deferred>,
}

/// A probed switch whose records are written once the step `after` (its rule) has run.
struct Deferred {
    after: usize,
    step: Step,
    text: String,
    intent: u64,
    /// The rule ran and succeeded.
    rule_written: bool,
}

impl<'s> Journal<'s> {
    fn new(store: &'s Store) -> Self {
        Journal {
            store,
            owed: Vec::new(),
            ahead: None,
            deferred: None,
        }
    }

    /// Step `i` ran and succeeded: when it is a deferred switch's rule, traffic moved.
    fn rule_written(&mut self, i: usize) {
        if let Some(d) = self.deferred.as_mut().filter(|d| d.after == i) {
            d.rule_written = true;
        }
    }

    /// Before step `i`: commits, with the owed outcomes, the outcome of a switch whose rule (a
    /// step before `i`) has run or was skipped, and its records when the rule was written. A rule
    /// that failed or did not start leaves the records as they were (the slot that served still
    /// does) and the switch failed.
    ///
    /// # Errors
    /// The store's, and a record that moved since the plan (`Conflict`): the execution stops with
    /// both steps interrupted, for the next reconcile to re-plan.
    fn settle(&mut self, i: usize, gens: &mut BTreeMap<EnvKey, Option<u64>>) -> Result<()> {
        if self.deferred.as_ref().is_none_or(|d| d.after >= i) {
            return Ok(());
        }
        let d = self.deferred.take().expect("checked");
        let mut w = self.begin()?;
        let mut written = gens.clone();
        if d.rule_written {
            write_records(&d.step, &mut w, &mut written)?;
            w.journal(entry(&d.step, Phase::Done, &d.text, Some(d.intent), None))?;
        } else {
            let message = "its kernel rule was not written: traffic did not move".to_string();
            w.journal(entry(
                &d.step,
                Phase::Failed,
                &d.text,
                Some(d.intent),
                Some(message),
            ))?;
        }
        self.commit(w)?;
        *gens = written;
        Ok(())
    }

    /// A transaction that starts with the owed outcomes (they stay owed until it commits).
    fn begin(&self) -> Result<crate::store::Writer<'s>> {
        let mut w = self.store.write()?;
        for e in &self.owed {
            w.journal(e.clone())?;
        }
        Ok(w)
    }

    fn commit(&mut self, w: crate::store::Writer<'_>) -> Result<()> {
        w.commit()?;
        self.owed.clear();
        super::fault::journal_written();
        Ok(())
    }

    /// The seq of step `i`'s intent, committed ahead or now.
    fn intent(&mut self, i: usize, step: &Step, text: &str) -> Result<u64> {
        if let Some(seq) = self.take_ahead(i) {
            return Ok(seq);
        }
        let mut w = self.begin()?;
        let seq = w.journal(entry(step, Phase::Intent, text, None, None))?;
        self.commit(w)?;
        Ok(seq)
    }

    /// The seq of step `i`'s intent if it was committed ahead.
    fn take_ahead(&mut self, i: usize) -> Option<u64> {
        match self.ahead {
            Some((j, seq)) if j == i => {
                self.ahead = None;
                Some(seq)
            }
            _ => None,
        }
    }

    /// Step `i` does not run: an intent committed ahead for it gets an outcome saying so.
    fn skip(&mut self, plan: &Plan, i: usize) {
        if let Some(seq) = self.take_ahead(i) {
            let step = &plan.steps[i];
            let message = "not started: codeb stopped first".to_string();
            let text = step.to_string();
            self.owed
                .push(entry(step, Phase::Failed, &text, Some(seq), Some(message)));
        }
    }

    fn outcome(&mut self, step: &Step, text: &str, intent: u64, result: &Result<()>) {
        self.owed.push(match result {
            Ok(()) => entry(step, Phase::Done, text, Some(intent), None),
            Err(e) => entry(step, Phase::Failed, text, Some(intent), Some(e.to_string())),
        });
    }

    /// Commits the owed outcomes, if any.
    fn flush(&mut self) -> Result<()> {
        if self.owed.is_empty() {
            return Ok(());
        }
        let w = self.begin()?;
        self.commit(w)
    }
}

/// Runs a step that only writes records (see [`records_only`]): a switch's health probe first,
/// then one commit of its intent, its records, its outcome and the intent of `next`.
async fn run_records<H: Prober>(
    step: &Step,
    text: &str,
    i: usize,
    next: Option<(usize, &Step)>,
    journal: &mut Journal<'_>,
    (prober, agent): (&H, Option<&super::probe::Agent>),
    gens: &mut BTreeMap<EnvKey, Option<u64>>,
) -> Result<()> {
    let fail = |journal: &mut Journal<'_>, error: Error| -> Result<()> {
        let intent = journal.intent(i, step, text)?;
        let result = Err(error);
        journal.outcome(step, text, intent, &result);
        result
    };
    if let Action::Switch { to, url, .. } = &step.action {
        if let Err(error) = gate(prober, agent, *to, url).await {
            return fail(journal, error);
        }
    }
    let mut w = journal.begin()?;
    let ahead = journal.take_ahead(i);
    let intent = match ahead {
        Some(seq) => seq,
        None => w.journal(entry(step, Phase::Intent, text, None, None))?,
    };
    let mut written = gens.clone();
    if let Err(error) = write_records(step, &mut w, &mut written) {
        // Nothing of the transaction is written, not even the intent (unless it was committed
        // ahead): the intent goes on its own, then the failure.
        drop(w);
        if let Some(seq) = ahead {
            journal.ahead = Some((i, seq));
        }
        return match error {
            Error::Store(e) if !matches!(e, crate::store::Error::Conflict { .. }) => {
                Err(Error::Store(e))
            }
            error => fail(journal, error),
        };
    }
    w.journal(entry(step, Phase::Done, text, Some(intent), None))?;
    let ahead = match next {
        Some((j, n)) => Some((
            j,
            w.journal(entry(n, Phase::Intent, &n.to_string(), None, None))?,
        )),
        None => None,
    };
    let started = std::time::Instant::now();
    journal.commit(w)?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "records committed"
    );
    journal.ahead = ahead;
    *gens = written;
    Ok(())
}

/// Probes a switch's gate makes at most before it refuses: one probe that fails is asked again
/// (a probe lost to a stalled moment, a busy host's agent), so that a healthy slot is not refused
/// for it; a slot that fails every one is refused. A healthy switch makes one.
const GATE_TRIES: u32 = 3;
/// The pause before a gate's next probe.
const GATE_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// A switch's health gate: the slot `to` answers at `url` now, or traffic does not move.
async fn gate<H: Prober>(
    prober: &H,
    agent: Option<&super::probe::Agent>,
    to: crate::model::Slot,
    url: &str,
) -> Result<()> {
    let started = std::time::Instant::now();
    let mut probed = prober.probe_on(agent, url).await;
    for _ in 1..GATE_TRIES {
        if probed.is_ok() {
            break;
        }
        tracing::debug!(url = %url, error = ?probed, "switch probe failed, asked again");
        tokio::time::sleep(GATE_PAUSE).await;
        probed = prober.probe_on(agent, url).await;
    }
    tracing::debug!(
        url = %url,
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "switch probed its target"
    );
    probed.map_err(|last| Error::NotHealthy {
        slot: to,
        url: url.to_string(),
        last,
    })
}

/// The records a record-only step writes, into `w`, with `gens` advanced to the generations
/// written.
fn write_records(
    step: &Step,
    w: &mut crate::store::Writer<'_>,
    gens: &mut BTreeMap<EnvKey, Option<u64>>,
) -> Result<()> {
    let whole = match &step.action {
        Action::Register(rec) => Some(&**rec),
        Action::Adopt(a) => Some(&a.record),
        Action::MigrateBegin { record, .. } => Some(&**record),
        Action::MigrateAbort(record) => Some(&**record),
        Action::MigrateRollback(record) => Some(&**record),
        _ => None,
    };
    if let Some(rec) = whole {
        let key = rec.key.clone();
        let expected = *gens.entry(key.clone()).or_insert(step.generation);
        let written = w.put_env(rec.clone(), expected)?;
        gens.insert(key, Some(written.generation));
        return Ok(());
    }
    let key = step.key.clone().expect("record steps carry a key");
    let expected = *gens.entry(key.clone()).or_insert(step.generation);
    if matches!(step.action, Action::Forget) {
        return Ok(w.delete_env(&key, expected)?);
    }
    let mut rec = w
        .env(&key)?
        .ok_or_else(|| Error::MissingRecord { key: key.clone() })?;
    match &step.action {
        Action::Switch { to, hold, .. } => {
            plan::switch_record(&mut rec, *to, hold.clone(), now_ms())
        }
        Action::Retire { slot, .. } => *rec.slot_mut(*slot) = SlotRecord::default(),
        Action::MigratePhase(phase) => enter_phase(&mut rec, *phase, now_ms())?,
        Action::MigrateFinish => rec.migration = None,
        Action::ClearRolledBack => rec.rolled_back = None,
        _ => unreachable!("not a record-only step"),
    }
    let written = w.put_env(rec, expected)?;
    gens.insert(key, Some(written.generation));
    Ok(())
}

/// Moves `rec`'s migration into `phase` (never back: a phase already passed is left as it is).
fn enter_phase(
    rec: &mut crate::model::EnvRecord,
    phase: crate::model::MigrationPhase,
    now: u64,
) -> Result<()> {
    let m = rec
        .migration
        .as_deref_mut()
        .ok_or_else(|| Error::MissingRecord {
            key: rec.key.clone(),
        })?;
    if m.phase < phase {
        m.phase = phase;
        m.since_ms = now;
    }
    Ok(())
}

/// The environments whose rrsets a zone step deletes.
pub(super) fn deleted_owners(action: &Action) -> Vec<EnvKey> {
    let Action::DnsPatch { changes, .. } = action else {
        return Vec::new();
    };
    changes
        .iter()
        .filter(|c| matches!(c.change, crate::model::writes::RrsetChange::Delete { .. }))
        .filter_map(|c| c.was.as_ref()?.mark.as_deref())
        .filter_map(crate::model::dns::parse_owner)
        .collect()
}

/// The environments whose rrsets a zone's step writes or deletes (by the marks it writes, or of
/// the rrsets it deletes).
pub(super) fn written_owners(action: &Action) -> Vec<EnvKey> {
    let Action::DnsPatch { changes, .. } = action else {
        return Vec::new();
    };
    changes
        .iter()
        .filter_map(|c| match &c.change {
            crate::model::writes::RrsetChange::Replace(r) => r.mark.as_deref(),
            crate::model::writes::RrsetChange::Delete { .. } => c.was.as_ref()?.mark.as_deref(),
        })
        .filter_map(crate::model::dns::parse_owner)
        .collect()
}

fn entry(
    step: &Step,
    phase: Phase,
    text: &str,
    intent: Option<u64>,
    message: Option<String>,
) -> JournalEntry {
    JournalEntry {
        seq: 0,
        at_ms: now_ms(),
        host: step.host.clone(),
        key: step.key.clone(),
        phase,
        step: text.to_string(),
        intent,
        message,
    }
}

async fn run<R: Runtime, P: Proxy, K: Kernel, D: Dns, H: Prober>(
    step: &Step,
    text: &str,
    store: &Store,
    backends: &Backends<R, P, K, D>,
    prober: &H,
    control: &Control,
    gens: &mut BTreeMap<EnvKey, Option<u64>>,
) -> Result<()> {
    if step.action.zone().is_some() {
        return run_dns(&step.action, backends).await;
    }
    let b = backends
        .hosts
        .get(&step.host)
        .ok_or_else(|| Error::UnknownHost {
            host: step.host.clone(),
        })?;
    let host = step.host.as_str();
    let backend = |source| Error::Backend {
        host: host.to_string(),
        source,
    };
    let key = step.key.clone();
    // Read-modify-write of the key's record, guarded by the expected generation.
    let mut update = |f: &dyn Fn(&mut crate::model::EnvRecord)| -> Result<()> {
        let key = key.clone().expect("record steps carry a key");
        let expected = *gens.entry(key.clone()).or_insert(step.generation);
        let mut rec = store
            .env(&key)?
            .ok_or_else(|| Error::MissingRecord { key: key.clone() })?;
        f(&mut rec);
        let written = store.put_env(rec, expected)?;
        gens.insert(key, Some(written.generation));
        Ok(())
    };
    match &step.action {
        Action::MarkHost => match &b.owner {
            Some(owner) => b.runtime.mark_owner(owner).await.map_err(backend),
            None => Ok(()),
        },
        Action::EnsureNetwork { name } => b
            .runtime
            .ensure_network(name)
            .await
            .map(drop)
            .map_err(backend),
        Action::EnsureServer(spec) => b.proxy.ensure_server(spec).await.map_err(backend),
        Action::EnsureAccessLog(log) => b
            .proxy
            .ensure_access_log(SERVER_NAME, log.as_ref())
            .await
            .map_err(backend),
        Action::Deploy {
            slot,
            release,
            container,
            replace,
            aside,
            health_path,
            health_timeout_ms,
            ..
        } => {
            // Without the env key nothing is recorded or created (the values are decrypted later,
            // right before the create call).
            env_key_ready(store, container)?;
            let now = now_ms();
            update(&|rec| {
                *rec.slot_mut(*slot) = SlotRecord {
                    state: SlotState::Deploying,
                    release: Some((**release).clone()),
                    since_ms: now,
                    health_path: health_path.clone(),
                    health_timeout_ms: *health_timeout_ms,
                    last_health: None,
                    log_tail: Vec::new(),
                }
            })?;
            match (replace, aside) {
                // The old container keeps running under another name until the plan after the
                // switch removes it: the new one does not wait for its removal.
                (Some(old), Some(name)) => {
                    b.runtime.rename(old, name).await.map_err(backend)?;
                    run_container(b, store, host, container, None).await
                }
                _ => run_container(b, store, host, container, replace.as_deref()).await,
            }
        }
        Action::Recreate {
            container, replace, ..
        } => {
            env_key_ready(store, container)?;
            run_container(b, store, host, container, replace.as_deref()).await
        }
        Action::Start { container, .. } => b.runtime.start(container).await.map_err(backend),
        Action::Stop { container, .. } => b.runtime.stop(container).await.map_err(backend),
        Action::AwaitHealthy {
            slot,
            url,
            timeout_ms,
            container,
            hash,
            direct,
        } => {
            let timeout = Duration::from_millis(*timeout_ms);
            let started = tokio::time::Instant::now();
            let deadline = started + timeout;
            let mut last;
            // A direct probe's URL, once the container reports its address (stable for its life).
            let mut resolved: Option<String> = None;
            let mut wait = control.progress.wait(text);
            // While the probes fail, whether the host still answers, once a second: a host cut
            // off (a silent partition, seen by ssh's keep-alives within seconds) ends the wait
            // like a crash instead of waiting out the timeout and failing a release it never saw.
            let mut reached = tokio::time::Instant::now();
            loop {
                let probed = match direct {
                    None => Some(url.clone()),
                    Some(d) => {
                        if resolved.is_none() {
                            resolved =
                                b.runtime.address(container).await.ok().flatten().map(|ip| {
                                    format!("http://{ip}:{}{}", d.port, or_root(&d.path))
                                });
                        }
                        resolved.clone()
                    }
                };
                match &probed {
                    Some(probed) => match prober.probe_on(b.agent.as_ref(), probed).await {
                        Ok(()) => {
                            wait.state("passed");
                            let at = now_ms();
                            return update(&|rec| {
                                let s = rec.slot_mut(*slot);
                                if s.state == SlotState::Deploying
                                    && s.hash() == Some(hash.as_str())
                                {
                                    s.state = SlotState::Deployed;
                                    s.since_ms = at;
                                }
                                s.last_health = Some(format!("passed: GET {probed}"));
                            });
                        }
                        Err(e) => last = e,
                    },
                    None => last = "the container has no address yet (not running)".to_string(),
                }
                wait.state(&last);
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                if reached.elapsed() >= HOST_CHECK {
                    if let Err(e) = b.runtime.ping().await {
                        if e.retryable() {
                            return Err(backend(e));
                        }
                    }
                    reached = tokio::time::Instant::now();
                }
                if control.expired() {
                    // Not a failed release: the slot stays deploying, its container running, and
                    // the next apply resumes the check (`plan::env`, "resume a deploy").
                    return Err(Error::Stopped {
                        what: format!(
                            "waiting for {slot} to answer on {url} after {:.1} s (last: {last}); it stays deploying and the next apply resumes its health check",
                            started.elapsed().as_secs_f64()
                        ),
                    });
                }
                tokio::time::sleep(probe_interval(started.elapsed())).await;
            }
            // Keep the container for inspection, stopped, with its log tail recorded. A host that
            // cannot be reached to stop it (a partition: the probes failed for the same reason)
            // says nothing about the release: the step fails like a crash, the slot stays
            // deploying, and the next reconcile resumes its health check once the host is back.
            if let Err(e) = b.runtime.stop(container).await {
                if e.retryable() {
                    return Err(backend(e));
                }
            }
            let tail = b
                .runtime
                .logs_tail(container, LOG_TAIL)
                .await
                .unwrap_or_default();
            let at = now_ms();
            let timeout_text = humantime::format_duration(timeout).to_string();
            update(&|rec| {
                let s = rec.slot_mut(*slot);
                if s.hash() == Some(hash.as_str()) {
                    s.state = SlotState::Failed;
                    s.since_ms = at;
                    s.log_tail = tail.clone();
                    s.last_health =
                        Some(format!("failed: GET {url}: {last} (after {timeout_text})"));
                }
            })?;
            Err(Error::Unhealthy {
                slot: *slot,
                url: url.clone(),
                timeout: timeout_text,
                last,
            })
        }
        Action::HookServices(write) => b.kernel.hook(write).await.map_err(backend),
        Action::Loopback(write) => b.kernel.set_loopback(write).await.map_err(backend),
        Action::Isolate => b.kernel.isolate().await.map_err(backend),
        Action::LoopbackOff { bridge } => b.kernel.loopback_off(bridge).await.map_err(backend),
        Action::PinMac { bridge } => b.kernel.pin_mac(bridge).await.map_err(backend),
        Action::SetService(write) => {
            let started = std::time::Instant::now();
            b.kernel.set_service(write).await.map_err(backend)?;
            tracing::info!(
                service = %format!("{}:{}", write.gateway, write.port),
                target = ?write.target.as_ref().map(|t| t.to),
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                "service address set"
            );
            Ok(())
        }
        Action::AddRoute(route) => b.proxy.add_route(SERVER_NAME, route).await.map_err(backend),
        Action::ReplaceRoute(route) => b.proxy.replace_route(route).await.map_err(backend),
        Action::DeleteRoute { id } => b.proxy.delete_route(id).await.map_err(backend),
        Action::Retire {
            slot, container, ..
        } => {
            if let Some(c) = container {
                b.runtime.remove(c).await.map_err(backend)?;
            }
            update(&|rec| *rec.slot_mut(*slot) = SlotRecord::default())
        }
        Action::RemoveContainer { id, .. } => b.runtime.remove(id).await.map_err(backend),
        // Record intent, then act: the phase is written before the source's route changes.
        Action::MigrateForward { route, add } => {
            // The write is guarded by the plan's generation, whose record is migrating: a record
            // without a migration fails the write as a conflict before this runs.
            let now = now_ms();
            update(&|rec| {
                let _ = enter_phase(rec, crate::model::MigrationPhase::Forwarding, now);
            })?;
            if *add {
                b.proxy.add_route(SERVER_NAME, route).await.map_err(backend)
            } else {
                b.proxy.replace_route(route).await.map_err(backend)
            }
        }
        Action::MigrateGrace { container } => {
            let now = now_ms();
            update(&|rec| {
                let _ = enter_phase(rec, crate::model::MigrationPhase::Grace, now);
            })?;
            match container {
                Some(c) => b.runtime.stop(c).await.map_err(backend),
                None => Ok(()),
            }
        }
        Action::EnsureZone { .. } | Action::DnsPatch { .. } => unreachable!("run_dns runs these"),
        Action::Register(_)
        | Action::Adopt(_)
        | Action::Switch { .. }
        | Action::Forget
        | Action::MigrateBegin { .. }
        | Action::MigratePhase(_)
        | Action::MigrateFinish
        | Action::MigrateAbort(_)
        | Action::MigrateRollback(_)
        | Action::ClearRolledBack => {
            unreachable!("run_records runs these")
        }
    }
}

/// A zone's step: create the zone, or re-read it and write every change in one PATCH.
async fn run_dns<R, P, K, D: Dns>(action: &Action, backends: &Backends<R, P, K, D>) -> Result<()> {
    let zone = action.zone().expect("a zone step");
    let dns = backends.zones.get(zone).ok_or_else(|| Error::UnknownZone {
        zone: zone.to_string(),
    })?;
    let err = |source| Error::Dns {
        zone: zone.to_string(),
        source,
    };
    match action {
        Action::EnsureZone { .. } => dns.create_zone(zone).await.map_err(err),
        Action::DnsPatch { changes, .. } => {
            let current = dns.zone(zone).await.map_err(err)?;
            plan::dns::recheck(changes, current.as_ref()).map_err(|reason| Error::DnsChanged {
                zone: zone.to_string(),
                reason,
            })?;
            let changes: Vec<_> = changes.iter().map(|c| c.change.clone()).collect();
            dns.patch(zone, &changes).await.map_err(err)
        }
        _ => unreachable!("not a zone step"),
    }
}

/// Drains the slot a `Deploy` replaces or a `Retire` removes, when it served traffic moments ago.
/// An unknown host is left to the step, which fails on it.
///
/// # Errors
/// `Stopped` when the run's deadline passed before the drain ended: the step must not act.
async fn drain_owed<R, P, K: Kernel, D>(
    step: &Step,
    text: &str,
    backends: &Backends<R, P, K, D>,
    control: &Control,
) -> Result<()> {
    let (Action::Deploy { drain: Some(d), .. } | Action::Retire { drain: Some(d), .. }) =
        &step.action
    else {
        return Ok(());
    };
    if let Some(b) = backends.hosts.get(&step.host) {
        if !drain(&b.kernel, d, text, control).await {
            return Err(Error::Stopped {
                what: "draining the slot's open connections; nothing was changed".into(),
            });
        }
    }
    Ok(())
}

/// The backend a step talks to, for its metrics; `None` for a step that touches only the store,
/// or the app: a health probe's time is the app's (up to its timeout, minutes), not a backend's.
fn backend_of(action: &Action) -> Option<&'static str> {
    match action {
        Action::Register(_)
        | Action::Adopt(_)
        | Action::Forget
        | Action::AwaitHealthy { .. }
        | Action::Switch { .. }
        | Action::Retire {
            container: None, ..
        }
        | Action::MigrateBegin { .. }
        | Action::MigratePhase(_)
        | Action::MigrateFinish
        | Action::MigrateAbort(_)
        | Action::MigrateRollback(_)
        | Action::ClearRolledBack => None,
        Action::Deploy { .. }
        | Action::Recreate { .. }
        | Action::Start { .. }
        | Action::Stop { .. }
        | Action::Retire { .. }
        | Action::RemoveContainer { .. } => Some("podman"),
        Action::MarkHost | Action::EnsureNetwork { .. } | Action::MigrateGrace { .. } => {
            Some("podman")
        }
        Action::EnsureServer(_)
        | Action::EnsureAccessLog(_)
        | Action::AddRoute(_)
        | Action::ReplaceRoute(_)
        | Action::DeleteRoute { .. }
        | Action::MigrateForward { .. } => Some("caddy"),
        Action::HookServices(_)
        | Action::Loopback(_)
        | Action::Isolate
        | Action::LoopbackOff { .. }
        | Action::PinMac { .. }
        | Action::SetService(_) => Some("kernel"),
        Action::EnsureZone { .. } | Action::DnsPatch { .. } => Some("powerdns"),
    }
}

/// Counts one executed step into the process's metrics: its backend's time, and its backend's
/// error when the backend failed (a store conflict or a stale plan is not the backend's error);
/// a deploy or a switch that succeeded; a health check that failed.
fn count(action: &Action, elapsed: Duration, result: &Result<()>) {
    let m = crate::metrics::metrics();
    if let Some(backend) = backend_of(action) {
        let labels = crate::metrics::BackendLabels { backend };
        m.backend_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if matches!(result, Err(Error::Backend { .. } | Error::Dns { .. })) {
            m.backend_errors.get_or_create(&labels).inc();
        }
    }
    match (action, result) {
        (Action::Deploy { .. }, Ok(())) => {
            m.deploys.inc();
        }
        (Action::Switch { .. }, Ok(())) => {
            m.switches.inc();
        }
        (_, Err(Error::Unhealthy { .. } | Error::NotHealthy { .. })) => {
            m.health_check_failures.inc();
        }
        _ => {}
    }
}

/// Waits until the drain's deadline, or until the kernel shows no connection open to its target.
///
/// Bounded by the deadline the planner set ([`plan::DRAIN_MS`] after the slot stopped serving).
/// A kernel that cannot count (no privilege) makes it wait the whole period; a slot without a
/// target (its container is not running) has nothing in flight. Returns false when it stopped
/// because `control`'s deadline passed.
async fn drain<K: Kernel>(kernel: &K, d: &Drain, text: &str, control: &Control) -> bool {
    let Some(target) = d.target else {
        return true;
    };
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_millis(d.until_ms.saturating_sub(now_ms()));
    let mut wait = control.progress.wait(text);
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        if control.expired() {
            return false;
        }
        match kernel.open_connections(target).await {
            Some(0) => break,
            Some(n) => wait.state(&format!(
                "draining: {n} connection{} open to {target}",
                if n == 1 { "" } else { "s" }
            )),
            None => wait.state(&format!("draining {target}: open connections unknown")),
        }
        tokio::time::sleep(DRAIN_POLL.min(deadline - now)).await;
    }
    tracing::info!(
        %target,
        waited_ms = started.elapsed().as_millis() as u64,
        "drained"
    );
    true
}

/// A health path, `/` when empty.
fn or_root(path: &str) -> &str {
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

/// Whether the env key a container's values need can be read (a missing or wrong key is an error
/// naming the file), checked before a step records or removes anything.
fn env_key_ready(store: &Store, spec: &crate::model::writes::ContainerSpec) -> Result<()> {
    let s = &spec.env_source;
    if s.key.is_some() && (s.version.is_some() || s.inline.digest().is_some()) {
        store.keyring(s.inline.values().is_some())?;
    }
    Ok(())
}

/// The container with its env values: the inline ones (in memory, or sealed in the store by
/// digest), then the pinned stored version's over them (stored wins). Called by
/// [`run_container`] right before the create call, and nowhere else: the plan holds only where
/// the values are.
fn with_env(
    store: &Store,
    spec: &crate::model::writes::ContainerSpec,
) -> Result<crate::model::writes::ContainerSpec> {
    let source = &spec.env_source;
    let Some(key) = &source.key else {
        return Ok(spec.clone());
    };
    let mut values = store.inline_values(key, &source.inline)?;
    if let Some(v) = source.version {
        values.0.extend(store.open_env(key, v)?.0);
    }
    let mut out = spec.clone();
    out.env = values;
    Ok(out)
}

async fn run_container<R: Runtime, P: Proxy, K>(
    b: &HostBackends<R, P, K>,
    store: &Store,
    host: &str,
    spec: &crate::model::writes::ContainerSpec,
    replace: Option<&str>,
) -> Result<()> {
    let backend = |source| Error::Backend {
        host: host.to_string(),
        source,
    };
    if let Some(old) = replace {
        b.runtime.remove(old).await.map_err(backend)?;
    }
    b.runtime
        .ensure_network(&spec.network)
        .await
        .map_err(backend)?;
    b.runtime.ensure_image(&spec.image).await.map_err(backend)?;
    // Decrypted here, for the create call alone: the values are dropped with `with_values`.
    let id = {
        let with_values = with_env(store, spec)?;
        b.runtime.create(&with_values).await.map_err(backend)?
    };
    b.runtime.start(&id).await.map_err(backend)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::backend::fake::{FakeProber, World};
    use crate::metrics::{metrics, BackendLabels};
    use crate::plan::tests::{desired, env};
    use crate::reconcile::fixtures::{fake_host, hold_name};
    use crate::reconcile::{converge, Outcome, Target};

    /// What the tests read of the process-wide metrics. Other tests count into them at the same
    /// time, so a test asserts increases only.
    #[derive(Debug, Clone, Copy)]
    struct Counts {
        deploys: u64,
        switches: u64,
        health_check_failures: u64,
        /// Per backend of [`BACKENDS`]: calls timed, and errors.
        calls: [(u64, u64); 3],
    }

    const BACKENDS: [&str; 3] = ["podman", "caddy", "kernel"];

    fn counts() -> Counts {
        let m = metrics();
        // A histogram's count is read from the exported text (its accessor is for the crate's
        // own tests).
        let text = m.encode();
        let calls = BACKENDS.map(|backend| {
            let sample =
                format!("codeb_backend_call_duration_seconds_count{{backend=\"{backend}\"}} ");
            let timed = text
                .lines()
                .find_map(|l| l.strip_prefix(&sample))
                .map_or(0, |n| n.parse().unwrap());
            let errors = m.backend_errors.get_or_create(&BackendLabels { backend });
            (timed, errors.get())
        });
        Counts {
            deploys: m.deploys.get(),
            switches: m.switches.get(),
            health_check_failures: m.health_check_failures.get(),
            calls,
        }
    }

    /// The fake host `app`, and a store.
    struct Fake {
        world: World,
        store: Store,
        _dir: tempfile::TempDir,
    }

    impl Fake {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            Fake {
                world: World::new(),
                store: Store::open(dir.path()).unwrap(),
                _dir: dir,
            }
        }

        /// Applies `myapp` running `image`, as `codeb apply` would.
        async fn apply(&self, image: &str) -> Outcome {
            self.apply_with(image, &crate::reconcile::Control::default())
                .await
        }

        /// The fake host `app`'s clients.
        fn backends(&self) -> Backends<World, World, World> {
            Backends::hosts(BTreeMap::from([(
                "app".to_string(),
                fake_host(&self.world),
            )]))
        }
    }

    impl Fake {
        /// Applies `myapp` running `image` under `control`.
        async fn apply_with(&self, image: &str, control: &crate::reconcile::Control) -> Outcome {
            let mut e = env("myapp");
            e.release = crate::model::Release::new(image, None, BTreeMap::new(), 8080);
            let backends = self.backends();
            let target = Target {
                desired: &desired([e]),
                remove: vec![],
                dry_run: false,
            };
            let prober = FakeProber(vec![self.world.clone()]);
            crate::reconcile::converge_with(target, &self.store, &backends, &prober, control)
                .await
                .unwrap()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_step_is_reported_when_it_starts_and_ends_and_a_wait_once_per_state() {
        use crate::reconcile::{Control, Event, Progress};
        let fake = Fake::new();
        let (progress, mut events) = Progress::channel();
        let control = Control {
            progress,
            deadline: None,
        };
        let out = fake.apply_with("app:v1", &control).await;
        assert!(out.converged(), "{:?}", out.failures);
        drop(control);
        let mut got = Vec::new();
        while let Some(e) = events.recv().await {
            got.push(e);
        }
        // Every executed step started, then ended, in order, with nothing between but its waits.
        let mut open: Option<String> = None;
        let mut ended = Vec::new();
        for e in &got {
            match e {
                Event::StepStarted { step } => {
                    assert!(open.is_none(), "{got:#?}");
                    open = Some(step.clone());
                }
                Event::Waiting { step, .. } => assert_eq!(Some(step), open.as_ref()),
                Event::StepEnded { step, error, .. } => {
                    assert_eq!(Some(step), open.as_ref());
                    assert_eq!(error, &None);
                    ended.push(open.take().unwrap());
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ended, out.executed);
        let waits: Vec<&str> = got
            .iter()
            .filter_map(|e| match e {
                Event::Waiting { state, .. } => Some(state.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(waits.last(), Some(&"passed"), "{got:#?}");
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_deadline_a_health_wait_stops_its_slot_stays_deploying_and_the_next_run_resumes(
    ) {
        use crate::reconcile::{Control, Progress};
        let fake = Fake::new();
        let control = Control {
            progress: Progress::none(),
            deadline: Some(tokio::time::Instant::now() + Duration::from_secs(1)),
        };
        let out = fake.apply_with("app:unhealthy", &control).await;
        assert!(out.timed_out && !out.converged(), "{out:?}");
        assert!(
            matches!(
                out.failures.last().map(|f| &f.error),
                Some(Error::Stopped { .. })
            ),
            "{:?}",
            out.failures
        );
        let key = EnvKey::new("myapp", "production");
        let rec = fake.store.env(&key).unwrap().unwrap();
        assert_eq!(rec.blue.state, SlotState::Deploying, "{rec:?}");
        assert!(fake.store.interrupted().unwrap().is_empty());
        // The next run (no deadline) resumes the check rather than deploying again: here the
        // release is unhealthy for good, so it fails, and only now is it marked so.
        let creates = fake.world.state().containers.len();
        let out = fake.apply("app:unhealthy").await;
        assert!(!out.timed_out && !out.converged());
        assert!(
            !out.executed.iter().any(|s| s.contains("deploy ")),
            "{:?}",
            out.executed
        );
        assert_eq!(fake.world.state().containers.len(), creates);
        let rec = fake.store.env(&key).unwrap().unwrap();
        assert_eq!(rec.blue.state, SlotState::Failed);
    }

    /// `route_localnet` is on only while slot ports are published on loopback: once the last
    /// environment is gone, the next round turns it off, and the one after does nothing.
    #[tokio::test(start_paused = true)]
    async fn route_localnet_is_turned_off_once_no_slot_port_is_published() {
        let fake = Fake::new();
        assert!(fake.apply("app:v1").await.converged());
        assert!(fake.world.state().loopback.route_localnet);
        let backends = fake.backends();
        let prober = FakeProber(vec![fake.world.clone()]);
        let round = |remove: Vec<EnvKey>| {
            let (store, backends, prober) = (&fake.store, &backends, &prober);
            async move {
                let target = Target {
                    desired: &desired([]),
                    remove,
                    dry_run: false,
                };
                converge(target, store, backends, prober).await.unwrap()
            }
        };
        let deleted = round(vec![EnvKey::new("myapp", "production")]).await;
        assert!(deleted.converged(), "{:?}", deleted.failures);
        assert!(
            !fake.world.state().loopback.route_localnet,
            "{:?}",
            deleted.executed
        );
        assert!(
            deleted
                .executed
                .iter()
                .any(|s| s.contains("turn route_localnet off on")),
            "{:?}",
            deleted.executed
        );
        let quiet = round(vec![]).await;
        assert!(quiet.executed.is_empty(), "{:?}", quiet.executed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deploy_and_its_switch_are_counted_with_the_time_of_each_backend_call() {
        let before = counts();
        let out = Fake::new().apply("app:v1").await;
        assert!(out.converged(), "{:?}", out.failures);
        let after = counts();
        assert!(after.deploys > before.deploys);
        assert!(after.switches > before.switches);
        for (i, backend) in BACKENDS.iter().enumerate() {
            assert!(
                after.calls[i].0 > before.calls[i].0,
                "{backend} calls timed"
            );
        }
    }

    /// Every intent has exactly one outcome, after it, and nothing is left interrupted, whether
    /// the steps succeed or one fails (outcomes share commits with the next intent).
    fn assert_each_intent_closed_once(store: &Store) -> Vec<JournalEntry> {
        let all = store.journal_entries(None).unwrap();
        for e in all.iter().filter(|e| e.phase == Phase::Intent) {
            let outcomes: Vec<_> = all.iter().filter(|o| o.intent == Some(e.seq)).collect();
            assert_eq!(outcomes.len(), 1, "{e:?}: {outcomes:?}");
            assert!(outcomes[0].seq > e.seq, "{e:?} closed before it");
        }
        assert!(store.interrupted().unwrap().is_empty());
        all
    }

    #[tokio::test(start_paused = true)]
    async fn each_intent_is_followed_by_one_outcome_when_steps_succeed_and_when_they_fail() {
        let fake = Fake::new();
        assert!(fake.apply("app:v1").await.converged());
        let all = assert_each_intent_closed_once(&fake.store);
        assert!(all.iter().any(|e| e.step.contains("switch")), "{all:#?}");
        let seq = fake.store.journal_seq().unwrap();
        assert_eq!(seq, all.last().unwrap().seq);

        assert!(!fake.apply("app:unhealthy").await.converged());
        let all = assert_each_intent_closed_once(&fake.store);
        let since = fake.store.journaled_since(seq).unwrap();
        assert_eq!(since, all[all.len() - since.len()..].to_vec());
        assert!(since.iter().any(|e| e.phase == Phase::Failed), "{since:#?}");
    }

    /// A switch followed by its kernel rule: both intents in one commit, the rule's outcome, then
    /// the switch's records and outcome (written after the rule), every intent closed once.
    #[tokio::test(start_paused = true)]
    async fn a_switch_s_records_are_committed_after_its_kernel_rule_both_intents_before() {
        let fake = Fake::new();
        assert!(fake.apply("app:v1").await.converged());
        let all = assert_each_intent_closed_once(&fake.store);
        let intent = |what: &str| {
            all.iter()
                .find(|e| e.phase == Phase::Intent && e.step.contains(what))
                .unwrap_or_else(|| panic!("no intent of {what}: {all:#?}"))
        };
        let done = |intent: &JournalEntry| {
            all.iter()
                .find(|e| e.intent == Some(intent.seq) && e.phase == Phase::Done)
                .unwrap_or_else(|| panic!("{intent:?} not done: {all:#?}"))
                .seq
        };
        let switch = intent("switch traffic to");
        let rule = intent("service address");
        assert_eq!(
            rule.seq,
            switch.seq + 1,
            "the rule's intent with the switch's: {all:#?}"
        );
        assert!(done(rule) < done(switch), "{all:#?}");
        let rec = fake
            .store
            .env(&EnvKey::new("myapp", "production"))
            .unwrap()
            .unwrap();
        assert!(rec.active.is_some(), "{rec:?}");
    }

    /// A switch whose kernel rule is refused did not happen: the record still names the slot that
    /// serves, the switch's outcome is a failure, and the answer does not list it as executed.
    #[tokio::test(start_paused = true)]
    async fn a_switch_whose_kernel_rule_is_refused_leaves_the_record_on_the_serving_slot() {
        let fake = Fake::new();
        assert!(fake.apply("app:v1").await.converged());
        let key = EnvKey::new("myapp", "production");
        let before = fake.store.env(&key).unwrap().unwrap();
        fake.world.state().refuse_services = true;
        let out = fake.apply("app:v2").await;
        assert!(!out.converged(), "{:?}", out.executed);
        assert!(
            !out.executed.iter().any(|s| s.contains("switch traffic to")),
            "{:?}",
            out.executed
        );
        let after = fake.store.env(&key).unwrap().unwrap();
        assert_eq!(after.active, before.active, "{after:?}");
        let all = assert_each_intent_closed_once(&fake.store);
        let switch = all
            .iter()
            .rev()
            .find(|e| e.phase == Phase::Intent && e.step.contains("switch traffic to"))
            .unwrap();
        let outcome = all.iter().find(|e| e.intent == Some(switch.seq)).unwrap();
        assert_eq!(outcome.phase, Phase::Failed, "{outcome:?}");

        // Once the kernel takes it again, the next apply promotes.
        fake.world.state().refuse_services = false;
        assert!(fake.apply("app:v2").await.converged());
        let now = fake.store.env(&key).unwrap().unwrap();
        assert_ne!(now.active, before.active, "{now:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_health_check_and_a_refused_backend_call_are_counted() {
        let before = counts();
        assert!(!Fake::new().apply("app:unhealthy").await.converged());
        assert!(counts().health_check_failures > before.health_check_failures);

        // A container codeb does not own holds the first slot's name: Podman refuses the create.
        let fake = Fake::new();
        hold_name(&fake.world, "myapp-production-blue");
        let before = counts();
        let out = fake.apply("app:v1").await;
        assert!(
            matches!(
                out.failures.first().map(|f| &f.error),
                Some(Error::Backend { .. })
            ),
            "{:?}",
            out.failures
        );
        assert!(counts().calls[0].1 > before.calls[0].1, "a Podman error");
    }

    /// Converges `myapp` to `release` on a fresh world over `fake`'s store.
    async fn converge_release(fake: &Fake, release: crate::model::Release) -> Outcome {
        let mut e = env("myapp");
        e.release = release;
        let backends: Backends<World, World, World> = Backends::hosts(BTreeMap::from([(
            "app".to_string(),
            fake_host(&fake.world),
        )]));
        let target = Target {
            desired: &desired([e]),
            remove: vec![],
            dry_run: false,
        };
        let prober = FakeProber(vec![fake.world.clone()]);
        converge(target, &fake.store, &backends, &prober)
            .await
            .unwrap()
    }

    /// A release of `app:v1` with this inline env, bound, pinned to `version`.
    fn with_env(
        fake: &Fake,
        inline: &[(&str, &str)],
        version: Option<u64>,
    ) -> crate::model::Release {
        let key = crate::model::EnvKey::new("myapp", "production");
        let values = inline
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = crate::model::Release::new("app:v1", None, values, 8080);
        let bound = fake.store.bind_inline(&key, &r.env, false).unwrap();
        r.with_inline_env(bound).with_env_version(version)
    }

    #[tokio::test(start_paused = true)]
    async fn the_container_gets_its_pinned_version_over_its_inline_env_and_the_plan_holds_neither()
    {
        let fake = Fake::new();
        let key = crate::model::EnvKey::new("myapp", "production");
        let stored = crate::model::vars::EnvValues(BTreeMap::from([(
            "TOKEN".to_string(),
            "stored-s3cret".to_string(),
        )]));
        fake.store
            .put_env_version(&key, None, &stored, "test", 1, None)
            .unwrap();
        let release = with_env(
            &fake,
            &[("TOKEN", "inline"), ("MODE", "inline-mode")],
            Some(1),
        );
        let out = converge_release(&fake, release).await;
        assert!(out.converged(), "{:?}", out.failures);
        let plan = format!("{:?} {:?}", out.first_plan, out.executed);
        assert!(
            !plan.contains("s3cret") && !plan.contains("inline-mode"),
            "{plan}"
        );
        let world = fake.world.state();
        let (_, spec) = world
            .containers
            .values()
            .find(|(c, _)| c.name == "myapp-production-blue")
            .expect("the blue container");
        assert_eq!(
            spec.env.0["TOKEN"], "stored-s3cret",
            "the stored value wins"
        );
        assert_eq!(spec.env.0["MODE"], "inline-mode");
        assert!(
            !format!("{spec:?}").contains("s3cret"),
            "Debug shows names only"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_env_key_a_deploy_fails_before_it_records_or_creates_anything() {
        let fake = Fake::new();
        let key = crate::model::EnvKey::new("myapp", "production");
        let one = crate::model::vars::EnvValues(BTreeMap::from([("A".into(), "1".into())]));
        fake.store
            .put_env_version(&key, None, &one, "test", 1, None)
            .unwrap();
        let dir = fake._dir.path().to_path_buf();
        // A store reopened without its key file: the version is sealed under a key it lacks.
        std::fs::remove_file(dir.join("env.key")).unwrap();
        let reopened = Fake {
            world: fake.world.clone(),
            store: {
                drop(fake.store);
                Store::open(&dir).unwrap()
            },
            _dir: fake._dir,
        };
        let release = crate::model::Release::new("app:v1", None, BTreeMap::new(), 8080)
            .with_env_version(Some(1));
        let out = converge_release(&reopened, release).await;
        assert!(
            matches!(out.failures.first().map(|f| &f.error), Some(Error::Env(_))),
            "{:?}",
            out.failures
        );
        assert!(out.failures[0].error.to_string().contains("env.key"));
        assert!(
            reopened.world.state().containers.is_empty(),
            "nothing created"
        );
        let rec = reopened.store.env(&key).unwrap();
        assert!(
            rec.is_none_or(
                |r| r.blue.state == SlotState::Empty && r.green.state == SlotState::Empty
            ),
            "nothing recorded as deploying"
        );
    }

    /// A prober whose first probe waits (up to 3 s) for a second probe to start meanwhile: with
    /// hosts whose steps run one after the other, no other probe starts while one waits.
    struct Rendezvous {
        worlds: FakeProber,
        calls: std::sync::atomic::AtomicUsize,
        met: std::sync::atomic::AtomicBool,
    }

    impl crate::reconcile::Prober for Rendezvous {
        async fn probe(&self, url: &str) -> Result<(), String> {
            use std::sync::atomic::Ordering::SeqCst;
            if self.calls.fetch_add(1, SeqCst) == 0 {
                let started = std::time::Instant::now();
                while started.elapsed() < Duration::from_secs(3) {
                    if self.calls.load(SeqCst) >= 2 {
                        self.met.store(true, SeqCst);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            self.worlds.probe(url).await
        }
    }

    #[tokio::test]
    async fn the_steps_of_two_hosts_run_at_once_and_each_host_converges() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (wa, wb) = (World::new(), World::new());
        let mut hb = fake_host(&wb);
        hb.publish = Some(std::net::Ipv4Addr::new(127, 0, 0, 2));
        let backends: Backends<World, World, World> = Backends::hosts(BTreeMap::from([
            ("a".to_string(), fake_host(&wa)),
            ("b".to_string(), hb),
        ]));
        let mut d = desired([env("one"), env("two")]);
        let mut host_b = d.hosts["app"].clone();
        host_b.name = "b".into();
        host_b.publish_address = "127.0.0.2".into();
        let mut host_a = d.hosts.remove("app").unwrap();
        host_a.name = "a".into();
        d.hosts = BTreeMap::from([("a".into(), host_a), ("b".into(), host_b)]);
        for (e, h) in d.envs.values_mut().zip(["a", "b"]) {
            e.host = h.into();
        }
        let prober = Rendezvous {
            worlds: FakeProber(vec![wa.clone(), wb.clone()]),
            calls: Default::default(),
            met: Default::default(),
        };
        let target = Target {
            desired: &d,
            remove: vec![],
            dry_run: false,
        };
        let out = converge(target, &store, &backends, &prober).await.unwrap();
        assert!(out.converged(), "{:?} {:?}", out.failures, out.notes);
        assert!(
            prober.met.load(std::sync::atomic::Ordering::SeqCst),
            "host b's health check never ran while host a's waited: the hosts ran one by one"
        );
        assert_eq!(wa.serving("one.example.test").as_deref(), Some("app:v1"));
        assert_eq!(wb.serving("two.example.test").as_deref(), Some("app:v1"));
    }

    #[test]
    fn a_migration_joins_its_two_hosts_in_one_lane_and_zones_go_first() {
        let step = |host: &str, key: Option<&str>| Step {
            host: host.into(),
            key: key.map(|k| EnvKey::new(k, "production")),
            generation: None,
            action: Action::Forget,
        };
        let plan = Plan {
            steps: vec![
                step("", None),
                step("a", Some("x")),
                step("b", Some("y")),
                step("c", Some("z")),
                step("c", Some("y")),
                step("b", None),
            ],
            notes: vec![],
        };
        let (zones, hosts) = lanes(&plan);
        assert_eq!(zones.steps.len(), 1);
        let hosts: Vec<Vec<&str>> = hosts
            .iter()
            .map(|l| l.steps.iter().map(|s| s.host.as_str()).collect())
            .collect();
        assert_eq!(hosts, [vec!["a"], vec!["b", "c", "c", "b"]]);
    }

    /// A prober that cuts the host off (its Podman stops answering) at its first probe, and
    /// never passes: as a partition seen from codeb's machine.
    struct CutOff(World);

    impl crate::reconcile::Prober for CutOff {
        async fn probe(&self, _url: &str) -> Result<(), String> {
            self.0.state().podman_down = true;
            Err("connect timed out".into())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_cut_off_during_a_health_check_fails_the_step_like_a_crash_not_the_release() {
        let fake = Fake::new();
        let backends = fake.backends();
        // The release `Fake::apply("app:v1")` applies, so that the second apply resumes it.
        let mut e = env("myapp");
        e.release = crate::model::Release::new("app:v1", None, BTreeMap::new(), 8080);
        let d = desired([e]);
        let target = Target {
            desired: &d,
            remove: vec![],
            dry_run: false,
        };
        let started = tokio::time::Instant::now();
        let out = converge(target, &fake.store, &backends, &CutOff(fake.world.clone()))
            .await
            .unwrap();
        // Seen at the first check of the host (a second), not at the 5 s health timeout.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let failure = &out.failures[0];
        assert!(
            matches!(failure.error, Error::Backend { .. }) && failure.error.retryable(),
            "{:?}",
            out.failures
        );
        let rec = fake
            .store
            .env(&EnvKey::new("myapp", "production"))
            .unwrap()
            .unwrap();
        let deploying = [rec.blue.state, rec.green.state].contains(&SlotState::Deploying);
        assert!(deploying, "the slot must stay deploying: {rec:?}");
        assert!(
            ![rec.blue.state, rec.green.state].contains(&SlotState::Failed),
            "no release is failed: {rec:?}"
        );
        // Back: the next apply resumes the health check (no new container) and promotes.
        fake.world.state().podman_down = false;
        let containers = fake.world.state().containers.len();
        let out = fake.apply("app:v1").await;
        assert!(out.converged(), "{:?} {:?}", out.failures, out.notes);
        assert_eq!(
            fake.world.state().containers.len(),
            containers,
            "{:?}",
            out.executed
        );
        assert_eq!(
            fake.world.serving("myapp.example.test").as_deref(),
            Some("app:v1")
        );
    }
}
