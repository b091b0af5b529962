//! The request stack, top to bottom, in one place. Changing the order is a one-line edit here.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::{Request, Response};
use hyper::body::Incoming;
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::audit::writer::Trail;
use crate::error::{Body, GatewayError};
use crate::forward::Forward;
use crate::gateway::Gateway;
use crate::layers::access_log::AccessLogLayer;
use crate::layers::audit::{AuditIntentLayer, AuditOutcomeLayer, AuditPolicy};
use crate::layers::authenticate::Authenticate;
use crate::layers::authorize::Authorize;
use crate::layers::batch_update::BatchFanoutLayer;
use crate::layers::capture_before::CaptureBeforeLayer;
use crate::layers::check::CheckLayer;
use crate::layers::detach::DetachLayer;
use crate::layers::patch::PatchLayer;
use crate::layers::policy::PolicyLayer;
use crate::layers::rate_limit::RateLimit;
use crate::layers::read_body::ReadBodyLayer;
use crate::layers::request_context::RequestContextLayer;
use crate::layers::rescue::RescueLayer;
use crate::layers::route::Route;
use crate::layers::source_ip::SourceIp;
use crate::layers::validate::Validate;

/// The caller-facing service.
pub type GatewayService = BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>;

/// Builds the caller-facing service from the gateway's state, whose trail must be open.
///
/// The stack is built in three segments, each boxed: one `ServiceBuilder` type nesting every layer
/// is hard work for the compiler's trait solver (minutes per build), and a box per segment costs
/// one allocation per request.
pub fn build(gateway: &Gateway, trail: Arc<Trail>) -> GatewayService {
    let audit = AuditPolicy::new(trail, gateway.audit_reads, &gateway.limits.extra_fields);
    let rate_limit = RateLimit::new(
        gateway.metrics.clone(),
        gateway.rate_limit_dry_run,
        gateway.shared_limits.clone(),
    );

    // Below the body read: the request is `Request<Bytes>`.
    let with_body = ServiceBuilder::new()
        // Check a write body against SPEC §4 and forward the checked edit, never the raw bytes.
        .layer(CheckLayer::new(Validate::new(
            gateway.limits.clone(),
            gateway.metrics.clone(),
        )))
        // Charge the rest of a batch's cost, now that its ids are known.
        .layer(rate_limit.batch_rest())
        // A batch update in fan-out mode: each id goes on below as a PATCH of its own.
        .layer(BatchFanoutLayer::new(
            gateway.limits.batch_update,
            gateway.batch_concurrency,
            audit.clone(),
            gateway.metrics.clone(),
        ))
        // One change at a time per token; a PATCH read, merged and checked as the full update.
        .layer(PatchLayer::new(
            gateway.upstream.clone(),
            gateway.limits.clone(),
            gateway.locks.clone(),
            audit.clone(),
        ))
        // The caller's policy on the token as it would be stored (current names read upstream).
        .layer(PolicyLayer::new(
            gateway.upstream.clone(),
            gateway.metrics.clone(),
        ))
        // What each token was before the change, read for its intent record (audit.capture_before).
        .layer(CaptureBeforeLayer::new(
            gateway.upstream.clone(),
            gateway.audit_capture_before,
        ))
        // The intent record, durable before anything is sent; 503 when the trail cannot be written.
        .layer(AuditIntentLayer::new(audit.clone()))
        // Send it upstream in canonical form with the credential injected.
        .service(Forward::new(gateway.upstream.clone()));
    let with_body: BoxCloneSyncService<Request<Bytes>, Response<Body>, GatewayError> =
        BoxCloneSyncService::new(with_body);

    // Who is calling and what they ask for, before the body is read.
    let checked = ServiceBuilder::new()
        // Work out the caller IP (trusted proxies only) for forwarding, logs and audit.
        .layer(CheckLayer::new(SourceIp::new(
            gateway.trusted_proxies.clone(),
        )))
        // Identify the caller by its key (or its own token in pass-through mode): 401 otherwise.
        .layer(CheckLayer::new(Authenticate::new(
            gateway.authenticator.clone(),
            gateway.unauthenticated.clone(),
            gateway.metrics.clone(),
            gateway.rate_limit_dry_run,
        )))
        // Map the request to a SPEC §2 route; nothing else is ever forwarded.
        .layer(CheckLayer::new(Route))
        // Charge the caller's bucket for its class (reads or writes) before anything is spent.
        .layer(rate_limit.first())
        // Refuse operations outside the caller's allow list.
        .layer(CheckLayer::new(Authorize))
        // Read the body whole, within the size cap and the request deadline.
        .layer(ReadBodyLayer::new(gateway.max_body_bytes))
        .service(with_body);
    let checked: BoxCloneSyncService<Request<Incoming>, Response<Body>, GatewayError> =
        BoxCloneSyncService::new(checked);

    let service = ServiceBuilder::new()
        // Mark credentials sensitive at once, so no `Debug` of the request can print them.
        .layer(SetSensitiveRequestHeadersLayer::new([
            AUTHORIZATION,
            PROXY_AUTHORIZATION,
            COOKIE,
        ]))
        // Give the request its id and deadline; echo the id to the caller.
        .layer(RequestContextLayer::new(gateway.request_timeout))
        // A change runs to its outcome record even if its caller goes away.
        .layer(DetachLayer::new(gateway.in_flight.clone()))
        // One access-log line and the request metrics, whatever happened below.
        .layer(AccessLogLayer::new(gateway.metrics.clone()))
        // The outcome record of every audited request, refused or forwarded, durable before the answer.
        .layer(AuditOutcomeLayer::new(audit))
        // Render every refusal once, as the SPEC §9 envelope with the request id.
        .layer(RescueLayer)
        .service(checked);
    BoxCloneSyncService::new(service)
}
