//! Several replicas as one gateway (SPEC §11): three `tokengate serve` processes sharing a real
//! `redis-server`, in front of one emulator. A caller's burst is one burst across them, the
//! upstream cap is one cap, and changes of one token through any of them take turns; with Redis
//! stopped, limits fall back and locked changes are refused, and when it returns (or restarts
//! empty) shared mode comes back by itself.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use support::redis::RedisServer;
use support::*;
use tokengate::emulator::{NewToken, RunningEmulator};

const TEAM_KEY: &str = "tg_team_key_for_cluster_tests_55555555555555555555555555555555555";

/// `n` replicas in front of `upstream`, sharing `redis`, with `rate_limit` lines and the
/// `[cluster]` lines `extra`.
fn replicas(
    upstream: &RunningEmulator,
    redis: &RedisServer,
    n: usize,
    rate_limit: &str,
    extra: &str,
) -> Vec<Process> {
    (0..n)
        .map(|i| {
            let mut options = Options::new(upstream.addr);
            options.rate_limit = rate_limit.into();
            options.clients = Some(client_entry("team", TEAM_KEY, ""));
            // A generous bound on each Redis call unless the test is about it: a loaded
            // machine must not turn a slow answer into 503 cluster_unavailable.
            let timeout = if extra.contains("timeout_ms") {
                ""
            } else {
                "timeout_ms = 2000\n"
            };
            options.tail = format!(
                "[cluster]\nurl = \"{}\"\ninstance = \"replica-{i}\"\n{timeout}{extra}\n",
                redis.url()
            );
            Process::serve(&options, &[])
        })
        .collect()
}

async fn team(replica: &Process, method: &str, path: &str, body: Option<&str>) -> Reply {
    let auth = format!("Bearer {TEAM_KEY}");
    let mut headers = vec![("authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    send(replica.addr, method, path, &headers, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_one_burst_across_three_replicas() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = emulator().await;
    let replicas = replicas(
        &upstream,
        &redis,
        3,
        "writes_per_minute = 60\nburst = 3\nupstream_requests_per_second = 1000\n",
        "",
    );
    // Three creates, one through each replica: the burst of 3 is spent.
    for (i, replica) in replicas.iter().enumerate() {
        let body = format!(r#"{{"name":"r{i}"}}"#);
        let reply = team(replica, "POST", "/api/token/", Some(&body)).await;
        assert_eq!(reply.json()["success"], true, "{}", reply.text());
        let left = reply.headers["ratelimit"].to_str().unwrap().to_string();
        assert_eq!(left, format!("\"writes\";r={};t=1", 2 - i), "replica {i}");
    }
    // The fourth is refused, whichever replica it reaches, with the fields of SPEC §5.
    for replica in &replicas {
        let reply = team(replica, "POST", "/api/token/", Some(r#"{"name":"x"}"#)).await;
        reply.assert_envelope(429, "rate_limited");
        assert_eq!(reply.headers["retry-after"], "1");
        assert_eq!(reply.headers["ratelimit-policy"], "\"writes\";q=60;w=60");
        assert_eq!(reply.headers["ratelimit"], "\"writes\";r=0;t=1");
    }
    assert_eq!(upstream.emulator.tokens().len(), 3);
    // Reads have a bucket of their own, shared too.
    let reply = team(&replicas[1], "GET", "/api/token/", None).await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    // Each replica's records carry its own origin.
    let metrics = send(replicas[0].admin, "GET", "/metrics", &[], None)
        .await
        .text();
    assert!(metrics.contains("tokengate_cluster_up 1"), "{metrics}");
    let redis_keys = redis.command("KEYS *");
    assert!(
        redis_keys.contains("tokengate:rl:team:writes"),
        "{redis_keys}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_cap_is_one_cap_across_replicas() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = emulator().await;
    // Two upstream requests a second in all: alone, each replica would let two through at once.
    let replicas = replicas(
        &upstream,
        &redis,
        3,
        "upstream_requests_per_second = 2\n",
        "",
    );
    let started = Instant::now();
    let replies = futures_util::future::join_all(
        (0..9).map(|i| team(&replicas[i % 3], "GET", "/api/token/", None)),
    )
    .await;
    let refused = replies.iter().filter(|r| r.status == 429).count();
    assert!(
        refused >= 3,
        "{refused} refused of 9 in {:?}",
        started.elapsed()
    );
    let refusal = replies.iter().find(|r| r.status == 429).unwrap();
    let policies: Vec<&str> = refusal
        .headers
        .get_all("ratelimit-policy")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(policies.contains(&"\"upstream\";q=2;w=1"), "{policies:?}");
    // What reached the upstream stayed within the cap: 2 at once, then 2 a second.
    assert!(
        upstream.emulator.seen().len() <= 2 + 2 * 2,
        "{}",
        upstream.emulator.seen().len()
    );
}

/// SPEC §4.5 across replicas: 30 PATCHes of one token, each changing one field, spread over
/// three replicas, all land: each full PUT the upstream received differs from the one before it
/// in one field at most (an interleaved read-merge-write would undo another's field).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_patches_of_one_token_through_three_replicas_all_land() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = emulator().await;
    let id = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            name: "shared".into(),
            remain_quota: 1,
            ..NewToken::default()
        },
    );
    // Slow enough that unserialised read-merge-writes would overlap.
    upstream.emulator.set_delay(Duration::from_millis(15));
    let replicas = replicas(&upstream, &redis, 3, UNMET_RATE_LIMITS, "");
    let patches: Vec<(String, Value)> = (0..30)
        .map(|i| match i % 5 {
            0 => ("name".to_string(), json!(format!("n{i}"))),
            1 => ("remain_quota".into(), json!(1000 + i)),
            2 => ("group".into(), json!(format!("g{i}"))),
            3 => ("model_limits".into(), json!(format!("m{i}"))),
            _ => ("allow_ips".into(), json!(format!("10.0.0.{i}"))),
        })
        .collect();
    let path = format!("/api/token/{id}");
    let replies =
        futures_util::future::join_all(patches.iter().enumerate().map(|(i, (field, value))| {
            let body = json!({ field.as_str(): value }).to_string();
            let replica = &replicas[i % 3];
            let path = path.clone();
            async move { team(replica, "PATCH", &path, Some(&body)).await }
        }))
        .await;
    for reply in &replies {
        assert_eq!(reply.json()["success"], true, "{}", reply.text());
    }
    let puts: Vec<Map<String, Value>> = upstream
        .emulator
        .seen()
        .iter()
        .filter(|s| s.method == "PUT")
        .map(|s| serde_json::from_slice(&s.body).unwrap())
        .collect();
    assert_eq!(puts.len(), 30);
    for pair in puts.windows(2) {
        let changed: Vec<&String> = pair[1]
            .iter()
            .filter(|(k, v)| pair[0].get(*k) != Some(*v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            changed.len() <= 1,
            "a PUT undid another change: {changed:?}\n{pair:#?}"
        );
    }
    // The final token has, for each field, the value of the last PATCH that set it.
    let last = puts.last().unwrap();
    let stored = upstream
        .emulator
        .tokens()
        .into_iter()
        .find(|t| t.id == id)
        .unwrap();
    assert_eq!(stored.name, last["name"].as_str().unwrap());
    assert_eq!(stored.group, last["group"].as_str().unwrap());
    for (field, _) in &patches {
        assert!(last.contains_key(field));
    }
    // The locks were taken in Redis and released.
    let locks = redis.command("KEYS tokengate:lock:*");
    assert!(!locks.contains("lock:"), "{locks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_limits_fall_back_and_locked_changes_are_refused_then_it_comes_back() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = emulator().await;
    let id = upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            name: "t".into(),
            ..NewToken::default()
        },
    );
    let replicas = replicas(
        &upstream,
        &redis,
        2,
        "writes_per_minute = 600\nburst = 50\nupstream_requests_per_second = 1000\n",
        "timeout_ms = 100\n",
    );
    let replica = &replicas[0];
    assert_eq!(
        team(replica, "GET", "/api/token/", None).await.json()["success"],
        true
    );
    redis.pause();
    // Reads and creates go on, each within the timeout (the local buckets decide)...
    upstream.emulator.clear_seen();
    let started = Instant::now();
    let reply = team(replica, "GET", "/api/token/", None).await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    let reply = team(replica, "POST", "/api/token/", Some(r#"{"name":"during"}"#)).await;
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // ...changes that need a token lock are refused, and never reach the upstream.
    for (method, path, body) in [
        (
            "PATCH",
            format!("/api/token/{id}"),
            Some(r#"{"name":"x"}"#.to_string()),
        ),
        ("DELETE", format!("/api/token/{id}"), None),
        (
            "PUT",
            "/api/token/?status_only=true".to_string(),
            Some(format!(r#"{{"id":{id},"status":2}}"#)),
        ),
    ] {
        let reply = team(replica, method, &path, body.as_deref()).await;
        reply.assert_envelope(503, "cluster_unavailable");
    }
    assert!(
        upstream
            .emulator
            .seen()
            .iter()
            .all(|s| s.method != "PUT" && s.method != "DELETE"),
        "{:?}",
        upstream.emulator.seen()
    );
    let metrics = send(replica.admin, "GET", "/metrics", &[], None)
        .await
        .text();
    assert!(metrics.contains("tokengate_cluster_up 0"), "{metrics}");
    // A reload refused late (its credential file is gone) leaves the gauge as the running
    // cluster has it.
    let token_file = replica.config_path().with_file_name("upstream-token");
    let token = std::fs::read(&token_file).unwrap();
    std::fs::remove_file(&token_file).unwrap();
    replica.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !replica.output().contains("the configuration was refused") {
        assert!(Instant::now() < deadline, "{}", replica.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&token_file, token).unwrap();
    let metrics = send(replica.admin, "GET", "/metrics", &[], None)
        .await
        .text();
    assert!(metrics.contains("tokengate_cluster_up 0"), "{metrics}");
    // Ready all the same (the body says why): a Redis outage must not empty the load balancer.
    let ready = send(replica.admin, "GET", "/readyz", &[], None).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert!(ready.json()["checks"]["cluster"]
        .as_str()
        .unwrap()
        .contains("refused"));

    // Redis thaws: shared mode comes back without a restart.
    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = team(
            replica,
            "PATCH",
            &format!("/api/token/{id}"),
            Some(r#"{"name":"after"}"#),
        )
        .await;
        if reply.json()["success"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "{}", reply.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = replica.output();
    assert!(output.contains("Redis cannot be reached"), "{output}");
    assert!(output.contains("Redis answers again"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_is_used_again_with_its_scripts_reloaded() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let upstream = emulator().await;
    let replicas = replicas(
        &upstream,
        &redis,
        1,
        "writes_per_minute = 60\nburst = 2\nupstream_requests_per_second = 1000\n",
        "",
    );
    let create = |name: &'static str| {
        let replica = &replicas[0];
        async move {
            team(
                replica,
                "POST",
                "/api/token/",
                Some(&format!(r#"{{"name":"{name}"}}"#)),
            )
            .await
            .status
        }
    };
    assert_eq!(
        (create("a").await, create("b").await, create("c").await),
        (200, 200, 429)
    );
    // Killed and restarted: no keys, no scripts (EVALSHA answers NOSCRIPT).
    redis.restart_empty();
    // The first calls meet the dropped connection (the local bucket decides meanwhile); as soon
    // as one reaches the new server, the script is loaded again and the shared bucket is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis.command("KEYS tokengate:*").contains("rl:team:writes") {
        assert!(Instant::now() < deadline, "{}", replicas[0].output());
        tokio::time::sleep(Duration::from_millis(100)).await;
        create("probe").await;
    }
    // The first shared probe took one unit of a fresh bucket of two.
    assert_eq!((create("d").await, create("e").await), (200, 429));
    let metrics = send(replicas[0].admin, "GET", "/metrics", &[], None)
        .await
        .text();
    assert!(metrics.contains("tokengate_cluster_up 1"), "{metrics}");
}

#[tokio::test]
async fn a_second_serve_on_the_same_trail_refuses_to_start() {
    let upstream = emulator().await;
    let first = Process::serve(&Options::new(upstream.addr), &[]);
    let config = first.config_path();
    let (code, _, stderr) = run_cli(&["serve", "--config", config.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("in use by another tokengate process") && stderr.contains("trail.jsonl"),
        "{stderr}"
    );
    drop(first);
}

/// SPEC §11: `tokengate check` connects to Redis and says whether it answers.
#[tokio::test]
async fn check_connects_to_redis_and_reports_it() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_secrets(dir.path(), false);
    let mut options = Options::new("127.0.0.1:1".parse().unwrap());
    options.tail = format!(
        "[cluster]\nurl = \"{}\"\ninstance = \"replica-a\"\ntimeout_ms = 200\n",
        redis.url()
    );
    let config = dir.path().join("tokengate.toml");
    std::fs::write(&config, options.toml(dir.path())).unwrap();
    let check = || run_cli(&["check", "--config", config.to_str().unwrap()], &[]);
    let (code, out, err) = check();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("cluster") && out.contains("instance replica-a") && out.contains("answers"),
        "{out}"
    );
    redis.pause();
    let (code, out, _) = check();
    assert_eq!(code, 0, "an outage is reported, not refused");
    assert!(out.contains("does NOT answer"), "{out}");
    redis.resume();
}
