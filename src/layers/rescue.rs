//! Turns every [`GatewayError`] from the layers below into the SPEC §9 envelope, once, with the
//! request id; errors that are the gateway's or the upstream's fault are logged with their cause.

use std::convert::Infallible;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use crate::context::{RequestContext, RequestId};
use crate::error::{Body, GatewayError};

/// Builds [`Rescue`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue { inner }
    }
}

/// Renders errors as responses, so hyper is handed an infallible service.
#[derive(Clone, Debug)]
pub struct Rescue<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The gateway's services are always ready; a readiness error is rendered in `call`.
        let _ = self.inner.poll_ready(cx);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let id = RequestContext::of(&request).map_or_else(|_| RequestId::next(), |c| c.id.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            Ok(match response.await {
                Ok(response) => response,
                Err(error) => {
                    if error.is_server_side() {
                        log(&id, &error);
                    }
                    error.into_response(&id)
                }
            })
        })
    }
}

/// Logs a server-side error with its whole cause chain (the message sent stays generic).
pub(crate) fn log(id: &RequestId, error: &GatewayError) {
    let mut causes = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        causes.push_str(": ");
        causes.push_str(&cause.to_string());
        source = cause.source();
    }
    match error {
        GatewayError::Internal(_) => {
            tracing::error!(request_id = %id, code = error.code(), "{error}{causes}")
        }
        _ => tracing::warn!(request_id = %id, code = error.code(), "{error}{causes}"),
    }
}
