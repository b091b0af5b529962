//! Memory freed after a burst, handed back to the system while a worker idles.
//!
//! The allocator of the `tokengate` binary (mimalloc) keeps the pages a burst of requests freed,
//! and returns them to the system only from inside a later allocation on the same thread, once
//! they have been free for a second. A worker that goes idle makes no later allocation, so
//! after a burst its resident size stayed at the burst's peak for as long as its keep-alive
//! connections stayed open: 36 KiB per idle connection, of which ~2 KiB are live (BENCHMARKS.md,
//! *Idle memory per keep-alive connection*). Returning the pages at once, as they are freed,
//! costs a page fault per request and a fifth of the throughput; a tidy-up once a second on
//! each worker costs nothing measurable and brings an idle gateway down to what it holds.

use std::sync::OnceLock;
use std::time::Duration;

/// How often a worker tidies its allocator: freed pages go back within about twice this.
pub const TIDY_EVERY: Duration = Duration::from_secs(1);

static TIDY: OnceLock<fn()> = OnceLock::new();

/// Sets the allocator's tidy-up (the binary's `mi_collect`); the library knows no allocator.
/// Only the first call counts.
pub fn set_tidy(tidy: fn()) {
    let _ = TIDY.set(tidy);
}

/// Runs the tidy-up every [`TIDY_EVERY`] on the calling runtime's thread, for as long as that
/// runtime runs (a worker's: each thread's allocator heap is its own). Without a tidy-up set,
/// returns at once.
pub async fn tidy_this_thread() {
    let Some(tidy) = TIDY.get().copied() else {
        return;
    };
    let mut every = tokio::time::interval(TIDY_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        tidy();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    static TIDIED: AtomicUsize = AtomicUsize::new(0);

    #[tokio::test(start_paused = true)]
    async fn a_worker_tidies_once_a_second_while_it_runs() {
        set_tidy(|| {
            TIDIED.fetch_add(1, Ordering::Relaxed);
        });
        let tidying = tokio::spawn(tidy_this_thread());
        // The first tick is at once, then one a second.
        tokio::time::sleep(TIDY_EVERY * 3 + TIDY_EVERY / 2).await;
        assert_eq!(TIDIED.load(Ordering::Relaxed), 4);
        tidying.abort();
        let _ = tidying.await;
        tokio::time::sleep(TIDY_EVERY * 3).await;
        assert_eq!(
            TIDIED.load(Ordering::Relaxed),
            4,
            "no tidy-up once the task ends"
        );
    }
}
