//! Rate limits (SPEC §5) as a caller sees them: 429 `rate_limited` with `Retry-After` and the IETF
//! `RateLimit-Policy`/`RateLimit` fields, nothing forwarded, an audit record with the reason; a
//! batch costing one per id; classes and clients apart; the global cap on upstream requests; dry
//! run; and no state kept for unknown keys.

mod support;

use serde_json::{json, Value};
use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig, NewToken, RunningEmulator};

const TEAM_KEY: &str = "tg_team_key_for_rate_tests_33333333333333333333333333333333333333";
const OTHER_KEY: &str = "tg_other_key_for_rate_tests_4444444444444444444444444444444444444";

async fn gateway_with(rate_limit: &str, team: &str) -> (RunningEmulator, TestGateway) {
    let emulator = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(emulator.addr);
    options.rate_limit = rate_limit.into();
    options.clients =
        Some(client_entry("team", TEAM_KEY, team) + &client_entry("other", OTHER_KEY, ""));
    (emulator, TestGateway::start(options).await)
}

async fn call(
    gateway: &TestGateway,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Reply {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    send(gateway.addr, method, path, &headers, body).await
}

/// Stores `n` tokens upstream; their ids.
fn insert_tokens(upstream: &RunningEmulator, n: usize) -> Vec<i64> {
    (0..n)
        .map(|i| {
            let name = format!("t{i}");
            upstream.emulator.insert_token(
                USER_ID,
                NewToken {
                    name,
                    ..NewToken::default()
                },
            )
        })
        .collect()
}

fn header<'a>(reply: &'a Reply, name: &str) -> Vec<&'a str> {
    reply
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

async fn metrics(gateway: &TestGateway) -> String {
    send(gateway.admin, "GET", "/metrics", &[], None)
        .await
        .text()
}

#[tokio::test]
async fn writes_over_the_burst_are_429_with_retry_after_and_ratelimit_fields() {
    let (upstream, gateway) =
        gateway_with("burst = 100\n", "writes_per_minute = 6\nburst = 2\n").await;
    let create = Some(r#"{"name":"limited"}"#);
    let first = call(&gateway, TEAM_KEY, "POST", "/api/token/", create).await;
    assert_eq!(first.json()["success"], true);
    assert_eq!(header(&first, "ratelimit-policy"), [r#""writes";q=6;w=60"#]);
    assert_eq!(header(&first, "ratelimit"), [r#""writes";r=1;t=10"#]);
    let second = call(&gateway, TEAM_KEY, "POST", "/api/token/", create).await;
    assert_eq!(header(&second, "ratelimit"), [r#""writes";r=0;t=10"#]);

    upstream.emulator.clear_seen();
    let refused = call(&gateway, TEAM_KEY, "POST", "/api/token/", create).await;
    refused.assert_envelope(429, "rate_limited");
    let retry: u64 = header(&refused, "retry-after")[0].parse().unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        [r#""writes";q=6;w=60"#]
    );
    assert_eq!(
        header(&refused, "ratelimit"),
        [format!(r#""writes";r=0;t={retry}"#)]
    );
    assert!(refused.json()["message"]
        .as_str()
        .unwrap()
        .contains("writes"));
    assert!(
        upstream.emulator.seen().is_empty(),
        "a refused request is not forwarded"
    );
    assert_eq!(upstream.emulator.tokens().len(), 2);

    let records = audit_records(&gateway.audit_path);
    let last = records.last().unwrap();
    assert_eq!(
        last["request_id"],
        refused.headers["x-request-id"].to_str().unwrap()
    );
    assert_eq!(
        (last["phase"].as_str(), last["outcome"].as_str()),
        (Some("outcome"), Some("rejected"))
    );
    assert_eq!(last["reason"], "rate_limited");
    assert_eq!(last["status"], 429);
    assert_eq!(
        last["request"],
        Value::Null,
        "refused before the body was read"
    );
    assert_eq!(last["client"], "team");

    // Reads are another bucket; another client has its own.
    let read = call(&gateway, TEAM_KEY, "GET", "/api/token/", None).await;
    assert_eq!(read.status, 200);
    assert_eq!(header(&read, "ratelimit-policy"), [r#""reads";q=600;w=60"#]);
    let other = call(&gateway, OTHER_KEY, "POST", "/api/token/", create).await;
    assert_eq!(other.json()["success"], true, "{}", other.text());
    // reveal_key is a write.
    let reveal = call(&gateway, TEAM_KEY, "POST", "/api/token/1/key", None).await;
    reveal.assert_envelope(429, "rate_limited");

    let text = metrics(&gateway).await;
    assert!(
        text.contains(r#"tokengate_rate_limited_total{client="team",class="writes"} 2"#),
        "{text}"
    );
    assert!(text.contains("tokengate_rate_limit_buckets 5"), "{text}");
}

#[tokio::test]
async fn a_batch_costs_one_per_id_and_a_refused_rest_keeps_its_first_unit() {
    let (upstream, gateway) = gateway_with("", "writes_per_minute = 1\nburst = 5\n").await;
    let ids = insert_tokens(&upstream, 6);
    let batch = |ids: &[i64]| format!(r#"{{"ids":{ids:?}}}"#);

    // 3 of 5.
    let reply = call(
        &gateway,
        TEAM_KEY,
        "POST",
        "/api/token/batch",
        Some(&batch(&ids[..3])),
    )
    .await;
    assert_eq!(reply.json()["data"], 3, "{}", reply.text());
    assert_eq!(header(&reply, "ratelimit"), [r#""writes";r=2;t=60"#]);
    // One unit for the request, then 2 more are not there: 429, and the first unit is spent.
    upstream.emulator.clear_seen();
    let refused = call(
        &gateway,
        TEAM_KEY,
        "POST",
        "/api/token/batch",
        Some(&batch(&ids[3..])),
    )
    .await;
    refused.assert_envelope(429, "rate_limited");
    assert!(upstream.emulator.seen().is_empty());
    let record = audit_records(&gateway.audit_path).pop().unwrap();
    assert_eq!(record["reason"], "rate_limited");
    assert_eq!(
        record["token_ids"],
        serde_json::json!(ids[3..]),
        "refused once its ids were known"
    );
    // What is left: exactly one write.
    let one = call(
        &gateway,
        TEAM_KEY,
        "DELETE",
        &format!("/api/token/{}", ids[3]),
        None,
    )
    .await;
    assert_eq!(one.json()["success"], true, "{}", one.text());
    call(
        &gateway,
        TEAM_KEY,
        "DELETE",
        &format!("/api/token/{}", ids[4]),
        None,
    )
    .await
    .assert_envelope(429, "rate_limited");
}

#[tokio::test]
async fn a_batch_larger_than_the_burst_costs_the_burst() {
    let (upstream, gateway) = gateway_with("", "writes_per_minute = 1\nburst = 3\n").await;
    let ids = insert_tokens(&upstream, 5);
    let reply = call(
        &gateway,
        TEAM_KEY,
        "POST",
        "/api/token/batch",
        Some(&format!(r#"{{"ids":{ids:?}}}"#)),
    )
    .await;
    assert_eq!(reply.json()["data"], 5, "{}", reply.text());
    assert_eq!(header(&reply, "ratelimit"), [r#""writes";r=0;t=60"#]);
}

#[tokio::test]
async fn dry_run_counts_and_logs_but_refuses_nothing() {
    let (upstream, gateway) =
        gateway_with("dry_run = true\n", "writes_per_minute = 1\nburst = 1\n").await;
    for _ in 0..3 {
        let reply = call(
            &gateway,
            TEAM_KEY,
            "POST",
            "/api/token/",
            Some(r#"{"name":"dry"}"#),
        )
        .await;
        assert_eq!(reply.json()["success"], true, "{}", reply.text());
    }
    assert_eq!(upstream.emulator.tokens().len(), 3);
    let text = metrics(&gateway).await;
    assert!(
        text.contains(r#"tokengate_rate_limited_dry_run_total{client="team",class="writes"} 2"#),
        "{text}"
    );
    assert!(!text.contains("tokengate_rate_limited_total{"), "{text}");
}

#[tokio::test]
async fn the_global_upstream_cap_waits_up_to_a_second_then_refuses() {
    let (upstream, gateway) = gateway_with("upstream_requests_per_second = 1\n", "").await;
    // Three at once against one upstream request a second: one goes at once, one waits about a
    // second for room, and the third, with two seconds to wait, is refused at once.
    let started = std::time::Instant::now();
    let replies = futures_util::future::join_all(
        (0..3).map(|_| call(&gateway, TEAM_KEY, "GET", "/api/token/", None)),
    )
    .await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "the second waited"
    );
    let refused = replies.iter().find(|r| r.status == 429).unwrap();
    refused.assert_envelope(429, "rate_limited");
    assert!(refused.json()["message"]
        .as_str()
        .unwrap()
        .contains("upstream"));
    assert_eq!(header(refused, "retry-after"), ["1"]);
    // The caller's own class and the global cap, both named.
    assert_eq!(
        header(refused, "ratelimit-policy"),
        [r#""reads";q=600;w=60"#, r#""upstream";q=1;w=1"#]
    );
    assert_eq!(upstream.emulator.seen().len(), 2);
    let text = metrics(&gateway).await;
    assert!(
        text.contains(r#"tokengate_rate_limited_total{client="team",class="upstream"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_write_refused_by_the_upstream_cap_is_recorded_as_rejected() {
    let (upstream, gateway) = gateway_with("upstream_requests_per_second = 1\n", "").await;
    let bodies: Vec<String> = (0..3)
        .map(|i| format!(r#"{{"name": "capped-{i}"}}"#))
        .collect();
    let replies = futures_util::future::join_all(
        bodies
            .iter()
            .map(|body| call(&gateway, TEAM_KEY, "POST", "/api/token/", Some(body))),
    )
    .await;
    let refused = replies
        .iter()
        .find(|r| r.status == 429)
        .expect("one is refused");
    refused.assert_envelope(429, "rate_limited");
    assert_eq!(upstream.emulator.seen().len(), 2);
    // Its intent was written before the cap refused it; the outcome says it never left.
    let rid = refused.headers["x-request-id"].to_str().unwrap();
    let records: Vec<_> = audit_records(&gateway.audit_path)
        .into_iter()
        .filter(|r| r["request_id"] == rid)
        .collect();
    let outcome = records.last().unwrap();
    assert_eq!(
        (
            &outcome["outcome"],
            &outcome["reason"],
            &outcome["upstream_status"]
        ),
        (&json!("rejected"), &json!("rate_limited"), &json!(null))
    );
}

#[tokio::test]
async fn name_prefix_reads_and_patch_reads_count_against_the_upstream_cap() {
    let (upstream, gateway) = gateway_with(
        "upstream_requests_per_second = 1\n",
        "name_prefix = \"t\"\n",
    )
    .await;
    let ids = insert_tokens(&upstream, 2);
    // One upstream request a second, a bucket of one: the delete's read goes at once and the
    // delete itself waits for the next second, so the whole takes about a second.
    let started = std::time::Instant::now();
    let reply = call(
        &gateway,
        TEAM_KEY,
        "DELETE",
        &format!("/api/token/{}", ids[0]),
        None,
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "the read counted"
    );
    // A PATCH is two upstream requests too (its name check reuses the read).
    let started = std::time::Instant::now();
    let path = format!("/api/token/{}", ids[1]);
    let reply = call(
        &gateway,
        TEAM_KEY,
        "PATCH",
        &path,
        Some(r#"{"name":"t-new"}"#),
    )
    .await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1800),
        "read and write counted"
    );
    let methods: Vec<String> = upstream
        .emulator
        .seen()
        .iter()
        .map(|s| s.method.to_string())
        .collect();
    assert_eq!(methods, ["GET", "DELETE", "GET", "PUT"]);
}

/// SPEC §3: in pass-through mode each identity (its own upstream token) gets the `[rate_limit]`
/// defaults in buckets of its own, in a table of at most `rate_limit.max_identities`.
#[tokio::test]
async fn passthrough_identities_each_get_the_default_buckets_within_a_bound() {
    use tokengate::emulator::User;
    let emulator = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    const OTHER_TOKEN: &str = "OtherUsersAccessToken0123456789";
    emulator.emulator.add_user(User::new(77, OTHER_TOKEN));
    let mut options = Options::new(emulator.addr);
    options.mode = "passthrough";
    options.rate_limit = "reads_per_minute = 60\nburst = 2\nmax_identities = 50\n".into();
    let gateway = TestGateway::start(options).await;
    let list = |token: &'static str, user: &'static str| {
        let addr = gateway.addr;
        async move {
            send(
                addr,
                "GET",
                "/api/token/",
                &[("authorization", token), ("new-api-user", user)],
                None,
            )
            .await
        }
    };

    // Two requests of one token within its burst pass, with the RateLimit fields.
    let first = list(UPSTREAM_TOKEN, "42").await;
    assert_eq!(first.json()["success"], true, "{}", first.text());
    assert_eq!(header(&first, "ratelimit"), [r#""reads";r=1;t=1"#]);
    let second = list(UPSTREAM_TOKEN, "42").await;
    assert_eq!(header(&second, "ratelimit"), [r#""reads";r=0;t=1"#]);
    // The third is the gateway's 429, and never reaches the upstream.
    let third = list(UPSTREAM_TOKEN, "42").await;
    third.assert_envelope(429, "rate_limited");
    assert_eq!(header(&third, "retry-after"), ["1"]);
    assert_eq!(header(&third, "ratelimit-policy"), [r#""reads";q=60;w=60"#]);
    assert_eq!(header(&third, "ratelimit"), [r#""reads";r=0;t=1"#]);
    assert_eq!(emulator.emulator.seen().len(), 2);

    // Another token is not affected.
    let other = list(OTHER_TOKEN, "77").await;
    assert_eq!(other.json()["success"], true, "{}", other.text());
    assert_eq!(header(&other, "ratelimit"), [r#""reads";r=1;t=1"#]);
    let text = metrics(&gateway).await;
    assert!(text.contains("tokengate_rate_limit_buckets 5"), "{text}");
    assert!(
        text.contains(r#"tokengate_rate_limited_total{client="passthrough",class="reads"} 1"#),
        "{text}"
    );

    // 200 more identities: the table keeps at most 50 (100 buckets, and the upstream's).
    for i in 0..200 {
        let token = format!("invented-token-{i:04}");
        let reply = send(
            gateway.addr,
            "GET",
            "/api/token/",
            &[("authorization", &token)],
            None,
        )
        .await;
        assert_ne!(
            reply.status, 429,
            "a new identity starts with a full bucket"
        );
    }
    let text = metrics(&gateway).await;
    let buckets: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("tokengate_rate_limit_buckets "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((3..=101).contains(&buckets), "{buckets} buckets:\n{text}");
    // The longest idle went first: the spent token's state is gone, and it starts full again.
    let again = list(UPSTREAM_TOKEN, "42").await;
    assert_eq!(again.json()["success"], true, "{}", again.text());
}

/// The global upstream cap holds for pass-through callers too, over all identities.
#[tokio::test]
async fn passthrough_callers_meet_the_upstream_cap_too() {
    let emulator = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(emulator.addr);
    options.mode = "passthrough";
    options.rate_limit = "upstream_requests_per_second = 1\n".into();
    let gateway = TestGateway::start(options).await;
    let auth = [("authorization", UPSTREAM_TOKEN)];
    let first = send(gateway.addr, "GET", "/api/token/", &auth, None).await;
    assert_eq!(first.json()["success"], true, "{}", first.text());
    assert_eq!(header(&first, "ratelimit"), [r#""reads";r=9;t=1"#]);
    let replies = futures_util::future::join_all(
        (0..3).map(|_| send(gateway.addr, "GET", "/api/token/", &auth, None)),
    )
    .await;
    let refused = replies
        .iter()
        .find(|r| r.status == 429)
        .expect("the upstream cap applies");
    assert_eq!(
        header(refused, "ratelimit-policy"),
        [r#""reads";q=600;w=60"#, r#""upstream";q=1;w=1"#]
    );
    let text = metrics(&gateway).await;
    assert!(text.contains("tokengate_rate_limit_buckets 3"), "{text}");
    assert!(
        text.contains(r#"tokengate_rate_limited_total{client="passthrough",class="upstream"}"#),
        "{text}"
    );
}

/// Memory and limiter state stay flat however many unknown keys are tried: no bucket, metric
/// label or cache entry is made for a key before a caller is known (the one state kept is the
/// source address's, for the limit on refusals before authentication).
#[tokio::test]
async fn sixty_thousand_unknown_keys_leave_memory_and_limiter_state_unchanged() {
    let emulator = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let mut options = Options::new(emulator.addr);
    // The limit on refusals per address is out of reach here: every refusal takes the same path.
    options.rate_limit =
        "reads_per_minute = 60\nburst = 5\nunauthenticated_per_minute = 60000000\n".into();
    // mimalloc returns freed pages to the system at once here, so the resident size follows the
    // memory in use rather than what the allocator keeps for later.
    let gateway = Process::serve(&options, &[("MIMALLOC_PURGE_DELAY", "0")]);
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let addr = gateway.addr;
    let flood = |n: usize| async move {
        use std::sync::atomic::{AtomicU64, Ordering};
        let counter = std::sync::Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let counter = counter.clone();
                tokio::spawn(async move {
                    loop {
                        let i = counter.fetch_add(1, Ordering::Relaxed);
                        if i as usize >= n {
                            break;
                        }
                        let key = format!("Bearer tg_{:064x}", rand_like(i));
                        let reply =
                            send(addr, "GET", "/api/token/", &[("authorization", &key)], None)
                                .await;
                        assert_eq!(reply.status, 401);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    };
    let buckets = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("tokengate_rate_limit_buckets "))
            .map(str::to_owned)
    };
    // Warm up allocator pools and connection state, then measure.
    flood(5_000).await;
    let before_rss = rss(gateway.child.id());
    let before = buckets(
        &send(gateway.admin, "GET", "/metrics", &[], None)
            .await
            .text(),
    );
    flood(60_000).await;
    let after_rss = rss(gateway.child.id());
    let after_text = send(gateway.admin, "GET", "/metrics", &[], None)
        .await
        .text();
    assert_eq!(buckets(&after_text), before);
    assert_eq!(before.as_deref(), Some("tokengate_rate_limit_buckets 5"));
    assert!(
        !after_text.contains("tokengate_rate_limited_total{client=\"reader\""),
        "{after_text}"
    );
    assert!(
        after_text.contains("tokengate_unauthenticated_addresses 1"),
        "one address, however many keys: {after_text}"
    );
    // Per-key state of even 110 bytes would be 6.6 MB here. The resident size wanders by up to
    // about 3.5 MiB from run to run whatever the load (measured: it rises and falls between
    // successive floods, more on a busy machine), so the margin is 5 MiB.
    let growth = after_rss.saturating_sub(before_rss);
    assert!(
        growth < 5 * 1024 * 1024,
        "resident memory grew by {growth} bytes over 60 000 unknown keys"
    );
    // And the configured callers still have their buckets.
    let reply = send(
        gateway.addr,
        "GET",
        "/api/token/",
        &[("authorization", &format!("Bearer {READER_KEY}"))],
        None,
    )
    .await;
    assert_eq!(header(&reply, "ratelimit"), [r#""reads";r=4;t=1"#]);
}

/// A different 256-bit-looking number for each `i` (no two requests share a key).
fn rand_like(i: u64) -> u128 {
    let x = u128::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) ^ 0xA5A5_5A5A;
    x.rotate_left((i % 97) as u32)
}
