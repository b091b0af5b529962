//! Several replicas as one gateway (SPEC §11): the Redis every replica with the same
//! `[cluster]` shares, how long a call to it may take, and whether it answers.
//!
//! Every call is bounded by `cluster.timeout_ms`, so a request never waits on a dead or stuck
//! Redis longer than that. The connection is made lazily and remade in the background (redis-rs's
//! `ConnectionManager`), so a replica starts, and serves, while Redis is down. The state is a
//! flag: a call that fails or times out turns it down, a call that succeeds turns it up; each
//! change is logged once and shown by `tokengate_cluster_up`, and the layers fall back (rate
//! limits: local buckets or a 503; token locks: a 503) while it is down.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisResult;

use crate::metrics::Metrics;

/// What a replica does with a rate limit while Redis cannot be reached (`cluster.on_unavailable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Decide with this replica's own buckets (each replica then allows the full rate).
    Local,
    /// Refuse with 503 `cluster_unavailable`.
    Refuse,
}

/// Why a call to Redis did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No answer within `cluster.timeout_ms`.
    #[error("Redis did not answer within {0} ms")]
    Timeout(u64),
    /// Redis refused, or the connection failed.
    #[error("Redis failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis failed moments ago: not asked again yet.
    #[error("Redis cannot be reached (it failed less than {} ms ago)", RETRY_EVERY.as_millis())]
    Down,
}

/// The shared Redis and its state.
pub struct Cluster {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    on_unavailable: OnUnavailable,
    up: AtomicBool,
    /// While Redis is down, calls fail at once for this long after a failure, then one tries
    /// again: requests do not each pay the timeout during an outage.
    retry_after_ms: AtomicU64,
    metrics: Arc<Metrics>,
}

/// How long calls fail fast after a failure, before one tries Redis again.
const RETRY_EVERY: Duration = Duration::from_millis(250);

impl std::fmt::Debug for Cluster {
    // The URL may carry a password: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Cluster(prefix {:?}, timeout {:?}, up {})",
            self.prefix,
            self.timeout,
            self.is_up()
        )
    }
}

impl Cluster {
    /// A cluster on the Redis at `url` (not connected yet: the first call connects). Errors name
    /// what is wrong with the URL without repeating it (it may hold a password).
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        on_unavailable: OnUnavailable,
        metrics: Arc<Metrics>,
    ) -> Result<Cluster, String> {
        let client = redis::Client::open(url).map_err(|e| {
            format!(
                "is not a usable Redis URL (redis://[user:password@]host[:port][/db]): {:?}",
                e.kind()
            )
        })?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            // Connecting may take longer than one call may wait: it happens in the background,
            // and calls meanwhile give up at the timeout.
            .set_connection_timeout(Some(timeout.max(Duration::from_secs(1))))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("cannot be used: {:?}", e.kind()))?;
        Ok(Cluster {
            connection,
            prefix: prefix.to_owned(),
            timeout,
            on_unavailable,
            up: AtomicBool::new(true),
            retry_after_ms: AtomicU64::new(0),
            metrics,
        })
    }

    /// `cluster.on_unavailable`.
    pub fn on_unavailable(&self) -> OnUnavailable {
        self.on_unavailable
    }

    /// Whether the last call got an answer.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The key `name` under `cluster.key_prefix`.
    pub fn key(&self, name: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + name.len());
        key.push_str(&self.prefix);
        key.push_str(name);
        key
    }

    /// A connection to send one call on (a handle to the shared one).
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Runs one call, at most `cluster.timeout_ms`, and records whether Redis answered.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, ClusterError> {
        if !self.is_up() && now_ms() < self.retry_after_ms.load(Ordering::Relaxed) {
            return Err(ClusterError::Down);
        }
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) if !is_unreachable(&error) => {
                // Redis answered (with an error of the command): it is up.
                self.mark(true);
                return Err(ClusterError::Redis(error));
            }
            Ok(Err(error)) => Err(ClusterError::Redis(error)),
            Err(_elapsed) => Err(ClusterError::Timeout(self.timeout.as_millis() as u64)),
        };
        self.mark(result.is_ok());
        if result.is_err() {
            self.metrics.cluster_error();
            self.retry_after_ms
                .store(now_ms() + RETRY_EVERY.as_millis() as u64, Ordering::Relaxed);
        }
        result
    }

    /// Records how long a change waited for its tokens' shared locks.
    pub fn lock_waited(&self, waited: Duration) {
        self.metrics.cluster_lock_wait(waited);
    }

    /// Whether Redis answers a `PING` now (for `check` and `/readyz`).
    pub async fn ping(&self) -> Result<(), ClusterError> {
        let mut connection = self.connection();
        self.call(async move {
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        })
        .await
        .map(|_| ())
    }

    fn mark(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) == up {
            return;
        }
        self.metrics.set_cluster_up(up);
        if up {
            tracing::warn!(
                "cluster: Redis answers again; shared rate limits and token locks resume"
            );
        } else {
            tracing::error!(
                fallback = ?self.on_unavailable,
                timeout_ms = self.timeout.as_millis() as u64,
                "cluster: Redis cannot be reached; rate limits fall back ({:?}), changes that need a token lock are refused with 503 cluster_unavailable",
                self.on_unavailable
            );
        }
    }
}

/// Milliseconds on the system clock (only differences within one process are compared).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether an error means Redis could not be reached (rather than refusing one command).
fn is_unreachable(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
}
