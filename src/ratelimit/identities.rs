//! Buckets for callers the configuration cannot name (SPEC §3): each pass-through identity gets
//! its own [`CallerLimits`] with the `[rate_limit]` defaults the first time it is seen, in a
//! table that never holds more than `rate_limit.max_identities` of them, so no number of distinct
//! tokens grows memory past that bound.
//!
//! The table is ordered by last use. Before a new identity goes in, identities at the idle end
//! whose buckets have refilled completely are dropped (they hold no information: a new bucket
//! decides exactly as they would), and when the table is still full the longest-idle identity
//! goes. One evicted while its buckets were not yet full starts again with full buckets if it
//! comes back: with the bound at its default of 100 000, that takes 100 000 other identities
//! seen in the meantime, each of them limited in turn, and the global upstream cap bounds them
//! all together.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, DefaultClock};
use lru::LruCache;

use super::{CallerLimits, Rates};

/// How many identities at the idle end are looked at for a full bucket per new identity: enough
/// to drain idle ones as fast as new ones come, while keeping the insert O(1).
const DROP_AT_MOST: usize = 4;

/// The key of an identity: the first 16 bytes of the SHA-256 of its credential (never the
/// credential itself).
pub type IdentityKey = [u8; 16];

/// Per-identity buckets, at most `max` identities.
pub struct Identities<C: Clock = DefaultClock> {
    table: Mutex<LruCache<IdentityKey, Arc<CallerLimits<C>>>>,
    rates: Rates,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for Identities<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({} of at most {})", self.len(), self.max())
    }
}

impl Identities<DefaultClock> {
    /// A table of at most `max` identities (at least 1), each with buckets of `rates`.
    pub fn new(max: usize, rates: Rates) -> Self {
        Identities::with_clock(max, rates, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Identities<C> {
    /// [`Identities::new`] on `clock` (a fake one in tests).
    pub fn with_clock(max: usize, rates: Rates, clock: C) -> Self {
        let max = NonZeroUsize::new(max).unwrap_or(NonZeroUsize::MIN);
        Identities {
            table: Mutex::new(LruCache::new(max)),
            rates,
            clock,
        }
    }

    /// The buckets of `key`, made (with full buckets) if it is not in the table.
    pub fn limits(&self, key: &IdentityKey) -> Arc<CallerLimits<C>> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(limits) = table.get(key) {
            return limits.clone();
        }
        for _ in 0..DROP_AT_MOST {
            match table.peek_lru() {
                Some((_, oldest)) if oldest.is_full() => {
                    table.pop_lru();
                }
                _ => break,
            }
        }
        // At the bound, `push` evicts the longest-idle identity to make room.
        let limits = Arc::new(CallerLimits::new(self.rates, self.clock.clone()));
        table.push(*key, limits.clone());
        limits
    }

    /// The rates every identity gets.
    pub fn rates(&self) -> Rates {
        self.rates
    }
}

impl<C: Clock> Identities<C> {
    /// How many identities the table holds now.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the table holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most it holds.
    pub fn max(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cap()
            .get()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;
    use crate::ratelimit::{Class, Decision};

    const RATES: Rates = Rates {
        reads: 60,
        writes: 60,
        burst: 2,
    };

    fn key(n: u32) -> IdentityKey {
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(&n.to_be_bytes());
        key
    }

    fn charge(table: &Identities<FakeRelativeClock>, n: u32) -> bool {
        matches!(
            table.limits(&key(n)).bucket(Class::Writes).charge(1),
            Decision::Allowed(_)
        )
    }

    #[test]
    fn each_identity_has_its_own_buckets_with_the_defaults() {
        let table = Identities::with_clock(10, RATES, FakeRelativeClock::default());
        assert!(charge(&table, 1) && charge(&table, 1));
        assert!(!charge(&table, 1), "the burst of 2 is spent");
        assert!(charge(&table, 2), "another identity is not affected");
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn the_table_never_holds_more_than_its_bound() {
        let table = Identities::with_clock(1000, RATES, FakeRelativeClock::default());
        for n in 0..300_000 {
            charge(&table, n);
        }
        assert_eq!(table.len(), 1000);
        // The newest are kept (its first unit stays spent); the longest idle went first.
        assert!(charge(&table, 299_999));
        assert!(!charge(&table, 299_999));
    }

    #[test]
    fn a_busy_identity_survives_a_flood_of_new_ones_until_it_idles_longest() {
        let table = Identities::with_clock(3, RATES, FakeRelativeClock::default());
        assert!(charge(&table, 1) && charge(&table, 1) && !charge(&table, 1));
        charge(&table, 2);
        table.limits(&key(1)); // used again: no longer the longest idle
        charge(&table, 3);
        charge(&table, 4); // the table is full: 2 goes, not 1
        assert!(!charge(&table, 1), "1 kept its spent bucket");
        for n in 5..8 {
            charge(&table, n); // 3, 4, then 1 are now the longest idle, in turn
        }
        assert!(charge(&table, 1), "1 was evicted and starts full");
    }

    #[test]
    fn identities_whose_buckets_refilled_are_dropped_first() {
        let clock = FakeRelativeClock::default();
        let table = Identities::with_clock(100, RATES, clock.clone());
        for n in 0..8 {
            charge(&table, n);
        }
        assert_eq!(table.len(), 8);
        // 60 a minute: one unit comes back each second.
        clock.advance(Duration::from_millis(999));
        charge(&table, 100);
        assert_eq!(table.len(), 9, "not yet full again: nothing dropped");
        clock.advance(Duration::from_millis(1));
        charge(&table, 101);
        assert_eq!(table.len(), 10 - DROP_AT_MOST, "the idle end drained");
        for n in 102..104 {
            charge(&table, n);
        }
        assert!(table.len() <= 4, "{}", table.len());
        // A bucket still refilling is never dropped.
        let spent = Identities::with_clock(100, RATES, clock.clone());
        charge(&spent, 1);
        charge(&spent, 1);
        clock.advance(Duration::from_secs(1));
        charge(&spent, 2);
        charge(&spent, 2);
        assert_eq!(spent.len(), 2, "1 needs 2 s to refill its 2 units");
        clock.advance(Duration::from_secs(1));
        charge(&spent, 3);
        assert_eq!(spent.len(), 2, "1 dropped once full");
    }
}
