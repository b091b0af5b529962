//! Every SPEC §4 rule at its boundary, per operation, through the gateway: an accepted body
//! reaches the upstream as the checked edit; a refused one gets its status, code and field, and
//! the upstream receives nothing.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::*;
use tokengate::emulator::NewToken;

/// What a case expects.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Forwarded.
    Accepted,
    /// Refused with (status, code, error.field).
    Refused(u16, &'static str, Option<&'static str>),
}
use Expect::*;

const fn invalid(field: &'static str) -> Expect {
    Refused(400, "invalid_field", Some(field))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `base` with `field` set to `value` (or removed when `value` is `None`).
fn with(base: &Value, field: &str, value: Option<Value>) -> Value {
    let mut body = base.clone();
    let map = body.as_object_mut().unwrap();
    match value {
        Some(value) => map.insert(field.to_string(), value),
        None => map.remove(field),
    };
    body
}

/// The field-rule cases shared by create and full update: (field, value, expectation).
fn field_cases() -> Vec<(&'static str, Value, Expect)> {
    let now = now();
    let han16 = "令".repeat(16);
    vec![
        ("name", json!("a".repeat(50)), Accepted),
        ("name", json!("a".repeat(51)), invalid("name")),
        ("name", json!(format!("{han16}ab")), Accepted), // 48 + 2 = 50 bytes
        ("name", json!(format!("{han16}abc")), invalid("name")), // 51 bytes
        ("name", json!("令".repeat(17)), invalid("name")), // 51 bytes, 17 characters
        ("name", json!(""), invalid("name")),
        ("name", json!("line\nbreak"), invalid("name")),
        ("name", json!(7), invalid("name")),
        ("remain_quota", json!(0), Accepted),
        ("remain_quota", json!(500_000_000_000_000i64), Accepted),
        (
            "remain_quota",
            json!(500_000_000_000_001i64),
            invalid("remain_quota"),
        ),
        ("remain_quota", json!(-1), invalid("remain_quota")),
        ("remain_quota", json!("100"), invalid("remain_quota")),
        ("remain_quota", json!(100.0), invalid("remain_quota")),
        ("unlimited_quota", json!(true), Accepted),
        ("unlimited_quota", json!(1), invalid("unlimited_quota")),
        ("unlimited_quota", json!("true"), invalid("unlimited_quota")),
        ("expired_time", json!(-1), Accepted),
        ("expired_time", json!(0), invalid("expired_time")),
        ("expired_time", json!(now - 1), invalid("expired_time")),
        ("expired_time", json!(now + 60), Accepted),
        (
            "expired_time",
            json!((now + 60) * 1000),
            invalid("expired_time"),
        ),
        ("expired_time", json!(-2), invalid("expired_time")),
        ("model_limits_enabled", json!(true), Accepted),
        (
            "model_limits_enabled",
            json!(null),
            invalid("model_limits_enabled"),
        ),
        ("model_limits", json!(""), Accepted),
        ("model_limits", json!("gpt-4o,claude-3-5-sonnet"), Accepted),
        (
            "model_limits",
            json!("gpt-4o, claude"),
            invalid("model_limits"),
        ),
        (
            "model_limits",
            json!("gpt-4o,,claude"),
            invalid("model_limits"),
        ),
        (
            "model_limits",
            json!("gpt-4o,gpt-4o"),
            invalid("model_limits"),
        ),
        ("model_limits", json!(["gpt-4o"]), invalid("model_limits")),
        ("allow_ips", json!(""), Accepted),
        ("allow_ips", json!(null), Accepted),
        ("allow_ips", json!("203.0.113.7"), Accepted),
        ("allow_ips", json!("2001:db8::7"), Accepted),
        ("allow_ips", json!("10.0.0.0/8"), Accepted),
        ("allow_ips", json!("2001:db8::/32"), Accepted),
        ("allow_ips", json!("1.1.1.1\n2001:db8::/48\n"), Accepted),
        ("allow_ips", json!("1.1.1.1,2.2.2.2"), invalid("allow_ips")),
        ("allow_ips", json!("10.0.0.0/33"), invalid("allow_ips")),
        ("allow_ips", json!("2001:db8::/129"), invalid("allow_ips")),
        ("allow_ips", json!("1.2.3"), invalid("allow_ips")),
        (
            "allow_ips",
            json!("1.1.1.1\n\n2.2.2.2"),
            invalid("allow_ips"),
        ),
        ("group", json!(""), Accepted),
        ("group", json!("default,vip"), Accepted),
        ("group", json!("auto"), Accepted),
        ("group", json!("default vip"), invalid("group")),
        ("group", json!("default,"), invalid("group")),
        ("cross_group_retry", json!(false), Accepted),
        (
            "cross_group_retry",
            json!("no"),
            invalid("cross_group_retry"),
        ),
        ("auto_groups", json!(["a", "b", "c", "d", "e"]), Accepted),
        ("auto_groups", json!(null), Accepted),
        (
            "auto_groups",
            json!(["a", "b", "c", "d", "e", "f"]),
            invalid("auto_groups"),
        ),
        ("auto_groups", json!(["a", "a"]), invalid("auto_groups")),
        ("mj_image_mode", json!("relax"), Accepted),
        ("mj_custom_proxy", json!("https://mj.example/"), Accepted),
        ("mj_custom_proxy", json!(""), Accepted),
        (
            "mj_custom_proxy",
            json!("ftp://mj.example/"),
            invalid("mj_custom_proxy"),
        ),
        (
            "remain_qouta",
            json!(5),
            Refused(400, "unknown_field", Some("remain_qouta")),
        ),
        (
            "billing_type",
            json!("x"),
            Refused(400, "unknown_field", Some("billing_type")),
        ),
    ]
}

/// Runs one case: `body` sent to `path` must be forwarded (as exactly the checked fields) or
/// refused with nothing reaching the upstream.
async fn run(
    upstream: &RunningEmulatorRef<'_>,
    gateway: &TestGateway,
    method: &str,
    path: &str,
    body: &str,
    expect: Expect,
    what: &str,
) {
    upstream.clear_seen();
    let reply = admin(gateway.addr, method, path, Some(body)).await;
    let seen = upstream.seen();
    match expect {
        Accepted => {
            assert_eq!(reply.status, 200, "{what}: {}", reply.text());
            assert_eq!(seen.len(), 1, "{what}: forwarded once");
            let mut expected: Value = serde_json::from_str(body).unwrap();
            for read_only in [
                "key",
                "user_id",
                "created_time",
                "accessed_time",
                "used_quota",
                "DeletedAt",
                "username",
            ] {
                expected.as_object_mut().unwrap().remove(read_only);
            }
            let forwarded: Value = serde_json::from_slice(&seen[0].body).unwrap();
            assert_eq!(
                forwarded, expected,
                "{what}: forwarded exactly the checked fields"
            );
        }
        Refused(status, code, field) => {
            reply.assert_envelope(status, code);
            assert_eq!(
                reply.json()["error"]["field"].as_str(),
                field,
                "{what}: {}",
                reply.text()
            );
            // A full or status-only update may read the token first: a value that breaks a
            // rule passes if it is the stored one (SPEC §4.2). The body itself is never sent.
            assert!(
                seen.iter().all(|s| s.method == "GET") && (method != "POST" || seen.is_empty()),
                "{what}: the upstream received a refused body: {seen:?}"
            );
        }
    }
}

type RunningEmulatorRef<'a> = &'a tokengate::emulator::Emulator;

#[tokio::test]
async fn create_field_rules() {
    let (upstream, gateway) = unread_gateway().await;
    // Group `auto`: the only one on which new-api keeps `auto_groups` (SPEC §4.2).
    let base = json!({"name": "base", "group": "auto"});
    for (field, value, expect) in field_cases() {
        let body = with(&base, field, Some(value.clone()));
        let what = format!("create {field}={value}");
        run(
            &&upstream.emulator,
            &gateway,
            "POST",
            "/api/token/",
            &body.to_string(),
            expect,
            &what,
        )
        .await;
    }
    run(
        &&upstream.emulator,
        &gateway,
        "POST",
        "/api/token/",
        "{}",
        invalid("name"),
        "create without name",
    )
    .await;
}

#[tokio::test]
async fn full_update_field_rules_and_completeness() {
    let (upstream, gateway) = unread_gateway().await;
    let id = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            name: "base".into(),
            ..Default::default()
        },
    );
    let base = json!({
        "id": id, "name": "base", "expired_time": -1, "remain_quota": 0, "unlimited_quota": false,
        "model_limits_enabled": false, "model_limits": "", "allow_ips": "", "group": "auto"
    });
    let em = &upstream.emulator;
    for (field, value, expect) in field_cases() {
        let body = with(&base, field, Some(value.clone()));
        run(
            &em,
            &gateway,
            "PUT",
            "/api/token/",
            &body.to_string(),
            expect,
            &format!("update {field}={value}"),
        )
        .await;
    }
    for (value, expect) in [
        (json!(id), Accepted),
        (json!(0), invalid("id")),
        (json!(-1), invalid("id")),
        (json!(id.to_string()), invalid("id")),
        (json!(9_223_372_036_854_775_808u64), invalid("id")),
    ] {
        let body = with(&base, "id", Some(value.clone()));
        run(
            &em,
            &gateway,
            "PUT",
            "/api/token/",
            &body.to_string(),
            expect,
            &format!("update id={value}"),
        )
        .await;
    }
    run(
        &em,
        &gateway,
        "PUT",
        "/api/token/",
        &with(&base, "id", None).to_string(),
        invalid("id"),
        "update without id",
    )
    .await;
    // Each field a full update must carry, left out alone.
    for field in [
        "name",
        "expired_time",
        "remain_quota",
        "unlimited_quota",
        "model_limits_enabled",
        "model_limits",
        "allow_ips",
        "group",
    ] {
        let body = with(&base, field, None).to_string();
        let expect = Refused(400, "incomplete_update", Some(field));
        run(
            &em,
            &gateway,
            "PUT",
            "/api/token/",
            &body,
            expect,
            &format!("update without {field}"),
        )
        .await;
    }
    let reply = admin(
        gateway.addr,
        "PUT",
        "/api/token/",
        Some(&json!({"id": id, "name": "x"}).to_string()),
    )
    .await;
    reply.assert_envelope(400, "incomplete_update");
    let fields = reply.json()["error"]["fields"].clone();
    assert_eq!(
        fields,
        json!([
            "expired_time",
            "remain_quota",
            "unlimited_quota",
            "model_limits_enabled",
            "model_limits",
            "allow_ips",
            "group"
        ])
    );
    assert!(reply.json()["message"]
        .as_str()
        .unwrap()
        .contains("missing: expired_time, remain_quota"));
    // The read-only fields of a GET are accepted and not forwarded.
    let body = json!({"key": "abcd**********wxyz", "user_id": 1, "created_time": 1, "accessed_time": 1, "used_quota": 3, "DeletedAt": null, "username": "u"});
    let mut full = base.clone();
    full.as_object_mut()
        .unwrap()
        .extend(body.as_object().unwrap().clone());
    run(
        &em,
        &gateway,
        "PUT",
        "/api/token/",
        &full.to_string(),
        Accepted,
        "update with read-only fields",
    )
    .await;
}

#[tokio::test]
async fn status_only_rules() {
    let (upstream, gateway) = unread_gateway().await;
    let em = &upstream.emulator;
    let id = em.insert_token(
        USER_ID,
        NewToken {
            name: "s".into(),
            ..Default::default()
        },
    );
    let path = "/api/token/?status_only=true";
    for (status, expect) in [
        (json!(1), Accepted),
        (json!(2), Accepted),
        (json!(3), Accepted),
        (json!(4), Accepted),
        (json!(0), invalid("status")),
        (json!(5), invalid("status")),
        (json!(99), invalid("status")),
        (json!("2"), invalid("status")),
    ] {
        let body = json!({"id": id, "status": status});
        run(
            &em,
            &gateway,
            "PUT",
            path,
            &body.to_string(),
            expect,
            &format!("status {status}"),
        )
        .await;
    }
    run(
        &em,
        &gateway,
        "PUT",
        path,
        &json!({"id": id}).to_string(),
        invalid("status"),
        "no status",
    )
    .await;
    run(
        &em,
        &gateway,
        "PUT",
        path,
        &json!({"status": 2}).to_string(),
        invalid("id"),
        "no id",
    )
    .await;
    // The rest of a token may come along (new-api's own page sends it all): checked, not required.
    let body = json!({"id": id, "status": 2, "name": "s", "remain_quota": 5});
    run(
        &em,
        &gateway,
        "PUT",
        path,
        &body.to_string(),
        Accepted,
        "status with other fields",
    )
    .await;
    let body = json!({"id": id, "status": 2, "remain_quota": -5});
    run(
        &em,
        &gateway,
        "PUT",
        path,
        &body.to_string(),
        invalid("remain_quota"),
        "status with a bad field",
    )
    .await;
    em.clear_seen();
    let reply = admin(
        gateway.addr,
        "PUT",
        "/api/token/?status_only=false",
        Some(&json!({"id": id, "status": 2}).to_string()),
    )
    .await;
    reply.assert_envelope(400, "bad_request");
    assert!(em.seen().is_empty());
}

#[tokio::test]
async fn batch_id_lists() {
    let (upstream, gateway) = unread_gateway().await;
    let em = &upstream.emulator;
    let hundred: Vec<i64> = (1..=100).collect();
    let hundred_one: Vec<i64> = (1..=101).collect();
    for path in ["/api/token/batch", "/api/token/batch/keys"] {
        for (body, expect) in [
            (json!({"ids": [1]}), Accepted),
            (json!({"ids": hundred}), Accepted),
            (json!({"ids": hundred_one}), invalid("ids")),
            (json!({"ids": []}), invalid("ids")),
            (json!({"ids": [1, 1]}), invalid("ids")),
            (json!({"ids": [0]}), invalid("ids")),
            (json!({"ids": ["1"]}), invalid("ids")),
            (json!({"ids": "1,2"}), invalid("ids")),
            (json!({}), invalid("ids")),
            (
                json!({"ids": [1], "all": true}),
                Refused(400, "unknown_field", Some("all")),
            ),
        ] {
            run(
                &em,
                &gateway,
                "POST",
                path,
                &body.to_string(),
                expect,
                &format!("{path} {body}"),
            )
            .await;
        }
    }
}

#[tokio::test]
async fn json_and_media_type_faults() {
    let (upstream, gateway) = unread_gateway().await;
    let em = &upstream.emulator;
    let deep = format!(
        "{{\"name\":\"x\",\"auto_groups\":{}1{}}}",
        "[".repeat(32),
        "]".repeat(32)
    );
    for (body, what) in [
        (r#"{"name":"a","name":"b"}"#.to_string(), "duplicate key"),
        (
            r#"{"name":"a","x":{"k":1,"k":2}}"#.to_string(),
            "nested duplicate key",
        ),
        (deep, "33 levels"),
        ("[]".to_string(), "an array"),
        ("1".to_string(), "a number"),
        ("{\"name\":\"a\"".to_string(), "truncated"),
        (r#"{"name":"a"} {}"#.to_string(), "two objects"),
        (String::new(), "empty"),
    ] {
        run(
            &em,
            &gateway,
            "POST",
            "/api/token/",
            &body,
            Refused(400, "invalid_json", None),
            what,
        )
        .await;
    }
    // Not UTF-8 (sent as raw bytes).
    let not_utf8 = b"{\"name\":\"\xff\xfe\"}";
    let head = format!(
        "POST /api/token/ HTTP/1.1\r\nHost: x\r\nAuthorization: {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        not_utf8.len()
    );
    let request = [head.as_bytes(), not_utf8].concat();
    let answer = raw(gateway.addr, &request).await;
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("invalid_json"),
        "{answer}"
    );
    let auth = format!("Bearer {ADMIN_KEY}");
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/json; charset=latin1"),
        Some("multipart/form-data"),
    ] {
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(value) = content_type {
            headers.push(("content-type", value));
        }
        send(
            gateway.addr,
            "POST",
            "/api/token/",
            &headers,
            Some(r#"{"name":"x"}"#),
        )
        .await
        .assert_envelope(415, "unsupported_media_type");
    }
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "Application/JSON; charset=UTF-8"),
    ];
    assert_eq!(
        send(
            gateway.addr,
            "POST",
            "/api/token/",
            &headers,
            Some(r#"{"name":"x"}"#)
        )
        .await
        .status,
        200
    );
    assert_eq!(
        em.seen().len(),
        1,
        "only the last, valid request reached the upstream"
    );
}

#[tokio::test]
async fn every_fault_in_a_body_is_reported() {
    let (upstream, gateway) = unread_gateway().await;
    let body =
        json!({"name": "", "remain_qouta": 5, "expired_time": 0, "allow_ips": "1.1.1.1,2.2.2.2"});
    let reply = admin(gateway.addr, "POST", "/api/token/", Some(&body.to_string())).await;
    reply.assert_envelope(400, "invalid_field");
    let json = reply.json();
    assert_eq!(json["error"]["field"], "allow_ips");
    assert_eq!(
        json["error"]["fields"],
        json!(["allow_ips", "expired_time", "name", "remain_qouta"])
    );
    let message = json["message"].as_str().unwrap();
    for hint in [
        "comma",
        "use -1",
        "must not be empty",
        "did you mean `remain_quota`",
    ] {
        assert!(message.contains(hint), "{hint} missing from: {message}");
    }
    assert!(upstream.emulator.seen().is_empty());
    let metrics = send(gateway.admin, "GET", "/metrics", &[], None)
        .await
        .text();
    assert!(
        metrics.contains(
            "tokengate_validation_refusals_total{op=\"create\",code=\"invalid_field\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn get_edit_put_round_trip_needs_no_field_removed_by_hand() {
    let (upstream, gateway) = unread_gateway().await;
    let created = admin(
        gateway.addr,
        "POST",
        "/api/token/",
        Some(r#"{"name":"round-trip","remain_quota":1000,"expired_time":-1,"allow_ips":"10.0.0.0/8\n","model_limits_enabled":true,"model_limits":"gpt-4o"}"#),
    )
    .await;
    assert_eq!(created.json()["success"], true, "{}", created.text());
    let id = upstream
        .emulator
        .tokens()
        .iter()
        .find(|t| t.name == "round-trip")
        .unwrap()
        .id;

    let got = admin(gateway.addr, "GET", &format!("/api/token/{id}"), None).await;
    let mut token = got.json()["data"].clone();
    assert!(
        token.get("key").is_some() && token.get("DeletedAt").is_some(),
        "a real GET body: {token}"
    );
    token["name"] = json!("round-trip-renamed");
    let put = admin(gateway.addr, "PUT", "/api/token/", Some(&token.to_string())).await;
    assert_eq!(put.json()["success"], true, "{}", put.text());

    let stored = upstream
        .emulator
        .tokens()
        .into_iter()
        .find(|t| t.id == id)
        .unwrap();
    assert_eq!(stored.name, "round-trip-renamed");
    assert_eq!(
        (stored.remain_quota, stored.expired_time),
        (1000, -1),
        "nothing reset by the update"
    );
    assert_eq!(stored.allow_ips.as_deref(), Some("10.0.0.0/8\n"));
    assert_eq!(
        (stored.model_limits_enabled, stored.model_limits.as_str()),
        (true, "gpt-4o")
    );
}

/// An emulator and a gateway that reads no token before a change (`audit.capture_before =
/// false`): these bodies name tokens that do not exist, and what is checked here is what reaches
/// the upstream of them.
async fn unread_gateway() -> (tokengate::emulator::RunningEmulator, TestGateway) {
    let emulator = tokengate::emulator::Emulator::spawn(tokengate::emulator::EmulatorConfig::new(
        UPSTREAM_TOKEN,
        USER_ID,
    ))
    .await
    .unwrap();
    let mut options = Options::new(emulator.addr);
    options.audit_extra = "capture_before = false\n".into();
    (emulator, TestGateway::start(options).await)
}
