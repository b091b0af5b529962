//! The fields of one audit record (SPEC §6) as the request path knows them; the writer adds `v`,
//! `seq`, `ts`, `prev` and `hash`.
//!
//! No secret is ever written: the checked request body carries no token key (the read-only `key`
//! a `GET` returns is dropped by validation), and a key reveal records only that it happened and
//! for which ids, never the upstream's answer.

use serde_json::{Map, Value};

use crate::context::RequestContext;
use crate::route::Operation;
use crate::upstream::Envelope;

/// What became of a request, as the outcome record says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Sent upstream, and the upstream answered.
    Forwarded,
    /// Refused by the gateway before it was sent upstream.
    Rejected,
    /// Sent upstream, which failed (connection, credential, redirect, 429).
    UpstreamError,
    /// Sent upstream, which did not answer in time.
    Timeout,
}

impl Outcome {
    /// The record's `outcome` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Timeout => "timeout",
        }
    }

    /// Classifies a finished request from whether it was forwarded and the SPEC §9 code of the
    /// gateway's own answer, if it made one.
    pub fn of(forwarded: bool, code: Option<&str>) -> Outcome {
        match (forwarded, code) {
            (false, _) => Outcome::Rejected,
            (true, None) => Outcome::Forwarded,
            (true, Some("upstream_timeout")) => Outcome::Timeout,
            (true, Some(_)) => Outcome::UpstreamError,
        }
    }
}

/// The `intent` record of a request about to be forwarded.
pub fn intent(context: &RequestContext, op: Operation) -> Map<String, Value> {
    base(context, op, "intent")
}

/// The `outcome` record of a finished request.
pub fn outcome(
    context: &RequestContext,
    op: Operation,
    status: u16,
    code: Option<&str>,
) -> Map<String, Value> {
    let mut record = base(context, op, "outcome");
    let outcome = Outcome::of(context.forwarded(), code);
    let upstream = context.upstream();
    let envelope = upstream.as_ref().and_then(|u| Envelope::parse(&u.body));
    record.insert("outcome".into(), Value::from(outcome.as_str()));
    record.insert("reason".into(), code.map_or(Value::Null, Value::from));
    record.insert("status".into(), Value::from(status));
    record.insert(
        "upstream_status".into(),
        upstream
            .as_ref()
            .map_or(Value::Null, |u| Value::from(u.status)),
    );
    record.insert(
        "upstream_success".into(),
        envelope
            .as_ref()
            .and_then(|e| e.success)
            .map_or(Value::Null, Value::from),
    );
    record.insert(
        "upstream_message".into(),
        envelope
            .and_then(|e| e.message)
            .map_or(Value::Null, |m| Value::from(m.into_owned())),
    );
    record.insert(
        "duration_ms".into(),
        Value::from(context.started.elapsed().as_millis() as u64),
    );
    record
}

fn base(context: &RequestContext, op: Operation, phase: &str) -> Map<String, Value> {
    let mut record = Map::with_capacity(20);
    record.insert("phase".into(), Value::from(phase));
    record.insert("request_id".into(), Value::from(context.id.as_str()));
    record.insert(
        "caller_request_id".into(),
        context
            .caller_request_id
            .as_deref()
            .map_or(Value::Null, Value::from),
    );
    record.insert(
        "client".into(),
        context.client().map_or(Value::Null, Value::from),
    );
    record.insert(
        "source_ip".into(),
        Value::from(context.source_ip().ip.to_string()),
    );
    record.insert("method".into(), Value::from(context.method.as_str()));
    record.insert("path".into(), Value::from(context.path.as_str()));
    record.insert("op".into(), Value::from(op.as_str()));
    record.insert(
        "token_ids".into(),
        Value::from(context.token_ids().to_vec()),
    );
    record.insert("request".into(), context.request().unwrap_or(Value::Null));
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_classified_by_forwarding_and_code() {
        assert_eq!(
            Outcome::of(false, Some("unauthenticated")),
            Outcome::Rejected
        );
        assert_eq!(
            Outcome::of(false, Some("audit_unavailable")),
            Outcome::Rejected
        );
        assert_eq!(Outcome::of(true, None), Outcome::Forwarded);
        assert_eq!(
            Outcome::of(true, Some("upstream_timeout")),
            Outcome::Timeout
        );
        assert_eq!(
            Outcome::of(true, Some("upstream_unavailable")),
            Outcome::UpstreamError
        );
        assert_eq!(
            Outcome::of(true, Some("upstream_auth_failed")),
            Outcome::UpstreamError
        );
    }
}
