//! How upstream failures reach the caller: refused or reset → 502, silence → 504, a bare 429 →
//! `upstream_rate_limited`, redirects never passed on, a refused gateway credential → 502
//! `upstream_auth_failed` (counted), and the admin listener's view of it all.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig, NewToken, User};

async fn gateway_to(fake: Fake) -> TestGateway {
    let mut options = Options::new(fake_upstream(fake).await);
    options.upstream_timeout_ms = 400;
    TestGateway::start(options).await
}

#[tokio::test]
async fn refused_connection_is_502_upstream_unavailable() {
    let gateway = TestGateway::start(Options::new(refused_addr().await)).await;
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    reply.assert_envelope(502, "upstream_unavailable");
    assert!(
        !reply.text().contains("127.0.0.1"),
        "the upstream's address is not revealed: {}",
        reply.text()
    );
}

#[tokio::test]
async fn reset_connection_is_502_upstream_unavailable() {
    let gateway = gateway_to(Fake::Reset).await;
    admin(gateway.addr, "POST", "/api/token/", Some(r#"{"name":"x"}"#))
        .await
        .assert_envelope(502, "upstream_unavailable");
}

#[tokio::test]
async fn silence_is_504_within_the_upstream_timeout() {
    let gateway = gateway_to(Fake::Hang).await;
    let started = Instant::now();
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    reply.assert_envelope(504, "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by upstream.timeout_ms"
    );
}

#[tokio::test]
async fn the_request_deadline_also_bounds_the_wait_for_the_upstream() {
    // `server.request_timeout_ms` is shorter than `upstream.timeout_ms`: the caller's whole
    // budget decides, and the answer says the upstream was waited on (504, not 408).
    let mut options = Options::new(fake_upstream(Fake::Hang).await);
    options.upstream_timeout_ms = 30_000;
    options.request_timeout_ms = 500;
    let gateway = TestGateway::start(options).await;
    let started = Instant::now();
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    reply.assert_envelope(504, "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "bounded by server.request_timeout_ms, not upstream.timeout_ms"
    );
}

#[tokio::test]
async fn a_bare_429_is_upstream_rate_limited_and_one_with_a_body_passes() {
    let gateway = gateway_to(Fake::Answer(
        "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n",
    ))
    .await;
    admin(gateway.addr, "GET", "/api/token/", None)
        .await
        .assert_envelope(429, "upstream_rate_limited");

    let body = r#"{"success":false,"message":"slow down"}"#;
    let answer: &'static str = Box::leak(
        format!("HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .into_boxed_str(),
    );
    let gateway = gateway_to(Fake::Answer(answer)).await;
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.text(), body);
}

#[tokio::test]
async fn redirects_are_never_passed_on() {
    for status in [
        "301 Moved Permanently",
        "302 Found",
        "307 Temporary Redirect",
        "308 Permanent Redirect",
    ] {
        let answer: &'static str = Box::leak(
            format!("HTTP/1.1 {status}\r\nLocation: http://10.9.8.7:3000/api/token/\r\nContent-Length: 0\r\n\r\n").into_boxed_str(),
        );
        let gateway = gateway_to(Fake::Answer(answer)).await;
        let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
        reply.assert_envelope(502, "upstream_unavailable");
        assert!(reply.headers.get("location").is_none());
        assert!(!reply.text().contains("10.9.8.7"));
    }
}

/// hyper passes a 101 on as an answer (an upgrade); an upstream's token API never switches
/// protocols, so it is a 502, never handed to the caller.
#[tokio::test]
async fn an_informational_answer_is_502_upstream_unavailable() {
    let answer =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
    let gateway = gateway_to(Fake::Answer(answer)).await;
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    reply.assert_envelope(502, "upstream_unavailable");
    assert!(reply.headers.get("upgrade").is_none());
    assert!(reply.text().contains("informational"), "{}", reply.text());
}

#[tokio::test]
async fn a_refused_gateway_credential_is_502_upstream_auth_failed() {
    // new-api (E2) answers 401 when New-Api-User does not match the token's user.
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID + 1))
        .await
        .unwrap();
    let gateway = TestGateway::start(Options::new(upstream.addr)).await;
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    reply.assert_envelope(502, "upstream_auth_failed");
    let metrics = send(gateway.admin, "GET", "/metrics", &[], None)
        .await
        .text();
    assert!(
        metrics.contains("tokengate_upstream_auth_failures_total 1"),
        "{metrics}"
    );

    // new-api (E2) answers a wrong or rotated token with HTTP 200 and success:false: the same fault,
    // whatever language the caller asked for.
    let upstream = Emulator::spawn(EmulatorConfig::new("the-rotated-token", USER_ID))
        .await
        .unwrap();
    let gateway = TestGateway::start(Options::new(upstream.addr)).await;
    for language in ["en-US", "zh-CN"] {
        let auth = format!("Bearer {ADMIN_KEY}");
        let reply = send(
            gateway.addr,
            "GET",
            "/api/token/",
            &[("authorization", &auth), ("accept-language", language)],
            None,
        )
        .await;
        reply.assert_envelope(502, "upstream_auth_failed");
    }
    let metrics = send(gateway.admin, "GET", "/metrics", &[], None)
        .await
        .text();
    assert!(
        metrics.contains("tokengate_upstream_auth_failures_total 2"),
        "{metrics}"
    );
    // Other HTTP-200 failures are the caller's business and pass through.
    let reply = admin(gateway.addr, "GET", "/api/token/5", None).await;
    assert_eq!(reply.status, 502, "still the gateway's credential");
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let gateway = TestGateway::start(Options::new(upstream.addr)).await;
    let reply = admin(gateway.addr, "GET", "/api/token/5", None).await;
    assert_eq!(
        (reply.status, reply.json()["message"].as_str()),
        (200, Some("record not found"))
    );

    // A plain 403 is the same fault.
    let gateway = gateway_to(Fake::Answer(
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\n{}",
    ))
    .await;
    admin(gateway.addr, "GET", "/api/token/", None)
        .await
        .assert_envelope(502, "upstream_auth_failed");
}

/// The gateway's account as the emulator holds it, made to draw one of new-api's four HTTP-200
/// credential refusals (`None`: the upstream token was rotated, so the gateway's is unknown).
fn refused_account(role: i64, status: i64) -> Option<User> {
    Some(User {
        role,
        status,
        ..User::new(USER_ID, UPSTREAM_TOKEN)
    })
}

#[tokio::test]
async fn credential_refusals_in_every_shipped_language_are_502_upstream_auth_failed() {
    // new-api ships en, zh-CN and zh-TW; the first Accept-Language tag picks one. For each refusal,
    // the texts new-api's catalogue has in those three languages (upstream-new-api.md §2.1).
    let refusals: [(&str, Option<User>, [&str; 3]); 4] = [
        (
            "access token invalid",
            None,
            [
                "Unauthorized, invalid access token",
                "无权进行此操作，access token 无效",
                "無權進行此操作，access token 無效",
            ],
        ),
        (
            "user info invalid",
            refused_account(5, 1),
            [
                "Unauthorized, invalid user info",
                "无权进行此操作，用户信息无效",
                "無權進行此操作，使用者資訊無效",
            ],
        ),
        (
            "user banned",
            refused_account(1, 2),
            ["User has been banned", "用户已被封禁", "使用者已被封禁"],
        ),
        (
            "insufficient privilege",
            refused_account(0, 1),
            [
                "Unauthorized, insufficient privileges",
                "无权进行此操作，权限不足",
                "無權進行此操作，權限不足",
            ],
        ),
    ];
    // (Accept-Language, which of the three texts new-api answers with)
    let languages = [
        ("en-US", 0),
        ("zh-CN,zh;q=0.9", 1),
        ("zh-TW", 2),
        ("zh-tw;q=0.8, en;q=0.5", 2),
        ("ZH-TW,zh-CN", 2),
    ];
    for (refusal, account, texts) in &refusals {
        let token = if account.is_some() {
            UPSTREAM_TOKEN
        } else {
            "the-rotated-token"
        };
        let upstream = Emulator::spawn(EmulatorConfig::new(token, USER_ID))
            .await
            .unwrap();
        if let Some(account) = account {
            upstream.emulator.add_user(account.clone());
        }
        let gateway = TestGateway::start(Options::new(upstream.addr)).await;
        let user = USER_ID.to_string();
        for (language, text) in languages {
            let text = texts[text];
            // What new-api answers the gateway's own request in that language...
            let direct = send(
                upstream.addr,
                "GET",
                "/api/token/",
                &[
                    ("authorization", UPSTREAM_TOKEN),
                    ("new-api-user", &user),
                    ("accept-language", language),
                ],
                None,
            )
            .await;
            assert_eq!(
                (direct.status, direct.json()["success"].as_bool()),
                (200, Some(false)),
                "{refusal}, {language}"
            );
            assert_eq!(direct.json()["message"], *text, "{refusal}, {language}");
            // ...reaches the caller as the gateway's fault, without the upstream's words.
            let auth = format!("Bearer {ADMIN_KEY}");
            let reply = send(
                gateway.addr,
                "GET",
                "/api/token/",
                &[("authorization", &auth), ("accept-language", language)],
                None,
            )
            .await;
            reply.assert_envelope(502, "upstream_auth_failed");
            assert!(
                !reply.text().contains(text),
                "{refusal}, {language}: {}",
                reply.text()
            );
        }
        let metrics = send(gateway.admin, "GET", "/metrics", &[], None)
            .await
            .text();
        let counted = format!("tokengate_upstream_auth_failures_total {}", languages.len());
        assert!(metrics.contains(&counted), "{refusal}: {metrics}");
    }
}

#[tokio::test]
async fn ordinary_failures_in_every_shipped_language_pass_through() {
    // new-api refusing the caller's own request (here: enabling an expired token) is not the
    // gateway's credential, in any language.
    let (upstream, gateway) = emulator_and_gateway().await;
    let id = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            name: "old".into(),
            status: 3,
            expired_time: 1,
            remain_quota: 10,
            ..NewToken::default()
        },
    );
    let auth = format!("Bearer {ADMIN_KEY}");
    let body = format!(r#"{{"id":{id},"status":1}}"#);
    for (language, message) in [
        (
            "en",
            "Token has expired and cannot be enabled. Please modify the expiration time or set it to never expire",
        ),
        (
            "zh-CN",
            "令牌已过期，无法启用，请先修改令牌过期时间，或者设置为永不过期",
        ),
        (
            "zh-TW",
            "令牌已過期，無法啟用，請先修改令牌過期時間，或者設定為永不過期",
        ),
    ] {
        let reply = send(
            gateway.addr,
            "PUT",
            "/api/token/?status_only=true",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("accept-language", language),
            ],
            Some(&body),
        )
        .await;
        assert_eq!(
            (reply.status, reply.json()["message"].as_str()),
            (200, Some(message)),
            "{language}: {}",
            reply.text()
        );
    }
}

#[tokio::test]
async fn other_upstream_errors_pass_through() {
    let gateway = gateway_to(Fake::Answer(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"success\":false}",
    ))
    .await;
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.text(), "{\"success\":false}");
}

#[tokio::test]
async fn admin_listener_reports_health_readiness_and_metrics() {
    let (upstream, gateway) = emulator_and_gateway().await;
    admin(gateway.addr, "GET", "/api/token/", None).await;
    admin(gateway.addr, "GET", "/api/user/self", None).await;

    let health = send(gateway.admin, "GET", "/healthz", &[], None).await;
    assert_eq!(
        (health.status, health.json()["status"].as_str()),
        (200, Some("ok"))
    );
    let ready = send(gateway.admin, "GET", "/readyz", &[], None).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let metrics = send(gateway.admin, "GET", "/metrics", &[], None)
        .await
        .text();
    for line in [
        "tokengate_requests_total{op=\"list\",status=\"200\"} 1",
        "tokengate_requests_total{op=\"none\",status=\"404\"} 1",
        "tokengate_request_duration_seconds_count{op=\"list\"} 1",
        "tokengate_upstream_duration_seconds_count{op=\"list\"} 1",
        "tokengate_ready 1",
    ] {
        assert!(metrics.contains(line), "missing {line}:\n{metrics}");
    }
    send(gateway.admin, "POST", "/healthz", &[], None)
        .await
        .assert_envelope(405, "method_not_allowed");
    send(gateway.admin, "GET", "/api/token/", &[], None)
        .await
        .assert_envelope(404, "not_found");
    // The admin listener never forwards.
    assert_eq!(upstream.emulator.seen().len(), 1);
}

#[tokio::test]
async fn readiness_asks_the_upstream_when_configured() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let ready = |addr| async move {
        let mut options = Options::new(addr);
        options.ready_check = true;
        let gateway = TestGateway::start(options).await;
        send(gateway.admin, "GET", "/readyz", &[], None).await
    };
    let reply = ready(upstream.addr).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["checks"]["upstream"], "ok");
    let reply = ready(refused_addr().await).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["ready"], false);
    // A wrong token: new-api answers HTTP 200 with success:false, which is not ready either.
    let wrong = Emulator::spawn(EmulatorConfig::new("another-token", USER_ID))
        .await
        .unwrap();
    let reply = ready(wrong.addr).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
}
