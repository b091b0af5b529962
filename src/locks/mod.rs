//! Per-token serialisation (SPEC §4.5): requests that change the same token run one after
//! another, so no PATCH's read-merge-write interleaves with another change.
//!
//! In one process, striped locks ([`LocalLocks`]); with `[cluster]`, Redis locks every replica
//! shares ([`SharedLocks`], SPEC §11) as well, taken after the local ones, so requests of one
//! replica queue in memory and only one at a time asks Redis. A request that changes several
//! tokens at once (a native batch update, a batch delete) takes them in ascending order, so no two
//! requests ever wait on each other in a cycle. Waiting ends at the request's deadline.

mod local;
mod shared;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

pub use local::LocalLocks;
pub use shared::{SharedGuards, SharedLocks};

use crate::cluster::{Cluster, ClusterError};
use crate::route::TokenId;

/// Why a request did not get its tokens' locks. Nothing was forwarded.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another change of the token held its lock until the request's deadline (SPEC §6: a stuck
    /// change cannot queue others behind it without bound).
    #[error("another change of token {0} was still in progress at the request's deadline")]
    Busy(TokenId),
    /// The shared locks cannot be reached (SPEC §11: a lost update is worse than a refusal).
    #[error("the shared token locks cannot be reached: {0}")]
    ClusterUnavailable(ClusterError),
}

/// The locks of every token: this process's, and the replicas' shared ones with `[cluster]`.
#[derive(Debug, Default)]
pub struct TokenLocks {
    local: LocalLocks,
    shared: Option<SharedLocks>,
}

/// The locks one request holds, released when dropped.
pub struct Held {
    _local: Vec<OwnedMutexGuard<()>>,
    _shared: Option<SharedGuards>,
}

impl TokenLocks {
    /// Locks shared through `cluster` too, each leased for `lease` (longer than any request).
    pub fn shared(cluster: Arc<Cluster>, lease: Duration) -> TokenLocks {
        TokenLocks {
            local: LocalLocks::default(),
            shared: Some(SharedLocks::new(cluster, lease)),
        }
    }

    /// Waits for the locks of every id of `ids`, until `deadline` at most (the request's).
    pub async fn lock(&self, ids: &[TokenId], deadline: Instant) -> Result<Held, LockError> {
        let local = self.local.lock(ids, deadline).await?;
        let shared = match &self.shared {
            Some(shared) => Some(shared.lock(ids, deadline).await?),
            None => None,
        };
        Ok(Held {
            _local: local,
            _shared: shared,
        })
    }
}
