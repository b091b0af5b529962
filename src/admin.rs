//! The operations listener (`server.admin_listen`): `/healthz` (the process serves), `/readyz`
//! (it can do its job), `/metrics` (Prometheus text) and `/openapi.json` (the caller-facing API's
//! OpenAPI document, [`crate::openapi`]). Never exposed to callers.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;

use crate::context::RequestId;
use crate::error::{Body, GatewayError, JSON_UTF8};
use crate::gateway::Gateway;
use crate::headers::X_REQUEST_ID;
use crate::reload::Live;
use crate::route::Operation;
use crate::upstream::{Envelope, UpstreamRequest};

/// The admin service, on the configuration in force (a reload changes the credential the
/// readiness probe uses).
pub fn service(
    live: Arc<Live>,
) -> BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible> {
    BoxCloneSyncService::new(tower::service_fn(move |request: Request<Incoming>| {
        let current = live.current();
        async move {
            Ok::<_, Infallible>(
                handle(&current.gateway, request.method(), request.uri().path()).await,
            )
        }
    }))
}

async fn handle(gateway: &Gateway, method: &Method, path: &str) -> Response<Body> {
    let id = RequestId::next();
    let mut response = answer(gateway, method, path, &id).await;
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    response
}

async fn answer(gateway: &Gateway, method: &Method, path: &str, id: &RequestId) -> Response<Body> {
    match (method, path) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({ "status": "ok" })),
        (&Method::GET, "/readyz") => {
            let audit = match &gateway.trail {
                Some(trail) => trail.ready().map(|()| "ok"),
                None => Err("the audit trail is not open".to_string()),
            };
            let upstream = upstream_check(gateway).await;
            let ready = audit.is_ok() && upstream.is_ok();
            gateway.metrics.set_audit_ready(audit.is_ok());
            gateway.metrics.set_upstream_ready(upstream.is_ok());
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let text =
                |check: Result<&str, String>| check.map_or_else(|problem| problem, str::to_string);
            let mut checks =
                serde_json::json!({ "audit": text(audit), "upstream": text(upstream) });
            // The shared state is reported, never judged: a Redis outage must not take every
            // replica out of the load balancer at once (SPEC §11).
            if let Some(cluster) = &gateway.cluster {
                checks["cluster"] = match cluster.ping().await {
                    Ok(()) => "ok".into(),
                    Err(error) => format!("{error}; rate limits fall back ({:?}), changes that need a token lock are refused", cluster.on_unavailable()).into(),
                };
            }
            json(
                status,
                serde_json::json!({ "ready": ready, "checks": checks }),
            )
        }
        (&Method::GET, "/metrics") => {
            // The pass-through identities come and go: their buckets are counted at each scrape.
            gateway
                .metrics
                .set_rate_limit_buckets(gateway.authenticator.buckets() + 1);
            gateway
                .metrics
                .set_unauthenticated_addresses(gateway.unauthenticated.len());
            let mut response = Response::new(Full::new(Bytes::from(gateway.metrics.render())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        (&Method::GET, "/openapi.json") => {
            let mut response = Response::new(Full::new(Bytes::from_static(
                crate::openapi::DOCUMENT.as_bytes(),
            )));
            response.headers_mut().insert(CONTENT_TYPE, JSON_UTF8);
            response
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/openapi.json") => {
            GatewayError::MethodNotAllowed { allow: "GET" }.into_response(id)
        }
        _ => GatewayError::NotFound.into_response(id),
    }
}

/// With `upstream.ready_check`, asks the upstream for one token with the held credential: any
/// HTTP answer that is not a refusal of that credential counts as ready.
async fn upstream_check(gateway: &Gateway) -> Result<&'static str, String> {
    if !gateway.ready_check {
        return Ok("not checked");
    }
    let Some(credential) = &gateway.held_credential else {
        return Ok("not checked (passthrough mode holds no credential)");
    };
    let answer = gateway
        .upstream
        .send(UpstreamRequest {
            op: Operation::List,
            method: Method::GET,
            path_and_query: "/api/token/?p=1&page_size=1",
            headers: HeaderMap::new(),
            body: Bytes::new(),
            credential,
            deadline: Instant::now() + gateway.request_timeout,
            served: None,
        })
        .await
        .map_err(|e| e.to_string())?;
    // new-api answers a bad credential with HTTP 200 and `success: false` in some eras.
    if let Some(Envelope {
        success: Some(false),
        message,
    }) = Envelope::parse(&answer.body)
    {
        let message = message.as_deref().unwrap_or("no message");
        return Err(format!("the upstream refused the request: {message}"));
    }
    Ok("ok")
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, JSON_UTF8);
    response
}
