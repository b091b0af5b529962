//! The caller's rate limits (SPEC §5): one unit from the bucket of its class before anything else
//! is spent on the request, and, once a batch's ids are known, the rest of its cost.
//!
//! A configured client has its own buckets; a pass-through identity has buckets of the
//! `[rate_limit]` defaults from a bounded table, made when it is first seen. With
//! `rate_limit.dry_run` a would-be refusal is counted and logged, and the request goes on.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;

use super::check::Check;
use crate::caller::Caller;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::ratelimit::{Class, Decision};
use crate::route::Route;
use crate::token::edit::Edit;

/// Charges one unit of the caller's class.
#[derive(Clone, Debug)]
pub struct RateLimit {
    metrics: Arc<Metrics>,
    dry_run: bool,
}

impl RateLimit {
    /// Charges callers, counting refusals in `metrics`; refuses nothing when `dry_run`.
    pub fn new(metrics: Arc<Metrics>, dry_run: bool) -> Self {
        RateLimit { metrics, dry_run }
    }

    /// Charges `cost` units (the rest of a batch: `batch` is true) of the request's class.
    fn charge<B>(&self, request: &Request<B>, batch: bool) -> Result<(), GatewayError> {
        let extensions = request.extensions();
        let (Some(caller), Some(route)) = (extensions.get::<Caller>(), extensions.get::<Route>())
        else {
            return Err(GatewayError::Internal(
                "the rate limit runs after authenticate and route".into(),
            ));
        };
        let Some(limits) = &caller.limits else {
            return Ok(());
        };
        let class = Class::of(route.operation());
        let bucket = limits.bucket(class);
        let cost = if batch {
            // The first unit was charged before the body was read; a batch costs one per id,
            // capped at the bucket size.
            extensions
                .get::<Edit>()
                .and_then(Edit::batch_len)
                .map_or(0, |n| {
                    (n.min(bucket.burst() as usize) as u32).saturating_sub(1)
                })
        } else {
            1
        };
        if cost == 0 {
            return Ok(());
        }
        let context = RequestContext::of(request)?;
        let decision = bucket.charge(cost);
        context.set_rate(decision.status());
        let Decision::Refused { status, .. } = decision else {
            return Ok(());
        };
        self.metrics
            .rate_limited(caller.metric_label(), class.as_str(), self.dry_run);
        if self.dry_run {
            tracing::info!(
                request_id = %context.id,
                client = caller.metric_label(),
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

impl<B> Check<B> for RateLimit {
    fn check(&self, request: &mut Request<B>) -> Result<(), GatewayError> {
        self.charge(request, false)
    }
}

/// Charges the rest of a batch once its ids are known (after validation). If the rest is not
/// available, the batch is a 429 and its first unit stays spent.
#[derive(Clone, Debug)]
pub struct ChargeBatch(pub RateLimit);

impl Check<Bytes> for ChargeBatch {
    fn check(&self, request: &mut Request<Bytes>) -> Result<(), GatewayError> {
        self.0.charge(request, true)
    }
}
