//! Rate limits (SPEC §5): a GCRA bucket per configured caller and class, and one global bucket for
//! every request the gateway sends upstream, with the IETF `RateLimit` fields they answer with.
//!
//! Buckets are governor's direct (unkeyed) limiters, built from the config: one per class of each
//! `[[clients]]` entry and one for the upstream, so their number is fixed by the file and no
//! request, however many unknown keys it tries, adds state. A bucket holds one atomic word (and a
//! second one saying when it will be full again). Pass-through identities, which the file cannot
//! name, get theirs from a bounded table ([`identities`]).

pub mod identities;
pub mod shared;
pub mod unauthenticated;

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::{ClientConfig, RateLimitConfig};
use crate::route::Operation;
use shared::SharedBuckets;

/// Which bucket of a caller an operation draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `list`, `search`, `get`.
    Reads,
    /// Every change, and `reveal_key` (it hands out a credential).
    Writes,
}

impl Class {
    /// The class of `op`.
    pub fn of(op: Operation) -> Class {
        if op.is_read() {
            Class::Reads
        } else {
            Class::Writes
        }
    }

    /// The policy name in the `RateLimit` fields and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Reads => "reads",
            Class::Writes => "writes",
        }
    }
}

/// What a bucket said about one request, in the terms of draft-ietf-httpapi-ratelimit-headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateStatus {
    /// The policy name: `reads`, `writes` or `upstream`.
    pub policy: &'static str,
    /// Requests allowed per window (`q`).
    pub quota: u32,
    /// The window in seconds (`w`).
    pub window: u64,
    /// Requests left that may come at once (`r`).
    pub remaining: u32,
    /// Whole seconds until more are available (`t`); 0 when the bucket is full.
    pub reset: u64,
}

impl RateStatus {
    /// The `RateLimit-Policy` item: `"writes";q=60;w=60`.
    pub fn policy_item(&self) -> String {
        self.item(("q", self.quota.into()), ("w", self.window))
    }

    /// The `RateLimit` item: `"writes";r=0;t=5`.
    pub fn limit_item(&self) -> String {
        self.item(("r", self.remaining.into()), ("t", self.reset))
    }

    /// `"policy";a=1;b=2`, written without `format!` (two of these go on every answer).
    fn item(&self, (a, x): (&str, u64), (b, y): (&str, u64)) -> String {
        let mut numbers = (itoa::Buffer::new(), itoa::Buffer::new());
        let (x, y) = (numbers.0.format(x), numbers.1.format(y));
        let mut out = String::with_capacity(self.policy.len() + x.len() + y.len() + 10);
        for part in ["\"", self.policy, "\";", a, "=", x, ";", b, "=", y] {
            out.push_str(part);
        }
        out
    }
}

/// The answer of a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let through; the status is what remains.
    Allowed(RateStatus),
    /// Refused; `status.reset` (at least 1) is also the `Retry-After`, and `wait` the exact time
    /// until the cost would be let through.
    Refused {
        /// What the caller is told.
        status: RateStatus,
        /// The exact wait.
        wait: Duration,
    },
}

impl Decision {
    /// The status, either way.
    pub fn status(&self) -> RateStatus {
        match self {
            Decision::Allowed(status) | Decision::Refused { status, .. } => *status,
        }
    }
}

type Gcra<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// One GCRA bucket: `quota` requests per `window`, up to `burst` at once.
pub struct Bucket<C: Clock = DefaultClock> {
    gcra: Gcra<C>,
    policy: &'static str,
    quota: u32,
    window: Duration,
    burst: u32,
    /// The time one request's worth takes to come back.
    period: Duration,
    /// When the bucket was made, on its clock: the origin of `full_at`.
    start: C::Instant,
    /// Nanoseconds after `start` from which the bucket is full again (a safe upper bound: it is
    /// never full earlier). A full bucket holds no information, so a table of them may drop it.
    full_at: AtomicU64,
}

impl<C: Clock> fmt::Debug for Bucket<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Bucket({} {}/{}s burst {})",
            self.policy,
            self.quota,
            self.window.as_secs(),
            self.burst
        )
    }
}

impl<C: Clock> Bucket<C> {
    /// A bucket on `clock` (a fake one in tests). `quota` and `burst` are clamped to at least 1
    /// (the config refuses 0).
    pub fn with_clock(
        policy: &'static str,
        quota: u32,
        window: Duration,
        burst: u32,
        clock: C,
    ) -> Self {
        let quota = quota.max(1);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let period = (window / quota).max(Duration::from_nanos(1));
        // `with_period` refuses only a zero period, which `max` rules out.
        let gcra_quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let start = clock.now();
        Bucket {
            gcra: RateLimiter::direct_with_clock(gcra_quota, clock).with_middleware(),
            policy,
            quota,
            window,
            burst: burst.get(),
            period,
            start,
            full_at: AtomicU64::new(0),
        }
    }

    /// Whether the bucket has refilled completely since its last charge (then it decides exactly
    /// as a new one would).
    pub fn is_full(&self) -> bool {
        self.elapsed() >= self.full_at.load(Ordering::Relaxed)
    }

    /// Nanoseconds since `start` on the bucket's clock.
    fn elapsed(&self) -> u64 {
        self.gcra.clock().now().duration_since(self.start).as_u64()
    }

    /// The bucket size.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The time one request's worth takes to come back.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Takes `cost` requests' worth, all or nothing. A cost above the burst is charged as the
    /// burst: the largest batch empties the bucket but is never impossible.
    pub fn charge(&self, cost: u32) -> Decision {
        let cost = cost.clamp(1, self.burst);
        let outcome = match NonZeroU32::new(cost) {
            Some(n) if n.get() > 1 => self.gcra.check_n(n),
            _ => Ok(self.gcra.check()),
        };
        match outcome {
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                // GCRA's theoretical arrival time is at most `burst - remaining` periods away.
                let refill = self.period.as_nanos() as u64 * u64::from(self.burst - remaining);
                self.full_at
                    .fetch_max(self.elapsed().saturating_add(refill), Ordering::Relaxed);
                let reset = if remaining < self.burst {
                    whole_seconds(snapshot.quota().replenish_interval())
                } else {
                    0
                };
                Decision::Allowed(self.status(remaining, reset))
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.gcra.clock().now());
                Decision::Refused {
                    status: self.status(0, whole_seconds(wait)),
                    wait,
                }
            }
            // The cost is at most the burst, so this cannot happen; refuse rather than panic.
            Err(_insufficient) => Decision::Refused {
                status: self.status(0, whole_seconds(self.window)),
                wait: self.window,
            },
        }
    }

    /// What the caller is told: `remaining` requests at once, more in `reset` seconds.
    pub(crate) fn status(&self, remaining: u32, reset: u64) -> RateStatus {
        RateStatus {
            policy: self.policy,
            quota: self.quota,
            window: self.window.as_secs(),
            remaining,
            reset,
        }
    }
}

/// Seconds rounded up, at least 1: a `Retry-After` of 0 would invite an immediate retry.
pub(crate) fn whole_seconds(duration: Duration) -> u64 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    seconds.max(1)
}

/// The two buckets of one configured caller.
#[derive(Debug)]
pub struct CallerLimits<C: Clock = DefaultClock> {
    reads: Bucket<C>,
    writes: Bucket<C>,
}

impl CallerLimits<DefaultClock> {
    /// The buckets of `client`: its own rates where set, `[rate_limit]`'s otherwise.
    pub fn for_client(client: &ClientConfig, defaults: &RateLimitConfig) -> Self {
        CallerLimits::with_clock(client, defaults, DefaultClock::default())
    }
}

/// The rates of one caller's two buckets, per minute, and their size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rates {
    /// `reads_per_minute`.
    pub reads: u32,
    /// `writes_per_minute`.
    pub writes: u32,
    /// `burst`, the size of each bucket.
    pub burst: u32,
}

impl Rates {
    /// `client`'s own rates where set, `[rate_limit]`'s otherwise.
    pub fn of(client: &ClientConfig, defaults: &RateLimitConfig) -> Rates {
        Rates {
            reads: client.reads_per_minute.unwrap_or(defaults.reads_per_minute),
            writes: client
                .writes_per_minute
                .unwrap_or(defaults.writes_per_minute),
            burst: client.burst.unwrap_or(defaults.burst),
        }
    }

    /// The `[rate_limit]` defaults (a caller the file does not name).
    pub fn defaults(defaults: &RateLimitConfig) -> Rates {
        Rates::of(&ClientConfig::default(), defaults)
    }
}

impl<C: Clock + Clone> CallerLimits<C> {
    /// The buckets of `client` on `clock`.
    pub fn with_clock(client: &ClientConfig, defaults: &RateLimitConfig, clock: C) -> Self {
        CallerLimits::new(Rates::of(client, defaults), clock)
    }

    /// Two buckets of `rates` on `clock`.
    pub fn new(rates: Rates, clock: C) -> Self {
        let minute = Duration::from_secs(60);
        CallerLimits {
            reads: Bucket::with_clock(
                Class::Reads.as_str(),
                rates.reads,
                minute,
                rates.burst,
                clock.clone(),
            ),
            writes: Bucket::with_clock(
                Class::Writes.as_str(),
                rates.writes,
                minute,
                rates.burst,
                clock,
            ),
        }
    }

    /// Whether both buckets have refilled completely.
    pub fn is_full(&self) -> bool {
        self.reads.is_full() && self.writes.is_full()
    }

    /// Whether `other` has the same rates and bursts (then a reload keeps this one, and the
    /// state in it).
    pub fn same_rates(&self, other: &CallerLimits<C>) -> bool {
        let rates = |b: &Bucket<C>| (b.quota, b.window, b.burst);
        rates(&self.reads) == rates(&other.reads) && rates(&self.writes) == rates(&other.writes)
    }

    /// The bucket of `class`.
    pub fn bucket(&self, class: Class) -> &Bucket<C> {
        match class {
            Class::Reads => &self.reads,
            Class::Writes => &self.writes,
        }
    }
}

/// The global cap on upstream requests: `upstream_requests_per_second`, a bucket of one second's
/// worth, and a wait of at most [`UpstreamLimit::MAX_WAIT`] for room.
#[derive(Debug)]
pub struct UpstreamLimit<C: Clock = DefaultClock> {
    bucket: Bucket<C>,
    dry_run: bool,
}

impl UpstreamLimit<DefaultClock> {
    /// The cap of `[rate_limit]`.
    pub fn new(config: &RateLimitConfig) -> Self {
        UpstreamLimit::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock> UpstreamLimit<C> {
    /// The longest a request waits for room before it is refused.
    pub const MAX_WAIT: Duration = Duration::from_secs(1);

    /// The cap of `[rate_limit]` on `clock`.
    pub fn with_clock(config: &RateLimitConfig, clock: C) -> Self {
        let n = config.upstream_requests_per_second;
        UpstreamLimit {
            bucket: Bucket::with_clock("upstream", n, Duration::from_secs(1), n, clock),
            dry_run: config.dry_run,
        }
    }

    /// Waits for room for one upstream request, at most [`Self::MAX_WAIT`]; the status of the
    /// refusal when there is none in that time. In dry run nothing waits: `Ok(true)` says the
    /// request would have been refused, for the caller to count and log.
    pub async fn acquire(&self) -> Result<bool, RateStatus> {
        let decided = self
            .acquire_with(|| std::future::ready(Some(self.bucket.charge(1))))
            .await;
        // This process's own bucket always decides.
        decided.unwrap_or(Ok(false))
    }

    /// [`Self::acquire`] from the bucket every replica shares (SPEC §11), or this one while Redis
    /// cannot be reached and `cluster.on_unavailable = "local"`; `None` when it cannot be
    /// reached and must refuse (`"refuse"`).
    pub async fn acquire_shared(&self, shared: &SharedBuckets) -> Option<Result<bool, RateStatus>> {
        self.acquire_with(|| shared.charge_or_fall_back("rl:upstream", &self.bucket, 1))
            .await
    }

    async fn acquire_with<F, Fut>(&self, charge: F) -> Option<Result<bool, RateStatus>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Option<Decision>>,
    {
        let started = Instant::now();
        loop {
            let (status, wait) = match charge().await? {
                Decision::Allowed(_) => return Some(Ok(false)),
                Decision::Refused { .. } if self.dry_run => return Some(Ok(true)),
                Decision::Refused { status, wait } => (status, wait),
            };
            // Sleep until the bucket should have room, if that is within the budget; another
            // request may take the room first, so check again after.
            if started.elapsed() + wait > Self::MAX_WAIT {
                return Some(Err(status));
            }
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn client(reads: Option<u32>, writes: Option<u32>, burst: Option<u32>) -> ClientConfig {
        ClientConfig {
            name: "team".into(),
            reads_per_minute: reads,
            writes_per_minute: writes,
            burst,
            ..ClientConfig::default()
        }
    }

    fn remaining(decision: Decision) -> Option<u32> {
        match decision {
            Decision::Allowed(status) => Some(status.remaining),
            Decision::Refused { .. } => None,
        }
    }

    #[test]
    fn a_burst_empties_the_bucket_then_it_refills_at_the_rate() {
        let clock = FakeRelativeClock::default();
        let bucket = Bucket::with_clock("writes", 60, Duration::from_secs(60), 3, clock.clone());
        assert_eq!(remaining(bucket.charge(1)), Some(2));
        assert_eq!(remaining(bucket.charge(1)), Some(1));
        assert_eq!(remaining(bucket.charge(1)), Some(0));
        let Decision::Refused { status, wait } = bucket.charge(1) else {
            panic!("the fourth request in the same instant is over the burst");
        };
        assert_eq!(wait, Duration::from_secs(1));
        assert_eq!((status.remaining, status.reset), (0, 1));
        assert_eq!(status.limit_item(), "\"writes\";r=0;t=1");
        assert_eq!(status.policy_item(), "\"writes\";q=60;w=60");
        // 60 a minute is one a second: half a second later, still nothing; a second, one more.
        clock.advance(Duration::from_millis(500));
        assert_eq!(remaining(bucket.charge(1)), None);
        clock.advance(Duration::from_millis(500));
        assert_eq!(remaining(bucket.charge(1)), Some(0));
        // After a quiet spell the bucket is full again: one taken, two left, more within 1 s.
        clock.advance(Duration::from_secs(60));
        let Decision::Allowed(status) = bucket.charge(1) else {
            panic!("refilled")
        };
        assert_eq!((status.remaining, status.reset), (2, 1));
    }

    #[test]
    fn retry_after_is_whole_seconds_and_never_zero() {
        let clock = FakeRelativeClock::default();
        // 600 a minute: one every 100 ms, which rounds up to 1 s.
        let bucket = Bucket::with_clock("reads", 600, Duration::from_secs(60), 1, clock.clone());
        assert!(matches!(bucket.charge(1), Decision::Allowed(_)));
        let Decision::Refused { status, wait } = bucket.charge(1) else {
            panic!()
        };
        assert_eq!((wait, status.reset), (Duration::from_millis(100), 1));
        // 2 a minute: 30 s between requests.
        let slow = Bucket::with_clock("writes", 2, Duration::from_secs(60), 1, clock.clone());
        assert!(matches!(slow.charge(1), Decision::Allowed(_)));
        clock.advance(Duration::from_millis(10_500));
        assert_eq!(slow.charge(1).status().reset, 20, "19.5 s rounds up");
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn a_batch_costs_one_per_id_capped_at_the_burst() {
        let clock = FakeRelativeClock::default();
        let bucket = Bucket::with_clock("writes", 60, Duration::from_secs(60), 10, clock.clone());
        assert_eq!(remaining(bucket.charge(4)), Some(6));
        assert_eq!(
            remaining(bucket.charge(7)),
            None,
            "all or nothing: 6 are left"
        );
        assert_eq!(remaining(bucket.charge(6)), Some(0));
        clock.advance(Duration::from_secs(60));
        // The largest batch empties a full bucket but is never impossible.
        assert_eq!(remaining(bucket.charge(100)), Some(0));
        let Decision::Refused { wait, .. } = bucket.charge(100) else {
            panic!()
        };
        assert_eq!(wait, Duration::from_secs(10), "the whole burst must refill");
    }

    #[test]
    fn callers_and_classes_have_their_own_buckets() {
        let clock = FakeRelativeClock::default();
        let defaults = RateLimitConfig {
            burst: 2,
            ..RateLimitConfig::default()
        };
        let a = CallerLimits::with_clock(&client(None, None, None), &defaults, clock.clone());
        let b = CallerLimits::with_clock(&client(None, Some(1), Some(1)), &defaults, clock.clone());
        for _ in 0..2 {
            assert!(matches!(
                a.bucket(Class::Writes).charge(1),
                Decision::Allowed(_)
            ));
        }
        assert!(matches!(
            a.bucket(Class::Writes).charge(1),
            Decision::Refused { .. }
        ));
        // A's writes are spent; its reads and B's writes are not.
        assert!(matches!(
            a.bucket(Class::Reads).charge(1),
            Decision::Allowed(_)
        ));
        let Decision::Allowed(status) = b.bucket(Class::Writes).charge(1) else {
            panic!()
        };
        assert_eq!(
            (status.quota, status.remaining),
            (1, 0),
            "B's own rate and burst"
        );
        assert!(matches!(
            b.bucket(Class::Writes).charge(1),
            Decision::Refused { .. }
        ));
        assert_eq!(Class::of(Operation::RevealKey), Class::Writes);
        assert_eq!(Class::of(Operation::Search), Class::Reads);
    }

    #[tokio::test(start_paused = true)]
    async fn the_upstream_cap_waits_at_most_a_second_then_refuses() {
        let clock = FakeRelativeClock::default();
        let config = RateLimitConfig {
            upstream_requests_per_second: 5,
            ..RateLimitConfig::default()
        };
        let limit = UpstreamLimit::with_clock(&config, clock.clone());
        for _ in 0..5 {
            assert_eq!(limit.acquire().await, Ok(false));
        }
        // No room comes (the fake clock stands still): refused once a second has passed.
        let started = Instant::now();
        let refused = limit.acquire().await.unwrap_err();
        assert!(started.elapsed() <= UpstreamLimit::<FakeRelativeClock>::MAX_WAIT);
        assert_eq!(
            (refused.policy, refused.quota, refused.window),
            ("upstream", 5, 1)
        );
        assert!(refused.reset >= 1);
        // Room that comes within the second is waited for.
        let advance = clock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            advance.advance(Duration::from_millis(300));
        });
        assert_eq!(limit.acquire().await, Ok(false));
    }

    #[tokio::test(start_paused = true)]
    async fn dry_run_refuses_nothing_and_reports_what_it_would_refuse() {
        let clock = FakeRelativeClock::default();
        let config = RateLimitConfig {
            upstream_requests_per_second: 1,
            dry_run: true,
            ..RateLimitConfig::default()
        };
        let limit = UpstreamLimit::with_clock(&config, clock);
        assert_eq!(limit.acquire().await, Ok(false));
        let started = Instant::now();
        assert_eq!(limit.acquire().await, Ok(true));
        assert_eq!(started.elapsed(), Duration::ZERO, "a dry run never waits");
    }
}
