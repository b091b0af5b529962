//! The built-in new-api emulator over real sockets: routing, auth, envelope, binding, handlers,
//! pagination, search, key reveal, rate limits, the `billing_type` fork field and the test hooks
//! (relay usage among them).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokengate::emulator::{
    Emulator, EmulatorConfig, Era, NewToken, RunningEmulator, User, AUTH_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "acc3ss+token/abc=";
const UID: i64 = 42;

// === client helpers ===

/// A parsed HTTP/1.1 answer, with the raw head kept for byte-level checks.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn message(&self) -> String {
        self.json()["message"].as_str().unwrap().to_owned()
    }

    #[track_caller]
    fn assert_fail(&self, status: u16, message: &str) {
        assert_eq!(self.status, status, "{self:?}");
        let expected = serde_json::to_string(&json!({"message": message, "success": false}))
            .unwrap()
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026");
        assert_eq!(self.body, expected);
    }
}

/// Send one request with exactly these headers (plus Host, Content-Length, Connection: close).
async fn raw(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.to_owned(), v.trim().to_owned())
        })
        .collect();
    Resp {
        status,
        head: head.to_owned(),
        headers,
        body: body.to_owned(),
    }
}

/// A request from the configured account (raw access token + New-Api-User).
async fn api(addr: SocketAddr, method: &str, target: &str, body: &str) -> Resp {
    let uid = UID.to_string();
    let headers = [("Authorization", TOKEN), ("New-Api-User", uid.as_str())];
    raw(addr, method, target, &headers, body).await
}

async fn start() -> RunningEmulator {
    Emulator::spawn(EmulatorConfig::new(TOKEN, UID))
        .await
        .unwrap()
}

async fn start_with(f: impl FnOnce(&mut EmulatorConfig)) -> RunningEmulator {
    let mut config = EmulatorConfig::new(TOKEN, UID);
    f(&mut config);
    Emulator::spawn(config).await.unwrap()
}

fn seed(emu: &Emulator, name: &str) -> i64 {
    let token = NewToken {
        name: name.into(),
        ..Default::default()
    };
    emu.insert_token(UID, token)
}

fn stored(emu: &Emulator, id: i64) -> tokengate::emulator::StoredToken {
    emu.tokens().into_iter().find(|t| t.id == id).unwrap()
}

// === auth (E2) ===

#[tokio::test]
async fn e2_auth_checks_in_order_with_statuses_and_messages() {
    let s = start().await;
    let a = s.addr;
    let r = raw(a, "GET", "/api/token/", &[("New-Api-User", "42")], "").await;
    r.assert_fail(
        401,
        "Unauthorized, not logged in and no access token provided",
    );
    assert!(r.header("Auth-Version").is_none());
    let r = raw(
        a,
        "GET",
        "/api/token/",
        &[("Authorization", "nope"), ("New-Api-User", "42")],
        "",
    )
    .await;
    r.assert_fail(200, "Unauthorized, invalid access token");
    let r = raw(a, "GET", "/api/token/", &[("Authorization", TOKEN)], "").await;
    r.assert_fail(401, "Unauthorized, New-Api-User header not provided");
    for bad in ["abc", "42.0", "4 2"] {
        let r = raw(
            a,
            "GET",
            "/api/token/",
            &[("Authorization", TOKEN), ("New-Api-User", bad)],
            "",
        )
        .await;
        r.assert_fail(401, "Unauthorized, New-Api-User header format error");
    }
    let r = raw(
        a,
        "GET",
        "/api/token/",
        &[("Authorization", TOKEN), ("New-Api-User", "43")],
        "",
    )
    .await;
    r.assert_fail(
        401,
        "Unauthorized, New-Api-User does not match logged in user",
    );
    for ok in ["42", "+42", "042"] {
        let r = raw(
            a,
            "GET",
            "/api/token/",
            &[("Authorization", TOKEN), ("new-api-user", ok)],
            "",
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["success"], true, "{ok}");
        assert_eq!(r.header("Auth-Version"), Some(AUTH_VERSION));
    }
}

#[tokio::test]
async fn e2_bearer_is_an_exact_case_sensitive_replace_first() {
    let s = start().await;
    let check = |auth: String| async move {
        let r = raw(
            s.addr,
            "GET",
            "/api/token/",
            &[("Authorization", &auth), ("New-Api-User", "42")],
            "",
        )
        .await;
        r.json()["success"].as_bool().unwrap()
    };
    assert!(check(format!("Bearer {TOKEN}")).await);
    assert!(check(TOKEN.to_owned()).await);
    // Replace-first, not trim-prefix: "xBearer q" becomes "xq".
    s.emulator.add_user(User::new(9, "xq"));
    let r = raw(
        s.addr,
        "GET",
        "/api/token/",
        &[("Authorization", "xBearer q"), ("New-Api-User", "9")],
        "",
    )
    .await;
    assert_eq!(r.json()["success"], true);
    assert!(!check(format!("bearer {TOKEN}")).await);
    assert!(!check(format!("Bearer  {TOKEN}")).await);
    assert!(!check(format!("BEARER {TOKEN}")).await);
    assert!(!check("Bearer ".to_owned()).await);
}

#[tokio::test]
async fn e2_banned_guest_and_invalid_users() {
    let s = start().await;
    let add = |id: i64, token: &str, role: i64, status: i64| {
        s.emulator.add_user(User {
            id,
            access_token: token.into(),
            role,
            status,
            username: format!("u{id}"),
        })
    };
    add(7, "banned", 1, 2);
    add(8, "guest", 0, 1);
    add(9, "weird", 5, 1);
    let r = raw(
        s.addr,
        "GET",
        "/api/token/",
        &[("Authorization", "banned"), ("New-Api-User", "7")],
        "",
    )
    .await;
    r.assert_fail(200, "User has been banned");
    let r = raw(
        s.addr,
        "GET",
        "/api/token/",
        &[("Authorization", "guest"), ("New-Api-User", "8")],
        "",
    )
    .await;
    r.assert_fail(200, "Unauthorized, insufficient privileges");
    let r = raw(
        s.addr,
        "GET",
        "/api/token/",
        &[("Authorization", "weird"), ("New-Api-User", "9")],
        "",
    )
    .await;
    r.assert_fail(200, "Unauthorized, invalid user info");
    // The banned check comes after the New-Api-User checks.
    let r = raw(
        s.addr,
        "GET",
        "/api/token/",
        &[("Authorization", "banned"), ("New-Api-User", "42")],
        "",
    )
    .await;
    r.assert_fail(
        401,
        "Unauthorized, New-Api-User does not match logged in user",
    );
}

#[tokio::test]
async fn messages_follow_accept_language() {
    let s = start().await;
    let r = raw(
        s.addr,
        "GET",
        "/api/token/",
        &[("Accept-Language", "zh-CN,zh;q=0.9,en;q=0.8")],
        "",
    )
    .await;
    r.assert_fail(401, "无权进行此操作，未登录且未提供 access token");
    // new-api's normalizeLang: the first tag, by prefix, in any case: `zh-tw…` is zh-TW, any
    // other `zh…` (even `zh-Hant-TW` or `zh_TW`) zh-CN.
    for (language, message) in [
        ("zh-TW", "無權進行此操作，未登入且未提供 access token"),
        (
            "ZH-tw;q=0.9, en",
            "無權進行此操作，未登入且未提供 access token",
        ),
        (
            " zh-TW-x-private",
            "無權進行此操作，未登入且未提供 access token",
        ),
        ("zh-Hant-TW", "无权进行此操作，未登录且未提供 access token"),
        ("zh_TW", "无权进行此操作，未登录且未提供 access token"),
        ("zh-HK", "无权进行此操作，未登录且未提供 access token"),
        (
            "en-GB, zh-TW",
            "Unauthorized, not logged in and no access token provided",
        ),
        (
            "*",
            "Unauthorized, not logged in and no access token provided",
        ),
    ] {
        let r = raw(
            s.addr,
            "GET",
            "/api/token/",
            &[("Accept-Language", language)],
            "",
        )
        .await;
        assert_eq!(r.message(), message, "{language}");
    }
    let r = raw(
        s.addr,
        "GET",
        "/api/token/",
        &[("Accept-Language", "fr-FR, zh-CN")],
        "",
    )
    .await;
    assert_eq!(
        r.message(),
        "Unauthorized, not logged in and no access token provided"
    );
    let uid = UID.to_string();
    let h = [
        ("Authorization", TOKEN),
        ("New-Api-User", uid.as_str()),
        ("Accept-Language", "zh"),
    ];
    let r = raw(s.addr, "POST", "/api/token/", &h, r#"{"remain_quota":-1}"#).await;
    r.assert_fail(200, "额度值不能为负数");
    let h = [h[0], h[1], ("Accept-Language", "zh-TW")];
    let r = raw(s.addr, "POST", "/api/token/", &h, r#"{"remain_quota":-1}"#).await;
    r.assert_fail(200, "額度值不能為負數");
    let long = format!(r#"{{"name":"{}"}}"#, "n".repeat(51));
    let r = raw(s.addr, "POST", "/api/token/", &h, &long).await;
    r.assert_fail(200, "令牌名稱過長");
}

// === auth (E3) ===

#[tokio::test]
async fn e3_auth_uses_authorization_only_and_codes() {
    let s = start_with(|c| c.era = Era::E3).await;
    let a = s.addr;
    let body = |r: &Resp| r.body.clone();
    let r = raw(a, "GET", "/api/token/", &[], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        body(&r),
        r#"{"code":"AUTH_UNAUTHORIZED","message":"Unauthorized, invalid access token","success":false}"#
    );
    for ok in [
        TOKEN.to_owned(),
        format!("bearer {TOKEN}"),
        format!("  BEARER   {TOKEN} "),
    ] {
        let r = raw(a, "GET", "/api/token/", &[("Authorization", &ok)], "").await;
        assert_eq!(r.status, 200, "{ok}");
        assert_eq!(r.json()["success"], true);
        assert_eq!(r.header("Auth-Version"), Some(AUTH_VERSION));
    }
    // No New-Api-User check at all, even a wrong one.
    let r = raw(
        a,
        "GET",
        "/api/token/",
        &[("Authorization", TOKEN), ("New-Api-User", "abc")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let r = raw(
        a,
        "GET",
        "/api/token/",
        &[("Authorization", &format!("Token {TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    s.emulator.add_user(User {
        id: 7,
        access_token: "banned".into(),
        role: 1,
        status: 2,
        username: "b".into(),
    });
    s.emulator.add_user(User {
        id: 8,
        access_token: "guest".into(),
        role: 0,
        status: 1,
        username: "g".into(),
    });
    let r = raw(a, "GET", "/api/token/", &[("Authorization", "banned")], "").await;
    assert_eq!(
        (r.status, r.json()["code"].as_str().unwrap()),
        (401, "AUTH_USER_DISABLED")
    );
    assert_eq!(r.message(), "User has been banned");
    let r = raw(a, "GET", "/api/token/", &[("Authorization", "guest")], "").await;
    assert_eq!(
        (r.status, r.json()["code"].as_str().unwrap()),
        (403, "AUTH_INSUFFICIENT_PRIVILEGE")
    );
}

#[tokio::test]
async fn e3_root_sees_every_user_and_auto_groups_are_shown() {
    let s = start_with(|c| c.era = Era::E3).await;
    s.emulator.add_user(User {
        id: 1,
        access_token: "root".into(),
        role: 100,
        status: 1,
        username: "root".into(),
    });
    seed(&s.emulator, "mine");
    s.emulator.insert_token(
        5,
        NewToken {
            name: "theirs".into(),
            ..Default::default()
        },
    );
    let r = raw(
        s.addr,
        "GET",
        "/api/token/",
        &[("Authorization", "root")],
        "",
    )
    .await;
    assert_eq!(r.json()["data"]["total"], 2);
    let r = raw(
        s.addr,
        "GET",
        "/api/token/?user_id=5",
        &[("Authorization", "root")],
        "",
    )
    .await;
    assert_eq!(r.json()["data"]["items"][0]["name"], "theirs");
    let r = raw(
        s.addr,
        "GET",
        "/api/token/",
        &[("Authorization", TOKEN)],
        "",
    )
    .await;
    let data = r.json()["data"].clone();
    assert_eq!(data["total"], 1);
    assert!(data["items"][0]
        .as_object()
        .unwrap()
        .contains_key("auto_groups"));
    assert!(r
        .body
        .contains(r#""cross_group_retry":false,"auto_groups":null,"DeletedAt":null}"#));
    let r = raw(
        s.addr,
        "GET",
        "/api/token/auto-groups",
        &[("Authorization", TOKEN)],
        "",
    )
    .await;
    assert_eq!(
        r.body,
        r#"{"data":{"groups":["default"],"max_count":5},"message":"","success":true}"#
    );
}

// === envelope, create ===

#[tokio::test]
async fn create_returns_no_data_and_applies_gorm_defaults() {
    let s = start().await;
    let r = api(
        s.addr,
        "POST",
        "/api/token/",
        r#"{"name":"a","remain_quota":100,"status":2,"key":"mine","id":77,"used_quota":9}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, r#"{"message":"","success":true}"#);
    assert_eq!(
        r.header("Content-Type"),
        Some("application/json; charset=utf-8")
    );
    let t = &s.emulator.tokens()[0];
    assert_eq!((t.id, t.user_id, t.status, t.expired_time), (1, UID, 1, -1));
    assert_eq!((t.remain_quota, t.used_quota), (100, 0));
    assert_eq!(t.allow_ips.as_deref(), Some(""));
    assert_eq!(t.key.len(), 48);
    assert!(t.key.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(t.created_time > 0 && t.created_time == t.accessed_time);
    // An explicit expiry is kept; a null allow_ips becomes "".
    api(
        s.addr,
        "POST",
        "/api/token/",
        r#"{"expired_time":123,"allow_ips":null}"#,
    )
    .await;
    let t = &s.emulator.tokens()[1];
    assert_eq!((t.expired_time, t.allow_ips.as_deref()), (123, Some("")));
}

#[tokio::test]
async fn create_checks_name_quota_and_the_cap() {
    let s = start().await;
    let addr = s.addr;
    let create = |body: String| async move { api(addr, "POST", "/api/token/", &body).await };
    create(format!(r#"{{"name":"{}"}}"#, "x".repeat(51)))
        .await
        .assert_fail(200, "Token name is too long");
    create(format!(r#"{{"name":"{}"}}"#, "令".repeat(17)))
        .await
        .assert_fail(200, "Token name is too long");
    assert_eq!(
        create(format!(r#"{{"name":"{}"}}"#, "x".repeat(50)))
            .await
            .json()["success"],
        true
    );
    create(r#"{"remain_quota":-1}"#.into())
        .await
        .assert_fail(200, "Quota value cannot be negative");
    create(r#"{"remain_quota":500000000000001}"#.into())
        .await
        .assert_fail(
            200,
            "Quota value exceeds valid range, maximum is 500000000000000",
        );
    assert_eq!(
        create(r#"{"remain_quota":-5,"unlimited_quota":true}"#.into())
            .await
            .json()["success"],
        true
    );
    assert_eq!(s.emulator.tokens().last().unwrap().remain_quota, -5);
    for _ in 0..998 {
        seed(&s.emulator, "filler");
    }
    create("{}".into())
        .await
        .assert_fail(200, "已达到最大令牌数量限制 (1000)");
    // Soft-deleted rows do not count; other users' tokens neither.
    let victim = s.emulator.tokens()[0].id;
    api(s.addr, "DELETE", &format!("/api/token/{victim}"), "").await;
    assert_eq!(create("{}".into()).await.json()["success"], true);
}

// === Go-style binding and output ===

#[tokio::test]
async fn binding_behaves_like_go_encoding_json() {
    let s = start().await;
    let create = |body: &'static str| api(s.addr, "POST", "/api/token/", body);
    let r = create(r#"{"NAME":"first","Name":"second","unknown":{"deep":[1,2]},"Remain_Quota":5}"#)
        .await;
    assert_eq!(r.json()["success"], true);
    let t = &s.emulator.tokens()[0];
    assert_eq!((t.name.as_str(), t.remain_quota), ("second", 5));
    create(r#"{"remain_quota":"5"}"#).await.assert_fail(
        200,
        "json: cannot unmarshal string into Go struct field Token.remain_quota of type int",
    );
    create(r#"{"expired_time":1.5}"#).await.assert_fail(
        200,
        "json: cannot unmarshal number 1.5 into Go struct field Token.expired_time of type int64",
    );
    create(r#"{"unlimited_quota":"true"}"#).await.assert_fail(
        200,
        "json: cannot unmarshal string into Go struct field Token.unlimited_quota of type bool",
    );
    create(r#"{"model_limits":["a","b"]}"#).await.assert_fail(
        200,
        "json: cannot unmarshal array into Go struct field Token.model_limits of type string",
    );
    create("").await.assert_fail(200, "EOF");
    create(r#"{"name":"a""#)
        .await
        .assert_fail(200, "unexpected EOF");
    create("name=a")
        .await
        .assert_fail(200, "invalid character 'a' in literal null (expecting 'u')");
    create("[1]").await.assert_fail(
        200,
        "json: cannot unmarshal array into Go value of type model.Token",
    );
    // null keeps zero values; a top-level null is an empty token; trailing data is ignored.
    assert_eq!(
        create(r#"{"name":null,"remain_quota":null}"#).await.json()["success"],
        true
    );
    assert_eq!(create("null").await.json()["success"], true);
    assert_eq!(
        create(r#"{"name":"t"} garbage"#).await.json()["success"],
        true
    );
}

#[tokio::test]
async fn output_is_compact_go_ordered_and_html_escaped() {
    let s = start().await;
    api(
        s.addr,
        "POST",
        "/api/token/",
        r#"{"name":"<b>&co","model_limits":"a,b","allow_ips":"1.1.1.1\n10.0.0.0/8"}"#,
    )
    .await;
    let t = &s.emulator.tokens()[0];
    assert_eq!(t.name, "<b>&co");
    let r = api(s.addr, "GET", "/api/token/1", "").await;
    let masked = format!("{}**********{}", &t.key[..4], &t.key[44..]);
    let expected = format!(
        concat!(
            r#"{{"data":{{"id":1,"user_id":42,"key":"{}","status":1,"name":"\u003cb\u003e\u0026co","#,
            r#""created_time":{},"accessed_time":{},"expired_time":-1,"remain_quota":0,"#,
            r#""unlimited_quota":false,"model_limits_enabled":false,"model_limits":"a,b","#,
            r#""allow_ips":"1.1.1.1\n10.0.0.0/8","used_quota":0,"group":"","cross_group_retry":false,"#,
            r#""DeletedAt":null}},"message":"","success":true}}"#
        ),
        masked, t.created_time, t.accessed_time
    );
    assert_eq!(r.body, expected);
}

// === update ===

#[tokio::test]
async fn full_update_overwrites_omitted_fields_with_zero_values() {
    let s = start().await;
    let id = s.emulator.insert_token(
        UID,
        NewToken {
            name: "full".into(),
            expired_time: 4_000_000_000,
            remain_quota: 500,
            unlimited_quota: true,
            model_limits_enabled: true,
            model_limits: "gpt-4".into(),
            allow_ips: Some("1.2.3.4".into()),
            group: "vip".into(),
            cross_group_retry: true,
            ..Default::default()
        },
    );
    let r = api(
        s.addr,
        "PUT",
        "/api/token/",
        &format!(r#"{{"id":{id},"name":"renamed"}}"#),
    )
    .await;
    let data = r.json()["data"].clone();
    assert_eq!(r.json()["success"], true);
    assert_eq!(data["name"], "renamed");
    assert_eq!(data["allow_ips"], Value::Null);
    assert_eq!(data["key"].as_str().unwrap().len(), 18);
    assert!(data["key"].as_str().unwrap().contains("**********"));
    let t = stored(&s.emulator, id);
    assert_eq!(t.expired_time, 0);
    assert_eq!(t.remain_quota, 0);
    assert!(!t.unlimited_quota && !t.model_limits_enabled && !t.cross_group_retry);
    assert_eq!((t.model_limits.as_str(), t.group.as_str()), ("", ""));
    assert_eq!(t.allow_ips, None);
    assert_eq!(t.status, 1);
}

#[tokio::test]
async fn full_update_does_not_change_status() {
    let s = start().await;
    let id = seed(&s.emulator, "s");
    let r = api(
        s.addr,
        "PUT",
        "/api/token/",
        &format!(r#"{{"id":{id},"status":2,"name":"s"}}"#),
    )
    .await;
    assert_eq!(r.json()["data"]["status"], 1);
    assert_eq!(stored(&s.emulator, id).status, 1);
}

#[tokio::test]
async fn status_only_with_any_value_changes_only_status() {
    let s = start().await;
    let id = s.emulator.insert_token(
        UID,
        NewToken {
            name: "keep".into(),
            expired_time: 99,
            ..Default::default()
        },
    );
    for (flag, status) in [("false", 2), ("0", 99), ("true", 3), ("x", -4)] {
        let body = format!(r#"{{"id":{id},"status":{status},"name":"changed"}}"#);
        let r = api(
            s.addr,
            "PUT",
            &format!("/api/token/?status_only={flag}"),
            &body,
        )
        .await;
        assert_eq!(r.json()["success"], true, "{flag}");
        let t = stored(&s.emulator, id);
        assert_eq!(
            (t.status, t.name.as_str(), t.expired_time),
            (status, "keep", 99)
        );
    }
    // An empty status_only is a full update.
    api(
        s.addr,
        "PUT",
        "/api/token/?status_only=",
        &format!(r#"{{"id":{id},"status":1,"name":"n"}}"#),
    )
    .await;
    assert_eq!(stored(&s.emulator, id).name, "n");
}

#[tokio::test]
async fn enabling_is_refused_on_the_stored_state() {
    let s = start().await;
    let expired = s.emulator.insert_token(
        UID,
        NewToken {
            status: 3,
            expired_time: 1000,
            ..Default::default()
        },
    );
    let exhausted = s.emulator.insert_token(
        UID,
        NewToken {
            status: 4,
            remain_quota: 0,
            ..Default::default()
        },
    );
    let addr = s.addr;
    let enable = |id: i64, q: &'static str, extra: &'static str| async move {
        api(
            addr,
            "PUT",
            q,
            &format!(r#"{{"id":{id},"status":1{extra}}}"#),
        )
        .await
    };
    let msg = "Token has expired and cannot be enabled. Please modify the expiration time or set it to never expire";
    enable(expired, "/api/token/?status_only=1", "")
        .await
        .assert_fail(200, msg);
    // A full update carrying a new expiry and status 1 is still refused.
    enable(expired, "/api/token/", r#","expired_time":-1"#)
        .await
        .assert_fail(200, msg);
    // Fix the expiry with status 3 in the body, then enable.
    enable(expired, "/api/token/", "").await;
    api(
        s.addr,
        "PUT",
        "/api/token/",
        &format!(r#"{{"id":{expired},"status":3,"expired_time":-1}}"#),
    )
    .await;
    assert_eq!(
        enable(expired, "/api/token/?status_only=1", "")
            .await
            .json()["success"],
        true
    );
    enable(exhausted, "/api/token/?status_only=1", "").await.assert_fail(
        200,
        "Token quota is exhausted and cannot be enabled. Please modify the remaining quota or set it to unlimited",
    );
}

#[tokio::test]
async fn update_errors() {
    let s = start().await;
    let foreign = s.emulator.insert_token(5, NewToken::default());
    api(s.addr, "PUT", "/api/token/", r#"{"name":"x"}"#)
        .await
        .assert_fail(200, "id 或 userId 为空！");
    api(
        s.addr,
        "PUT",
        "/api/token/",
        &format!(r#"{{"id":{foreign}}}"#),
    )
    .await
    .assert_fail(200, "record not found");
    api(s.addr, "PUT", "/api/token/", r#"{"id":999}"#)
        .await
        .assert_fail(200, "record not found");
    // Quota checks run even with status_only; name length too.
    api(
        s.addr,
        "PUT",
        "/api/token/?status_only=1",
        r#"{"id":1,"remain_quota":-1}"#,
    )
    .await
    .assert_fail(200, "Quota value cannot be negative");
}

// === delete ===

#[tokio::test]
async fn delete_is_soft() {
    let s = start().await;
    let id = seed(&s.emulator, "d");
    let r = api(s.addr, "DELETE", &format!("/api/token/{id}"), "").await;
    assert_eq!(r.body, r#"{"message":"","success":true}"#);
    api(s.addr, "GET", &format!("/api/token/{id}"), "")
        .await
        .assert_fail(200, "record not found");
    api(s.addr, "DELETE", &format!("/api/token/{id}"), "")
        .await
        .assert_fail(200, "record not found");
    assert!(stored(&s.emulator, id).deleted);
    assert_eq!(
        api(s.addr, "GET", "/api/token/", "").await.json()["data"]["total"],
        0
    );
    api(s.addr, "DELETE", "/api/token/abc", "")
        .await
        .assert_fail(200, "id 或 userId 为空！");
    let foreign = s.emulator.insert_token(5, NewToken::default());
    api(s.addr, "DELETE", &format!("/api/token/{foreign}"), "")
        .await
        .assert_fail(200, "record not found");
}

#[tokio::test]
async fn batch_delete_counts_what_it_deleted() {
    let s = start().await;
    let a = seed(&s.emulator, "a");
    let b = seed(&s.emulator, "b");
    let foreign = s.emulator.insert_token(5, NewToken::default());
    let body = format!(r#"{{"ids":[{a},{a},999,{foreign},{b}]}}"#);
    let r = api(s.addr, "POST", "/api/token/batch", &body).await;
    assert_eq!(r.body, r#"{"data":2,"message":"","success":true}"#);
    assert!(stored(&s.emulator, a).deleted && stored(&s.emulator, b).deleted);
    assert!(!stored(&s.emulator, foreign).deleted);
    let r = api(s.addr, "POST", "/api/token/batch", &body).await;
    assert_eq!(r.json()["data"], 0);
    for bad in [
        r#"{"ids":[]}"#,
        "{}",
        r#"{"ids":["1"]}"#,
        "nope",
        r#"{"ids":1}"#,
    ] {
        api(s.addr, "POST", "/api/token/batch", bad)
            .await
            .assert_fail(200, "Invalid parameters");
    }
}

// === keys ===

#[tokio::test]
async fn keys_are_masked_and_revealed_with_cache_headers() {
    let s = start().await;
    let id = seed(&s.emulator, "k");
    let short = s.emulator.insert_token(
        UID,
        NewToken {
            key: Some("abcdefgh".into()),
            ..Default::default()
        },
    );
    let key = stored(&s.emulator, id).key;
    let r = api(s.addr, "GET", &format!("/api/token/{id}"), "").await;
    assert_eq!(
        r.json()["data"]["key"],
        format!("{}**********{}", &key[..4], &key[44..])
    );
    assert!(r.header("Cache-Control").is_none());
    let r = api(s.addr, "GET", &format!("/api/token/{short}"), "").await;
    assert_eq!(r.json()["data"]["key"], "ab****gh");
    let r = api(s.addr, "POST", &format!("/api/token/{id}/key"), "").await;
    assert_eq!(
        r.body,
        format!(r#"{{"data":{{"key":"{key}"}},"message":"","success":true}}"#)
    );
    assert_eq!(
        r.header("Cache-Control"),
        Some("no-store, no-cache, must-revalidate, private, max-age=0")
    );
    assert_eq!(r.header("Pragma"), Some("no-cache"));
    assert_eq!(r.header("CDN-Cache-Control"), Some("no-store"));
    assert_eq!(r.header("Cloudflare-CDN-Cache-Control"), Some("no-store"));
    assert_eq!(r.header("Expires"), Some("0"));
    api(s.addr, "POST", "/api/token/999/key", "")
        .await
        .assert_fail(200, "record not found");
    api(s.addr, "POST", "/api/token/x/key", "")
        .await
        .assert_fail(200, "strconv.Atoi: parsing \"x\": invalid syntax");
}

#[tokio::test]
async fn batch_keys_reveal_up_to_100() {
    let s = start().await;
    let ids: Vec<i64> = (0..11)
        .map(|i| seed(&s.emulator, &format!("t{i}")))
        .collect();
    let foreign = s.emulator.insert_token(5, NewToken::default());
    let body = json!({"ids": [ids[1], ids[10], 999, foreign]}).to_string();
    let r = api(s.addr, "POST", "/api/token/batch/keys", &body).await;
    let k = |id: i64| stored(&s.emulator, id).key;
    assert_eq!(
        r.body,
        format!(
            r#"{{"data":{{"keys":{{"{}":"{}","{}":"{}"}}}},"message":"","success":true}}"#,
            ids[10],
            k(ids[10]),
            ids[1],
            k(ids[1])
        )
    );
    assert_eq!(r.header("Pragma"), Some("no-cache"));
    let many: Vec<i64> = (1..=101).collect();
    api(
        s.addr,
        "POST",
        "/api/token/batch/keys",
        &json!({"ids": many}).to_string(),
    )
    .await
    .assert_fail(200, "Too many items in batch request, maximum is 100");
    let hundred: Vec<i64> = (1..=100).collect();
    let r = api(
        s.addr,
        "POST",
        "/api/token/batch/keys",
        &json!({"ids": hundred}).to_string(),
    )
    .await;
    assert_eq!(r.json()["data"]["keys"].as_object().unwrap().len(), 11);
    api(s.addr, "POST", "/api/token/batch/keys", r#"{"ids":[]}"#)
        .await
        .assert_fail(200, "Invalid parameters");
}

// === list and search ===

#[tokio::test]
async fn list_paginates_newest_first() {
    let s = start().await;
    for i in 0..25 {
        seed(&s.emulator, &format!("t{i}"));
    }
    s.emulator.insert_token(5, NewToken::default());
    let page = |q: &'static str| async move {
        let r = api(s.addr, "GET", &format!("/api/token/{q}"), "").await;
        let d = r.json()["data"].clone();
        let ids: Vec<i64> = d["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_i64().unwrap())
            .collect();
        (
            d["page"].as_i64().unwrap(),
            d["page_size"].as_i64().unwrap(),
            d["total"].as_i64().unwrap(),
            ids,
        )
    };
    let (p, ps, total, ids) = page("").await;
    assert_eq!((p, ps, total), (1, 10, 25));
    assert_eq!(ids, (16..=25).rev().collect::<Vec<_>>());
    let (p, ps, _, ids) = page("?p=3").await;
    assert_eq!((p, ps, ids), (3, 10, vec![5, 4, 3, 2, 1]));
    assert_eq!(page("?p=9").await.3, Vec::<i64>::new());
    assert_eq!(page("?page_size=200").await.1, 100);
    assert_eq!(page("?ps=5").await.1, 5);
    assert_eq!(page("?size=7").await.1, 7);
    assert_eq!(page("?page_size=3&ps=5&size=7").await.1, 3);
    assert_eq!(page("?page_size=0&ps=0&size=7").await.1, 7);
    assert_eq!(page("?p=0").await.0, 1);
    assert_eq!(page("?p=-2&page_size=abc").await.0, 1);
    let r = api(s.addr, "GET", "/api/token/?p=1&page_size=1", "").await;
    assert!(r
        .body
        .starts_with(r#"{"data":{"page":1,"page_size":1,"total":25,"items":[{"id":25,"#));
}

#[tokio::test]
async fn search_follows_like_rules() {
    let s = start().await;
    let alpha = seed(&s.emulator, "alpha");
    seed(&s.emulator, "alphabet");
    seed(&s.emulator, "a_b");
    let keyed = s.emulator.insert_token(
        UID,
        NewToken {
            name: "k".into(),
            key: Some("KEYabc123".into()),
            ..Default::default()
        },
    );
    let names = |q: String| async move {
        let r = api(s.addr, "GET", &format!("/api/token/search?{q}"), "").await;
        assert_eq!(r.json()["success"], true, "{}", r.body);
        r.json()["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names("keyword=alpha".into()).await, vec!["alpha"]);
    assert_eq!(
        names("keyword=alph%25".into()).await,
        vec!["alphabet", "alpha"]
    );
    assert_eq!(names("keyword=a_b".into()).await, vec!["a_b"]);
    assert_eq!(names("keyword=a_%25".into()).await, vec!["a_b"]);
    assert_eq!(names("token=sk-KEYabc123".into()).await, vec!["k"]);
    // A fragment long enough that the random keys of the other tokens cannot hold it by chance
    // (`abc` alone once matched one of them).
    assert_eq!(names("token=%25EYabc12%25".into()).await, vec!["k"]);
    assert_eq!(
        names("keyword=k&token=nope".into()).await,
        Vec::<String>::new()
    );
    assert_eq!(names("".into()).await.len(), 4);
    let r = api(
        s.addr,
        "GET",
        "/api/token/search?keyword=alpha&page_size=1",
        "",
    )
    .await;
    assert_eq!(r.json()["data"]["total"], 1);
    assert_eq!(r.json()["data"]["items"][0]["id"], alpha);
    assert!(r.json()["data"]["items"][0]["key"]
        .as_str()
        .unwrap()
        .contains('*'));
    let err = |q: &'static str| api(s.addr, "GET", q, "");
    err("/api/token/search?keyword=a%25%25b")
        .await
        .assert_fail(200, "搜索模式中不允许包含连续的 % 通配符");
    err("/api/token/search?keyword=%25a%25b%25")
        .await
        .assert_fail(200, "搜索模式中最多允许包含 2 个 % 通配符");
    err("/api/token/search?token=%25a")
        .await
        .assert_fail(200, "使用模糊搜索时，关键词长度至少为 2 个字符");
    let _ = keyed;
    for _ in 0..1000 {
        seed(&s.emulator, "x");
    }
    err("/api/token/search?keyword=al%25")
        .await
        .assert_fail(200, "令牌数量超过上限，仅允许精确搜索，请勿使用 % 通配符");
    assert_eq!(names("keyword=alpha".into()).await, vec!["alpha"]);
}

// === routing ===

#[tokio::test]
async fn unknown_routes_and_methods_are_404_invalid_url() {
    let s = start().await;
    for (method, path) in [
        ("OPTIONS", "/api/token/"),
        ("PUT", "/api/token/batch"),
        ("DELETE", "/api/token/"),
        ("POST", "/api/token/5"),
        ("GET", "/api/token/5/key"),
        ("PATCH", "/api/token/5"),
        ("GET", "/api/other"),
    ] {
        let r = raw(s.addr, method, path, &[], "").await;
        assert_eq!(r.status, 404, "{method} {path}");
        assert_eq!(
            r.body,
            format!(
                r#"{{"error":{{"message":"Invalid URL ({method} {path})","type":"invalid_request_error","param":"","code":""}}}}"#
            )
        );
        assert_eq!(
            r.header("Content-Type"),
            Some("application/json; charset=utf-8")
        );
    }
    let r = raw(s.addr, "HEAD", "/api/token/", &[], "").await;
    assert_eq!(r.status, 404);
    let r = api(s.addr, "GET", "/api/token/batch", "").await;
    r.assert_fail(200, "strconv.Atoi: parsing \"batch\": invalid syntax");
    let r = api(s.addr, "GET", "/api/token/auto-groups", "").await;
    r.assert_fail(200, "strconv.Atoi: parsing \"auto-groups\": invalid syntax");
}

#[tokio::test]
async fn trailing_slash_redirects_come_before_auth() {
    let s = start().await;
    let r = raw(s.addr, "GET", "/api/token?p=2&q=%20x", &[], "").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("Location"), Some("/api/token/?p=2&q=%20x"));
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert_eq!(
        r.body,
        "<a href=\"/api/token/?p=2&amp;q=%20x\">Moved Permanently</a>.\n\n"
    );
    assert!(r.header("X-Oneapi-Request-Id").is_none());
    for (method, from, to) in [
        ("POST", "/api/token", "/api/token/"),
        (
            "PUT",
            "/api/token?status_only=1",
            "/api/token/?status_only=1",
        ),
        ("DELETE", "/api/token/7/", "/api/token/7"),
        ("POST", "/api/token/batch/", "/api/token/batch"),
        ("POST", "/api/token/3/key/", "/api/token/3/key"),
    ] {
        let r = raw(s.addr, method, from, &[], "").await;
        assert_eq!(
            (r.status, r.header("Location")),
            (307, Some(to)),
            "{method} {from}"
        );
        assert_eq!(r.body, "");
    }
    let r = raw(s.addr, "GET", "/api/token/search/", &[], "").await;
    assert_eq!(
        (r.status, r.header("Location")),
        (301, Some("/api/token/search"))
    );
    let r = raw(
        s.addr,
        "GET",
        "/api/token",
        &[("X-Forwarded-Prefix", "/gw")],
        "",
    )
    .await;
    assert_eq!(r.header("Location"), Some("/gw/api/token/"));
}

// === headers ===

#[tokio::test]
async fn response_headers_request_id_and_version() {
    let s = start().await;
    let r = api(s.addr, "GET", "/api/token/", "").await;
    let id = r.header("X-Oneapi-Request-Id").unwrap();
    assert_eq!(id.len(), 31);
    assert!(r.header("X-New-Api-Version").is_some());
    assert!(
        r.head.contains("\r\nX-Oneapi-Request-Id: "),
        "Go-canonical header names: {}",
        r.head
    );
    assert!(r
        .head
        .contains("\r\nContent-Type: application/json; charset=utf-8"));
    let uid = UID.to_string();
    let h = [
        ("Authorization", TOKEN),
        ("New-Api-User", uid.as_str()),
        ("X-Oneapi-Request-Id", "mine"),
    ];
    let r = raw(s.addr, "GET", "/api/token/", &h, "").await;
    assert!(r.header("X-Oneapi-Request-Id").is_none());
    let r = raw(s.addr, "OPTIONS", "/api/token/", &[], "").await;
    assert!(r.header("X-Oneapi-Request-Id").is_some());
}

// === rate limits ===

#[tokio::test]
async fn rate_limits_answer_bare_429_per_client_ip() {
    let s = start_with(|c| c.rate_limits = true).await;
    let a = s.addr;
    let uid = UID.to_string();
    let from = |ip: &'static str| {
        [
            ("Authorization", TOKEN),
            ("New-Api-User", uid.as_str()),
            ("X-Forwarded-For", ip),
        ]
    };
    for _ in 0..180 {
        assert_eq!(
            raw(a, "GET", "/api/token/", &from("9.9.9.9"), "")
                .await
                .status,
            200
        );
    }
    let r = raw(a, "GET", "/api/token/", &from("9.9.9.9, 10.0.0.1"), "").await;
    assert_eq!((r.status, r.body.as_str()), (429, ""));
    assert_eq!(r.header("Content-Length"), Some("0"));
    // Global limit runs before auth.
    assert_eq!(
        raw(
            a,
            "GET",
            "/api/token/",
            &[("X-Forwarded-For", "9.9.9.9")],
            ""
        )
        .await
        .status,
        429
    );
    assert_eq!(
        raw(a, "GET", "/api/token/", &from("8.8.8.8"), "")
            .await
            .status,
        200
    );
    // Key reveals: 20 per IP, shared by both routes.
    let id = seed(&s.emulator, "k");
    for i in 0..20 {
        let path = if i % 2 == 0 {
            format!("/api/token/{id}/key")
        } else {
            "/api/token/batch/keys".into()
        };
        let r = raw(
            a,
            "POST",
            &path,
            &from("7.7.7.7"),
            &format!(r#"{{"ids":[{id}]}}"#),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let r = raw(
        a,
        "POST",
        &format!("/api/token/{id}/key"),
        &from("7.7.7.7"),
        "",
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (429, ""));
    assert!(r.header("Pragma").is_none());
    // Search: 10 per user, whatever the IP.
    for i in 0..10 {
        let ip = ["1.1.1.1", "2.2.2.2"][i % 2];
        assert_eq!(
            raw(a, "GET", "/api/token/search", &from(ip), "")
                .await
                .status,
            200
        );
    }
    assert_eq!(
        raw(a, "GET", "/api/token/search", &from("3.3.3.3"), "")
            .await
            .status,
        429
    );
}

// === hooks: seen, delay, shutdown, config ===

#[tokio::test]
async fn seen_records_every_request_exactly() {
    let s = start().await;
    api(
        s.addr,
        "PUT",
        "/api/token/?status_only=a%20b",
        r#"{"id":1}"#,
    )
    .await;
    raw(s.addr, "GET", "/api/token", &[("X-Test", "1")], "").await;
    let seen = s.emulator.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, http::Method::PUT);
    assert_eq!(seen[0].uri.to_string(), "/api/token/?status_only=a%20b");
    assert_eq!(&seen[0].body[..], br#"{"id":1}"#);
    assert_eq!(seen[0].headers["new-api-user"], "42");
    assert_eq!(seen[0].peer.ip().to_string(), "127.0.0.1");
    assert_eq!(seen[1].uri.to_string(), "/api/token");
    assert_eq!(seen[1].headers["x-test"], "1");
    s.emulator.clear_seen();
    assert!(s.emulator.seen().is_empty());
}

#[tokio::test]
async fn set_delay_slows_every_answer_and_shutdown_drains() {
    let s = start().await;
    s.emulator.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(api(s.addr, "GET", "/api/token/", "").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A request in flight when shutdown starts still gets its answer.
    let addr = s.addr;
    let in_flight = tokio::spawn(async move { api(addr, "POST", "/api/token/", "{}").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let emulator = s.emulator.clone();
    s.shutdown().await.unwrap();
    assert_eq!(
        in_flight.await.unwrap().body,
        r#"{"message":"","success":true}"#
    );
    assert_eq!(emulator.tokens().len(), 1);
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let s = start().await;
    let addr = s.addr;
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[test]
fn era_parses_and_prints() {
    assert_eq!("E3".parse::<Era>().unwrap(), Era::E3);
    assert_eq!("e2".parse::<Era>().unwrap(), Era::E2);
    assert!("e4".parse::<Era>().is_err());
    assert_eq!(Era::E3.to_string(), "e3");
    assert_eq!(Era::default(), Era::E2);
    let c = EmulatorConfig::new("t", 1);
    assert_eq!((c.era, c.rate_limits), (Era::E2, false));
}

#[tokio::test]
async fn deep_nesting_is_refused_without_crashing() {
    let s = start().await;
    let deep = format!("{}{}", "[".repeat(999), "]".repeat(999));
    let r = api(s.addr, "POST", "/api/token/", &deep).await;
    r.assert_fail(
        200,
        "json: cannot unmarshal array into Go value of type model.Token",
    );
    let nested = format!(r#"{{"x":{}}}"#, "[".repeat(5000));
    let r = api(s.addr, "POST", "/api/token/", &nested).await;
    r.assert_fail(200, "exceeded max depth");
}

#[tokio::test]
async fn e3_auto_groups_rules_on_create_and_update() {
    let s = start_with(|c| c.era = Era::E3).await;
    let h = [("Authorization", TOKEN)];
    let body = r#"{"group":"auto","auto_groups":["default"],"cross_group_retry":true}"#;
    let r = raw(s.addr, "POST", "/api/token/", &h, body).await;
    assert_eq!(r.body, r#"{"message":"","success":true}"#);
    let t = &s.emulator.tokens()[0];
    assert_eq!(t.auto_groups, Some(vec!["default".to_owned()]));
    assert!(t.cross_group_retry);
    let body = r#"{"group":"vip","auto_groups":["default"],"cross_group_retry":true}"#;
    raw(s.addr, "POST", "/api/token/", &h, body).await;
    let t = &s.emulator.tokens()[1];
    assert_eq!((t.auto_groups.clone(), t.cross_group_retry), (None, false));
    let dup = r#"{"group":"auto","auto_groups":["default","default"]}"#;
    raw(s.addr, "POST", "/api/token/", &h, dup)
        .await
        .assert_fail(200, "Invalid parameters");
    // Update of an "auto" token without the key keeps the stored list.
    let r = raw(
        s.addr,
        "PUT",
        "/api/token/",
        &h,
        r#"{"id":1,"group":"auto"}"#,
    )
    .await;
    assert_eq!(r.json()["data"]["auto_groups"], json!(["default"]));
    let r = raw(s.addr, "PUT", "/api/token/", &h, r#"{"id":1,"group":""}"#).await;
    assert_eq!(r.json()["data"]["auto_groups"], Value::Null);
}

// === fork field: billing_type ===

/// The `billing_type` of token `id` as `GET /api/token/{id}` shows it.
async fn shown_billing_type(addr: SocketAddr, id: i64) -> Value {
    let r = api(addr, "GET", &format!("/api/token/{id}"), "").await;
    assert_eq!(r.json()["success"], true, "{}", r.body);
    r.json()["data"]["billing_type"].clone()
}

#[tokio::test]
async fn fork_billing_type_is_bound_shown_and_reset_by_a_full_update_without_it() {
    let s = start_with(|c| c.fork_billing_type = true).await;
    let r = api(
        s.addr,
        "POST",
        "/api/token/",
        r#"{"name":"b","billing_type":"per_request"}"#,
    )
    .await;
    assert_eq!(r.body, r#"{"message":"","success":true}"#);
    let id = s.emulator.tokens()[0].id;
    assert_eq!(stored(&s.emulator, id).billing_type, "per_request");
    // Go struct order: after cross_group_retry, before DeletedAt.
    let r = api(s.addr, "GET", &format!("/api/token/{id}"), "").await;
    assert!(
        r.body
            .contains(r#""cross_group_retry":false,"billing_type":"per_request","DeletedAt":null"#),
        "{}",
        r.body
    );
    // Every view shows it: list, search.
    let r = api(s.addr, "GET", "/api/token/", "").await;
    assert_eq!(r.json()["data"]["items"][0]["billing_type"], "per_request");
    let r = api(s.addr, "GET", "/api/token/search?keyword=b", "").await;
    assert_eq!(r.json()["data"]["items"][0]["billing_type"], "per_request");
    // A wrong type is Go's binding error, like the other string fields.
    api(s.addr, "POST", "/api/token/", r#"{"billing_type":1}"#)
        .await
        .assert_fail(
            200,
            "json: cannot unmarshal number into Go struct field Token.billing_type of type string",
        );
    assert_eq!(s.emulator.tokens().len(), 1);

    // Status-only leaves it.
    let r = api(
        s.addr,
        "PUT",
        "/api/token/?status_only=true",
        &format!(r#"{{"id":{id},"status":2}}"#),
    )
    .await;
    assert_eq!(r.json()["data"]["billing_type"], "per_request");
    assert_eq!(stored(&s.emulator, id).status, 2);
    assert_eq!(stored(&s.emulator, id).billing_type, "per_request");

    // A full update with it writes the new value.
    let r = api(
        s.addr,
        "PUT",
        "/api/token/",
        &format!(r#"{{"id":{id},"name":"b","billing_type":"tiered"}}"#),
    )
    .await;
    assert_eq!(r.json()["data"]["billing_type"], "tiered");
    assert_eq!(stored(&s.emulator, id).billing_type, "tiered");
    assert_eq!(shown_billing_type(s.addr, id).await, "tiered");

    // A full update without it (a client that does not know the field) resets it to "".
    let r = api(
        s.addr,
        "PUT",
        "/api/token/",
        &format!(r#"{{"id":{id},"name":"b","remain_quota":5}}"#),
    )
    .await;
    assert_eq!(r.json()["data"]["billing_type"], "");
    assert_eq!(stored(&s.emulator, id).billing_type, "");
    assert_eq!(shown_billing_type(s.addr, id).await, "");

    // null is Go's "leave the zero value": "" as well.
    api(
        s.addr,
        "PUT",
        "/api/token/",
        &format!(r#"{{"id":{id},"billing_type":"x"}}"#),
    )
    .await;
    api(
        s.addr,
        "PUT",
        "/api/token/",
        &format!(r#"{{"id":{id},"billing_type":null}}"#),
    )
    .await;
    assert_eq!(stored(&s.emulator, id).billing_type, "");

    // Seeding sets it; a token created without it has "".
    let seeded = s.emulator.insert_token(
        UID,
        NewToken {
            billing_type: "seeded".into(),
            ..Default::default()
        },
    );
    assert_eq!(shown_billing_type(s.addr, seeded).await, "seeded");
    api(s.addr, "POST", "/api/token/", r#"{"name":"plain"}"#).await;
    let plain = s.emulator.tokens().last().unwrap().id;
    assert_eq!(shown_billing_type(s.addr, plain).await, "");
}

#[tokio::test]
async fn fork_billing_type_in_e3_comes_before_auto_groups() {
    let s = start_with(|c| {
        c.era = Era::E3;
        c.fork_billing_type = true;
    })
    .await;
    let h = [("Authorization", TOKEN)];
    raw(s.addr, "POST", "/api/token/", &h, r#"{"billing_type":"x"}"#).await;
    let r = raw(s.addr, "GET", "/api/token/1", &h, "").await;
    assert!(
        r.body.contains(
            r#""cross_group_retry":false,"billing_type":"x","auto_groups":null,"DeletedAt":null"#
        ),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn billing_type_is_off_by_default_and_then_nowhere_in_the_api() {
    let s = start().await;
    assert!(!s.emulator.config().fork_billing_type);
    let id = s.emulator.insert_token(
        UID,
        NewToken {
            name: "n".into(),
            billing_type: "seeded".into(),
            ..Default::default()
        },
    );
    let r = api(s.addr, "GET", &format!("/api/token/{id}"), "").await;
    assert!(!r.body.contains("billing_type"), "{}", r.body);
    let r = api(s.addr, "GET", "/api/token/", "").await;
    assert!(!r.body.contains("billing_type"), "{}", r.body);
    let r = api(s.addr, "GET", "/api/token/search?keyword=n", "").await;
    assert!(!r.body.contains("billing_type"), "{}", r.body);
    // An unknown key to Go: ignored whatever its type, and a full update leaves the column.
    let r = api(s.addr, "POST", "/api/token/", r#"{"billing_type":1}"#).await;
    assert_eq!(r.body, r#"{"message":"","success":true}"#);
    let r = api(
        s.addr,
        "PUT",
        "/api/token/",
        &format!(r#"{{"id":{id},"name":"n","billing_type":"other"}}"#),
    )
    .await;
    assert_eq!(r.json()["success"], true);
    assert!(!r.body.contains("billing_type"), "{}", r.body);
    assert_eq!(stored(&s.emulator, id).billing_type, "seeded");
    let created = s.emulator.tokens().last().unwrap().clone();
    assert_eq!(created.billing_type, "");
}

// === relay usage ===

#[tokio::test]
async fn use_quota_bills_limited_and_unlimited_tokens_like_new_api() {
    let s = start().await;
    let e = &s.emulator;
    let limited = e.insert_token(
        UID,
        NewToken {
            remain_quota: 100,
            accessed_time: Some(1),
            ..Default::default()
        },
    );
    assert!(e.use_quota(limited, 30));
    let t = stored(e, limited);
    assert_eq!((t.remain_quota, t.used_quota, t.status), (70, 30, 1));
    assert!(t.accessed_time > 1, "billing sets accessed_time");
    let r = api(s.addr, "GET", &format!("/api/token/{limited}"), "").await;
    assert_eq!(r.json()["data"]["remain_quota"], 70);
    assert_eq!(r.json()["data"]["used_quota"], 30);
    // Run out: status 4 (exhausted), and enabling it again is refused on that stored state.
    assert!(e.use_quota(limited, 75));
    let t = stored(e, limited);
    assert_eq!((t.remain_quota, t.used_quota, t.status), (-5, 105, 4));
    api(
        s.addr,
        "PUT",
        "/api/token/?status_only=1",
        &format!(r#"{{"id":{limited},"status":1}}"#),
    )
    .await
    .assert_fail(
        200,
        "Token quota is exhausted and cannot be enabled. Please modify the remaining quota or set it to unlimited",
    );

    // Exactly 0 left is exhausted too.
    let exact = e.insert_token(
        UID,
        NewToken {
            remain_quota: 10,
            ..Default::default()
        },
    );
    assert!(e.use_quota(exact, 10));
    assert_eq!(
        (stored(e, exact).remain_quota, stored(e, exact).status),
        (0, 4)
    );

    // Unlimited: remain_quota goes negative, the status stays.
    let unlimited = e.insert_token(
        UID,
        NewToken {
            unlimited_quota: true,
            ..Default::default()
        },
    );
    assert!(e.use_quota(unlimited, 50));
    assert!(e.use_quota(unlimited, 25));
    let t = stored(e, unlimited);
    assert_eq!((t.remain_quota, t.used_quota, t.status), (-75, 75, 1));
    let r = api(s.addr, "GET", &format!("/api/token/{unlimited}"), "").await;
    assert_eq!(r.json()["data"]["remain_quota"], -75);

    // A disabled token is billed but keeps status 2 (relay auth never reaches the quota check).
    let disabled = e.insert_token(
        UID,
        NewToken {
            status: 2,
            remain_quota: 5,
            ..Default::default()
        },
    );
    assert!(e.use_quota(disabled, 5));
    assert_eq!(
        (stored(e, disabled).remain_quota, stored(e, disabled).status),
        (0, 2)
    );

    // Any owner's live token; not a missing or soft-deleted one.
    let other = e.insert_token(
        7,
        NewToken {
            remain_quota: 9,
            ..Default::default()
        },
    );
    assert!(e.use_quota(other, 1));
    assert_eq!(stored(e, other).remain_quota, 8);
    assert!(!e.use_quota(9_999, 1));
    api(s.addr, "DELETE", &format!("/api/token/{exact}"), "").await;
    let before = stored(e, exact);
    assert!(!e.use_quota(exact, 1));
    assert_eq!(stored(e, exact), before);
}

#[tokio::test]
async fn usage_armed_for_the_next_read_lands_right_after_it_once() {
    let s = start().await;
    let e = &s.emulator;
    let id = e.insert_token(
        UID,
        NewToken {
            name: "raced".into(),
            remain_quota: 1_000,
            ..Default::default()
        },
    );
    let neighbour = seed(e, "neighbour");
    let foreign = e.insert_token(
        7,
        NewToken {
            remain_quota: 1_000,
            ..Default::default()
        },
    );
    e.use_quota_after_next_read(id, 300);
    e.use_quota_after_next_read(foreign, 300);

    // Neither list, search, key reveal, another token's read nor a failed read fires it.
    api(s.addr, "GET", "/api/token/", "").await;
    api(s.addr, "GET", "/api/token/search?keyword=raced", "").await;
    api(s.addr, "POST", &format!("/api/token/{id}/key"), "").await;
    api(s.addr, "GET", &format!("/api/token/{neighbour}"), "").await;
    api(s.addr, "GET", &format!("/api/token/{foreign}"), "")
        .await
        .assert_fail(200, "record not found");
    assert_eq!(stored(e, id).remain_quota, 1_000);
    assert_eq!(stored(e, foreign).remain_quota, 1_000);

    // The read answers the values before the usage; the row has it right after.
    let r = api(s.addr, "GET", &format!("/api/token/{id}"), "").await;
    assert_eq!(r.json()["data"]["remain_quota"], 1_000);
    assert_eq!(r.json()["data"]["used_quota"], 0);
    let t = stored(e, id);
    assert_eq!((t.remain_quota, t.used_quota), (700, 300));

    // Once only.
    let r = api(s.addr, "GET", &format!("/api/token/{id}"), "").await;
    assert_eq!(r.json()["data"]["remain_quota"], 700);
    assert_eq!(stored(e, id).remain_quota, 700);

    // What it is for: a read-merge-write writes back the remain_quota it read, so usage between
    // the read and the write is overwritten (used_quota keeps it: no full update writes that).
    e.use_quota_after_next_read(id, 200);
    let read = api(s.addr, "GET", &format!("/api/token/{id}"), "")
        .await
        .json()["data"]
        .clone();
    assert_eq!(read["remain_quota"], 700);
    assert_eq!(stored(e, id).remain_quota, 500);
    let mut body = read.clone();
    body["name"] = json!("renamed");
    body["expired_time"] = json!(-1);
    api(s.addr, "PUT", "/api/token/", &body.to_string()).await;
    let t = stored(e, id);
    assert_eq!((t.remain_quota, t.used_quota), (700, 500));

    // Armed twice: one per read, oldest first (a client that re-reads races again).
    e.use_quota_after_next_read(id, 10);
    e.use_quota_after_next_read(id, 20);
    api(s.addr, "GET", &format!("/api/token/{id}"), "").await;
    assert_eq!(stored(e, id).remain_quota, 690);
    api(s.addr, "GET", &format!("/api/token/{id}"), "").await;
    assert_eq!(stored(e, id).remain_quota, 670);
    api(s.addr, "GET", &format!("/api/token/{id}"), "").await;
    assert_eq!(stored(e, id).remain_quota, 670);
}
