//! The audit trail when things go wrong (SPEC §6): a full file system, a trail directory that
//! disappears, a live file removed under the gateway, and a gateway killed mid-load. Audited
//! requests fail closed within a bound and nothing reaches the upstream; reads go on; writing
//! resumes by itself when the fault clears; nothing changed upstream without an intent record.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::tmpfs::Tmpfs;
use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig};

async fn readyz(gateway: &TestGateway) -> Reply {
    send(gateway.admin, "GET", "/readyz", &[], None).await
}

/// Waits (bounded) until `/readyz` answers `status`.
async fn until_ready(gateway: &TestGateway, status: u16) {
    let started = Instant::now();
    loop {
        let reply = readyz(gateway).await;
        if reply.status == status {
            break;
        }
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(10),
            "/readyz never became {status}: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_full_file_system_fails_closed_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // Without root (never under CI), the directory test below still runs.
    let Some(mount) = Tmpfs::mount(dir.path().join("small"), "256k") else {
        return;
    };
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(upstream.addr);
    options.audit_path = Some(mount.0.join("trail.jsonl"));
    // This test is of writes failing: no readiness margin.
    options.audit_extra = "min_free_bytes = 0".into();
    let gateway = TestGateway::start(options).await;
    assert_eq!(
        admin(
            gateway.addr,
            "POST",
            "/api/token/",
            Some(r#"{"name":"before"}"#)
        )
        .await
        .status,
        200
    );

    // Fill the file system to the last page.
    let filler = mount.0.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut file, &[0u8; 4096]).is_ok() {}
    drop(file);

    // The trail's last page may still hold a few records: write until the file system says no.
    let mut refused = None;
    for i in 0..64 {
        upstream.emulator.clear_seen();
        let started = Instant::now();
        let body = format!(r#"{{"name":"fill-{i:02}"}}"#);
        let reply = admin(gateway.addr, "POST", "/api/token/", Some(&body)).await;
        if reply.status == 503 {
            assert!(
                started.elapsed() < tokengate::audit::writer::WAIT + Duration::from_secs(1),
                "refused within the bound"
            );
            refused = Some(reply);
            break;
        }
    }
    refused
        .expect("a full file system refuses writes")
        .assert_envelope(503, "audit_unavailable");
    assert!(
        upstream.emulator.seen().is_empty(),
        "the refused change never reached the upstream"
    );
    let read = admin(gateway.addr, "GET", "/api/token/", None).await;
    assert_eq!(
        (read.status, read.json()["success"].as_bool()),
        (200, Some(true)),
        "reads go on"
    );
    let metrics = send(gateway.admin, "GET", "/metrics", &[], None)
        .await
        .text();
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tokengate_audit_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tokengate_audit_failures_total in {metrics}"));
    assert!(failures >= 1, "{metrics}");
    // (Readiness under a fault is shown by the directory test below: on a nearly full file system a
    // record smaller than the refused one may still fit in the space the refusal gave back.)

    // The fault clears: writing resumes without a restart.
    std::fs::remove_file(&filler).unwrap();
    until_ready(&gateway, 200).await;
    assert_eq!(
        admin(
            gateway.addr,
            "POST",
            "/api/token/",
            Some(r#"{"name":"after"}"#)
        )
        .await
        .status,
        200
    );
    let names: Vec<String> = upstream
        .emulator
        .tokens()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(names.contains(&"after".to_string()));
    let files = tokengate::audit::verify::trail_files(&mount.0.join("trail.jsonl")).unwrap();
    let (code, stdout, stderr) = audit_verify(&files);
    assert_eq!(code, 0, "no torn record was left behind: {stdout}{stderr}");
}

#[tokio::test]
async fn a_vanished_trail_directory_fails_closed_then_recovers() {
    let (upstream, gateway) = emulator_and_gateway().await;
    assert_eq!(
        admin(
            gateway.addr,
            "POST",
            "/api/token/",
            Some(r#"{"name":"before"}"#)
        )
        .await
        .status,
        200
    );
    let audit_dir = gateway.audit_path.parent().unwrap().to_path_buf();
    let moved = audit_dir.with_extension("moved");
    std::fs::rename(&audit_dir, &moved).unwrap();
    std::fs::write(&audit_dir, "not a directory").unwrap();
    upstream.emulator.clear_seen();

    admin(
        gateway.addr,
        "POST",
        "/api/token/",
        Some(r#"{"name":"refused"}"#),
    )
    .await
    .assert_envelope(503, "audit_unavailable");
    assert!(upstream.emulator.seen().is_empty());
    assert_eq!(
        admin(gateway.addr, "GET", "/api/token/", None).await.status,
        200
    );
    until_ready(&gateway, 503).await;

    std::fs::remove_file(&audit_dir).unwrap();
    std::fs::rename(&moved, &audit_dir).unwrap();
    until_ready(&gateway, 200).await;
    assert_eq!(
        admin(
            gateway.addr,
            "POST",
            "/api/token/",
            Some(r#"{"name":"after"}"#)
        )
        .await
        .status,
        200
    );
    let (code, stdout, stderr) = audit_verify_trail(&gateway.audit_path);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[tokio::test]
async fn a_removed_live_file_is_noticed_and_reported_not_written_into_the_void() {
    let (upstream, gateway) = emulator_and_gateway().await;
    assert_eq!(
        admin(
            gateway.addr,
            "POST",
            "/api/token/",
            Some(r#"{"name":"first"}"#)
        )
        .await
        .status,
        200
    );
    std::fs::remove_file(&gateway.audit_path).unwrap();
    upstream.emulator.clear_seen();
    // The writer notices before its next write: that request is refused, nothing is forwarded.
    admin(
        gateway.addr,
        "POST",
        "/api/token/",
        Some(r#"{"name":"noticed"}"#),
    )
    .await
    .assert_envelope(503, "audit_unavailable");
    assert!(upstream.emulator.seen().is_empty());
    // A new live file is started and the chain runs on, so verify reports the gap.
    until_ready(&gateway, 200).await;
    assert_eq!(
        admin(
            gateway.addr,
            "POST",
            "/api/token/",
            Some(r#"{"name":"later"}"#)
        )
        .await
        .status,
        200
    );
    let after = audit_records(&gateway.audit_path);
    let first = after[0]["seq"].as_u64().unwrap();
    assert!(first > 1);
    // The new file holds no earlier record: verify says where it starts (SPEC §6, retention), so
    // the records lost with the removed file show; with an older file present they would be a
    // break (tests/audit.rs, archived files).
    let (code, stdout, stderr) = audit_verify(std::slice::from_ref(&gateway.audit_path));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "starts at seq {first}; earlier files are not present"
        )),
        "{stdout}"
    );
}

/// SIGKILL mid-load, then restart: the trail verifies, and every change the upstream applied has
/// its intent record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_leaves_a_trail_that_covers_every_change() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let options = Options::new(upstream.addr);
    let mut gateway = Process::serve(&options, &[]);
    let addr = gateway.addr;
    let mut load = Vec::new();
    for worker in 0..8 {
        load.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let body = format!(r#"{{"name":"w{worker}-{i}"}}"#);
                let request = format!(
                    "POST /api/token/ HTTP/1.1\r\nHost: x\r\nAuthorization: {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                if raw(addr, request.as_bytes()).await.is_empty() {
                    break;
                }
            }
        }));
    }
    // Let the load run until the upstream has applied a good number of changes, then kill.
    let started = Instant::now();
    while upstream.emulator.tokens().len() < 150 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.signal("KILL");
    let status = tokio::task::spawn_blocking(move || {
        let status = gateway.wait(Duration::from_secs(5));
        (status, gateway)
    })
    .await
    .unwrap();
    let (status, mut gateway) = status;
    assert!(!status.success(), "killed");
    for worker in load {
        let _ = worker.await;
    }
    let dir = gateway.take_dir();
    let trail = dir.path().join("audit").join("trail.jsonl");
    let intents: HashSet<String> = audit_records(&trail)
        .iter()
        .filter(|r| r["phase"] == "intent")
        .filter_map(|r| r["request"]["name"].as_str().map(str::to_owned))
        .collect();
    let applied: Vec<String> = upstream
        .emulator
        .tokens()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(applied.len() >= 100, "the load ran: {}", applied.len());
    for name in &applied {
        assert!(
            intents.contains(name),
            "{name} changed upstream without an intent record"
        );
    }

    // Restart on the same trail: it resumes from the last record and the chain stays whole.
    let mut restarted = Process::serve_in(&options, &[], dir);
    assert_eq!(
        admin(
            restarted.addr,
            "POST",
            "/api/token/",
            Some(r#"{"name":"after-restart"}"#)
        )
        .await
        .status,
        200
    );
    restarted.signal("TERM");
    let mut restarted = tokio::task::spawn_blocking(move || {
        restarted.wait(Duration::from_secs(10));
        restarted
    })
    .await
    .unwrap();
    let dir = restarted.take_dir();
    let files =
        tokengate::audit::verify::trail_files(&dir.path().join("audit").join("trail.jsonl"))
            .unwrap();
    let (code, stdout, stderr) = audit_verify(&files);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

/// A crash in the middle of a write leaves a torn last line: `serve` refuses to extend it and
/// says to run `tokengate audit repair`, which cuts that line off (keeping its bytes in
/// `<path>.torn`) and nothing else; then `verify` passes and `serve` resumes the chain at the
/// next seq, so no seq is used twice and no complete record is left out.
#[tokio::test]
async fn audit_repair_cuts_a_torn_last_line_and_serve_resumes_the_chain() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let options = Options::new(upstream.addr);
    let mut gateway = Process::serve(&options, &[]);
    for i in 0..3 {
        let body = format!(r#"{{"name":"before-{i}"}}"#);
        let reply = admin(gateway.addr, "POST", "/api/token/", Some(&body)).await;
        assert_eq!(reply.status, 200);
    }
    gateway.signal("TERM");
    let mut gateway = tokio::task::spawn_blocking(move || {
        gateway.wait(Duration::from_secs(10));
        gateway
    })
    .await
    .unwrap();
    let dir = gateway.take_dir();
    let config = dir.path().join("tokengate.toml");
    let config_arg = config.to_str().unwrap();
    let trail = dir.path().join("audit").join("trail.jsonl");
    let whole = std::fs::read(&trail).unwrap();
    assert_eq!(audit_records(&trail).len(), 6);

    // The crash: the first 100 bytes of a seventh record, no newline.
    let torn: Vec<u8> = whole[..100].to_vec();
    let mut damaged = whole.clone();
    damaged.extend_from_slice(&torn);
    std::fs::write(&trail, &damaged).unwrap();
    let (code, _, stderr) = run_cli(&["serve", "--config", config_arg], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("tokengate audit repair") && stderr.contains("torn"),
        "serve advises the repair: {stderr}"
    );
    assert!(!stderr.contains("aside"), "{stderr}");
    let (code, _, stderr) = audit_verify(std::slice::from_ref(&trail));
    assert_eq!(code, 1, "{stderr}");

    let (code, stdout, stderr) = run_cli(&["audit", "repair", "--config", config_arg], &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("cut 100 bytes") && stdout.contains("line 7"),
        "{stdout}"
    );
    assert!(
        stdout.contains("serve resumes the chain at seq 7"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(&trail).unwrap(),
        whole,
        "only the torn bytes were cut"
    );
    let kept = std::fs::read(dir.path().join("audit").join("trail.jsonl.torn")).unwrap();
    assert_eq!(
        kept,
        [torn.as_slice(), b"\n"].concat(),
        "the cut bytes are kept"
    );
    let (code, stdout, stderr) = audit_verify(std::slice::from_ref(&trail));
    assert_eq!(code, 0, "{stdout}{stderr}");

    // A second repair finds nothing to cut and changes nothing.
    let (code, stdout, _) = run_cli(&["audit", "repair", "--config", config_arg], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("nothing to repair"), "{stdout}");
    assert_eq!(std::fs::read(&trail).unwrap(), whole);

    // serve resumes the chain where it was.
    let mut restarted = Process::serve_in(&options, &[], dir);
    let reply = admin(
        restarted.addr,
        "POST",
        "/api/token/",
        Some(r#"{"name":"after-repair"}"#),
    )
    .await;
    assert_eq!(reply.status, 200);
    restarted.signal("TERM");
    let mut restarted = tokio::task::spawn_blocking(move || {
        restarted.wait(Duration::from_secs(10));
        restarted
    })
    .await
    .unwrap();
    let dir = restarted.take_dir();
    let trail = dir.path().join("audit").join("trail.jsonl");
    let records = audit_records(&trail);
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<u64>>());
    let (code, stdout, stderr) = audit_verify(std::slice::from_ref(&trail));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("8 records"), "{stdout}");

    // A whole last record that was changed is not a torn write: repair refuses and cuts nothing.
    let text = std::fs::read_to_string(&trail).unwrap();
    let changed = text.replace("\"name\":\"after-repair\"", "\"name\":\"after-REPAIR\"");
    std::fs::write(&trail, &changed).unwrap();
    let config = dir.path().join("tokengate.toml");
    let (code, _, stderr) = run_cli(
        &["audit", "repair", "--config", config.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("whole record"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&trail).unwrap(), changed);
}

/// How many requests other than reads (a change's before-read) reached the upstream.
fn writes_seen(upstream: &tokengate::emulator::RunningEmulator) -> usize {
    upstream
        .emulator
        .seen()
        .iter()
        .filter(|r| r.method != http::Method::GET)
        .count()
}

/// A full update of token `id` (every editable field).
fn full_update(id: i64, quota: u64) -> String {
    format!(
        r#"{{"id":{id},"name":"busy","expired_time":-1,"remain_quota":{quota},"unlimited_quota":false,"model_limits_enabled":false,"model_limits":"","allow_ips":"","group":""}}"#
    )
}

/// SPEC §6, bounded refusals: with the disk stuck (the writer stalled, as a frozen file system
/// stalls it), a change gets its 503 once, within 3 s: not 3 s for its intent and 3 s more for
/// the record of its refusal, which is queued and written when the trail can take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_disk_refuses_a_change_once_within_three_seconds() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let id = upstream.emulator.insert_token(
        USER_ID,
        tokengate::emulator::NewToken {
            name: "busy".into(),
            ..Default::default()
        },
    );
    let gateway = TestGateway::start(Options::new(upstream.addr)).await;
    gateway.trail.faults().stall(true);
    upstream.emulator.clear_seen();
    let started = Instant::now();
    let reply = admin(
        gateway.addr,
        "PUT",
        "/api/token/",
        Some(&full_update(id, 7)),
    )
    .await;
    let took = started.elapsed();
    reply.assert_envelope(503, "audit_unavailable");
    assert!(
        took >= Duration::from_millis(2_500) && took < Duration::from_millis(4_500),
        "answered after {took:?}: one wait of 3 s for the intent, none for the refusal's record"
    );
    assert_eq!(
        writes_seen(&upstream),
        0,
        "nothing was forwarded (the before-read only)"
    );
    until_ready(&gateway, 503).await;

    // The disk thaws: the refusal's record, queued meanwhile, is written, and the trail verifies.
    gateway.trail.faults().stall(false);
    until_ready(&gateway, 200).await;
    let request_id = reply.headers["x-request-id"].to_str().unwrap().to_owned();
    let started = Instant::now();
    let records = loop {
        let records = audit_records(&gateway.audit_path);
        if records
            .iter()
            .any(|r| r["request_id"] == request_id.as_str() && r["phase"] == "outcome")
        {
            break records;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the refusal was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let outcome = records
        .iter()
        .find(|r| r["request_id"] == request_id.as_str() && r["phase"] == "outcome")
        .unwrap();
    assert_eq!(
        (
            outcome["outcome"].as_str(),
            outcome["reason"].as_str(),
            outcome["status"].as_u64()
        ),
        (Some("rejected"), Some("audit_unavailable"), Some(503))
    );
    let (code, stdout, stderr) = audit_verify_trail(&gateway.audit_path);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

/// SPEC §6, bounded refusals: eight changes of one token on a stuck disk, with
/// `server.request_timeout_ms = 2000`, are all answered by their deadline. Before, each waited
/// for the token's lock with no deadline, then 6 s of its own: answers at 6, 9, … 27 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_one_token_on_a_stuck_disk_are_all_answered_by_their_deadline() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let id = upstream.emulator.insert_token(
        USER_ID,
        tokengate::emulator::NewToken {
            name: "busy".into(),
            ..Default::default()
        },
    );
    let mut options = Options::new(upstream.addr);
    options.request_timeout_ms = 2_000;
    let gateway = TestGateway::start(options).await;
    gateway.trail.faults().stall(true);
    upstream.emulator.clear_seen();
    let started = Instant::now();
    let puts: Vec<_> = (0..8u64)
        .map(|i| {
            let addr = gateway.addr;
            tokio::spawn(async move {
                let reply = admin(addr, "PUT", "/api/token/", Some(&full_update(id, i))).await;
                (reply, started.elapsed())
            })
        })
        .collect();
    let mut ids = Vec::new();
    for put in puts {
        let (reply, took) = put.await.unwrap();
        // The lock's last holder may get it with no time left to read the token before: it
        // is refused at its deadline too (504, "nothing was sent").
        let code = reply.code();
        let expected = match code.as_str() {
            "upstream_timeout" => 504,
            _ => 503,
        };
        assert_eq!(reply.status, expected, "{}", reply.text());
        assert!(
            code == "audit_unavailable" || code == "token_busy" || code == "upstream_timeout",
            "{}",
            reply.text()
        );
        assert!(
            took < Duration::from_millis(3_200),
            "answered after {took:?}, past the 2 s deadline"
        );
        ids.push(reply.headers["x-request-id"].to_str().unwrap().to_owned());
    }
    assert_eq!(writes_seen(&upstream), 0, "nothing was forwarded");
    gateway.trail.faults().stall(false);
    until_ready(&gateway, 200).await;
    // Every refusal is in the trail once the disk thaws.
    let started = Instant::now();
    loop {
        let records = audit_records(&gateway.audit_path);
        let outcomes = records
            .iter()
            .filter(|r| {
                r["phase"] == "outcome"
                    && ids.contains(&r["request_id"].as_str().unwrap().to_owned())
            })
            .count();
        if outcomes == 8 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{outcomes} of 8 refusals recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, stdout, stderr) = audit_verify_trail(&gateway.audit_path);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

/// Waiting for a token's lock ends at the request's deadline (SPEC §6): a change whose token is
/// held by a slower one (here the upstream takes 4 s, and a reload has since cut
/// `server.request_timeout_ms` to 1 s) is refused at its deadline with 503 `token_busy` and
/// `Retry-After`, never forwarded, instead of waiting its turn past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_a_tokens_lock_ends_at_the_request_deadline() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let id = upstream.emulator.insert_token(
        USER_ID,
        tokengate::emulator::NewToken {
            name: "busy".into(),
            ..Default::default()
        },
    );
    let mut options = Options::new(upstream.addr);
    options.upstream_timeout_ms = 10_000;
    let gateway = Process::serve(&options, &[]);
    upstream.emulator.set_delay(Duration::from_secs(4));
    let addr = gateway.addr;
    let slow =
        tokio::spawn(
            async move { admin(addr, "PUT", "/api/token/", Some(&full_update(id, 1))).await },
        );
    // Until the slow change is at the upstream (holding the token's lock).
    let started = Instant::now();
    while upstream.emulator.seen().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    options.request_timeout_ms = 1_000;
    let dir = gateway.config_path().parent().unwrap().to_path_buf();
    std::fs::write(
        gateway.config_path(),
        options
            .toml(&dir)
            .replace("format = \"text\"", "format = \"json\""),
    )
    .unwrap();
    gateway.signal("HUP");
    let gateway = tokio::task::spawn_blocking(move || {
        gateway.wait_for("configuration reloaded", 1);
        gateway
    })
    .await
    .unwrap();
    let seen_before = upstream.emulator.seen().len();
    let started = Instant::now();
    let reply = admin(
        gateway.addr,
        "PUT",
        "/api/token/",
        Some(&full_update(id, 2)),
    )
    .await;
    let took = started.elapsed();
    reply.assert_envelope(503, "token_busy");
    assert_eq!(reply.headers["retry-after"], "1");
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains(&format!("token {id}")),
        "{}",
        reply.text()
    );
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2_500),
        "refused after {took:?}"
    );
    assert_eq!(upstream.emulator.seen().len(), seen_before, "not forwarded");
    assert_eq!(
        slow.await.unwrap().status,
        200,
        "the slow change went through"
    );
    drop(gateway);
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// A metric's value from a `/metrics` text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// SPEC §6, bounded refusals: records waiting for the disk are bounded in bytes
/// (`audit.queue_bytes`), and so is the writer's buffer when the disk thaws. 300 refused creates
/// of 1 MiB each (recorded whole: `max_record_bytes` is 4 MiB here) once took the resident size
/// from 20 MB to 1.77 GB (every refused request's records stayed queued), then to 3.0 GB on thaw
/// (one write of 1 024 of them). Past the bound, requests are refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_while_the_disk_is_stuck_and_when_it_thaws() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(upstream.addr);
    options.max_body_bytes = 2 << 20;
    options.request_timeout_ms = 1_000;
    options.upstream_extra = "extra_fields = [\"blob\"]\n".into();
    options.audit_extra = "max_record_bytes = 4194304\nqueue_bytes = 8388608\n".into();
    let stall = tempfile::tempdir().unwrap();
    let stall_file = stall.path().join("stall");
    let gateway = Process::serve(
        &options,
        &[(
            "TOKENGATE_TEST_AUDIT_STALL_FILE",
            stall_file.to_str().unwrap(),
        )],
    );
    let pid = gateway.child.id();
    let addr = gateway.addr;
    let body = |i: usize| format!(r#"{{"name":"big-{i}","blob":"{}"}}"#, "x".repeat(1 << 20));
    // Warm up: the same requests, written normally.
    for i in 0..8 {
        let reply = admin(addr, "POST", "/api/token/", Some(&body(i))).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let before = rss(pid);

    std::fs::write(&stall_file, b"").unwrap();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let next = next.clone();
            tokio::spawn(async move {
                let mut fast = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= 300 {
                        return fast;
                    }
                    let started = Instant::now();
                    let reply = admin(addr, "POST", "/api/token/", Some(&body(i))).await;
                    reply.assert_envelope(503, "audit_unavailable");
                    // A refusal that waited for the disk comes at the request's deadline
                    // (server.request_timeout_ms, 1 s here); one past audit.queue_bytes comes
                    // before it, however slow the machine is to carry the 1 MiB body.
                    if started.elapsed() < Duration::from_millis(900) {
                        fast += 1;
                    }
                }
            })
        })
        .collect();
    let mut fast = 0;
    for worker in workers {
        fast += worker.await.unwrap();
    }
    let stuck = rss(pid);
    let metrics = send(gateway.admin, "GET", "/metrics", &[], None)
        .await
        .text();
    let queued = metric(&metrics, "tokengate_audit_queue_bytes").unwrap();
    assert!(queued <= 8_388_608.0, "{metrics}");
    assert!(
        fast > 250,
        "past audit.queue_bytes the 503 comes at once, not at the deadline ({fast} of 300 before it)"
    );
    let grown = stuck.saturating_sub(before);
    assert!(
        grown < 150 << 20,
        "resident memory grew by {} MiB while stuck",
        grown >> 20
    );

    // The disk thaws: the queue drains through a bounded write buffer.
    std::fs::remove_file(&stall_file).unwrap();
    let started = Instant::now();
    loop {
        let metrics = send(gateway.admin, "GET", "/metrics", &[], None)
            .await
            .text();
        if metric(&metrics, "tokengate_audit_queue_bytes") == Some(0.0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let thawed = rss(pid);
    assert!(
        thawed.saturating_sub(before) < 150 << 20,
        "resident memory grew by {} MiB on thaw",
        thawed.saturating_sub(before) >> 20
    );
    let reply = admin(addr, "POST", "/api/token/", Some(r#"{"name":"after"}"#)).await;
    assert_eq!(reply.status, 200);
    let trail = gateway
        .config_path()
        .parent()
        .unwrap()
        .join("audit")
        .join("trail.jsonl");
    let (code, stdout, stderr) = audit_verify(std::slice::from_ref(&trail));
    assert_eq!(code, 0, "{stdout}{stderr}");
    eprintln!(
        "resident: {} MiB before, {} MiB stuck, {} MiB thawed; {fast} of 300 refused at once",
        before >> 20,
        stuck >> 20,
        thawed >> 20
    );
}

/// SPEC §6: `/readyz` turns not ready while the trail's file system has less than
/// `audit.min_free_bytes` free, before writes start failing (with 20 KB free, a 63 KB PUT used to
/// be refused while `/readyz`, whose probe writes 4 KiB, said ready). The body and a metric say
/// why; writes still go through meanwhile; readiness returns when space does.
#[tokio::test]
async fn readiness_turns_before_the_trails_file_system_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = Tmpfs::mount(dir.path().join("small"), "2m") else {
        return;
    };
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(upstream.addr);
    options.audit_path = Some(mount.0.join("trail.jsonl"));
    options.audit_extra = "min_free_bytes = 1048576".into();
    let gateway = TestGateway::start(options).await;
    until_ready(&gateway, 200).await;

    // Leave about 512 KiB free: room for writes, but less than min_free_bytes.
    let filler = mount.0.join("filler");
    std::fs::write(&filler, vec![0u8; 1536 << 10]).unwrap();
    until_ready(&gateway, 503).await;
    let reply = readyz(&gateway).await;
    let reason = reply.json()["checks"]["audit"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("audit.min_free_bytes") && reason.contains("1048576"),
        "{reason}"
    );
    let metrics = send(gateway.admin, "GET", "/metrics", &[], None)
        .await
        .text();
    let free: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tokengate_audit_free_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tokengate_audit_free_bytes in {metrics}"));
    assert!(free > 0.0 && free < 1_048_576.0, "{free}");
    assert!(
        metrics.contains("tokengate_audit_min_free_bytes 1048576"),
        "{metrics}"
    );
    assert!(metrics.contains("tokengate_ready 0"), "{metrics}");
    // Not ready, yet still writing: nothing has failed.
    assert_eq!(
        admin(
            gateway.addr,
            "POST",
            "/api/token/",
            Some(r#"{"name":"still"}"#)
        )
        .await
        .status,
        200
    );

    std::fs::remove_file(&filler).unwrap();
    until_ready(&gateway, 200).await;
    let (code, stdout, stderr) = audit_verify_trail(&gateway.audit_path);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

/// Runs `chattr FLAG PATH`; false when it cannot (no chattr, no privilege, a file system without
/// the attribute).
fn chattr(flag: &str, path: &std::path::Path) -> bool {
    std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// SPEC §6, fail closed: when a failed write leaves part of a batch in the file and cutting it
/// back fails too (here the real fault: a full file system, and the live file append-only, so
/// `ftruncate` is refused), the writer stops writing: audited requests are refused and `/readyz`
/// says why, even once space is back, until the cut succeeds. Before, the failed cut was ignored
/// and the next records followed the partial line, breaking the trail for good.
#[tokio::test]
async fn a_rollback_that_cannot_cut_back_stops_the_writer_until_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = Tmpfs::mount(dir.path().join("small"), "256k") else {
        return;
    };
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let trail = mount.0.join("trail.jsonl");
    let mut options = Options::new(upstream.addr);
    options.audit_path = Some(trail.clone());
    options.audit_extra = "min_free_bytes = 0".into();
    let gateway = TestGateway::start(options).await;
    let create = |name: String| {
        let addr = gateway.addr;
        async move {
            let body = format!(r#"{{"name":"{name}"}}"#);
            admin(addr, "POST", "/api/token/", Some(&body)).await
        }
    };
    assert_eq!(create("before".into()).await.status, 200);
    if !chattr("+a", &trail) {
        support::tools::missing(
            "chattr +a on a tmpfs file",
            "root, Linux 6.0 or newer, e2fsprogs",
        );
        return;
    }
    // Fill the file system; records still fit in the trail's last page until one is cut short.
    let filler = mount.0.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut file, &[0u8; 4096]).is_ok() {}
    drop(file);
    let mut refused = None;
    // Names of growing length, so that no record ends exactly where the page does (a refused
    // write would then leave nothing to cut).
    for i in 0..64 {
        let reply = create(format!("fill-{i:02}-{}", "x".repeat(40 + i))).await;
        if reply.status == 503 {
            refused = Some(reply);
            break;
        }
    }
    refused
        .expect("a full file system refuses writes")
        .assert_envelope(503, "audit_unavailable");
    let partial = !std::fs::read(&trail).unwrap().ends_with(b"\n");
    assert!(
        partial,
        "the failed write left part of a record, which could not be cut"
    );

    // Space comes back, but the file still ends in a partial record: nothing is written.
    std::fs::remove_file(&filler).unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    upstream.emulator.clear_seen();
    create("while-unsound".into())
        .await
        .assert_envelope(503, "audit_unavailable");
    assert!(upstream.emulator.seen().is_empty());
    let reply = readyz(&gateway).await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.text().contains("could not be cut back"),
        "{}",
        reply.text()
    );
    assert!(
        !std::fs::read(&trail).unwrap().ends_with(b"\n"),
        "nothing appended"
    );

    // The cut can be made again: the writer makes it and resumes; the trail is whole.
    assert!(chattr("-a", &trail));
    until_ready(&gateway, 200).await;
    assert_eq!(create("after".into()).await.status, 200);
    let (code, stdout, stderr) = audit_verify_trail(&gateway.audit_path);
    assert_eq!(code, 0, "{stdout}{stderr}");
}
