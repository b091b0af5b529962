//! Token locks in one process: a fixed set of striped locks rather than a lock per id, so memory
//! stays bounded however many ids are used, and two ids share a stripe rarely (1 in 1024), which
//! costs only waiting, never correctness.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::time::Instant;

use crate::route::TokenId;

use super::LockError;

const STRIPES: usize = 1024;

/// The locks of every token id in this process.
#[derive(Debug)]
pub struct LocalLocks {
    stripes: Vec<Arc<Mutex<()>>>,
}

impl Default for LocalLocks {
    fn default() -> Self {
        LocalLocks {
            stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
        }
    }
}

impl LocalLocks {
    /// Waits for the locks of every id of `ids`, until `deadline` at most (the request's); they
    /// are held until the guards are dropped. At the deadline, the locks taken so far are
    /// released and the id still waited for is named.
    pub async fn lock(
        &self,
        ids: &[TokenId],
        deadline: Instant,
    ) -> Result<Vec<OwnedMutexGuard<()>>, LockError> {
        // Ids are sequential upstream: the low bits spread them evenly.
        let mut stripes: Vec<(usize, TokenId)> = ids
            .iter()
            .map(|id| ((id.get() % STRIPES as u64) as usize, *id))
            .collect();
        stripes.sort_unstable();
        stripes.dedup_by_key(|(stripe, _)| *stripe);
        let mut guards = Vec::with_capacity(stripes.len());
        for (stripe, id) in stripes {
            let lock = self.stripes[stripe].clone().lock_owned();
            match tokio::time::timeout_at(deadline, lock).await {
                Ok(guard) => guards.push(guard),
                Err(_) => return Err(LockError::Busy(id)),
            }
        }
        Ok(guards)
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
        let locks = Arc::new(LocalLocks::default());
        let later = || Instant::now() + Duration::from_secs(30);
        // A change of token 7 holds its lock: a batch naming 7 among others waits for it.
        let held = locks.lock(&ids(&[7]), later()).await.unwrap();
        let batch = tokio::spawn({
            let locks = locks.clone();
            async move {
                locks
                    .lock(&ids(&[3, 7, 1031]), later())
                    .await
                    .unwrap()
                    .len()
            }
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
                let _guards = locks.lock(&ids(&order), later()).await.unwrap();
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

    #[tokio::test]
    async fn a_wait_for_a_lock_ends_at_the_deadline_and_releases_what_it_took() {
        let locks = LocalLocks::default();
        let held = locks
            .lock(&ids(&[9]), Instant::now() + Duration::from_secs(30))
            .await
            .unwrap();
        let started = Instant::now();
        let busy = locks
            .lock(&ids(&[3, 9]), started + Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(busy, LockError::Busy(id) if id.get() == 9));
        assert!(started.elapsed() < Duration::from_secs(2));
        // Token 3's lock, taken on the way, was released.
        let three = locks
            .lock(&ids(&[3]), Instant::now() + Duration::from_millis(100))
            .await;
        assert!(three.is_ok());
        drop(held);
    }
}
