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
    /// Woken (every registered waiter) each time a connection closes, so the accept loops waiting
    /// at the cap look again; each registers before it reads the count, so no close is missed.
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
    /// (one warning, one count); finding room without waiting for a close ends it. Room a close
    /// made does not: the connection accepted next fills it again, and a gateway held at the
    /// cap, where every close lets one caller in, is one episode, not one per close.
    ///
    /// With several accept loops (one per worker thread) the room found here may be taken by
    /// another loop before this one accepts: [`Connections::claim`] then holds the accepted
    /// connection until there is room again, so the cap is never passed. Cancel-safe (a shutdown
    /// drops it mid-wait).
    pub async fn room(&self, cap: impl Fn() -> usize, reloaded: &Notify) {
        let mut waited = false;
        loop {
            // Registered before the cap and the count are read, so a reload or a close in between
            // is not missed.
            let reload = reloaded.notified();
            let closed = self.closed.notified();
            tokio::pin!(reload, closed);
            reload.as_mut().enable();
            closed.as_mut().enable();
            let cap = cap();
            let open = self.open();
            if open < cap {
                if !waited && self.at_cap.swap(false, Ordering::Relaxed) {
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
            // A reload may have moved the cap: room then ends the episode as if found at once.
            waited = tokio::select! {
                () = &mut closed => true,
                () = &mut reload => false,
            };
        }
    }

    /// Counts a connection just accepted once fewer than `cap()` are open, until the returned
    /// guard is dropped: at once unless another accept loop took the last room since
    /// [`Connections::room`] returned; then the connection waits here (unread, like one in the
    /// backlog) for a close or a reload. Cancel-safe.
    pub async fn claim(
        self: &Arc<Connections>,
        cap: impl Fn() -> usize,
        reloaded: &Notify,
    ) -> Open {
        loop {
            let reload = reloaded.notified();
            let closed = self.closed.notified();
            tokio::pin!(reload, closed);
            reload.as_mut().enable();
            closed.as_mut().enable();
            let cap = cap();
            let mut open = self.open();
            while open < cap {
                match self.open.compare_exchange_weak(
                    open,
                    open + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        self.metrics.connection_opened();
                        return Open(self.clone());
                    }
                    Err(now) => open = now,
                }
            }
            tokio::select! {
                () = &mut closed => {}
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
        connections.closed.notify_waiters();
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

        // Filled again at once: still the same episode, however many closes let one in.
        let _third = connections.admit();
        assert!(!has_room(&connections, &cap, &reloaded).await);
        assert!(metrics
            .render()
            .contains("tokengate_connection_cap_reached_total 1"));
        // A raised cap (a reload) lets the waiting loop go on without a close.
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
        // Room without waiting ends the episode; the cap reached again is a second one.
        assert!(has_room(&connections, &cap, &reloaded).await);
        let _fourth = connections.admit();
        assert!(!has_room(&connections, &cap, &reloaded).await);
        let text = metrics.render();
        assert!(
            text.contains("tokengate_connection_cap_reached_total 2"),
            "{text}"
        );
        assert!(text.contains("tokengate_open_connections 3"), "{text}");
    }

    #[tokio::test]
    async fn a_claim_over_the_cap_waits_for_a_close_or_a_raised_cap() {
        let metrics = Arc::new(Metrics::new());
        let connections = Connections::new(metrics.clone());
        let (cap, reloaded) = (AtomicUsize::new(1), Notify::new());
        let first = connections
            .claim(|| cap.load(Ordering::Relaxed), &reloaded)
            .await;
        // Another accept loop's connection, accepted after the room was taken: it waits.
        let waiting = tokio::time::timeout(
            Duration::from_millis(50),
            connections.claim(|| cap.load(Ordering::Relaxed), &reloaded),
        );
        assert!(waiting.await.is_err());
        assert_eq!(connections.open(), 1);

        let waiting = connections.claim(|| cap.load(Ordering::Relaxed), &reloaded);
        let closing = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(first);
        };
        let (second, ()) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(5), waiting),
            closing
        );
        let _second = second.expect("a close lets the claim in");
        assert_eq!(connections.open(), 1);

        let waiting = connections.claim(|| cap.load(Ordering::Relaxed), &reloaded);
        let raising = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            cap.store(2, Ordering::Relaxed);
            reloaded.notify_waiters();
        };
        let (third, ()) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(5), waiting),
            raising
        );
        let _third = third.expect("a raised cap lets the claim in");
        assert_eq!(connections.open(), 2);
        assert!(metrics.render().contains("tokengate_open_connections 2"));
    }
}
