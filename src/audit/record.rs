//! The fields of one audit record (SPEC §6) as the request path knows them; the writer adds `v`,
//! `seq`, `ts`, `prev` and `hash`.
//!
//! No secret is ever written: the checked request body carries no token key (the read-only `key`
//! a `GET` returns is dropped by validation), and a key reveal records only that it happened and
//! for which ids, never the upstream's answer.

use super::canonical;
use super::chain::AuditKey;
use crate::context::{RequestContext, RequestId};
use crate::ratelimit::unauthenticated::Summary;
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

/// A record as the request path renders it, before the writer seals it: every member the request
/// path knows, already in canonical JSON (RFC 8785) and in canonical order, in five runs around the
/// places of the members the writer adds (`hash`, `prev`, `seq`, `ts`, `v`).
///
/// Rendering here, on the request's own thread, leaves the one writer thread (which every audited
/// request waits for) only the chain: a `seq`, a timestamp, one HMAC, and two copies of the runs
/// (the bytes signed, then the line with its `hash`).
/// Member names are fixed ASCII, so their canonical order is their byte order, written out below.
#[derive(Debug)]
pub struct Draft {
    bytes: Vec<u8>,
    /// Where each run ends in `bytes`: before `hash`, before `prev`, before `seq`, before `ts`,
    /// before `v`.
    ends: [usize; 5],
}

impl Draft {
    /// Seals the draft as record `seq` of the chain after `prev`, stamped `ts`: appends its line
    /// (`\n` included) to `out` and returns its `hash`. `scratch` holds the bytes signed.
    pub(crate) fn seal(
        &self,
        key: &AuditKey,
        (seq, ts, prev): (u64, &str, &str),
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> String {
        scratch.clear();
        self.write(seq, ts, prev, None, scratch);
        let hash = key.sign(scratch);
        self.write(seq, ts, prev, Some(&hash), out);
        hash
    }

    /// The canonical JSON of the sealed record, without `hash` when `hash` is `None`, written to
    /// `out`, then `\n` when `hash` is given (a line of the trail).
    fn write(&self, seq: u64, ts: &str, prev: &str, hash: Option<&str>, out: &mut Vec<u8>) {
        let mut seq_text = itoa::Buffer::new();
        let runs = self.runs();
        let writer_members: [Option<(&str, &[u8], bool)>; 5] = [
            hash.map(|h| ("hash", h.as_bytes(), true)),
            Some(("prev", prev.as_bytes(), true)),
            Some(("seq", seq_text.format(seq).as_bytes(), false)),
            Some(("ts", ts.as_bytes(), true)),
            Some(("v", b"1", false)),
        ];
        out.push(b'{');
        let mut first = true;
        let mut comma = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
        };
        for (run, member) in runs.into_iter().zip(writer_members) {
            if !run.is_empty() {
                comma(out);
                out.extend_from_slice(run);
            }
            if let Some((name, value, quoted)) = member {
                comma(out);
                out.push(b'"');
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(if quoted { b"\":\"" } else { b"\":" });
                out.extend_from_slice(value);
                if quoted {
                    out.push(b'"');
                }
            }
        }
        out.push(b'}');
        if hash.is_some() {
            out.push(b'\n');
        }
    }

    fn runs(&self) -> [&[u8]; 5] {
        let mut start = 0;
        self.ends.map(|end| {
            let run = &self.bytes[start..end];
            start = end;
            run
        })
    }
}

/// Builds a [`Draft`] member by member, in canonical order.
struct Members {
    bytes: Vec<u8>,
    ends: [usize; 5],
    run: usize,
    run_start: usize,
}

impl Members {
    fn new() -> Members {
        Members {
            bytes: Vec::with_capacity(512),
            ends: [0; 5],
            run: 0,
            run_start: 0,
        }
    }

    /// Starts the member `name` (a comma first unless it opens its run); its value follows.
    fn name(&mut self, name: &str) -> &mut Vec<u8> {
        if self.bytes.len() > self.run_start {
            self.bytes.push(b',');
        }
        self.bytes.push(b'"');
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.extend_from_slice(b"\":");
        &mut self.bytes
    }

    fn string(&mut self, name: &str, value: &str) {
        let out = self.name(name);
        canonical::write_string(value, out);
    }

    fn optional_string(&mut self, name: &str, value: Option<&str>) {
        match value {
            Some(value) => self.string(name, value),
            None => self.name(name).extend_from_slice(b"null"),
        }
    }

    fn integer(&mut self, name: &str, value: u64) {
        let out = self.name(name);
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// Ends the current run: the writer's next member goes here.
    fn end_run(&mut self) {
        self.ends[self.run] = self.bytes.len();
        self.run += 1;
        self.run_start = self.bytes.len();
    }

    fn finish(mut self) -> Draft {
        while self.run < self.ends.len() {
            self.end_run();
        }
        Draft {
            bytes: self.bytes,
            ends: self.ends,
        }
    }
}

/// The upstream's answer as an outcome record tells it.
struct Answer<'a> {
    status: u16,
    code: Option<&'a str>,
}

/// The `intent` record of a request about to be forwarded.
pub fn intent(context: &RequestContext, op: Operation) -> Draft {
    draft(context, op, "intent", None)
}

/// The `outcome` record of a finished request, answered with `status` (and the SPEC §9 `code`
/// when the gateway made the answer).
pub fn outcome(context: &RequestContext, op: Operation, status: u16, code: Option<&str>) -> Draft {
    draft(context, op, "outcome", Some(Answer { status, code }))
}

/// The one `outcome` record of an address's refusals before authentication past
/// `rate_limit.unauthenticated_per_minute` in a window (SPEC §5): `client` null, `reason`
/// `rate_limited`, `status` 429, `suppressed` the number of refusals not recorded one by one,
/// and the method, path and operation of the first of them; a request id of its own, and the time
/// from the first to the last of them as `duration_ms`.
pub fn suppressed(summary: &Summary) -> Draft {
    let mut m = Members::new();
    m.name("caller_request_id").extend_from_slice(b"null");
    m.name("client").extend_from_slice(b"null");
    m.integer("duration_ms", summary.span.as_millis() as u64);
    m.end_run(); // hash
    m.string("method", summary.method.as_str());
    m.string("op", summary.op.as_str());
    m.string("outcome", Outcome::Rejected.as_str());
    m.string("path", &summary.path);
    m.string("phase", "outcome");
    m.end_run(); // prev
    m.string("reason", "rate_limited");
    m.name("request").extend_from_slice(b"null");
    m.string("request_id", RequestId::next().as_str());
    m.end_run(); // seq
    m.string("source_ip", &summary.ip.to_string());
    m.integer("status", 429);
    m.integer("suppressed", summary.suppressed);
    m.name("token_ids").extend_from_slice(b"[]");
    m.end_run(); // ts
    m.name("upstream_message").extend_from_slice(b"null");
    m.name("upstream_status").extend_from_slice(b"null");
    m.name("upstream_success").extend_from_slice(b"null");
    m.finish() // v
}

/// Every member, in canonical order: `caller_request_id client duration_ms` | hash | `method op
/// outcome path phase` | prev | `reason request request_id` | seq | `source_ip status token_ids`
/// | ts | `upstream_message upstream_status upstream_success` | v.
fn draft(
    context: &RequestContext,
    op: Operation,
    phase: &str,
    answer: Option<Answer<'_>>,
) -> Draft {
    let upstream = answer.as_ref().and_then(|_| context.upstream());
    let envelope = upstream.as_ref().and_then(|u| Envelope::parse(&u.body));
    let mut m = Members::new();
    m.optional_string("caller_request_id", context.caller_request_id.as_deref());
    m.optional_string("client", context.client());
    if answer.is_some() {
        m.integer("duration_ms", context.started.elapsed().as_millis() as u64);
    }
    m.end_run(); // hash
    m.string("method", context.method.as_str());
    m.string("op", op.as_str());
    if let Some(answer) = &answer {
        let outcome = Outcome::of(context.forwarded(), answer.code);
        m.string("outcome", outcome.as_str());
    }
    m.string("path", &context.path);
    m.string("phase", phase);
    m.end_run(); // prev
    if let Some(answer) = &answer {
        m.optional_string("reason", answer.code);
    }
    match context.request() {
        Some(request) => m.name("request").extend_from_slice(&request),
        None => m.name("request").extend_from_slice(b"null"),
    }
    m.string("request_id", context.id.as_str());
    m.end_run(); // seq
    m.string("source_ip", &context.source_ip().ip.to_string());
    if let Some(answer) = &answer {
        m.integer("status", u64::from(answer.status));
    }
    let out = m.name("token_ids");
    out.push(b'[');
    for (i, id) in context.token_ids().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(itoa::Buffer::new().format(*id).as_bytes());
    }
    out.push(b']');
    m.end_run(); // ts
    if answer.is_some() {
        let message = envelope.as_ref().and_then(|e| e.message.as_deref());
        m.optional_string("upstream_message", message);
        match &upstream {
            Some(u) => m.integer("upstream_status", u64::from(u.status)),
            None => m.name("upstream_status").extend_from_slice(b"null"),
        }
        let success = envelope.as_ref().and_then(|e| e.success);
        let text: &[u8] = match success {
            Some(true) => b"true",
            Some(false) => b"false",
            None => b"null",
        };
        m.name("upstream_success").extend_from_slice(text);
    }
    m.finish() // v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{hash_of, line, GENESIS};
    use crate::context::UpstreamFacts;
    use serde_json::{json, Map, Value};
    use std::time::Duration;

    /// Seals `draft` as the writer does; returns the line and its hash.
    fn seal(draft: &Draft, key: &AuditKey, seq: u64, prev: &str) -> (Vec<u8>, String) {
        let mut sealed = Vec::new();
        let ts = "2026-01-01T00:00:00.000Z";
        let hash = draft.seal(key, (seq, ts, prev), &mut Vec::new(), &mut sealed);
        (sealed, hash)
    }

    #[test]
    fn a_sealed_draft_is_the_canonical_json_of_its_record() {
        let key = AuditKey::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let awkward = "q\"b\\s\n\t\u{1}\u{7f} é 😀 \u{e000}";
        let context = RequestContext::new(
            "10.1.2.3:5000".parse().unwrap(),
            http::Method::PUT,
            "/api/token/",
            Some(awkward.into()),
            Duration::from_secs(5),
        );
        let intent_before_facts = intent(&context, Operation::Update);
        context.set_client("team-a".into());
        context.set_token_ids(vec![7, 9]);
        context.set_request(
            json!({"name": awkward, "remain_quota": 5, "allow_ips": null, "z": [1, true]}),
        );
        context.set_forwarded();
        context.set_upstream(UpstreamFacts {
            status: 200,
            body: bytes::Bytes::from_static(br#"{"success":false,"message":"bad \"name\""}"#),
        });
        let drafts = [
            intent_before_facts,
            intent(&context, Operation::Update),
            outcome(&context, Operation::Update, 200, None),
            outcome(&context, Operation::Update, 504, Some("upstream_timeout")),
        ];
        let mut prev = GENESIS.to_string();
        for (i, draft) in drafts.iter().enumerate() {
            let (sealed, hash) = seal(draft, &key, i as u64 + 1, &prev);
            // The line reads back, and is byte for byte the canonical JSON of what it reads as;
            // its hash is the one `verify` computes.
            let record: Map<String, Value> = serde_json::from_slice(&sealed).unwrap();
            assert_eq!(
                line(&record),
                sealed,
                "{}",
                String::from_utf8_lossy(&sealed)
            );
            assert_eq!(hash_of(&key, &record), hash);
            assert_eq!(record["seq"], i as u64 + 1);
            assert_eq!(record["prev"], prev.as_str());
            assert_eq!(record["v"], 1);
            assert_eq!(record["caller_request_id"], awkward);
            prev = hash;
        }
        let record = |i: usize| -> Map<String, Value> {
            serde_json::from_slice(&seal(&drafts[i], &key, 1, GENESIS).0).unwrap()
        };
        let first = record(0);
        assert_eq!(first["client"], Value::Null);
        assert_eq!(first["request"], Value::Null);
        assert_eq!(first["token_ids"], json!([]));
        assert_eq!(
            first.len(),
            15,
            "an intent has 10 members of its own and 5 of the writer"
        );
        let forwarded = record(2);
        assert_eq!(forwarded.len(), 22);
        assert_eq!(forwarded["phase"], "outcome");
        assert_eq!(forwarded["outcome"], "forwarded");
        assert_eq!(forwarded["reason"], Value::Null);
        assert_eq!(forwarded["request"]["name"], awkward);
        assert_eq!(forwarded["token_ids"], json!([7, 9]));
        assert_eq!(forwarded["upstream_status"], 200);
        assert_eq!(forwarded["upstream_success"], false);
        assert_eq!(forwarded["upstream_message"], "bad \"name\"");
        let timeout = record(3);
        assert_eq!(timeout["outcome"], "timeout");
        assert_eq!(timeout["reason"], "upstream_timeout");
        assert_eq!(timeout["status"], 504);
    }

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
