//! What the caller-facing listener holds open and reads per connection: `server.max_connections`
//! (SPEC §7: at the cap new callers wait in the kernel's backlog, served when a connection
//! closes; a gauge and a counter show it; a reload moves the cap; shutdown is not held up) and
//! `server.max_header_bytes` (SPEC §3: a larger request head is a 431 over HTTP/1.1 and HTTP/2,
//! never forwarded).
//!
//! Connections are written by hand where a client's pool would open or reuse them unseen.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::kept_alive::Connection;
use support::*;
use tokengate::emulator::RunningEmulator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway in front of `upstream` with `server` lines added to `[server]`.
async fn gateway_with(upstream: &RunningEmulator, server: &str) -> TestGateway {
    let mut options = Options::new(upstream.addr);
    options.server_extra = server.into();
    TestGateway::start(options).await
}

/// The admin listener's `/metrics` text.
async fn metrics(gateway: &TestGateway) -> String {
    send(gateway.admin, "GET", "/metrics", &[], None)
        .await
        .text()
}

/// The value of the sample line `name` in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits up to 5 s for `tokengate_open_connections` to read `open`.
async fn open_connections_settle_at(gateway: &TestGateway, open: f64) {
    for _ in 0..100 {
        if sample(&metrics(gateway).await, "tokengate_open_connections") == Some(open) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "tokengate_open_connections never read {open}:\n{}",
        metrics(gateway).await
    );
}

#[tokio::test]
async fn callers_over_max_connections_wait_in_the_backlog_until_one_closes() {
    let upstream = emulator().await;
    let gateway = gateway_with(&upstream, "max_connections = 2").await;

    let mut first = Connection::open(gateway.addr).await;
    first.ask(ADMIN_KEY).await;
    assert_eq!(first.answer().await, 200);
    let mut second = Connection::open(gateway.addr).await;
    second.ask(ADMIN_KEY).await;
    assert_eq!(second.answer().await, 200);

    // The third connects (the kernel's backlog takes it) but is not accepted: no answer.
    let mut third = Connection::open(gateway.addr).await;
    third.ask(ADMIN_KEY).await;
    assert!(
        !third.answers_within(Duration::from_millis(500)).await,
        "a third connection was served over max_connections = 2"
    );
    // The admin listener is not capped, and shows the episode.
    let text = metrics(&gateway).await;
    assert_eq!(
        sample(&text, "tokengate_open_connections"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tokengate_connection_cap_reached_total"),
        Some(1.0),
        "{text}"
    );

    // One closes: the third is accepted and answered.
    drop(first);
    assert!(third.answers_within(Duration::from_secs(5)).await);
    assert_eq!(third.answer().await, 200);
    assert_eq!(upstream.emulator.seen().len(), 3);
    let text = metrics(&gateway).await;
    assert!(
        sample(&text, "tokengate_connection_cap_reached_total").unwrap() >= 1.0,
        "{text}"
    );

    // Once they close, the count comes down and new callers are served as ever.
    drop((second, third));
    open_connections_settle_at(&gateway, 0.0).await;
    for _ in 0..3 {
        let mut next = Connection::open(gateway.addr).await;
        next.ask(ADMIN_KEY).await;
        assert_eq!(next.answer().await, 200);
    }
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    open_connections_settle_at(&gateway, 0.0).await;
}

/// A gateway with `max_connections = 1` and a header timeout of `timeout_ms`.
async fn one_place(upstream: &RunningEmulator, timeout_ms: u64) -> TestGateway {
    let mut options = Options::new(upstream.addr);
    options.server_extra = "max_connections = 1".into();
    options.request_timeout_ms = timeout_ms;
    TestGateway::start(options).await
}

/// Asserts that the gateway ends `stream` within 5 s (its header timeout is far shorter).
async fn closed_by_the_gateway(mut stream: TcpStream) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the connection was left open: {read:?}"
    );
}

/// hyper's choice between HTTP/1.1 and HTTP/2 waits for the whole 24-byte preface with no timer:
/// a client that sends part of it and then nothing is closed after the header timeout all the
/// same, and its place under `max_connections` goes to the next caller.
#[tokio::test]
async fn half_an_http2_preface_is_closed_after_the_header_timeout() {
    let upstream = emulator().await;
    let gateway = one_place(&upstream, 300).await;
    let mut stalled = TcpStream::connect(gateway.addr).await.unwrap();
    stalled.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    closed_by_the_gateway(stalled).await;
    let mut next = Connection::open(gateway.addr).await;
    next.ask(ADMIN_KEY).await;
    assert_eq!(next.answer().await, 200);
    assert_eq!(upstream.emulator.seen().len(), 1);
}

/// HTTP/2 has no idle timer of its own (its PINGs are answered by a quiet client): a connection
/// with no request in flight for the header timeout is ended with a GOAWAY, as an HTTP/1.1 one
/// is closed between requests. One kept busy for longer than that stays open.
#[tokio::test]
async fn an_idle_http2_connection_is_ended_after_the_header_timeout() {
    let upstream = emulator().await;
    let gateway = one_place(&upstream, 400).await;
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let mut connection = tokio::spawn(connection);
    // A request every 100 ms for 2 s, five times the limit: the connection stays.
    for _ in 0..20 {
        let request = Request::get(format!("http://{}/api/token/", gateway.addr))
            .header("authorization", format!("Bearer {ADMIN_KEY}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let _ = response.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!connection.is_finished());
    assert_eq!(upstream.emulator.seen().len(), 20);
    // Then nothing: the gateway ends it, and the one place is free again.
    let ended = tokio::time::timeout(Duration::from_secs(5), &mut connection).await;
    assert!(matches!(ended, Ok(Ok(_))), "never ended: {ended:?}");
    open_connections_settle_at(&gateway, 0.0).await;
    let mut next = Connection::open(gateway.addr).await;
    next.ask(ADMIN_KEY).await;
    assert_eq!(next.answer().await, 200);
}

#[tokio::test]
async fn shutdown_is_not_held_up_by_a_loop_waiting_at_the_cap() {
    let upstream = emulator().await;
    let mut gateway = gateway_with(&upstream, "max_connections = 1").await;
    let mut held = Connection::open(gateway.addr).await;
    held.ask(ADMIN_KEY).await;
    assert_eq!(held.answer().await, 200);
    let mut waiting = Connection::open(gateway.addr).await;
    waiting.ask(ADMIN_KEY).await;
    assert!(!waiting.answers_within(Duration::from_millis(300)).await);
    // The kept-alive connection is idle, so the drain has nothing to wait for either.
    tokio::time::timeout(Duration::from_secs(3), gateway.shutdown())
        .await
        .expect("the gateway stops while its accept loop waits at the cap")
        .unwrap();
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_raises_max_connections_lets_a_waiting_caller_in() {
    let upstream = emulator().await;
    let mut options = Options::new(upstream.addr);
    options.server_extra = "max_connections = 1".into();
    let gateway = Process::serve(&options, &[]);

    let mut held = Connection::open(gateway.addr).await;
    held.ask(ADMIN_KEY).await;
    assert_eq!(held.answer().await, 200);
    let mut waiting = Connection::open(gateway.addr).await;
    waiting.ask(ADMIN_KEY).await;
    assert!(!waiting.answers_within(Duration::from_millis(500)).await);

    options.server_extra = "max_connections = 2".into();
    let dir = gateway.config_path().parent().unwrap().to_path_buf();
    let text = options
        .toml(&dir)
        .replace("format = \"text\"", "format = \"json\"");
    std::fs::write(gateway.config_path(), text).unwrap();
    gateway.signal("HUP");
    // The held connection stays open: only the raised cap lets the waiting caller in.
    assert!(waiting.answers_within(Duration::from_secs(10)).await);
    assert_eq!(waiting.answer().await, 200);
    held.ask(ADMIN_KEY).await;
    assert_eq!(held.answer().await, 200);
    // The reload's own log line comes after the reload took effect: the waiting caller may be
    // served before it is written.
    gateway.wait_for("configuration reloaded", 1);
    // One warning per episode, however long it lasted: the one at the old cap, ended by the
    // reload, and the one the now-two open connections start at the new cap.
    let output = gateway.output();
    let warnings: Vec<&str> = output
        .lines()
        .filter(|line| line.contains("caller connections at server.max_connections"))
        .collect();
    assert_eq!(warnings.len(), 2, "{output}");
    assert!(warnings[0].contains("\"max_connections\":1"), "{output}");
    assert!(warnings[1].contains("\"max_connections\":2"), "{output}");
    assert_eq!(
        output.matches("below server.max_connections again").count(),
        1,
        "{output}"
    );
}

/// A request head of exactly `head_bytes` bytes (a list request padded with an `X-Pad` header)
/// on its own connection; what the gateway answered, up to the connection's end. The request is
/// written while the answer is read: the gateway may answer and close before reading it all.
async fn head_of(addr: SocketAddr, head_bytes: usize) -> String {
    let start = format!(
        "GET /api/token/ HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {ADMIN_KEY}\r\nConnection: close\r\nX-Pad: "
    );
    let pad = head_bytes - start.len() - "\r\n\r\n".len();
    let head = format!("{start}{}\r\n\r\n", "a".repeat(pad));
    assert_eq!(head.len(), head_bytes);
    let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
    let writing = tokio::spawn(async move {
        // A refusal may reset the connection before all of it is written.
        let _ = writer.write_all(head.as_bytes()).await;
        writer
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answer)).await;
    drop(writing.await);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends a list request with an `x-pad` header of `pad` bytes over HTTP/2 (h2c with prior
/// knowledge): the status, or the error text when the request failed as a whole.
async fn h2_with_pad(addr: SocketAddr, pad: usize) -> Result<u16, String> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = Request::get(format!("http://{addr}/api/token/"))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .header("x-pad", "a".repeat(pad))
        .body(Empty::new())
        .unwrap();
    match client.request(request).await {
        Ok(response) => {
            assert_eq!(response.version(), http::Version::HTTP_2);
            let status = response.status().as_u16();
            let _ = response.into_body().collect().await;
            Ok(status)
        }
        Err(error) => Err(format!("{error:?}")),
    }
}

#[tokio::test]
async fn a_request_head_over_max_header_bytes_is_431_and_never_forwarded() {
    let upstream = emulator().await;
    let gateway = gateway_with(&upstream, "").await;

    // HTTP/1.1: one 200 000-byte header.
    let answer = head_of(gateway.addr, 200_000).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    assert!(upstream.emulator.seen().is_empty());
    // The default 32 768 bytes is the boundary: one byte more is refused, a head of exactly
    // that size (and one just under it) passes whole.
    let answer = head_of(gateway.addr, 32_769).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    assert!(upstream.emulator.seen().is_empty());
    let answer = head_of(gateway.addr, 32_768).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.200}");
    let answer = head_of(gateway.addr, 32_000).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.200}");
    let seen = upstream.emulator.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0].headers["x-pad"].len() > 32_500,
        "the header went upstream whole"
    );

    // HTTP/2: a header list over the limit (and under four times it, past which h2 ends the
    // connection instead) is a 431 from h2 itself; under the limit it is served.
    assert_eq!(h2_with_pad(gateway.addr, 40_000).await, Ok(431));
    assert_eq!(upstream.emulator.seen().len(), 2);
    assert_eq!(h2_with_pad(gateway.addr, 30_000).await, Ok(200));
    assert_eq!(upstream.emulator.seen().len(), 3);
    // The 200 000-byte header over HTTP/2 is refused too, with the connection (GOAWAY: too
    // many CONTINUATION frames, or a block too large to decode).
    let refused = h2_with_pad(gateway.addr, 200_000).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("GoAway")),
        "{refused:?}"
    );
    assert_eq!(upstream.emulator.seen().len(), 3);
}

#[tokio::test]
async fn a_small_max_header_bytes_is_applied_over_http1_and_http2() {
    let upstream = emulator().await;
    let gateway = gateway_with(&upstream, "max_header_bytes = 8192").await;

    // Well within the default, over this gateway's limit.
    let answer = head_of(gateway.addr, 12_000).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    let answer = head_of(gateway.addr, 8_193).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    assert!(upstream.emulator.seen().is_empty());
    let answer = head_of(gateway.addr, 8_192).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.200}");
    assert_eq!(upstream.emulator.seen().len(), 1);

    assert_eq!(h2_with_pad(gateway.addr, 10_000).await, Ok(431));
    assert_eq!(upstream.emulator.seen().len(), 1);
    assert_eq!(h2_with_pad(gateway.addr, 7_000).await, Ok(200));
    assert_eq!(upstream.emulator.seen().len(), 2);
}
