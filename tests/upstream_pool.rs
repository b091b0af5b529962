//! The gateway's own upstream connections (src/upstream/pool.rs): kept alive and reused, replaced
//! when the upstream closed one or said `Connection: close`, and HTTP/2 over TLS when the
//! upstream's ALPN picks it (HTTP/1.1 when it picks that). Every upstream here counts the
//! connections it accepted and the requests each carried.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, Version};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::tls::TestCa;
use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a list request gets from the hand-written upstreams.
const LIST: &str =
    r#"{"success":true,"message":"","data":{"page":1,"page_size":10,"total":0,"items":[]}}"#;

/// The requests each accepted connection carried, in the order they were accepted.
#[derive(Clone, Default)]
struct Tally(Arc<Mutex<Vec<usize>>>);

impl Tally {
    fn accepted(&self) -> usize {
        let mut all = self.0.lock().unwrap();
        all.push(0);
        all.len() - 1
    }

    fn carried(&self, connection: usize) {
        self.0.lock().unwrap()[connection] += 1;
    }

    fn per_connection(&self) -> Vec<usize> {
        self.0.lock().unwrap().clone()
    }
}

/// A counting TCP relay in front of `target`.
async fn counting_relay(target: SocketAddr) -> (SocketAddr, Tally) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tally = Tally::default();
    let counted = tally.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.accepted();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (addr, tally)
}

/// How a hand-written HTTP/1.1 upstream ends a connection after an answer.
#[derive(Clone, Copy)]
enum After {
    /// Answers with keep-alive, then closes the socket anyway (as an upstream's idle timeout does).
    Closing,
    /// Answers `Connection: close` and keeps the socket open, still answering what arrives on it.
    SaysClose,
    /// Answers the first request with keep-alive; takes the second whole and closes without an
    /// answer (it may have acted on it: a gateway must not send it again).
    SwallowsSecond,
}

/// An HTTP/1.1 upstream written by hand that answers every request head with [`LIST`].
async fn raw_upstream(after: After) -> (SocketAddr, Tally) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tally = Tally::default();
    let counted = tally.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let connection = counted.accepted();
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 65536];
                loop {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    // A GET has no body: drop its head and answer.
                    let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    seen.drain(..end);
                    counted.carried(connection);
                    let header = match after {
                        After::Closing => "Connection: keep-alive",
                        After::SaysClose => "Connection: close",
                        After::SwallowsSecond if counted.per_connection()[connection] == 2 => {
                            return
                        }
                        After::SwallowsSecond => "Connection: keep-alive",
                    };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{header}\r\nContent-Length: {}\r\n\r\n{LIST}",
                        LIST.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    if let After::Closing = after {
                        return;
                    }
                }
            });
        }
    });
    (addr, tally)
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let (relay, tally) = counting_relay(upstream.addr).await;
    let gateway = TestGateway::start(Options::new(relay)).await;
    for _ in 0..5 {
        let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(upstream.emulator.seen().len(), 5);
    assert_eq!(tally.per_connection().len(), 1, "one kept-alive connection");
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_replaced_not_failed() {
    let (upstream, tally) = raw_upstream(After::Closing).await;
    let gateway = TestGateway::start(Options::new(upstream)).await;
    for round in 0..4 {
        let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
        assert_eq!(reply.status, 200, "round {round}: {}", reply.text());
        // Let the close reach the gateway while the connection sits idle.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tally.per_connection(), vec![1; 4]);
}

/// A request written on a reused connection that then closes without an answer may have been
/// acted on: it is a 502, and the upstream sees it once, never a second time on a new connection.
#[tokio::test]
async fn a_request_the_upstream_took_and_never_answered_is_not_sent_again() {
    let (upstream, tally) = raw_upstream(After::SwallowsSecond).await;
    let gateway = TestGateway::start(Options::new(upstream)).await;
    let first = admin(gateway.addr, "GET", "/api/token/", None).await;
    assert_eq!(first.status, 200, "{}", first.text());
    admin(gateway.addr, "GET", "/api/token/", None)
        .await
        .assert_envelope(502, "upstream_unavailable");
    assert_eq!(
        tally.per_connection(),
        vec![2],
        "taken once, on the reused connection"
    );
}

#[tokio::test]
async fn an_upstream_restarted_on_its_port_is_reached_again() {
    let first = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let addr = first.addr;
    let gateway = TestGateway::start(Options::new(addr)).await;
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // Stopping closes its kept-alive connection; a new emulator then listens on the same port.
    first.shutdown().await.unwrap();
    let listener = TcpListener::bind(addr).await.unwrap();
    let second = Emulator::new(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID));
    let serving = second.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        serving
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
    });
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(second.seen().len(), 1);
    let _ = stop.send(());
}

#[tokio::test]
async fn an_upstream_named_by_host_name_is_reached_on_an_address_that_accepts() {
    // `localhost` may resolve to ::1 before 127.0.0.1; the emulator listens on 127.0.0.1 only,
    // so a refused first address must not end the attempt.
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(upstream.addr);
    options.upstream = format!("http://localhost:{}", upstream.addr.port());
    let gateway = TestGateway::start(options).await;
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(upstream.emulator.seen().len(), 1);
}

#[tokio::test]
async fn an_answer_saying_connection_close_is_the_last_on_its_connection() {
    let (upstream, tally) = raw_upstream(After::SaysClose).await;
    let gateway = TestGateway::start(Options::new(upstream)).await;
    for _ in 0..3 {
        let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(tally.per_connection(), vec![1; 3]);
}

/// A TLS upstream offering `alpn`, answering [`LIST`] over HTTP/1.1 or HTTP/2 and recording the
/// version of each request it served.
async fn tls_upstream(
    ca: &TestCa,
    alpn: &[&[u8]],
) -> (SocketAddr, Tally, Arc<Mutex<Vec<Version>>>) {
    let (cert, key) = ca.leaf(&["127.0.0.1"]);
    let acceptor = support::tls::acceptor(cert, key, alpn);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tally = Tally::default();
    let versions = Arc::new(Mutex::new(Vec::new()));
    let (counted, seen) = (tally.clone(), versions.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let connection = counted.accepted();
            let (acceptor, counted, seen) = (acceptor.clone(), counted.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    counted.carried(connection);
                    seen.lock().unwrap().push(request.version());
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(LIST.as_bytes())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, tally, versions)
}

/// A gateway in front of a [`tls_upstream`] offering `alpn`, trusting its private CA, with
/// `server_extra` in `[server]`; the directory holds the CA file.
async fn tls_gateway(
    alpn: &[&[u8]],
    server_extra: &str,
) -> (
    TestGateway,
    Tally,
    Arc<Mutex<Vec<Version>>>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tokengate test CA");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let (upstream, tally, versions) = tls_upstream(&ca, alpn).await;
    let mut options = Options::new(upstream);
    options.upstream = format!("https://{upstream}");
    options.ca_file = Some(ca_path.display().to_string());
    options.server_extra = server_extra.into();
    (TestGateway::start(options).await, tally, versions, dir)
}

#[tokio::test]
async fn a_tls_upstream_gets_the_protocol_its_alpn_picks() {
    for (alpn, version) in [
        (&[b"h2".as_slice(), b"http/1.1"][..], Version::HTTP_2),
        (&[b"http/1.1".as_slice()][..], Version::HTTP_11),
    ] {
        let (gateway, tally, versions, _dir) = tls_gateway(alpn, "").await;
        for _ in 0..3 {
            let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
            assert_eq!(reply.status, 200, "{version:?}: {}", reply.text());
            assert_eq!(reply.json()["success"], true);
        }
        assert_eq!(*versions.lock().unwrap(), vec![version; 3]);
        assert_eq!(
            tally.per_connection(),
            vec![3],
            "{version:?}: one connection"
        );
    }
}

#[tokio::test]
async fn concurrent_requests_over_http2_share_its_connection() {
    let (gateway, tally, versions, _dir) = tls_gateway(&[b"h2", b"http/1.1"], "").await;
    // The first request opens the connection; the next eight run at once on it.
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let replies = futures_util::future::join_all(
        (0..8).map(|_| admin(gateway.addr, "GET", "/api/token/", None)),
    )
    .await;
    for reply in replies {
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(*versions.lock().unwrap(), vec![Version::HTTP_2; 9]);
    assert_eq!(tally.per_connection(), vec![9]);
}

#[tokio::test]
async fn concurrent_first_requests_over_http2_wait_for_one_connection_per_worker() {
    let (gateway, tally, versions, _dir) = tls_gateway(&[b"h2", b"http/1.1"], "workers = 2").await;
    // No warm-up: the first requests of each worker find no connection, and all but one wait
    // for that one's connect instead of opening their own.
    let replies = futures_util::future::join_all(
        (0..16).map(|_| admin(gateway.addr, "GET", "/api/token/", None)),
    )
    .await;
    for reply in replies {
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(*versions.lock().unwrap(), vec![Version::HTTP_2; 16]);
    let connections = tally.per_connection();
    assert!(
        connections.len() <= 2,
        "one connection per worker at most: {connections:?}"
    );
    assert_eq!(connections.iter().sum::<usize>(), 16);
}

/// A TCP relay in front of `target` whose connections open so far can be frozen (`freeze`): they
/// stay open and swallow what arrives, answering nothing, as a peer that vanished without a FIN
/// or RST. Connections accepted later are relayed as ever.
async fn freezing_relay(target: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        accepted_in: usize,
        epoch: Arc<AtomicUsize>,
    ) {
        let mut buf = vec![0u8; 16384];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if epoch.load(Ordering::SeqCst) != accepted_in {
                // Frozen: read and drop, holding `to` open, until the other end gives up.
                continue;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let epoch = Arc::new(AtomicUsize::new(0));
    let freeze = epoch.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let accepted_in = epoch.load(Ordering::SeqCst);
            let epoch = epoch.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::join!(
                    pump(in_read, out_write, accepted_in, epoch.clone()),
                    pump(out_read, in_write, accepted_in, epoch),
                );
            });
        }
    });
    (addr, freeze)
}

/// An HTTP/2 connection whose upstream stops answering (no FIN, no RST) is not handed the next
/// requests once one has run out of time: the next one opens a fresh connection and is served.
/// (One that dies while idle is found by HTTP/2 pings every 10 s, closed when one goes
/// unanswered for `upstream.timeout_ms`.)
#[tokio::test]
async fn an_http2_connection_that_stops_answering_is_not_used_again() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tokengate test CA");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let (upstream, tally, versions) = tls_upstream(&ca, &[b"h2"]).await;
    let (relay, freeze) = freezing_relay(upstream).await;
    let mut options = Options::new(relay);
    options.upstream = format!("https://{relay}");
    options.ca_file = Some(ca_path.display().to_string());
    options.upstream_timeout_ms = 500;
    options.server_extra = "workers = 1".into();
    let gateway = TestGateway::start(options).await;

    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    freeze.fetch_add(1, Ordering::SeqCst);
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    reply.assert_envelope(504, "upstream_timeout");
    for _ in 0..2 {
        let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // The frozen connection carried the first request (the second never reached the upstream);
    // a fresh one carried the rest.
    assert_eq!(tally.per_connection(), vec![1, 2]);
    assert_eq!(*versions.lock().unwrap(), vec![Version::HTTP_2; 3]);
}
