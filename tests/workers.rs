//! `server.workers` of the real binary: one thread per worker, each with its own `SO_REUSEPORT`
//! listener on the same address. Callers reach every worker; `server.max_connections` holds
//! across all of them; a `SIGHUP` reload reaches every worker (kept-alive connections included);
//! `SIGTERM` drains requests in flight on several workers and closes every listener. Each worker
//! keeps its own upstream connections: reused across requests, and replaced when the upstream
//! closes a kept-alive one.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::kept_alive::Connection;
use support::*;
use tokengate::emulator::RunningEmulator;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const WORKERS: usize = 4;
const NEW_KEY: &str = "tg_worker_new_client_key_777777777777777777777777777777777777777777777";

/// Options for a gateway of [`WORKERS`] workers with `server` lines added to `[server]`.
fn options(upstream: &RunningEmulator, server: &str) -> Options {
    let mut options = Options::new(upstream.addr);
    options.server_extra = format!("workers = {WORKERS}\n{server}");
    options
}

/// The admin listener's `/metrics` text.
async fn metrics(admin_addr: SocketAddr) -> String {
    send(admin_addr, "GET", "/metrics", &[], None).await.text()
}

/// `tokengate_worker_connections_total` of each worker, 0 for one never seen.
fn accepted_by_worker(text: &str) -> Vec<f64> {
    (0..WORKERS)
        .map(|worker| {
            let name = format!("tokengate_worker_connections_total{{worker=\"{worker}\"}}");
            text.lines()
                .find_map(|line| line.strip_prefix(name.as_str())?.trim().parse().ok())
                .unwrap_or(0.0)
        })
        .collect()
}

/// Opens `count` connections one after another, each answered with `status` for `key`, kept
/// open (so the kernel spreads them over the workers by their distinct source ports).
async fn connections(addr: SocketAddr, count: usize, key: &str, status: u16) -> Vec<Connection> {
    let mut open = Vec::new();
    for _ in 0..count {
        let mut connection = Connection::open(addr).await;
        connection.ask(key).await;
        assert_eq!(connection.answer().await, status);
        open.push(connection);
    }
    open
}

/// Waits, off the runtime, until the gateway has logged `needle` `count` times.
async fn logged(gateway: Process, needle: &'static str, count: usize) -> Process {
    tokio::task::spawn_blocking(move || {
        gateway.wait_for(needle, count);
        gateway
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_reach_every_worker_and_each_is_served_where_it_was_accepted() {
    let upstream = emulator().await;
    let gateway = Process::serve(&options(&upstream, ""), &[]);
    assert!(
        gateway.output().contains(&format!("\"workers\":{WORKERS}")),
        "{}",
        gateway.output()
    );

    // 64 connections over 4 listeners: a worker left without one would take odds of 4·(3/4)^64.
    let open = connections(gateway.addr, 64, ADMIN_KEY, 200).await;
    let accepted = accepted_by_worker(&metrics(gateway.admin).await);
    assert_eq!(accepted.iter().sum::<f64>(), 64.0, "{accepted:?}");
    assert!(accepted.iter().all(|&n| n > 0.0), "{accepted:?}");

    // Each kept-alive connection goes on being served (by the worker that holds it).
    let mut open = open;
    for connection in &mut open {
        connection.ask(ADMIN_KEY).await;
        assert_eq!(connection.answer().await, 200);
    }
    assert_eq!(upstream.emulator.seen().len(), 128);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_across_all_workers() {
    let upstream = emulator().await;
    let gateway = Process::serve(&options(&upstream, "max_connections = 3"), &[]);

    let mut open = connections(gateway.addr, 3, ADMIN_KEY, 200).await;
    // Whichever worker's listener the next ones land on, none is served over the cap.
    let mut waiting = Vec::new();
    for _ in 0..6 {
        let mut connection = Connection::open(gateway.addr).await;
        connection.ask(ADMIN_KEY).await;
        waiting.push(connection);
    }
    for connection in &mut waiting {
        assert!(
            !connection.answers_within(Duration::from_millis(150)).await,
            "a connection was served over max_connections = 3 with {WORKERS} workers"
        );
    }
    let text = metrics(gateway.admin).await;
    assert!(text.contains("tokengate_open_connections 3"), "{text}");

    // Each close lets exactly one waiting caller in, on whatever worker holds it.
    for round in 1..=waiting.len() {
        drop(open.remove(0));
        let mut answered = None;
        for _ in 0..100 {
            for (i, connection) in waiting.iter_mut().enumerate() {
                if connection.answers_within(Duration::from_millis(5)).await {
                    answered = Some(i);
                    break;
                }
            }
            if answered.is_some() {
                break;
            }
        }
        let i = answered.unwrap_or_else(|| panic!("round {round}: no waiting caller was let in"));
        let mut connection = waiting.remove(i);
        assert_eq!(connection.answer().await, 200);
        for other in &mut waiting {
            assert!(
                !other.answers_within(Duration::from_millis(20)).await,
                "round {round}: two callers let in for one close"
            );
        }
        open.push(connection);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reaches_every_worker_and_their_kept_alive_connections() {
    let upstream = emulator().await;
    let mut options = options(&upstream, "");
    // A client allowed `get` only, then `list` too.
    let newbie = |allow: &str| {
        format!(
            "\n[[clients]]\nname = \"newbie\"\nkey_sha256 = \"{}\"\nallow = [{allow}]\n",
            tokengate::caller::key_digest_hex(NEW_KEY)
        )
    };
    let admin = client_entry("admin", ADMIN_KEY, "allow_unlimited_quota = true");
    options.clients = Some(format!("{admin}{}", newbie("\"get\"")));
    let gateway = Process::serve(&options, &[]);

    // Kept-alive connections on every worker, the list refused on each.
    let mut open = connections(gateway.addr, 32, NEW_KEY, 403).await;
    let before = accepted_by_worker(&metrics(gateway.admin).await);
    assert!(before.iter().all(|&n| n > 0.0), "{before:?}");

    options.clients = Some(format!("{admin}{}", newbie("\"get\", \"list\"")));
    let dir = gateway.config_path().parent().unwrap().to_path_buf();
    let text = options
        .toml(&dir)
        .replace("format = \"text\"", "format = \"json\"");
    std::fs::write(gateway.config_path(), text).unwrap();
    gateway.signal("HUP");
    let gateway = logged(gateway, "SIGHUP: configuration reloaded", 1).await;

    // The same connections, each held by its worker, meet the new configuration.
    for connection in &mut open {
        connection.ask(NEW_KEY).await;
        assert_eq!(connection.answer().await, 200);
    }
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_on_several_workers_and_closes_every_listener() {
    let upstream = emulator().await;
    upstream.emulator.set_delay(Duration::from_millis(1500));
    let mut options = options(&upstream, "");
    options.shutdown_grace_ms = 8_000;
    let mut gateway = Process::serve(&options, &[]);
    let (addr, admin_addr) = (gateway.addr, gateway.admin);

    // Enough requests in flight that several workers hold one.
    let mut in_flight = Vec::new();
    for _ in 0..16 {
        let mut connection = Connection::open(addr).await;
        connection.ask(ADMIN_KEY).await;
        in_flight.push(connection);
    }
    for _ in 0..300 {
        if upstream.emulator.seen().len() == 16 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.emulator.seen().len(), 16);
    let accepted = accepted_by_worker(&metrics(admin_addr).await);
    assert!(
        accepted.iter().filter(|&&n| n > 0.0).count() >= 2,
        "{accepted:?}"
    );

    gateway.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every worker's listener is closed: no connection lands anywhere (many tries, many ports).
    for _ in 0..16 {
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "a listener still accepts while draining"
        );
    }
    for connection in &mut in_flight {
        assert_eq!(connection.answer().await, 200);
    }
    let (status, output) = tokio::task::spawn_blocking(move || {
        let status = gateway.wait(Duration::from_secs(10));
        (status, gateway.output())
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0), "{output}");
}

/// A list answer new-api would give: no token.
const EMPTY_LIST: &str =
    r#"{"success":true,"message":"","data":{"items":[],"total":0,"page":1,"page_size":10}}"#;

/// A raw HTTP/1.1 upstream on 127.0.0.1:0 that answers every request with [`EMPTY_LIST`],
/// keeping each connection alive, or closing it right after its first answer when
/// `close_after_one` (without saying so: a kept-alive connection that turns out closed). Counts
/// the connections it accepted and the requests it answered.
async fn counting_upstream(
    close_after_one: bool,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (accepted, answered) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let answered = answered.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    // A list request has no body: the head ends at the first empty line.
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match stream.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{EMPTY_LIST}",
                        EMPTY_LIST.len()
                    );
                    if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                    if close_after_one {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_reuses_its_own_upstream_connection() {
    let (upstream, connections, requests) = counting_upstream(false).await;
    let mut options = Options::new(upstream);
    options.server_extra = format!("workers = {WORKERS}\n");
    let gateway = Process::serve(&options, &[]);

    // One caller connection, many requests: one worker, one upstream connection.
    let mut caller = Connection::open(gateway.addr).await;
    for _ in 0..20 {
        caller.ask(ADMIN_KEY).await;
        assert_eq!(caller.answer().await, 200);
    }
    assert_eq!(requests.load(Ordering::SeqCst), 20);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    drop(caller);

    // Callers spread over every worker, one after another: each worker opens one upstream
    // connection and then reuses it; no worker takes another's.
    let open = self::connections(gateway.addr, 64, ADMIN_KEY, 200).await;
    let accepted = accepted_by_worker(&metrics(gateway.admin).await);
    assert!(accepted.iter().all(|&n| n > 0.0), "{accepted:?}");
    assert_eq!(requests.load(Ordering::SeqCst), 84);
    assert_eq!(connections.load(Ordering::SeqCst), WORKERS, "{accepted:?}");
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_closes_a_kept_alive_connection_is_reconnected_to() {
    let (upstream, connections, requests) = counting_upstream(true).await;
    let mut options = Options::new(upstream);
    options.server_extra = format!("workers = {WORKERS}\n");
    let gateway = Process::serve(&options, &[]);

    let mut caller = Connection::open(gateway.addr).await;
    for round in 1..=10 {
        caller.ask(ADMIN_KEY).await;
        assert_eq!(caller.answer().await, 200, "request {round}");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 10);
    assert_eq!(connections.load(Ordering::SeqCst), 10);
}
