//! When a caller connection is idle: no request in flight on it.
//!
//! hyper closes an HTTP/1.1 connection that idles between requests past the header timeout
//! itself, but HTTP/2 has no such timer (its PINGs only find dead peers): a client could hold a
//! connection, and a place under `server.max_connections`, for ever by sending one request, or
//! none, and then nothing. So each connection counts its requests in flight, and the server ends
//! it gracefully (a GOAWAY: the client opens a new connection for its next request) once none has
//! been in flight for the header timeout, as nginx's `keepalive_timeout` does for HTTP/2.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// The requests in flight on one connection.
pub(super) struct Activity {
    /// Changes are announced only when the count leaves or reaches zero.
    in_flight: watch::Sender<usize>,
}

/// One request in flight, until dropped.
pub(super) struct Busy(Arc<Activity>);

impl Activity {
    pub(super) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: watch::Sender::new(0),
        })
    }

    /// Counts a request in flight until the returned guard drops.
    pub(super) fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.send_if_modified(|n| {
            *n += 1;
            *n == 1
        });
        Busy(self.clone())
    }

    /// Resolves once no request has been in flight for `limit`.
    pub(super) async fn idle_for(&self, limit: Duration) {
        let mut changes = self.in_flight.subscribe();
        loop {
            if *changes.borrow_and_update() == 0 {
                tokio::select! {
                    () = tokio::time::sleep(limit) => return,
                    _ = changes.changed() => {}
                }
            } else {
                // The sender lives in `self`: this waits for the next change.
                let _ = changes.changed().await;
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.send_if_modified(|n| {
            *n -= 1;
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_the_limit_with_nothing_in_flight() {
        let activity = Activity::new();
        let limit = Duration::from_secs(10);
        let started = tokio::time::Instant::now();
        let busy = activity.begin();
        let idle = activity.idle_for(limit);
        tokio::pin!(idle);
        // In flight for 60 s: not idle however long that is.
        assert!(tokio::time::timeout(Duration::from_secs(60), &mut idle)
            .await
            .is_err());
        drop(busy);
        // A second request begins and ends 5 s into the quiet: the limit counts from its end.
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(activity.begin());
        idle.await;
        assert_eq!(started.elapsed(), Duration::from_secs(75));
    }
}
