//! Per-token serialisation (SPEC §4.5): requests that change the same token through this gateway
//! run one after another, so no PATCH's read-merge-write interleaves with another change.
//!
//! A fixed set of striped locks rather than a lock per id: memory stays bounded however many ids
//! are used, and two ids share a stripe rarely (1 in 1024), which costs only waiting, never
//! correctness. Each request holds at most one stripe at a time, so there is no lock order to get
//! wrong.

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
    /// Waits for the lock of `id`; it is held until the guard is dropped.
    pub async fn lock(&self, id: TokenId) -> OwnedMutexGuard<()> {
        // Ids are sequential upstream: the low bits spread them evenly.
        let stripe = (id.get() % STRIPES as u64) as usize;
        self.stripes[stripe].clone().lock_owned().await
    }
}
