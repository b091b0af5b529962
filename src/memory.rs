//! Memory freed after a burst, handed back to the system while a worker idles.
//!
//! The allocator of the `tokengate` binary (mimalloc) keeps the pages a burst of requests freed,
//! and returns them to the system only from inside a later allocation on the same thread, once
//! they have been free for a second. A worker that goes idle makes no later allocation, so
//! after a burst its resident size stayed at the burst's peak for as long as its keep-alive
//! connections stayed open: 36 KiB per idle connection, of which ~2 KiB are live (BENCHMARKS.md,
//! *Idle memory per keep-alive connection*). Returning the pages at once, as they are freed,
//! costs a page fault per request and half the throughput; a tidy-up once a second on each
//! worker costs nothing measurable and brings an idle gateway down to what it holds.

use std::sync::OnceLock;

static TIDY: OnceLock<fn()> = OnceLock::new();

/// Sets the allocator's tidy-up (the binary's `mi_collect`); the library knows no allocator.
/// Only the first call counts.
pub fn set_tidy(tidy: fn()) {
    let _ = TIDY.set(tidy);
}

/// Runs the allocator's tidy-up on the calling thread's heap, if one is set (each worker calls
/// it from its housekeeping, once a second: see `server`).
pub fn tidy() {
    if let Some(tidy) = TIDY.get() {
        tidy();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    static TIDIED: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn the_tidy_up_set_first_is_the_one_run() {
        tidy();
        set_tidy(|| {
            TIDIED.fetch_add(1, Ordering::Relaxed);
        });
        set_tidy(|| panic!("only the first tidy-up set counts"));
        tidy();
        tidy();
        assert_eq!(TIDIED.load(Ordering::Relaxed), 2);
    }
}
