//! The audit trail on the request path (SPEC §6), in two places of the stack:
//!
//! - [`AuditOutcomeLayer`], near the top, writes the `outcome` record of every audited request
//!   once its answer is known, whatever refused it below (authentication, the allow list,
//!   validation, the upstream), and holds the answer until the record is durable: a refusal no
//!   longer than its request's deadline, and not at all when the refusal is that the trail could
//!   not take the intent (that record is queued, and written when the trail can take it).
//! - [`AuditIntentLayer`], just before forwarding, writes the `intent` record and forwards only
//!   once it is durable; if it cannot be written within `min(3 s, what is left of
//!   server.request_timeout_ms)` the request is refused with 503 `audit_unavailable` (fail
//!   closed), so nothing changes upstream without a trace.
//!
//! A request that sends more than one change writes records per change (SPEC §6): the patch
//! layer writes the outcome of a PATCH's first `PUT` ([`AuditPolicy::outcome_of`]) before its
//! status-only `PUT` goes down for an intent of its own, and each token of a fan-out batch writes
//! its own pair (the request is then *itemized*, and has no outcome record of its own). A
//! request that changes several tokens at once upstream (a batch delete) writes an intent per
//! token, each with what that token was (SPEC §6.1), and an outcome per token.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use crate::audit::changes::Change;
use crate::audit::record;
use crate::audit::writer::Trail;
use crate::context::RequestContext;
use crate::error::{Body, ErrorCode, GatewayError};
use crate::read_token::KnownTokens;
use crate::route::{route, Endpoint, Operation, Route};
use crate::token::edit::Edit;

/// The SPEC §9 code of a refusal because the trail could not take a record.
const AUDIT_UNAVAILABLE: &str = "audit_unavailable";

/// How long a refusal made at its deadline still waits for its record: on a sound disk a record
/// is durable well within it (so `fsync = "always"` still means answered after the record is on
/// disk), and on a stuck one the answer is late by no more than this.
const REFUSAL_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// Which operations leave records, and what their intents say a change does.
#[derive(Clone, Debug)]
pub struct AuditPolicy {
    trail: Arc<Trail>,
    /// `audit.reads`: reads are audited too.
    reads: bool,
    /// `upstream.extra_fields`: fork fields a token's `before` shows (SPEC §6.1).
    extra_fields: Arc<[String]>,
}

/// How long an outcome record's answer waits for it ([`AuditPolicy::outcome`]).
#[derive(Clone, Copy)]
enum Wait {
    /// Until it is durable, up to [`crate::audit::writer::WAIT`].
    Durable,
    /// Not at all: queued, written when the trail can take it.
    Queued,
    /// Until this instant.
    Until(tokio::time::Instant),
}

impl AuditPolicy {
    /// Records into `trail`; reads only when `reads`; `extra_fields` count as editable.
    pub fn new(trail: Arc<Trail>, reads: bool, extra_fields: &[String]) -> Self {
        AuditPolicy {
            trail,
            reads,
            extra_fields: extra_fields.into(),
        }
    }

    /// Modifications and key reveals always; reads when `audit.reads = true`.
    fn audits(&self, op: Operation) -> bool {
        self.reads || !op.is_read()
    }

    /// Writes the intent records of `context`, waiting no later than its deadline: one, or one
    /// per token when the change names several (a batch delete, each with its `before`), all
    /// sharing one fsync. The change must not be sent if this fails.
    async fn intent(&self, context: &RequestContext, op: Operation) -> Result<(), GatewayError> {
        let changes = context.changes();
        let draft = |change: Option<&Change>| {
            record::intent(
                context,
                op,
                self.trail.origin(),
                change,
                self.trail.max_record_bytes(),
            )
        };
        let written = match &changes[..] {
            [] | [_] => {
                let record = draft(changes.first());
                self.trail.append_until(record, context.deadline).await
            }
            several => {
                let appends = several.iter().map(|change| {
                    self.trail
                        .append_until(draft(Some(change)), context.deadline)
                });
                futures_util::future::join_all(appends)
                    .await
                    .into_iter()
                    .collect::<Result<(), _>>()
            }
        };
        written.map_err(GatewayError::AuditUnavailable)
    }

    /// Writes the outcome record of `context` (one per token when its intents were one per
    /// token), answered with `status` (and the SPEC §9 `code` when the gateway made the answer).
    /// A failure is logged and the answer stands (a forwarded change happened; a refusal stays a
    /// refusal); the trail reports not ready until it can be written again.
    ///
    /// How long the answer waits for the record (SPEC §6, bounded refusals): a forwarded
    /// change's, up to [`crate::audit::writer::WAIT`]; a refusal's, no later than the request's
    /// deadline, or [`REFUSAL_GRACE`] past it for a refusal made at the deadline (a lock wait
    /// or a body that ran out of time); and a refusal because the trail could not take the
    /// intent, not at all (its caller already waited once, for the intent): that record is
    /// queued and written when the trail can take it.
    async fn outcome(
        &self,
        context: &RequestContext,
        op: Operation,
        status: u16,
        code: Option<&str>,
    ) {
        let wait = if context.forwarded() {
            Wait::Durable
        } else if code == Some(AUDIT_UNAVAILABLE) {
            Wait::Queued
        } else {
            Wait::Until(
                context
                    .deadline
                    .max(tokio::time::Instant::now() + REFUSAL_GRACE),
            )
        };
        let changes = context.changes();
        let tokens: Vec<Option<u64>> = match &changes[..] {
            [] | [_] => vec![None],
            several => several.iter().map(|c| c.token_id).collect(),
        };
        let writes = tokens.into_iter().map(|token| {
            let record = record::outcome(
                context,
                op,
                self.trail.origin(),
                token,
                (status, code),
                self.trail.max_record_bytes(),
            );
            async move {
                match wait {
                    Wait::Durable => self.trail.append(record).await,
                    Wait::Queued => self.trail.enqueue(record),
                    Wait::Until(until) => self.trail.append_until(record, until).await,
                }
            }
        });
        for written in futures_util::future::join_all(writes).await {
            match written {
                Ok(()) => {}
                // A change happened upstream and its outcome may be missing from the trail.
                Err(error) if context.forwarded() => {
                    tracing::error!(request_id = %context.id, forwarded = true, "outcome record lost: {error}")
                }
                Err(error) => {
                    tracing::warn!(request_id = %context.id, forwarded = false, "outcome record of a refusal not confirmed written: {error}")
                }
            }
        }
    }

    /// What the change `request` makes does to each token it names (SPEC §6.1), from its checked
    /// edit and the tokens read under their locks for the trail ([`KnownTokens::recorded`]):
    /// `before` and `changes` null for a token not read (`audit.capture_before = false`); none
    /// for a request that changes no token (a key reveal).
    fn changes_of<B>(&self, request: &Request<B>, op: Operation) -> Vec<Change> {
        let extensions = request.extensions();
        let edit = extensions.get::<Edit>();
        let extra = &self.extra_fields[..];
        let ids = match (op, extensions.get::<Route>().map(|r| &r.endpoint), edit) {
            (Operation::Create, _, Some(Edit::Create(fields))) => {
                return vec![Change::created(fields, extra)]
            }
            (Operation::Delete, Some(&Endpoint::Delete(id)), _) => vec![id],
            (
                Operation::Update | Operation::BatchUpdate | Operation::BatchDelete,
                _,
                Some(edit),
            ) => edit.token_ids(),
            _ => return Vec::new(),
        };
        let known = extensions.get::<KnownTokens>().filter(|k| k.recorded);
        ids.into_iter()
            .map(|id| match known.and_then(|k| k.get(id)) {
                Some(stored) => Change::of(id.get(), stored, edit, extra),
                None => Change::unread(id.get()),
            })
            .collect()
    }

    /// The outcome record of one change of an itemized request (a fan-out part, or the first
    /// `PUT` of a PATCH), if its operation is audited.
    pub(crate) async fn outcome_of(
        &self,
        context: &RequestContext,
        status: u16,
        code: Option<&str>,
    ) {
        if let Some(op) = context.op().filter(|op| self.audits(*op)) {
            self.outcome(context, op, status, code).await;
        }
    }
}

// === impl AuditOutcome ===

/// Builds [`AuditOutcome`].
#[derive(Clone, Debug)]
pub struct AuditOutcomeLayer {
    policy: AuditPolicy,
}

impl AuditOutcomeLayer {
    /// Outcome records per `policy`.
    pub fn new(policy: AuditPolicy) -> Self {
        AuditOutcomeLayer { policy }
    }
}

impl<S> Layer<S> for AuditOutcomeLayer {
    type Service = AuditOutcome<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuditOutcome {
            policy: self.policy.clone(),
            inner,
        }
    }
}

/// Writes the outcome record of each audited request.
#[derive(Clone, Debug)]
pub struct AuditOutcome<S> {
    policy: AuditPolicy,
    inner: S,
}

impl<S, B> Service<Request<B>> for AuditOutcome<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Response<Body>, std::convert::Infallible>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let context = RequestContext::of(&request).ok().cloned();
        // Kept (reference-counted, not copied) to classify a request refused before routing.
        let line = (request.method().clone(), request.uri().clone());
        let policy = self.policy.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let Some(context) = context.filter(|c| !c.itemized()) else {
                return Ok(response);
            };
            // Requests refused before routing (a bad key) are classified by their path all the
            // same; routed ones already know their operation.
            let op = context
                .op()
                .or_else(|| route(&line.0, &line.1).ok().map(|r| r.operation()));
            let Some(op) = op.filter(|op| policy.audits(*op)) else {
                return Ok(response);
            };
            let code = response.extensions().get::<ErrorCode>().map(|c| c.0);
            policy
                .outcome(&context, op, response.status().as_u16(), code)
                .await;
            Ok(response)
        })
    }
}

// === impl AuditIntent ===

/// Builds [`AuditIntent`].
#[derive(Clone, Debug)]
pub struct AuditIntentLayer {
    policy: AuditPolicy,
}

impl AuditIntentLayer {
    /// Intent records per `policy`.
    pub fn new(policy: AuditPolicy) -> Self {
        AuditIntentLayer { policy }
    }
}

impl<S> Layer<S> for AuditIntentLayer {
    type Service = AuditIntent<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuditIntent {
            policy: self.policy.clone(),
            inner,
        }
    }
}

/// Forwards only once the intent record is durable.
#[derive(Clone, Debug)]
pub struct AuditIntent<S> {
    policy: AuditPolicy,
    inner: S,
}

impl<S, B> Service<Request<B>> for AuditIntent<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Response<Body>, GatewayError>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        Box::pin(async move {
            let context = RequestContext::of(&request)?.clone();
            if let Some(op) = context.op().filter(|op| policy.audits(*op)) {
                context.set_changes(policy.changes_of(&request, op));
                policy.intent(&context, op).await?;
            }
            // The upstream client marks the request forwarded once it is really sent (the global
            // upstream limit may still refuse it).
            inner.call(request).await
        })
    }
}
