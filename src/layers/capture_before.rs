//! What each token was before a change, for its intent record (SPEC §6.1, `audit.capture_before`):
//! a full or status-only update, a delete, a batch delete or a native batch update reads every
//! token it names that no step above has read for it already (a PATCH and each id of a fan-out
//! batch read theirs anyway; policy's `name_prefix` may have read some).
//!
//! It runs after the policy check, so a request the policy refuses on its body costs the upstream
//! nothing, and with the tokens' locks held (taken by the patch layer above until the answer), so
//! no other change comes between the read and the write. A token the read cannot find is a 404
//! `not_found` and nothing is sent; any other failed read fails the request unforwarded. Each read
//! counts against the global upstream cap like any upstream request.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use http::{Request, Response};
use tower::{Layer, Service};

use super::patch::changed_tokens;
use super::BoxFuture;
use crate::caller::Caller;
use crate::context::RequestContext;
use crate::error::{Body, GatewayError};
use crate::read_token::{read_tokens, KnownTokens};
use crate::upstream::Upstream;

/// Builds [`CaptureBefore`].
#[derive(Clone, Debug)]
pub struct CaptureBeforeLayer {
    upstream: Arc<Upstream>,
    /// `audit.capture_before`.
    enabled: bool,
}

impl CaptureBeforeLayer {
    /// Reads from `upstream`, when `enabled`.
    pub fn new(upstream: Arc<Upstream>, enabled: bool) -> Self {
        CaptureBeforeLayer { upstream, enabled }
    }
}

impl<S> Layer<S> for CaptureBeforeLayer {
    type Service = CaptureBefore<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CaptureBefore {
            layer: self.clone(),
            inner,
        }
    }
}

/// Reads the tokens a change names before it is recorded and sent.
#[derive(Clone, Debug)]
pub struct CaptureBefore<S> {
    layer: CaptureBeforeLayer,
    inner: S,
}

impl<S> Service<Request<Bytes>> for CaptureBefore<S>
where
    S: Service<Request<Bytes>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = Either<S::Future, BoxFuture<Result<Response<Body>, GatewayError>>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Bytes>) -> Self::Future {
        let ids = if self.layer.enabled {
            changed_tokens(&request)
        } else {
            Vec::new()
        };
        let known = request.extensions().get::<KnownTokens>();
        if ids.is_empty() || known.is_some_and(|k| k.recorded) {
            return Either::Left(self.inner.call(request));
        }
        let unread: Vec<_> = ids
            .into_iter()
            .filter(|id| known.and_then(|k| k.get(*id)).is_none())
            .collect();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let upstream = self.layer.upstream.clone();
        Either::Right(Box::pin(async move {
            let (Some(caller), context) = (
                request.extensions().get::<Caller>(),
                RequestContext::of(&request)?,
            ) else {
                return Err(GatewayError::Internal(
                    "the before-read runs after authenticate".into(),
                ));
            };
            let read = read_tokens(&upstream, caller, context, unread).await?;
            let extensions = request.extensions_mut();
            let mut known = extensions.remove::<KnownTokens>().unwrap_or_default();
            known.extend(read);
            known.recorded = true;
            extensions.insert(known);
            inner.call(request).await
        }))
    }
}
