//! One log line and the request metrics for every request, whatever its outcome (SPEC §7).
//!
//! The line is a tracing event on the target `tokengate::access`, so the subscriber's filter can
//! route or silence it. It carries the request id, the W3C trace id (SPEC §3), client, operation,
//! status and duration, and
//! never a header value, a body or the query string (search queries can hold key fragments). A
//! path is logged with any long or unusual segment elided, since a caller may paste a key there.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use crate::context::RequestContext;
use crate::error::{Body, ErrorCode};
use crate::metrics::Metrics;

/// Builds [`AccessLog`].
#[derive(Clone, Debug)]
pub struct AccessLogLayer {
    metrics: Arc<Metrics>,
}

impl AccessLogLayer {
    /// Logs and counts into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        AccessLogLayer { metrics }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            metrics: self.metrics.clone(),
            inner,
        }
    }
}

/// Logs and counts each request once its response is ready.
#[derive(Clone, Debug)]
pub struct AccessLog<S> {
    metrics: Arc<Metrics>,
    inner: S,
}

impl<S, B> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let context = RequestContext::of(&request).ok().cloned();
        let metrics = self.metrics.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let Some(context) = context else {
                return Ok(response);
            };
            let elapsed = context.started.elapsed();
            let status = response.status().as_u16();
            metrics.request(context.op(), status, elapsed);
            tracing::info!(
                target: "tokengate::access",
                request_id = %context.id,
                caller_request_id = context.caller_request_id.as_deref(),
                trace_id = context.trace().trace_id(),
                client = context.client(),
                op = context.op().map(|op| op.as_str()),
                method = %context.method,
                path = %context.path,
                source_ip = %context.source_ip().ip,
                status,
                code = response.extensions().get::<ErrorCode>().map(|c| c.0),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                "request"
            );
            Ok(response)
        })
    }
}
