//! `SIGHUP` reload (SPEC §7) of the real binary: a request in flight when the signal lands (one
//! waiting on the upstream, one still sending its body) completes, a kept-alive connection carries on under the new configuration, a new client works
//! and a removed one is refused, unchanged clients keep their rate-limit state, and a broken
//! configuration is refused whole while the old one keeps serving; new TLS connections get a
//! rotated certificate.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::tls::{call, server_tls, TestCa};
use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMITED_KEY: &str = "tg_limited_key_888888888888888888888888888888888888888888888888888";
const NEW_KEY: &str = "tg_new_client_key_99999999999999999999999999999999999999999999999999";

fn clients(with_reader: bool, with_new: bool) -> String {
    let mut clients = client_entry("admin", ADMIN_KEY, "allow_unlimited_quota = true");
    clients.push_str(&client_entry(
        "limited",
        LIMITED_KEY,
        "reads_per_minute = 1\nburst = 2",
    ));
    if with_reader {
        clients.push_str(&client_entry("reader", READER_KEY, ""));
    }
    if with_new {
        clients.push_str(&client_entry("newbie", NEW_KEY, ""));
    }
    clients
}

fn rewrite(gateway: &Process, options: &Options) {
    let dir = gateway.config_path().parent().unwrap().to_path_buf();
    let text = options
        .toml(&dir)
        .replace("format = \"text\"", "format = \"json\"");
    std::fs::write(gateway.config_path(), text).unwrap();
}

/// Waits, off the runtime, until the gateway has logged `needle`.
async fn logged(gateway: Process, needle: &'static str) -> Process {
    tokio::task::spawn_blocking(move || {
        gateway.wait_for(needle, 1);
        gateway
    })
    .await
    .unwrap()
}

async fn list(addr: std::net::SocketAddr, key: &str) -> u16 {
    let auth = format!("Bearer {key}");
    send(
        addr,
        "GET",
        "/api/token/",
        &[("authorization", &auth)],
        None,
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_clients_without_dropping_requests_or_connections() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(upstream.addr);
    options.clients = Some(clients(true, false));
    let gateway = Process::serve(&options, &[]);
    let addr = gateway.addr;

    // A kept-alive connection, used once before the reload.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut kept, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let on_kept = |key: &'static str| {
        http::Request::get("/api/token/")
            .header("host", "gateway")
            .header("authorization", format!("Bearer {key}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let before = kept.send_request(on_kept(READER_KEY)).await.unwrap();
    assert_eq!(before.status(), 200);
    before.into_body().collect().await.unwrap();

    // `limited` spends its burst of two reads.
    assert_eq!(list(addr, LIMITED_KEY).await, 200);
    assert_eq!(list(addr, LIMITED_KEY).await, 200);
    assert_eq!(list(addr, LIMITED_KEY).await, 429);

    // A request in flight at the upstream when the signal lands.
    upstream.emulator.set_delay(Duration::from_millis(1500));
    upstream.emulator.clear_seen();
    let in_flight = tokio::spawn(async move { list(addr, ADMIN_KEY).await });
    for _ in 0..200 {
        if !upstream.emulator.seen().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.emulator.seen().len(), 1);
    upstream.emulator.set_delay(Duration::ZERO);

    // A request whose body is still streaming in when the signal lands.
    let body = br#"{"name": "streamed-across-a-reload", "expired_time": -1}"#;
    let mut streaming = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/token/ HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    streaming.write_all(head.as_bytes()).await.unwrap();
    streaming.write_all(&body[..10]).await.unwrap();

    // The new configuration drops `reader` and adds `newbie`.
    options.clients = Some(clients(false, true));
    rewrite(&gateway, &options);
    gateway.signal("HUP");
    let gateway = logged(gateway, "configuration reloaded").await;

    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the in-flight request completes"
    );
    streaming.write_all(&body[10..]).await.unwrap();
    let mut answer = String::new();
    streaming.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""success":true"#), "{answer}");
    assert_eq!(list(addr, NEW_KEY).await, 200, "a new client works");
    assert_eq!(
        list(addr, READER_KEY).await,
        401,
        "a removed client is refused"
    );
    // `limited` did not change: its empty bucket stayed empty.
    assert_eq!(list(addr, LIMITED_KEY).await, 429);
    // The kept-alive connection is still open, and meets the new configuration.
    // (`ready` first each time: the connection task must take in the end of the last answer
    // before it takes a new request, and it runs on another thread.)
    kept.ready().await.unwrap();
    let after = kept.send_request(on_kept(READER_KEY)).await.unwrap();
    assert_eq!(after.status(), 401);
    after.into_body().collect().await.unwrap();
    kept.ready().await.unwrap();
    let after = kept.send_request(on_kept(NEW_KEY)).await.unwrap();
    assert_eq!(after.status(), 200);

    // A broken configuration is refused whole; the running one keeps serving.
    std::fs::write(
        gateway.config_path(),
        std::fs::read_to_string(gateway.config_path())
            .unwrap()
            .replace("[rate_limit]", "[rate_limit]\nbogus_key = 1"),
    )
    .unwrap();
    gateway.signal("HUP");
    let gateway = logged(gateway, "the configuration was refused").await;
    assert!(
        gateway.output().contains("rate_limit.bogus_key"),
        "{}",
        gateway.output()
    );
    assert_eq!(list(addr, NEW_KEY).await, 200);
    assert_eq!(list(addr, READER_KEY).await, 401);
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tls_certificate() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let certs = tempfile::tempdir().unwrap();
    let old_ca = TestCa::new("old CA");
    let mut options = Options::new(upstream.addr);
    options.server_tls = server_tls(certs.path(), &old_ca, "");
    let gateway = Process::serve(&options, &[]);
    let addr = gateway.addr;
    let seen = call(addr, &old_ca, &[], None, Some(ADMIN_KEY))
        .await
        .unwrap();
    assert_eq!(seen.status, 200, "{}", seen.body);

    // The operator rotates the certificate files (same paths) and sends SIGHUP.
    let new_ca = TestCa::new("new CA");
    server_tls(certs.path(), &new_ca, "");
    gateway.signal("HUP");
    let gateway = logged(gateway, "configuration reloaded").await;
    let seen = call(addr, &new_ca, &[b"h2"], None, Some(ADMIN_KEY))
        .await
        .unwrap();
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert!(
        call(addr, &old_ca, &[], None, Some(ADMIN_KEY))
            .await
            .is_err(),
        "new connections get the new certificate"
    );
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_upstream_token_file() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let options = Options::new(upstream.addr);
    let gateway = Process::serve(&options, &[]);
    let addr = gateway.addr;
    assert_eq!(list(addr, ADMIN_KEY).await, 200);

    // A rotated token the upstream does not (yet) know: the next request carries it.
    let token_file = gateway.config_path().with_file_name("upstream-token");
    std::fs::write(&token_file, "RotatedTokenNotKnownUpstream0123\n").unwrap();
    gateway.signal("HUP");
    let gateway = logged(gateway, "configuration reloaded").await;
    assert_eq!(list(addr, ADMIN_KEY).await, 502);
    let last = upstream.emulator.seen().pop().unwrap();
    assert_eq!(
        last.headers["authorization"],
        "RotatedTokenNotKnownUpstream0123"
    );
    assert!(!gateway
        .output()
        .contains("RotatedTokenNotKnownUpstream0123"));
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_policies_and_logs_what_needs_a_restart() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(upstream.addr);
    options.clients = Some(client_entry("admin", ADMIN_KEY, ""));
    let gateway = Process::serve(&options, &[]);
    let addr = gateway.addr;
    let trail = gateway
        .config_path()
        .with_file_name("audit")
        .join("trail.jsonl");
    let create = |quota: u32| async move {
        let auth = format!("Bearer {ADMIN_KEY}");
        let body = format!(r#"{{"name": "q{quota}", "remain_quota": {quota}}}"#);
        send(
            addr,
            "POST",
            "/api/token/",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Some(&body),
        )
        .await
        .status
    };
    assert_eq!(create(11).await, 200);

    // A new policy, plus an upstream URL and an audit path that only a restart may change.
    options.clients = Some(client_entry("admin", ADMIN_KEY, "max_remain_quota = 10"));
    options.upstream = format!("http://{}", refused_addr().await);
    let elsewhere = gateway.config_path().with_file_name("elsewhere.jsonl");
    options.audit_path = Some(elsewhere.clone());
    rewrite(&gateway, &options);
    gateway.signal("HUP");
    let gateway = logged(gateway, "configuration reloaded").await;
    let output = gateway.output();
    // Each restart-only change is logged as ignored, by its key.
    for key in ["upstream.url", "audit.path"] {
        assert!(
            output.contains(&format!("the change to {key} is ignored")),
            "{key}: {output}"
        );
    }
    assert!(
        !output.contains("audit.fsync"),
        "unchanged keys are not named: {output}"
    );

    assert_eq!(create(11).await, 403, "the new policy is in force");
    assert_eq!(create(10).await, 200, "through the running upstream");
    assert_eq!(upstream.emulator.seen().len(), 2);
    // Records still go to the running trail.
    assert!(!elsewhere.exists());
    let records = audit_records(&trail);
    assert_eq!(records.last().unwrap()["request"]["name"], "q10");
    drop(gateway);
}
