//! The audit trail over real sockets and a real file (SPEC §6): a record per outcome, intent
//! durable before the upstream sees the change, no secret in any record, rotation and restart on
//! one chain, and fail-closed behaviour when the trail cannot be written.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig, NewToken};

fn of_request<'a>(records: &'a [Value], reply: &Reply) -> Vec<&'a Value> {
    let id = reply.headers["x-request-id"].to_str().unwrap();
    records.iter().filter(|r| r["request_id"] == id).collect()
}

#[tokio::test]
async fn a_forwarded_change_has_an_intent_then_an_outcome() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let reply = admin(
        gateway.addr,
        "POST",
        "/api/token/",
        Some(r#"{"name":"audited","remain_quota":7}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true);
    let all = audit_records(&gateway.audit_path);
    let mine = of_request(&all, &reply);
    assert_eq!(mine.len(), 2, "{all:#?}");
    let (intent, outcome) = (mine[0], mine[1]);
    assert_eq!(intent["phase"], "intent");
    assert_eq!(outcome["phase"], "outcome");
    assert_eq!(
        outcome["seq"].as_u64().unwrap(),
        intent["seq"].as_u64().unwrap() + 1
    );
    assert_eq!(outcome["prev"], intent["hash"]);
    for record in [intent, outcome] {
        assert_eq!(record["v"], 2);
        assert_eq!(record["client"], "admin");
        assert_eq!(record["op"], "create");
        assert_eq!(record["method"], "POST");
        assert_eq!(record["path"], "/api/token/");
        assert_eq!(record["source_ip"], "127.0.0.1");
        assert_eq!(
            record["request"],
            json!({"name": "audited", "remain_quota": 7})
        );
        assert_eq!(record["token_ids"], json!([]));
        let ts = record["ts"].as_str().unwrap();
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
            "{ts}"
        );
        assert_eq!(record["hash"].as_str().unwrap().len(), 64);
    }
    assert!(
        intent.get("outcome").is_none(),
        "intent records carry no outcome fields"
    );
    assert_eq!(outcome["outcome"], "forwarded");
    assert_eq!(outcome["reason"], Value::Null);
    assert_eq!(outcome["status"], 200);
    assert_eq!(outcome["upstream_status"], 200);
    assert_eq!(outcome["upstream_success"], true);
    assert_eq!(outcome["upstream_message"], "");
    assert!(outcome["duration_ms"].is_u64());
    assert_eq!(upstream.emulator.seen().len(), 1);
}

#[tokio::test]
async fn the_intent_is_durable_before_the_upstream_sees_the_change() {
    let (upstream, gateway) = emulator_and_gateway().await;
    upstream.emulator.set_delay(Duration::from_millis(500));
    let addr = gateway.addr;
    let request = tokio::spawn(async move {
        admin(addr, "POST", "/api/token/", Some(r#"{"name":"ordered"}"#)).await
    });
    while upstream.emulator.seen().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The upstream is answering now: the intent is already on disk, the outcome not yet.
    let during = audit_records(&gateway.audit_path);
    assert_eq!(during.len(), 1, "{during:#?}");
    assert_eq!(
        (
            during[0]["phase"].as_str(),
            during[0]["request"]["name"].as_str()
        ),
        (Some("intent"), Some("ordered"))
    );
    let reply = request.await.unwrap();
    let after = audit_records(&gateway.audit_path);
    assert_eq!(of_request(&after, &reply).len(), 2);
}

#[tokio::test]
async fn every_refusal_has_an_outcome_record_with_its_reason() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let reader = format!("Bearer {READER_KEY}");
    let json_headers = |auth: &'static str| {
        vec![
            ("authorization", auth),
            ("content-type", "application/json"),
        ]
    };
    let cases: Vec<(Reply, &str, u16, Value)> = vec![
        (
            send(
                gateway.addr,
                "POST",
                "/api/token/",
                &json_headers("Bearer tg_unknown"),
                Some(r#"{"name":"x"}"#),
            )
            .await,
            "unauthenticated",
            401,
            Value::Null,
        ),
        (
            send(
                gateway.addr,
                "DELETE",
                "/api/token/5",
                &[("authorization", &reader)],
                None,
            )
            .await,
            "forbidden",
            403,
            json!("reader"),
        ),
        (
            admin(
                gateway.addr,
                "POST",
                "/api/token/",
                Some(r#"{"name":"","remain_quota":-1}"#),
            )
            .await,
            "invalid_field",
            400,
            json!("admin"),
        ),
        (
            admin(
                gateway.addr,
                "PUT",
                "/api/token/",
                Some(r#"{"id":5,"name":"x"}"#),
            )
            .await,
            "incomplete_update",
            400,
            json!("admin"),
        ),
        (
            admin(gateway.addr, "POST", "/api/token/", Some("[]")).await,
            "invalid_json",
            400,
            json!("admin"),
        ),
    ];
    let all = audit_records(&gateway.audit_path);
    for (reply, reason, status, client) in &cases {
        let mine = of_request(&all, reply);
        assert_eq!(
            mine.len(),
            1,
            "{reason}: a refusal has a single outcome record: {all:#?}"
        );
        let record = mine[0];
        assert_eq!(record["phase"], "outcome");
        assert_eq!(record["outcome"], "rejected", "{reason}");
        assert_eq!(record["reason"], *reason);
        assert_eq!(record["status"], *status);
        assert_eq!(record["client"], *client, "{reason}");
        assert_eq!(record["upstream_status"], Value::Null);
        assert_eq!(
            record["request"],
            Value::Null,
            "{reason}: refused before it was checked"
        );
    }
    let delete = of_request(&all, &cases[1].0)[0];
    assert_eq!(
        (delete["op"].as_str(), delete["token_ids"].clone()),
        (Some("delete"), json!([5]))
    );
    // Reads are not audited by default; paths outside the API never are.
    admin(gateway.addr, "GET", "/api/token/", None).await;
    admin(gateway.addr, "GET", "/api/user/self", None).await;
    assert_eq!(audit_records(&gateway.audit_path).len(), all.len());
    assert!(
        upstream.emulator.seen().len() == 1,
        "only the list reached the upstream"
    );
}

#[tokio::test]
async fn upstream_failures_and_timeouts_are_outcomes_after_an_intent() {
    for (fake, reason, outcome) in [
        (Fake::Reset, "upstream_unavailable", "upstream_error"),
        (Fake::Hang, "upstream_timeout", "timeout"),
        (
            Fake::Answer("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"),
            "upstream_auth_failed",
            "upstream_error",
        ),
    ] {
        let mut options = Options::new(fake_upstream(fake).await);
        options.upstream_timeout_ms = 300;
        let gateway = TestGateway::start(options).await;
        // A create: nothing is read before it (a delete's before-read would fail first).
        let reply = admin(gateway.addr, "POST", "/api/token/", Some(r#"{"name":"x"}"#)).await;
        let all = audit_records(&gateway.audit_path);
        let mine = of_request(&all, &reply);
        assert_eq!(mine.len(), 2, "{reason}: {all:#?}");
        assert_eq!(mine[0]["phase"], "intent");
        assert_eq!(mine[1]["outcome"], outcome, "{reason}");
        assert_eq!(mine[1]["reason"], reason);
        assert_eq!(mine[1]["token_ids"], json!([]));
    }
}

#[tokio::test]
async fn an_http_200_failure_is_recorded_from_the_body() {
    // Without the before-read, which would find no token 424242 and refuse with 404 itself.
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(upstream.addr);
    options.audit_extra = "capture_before = false\n".into();
    let gateway = TestGateway::start(options).await;
    let reply = admin(gateway.addr, "DELETE", "/api/token/424242", None).await;
    assert_eq!(
        (reply.status, reply.json()["success"].as_bool()),
        (200, Some(false))
    );
    let all = audit_records(&gateway.audit_path);
    let outcome = of_request(&all, &reply)[1];
    assert_eq!(outcome["outcome"], "forwarded");
    assert_eq!(outcome["upstream_status"], 200);
    assert_eq!(outcome["upstream_success"], false);
    assert_eq!(outcome["upstream_message"], "record not found");
}

#[tokio::test]
async fn no_secret_reaches_the_trail_and_it_verifies() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let id = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            name: "secret-holder".into(),
            ..Default::default()
        },
    );
    let options_key = upstream
        .emulator
        .tokens()
        .into_iter()
        .find(|t| t.id == id)
        .unwrap()
        .key;
    let single = admin(gateway.addr, "POST", &format!("/api/token/{id}/key"), None).await;
    assert_eq!(single.json()["data"]["key"], options_key.as_str());
    let batch = admin(
        gateway.addr,
        "POST",
        "/api/token/batch/keys",
        Some(&format!(r#"{{"ids":[{id}]}}"#)),
    )
    .await;
    assert!(batch.text().contains(&options_key));
    // A GET body (with its masked key) put back: the key field is not recorded.
    let got = admin(gateway.addr, "GET", &format!("/api/token/{id}"), None).await;
    admin(
        gateway.addr,
        "PUT",
        "/api/token/",
        Some(&got.json()["data"].to_string()),
    )
    .await;
    send(
        gateway.addr,
        "DELETE",
        "/api/token/1",
        &[("authorization", UPSTREAM_TOKEN)],
        None,
    )
    .await;
    let trail = std::fs::read_to_string(&gateway.audit_path).unwrap();
    for secret in [
        UPSTREAM_TOKEN,
        ADMIN_KEY,
        READER_KEY,
        AUDIT_KEY,
        options_key.as_str(),
        &options_key[..4],
    ] {
        assert!(!trail.contains(secret), "{secret} in the trail:\n{trail}");
    }
    let reveal = of_request(&audit_records(&gateway.audit_path), &single)
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(
        (reveal[1]["op"].as_str(), reveal[1]["token_ids"].clone()),
        (Some("reveal_key"), json!([id]))
    );
    let (code, stdout, stderr) = audit_verify_trail(&gateway.audit_path);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stdout.contains(AUDIT_KEY) && !stderr.contains(AUDIT_KEY));
}

#[tokio::test]
async fn rotation_and_restart_keep_one_chain() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::new(upstream.addr);
    options.audit_path = Some(dir.path().join("trail.jsonl"));
    options.audit_extra = "rotate_bytes = 4096".into();
    for round in 0..2 {
        let mut gateway = TestGateway::start(options.clone()).await;
        for i in 0..15 {
            let body = format!(r#"{{"name":"r{round}-{i}"}}"#);
            assert_eq!(
                admin(gateway.addr, "POST", "/api/token/", Some(&body))
                    .await
                    .status,
                200
            );
        }
        gateway.shutdown().await.unwrap();
    }
    let path = dir.path().join("trail.jsonl");
    let files = tokengate::audit::verify::trail_files(&path).unwrap();
    assert!(files.len() >= 4, "rotated into several files: {files:?}");
    let all = audit_records(&path);
    assert_eq!(
        all.len(),
        60,
        "2 restarts × 15 requests × intent and outcome"
    );
    for (i, record) in all.iter().enumerate() {
        assert_eq!(
            record["seq"],
            i as u64 + 1,
            "seq runs on across files and restarts"
        );
    }
    let (code, stdout, stderr) = audit_verify_trail(&path);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("60 records"), "{stdout}");
}

/// SPEC §6, retention: the oldest rotated files may be archived. `serve` needs only the newest
/// record, so it starts and rotates on past the highest file (never onto an existing one);
/// `verify` over what remains says where the trail starts, and a gap in the middle stays a break.
#[tokio::test]
async fn archived_rotated_files_leave_a_trail_that_serves_and_verifies() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trail.jsonl");
    let mut options = Options::new(upstream.addr);
    options.audit_path = Some(path.clone());
    options.audit_extra = "rotate_bytes = 4096".into();
    let write = |gateway: &TestGateway, round: usize| {
        let addr = gateway.addr;
        async move {
            for i in 0..15 {
                let body = format!(r#"{{"name":"r{round}-{i}"}}"#);
                let reply = admin(addr, "POST", "/api/token/", Some(&body)).await;
                assert_eq!(reply.status, 200, "{}", reply.text());
            }
        }
    };
    let mut gateway = TestGateway::start(options.clone()).await;
    write(&gateway, 0).await;
    gateway.shutdown().await.unwrap();
    let files = tokengate::audit::verify::trail_files(&path).unwrap();
    assert!(files.len() >= 4, "rotated into several files: {files:?}");
    let rotated_file = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));

    // The oldest file goes to an archive.
    let archive = dir.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    let archived = std::fs::read_to_string(rotated_file(1)).unwrap();
    let archived_records = archived.lines().count() as u64;
    std::fs::rename(rotated_file(1), archive.join("trail.jsonl.1")).unwrap();
    let highest_before = files.len() - 1;
    let newest_rotated = std::fs::read(rotated_file(highest_before)).unwrap();

    // serve starts on what remains and goes on rotating.
    let mut gateway = TestGateway::start(options.clone()).await;
    write(&gateway, 1).await;
    gateway.shutdown().await.unwrap();
    assert_eq!(
        std::fs::read(rotated_file(highest_before)).unwrap(),
        newest_rotated,
        "no rotation was renamed onto an existing file"
    );
    let records = audit_records(&path);
    assert_eq!(records.len() as u64, 60 - archived_records);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record["seq"], archived_records + 1 + i as u64);
    }
    let (code, stdout, stderr) = audit_verify_trail(&path);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "starts at seq {}; earlier files are not present",
            archived_records + 1
        )),
        "{stdout}"
    );
    // With the archived file put back in front, the whole trail verifies from seq 1.
    let mut whole = vec![archive.join("trail.jsonl.1")];
    whole.extend(tokengate::audit::verify::trail_files(&path).unwrap());
    let (code, stdout, stderr) = audit_verify(&whole);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("60 records") && !stdout.contains("starts at"));

    // A file missing in the middle is still a break for verify; serve starts all the same.
    std::fs::remove_file(rotated_file(3)).unwrap();
    let (code, stdout, stderr) = audit_verify_trail_cli(&path);
    assert_eq!(code, 1, "{stdout}");
    assert!(stderr.contains("trail.jsonl.3 is missing"), "{stderr}");
    let mut gateway = TestGateway::start(options).await;
    write(&gateway, 2).await;
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_damaged_tail_stops_the_gateway_from_starting() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::new(upstream.addr);
    options.audit_path = Some(dir.path().join("trail.jsonl"));
    let mut gateway = TestGateway::start(options.clone()).await;
    admin(gateway.addr, "POST", "/api/token/", Some(r#"{"name":"x"}"#)).await;
    gateway.shutdown().await.unwrap();
    let path = dir.path().join("trail.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"name\":\"x\"", "\"name\":\"y\"");
    std::fs::write(&path, text).unwrap();
    let (code, _, stderr) = audit_verify_trail(&path);
    assert_eq!(code, 1, "{stderr}");
    // serve refuses to extend the broken chain.
    write_secrets(dir.path(), false);
    let config = tokengate::Config::parse(&options.toml(dir.path())).unwrap();
    let mut broken = tokengate::Gateway::build(&config).unwrap();
    let error = broken.open_trail(&config.audit).unwrap_err().to_string();
    assert!(
        error.contains("audit.path") && error.contains("does not verify"),
        "{error}"
    );
}

#[tokio::test]
async fn reads_are_audited_when_asked_and_interval_sync_keeps_the_chain() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(upstream.addr);
    options.audit_extra = "reads = true\nfsync = \"interval\"".into();
    let mut gateway = TestGateway::start(options).await;
    let list = admin(gateway.addr, "GET", "/api/token/?p=1", None).await;
    let get = admin(gateway.addr, "GET", "/api/token/77", None).await;
    let create = admin(
        gateway.addr,
        "POST",
        "/api/token/",
        Some(r#"{"name":"interval"}"#),
    )
    .await;
    // With fsync = "interval", the records are written at once and synced within 100 ms.
    let all = audit_records(&gateway.audit_path);
    let list = of_request(&all, &list);
    assert_eq!(
        (list.len(), list[1]["op"].as_str(), list[1]["path"].as_str()),
        (2, Some("list"), Some("/api/token/"))
    );
    let get = of_request(&all, &get);
    assert_eq!(
        (get[1]["op"].as_str(), get[1]["token_ids"].clone()),
        (Some("get"), json!([77]))
    );
    assert_eq!(of_request(&all, &create).len(), 2);
    gateway.shutdown().await.unwrap();
    let (code, stdout, stderr) = audit_verify_trail(&gateway.audit_path);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

/// SPEC §6, format: no line longer than `audit.max_record_bytes`, whatever the body. The largest
/// body the configuration allows (16 MiB, of `1e20` values in a pass-through field, each written
/// as 21 digits in canonical form: a 70 MB record before) is recorded with that value omitted, its
/// size and SHA-256 kept, and the trail verifies and serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_allowed_body_leaves_a_record_within_max_record_bytes() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trail.jsonl");
    let mut options = Options::new(upstream.addr);
    options.audit_path = Some(path.clone());
    options.max_body_bytes = 16 << 20;
    options.upstream_extra = "extra_fields = [\"blob\"]\n".into();
    options.request_timeout_ms = 60_000;
    options.upstream_timeout_ms = 60_000;
    let mut gateway = TestGateway::start(options.clone()).await;
    let head = r#"{"name":"big","blob":["#;
    let count = ((16 << 20) - head.len() - 2) / 5;
    let mut body = String::with_capacity(16 << 20);
    body.push_str(head);
    for i in 0..count {
        body.push_str(if i == 0 { "1e20" } else { ",1e20" });
    }
    body.push_str("]}");
    assert!(
        body.len() <= 16 << 20 && body.len() > (16 << 20) - 8,
        "{}",
        body.len()
    );
    let reply = admin(gateway.addr, "POST", "/api/token/", Some(&body)).await;
    assert!(reply.status < 500, "{}", reply.text());
    gateway.shutdown().await.unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    for line in text.lines() {
        assert!(line.len() < 102_400, "a line of {} bytes", line.len());
    }
    let records = audit_records(&path);
    let intent = records
        .iter()
        .find(|r| r["phase"] == "intent")
        .expect("the create was forwarded after its intent");
    assert_eq!(intent["truncated"], true);
    assert_eq!(intent["request"]["name"], "big", "what fits is kept");
    let omitted = &intent["request"]["blob"];
    assert_eq!(omitted["omitted"], true);
    // Whoever holds the body can prove it is the one recorded.
    let blob: Value = serde_json::from_str(&body[head.len() - 1..body.len() - 1]).unwrap();
    let canonical = tokengate::audit::canonical::canonical(&blob);
    assert_eq!(omitted["bytes"], canonical.len());
    assert!(canonical.len() > 60 << 20, "{}", canonical.len());
    let digest = ring::digest::digest(&ring::digest::SHA256, &canonical);
    assert_eq!(omitted["sha256"], hex::encode(digest.as_ref()));
    for record in &records {
        assert!(
            !record.as_object().unwrap().contains_key("truncated") || record["truncated"] == true
        );
    }
    let (code, stdout, stderr) = audit_verify_trail(&path);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // And the gateway starts on this trail again.
    let mut again = TestGateway::start(options).await;
    let reply = admin(
        again.addr,
        "POST",
        "/api/token/",
        Some(r#"{"name":"after"}"#),
    )
    .await;
    assert_eq!(reply.status, 200);
    again.shutdown().await.unwrap();
}
