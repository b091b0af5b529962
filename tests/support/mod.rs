//! Test support: a gateway started in-process on 127.0.0.1:0 against any upstream, a small HTTP
//! client, a raw-bytes sender for request lines no client library would write, and fake upstreams
//! that fail in chosen ways. (A directory module, so Cargo does not build it as a test binary.)
#![allow(dead_code)]

pub mod kept_alive;
pub mod postgres;
pub mod redis;
pub mod tls;
pub mod tmpfs;
pub mod tools;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use tokengate::emulator::{Emulator, EmulatorConfig, RunningEmulator};
use tokengate::{Config, Gateway};

/// Every line of the audit trail at `path` (rotated files first), in order, without newlines.
pub fn audit_lines(path: &std::path::Path) -> Vec<String> {
    tokengate::audit::verify::trail_files(path)
        .unwrap()
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every record of the audit trail at `path` (rotated files first), in order.
pub fn audit_records(path: &std::path::Path) -> Vec<serde_json::Value> {
    audit_lines(path)
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Runs `tokengate audit verify` with the tests' audit key over `files`.
pub fn audit_verify(files: &[std::path::PathBuf]) -> (i32, String, String) {
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), AUDIT_KEY).unwrap();
    let mut args = vec![
        "audit".to_string(),
        "verify".into(),
        "--key-file".into(),
        key.path().display().to_string(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_cli(&args, &[])
}

/// Runs `tokengate audit (verb) --config C` (and `extra` arguments), where C is a configuration
/// whose `[audit]` names the trail at `path` and a file with the tests' audit key: the binary
/// lists the trail's files itself. Returns (exit code, stdout, stderr).
pub fn audit_cli(verb: &str, path: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("audit-key");
    std::fs::write(&key, AUDIT_KEY).unwrap();
    let config = dir.path().join("tokengate.toml");
    std::fs::write(
        &config,
        format!(
            "[audit]\npath = {:?}\nhmac_key_file = {:?}\n",
            path.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let mut args = vec!["audit", verb, "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_cli(&args, &[])
}

/// `tokengate audit verify --config` over the trail at `path` (the binary lists its files).
pub fn audit_verify_trail_cli(path: &std::path::Path) -> (i32, String, String) {
    audit_cli("verify", path, &[])
}

/// `audit_verify` over every file of the trail at `path`.
pub fn audit_verify_trail(path: &std::path::Path) -> (i32, String, String) {
    audit_verify(&tokengate::audit::verify::trail_files(path).unwrap())
}

/// The upstream access token the tests' gateway holds. Scanned for in outputs: it must never leak.
pub const UPSTREAM_TOKEN: &str = "UpStreamSecret0123456789abcdefXYZ";
/// The upstream user id.
pub const USER_ID: i64 = 42;
/// A caller key allowed every operation.
pub const ADMIN_KEY: &str = "tg_admin_key_for_tests_0000000000000000000000000000000000000000";
/// The audit trail's HMAC key. Scanned for in outputs: it must never leak.
pub const AUDIT_KEY: &str = "audit-key-for-tests-0123456789-abcdefghijklmnop";
/// A caller key allowed only reads.
pub const READER_KEY: &str = "tg_reader_key_for_tests_111111111111111111111111111111111111111";

/// What the test gateway's configuration says (the rest is the spec's defaults).
#[derive(Clone, Debug)]
pub struct Options {
    pub upstream: String,
    pub mode: &'static str,
    pub auth_scheme: &'static str,
    pub upstream_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub max_body_bytes: usize,
    pub trusted_proxies: Vec<&'static str>,
    pub shutdown_grace_ms: u64,
    pub ready_check: bool,
    pub ca_file: Option<String>,
    /// `[audit]` lines beyond `path` and `hmac_key_file` (such as `fsync = "interval"`).
    pub audit_extra: String,
    /// The trail's path; a file in the gateway's temporary directory when not set.
    pub audit_path: Option<std::path::PathBuf>,
    /// The `[rate_limit]` lines. Tests that do not test limits get limits too high to meet.
    pub rate_limit: String,
    /// `[[clients]]` entries in place of the usual `admin` and `reader` (hold mode).
    pub clients: Option<String>,
    /// More `[upstream]` lines (such as `batch_update = "native"`).
    pub upstream_extra: String,
    /// The `[limits]` lines.
    pub limits: String,
    /// The `[server.tls]` lines (plain HTTP when empty).
    pub server_tls: String,
    /// A `[cluster]` table (and anything else) at the end of the file.
    pub tail: String,
    /// More `[server]` lines (such as `max_connections = 2`).
    pub server_extra: String,
}

/// `[rate_limit]` lines no test meets unless it means to.
pub const UNMET_RATE_LIMITS: &str = "reads_per_minute = 1000000\nwrites_per_minute = 1000000\nburst = 100000\nupstream_requests_per_second = 1000000\n";

/// A `[[clients]]` entry named `name` with key `key`, allowed every operation, with `extra`
/// lines (policy, rates).
pub fn client_entry(name: &str, key: &str, extra: &str) -> String {
    format!(
        "\n[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\nallow = [\"list\", \"search\", \"get\", \"auto_groups\", \"create\", \"update\", \"batch_update\", \"delete\", \"batch_delete\", \"reveal_key\"]\n{extra}\n",
        tokengate::caller::key_digest_hex(key)
    )
}

impl Options {
    pub fn new(upstream: SocketAddr) -> Options {
        Options {
            upstream: format!("http://{upstream}"),
            mode: "hold",
            auth_scheme: "raw",
            upstream_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            max_body_bytes: 65536,
            trusted_proxies: Vec::new(),
            shutdown_grace_ms: 5_000,
            ready_check: false,
            ca_file: None,
            audit_extra: String::new(),
            audit_path: None,
            rate_limit: UNMET_RATE_LIMITS.into(),
            clients: None,
            upstream_extra: String::new(),
            limits: String::new(),
            server_tls: String::new(),
            server_extra: String::new(),
            tail: String::new(),
        }
    }

    /// The configuration text, with the secret files and the trail in `dir`.
    pub fn toml(&self, dir: &std::path::Path) -> String {
        let token_file = dir.join("upstream-token");
        let audit_key = dir.join("audit-key");
        let audit_path = self
            .audit_path
            .clone()
            .unwrap_or_else(|| dir.join("audit").join("trail.jsonl"));
        let token_line = if self.mode == "hold" {
            format!(
                "access_token_file = {:?}\n",
                token_file.display().to_string()
            )
        } else {
            String::new()
        };
        let proxies: Vec<String> = self
            .trusted_proxies
            .iter()
            .map(|p| format!("{p:?}"))
            .collect();
        let clients = if let Some(clients) = &self.clients {
            clients.clone()
        } else if self.mode == "hold" {
            format!(
                r#"
[[clients]]
name = "admin"
key_sha256 = "{}"
allow = ["list", "search", "get", "auto_groups", "create", "update", "batch_update", "delete", "batch_delete", "reveal_key"]
allow_unlimited_quota = true

[[clients]]
name = "reader"
key_sha256 = "{}"
allow = ["list", "search", "get"]
"#,
                tokengate::caller::key_digest_hex(ADMIN_KEY),
                tokengate::caller::key_digest_hex(READER_KEY)
            )
        } else {
            String::new()
        };
        let ca_line = match &self.ca_file {
            Some(path) => format!("ca_file = {path:?}\n"),
            None => String::new(),
        };
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
max_body_bytes = {max_body}
request_timeout_ms = {request_timeout}
shutdown_grace_ms = {grace}
trusted_proxies = [{proxies}]
{server_extra}
{server_tls}

[upstream]
url = "{upstream}"
mode = "{mode}"
user_id = {USER_ID}
{token_line}auth_scheme = "{scheme}"
timeout_ms = {upstream_timeout}
ready_check = {ready_check}
{ca_line}{upstream_extra}
[limits]
{limits}
[rate_limit]
{rate_limit}
[audit]
path = {audit_path:?}
hmac_key_file = {audit_key:?}
{audit_extra}

[log]
format = "text"
{clients}
{tail}"#,
            audit_path = audit_path.display().to_string(),
            audit_key = audit_key.display().to_string(),
            audit_extra = self.audit_extra,
            rate_limit = self.rate_limit,
            upstream_extra = self.upstream_extra,
            limits = self.limits,
            server_extra = self.server_extra,
            server_tls = if self.server_tls.is_empty() {
                String::new()
            } else {
                format!("[server.tls]\n{}", self.server_tls)
            },
            tail = self.tail,
            max_body = self.max_body_bytes,
            request_timeout = self.request_timeout_ms,
            grace = self.shutdown_grace_ms,
            proxies = proxies.join(", "),
            upstream = self.upstream,
            mode = self.mode,
            scheme = self.auth_scheme,
            upstream_timeout = self.upstream_timeout_ms,
            ready_check = self.ready_check,
        )
    }
}

/// Writes the secret files a configuration made by [`Options::toml`] reads from `dir`.
pub fn write_secrets(dir: &std::path::Path, bearer: bool) {
    let token = if bearer {
        format!("Bearer {UPSTREAM_TOKEN}\n")
    } else {
        format!("{UPSTREAM_TOKEN}\n")
    };
    std::fs::write(dir.join("upstream-token"), token).unwrap();
    std::fs::write(dir.join("audit-key"), format!("{AUDIT_KEY}\n")).unwrap();
}

/// A gateway running in this process; stops when dropped.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The live audit trail file.
    pub audit_path: std::path::PathBuf,
    /// The open trail (its writer's faults can be injected).
    pub trail: std::sync::Arc<tokengate::audit::writer::Trail>,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    pub async fn start(options: Options) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        write_secrets(dir.path(), false);
        let config = Config::parse(&options.toml(dir.path())).unwrap();
        let mut gateway = Gateway::build(&config).unwrap();
        gateway.open_trail(&config.audit).unwrap();
        let trail = gateway.trail.clone().unwrap();
        let audit_path = config.audit.path.clone();
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (api.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let grace = Duration::from_millis(options.shutdown_grace_ms);
        let task = tokio::spawn(async move {
            tokengate::run(
                gateway,
                api,
                admin,
                async {
                    let _ = stopped.await;
                },
                grace,
            )
            .await;
        });
        TestGateway {
            addr,
            admin: admin_addr,
            audit_path,
            trail,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Signals shutdown; the returned handle finishes when the gateway has drained.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().unwrap()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An emulator (E2) holding `UPSTREAM_TOKEN` for `USER_ID`.
pub async fn emulator() -> RunningEmulator {
    Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap()
}

/// An [`emulator`] and a gateway in front of it.
pub async fn emulator_and_gateway() -> (RunningEmulator, TestGateway) {
    let emulator = emulator().await;
    let gateway = TestGateway::start(Options::new(emulator.addr)).await;
    (emulator, gateway)
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// `error.code` of a gateway envelope.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    /// Asserts the SPEC §9 envelope with `status` and `code`, and that it carries the response's request id.
    pub fn assert_envelope(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        let json = self.json();
        assert_eq!(json["success"], false, "{json}");
        assert_eq!(json["error"]["code"], code, "{json}");
        assert!(!json["message"].as_str().unwrap_or("").is_empty(), "{json}");
        let id = self
            .headers
            .get("x-request-id")
            .expect("x-request-id")
            .to_str()
            .unwrap();
        assert_eq!(json["error"]["request_id"], id, "{json}");
    }
}

/// Sends one request and reads the whole answer.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// Token `id` as `GET` returns it through `gateway`, without `accessed_time` (which reading
/// itself changes).
pub async fn get_token(gateway: &TestGateway, id: i64) -> serde_json::Value {
    let reply = admin(gateway.addr, "GET", &format!("/api/token/{id}"), None).await;
    let mut token = reply.json()["data"].clone();
    token.as_object_mut().unwrap().remove("accessed_time");
    token
}

/// `send` with the admin key as `Bearer`.
pub async fn admin(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Reply {
    let auth = format!("Bearer {ADMIN_KEY}");
    let mut headers = vec![("authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    send(addr, method, path, &headers, body).await
}

/// Writes raw bytes (a request no client library would send) and reads until the peer closes.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// How a fake upstream misbehaves.
#[derive(Clone, Debug)]
pub enum Fake {
    /// Answers every request with this raw HTTP response.
    Answer(&'static str),
    /// Reads the request and never answers.
    Hang,
    /// Reads the request and resets the connection.
    Reset,
}

/// A fake upstream on 127.0.0.1:0. It stops with the test's runtime.
pub async fn fake_upstream(fake: Fake) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let fake = fake.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                match fake {
                    Fake::Answer(response) => {
                        let _ = stream.write_all(response.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    }
                    Fake::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
                    Fake::Reset => {
                        // Linger zero turns the close into a reset (it does not block with zero).
                        #[allow(deprecated)]
                        let _ = stream.set_linger(Some(Duration::ZERO));
                        drop(stream);
                    }
                }
            });
        }
    });
    addr
}

/// An address where nothing listens (bound, then released).
pub async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// The `tokengate` binary running as a child process, with everything it prints collected.
pub struct Process {
    pub child: std::process::Child,
    pub output: std::sync::Arc<std::sync::Mutex<String>>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    dir: Option<tempfile::TempDir>,
}

impl Process {
    /// Runs `tokengate serve` with the configuration of `options` (JSON logs), and waits for
    /// its "tokengate listening" line to learn the ports.
    // The child is owned by the returned `Process`, whose `Drop` kills and reaps it.
    pub fn serve(options: &Options, env: &[(&str, &str)]) -> Process {
        Process::serve_in(options, env, tempfile::tempdir().unwrap())
    }

    /// Like [`Process::serve`], with the configuration, secrets and trail in `dir` (which a
    /// restarted gateway can be given again).
    #[allow(clippy::zombie_processes)]
    pub fn serve_in(options: &Options, env: &[(&str, &str)], dir: tempfile::TempDir) -> Process {
        use std::io::BufRead;
        write_secrets(dir.path(), true);
        let config = dir.path().join("tokengate.toml");
        std::fs::write(
            &config,
            options
                .toml(dir.path())
                .replace("format = \"text\"", "format = \"json\""),
        )
        .unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["serve", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    output.lock().unwrap().push_str(&line);
                    output.lock().unwrap().push('\n');
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no 'tokengate listening' line; output:\n{}",
                    output.lock().unwrap()
                )
            });
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if json["message"] == "tokengate listening" {
                let addr = json["listen"].as_str().unwrap().parse().unwrap();
                let admin = json["admin_listen"].as_str().unwrap().parse().unwrap();
                return Process {
                    child,
                    output,
                    addr,
                    admin,
                    dir: Some(dir),
                };
            }
        }
    }

    /// Sends a signal by name (`TERM`, `INT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("did not exit within {limit:?}; output:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The configuration file it was started with (rewrite it, then send `HUP`).
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.as_ref().unwrap().path().join("tokengate.toml")
    }

    /// Waits until its output has `needle` `count` times (a log line), for at most 10 s.
    pub fn wait_for(&self, needle: &str, count: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.output().matches(needle).count() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The directory holding the configuration, secrets and trail (to start the gateway again).
    pub fn take_dir(&mut self) -> tempfile::TempDir {
        self.dir.take().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary with `args` to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .env_remove("TOKENGATE_UPSTREAM_TOKEN")
        .env_remove("TOKENGATE_CONFIG")
        .env_remove("TOKENGATE_AUDIT_KEY")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The current Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
