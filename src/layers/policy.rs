//! The caller's policy (SPEC §5), after the body is checked and before the intent record: the
//! token a write would store is judged against the client's rules, and for `name_prefix` the
//! current names of the tokens it names are read from the upstream first. A batch is refused
//! whole if any of its ids is outside the prefix. A refusal is a 403 `forbidden` naming every
//! rule broken and the fields at fault.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use futures_util::{StreamExt, TryStreamExt};
use http::{Request, Response};
use tower::{Layer, Service};

use super::patch::KnownName;
use super::validate::unix_now;
use super::BoxFuture;
use crate::caller::Caller;
use crate::context::RequestContext;
use crate::error::{Body, GatewayError};
use crate::metrics::Metrics;
use crate::policy::{PolicyRefusal, Violation};
use crate::read_token::{current_name, read_token};
use crate::route::{Endpoint, Route, TokenId};
use crate::token::edit::Edit;
use crate::upstream::Upstream;

/// How many current names are read from the upstream at once for one batch.
const NAME_READS_AT_ONCE: usize = 4;

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

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
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
            let violations = judge(&upstream, &request).await?;
            if violations.is_empty() {
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
/// pass, so a refused request costs the upstream nothing) `name_prefix` on current names.
async fn judge(
    upstream: &Upstream,
    request: &Request<Bytes>,
) -> Result<Vec<Violation>, GatewayError> {
    let extensions = request.extensions();
    let (Some(caller), Some(route)) = (extensions.get::<Caller>(), extensions.get::<Route>())
    else {
        return Err(GatewayError::Internal(
            "the policy check runs after authenticate and route".into(),
        ));
    };
    let Some(policy) = &caller.policy else {
        return Ok(Vec::new());
    };
    let edit = extensions.get::<Edit>();
    let violations = edit.map_or_else(Vec::new, |edit| policy.judge_edit(edit, unix_now()));
    if !violations.is_empty() || !policy.checks_current_names() {
        return Ok(violations);
    }
    let context = RequestContext::of(request)?;
    let known = extensions.get::<KnownName>();
    let names = futures_util::stream::iter(existing_ids(route, edit))
        .map(|id| async move {
            if let Some(KnownName(known_id, name)) = known.filter(|k| k.0 == id) {
                return Ok((*known_id, name.clone()));
            }
            let token = read_token(upstream, caller, context, id).await?;
            Ok::<_, GatewayError>((id, current_name(&token)))
        })
        .buffered(NAME_READS_AT_ONCE)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(names
        .iter()
        .filter_map(|(id, name)| policy.judge_current_name(*id, name))
        .collect())
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
