//! Each sending thread's own connections to the upstream, on `hyper::client::conn`.
//!
//! A worker thread (`server.workers`) keeps its idle HTTP/1.1 connections in a thread-local list
//! and its HTTP/2 connection (when the TLS upstream chose `h2`) beside them: taking and giving back
//! a connection locks nothing, crosses no thread and hashes nothing, since there is one upstream
//! origin. hyper-util's legacy client spent a keyed pool lookup, a lock and a spawned task per
//! request on what this does with a `VecDeque` (BENCHMARKS.md, issue 21).
//!
//! An idle HTTP/1.1 connection is taken newest first, checked before reuse (closed ones are
//! dropped, one still finishing its last answer is awaited), and dropped once idle for
//! [`IDLE_TIMEOUT`] (a timestamp read at checkout and by the worker's housekeeping once a second:
//! no timer per connection). It is given back only
//! after its answer was read whole and did not say `Connection: close`. A request that a reused
//! connection could not even start (the upstream closed it while it sat idle, and hyper hands the
//! request back untouched) is sent once more on a fresh connection; one whose bytes may have
//! reached the upstream never is.

use std::cell::RefCell;
use std::collections::VecDeque;
#[cfg(test)]
use std::sync::Arc;
use std::time::Duration;

use http::uri::Parts;
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use tokio::time::Instant;

use super::connect::{Body, Connector, Fresh};
use crate::error::BoxError;

/// How long an HTTP/1.1 connection may sit idle before it is dropped rather than reused (what
/// hyper-util's client was configured with).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The most idle HTTP/1.1 connections a thread keeps; beyond it the oldest is closed.
const MAX_IDLE: usize = 256;

/// The connections of one [`Pool`] on one thread.
struct Local {
    /// [`Pool::id`].
    id: u64,
    /// Idle HTTP/1.1 connections, oldest first, each with the moment it was given back.
    idle: VecDeque<(http1::SendRequest<Body>, Instant)>,
    /// The thread's HTTP/2 connection, shared by its concurrent requests.
    h2: Option<http2::SendRequest<Body>>,
}

thread_local! {
    /// This thread's connections of the newest two pools: requests that began before a reload
    /// replaced the upstream keep theirs while the new pool fills its own.
    static LOCALS: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// A connection taken for one request.
enum Taken {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

/// The connections to one configured upstream, kept per thread (see the module docs).
pub(super) struct Pool {
    /// Tells this pool's thread-local connections from an older (pre-reload) pool's.
    id: u64,
    connector: Connector,
}

/// The HTTP/1.1 connection an answer arrived on, to give back once the answer is read whole.
pub(super) struct Lease<'a> {
    pool: &'a Pool,
    sender: Option<http1::SendRequest<Body>>,
}

impl Lease<'_> {
    /// Gives the connection back to this thread's idle list, unless `head` said
    /// `Connection: close`. Call it only after the whole answer was read; a lease dropped instead
    /// (an error, a timeout) closes an HTTP/1.1 connection with its sender.
    pub(super) fn release(mut self, head: &http::HeaderMap) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        if head
            .get_all(http::header::CONNECTION)
            .iter()
            .any(says_close)
        {
            return;
        }
        self.pool.with_local(|local| {
            if local.idle.len() >= MAX_IDLE {
                local.idle.pop_front();
            }
            local.idle.push_back((sender, Instant::now()));
        });
    }
}

/// Whether a `Connection` value holds the `close` token.
fn says_close(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}

impl Pool {
    pub(super) fn new(id: u64, connector: Connector) -> Pool {
        Pool { id, connector }
    }

    /// Runs `f` on this thread's connections of this pool, made on first use. A thread keeps the
    /// newest two pools (pool ids grow with each reload): a third forgets the oldest, closing its
    /// idle connections, and a pool older than both kept ones (a request that began before two
    /// reloads) gets connections that are closed after its exchange instead of displacing them.
    fn with_local<R>(&self, f: impl FnOnce(&mut Local) -> R) -> R {
        LOCALS.with(|locals| {
            let mut locals = locals.borrow_mut();
            if let Some(local) = locals.iter_mut().find(|local| local.id == self.id) {
                return f(local);
            }
            let mut fresh = Local {
                id: self.id,
                idle: VecDeque::new(),
                h2: None,
            };
            if locals.len() >= 2 {
                let Some(oldest) = (0..locals.len()).min_by_key(|&at| locals[at].id) else {
                    return f(&mut fresh);
                };
                if locals[oldest].id > self.id {
                    return f(&mut fresh);
                }
                locals.remove(oldest);
            }
            locals.push(fresh);
            let last = locals.len() - 1;
            f(&mut locals[last])
        })
    }

    /// Sends `request` (an absolute URI; HTTP/1.1 connections get its origin form) and returns
    /// the answer's head and streaming body, with the connection to give back once the body is
    /// read. Connection failures carry [`super::connect::ConnectError`].
    pub(super) async fn send(
        &self,
        request: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease<'_>), BoxError> {
        let request = match self.checkout().await {
            None => request,
            Some(taken) => match self.send_on(taken, request).await {
                Ok(answered) => return Ok(answered),
                // Nothing of it was written: safe to send again, on a fresh connection.
                Err((_, Some(request))) => request,
                Err((error, None)) => return Err(error.into()),
            },
        };
        let taken = match self.connector.connect().await? {
            Fresh::Http1(sender) => Taken::Http1(sender),
            Fresh::Http2(sender) => {
                self.with_local(|local| local.h2 = Some(sender.clone()));
                Taken::Http2(sender)
            }
        };
        self.send_on(taken, request)
            .await
            .map_err(|(error, _)| error.into())
    }

    /// A live connection of this thread, if one is at hand: the HTTP/2 one, or the newest idle
    /// HTTP/1.1 one that is neither closed nor idle too long.
    async fn checkout(&self) -> Option<Taken> {
        loop {
            let taken = self.with_local(|local| {
                if let Some(h2) = &local.h2 {
                    if !h2.is_closed() {
                        return Some(Taken::Http2(h2.clone()));
                    }
                    local.h2 = None;
                }
                while let Some((sender, since)) = local.idle.pop_back() {
                    if since.elapsed() >= IDLE_TIMEOUT {
                        // The rest were given back earlier still.
                        local.idle.clear();
                        return None;
                    }
                    if !sender.is_closed() {
                        return Some(Taken::Http1(sender));
                    }
                }
                None
            })?;
            match taken {
                Taken::Http1(mut sender) => {
                    // Given back as soon as its answer was read, it may still be settling into
                    // idle on its driver task (this thread's): wait for that, or find it closed.
                    if sender.ready().await.is_ok() {
                        return Some(Taken::Http1(sender));
                    }
                }
                h2 => return Some(h2),
            }
        }
    }

    /// Sends on `taken`; on failure, the error and the request if hyper returned it unsent.
    async fn send_on(
        &self,
        taken: Taken,
        mut request: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease<'_>), (hyper::Error, Option<Request<Body>>)> {
        let sent = match taken {
            Taken::Http1(mut sender) => {
                origin_form(request.uri_mut());
                let sent = sender.try_send_request(request).await;
                sent.map(|response| (response, Some(sender)))
            }
            Taken::Http2(mut sender) => sender
                .try_send_request(request)
                .await
                .map(|response| (response, None)),
        };
        match sent {
            Ok((response, sender)) => Ok((response, Lease { pool: self, sender })),
            Err(mut failed) => {
                let request = failed.take_message();
                Err((TrySendError::into_error(failed), request))
            }
        }
    }
}

/// Closes this thread's HTTP/1.1 connections idle for [`IDLE_TIMEOUT`] or more, of every pool it
/// keeps: a worker's housekeeping calls it once a second, so an upstream that never closes idle
/// connections itself is not held open by a worker that stopped sending (a checkout alone would
/// look only when the next request comes).
pub(crate) fn close_expired_idle() {
    LOCALS.with(|locals| {
        for local in locals.borrow_mut().iter_mut() {
            // Oldest first: stop at the first one still young enough.
            while local
                .idle
                .front()
                .is_some_and(|(_, since)| since.elapsed() >= IDLE_TIMEOUT)
            {
                local.idle.pop_front();
            }
        }
    });
}

/// Turns an absolute URI into its origin form (path and query), as HTTP/1.1 sends it.
fn origin_form(uri: &mut Uri) {
    if uri.scheme().is_none() {
        return;
    }
    let mut parts = Parts::default();
    parts.path_and_query = uri.path_and_query().cloned();
    if let Ok(origin) = Uri::from_parts(parts) {
        *uri = origin;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// Reads one request head from `stream` and answers it with [`ANSWER`].
    async fn answer_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S) {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request head arrives");
            seen.extend_from_slice(&buf[..n]);
        }
        stream.write_all(ANSWER).await.unwrap();
    }

    fn request() -> Request<Body> {
        let mut request = Request::new(Body::default());
        *request.uri_mut() = "http://upstream/api/token/".parse().unwrap();
        request
            .headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("upstream"));
        request
    }

    fn pool(id: u64, upstream: &str) -> Pool {
        let url = super::super::UpstreamUrl::parse(upstream).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        Pool::new(
            id,
            Connector::new(&url, tls, Duration::from_secs(5)).unwrap(),
        )
    }

    fn kept_ids() -> Vec<u64> {
        LOCALS.with(|locals| locals.borrow().iter().map(|local| local.id).collect())
    }

    #[test]
    fn a_thread_keeps_the_newest_two_pools_and_no_stale_one() {
        let pools: Vec<Pool> = [10, 11, 12, 5]
            .into_iter()
            .map(|id| pool(id, "http://127.0.0.1:1"))
            .collect();
        pools[0].with_local(|_| ());
        pools[1].with_local(|_| ());
        assert_eq!(kept_ids(), [10, 11]);
        // A reload's pool: the oldest goes.
        pools[2].with_local(|_| ());
        assert_eq!(kept_ids(), [11, 12]);
        // A request that began before two reloads displaces neither.
        pools[3].with_local(|local| local.idle.clear());
        assert_eq!(kept_ids(), [11, 12]);
        pools[1].with_local(|_| ());
        assert_eq!(kept_ids(), [11, 12]);
    }

    /// The race of a kept-alive connection: the upstream closed it while it sat idle, and the
    /// close is noticed only once the request is queued on it. hyper hands the request back
    /// unsent, and it goes once more, on a fresh connection.
    #[tokio::test]
    async fn a_request_an_idle_connection_could_not_start_goes_on_a_fresh_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fresh = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            answer_one(&mut stream).await;
            stream
        });
        let pool = pool(u64::MAX, &format!("http://{addr}"));

        // A kept-alive connection (in memory) that served one request and sits idle.
        let (near, mut far) = tokio::io::duplex(4096);
        let (mut sender, connection) = http1::handshake(TokioIo::new(near)).await.unwrap();
        tokio::spawn(connection);
        let (answered, far) = tokio::join!(sender.send_request(request()), async move {
            answer_one(&mut far).await;
            far
        });
        let (parts, body) = answered.unwrap().into_parts();
        body.collect().await.unwrap();
        Lease {
            pool: &pool,
            sender: Some(sender),
        }
        .release(&parts.headers);
        // Let its driver settle into idle, then close it from the upstream's side: the driver
        // is woken but has not run when the next request takes the connection.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        drop(far);

        let (response, _lease) = pool.send(request()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "ok"
        );
        fresh.await.unwrap();
    }

    /// An idle connection of `pool`, over memory, that served one request; the far end is the
    /// upstream's side.
    async fn idle_one(pool: &Pool) -> tokio::io::DuplexStream {
        let (near, mut far) = tokio::io::duplex(4096);
        let (mut sender, connection) = http1::handshake(TokioIo::new(near)).await.unwrap();
        tokio::spawn(connection);
        let (answered, far) = tokio::join!(sender.send_request(request()), async move {
            answer_one(&mut far).await;
            far
        });
        let (parts, body) = answered.unwrap().into_parts();
        body.collect().await.unwrap();
        Lease {
            pool,
            sender: Some(sender),
        }
        .release(&parts.headers);
        far
    }

    #[tokio::test(start_paused = true)]
    async fn housekeeping_closes_connections_idle_too_long_and_keeps_the_rest() {
        let pool = pool(u64::MAX - 1, "http://127.0.0.1:1");
        let mut old = idle_one(&pool).await;
        tokio::time::advance(IDLE_TIMEOUT / 2).await;
        let mut young = idle_one(&pool).await;
        tokio::time::advance(IDLE_TIMEOUT / 2).await;

        close_expired_idle();
        assert_eq!(pool.with_local(|local| local.idle.len()), 1);
        // The upstream sees the old connection closed, and the young one still open.
        let mut byte = [0u8; 1];
        assert_eq!(old.read(&mut byte).await.unwrap(), 0, "closed");
        let still_open =
            tokio::time::timeout(Duration::from_millis(10), young.read(&mut byte)).await;
        assert!(still_open.is_err(), "the young connection stays open");

        tokio::time::advance(IDLE_TIMEOUT / 2).await;
        close_expired_idle();
        assert_eq!(pool.with_local(|local| local.idle.len()), 0);
        assert_eq!(young.read(&mut byte).await.unwrap(), 0, "closed in turn");
    }

    #[test]
    fn connection_close_is_found_among_tokens() {
        for (value, close) in [
            ("close", true),
            ("Close", true),
            ("keep-alive, close", true),
            (" upgrade ,CLOSE", true),
            ("keep-alive", false),
            ("closed", false),
        ] {
            assert_eq!(
                says_close(&HeaderValue::from_static(value)),
                close,
                "{value}"
            );
        }
    }

    #[test]
    fn absolute_uris_lose_scheme_and_authority() {
        let mut uri: Uri = "https://api.example.com:8443/p/api/token/?p=1"
            .parse()
            .unwrap();
        origin_form(&mut uri);
        assert_eq!(uri.to_string(), "/p/api/token/?p=1");
        assert!(uri.authority().is_none());
        origin_form(&mut uri);
        assert_eq!(uri.to_string(), "/p/api/token/?p=1");
    }
}
