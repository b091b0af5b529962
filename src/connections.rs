//! SPEC §7 `server.max_connections`: how many caller connections are open, and the wait at the
//! cap.
//!
//! The accept loop asks for [`Connections::room`] *before* it accepts, and each accepted
//! connection holds an [`Open`] guard until its task ends (the wait for a first byte and the TLS
//! handshake included), so dropping the guard is what makes room. Waiting before `accept`, rather
//! than accepting and closing, leaves callers over the cap in the kernel's listen backlog: they
//! are served late as connections close instead of being refused, and no flood of connections
//! grows the gateway's memory (a full backlog is the kernel's to refuse).
//!
//! Only the caller-facing listener is counted: the admin listener (`/healthz`, `/readyz`,
//! `/metrics`) must stay reachable precisely when callers fill the cap.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::metrics::Metrics;

/// The open caller connections of one listener.
#[derive(Debug)]
pub struct Connections {
    /// Connections accepted whose task has not ended yet.
    open: AtomicUsize,
    /// Woken (one permit) each time a connection closes, so the accept loop waiting at the cap
    /// looks again. A permit left over while nobody waits costs one extra look, no more.
    closed: Notify,
    /// Whether the accept loop is in an episode at the cap: the warning and the counter come
    /// once per episode, not once per wake-up.
    at_cap: AtomicBool,
    /// `tokengate_open_connections` and `tokengate_connection_cap_reached_total`.
    metrics: Arc<Metrics>,
}

/// One open connection: counted from accept until dropped (when its task ends).
#[derive(Debug)]
pub struct Open(Arc<Connections>);

impl Connections {
    /// No connection open yet.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Connections> {
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            closed: Notify::new(),
            at_cap: AtomicBool::new(false),
            metrics,
        })
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Returns once fewer than `cap()` connections are open. `cap` is read again after each
    /// close and each time `reloaded` is notified (with `notify_waiters`), so a reload that
    /// raises the cap lets the waiting loop go on at once. Reaching the cap starts an episode
    /// (one warning, one count); returning ends it.
    ///
    /// Meant for one accept loop: only its [`Connections::admit`] adds connections, so the room
    /// found here is still there when it accepts. Cancel-safe (a shutdown drops it mid-wait).
    pub async fn room(&self, cap: impl Fn() -> usize, reloaded: &Notify) {
        loop {
            // Registered before the cap is read, so a reload in between is not missed.
            let reload = reloaded.notified();
            tokio::pin!(reload);
            reload.as_mut().enable();
            let cap = cap();
            let open = self.open();
            if open < cap {
                if self.at_cap.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        open,
                        max_connections = cap,
                        "caller connections below server.max_connections again: accepting"
                    );
                }
                return;
            }
            if !self.at_cap.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    open,
                    max_connections = cap,
                    "caller connections at server.max_connections: not accepting until one \
                     closes (the listen backlog holds new callers)"
                );
                self.metrics.connection_cap_reached();
            }
            tokio::select! {
                () = self.closed.notified() => {}
                () = &mut reload => {}
            }
        }
    }

    /// Counts a connection just accepted, until the returned guard is dropped.
    pub fn admit(self: &Arc<Connections>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.metrics.connection_opened();
        Open(self.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let connections = &self.0;
        connections.open.fetch_sub(1, Ordering::AcqRel);
        connections.metrics.connection_closed();
        connections.closed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// Whether `room` returns within a short while.
    async fn has_room(connections: &Connections, cap: &AtomicUsize, reloaded: &Notify) -> bool {
        tokio::time::timeout(
            Duration::from_millis(50),
            connections.room(|| cap.load(Ordering::Relaxed), reloaded),
        )
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn waits_at_the_cap_until_a_connection_closes_or_the_cap_rises() {
        let metrics = Arc::new(Metrics::new());
        let connections = Connections::new(metrics.clone());
        let (cap, reloaded) = (AtomicUsize::new(2), Notify::new());
        assert!(has_room(&connections, &cap, &reloaded).await);
        let first = connections.admit();
        let _second = connections.admit();
        assert_eq!(connections.open(), 2);
        assert!(!has_room(&connections, &cap, &reloaded).await);
        // Still the same episode: counted once.
        assert!(!has_room(&connections, &cap, &reloaded).await);
        let text = metrics.render();
        assert!(text.contains("tokengate_open_connections 2"), "{text}");
        assert!(
            text.contains("tokengate_connection_cap_reached_total 1"),
            "{text}"
        );

        // A close wakes a waiting loop.
        let waiting = connections.room(|| cap.load(Ordering::Relaxed), &reloaded);
        let closing = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(first);
        };
        let (done, ()) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(5), waiting),
            closing
        );
        assert!(done.is_ok());
        assert_eq!(connections.open(), 1);

        // A second episode is counted again; a raised cap (a reload) ends it without a close.
        let _third = connections.admit();
        assert!(!has_room(&connections, &cap, &reloaded).await);
        let waiting = connections.room(|| cap.load(Ordering::Relaxed), &reloaded);
        let raising = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            cap.store(3, Ordering::Relaxed);
            reloaded.notify_waiters();
        };
        let (done, ()) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(5), waiting),
            raising
        );
        assert!(done.is_ok());
        let text = metrics.render();
        assert!(
            text.contains("tokengate_connection_cap_reached_total 2"),
            "{text}"
        );
        assert!(text.contains("tokengate_open_connections 2"), "{text}");
    }
}
