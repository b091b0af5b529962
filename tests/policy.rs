//! Client policy (SPEC §5) as a caller sees it: each refusal is a 403 `forbidden` naming the rule
//! and the field, nothing reaches the upstream (beyond the reads `name_prefix` needs), and the
//! audit trail records the refusal with its reason.

mod support;

use serde_json::Value;
use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig, NewToken, RunningEmulator};

const TEAM_KEY: &str = "tg_team_key_for_policy_tests_2222222222222222222222222222222222";

/// A gateway whose client `team` has `policy`, in front of an emulator.
async fn gateway_with(policy: &str) -> (RunningEmulator, TestGateway) {
    let emulator = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(emulator.addr);
    options.clients = Some(client_entry("team", TEAM_KEY, policy));
    (emulator, TestGateway::start(options).await)
}

async fn team(gateway: &TestGateway, method: &str, path: &str, body: Option<&str>) -> Reply {
    let auth = format!("Bearer {TEAM_KEY}");
    let mut headers = vec![("authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    send(gateway.addr, method, path, &headers, body).await
}

fn outcome_of<'a>(records: &'a [Value], reply: &Reply) -> &'a Value {
    let id = reply.headers["x-request-id"].to_str().unwrap();
    let mine: Vec<&Value> = records.iter().filter(|r| r["request_id"] == id).collect();
    assert_eq!(mine.len(), 1, "a refusal has one outcome record: {mine:#?}");
    mine[0]
}

fn token(name: &str) -> NewToken {
    NewToken {
        name: name.into(),
        ..NewToken::default()
    }
}

#[tokio::test]
async fn each_rule_refuses_a_create_with_its_rule_and_field_and_nothing_is_forwarded() {
    let (upstream, gateway) = gateway_with(
        r#"max_remain_quota = 1000
allow_unlimited_quota = false
groups = ["team"]
models = ["gpt-4o", "o3"]
max_expiry_days = 30
name_prefix = "team-""#,
    )
    .await;
    let now = unix_now();
    let good = serde_json::json!({"name": "team-ci", "remain_quota": 1000, "group": "team",
        "model_limits_enabled": true, "model_limits": "o3", "expired_time": now + 29 * 86400});
    let with = |key: &str, value: Value| {
        let mut body = good.clone();
        body[key] = value;
        body.to_string()
    };
    let cases = [
        (
            with("remain_quota", 1001.into()),
            "max_remain_quota",
            "remain_quota",
        ),
        (
            with("unlimited_quota", true.into()),
            "allow_unlimited_quota",
            "unlimited_quota",
        ),
        (with("group", "vip".into()), "groups", "group"),
        (
            with("model_limits", "o3,claude".into()),
            "models",
            "model_limits",
        ),
        (
            with("expired_time", (now + 31 * 86400).into()),
            "max_expiry_days",
            "expired_time",
        ),
        (
            with("expired_time", (-1).into()),
            "max_expiry_days",
            "expired_time",
        ),
        (with("name", "other-ci".into()), "name_prefix", "name"),
    ];
    for (body, rule, field) in cases {
        upstream.emulator.clear_seen();
        let reply = team(&gateway, "POST", "/api/token/", Some(&body)).await;
        reply.assert_envelope(403, "forbidden");
        let json = reply.json();
        assert_eq!(json["error"]["field"], field, "{json}");
        assert!(json["message"].as_str().unwrap().contains(rule), "{json}");
        assert!(
            upstream.emulator.seen().is_empty(),
            "{rule}: the upstream saw it"
        );
        assert!(
            reply.headers.get("ratelimit").is_some(),
            "allowed by the limit: RateLimit says so"
        );

        let records = audit_records(&gateway.audit_path);
        let outcome = outcome_of(&records, &reply);
        assert_eq!(outcome["outcome"], "rejected");
        assert_eq!(outcome["reason"], "forbidden");
        assert_eq!(outcome["status"], 403);
        assert_eq!(outcome["client"], "team");
        assert_eq!(
            outcome["request"]["name"],
            serde_json::from_str::<Value>(&body).unwrap()["name"]
        );
    }
    // The same body inside every rule is created.
    let reply = team(&gateway, "POST", "/api/token/", Some(&good.to_string())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["success"], true);
    assert_eq!(upstream.emulator.tokens().len(), 1);

    // Several rules broken at once: all named, the first field in `field`.
    let reply = team(
        &gateway,
        "POST",
        "/api/token/",
        Some(r#"{"name":"x","remain_quota":5000,"unlimited_quota":true}"#),
    )
    .await;
    reply.assert_envelope(403, "forbidden");
    let fields = reply.json()["error"]["fields"].clone();
    assert_eq!(
        fields,
        serde_json::json!([
            "unlimited_quota",
            "remain_quota",
            "group",
            "model_limits",
            "expired_time",
            "name"
        ])
    );

    let metrics = send(gateway.admin, "GET", "/metrics", &[], None)
        .await
        .text();
    assert!(
        metrics.contains(
            r#"tokengate_policy_refusals_total{client="team",rule="max_remain_quota"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tokengate_policy_refusals_total{client="team",rule="name_prefix"} 2"#)
    );
}

#[tokio::test]
async fn name_prefix_reads_the_current_name_before_a_change_reveal_or_delete() {
    let (upstream, gateway) = gateway_with(r#"name_prefix = "team-""#).await;
    let ours = upstream.emulator.insert_token(USER_ID, token("team-ci"));
    let theirs = upstream.emulator.insert_token(USER_ID, token("ops-prod"));

    // Outside the prefix: refused after one read, and the change never sent.
    for (method, path, body) in [
        ("DELETE", format!("/api/token/{theirs}"), None),
        ("POST", format!("/api/token/{theirs}/key"), None),
        (
            "PUT",
            "/api/token/?status_only=true".to_string(),
            Some(format!(r#"{{"id":{theirs},"status":2}}"#)),
        ),
    ] {
        upstream.emulator.clear_seen();
        let reply = team(&gateway, method, &path, body.as_deref()).await;
        reply.assert_envelope(403, "forbidden");
        assert_eq!(reply.json()["error"]["field"], "name");
        assert!(reply.text().contains("name_prefix"), "{}", reply.text());
        let seen = upstream.emulator.seen();
        assert_eq!(seen.len(), 1, "{method} {path}: only the read");
        assert_eq!(seen[0].method, "GET");
        assert_eq!(seen[0].uri.path(), format!("/api/token/{theirs}"));
        // The read carries the held credential and the request id, like any upstream request.
        assert_eq!(seen[0].headers["authorization"], UPSTREAM_TOKEN);
        assert_eq!(seen[0].headers["new-api-user"], USER_ID.to_string());
    }
    assert_eq!(
        upstream
            .emulator
            .tokens()
            .iter()
            .filter(|t| t.status == 1)
            .count(),
        2
    );

    // A rename of our own token to a name outside the prefix: refused without a read.
    upstream.emulator.clear_seen();
    let rename = format!(
        r#"{{"id":{ours},"name":"ops-x","expired_time":-1,"remain_quota":0,"unlimited_quota":false,"model_limits_enabled":false,"model_limits":"","allow_ips":"","group":""}}"#
    );
    team(&gateway, "PUT", "/api/token/", Some(&rename))
        .await
        .assert_envelope(403, "forbidden");
    assert!(upstream.emulator.seen().is_empty());

    // A full update of someone else's token to a name inside the prefix: refused on the read.
    let takeover = rename
        .replace(&format!("\"id\":{ours}"), &format!("\"id\":{theirs}"))
        .replace("ops-x", "team-mine");
    team(&gateway, "PUT", "/api/token/", Some(&takeover))
        .await
        .assert_envelope(403, "forbidden");
    assert_eq!(upstream.emulator.seen().len(), 1);

    // Inside the prefix: read, then done.
    upstream.emulator.clear_seen();
    let reply = team(&gateway, "POST", &format!("/api/token/{ours}/key"), None).await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let reply = team(&gateway, "DELETE", &format!("/api/token/{ours}"), None).await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let methods: Vec<String> = upstream
        .emulator
        .seen()
        .iter()
        .map(|s| s.method.to_string())
        .collect();
    assert_eq!(methods, ["GET", "POST", "GET", "DELETE"]);

    // list and search are not filtered by name_prefix (names are visible, keys stay masked).
    let listed = team(&gateway, "GET", "/api/token/", None).await.json();
    let names: Vec<&str> = listed["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"ops-prod"), "{listed}");

    // A token that does not exist cannot be checked: 404, nothing changed.
    upstream.emulator.clear_seen();
    team(&gateway, "DELETE", "/api/token/999", None)
        .await
        .assert_envelope(404, "not_found");
    assert_eq!(upstream.emulator.seen().len(), 1);
}

#[tokio::test]
async fn a_batch_with_one_id_outside_the_prefix_is_refused_whole() {
    let (upstream, gateway) = gateway_with(r#"name_prefix = "team-""#).await;
    let a = upstream.emulator.insert_token(USER_ID, token("team-a"));
    let b = upstream.emulator.insert_token(USER_ID, token("team-b"));
    let other = upstream.emulator.insert_token(USER_ID, token("ops"));

    let body = format!(r#"{{"ids":[{a},{other},{b}]}}"#);
    for path in ["/api/token/batch", "/api/token/batch/keys"] {
        upstream.emulator.clear_seen();
        let reply = team(&gateway, "POST", path, Some(&body)).await;
        reply.assert_envelope(403, "forbidden");
        assert!(
            reply.text().contains(&format!("token {other}")),
            "{}",
            reply.text()
        );
        assert!(
            upstream.emulator.seen().iter().all(|s| s.method == "GET"),
            "{path}: only reads"
        );
        assert_eq!(upstream.emulator.seen().len(), 3);
    }
    assert_eq!(upstream.emulator.tokens().len(), 3);

    let records = audit_records(&gateway.audit_path);
    let last = records.last().unwrap();
    assert_eq!(
        (last["reason"].as_str(), last["op"].as_str()),
        (Some("forbidden"), Some("reveal_key"))
    );
    assert_eq!(last["token_ids"], serde_json::json!([a, other, b]));

    // The same batch without the foreign id goes through.
    let reply = team(
        &gateway,
        "POST",
        "/api/token/batch",
        Some(&format!(r#"{{"ids":[{a},{b}]}}"#)),
    )
    .await;
    assert_eq!(reply.json()["data"], 2, "{}", reply.text());
}

#[tokio::test]
async fn a_client_without_rules_writes_what_the_body_rules_allow() {
    let (upstream, gateway) = gateway_with("allow_unlimited_quota = true").await;
    let reply = team(
        &gateway,
        "POST",
        "/api/token/",
        Some(r#"{"name":"anything","unlimited_quota":true,"expired_time":-1,"group":"vip"}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    assert_eq!(upstream.emulator.seen().len(), 1);
}

/// SPEC §5: `allow_unlimited_quota` is false for every client, including one with no policy key
/// at all; every way of writing an unlimited token is refused before anything is sent, and the
/// same requests pass for a client allowed unlimited tokens.
#[tokio::test]
async fn a_client_without_policy_keys_may_not_write_unlimited_tokens() {
    let (upstream, gateway) = gateway_with("").await;
    let unlimited = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            unlimited_quota: true,
            ..token("open")
        },
    );
    let limited = upstream.emulator.insert_token(USER_ID, token("closed"));
    let full_update = format!(
        r#"{{"id":{limited},"name":"closed","expired_time":-1,"remain_quota":0,"unlimited_quota":true,"model_limits_enabled":false,"model_limits":"","allow_ips":"","group":""}}"#
    );
    let batch = format!(
        r#"{{"ids":[{limited}],"update_fields":["unlimited_quota"],"unlimited_quota":true}}"#
    );
    let cases = [
        (
            "POST",
            "/api/token/".to_string(),
            r#"{"name":"x","unlimited_quota":true}"#.to_string(),
            0,
        ),
        ("PUT", "/api/token/".to_string(), full_update.clone(), 0),
        // A PATCH that keeps a stored unlimited token unlimited: judged on the merged token,
        // after its one read.
        (
            "PATCH",
            format!("/api/token/{unlimited}"),
            r#"{"name":"renamed"}"#.to_string(),
            1,
        ),
        ("PUT", "/api/token/batch".to_string(), batch.clone(), 0),
    ];
    for (method, path, body, reads) in &cases {
        upstream.emulator.clear_seen();
        let reply = team(&gateway, method, path, Some(body)).await;
        reply.assert_envelope(403, "forbidden");
        let json = reply.json();
        assert_eq!(
            json["error"]["field"], "unlimited_quota",
            "{method} {path}: {json}"
        );
        assert!(
            json["message"]
                .as_str()
                .unwrap()
                .contains("allow_unlimited_quota"),
            "{json}"
        );
        let seen = upstream.emulator.seen();
        assert_eq!(seen.len(), *reads, "{method} {path}: {seen:?}");
        assert!(seen.iter().all(|s| s.method == "GET"), "{method} {path}");
    }
    let stored = upstream.emulator.tokens();
    assert!(stored.iter().all(|t| t.name != "renamed" && t.name != "x"));
    assert!(
        !stored
            .iter()
            .find(|t| t.id == limited)
            .unwrap()
            .unlimited_quota
    );

    // Reads and changes that write no unlimited token still pass for that client.
    let reply = team(
        &gateway,
        "PATCH",
        &format!("/api/token/{unlimited}"),
        Some(r#"{"unlimited_quota":false,"remain_quota":5}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let reply = team(&gateway, "GET", "/api/token/", None).await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());

    // The same requests pass for a client allowed unlimited tokens.
    let (upstream, gateway) = gateway_with("allow_unlimited_quota = true").await;
    let unlimited = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            unlimited_quota: true,
            ..token("open")
        },
    );
    let limited = upstream.emulator.insert_token(USER_ID, token("closed"));
    assert_eq!((unlimited, limited), (1, 2), "the same ids as above");
    for (method, path, body, _) in &cases {
        let reply = team(&gateway, method, path, Some(body)).await;
        assert_eq!(reply.status, 200, "{method} {path}: {}", reply.text());
        assert_eq!(
            reply.json()["success"],
            true,
            "{method} {path}: {}",
            reply.text()
        );
    }
    let stored = upstream.emulator.tokens();
    assert!(
        stored
            .iter()
            .find(|t| t.id == limited)
            .unwrap()
            .unlimited_quota
    );
    assert!(stored
        .iter()
        .any(|t| t.name == "renamed" && t.unlimited_quota));
}

/// SPEC §5: a PATCH is judged on the merged token, including the stored values it sends back
/// unchanged that the body rules would refuse (SPEC §4.2): a stored expiry written in
/// milliseconds (centuries away) does not pass `max_expiry_days` under a rename.
#[tokio::test]
async fn a_patch_is_judged_on_the_stored_values_it_sends_back() {
    let (upstream, gateway) = gateway_with("max_expiry_days = 30").await;
    let now = unix_now();
    let id = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            expired_time: (now + 86_400) * 1000,
            ..token("far")
        },
    );
    let path = format!("/api/token/{id}");
    let reply = team(&gateway, "PATCH", &path, Some(r#"{"name":"renamed"}"#)).await;
    reply.assert_envelope(403, "forbidden");
    let json = reply.json();
    assert_eq!(json["error"]["field"], "expired_time", "{json}");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("max_expiry_days"),
        "{json}"
    );
    let seen = upstream.emulator.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "GET");
    // Setting an expiry within the rule in the same PATCH passes.
    let body = format!(r#"{{"name":"renamed","expired_time":{}}}"#, now + 86_400);
    let reply = team(&gateway, "PATCH", &path, Some(&body)).await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let stored = upstream.emulator.tokens();
    let stored = stored.iter().find(|t| t.id == id).unwrap();
    assert_eq!(
        (stored.name.as_str(), stored.expired_time),
        ("renamed", now + 86_400)
    );
}

/// SPEC §5: enabling a token puts the stored token back into use, so it is judged by every rule
/// on the stored token, whichever way it comes (status-only update, PATCH, fan-out batch);
/// disabling only restricts, so only `name_prefix` applies to it.
#[tokio::test]
async fn enabling_is_judged_on_the_stored_token_and_disabling_is_not() {
    let (upstream, gateway) = gateway_with(
        r#"max_remain_quota = 1000
groups = ["team"]
models = ["o3"]
max_expiry_days = 30"#,
    )
    .await;
    let now = unix_now();
    // A token this client could have written, disabled; then one breaking each rule in turn.
    let good = NewToken {
        status: 2,
        remain_quota: 1000,
        group: "team".into(),
        model_limits_enabled: true,
        model_limits: "o3".into(),
        expired_time: now + 86_400,
        ..token("fine")
    };
    let breaking: Vec<(&str, NewToken)> = vec![
        (
            "unlimited_quota",
            NewToken {
                unlimited_quota: true,
                ..good.clone()
            },
        ),
        (
            "remain_quota",
            NewToken {
                remain_quota: 1001,
                ..good.clone()
            },
        ),
        (
            "group",
            NewToken {
                group: "vip".into(),
                ..good.clone()
            },
        ),
        (
            "model_limits",
            NewToken {
                model_limits: "gpt-4o".into(),
                ..good.clone()
            },
        ),
        (
            "expired_time",
            NewToken {
                expired_time: -1,
                ..good.clone()
            },
        ),
    ];
    for (field, stored) in breaking {
        let id = upstream.emulator.insert_token(USER_ID, stored);
        let ways = [
            (
                "PUT",
                "/api/token/?status_only=true".to_string(),
                format!(r#"{{"id":{id},"status":1}}"#),
            ),
            (
                "PATCH",
                format!("/api/token/{id}"),
                r#"{"status":1}"#.to_string(),
            ),
        ];
        for (method, path, body) in &ways {
            upstream.emulator.clear_seen();
            let reply = team(&gateway, method, path, Some(body)).await;
            reply.assert_envelope(403, "forbidden");
            assert_eq!(reply.json()["error"]["field"], field, "{}", reply.text());
            assert!(
                reply.text().contains(&format!("token {id}")),
                "{}",
                reply.text()
            );
            let seen = upstream.emulator.seen();
            assert_eq!(
                seen.len(),
                1,
                "{field} by {method}: only the read: {seen:?}"
            );
            assert_eq!(seen[0].method, "GET");
        }
        // A fan-out batch naming only `status`: that id fails alone, with the same refusal.
        upstream.emulator.clear_seen();
        let batch = format!(r#"{{"ids":[{id}],"update_fields":["status"],"status":1}}"#);
        let reply = team(&gateway, "PUT", "/api/token/batch", Some(&batch)).await;
        let json = reply.json();
        assert_eq!(json["success"], false, "{json}");
        assert_eq!(json["data"]["failed"][0]["code"], "forbidden", "{json}");
        assert!(upstream.emulator.seen().iter().all(|s| s.method == "GET"));
        let stored = upstream.emulator.tokens();
        assert_eq!(
            stored.iter().find(|t| t.id == id).unwrap().status,
            2,
            "{field}: still disabled"
        );

        // Disabling the same token again is allowed: it only restricts.
        let reply = team(
            &gateway,
            "PUT",
            "/api/token/?status_only=true",
            Some(&format!(r#"{{"id":{id},"status":2}}"#)),
        )
        .await;
        assert_eq!(reply.json()["success"], true, "{}", reply.text());
    }

    // The token it could have written is enabled, by each way.
    let id = upstream.emulator.insert_token(USER_ID, good);
    let reply = team(
        &gateway,
        "PATCH",
        &format!("/api/token/{id}"),
        Some(r#"{"status":1}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let stored = upstream.emulator.tokens();
    assert_eq!(stored.iter().find(|t| t.id == id).unwrap().status, 1);
}

/// SPEC §5: a native batch update is judged like fan-out: every id read under its lock, each
/// merged token judged, and the one request forwarded only when every id passes.
#[tokio::test]
async fn a_native_batch_update_judges_every_stored_token() {
    let emulator = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(emulator.addr);
    options.clients = Some(client_entry("team", TEAM_KEY, ""));
    options.upstream_extra = "batch_update = \"native\"\n".into();
    let gateway = TestGateway::start(options).await;
    let upstream = emulator;
    let limited = upstream.emulator.insert_token(USER_ID, token("limited"));
    let unlimited = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            unlimited_quota: true,
            ..token("open")
        },
    );
    let body = format!(
        r#"{{"ids":[{limited},{unlimited}],"update_fields":["remain_quota"],"remain_quota":5}}"#
    );
    let reply = team(&gateway, "PUT", "/api/token/batch", Some(&body)).await;
    reply.assert_envelope(403, "forbidden");
    assert_eq!(reply.json()["error"]["field"], "unlimited_quota");
    assert!(
        reply.text().contains(&format!("token {unlimited}")),
        "{}",
        reply.text()
    );
    let seen = upstream.emulator.seen();
    assert_eq!(seen.len(), 2, "the two reads, nothing sent: {seen:?}");
    assert!(seen.iter().all(|s| s.method == "GET"));

    // A batch that also makes it limited passes, and goes upstream as one request (new-api
    // itself answers 404: it has no batch update, and the answer passes through).
    upstream.emulator.clear_seen();
    let body = format!(
        r#"{{"ids":[{limited},{unlimited}],"update_fields":["remain_quota","unlimited_quota"],"remain_quota":5,"unlimited_quota":false}}"#
    );
    team(&gateway, "PUT", "/api/token/batch", Some(&body)).await;
    let seen = upstream.emulator.seen();
    let methods: Vec<&str> = seen.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(methods, ["GET", "GET", "PUT"], "{seen:?}");
    assert_eq!(seen[2].uri.path(), "/api/token/batch");

    // Disabling alone is judged by name_prefix only: no other rule refuses it (the one read is
    // the trail's, of what the token was: SPEC §6.1).
    upstream.emulator.clear_seen();
    let body = format!(r#"{{"ids":[{unlimited}],"update_fields":["status"],"status":2}}"#);
    team(&gateway, "PUT", "/api/token/batch", Some(&body)).await;
    let methods: Vec<String> = upstream
        .emulator
        .seen()
        .iter()
        .map(|s| s.method.to_string())
        .collect();
    assert_eq!(methods, ["GET", "PUT"]);
}
