//! Accepting connections and draining them: the caller-facing and admin listeners, HTTP/1.1 and
//! HTTP/2 on each (over TLS on the caller side when `server.tls` is set), a short header-read
//! timeout against slow-header attacks (the TLS handshake, the choice of protocol and the idle
//! time between requests share it), and a graceful stop.

mod idle;
mod preface;

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceExt};

use crate::admin;
use crate::audit::record;
use crate::audit::writer::Trail;
use crate::config::MIN_HEADER_BYTES;
use crate::connections::Connections;
use crate::context::PeerAddr;
use crate::error::Body;
use crate::gateway::Gateway;
use crate::ratelimit::unauthenticated::Summary;
use crate::reload::Live;
use crate::tls::PeerIdentity;

/// How long a caller may take to send its request headers (never more than the whole request's
/// budget): a connection that sends nothing is closed after this long too.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings find dead peers; a peer that does not answer one in time is dropped.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Serves the gateway on `api` and its operations endpoints on `admin` until `shutdown`
/// resolves; then stops accepting, lets in-flight requests finish within `grace`, and returns.
/// Callers are served on the runtime this is called on.
pub async fn run(
    gateway: Gateway,
    api: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    run_reloading(gateway, api, admin, shutdown, grace, None).await
}

/// [`run`], reloading the configuration at `reload_from` on each `SIGHUP` (SPEC §7).
pub async fn run_reloading(
    gateway: Gateway,
    api: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    reload_from: Option<PathBuf>,
) {
    let _ = run_with(
        gateway,
        Callers::Here(api),
        admin,
        shutdown,
        grace,
        reload_from,
    )
    .await;
}

/// [`run_reloading`] with callers served by one thread per listener in `api` (see
/// [`bind_workers`]), each running its own single-threaded runtime: a connection is accepted,
/// read, routed and forwarded on one thread, with no work stealing and no hand-off between
/// threads. The admin listener, `SIGHUP` reloads, the summaries of refusals and the audit writer
/// stay on the runtime this is called on; the configuration, the connection count and the trail
/// are shared by all workers. Fails only when a worker thread cannot be started.
pub async fn run_workers(
    gateway: Gateway,
    api: Vec<std::net::TcpListener>,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    reload_from: Option<PathBuf>,
) -> Result<(), String> {
    run_with(
        gateway,
        Callers::Workers(api),
        admin,
        shutdown,
        grace,
        reload_from,
    )
    .await
}

/// Where the caller-facing listeners are served.
enum Callers {
    /// One listener, on the calling runtime (tests, and embedders with their own runtime).
    Here(TcpListener),
    /// One worker thread per listener, all bound to the same address with `SO_REUSEPORT`.
    Workers(Vec<std::net::TcpListener>),
}

/// What the caller-facing accept loops share, and which worker a loop is.
#[derive(Clone)]
pub struct CallerSide {
    /// The configuration in force (TLS, `max_connections`, `max_header_bytes`).
    pub live: Arc<Live>,
    /// The open caller connections of all workers, against `server.max_connections`.
    pub connections: Arc<Connections>,
    /// `tokengate_worker_connections_total` of this worker.
    pub accepted: Counter,
}

/// What [`run_reloading`] and [`run_workers`] share: the live configuration, the admin listener,
/// reloads and summaries on this runtime, the caller-facing accept loops where `callers` says,
/// then the drain, the wait for forwarded changes and the trail's close. An `Err` says why
/// serving stopped before `shutdown` (a worker that could not start).
async fn run_with(
    gateway: Gateway,
    callers: Callers,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    reload_from: Option<PathBuf>,
) -> Result<(), String> {
    let Some(trail) = gateway.trail.clone() else {
        tracing::error!("the audit trail is not open; nothing is served");
        return Err("the audit trail is not open".into());
    };
    let live = Live::new(gateway.clone(), trail.clone());
    let (stop, stopped) = watch::channel(false);
    let header_timeout = HEADER_READ_TIMEOUT.min(gateway.request_timeout);
    let connections = Connections::new(gateway.metrics.clone());
    let side = |worker: usize| CallerSide {
        live: live.clone(),
        connections: connections.clone(),
        accepted: gateway.metrics.worker_connections(worker),
    };
    // Each accept loop drops its sender when it has drained (or its thread ended).
    let mut done = Vec::new();
    let mut failed = None;
    match callers {
        Callers::Here(api) => {
            let (sender, receiver) = oneshot::channel::<()>();
            let serving = serve(
                api,
                live.service(),
                Some(side(0)),
                stopped.clone(),
                grace,
                header_timeout,
            );
            tokio::spawn(async move {
                serving.await;
                drop(sender);
            });
            done.push(receiver);
        }
        Callers::Workers(listeners) => {
            for (worker, listener) in listeners.into_iter().enumerate() {
                let (sender, receiver) = oneshot::channel::<()>();
                let started = start_worker(
                    worker,
                    listener,
                    side(worker),
                    stopped.clone(),
                    grace,
                    header_timeout,
                    sender,
                );
                match started {
                    Ok(()) => done.push(receiver),
                    Err(error) => {
                        failed = Some(error);
                        break;
                    }
                }
            }
        }
    }
    let admin = tokio::spawn(serve(
        admin,
        admin::service(live.clone()),
        None,
        stopped,
        grace,
        header_timeout,
    ));
    let reloads = reload_from.map(|path| tokio::spawn(reload_on_hangup(live.clone(), path)));
    let summaries = tokio::spawn(write_summaries(live.clone(), trail.clone()));
    // This runtime's own (the callers' with `Callers::Here`; the admin listener's readiness
    // probes reach the upstream from it too). On a multi-threaded runtime it tidies the thread it
    // runs on; each worker runs its own.
    let housekeeping = tokio::spawn(housekeeping());
    match &failed {
        None => {
            gateway.metrics.set_serving(true);
            shutdown.await;
        }
        Some(error) => tracing::error!("{error}; stopping"),
    }
    if let Some(reloads) = reloads {
        reloads.abort();
    }
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: no new connections, draining in-flight requests"
    );
    gateway.metrics.set_serving(false);
    let _ = stop.send(true);
    for receiver in done {
        let _ = receiver.await;
    }
    let _ = admin.await;
    // Changes whose callers are gone (or were cut at the grace) run to their outcome records,
    // for upstream.timeout_ms at most; what still waits on the upstream then is recorded as a
    // timeout (SPEC §6).
    let in_flight = gateway.in_flight.clone();
    if in_flight.running() > 0 {
        tracing::info!(
            running = in_flight.running(),
            "waiting for forwarded changes to get their outcome records"
        );
        if !in_flight.finish(gateway.upstream_timeout).await {
            tracing::error!(
                running = in_flight.running(),
                "forwarded changes still without an outcome at exit"
            );
        }
    }
    summaries.abort();
    housekeeping.abort();
    // The refusals counted since the last summaries, whatever their window, before the trail
    // closes.
    let unauthenticated = live.current().gateway.unauthenticated.clone();
    append_summaries(&trail, unauthenticated.drain()).await;
    if let Err(error) = trail.close().await {
        tracing::error!("the audit trail could not be flushed: {error}");
    }
    // Every durable record is in the trail now; the central store gets them within the grace
    // (SPEC §6.3), or at the next start.
    if let Some(shipper) = &gateway.shipper {
        shipper.drain(grace).await;
    }
    tracing::info!("stopped");
    match failed {
        None => Ok(()),
        Some(error) => Err(error),
    }
}

/// How often a worker does its housekeeping.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

/// A worker's housekeeping, for as long as its runtime runs: its upstream connections idle past
/// their time are closed, and its allocator hands back the pages freed more than a second ago
/// (`crate::memory`): an idle worker makes no allocation that would do it otherwise.
async fn housekeeping() {
    let mut every = tokio::time::interval(HOUSEKEEPING_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        crate::upstream::close_expired_idle();
        crate::memory::tidy();
    }
}

/// Starts worker `worker`: a thread with its own single-threaded runtime serving `listener`
/// until `stop`, then keeping that runtime alive while forwarded changes detached on it run to
/// their outcome records (they are tasks of this runtime, and dropping it would cancel them).
/// `done` is dropped when the thread ends, however it ends.
fn start_worker(
    worker: usize,
    listener: std::net::TcpListener,
    side: CallerSide,
    stop: watch::Receiver<bool>,
    grace: Duration,
    header_timeout: Duration,
    done: oneshot::Sender<()>,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime of worker {worker}: {e}"))?;
    std::thread::Builder::new()
        .name(format!("tokengate-worker-{worker}"))
        .spawn(move || {
            let _done = done;
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(worker, %error, "the worker cannot use its listener");
                        return;
                    }
                };
                let generation = side.live.current();
                let (in_flight, upstream_timeout) = (
                    generation.gateway.in_flight.clone(),
                    generation.gateway.upstream_timeout,
                );
                drop(generation);
                let service = side.live.service();
                tokio::spawn(housekeeping());
                serve(listener, service, Some(side), stop, grace, header_timeout).await;
                // Bounded like the wait in `run_with`. What is still running when this runtime
                // ends is cancelled with it (and no longer counted there), so it is logged here.
                if !in_flight.finish(upstream_timeout).await {
                    tracing::error!(
                        worker,
                        running = in_flight.running(),
                        "forwarded changes still without an outcome at exit"
                    );
                }
            });
        })
        .map(drop)
        .map_err(|e| format!("cannot start worker thread {worker}: {e}"))
}

/// Binds `workers` caller-facing listeners to `addr`, all with `SO_REUSEPORT` so the kernel
/// spreads new connections over them (one per worker thread). Port 0 picks a free port for the
/// first; the others bind to that same port. One worker binds without `SO_REUSEPORT`, as a
/// plain listener would, so an address already in use is refused.
pub fn bind_workers(
    addr: std::net::SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // As tokio's own `TcpListener::bind`: a restart is not refused over connections in
        // TIME_WAIT.
        #[cfg(unix)]
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        if workers > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        let listener = std::net::TcpListener::from(socket);
        if listeners.is_empty() {
            addr = listener.local_addr()?;
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

/// The listen backlog of each worker's listener (tokio's `TcpListener::bind` uses the same).
const LISTEN_BACKLOG: i32 = 1024;

/// How often the closed windows of refusals before authentication are written up.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(5);

/// Writes the summary record of each address whose window of refusals past the unauthenticated
/// limit has closed (SPEC §5), until aborted at shutdown. A reload that replaces the table (a new
/// rate or bound) has the old one's pending counts written at once.
async fn write_summaries(live: Arc<Live>, trail: Arc<Trail>) {
    let mut table = live.current().gateway.unauthenticated.clone();
    let mut ticks = tokio::time::interval(SUMMARY_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let current = live.current().gateway.unauthenticated.clone();
        if !Arc::ptr_eq(&current, &table) {
            append_summaries(&trail, table.drain()).await;
            table = current;
        }
        append_summaries(&trail, table.due()).await;
    }
}

/// Appends one summary record each; a record that cannot be written is logged with its count.
async fn append_summaries(trail: &Trail, summaries: Vec<Summary>) {
    for summary in summaries {
        if let Err(error) = trail
            .append(record::suppressed(&summary, trail.origin()))
            .await
        {
            tracing::error!(
                source_ip = %summary.ip,
                suppressed = summary.suppressed,
                "the summary of refusals before authentication was not recorded: {error}"
            );
        }
    }
}

/// Accepts connections on `listener` (TLS first, when `caller` has a TLS configuration) and
/// serves `service` on each until `stop` turns true.
///
/// With `caller` (the caller-facing listener), the configuration in force at each accept decides:
/// at `server.max_connections` open connections the loop waits before accepting (the kernel's
/// backlog holds the rest, see [`Connections`]), and each connection's request head is capped at
/// `server.max_header_bytes`. Without it (the admin listener) neither applies: operations
/// endpoints stay reachable when callers fill the cap, and hyper's own head limits hold there.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    caller: Option<CallerSide>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    header_timeout: Duration,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let admin_builder = connection_builder(header_timeout, None);
    // Each connection task holds a sender; when all are dropped the drain is over (mini-redis's
    // `shutdown_complete`).
    let (open_tx, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        if let Some(CallerSide {
            live, connections, ..
        }) = &caller
        {
            // At the cap, stop accepting until a connection closes (or a reload raises it).
            tokio::select! {
                () = connections.room(|| live.current().gateway.max_connections, live.reloads()) => {}
                _ = stop.changed() => break,
            }
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Counted from here until the task below ends, handshake and all. Another
                    // worker may have taken the last room since: then this one waits for room.
                    let open = match &caller {
                        Some(CallerSide { live, connections, accepted }) => {
                            accepted.inc();
                            tokio::select! {
                                open = connections.claim(
                                    || live.current().gateway.max_connections,
                                    live.reloads(),
                                ) => Some(open),
                                _ = stop.changed() => break,
                            }
                        }
                        None => None,
                    };
                    let _ = stream.set_nodelay(true);
                    let service = service.clone();
                    let mut held = Held {
                        stop: stop.clone(),
                        header_timeout,
                        _open: open_tx.clone(),
                    };
                    let (tls, builder) = match &caller {
                        Some(CallerSide { live, .. }) => {
                            let generation = live.current();
                            let gateway = &generation.gateway;
                            (
                                gateway.tls.clone(),
                                connection_builder(header_timeout, Some(gateway.max_header_bytes)),
                            )
                        }
                        None => (None, admin_builder.clone()),
                    };
                    tokio::spawn(async move {
                        let _open = open;
                        let Some(tls) = tls else {
                            // hyper has no timer running until it has chosen between HTTP/1.1
                            // and HTTP/2: the first bytes are read under the header timeout here.
                            let Some(stream) =
                                first_bytes(stream, header_timeout, &mut held.stop).await
                            else {
                                return;
                            };
                            return drive(&builder, held, stream, service, peer, None).await;
                        };
                        let handshake = TlsAcceptor::from(tls).accept(stream);
                        let stream = tokio::select! {
                            done = tokio::time::timeout(header_timeout, handshake) => match done {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    // An untrusted client certificate ends here, before any request.
                                    tracing::debug!(%peer, %error, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            },
                            _ = held.stop.changed() => return,
                        };
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|leaf| Arc::new(PeerIdentity::of(leaf)));
                        // The same read of the first bytes, now of plaintext: a client that
                        // completes the handshake and then sends nothing, or half the HTTP/2
                        // preface, would otherwise hold the connection for ever.
                        let Some(stream) = first_bytes(stream, header_timeout, &mut held.stop).await
                        else {
                            return;
                        };
                        drive(&builder, held, stream, service, peer, identity).await;
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Only `true` is ever sent; a dropped sender also means stop.
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    drop(open_tx);
    // `recv` answers `None` once every connection task has dropped its sender.
    if tokio::time::timeout(grace, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period ran out; remaining connections closed");
    }
}

/// What a connection task holds of its listener: the stop signal, the idle limit, and a sender
/// whose drop tells the drain this connection is gone.
struct Held {
    stop: watch::Receiver<bool>,
    header_timeout: Duration,
    _open: mpsc::Sender<()>,
}

/// Reads a connection's first bytes (see [`preface`]) within `limit`. `None`: the peer sent
/// nothing usable in time, closed, or the server is stopping.
async fn first_bytes<I: AsyncRead + Unpin>(
    io: I,
    limit: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Option<preface::Prefixed<I>> {
    tokio::select! {
        read = tokio::time::timeout(limit, preface::read(io)) => read.ok()?.ok()?,
        _ = stop.changed() => None,
    }
}

/// The connection builder: HTTP/1.1 and HTTP/2 with the header-read timeout and HTTP/2 pings,
/// and, when given, the request-head cap (SPEC §3) on both.
///
/// HTTP/1.1: hyper-util's auto builder has no `max_header_size`, but hyper answers 431 when its
/// read buffer is full without a complete head, so the buffer is capped at `max_header_bytes`: a
/// head of exactly that many bytes is parsed, one byte more is refused. (hyper asserts a buffer of
/// at least 8192; the configuration check refuses less, and the `max` here keeps even an
/// unchecked value from panicking.) Bodies stream through a buffer that size, as before through
/// hyper's default of about 400 KiB.
/// HTTP/2: the header list size is advertised in SETTINGS, and h2 answers 431 to a header block
/// over it (counted as RFC 9113 does: name and value plus 32 bytes per field). A block over four
/// times that, or one spread over more CONTINUATION frames than the size needs, is not decoded
/// at all: h2 ends the connection (GOAWAY) instead.
fn connection_builder(
    header_timeout: Duration,
    max_header_bytes: Option<usize>,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    if let Some(max) = max_header_bytes {
        http1.max_buf_size(max.max(MIN_HEADER_BYTES));
    }
    let mut http2 = builder.http2();
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE);
    if let Some(max) = max_header_bytes {
        http2.max_header_list_size(u32::try_from(max).unwrap_or(u32::MAX));
    }
    builder
}

/// Serves one connection until it ends, each request carrying the peer's address and, over
/// mutual TLS, the names of its verified certificate. The connection is ended gracefully when the
/// server stops or when no request has been in flight on it for the header timeout (see
/// [`idle`]).
async fn drive<S, I>(
    builder: &auto::Builder<TokioExecutor>,
    held: Held,
    io: I,
    service: S,
    peer: std::net::SocketAddr,
    identity: Option<Arc<PeerIdentity>>,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = idle::Activity::new();
    let counted = activity.clone();
    let service = service
        .map_request(move |mut request: Request<Incoming>| {
            let extensions = request.extensions_mut();
            extensions.insert(PeerAddr(peer));
            if let Some(identity) = &identity {
                extensions.insert(identity.clone());
            }
            request
        })
        .map_future(move |answer| {
            let busy = counted.begin();
            async move {
                let answer = answer.await;
                drop(busy);
                answer
            }
        });
    let Held {
        mut stop,
        header_timeout,
        _open,
    } = held;
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    let idle = activity.idle_for(header_timeout);
    tokio::pin!(connection, idle);
    let mut ending = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !ending => {
                connection.as_mut().graceful_shutdown();
                ending = true;
            }
            () = &mut idle, if !ending => {
                connection.as_mut().graceful_shutdown();
                ending = true;
            }
        }
    }
}

/// Reloads the configuration at `path` on each `SIGHUP`; a configuration that does not load is
/// refused whole, with the reason logged, and the running one stays.
async fn reload_on_hangup(live: Arc<Live>, path: PathBuf) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(%error, "cannot watch for SIGHUP: reload needs a restart");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            let (live, path) = (live.clone(), path.clone());
            let result = tokio::task::spawn_blocking(move || live.reload(&path)).await;
            match result {
                Ok(Ok(())) => tracing::info!("SIGHUP: configuration reloaded"),
                Ok(Err(error)) => tracing::error!(
                    "SIGHUP: the configuration was refused, the running one stays: {error}"
                ),
                Err(error) => tracing::error!(%error, "SIGHUP: the reload failed"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (live, path);
}
