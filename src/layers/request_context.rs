//! Gives every request its [`RequestContext`]: the gateway's own request id (echoed to the caller
//! as `X-Request-Id`), the caller's id kept apart, the W3C trace it belongs to, and the deadline
//! of `server.request_timeout_ms`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use crate::context::{PeerAddr, RequestContext};
use crate::error::Body;
use crate::headers::X_REQUEST_ID;
use crate::trace_context::TraceContext;

/// The longest caller `X-Request-Id` kept (a longer one is ignored, not trusted or truncated).
const MAX_CALLER_ID: usize = 128;

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): the quota and window of a limit.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// `RateLimit`: what is left of a limit and when more comes.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Builds [`RequestContextService`].
#[derive(Clone, Debug)]
pub struct RequestContextLayer {
    timeout: Duration,
}

impl RequestContextLayer {
    /// Requests get `timeout` (`server.request_timeout_ms`) from arrival to answer.
    pub fn new(timeout: Duration) -> Self {
        RequestContextLayer { timeout }
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContextService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService {
            timeout: self.timeout,
            inner,
        }
    }
}

/// Inserts the context, and sets `X-Request-Id` on the response.
#[derive(Clone, Debug)]
pub struct RequestContextService<S> {
    timeout: Duration,
    inner: S,
}

impl<S, B> Service<Request<B>> for RequestContextService<S>
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

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let peer = request
            .extensions()
            .get::<PeerAddr>()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |p| p.0);
        let caller_id = request
            .headers()
            .get(X_REQUEST_ID)
            .and_then(caller_request_id);
        let context = Arc::new(RequestContext::new(
            peer,
            request.method().clone(),
            request.uri().path(),
            caller_id,
            TraceContext::continued(request.headers()).unwrap_or_else(TraceContext::start),
            self.timeout,
        ));
        let id = HeaderValue::from_str(context.id.as_str());
        request.extensions_mut().insert(context.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            if let Ok(id) = id {
                headers.insert(X_REQUEST_ID, id);
            }
            // The IETF rate-limit fields of every limit the request met, whatever the answer.
            for status in context.take_rates() {
                for (name, value) in [
                    (RATELIMIT_POLICY, status.policy_item()),
                    (RATELIMIT, status.limit_item()),
                ] {
                    if let Ok(value) = HeaderValue::try_from(value) {
                        headers.append(name, value);
                    }
                }
            }
            Ok(response)
        })
    }
}

/// The caller's own id, when it is short printable ASCII (it is logged, so nothing else is kept).
fn caller_request_id(value: &HeaderValue) -> Option<String> {
    let bytes = value.as_bytes();
    (!bytes.is_empty()
        && bytes.len() <= MAX_CALLER_ID
        && bytes.iter().all(|b| b.is_ascii_graphic()))
    .then(|| String::from_utf8_lossy(bytes).into_owned())
}
