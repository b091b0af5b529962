//! `tokengate demo` (SPEC §7): the whole product in one command, with no upstream of one's own.
//!
//! It starts the built-in new-api emulator and the gateway on loopback (free ports, secrets and
//! the audit trail in a fresh temporary directory), walks through what a caller does (create,
//! update, PATCH, batch update, refused bodies, a policy refusal, a rate-limited burst, delete),
//! printing each request, its answer and the audit records it left, then stops both servers,
//! verifies the trail and removes the directory. Every step checks its answer, so the demo is also
//! a smoke test: it exits non-zero if the product does not behave as shown.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use crate::audit::chain::AuditKey;
use crate::audit::query;
use crate::audit::verify::{trail_files, verify};
use crate::caller::{key_digest_hex, new_key, random_hex};
use crate::config::Config;
use crate::emulator::{Emulator, EmulatorConfig};
use crate::gateway::Gateway;

/// The emulated account's user id.
const USER_ID: i64 = 1;

/// Runs the demo, printing to standard output; `Err` says which step went wrong.
pub async fn run() -> Result<(), String> {
    let dir = TempDir::new()?;
    let secrets = Secrets::new()?;
    let emulator = Emulator::spawn(EmulatorConfig::new(secrets.upstream_token.clone(), USER_ID))
        .await
        .map_err(|e| format!("cannot start the emulator: {e}"))?;
    let config_text = config(&dir.0, emulator.addr, &secrets)?;
    let config = Config::parse(&config_text).map_err(|e| format!("demo config: {e}"))?;
    let mut gateway = Gateway::build(&config).map_err(|e| format!("demo gateway: {e}"))?;
    gateway
        .open_trail(&config.audit)
        .map_err(|e| format!("demo audit trail: {e}"))?;
    let bind = || TcpListener::bind("127.0.0.1:0");
    let (api, admin) = (
        bind().await.map_err(|e| e.to_string())?,
        bind().await.map_err(|e| e.to_string())?,
    );
    let addr = api.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::run(
        gateway,
        api,
        admin,
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));

    println!("tokengate demo");
    println!("  new-api emulator  http://{}", emulator.addr);
    println!("  gateway           http://{addr}");
    println!("  temporary files   {}", dir.0.display());
    println!(
        "  caller `demo`: its own gateway key (the upstream credential stays in the gateway); tokens \
         named demo-* only, quota at most 1000000; reads 60 a minute, bursts of 20"
    );

    let mut walk = Walk {
        addr,
        key: secrets.client_key.clone(),
        trail: config.audit.path.clone(),
        seen_records: 0,
        step: 0,
    };
    let walked = walk.through().await;

    let _ = stop.send(());
    let _ = server.await;
    drop(emulator);
    let ci = walked?;

    let key = AuditKey::new(secrets.audit_key.as_bytes())?;
    let files = trail_files(&config.audit.path).map_err(|e| e.to_string())?;
    let summary = verify(&files, &key).map_err(|e| format!("audit verify: {e}"))?;
    println!();
    println!(
        "{}. Both servers stopped; `tokengate audit verify` checks every hash and link of the trail",
        walk.step + 1
    );
    println!(
        "   audit verify: OK, {} records, chain intact, head {}",
        summary.records, summary.head
    );
    println!();
    println!(
        "{}. Who changed demo-ci, from what to what: `tokengate audit query --token {ci}` (the chain is checked as it is read)",
        walk.step + 2
    );
    let filter = query::Filter {
        token: u64::try_from(ci).ok(),
        ..query::Filter::default()
    };
    let mut found = Vec::new();
    query::run(&files, &key, filter, query::Format::Text, &mut found).map_err(
        |stop| match stop {
            query::Stop::Broken(failure) => format!("audit query: {failure}"),
            query::Stop::Output(error) => format!("audit query: {error}"),
        },
    )?;
    for line in String::from_utf8_lossy(&found).lines() {
        println!("   {line}");
    }
    drop(dir);
    println!();
    println!("Done. The temporary directory is removed. Next: README.md, \"Calling it\".");
    Ok(())
}

/// The random secrets of one demo run; none is ever printed.
struct Secrets {
    upstream_token: String,
    audit_key: String,
    client_key: String,
}

impl Secrets {
    fn new() -> Result<Secrets, String> {
        let random = |n| random_hex(n).map_err(|e| e.to_string());
        Ok(Secrets {
            upstream_token: random(32)?,
            audit_key: random(32)?,
            client_key: new_key().map_err(|e| e.to_string())?,
        })
    }
}

/// The demo's configuration: secrets in files of `dir`, the trail under it.
fn config(dir: &Path, upstream: SocketAddr, secrets: &Secrets) -> Result<String, String> {
    let write = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok::<_, String>(path.display().to_string())
    };
    let token_file = write("upstream-token", &secrets.upstream_token)?;
    let key_file = write("audit-key", &secrets.audit_key)?;
    let trail = dir.join("audit").join("tokengate.audit.jsonl");
    Ok(format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[upstream]
url = "http://{upstream}"
user_id = {USER_ID}
access_token_file = {token_file:?}

[rate_limit]
reads_per_minute = 60
writes_per_minute = 600
burst = 20

[audit]
path = {trail:?}
hmac_key_file = {key_file:?}

[[clients]]
name = "demo"
key_sha256 = "{digest}"
allow = ["list", "search", "get", "auto_groups", "create", "update", "batch_update", "delete", "batch_delete"]
name_prefix = "demo-"
max_remain_quota = 1000000
"#,
        trail = trail.display().to_string(),
        digest = key_digest_hex(&secrets.client_key),
    ))
}

/// A directory of this run's own, removed when dropped (on failure too).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, String> {
        let suffix = random_hex(8).map_err(|e| e.to_string())?;
        let path = std::env::temp_dir().join(format!("tokengate-demo-{suffix}"));
        std::fs::create_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One answer, as the caller saw it.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// The walk-through's state: where to call, with which key, and how much of the trail is shown.
struct Walk {
    addr: SocketAddr,
    key: String,
    trail: PathBuf,
    seen_records: usize,
    step: usize,
}

impl Walk {
    /// Walks through the steps; returns the id of the token `demo-ci`, for the query at the end.
    async fn through(&mut self) -> Result<i64, String> {
        self.title("Create a token: the body is checked field by field, then forwarded");
        let body = json!({"name": "demo-ci", "remain_quota": 500000, "expired_time": -1});
        self.call(Method::POST, "/api/token/", Some(body), 200)
            .await?;
        self.audit()?;
        for name in ["demo-batch-1", "demo-batch-2"] {
            let body = json!({"name": name, "remain_quota": 1000, "expired_time": -1});
            self.call(Method::POST, "/api/token/", Some(body), 200)
                .await?;
        }
        self.audit()?;

        self.title("List them (new-api answers a create without the id); reads are not audited");
        let found = self
            .send(Method::GET, "/api/token/?p=1&page_size=10", None)
            .await?;
        let tokens = found.body["data"]["items"]
            .as_array()
            .or_else(|| found.body["data"].as_array())
            .cloned()
            .unwrap_or_default();
        let mut listed = String::new();
        for token in &tokens {
            let _ = write!(listed, "  #{} {}", token["id"], token["name"]);
        }
        println!("   → GET /api/token/?p=1&page_size=10");
        println!("   ← {}{listed}", found.status.as_u16());
        let id_of = |name: &str| {
            tokens
                .iter()
                .find(|t| t["name"] == name)
                .and_then(|t| t["id"].as_i64())
                .ok_or_else(|| format!("step {}: token {name} is not listed", self.step))
        };
        let (ci, batch_1, batch_2) = (
            id_of("demo-ci")?,
            id_of("demo-batch-1")?,
            id_of("demo-batch-2")?,
        );

        self.title("A full update: new-api overwrites every field, so a PUT must carry them all");
        let full = json!({"id": ci, "name": "demo-ci", "expired_time": -1, "remain_quota": 600000,
            "unlimited_quota": false, "model_limits_enabled": false, "model_limits": "",
            "allow_ips": "", "group": ""});
        self.call(Method::PUT, "/api/token/", Some(full), 200)
            .await?;
        self.audit()?;

        self.title("Refused bodies never reach new-api: one field in a PUT (new-api would reset the rest), a misspelt field");
        let partial = json!({"id": ci, "remain_quota": 1});
        self.call(Method::PUT, "/api/token/", Some(partial), 400)
            .await?;
        let typo = json!({"name": "demo-x", "remain_qouta": 5});
        self.call(Method::POST, "/api/token/", Some(typo), 400)
            .await?;
        self.audit()?;

        self.title(
            "PATCH changes one field and keeps the others: read, merge, check, one full PUT",
        );
        let path = format!("/api/token/{ci}");
        self.call(
            Method::PATCH,
            &path,
            Some(json!({"remain_quota": 750000})),
            200,
        )
        .await?;
        self.audit()?;

        self.title("Batch update, which new-api lacks: named fields on each id; an unnamed one is reported, not applied");
        let batch = json!({"ids": format!("{batch_1},{batch_2}"), "update_fields": ["remain_quota"],
            "remain_quota": 5000, "group": "vip"});
        self.call(Method::PUT, "/api/token/batch", Some(batch), 200)
            .await?;
        self.audit()?;

        self.title("Policy: this caller may only name tokens demo-*");
        let outside = json!({"name": "prod-db", "expired_time": -1});
        self.call(Method::POST, "/api/token/", Some(outside), 403)
            .await?;
        self.audit()?;

        self.title("A burst of 25 reads against a bucket of 20: the rest are refused with 429");
        let burst = (0..25).map(|_| self.send(Method::GET, "/api/token/?p=1", None));
        let answers = futures_util::future::try_join_all(burst).await?;
        let ok = answers
            .iter()
            .filter(|a| a.status == StatusCode::OK)
            .count();
        println!("   → GET /api/token/?p=1, 25 times at once");
        println!("   ← {ok} × 200, {} × 429", answers.len() - ok);
        let refused = answers
            .iter()
            .find(|a| a.status == StatusCode::TOO_MANY_REQUESTS);
        let Some(refused) = refused else {
            return Err(format!("step {}: no request was rate limited", self.step));
        };
        for name in ["retry-after", "ratelimit-policy", "ratelimit"] {
            if let Some(value) = refused.headers.get(name).and_then(|v| v.to_str().ok()) {
                println!("     {name}: {value}");
            }
        }
        println!("     {}", refused.body);

        self.title("Delete");
        let path = format!("/api/token/{batch_2}");
        self.call(Method::DELETE, &path, None, 200).await?;
        self.audit()?;
        Ok(ci)
    }

    fn title(&mut self, title: &str) {
        self.step += 1;
        println!();
        println!("{}. {title}", self.step);
    }

    /// Sends a request, prints it and its answer, and checks the answer's status (and, for a
    /// 200, new-api's `success`).
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: u16,
    ) -> Result<Answer, String> {
        let shown = body.as_ref().map(|b| format!("  {b}")).unwrap_or_default();
        println!("   → {method} {path}{shown}");
        let answer = self.send(method, path, body).await?;
        // Refusals are shown whole (their message is the point); long answers are cut.
        let text = answer.body.to_string();
        let cut: String = text.chars().take(160).collect();
        let shown = if answer.status.is_success() && cut.len() < text.len() {
            format!("{cut}…")
        } else {
            text
        };
        println!("   ← {}  {shown}", answer.status.as_u16());
        let succeeded = expected != 200 || answer.body["success"] == true;
        if answer.status.as_u16() != expected || !succeeded {
            return Err(format!(
                "step {}: expected {expected}, the gateway answered {}",
                self.step,
                answer.status.as_u16()
            ));
        }
        Ok(answer)
    }

    /// One request over a fresh connection, with the caller's key.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Answer, String> {
        let failed = |e: &dyn std::fmt::Display| format!("step {}: {e}", self.step);
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| failed(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(&e))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("authorization", format!("Bearer {}", self.key));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let request = request.body(Full::new(bytes)).map_err(|e| failed(&e))?;
        let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.map_err(|e| failed(&e))?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }

    /// Prints the records the trail gained since the last call.
    fn audit(&mut self) -> Result<(), String> {
        let text = std::fs::read_to_string(&self.trail).map_err(|e| e.to_string())?;
        let records: Vec<Value> = text
            .lines()
            .skip(self.seen_records)
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        self.seen_records += records.len();
        for (i, record) in records.iter().enumerate() {
            let lead = if i == 0 { "   audit" } else { "        " };
            println!("{lead} {}", summary(record));
        }
        Ok(())
    }
}

/// One audit record as a person scans it.
fn summary(record: &Value) -> String {
    let mut line = format!(
        "#{} {:<7} {:<12} tokens {}",
        record["seq"],
        record["phase"].as_str().unwrap_or(""),
        record["op"].as_str().unwrap_or(""),
        record["token_ids"]
    );
    if record["phase"] == "intent" {
        // A change of a token says what it changed (SPEC §6.1); a create or a refusal, what it
        // asked for.
        let (what, text) = match (&record["before"], record["changes"].as_array()) {
            (Value::Object(_), Some(changes)) => ("changes", changed(changes)),
            (Value::Object(_), None) => ("deletes", record["before"].to_string()),
            _ => ("request", record["request"].to_string()),
        };
        let shown: String = text.chars().take(110).collect();
        let more = if shown.len() < text.len() { "…" } else { "" };
        let _ = write!(line, "  {what} {shown}{more}");
    } else {
        let _ = write!(
            line,
            "  {} {}",
            record["outcome"].as_str().unwrap_or(""),
            record["status"]
        );
        if let Some(reason) = record["reason"].as_str() {
            let _ = write!(line, " {reason}");
        }
        if let Some(success) = record["upstream_success"].as_bool() {
            let _ = write!(line, " upstream_success={success}");
        }
    }
    let _ = write!(
        line,
        "  hash {}…",
        record["hash"]
            .as_str()
            .unwrap_or("")
            .get(..12)
            .unwrap_or("")
    );
    line
}

/// `changes` as a person reads them: `field: from → to`, comma-separated (`none` for a no-op).
fn changed(changes: &[Value]) -> String {
    if changes.is_empty() {
        return "none".into();
    }
    let each: Vec<String> = changes
        .iter()
        .map(|c| {
            format!(
                "{}: {} → {}",
                c["field"].as_str().unwrap_or("?"),
                c["from"],
                c["to"]
            )
        })
        .collect();
    each.join(", ")
}
