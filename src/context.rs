//! Request-scoped facts: the gateway's request id, the deadline, and what the layers learn on
//! the way down (caller, operation) that the access log and metrics need on the way up.
//!
//! Facts flowing *down* the stack travel as typed request extensions ([`crate::caller::Caller`],
//! [`crate::route::Route`]). A refusal is an `Err` that carries no extensions, so facts the top of
//! the stack must report whatever happened below (who called, which operation) are also written
//! once into the shared [`RequestContext`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::time::Instant;

use crate::audit::changes::Change;
use crate::error::GatewayError;
use crate::ratelimit::RateStatus;
use crate::route::Operation;
use crate::trace_context::TraceContext;

/// The gateway's own id for one request: sent upstream and back to the caller as `X-Request-Id`,
/// written in logs. Unique across restarts: a random per-process prefix and a counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// The next id of this process.
    pub fn next() -> RequestId {
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Hex by hand: `format!` costs several times as much on every request.
        let mut id = [0u8; 32];
        for (i, word) in [process_prefix(), n].into_iter().enumerate() {
            for j in 0..16 {
                id[i * 16 + j] = b"0123456789abcdef"[(word >> (60 - 4 * j)) as usize & 15];
            }
        }
        RequestId(String::from_utf8_lossy(&id).into())
    }

    /// An id with a fixed value (tests, and requests the gateway makes on its own behalf).
    pub fn from_static(id: &'static str) -> RequestId {
        RequestId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 64 random bits drawn once per process, so ids of two runs never collide.
fn process_prefix() -> u64 {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        // A failing system RNG leaves a zero prefix: ids stay unique within the process.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        u64::from_le_bytes(bytes)
    })
}

/// The address of the TCP peer, inserted per connection by the server.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// Where the caller is, as SPEC §3 defines the caller IP.
#[derive(Clone, Copy, Debug)]
pub struct SourceIp {
    /// The caller's IP: the peer, or the right-most untrusted `X-Forwarded-For` entry when the
    /// peer is a trusted proxy.
    pub ip: IpAddr,
    /// Whether the peer is in `server.trusted_proxies` (its forwarding headers are kept).
    pub via_trusted_proxy: bool,
}

/// What the upstream answered. The body is kept (a reference-counted view, not a copy) and read
/// only if an audit record needs its `success` and `message`, so unaudited answers are not parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamFacts {
    /// The HTTP status.
    pub status: u16,
    /// The body as the upstream sent it. It may hold token keys (a key reveal): never print it.
    pub body: bytes::Bytes,
}

impl fmt::Debug for UpstreamFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UpstreamFacts {{ status: {}, body: {} bytes }}",
            self.status,
            self.body.len()
        )
    }
}

impl UpstreamFacts {
    /// Whether new-api reports success: HTTP 200 and `"success": true`.
    pub fn succeeded(&self) -> bool {
        self.status == 200
            && crate::upstream::Envelope::parse(&self.body).is_some_and(|e| e.success == Some(true))
    }
}

/// What one request has learnt so far, shared by every layer through the request extensions.
#[derive(Debug)]
pub struct RequestContext {
    /// The gateway's id for this request.
    pub id: RequestId,
    /// The caller's own `X-Request-Id`, kept apart and never trusted as the id.
    pub caller_request_id: Option<String>,
    /// The W3C trace the request belongs to (SPEC §3): the caller's, or one the gateway starts
    /// when first asked (no random bytes are drawn for a request that brings its own).
    trace: TraceContext,
    /// When the request arrived.
    pub started: Instant,
    /// When `server.request_timeout_ms` runs out for it.
    pub deadline: Instant,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The request method.
    pub method: http::Method,
    /// The request path as it may be logged ([`loggable_path`]).
    pub path: String,
    source_ip: OnceLock<SourceIp>,
    client: OnceLock<Arc<str>>,
    op: OnceLock<Operation>,
    token_ids: OnceLock<Vec<u64>>,
    /// The checked body in canonical JSON, rendered once for all of the request's records.
    request: Mutex<Option<bytes::Bytes>>,
    forwarded: AtomicBool,
    itemized: AtomicBool,
    upstream: Mutex<Option<UpstreamFacts>>,
    rate: Mutex<Vec<RateStatus>>,
    /// Upstream requests whose room under the global cap was taken in advance (a PATCH takes
    /// its read's and its writes' before the read, so nothing waits between read and write).
    prepaid: AtomicU32,
    /// When a PATCH's read was answered: its write measures the read-to-write window.
    read_at: Mutex<Option<Instant>>,
    /// The fields a PATCH's full `PUT` wrote when a later step failed (SPEC §4.5 "partial").
    partial: OnceLock<Vec<String>>,
    /// What the change does to each token it names (SPEC §6.1), one intent record each; empty
    /// for a request that is not a change of tokens (a key reveal).
    changes: Mutex<Arc<[Change]>>,
}

impl RequestContext {
    /// A context for a `method` request to `path` that arrived now from `peer`.
    pub fn new(
        peer: SocketAddr,
        method: http::Method,
        path: &str,
        caller_request_id: Option<String>,
        trace: TraceContext,
        timeout: std::time::Duration,
    ) -> Self {
        let started = Instant::now();
        RequestContext {
            id: RequestId::next(),
            caller_request_id,
            trace,
            started,
            deadline: started + timeout,
            peer,
            method,
            path: loggable_path(path),
            source_ip: OnceLock::new(),
            client: OnceLock::new(),
            op: OnceLock::new(),
            token_ids: OnceLock::new(),
            request: Mutex::new(None),
            forwarded: AtomicBool::new(false),
            itemized: AtomicBool::new(false),
            upstream: Mutex::new(None),
            rate: Mutex::new(Vec::new()),
            prepaid: AtomicU32::new(0),
            read_at: Mutex::new(None),
            partial: OnceLock::new(),
            changes: Mutex::new(Arc::new([])),
        }
    }

    /// The request's trace: the caller's when it sent a valid `traceparent`, else a new one.
    pub fn trace(&self) -> &TraceContext {
        &self.trace
    }

    /// The context of one token's part of a fan-out batch: the batch's id, caller, operation
    /// and deadline, with its own token id, body, and upstream answer for its audit records.
    pub fn part(&self, token_id: u64) -> RequestContext {
        let part = RequestContext {
            id: self.id.clone(),
            caller_request_id: self.caller_request_id.clone(),
            trace: self.trace.clone(),
            started: self.started,
            deadline: self.deadline,
            peer: self.peer,
            method: self.method.clone(),
            path: self.path.clone(),
            source_ip: self.source_ip.clone(),
            client: self.client.clone(),
            op: self.op.clone(),
            token_ids: OnceLock::new(),
            request: Mutex::new(None),
            forwarded: AtomicBool::new(false),
            itemized: AtomicBool::new(false),
            upstream: Mutex::new(None),
            rate: Mutex::new(Vec::new()),
            prepaid: AtomicU32::new(0),
            read_at: Mutex::new(None),
            partial: OnceLock::new(),
            changes: Mutex::new(Arc::new([])),
        };
        part.set_token_ids(vec![token_id]);
        part
    }

    /// Marks the request as audited part by part (a fan-out batch): each part writes its own
    /// intent and outcome records, so the request as a whole writes none.
    pub fn set_itemized(&self) {
        self.itemized.store(true, Ordering::Relaxed);
    }

    /// Marks a refusal that is counted in its address's summary record (SPEC §5) instead of
    /// recorded on its own: like an itemized request, it writes no outcome record.
    pub fn set_unrecorded(&self) {
        self.itemized.store(true, Ordering::Relaxed);
    }

    /// Whether the request is audited part by part.
    pub fn itemized(&self) -> bool {
        self.itemized.load(Ordering::Relaxed)
    }

    /// Records the token ids the request names (once).
    pub fn set_token_ids(&self, ids: Vec<u64>) {
        let _ = self.token_ids.set(ids);
    }

    /// The token ids the request names.
    pub fn token_ids(&self) -> &[u64] {
        self.token_ids.get().map_or(&[], Vec::as_slice)
    }

    /// Records the checked request body, or what replaces it upstream (a PATCH's merged token).
    pub fn set_request(&self, body: serde_json::Value) {
        self.set_request_json(crate::audit::canonical::canonical(&body).into());
    }

    /// [`RequestContext::set_request`] with the body already in canonical JSON (RFC 8785): the
    /// bytes the upstream receives, shared rather than written a second time.
    pub fn set_request_json(&self, canonical: bytes::Bytes) {
        *self.request.lock().unwrap_or_else(|p| p.into_inner()) = Some(canonical);
    }

    /// The checked request body in canonical JSON (RFC 8785), if the request had one.
    pub fn request(&self) -> Option<bytes::Bytes> {
        self.request
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts the next change, whose checked body is `body`, of a request that sends two (a
    /// PATCH's status-only `PUT` after its full one): the upstream answer and the forwarded mark
    /// belong to the first change's records, not to the next one's.
    pub fn next_change(&self, body: bytes::Bytes) {
        self.set_request_json(body);
        self.set_changes(Vec::new());
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.forwarded.store(false, Ordering::Relaxed);
    }

    /// Records what the change does to each token it names, for its intent records.
    pub fn set_changes(&self, changes: Vec<Change>) {
        *self.changes.lock().unwrap_or_else(|p| p.into_inner()) = changes.into();
    }

    /// What the change does to each token it names: one intent and one outcome record each when
    /// there are several (a batch delete), none when empty.
    pub fn changes(&self) -> Arc<[Change]> {
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Marks the request as sent upstream (after its intent record is durable).
    pub fn set_forwarded(&self) {
        self.forwarded.store(true, Ordering::Relaxed);
    }

    /// Whether the request was sent upstream.
    pub fn forwarded(&self) -> bool {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Records what the upstream answered (the last answer, when a request sends two).
    pub fn set_upstream(&self, facts: UpstreamFacts) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = Some(facts);
    }

    /// What the upstream answered last, if it did.
    pub fn upstream(&self) -> Option<UpstreamFacts> {
        self.upstream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records what a rate limit said about the request, replacing an earlier status of the
    /// same policy (a batch is charged twice), for the `RateLimit` fields of the answer.
    pub fn set_rate(&self, status: RateStatus) {
        let mut rates = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        match rates.iter_mut().find(|r| r.policy == status.policy) {
            Some(slot) => *slot = status,
            None => rates.push(status),
        }
    }

    /// What the rate limits said about the request, in the order they were consulted; taken
    /// once, for the answer.
    pub fn take_rates(&self) -> Vec<RateStatus> {
        std::mem::take(&mut *self.rate.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Records that the room of `n` upstream requests under the global cap was taken in advance.
    pub fn prepay(&self, n: u32) {
        self.prepaid.store(n, Ordering::Relaxed);
    }

    /// Takes one prepaid upstream request, if any is left.
    pub fn take_prepaid(&self) -> bool {
        self.prepaid
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Records that a PATCH's read was answered now.
    pub fn set_read_at(&self, at: Instant) {
        *self.read_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }

    /// When the PATCH's read was answered, taken once (by its first write).
    pub fn take_read_at(&self) -> Option<Instant> {
        self.read_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Records the fields a PATCH's full `PUT` wrote before a later step failed.
    pub fn set_partial(&self, written: Vec<String>) {
        let _ = self.partial.set(written);
    }

    /// The fields written when the request was applied only in part.
    pub fn partial(&self) -> Option<&[String]> {
        self.partial.get().map(Vec::as_slice)
    }

    /// The context of `request`, which the request-context layer inserts first of all.
    pub fn of<B>(request: &http::Request<B>) -> Result<&Arc<RequestContext>, GatewayError> {
        request.extensions().get().ok_or_else(|| {
            GatewayError::Internal("request context missing: the stack is misassembled".into())
        })
    }

    /// Records the caller IP (once).
    pub fn set_source_ip(&self, source: SourceIp) {
        let _ = self.source_ip.set(source);
    }

    /// The caller IP, or the peer's while it is not yet known.
    pub fn source_ip(&self) -> SourceIp {
        self.source_ip.get().copied().unwrap_or(SourceIp {
            ip: self.peer.ip(),
            via_trusted_proxy: false,
        })
    }

    /// Records the authenticated caller's name (once).
    pub fn set_client(&self, name: Arc<str>) {
        let _ = self.client.set(name);
    }

    /// The authenticated caller's name, if authentication got that far.
    pub fn client(&self) -> Option<&str> {
        self.client.get().map(|c| &**c)
    }

    /// Records the operation (once).
    pub fn set_op(&self, op: Operation) {
        let _ = self.op.set(op);
    }

    /// The operation, if routing got that far.
    pub fn op(&self) -> Option<Operation> {
        self.op.get().copied()
    }
}

/// The path as logged and audited: at most 8 segments, each shown only when it is short and
/// plain (letters, digits, `.`, `_`, `-`); anything else, which might be a pasted key, is `…`.
pub fn loggable_path(path: &str) -> String {
    const MAX_SEGMENT: usize = 24;
    let mut out = String::with_capacity(path.len().min(128));
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if i > 8 {
            out.push('…');
            break;
        }
        let plain = segment.len() <= MAX_SEGMENT
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        out.push_str(if plain { segment } else { "…" });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_logged_without_anything_that_could_be_a_key() {
        assert_eq!(loggable_path("/api/token/123/key"), "/api/token/123/key");
        assert_eq!(loggable_path("/api/token/"), "/api/token/");
        let key = "sk-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKL";
        assert_eq!(loggable_path(&format!("/api/token/{key}")), "/api/token/…");
        assert_eq!(loggable_path("/api/token/%2e%2e/x"), "/api/token/…/x");
        assert_eq!(
            loggable_path("/a/b/c/d/e/f/g/h/i/j/k"),
            "/a/b/c/d/e/f/g/h/…"
        );
    }

    #[test]
    fn ids_are_distinct_and_fixed_width() {
        let a = RequestId::next();
        let b = RequestId::next();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        // The process prefix, then the counter, each as 16 lowercase hex digits.
        let prefix = format!("{:016x}", process_prefix());
        assert_eq!(&a.as_str()[..16], prefix);
        assert_eq!(&b.as_str()[..16], prefix);
        let counter = |id: &RequestId| u64::from_str_radix(&id.as_str()[16..], 16).unwrap();
        assert!(counter(&b) > counter(&a));
        assert_eq!(a.as_str(), a.as_str().to_lowercase());
    }
}
