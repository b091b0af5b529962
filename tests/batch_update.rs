//! `PUT /api/token/batch` (SPEC §4.6) against the emulator, which like new-api has no such route:
//! fan-out applies the named fields to each id by read-merge-write and reports every id; the
//! comma-string and array forms of `ids` are the same; fields present but not named are reported
//! and left alone; native mode forwards one request. Also the per-PUT audit records of a PATCH
//! and of each id of a batch (SPEC §6).

mod support;

use serde_json::{json, Value};
use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig, NewToken};

fn token(name: &str) -> NewToken {
    NewToken {
        name: name.into(),
        expired_time: 4_000_000_000,
        remain_quota: 500,
        model_limits_enabled: true,
        model_limits: "gpt-4o".into(),
        allow_ips: Some("10.0.0.0/8".into()),
        group: "team".into(),
        ..NewToken::default()
    }
}

async fn batch(gateway: &TestGateway, body: Value) -> Reply {
    admin(
        gateway.addr,
        "PUT",
        "/api/token/batch",
        Some(&body.to_string()),
    )
    .await
}

fn records_of(gateway: &TestGateway, reply: &Reply) -> Vec<Value> {
    let rid = reply.headers["x-request-id"].to_str().unwrap().to_string();
    audit_records(&gateway.audit_path)
        .into_iter()
        .filter(|r| r["request_id"] == rid.as_str())
        .collect()
}

#[tokio::test]
async fn a_batch_with_a_missing_id_reports_it_and_updates_the_others() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let a = upstream.emulator.insert_token(USER_ID, token("a"));
    let b = upstream.emulator.insert_token(USER_ID, token("b"));
    let missing = 9_999;
    let before_a = get_token(&gateway, a).await;

    upstream.emulator.clear_seen();
    let reply = batch(
        &gateway,
        json!({"ids": [a, missing, b], "update_fields": ["group", "remain_quota"],
            "group": "vip", "remain_quota": 7}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["success"], false, "{answer}");
    assert_eq!(answer["data"]["updated"], json!([a, b]));
    let failed = answer["data"]["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["id"], missing);
    assert_eq!(failed[0]["code"], "not_found");
    assert!(
        failed[0]["message"].as_str().unwrap().contains("9999"),
        "{answer}"
    );
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("updated 2 of 3"),
        "{answer}"
    );

    // Each updated token changed in the named fields only.
    let mut expected = before_a;
    expected["group"] = json!("vip");
    expected["remain_quota"] = json!(7);
    assert_eq!(get_token(&gateway, a).await, expected);
    assert_eq!(get_token(&gateway, b).await["group"], "vip");
    // One read and one full PUT per existing id, a read alone for the missing one: no batch
    // route was ever asked of the upstream.
    let seen = upstream.emulator.seen();
    let count = |method: &str| seen.iter().filter(|s| s.method == method).count();
    assert_eq!((count("GET"), count("PUT")), (3 + 2, 2));
    assert!(seen.iter().all(|s| s.uri.path() != "/api/token/batch"));

    // Per id: an intent and an outcome for each PUT, an outcome alone for the missing id, all
    // under the batch's request id, each naming its one id; no record for the batch as a whole.
    let records = records_of(&gateway, &reply);
    let of = |id: i64| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["token_ids"] == json!([id]))
            .map(|r| r["phase"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(of(a), ["intent", "outcome"]);
    assert_eq!(of(b), ["intent", "outcome"]);
    assert_eq!(of(missing), ["outcome"]);
    assert_eq!(records.len(), 5);
    for record in &records {
        assert_eq!(record["op"], "batch_update");
        assert_eq!(record["path"], "/api/token/batch");
    }
    let intent_a = records
        .iter()
        .find(|r| r["token_ids"] == json!([a]) && r["phase"] == "intent")
        .unwrap();
    assert_eq!(intent_a["request"]["group"], "vip");
    assert_eq!(intent_a["request"]["name"], "a", "the merged token");
    let lost = records
        .iter()
        .find(|r| r["token_ids"] == json!([missing]))
        .unwrap();
    assert_eq!(
        (&lost["outcome"], &lost["reason"]),
        (&json!("rejected"), &json!("not_found"))
    );
    // It still shows what was asked of it.
    assert_eq!(lost["request"], json!({"group": "vip", "remain_quota": 7}));
    let (code, _, _) = audit_verify_trail(&gateway.audit_path);
    assert_eq!(code, 0);
}

#[tokio::test]
async fn ids_as_a_comma_string_or_an_array_give_the_same_result() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let ids: Vec<i64> = (0..4)
        .map(|i| {
            upstream
                .emulator
                .insert_token(USER_ID, token(&format!("t{i}")))
        })
        .collect();
    let array = batch(
        &gateway,
        json!({"ids": [ids[0], ids[1]], "update_fields": ["remain_quota"], "remain_quota": 42}),
    )
    .await;
    let string = batch(
        &gateway,
        json!({"ids": format!("{}, {}", ids[2], ids[3]), "update_fields": ["remain_quota"], "remain_quota": 42}),
    )
    .await;
    for (reply, pair) in [(&array, &ids[0..2]), (&string, &ids[2..4])] {
        let answer = reply.json();
        assert_eq!(answer["success"], true, "{answer}");
        assert_eq!(answer["data"]["updated"], json!(pair));
        assert_eq!(answer["data"]["failed"], json!([]));
    }
    for id in &ids {
        assert_eq!(get_token(&gateway, *id).await["remain_quota"], 42);
    }
    // Neither form of a bad list reaches the upstream.
    upstream.emulator.clear_seen();
    for bad in [json!("1,,2"), json!([1, 1]), json!(""), json!({"a": 1})] {
        batch(
            &gateway,
            json!({"ids": bad, "update_fields": ["remain_quota"], "remain_quota": 1}),
        )
        .await
        .assert_envelope(400, "invalid_field");
    }
    assert!(upstream.emulator.seen().is_empty());
}

#[tokio::test]
async fn a_field_present_but_not_named_is_reported_and_left_as_it_was() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let id = upstream.emulator.insert_token(USER_ID, token("keep"));
    let reply = batch(
        &gateway,
        json!({"ids": [id], "update_fields": ["remain_quota"], "remain_quota": 9,
            "group": "vip", "name": "renamed"}),
    )
    .await;
    let answer = reply.json();
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["data"]["ignored"], json!(["group", "name"]));
    assert!(
        answer["message"].as_str().unwrap().contains("group, name"),
        "{answer}"
    );
    let stored = get_token(&gateway, id).await;
    assert_eq!(
        (&stored["remain_quota"], &stored["group"], &stored["name"]),
        (&json!(9), &json!("team"), &json!("keep"))
    );
    // A named field without a value, and an unstored fork field in fan-out mode, are refused.
    batch(
        &gateway,
        json!({"ids": [id], "update_fields": ["group"], "name": "x"}),
    )
    .await
    .assert_envelope(400, "invalid_field");
    let reply = batch(
        &gateway,
        json!({"ids": [id], "update_fields": ["mj_image_mode"], "mj_image_mode": "fast"}),
    )
    .await;
    reply.assert_envelope(400, "invalid_field");
    assert_eq!(reply.json()["error"]["field"], "mj_image_mode");
    assert!(reply.text().contains("native"), "{}", reply.text());
}

#[tokio::test]
async fn native_mode_forwards_one_request() {
    let emulator = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(emulator.addr);
    options.upstream_extra = "batch_update = \"native\"\n".into();
    // The emulator (new-api) has no batch update and no tokens 873 and 869 for the before-read
    // to find: this test is about what is forwarded.
    options.audit_extra = "capture_before = false\n".into();
    let gateway = TestGateway::start(options).await;
    let reply = batch(
        &gateway,
        json!({"ids": "873, 869", "update_fields": ["group", "mj_image_mode"], "group": "vip",
            "mj_image_mode": "fast", "remain_quota": 5}),
    )
    .await;
    let seen = emulator.emulator.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.to_string()),
        ("PUT", "/api/token/batch".to_string())
    );
    let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        sent,
        json!({"ids": "873, 869", "update_fields": ["group", "mj_image_mode"], "group": "vip",
            "mj_image_mode": "fast"})
    );
    // new-api has no such route: its own answer reaches the caller untouched.
    assert_eq!(reply.status, 404);
    assert!(reply.text().contains("Invalid URL"), "{}", reply.text());
    // One request upstream, and an intent and an outcome per id (SPEC §6.1: each id's own
    // `before`, null here without the before-read).
    let records = records_of(&gateway, &reply);
    assert_eq!(records.len(), 4);
    let ids: Vec<(&str, &Value)> = records
        .iter()
        .map(|r| (r["phase"].as_str().unwrap(), &r["token_ids"]))
        .collect();
    assert_eq!(
        ids,
        [
            ("intent", &json!([873])),
            ("intent", &json!([869])),
            ("outcome", &json!([873])),
            ("outcome", &json!([869]))
        ]
    );
    assert_eq!(records[0]["before"], Value::Null);
}

#[tokio::test]
async fn a_patch_writes_records_for_each_put() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let id = upstream.emulator.insert_token(USER_ID, token("p"));
    let reply = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{id}"),
        Some(r#"{"status": 2, "remain_quota": 3}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let records = records_of(&gateway, &reply);
    let phases: Vec<&str> = records
        .iter()
        .map(|r| r["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["intent", "outcome", "intent", "outcome"]);
    assert_eq!(records[0]["request"]["remain_quota"], 3);
    assert!(records[0]["request"].get("status").is_none());
    assert_eq!(records[2]["request"], json!({"id": id, "status": 2}));
    for record in &records {
        assert_eq!(record["token_ids"], json!([id]));
    }
    assert_eq!(records[1]["upstream_success"], true);
    assert_eq!(records[3]["upstream_success"], true);
    let stored = get_token(&gateway, id).await;
    assert_eq!(
        (&stored["status"], &stored["remain_quota"]),
        (&json!(2), &json!(3))
    );
}

#[tokio::test]
async fn policy_refuses_a_batch_whose_values_break_it_and_judges_each_token() {
    let emulator = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let key = "tg_batch_policy_key_66666666666666666666666666666666666666666666666";
    let mut options = Options::new(emulator.addr);
    options.clients = Some(client_entry(
        "team",
        key,
        "name_prefix = \"team-\"\nmax_remain_quota = 1000",
    ));
    options.limits = "batch_concurrency = 2\n".into();
    let gateway = TestGateway::start(options).await;
    let mine = emulator.emulator.insert_token(USER_ID, token("team-a"));
    let theirs = emulator.emulator.insert_token(USER_ID, token("ops-b"));
    let put = |body: Value| {
        let auth = format!("Bearer {key}");
        async move {
            send(
                gateway.addr,
                "PUT",
                "/api/token/batch",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                Some(&body.to_string()),
            )
            .await
        }
    };
    // A quota over the cap breaks the policy whatever the token: refused whole, nothing read.
    emulator.emulator.clear_seen();
    put(json!({"ids": [mine, theirs], "update_fields": ["remain_quota"], "remain_quota": 1001}))
        .await
        .assert_envelope(403, "forbidden");
    assert!(emulator.emulator.seen().is_empty());
    // Within the cap, each token is judged merged: the one outside the prefix fails alone.
    let reply =
        put(json!({"ids": [mine, theirs], "update_fields": ["remain_quota"], "remain_quota": 10}))
            .await;
    let answer = reply.json();
    assert_eq!(answer["success"], false, "{answer}");
    assert_eq!(answer["data"]["updated"], json!([mine]));
    assert_eq!(answer["data"]["failed"][0]["id"], theirs);
    assert_eq!(answer["data"]["failed"][0]["code"], "forbidden");
    assert!(
        answer["data"]["failed"][0]["message"]
            .as_str()
            .unwrap()
            .contains("name_prefix"),
        "{answer}"
    );
    let puts = emulator
        .emulator
        .seen()
        .iter()
        .filter(|s| s.method == "PUT")
        .count();
    assert_eq!(puts, 1);
}

#[tokio::test]
async fn batches_and_patches_of_one_token_take_turns() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let a = upstream.emulator.insert_token(USER_ID, token("a"));
    let b = upstream.emulator.insert_token(USER_ID, token("b"));
    let path = format!("/api/token/{a}");
    let batches = (0..10).map(|i| {
        batch(
            &gateway,
            json!({"ids": [a, b], "update_fields": ["remain_quota"], "remain_quota": 100 + i}),
        )
    });
    let patches = (0..10).map(|i| {
        let body = format!(r#"{{"name": "n{i}"}}"#);
        let path = path.clone();
        let addr = gateway.addr;
        async move { admin(addr, "PATCH", &path, Some(&body)).await }
    });
    let (batches, patches) = futures_util::future::join(
        futures_util::future::join_all(batches),
        futures_util::future::join_all(patches),
    )
    .await;
    for reply in batches.iter().chain(&patches) {
        assert_eq!(reply.json()["success"], true, "{}", reply.text());
    }
    // Every full PUT of token `a` was made from what the one before it wrote: consecutive PUTs
    // differ in one field at most, so no read-merge-write lost another's change.
    let puts: Vec<Value> = upstream
        .emulator
        .seen()
        .iter()
        .filter(|s| s.method == "PUT")
        .map(|s| serde_json::from_slice::<Value>(&s.body).unwrap())
        .filter(|body| body["id"] == a)
        .collect();
    assert_eq!(puts.len(), 20);
    for pair in puts.windows(2) {
        let changed = pair[1]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, v)| pair[0][k.as_str()] != **v)
            .count();
        assert!(changed <= 1, "{} then {}", pair[0], pair[1]);
    }
    let last = puts.last().unwrap();
    let stored = get_token(&gateway, a).await;
    assert_eq!(
        (&stored["name"], &stored["remain_quota"]),
        (&last["name"], &last["remain_quota"])
    );
}

#[tokio::test]
async fn a_fan_out_runs_at_most_batch_concurrency_ids_at_once() {
    let emulator = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(emulator.addr);
    options.limits = "batch_concurrency = 2\n".into();
    let gateway = TestGateway::start(options).await;
    let ids: Vec<i64> = (0..6)
        .map(|i| {
            emulator
                .emulator
                .insert_token(USER_ID, token(&format!("c{i}")))
        })
        .collect();
    // Each id is a read then a PUT, each answered after 300 ms: two at a time take at least
    // three rounds of 600 ms (three at a time would take two). A lower bound: a busy machine
    // only makes it slower.
    emulator
        .emulator
        .set_delay(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let reply = batch(
        &gateway,
        json!({"ids": ids, "update_fields": ["remain_quota"], "remain_quota": 1}),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1_700),
        "{:?}: more than two ids ran at once",
        started.elapsed()
    );
}
