//! Faithful to new-api as it is really used (SPEC §4.2, §4.5): fork fields kept, used tokens
//! editable, what new-api ignores refused, partial writes told, and the quota race as documented.

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig, Era, NewToken, RunningEmulator};

fn token(name: &str) -> NewToken {
    NewToken {
        name: name.into(),
        remain_quota: 1000,
        ..NewToken::default()
    }
}

async fn emulator_with(configure: impl FnOnce(&mut EmulatorConfig)) -> RunningEmulator {
    let mut config = EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID);
    configure(&mut config);
    Emulator::spawn(config).await.unwrap()
}

fn stored(upstream: &RunningEmulator, id: i64) -> tokengate::emulator::StoredToken {
    upstream
        .emulator
        .tokens()
        .into_iter()
        .find(|t| t.id == id)
        .unwrap()
}

/// A GET-edit-PUT: token `id` as `GET` shows it, `field` set to `value`, sent back as a full update.
async fn get_edit_put(
    gateway: &TestGateway,
    id: i64,
    field: &str,
    value: serde_json::Value,
) -> Reply {
    let mut token = get_token(gateway, id).await;
    token[field] = value;
    admin(gateway.addr, "PUT", "/api/token/", Some(&token.to_string())).await
}

fn methods(upstream: &RunningEmulator) -> Vec<String> {
    upstream
        .emulator
        .seen()
        .iter()
        .map(|s| s.method.to_string())
        .collect()
}

#[tokio::test]
async fn a_fork_field_survives_a_patch_and_a_batch_only_when_listed() {
    let upstream = emulator_with(|c| c.fork_billing_type = true).await;
    let id = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            billing_type: "tokens".into(),
            ..token("fork")
        },
    );
    // Not listed: the PATCH is refused after its read, naming the field; nothing is written.
    let gateway = TestGateway::start(Options::new(upstream.addr)).await;
    let reply = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{id}"),
        Some(r#"{"name":"x"}"#),
    )
    .await;
    reply.assert_envelope(400, "invalid_field");
    assert_eq!(reply.json()["error"]["field"], "billing_type");
    assert!(reply.text().contains("extra_fields"), "{}", reply.text());
    assert_eq!(methods(&upstream), ["GET"]);
    // Listed: carried unchanged through a PATCH and a fan-out batch.
    let mut options = Options::new(upstream.addr);
    options.upstream_extra = "extra_fields = [\"billing_type\"]\n".into();
    let gateway = TestGateway::start(options).await;
    let reply = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{id}"),
        Some(r#"{"name":"kept"}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    assert_eq!(
        (
            stored(&upstream, id).name.as_str(),
            stored(&upstream, id).billing_type.as_str()
        ),
        ("kept", "tokens")
    );
    let body =
        json!({"ids": [id], "update_fields": ["remain_quota"], "remain_quota": 5}).to_string();
    let reply = admin(gateway.addr, "PUT", "/api/token/batch", Some(&body)).await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let after = stored(&upstream, id);
    assert_eq!(
        (after.remain_quota, after.billing_type.as_str()),
        (5, "tokens")
    );
    // A GET-edit-PUT carries it too when listed.
    let reply = get_edit_put(&gateway, id, "name", json!("edited")).await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    assert_eq!(stored(&upstream, id).billing_type, "tokens");
}

#[tokio::test]
async fn a_one_api_shaped_token_is_refused_naming_what_the_upstream_lacks() {
    // A fake upstream whose token has none of new-api's newer fields.
    let one_api = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 153\r\n\r\n{\"data\":{\"id\":3,\"user_id\":1,\"key\":\"abcd\",\"status\":1,\"name\":\"old\",\"expired_time\":-1,\"remain_quota\":5,\"unlimited_quota\":false},\"success\":true,\"message\":\"\"}";
    assert_eq!(one_api.split("\r\n\r\n").nth(1).unwrap().len(), 153);
    let fake = fake_upstream(Fake::Answer(one_api)).await;
    let gateway = TestGateway::start(Options::new(fake)).await;
    let reply = admin(
        gateway.addr,
        "PATCH",
        "/api/token/3",
        Some(r#"{"name":"x"}"#),
    )
    .await;
    reply.assert_envelope(400, "invalid_field");
    let message = reply.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("model_limits") && message.contains("group"),
        "{message}"
    );
    assert!(
        !message.contains("PATCH /api/token"),
        "no advice to use PATCH: {message}"
    );
}

#[tokio::test]
async fn a_used_unlimited_token_stays_editable_every_way() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let id = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            unlimited_quota: true,
            ..token("used")
        },
    );
    // Relay usage lowers an unlimited token's quota below 0.
    assert!(upstream.emulator.use_quota(id, 13_345));
    assert_eq!(stored(&upstream, id).remain_quota, -12_345);
    // PATCH of its name.
    let reply = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{id}"),
        Some(r#"{"name":"renamed"}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    // A fan-out batch over it.
    let body = json!({"ids": [id], "update_fields": ["group"], "group": "vip"}).to_string();
    let reply = admin(gateway.addr, "PUT", "/api/token/batch", Some(&body)).await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    // A GET-edit-PUT (the stored status comes along and is the stored one).
    let reply = get_edit_put(&gateway, id, "name", json!("edited")).await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    // A whole-token status-only body.
    let mut whole = get_token(&gateway, id).await;
    whole["status"] = json!(2);
    let reply = admin(
        gateway.addr,
        "PUT",
        "/api/token/?status_only=true",
        Some(&whole.to_string()),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let after = stored(&upstream, id);
    assert_eq!(
        (
            after.name.as_str(),
            after.group.as_str(),
            after.remain_quota,
            after.status
        ),
        ("edited", "vip", -12_345, 2)
    );
    // A value that changes is judged: a negative quota is never set.
    let mut lower = get_token(&gateway, id).await;
    lower["remain_quota"] = json!(-1);
    upstream.emulator.clear_seen();
    admin(gateway.addr, "PUT", "/api/token/", Some(&lower.to_string()))
        .await
        .assert_envelope(400, "invalid_field");
    assert_eq!(methods(&upstream), ["GET"], "only the read");
    // `-0` is 0.
    let reply = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{id}"),
        Some(r#"{"remain_quota":-0,"unlimited_quota":false}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    assert_eq!(stored(&upstream, id).remain_quota, 0);
}

#[tokio::test]
async fn an_expired_tokens_whole_status_only_body_passes() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let now = unix_now();
    let id = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            expired_time: now - 3600,
            status: 3,
            ..token("expired")
        },
    );
    let mut whole = get_token(&gateway, id).await;
    whole["status"] = json!(2);
    let reply = admin(
        gateway.addr,
        "PUT",
        "/api/token/?status_only=true",
        Some(&whole.to_string()),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    assert_eq!(stored(&upstream, id).status, 2);
}

#[tokio::test]
async fn what_new_api_ignores_is_refused() {
    let (upstream, gateway) = emulator_and_gateway().await;
    // A create asking for a disabled token.
    admin(
        gateway.addr,
        "POST",
        "/api/token/",
        Some(r#"{"name":"x","status":2}"#),
    )
    .await
    .assert_envelope(400, "invalid_field");
    assert!(upstream.emulator.seen().is_empty());
    // A full update whose status differs from the stored one: refused after the read.
    let id = upstream.emulator.insert_token(USER_ID, token("t"));
    let mut full = get_token(&gateway, id).await;
    full["status"] = json!(2);
    upstream.emulator.clear_seen();
    let reply = admin(gateway.addr, "PUT", "/api/token/", Some(&full.to_string())).await;
    reply.assert_envelope(400, "invalid_field");
    assert_eq!(reply.json()["error"]["field"], "status");
    assert!(reply.text().contains("status_only"), "{}", reply.text());
    assert_eq!(methods(&upstream), ["GET"]);
    // E3: cross_group_retry true or auto_groups on a group other than auto.
    let e3 = emulator_with(|c| c.era = Era::E3).await;
    let gateway = TestGateway::start(Options::new(e3.addr)).await;
    for body in [
        r#"{"name":"x","group":"vip","cross_group_retry":true}"#,
        r#"{"name":"x","group":"vip","auto_groups":["default"]}"#,
        r#"{"name":"x","cross_group_retry":true}"#,
    ] {
        let reply = admin(gateway.addr, "POST", "/api/token/", Some(body)).await;
        reply.assert_envelope(400, "invalid_field");
        assert!(reply.text().contains("auto"), "{}", reply.text());
    }
    let reply = admin(
        gateway.addr,
        "POST",
        "/api/token/",
        Some(r#"{"name":"x","group":"auto","cross_group_retry":true,"auto_groups":["default"]}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    assert!(e3.emulator.seen().iter().all(|s| s.method == "POST") && e3.emulator.seen().len() == 1);
}

#[tokio::test]
async fn enabling_an_exhausted_token_with_other_changes_is_refused_before_any_write() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let id = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            remain_quota: 0,
            status: 4,
            ..token("empty")
        },
    );
    upstream.emulator.clear_seen();
    let reply = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{id}"),
        Some(r#"{"status":1,"group":"vip"}"#),
    )
    .await;
    reply.assert_envelope(400, "invalid_field");
    assert_eq!(reply.json()["error"]["field"], "status");
    assert_eq!(methods(&upstream), ["GET"], "nothing written");
    assert_eq!(stored(&upstream, id).group, "");
    // The same with a quota to go with it is applied in full.
    let reply = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{id}"),
        Some(r#"{"status":1,"group":"vip","remain_quota":10}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let after = stored(&upstream, id);
    assert_eq!(
        (after.status, after.group.as_str(), after.remain_quota),
        (1, "vip", 10)
    );
}

/// An upstream that serves a token and accepts full updates, but refuses every status-only one
/// (as new-api does when its own state says no): the second PUT of a PATCH fails after the first
/// was applied.
async fn refusing_status_only_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: Request<hyper::body::Incoming>| async move {
                        let status_only = request
                            .uri()
                            .query()
                            .is_some_and(|q| q.contains("status_only"));
                        let body = if request.method() == http::Method::GET {
                            json!({"success": true, "message": "", "data": {"id": 5, "user_id": 42, "key": "abcd**********wxyz",
                            "status": 2, "name": "t", "created_time": 1, "accessed_time": 1, "expired_time": -1,
                            "remain_quota": 10, "unlimited_quota": false, "model_limits_enabled": false,
                            "model_limits": "", "allow_ips": "", "used_quota": 0, "group": "",
                            "cross_group_retry": false, "DeletedAt": null}})
                        } else if status_only {
                            json!({"success": false, "message": "the token cannot be enabled"})
                        } else {
                            json!({"success": true, "message": ""})
                        };
                        let _ = request.into_body().collect().await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_status_only_put_that_fails_after_the_full_one_answers_partial() {
    let gateway = TestGateway::start(Options::new(refusing_status_only_upstream().await)).await;
    let reply = admin(
        gateway.addr,
        "PATCH",
        "/api/token/5",
        Some(r#"{"status":1,"group":"vip"}"#),
    )
    .await;
    let json = reply.json();
    assert_eq!(json["success"], false, "{json}");
    assert_eq!(json["partial"], true, "{json}");
    assert_eq!(json["written"], json!(["group"]), "{json}");
    assert_eq!(json["message"], "the token cannot be enabled");
    // In a batch, the id's failed entry says the same.
    let body =
        json!({"ids": [5], "update_fields": ["status", "group"], "status": 1, "group": "vip"})
            .to_string();
    let reply = admin(gateway.addr, "PUT", "/api/token/batch", Some(&body)).await;
    let failed = &reply.json()["data"]["failed"][0];
    assert_eq!(failed["partial"], true, "{}", reply.text());
    assert_eq!(failed["written"], json!(["group"]), "{}", reply.text());
}

#[tokio::test]
async fn policy_does_not_judge_auto_groups_new_api_clears() {
    let e3 = emulator_with(|c| c.era = Era::E3).await;
    let id = e3.emulator.insert_token(
        USER_ID,
        NewToken {
            group: "team".into(),
            auto_groups: Some(vec!["vip".into()]),
            ..token("stale")
        },
    );
    let mut options = Options::new(e3.addr);
    options.clients = Some(client_entry("team", ADMIN_KEY, "groups = [\"team\"]"));
    let gateway = TestGateway::start(options).await;
    let reply = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{id}"),
        Some(r#"{"name":"renamed"}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    assert_eq!(stored(&e3, id).name, "renamed");
}

/// SPEC §4.5: usage between a PATCH's read and its write is undone by the full PUT (new-api
/// writes the quota it is given); the window is measured.
#[tokio::test]
async fn the_quota_race_is_as_documented_and_its_window_measured() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let id = upstream.emulator.insert_token(USER_ID, token("raced"));
    upstream.emulator.use_quota_after_next_read(id, 300);
    let reply = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{id}"),
        Some(r#"{"name":"r2"}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let after = stored(&upstream, id);
    assert_eq!(
        after.remain_quota, 1000,
        "the usage in the window was written over"
    );
    assert_eq!(after.used_quota, 300, "new-api still counted it as used");
    let metrics = send(gateway.admin, "GET", "/metrics", &[], None)
        .await
        .text();
    assert!(
        metrics.contains("tokengate_patch_window_seconds_count 1"),
        "{metrics}"
    );
}
