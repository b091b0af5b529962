//! PATCH (SPEC §4.5) against the emulator: one field changes and every other stays as it was, a
//! plain PUT of one field is refused with a pointer to PATCH, concurrent PATCHes of one token all
//! land, `status` goes in its own status-only PUT, and policy judges the merged token.

mod support;

use serde_json::{json, Value};
use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig, NewToken};

fn full_token() -> NewToken {
    NewToken {
        name: "ci-runner".into(),
        expired_time: 4_000_000_000,
        remain_quota: 123_456,
        model_limits_enabled: true,
        model_limits: "gpt-4o,o3".into(),
        allow_ips: Some("10.0.0.0/8".into()),
        group: "team".into(),
        ..NewToken::default()
    }
}

#[tokio::test]
async fn a_patch_of_one_field_leaves_every_other_field_as_it_was() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let id = upstream.emulator.insert_token(USER_ID, full_token());
    let before = get_token(&gateway, id).await;

    upstream.emulator.clear_seen();
    let reply = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{id}"),
        Some(r#"{"remain_quota": 999}"#),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let seen = upstream.emulator.seen();
    let methods: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {}", s.method, s.uri))
        .collect();
    assert_eq!(
        methods,
        [format!("GET /api/token/{id}"), "PUT /api/token/".into()]
    );
    let sent: Value = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(
        sent,
        json!({"id": id, "name": "ci-runner", "expired_time": 4_000_000_000i64, "remain_quota": 999,
            "unlimited_quota": false, "model_limits_enabled": true, "model_limits": "gpt-4o,o3",
            "allow_ips": "10.0.0.0/8", "group": "team", "cross_group_retry": false})
    );

    let mut expected = before.clone();
    expected["remain_quota"] = json!(999);
    assert_eq!(get_token(&gateway, id).await, expected);

    // The audit trail records the full update that was sent, under one request id.
    let records = audit_records(&gateway.audit_path);
    let rid = reply.headers["x-request-id"].to_str().unwrap();
    let mine: Vec<&Value> = records.iter().filter(|r| r["request_id"] == rid).collect();
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[0]["phase"], "intent");
    assert_eq!(mine[0]["request"]["remain_quota"], 999);
    assert_eq!(mine[0]["request"]["group"], "team");
    assert_eq!(mine[1]["outcome"], "forwarded");
    assert_eq!(mine[1]["op"], "update");
    assert_eq!(mine[1]["token_ids"], json!([id]));
}

#[tokio::test]
async fn the_same_change_as_a_plain_put_is_refused_with_a_pointer_to_patch() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let id = upstream.emulator.insert_token(USER_ID, full_token());
    upstream.emulator.clear_seen();
    let reply = admin(
        gateway.addr,
        "PUT",
        "/api/token/",
        Some(&format!(r#"{{"id": {id}, "remain_quota": 999}}"#)),
    )
    .await;
    reply.assert_envelope(400, "incomplete_update");
    assert!(
        reply.text().contains("PATCH /api/token/{id}"),
        "{}",
        reply.text()
    );
    assert!(upstream.emulator.seen().is_empty());
}

#[tokio::test]
async fn twenty_concurrent_patches_of_different_fields_all_land() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let id = upstream.emulator.insert_token(USER_ID, full_token());
    // Twenty distinct changes to four fields: each field's last writer is unknown, so give each
    // patch a field of its own by using twenty tokens' worth of values on disjoint fields.
    let patches: Vec<String> = (0..20)
        .map(|i| match i % 4 {
            0 => format!(r#"{{"name": "n{i}"}}"#),
            1 => format!(r#"{{"remain_quota": {}}}"#, 1000 + i),
            2 => format!(r#"{{"allow_ips": "10.{i}.0.0/16"}}"#),
            _ => format!(r#"{{"model_limits": "m{i}"}}"#),
        })
        .collect();
    let path = format!("/api/token/{id}");
    let replies = futures_util::future::join_all(
        patches
            .iter()
            .map(|body| admin(gateway.addr, "PATCH", &path, Some(body))),
    )
    .await;
    for reply in &replies {
        assert_eq!(reply.json()["success"], true, "{}", reply.text());
    }
    // Every PATCH read the token after the one before had written: each full PUT carries the
    // fields the earlier PATCHes set, so the PUTs' bodies form one growing history with no
    // change lost.
    let puts: Vec<Value> = upstream
        .emulator
        .seen()
        .iter()
        .filter(|s| s.method == "PUT")
        .map(|s| serde_json::from_slice(&s.body).unwrap())
        .collect();
    assert_eq!(puts.len(), 20);
    for pair in puts.windows(2) {
        let changed: Vec<&String> = pair[1]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, v)| pair[0][k.as_str()] != **v)
            .map(|(k, _)| k)
            .collect();
        assert!(
            changed.len() <= 1,
            "one PATCH changed {changed:?}: an interleaving lost an update"
        );
    }
    let last = puts.last().unwrap();
    let stored = get_token(&gateway, id).await;
    for field in ["name", "remain_quota", "allow_ips", "model_limits"] {
        assert_eq!(stored[field], last[field], "{field}");
    }
}

#[tokio::test]
async fn status_goes_in_its_own_status_only_put() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let id = upstream.emulator.insert_token(USER_ID, full_token());
    let path = format!("/api/token/{id}");

    upstream.emulator.clear_seen();
    let reply = admin(gateway.addr, "PATCH", &path, Some(r#"{"status": 2}"#)).await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let seen = upstream.emulator.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].uri, "/api/token/?status_only=true");
    assert_eq!(
        serde_json::from_slice::<Value>(&seen[1].body).unwrap(),
        json!({"id": id, "status": 2})
    );
    assert_eq!(get_token(&gateway, id).await["status"], 2);

    upstream.emulator.clear_seen();
    let reply = admin(
        gateway.addr,
        "PATCH",
        &path,
        Some(r#"{"status": 1, "name": "back"}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let uris: Vec<String> = upstream
        .emulator
        .seen()
        .iter()
        .map(|s| format!("{} {}", s.method, s.uri))
        .collect();
    assert_eq!(
        uris,
        [
            format!("GET {path}"),
            "PUT /api/token/".into(),
            "PUT /api/token/?status_only=true".into()
        ]
    );
    let stored = get_token(&gateway, id).await;
    assert_eq!(
        (stored["status"].as_i64(), stored["name"].as_str()),
        (Some(1), Some("back"))
    );
}

#[tokio::test]
async fn a_bad_patch_or_a_missing_token_is_refused_without_a_put() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let id = upstream.emulator.insert_token(USER_ID, full_token());
    let path = format!("/api/token/{id}");
    // A value outside the rules may be the stored one (SPEC §4.2): that one is judged after the
    // read; the others are refused before it.
    for (body, status, code, reads) in [
        ("{}", 400, "invalid_field", 0),
        (r#"{"id": 5, "name": "x"}"#, 400, "unknown_field", 0),
        (r#"{"remain_qouta": 5}"#, 400, "unknown_field", 0),
        (
            r#"{"status": 9, "expired_time": 0}"#,
            400,
            "invalid_field",
            0,
        ),
        (r#"{"expired_time": 0}"#, 400, "invalid_field", 1),
    ] {
        upstream.emulator.clear_seen();
        let reply = admin(gateway.addr, "PATCH", &path, Some(body)).await;
        reply.assert_envelope(status, code);
        let seen = upstream.emulator.seen();
        assert_eq!(seen.len(), reads, "{body}: {seen:?}");
        assert!(seen.iter().all(|s| s.method == "GET"), "{body}: {seen:?}");
    }
    // What new-api wrote itself, sent back as read, passes (an expiry now in the past).
    let expired = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            expired_time: 1_000,
            ..full_token()
        },
    );
    let reply = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{expired}"),
        Some(r#"{"expired_time": 1000, "name": "kept"}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let stored = upstream.emulator.tokens();
    let stored = stored.iter().find(|t| t.id == expired).unwrap();
    assert_eq!((stored.name.as_str(), stored.expired_time), ("kept", 1_000));
    upstream.emulator.clear_seen();
    admin(
        gateway.addr,
        "PATCH",
        "/api/token/999",
        Some(r#"{"name": "x"}"#),
    )
    .await
    .assert_envelope(404, "not_found");
    assert_eq!(upstream.emulator.seen().len(), 1, "the read only");
    // A full update whose value only the stored token can judge reads it too: a missing token is
    // the same 404, not a 400 saying the value differs from a stored one.
    upstream.emulator.clear_seen();
    let body = r#"{"id": 999, "name": "x", "remain_quota": -5, "unlimited_quota": false, "expired_time": -1, "model_limits_enabled": false, "model_limits": "", "allow_ips": "", "group": ""}"#;
    admin(gateway.addr, "PUT", "/api/token/", Some(body))
        .await
        .assert_envelope(404, "not_found");
    let seen = upstream.emulator.seen();
    assert_eq!(seen.len(), 1, "the read only: {seen:?}");
    assert_eq!(seen[0].method, "GET");
}

#[tokio::test]
async fn policy_judges_the_merged_token() {
    let emulator = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let key = "tg_patch_policy_key_5555555555555555555555555555555555555555555555";
    let mut options = Options::new(emulator.addr);
    options.clients = Some(client_entry(
        "team",
        key,
        "name_prefix = \"team-\"\nmax_remain_quota = 1000",
    ));
    let gateway = TestGateway::start(options).await;
    let unlimited = emulator.emulator.insert_token(
        USER_ID,
        NewToken {
            name: "team-x".into(),
            unlimited_quota: true,
            ..NewToken::default()
        },
    );
    let theirs = emulator.emulator.insert_token(
        USER_ID,
        NewToken {
            name: "ops".into(),
            ..NewToken::default()
        },
    );
    let patch = |id: i64, body: &'static str| {
        let auth = format!("Bearer {key}");
        async move {
            send(
                gateway.addr,
                "PATCH",
                &format!("/api/token/{id}"),
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                Some(body),
            )
            .await
        }
    };
    // The stored token is unlimited: a PATCH that does not also turn that off is refused.
    let reply = patch(unlimited, r#"{"remain_quota": 10}"#).await;
    reply.assert_envelope(403, "forbidden");
    assert_eq!(reply.json()["error"]["field"], "unlimited_quota");
    let reply = patch(
        unlimited,
        r#"{"remain_quota": 10, "unlimited_quota": false}"#,
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    // A rename outside the prefix, and any PATCH of a token outside it, are refused.
    patch(unlimited, r#"{"name": "ops-2"}"#)
        .await
        .assert_envelope(403, "forbidden");
    patch(theirs, r#"{"name": "team-mine"}"#)
        .await
        .assert_envelope(403, "forbidden");
    // The stored quota is judged too.
    patch(unlimited, r#"{"remain_quota": 1001}"#)
        .await
        .assert_envelope(403, "forbidden");
    // One read per PATCH: the name check uses the token the merge read.
    let gets = emulator
        .emulator
        .seen()
        .iter()
        .filter(|s| s.method == "GET")
        .count();
    assert_eq!(gets, 5);
}
