//! The one error type of the request path, and its rendering as the SPEC §9 envelope.
//!
//! Every refusal the gateway makes itself is a [`GatewayError`]. Layers return it as their
//! `Service::Error`; the rescue layer at the top of the stack renders it once, with the request
//! id, so no layer writes an error body of its own. The `Display` text is the `message` a person
//! reads; it never carries internal detail (addresses, causes), which stays in the `#[source]`
//! chain and is logged.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::audit::writer::AuditError;
use crate::context::RequestId;
use crate::policy::PolicyRefusal;
use crate::route::TokenId;
use crate::token::edit::{BodyError, Faults};
use crate::token::json::JsonError;

/// The body type of every response the gateway returns (upstream bodies are read whole).
pub type Body = Full<Bytes>;

/// A boxed error, as causes travel in the source chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a request was not answered by the upstream, one variant per cause (SPEC §9).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A path, id, query or header fault (SPEC §2, §3).
    #[error("{0}")]
    BadRequest(String),
    /// No gateway key in `Authorization`.
    #[error("a gateway key is required: send it as `Authorization: Bearer <key>`")]
    MissingKey,
    /// A key that no configured client has.
    #[error("the gateway key is not known to this gateway")]
    UnknownKey,
    /// A key whose client must also present its client certificate (SPEC §8).
    #[error("client `{client}` must also present its client certificate (mutual TLS)")]
    CertificateRequired {
        /// The client the key belongs to.
        client: String,
    },
    /// Pass-through mode (SPEC §3): the upstream refused the caller's own access token when the
    /// gateway read a token for its checks, before anything was forwarded.
    #[error("the upstream refused the access token this request carries (pass-through mode): send a valid upstream access token in `Authorization`")]
    CallerCredentialRefused,
    /// No key, and a client certificate that identifies no client.
    #[error("the client certificate identifies no client of this gateway, and no gateway key was sent: send it as `Authorization: Bearer <key>`")]
    UnknownCertificate,
    /// The operation is not in the caller's `allow` list.
    #[error("client `{client}` may not use operation `{op}` (not in its `allow` list)")]
    OperationNotAllowed {
        /// The caller's client name.
        client: String,
        /// The operation's policy name.
        op: &'static str,
    },
    /// A search by key from a caller that may not read keys (SPEC §2).
    #[error("client `{client}` may not search by key (`token`): with wildcards a key search recovers whole keys a character at a time, so it needs `reveal_key` in the client's `allow` list; search by name with `keyword`")]
    KeySearchNotAllowed {
        /// The caller's client name.
        client: String,
    },
    /// A client policy rule (SPEC §5): every rule broken is reported.
    #[error("{0}")]
    Forbidden(PolicyRefusal),
    /// A rate limit of SPEC §5: the caller's class, or the global cap on upstream requests.
    #[error("{}", rate_limited_message(policy, *retry_after))]
    RateLimited {
        /// The limit's policy name: `reads`, `writes` or `upstream`.
        policy: &'static str,
        /// Whole seconds until a retry can succeed, at least 1.
        retry_after: u64,
    },
    /// A token the request names does not exist, found when the gateway reads it for a check.
    #[error("token {0} does not exist (or does not belong to the upstream account)")]
    TokenNotFound(TokenId),
    /// A write body without `Content-Type: application/json`.
    #[error("a request body must be JSON: send `Content-Type: application/json` (with `charset=utf-8` or no charset)")]
    UnsupportedMediaType,
    /// A request with a `Content-Encoding` other than `identity` (SPEC §3).
    #[error("the request body must not be encoded: send plain JSON without Content-Encoding (the gateway checks every body and never forwards an encoded one)")]
    EncodedBody,
    /// Not one strict JSON object (SPEC §4.1).
    #[error("{0}")]
    InvalidJson(#[from] JsonError),
    /// One or more field faults (SPEC §4.2–4.4), every one reported.
    #[error("{0}")]
    InvalidBody(Faults),
    /// A path outside SPEC §2.
    #[error("no such route: this gateway serves only the token API (/api/token/...)")]
    NotFound,
    /// A SPEC §2 path with a method it does not take.
    #[error("method not allowed on this path; allowed: {allow}")]
    MethodNotAllowed {
        /// The value of the `Allow` header.
        allow: &'static str,
    },
    /// The caller did not send its request within `server.request_timeout_ms`.
    #[error("the request was not received within {0} ms")]
    RequestTimeout(u64),
    /// A body over `server.max_body_bytes`.
    #[error("the request body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// The audit trail cannot be written, so the request is not forwarded (SPEC §6, fail closed).
    #[error(
        "the request was not forwarded because the audit trail cannot be written; retry later"
    )]
    AuditUnavailable(#[source] AuditError),
    /// Another change of the token held its lock past this request's deadline
    /// (`server.request_timeout_ms`); nothing was forwarded (SPEC §6, bounded refusals).
    #[error("another change of token {0} is still in progress and did not finish within this request's time; this request was not forwarded: retry")]
    TokenBusy(TokenId),
    /// SPEC §11: the shared state (Redis) cannot be reached for a change that needs a token lock,
    /// or for a rate limit with `cluster.on_unavailable = "refuse"`; nothing was forwarded.
    #[error("the replicas' shared state cannot be reached, so this request was not forwarded; retry later")]
    ClusterUnavailable(#[source] BoxError),
    /// The upstream answered 429 with an empty body.
    #[error("the upstream is rate limiting requests; retry later")]
    UpstreamRateLimited,
    /// A fault of the gateway itself; the cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] BoxError),
    /// The upstream refused or reset the connection, redirected, or failed TLS.
    #[error("the upstream is unavailable: {reason}")]
    UpstreamUnavailable {
        /// What happened, in words that reveal nothing about the upstream's address.
        reason: &'static str,
        /// The underlying error, for the log.
        #[source]
        source: Option<BoxError>,
    },
    /// The upstream refused the gateway's own credential (401/403).
    #[error("the upstream refused the gateway's credential; the operator must check the upstream access token and user id")]
    UpstreamAuthFailed,
    /// A PATCH (or one id of a fan-out batch) whose full `PUT` was applied before a later step
    /// failed (SPEC §4.5, §6): the answer says what was applied, and why the rest was not.
    #[error("the full update was applied ({}), but the status-only update after it failed: {cause}", written.join(", "))]
    Partial {
        /// The fields the full `PUT` wrote.
        written: Vec<String>,
        /// What failed after it.
        cause: Box<GatewayError>,
    },
    /// No upstream answer within `upstream.timeout_ms` (or the request's deadline).
    #[error("the upstream did not answer within {0} ms")]
    UpstreamTimeout(u64),
    /// The request's deadline passed (waiting for a token's lock, say) before the upstream could
    /// be asked: nothing was sent.
    #[error("server.request_timeout_ms ran out before the upstream was asked; nothing was sent")]
    DeadlinePassed,
}

impl GatewayError {
    /// The stable code of SPEC §9, for programs to branch on.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::MissingKey
            | GatewayError::UnknownKey
            | GatewayError::CertificateRequired { .. }
            | GatewayError::CallerCredentialRefused
            | GatewayError::UnknownCertificate => "unauthenticated",
            GatewayError::OperationNotAllowed { .. }
            | GatewayError::KeySearchNotAllowed { .. }
            | GatewayError::Forbidden(_) => "forbidden",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::TokenNotFound(_) => "not_found",
            GatewayError::UnsupportedMediaType | GatewayError::EncodedBody => {
                "unsupported_media_type"
            }
            GatewayError::InvalidJson(_) => "invalid_json",
            GatewayError::InvalidBody(faults) => faults.code(),
            GatewayError::NotFound => "not_found",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::RequestTimeout(_) => "request_timeout",
            GatewayError::BodyTooLarge(_) => "body_too_large",
            GatewayError::AuditUnavailable(_) => "audit_unavailable",
            GatewayError::TokenBusy(_) => "token_busy",
            GatewayError::ClusterUnavailable(_) => "cluster_unavailable",
            GatewayError::UpstreamRateLimited => "upstream_rate_limited",
            GatewayError::Internal(_) => "internal",
            GatewayError::UpstreamUnavailable { .. } => "upstream_unavailable",
            GatewayError::UpstreamAuthFailed => "upstream_auth_failed",
            GatewayError::UpstreamTimeout(_) | GatewayError::DeadlinePassed => "upstream_timeout",
            GatewayError::Partial { cause, .. } => cause.code(),
        }
    }

    /// The HTTP status of SPEC §9.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::MissingKey
            | GatewayError::UnknownKey
            | GatewayError::CertificateRequired { .. }
            | GatewayError::CallerCredentialRefused
            | GatewayError::UnknownCertificate => StatusCode::UNAUTHORIZED,
            GatewayError::OperationNotAllowed { .. }
            | GatewayError::KeySearchNotAllowed { .. }
            | GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::TokenNotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::UnsupportedMediaType | GatewayError::EncodedBody => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            GatewayError::InvalidJson(_) | GatewayError::InvalidBody(_) => StatusCode::BAD_REQUEST,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::AuditUnavailable(_)
            | GatewayError::TokenBusy(_)
            | GatewayError::ClusterUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamRateLimited => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::UpstreamUnavailable { .. } | GatewayError::UpstreamAuthFailed => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::UpstreamTimeout(_) | GatewayError::DeadlinePassed => {
                StatusCode::GATEWAY_TIMEOUT
            }
            GatewayError::Partial { cause, .. } => cause.status(),
        }
    }

    /// Whether the fault is the gateway's or the upstream's (logged at error/warn level) rather
    /// than the caller's (logged only in the access line).
    pub fn is_server_side(&self) -> bool {
        self.status().is_server_error()
    }

    /// The SPEC §9 envelope for this error, carrying the request id.
    pub fn into_response(self, request_id: &RequestId) -> Response<Body> {
        let fields: Option<Vec<&str>> = match &self {
            GatewayError::InvalidBody(faults) => Some(faults.fields()),
            GatewayError::Partial { cause, .. } => match &**cause {
                GatewayError::InvalidBody(faults) => Some(faults.fields()),
                _ => None,
            },
            GatewayError::Forbidden(refusal) => {
                let mut fields: Vec<&str> = Vec::new();
                for violation in &refusal.violations {
                    if !fields.contains(&violation.field) {
                        fields.push(violation.field);
                    }
                }
                Some(fields)
            }
            _ => None,
        };
        let written = match &self {
            GatewayError::Partial { written, .. } => Some(written.as_slice()),
            _ => None,
        };
        let envelope = Envelope {
            success: false,
            message: &self.to_string(),
            partial: written.map(|_| true),
            written,
            error: EnvelopeError {
                code: self.code(),
                field: fields.as_ref().and_then(|f| f.first().copied()),
                fields: fields.clone(),
                request_id: request_id.as_str(),
            },
        };
        // Serialising borrowed strings and a bool into a Vec cannot fail.
        let body = serde_json::to_vec(&envelope).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, JSON_UTF8);
        match self {
            GatewayError::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            GatewayError::RateLimited { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
            }
            GatewayError::TokenBusy(_) | GatewayError::ClusterUnavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            _ => {}
        }
        response.extensions_mut().insert(ErrorCode(self.code()));
        response
    }
}

/// The message of a 429 `rate_limited`.
fn rate_limited_message(policy: &str, retry_after: u64) -> String {
    if policy == "upstream" {
        format!(
            "the gateway's limit on requests to the upstream is reached; retry in {retry_after} s"
        )
    } else {
        format!("this client's rate limit for {policy} is reached; retry in {retry_after} s")
    }
}

impl From<crate::locks::LockError> for GatewayError {
    fn from(error: crate::locks::LockError) -> GatewayError {
        match error {
            crate::locks::LockError::Busy(id) => GatewayError::TokenBusy(id),
            crate::locks::LockError::ClusterUnavailable(cause) => {
                GatewayError::ClusterUnavailable(cause.into())
            }
        }
    }
}

impl From<BodyError> for GatewayError {
    fn from(error: BodyError) -> GatewayError {
        match error {
            BodyError::Json(error) => GatewayError::InvalidJson(error),
            BodyError::Fields(faults) => GatewayError::InvalidBody(faults),
        }
    }
}

/// The SPEC §9 envelope, in the order SPEC writes it (new-api's own `success`/`message` first).
#[derive(serde::Serialize)]
struct Envelope<'a> {
    success: bool,
    message: &'a str,
    /// `true` when part of the request was applied (SPEC §4.5): a PATCH's full `PUT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    partial: Option<bool>,
    /// The fields that part wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    written: Option<&'a [String]>,
    error: EnvelopeError<'a>,
}

#[derive(serde::Serialize)]
struct EnvelopeError<'a> {
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<Vec<&'a str>>,
    request_id: &'a str,
}

/// The `Content-Type` of every JSON body the gateway writes.
pub const JSON_UTF8: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");

/// The SPEC §9 code of a response the gateway made itself, kept in the response's extensions
/// for the access log and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn envelope_carries_code_message_and_request_id() {
        let id = RequestId::from_static("rid-1");
        let response = GatewayError::MethodNotAllowed { allow: "GET, POST" }.into_response(&id);
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()[header::ALLOW], "GET, POST");
        assert_eq!(response.headers()[header::CONTENT_TYPE], JSON_UTF8);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"{\"success\":false,\"message\":"));
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["success"], false);
        assert_eq!(json["error"]["code"], "method_not_allowed");
        assert_eq!(json["error"]["request_id"], "rid-1");
        assert!(json["message"].as_str().unwrap().contains("GET, POST"));
    }

    #[test]
    fn internal_detail_is_not_in_the_message() {
        let error = GatewayError::UpstreamUnavailable {
            reason: "connection refused",
            source: Some("tcp connect error: 10.1.2.3:3000".into()),
        };
        assert!(!error.to_string().contains("10.1.2.3"));
        assert_eq!(error.status(), 502);
    }
}
