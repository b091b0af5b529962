//! Refusals before a caller is known, limited per source address (SPEC §5): without this, any
//! client that can reach the listener fills the audit trail with fsync'd `rejected` records
//! (eight connections sending an unknown key wrote 17.8 MB in five seconds).
//!
//! Each address has a GCRA bucket of `rate_limit.unauthenticated_per_minute` (burst
//! [`BURST`]). Within it, a refusal is answered and recorded as usual. Past it, the answer is a
//! 429 with no record of its own: the address's refusals are counted in a window that opens with
//! the first of them, and one summary record per address and window (a minute) tells how many
//! there were ([`Summary`], written by whoever drains [`Unauthenticated::due`]).
//!
//! The table holds at most `rate_limit.max_identities` addresses, ordered by last use: addresses
//! whose bucket refilled and which have nothing to report are dropped first, then the longest
//! idle (its pending count, if any, is kept for the next summary).

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use governor::clock::{Clock, DefaultClock, Reference};
use lru::LruCache;

use super::{Bucket, Decision, RateStatus};
use crate::route::Operation;

/// The bucket size of each address: a person retyping a key, or a script's first few tries,
/// are recorded one by one.
pub const BURST: u32 = 20;

/// How long the refusals of one summary are counted for.
pub const WINDOW: Duration = Duration::from_secs(60);

/// How many idle addresses at the end of the table are looked at for dropping per new one.
const DROP_AT_MOST: usize = 4;

/// What a refusal that is not recorded on its own is summed up by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The source address.
    pub ip: IpAddr,
    /// The refusals not recorded one by one.
    pub suppressed: u64,
    /// The first of them: its method, path (as logged) and operation.
    pub method: http::Method,
    /// See `method`.
    pub path: String,
    /// See `method`.
    pub op: Operation,
    /// When the first of them came.
    pub since: SystemTime,
    /// From the first to the last of them.
    pub span: Duration,
}

/// What the limit says about one refusal.
#[derive(Debug)]
pub enum Verdict {
    /// Within the limit: answer and record it as usual.
    Record(RateStatus),
    /// Past it: answer 429 with this status, and record nothing for this request.
    Suppress(RateStatus),
}

struct Address<C: Clock> {
    bucket: Bucket<C>,
    /// The refusals counted since the window opened, and when that was.
    window: Option<(Summary, C::Instant)>,
}

/// Per-address buckets and counts of refusals before authentication.
pub struct Unauthenticated<C: Clock = DefaultClock> {
    table: Mutex<Table<C>>,
    per_minute: u32,
    clock: C,
}

struct Table<C: Clock> {
    addresses: LruCache<IpAddr, Address<C>>,
    /// Counts of addresses that left the table with their window still open.
    evicted: Vec<Summary>,
}

impl<C: Clock> std::fmt::Debug for Unauthenticated<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Unauthenticated({}/min, {} addresses)",
            self.per_minute,
            self.len()
        )
    }
}

impl Unauthenticated<DefaultClock> {
    /// `per_minute` refusals per address (burst [`BURST`]), at most `max` addresses.
    pub fn new(per_minute: u32, max: usize) -> Self {
        Unauthenticated::with_clock(per_minute, max, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Unauthenticated<C> {
    /// [`Unauthenticated::new`] on `clock` (a fake one in tests).
    pub fn with_clock(per_minute: u32, max: usize, clock: C) -> Self {
        let max = NonZeroUsize::new(max).unwrap_or(NonZeroUsize::MIN);
        Unauthenticated {
            table: Mutex::new(Table {
                addresses: LruCache::new(max),
                evicted: Vec::new(),
            }),
            per_minute,
            clock,
        }
    }

    /// Charges one refusal of a request (`method`, `path`, `op`) from `ip`.
    pub fn refuse(&self, ip: IpAddr, method: &http::Method, path: &str, op: Operation) -> Verdict {
        let mut table = self.lock();
        if !table.addresses.contains(&ip) {
            table.make_room();
        }
        let address = table.addresses.get_or_insert_mut(ip, || Address {
            bucket: Bucket::with_clock(
                "unauthenticated",
                self.per_minute,
                Duration::from_secs(60),
                BURST,
                self.clock.clone(),
            ),
            window: None,
        });
        let (status, refused) = match address.bucket.charge(1) {
            Decision::Allowed(status) => (status, false),
            Decision::Refused { status, .. } => (status, true),
        };
        if !refused {
            return Verdict::Record(status);
        }
        let now = self.clock.now();
        match &mut address.window {
            Some((summary, opened)) => {
                summary.suppressed += 1;
                summary.span = Duration::from_nanos(now.duration_since(*opened).as_u64());
            }
            None => {
                let summary = Summary {
                    ip,
                    suppressed: 1,
                    method: method.clone(),
                    path: path.to_owned(),
                    op,
                    since: SystemTime::now(),
                    span: Duration::ZERO,
                };
                address.window = Some((summary, now));
            }
        }
        Verdict::Suppress(status)
    }

    /// The summaries whose window has closed (a minute after it opened), and those of addresses
    /// that left the table; their counts start again from zero.
    pub fn due(&self) -> Vec<Summary> {
        let now = self.clock.now();
        let mut table = self.lock();
        let mut due = std::mem::take(&mut table.evicted);
        for (_, address) in table.addresses.iter_mut() {
            let closed = address.window.as_ref().is_some_and(|(_, opened)| {
                now.duration_since(*opened).as_u64() >= WINDOW.as_nanos() as u64
            });
            if closed {
                due.extend(address.window.take().map(|(summary, _)| summary));
            }
        }
        due
    }
}

impl<C: Clock> Unauthenticated<C> {
    /// Every pending summary, closed or not (at shutdown, or when a reload replaces the table).
    pub fn drain(&self) -> Vec<Summary> {
        let mut table = self.lock();
        let mut due = std::mem::take(&mut table.evicted);
        for (_, address) in table.addresses.iter_mut() {
            due.extend(address.window.take().map(|(summary, _)| summary));
        }
        due
    }

    /// How many addresses the table holds now.
    pub fn len(&self) -> usize {
        self.lock().addresses.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rate and bound it was made with (a reload keeps the table while they stay).
    pub fn settings(&self) -> (u32, usize) {
        (self.per_minute, self.lock().addresses.cap().get())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table<C>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<C: Clock> Table<C> {
    /// Room for one more address: idle ones with a full bucket and nothing to report go first;
    /// at the bound the longest idle goes, its pending count kept for the next summary.
    fn make_room(&mut self) {
        for _ in 0..DROP_AT_MOST {
            match self.addresses.peek_lru() {
                Some((_, oldest)) if oldest.window.is_none() && oldest.bucket.is_full() => {
                    self.addresses.pop_lru();
                }
                _ => break,
            }
        }
        if self.addresses.len() == self.addresses.cap().get() {
            if let Some((_, oldest)) = self.addresses.pop_lru() {
                self.evicted
                    .extend(oldest.window.map(|(summary, _)| summary));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x7f00_0000_u32 + n))
    }

    fn refuse(table: &Unauthenticated<FakeRelativeClock>, n: u32) -> bool {
        matches!(
            table.refuse(
                ip(n),
                &http::Method::DELETE,
                "/api/token/1",
                Operation::Delete
            ),
            Verdict::Record(_)
        )
    }

    #[test]
    fn within_the_burst_refusals_are_recorded_then_counted_per_address() {
        let clock = FakeRelativeClock::default();
        let table = Unauthenticated::with_clock(60, 10, clock.clone());
        for _ in 0..BURST {
            assert!(refuse(&table, 1));
        }
        for _ in 0..5 {
            assert!(!refuse(&table, 1), "past the burst: no record of its own");
        }
        assert!(refuse(&table, 2), "another address has its own bucket");
        assert!(table.due().is_empty(), "the window is still open");
        clock.advance(Duration::from_millis(500));
        assert!(!refuse(&table, 1));
        clock.advance(WINDOW);
        let due = table.due();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].ip, due[0].suppressed), (ip(1), 6));
        assert_eq!(due[0].op, Operation::Delete);
        assert_eq!(due[0].span, Duration::from_millis(500));
        assert!(table.due().is_empty(), "reported once");
        // The bucket refilled meanwhile: recorded again.
        assert!(refuse(&table, 1));
    }

    #[test]
    fn the_table_is_bounded_and_an_evicted_count_is_still_reported() {
        let clock = FakeRelativeClock::default();
        let table = Unauthenticated::with_clock(1, 100, clock.clone());
        for _ in 0..=BURST {
            refuse(&table, 0);
        }
        for n in 1..100_000 {
            refuse(&table, n);
        }
        assert_eq!(table.len(), 100);
        let due = table.due();
        assert_eq!(
            due.len(),
            1,
            "address 0 left the table with one refusal counted"
        );
        assert_eq!((due[0].ip, due[0].suppressed), (ip(0), 1));
    }

    #[test]
    fn quiet_addresses_with_nothing_to_report_are_dropped_first() {
        let clock = FakeRelativeClock::default();
        let table = Unauthenticated::with_clock(60, 100, clock.clone());
        for n in 0..10 {
            refuse(&table, n);
        }
        clock.advance(Duration::from_secs(2));
        refuse(&table, 100);
        assert_eq!(table.len(), 11 - DROP_AT_MOST);
        assert_eq!(table.drain(), Vec::new());
    }
}
