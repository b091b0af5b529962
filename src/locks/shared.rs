//! Token locks every replica shares (SPEC §11, §4.5 across replicas): changes of one token
//! through any replica take turns.
//!
//! A lock is a Redis key taken with `SET key owner NX PX lease`: the owner a random value of this
//! request, the lease longer than any request can live (`server.request_timeout_ms` plus
//! `upstream.timeout_ms`), so a replica that dies holding a lock blocks that token until the lease
//! ends, never longer. It is released by a compare-and-delete script (only by its owner: a lock
//! whose lease ran out and was taken by another request is never deleted by the first). Ids are
//! taken in ascending order, as in one process, so batches never deadlock; a waiter backs off
//! (doubling from 2 ms to 50 ms) and gives up at its request's deadline.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use tokio::time::Instant;

use super::LockError;
use crate::caller::random_hex;
use crate::cluster::{Cluster, ClusterError};
use crate::route::TokenId;

/// Deletes `KEYS[1]` only if it still holds `ARGV[1]` (this request's owner value).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The shared locks of every token.
pub struct SharedLocks {
    cluster: Arc<Cluster>,
    lease: Duration,
    release: Arc<Script>,
}

impl std::fmt::Debug for SharedLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedLocks(lease {:?})", self.lease)
    }
}

/// Shared locks held by one request, released (by their owner value) when dropped.
pub struct SharedGuards {
    cluster: Arc<Cluster>,
    release: Arc<Script>,
    owner: String,
    keys: Vec<String>,
}

impl SharedLocks {
    /// Locks in `cluster`, each leased for `lease`.
    pub fn new(cluster: Arc<Cluster>, lease: Duration) -> SharedLocks {
        SharedLocks {
            cluster,
            lease,
            release: Arc::new(Script::new(RELEASE)),
        }
    }

    /// Takes the lock of every id (ascending), waiting until `deadline` at most. On any failure
    /// the locks taken so far are released.
    pub async fn lock(
        &self,
        ids: &[TokenId],
        deadline: Instant,
    ) -> Result<SharedGuards, LockError> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let started = Instant::now();
        let owner = random_hex(16).unwrap_or_else(|_| format!("{:?}", Instant::now()));
        let mut guards = SharedGuards {
            cluster: self.cluster.clone(),
            release: self.release.clone(),
            owner,
            keys: Vec::with_capacity(ids.len()),
        };
        for id in ids {
            let key = self.cluster.key(&format!("lock:{id}"));
            let mut backoff = Duration::from_millis(2);
            loop {
                match self.try_take(&key, &guards.owner).await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(error) => return Err(LockError::ClusterUnavailable(error)),
                }
                if Instant::now() + backoff >= deadline {
                    return Err(LockError::Busy(id));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            guards.keys.push(key);
        }
        self.cluster.lock_waited(started.elapsed());
        Ok(guards)
    }

    /// One `SET key owner NX PX lease`: whether it was free.
    async fn try_take(&self, key: &str, owner: &str) -> Result<bool, ClusterError> {
        let mut connection = self.cluster.connection();
        let mut command = redis::cmd("SET");
        command
            .arg(key)
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(self.lease.as_millis() as u64);
        let taken: Option<String> = self
            .cluster
            .call(async move { command.query_async(&mut connection).await })
            .await?;
        Ok(taken.is_some())
    }
}

impl Drop for SharedGuards {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.keys);
        let (cluster, release, owner) = (
            self.cluster.clone(),
            self.release.clone(),
            self.owner.clone(),
        );
        // Released in the background: a release that cannot reach Redis leaves the lease to end.
        tokio::spawn(async move {
            for key in keys {
                let mut connection = cluster.connection();
                let mut invocation = release.key(&key);
                invocation.arg(&owner);
                let released: Result<i64, _> = cluster
                    .call(async move { invocation.invoke_async(&mut connection).await })
                    .await;
                if let Err(error) = released {
                    tracing::warn!(%error, "cluster: a token lock was not released; its lease will end it");
                }
            }
        });
    }
}
