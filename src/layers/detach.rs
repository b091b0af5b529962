//! A change outlives its caller (SPEC §6, "a forwarded change always gets its outcome"): every
//! request that may change something (any method but `GET`) runs in a task of its own, so a
//! caller that disconnects or times out does not cancel the upstream exchange, the outcome
//! record, the access-log line, or the token lock held until the upstream answered. The caller's
//! connection only waits for the task's answer; when it goes away, the task runs on.
//!
//! The tasks are counted ([`InFlight`]), so that shutdown can wait for them before the trail is
//! flushed: `upstream.timeout_ms` at most, then every upstream exchange still waiting is cut
//! short as a timeout, so each change still unanswered gets its `timeout` outcome record and a
//! fan-out batch starts no more (SPEC §6: an intent with no outcome means a crash, nothing
//! else). Reads are not detached: cancelling one changes nothing, and leaves nothing
//! half-recorded.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::{Method, Request, Response};
use tokio::sync::{watch, Notify};
use tower::{Layer, Service};

use super::BoxFuture;
use crate::context::{RequestContext, RequestId};
use crate::error::{Body, GatewayError};

/// The detached requests still running, shared by every configuration generation.
#[derive(Debug, Default)]
pub struct InFlight {
    running: AtomicUsize,
    done: Notify,
    /// Set once shutdown stops waiting: upstream exchanges end at once ([`InFlight::cut_off`]).
    cut: watch::Sender<bool>,
}

impl InFlight {
    /// How many detached requests are running.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Waits until no detached request runs, at most `limit`; whether they all ended.
    pub async fn wait(&self, limit: Duration) -> bool {
        let all_done = async {
            loop {
                let notified = self.done.notified();
                if self.running() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, all_done).await.is_ok()
    }

    /// At shutdown: waits up to `limit` for the detached requests; then cuts every upstream
    /// exchange still waiting short and waits up to [`crate::audit::writer::WAIT`] more for their
    /// outcome records. Whether they all ended.
    pub async fn finish(&self, limit: Duration) -> bool {
        if self.wait(limit).await {
            return true;
        }
        tracing::warn!(
            running = self.running(),
            "forwarded changes still unanswered: their upstream exchanges end now, recorded as timeout"
        );
        self.cut.send_replace(true);
        self.wait(crate::audit::writer::WAIT).await
    }

    /// Resolves once shutdown has cut upstream exchanges short (never before).
    pub async fn cut_off(&self) {
        let mut cut = self.cut.subscribe();
        // The sender lives in `self`: `wait_for` ends only when the value is set.
        let _ = cut.wait_for(|cut| *cut).await;
    }

    fn start(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::AcqRel);
        Running(self.clone())
    }
}

/// One running detached request; counted out when dropped (the task ended, or panicked).
struct Running(Arc<InFlight>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

/// Builds [`Detach`].
#[derive(Clone, Debug)]
pub struct DetachLayer {
    in_flight: Arc<InFlight>,
}

impl DetachLayer {
    /// Detaches changes, counting them in `in_flight`.
    pub fn new(in_flight: Arc<InFlight>) -> Self {
        DetachLayer { in_flight }
    }
}

impl<S> Layer<S> for DetachLayer {
    type Service = Detach<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Detach {
            in_flight: self.in_flight.clone(),
            inner,
        }
    }
}

/// Runs every request that may change something in a task of its own.
#[derive(Clone, Debug)]
pub struct Detach<S> {
    in_flight: Arc<InFlight>,
    inner: S,
}

impl<S, B> Service<Request<B>> for Detach<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<Result<Response<Body>, Infallible>>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.method() == Method::GET {
            return Either::Left(self.inner.call(request));
        }
        // A task that panics is answered under the request's own id (its logs carry it).
        let id = RequestContext::of(&request)
            .map_or_else(|_| RequestId::next(), |context| context.id.clone());
        let running = self.in_flight.start();
        let answer = self.inner.call(request);
        let task = tokio::spawn(async move {
            let answer = answer.await;
            drop(running);
            answer
        });
        Either::Right(Box::pin(async move {
            match task.await {
                Ok(answer) => answer,
                // The stack never panics on input; a task that did is a fault of the gateway.
                Err(error) => {
                    tracing::error!(%error, "a request's task ended abnormally");
                    let fault =
                        GatewayError::Internal("the request's task ended abnormally".into());
                    Ok(fault.into_response(&id))
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_ends_when_the_last_request_ends_or_at_the_limit() {
        let in_flight = Arc::new(InFlight::default());
        assert!(in_flight.wait(Duration::ZERO).await, "nothing runs");
        let running = in_flight.start();
        assert!(!in_flight.wait(Duration::from_millis(20)).await);
        let waiter = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move { in_flight.wait(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(running);
        assert!(waiter.await.unwrap());
        assert_eq!(in_flight.running(), 0);
    }

    /// A fault of the gateway, not of the input: the caller still gets the SPEC §9 envelope,
    /// under the request's own id (the one its log lines carry).
    #[tokio::test]
    async fn a_task_that_panics_is_a_500_under_the_requests_id() {
        let inner = tower::service_fn(|_: Request<()>| async {
            if true {
                panic!("a fault of the gateway");
            }
            Ok::<_, Infallible>(Response::new(Body::from(Vec::new())))
        });
        let mut detach = DetachLayer::new(Arc::new(InFlight::default())).layer(inner);
        let context = Arc::new(RequestContext::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            Method::POST,
            "/api/token/",
            None,
            crate::trace_context::TraceContext::start(),
            Duration::from_secs(10),
        ));
        let mut request = Request::post("/api/token/").body(()).unwrap();
        request.extensions_mut().insert(context.clone());
        let response = detach.call(request).await.unwrap();
        assert_eq!(response.status(), 500);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["request_id"], context.id.as_str(), "{json}");
        assert_eq!(json["error"]["code"], "internal");
    }

    #[tokio::test(start_paused = true)]
    async fn finishing_cuts_what_still_runs_after_the_limit() {
        let in_flight = Arc::new(InFlight::default());
        let running = in_flight.start();
        // A request whose upstream exchange waits until cut, then ends (its record written).
        let task = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                in_flight.cut_off().await;
                drop(running);
            })
        };
        let started = tokio::time::Instant::now();
        assert!(in_flight.finish(Duration::from_secs(30)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        task.await.unwrap();
        // Once cut, an exchange that starts later ends at once.
        tokio::time::timeout(Duration::ZERO, in_flight.cut_off())
            .await
            .unwrap();
    }
}
