//! Changes to one token are serialised per id, and a PATCH becomes the full update new-api needs
//! (SPEC §4.5): with the token's lock held, the token is read, the PATCH merged into it and the
//! whole checked; the request then goes on as that full `PUT` (or a status-only `PUT` when
//! `status` is all it changes), through policy, the intent record and the forward. A PATCH that
//! changes `status` and other fields then sends the status-only `PUT` down the same layers, after
//! writing the first `PUT`'s outcome record, so each `PUT` has its own intent and outcome (SPEC
//! §6). The lock is held until the answer, so two PATCHes of one token never
//! interleave between read and write. Each id of a fan-out batch update comes through here as a
//! PATCH of its own, so batches, PATCHes and PUTs of one token take turns.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use http::{Request, Response};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::audit::AuditPolicy;
use super::validate::unix_now;
use super::BoxFuture;
use crate::audit::changes;
use crate::caller::Caller;
use crate::context::RequestContext;
use crate::error::{Body, GatewayError};
use crate::locks::TokenLocks;
use crate::read_token::{read_token, KnownTokens};
use crate::route::{Endpoint, Route, TokenId};
use crate::token::edit::{Edit, Limits, TokenFields};
use crate::token::fields::Status;
use crate::token::patch::merge;
use crate::upstream::{Served, Upstream};

/// Builds [`Patch`].
#[derive(Clone, Debug)]
pub struct PatchLayer {
    upstream: Arc<Upstream>,
    limits: Arc<Limits>,
    locks: Arc<TokenLocks>,
    audit: AuditPolicy,
}

impl PatchLayer {
    /// Reads tokens from `upstream`, checks merges with `limits`, serialises with `locks`, and
    /// writes the outcome of a PATCH's first `PUT` with `audit`.
    pub fn new(
        upstream: Arc<Upstream>,
        limits: Arc<Limits>,
        locks: Arc<TokenLocks>,
        audit: AuditPolicy,
    ) -> Self {
        PatchLayer {
            upstream,
            limits,
            locks,
            audit,
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
        // Only changes of tokens wait for their locks; everything else passes unboxed.
        let ids = changed_tokens(&request);
        if ids.is_empty() {
            return Either::Left(self.inner.call(request));
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Either::Right(Box::pin(async move {
            let _guards = layer
                .locks
                .lock(&ids, RequestContext::of(&request)?.deadline)
                .await?;
            let Some(&Endpoint::Patch(id)) =
                request.extensions().get::<Route>().map(|r| &r.endpoint)
            else {
                confirm_stored_values(&layer, &mut request).await?;
                return inner.call(request).await;
            };
            let Some((status_after, written)) = to_full_update(&layer, &mut request, id).await?
            else {
                return inner.call(request).await;
            };
            // A full PUT never changes `status` (SPEC §4.5): once it succeeded, a status-only PUT
            // follows through the same layers (policy, its own intent record, forward), and its
            // answer is the caller's.
            let context = RequestContext::of(&request)?.clone();
            let mut follow_up = status_only_request(&request, id, status_after);
            // Its body is its `request` in the records too, once the full PUT's outcome is written.
            let follow_up_body = follow_up.body().clone();
            // The status-only PUT puts into use the token the full PUT wrote: policy judges it,
            // and its intent says it was the `before`.
            let extensions = request.extensions();
            let stored = extensions.get::<KnownTokens>().and_then(|k| k.get(id));
            if let Some(after) = stored.and_then(|s| changes::after(s, extensions.get::<Edit>()?)) {
                follow_up
                    .extensions_mut()
                    .insert(KnownTokens::read(vec![(id, Arc::new(after))], true));
            }
            let first = inner.call(request).await?;
            if !context.upstream().is_some_and(|answer| answer.succeeded()) {
                return Ok(first);
            }
            layer
                .audit
                .outcome_of(&context, first.status().as_u16(), None)
                .await;
            context.next_change(follow_up_body);
            // From here the full PUT is applied: a failure of the status-only one says so (SPEC
            // §4.5, §6 "truthful partial answers"), never "not forwarded".
            match inner.clone().oneshot(follow_up).await {
                Ok(answer) if context.upstream().is_some_and(|a| a.succeeded()) => Ok(answer),
                Ok(answer) => {
                    context.set_partial(written.clone());
                    Ok(mark_partial(answer, &written).await)
                }
                Err(cause) => {
                    context.set_partial(written.clone());
                    Err(GatewayError::Partial {
                        written,
                        cause: Box::new(cause),
                    })
                }
            }
        }))
    }
}

/// The upstream's refusal of a PATCH's status-only `PUT`, with what its full `PUT` applied:
/// `"partial": true` and the fields written, beside new-api's own members.
async fn mark_partial(answer: Response<Body>, written: &[String]) -> Response<Body> {
    let (mut parts, body) = answer.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let Ok(Value::Object(mut envelope)) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    envelope.insert("partial".into(), Value::Bool(true));
    envelope.insert("written".into(), Value::from(written.to_vec()));
    let bytes = serde_json::to_vec(&envelope).unwrap_or_default();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

/// A full or status-only update whose values only the stored token can judge (SPEC §4.2: a value
/// new-api wrote itself, a full update's `status`): the token is read under its lock and each
/// such value passes when it is the stored one.
async fn confirm_stored_values(
    layer: &PatchLayer,
    request: &mut Request<Bytes>,
) -> Result<(), GatewayError> {
    let Some(edit) = request.extensions().get::<Edit>() else {
        return Ok(());
    };
    let (Some(&id), false) = (edit.token_ids().first(), edit.unconfirmed().is_empty()) else {
        return Ok(());
    };
    let mut edit = edit.clone();
    let context = RequestContext::of(request)?.clone();
    let Some(caller) = request.extensions().get::<Caller>() else {
        return Err(GatewayError::Internal(
            "the patch layer runs after authenticate".into(),
        ));
    };
    // A token that does not exist is a 404, as for a PATCH: no value can be the stored one, and
    // "differs from the stored value" would mislead.
    let stored = read_token(&layer.upstream, caller, &context, id).await?;
    edit.confirm(&stored).map_err(GatewayError::from)?;
    let extensions = request.extensions_mut();
    extensions.insert(edit);
    extensions.insert(KnownTokens::read(vec![(id, Arc::new(stored))], false));
    Ok(())
}

/// The tokens a request changes, whose changes take turns (SPEC §4.5): a PATCH's or a delete's
/// token, a `PUT`'s, and every id of a batch that comes down whole (a native batch update, a batch
/// delete). A fan-out batch comes down as one PATCH per id.
pub(crate) fn changed_tokens<B>(request: &Request<B>) -> Vec<TokenId> {
    let edited = || {
        request
            .extensions()
            .get::<Edit>()
            .map_or_else(Vec::new, |edit| edit.token_ids().to_vec())
    };
    match request.extensions().get::<Route>().map(|r| &r.endpoint) {
        Some(&Endpoint::Patch(id) | &Endpoint::Delete(id)) => vec![id],
        Some(Endpoint::Update { .. } | Endpoint::BatchUpdate | Endpoint::BatchDelete) => edited(),
        _ => Vec::new(),
    }
}

/// Reads token `id`, merges the PATCH into it and rewrites the request as the update to send.
/// Returns the `status` a status-only PUT must set afterwards, with the fields the full PUT
/// writes, when the PATCH changes `status` along with other fields.
///
/// The global cap's room for every upstream request of the PATCH is taken before the read, so
/// that between the read and the write there is nothing but the merge and the intent record:
/// usage of the token in that window is undone by the full `PUT` (SPEC §4.5, the quota race).
async fn to_full_update(
    layer: &PatchLayer,
    request: &mut Request<Bytes>,
    id: TokenId,
) -> Result<Option<(Status, Vec<String>)>, GatewayError> {
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
    let status_alone = patch.status.is_some() && {
        let mut rest = patch.clone();
        rest.status = None;
        rest == TokenFields::default()
    };
    // The read, the full PUT, and the status-only PUT when `status` comes with other fields.
    let requests = if patch.status.is_some() && !status_alone {
        3
    } else {
        2
    };
    let served = Served {
        context: &context,
        caller_label: caller.metric_label(),
        records_answer: false,
    };
    layer.upstream.prepay(served, requests).await?;
    let stored = read_token(&layer.upstream, caller, &context, id).await?;
    context.set_read_at(Instant::now());
    request.extensions_mut().insert(KnownTokens::read(
        vec![(id, Arc::new(stored.clone()))],
        true,
    ));
    if let (true, Some(status)) = (status_alone, patch.status) {
        set_edit(request, &context, status_only(id, status));
        return Ok(None);
    }
    let merged = merge(&stored, id, &patch, &layer.limits, unix_now())?;
    set_edit(request, &context, Edit::Update(merged));
    let written = match serde_json::to_value(&patch) {
        Ok(Value::Object(fields)) => fields
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k != "status")
            .collect(),
        _ => Vec::new(),
    };
    Ok(patch.status.map(|status| (status, written)))
}

/// The status-only update of token `id`.
fn status_only(id: TokenId, status: Status) -> Edit {
    Edit::StatusOnly(TokenFields {
        id: Some(id),
        status: Some(status),
        ..TokenFields::default()
    })
}

/// Makes `edit` the request's body, route and audited `request`.
fn set_edit(request: &mut Request<Bytes>, context: &RequestContext, edit: Edit) {
    let status_only = matches!(edit, Edit::StatusOnly(_));
    let body = Bytes::from(edit.canonical_json());
    context.set_request_json(body.clone());
    *request.body_mut() = body;
    let extensions = request.extensions_mut();
    extensions.insert(Route {
        endpoint: Endpoint::Update { status_only },
        query: status_only.then(|| "status_only=true".to_string()),
    });
    extensions.insert(edit);
}

/// The status-only PUT that follows `full` (same caller, context and headers).
fn status_only_request(full: &Request<Bytes>, id: TokenId, status: Status) -> Request<Bytes> {
    let mut follow_up = Request::new(Bytes::new());
    *follow_up.method_mut() = full.method().clone();
    *follow_up.uri_mut() = full.uri().clone();
    *follow_up.headers_mut() = full.headers().clone();
    *follow_up.extensions_mut() = full.extensions().clone();
    let edit = status_only(id, status);
    *follow_up.body_mut() = Bytes::from(edit.canonical_json());
    let extensions = follow_up.extensions_mut();
    extensions.insert(Route {
        endpoint: Endpoint::Update { status_only: true },
        query: Some("status_only=true".into()),
    });
    extensions.insert(edit);
    follow_up
}
