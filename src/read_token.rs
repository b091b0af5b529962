//! Reads tokens from the upstream (`GET /api/token/{id}`) for the gateway's own needs:
//! `name_prefix` needs the current name of a token before it is changed, revealed or deleted,
//! a PATCH the token to merge into, and the audit trail what a token was before a change
//! (SPEC §6.1). What was read is kept in [`KnownTokens`] so no step reads a token twice.
//!
//! The read carries the caller's credential (so it sees exactly what the caller's change would
//! touch), counts against the global upstream rate limit, and is never the answer the audit
//! record reports.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use crate::caller::Caller;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::headers;
use crate::route::{Endpoint, TokenId};
use crate::upstream::{Served, Upstream, UpstreamRequest};

/// How many tokens of one request are read from the upstream at once.
pub const READS_AT_ONCE: usize = 4;

/// gorm's text for a missing row, which new-api returns verbatim for an unknown or foreign id.
const RECORD_NOT_FOUND: &str = "record not found";

/// A token as the upstream stores it, read once and shared by every step that needs it.
pub type Stored = Arc<Map<String, Value>>;

/// The tokens a request names as the gateway read them under their locks for it (or, for the
/// status-only `PUT` that follows a PATCH's full one, as that full `PUT` left them), so no later
/// step reads them again: a request extension.
#[derive(Clone, Debug, Default)]
pub struct KnownTokens {
    tokens: Vec<(TokenId, Stored)>,
    /// Whether they are the `before` of the change's intent records (SPEC §6.1): every token the
    /// change names was read for it (a PATCH, a fan-out id, `audit.capture_before`), not only
    /// some to confirm stored values or for `name_prefix`.
    pub recorded: bool,
}

impl KnownTokens {
    /// `tokens`, read under their locks; `recorded` when they are what the change's records say.
    pub fn read(tokens: Vec<(TokenId, Stored)>, recorded: bool) -> KnownTokens {
        KnownTokens { tokens, recorded }
    }

    /// Token `id`, if it was read.
    pub fn get(&self, id: TokenId) -> Option<&Stored> {
        self.tokens
            .iter()
            .find(|(known, _)| *known == id)
            .map(|(_, token)| token)
    }

    /// Adds tokens read later (a token already known keeps its first read).
    pub fn extend(&mut self, tokens: Vec<(TokenId, Stored)>) {
        for (id, token) in tokens {
            if self.get(id).is_none() {
                self.tokens.push((id, token));
            }
        }
    }
}

/// Reads each token of `ids` ([`read_token`]), [`READS_AT_ONCE`] at a time; the first failure
/// (a missing token is [`GatewayError::TokenNotFound`]) fails them all.
pub async fn read_tokens(
    upstream: &Upstream,
    caller: &Caller,
    context: &RequestContext,
    ids: impl IntoIterator<Item = TokenId>,
) -> Result<Vec<(TokenId, Stored)>, GatewayError> {
    futures_util::stream::iter(ids)
        .map(|id| async move {
            let token = read_token(upstream, caller, context, id).await?;
            Ok::<_, GatewayError>((id, Arc::new(token)))
        })
        .buffered(READS_AT_ONCE)
        .try_collect()
        .await
}

/// The token `id` as the upstream stores it (the `data` object of its answer; the key in it is
/// masked by new-api E2 and later, and must never be logged either way).
pub async fn read_token(
    upstream: &Upstream,
    caller: &Caller,
    context: &RequestContext,
    id: TokenId,
) -> Result<Map<String, Value>, GatewayError> {
    let read = Endpoint::Get(id);
    let answer = upstream
        .send(UpstreamRequest {
            op: read.operation(),
            method: read.method(),
            path_and_query: &read.upstream_path(),
            headers: headers::to_upstream(
                HeaderMap::new(),
                context.source_ip(),
                &context.id,
                context.trace(),
            ),
            body: Bytes::new(),
            credential: &caller.credential,
            deadline: context.deadline,
            served: Some(Served {
                context,
                caller_label: caller.metric_label(),
                records_answer: false,
            }),
        })
        .await?;
    token_of(answer.status, &answer.body, id)
}

/// The token in a `GET /api/token/{id}` answer: HTTP 200, `success: true`, `data` an object.
/// Public for `benches/validate.rs` (every audited write that confirms a value parses one).
pub fn token_of(
    status: StatusCode,
    body: &[u8],
    id: TokenId,
) -> Result<Map<String, Value>, GatewayError> {
    let refused = |why: &'static str, detail: String| {
        tracing::warn!(
            token_id = id.get(),
            status = status.as_u16(),
            "{why}: {detail}"
        );
        GatewayError::UpstreamUnavailable {
            reason: "the upstream did not return a token the request names",
            source: Some(detail.into()),
        }
    };
    let Ok(Value::Object(mut envelope)) = serde_json::from_slice::<Value>(body) else {
        return Err(refused(
            "reading a token for a policy check",
            format!("the answer (HTTP {status}) is not a JSON object"),
        ));
    };
    if envelope.get("success") == Some(&Value::Bool(true)) && status == StatusCode::OK {
        if let Some(Value::Object(token)) = envelope.remove("data") {
            return Ok(token);
        }
        return Err(refused(
            "reading a token for a policy check",
            "the answer has no token in `data`".into(),
        ));
    }
    let message = envelope
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if message == RECORD_NOT_FOUND {
        return Err(GatewayError::TokenNotFound(id));
    }
    Err(refused(
        "the upstream refused to read a token for a policy check",
        format!("HTTP {status}, message {message:?}"),
    ))
}

/// The stored token's `name` (empty when it has none).
pub fn current_name(token: &Map<String, Value>) -> String {
    match token.get("name") {
        Some(Value::String(name)) => name.clone(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> TokenId {
        TokenId::parse("7").unwrap()
    }

    #[test]
    fn the_token_is_the_data_object_of_a_success() {
        let body = br#"{"success":true,"message":"","data":{"id":7,"name":"team-a-ci"}}"#;
        let token = token_of(StatusCode::OK, body, id()).unwrap();
        assert_eq!(token["name"], "team-a-ci");
    }

    #[test]
    fn record_not_found_is_a_missing_token_and_other_failures_are_the_upstreams() {
        let missing = br#"{"success":false,"message":"record not found"}"#;
        assert!(matches!(
            token_of(StatusCode::OK, missing, id()),
            Err(GatewayError::TokenNotFound(_))
        ));
        for (status, body) in [
            (
                StatusCode::OK,
                &br#"{"success":false,"message":"boom"}"#[..],
            ),
            (StatusCode::OK, b"<html>"),
            (StatusCode::OK, br#"{"success":true,"data":null}"#),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"success":true,"data":{}}"#,
            ),
        ] {
            let error = token_of(status, body, id()).unwrap_err();
            assert_eq!(error.code(), "upstream_unavailable", "{status} {body:?}");
        }
    }
}
