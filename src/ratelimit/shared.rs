//! Rate-limit buckets every replica shares (SPEC §11): the same GCRA as governor's, one round
//! trip per decision as a Lua script on Redis, on Redis's own clock.
//!
//! The script is governor's algorithm in integer microseconds (Lua numbers are doubles, exact far
//! beyond today's microseconds since 1970): emission interval `T`, tolerance `τ = T·(burst − 1)`, a
//! cost of `n` allowed when `now ≥ TAT + T·(n − 1) − τ`, the new TAT `max(TAT, now) + T·n`. It
//! writes nothing when it refuses, and the key expires when its bucket is full again, so an idle
//! caller costs nothing. The decision it returns is turned into the same [`Decision`] (remaining,
//! `Retry-After`, the `RateLimit` fields) as the local bucket's, so a caller sees no difference
//! between one replica and five.

use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use redis::Script;

use super::{whole_seconds, Bucket, Decision};
use crate::cluster::{Cluster, ClusterError, OnUnavailable};

/// GCRA on `KEYS[1]`: `ARGV` = T (µs), τ (µs), cost. Returns `{1, remaining}` or `{0, wait µs}`.
/// Numbers are written with `%d`: Lua's own number-to-string keeps 14 digits, too few.
const GCRA: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local additional = t * (cost - 1)
local tat = tonumber(redis.call('GET', KEYS[1])) or now
local earliest = tat + additional - tau
if now < earliest then
  return {0, earliest - now}
end
local next = math.max(tat, now) + t + additional
redis.call('SET', KEYS[1], string.format('%d', next), 'PX', string.format('%d', math.ceil((next - now) / 1000)))
return {1, math.floor(math.min(now + tau + t - next, tau + t) / t)}
";

/// Charges buckets in the shared Redis.
pub struct SharedBuckets {
    cluster: Arc<Cluster>,
    script: Script,
}

impl std::fmt::Debug for SharedBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedBuckets")
    }
}

impl SharedBuckets {
    /// Buckets in `cluster`.
    pub fn new(cluster: Arc<Cluster>) -> SharedBuckets {
        SharedBuckets {
            cluster,
            script: Script::new(GCRA),
        }
    }

    /// The cluster they live in.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// [`Self::charge`], deciding with `bucket` itself (this replica's own) while Redis cannot be
    /// reached and `cluster.on_unavailable = "local"`; `None` means refuse (`"refuse"`).
    pub async fn charge_or_fall_back<C: Clock>(
        &self,
        name: &str,
        bucket: &Bucket<C>,
        cost: u32,
    ) -> Option<Decision> {
        match self.charge(name, bucket, cost).await {
            Ok(decision) => Some(decision),
            Err(error) => {
                if let ClusterError::Redis(error) = &error {
                    // Unreachable Redis is logged once by the cluster; a refused command is not.
                    tracing::warn!(%error, "cluster: a shared rate limit could not be decided");
                }
                match self.cluster.on_unavailable() {
                    OnUnavailable::Local => Some(bucket.charge(cost)),
                    OnUnavailable::Refuse => None,
                }
            }
        }
    }

    /// Takes `cost` of `bucket`'s rates (at most its size, all or nothing) from the shared bucket
    /// `name` (under `cluster.key_prefix`). `EVALSHA`, loading the script when Redis lost it (a
    /// restart flushes scripts).
    pub async fn charge<C: Clock>(
        &self,
        name: &str,
        bucket: &Bucket<C>,
        cost: u32,
    ) -> Result<Decision, ClusterError> {
        let cluster = &self.cluster;
        let burst = bucket.burst();
        let cost = cost.clamp(1, burst);
        let t = (bucket.period().as_micros() as u64).max(1);
        let tau = t * u64::from(burst - 1);
        let key = cluster.key(name);
        let mut connection = cluster.connection();
        let mut invocation = self.script.key(key);
        invocation.arg(t).arg(tau).arg(cost);
        let (allowed, n): (i64, i64) = cluster
            .call(async move { invocation.invoke_async(&mut connection).await })
            .await?;
        let n = u64::try_from(n).unwrap_or(0);
        Ok(if allowed == 1 {
            let remaining = u32::try_from(n).unwrap_or(0).min(burst);
            let reset = if remaining < burst {
                whole_seconds(bucket.period())
            } else {
                0
            };
            Decision::Allowed(bucket.status(remaining, reset))
        } else {
            let wait = Duration::from_micros(n);
            Decision::Refused {
                status: bucket.status(0, whole_seconds(wait)),
                wait,
            }
        })
    }
}
