//! The work queue of `codeb watch`: one entry per key, the earliest deadline wins, a bounded number
//! of reconciles at once, and never two runs of one key at once.
//!
//! Pure data: no task, no channel and no clock of its own (the caller passes `now`), so that every
//! rule is unit-tested without waiting. The controller owns one queue and drives it from a single
//! task. Modelled on kube-runtime's `scheduler.rs`; what it adds is claims: a command sent to the
//! daemon (promote, rollback, apply, delete) takes its keys exactly as a reconcile does, so that a
//! person's command and the loop never act on one environment at once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tokio::time::Instant;

/// A claim that could not be granted at once; granted later by [`Queue::finish`].
pub type Ticket = u64;

/// What [`Queue::claim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Every key is now held by the claimant; give them back with [`Queue::finish`].
    Granted,
    /// A key is busy; the claim is granted when it is free, and its keys start no reconcile meanwhile.
    Waiting(Ticket),
}

/// The queue.
///
/// # Guarantees
/// - One entry per key: scheduling a pending key keeps the earlier of the two deadlines.
/// - A key is never handed out twice at once (by [`Queue::pop`] or [`Queue::claim`]); a key
///   scheduled while it runs stays pending and is handed out after [`Queue::finish`].
/// - At most `limit` keys are out through [`Queue::pop`] at once. Claims do not count: a person's
///   command does not wait for the loop's reconciles of other keys.
/// - Keys of a waiting claim start no new reconcile, so a claim is not starved by the loop.
#[derive(Debug)]
pub struct Queue<K> {
    deadlines: BTreeMap<K, Instant>,
    /// The pending entries ordered by deadline (then key), for [`Queue::pop`].
    order: BTreeSet<(Instant, K)>,
    /// Keys handed out by `pop`.
    reconciling: BTreeSet<K>,
    /// Keys held by granted claims.
    claimed: BTreeSet<K>,
    waiting: VecDeque<(Ticket, Vec<K>)>,
    next_ticket: Ticket,
    limit: usize,
}

impl<K: Ord + Clone> Queue<K> {
    /// A queue that hands out at most `limit` (at least 1) keys at once.
    pub fn new(limit: usize) -> Self {
        Queue {
            deadlines: BTreeMap::new(),
            order: BTreeSet::new(),
            reconciling: BTreeSet::new(),
            claimed: BTreeSet::new(),
            waiting: VecDeque::new(),
            next_ticket: 1,
            limit: limit.max(1),
        }
    }

    /// Schedules `key` to run at `at`. When it is already pending, the earlier deadline wins.
    pub fn schedule(&mut self, key: K, at: Instant) {
        match self.deadlines.get(&key) {
            Some(&current) if current <= at => {}
            Some(&current) => {
                self.order.remove(&(current, key.clone()));
                self.order.insert((at, key.clone()));
                self.deadlines.insert(key, at);
            }
            None => {
                self.order.insert((at, key.clone()));
                self.deadlines.insert(key, at);
            }
        }
    }

    /// Drops `key`'s pending entry, if any (a running key keeps running).
    pub fn unschedule(&mut self, key: &K) {
        if let Some(at) = self.deadlines.remove(key) {
            self.order.remove(&(at, key.clone()));
        }
    }

    fn busy(&self, key: &K) -> bool {
        self.reconciling.contains(key)
            || self.claimed.contains(key)
            || self.waiting.iter().any(|(_, keys)| keys.contains(key))
    }

    /// The earliest due key that may run now, marked as running; `None` when nothing is due or the
    /// limit is reached.
    pub fn pop(&mut self, now: Instant) -> Option<K> {
        if self.reconciling.len() >= self.limit {
            return None;
        }
        let key = self
            .order
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, k)| k)
            .find(|k| !self.busy(k))?
            .clone();
        self.unschedule(&key);
        self.reconciling.insert(key.clone());
        Some(key)
    }

    /// When [`Queue::pop`] may next return a key, if no other call happens meanwhile: the earliest
    /// deadline of a pending key that is not busy. `None` while the limit is reached (a
    /// [`Queue::finish`] comes first) or nothing is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.reconciling.len() >= self.limit {
            return None;
        }
        self.order
            .iter()
            .find(|(_, k)| !self.busy(k))
            .map(|(at, _)| *at)
    }

    /// Takes `keys` for a command. Granted at once when none of them is busy.
    pub fn claim(&mut self, keys: Vec<K>) -> Claim {
        if keys.iter().any(|k| self.busy(k)) {
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            self.waiting.push_back((ticket, keys));
            Claim::Waiting(ticket)
        } else {
            self.claimed.extend(keys);
            Claim::Granted
        }
    }

    /// Gives up a waiting claim (its claimant went away).
    pub fn cancel(&mut self, ticket: Ticket) {
        self.waiting.retain(|(t, _)| *t != ticket);
    }

    /// Gives back `key` (a reconcile finished, or a claim ended) and returns the waiting claims that
    /// this granted, oldest first.
    pub fn finish(&mut self, key: &K) -> Vec<Ticket> {
        self.reconciling.remove(key);
        self.claimed.remove(key);
        let mut granted = Vec::new();
        // Oldest first; a claim that is still blocked keeps the ones behind it on keys it shares
        // from jumping ahead of it.
        let mut blocked: BTreeSet<K> = BTreeSet::new();
        let mut still = VecDeque::new();
        for (ticket, keys) in std::mem::take(&mut self.waiting) {
            let free = keys.iter().all(|k| {
                !self.reconciling.contains(k) && !self.claimed.contains(k) && !blocked.contains(k)
            });
            if free {
                self.claimed.extend(keys);
                granted.push(ticket);
            } else {
                blocked.extend(keys.iter().cloned());
                still.push_back((ticket, keys));
            }
        }
        self.waiting = still;
        granted
    }

    /// Keys handed out by `pop` and not finished.
    pub fn running(&self) -> usize {
        self.reconciling.len()
    }

    pub fn pending(&self) -> usize {
        self.deadlines.len()
    }

    /// The deadline of a pending key.
    pub fn deadline(&self, key: &K) -> Option<Instant> {
        self.deadlines.get(key).copied()
    }

    pub fn is_running(&self, key: &K) -> bool {
        self.reconciling.contains(key)
    }

    /// Every waiting claim, removed (at shutdown: they will never be granted).
    pub fn drain_waiting(&mut self) -> Vec<Ticket> {
        self.waiting.drain(..).map(|(t, _)| t).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_has_one_entry_and_the_earliest_deadline_wins() {
        let now = Instant::now();
        let mut q = Queue::new(4);
        q.schedule("a", now + ms(500));
        q.schedule("a", now + ms(100));
        q.schedule("a", now + ms(900));
        assert_eq!(q.pending(), 1);
        assert_eq!(q.deadline(&"a"), Some(now + ms(100)));
        assert_eq!(q.pop(now), None, "not due yet");
        assert_eq!(q.next_deadline(), Some(now + ms(100)));
        tokio::time::advance(ms(100)).await;
        assert_eq!(q.pop(Instant::now()), Some("a"));
        assert_eq!(q.pop(Instant::now()), None, "handed out once");
    }

    #[tokio::test(start_paused = true)]
    async fn due_keys_come_out_in_deadline_order() {
        let now = Instant::now();
        let mut q = Queue::new(4);
        q.schedule("late", now + ms(30));
        q.schedule("early", now + ms(10));
        q.schedule("middle", now + ms(20));
        tokio::time::advance(ms(30)).await;
        let now = Instant::now();
        assert_eq!(
            [q.pop(now), q.pop(now), q.pop(now), q.pop(now)],
            [Some("early"), Some("middle"), Some("late"), None]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_scheduled_while_it_runs_runs_again_after_and_only_once() {
        let now = Instant::now();
        let mut q = Queue::new(4);
        q.schedule("a", now);
        assert_eq!(q.pop(now), Some("a"));
        // Three triggers arrive while it runs: they coalesce into one entry that waits.
        q.schedule("a", now);
        q.schedule("a", now + ms(5));
        q.schedule("a", now);
        assert_eq!(q.pop(now), None, "never two runs of one key at once");
        assert_eq!(
            q.next_deadline(),
            None,
            "a running key's entry does not wake the loop"
        );
        q.finish(&"a");
        assert_eq!(q.next_deadline(), Some(now));
        assert_eq!(q.pop(now), Some("a"));
        q.finish(&"a");
        assert_eq!(q.pop(now), None, "the triggers ran once");
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_limit_keys_run_at_once() {
        let now = Instant::now();
        let mut q = Queue::new(2);
        for k in ["a", "b", "c"] {
            q.schedule(k, now);
        }
        assert_eq!(q.pop(now), Some("a"));
        assert_eq!(q.pop(now), Some("b"));
        assert_eq!(q.pop(now), None);
        assert_eq!(q.next_deadline(), None, "full: the next event is a finish");
        q.finish(&"a");
        assert_eq!(q.pop(now), Some("c"));
        assert_eq!(q.running(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_waits_for_a_running_key_and_blocks_new_runs_of_it() {
        let now = Instant::now();
        let mut q = Queue::new(4);
        q.schedule("a", now);
        assert_eq!(q.pop(now), Some("a"));
        let Claim::Waiting(ticket) = q.claim(vec!["a", "b"]) else {
            panic!("a runs")
        };
        q.schedule("b", now);
        assert_eq!(q.pop(now), None, "b belongs to the waiting claim");
        assert_eq!(q.finish(&"a"), vec![ticket]);
        q.schedule("a", now);
        assert_eq!(q.pop(now), None, "both keys are claimed");
        q.finish(&"a");
        q.finish(&"b");
        assert_eq!(q.pop(now), Some("a"));
        assert_eq!(q.pop(now), Some("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn claims_do_not_count_against_the_limit_and_are_granted_oldest_first() {
        let now = Instant::now();
        let mut q = Queue::new(1);
        assert_eq!(q.claim(vec!["x"]), Claim::Granted);
        q.schedule("a", now);
        assert_eq!(q.pop(now), Some("a"), "a claim takes no reconcile place");
        let Claim::Waiting(first) = q.claim(vec!["a"]) else {
            panic!()
        };
        let Claim::Waiting(second) = q.claim(vec!["a", "y"]) else {
            panic!()
        };
        assert_eq!(q.finish(&"a"), vec![first]);
        assert_eq!(q.finish(&"a"), vec![second]);
        q.cancel(second);
        assert_eq!(q.drain_waiting(), Vec::<Ticket>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn unschedule_drops_a_pending_entry() {
        let now = Instant::now();
        let mut q = Queue::new(1);
        q.schedule("a", now);
        q.unschedule(&"a");
        assert_eq!(q.pop(now), None);
        assert_eq!(q.pending(), 0);
    }
}
