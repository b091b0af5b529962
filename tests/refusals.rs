//! What the gateway refuses itself, never forwarding it: paths and methods outside SPEC §2,
//! ambiguous paths, bad queries, unknown callers and operations outside the allow list.

mod support;

use support::*;

#[tokio::test]
async fn nothing_outside_the_token_api_is_forwarded() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let cases = [
        ("GET", "/api/user/self", 404, "not_found"),
        ("GET", "/api/status", 404, "not_found"),
        ("GET", "/", 404, "not_found"),
        ("GET", "/api/token/../user", 400, "bad_request"),
        ("GET", "/api/token/./5", 400, "bad_request"),
        ("GET", "/api/token/%2e%2e/x", 400, "bad_request"),
        ("GET", "/api/token/%2E%2E/user/self", 400, "bad_request"),
        ("GET", "/api//token/", 400, "bad_request"),
        ("GET", "/api/token%2F5", 400, "bad_request"),
        ("GET", "/api/token/%5c5", 400, "bad_request"),
        ("GET", "/api/token/abc", 400, "bad_request"),
        ("GET", "/api/token/0", 400, "bad_request"),
        ("GET", "/api/token/9223372036854775808", 400, "bad_request"),
        ("GET", "/api/token/9007199254740992", 400, "bad_request"),
        ("DELETE", "/api/token/9007199254740993", 400, "bad_request"),
        ("GET", "/api/token/?page_sise=5", 400, "bad_request"),
        ("GET", "/api/token/5?p=1", 400, "bad_request"),
        ("PUT", "/api/token/?status_only=false", 400, "bad_request"),
        ("POST", "/api/token/?debug=1", 400, "bad_request"),
        ("DELETE", "/api/token/5", 200, ""),
    ];
    for (method, path, status, code) in cases {
        upstream.emulator.clear_seen();
        let reply = admin(gateway.addr, method, path, None).await;
        if status == 200 {
            assert_eq!(
                upstream.emulator.seen().len(),
                1,
                "control case reaches the upstream"
            );
            continue;
        }
        reply.assert_envelope(status, code);
        assert!(
            upstream.emulator.seen().is_empty(),
            "{method} {path} reached the upstream"
        );
    }
}

/// Ids stop at 2^53-1 (SPEC §2), in the path and in bodies alike: a larger one would be rounded by
/// any reader that holds JSON numbers as doubles, so its audit record could not be checked by a
/// standard RFC 8785 tool. The refusal says the bound; the largest id itself passes.
#[tokio::test]
async fn ids_above_2_pow_53_minus_1_are_refused_with_the_bound() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let refused = [
        ("DELETE", "/api/token/9007199254740993", None, "bad_request"),
        (
            "POST",
            "/api/token/9007199254740992/key",
            None,
            "bad_request",
        ),
        (
            "POST",
            "/api/token/batch",
            Some(r#"{"ids":[5,9007199254740992]}"#),
            "invalid_field",
        ),
        (
            "PUT",
            "/api/token/?status_only=true",
            Some(r#"{"id":9007199254740993,"status":2}"#),
            "invalid_field",
        ),
    ];
    for (method, path, body, code) in refused {
        upstream.emulator.clear_seen();
        let reply = admin(gateway.addr, method, path, body).await;
        reply.assert_envelope(400, code);
        assert!(
            reply.json()["message"]
                .as_str()
                .unwrap()
                .contains("9007199254740991"),
            "{method} {path}: the message names the bound: {}",
            reply.text()
        );
        assert!(upstream.emulator.seen().is_empty(), "{method} {path}");
    }
    // The bound itself is an id like any other (forwarded; the emulator knows no such token).
    upstream.emulator.clear_seen();
    admin(gateway.addr, "DELETE", "/api/token/9007199254740991", None).await;
    assert_eq!(upstream.emulator.seen().len(), 1);
    let records = audit_records(&gateway.audit_path);
    let last = records.last().unwrap();
    assert_eq!(
        last["token_ids"],
        serde_json::json!([9_007_199_254_740_991u64])
    );
    let (code, stdout, stderr) = audit_verify_trail(&gateway.audit_path);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    let (upstream, gateway) = emulator_and_gateway().await;
    for (method, path, allow) in [
        ("OPTIONS", "/api/token/", "GET, POST, PUT"),
        ("HEAD", "/api/token/", "GET, POST, PUT"),
        ("DELETE", "/api/token/", "GET, POST, PUT"),
        ("GET", "/api/token/batch", "POST, PUT"),
        ("PUT", "/api/token/5", "GET, PATCH, DELETE"),
        ("PATCH", "/api/token/batch", "POST, PUT"),
        ("GET", "/api/token/5/key", "POST"),
    ] {
        let reply = admin(gateway.addr, method, path, None).await;
        assert_eq!(reply.status, 405, "{method} {path}");
        assert_eq!(reply.headers["allow"], allow, "{method} {path}");
        if method != "HEAD" {
            reply.assert_envelope(405, "method_not_allowed");
        }
    }
    assert!(upstream.emulator.seen().is_empty());
}

#[tokio::test]
async fn raw_request_lines_cannot_sneak_past() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let auth = format!("Authorization: Bearer {ADMIN_KEY}\r\n");
    for target in [
        "/api/token/../user/self",
        "/api/token/%2e%2e/user",
        "/api/token/\\..\\user",
        "//api/token/",
    ] {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
        let answer = raw(gateway.addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
        assert!(answer.contains("\"bad_request\""), "{target}: {answer}");
    }
    // Non-ASCII bytes in the path: refused, by the HTTP parser itself or by the gateway.
    let mut request = b"GET /api/token/\xc3\xa9 HTTP/1.1\r\nHost: x\r\n".to_vec();
    request.extend_from_slice(auth.as_bytes());
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    let answer = raw(gateway.addr, &request).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // `;` would split parameters in old Go; non-ASCII must be percent-encoded.
    for target in [
        "/api/token/?p=1;user_id=3",
        "/api/token/search?keyword=\u{e9}",
    ] {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
        let answer = raw(gateway.addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
    }
    // Other request-target forms and methods in any case.
    for line in [
        "OPTIONS * HTTP/1.1",
        "CONNECT 10.0.0.1:3000 HTTP/1.1",
        "get /api/token/ HTTP/1.1",
        "TRACE /api/token/ HTTP/1.1",
    ] {
        let request = format!("{line}\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
        let answer = raw(gateway.addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 4"), "{line}: {answer}");
    }
    // An absolute-form target names another host: the path is still what is routed.
    let request = format!("GET http://169.254.169.254/api/user/self HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    let answer = raw(gateway.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(upstream.emulator.seen().is_empty());
}

#[tokio::test]
async fn missing_or_unknown_keys_are_401_and_disallowed_operations_403() {
    let (upstream, gateway) = emulator_and_gateway().await;
    send(gateway.addr, "GET", "/api/token/", &[], None)
        .await
        .assert_envelope(401, "unauthenticated");
    send(
        gateway.addr,
        "GET",
        "/api/token/",
        &[("authorization", "Bearer")],
        None,
    )
    .await
    .assert_envelope(401, "unauthenticated");
    send(
        gateway.addr,
        "GET",
        "/api/token/",
        &[("authorization", "Bearer tg_unknown")],
        None,
    )
    .await
    .assert_envelope(401, "unauthenticated");
    // The upstream's own token is not a gateway key.
    send(
        gateway.addr,
        "GET",
        "/api/token/",
        &[("authorization", UPSTREAM_TOKEN)],
        None,
    )
    .await
    .assert_envelope(401, "unauthenticated");
    // An unauthenticated caller learns nothing about routes.
    send(gateway.addr, "GET", "/api/user/self", &[], None)
        .await
        .assert_envelope(401, "unauthenticated");

    let reader = format!("Bearer {READER_KEY}");
    let headers = [
        ("authorization", reader.as_str()),
        ("content-type", "application/json"),
    ];
    let reply = send(
        gateway.addr,
        "POST",
        "/api/token/",
        &headers,
        Some(r#"{"name":"x"}"#),
    )
    .await;
    reply.assert_envelope(403, "forbidden");
    assert!(reply.json()["message"].as_str().unwrap().contains("create"));
    for (method, path) in [
        ("DELETE", "/api/token/5"),
        ("POST", "/api/token/5/key"),
        ("PUT", "/api/token/"),
    ] {
        send(gateway.addr, method, path, &headers, None)
            .await
            .assert_envelope(403, "forbidden");
    }
    assert!(upstream.emulator.seen().is_empty());
    // A reader may read.
    let reply = send(gateway.addr, "GET", "/api/token/", &headers, None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(upstream.emulator.seen().len(), 1);
}

#[tokio::test]
async fn bodies_are_capped_and_reads_take_none() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(70_000));
    admin(gateway.addr, "POST", "/api/token/", Some(&big))
        .await
        .assert_envelope(413, "body_too_large");
    // Without Content-Length (chunked), the cap still holds while reading.
    let head = format!(
        "POST /api/token/ HTTP/1.1\r\nHost: x\r\nAuthorization: {ADMIN_KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let mut request = head.into_bytes();
    for _ in 0..70 {
        request.extend_from_slice(format!("{:x}\r\n{}\r\n", 1000, "y".repeat(1000)).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(gateway.addr, &request).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    admin(gateway.addr, "GET", "/api/token/", Some("{}"))
        .await
        .assert_envelope(400, "bad_request");
    assert!(upstream.emulator.seen().is_empty());
}

#[tokio::test]
async fn a_caller_too_slow_to_send_its_body_gets_408() {
    let upstream = tokengate::emulator::Emulator::spawn(tokengate::emulator::EmulatorConfig::new(
        UPSTREAM_TOKEN,
        USER_ID,
    ))
    .await
    .unwrap();
    let mut options = Options::new(upstream.addr);
    options.request_timeout_ms = 300;
    let gateway = TestGateway::start(options).await;
    let request = format!(
        "POST /api/token/ HTTP/1.1\r\nHost: x\r\nAuthorization: {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":"
    );
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut stream, &mut answer),
    )
    .await
    .expect("the gateway answers within the request timeout")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(upstream.emulator.seen().is_empty());
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_header_timeout() {
    let upstream = tokengate::emulator::Emulator::spawn(tokengate::emulator::EmulatorConfig::new(
        UPSTREAM_TOKEN,
        USER_ID,
    ))
    .await
    .unwrap();
    let mut options = Options::new(upstream.addr);
    options.request_timeout_ms = 300;
    let gateway = TestGateway::start(options).await;
    // Nothing sent at all.
    let mut silent = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut silent, &mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a silent connection is closed: {read:?}"
    );
    // Half a request line.
    let mut slow = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut slow, b"GET /api/tok")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut slow, &mut answer),
    )
    .await;
    assert!(read.is_ok(), "a slow header is cut");
    assert!(upstream.emulator.seen().is_empty());
}

/// SPEC §2: a search by key is a key oracle. A caller that may not read keys cannot search by
/// `token` at all; one that may (`reveal_key`) searches by exact key only. A `%` that starts no
/// escape is refused, since new-api would drop the parameter and answer every token.
#[tokio::test]
async fn key_searches_and_malformed_escapes_are_refused_before_the_upstream() {
    use tokengate::emulator::NewToken;
    let (upstream, gateway) = emulator_and_gateway().await;
    let key = "AbCdEfGh0123456789abcdefghijklmnopqrstuvwxyzABCD";
    upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            name: "victim".into(),
            key: Some(key.into()),
            ..NewToken::default()
        },
    );
    upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            name: "other".into(),
            ..NewToken::default()
        },
    );
    let reader = format!("Bearer {READER_KEY}");
    let search = |auth: String, query: &'static str| {
        let addr = gateway.addr;
        async move {
            send(
                addr,
                "GET",
                &format!("/api/token/search?{query}"),
                &[("authorization", &auth)],
                None,
            )
            .await
        }
    };

    // The oracle: a search-only caller probing the key a character at a time.
    upstream.emulator.clear_seen();
    for query in [
        "keyword=victim&token=AbCd%25",
        "token=AbCdE%25",
        "keyword=&token=x",
    ] {
        let reply = search(reader.clone(), query).await;
        reply.assert_envelope(403, "forbidden");
        assert!(reply.text().contains("reveal_key"), "{}", reply.text());
    }
    // A caller allowed reveal_key: exact key searches only.
    let admin_auth = format!("Bearer {ADMIN_KEY}");
    let reply = search(admin_auth.clone(), "token=AbCd%25").await;
    reply.assert_envelope(400, "bad_request");
    assert!(reply.text().contains("exact match"), "{}", reply.text());
    assert!(upstream.emulator.seen().is_empty(), "nothing was forwarded");
    let reply = search(
        admin_auth.clone(),
        "token=AbCdEfGh0123456789abcdefghijklmnopqrstuvwxyzABCD",
    )
    .await;
    let items = reply.json()["data"]["items"].clone();
    assert_eq!(items.as_array().unwrap().len(), 1, "{}", reply.text());
    assert_eq!(items[0]["name"], "victim");
    // An empty `token` is no key search: the reader may send it (new-api applies no filter).
    let reply = search(reader.clone(), "keyword=victim&token=").await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());

    // Malformed escapes: refused with the hint, nothing forwarded; the escaped form is served.
    upstream.emulator.clear_seen();
    for query in ["keyword=vic%", "keyword=vic%zz", "keyword=v%2"] {
        let reply = search(reader.clone(), query).await;
        reply.assert_envelope(400, "bad_request");
        assert!(reply.text().contains("%25"), "{}", reply.text());
    }
    assert!(upstream.emulator.seen().is_empty());
    let reply = search(reader.clone(), "keyword=vic%25").await;
    let items = reply.json()["data"]["items"].clone();
    assert_eq!(items.as_array().unwrap().len(), 1, "{}", reply.text());
    assert_eq!(
        upstream.emulator.seen()[0].uri.query(),
        Some("keyword=vic%25")
    );
}

/// SPEC §3: an encoded request body is refused (the gateway checks plain JSON only and never
/// forwards an encoded body), the upstream is always asked for `identity`, and a single key reveal
/// takes no body of any type.
#[tokio::test]
async fn encoded_bodies_and_reveal_bodies_are_refused_and_the_upstream_answers_plain() {
    use tokengate::emulator::NewToken;
    let (upstream, gateway) = emulator_and_gateway().await;
    let id = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            name: "k".into(),
            ..NewToken::default()
        },
    );
    let auth = format!("Bearer {ADMIN_KEY}");
    let body = r#"{"name":"plain"}"#;
    for encoding in ["gzip", "br", "identity, gzip", "deflate"] {
        let reply = send(
            gateway.addr,
            "POST",
            "/api/token/",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("content-encoding", encoding),
            ],
            Some(body),
        )
        .await;
        reply.assert_envelope(415, "unsupported_media_type");
        assert!(
            reply.text().contains("Content-Encoding"),
            "{}",
            reply.text()
        );
    }
    assert!(upstream.emulator.seen().is_empty());
    // `identity` is no encoding; and the caller's Accept-Encoding never reaches the upstream.
    let reply = send(
        gateway.addr,
        "POST",
        "/api/token/",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("content-encoding", "identity"),
            ("accept-encoding", "gzip, br"),
        ],
        Some(body),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let seen = upstream.emulator.seen();
    assert_eq!(seen[0].headers["accept-encoding"], "identity");
    assert!(seen[0].headers.get("content-encoding").is_none());
    assert!(reply.headers.get("content-encoding").is_none());

    // A single key reveal takes no body, whatever its type.
    upstream.emulator.clear_seen();
    let path = format!("/api/token/{id}/key");
    for (content_type, body) in [("application/json", "{}"), ("text/plain", "x")] {
        let reply = send(
            gateway.addr,
            "POST",
            &path,
            &[("authorization", &auth), ("content-type", content_type)],
            Some(body),
        )
        .await;
        reply.assert_envelope(400, "bad_request");
    }
    assert!(upstream.emulator.seen().is_empty());
    let reply = admin(gateway.addr, "POST", &path, None).await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    assert_eq!(
        upstream.emulator.seen()[0].headers["accept-encoding"],
        "identity"
    );
}
