//! Reads the request body whole, within `server.max_body_bytes` (413 as soon as the cap is
//! passed, without reading the rest) and the request's deadline (408 for a caller too slow to
//! send it). Routes that take no body refuse one.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http::HeaderMap;
use http::{Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service};

use super::BoxFuture;
use crate::context::RequestContext;
use crate::error::{Body, BoxError, GatewayError};
use crate::route::Route;

/// Builds [`ReadBody`].
#[derive(Clone, Copy, Debug)]
pub struct ReadBodyLayer {
    limit: usize,
}

impl ReadBodyLayer {
    /// Bodies of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        ReadBodyLayer { limit }
    }
}

impl<S> Layer<S> for ReadBodyLayer {
    type Service = ReadBody<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ReadBody {
            limit: self.limit,
            inner,
        }
    }
}

/// Hands the inner service a `Request<Bytes>`.
#[derive(Clone, Debug)]
pub struct ReadBody<S> {
    limit: usize,
    inner: S,
}

impl<S, B> Service<Request<B>> for ReadBody<S>
where
    S: Service<Request<Bytes>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Response<Body>, GatewayError>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let limit = self.limit;
        // The inner service was polled ready: take it, and leave a clone for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let context = RequestContext::of(&request)?.clone();
            let takes_body = request
                .extensions()
                .get::<Route>()
                .is_some_and(|route| route.endpoint.takes_body());
            encoding_is_identity(request.headers())?;
            let declared = request
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(GatewayError::BodyTooLarge(limit));
            }
            let (parts, body) = request.into_parts();
            let read =
                tokio::time::timeout_at(context.deadline, Limited::new(body, limit).collect())
                    .await;
            let bytes = match read {
                Err(_elapsed) => {
                    let budget = context.deadline.duration_since(context.started);
                    return Err(GatewayError::RequestTimeout(budget.as_millis() as u64));
                }
                Ok(Err(error)) if error.is::<LengthLimitError>() => {
                    return Err(GatewayError::BodyTooLarge(limit))
                }
                Ok(Err(_)) => {
                    return Err(GatewayError::BadRequest(
                        "the request body could not be read".into(),
                    ))
                }
                Ok(Ok(collected)) => collected.to_bytes(),
            };
            if !takes_body && !bytes.is_empty() {
                return Err(GatewayError::BadRequest(
                    "this operation takes no request body".into(),
                ));
            }
            inner.call(Request::from_parts(parts, bytes)).await
        })
    }
}

/// SPEC §3: the gateway checks plain JSON only, so a body with a `Content-Encoding` other than
/// `identity` is refused (415) before it is read; it is never forwarded.
fn encoding_is_identity(headers: &HeaderMap) -> Result<(), GatewayError> {
    let encoded = headers.get_all(CONTENT_ENCODING).iter().any(|value| {
        value
            .as_bytes()
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity"))
    });
    if encoded {
        return Err(GatewayError::EncodedBody);
    }
    Ok(())
}
