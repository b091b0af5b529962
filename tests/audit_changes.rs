//! SPEC §6.1: every intent of a change to an existing token says what the token was (`before`,
//! read under its lock) and what the change does to it (`changes`), and a create lists what it
//! sets. Each record is compared with the emulator's own token before and after the change.

mod support;

use std::time::Duration;

use serde_json::{json, Map, Value};
use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig, Era, NewToken, RunningEmulator};

/// The records of the request that got `reply`.
fn of_request(records: &[Value], reply: &Reply) -> Vec<Value> {
    let id = reply.headers["x-request-id"].to_str().unwrap();
    records
        .iter()
        .filter(|r| r["request_id"] == id)
        .cloned()
        .collect()
}

fn intents(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["phase"] == "intent").collect()
}

/// Token `id` as the emulator stores it: the editable fields and `status` (E3 adds
/// `auto_groups`); `None` once deleted.
fn stored(emulator: &RunningEmulator, id: i64) -> Option<Value> {
    let e3 = emulator.emulator.config().era == Era::E3;
    let t = emulator
        .emulator
        .tokens()
        .into_iter()
        .find(|t| t.id == id && !t.deleted)?;
    let mut view = json!({
        "status": t.status, "name": t.name, "expired_time": t.expired_time,
        "remain_quota": t.remain_quota, "unlimited_quota": t.unlimited_quota,
        "model_limits_enabled": t.model_limits_enabled, "model_limits": t.model_limits,
        "allow_ips": t.allow_ips, "group": t.group, "cross_group_retry": t.cross_group_retry,
    });
    if e3 {
        view["auto_groups"] = json!(t.auto_groups);
    }
    Some(view)
}

/// What the test expects `changes` to be: every field whose value differs, sorted by name.
fn diff(before: &Value, after: &Value) -> Value {
    let empty = Map::new();
    let (b, a) = (
        before.as_object().unwrap_or(&empty),
        after.as_object().unwrap_or(&empty),
    );
    let mut fields: Vec<&String> = b.keys().chain(a.keys()).collect();
    fields.sort();
    fields.dedup();
    let null = Value::Null;
    Value::Array(
        fields
            .into_iter()
            .filter(|f| b.get(*f).unwrap_or(&null) != a.get(*f).unwrap_or(&null))
            .map(|f| {
                json!({"field": f, "from": b.get(f).unwrap_or(&null), "to": a.get(f).unwrap_or(&null)})
            })
            .collect(),
    )
}

/// A full update body of token `id` carrying `stored`'s values with `changes` over them.
fn full_update(id: i64, stored: &Value, changes: Value) -> String {
    let mut body = stored.clone();
    let body = body.as_object_mut().unwrap();
    body.remove("status");
    body.remove("auto_groups");
    body.insert("id".into(), json!(id));
    body.extend(changes.as_object().unwrap().clone());
    Value::Object(body.clone()).to_string()
}

async fn e3_emulator() -> RunningEmulator {
    let mut config = EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID);
    config.era = Era::E3;
    Emulator::spawn(config).await.unwrap()
}

fn seed(emulator: &RunningEmulator, name: &str, token: NewToken) -> i64 {
    emulator.emulator.insert_token(
        USER_ID,
        NewToken {
            name: name.into(),
            ..token
        },
    )
}

/// The methods and paths the upstream saw since `clear_seen`.
fn seen(emulator: &RunningEmulator) -> Vec<String> {
    emulator
        .emulator
        .seen()
        .iter()
        .map(|r| format!("{} {}", r.method, r.uri.path()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_records_the_token_before_and_what_changed() {
    let upstream = e3_emulator().await;
    let mut options = Options::new(upstream.addr);
    // A full update may leave fields out, so the zero values new-api writes show as changes.
    options.limits = "require_complete_updates = false\n".into();
    let mut gateway = TestGateway::start(options).await;
    let a = seed(
        &upstream,
        "ci",
        NewToken {
            remain_quota: 500_000,
            ..NewToken::default()
        },
    );
    // Used since anyone last wrote it: `before` is what the upstream holds, not what an earlier
    // record said.
    assert!(upstream.emulator.use_quota(a, 1_000));
    let auto = seed(
        &upstream,
        "router",
        NewToken {
            group: "auto".into(),
            cross_group_retry: true,
            auto_groups: Some(vec!["default".into()]),
            remain_quota: 9,
            ..NewToken::default()
        },
    );
    let c = seed(
        &upstream,
        "batch-c",
        NewToken {
            remain_quota: 3,
            model_limits_enabled: true,
            model_limits: "gpt-4o".into(),
            ..NewToken::default()
        },
    );
    let d = seed(&upstream, "batch-d", NewToken::default());
    let mut checked = 0;

    // Sends one change and checks its single intent against the emulator's token before and
    // after; returns the request's records.
    macro_rules! change {
        ($id:expr, $method:expr, $path:expr, $body:expr) => {{
            let before = stored(&upstream, $id).unwrap();
            upstream.emulator.clear_seen();
            let path: &str = &$path;
            let reply = admin(gateway.addr, $method, path, $body).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            assert_eq!(reply.json()["success"], true, "{}", reply.text());
            let after = stored(&upstream, $id).unwrap();
            let records = of_request(&audit_records(&gateway.audit_path), &reply);
            let intents = intents(&records);
            assert_eq!(intents.len(), 1, "{records:#?}");
            assert_eq!(intents[0]["v"], 2);
            assert_eq!(intents[0]["token_ids"], json!([$id]));
            assert_eq!(intents[0]["before"], before, "{}", intents[0]);
            assert_eq!(
                intents[0]["changes"],
                diff(&before, &after),
                "{}",
                intents[0]
            );
            checked += 1;
            (records, before, after)
        }};
    }

    // A full update: the zero values it writes are changes too (no `model_limits` sent).
    let now = stored(&upstream, a).unwrap();
    let mut body: Value = serde_json::from_str(&full_update(
        a,
        &now,
        json!({"name": "ci-2", "remain_quota": 2_000_000}),
    ))
    .unwrap();
    body.as_object_mut().unwrap().remove("model_limits");
    let (_, before, after) = change!(a, "PUT", "/api/token/", Some(&body.to_string()));
    assert_eq!(before["remain_quota"], 499_000);
    assert_eq!(after["remain_quota"], 2_000_000);
    // The before-read went first, under the lock, then the write.
    assert_eq!(
        seen(&upstream),
        [format!("GET /api/token/{a}"), "PUT /api/token/".into()]
    );

    // E3: leaving the `auto` group clears `auto_groups` and `cross_group_retry`.
    let now = stored(&upstream, auto).unwrap();
    let body = full_update(auto, &now, json!({"group": "", "cross_group_retry": false}));
    let (records, _, _) = change!(auto, "PUT", "/api/token/", Some(&body));
    let fields: Vec<&str> = records[0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["auto_groups", "cross_group_retry", "group"]);

    // A status-only update (the whole token in the body, as new-api's page sends it) changes
    // `status` alone.
    let now = stored(&upstream, a).unwrap();
    let mut body: Value =
        serde_json::from_str(&full_update(a, &now, json!({"name": "ignored"}))).unwrap();
    body["status"] = json!(2);
    let (records, _, _) = change!(
        a,
        "PUT",
        "/api/token/?status_only=true",
        Some(&body.to_string())
    );
    assert_eq!(
        records[0]["changes"],
        json!([{"field": "status", "from": 1, "to": 2}])
    );

    // A no-op update: `changes` is empty, `before` is still there.
    let now = stored(&upstream, a).unwrap();
    let body = full_update(a, &now, json!({}));
    let (records, _, _) = change!(a, "PUT", "/api/token/", Some(&body));
    assert_eq!(records[0]["changes"], json!([]));
    assert_eq!(records[0]["before"]["name"], "ci-2");

    // A PATCH reuses its own read: one GET, one PUT.
    let (_, before, _) = change!(
        a,
        "PATCH",
        format!("/api/token/{a}"),
        Some(r#"{"remain_quota":42}"#)
    );
    assert_eq!(
        seen(&upstream),
        [format!("GET /api/token/{a}"), "PUT /api/token/".into()]
    );
    assert_eq!(before["remain_quota"], 2_000_000);

    // A PATCH with `status` and another field sends two PUTs: the second's `before` is the token
    // as the first left it, and the two `changes` together are the whole change.
    let before = stored(&upstream, a).unwrap();
    let reply = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{a}"),
        Some(r#"{"remain_quota":43,"status":1}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let after = stored(&upstream, a).unwrap();
    let records = of_request(&audit_records(&gateway.audit_path), &reply);
    let two = intents(&records);
    assert_eq!(two.len(), 2, "{records:#?}");
    assert_eq!(two[0]["before"], before);
    assert_eq!(
        two[0]["changes"],
        json!([{"field": "remain_quota", "from": 42, "to": 43}])
    );
    let mut middle = after.clone();
    middle["status"] = before["status"].clone();
    assert_eq!(two[1]["before"], middle);
    assert_eq!(
        two[1]["changes"],
        json!([{"field": "status", "from": 2, "to": 1}])
    );
    checked += 1;

    // A fan-out batch update: each id's intent has its own token's before and changes.
    let befores = [stored(&upstream, a).unwrap(), stored(&upstream, c).unwrap()];
    let reply = admin(
        gateway.addr,
        "PUT",
        "/api/token/batch",
        Some(
            &json!({"ids": [a, c], "update_fields": ["remain_quota", "model_limits"],
                     "remain_quota": 7, "model_limits": ""})
            .to_string(),
        ),
    )
    .await;
    assert_eq!(
        reply.json()["data"]["updated"],
        json!([a, c]),
        "{}",
        reply.text()
    );
    let records = of_request(&audit_records(&gateway.audit_path), &reply);
    for (id, before) in [a, c].into_iter().zip(befores) {
        let intent = intents(&records)
            .into_iter()
            .find(|r| r["token_ids"] == json!([id]))
            .unwrap()
            .clone();
        assert_eq!(intent["before"], before);
        assert_eq!(
            intent["changes"],
            diff(&before, &stored(&upstream, id).unwrap())
        );
        checked += 1;
    }
    let c_changes = &intents(&records)
        .into_iter()
        .find(|r| r["token_ids"] == json!([c]))
        .unwrap()["changes"];
    assert_eq!(c_changes.as_array().unwrap().len(), 2, "{c_changes}");

    // A delete: `before` is what was deleted, `changes` null.
    let before = stored(&upstream, c).unwrap();
    let reply = admin(gateway.addr, "DELETE", &format!("/api/token/{c}"), None).await;
    assert_eq!(reply.json()["success"], true);
    assert!(stored(&upstream, c).is_none());
    let records = of_request(&audit_records(&gateway.audit_path), &reply);
    assert_eq!(intents(&records)[0]["before"], before);
    assert_eq!(intents(&records)[0]["changes"], Value::Null);
    checked += 1;

    // A batch delete: an intent and an outcome per id, each with that token's `before`, and
    // one request upstream.
    let befores = [stored(&upstream, a).unwrap(), stored(&upstream, d).unwrap()];
    upstream.emulator.clear_seen();
    let reply = admin(
        gateway.addr,
        "POST",
        "/api/token/batch",
        Some(&json!({"ids": [a, d]}).to_string()),
    )
    .await;
    assert_eq!(reply.json()["data"], 2, "{}", reply.text());
    assert!(stored(&upstream, a).is_none() && stored(&upstream, d).is_none());
    // The reads (made side by side) before the one write.
    let mut reads = seen(&upstream);
    assert_eq!(reads.pop().as_deref(), Some("POST /api/token/batch"));
    reads.sort();
    let mut expected = [format!("GET /api/token/{a}"), format!("GET /api/token/{d}")];
    expected.sort();
    assert_eq!(reads, expected);
    let records = of_request(&audit_records(&gateway.audit_path), &reply);
    assert_eq!(records.len(), 4, "{records:#?}");
    for (id, before) in [a, d].into_iter().zip(befores) {
        let mine: Vec<&Value> = records
            .iter()
            .filter(|r| r["token_ids"] == json!([id]))
            .collect();
        assert_eq!(mine.len(), 2, "{records:#?}");
        assert_eq!(mine[0]["phase"], "intent");
        assert_eq!(mine[0]["before"], before);
        assert_eq!(mine[0]["changes"], Value::Null);
        assert_eq!(mine[1]["outcome"], "forwarded");
        assert_eq!(mine[1]["request"], json!({"ids": [a, d]}));
        checked += 1;
    }

    // A create: `before` null, `changes` every field it sets, with new-api's defaults.
    let reply = admin(
        gateway.addr,
        "POST",
        "/api/token/",
        Some(r#"{"name":"fresh","remain_quota":100}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true);
    let created = upstream
        .emulator
        .tokens()
        .into_iter()
        .find(|t| t.name == "fresh")
        .unwrap();
    let records = of_request(&audit_records(&gateway.audit_path), &reply);
    assert_eq!(intents(&records)[0]["before"], Value::Null);
    assert_eq!(
        intents(&records)[0]["changes"],
        diff(&json!({}), &stored(&upstream, created.id).unwrap())
    );
    checked += 1;
    assert_eq!(checked, 12, "every change above was checked");

    gateway.shutdown().await.unwrap();
    let (code, stdout, stderr) = audit_verify_trail(&gateway.audit_path);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // No secret and no key, masked or not, in any record.
    let text = std::fs::read_to_string(&gateway.audit_path).unwrap();
    for secret in [UPSTREAM_TOKEN, ADMIN_KEY, AUDIT_KEY] {
        assert!(!text.contains(secret), "a secret leaked into the trail");
    }
    for token in upstream.emulator.tokens() {
        assert!(
            !text.contains(&token.key),
            "token {}'s key leaked",
            token.id
        );
    }
    assert!(!text.contains("****"), "a masked key in the trail");
    for record in audit_records(&gateway.audit_path) {
        if let Some(before) = record["before"].as_object() {
            for field in [
                "key",
                "id",
                "user_id",
                "used_quota",
                "created_time",
                "accessed_time",
            ] {
                assert!(!before.contains_key(field), "{field} in {record}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_capture_before_nothing_extra_is_read_and_before_is_null() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(upstream.addr);
    options.audit_extra = "capture_before = false\n".into();
    let gateway = TestGateway::start(options).await;
    let a = seed(&upstream, "a", NewToken::default());
    let b = seed(&upstream, "b", NewToken::default());
    let now = stored(&upstream, a).unwrap();

    upstream.emulator.clear_seen();
    let body = full_update(a, &now, json!({"remain_quota": 5}));
    let reply = admin(gateway.addr, "PUT", "/api/token/", Some(&body)).await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    assert_eq!(seen(&upstream), ["PUT /api/token/"], "one upstream request");
    let records = of_request(&audit_records(&gateway.audit_path), &reply);
    assert_eq!(records[0]["phase"], "intent");
    assert_eq!(records[0]["before"], Value::Null);
    assert_eq!(records[0]["changes"], Value::Null);

    // A PATCH reads the token anyway, so its intent still says what it was.
    let before = stored(&upstream, a).unwrap();
    let reply = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{a}"),
        Some(r#"{"name":"renamed"}"#),
    )
    .await;
    let records = of_request(&audit_records(&gateway.audit_path), &reply);
    assert_eq!(records[0]["before"], before);
    assert_eq!(
        records[0]["changes"],
        json!([{"field": "name", "from": "a", "to": "renamed"}])
    );

    // Deletes, one or several: null, and still one intent per token of a batch.
    upstream.emulator.clear_seen();
    let reply = admin(
        gateway.addr,
        "POST",
        "/api/token/batch",
        Some(&json!({"ids": [a, b]}).to_string()),
    )
    .await;
    assert_eq!(reply.json()["data"], 2);
    assert_eq!(seen(&upstream), ["POST /api/token/batch"]);
    let records = of_request(&audit_records(&gateway.audit_path), &reply);
    let intents = intents(&records);
    assert_eq!(intents.len(), 2);
    for (intent, id) in intents.iter().zip([a, b]) {
        assert_eq!(intent["token_ids"], json!([id]));
        assert_eq!(
            (&intent["before"], &intent["changes"]),
            (&Value::Null, &Value::Null)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_before_read_cannot_find_or_read_is_refused_and_nothing_is_sent() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(upstream.addr);
    options.upstream_timeout_ms = 300;
    let gateway = TestGateway::start(options).await;
    let a = seed(&upstream, "a", NewToken::default());
    let now = stored(&upstream, a).unwrap();

    // A full update of a token that does not exist: 404, only the read went upstream.
    upstream.emulator.clear_seen();
    let body = full_update(424_242, &now, json!({}));
    let reply = admin(gateway.addr, "PUT", "/api/token/", Some(&body)).await;
    reply.assert_envelope(404, "not_found");
    assert_eq!(seen(&upstream), ["GET /api/token/424242"]);
    let records = of_request(&audit_records(&gateway.audit_path), &reply);
    assert_eq!(records.len(), 1, "no intent: {records:#?}");
    assert_eq!(records[0]["outcome"], "rejected");
    assert_eq!(records[0]["reason"], "not_found");

    // A batch delete naming one missing token deletes nothing.
    upstream.emulator.clear_seen();
    let reply = admin(
        gateway.addr,
        "POST",
        "/api/token/batch",
        Some(&json!({"ids": [a, 424_242]}).to_string()),
    )
    .await;
    reply.assert_envelope(404, "not_found");
    assert!(stored(&upstream, a).is_some());
    assert!(!seen(&upstream).contains(&"POST /api/token/batch".to_string()));

    // A read that times out fails the request as that upstream failure, unforwarded.
    upstream.emulator.set_delay(Duration::from_millis(600));
    upstream.emulator.clear_seen();
    let reply = admin(gateway.addr, "DELETE", &format!("/api/token/{a}"), None).await;
    reply.assert_envelope(504, "upstream_timeout");
    upstream.emulator.set_delay(Duration::ZERO);
    assert_eq!(seen(&upstream), [format!("GET /api/token/{a}")]);
    assert!(stored(&upstream, a).is_some());
    let records = of_request(&audit_records(&gateway.audit_path), &reply);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["outcome"], "rejected");
}
