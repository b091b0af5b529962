//! Identifies the caller from its `Authorization` header (SPEC §3) and, with mutual TLS, its
//! verified client certificate (SPEC §8), and attaches a
//! [`Caller`](crate::caller::Caller), or refuses with 401. Refusals are limited per source
//! address (SPEC §5, [`Unauthenticated`]): past the limit a 429 that writes no record of its own.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::Request;

use super::check::Check;
use crate::caller::Authenticator;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::ratelimit::unauthenticated::{Unauthenticated, Verdict};
use crate::route::route;
use crate::tls::PeerIdentity;
use crate::upstream::NEW_API_USER;

/// Inserts the [`Caller`](crate::caller::Caller) extension.
#[derive(Clone, Debug)]
pub struct Authenticate {
    authenticator: Arc<Authenticator>,
    unauthenticated: Arc<Unauthenticated>,
    metrics: Arc<Metrics>,
    dry_run: bool,
}

impl Authenticate {
    /// Authenticates with `authenticator`; limits refusals per source address with
    /// `unauthenticated` (counting them in `metrics`, refusing nothing when `dry_run`).
    pub fn new(
        authenticator: Arc<Authenticator>,
        unauthenticated: Arc<Unauthenticated>,
        metrics: Arc<Metrics>,
        dry_run: bool,
    ) -> Self {
        Authenticate {
            authenticator,
            unauthenticated,
            metrics,
            dry_run,
        }
    }

    /// A refusal before the caller is known, as the per-address limit lets it be answered: as
    /// itself (and recorded), or past the limit as a 429 that leaves no record of its own (the
    /// address's summary counts it). A request of no operation is never recorded, so not limited.
    fn limit(&self, request: &Request<impl Sized>, refusal: GatewayError) -> GatewayError {
        let Ok(op) = route(request.method(), request.uri()).map(|r| r.operation()) else {
            return refusal;
        };
        let Ok(context) = RequestContext::of(request) else {
            return refusal;
        };
        let ip = context.source_ip().ip;
        match self
            .unauthenticated
            .refuse(ip, &context.method, &context.path, op)
        {
            Verdict::Record(status) => {
                context.set_rate(status);
                refusal
            }
            Verdict::Suppress(status) => {
                self.metrics
                    .rate_limited("unauthenticated", "unauthenticated", self.dry_run);
                if self.dry_run {
                    return refusal;
                }
                context.set_rate(status);
                context.set_unrecorded();
                GatewayError::RateLimited {
                    policy: status.policy,
                    retry_after: status.reset,
                }
            }
        }
    }
}

impl<B> Check<B> for Authenticate {
    fn check(&self, request: &mut Request<B>) -> Result<(), GatewayError> {
        let headers = request.headers();
        if headers.get_all(AUTHORIZATION).iter().nth(1).is_some() {
            let refusal =
                GatewayError::BadRequest("send one Authorization header, not several".into());
            return Err(self.limit(request, refusal));
        }
        let peer = request.extensions().get::<Arc<PeerIdentity>>();
        let caller = match self.authenticator.authenticate(
            headers.get(AUTHORIZATION),
            headers.get(NEW_API_USER),
            peer.map(|p| &**p),
        ) {
            Ok(caller) => caller,
            Err(refusal) => return Err(self.limit(request, refusal)),
        };
        RequestContext::of(request)?.set_client(caller.name.clone());
        request.extensions_mut().insert(caller);
        Ok(())
    }
}
