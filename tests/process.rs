//! The `tokengate` binary as an operator runs it: signals and draining, and no secret in anything
//! it prints, whatever happens.

mod support;

use std::time::Duration;

use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig, NewToken};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_request_and_exits_0() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    upstream.emulator.set_delay(Duration::from_millis(1500));
    let mut options = Options::new(upstream.addr);
    options.shutdown_grace_ms = 8_000;
    let mut gateway = Process::serve(&options, &[]);
    let addr = gateway.addr;

    let in_flight = tokio::spawn(async move { admin(addr, "GET", "/api/token/", None).await });
    // Wait until the request is at the upstream, then ask the gateway to stop.
    for _ in 0..200 {
        if !upstream.emulator.seen().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.emulator.seen().len(), 1);
    gateway.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections once draining"
    );

    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["success"], true);
    let status = tokio::task::spawn_blocking(move || {
        let status = gateway.wait(Duration::from_secs(10));
        (status, gateway.output())
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0), "{}", status.1);
    assert!(status.1.contains("SIGTERM received"), "{}", status.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_with_nothing_in_flight_exits_0_at_once() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut gateway = Process::serve(&Options::new(upstream.addr), &[]);
    assert_eq!(
        admin(gateway.addr, "GET", "/api/token/", None).await.status,
        200
    );
    gateway.signal("INT");
    let status = tokio::task::spawn_blocking(move || gateway.wait(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Runs every kind of request through the binary at the most verbose log level, and scans all it
/// printed, and every answer, for the upstream token and the callers' keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_anything_the_gateway_prints_or_answers() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let id = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            name: "t".into(),
            ..Default::default()
        },
    );
    let mut gateway = Process::serve(&Options::new(upstream.addr), &[("RUST_LOG", "trace")]);
    let addr = gateway.addr;
    let mut answers = String::new();
    let reader = format!("Bearer {READER_KEY}");
    for (method, path, body) in [
        ("GET", "/api/token/".to_string(), None),
        ("GET", "/api/token/search?keyword=t".to_string(), None),
        ("GET", format!("/api/token/{id}"), None),
        ("POST", "/api/token/".to_string(), Some(r#"{"name":"n"}"#)),
        (
            "PUT",
            "/api/token/?status_only=true".to_string(),
            Some(r#"{"id":1,"status":2}"#),
        ),
        ("POST", format!("/api/token/{id}/key"), None),
        ("DELETE", format!("/api/token/{id}"), None),
        ("GET", "/api/user/self".to_string(), None),
        ("GET", "/api/token/../x".to_string(), None),
    ] {
        answers.push_str(&admin(addr, method, &path, body).await.text());
    }
    for headers in [
        vec![("authorization", "Bearer tg_wrong")],
        vec![("authorization", reader.as_str())],
        vec![("authorization", UPSTREAM_TOKEN)],
        vec![],
    ] {
        answers.push_str(
            &send(addr, "DELETE", "/api/token/1", &headers, None)
                .await
                .text(),
        );
    }
    answers.push_str(
        &send(gateway.admin, "GET", "/metrics", &[], None)
            .await
            .text(),
    );
    gateway.signal("TERM");
    let output = tokio::task::spawn_blocking(move || {
        gateway.wait(Duration::from_secs(10));
        gateway.output()
    })
    .await
    .unwrap();
    assert!(
        output.contains("\"request\""),
        "access lines were written:\n{output}"
    );
    for secret in [UPSTREAM_TOKEN, ADMIN_KEY, READER_KEY, AUDIT_KEY] {
        assert!(
            !output.contains(secret),
            "{secret} in the gateway's output:\n{output}"
        );
        assert!(!answers.contains(secret), "{secret} in an answer");
    }
    // Only the key reveal's own answer carries a token key, and it is the token's, not a secret of ours.
    assert!(answers.contains("\"key\":"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_outliving_the_grace_period_is_cut_and_the_exit_is_still_0() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    upstream.emulator.set_delay(Duration::from_secs(5));
    let mut options = Options::new(upstream.addr);
    options.shutdown_grace_ms = 300;
    let mut gateway = Process::serve(&options, &[]);
    let addr = gateway.addr;
    let request = format!("GET /api/token/ HTTP/1.1\r\nHost: x\r\nAuthorization: {ADMIN_KEY}\r\nConnection: close\r\n\r\n");
    let in_flight = tokio::spawn(async move { raw(addr, request.as_bytes()).await });
    for _ in 0..200 {
        if !upstream.emulator.seen().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    gateway.signal("TERM");
    let status = tokio::task::spawn_blocking(move || gateway.wait(Duration::from_secs(4)))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by shutdown_grace_ms, not by the upstream"
    );
    let answer = in_flight.await.unwrap();
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "the request was cut: {answer}"
    );
}
