//! The [`Emulator`] handle: its state, the accept loop, and the per-request pipeline.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::config::{EmulatorConfig, User};
use super::pipeline;
use super::store::{NewToken, Store, StoredToken};

/// How many requests [`Emulator::seen`] keeps (the oldest are dropped).
pub const SEEN_CAPACITY: usize = 10_000;
/// new-api's default `MAX_REQUEST_BODY_MB` (128 MiB).
const MAX_BODY_BYTES: usize = 128 << 20;

/// One request as the emulator received it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// Request method.
    pub method: Method,
    /// Path and query exactly as received.
    pub uri: Uri,
    /// All request headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The TCP peer.
    pub peer: SocketAddr,
}

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: EmulatorConfig,
    pub(crate) store: Mutex<Store>,
    seen: Mutex<VecDeque<SeenRequest>>,
    delay: Mutex<Duration>,
    pub(crate) limiter: super::ratelimit::RateLimiter,
}

/// An in-memory new-api: cheap to clone, every clone sees the same state.
#[derive(Debug, Clone)]
pub struct Emulator {
    pub(crate) inner: Arc<Inner>,
}

impl Emulator {
    /// An emulator holding the configured account (username `emulator`) and no tokens.
    pub fn new(config: EmulatorConfig) -> Self {
        let mut store = Store::default();
        store.put_user(User {
            id: config.user_id,
            access_token: config.access_token.clone(),
            role: 1,
            status: 1,
            username: "emulator".into(),
        });
        Emulator {
            inner: Arc::new(Inner {
                config,
                store: Mutex::new(store),
                seen: Mutex::new(VecDeque::new()),
                delay: Mutex::new(Duration::ZERO),
                limiter: Default::default(),
            }),
        }
    }

    /// The configuration this emulator was built with.
    pub fn config(&self) -> &EmulatorConfig {
        &self.inner.config
    }

    /// Serve on an already-bound listener until `shutdown` resolves, then stop accepting, let
    /// in-flight requests finish and return.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // Go writes canonical header names (`Content-Type`, `X-Oneapi-Request-Id`).
        builder.http1().title_case_headers(true);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "emulator: accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let emulator = self.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let emulator = emulator.clone();
                async move { Ok::<_, Infallible>(emulator.handle(req, peer).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(error) = conn.await {
                    tracing::debug!(%error, %peer, "emulator: connection ended with an error");
                }
            });
        }
        drop(listener);
        graceful.shutdown().await;
        Ok(())
    }

    /// Bind `127.0.0.1:0`, serve in a task of the current runtime, and return a handle that stops
    /// the server when dropped.
    pub async fn spawn(config: EmulatorConfig) -> std::io::Result<RunningEmulator> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let emulator = Emulator::new(config);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = emulator.clone();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            server.serve(listener, shutdown).await
        });
        Ok(RunningEmulator {
            addr,
            emulator,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Every request received, oldest first (at most [`SEEN_CAPACITY`]).
    pub fn seen(&self) -> Vec<SeenRequest> {
        let seen = self.inner.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().cloned().collect()
    }

    /// Forget the recorded requests.
    pub fn clear_seen(&self) {
        let mut seen = self.inner.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.clear();
    }

    /// The whole token table: unmasked keys, soft-deleted rows and every user's tokens.
    pub fn tokens(&self) -> Vec<StoredToken> {
        self.store().tokens.clone()
    }

    /// Add a user (or replace the one with the same id): another account, a banned user
    /// (status 2), a guest (role 0), a root user (role 100, which matters in E3).
    pub fn add_user(&self, user: User) {
        self.store().put_user(user);
    }

    /// Seed a token for `user_id` directly, skipping every API check; returns its id.
    pub fn insert_token(&self, user_id: i64, token: NewToken) -> i64 {
        self.store().insert(user_id, token, unix_now())
    }

    /// Simulate relay usage of token `id` as new-api bills it: `remain_quota -= amount` and
    /// `used_quota += amount` for limited and unlimited tokens alike (an unlimited token's
    /// `remain_quota` goes below 0, as new-api's does), `accessed_time` set to now. A limited,
    /// enabled, unexpired token left with `remain_quota <= 0` gets status 4 (exhausted) at once:
    /// new-api's relay auth does that on the next relay request with Redis off
    /// (`upstream-new-api.md` §3), and the emulator has no relay. A negative `amount` is a
    /// refund. Returns whether a live (not soft-deleted) token with that id exists, whoever owns
    /// it; nothing changes otherwise.
    pub fn use_quota(&self, id: i64, amount: i64) -> bool {
        self.store().use_quota(id, amount, unix_now())
    }

    /// Arm a one-shot [`use_quota`](Self::use_quota)`(id, amount)` that runs right after the next
    /// successful `GET /api/token/{id}` has been answered: that answer still shows the values
    /// before the usage, the stored row has it applied from then on. This puts relay usage
    /// between a client's read and its write-back, the race a read-merge-write (a PATCH turned
    /// into a full PUT) has against real traffic. Only a single-token read that finds the token
    /// fires it (not list, search, key reveal, or a failed read). Each call arms one hook and
    /// each such read fires the oldest one armed for `id`, so arming twice puts usage after the
    /// first read and after the second (a client that re-reads and retries races again).
    pub fn use_quota_after_next_read(&self, id: i64, amount: i64) {
        self.store().usage_after_read.push((id, amount));
    }

    /// Sleep this long before handling every request (default zero). The request is recorded in
    /// [`seen`](Self::seen) first; if the client goes away during the delay it is not applied.
    pub fn set_delay(&self, delay: Duration) {
        *self.inner.delay.lock().unwrap_or_else(|e| e.into_inner()) = delay;
    }

    pub(crate) fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.inner.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> pipeline::Reply {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return pipeline::bad_request(),
        };
        let uri = parts
            .uri
            .path_and_query()
            .and_then(|pq| Uri::try_from(pq.as_str()).ok())
            .unwrap_or_else(|| parts.uri.clone());
        self.record(SeenRequest {
            method: parts.method.clone(),
            uri,
            headers: parts.headers.clone(),
            body: body.clone(),
            peer,
        });
        let delay = *self.inner.delay.lock().unwrap_or_else(|e| e.into_inner());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        pipeline::respond(self, &parts, &body, peer)
    }

    fn record(&self, request: SeenRequest) {
        let mut seen = self.inner.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= SEEN_CAPACITY {
            seen.pop_front();
        }
        seen.push_back(request);
    }
}

/// Unix seconds now.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A served emulator on a loopback port; dropping it stops the server.
#[derive(Debug)]
pub struct RunningEmulator {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state (seen requests, tokens, users, delay).
    pub emulator: Emulator,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningEmulator {
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting, wait for in-flight requests to finish, and return how serving ended.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
