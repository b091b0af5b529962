//! Every SPEC §2 route forwarded in canonical form, with the credential injected and the caller's
//! headers filtered, as the upstream (the built-in emulator) saw it.

mod support;

use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig, NewToken};

fn seed(emulator: &Emulator, name: &str) -> i64 {
    emulator.insert_token(
        USER_ID,
        NewToken {
            name: name.into(),
            remain_quota: 1000,
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn each_route_reaches_the_upstream_in_canonical_form() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let id = seed(&upstream.emulator, "seed");
    let other = seed(&upstream.emulator, "other");
    let full_update = format!(
        r#"{{"id":{id},"name":"renamed","expired_time":-1,"remain_quota":5,"unlimited_quota":false,"model_limits_enabled":false,"model_limits":"","allow_ips":"","group":""}}"#
    );
    let status_only = format!(r#"{{"id":{id},"status":2}}"#);
    let ids = format!(r#"{{"ids":[{id}]}}"#);
    let batch_delete = format!(r#"{{"ids":[{other}]}}"#);
    // (inbound method, inbound path, body, upstream path and query)
    let cases: Vec<(&str, String, Option<&str>, String)> = vec![
        ("GET", "/api/token".into(), None, "/api/token/".into()),
        (
            "GET",
            "/api/token/?p=1&page_size=5".into(),
            None,
            "/api/token/?p=1&page_size=5".into(),
        ),
        (
            "GET",
            "/api/token/search/?keyword=seed".into(),
            None,
            "/api/token/search?keyword=seed".into(),
        ),
        (
            "GET",
            format!("/api/token/{id}/"),
            None,
            format!("/api/token/{id}"),
        ),
        (
            "POST",
            "/api/token".into(),
            Some(r#"{"name":"created"}"#),
            "/api/token/".into(),
        ),
        (
            "PUT",
            "/api/token".into(),
            Some(&full_update),
            "/api/token/".into(),
        ),
        (
            "PUT",
            "/api/token/?status_only=true".into(),
            Some(&status_only),
            "/api/token/?status_only=true".into(),
        ),
        (
            "POST",
            format!("/api/token/{id}/key/"),
            None,
            format!("/api/token/{id}/key"),
        ),
        (
            "POST",
            "/api/token/batch/keys/".into(),
            Some(&ids),
            "/api/token/batch/keys".into(),
        ),
        (
            "POST",
            "/api/token/batch/".into(),
            Some(&batch_delete),
            "/api/token/batch".into(),
        ),
        (
            "DELETE",
            format!("/api/token/{id}/"),
            None,
            format!("/api/token/{id}"),
        ),
    ];
    for (method, path, body, expected) in cases {
        upstream.emulator.clear_seen();
        let reply = admin(gateway.addr, method, &path, body).await;
        assert_eq!(reply.status, 200, "{method} {path}: {}", reply.text());
        assert_eq!(
            reply.json()["success"],
            true,
            "{method} {path}: {}",
            reply.text()
        );
        // A change is preceded by the read of what its tokens were (SPEC §6.1).
        let seen: Vec<_> = upstream
            .emulator
            .seen()
            .into_iter()
            .filter(|r| method == "GET" || r.method != http::Method::GET)
            .collect();
        assert_eq!(seen.len(), 1, "{method} {path}");
        assert_eq!(seen[0].method.as_str(), method, "{method} {path}");
        assert_eq!(seen[0].uri.to_string(), expected, "{method} {path}");
        match body {
            // A write body is forwarded as the checked edit: the same JSON, re-serialised.
            Some(body) => assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&seen[0].body).unwrap(),
                serde_json::from_str::<serde_json::Value>(body).unwrap(),
                "{method} {path}"
            ),
            None => assert!(seen[0].body.is_empty(), "{method} {path}"),
        }
    }
    // The changes landed upstream: renamed, disabled, then deleted; the other one batch-deleted.
    let tokens = upstream.emulator.tokens();
    let seeded = tokens.iter().find(|t| t.id == id).unwrap();
    assert_eq!(
        (seeded.name.as_str(), seeded.status, seeded.deleted),
        ("renamed", 2, true)
    );
    assert!(tokens.iter().find(|t| t.id == other).unwrap().deleted);
    assert!(tokens.iter().any(|t| t.name == "created"));
}

#[tokio::test]
async fn the_credential_is_injected_and_the_callers_headers_filtered() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let auth = format!("Bearer {ADMIN_KEY}");
    let reply = send(
        gateway.addr,
        "GET",
        "/api/token/",
        &[
            ("authorization", &auth),
            ("new-api-user", "1"),
            ("cookie", "session=someone-else"),
            ("accept-encoding", "gzip"),
            ("accept-language", "zh-CN,zh;q=0.9"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("proxy-authorization", "Basic eDp5"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
            ("x-request-id", "caller-chosen-id"),
            ("user-agent", "tests/1"),
        ],
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let gateway_id = reply.headers["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(
        gateway_id, "caller-chosen-id",
        "the caller's id is never trusted as the id"
    );

    let seen = upstream.emulator.seen();
    let headers = &seen[0].headers;
    assert_eq!(
        headers["authorization"], UPSTREAM_TOKEN,
        "raw scheme: the token alone"
    );
    assert_eq!(headers["new-api-user"], USER_ID.to_string().as_str());
    assert_eq!(
        headers["x-forwarded-for"], "127.0.0.1",
        "one address: the peer's"
    );
    assert_eq!(headers["x-request-id"], gateway_id.as_str());
    assert_eq!(headers["accept-language"], "zh-CN,zh;q=0.9");
    assert_eq!(headers["user-agent"], "tests/1");
    // The caller's Accept-Encoding is replaced: the gateway asks for answers it can read.
    assert_eq!(headers["accept-encoding"], "identity");
    for dropped in [
        "cookie",
        "x-hop",
        "proxy-authorization",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
    ] {
        assert!(
            headers.get(dropped).is_none(),
            "{dropped} reached the upstream"
        );
    }
    assert_eq!(headers.get_all("authorization").iter().count(), 1);
    assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
    // new-api accepted the injected credential (it sets Auth-Version after authenticating).
    assert!(reply.headers.get("auth-version").is_some());
}

#[tokio::test]
async fn every_authorization_spelling_is_the_same_key() {
    let (upstream, gateway) = emulator_and_gateway().await;
    for spelling in [
        format!("Bearer {ADMIN_KEY}"),
        format!("bearer  {ADMIN_KEY}"),
        format!("BEARER {ADMIN_KEY}"),
        format!("BeArEr\t{ADMIN_KEY}"),
        ADMIN_KEY.to_string(),
        format!("  Bearer {ADMIN_KEY}  "),
    ] {
        let reply = send(
            gateway.addr,
            "GET",
            "/api/token/",
            &[("authorization", &spelling)],
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{spelling:?}: {}", reply.text());
        assert_eq!(reply.json()["success"], true, "{spelling:?}");
    }
    assert_eq!(upstream.emulator.seen().len(), 6);
}

#[tokio::test]
async fn bearer_scheme_sends_exactly_bearer_space_token() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(upstream.addr);
    options.auth_scheme = "bearer";
    let gateway = TestGateway::start(options).await;
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let expected = format!("Bearer {UPSTREAM_TOKEN}");
    assert_eq!(
        upstream.emulator.seen()[0].headers["authorization"],
        expected.as_str()
    );
}

#[tokio::test]
async fn forwarded_for_is_honoured_from_trusted_proxies_only() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(upstream.addr);
    options.trusted_proxies = vec!["127.0.0.0/8"];
    let gateway = TestGateway::start(options).await;
    let auth = format!("Bearer {ADMIN_KEY}");
    let headers = [
        ("authorization", auth.as_str()),
        ("x-forwarded-for", "198.51.100.1, 203.0.113.9, 127.0.0.5"),
        ("x-forwarded-proto", "https"),
    ];
    let reply = send(gateway.addr, "GET", "/api/token/", &headers, None).await;
    assert_eq!(reply.status, 200);
    let seen = upstream.emulator.seen();
    assert_eq!(
        seen[0].headers["x-forwarded-for"], "203.0.113.9",
        "right-most untrusted entry"
    );
    assert_eq!(
        seen[0].headers["x-forwarded-proto"], "https",
        "a trusted proxy's headers pass"
    );

    // The audit trail names the same caller IP, and keeps the caller's own request id apart.
    let write = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("x-forwarded-for", "198.51.100.1, 203.0.113.9"),
        ("x-request-id", "caller-chosen-id"),
    ];
    let created = send(
        gateway.addr,
        "POST",
        "/api/token/",
        &write,
        Some(r#"{"name": "via-proxy"}"#),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.text());
    let rid = created.headers["x-request-id"].to_str().unwrap();
    assert_ne!(rid, "caller-chosen-id");
    let records = audit_records(&gateway.audit_path);
    assert_eq!(records.len(), 2);
    for record in &records {
        assert_eq!(record["request_id"], rid);
        assert_eq!(record["caller_request_id"], "caller-chosen-id");
        assert_eq!(record["source_ip"], "203.0.113.9");
    }

    let bad = [
        ("authorization", auth.as_str()),
        ("x-forwarded-for", "not-an-address"),
    ];
    send(gateway.addr, "GET", "/api/token/", &bad, None)
        .await
        .assert_envelope(400, "bad_request");
    assert_eq!(upstream.emulator.seen().len(), 2);
}

#[tokio::test]
async fn passthrough_forwards_the_callers_own_token() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(upstream.addr);
    options.mode = "passthrough";
    let gateway = TestGateway::start(options).await;

    let bearer = format!("bearer   {UPSTREAM_TOKEN}");
    let reply = send(
        gateway.addr,
        "GET",
        "/api/token/",
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let reply = send(
        gateway.addr,
        "GET",
        "/api/token/",
        &[("authorization", UPSTREAM_TOKEN), ("new-api-user", "7")],
        None,
    )
    .await;
    // The caller's own New-Api-User is sent, and new-api judges it.
    assert_eq!(reply.status, 401, "{}", reply.text());
    let seen = upstream.emulator.seen();
    assert_eq!(
        seen[0].headers["authorization"], UPSTREAM_TOKEN,
        "normalised, sent raw"
    );
    assert_eq!(
        seen[0].headers["new-api-user"],
        USER_ID.to_string().as_str(),
        "configured user when none sent"
    );
    assert_eq!(seen[1].headers["new-api-user"], "7");

    send(gateway.addr, "GET", "/api/token/", &[], None)
        .await
        .assert_envelope(401, "unauthenticated");
    assert_eq!(upstream.emulator.seen().len(), 2);
}

/// Found by schemathesis (tests/openapi.rs): in pass-through mode, a change whose before-read
/// (or PATCH read) the upstream refused for the caller's own token was a 502
/// `upstream_unavailable` blaming the upstream; it is the caller's key that failed, a 401.
#[tokio::test]
async fn passthrough_a_token_refused_on_the_gateways_own_read_is_401() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let id = seed(&upstream.emulator, "kept");
    let mut options = Options::new(upstream.addr);
    options.mode = "passthrough";
    let gateway = TestGateway::start(options).await;
    let wrong = [
        ("authorization", "Bearer not-the-upstream-token"),
        ("content-type", "application/json"),
    ];
    let full = format!(
        r#"{{"id":{id},"name":"kept","expired_time":-1,"remain_quota":1,"unlimited_quota":false,"model_limits_enabled":false,"model_limits":"","allow_ips":"","group":""}}"#
    );
    for (method, path, body) in [
        ("DELETE", format!("/api/token/{id}"), None),
        (
            "PATCH",
            format!("/api/token/{id}"),
            Some(r#"{"remain_quota":5}"#.to_string()),
        ),
        ("PUT", "/api/token/".to_string(), Some(full)),
    ] {
        upstream.emulator.clear_seen();
        let headers: &[(&str, &str)] = if body.is_some() { &wrong } else { &wrong[..1] };
        let reply = send(gateway.addr, method, &path, headers, body.as_deref()).await;
        reply.assert_envelope(401, "unauthenticated");
        assert!(reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("pass-through"));
        // Only the read reached the upstream; nothing was changed.
        let seen = upstream.emulator.seen();
        assert_eq!(seen.len(), 1, "{method} {path}");
        assert_eq!(seen[0].method, "GET");
    }
    assert_eq!(upstream.emulator.tokens().len(), 1);
    let records = audit_records(&gateway.audit_path);
    let outcomes: Vec<_> = records.iter().filter(|r| r["phase"] == "outcome").collect();
    assert_eq!(outcomes.len(), 3);
    for record in outcomes {
        assert_eq!(record["outcome"], "rejected", "{record}");
        assert_eq!(record["reason"], "unauthenticated", "{record}");
        assert_eq!(record["status"], 401, "{record}");
    }
    // The caller's own forwarded request still gets the upstream's answer as it is.
    let reply = send(gateway.addr, "GET", "/api/token/", &wrong[..1], None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["success"], false);
}

#[tokio::test]
async fn upstream_answers_pass_through_with_status_body_and_headers() {
    let (upstream, gateway) = emulator_and_gateway().await;
    // new-api's HTTP 200 failure envelope passes unchanged.
    let reply = admin(gateway.addr, "GET", "/api/token/999999", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["success"], false);
    assert_eq!(reply.json()["message"], "record not found");
    // Key reveal: the upstream's cache headers reach the caller.
    let id = seed(&upstream.emulator, "k");
    let reply = admin(gateway.addr, "POST", &format!("/api/token/{id}/key"), None).await;
    assert_eq!(reply.json()["success"], true);
    assert!(reply.headers["cache-control"]
        .to_str()
        .unwrap()
        .contains("no-store"));
    assert_eq!(reply.json()["data"]["key"].as_str().unwrap().len(), 48);
}

#[tokio::test]
async fn http2_callers_are_served_the_same_way() {
    use http_body_util::{BodyExt, Full};
    let (upstream, gateway) = emulator_and_gateway().await;
    let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let request = http::Request::get(format!(
        "http://{}/api/token/search/?keyword=x",
        gateway.addr
    ))
    .header("authorization", format!("Bearer {ADMIN_KEY}"))
    .body(Full::default())
    .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(br#"{"data":"#), "{body:?}");
    let seen = upstream.emulator.seen();
    assert_eq!(seen[0].uri.to_string(), "/api/token/search?keyword=x");

    // An h2 request for another authority or path is routed like any other.
    let request = http::Request::get(format!("http://{}/api/user/self", gateway.addr))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .body(Full::default())
        .unwrap();
    assert_eq!(client.request(request).await.unwrap().status(), 404);
    assert_eq!(upstream.emulator.seen().len(), 1);
}

#[tokio::test]
async fn framing_and_hop_headers_never_cross_on_a_real_socket() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let body = r#"{"name":"chunked"}"#;
    let request = format!(
        "POST /api/token/ HTTP/1.1\r\nHost: x\r\nAuthorization: {ADMIN_KEY}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nTE: trailers\r\nTrailer: X-Checksum\r\nUpgrade: websocket\r\n\
         Connection: close, X-Private\r\nX-Private: 1\r\nX-Oneapi-Request-Id: forged\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let answer = raw(gateway.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = upstream.emulator.seen();
    assert_eq!(
        seen[0].body,
        body.as_bytes(),
        "the chunked body arrives whole"
    );
    let headers = &seen[0].headers;
    for dropped in ["transfer-encoding", "te", "trailer", "upgrade", "x-private"] {
        assert!(
            headers.get(dropped).is_none(),
            "{dropped} crossed: {headers:?}"
        );
    }
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
    assert_eq!(
        headers["x-oneapi-request-id"], headers["x-request-id"],
        "new-api logs under the gateway's id"
    );
}

/// SPEC §2: `GET /api/token/auto-groups` is the read `auto_groups`, forwarded to the newest
/// new-api (E3) in canonical form; an older upstream's answer passes through as it is.
#[tokio::test]
async fn auto_groups_is_a_read_forwarded_to_the_newest_upstream() {
    use tokengate::emulator::Era;
    let mut config = EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID);
    config.era = Era::E3;
    let upstream = Emulator::spawn(config).await.unwrap();
    let gateway = TestGateway::start(Options::new(upstream.addr)).await;
    for path in ["/api/token/auto-groups", "/api/token/auto-groups/"] {
        upstream.emulator.clear_seen();
        let reply = admin(gateway.addr, "GET", path, None).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            reply.text(),
            r#"{"data":{"groups":["default"],"max_count":5},"message":"","success":true}"#
        );
        let seen = upstream.emulator.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (seen[0].method.as_str(), seen[0].uri.to_string().as_str()),
            ("GET", "/api/token/auto-groups")
        );
    }
    // A read: not in the reader's allow list unless named there, and other methods are 405.
    let reader = format!("Bearer {READER_KEY}");
    send(
        gateway.addr,
        "GET",
        "/api/token/auto-groups",
        &[("authorization", &reader)],
        None,
    )
    .await
    .assert_envelope(403, "forbidden");
    let reply = admin(gateway.addr, "DELETE", "/api/token/auto-groups", None).await;
    reply.assert_envelope(405, "method_not_allowed");
    assert_eq!(reply.headers["allow"], "GET");
    admin(gateway.addr, "GET", "/api/token/auto-groups?p=1", None)
        .await
        .assert_envelope(400, "bad_request");

    // E2 has no such route: new-api matches it as `/:id` and answers its own failure, unchanged.
    let (upstream, gateway) = emulator_and_gateway().await;
    let reply = admin(gateway.addr, "GET", "/api/token/auto-groups", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["success"], false);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("auto-groups"),
        "{}",
        reply.text()
    );
    assert_eq!(
        upstream.emulator.seen()[0].uri.path(),
        "/api/token/auto-groups"
    );
    // An upstream that answers 404 `Invalid URL` (a fork without the route): passed through.
    let invalid = "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 87\r\n\r\n{\"error\":{\"message\":\"Invalid URL (GET /api/token/auto-groups)\",\"type\":\"new_api_error\"}}";
    let fork = fake_upstream(Fake::Answer(invalid)).await;
    let gateway = TestGateway::start(Options::new(fork)).await;
    let reply = admin(gateway.addr, "GET", "/api/token/auto-groups", None).await;
    assert_eq!(reply.status, 404);
    assert!(
        reply
            .text()
            .contains("Invalid URL (GET /api/token/auto-groups)"),
        "{}",
        reply.text()
    );
}
