//! `PUT /api/token/batch` in fan-out mode (SPEC §4.6). new-api has no batch update, so each token
//! is sent down the rest of the stack as a PATCH of its own (its lock, read, merge, policy on the
//! merged token, intent record, `PUT`), at most `limits.batch_concurrency` at a time, and the
//! caller is told what happened to each id: partial failure is reported, never hidden.
//!
//! Each token is one *part* of the request, with a context of its own under the batch's request
//! id, so the audit trail holds an intent and an outcome per id (SPEC §6) and the batch as a whole
//! writes no outcome record. Named values that break the caller's policy whatever the token (a
//! quota over `max_remain_quota`) refuse the whole batch with 403 before anything is read.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use futures_util::StreamExt;
use http::{header, Request, Response};
use http_body_util::Full;
use serde::Serialize;
use tower::{Layer, Service, ServiceExt};

use super::audit::AuditPolicy;
use super::policy::refusal;
use super::rescue;
use super::validate::unix_now;
use super::BoxFuture;
use crate::caller::Caller;
use crate::context::RequestContext;
use crate::error::{Body, GatewayError, JSON_UTF8};
use crate::metrics::Metrics;
use crate::policy::Omitted;
use crate::route::{Endpoint, Route, TokenId};
use crate::token::batch::{BatchMode, BatchUpdate};
use crate::token::edit::Edit;
use crate::upstream::Envelope;

/// Builds [`BatchFanout`].
#[derive(Clone, Debug)]
pub struct BatchFanoutLayer {
    mode: BatchMode,
    concurrency: usize,
    audit: AuditPolicy,
    metrics: Arc<Metrics>,
}

impl BatchFanoutLayer {
    /// Fans out when `mode` is [`BatchMode::Fanout`], `concurrency` tokens at a time, writing
    /// each part's outcome record with `audit` and counting policy refusals in `metrics`.
    pub fn new(
        mode: BatchMode,
        concurrency: usize,
        audit: AuditPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        BatchFanoutLayer {
            mode,
            concurrency: concurrency.max(1),
            audit,
            metrics,
        }
    }
}

impl<S> Layer<S> for BatchFanoutLayer {
    type Service = BatchFanout<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BatchFanout {
            layer: self.clone(),
            inner,
        }
    }
}

/// Applies a batch update token by token.
#[derive(Clone, Debug)]
pub struct BatchFanout<S> {
    layer: BatchFanoutLayer,
    inner: S,
}

impl<S> Service<Request<Bytes>> for BatchFanout<S>
where
    S: Service<Request<Bytes>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + Sync
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

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let batch_update = matches!(
            request.extensions().get::<Route>().map(|r| &r.endpoint),
            Some(Endpoint::BatchUpdate)
        );
        if !batch_update || self.layer.mode != BatchMode::Fanout {
            return Either::Left(self.inner.call(request));
        }
        let layer = self.layer.clone();
        let inner = self.inner.clone();
        Either::Right(Box::pin(fan_out(layer, inner, request)))
    }
}

/// What became of one id.
type Part = (TokenId, Result<(), Failure>);

/// Why one id was not updated.
enum Failure {
    /// The gateway refused or could not finish it (policy, a stored value, the trail, a timeout).
    Gateway(GatewayError),
    /// The upstream answered without `success: true`: its message, and what the id's full
    /// `PUT` had written when it was the status-only `PUT` after it that failed.
    Upstream(String, Option<Vec<String>>),
}

async fn fan_out<S>(
    layer: BatchFanoutLayer,
    inner: S,
    request: Request<Bytes>,
) -> Result<Response<Body>, GatewayError>
where
    S: Service<Request<Bytes>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    let context = RequestContext::of(&request)?.clone();
    let (parts, _) = request.into_parts();
    let (Some(caller), Some(Edit::BatchUpdate(batch))) = (
        parts.extensions.get::<Caller>(),
        parts.extensions.get::<Edit>(),
    ) else {
        return Err(GatewayError::Internal(
            "the batch fan-out runs after authenticate and validate".into(),
        ));
    };
    if let Some(policy) = &caller.policy {
        let violations = policy.judge(&batch.fields, Omitted::Stored, unix_now());
        if !violations.is_empty() {
            return Err(refusal(&layer.metrics, Some(caller), violations));
        }
    }
    // From here on every id writes its own records; each records the patch it applies until its
    // token is read and merged (an id that fails before then still shows what was asked).
    context.set_itemized();
    // Written once: every id's records carry the same patch.
    let asked = Bytes::from(Edit::Patch(batch.fields.clone()).canonical_json());
    let results: Vec<Part> = futures_util::stream::iter(batch.ids.iter().copied())
        .map(|id| {
            let part = Arc::new(context.part(id.get()));
            part.set_request_json(asked.clone());
            let mut sub = Request::new(Bytes::new());
            *sub.method_mut() = parts.method.clone();
            *sub.uri_mut() = parts.uri.clone();
            *sub.headers_mut() = parts.headers.clone();
            let extensions = sub.extensions_mut();
            extensions.insert(caller.clone());
            extensions.insert(Route {
                endpoint: Endpoint::Patch(id),
                query: None,
            });
            extensions.insert(Edit::Patch(batch.fields.clone()));
            extensions.insert(part.clone());
            update_one(&layer, inner.clone(), part, sub, id)
        })
        .buffered(layer.concurrency)
        .collect()
        .await;
    // Nothing was sent because the trail cannot be written: the batch is a 503, as a single
    // request would be (SPEC §6, fail closed).
    if let Some(unavailable) = all_audit_unavailable(results.iter().map(|(_, r)| r)) {
        return Err(unavailable);
    }
    Ok(answer(batch, &results))
}

/// Sends one id down the stack as a PATCH, then writes its outcome record.
async fn update_one<S>(
    layer: &BatchFanoutLayer,
    inner: S,
    part: Arc<RequestContext>,
    sub: Request<Bytes>,
    id: TokenId,
) -> Part
where
    S: Service<Request<Bytes>, Response = Response<Body>, Error = GatewayError> + Send,
    S::Future: Send,
{
    let (status, code, result) = match inner.oneshot(sub).await {
        Ok(response) => {
            let status = response.status();
            let facts = part.upstream();
            let result = match &facts {
                Some(facts) if facts.succeeded() => Ok(()),
                _ => {
                    let message = facts
                        .as_ref()
                        .and_then(|f| Envelope::parse(&f.body))
                        .and_then(|e| e.message)
                        .filter(|m| !m.is_empty())
                        .map(|m| m.into_owned());
                    let message = message.unwrap_or_else(|| {
                        format!(
                            "the upstream answered HTTP {} without success",
                            status.as_u16()
                        )
                    });
                    Err(Failure::Upstream(
                        message,
                        part.partial().map(<[_]>::to_vec),
                    ))
                }
            };
            (status, None, result)
        }
        Err(error) => {
            if error.is_server_side() {
                rescue::log(&part.id, &error);
            }
            (
                error.status(),
                Some(error.code()),
                Err(Failure::Gateway(error)),
            )
        }
    };
    layer.audit.outcome_of(&part, status.as_u16(), code).await;
    (id, result)
}

/// The error to answer with when every id failed because the trail cannot be written.
fn all_audit_unavailable<'a>(
    mut results: impl Iterator<Item = &'a Result<(), Failure>>,
) -> Option<GatewayError> {
    let mut first = None;
    for result in results.by_ref() {
        match result {
            Err(Failure::Gateway(GatewayError::AuditUnavailable(error))) => {
                first.get_or_insert_with(|| error.clone());
            }
            _ => return None,
        }
    }
    first.map(GatewayError::AuditUnavailable)
}

/// The answer of SPEC §4.6: HTTP 200, `success` only when every id succeeded.
#[derive(Serialize)]
struct Answer<'a> {
    success: bool,
    message: String,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    updated: Vec<u64>,
    failed: Vec<Failed>,
    ignored: &'a [String],
}

#[derive(Serialize)]
struct Failed {
    id: u64,
    /// The SPEC §9 code when the gateway refused the id; absent when the upstream did.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    message: String,
    /// `true` when the id's full `PUT` was applied before its status-only `PUT` failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    partial: Option<bool>,
    /// The fields that full `PUT` wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    written: Option<Vec<String>>,
}

fn answer(batch: &BatchUpdate, results: &[Part]) -> Response<Body> {
    let mut updated = Vec::new();
    let mut failed = Vec::new();
    for (id, result) in results {
        match result {
            Ok(()) => updated.push(id.get()),
            Err(Failure::Gateway(error)) => {
                let written = match error {
                    GatewayError::Partial { written, .. } => Some(written.clone()),
                    _ => None,
                };
                failed.push(Failed {
                    id: id.get(),
                    code: Some(error.code()),
                    message: error.to_string(),
                    partial: written.as_ref().map(|_| true),
                    written,
                })
            }
            Err(Failure::Upstream(message, written)) => failed.push(Failed {
                id: id.get(),
                code: None,
                message: message.clone(),
                partial: written.as_ref().map(|_| true),
                written: written.clone(),
            }),
        }
    }
    let total = results.len();
    let mut message = if failed.is_empty() {
        format!("updated {total} of {total} tokens")
    } else {
        format!(
            "updated {} of {total} tokens; {} failed (see data.failed)",
            updated.len(),
            failed.len()
        )
    };
    if !batch.ignored.is_empty() {
        message.push_str(&format!(
            "; not applied because update_fields does not name them: {} (see data.ignored)",
            batch.ignored.join(", ")
        ));
    }
    let answer = Answer {
        success: failed.is_empty(),
        message,
        data: Data {
            updated,
            failed,
            ignored: &batch.ignored,
        },
    };
    // Serialising strings, numbers and bools cannot fail.
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, JSON_UTF8);
    response
}
