//! The innermost service: sends the routed request upstream in canonical form, with the caller's
//! headers filtered and the credential injected, and hands back the upstream's answer.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::Service;

use crate::caller::Caller;
use crate::context::RequestContext;
use crate::error::{Body, GatewayError};
use crate::headers;
use crate::layers::BoxFuture;
use crate::route::Route;
use crate::upstream::{Served, Upstream, UpstreamRequest};

/// Forwards to the [`Upstream`].
#[derive(Clone)]
pub struct Forward {
    upstream: Arc<Upstream>,
}

impl Forward {
    /// Forwards to `upstream`.
    pub fn new(upstream: Arc<Upstream>) -> Self {
        Forward { upstream }
    }
}

impl Service<Request<Bytes>> for Forward {
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Response<Body>, GatewayError>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let upstream = self.upstream.clone();
        Box::pin(async move {
            let context = RequestContext::of(&request)?.clone();
            let (parts, body) = request.into_parts();
            let (Some(route), Some(caller)) = (
                parts.extensions.get::<Route>(),
                parts.extensions.get::<Caller>(),
            ) else {
                return Err(GatewayError::Internal(
                    "forward runs after route and authenticate".into(),
                ));
            };
            let answer = upstream
                .send(UpstreamRequest {
                    op: route.operation(),
                    method: route.endpoint.method(),
                    path_and_query: &route.upstream_path_and_query(),
                    headers: headers::to_upstream(
                        parts.headers,
                        context.source_ip(),
                        &context.id,
                        context.trace(),
                    ),
                    body,
                    credential: &caller.credential,
                    deadline: context.deadline,
                    served: Some(Served {
                        context: &context,
                        caller_label: caller.metric_label(),
                        records_answer: true,
                    }),
                })
                .await?;
            let mut response = Response::new(Full::new(answer.body));
            *response.status_mut() = answer.status;
            *response.headers_mut() = headers::to_caller(answer.headers);
            Ok(response)
        })
    }
}
