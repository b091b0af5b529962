//! SPEC §6, "a forwarded change always gets its outcome": once its intent is durable, a change
//! runs to its outcome record whatever its caller does (hangs up, times out) and whatever the
//! gateway's shutdown grace; shutdown waits for it, bounded by `upstream.timeout_ms`.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig, NewToken};

fn seed(emulator: &Emulator, name: &str) -> i64 {
    emulator.insert_token(
        USER_ID,
        NewToken {
            name: name.into(),
            ..NewToken::default()
        },
    )
}

/// The records of `op`, grouped: (intents, outcomes).
fn records_of(path: &std::path::Path, op: &str) -> (Vec<Value>, Vec<Value>) {
    let records: Vec<Value> = audit_records(path)
        .into_iter()
        .filter(|r| r["op"] == op)
        .collect();
    let (intents, outcomes) = records.into_iter().partition(|r| r["phase"] == "intent");
    (intents, outcomes)
}

/// Waits until the trail at `path` holds `n` outcome records of `op`, for at most 10 s.
async fn outcomes_appear(path: &std::path::Path, op: &str, n: usize) -> (Vec<Value>, Vec<Value>) {
    for _ in 0..500 {
        let (intents, outcomes) = records_of(path, op);
        if outcomes.len() >= n {
            return (intents, outcomes);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    records_of(path, op)
}

#[tokio::test]
async fn a_caller_that_hangs_up_mid_exchange_still_leaves_the_outcome() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let id = seed(&upstream.emulator, "slow");
    upstream.emulator.set_delay(Duration::from_millis(800));
    let body = format!(r#"{{"id":{id},"status":2}}"#);
    let call = admin(
        gateway.addr,
        "PUT",
        "/api/token/?status_only=true",
        Some(&body),
    );
    // The caller gives up long before the upstream answers.
    assert!(tokio::time::timeout(Duration::from_millis(200), call)
        .await
        .is_err());
    let (intents, outcomes) = outcomes_appear(&gateway.audit_path, "update", 1).await;
    assert_eq!((intents.len(), outcomes.len()), (1, 1), "{outcomes:#?}");
    assert_eq!(intents[0]["request_id"], outcomes[0]["request_id"]);
    assert_eq!(outcomes[0]["outcome"], "forwarded");
    assert_eq!(outcomes[0]["upstream_success"], true);
    let token = upstream
        .emulator
        .tokens()
        .into_iter()
        .find(|t| t.id == id)
        .unwrap();
    assert_eq!(token.status, 2, "applied upstream");
}

#[tokio::test]
async fn a_fan_out_batch_cancelled_mid_way_records_every_id() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let ids: Vec<i64> = (0..8)
        .map(|i| seed(&upstream.emulator, &format!("t{i}")))
        .collect();
    upstream.emulator.set_delay(Duration::from_millis(150));
    let body = format!(
        r#"{{"ids":{},"update_fields":["remain_quota"],"remain_quota":77}}"#,
        serde_json::to_string(&ids).unwrap()
    );
    // Four ids at a time, a read and a write each of 150 ms: about 600 ms in all.
    let call = admin(gateway.addr, "PUT", "/api/token/batch", Some(&body));
    assert!(tokio::time::timeout(Duration::from_millis(250), call)
        .await
        .is_err());
    let (intents, outcomes) = outcomes_appear(&gateway.audit_path, "batch_update", 8).await;
    assert_eq!((intents.len(), outcomes.len()), (8, 8), "{outcomes:#?}");
    for outcome in &outcomes {
        assert_eq!(outcome["outcome"], "forwarded", "{outcome}");
    }
    let mut recorded: Vec<i64> = outcomes
        .iter()
        .map(|o| o["token_ids"][0].as_i64().unwrap())
        .collect();
    recorded.sort_unstable();
    assert_eq!(recorded, ids);
    assert!(upstream
        .emulator
        .tokens()
        .iter()
        .all(|t| t.remain_quota == 77));
}

/// Sends `SIGTERM` to `gateway` once `upstream` has seen a request (waiting 2 s at most for
/// that), then waits up to `limit` for the process to exit: its exit status and output.
async fn stop_once_reached(
    mut gateway: Process,
    upstream: &Emulator,
    limit: Duration,
) -> (std::process::ExitStatus, String) {
    for _ in 0..200 {
        if !upstream.seen().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.signal("TERM");
    tokio::task::spawn_blocking(move || {
        let status = gateway.wait(limit);
        (status, gateway.output())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_forwarded_change_past_the_grace() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let id = seed(&upstream.emulator, "late");
    upstream.emulator.set_delay(Duration::from_millis(1500));
    let mut options = Options::new(upstream.addr);
    options.shutdown_grace_ms = 200;
    let mut gateway = Process::serve(&options, &[]);
    // Kept past the process, whose end would otherwise remove the directory with the trail.
    let dir = gateway.take_dir();
    let trail = dir.path().join("audit").join("trail.jsonl");
    let addr = gateway.addr;
    let body = format!(r#"{{"id":{id},"status":2}}"#);
    let request = format!(
        "PUT /api/token/?status_only=true HTTP/1.1\r\nHost: x\r\nAuthorization: {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let in_flight = tokio::spawn(async move { raw(addr, request.as_bytes()).await });
    let (status, output) =
        stop_once_reached(gateway, &upstream.emulator, Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(0), "{output}");
    let _ = in_flight.await;
    let (intents, outcomes) = records_of(&trail, "update");
    assert_eq!((intents.len(), outcomes.len()), (1, 1), "{output}");
    assert_eq!(outcomes[0]["outcome"], "forwarded");
    assert_eq!(outcomes[0]["upstream_success"], true);
    let request_id = outcomes[0]["request_id"].as_str().unwrap();
    assert!(
        output.contains(request_id),
        "the access-log line was written too:\n{output}"
    );
    let token = upstream
        .emulator
        .tokens()
        .into_iter()
        .find(|t| t.id == id)
        .unwrap();
    assert_eq!(token.status, 2);
}

/// SPEC §6: shutdown waits for forwarded changes at most `upstream.timeout_ms`; a change still
/// unanswered then is recorded as `timeout` before the process exits, and a fan-out batch starts
/// no more ids: every intent in the trail has its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_records_a_timeout_for_what_is_still_unanswered() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let ids: Vec<i64> = (0..6)
        .map(|i| seed(&upstream.emulator, &format!("t{i}")))
        .collect();
    // Each upstream request takes 1.5 s: an id's read ends at 1.5 s, its PUT would at 3 s. Shut
    // down at 0, the gateway stops waiting at 0.2 + 2 s, with the first id's PUT in flight.
    upstream.emulator.set_delay(Duration::from_millis(1500));
    let mut options = Options::new(upstream.addr);
    options.shutdown_grace_ms = 200;
    options.upstream_timeout_ms = 2_000;
    options.request_timeout_ms = 60_000;
    options.limits = "batch_concurrency = 1\n".into();
    let mut gateway = Process::serve(&options, &[]);
    let dir = gateway.take_dir();
    let trail = dir.path().join("audit").join("trail.jsonl");
    let addr = gateway.addr;
    let body = format!(r#"{{"ids":{ids:?},"update_fields":["remain_quota"],"remain_quota":5}}"#);
    let request = format!(
        "PUT /api/token/batch HTTP/1.1\r\nHost: x\r\nAuthorization: {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let batch = tokio::spawn(async move { raw(addr, request.as_bytes()).await });
    let (status, output) =
        stop_once_reached(gateway, &upstream.emulator, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(!output.contains("still without an outcome"), "{output}");
    let _ = batch.await;
    let (intents, outcomes) = records_of(&trail, "batch_update");
    assert_eq!(
        intents.len(),
        1,
        "only the first id got as far as its PUT: {intents:#?}"
    );
    let key = |r: &Value| (r["request_id"].clone(), r["token_ids"].clone());
    let outcome = outcomes
        .iter()
        .find(|o| key(o) == key(&intents[0]))
        .unwrap_or_else(|| panic!("the intent has no outcome: {outcomes:#?}"));
    assert_eq!(outcome["outcome"], "timeout", "{outcome}");
    // The ids after it were not sent: never a PUT beyond the first.
    let puts = upstream
        .emulator
        .seen()
        .iter()
        .filter(|s| s.method == "PUT")
        .count();
    assert_eq!(puts, 1);
}

/// SPEC §6, truthful partial answers: a PATCH whose full PUT was applied, and whose status-only
/// PUT could then not be recorded (the trail stuck), says what was applied, never "not forwarded".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_whose_second_intent_fails_says_what_was_applied() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let id = seed(&upstream.emulator, "half");
    let mut options = Options::new(upstream.addr);
    options.request_timeout_ms = 3_000;
    let gateway = TestGateway::start(options).await;
    // Each upstream request takes 600 ms: the read until 600 ms, then (its intent written) the
    // full PUT until 1 200 ms. The disk gets stuck half-way through the PUT.
    upstream
        .emulator
        .set_delay(std::time::Duration::from_millis(600));
    let trail = gateway.trail.clone();
    let stall = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(900)).await;
        trail.faults().stall(true);
    });
    let reply = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{id}"),
        Some(r#"{"remain_quota":4321,"status":2}"#),
    )
    .await;
    stall.await.unwrap();
    gateway.trail.faults().stall(false);
    reply.assert_envelope(503, "audit_unavailable");
    let json = reply.json();
    assert_eq!(json["partial"], true, "{json}");
    assert_eq!(
        json["written"],
        serde_json::json!(["remain_quota"]),
        "{json}"
    );
    let message = json["message"].as_str().unwrap();
    assert!(
        message.contains("full update was applied (remain_quota)"),
        "{message}"
    );
    let token = upstream
        .emulator
        .tokens()
        .into_iter()
        .find(|t| t.id == id)
        .unwrap();
    assert_eq!(
        (token.remain_quota, token.status),
        (4321, 1),
        "the first PUT only"
    );
}
