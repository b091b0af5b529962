//! Request-scoped facts: the gateway's request id, the deadline, and what the layers learn on
//! the way down (caller, operation) that the access log and metrics need on the way up.
//!
//! Facts flowing *down* the stack travel as typed request extensions ([`crate::caller::Caller`],
//! [`crate::route::Route`]). A refusal is an `Err` that carries no extensions, so facts the top of
//! the stack must report whatever happened below (who called, which operation) are also written
//! once into the shared [`RequestContext`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::time::Instant;

use crate::error::GatewayError;
use crate::route::Operation;

/// The gateway's own id for one request: sent upstream and back to the caller as `X-Request-Id`,
/// written in logs. Unique across restarts: a random per-process prefix and a counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// The next id of this process.
    pub fn next() -> RequestId {
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        RequestId(format!("{:016x}{n:016x}", process_prefix()).into())
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

/// What one request has learnt so far, shared by every layer through the request extensions.
#[derive(Debug)]
pub struct RequestContext {
    /// The gateway's id for this request.
    pub id: RequestId,
    /// The caller's own `X-Request-Id`, kept apart and never trusted as the id.
    pub caller_request_id: Option<String>,
    /// When the request arrived.
    pub started: Instant,
    /// When `server.request_timeout_ms` runs out for it.
    pub deadline: Instant,
    /// The TCP peer.
    pub peer: SocketAddr,
    source_ip: OnceLock<SourceIp>,
    client: OnceLock<Arc<str>>,
    op: OnceLock<Operation>,
}

impl RequestContext {
    /// A context for a request that arrived now from `peer`.
    pub fn new(
        peer: SocketAddr,
        caller_request_id: Option<String>,
        timeout: std::time::Duration,
    ) -> Self {
        let started = Instant::now();
        RequestContext {
            id: RequestId::next(),
            caller_request_id,
            started,
            deadline: started + timeout,
            peer,
            source_ip: OnceLock::new(),
            client: OnceLock::new(),
            op: OnceLock::new(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_fixed_width() {
        let a = RequestId::next();
        let b = RequestId::next();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
