//! The central store (SPEC §6.3) against a real PostgreSQL started here: two replicas' trails
//! arrive whole and in order under their origins; `audit verify --postgres` passes, and names the
//! origin and `seq` of a row changed, deleted or inserted out of the chain; PostgreSQL stopped
//! under load holds no request and ships everything, without a gap or a duplicate, once back; a
//! gateway killed mid-way resumes where the table ends; `audit query --postgres` prints what
//! `audit query` prints over the files; a conflicting row stops shipping of that origin; the URL's
//! password appears in no output.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use support::postgres::{PgServer, PG_PASSWORD};
use support::redis::RedisServer;
use support::*;
use tokengate::emulator::{NewToken, RunningEmulator};

/// The `[audit.postgres]` lines of a gateway whose URL is in `TG_PG_URL`.
const STORE: &str = "\n[audit.postgres]\nurl_env = \"TG_PG_URL\"\n";

/// `(seq, line)` of every row of `origin`, in `seq` order.
async fn table_rows(pg: &PgServer, origin: &str) -> Vec<(i64, String)> {
    let client = pg.client().await;
    client
        .query(
            "SELECT seq, line FROM tokengate_audit WHERE origin = $1 ORDER BY seq",
            &[&origin],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Asserts that the table holds exactly the local trail's lines for `origin`: seq 1, 2, 3…,
/// each line byte for byte.
async fn assert_shipped(pg: &PgServer, origin: &str, trail: &Path) {
    let local = audit_lines(trail);
    let rows = table_rows(pg, origin).await;
    let seqs: Vec<i64> = rows.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=local.len() as i64).collect::<Vec<_>>());
    let lines: Vec<String> = rows.into_iter().map(|(_, l)| l).collect();
    assert_eq!(lines, local);
}

/// The value of the metric `name` (no labels) on the admin listener at `admin`.
async fn metric(admin: std::net::SocketAddr, name: &str) -> f64 {
    let text = send(admin, "GET", "/metrics", &[], None).await.text();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// Waits until `check` holds, at most `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Changes through the gateway at `addr`: a create, PATCHes of token `id`, a refused request.
async fn some_changes(addr: std::net::SocketAddr, id: i64, n: usize) {
    for i in 0..n {
        let reply = admin(
            addr,
            "PATCH",
            &format!("/api/token/{id}"),
            Some(&json!({ "remain_quota": 1000 + i }).to_string()),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let reply = admin(addr, "POST", "/api/token/", Some(r#"{"name":"new"}"#)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = admin(addr, "POST", "/api/token/", Some(r#"{"name":7}"#)).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
}

/// The `[audit.postgres]` lines of a gateway whose URL is in a file written in `dir`
/// (`url_file`, for a gateway in the test's own process, whose environment it shares).
fn store_in_file(dir: &tempfile::TempDir, pg: &PgServer) -> String {
    let file = dir.path().join("pg-url");
    std::fs::write(&file, pg.url()).unwrap();
    format!("\n[audit.postgres]\nurl_file = {:?}\n", file)
}

/// Runs `tokengate audit <verb> --config <config> --postgres` with the URL in `TG_PG_URL`.
fn store_cli(verb: &str, config: &Path, pg: &PgServer, extra: &[&str]) -> (i32, String, String) {
    let config = config.to_str().unwrap();
    let mut args = vec!["audit", verb, "--config", config, "--postgres"];
    args.extend_from_slice(extra);
    let url = pg.url();
    run_cli(&args, &[("TG_PG_URL", url.as_str())])
}

fn replica(upstream: &RunningEmulator, redis: &RedisServer, pg: &PgServer, name: &str) -> Process {
    let mut options = Options::new(upstream.addr);
    options.audit_extra = STORE.into();
    options.tail = format!(
        // timeout_ms: a loaded machine must not turn a slow Redis answer into a refusal.
        "\n[cluster]\nurl = \"{}\"\ninstance = \"{name}\"\ntimeout_ms = 2000\n",
        redis.url()
    );
    let url = pg.url();
    Process::serve(&options, &[("TG_PG_URL", url.as_str())])
}

/// Two replicas (two origins) ship whole, ordered chains; verify passes over both, and names
/// the origin and `seq` of a changed, a deleted and an inserted row; query over the table prints
/// what query over the files prints; the password is in no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_ship_whole_chains_that_verify_and_query_like_the_files() {
    let (Some(pg), Some(redis)) = (PgServer::start(), RedisServer::start()) else {
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
    let mut a = replica(&upstream, &redis, &pg, "replica-a");
    let mut b = replica(&upstream, &redis, &pg, "replica-b");
    for round in 0..3 {
        some_changes(a.addr, id, 4 + round).await;
        some_changes(b.addr, id, 2 + round).await;
    }
    let reply = admin(b.addr, "DELETE", &format!("/api/token/{id}"), None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // A clean shutdown waits for the lag to reach 0: everything is in the table right after.
    for replica in [&a, &b] {
        replica.signal("TERM");
    }
    for replica in [&mut a, &mut b] {
        assert!(replica.wait(Duration::from_secs(20)).success());
    }
    let (dir_a, dir_b) = (a.take_dir(), b.take_dir());
    let trail = |dir: &tempfile::TempDir| dir.path().join("audit").join("trail.jsonl");
    assert_shipped(&pg, "replica-a", &trail(&dir_a)).await;
    assert_shipped(&pg, "replica-b", &trail(&dir_b)).await;
    for output in [a.output(), b.output()] {
        assert!(!output.contains(PG_PASSWORD), "{output}");
        assert!(
            output.contains("shipping the audit trail to PostgreSQL"),
            "{output}"
        );
    }

    let config = dir_a.path().join("tokengate.toml");
    let (code, out, err) = store_cli("verify", &config, &pg, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let count = |dir| audit_lines(&trail(dir)).len();
    assert!(
        out.contains(&format!(
            "origin replica-a: intact, {} records",
            count(&dir_a)
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "origin replica-b: intact, {} records",
            count(&dir_b)
        )),
        "{out}"
    );
    assert!(out.contains("2 origins"), "{out}");
    assert!(!format!("{out}{err}").contains(PG_PASSWORD));
    // Without a configuration: the URL from --pg-url-env, the key from --key-file, the table's
    // default name. The same verdict.
    let key = dir_a.path().join("audit-key");
    let url = pg.url();
    let (code, bare, err) = run_cli(
        &[
            "audit",
            "verify",
            "--postgres",
            "--pg-url-env",
            "TG_PG_URL",
            "--key-file",
            key.to_str().unwrap(),
        ],
        &[("TG_PG_URL", url.as_str())],
    );
    assert_eq!(code, 0, "{bare}{err}");
    assert_eq!(bare, out);
    assert!(!format!("{bare}{err}").contains(PG_PASSWORD));

    // Query over the table: every origin's changes, merged by time, as over each trail's files.
    for filter in [vec![], vec!["--token".to_string(), id.to_string()]] {
        let filter: Vec<&str> = filter.iter().map(String::as_str).collect();
        let (code, out, err) = store_cli("query", &config, &pg, &filter);
        assert_eq!(code, 0, "{out}{err}");
        let mut from_files: Vec<String> = [&dir_a, &dir_b]
            .iter()
            .flat_map(|dir| {
                let (code, out, err) = audit_cli("query", &trail(dir), &filter);
                assert_eq!(code, 0, "{out}{err}");
                out.lines().map(str::to_owned).collect::<Vec<_>>()
            })
            .collect();
        let from_table: Vec<String> = out.lines().map(str::to_owned).collect();
        assert!(from_table.len() > 10, "{out}");
        // In time order (RFC 3339 in UTC sorts as text) …
        let times: Vec<&str> = from_table
            .iter()
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{out}");
        // … and the same changes.
        let mut sorted = from_table.clone();
        sorted.sort();
        from_files.sort();
        assert_eq!(sorted, from_files);
    }
    let (code, out, err) = store_cli("query", &config, &pg, &["--format", "json", "--failed"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 6, "{out}");

    // Tampering, each undone before the next.
    let client = pg.client().await;
    let rows = table_rows(&pg, "replica-a").await;
    let (seq, line) = rows[4].clone();
    let forged = line.replace("\"phase\":\"", "\"phase\":\"x");
    client
        .execute(
            "UPDATE tokengate_audit SET line = $1 WHERE origin = 'replica-a' AND seq = $2",
            &[&forged, &seq],
        )
        .await
        .unwrap();
    let (code, out, err) = store_cli("verify", &config, &pg, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("origin \"replica-a\", seq {seq}: hash mismatch")),
        "{err}"
    );
    assert!(out.contains("origin replica-b: intact"), "{out}");
    let (code, _, err) = store_cli("query", &config, &pg, &["--token", &id.to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("seq {seq}")), "{err}");
    client
        .execute(
            "UPDATE tokengate_audit SET line = $1 WHERE origin = 'replica-a' AND seq = $2",
            &[&line, &seq],
        )
        .await
        .unwrap();
    // A column edited apart from its line (to hide a row from --token) is found too.
    client
        .execute(
            "UPDATE tokengate_audit SET token_ids = '{}' WHERE origin = 'replica-a' AND seq = $1",
            &[&seq],
        )
        .await
        .unwrap();
    let (code, _, err) = store_cli("verify", &config, &pg, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("seq {seq}: the row's token_ids column")),
        "{err}"
    );
    client
        .execute(
            "UPDATE tokengate_audit SET token_ids = CASE WHEN jsonb_typeof(record->'token_ids') = 'array' THEN ARRAY(SELECT jsonb_array_elements_text(record->'token_ids')::bigint) END WHERE origin = 'replica-a' AND seq = $1",
            &[&seq],
        )
        .await
        .unwrap();
    let (code, out, err) = store_cli("verify", &config, &pg, &[]);
    assert_eq!(code, 0, "{out}{err}");
    // The last change of the token hidden from --token (its outcome's token_ids emptied, past
    // every row the index finds): the query still checks the whole chain, and fails.
    let last_b = table_rows(&pg, "replica-b").await.last().unwrap().0;
    client
        .execute(
            "UPDATE tokengate_audit SET token_ids = '{}' WHERE origin = 'replica-b' AND seq = $1",
            &[&last_b],
        )
        .await
        .unwrap();
    let (code, _, err) = store_cli("query", &config, &pg, &["--token", &id.to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "origin \"replica-b\", seq {last_b}: the row's token_ids"
        )),
        "{err}"
    );
    client
        .execute(
            "UPDATE tokengate_audit SET token_ids = ARRAY[$2::bigint] WHERE origin = 'replica-b' AND seq = $1",
            &[&last_b, &id],
        )
        .await
        .unwrap();
    let (code, out, err) = store_cli("verify", &config, &pg, &[]);
    assert_eq!(code, 0, "{out}{err}");
    // A row deleted: the next one names the gap.
    client
        .execute(
            "DELETE FROM tokengate_audit WHERE origin = 'replica-b' AND seq = 3",
            &[],
        )
        .await
        .unwrap();
    let (code, _, err) = store_cli("verify", &config, &pg, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("origin \"replica-b\", seq 4: seq 4 where 3 was expected: records are missing before it"),
        "{err}"
    );
    let local_b = audit_lines(&trail(&dir_b));
    client
        .execute(
            "INSERT INTO tokengate_audit (origin, seq, ts, phase, request_id, client, op, token_ids, outcome, line, record) \
             SELECT 'replica-b', 3, (r->>'ts')::timestamptz, r->>'phase', r->>'request_id', r->>'client', r->>'op', \
             CASE WHEN jsonb_typeof(r->'token_ids') = 'array' THEN ARRAY(SELECT jsonb_array_elements_text(r->'token_ids')::bigint) END, r->>'outcome', $1::text, r FROM (SELECT $1::text::jsonb AS r) x",
            &[&local_b[2]],
        )
        .await
        .unwrap();
    let (code, out, err) = store_cli("verify", &config, &pg, &[]);
    assert_eq!(code, 0, "{out}{err}");
    // A row inserted out of the chain: another origin's record put after the end of this one.
    let last_b = local_b.len() as i64;
    let stray = table_rows(&pg, "replica-a").await[0].1.clone();
    client
        .execute(
            "INSERT INTO tokengate_audit (origin, seq, line, record) VALUES ('replica-b', $1, $2::text, $2::text::jsonb)",
            &[&(last_b + 1), &stray],
        )
        .await
        .unwrap();
    let (code, _, err) = store_cli("verify", &config, &pg, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "origin \"replica-b\", seq {}: seq 1 where {} was expected",
            last_b + 1,
            last_b + 1
        )),
        "{err}"
    );
}

/// The token id filter is served by the GIN index on `token_ids`, not a scan of the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_by_token_id_uses_the_token_ids_index() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let mut client = pg.client().await;
    let table = tokengate::audit::ship::table::Table::new("tokengate_audit").unwrap();
    for statement in table.create_statements() {
        client.batch_execute(&statement).await.unwrap();
    }
    // Enough rows for the planner to see a table, few enough to insert fast.
    client
        .batch_execute(
            "INSERT INTO tokengate_audit (origin, seq, token_ids, request_id, line) \
             SELECT 'o', g, ARRAY[g % 5000], md5(g::text), '' FROM generate_series(1, 50000) g; ANALYZE tokengate_audit",
        )
        .await
        .unwrap();
    let sql =
        tokengate::audit::ship::read::candidates_sql(table.sql(), "token_ids @> ARRAY[$1::bigint]");
    let tx = client.transaction().await.unwrap();
    let plan: Vec<String> = tx
        .query(&format!("EXPLAIN {sql}"), &[&873i64])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("tokengate_audit_token_ids_idx"), "{plan}");
    assert!(plan.contains("tokengate_audit_request_idx"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}

/// PostgreSQL stopped under load: requests go on, the lag grows and failures are counted, the
/// gateway stays ready; once it is back, shipping catches up with no gap and no duplicate, reading
/// the waiting records back across the files they were rotated into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_under_load_holds_no_request_and_shipping_catches_up() {
    let Some(mut pg) = PgServer::start() else {
        return;
    };
    let upstream = emulator().await;
    let id = upstream.emulator.insert_token(USER_ID, NewToken::default());
    // The URL from a file (`url_file`): the in-process gateway reads no variable of this test.
    let url_dir = tempfile::tempdir().unwrap();
    let mut options = Options::new(upstream.addr);
    // Small files: the records waiting while PostgreSQL is down span many rotations.
    options.audit_extra = format!("rotate_bytes = 4096\n{}", store_in_file(&url_dir, &pg));
    let gateway = TestGateway::start(options).await;
    let origin = gateway.trail.origin().to_owned();
    some_changes(gateway.addr, id, 3).await;
    eventually(Duration::from_secs(10), "first records shipped", || async {
        metric(gateway.admin, "tokengate_audit_ship_lag_records").await == 0.0
            && metric(gateway.admin, "tokengate_audit_shipped_total").await > 0.0
    })
    .await;

    pg.stop();
    let started = Instant::now();
    let path = format!("/api/token/{id}");
    let bodies: Vec<String> = (0..40)
        .map(|i| json!({ "name": format!("n{i}") }).to_string())
        .collect();
    let replies = futures_util::future::join_all(
        bodies
            .iter()
            .map(|body| admin(gateway.addr, "PATCH", &path, Some(body))),
    )
    .await;
    assert!(replies.iter().all(|r| r.status == 200));
    // The request path never waited on PostgreSQL (its connect timeout is 10 s).
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let lag = metric(gateway.admin, "tokengate_audit_ship_lag_records").await;
    assert!(lag >= 80.0, "lag {lag}");
    eventually(Duration::from_secs(10), "a failure counted", || async {
        metric(gateway.admin, "tokengate_audit_ship_failures_total").await > 0.0
    })
    .await;
    assert_eq!(
        send(gateway.admin, "GET", "/readyz", &[], None)
            .await
            .status,
        200
    );

    pg.start_again();
    eventually(Duration::from_secs(40), "shipping caught up", || async {
        metric(gateway.admin, "tokengate_audit_ship_lag_records").await == 0.0
    })
    .await;
    assert_shipped(&pg, &origin, &gateway.audit_path).await;
    let files = tokengate::audit::verify::trail_files(&gateway.audit_path).unwrap();
    assert!(files.len() > 10, "{files:?}");
}

/// A gateway killed (SIGKILL) while PostgreSQL was down, so the table ends before its trail:
/// started again, it resumes where the table ends, and ships the rest and its new records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_resumes_shipping_where_the_table_ends() {
    let Some(mut pg) = PgServer::start() else {
        return;
    };
    let upstream = emulator().await;
    let id = upstream.emulator.insert_token(USER_ID, NewToken::default());
    let mut options = Options::new(upstream.addr);
    options.audit_extra = STORE.into();
    let url = pg.url();
    let env = [("TG_PG_URL", url.as_str())];
    let mut first = Process::serve(&options, &env);
    some_changes(first.addr, id, 3).await;
    eventually(Duration::from_secs(10), "first records shipped", || async {
        metric(first.admin, "tokengate_audit_ship_lag_records").await == 0.0
            && metric(first.admin, "tokengate_audit_shipped_total").await > 0.0
    })
    .await;
    let origin_rows = pg
        .client()
        .await
        .query("SELECT DISTINCT origin FROM tokengate_audit", &[])
        .await
        .unwrap();
    let origin: String = origin_rows[0].get(0);
    let shipped = table_rows(&pg, &origin).await.len();
    pg.stop();
    some_changes(first.addr, id, 3).await;
    first.wait_for("shipping audit records to PostgreSQL failed", 1);
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let output = first.output();
    assert!(!output.contains(PG_PASSWORD), "{output}");
    assert!(
        output.contains("shipping audit records to PostgreSQL failed"),
        "{output}"
    );
    let dir = first.take_dir();
    let trail = dir.path().join("audit").join("trail.jsonl");
    assert!(audit_lines(&trail).len() > shipped);
    assert_eq!(
        table_rows(pg_started(&mut pg), &origin).await.len(),
        shipped
    );

    let mut second = Process::serve_in(&options, &env, dir);
    some_changes(second.addr, id, 1).await;
    second.signal("TERM");
    assert!(second.wait(Duration::from_secs(20)).success());
    assert!(!second.output().contains(PG_PASSWORD));
    assert_shipped(&pg, &origin, &trail).await;
}

/// A clean shutdown with records not yet shipped (SPEC §6.3: it "waits, within
/// `server.shutdown_grace_ms`, for the lag to reach 0"). PostgreSQL still down at `SIGTERM`: the
/// gateway leaves within its grace, saying how many records wait, and the table is untouched.
/// Started again while PostgreSQL is down, its shipper backs off to an 8 s wait; PostgreSQL comes
/// back and `SIGTERM` arrives in that wait, with records waiting: the shutdown does not sit out
/// the backoff nor leave them behind; it ships every one before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_ships_what_waits_or_says_what_is_left() {
    let Some(mut pg) = PgServer::start() else {
        return;
    };
    let upstream = emulator().await;
    let id = upstream.emulator.insert_token(USER_ID, NewToken::default());
    let mut options = Options::new(upstream.addr);
    options.audit_extra = STORE.into();
    let url = pg.url();
    let env = [("TG_PG_URL", url.as_str())];
    let failures = |process: &Process| {
        let admin = process.admin;
        async move { metric(admin, "tokengate_audit_ship_failures_total").await }
    };

    let mut first = Process::serve(&options, &env);
    some_changes(first.addr, id, 2).await;
    eventually(Duration::from_secs(10), "first records shipped", || async {
        metric(first.admin, "tokengate_audit_ship_lag_records").await == 0.0
    })
    .await;
    let shipped = pg
        .client()
        .await
        .query("SELECT count(*) FROM tokengate_audit", &[])
        .await
        .unwrap()[0]
        .get::<_, i64>(0);
    pg.stop();
    some_changes(first.addr, id, 2).await;
    eventually(Duration::from_secs(10), "a failure counted", || async {
        failures(&first).await > 0.0
    })
    .await;
    let stopping = Instant::now();
    first.signal("TERM");
    assert!(first.wait(Duration::from_secs(20)).success());
    // Its grace is 5 s; the drain of requests took none of it.
    assert!(
        stopping.elapsed() < Duration::from_secs(9),
        "{:?}",
        stopping.elapsed()
    );
    let output = first.output();
    assert!(
        output.contains("not yet in the central store at exit"),
        "{output}"
    );
    assert!(
        !output.contains("every audit record is in the central store"),
        "{output}"
    );
    assert!(!output.contains(PG_PASSWORD), "{output}");
    let dir = first.take_dir();
    let trail = dir.path().join("audit").join("trail.jsonl");

    // Started again with PostgreSQL down: failures 1…5 sleep 0.5, 1, 2, 4 and then 8 s.
    let mut second = Process::serve_in(&options, &env, dir);
    some_changes(second.addr, id, 1).await;
    eventually(Duration::from_secs(30), "five failures", || async {
        failures(&second).await >= 5.0
    })
    .await;
    pg.start_again();
    let lag = metric(second.admin, "tokengate_audit_ship_lag_records").await;
    assert!(
        lag > 0.0,
        "nothing waits to be shipped: the test would prove nothing"
    );
    second.signal("TERM");
    assert!(second.wait(Duration::from_secs(20)).success());
    let output = second.output();
    assert!(
        output.contains("every audit record is in the central store"),
        "{output}"
    );
    assert!(!output.contains("not yet in the central store"), "{output}");
    assert!(!output.contains(PG_PASSWORD), "{output}");
    let origin: String = pg
        .client()
        .await
        .query("SELECT DISTINCT origin FROM tokengate_audit", &[])
        .await
        .unwrap()[0]
        .get(0);
    assert_shipped(&pg, &origin, &trail).await;
    assert!(audit_lines(&trail).len() as i64 > shipped);
}

/// Starts `pg` again and hands it back.
fn pg_started(pg: &mut PgServer) -> &PgServer {
    pg.start_again();
    pg
}

/// A row already in the table at the next `seq`, with other bytes: shipping of that origin stops,
/// counted as a failure, and the row is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_row_stops_shipping_of_that_origin() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let upstream = emulator().await;
    let id = upstream.emulator.insert_token(USER_ID, NewToken::default());
    let url_dir = tempfile::tempdir().unwrap();
    let mut options = Options::new(upstream.addr);
    options.audit_extra = store_in_file(&url_dir, &pg);
    let gateway = TestGateway::start(options).await;
    let origin = gateway.trail.origin().to_owned();
    some_changes(gateway.addr, id, 1).await;
    eventually(Duration::from_secs(10), "first records shipped", || async {
        metric(gateway.admin, "tokengate_audit_ship_lag_records").await == 0.0
            && metric(gateway.admin, "tokengate_audit_shipped_total").await > 0.0
    })
    .await;
    let shipped = table_rows(&pg, &origin).await;
    let next = shipped.len() as i64 + 1;
    let client = pg.client().await;
    client
        .execute(
            "INSERT INTO tokengate_audit (origin, seq, line) VALUES ($1, $2, 'not this trail')",
            &[&origin, &next],
        )
        .await
        .unwrap();
    let failures = metric(gateway.admin, "tokengate_audit_ship_failures_total").await;
    some_changes(gateway.addr, id, 2).await;
    eventually(Duration::from_secs(10), "the conflict counted", || async {
        metric(gateway.admin, "tokengate_audit_ship_failures_total").await > failures
    })
    .await;
    // Shipping of the origin has stopped: more records only grow the lag.
    some_changes(gateway.addr, id, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lag = metric(gateway.admin, "tokengate_audit_ship_lag_records").await;
    assert!(lag >= 8.0, "lag {lag}");
    let rows = table_rows(&pg, &origin).await;
    assert_eq!(rows.len(), shipped.len() + 1);
    assert_eq!(rows.last().unwrap().1, "not this trail");
    assert_eq!(
        send(gateway.admin, "GET", "/readyz", &[], None)
            .await
            .status,
        200
    );
}

/// `check` reports the store (and whether it answers) without the password; a store with a
/// trail on standard output, or without a URL source, is refused naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_store_and_refuses_what_cannot_ship() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_secrets(dir.path(), false);
    let options = Options::new("127.0.0.1:3000".parse().unwrap());
    let config = dir.path().join("tokengate.toml");
    let write = |audit_extra: &str, path: Option<&str>| {
        let mut options = options.clone();
        options.audit_extra = audit_extra.into();
        let mut text = options.toml(dir.path());
        if let Some(path) = path {
            let live = dir.path().join("audit").join("trail.jsonl");
            text = text.replace(&format!("{:?}", live.display().to_string()), path);
        }
        std::fs::write(&config, text).unwrap();
    };
    let url = pg.url();
    write(STORE, None);
    let (code, out, err) = run_cli(
        &["check", "--config", config.to_str().unwrap()],
        &[("TG_PG_URL", url.as_str())],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "audit store    PostgreSQL at 127.0.0.1:{}/postgres, table tokengate_audit (URL from environment variable TG_PG_URL): answers",
            pg.port
        )),
        "{out}"
    );
    assert!(!format!("{out}{err}").contains(PG_PASSWORD));
    write(STORE, Some("\"-\""));
    let (code, out, err) = run_cli(
        &["check", "--config", config.to_str().unwrap()],
        &[("TG_PG_URL", url.as_str())],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("audit.postgres: needs audit.path to be a file"),
        "{err}"
    );
    write("\n[audit.postgres]\ntable = \"x;y\"\n", None);
    let (code, _, err) = run_cli(&["check", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("audit.postgres.url_env: is required"), "{err}");
    assert!(
        err.contains("audit.postgres.table: must be a table name"),
        "{err}"
    );
    // With the password wrong the store does not answer, and the message holds no URL.
    let wrong = url.replace(PG_PASSWORD, "not-the-password-123");
    write(STORE, None);
    let (code, out, err) = run_cli(
        &["check", "--config", config.to_str().unwrap()],
        &[("TG_PG_URL", wrong.as_str())],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("does NOT answer now"), "{out}");
    assert!(!format!("{out}{err}").contains("not-the-password-123"));
}
