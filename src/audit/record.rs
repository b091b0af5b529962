//! The fields of one audit record (SPEC §6) as the request path knows them; the writer adds `v`,
//! `seq`, `ts`, `prev` and `hash`.
//!
//! No secret is ever written: the checked request body carries no token key (the read-only `key`
//! a `GET` returns is dropped by validation), and a key reveal records only that it happened and
//! for which ids, never the upstream's answer.
//!
//! No record is longer than `audit.max_record_bytes` (SPEC §6, format), the line limit of log
//! shippers and of `verify` itself: a bigger one would make the trail unreadable for good. When a
//! record would be, its largest values are replaced, largest first, by
//! `{"bytes":N,"omitted":true,"sha256":"<hex>"}` (N and the SHA-256 of the value's canonical
//! JSON, so whoever holds the value can prove it is the one recorded) until it fits, and the
//! record carries `"truncated":true`. The values that can be replaced are each member of
//! `request` and of `before`, each `from` and `to` of `changes` (SPEC §6.1), and
//! `upstream_message`: the values that come from outside (then `request`, `before` or `changes`
//! whole, if that is not enough).
//!
//! Records are version 2 (`"v":2`): intents of changes carry `before` and `changes`. Version 1
//! records, which lack them, stay readable by every tool.

use std::borrow::Cow;
use std::ops::Range;

use super::canonical;
use super::chain::AuditKey;
use super::changes::Change;
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

/// The most bytes the writer adds to a draft when it seals it: `"hash":"<64 hex>"` and
/// `"prev":"<64 hex>"` (73 each), `"seq":<up to 20 digits>` (26), `"ts":"<24>"` (31), `"v":2`
/// (5), a comma for each (5) and one more where a run ends (5), the braces and the newline: 221,
/// rounded up.
pub const SEALED_OVERHEAD: usize = 256;

/// The record format the writer writes (`v`).
pub const VERSION: &str = "2";

impl Draft {
    /// The bytes the draft holds (the queue and the write buffer are bounded by them).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the draft is empty (never: a record has members).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The longest its sealed line can be, newline included.
    pub fn sealed_len(&self) -> usize {
        self.bytes.len() + SEALED_OVERHEAD
    }

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
            Some(("v", VERSION.as_bytes(), false)),
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

/// The `intent` record of a request about to be forwarded, at most `max_record_bytes` long once
/// sealed (`audit.max_record_bytes`): with `before` and `changes` when it is a change of a token
/// (`change`, whose token is then the record's only one).
pub fn intent(
    context: &RequestContext,
    op: Operation,
    origin: &str,
    change: Option<&Change>,
    max_record_bytes: usize,
) -> Draft {
    let token = change.and_then(|c| c.token_id);
    draft(
        context,
        (op, origin, "intent"),
        token,
        change,
        None,
        max_record_bytes,
    )
}

/// The `outcome` record of a finished request, answered with `status` (and the SPEC §9 `code`
/// when the gateway made the answer), at most `max_record_bytes` long once sealed; about `token`
/// alone when given (one id of a batch delete), else every token the request names.
pub fn outcome(
    context: &RequestContext,
    op: Operation,
    origin: &str,
    token: Option<u64>,
    (status, code): (u16, Option<&str>),
    max_record_bytes: usize,
) -> Draft {
    draft(
        context,
        (op, origin, "outcome"),
        token,
        None,
        Some(Answer { status, code }),
        max_record_bytes,
    )
}

/// A `checkpoint` record (SPEC §6.3): `object` is the canonical JSON of its `checkpoint` member
/// (signed by [`super::checkpoint`]); the writer adds `hash`, `prev`, `seq`, `ts` and `v` as to
/// any record.
pub(crate) fn checkpoint(origin: &str, object: &[u8]) -> Draft {
    let mut m = Members::new();
    m.name("checkpoint").extend_from_slice(object);
    m.end_run(); // hash
    m.string("origin", origin);
    m.string("phase", "checkpoint");
    m.finish()
}

/// The one `outcome` record of an address's refusals before authentication past
/// `rate_limit.unauthenticated_per_minute` in a window (SPEC §5): `client` null, `reason`
/// `rate_limited`, `status` 429, `suppressed` the number of refusals not recorded one by one,
/// and the method, path and operation of the first of them; a request id of its own, and the time
/// from the first to the last of them as `duration_ms`.
pub fn suppressed(summary: &Summary, origin: &str) -> Draft {
    let mut m = Members::new();
    m.name("caller_request_id").extend_from_slice(b"null");
    m.name("client").extend_from_slice(b"null");
    m.integer("duration_ms", summary.span.as_millis() as u64);
    m.end_run(); // hash
    m.string("method", summary.method.as_str());
    m.string("op", summary.op.as_str());
    m.string("origin", origin);
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

/// Renders the record, then, if it would be longer than `limit` once sealed, renders it again
/// with its largest values omitted ([`fit`]).
fn draft(
    context: &RequestContext,
    (op, origin, phase): (Operation, &str, &str),
    token: Option<u64>,
    change: Option<&Change>,
    answer: Option<Answer<'_>>,
    limit: usize,
) -> Draft {
    let upstream = answer.as_ref().and_then(|_| context.upstream());
    let envelope = upstream.as_ref().and_then(|u| Envelope::parse(&u.body));
    let request = context.request();
    let message = envelope
        .as_ref()
        .and_then(|e| e.message.as_deref())
        .map(|m| {
            let mut bytes = Vec::with_capacity(m.len() + 2);
            canonical::write_string(m, &mut bytes);
            bytes
        });
    let facts = Facts {
        upstream: upstream.as_ref(),
        success: envelope.as_ref().and_then(|e| e.success),
    };
    let mut slots = [
        Slot {
            value: request.as_deref().map(Cow::Borrowed),
            split: Split::Members,
        },
        Slot {
            value: message.as_deref().map(Cow::Borrowed),
            split: Split::Whole,
        },
        Slot {
            value: change.and_then(|c| c.before.as_deref()).map(Cow::Borrowed),
            split: Split::Members,
        },
        Slot {
            value: change.and_then(|c| c.changes.as_deref()).map(Cow::Borrowed),
            split: Split::Changes,
        },
    ];
    let what = What {
        op,
        origin,
        phase,
        token,
        changed: change.is_some(),
    };
    let whole = render(context, &what, answer.as_ref(), &facts, &slots, false);
    if whole.sealed_len() <= limit {
        return whole;
    }
    let truncated = fit(&mut slots, whole.sealed_len() - limit);
    render(context, &what, answer.as_ref(), &facts, &slots, truncated)
}

/// What a record is about, beside the request's context.
struct What<'a> {
    op: Operation,
    origin: &'a str,
    phase: &'a str,
    /// The one token the record is about, when the request names several (a batch delete).
    token: Option<u64>,
    /// Whether it is the intent of a change, with `before` and `changes`.
    changed: bool,
}

/// What an outcome record tells of the upstream's answer.
struct Facts<'a> {
    upstream: Option<&'a crate::context::UpstreamFacts>,
    success: Option<bool>,
}

/// Every member, in canonical order: `before caller_request_id changes client duration_ms` |
/// hash | `method op origin outcome path phase` | prev | `reason request request_id` | seq |
/// `source_ip status token_ids trace_id truncated` | ts | `upstream_message upstream_status
/// upstream_success` | v. `slots` hold the canonical JSON of `request`, `upstream_message`,
/// `before` and `changes` (null when absent), as [`fit`] left them.
fn render(
    context: &RequestContext,
    what: &What<'_>,
    answer: Option<&Answer<'_>>,
    facts: &Facts<'_>,
    slots: &[Slot<'_>; 4],
    truncated: bool,
) -> Draft {
    let [request, message, before, changes] = slots;
    let mut m = Members::new();
    if what.changed {
        m.name("before").extend_from_slice(before.json());
    }
    m.optional_string("caller_request_id", context.caller_request_id.as_deref());
    if what.changed {
        m.name("changes").extend_from_slice(changes.json());
    }
    m.optional_string("client", context.client());
    if answer.is_some() {
        m.integer("duration_ms", context.started.elapsed().as_millis() as u64);
    }
    m.end_run(); // hash
    m.string("method", context.method.as_str());
    m.string("op", what.op.as_str());
    m.string("origin", what.origin);
    if let Some(answer) = &answer {
        let outcome = Outcome::of(context.forwarded(), answer.code);
        m.string("outcome", outcome.as_str());
    }
    m.string("path", &context.path);
    m.string("phase", what.phase);
    m.end_run(); // prev
    if let Some(answer) = &answer {
        m.optional_string("reason", answer.code);
    }
    m.name("request").extend_from_slice(request.json());
    m.string("request_id", context.id.as_str());
    m.end_run(); // seq
    m.string("source_ip", &context.source_ip().ip.to_string());
    if let Some(answer) = &answer {
        m.integer("status", u64::from(answer.status));
    }
    let out = m.name("token_ids");
    out.push(b'[');
    let ids = what.token.as_slice();
    let ids = if ids.is_empty() {
        context.token_ids()
    } else {
        ids
    };
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(itoa::Buffer::new().format(*id).as_bytes());
    }
    out.push(b']');
    m.string("trace_id", context.trace().trace_id());
    if truncated {
        m.name("truncated").extend_from_slice(b"true");
    }
    m.end_run(); // ts
    if answer.is_some() {
        m.name("upstream_message").extend_from_slice(message.json());
        match facts.upstream {
            Some(u) => m.integer("upstream_status", u64::from(u.status)),
            None => m.name("upstream_status").extend_from_slice(b"null"),
        }
        let text: &[u8] = match facts.success {
            Some(true) => b"true",
            Some(false) => b"false",
            None => b"null",
        };
        m.name("upstream_success").extend_from_slice(text);
    }
    m.finish() // v
}

/// A value of a record that may be omitted to fit `audit.max_record_bytes`: its canonical JSON
/// (`None` for null), and where its parts may be omitted one by one.
struct Slot<'a> {
    value: Option<Cow<'a, [u8]>>,
    split: Split,
}

impl Slot<'_> {
    /// The value's canonical JSON, `null` when absent.
    fn json(&self) -> &[u8] {
        self.value.as_deref().unwrap_or(b"null")
    }
}

/// How a [`Slot`]'s value is taken apart for omission.
#[derive(Clone, Copy)]
enum Split {
    /// An object (`request`, `before`): each member's value on its own, largest first, then the
    /// whole object if that is not enough.
    Members,
    /// The value only as a whole (`upstream_message`).
    Whole,
    /// An array of `{"field","from","to"}` (`changes`): each `from` and `to` on its own, largest
    /// first, then the whole array if that is not enough.
    Changes,
}

/// Replaces the largest values of `slots` by their omission objects until their canonical JSON
/// is at least `excess` bytes shorter: the members of `Members` slots and the `Whole` slots,
/// largest first, then (if still too long) whole `Members` slots. Returns whether anything was
/// replaced. A value is only ever replaced by a shorter omission, so every step shortens.
fn fit(slots: &mut [Slot<'_>], excess: usize) -> bool {
    let mut excess = excess;
    let mut candidates: Vec<(usize, Range<usize>)> = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        let Some(value) = &slot.value else { continue };
        let parts = match slot.split {
            Split::Members => members(value),
            Split::Changes => from_and_to(value),
            Split::Whole => None,
        };
        match parts {
            Some(ranges) => candidates.extend(ranges.into_iter().map(|r| (i, r))),
            None => candidates.push((i, 0..value.len())),
        }
    }
    candidates.sort_by_key(|(_, range)| std::cmp::Reverse(range.len()));
    let mut chosen: Vec<Vec<Range<usize>>> = slots.iter().map(|_| Vec::new()).collect();
    for (slot, range) in candidates {
        let saved = range.len().saturating_sub(omitted_len(range.len()));
        if excess == 0 || saved == 0 {
            break;
        }
        excess = excess.saturating_sub(saved);
        chosen[slot].push(range);
    }
    let mut replaced = false;
    let originals: Vec<Option<Vec<u8>>> = slots
        .iter()
        .map(|s| {
            (excess > 0)
                .then(|| s.value.as_deref().map(<[u8]>::to_vec))
                .flatten()
        })
        .collect();
    for (slot, mut ranges) in slots.iter_mut().zip(chosen) {
        let Some(value) = &slot.value else { continue };
        if ranges.is_empty() {
            continue;
        }
        ranges.sort_by_key(|r| r.start);
        let mut out = Vec::with_capacity(value.len().min(64 << 10));
        let mut at = 0;
        for range in ranges {
            out.extend_from_slice(&value[at..range.start]);
            out.extend_from_slice(&omitted(&value[range.clone()]));
            at = range.end;
        }
        out.extend_from_slice(&value[at..]);
        slot.value = Some(Cow::Owned(out));
        replaced = true;
    }
    // Still too long (an object of very many members): whole values go, the largest first.
    if excess > 0 {
        let mut order: Vec<usize> = (0..slots.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(slots[i].value.as_ref().map_or(0, |v| v.len())));
        for i in order {
            let (Some(current), Some(Some(original))) = (&slots[i].value, originals.get(i)) else {
                continue;
            };
            let whole = omitted(original);
            let saved = current.len().saturating_sub(whole.len());
            if excess == 0 || saved == 0 {
                continue;
            }
            excess = excess.saturating_sub(saved);
            slots[i].value = Some(Cow::Owned(whole));
            replaced = true;
        }
    }
    replaced
}

/// The omission object of a value whose canonical JSON is `value`:
/// `{"bytes":N,"omitted":true,"sha256":"<hex>"}` (members in canonical order).
fn omitted(value: &[u8]) -> Vec<u8> {
    let digest = ring::digest::digest(&ring::digest::SHA256, value);
    let mut out = Vec::with_capacity(omitted_len(value.len()));
    out.extend_from_slice(b"{\"bytes\":");
    out.extend_from_slice(itoa::Buffer::new().format(value.len()).as_bytes());
    out.extend_from_slice(b",\"omitted\":true,\"sha256\":\"");
    out.extend_from_slice(hex::encode(digest.as_ref()).as_bytes());
    out.extend_from_slice(b"\"}");
    out
}

/// The length of the omission object of a value of `bytes` bytes: 101 plus the digits of `bytes`.
fn omitted_len(bytes: usize) -> usize {
    101 + itoa::Buffer::new().format(bytes).len()
}

/// Where each member's value lies in the compact JSON object `object` (as canonical JSON is),
/// or `None` if `object` is not one.
fn members(object: &[u8]) -> Option<Vec<Range<usize>>> {
    if object.first() != Some(&b'{') || object.last() != Some(&b'}') {
        return None;
    }
    let mut ranges = Vec::new();
    if object.len() == 2 {
        return Some(ranges);
    }
    let mut at = 1;
    loop {
        if object.get(at) != Some(&b'"') {
            return None;
        }
        at = string_end(object, at)?;
        if object.get(at) != Some(&b':') {
            return None;
        }
        let start = at + 1;
        let end = value_end(object, start)?;
        ranges.push(start..end);
        match object.get(end) {
            Some(b',') => at = end + 1,
            Some(b'}') if end + 1 == object.len() => return Some(ranges),
            _ => return None,
        }
    }
}

/// Where each `from` and `to` value lies in the compact JSON array of `{"field","from","to"}`
/// objects `changes` (canonical JSON: in that order), or `None` if it is not one.
fn from_and_to(changes: &[u8]) -> Option<Vec<Range<usize>>> {
    if changes.first() != Some(&b'[') || changes.last() != Some(&b']') {
        return None;
    }
    let mut ranges = Vec::new();
    if changes.len() == 2 {
        return Some(ranges);
    }
    let mut at = 1;
    loop {
        let end = value_end(changes, at)?;
        let values = members(&changes[at..end])?;
        let [_, from, to] = values.as_slice() else {
            return None;
        };
        ranges.extend([from, to].map(|r| at + r.start..at + r.end));
        match changes.get(end) {
            Some(b',') => at = end + 1,
            Some(b']') if end + 1 == changes.len() => return Some(ranges),
            _ => return None,
        }
    }
}

/// Where the string starting at `start` (its opening quote) ends: just after its closing quote.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'"' => return Some(at + 1),
            _ => at += 1,
        }
    }
    None
}

/// Where the JSON value starting at `start` ends (compact JSON, no white space).
fn value_end(bytes: &[u8], start: usize) -> Option<usize> {
    match *bytes.get(start)? {
        b'"' => string_end(bytes, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut at = start;
            while at < bytes.len() {
                match bytes[at] {
                    b'"' => {
                        at = string_end(bytes, at)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
            None
        }
        _ => {
            let end = bytes[start..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']'))
                .map_or(bytes.len(), |n| start + n);
            (end > start).then_some(end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{hash_of, line, GENESIS};
    use crate::context::UpstreamFacts;
    use serde_json::{json, Map, Value};
    use std::time::Duration;

    /// `audit.max_record_bytes` by default.
    const LIMIT: usize = 102_400;

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
            crate::trace_context::TraceContext::start(),
            Duration::from_secs(5),
        );
        let intent_before_facts = intent(&context, Operation::Update, "test", None, LIMIT);
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
            intent(&context, Operation::Update, "test", None, LIMIT),
            outcome(
                &context,
                Operation::Update,
                "test",
                None,
                (200, None),
                LIMIT,
            ),
            outcome(
                &context,
                Operation::Update,
                "test",
                None,
                (504, Some("upstream_timeout")),
                LIMIT,
            ),
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
            assert_eq!(record["v"], 2);
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
        assert_eq!(first["origin"], "test");
        assert_eq!(
            first.len(),
            17,
            "an intent has 12 members of its own and 5 of the writer"
        );
        assert_eq!(first["trace_id"], context.trace().trace_id());
        assert_eq!(first["trace_id"].as_str().map(str::len), Some(32));
        let forwarded = record(2);
        assert_eq!(forwarded.len(), 24);
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

    fn context_with(request: Value, upstream_body: &str) -> RequestContext {
        let context = RequestContext::new(
            "10.1.2.3:5000".parse().unwrap(),
            http::Method::POST,
            "/api/token/",
            None,
            crate::trace_context::TraceContext::start(),
            Duration::from_secs(5),
        );
        context.set_client("team-a".into());
        context.set_request(request);
        context.set_forwarded();
        context.set_upstream(UpstreamFacts {
            status: 200,
            body: bytes::Bytes::from(upstream_body.to_owned()),
        });
        context
    }

    /// The SHA-256 and length of a value's canonical JSON, as an omission states them.
    fn omission_of(value: &Value) -> Value {
        let bytes = crate::audit::canonical::canonical(value);
        json!({
            "bytes": bytes.len(),
            "omitted": true,
            "sha256": hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref()),
        })
    }

    #[test]
    fn a_record_over_the_limit_omits_its_largest_values_first_and_says_so() {
        let key = AuditKey::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let big = json!(vec![1e20; 30_000]);
        let medium = "m".repeat(20_000);
        let request = json!({"name": "x", "blob": big, "model_limits": medium, "remain_quota": 5});
        let context = context_with(request, r#"{"success":true,"message":"ok"}"#);
        let limit = 40_000;
        for draft in [
            intent(&context, Operation::Create, "test", None, limit),
            outcome(
                &context,
                Operation::Create,
                "test",
                None,
                (200, None),
                limit,
            ),
        ] {
            let (sealed, hash) = seal(&draft, &key, 9, GENESIS);
            assert!(sealed.len() <= limit, "{} bytes", sealed.len());
            let record: Map<String, Value> = serde_json::from_slice(&sealed).unwrap();
            // Canonical (`truncated` between `token_ids` and `ts`) and sealed as verify checks it.
            assert_eq!(line(&record), sealed);
            assert_eq!(hash_of(&key, &record), hash);
            assert_eq!(record["truncated"], true);
            // Only the largest value had to go; the rest is as sent.
            assert_eq!(record["request"]["blob"], omission_of(&big));
            assert_eq!(record["request"]["model_limits"], medium.as_str());
            assert_eq!(record["request"]["name"], "x");
        }
        // Two large values: both go, the largest first; a small limit takes the next one too.
        let context = context_with(
            json!({"a": "a".repeat(30_000), "b": "b".repeat(25_000), "c": "c".repeat(100)}),
            r#"{"success":false,"message":"fine"}"#,
        );
        let draft = intent(&context, Operation::Create, "test", None, 32_768);
        let record: Map<String, Value> =
            serde_json::from_slice(&seal(&draft, &key, 1, GENESIS).0).unwrap();
        assert_eq!(record["request"]["a"]["omitted"], true);
        assert_eq!(record["request"]["b"], "b".repeat(25_000).as_str());
        let draft = intent(&context, Operation::Create, "test", None, 20_000);
        let record: Map<String, Value> =
            serde_json::from_slice(&seal(&draft, &key, 1, GENESIS).0).unwrap();
        assert_eq!(record["request"]["a"]["omitted"], true);
        assert_eq!(record["request"]["b"]["omitted"], true);
        assert_eq!(record["request"]["c"], "c".repeat(100).as_str());
        // A huge upstream message is omitted too.
        let message = "z".repeat(50_000);
        let context = context_with(
            json!({"name": "x"}),
            &json!({"success": false, "message": message}).to_string(),
        );
        let draft = outcome(
            &context,
            Operation::Create,
            "test",
            None,
            (200, None),
            32_768,
        );
        let (sealed, _) = seal(&draft, &key, 1, GENESIS);
        let record: Map<String, Value> = serde_json::from_slice(&sealed).unwrap();
        assert!(sealed.len() <= 32_768);
        assert_eq!(record["upstream_message"], omission_of(&json!(message)));
        assert_eq!(record["request"]["name"], "x");
        // Within the limit: no `truncated` member at all.
        let record: Map<String, Value> = serde_json::from_slice(
            &seal(
                &intent(&context, Operation::Create, "test", None, LIMIT),
                &key,
                1,
                GENESIS,
            )
            .0,
        )
        .unwrap();
        assert!(!record.contains_key("truncated"));
    }

    #[test]
    fn an_intent_of_a_change_carries_before_and_changes_and_sheds_their_largest_values() {
        let key = AuditKey::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let context = context_with(json!({"id": 7, "model_limits": "b"}), "{}");
        let long = "m".repeat(30_000);
        let before = json!({"model_limits": long, "name": "ci", "status": 1});
        let changes = json!([
            {"field": "model_limits", "from": long, "to": "b"},
            {"field": "status", "from": 1, "to": 2},
        ]);
        let bytes = |v: &Value| Some(crate::audit::canonical::canonical(v).into());
        let change = Change {
            token_id: Some(7),
            before: bytes(&before),
            changes: bytes(&changes),
        };
        let draft = intent(&context, Operation::Update, "test", Some(&change), LIMIT);
        let (sealed, hash) = seal(&draft, &key, 1, GENESIS);
        let record: Map<String, Value> = serde_json::from_slice(&sealed).unwrap();
        assert_eq!(line(&record), sealed, "members in canonical order");
        assert_eq!(hash_of(&key, &record), hash);
        assert_eq!((&record["before"], &record["changes"]), (&before, &changes));
        assert_eq!(record["token_ids"], json!([7]));
        assert_eq!(record["v"], 2);
        // Over the limit: both copies of the long value go, each kept as its size and hash.
        let draft = intent(&context, Operation::Update, "test", Some(&change), 20_000);
        let (sealed, hash) = seal(&draft, &key, 1, GENESIS);
        assert!(sealed.len() <= 20_000, "{}", sealed.len());
        let record: Map<String, Value> = serde_json::from_slice(&sealed).unwrap();
        assert_eq!(line(&record), sealed);
        assert_eq!(hash_of(&key, &record), hash);
        assert_eq!(record["truncated"], true);
        assert_eq!(record["before"]["model_limits"], omission_of(&json!(long)));
        assert_eq!(record["before"]["name"], "ci");
        assert_eq!(record["changes"][0]["from"], omission_of(&json!(long)));
        assert_eq!(record["changes"][0]["to"], "b");
        assert_eq!(record["changes"][1], changes[1]);
        // An intent with nothing read has both null; an outcome has neither; a record about one
        // id of several names that id alone.
        let unread = Change::unread(9);
        context.set_token_ids(vec![8, 9]);
        let draft = intent(
            &context,
            Operation::BatchDelete,
            "test",
            Some(&unread),
            LIMIT,
        );
        let record: Map<String, Value> =
            serde_json::from_slice(&seal(&draft, &key, 1, GENESIS).0).unwrap();
        assert_eq!(
            (&record["before"], &record["changes"]),
            (&Value::Null, &Value::Null)
        );
        assert_eq!(record["token_ids"], json!([9]));
        let draft = outcome(
            &context,
            Operation::BatchDelete,
            "test",
            Some(8),
            (200, None),
            LIMIT,
        );
        let record: Map<String, Value> =
            serde_json::from_slice(&seal(&draft, &key, 1, GENESIS).0).unwrap();
        assert!(!record.contains_key("before") && !record.contains_key("changes"));
        assert_eq!(record["token_ids"], json!([8]));
    }

    #[test]
    fn from_and_to_are_found_in_compact_changes() {
        let text =
            br#"[{"field":"a","from":"x]","to":{"y":[1]}},{"field":"b","from":null,"to":-1}]"#;
        let values: Vec<&str> = from_and_to(text)
            .unwrap()
            .iter()
            .map(|r| std::str::from_utf8(&text[r.clone()]).unwrap())
            .collect();
        assert_eq!(values, [r#""x]""#, r#"{"y":[1]}"#, "null", "-1"]);
        assert_eq!(from_and_to(b"[]").unwrap(), Vec::<Range<usize>>::new());
        for bad in [
            &b"{}"[..],
            b"[1]",
            b"[{\"field\":1}]",
            b"[{\"field\":1,\"from\":2,\"to\":3},]",
        ] {
            assert!(
                from_and_to(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_object_of_many_small_members_is_omitted_whole() {
        // Each member alone is too small to gain by omission: the request goes whole.
        let key = AuditKey::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let mut request = Map::new();
        for i in 0..5_000 {
            request.insert(format!("field_{i:05}"), json!(i));
        }
        let request = Value::Object(request);
        let context = context_with(request.clone(), "{}");
        let draft = intent(&context, Operation::Create, "test", None, 32_768);
        let (sealed, _) = seal(&draft, &key, 1, GENESIS);
        assert!(sealed.len() <= 32_768);
        let record: Map<String, Value> = serde_json::from_slice(&sealed).unwrap();
        assert_eq!(record["request"], omission_of(&request));
        assert_eq!(record["truncated"], true);
    }

    #[test]
    fn members_are_found_in_compact_json() {
        let text = br#"{"a":"x\"}","b":{"c":[1,{"d":"]"}]},"e":-1.5e+30,"f":null}"#;
        let ranges = members(text).unwrap();
        let values: Vec<&str> = ranges
            .iter()
            .map(|r| std::str::from_utf8(&text[r.clone()]).unwrap())
            .collect();
        assert_eq!(
            values,
            [r#""x\"}""#, r#"{"c":[1,{"d":"]"}]}"#, "-1.5e+30", "null"]
        );
        assert_eq!(members(b"{}").unwrap(), Vec::<Range<usize>>::new());
        for bad in [
            &b"[1]"[..],
            b"{\"a\"}",
            b"{\"a\":1,}",
            b"{\"a\":\"x}",
            b"\"s\"",
        ] {
            assert!(members(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(omitted(b"[]").len(), omitted_len(2));
        assert_eq!(omitted(&[b'x'; 12345]).len(), omitted_len(12345));
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
