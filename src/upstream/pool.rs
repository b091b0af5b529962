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
//!
//! The HTTP/2 connection is dropped by the same housekeeping once unused for [`IDLE_TIMEOUT`], or
//! as soon as a reload made its pool no longer the thread's newest (requests still on it hold
//! senders of their own, so it closes once they are done). While HTTP/2 is likely (a TLS upstream
//! that has not yet chosen HTTP/1.1 on this thread), requests that find no connection wait for
//! the one connect in flight rather than each opening its own, of which all but one would be
//! closed after a single request.

use std::cell::RefCell;
use std::collections::VecDeque;
#[cfg(test)]
use std::sync::Arc;
use std::time::Duration;

use http::uri::Parts;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use tokio::sync::watch;
use tokio::time::Instant;

use super::connect::{Body, Connector, Sender};
use crate::error::BoxError;

/// How long a connection may sit idle (an HTTP/1.1 one in the idle list, the HTTP/2 one unused)
/// before it is dropped rather than reused (what hyper-util's client was configured with).
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
    /// When `h2` was last taken for a request (or made).
    h2_used: Instant,
    /// Whether the next connection is likely HTTP/2: a TLS upstream whose last connection on this
    /// thread (if any) chose it. Then a request that finds no connection waits for the connect in
    /// flight instead of making its own.
    h2_likely: bool,
    /// The connect in flight while `h2_likely`: its sender is dropped when that connect ends
    /// (done, failed, or its request gave up), which wakes the waiters.
    connecting: Option<watch::Receiver<()>>,
}

impl Local {
    fn new(id: u64, h2_likely: bool) -> Local {
        Local {
            id,
            idle: VecDeque::new(),
            h2: None,
            h2_used: Instant::now(),
            h2_likely,
            connecting: None,
        }
    }
}

thread_local! {
    /// This thread's connections of the newest two pools: requests that began before a reload
    /// replaced the upstream keep theirs while the new pool fills its own.
    static LOCALS: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// What a request that found no connection at hand does.
enum Plan {
    /// Waits for the HTTP/2 connect in flight, then looks again.
    Wait(watch::Receiver<()>),
    /// Connects; when `Some`, the connect others wait for, until it is dropped.
    Connect(Option<watch::Sender<()>>),
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
    /// Gives the connection back to this thread's idle list. Call it only after the whole answer
    /// was read; a lease dropped instead (an error, a timeout) closes an HTTP/1.1 connection with
    /// its sender. An answer that said `Connection: close` needs no check here: hyper closes
    /// that connection itself, and the checkout's `ready` finds it closed.
    pub(super) fn release(mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        self.pool.with_local(|local| {
            if local.idle.len() >= MAX_IDLE {
                local.idle.pop_front();
            }
            local.idle.push_back((sender, Instant::now()));
        });
    }
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
            let mut fresh = Local::new(self.id, self.connector.offers_h2());
            if locals.len() >= 2 {
                let oldest = (0..locals.len())
                    .min_by_key(|&at| locals[at].id)
                    .unwrap_or(0);
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
        mut request: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease<'_>), BoxError> {
        // After a reused connection handed the request back: straight to a fresh one, once.
        let mut resent = false;
        let mut look = true;
        loop {
            let taken = if look { self.checkout().await } else { None };
            let (sender, reused) = match taken {
                Some(sender) => (sender, true),
                None => match self.plan() {
                    Plan::Wait(mut connect) => {
                        // Resolves when that connect ends, whichever way.
                        let _ = connect.changed().await;
                        look = true;
                        continue;
                    }
                    Plan::Connect(waited_for) => {
                        let fresh = self.connector.connect().await?;
                        self.with_local(|local| match &fresh {
                            Sender::Http2(h2) => {
                                local.h2 = Some(h2.clone());
                                local.h2_used = Instant::now();
                                local.h2_likely = true;
                            }
                            Sender::Http1(_) => local.h2_likely = false,
                        });
                        drop(waited_for);
                        (fresh, false)
                    }
                },
            };
            match self.send_on(sender, request).await {
                Ok(answered) => return Ok(answered),
                // Nothing of it was written: safe to send again, on a fresh connection.
                Err((_, Some(back))) if reused && !resent => {
                    resent = true;
                    look = false;
                    request = back;
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
    }

    /// Stops handing out this thread's HTTP/2 connection: an exchange on it ran out of time, and
    /// a connection that no longer answers would take every request of the thread until its
    /// pings find it dead. Requests still on it keep it until they end; the next one connects
    /// afresh (at worst one handshake more after an upstream that was only slow).
    pub(super) fn forget_h2(&self) {
        self.with_local(|local| local.h2 = None);
    }

    /// With no connection at hand: wait for the HTTP/2 connect in flight, or make one (the one
    /// others wait for, while HTTP/2 is likely).
    fn plan(&self) -> Plan {
        self.with_local(|local| {
            if !local.h2_likely {
                return Plan::Connect(None);
            }
            if let Some(connect) = &local.connecting {
                // An error: its sender was dropped, that connect is over.
                if connect.has_changed().is_ok() {
                    return Plan::Wait(connect.clone());
                }
            }
            let (waited_for, connect) = watch::channel(());
            local.connecting = Some(connect);
            Plan::Connect(Some(waited_for))
        })
    }

    /// A live connection of this thread, if one is at hand: the HTTP/2 one, or the newest idle
    /// HTTP/1.1 one that is neither closed nor idle too long.
    async fn checkout(&self) -> Option<Sender> {
        loop {
            let taken = self.with_local(|local| {
                if let Some(h2) = &local.h2 {
                    if !h2.is_closed() {
                        local.h2_used = Instant::now();
                        return Some(Sender::Http2(h2.clone()));
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
                        return Some(Sender::Http1(sender));
                    }
                }
                None
            })?;
            match taken {
                Sender::Http1(mut sender) => {
                    // Given back as soon as its answer was read, it may still be settling into
                    // idle on its driver task (this thread's): wait for that, or find it closed.
                    if sender.ready().await.is_ok() {
                        return Some(Sender::Http1(sender));
                    }
                }
                h2 => return Some(h2),
            }
        }
    }

    /// Sends on `sender`; on failure, the error and the request if hyper returned it unsent (with
    /// its absolute URI, which HTTP/2 needs, whatever this connection's protocol).
    async fn send_on(
        &self,
        sender: Sender,
        mut request: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease<'_>), (hyper::Error, Option<Request<Body>>)> {
        let (sent, absolute) = match sender {
            Sender::Http1(mut sender) => {
                let absolute = request.uri().clone();
                origin_form(request.uri_mut());
                let sent = sender.try_send_request(request).await;
                (
                    sent.map(|response| (response, Some(sender))),
                    Some(absolute),
                )
            }
            Sender::Http2(mut sender) => (
                sender
                    .try_send_request(request)
                    .await
                    .map(|response| (response, None)),
                None,
            ),
        };
        match sent {
            Ok((response, sender)) => Ok((response, Lease { pool: self, sender })),
            Err(mut failed) => {
                let request = failed.take_message().map(|mut request| {
                    if let Some(absolute) = absolute {
                        *request.uri_mut() = absolute;
                    }
                    request
                });
                Err((TrySendError::into_error(failed), request))
            }
        }
    }
}

/// Closes this thread's connections idle for [`IDLE_TIMEOUT`] or more, of every pool it keeps,
/// and the HTTP/2 connection of every pool but the newest (a reload replaced it): a worker's
/// housekeeping calls it once a second, so an upstream that never closes idle connections itself
/// is not held open by a worker that stopped sending (a checkout alone would look only when the
/// next request comes).
pub(crate) fn close_expired_idle() {
    LOCALS.with(|locals| {
        let mut locals = locals.borrow_mut();
        let newest = locals.iter().map(|local| local.id).max();
        for local in locals.iter_mut() {
            // Oldest first: stop at the first one still young enough.
            while local
                .idle
                .front()
                .is_some_and(|(_, since)| since.elapsed() >= IDLE_TIMEOUT)
            {
                local.idle.pop_front();
            }
            if Some(local.id) != newest || local.h2_used.elapsed() >= IDLE_TIMEOUT {
                local.h2 = None;
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

    use http::HeaderValue;
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
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
        let far = idle_one(&pool).await;
        // Let its driver settle into idle, then close it from the upstream's side: the driver
        // is woken but has not run when the next request takes the connection.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        drop(far);
        // The idle connection is there and not yet seen closed: the checkout takes it, and the
        // resend is what brings the answer.
        assert!(pool.with_local(|local| local.idle.len() == 1 && !local.idle[0].0.is_closed()));

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
        answered.unwrap().into_body().collect().await.unwrap();
        Lease {
            pool,
            sender: Some(sender),
        }
        .release();
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

    /// An answer saying `Connection: close`, read whole and given back, leaves a connection that
    /// no checkout takes: hyper closes it (the upstream sees it closed though it kept its side
    /// open), so the pool needs no check of its own.
    #[tokio::test]
    async fn an_answer_saying_connection_close_leaves_nothing_to_reuse() {
        let pool = pool(u64::MAX - 2, "http://127.0.0.1:1");
        let (near, mut far) = tokio::io::duplex(4096);
        let (mut sender, connection) = http1::handshake(TokioIo::new(near)).await.unwrap();
        tokio::spawn(connection);
        let (answered, mut far) = tokio::join!(sender.send_request(request()), async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = far.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            far.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            far
        });
        answered.unwrap().into_body().collect().await.unwrap();
        Lease {
            pool: &pool,
            sender: Some(sender),
        }
        .release();
        let taken = tokio::time::timeout(Duration::from_secs(5), pool.checkout()).await;
        assert!(taken.unwrap().is_none(), "a connection was taken");
        let mut byte = [0u8; 1];
        assert_eq!(far.read(&mut byte).await.unwrap(), 0, "hyper closed it");
    }

    /// A request an HTTP/1.1 connection hands back carries its absolute URI again, as an
    /// HTTP/2 connection it may go on next needs it.
    #[tokio::test]
    async fn a_request_handed_back_keeps_its_absolute_uri() {
        let pool = pool(u64::MAX - 3, "http://127.0.0.1:1");
        let (near, _far) = tokio::io::duplex(4096);
        let (sender, connection) = http1::handshake(TokioIo::new(near)).await.unwrap();
        // Its driver gone, the connection cannot start a request.
        drop(connection);
        let Err((_, Some(back))) = pool.send_on(Sender::Http1(sender), request()).await else {
            panic!("the request was not handed back");
        };
        assert_eq!(back.uri().to_string(), "http://upstream/api/token/");
    }

    /// An HTTP/2 connection over memory, its server's task ending when the connection closes.
    async fn h2_connection() -> (http2::SendRequest<Body>, tokio::task::JoinHandle<()>) {
        let (near, far) = tokio::io::duplex(65536);
        let server = tokio::spawn(async move {
            let service = hyper::service::service_fn(|_| async {
                Ok::<_, std::convert::Infallible>(Response::new(Body::from("ok")))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(far), service)
                .await;
        });
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(near))
            .await
            .unwrap();
        tokio::spawn(connection);
        (sender, server)
    }

    #[tokio::test(start_paused = true)]
    async fn housekeeping_drops_an_http2_connection_unused_too_long() {
        let pool = pool(u64::MAX - 4, "http://127.0.0.1:1");
        let (sender, mut server) = h2_connection().await;
        pool.with_local(|local| {
            local.h2 = Some(sender);
            local.h2_used = Instant::now();
        });
        tokio::time::advance(IDLE_TIMEOUT / 2).await;
        // Taken for a request: its idle time starts again.
        assert!(matches!(pool.checkout().await, Some(Sender::Http2(_))));
        tokio::time::advance(IDLE_TIMEOUT / 2 + Duration::from_secs(1)).await;
        close_expired_idle();
        assert!(pool.with_local(|local| local.h2.is_some()), "used recently");
        assert!(
            tokio::time::timeout(Duration::from_millis(10), &mut server)
                .await
                .is_err(),
            "still open"
        );
        tokio::time::advance(IDLE_TIMEOUT / 2).await;
        close_expired_idle();
        assert!(
            pool.with_local(|local| local.h2.is_none()),
            "unused too long"
        );
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the upstream sees the connection closed")
            .unwrap();
    }

    #[tokio::test]
    async fn housekeeping_drops_the_http2_connection_of_a_replaced_pool() {
        let (old, new) = (
            pool(30, "http://127.0.0.1:1"),
            pool(31, "http://127.0.0.1:1"),
        );
        let (sender, mut server) = h2_connection().await;
        old.with_local(|local| local.h2 = Some(sender));
        close_expired_idle();
        assert!(
            old.with_local(|local| local.h2.is_some()),
            "still the newest"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut server)
                .await
                .is_err(),
            "still open"
        );
        // A reload's pool is used on this thread.
        new.with_local(|_| ());
        close_expired_idle();
        assert!(old.with_local(|local| local.h2.is_none()), "replaced");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the upstream sees the connection closed")
            .unwrap();
    }

    /// A request waiting for the HTTP/2 connect in flight takes over when the request that made
    /// it gives up (its deadline passed), rather than waiting for a connection that never comes.
    #[tokio::test]
    async fn a_connect_given_up_hands_over_to_a_waiting_request() {
        // A TLS upstream that accepts and never answers its handshake.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                seen.lock().unwrap().push(Instant::now());
                held.push(stream);
            }
        });
        let pool = pool(u64::MAX - 5, &format!("https://{addr}"));
        let started = Instant::now();
        let given_up = Duration::from_millis(200);
        let (first, second) = tokio::join!(
            tokio::time::timeout(given_up, pool.send(request())),
            tokio::time::timeout(Duration::from_secs(1), pool.send(request())),
        );
        assert!(first.is_err() && second.is_err(), "neither is answered");
        let accepted = accepted.lock().unwrap().clone();
        assert_eq!(accepted.len(), 2, "the waiting request connected in turn");
        assert!(
            accepted[0] < started + given_up,
            "the first connected at once"
        );
        assert!(
            accepted[1] >= started + given_up,
            "the second waited for it"
        );
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
