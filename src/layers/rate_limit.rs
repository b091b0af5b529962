//! The caller's rate limits (SPEC §5): one unit from the bucket of its class before anything else
//! is spent on the request, and, once a batch's ids are known, the rest of its cost.
//!
//! A configured client has its own buckets; a pass-through identity has buckets of the
//! `[rate_limit]` defaults from a bounded table, made when it is first seen. With `[cluster]` the
//! bucket every replica shares decides (SPEC §11; this replica's own decides while Redis cannot be
//! reached and `cluster.on_unavailable = "local"`, and a 503 `cluster_unavailable` comes instead
//! with `"refuse"`); without it, nothing is awaited here. With `rate_limit.dry_run` a would-be
//! refusal is counted and logged, and the request goes on.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{ready, Either, Ready};
use http::{Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use crate::caller::Caller;
use crate::context::RequestContext;
use crate::error::{Body, GatewayError};
use crate::metrics::Metrics;
use crate::ratelimit::shared::SharedBuckets;
use crate::ratelimit::{CallerLimits, Class, Decision};
use crate::route::Route;
use crate::token::edit::Edit;

/// Which part of a request's cost a layer charges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// One unit, before anything else is spent on the request.
    First,
    /// The rest of a batch's cost, once its ids are known (after validation). If the rest is not
    /// available, the batch is a 429 and its first unit stays spent.
    BatchRest,
}

/// Charges callers' buckets.
#[derive(Clone, Debug)]
pub struct RateLimit {
    metrics: Arc<Metrics>,
    dry_run: bool,
    shared: Option<Arc<SharedBuckets>>,
}

impl RateLimit {
    /// Charges callers, counting refusals in `metrics`; refuses nothing when `dry_run`; in the
    /// buckets every replica shares when `shared` is given.
    pub fn new(metrics: Arc<Metrics>, dry_run: bool, shared: Option<Arc<SharedBuckets>>) -> Self {
        RateLimit {
            metrics,
            dry_run,
            shared,
        }
    }

    /// The layer charging the first unit.
    pub fn first(&self) -> RateLimitLayer {
        RateLimitLayer {
            limit: self.clone(),
            part: Part::First,
        }
    }

    /// The layer charging the rest of a batch's cost.
    pub fn batch_rest(&self) -> RateLimitLayer {
        RateLimitLayer {
            limit: self.clone(),
            part: Part::BatchRest,
        }
    }

    /// What `part` of `request` costs: its caller, class and cost; `None` when nothing is
    /// charged.
    fn cost_of<'r, B>(
        &self,
        request: &'r Request<B>,
        part: Part,
    ) -> Result<Option<Cost<'r>>, GatewayError> {
        let extensions = request.extensions();
        let (Some(caller), Some(route)) = (extensions.get::<Caller>(), extensions.get::<Route>())
        else {
            return Err(GatewayError::Internal(
                "the rate limit runs after authenticate and route".into(),
            ));
        };
        let Some(limits) = &caller.limits else {
            return Ok(None);
        };
        let class = Class::of(route.operation());
        let cost = match part {
            Part::First => 1,
            // A batch costs one per id, capped at the bucket size; the first was charged already.
            Part::BatchRest => extensions
                .get::<Edit>()
                .and_then(Edit::batch_len)
                .map_or(0, |n| {
                    (n.min(limits.bucket(class).burst() as usize) as u32).saturating_sub(1)
                }),
        };
        Ok((cost > 0).then_some((caller, limits, class, cost)))
    }

    /// What the caller is told of `decision` on `class`: its `RateLimit` fields, and a 429 when
    /// refused.
    fn decided(
        &self,
        context: &RequestContext,
        label: &str,
        class: Class,
        cost: u32,
        decision: Decision,
    ) -> Result<(), GatewayError> {
        context.set_rate(decision.status());
        let Decision::Refused { status, .. } = decision else {
            return Ok(());
        };
        self.metrics
            .rate_limited(label, class.as_str(), self.dry_run);
        if self.dry_run {
            tracing::info!(
                request_id = %context.id,
                client = label,
                class = class.as_str(),
                cost,
                "rate limit would refuse this request (rate_limit.dry_run)"
            );
            return Ok(());
        }
        Err(GatewayError::RateLimited {
            policy: status.policy,
            retry_after: status.reset,
        })
    }
}

/// What a request costs: its caller, the caller's buckets, the class and the units.
type Cost<'r> = (&'r Caller, &'r Arc<CallerLimits>, Class, u32);

/// One charge to make in the shared buckets, owned: it is awaited.
struct Charge {
    context: Arc<RequestContext>,
    /// The caller's name: the key of its shared buckets.
    caller: Arc<str>,
    label: String,
    limits: Arc<CallerLimits>,
    class: Class,
    cost: u32,
}

impl Charge {
    /// The shared bucket's name: `rl:<caller>:<class>` (a client name, or `token:<12 hex>`).
    fn shared_name(&self) -> String {
        format!("rl:{}:{}", self.caller, self.class.as_str())
    }
}

/// Builds [`RateLimited`].
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limit: RateLimit,
    part: Part,
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            limit: self.limit.clone(),
            part: self.part,
            inner,
        }
    }
}

/// Charges the caller's bucket, then calls the inner service.
#[derive(Clone, Debug)]
pub struct RateLimited<S> {
    limit: RateLimit,
    part: Part,
    inner: S,
}

type Answer = Result<Response<Body>, GatewayError>;

impl<S, B> Service<Request<B>> for RateLimited<S>
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
    type Future = Either<Either<Ready<Answer>, S::Future>, BoxFuture<Answer>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (caller, limits, class, cost) = match self.limit.cost_of(&request, self.part) {
            Ok(Some(charge)) => charge,
            Ok(None) => return Either::Left(Either::Right(self.inner.call(request))),
            Err(refusal) => return Either::Left(Either::Left(ready(Err(refusal)))),
        };
        let Some(shared) = self.limit.shared.clone() else {
            // One process: the decision is at hand, and nothing is allocated for it.
            let decision = limits.bucket(class).charge(cost);
            let decided = RequestContext::of(&request).and_then(|context| {
                self.limit
                    .decided(context, caller.metric_label(), class, cost, decision)
            });
            return Either::Left(match decided {
                Ok(()) => Either::Right(self.inner.call(request)),
                Err(refusal) => Either::Left(ready(Err(refusal))),
            });
        };
        let charge = match RequestContext::of(&request) {
            Ok(context) => Charge {
                context: context.clone(),
                caller: caller.name.clone(),
                label: caller.metric_label().to_owned(),
                limits: limits.clone(),
                class,
                cost,
            },
            Err(error) => return Either::Left(Either::Left(ready(Err(error)))),
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.limit.clone();
        Either::Right(Box::pin(async move {
            let bucket = charge.limits.bucket(charge.class);
            let Some(decision) = shared
                .charge_or_fall_back(&charge.shared_name(), bucket, charge.cost)
                .await
            else {
                return Err(GatewayError::ClusterUnavailable(
                    "the shared rate limits cannot be reached (cluster.on_unavailable = \"refuse\")"
                        .into(),
                ));
            };
            limit.decided(
                &charge.context,
                &charge.label,
                charge.class,
                charge.cost,
                decision,
            )?;
            inner.call(request).await
        }))
    }
}
