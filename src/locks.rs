//! Per-token serialisation (SPEC §4.5): requests that change the same token through this gateway
//! run one after another, so no PATCH's read-merge-write interleaves with another change.
//!
//! A fixed set of striped locks rather than a lock per id: memory stays bounded however many ids
//! are used, and two ids share a stripe rarely (1 in 1024), which costs only waiting, never
//! correctness. A request that changes several tokens at once (a native batch update, a batch
//! delete) takes their stripes in ascending order, so no two requests ever wait on each other in a
//! cycle.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::route::TokenId;

const STRIPES: usize = 1024;

/// The locks of every token id.
#[derive(Debug)]
pub struct TokenLocks {
    stripes: Vec<Arc<Mutex<()>>>,
}

impl Default for TokenLocks {
    fn default() -> Self {
        TokenLocks {
            stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
        }
    }
}

impl TokenLocks {
    /// Waits for the locks of every id of `ids`; they are held until the guards are dropped.
    pub async fn lock(&self, ids: &[TokenId]) -> Vec<OwnedMutexGuard<()>> {
        // Ids are sequential upstream: the low bits spread them evenly.
        let mut stripes: Vec<usize> = ids
            .iter()
            .map(|id| (id.get() % STRIPES as u64) as usize)
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            guards.push(self.stripes[stripe].clone().lock_owned().await);
        }
        guards
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn ids(ids: &[u64]) -> Vec<TokenId> {
        ids.iter()
            .map(|id| TokenId::parse(&id.to_string()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_batch_waits_for_any_of_its_tokens_and_batches_never_deadlock() {
        let locks = Arc::new(TokenLocks::default());
        // A change of token 7 holds its lock: a batch naming 7 among others waits for it.
        let held = locks.lock(&ids(&[7])).await;
        let batch = tokio::spawn({
            let locks = locks.clone();
            async move { locks.lock(&ids(&[3, 7, 1031])).await.len() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !batch.is_finished(),
            "the batch went on while token 7 was locked"
        );
        drop(held);
        // 7 and 1031 share a stripe: two guards, not three.
        assert_eq!(batch.await.unwrap(), 2);
        // Overlapping batches naming their ids in opposite orders, many times at once.
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let locks = locks.clone();
            let order = if i % 2 == 0 { [5, 9, 700] } else { [700, 9, 5] };
            tasks.push(tokio::spawn(async move {
                let _guards = locks.lock(&ids(&order)).await;
                tokio::task::yield_now().await;
            }));
        }
        tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::future::join_all(tasks),
        )
        .await
        .expect("no deadlock");
    }
}
