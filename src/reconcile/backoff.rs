//! Retry delays per key: exponential with jitter, capped, and forgotten after a success.
//!
//! The shape of kube-runtime's `DefaultBackoff`: 0.8 s, doubling, with jitter, capped at 30 s.
//! backon's jitter adds a random 0-100 % of the current delay, so the doubling stops at 15 s and
//! the jitter spreads the retries of many keys failing on one dead host over 15-30 s instead of
//! sending them all at once.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The first delay.
pub const MIN_DELAY: Duration = Duration::from_millis(800);
/// Where the doubling stops; jitter makes the longest delay twice this.
pub const MAX_DELAY: Duration = Duration::from_secs(15);

/// The delays of a fresh failure sequence.
pub fn builder() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(MIN_DELAY)
        .with_max_delay(MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// One backoff sequence per key.
#[derive(Debug)]
pub struct Backoffs<K> {
    keys: HashMap<K, ExponentialBackoff>,
}

impl<K> Default for Backoffs<K> {
    fn default() -> Self {
        Backoffs {
            keys: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> Backoffs<K> {
    /// The delay before `key`'s next attempt after one more failure.
    pub fn next(&mut self, key: K) -> Duration {
        self.keys
            .entry(key)
            .or_insert_with(|| builder().build())
            .next()
            // `without_max_times`: the sequence never ends; the cap is the fallback all the same.
            .unwrap_or(MAX_DELAY * 2)
    }

    /// The delay before `key`'s next attempt after a failure that retrying cannot fix by itself:
    /// the longest of the schedule at once ([`MAX_DELAY`] plus up to 100 % jitter). Later
    /// failures of `key` keep that delay until a [`Backoffs::reset`].
    pub fn longest(&mut self, key: K) -> Duration {
        let delays = self
            .keys
            .entry(key)
            .insert_entry(builder().with_min_delay(MAX_DELAY).build())
            .into_mut();
        delays.next().unwrap_or(MAX_DELAY * 2)
    }

    /// Forgets `key`'s failures: its next failure waits [`MIN_DELAY`] again.
    pub fn reset(&mut self, key: &K) {
        self.keys.remove(key);
    }

    /// Keys that are backing off.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_up_to_the_cap_and_reset_after_a_success() {
        let mut b = Backoffs::default();
        let delays: Vec<Duration> = (0..10).map(|_| b.next("k")).collect();
        let mut floor = MIN_DELAY;
        for d in &delays {
            assert!(
                *d >= floor && *d <= floor * 2,
                "{d:?} not in [{floor:?}, {:?}]: {delays:?}",
                floor * 2
            );
            floor = (floor * 2).min(MAX_DELAY);
        }
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)));
        b.reset(&"k");
        let again = b.next("k");
        assert!(again >= MIN_DELAY && again <= MIN_DELAY * 2, "{again:?}");
    }

    #[test]
    fn the_longest_delay_comes_at_once_and_stays_until_a_reset() {
        let mut b = Backoffs::default();
        b.next("k");
        for d in [b.longest("k"), b.next("k"), b.next("k")] {
            assert!(d >= MAX_DELAY && d <= MAX_DELAY * 2, "{d:?}");
        }
        b.reset(&"k");
        let again = b.next("k");
        assert!(again >= MIN_DELAY && again <= MIN_DELAY * 2, "{again:?}");
    }

    #[test]
    fn keys_back_off_independently() {
        let mut b = Backoffs::default();
        for _ in 0..6 {
            b.next("failing");
        }
        let other = b.next("other");
        assert!(other <= MIN_DELAY * 2, "{other:?}");
        assert_eq!(b.len(), 2);
    }
}
