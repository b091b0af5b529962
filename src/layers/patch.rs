//! Changes to one token are serialised per id, and a PATCH becomes the full update new-api needs
//! (SPEC §4.5): with the token's lock held, the token is read, the PATCH merged into it and the
//! whole checked; the request then goes on as that full `PUT` (or a status-only `PUT` when
//! `status` is all it changes), through policy, the intent record and the forward. A PATCH that
//! changes `status` and other fields sends the status-only `PUT` after the full one (see
//! [`StatusAfter`]). The lock is held until the answer, so two PATCHes of one token never
//! interleave between read and write. Each id of a fan-out batch update comes through here as a
//! PATCH of its own, so batches, PATCHes and PUTs of one token take turns.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use http::{Request, Response};
use serde_json::Value;
use tower::{Layer, Service};

use super::validate::unix_now;
use super::BoxFuture;
use crate::caller::Caller;
use crate::context::RequestContext;
use crate::error::{Body, GatewayError};
use crate::locks::TokenLocks;
use crate::read_token::read_token;
use crate::route::{Endpoint, Route, TokenId};
use crate::token::edit::{Edit, Limits, TokenFields};
use crate::token::fields::Status;
use crate::token::patch::merge;
use crate::upstream::Upstream;

/// The name a token had when the gateway read it for this request, so a later check does not
/// read it again.
#[derive(Clone, Debug)]
pub struct KnownName(pub TokenId, pub String);

/// A `status` to set with a status-only `PUT` once the full `PUT` succeeded.
#[derive(Clone, Copy, Debug)]
pub struct StatusAfter(pub Status);

/// Builds [`Patch`].
#[derive(Clone, Debug)]
pub struct PatchLayer {
    upstream: Arc<Upstream>,
    limits: Arc<Limits>,
    locks: Arc<TokenLocks>,
}

impl PatchLayer {
    /// Reads tokens from `upstream`, checks merges with `limits`, serialises with `locks`.
    pub fn new(upstream: Arc<Upstream>, limits: Arc<Limits>, locks: Arc<TokenLocks>) -> Self {
        PatchLayer {
            upstream,
            limits,
            locks,
        }
    }
}

impl<S> Layer<S> for PatchLayer {
    type Service = Patch<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Patch {
            layer: self.clone(),
            inner,
        }
    }
}

/// Serialises changes per token and turns a PATCH into a full update.
#[derive(Clone, Debug)]
pub struct Patch<S> {
    layer: PatchLayer,
    inner: S,
}

impl<S> Service<Request<Bytes>> for Patch<S>
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
        // Only changes of one token wait for its lock; everything else passes unboxed.
        let Some(id) = changed_token(&request) else {
            return Either::Left(self.inner.call(request));
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Either::Right(Box::pin(async move {
            let _guard = layer.locks.lock(id).await;
            if matches!(
                request.extensions().get::<Route>().map(|r| &r.endpoint),
                Some(Endpoint::Patch(_))
            ) {
                to_full_update(&layer, &mut request, id).await?;
            }
            inner.call(request).await
        }))
    }
}

/// The one token a request changes, if it is a PATCH or a `PUT` (batches hold no lock here).
fn changed_token(request: &Request<Bytes>) -> Option<TokenId> {
    match request.extensions().get::<Route>()?.endpoint {
        Endpoint::Patch(id) => Some(id),
        Endpoint::Update { .. } => request
            .extensions()
            .get::<Edit>()?
            .token_ids()
            .first()
            .copied(),
        _ => None,
    }
}

/// Reads token `id`, merges the PATCH into it and rewrites the request as the update to send.
async fn to_full_update(
    layer: &PatchLayer,
    request: &mut Request<Bytes>,
    id: TokenId,
) -> Result<(), GatewayError> {
    let context = RequestContext::of(request)?.clone();
    let (Some(caller), Some(Edit::Patch(patch))) = (
        request.extensions().get::<Caller>(),
        request.extensions().get::<Edit>(),
    ) else {
        return Err(GatewayError::Internal(
            "the patch layer runs after authenticate and validate".into(),
        ));
    };
    let patch = patch.clone();
    let stored = read_token(&layer.upstream, caller, &context, id).await?;
    let name = match stored.get("name") {
        Some(Value::String(name)) => name.clone(),
        _ => String::new(),
    };
    let status_only = patch.status.is_some() && {
        let mut rest = patch.clone();
        rest.status = None;
        rest == TokenFields::default()
    };
    let edit = if status_only {
        Edit::StatusOnly(TokenFields {
            id: Some(id),
            status: patch.status,
            ..TokenFields::default()
        })
    } else {
        let merged = merge(&stored, id, &patch, &layer.limits, unix_now())?;
        if let Some(status) = patch.status {
            request.extensions_mut().insert(StatusAfter(status));
        }
        Edit::Update(merged)
    };
    // The intent record shows this PUT; a status-only PUT that follows has its own.
    context.set_request(edit.to_value());
    *request.body_mut() = Bytes::from(edit.to_json());
    let extensions = request.extensions_mut();
    extensions.insert(Route {
        endpoint: Endpoint::Update { status_only },
        query: status_only.then(|| "status_only=true".to_string()),
    });
    extensions.insert(edit);
    extensions.insert(KnownName(id, name));
    Ok(())
}
