//! The caller's policy (SPEC §5), after the body is checked and before the intent record: the
//! token a write would store is judged against the client's rules. Some rules need the tokens a
//! request names as the upstream stores them, read under their locks (or known from the PATCH
//! read): `name_prefix` on their current names, and every rule on the stored token when a change
//! puts it back into use (enabling) or is a native batch update (each id merged, as fan-out does
//! per id). A request that names several tokens (a batch delete, a key reveal, a native batch
//! update) is refused whole when any of them breaks a rule, and nothing is sent. A refusal is a
//! 403 `forbidden` naming every rule broken and the fields at fault.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use http::{Request, Response};
use serde_json::{Map, Value};
use tower::{Layer, Service};

use super::validate::unix_now;
use super::BoxFuture;
use crate::caller::Caller;
use crate::context::RequestContext;
use crate::error::{Body, GatewayError};
use crate::metrics::Metrics;
use crate::policy::{PolicyRefusal, Violation};
use crate::read_token::{current_name, read_tokens, KnownTokens, Stored};
use crate::route::{Endpoint, Route, TokenId};
use crate::token::edit::{Edit, TokenFields};
use crate::token::fields::Status;
use crate::upstream::Upstream;

/// Builds [`PolicyCheck`].
#[derive(Clone, Debug)]
pub struct PolicyLayer {
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
}

impl PolicyLayer {
    /// Reads current names from `upstream`; counts refusals in `metrics`.
    pub fn new(upstream: Arc<Upstream>, metrics: Arc<Metrics>) -> Self {
        PolicyLayer { upstream, metrics }
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = PolicyCheck<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PolicyCheck {
            upstream: self.upstream.clone(),
            metrics: self.metrics.clone(),
            inner,
        }
    }
}

/// Refuses what the caller's policy does not allow.
#[derive(Clone, Debug)]
pub struct PolicyCheck<S> {
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    inner: S,
}

impl<S> Service<Request<Bytes>> for PolicyCheck<S>
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
        // Requests that nothing in the caller's policy can refuse (reads, and every request of a
        // client that refuses nothing) pass without a boxed future.
        let extensions = request.extensions();
        let judged = extensions
            .get::<Caller>()
            .and_then(|c| c.policy.as_ref())
            .is_some_and(|p| p.may_refuse(extensions.get::<Edit>()));
        if !judged {
            return Either::Left(self.inner.call(request));
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let upstream = self.upstream.clone();
        let metrics = self.metrics.clone();
        Either::Right(Box::pin(async move {
            let (violations, read) = judge(&upstream, &request).await?;
            if violations.is_empty() {
                // What was read under the locks serves the steps below (the trail's `before`).
                if !read.is_empty() {
                    let extensions = request.extensions_mut();
                    match extensions.get_mut::<KnownTokens>() {
                        Some(known) => known.extend(read),
                        None => {
                            extensions.insert(KnownTokens::read(read, false));
                        }
                    }
                }
                return inner.call(request).await;
            }
            let client = request.extensions().get::<Caller>();
            Err(refusal(&metrics, client, violations))
        }))
    }
}

/// The 403 for `violations` (at least one) of `caller`'s policy, counted in `metrics`.
pub(crate) fn refusal(
    metrics: &Metrics,
    caller: Option<&Caller>,
    violations: Vec<Violation>,
) -> GatewayError {
    let client = caller.map_or_else(String::new, |c| c.name.to_string());
    for violation in &violations {
        metrics.policy_refusal(&client, violation.rule);
    }
    GatewayError::Forbidden(PolicyRefusal { client, violations })
}

/// Every rule the request breaks: first those of the token it would store, then (only if those
/// pass, so a refused request costs the upstream nothing) those that need the tokens it names as
/// the upstream stores them: `name_prefix` on their current names, and, for a change that puts a
/// token into use or a native batch update, every rule on the token as it will be stored. Returns
/// them with the tokens it read (those not known already).
async fn judge(
    upstream: &Upstream,
    request: &Request<Bytes>,
) -> Result<(Vec<Violation>, Vec<(TokenId, Stored)>), GatewayError> {
    let extensions = request.extensions();
    let (Some(caller), Some(route)) = (extensions.get::<Caller>(), extensions.get::<Route>())
    else {
        return Err(GatewayError::Internal(
            "the policy check runs after authenticate and route".into(),
        ));
    };
    let Some(policy) = &caller.policy else {
        return Ok((Vec::new(), Vec::new()));
    };
    let now = unix_now();
    let edit = extensions.get::<Edit>();
    let violations = edit.map_or_else(Vec::new, |edit| policy.judge_edit(edit, now));
    let stored_change = edit.and_then(StoredChange::of);
    if !violations.is_empty() || (stored_change.is_none() && !policy.checks_current_names()) {
        return Ok((violations, Vec::new()));
    }
    let context = RequestContext::of(request)?;
    let known = extensions.get::<KnownTokens>();
    let ids = existing_ids(route, edit);
    let unread = ids
        .iter()
        .filter(|id| known.and_then(|k| k.get(**id)).is_none());
    let read = read_tokens(
        upstream,
        caller,
        context,
        unread.copied().collect::<Vec<_>>(),
    )
    .await?;
    let tokens = ids.iter().filter_map(|id| {
        let token = known
            .and_then(|k| k.get(*id))
            .or_else(|| read.iter().find(|(r, _)| r == id).map(|(_, t)| t))?;
        Some((*id, token))
    });
    let mut violations = Vec::new();
    for (id, token) in tokens {
        violations.extend(policy.judge_current_name(id, &current_name(token)));
        if let Some(change) = &stored_change {
            let judged = policy.judge_stored(&change.apply(token), now);
            violations.extend(judged.into_iter().map(|mut violation| {
                violation.message =
                    format!("token {id}, as it would be stored: {}", violation.message);
                violation
            }));
        }
    }
    Ok((violations, read))
}

/// A change judged on each token it names as stored, with the change applied (SPEC §5).
struct StoredChange<'a>(Option<&'a TokenFields>);

impl<'a> StoredChange<'a> {
    /// Enabling (`status` 1 by a status-only update, or a PATCH or batch that comes down as one)
    /// puts the stored token back into use: judged by every rule. A native batch update is judged
    /// like fan-out, each id merged, unless all it does is disable (only `name_prefix` applies
    /// then). Anything else is not judged on stored tokens.
    fn of(edit: &'a Edit) -> Option<StoredChange<'a>> {
        let enables = |fields: &TokenFields| fields.status.is_some_and(|s| s == Status::ENABLED);
        match edit {
            Edit::StatusOnly(fields) if enables(fields) => Some(StoredChange(None)),
            Edit::BatchUpdate(batch) => {
                let mut rest = batch.fields.clone();
                let status = rest.status.take();
                let disables_only =
                    rest == TokenFields::default() && status.is_some_and(|s| s != Status::ENABLED);
                (!disables_only).then_some(StoredChange(Some(&batch.fields)))
            }
            _ => None,
        }
    }

    /// `token` with the change's fields written over it. The name is left out: `name_prefix`
    /// judges the current name (and a new one was judged with the body).
    fn apply(&self, token: &Map<String, Value>) -> Map<String, Value> {
        let mut merged = token.clone();
        if let Some(Value::Object(fields)) = self.0.map(serde_json::to_value).and_then(Result::ok) {
            merged.extend(fields);
        }
        merged.remove("name");
        merged
    }
}

/// The existing tokens a request changes, reveals or deletes (none for a create or a read).
fn existing_ids(route: &Route, edit: Option<&Edit>) -> Vec<TokenId> {
    match route.endpoint {
        Endpoint::Delete(id) | Endpoint::RevealKey(id) => vec![id],
        // A batch update reaches policy whole only in native mode (fan-out sends each token
        // through as a PATCH of its own).
        Endpoint::Update { .. }
        | Endpoint::BatchUpdate
        | Endpoint::BatchDelete
        | Endpoint::RevealKeys => edit.map_or_else(Vec::new, Edit::token_ids),
        // A PATCH reaches policy as the update it became.
        Endpoint::List
        | Endpoint::Search
        | Endpoint::Get(_)
        | Endpoint::AutoGroups
        | Endpoint::Create
        | Endpoint::Patch(_) => Vec::new(),
    }
}
