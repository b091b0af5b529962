//! SPEC §3, trace context: a caller's valid `traceparent` (and valid `tracestate`) reaches the
//! upstream with the same trace id and flags on every upstream request the gateway makes for it;
//! a missing or malformed one is replaced by a new valid trace and the request is served; the
//! trace id is in the access-log line and in the request's audit records, apart from the request
//! id.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig, NewToken};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

fn seed(emulator: &Emulator, name: &str) -> i64 {
    emulator.insert_token(
        USER_ID,
        NewToken {
            name: name.into(),
            ..NewToken::default()
        },
    )
}

/// Whether `value` is a well-formed version-00 `traceparent` with flags 01, and its trace id.
fn started_trace(value: &str) -> String {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    for (part, len) in [(parts[1], 32), (parts[2], 16)] {
        assert_eq!(part.len(), len, "{value}");
        assert!(
            part.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{value}"
        );
        assert!(part.bytes().any(|b| b != b'0'), "{value}");
    }
    assert_eq!(parts[3], "01", "a started trace is sampled: {value}");
    parts[1].to_string()
}

/// The `traceparent` and `tracestate` of every request the emulator saw since it was cleared.
fn seen_trace(emulator: &Emulator) -> Vec<(String, String, Option<String>)> {
    emulator
        .seen()
        .iter()
        .map(|r| {
            let header = |name: &str| {
                let values: Vec<String> = r
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_string())
                    .collect();
                assert!(values.len() <= 1, "one {name} header at most: {values:?}");
                values.into_iter().next()
            };
            (
                format!("{} {}", r.method, r.uri),
                header("traceparent").expect("every upstream request carries a traceparent"),
                header("tracestate"),
            )
        })
        .collect()
}

async fn traced(
    gateway: &TestGateway,
    method: &str,
    path: &str,
    trace: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let auth = format!("Bearer {ADMIN_KEY}");
    let mut headers = vec![("authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    headers.extend_from_slice(trace);
    send(gateway.addr, method, path, &headers, body).await
}

#[tokio::test]
async fn a_callers_trace_reaches_every_upstream_request_unchanged() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let a = seed(&upstream.emulator, "trace-a");
    let b = seed(&upstream.emulator, "trace-b");
    let trace = [("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)];
    upstream.emulator.clear_seen();
    // A PATCH reads then writes; a fan-out batch reads and writes each id; a read is one request.
    let patch = traced(
        &gateway,
        "PATCH",
        &format!("/api/token/{a}"),
        &trace,
        Some(r#"{"remain_quota":1000}"#),
    )
    .await;
    assert_eq!(patch.status, 200, "{}", patch.text());
    let batch = traced(
        &gateway,
        "PUT",
        "/api/token/batch",
        &trace,
        Some(&format!(
            r#"{{"ids":[{a},{b}],"update_fields":["remain_quota"],"remain_quota":2000}}"#
        )),
    )
    .await;
    assert_eq!(batch.status, 200, "{}", batch.text());
    let list = traced(&gateway, "GET", "/api/token/?p=1", &trace, None).await;
    assert_eq!(list.status, 200, "{}", list.text());
    let seen = seen_trace(&upstream.emulator);
    assert_eq!(
        seen.len(),
        7,
        "2 for the PATCH, 4 for the batch, 1 list: {seen:?}"
    );
    for (request, traceparent, tracestate) in &seen {
        assert_eq!(traceparent, TRACEPARENT, "{request}");
        assert_eq!(tracestate.as_deref(), Some(TRACESTATE), "{request}");
    }
    // The trace id is not the request id.
    let id = list.headers["x-request-id"].to_str().unwrap();
    assert_ne!(id, TRACE_ID);

    // An unsampled trace keeps its flags too.
    upstream.emulator.clear_seen();
    let unsampled = TRACEPARENT.replace("-01", "-00");
    let reply = traced(
        &gateway,
        "GET",
        "/api/token/",
        &[("traceparent", &unsampled)],
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    let seen = seen_trace(&upstream.emulator);
    assert_eq!(seen[0].1, unsampled);
    assert_eq!(seen[0].2, None, "no tracestate was sent, none is made up");
}

#[tokio::test]
async fn a_missing_or_malformed_traceparent_is_replaced_and_the_request_served() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let malformed = [
        "garbage",
        // Upper-case hex, all-zero trace id, all-zero parent id, version ff, one byte short.
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ];
    let mut trace_ids = Vec::new();
    for bad in malformed {
        upstream.emulator.clear_seen();
        let trace = [("traceparent", bad), ("tracestate", TRACESTATE)];
        let reply = traced(&gateway, "GET", "/api/token/", &trace, None).await;
        assert_eq!(reply.status, 200, "{bad}: {}", reply.text());
        let seen = seen_trace(&upstream.emulator);
        assert_eq!(seen.len(), 1);
        let (_, traceparent, tracestate) = &seen[0];
        let id = started_trace(traceparent);
        assert_ne!(id, TRACE_ID, "{bad}");
        assert_eq!(
            *tracestate, None,
            "a tracestate without a valid traceparent is dropped"
        );
        trace_ids.push(id);
    }
    // No traceparent at all: a new trace each time.
    for _ in 0..2 {
        upstream.emulator.clear_seen();
        let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
        assert_eq!(reply.status, 200);
        let seen = seen_trace(&upstream.emulator);
        trace_ids.push(started_trace(&seen[0].1));
    }
    // A trace the gateway starts is one trace: every upstream request of a PATCH (its read and
    // its write) and of a fan-out batch (a read and a write per id) carries the same traceparent.
    let a = seed(&upstream.emulator, "started-a");
    let b = seed(&upstream.emulator, "started-b");
    for (method, path, body) in [
        (
            "PATCH",
            format!("/api/token/{a}"),
            r#"{"remain_quota":1000}"#.to_string(),
        ),
        (
            "PUT",
            "/api/token/batch".to_string(),
            format!(r#"{{"ids":[{a},{b}],"update_fields":["remain_quota"],"remain_quota":2000}}"#),
        ),
    ] {
        upstream.emulator.clear_seen();
        let reply = traced(&gateway, method, &path, &[], Some(&body)).await;
        assert_eq!(reply.status, 200, "{method} {path}: {}", reply.text());
        let seen = seen_trace(&upstream.emulator);
        assert!(seen.len() >= 2, "{seen:?}");
        let first = &seen[0].1;
        for (request, traceparent, _) in &seen {
            assert_eq!(traceparent, first, "{method} {path}: {request}");
        }
        trace_ids.push(started_trace(first));
    }
    let mut distinct = trace_ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        trace_ids.len(),
        "fresh trace ids: {trace_ids:?}"
    );

    // A higher version is read (its first 55 characters) and sent on as version 00.
    upstream.emulator.clear_seen();
    let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future";
    let reply = traced(
        &gateway,
        "GET",
        "/api/token/",
        &[("traceparent", later)],
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(seen_trace(&upstream.emulator)[0].1, TRACEPARENT);
}

#[tokio::test]
async fn a_malformed_tracestate_is_dropped_and_the_traceparent_kept() {
    let (upstream, gateway) = emulator_and_gateway().await;
    for bad in ["Upper=1", "rojo=1,rojo=2", "novalue", "a=b=c"] {
        upstream.emulator.clear_seen();
        let trace = [("traceparent", TRACEPARENT), ("tracestate", bad)];
        let reply = traced(&gateway, "GET", "/api/token/", &trace, None).await;
        assert_eq!(reply.status, 200);
        let seen = seen_trace(&upstream.emulator);
        assert_eq!(seen[0].1, TRACEPARENT, "{bad}");
        assert_eq!(seen[0].2, None, "{bad}");
    }
}

#[tokio::test]
async fn the_trace_id_is_in_the_access_log_and_the_audit_records() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let process = Process::serve(&Options::new(upstream.addr), &[]);
    let auth = format!("Bearer {ADMIN_KEY}");
    let create = |trace: Option<&'static str>| {
        let auth = auth.clone();
        async move {
            let mut headers = vec![
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ];
            if let Some(trace) = trace {
                headers.push(("traceparent", trace));
            }
            send(
                process.addr,
                "POST",
                "/api/token/",
                &headers,
                Some(r#"{"name":"traced"}"#),
            )
            .await
        }
    };
    let with = create(Some(TRACEPARENT)).await;
    assert_eq!(with.status, 200, "{}", with.text());
    upstream.emulator.clear_seen();
    let without = create(None).await;
    assert_eq!(without.status, 200, "{}", without.text());
    let started = started_trace(&seen_trace(&upstream.emulator)[0].1);
    // A refused request has its trace too, in its one outcome record.
    let refused = send(
        process.addr,
        "POST",
        "/api/token/",
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
            ("traceparent", TRACEPARENT),
        ],
        Some(r#"{"name":""}"#),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.text());

    let trail = process
        .config_path()
        .parent()
        .unwrap()
        .join("audit")
        .join("trail.jsonl");
    for (reply, trace_id) in [(&with, TRACE_ID), (&without, started.as_str())] {
        let request_id = reply.headers["x-request-id"].to_str().unwrap().to_string();
        // The access line is written once the answer is made: wait for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let line = loop {
            let found = process.output().lines().find_map(|line| {
                let json: Value = serde_json::from_str(line).ok()?;
                let fields = if json["fields"].is_object() {
                    json["fields"].clone()
                } else {
                    json.clone()
                };
                (fields["request_id"] == request_id.as_str() && fields["status"].is_number())
                    .then_some(fields)
            });
            if let Some(found) = found {
                break found;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no access line for {request_id}:\n{}",
                process.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(line["trace_id"], trace_id, "{line}");
        let records: Vec<Value> = audit_records(&trail)
            .into_iter()
            .filter(|r| r["request_id"] == request_id.as_str())
            .collect();
        let phases: Vec<&str> = records
            .iter()
            .map(|r| r["phase"].as_str().unwrap())
            .collect();
        assert_eq!(phases, ["intent", "outcome"], "{records:?}");
        for record in &records {
            assert_eq!(record["trace_id"], trace_id, "{record}");
            assert_ne!(record["trace_id"], record["request_id"]);
        }
    }
    let refused_id = refused.headers["x-request-id"].to_str().unwrap();
    let records: Vec<Value> = audit_records(&trail)
        .into_iter()
        .filter(|r| r["request_id"] == refused_id)
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "rejected");
    assert_eq!(records[0]["trace_id"], TRACE_ID);
    // The trail with its new field verifies.
    let (code, stdout, stderr) = audit_verify_trail(&trail);
    assert_eq!(code, 0, "{stdout}{stderr}");
}
