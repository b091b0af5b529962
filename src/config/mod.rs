//! The configuration file (SPEC §10): plain serde structs, every one refusing unknown keys, with
//! the defaults of the spec, checked once at load.
//!
//! Loading has two steps. [`Config::load`] parses the TOML and checks every rule that needs only
//! the file (collecting *all* faults, each naming its key: what serde refuses and what the rules
//! refuse alike; a TOML syntax error alone). [`crate::gateway::Gateway::build`]
//! then resolves what lies outside the file (secrets from `*_env`/`*_file`, CA files). Both run in
//! `tokengate check` and `tokengate serve`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::route::Operation;
use crate::token::batch::BatchMode;

mod read;

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The caller-facing and admin listeners.
    pub server: ServerConfig,
    /// The new-api upstream and the credential the gateway holds for it.
    pub upstream: UpstreamConfig,
    /// Limits on request bodies.
    pub limits: LimitsConfig,
    /// Rate-limit defaults for every client, and the global cap on upstream requests.
    pub rate_limit: RateLimitConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// Log output.
    pub log: LogConfig,
    /// The internal callers and what each may do.
    pub clients: Vec<ClientConfig>,
    /// `[cluster]`: several replicas sharing their state through Redis (SPEC §11); absent, one
    /// process with its state in memory.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]` (SPEC §11): a change needs a restart.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The Redis URL, when it carries no password (`redis://host:port/db`).
    pub url: Option<String>,
    /// Environment variable holding the URL (for one with a password).
    pub url_env: Option<String>,
    /// File holding the URL (for one with a password).
    pub url_file: Option<PathBuf>,
    /// This replica's name in the audit trail (`origin`); the host name when empty.
    pub instance: String,
    /// The prefix of every key the replicas share.
    pub key_prefix: String,
    /// The longest one call to Redis may take.
    pub timeout_ms: u64,
    /// What rate limits do while Redis cannot be reached.
    pub on_unavailable: crate::cluster::OnUnavailable,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            url: None,
            url_env: None,
            url_file: None,
            instance: String::new(),
            key_prefix: "tokengate:".into(),
            timeout_ms: 50,
            on_unavailable: crate::cluster::OnUnavailable::Local,
        }
    }
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The caller-facing listener.
    pub listen: SocketAddr,
    /// The operations listener (`/healthz`, `/readyz`, `/metrics`); keep it on loopback or a
    /// private network.
    pub admin_listen: SocketAddr,
    /// The largest request body read; a larger one is a 413 before the rest is read.
    pub max_body_bytes: usize,
    /// Bounds the whole request as the caller sees it (408 while the caller sends, 504 while the
    /// upstream answers).
    pub request_timeout_ms: u64,
    /// How long in-flight requests may run on after `SIGTERM`/`SIGINT`.
    pub shutdown_grace_ms: u64,
    /// Proxies whose `X-Forwarded-For` is honoured (CIDRs or single addresses).
    pub trusted_proxies: Vec<Cidr>,
    /// Open caller connections at most (SPEC §7): at the cap the gateway stops accepting until
    /// one closes, so a flood of connections cannot grow memory without bound. The admin
    /// listener is not counted.
    pub max_connections: usize,
    /// The largest request head (request line and headers) a caller may send (SPEC §3); a larger
    /// one is refused with 431 before anything is forwarded. At least [`MIN_HEADER_BYTES`],
    /// the smallest read buffer hyper's HTTP/1 parser works with.
    pub max_header_bytes: usize,
    /// `[server.tls]`: TLS on the caller-facing listener (plain HTTP when absent).
    pub tls: Option<TlsConfig>,
    /// Threads that accept and serve caller connections, each with its own single-threaded
    /// runtime and its own `SO_REUSEPORT` listener on `listen`, so a request is read, routed and
    /// forwarded on the thread that accepted it (no work stealing, no cross-thread hand-off).
    /// `None`: one per CPU ([`ServerConfig::workers`]).
    #[serde(rename = "workers")]
    pub workers_setting: Option<usize>,
}

impl ServerConfig {
    /// The worker threads to start: `server.workers`, or the CPUs this process may run on.
    pub fn workers(&self) -> usize {
        self.workers_setting.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, usize::from)
                .min(*WORKERS.end())
        })
    }
}

/// `[server.tls]` (SPEC §8).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file of the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM file of the CA that signs callers' certificates: turns on mutual TLS.
    pub client_ca_file: Option<PathBuf>,
    /// Whether a caller must present a certificate from that CA (`required` when not set).
    pub client_auth: Option<ClientAuth>,
}

/// `server.tls.client_auth`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// A caller without a certificate from the CA is refused at the handshake.
    #[default]
    Required,
    /// A certificate is checked when presented; callers without one may use a key.
    Optional,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            max_body_bytes: 65536,
            request_timeout_ms: 15_000,
            shutdown_grace_ms: 10_000,
            trusted_proxies: Vec::new(),
            max_connections: 10_000,
            max_header_bytes: 32_768,
            tls: None,
            workers_setting: None,
        }
    }
}

/// The range of `server.max_connections`.
pub const MAX_CONNECTIONS: std::ops::RangeInclusive<usize> = 1..=1_000_000;

/// The range of `server.workers`.
pub const WORKERS: std::ops::RangeInclusive<usize> = 1..=1024;

/// The smallest `server.max_header_bytes`: hyper's HTTP/1 read buffer cannot be smaller (it
/// asserts so), and the check at load keeps that assertion from ever being reached.
pub const MIN_HEADER_BYTES: usize = 8192;

/// The largest `server.max_header_bytes` (1 MiB, far beyond any real request head).
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// A network in CIDR form; a bare address means that one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr(pub IpNet);

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        text.parse::<IpAddr>()
            .map(|ip| Cidr(IpNet::from(ip)))
            .map_err(|_| "an entry is not an IP address or CIDR (such as 10.0.0.0/8)".to_string())
    }
}

/// `[upstream]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Base URL of new-api (`http://` or `https://`, optionally with a path prefix).
    pub url: String,
    /// Whether the gateway holds the credential or passes the caller's through.
    pub mode: Mode,
    /// Sent as `New-Api-User` (the id of the user who owns the access token).
    pub user_id: i64,
    /// Environment variable holding the access token (default `TOKENGATE_UPSTREAM_TOKEN`).
    pub access_token_env: Option<String>,
    /// File holding the access token (instead of `access_token_env`).
    pub access_token_file: Option<PathBuf>,
    /// How the token is sent: raw, or `Bearer <token>`.
    pub auth_scheme: AuthScheme,
    /// How long the upstream may take to answer one request.
    pub timeout_ms: u64,
    /// Whether `/readyz` also asks the upstream.
    pub ready_check: bool,
    /// PEM file of the private CA that signs an `https://` upstream (instead of the web PKI).
    pub ca_file: Option<PathBuf>,
    /// Field names of a fork that pass through bodies unchecked.
    pub extra_fields: Vec<String>,
    /// How `PUT /api/token/batch` reaches the upstream: per token, or as one request.
    pub batch_update: BatchMode,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: "http://127.0.0.1:3000".into(),
            mode: Mode::Hold,
            user_id: 1,
            access_token_env: None,
            access_token_file: None,
            auth_scheme: AuthScheme::Raw,
            timeout_ms: 10_000,
            ready_check: false,
            ca_file: None,
            extra_fields: Vec::new(),
            batch_update: BatchMode::Fanout,
        }
    }
}

/// The default of `upstream.access_token_env`.
pub const DEFAULT_TOKEN_ENV: &str = "TOKENGATE_UPSTREAM_TOKEN";

/// `upstream.mode`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The gateway holds the upstream credential; callers use gateway keys.
    Hold,
    /// Callers send their own upstream access token, which the gateway forwards.
    Passthrough,
}

/// `upstream.auth_scheme`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthScheme {
    /// `Authorization: <token>`, which every new-api era accepts.
    Raw,
    /// `Authorization: Bearer <token>`.
    Bearer,
}

/// `[limits]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The longest token name, in bytes of UTF-8 (new-api measures bytes).
    pub name_max_bytes: usize,
    /// The most ids in one batch.
    pub max_batch: usize,
    /// Whether a full update must carry every editable field (new-api resets any it lacks).
    pub require_complete_updates: bool,
    /// How many tokens of a fan-out batch update are read and written at once.
    pub batch_concurrency: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            name_max_bytes: 50,
            max_batch: 100,
            require_complete_updates: true,
            batch_concurrency: 4,
        }
    }
}

/// `[rate_limit]`: the defaults of every client (each may override them) and the global cap.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Reads (`list`, `search`, `get`) per minute and caller.
    pub reads_per_minute: u32,
    /// Writes (every other operation, `reveal_key` included) per minute and caller.
    pub writes_per_minute: u32,
    /// The bucket size of each class: how many requests may come at once after a quiet spell.
    pub burst: u32,
    /// Every request the gateway sends upstream, over all callers (bucket: one second's worth).
    pub upstream_requests_per_second: u32,
    /// Count and log would-be refusals, refuse nothing (to try limits on live traffic).
    pub dry_run: bool,
    /// The most pass-through identities whose buckets are kept (the longest idle go first), and
    /// the most source addresses tracked for refusals before authentication.
    pub max_identities: usize,
    /// Refusals before a caller is known (missing or unknown key), per source address and minute,
    /// recorded one by one (burst 20); past it a 429 and one summary record a minute.
    pub unauthenticated_per_minute: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            reads_per_minute: 600,
            writes_per_minute: 60,
            burst: 10,
            upstream_requests_per_second: 50,
            dry_run: false,
            max_identities: 100_000,
            unauthenticated_per_minute: 60,
        }
    }
}

/// The largest per-second rate, and the largest bucket: beyond it, no limit is meant.
pub const MAX_RATE: u32 = 1_000_000;

/// The largest per-minute rate: the same one million a second, so a busy caller's read rate can
/// be set above what one gateway serves (GCRA's interval is then 1 µs, still exact).
pub const MAX_PER_MINUTE: u32 = 60 * MAX_RATE;

/// The largest `rate_limit.max_identities`: about 1 GiB of buckets.
pub const MAX_IDENTITIES: usize = 10_000_000;

/// `[audit]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The live trail file (`"-"` for standard output: no rotation, durability is the reader's).
    pub path: PathBuf,
    /// When records reach the disk.
    pub fsync: Fsync,
    /// Environment variable holding the HMAC key (default `TOKENGATE_AUDIT_KEY`).
    pub hmac_key_env: Option<String>,
    /// File holding the HMAC key (instead of `hmac_key_env`).
    pub hmac_key_file: Option<PathBuf>,
    /// Size past which the live file is rotated to `<path>.<n>`.
    pub rotate_bytes: u64,
    /// Whether reads (`list`, `search`, `get`) are audited too.
    pub reads: bool,
    /// Whether full and status-only updates, deletes and batch deletes read each token under its
    /// lock first, so their intent records say what it was and what the change does to it (SPEC
    /// §6.1 `before`/`changes`): one more upstream request per id, counted by the upstream cap.
    /// A reload applies it.
    pub capture_before: bool,
    /// The longest a record's line may be, newline included (SPEC §6, format): a longer record
    /// has its largest values omitted (size and SHA-256 kept) and says `"truncated": true`. The
    /// default is the line limit of Vector's file source, so every log shipper reads the trail.
    pub max_record_bytes: usize,
    /// The most bytes of records waiting for the disk (SPEC §6): while the disk is stuck, the
    /// records of requests already answered wait too; past this, audited requests are refused
    /// with 503 at once instead of growing memory.
    pub queue_bytes: u64,
    /// `/readyz` turns not ready while the trail's file system has less than this free, before
    /// writes start failing (SPEC §6); 0 turns the check off. A reload applies it.
    pub min_free_bytes: u64,
    /// Environment variable holding the Ed25519 private key (PKCS#8 PEM) that signs checkpoints
    /// (SPEC §6.3); with neither this nor `checkpoint_key_file`, no checkpoint is written.
    pub checkpoint_key_env: Option<String>,
    /// File holding that key (instead of `checkpoint_key_env`).
    pub checkpoint_key_file: Option<PathBuf>,
    /// Records (checkpoints not counted) between two signed checkpoints.
    pub checkpoint_every: u64,
    /// The longest, in seconds, a written record waits for a checkpoint to sign it.
    pub checkpoint_interval_s: u64,
    /// `[audit.postgres]`: the central store every record is shipped to (SPEC §6.3); absent,
    /// the trail stays local. A change needs a restart.
    pub postgres: Option<PostgresConfig>,
}

/// The most `audit.checkpoint_every`.
pub const MAX_CHECKPOINT_EVERY: u64 = 10_000_000;

/// The most `audit.checkpoint_interval_s`: a day.
pub const MAX_CHECKPOINT_INTERVAL_S: u64 = 86_400;

/// `[audit.postgres]` (SPEC §6.3): where the shipper copies the trail. The URL is a secret (it
/// may hold a password), so it is never written in the file: only `url_env` or `url_file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Environment variable holding the `postgres://` URL.
    pub url_env: Option<String>,
    /// File holding the URL.
    pub url_file: Option<PathBuf>,
    /// The table (`name` or `schema.name`), created when missing.
    pub table: String,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url_env: None,
            url_file: None,
            table: DEFAULT_AUDIT_TABLE.into(),
        }
    }
}

/// The default of `audit.postgres.table`.
pub const DEFAULT_AUDIT_TABLE: &str = "tokengate_audit";

/// The least `audit.max_record_bytes`: what no record can shed stays under it (up to
/// `limits.max_batch` = 1000 ids of 16 digits in `token_ids`, about 17 KB, plus some 2 KB of
/// fixed members and omission objects).
pub const MIN_RECORD_BYTES: usize = 32_768;

/// The most `audit.max_record_bytes`: well under the line `verify` reads at most
/// ([`crate::audit::verify::MAX_LINE_BYTES`]).
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// The most `audit.queue_bytes`.
pub const MAX_QUEUE_BYTES: u64 = 64 << 30;

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: PathBuf::from("audit/tokengate.audit.jsonl"),
            fsync: Fsync::Always,
            hmac_key_env: None,
            hmac_key_file: None,
            rotate_bytes: 104_857_600,
            reads: false,
            capture_before: true,
            max_record_bytes: 102_400,
            queue_bytes: 64 << 20,
            min_free_bytes: 64 << 20,
            checkpoint_key_env: None,
            checkpoint_key_file: None,
            checkpoint_every: 1000,
            checkpoint_interval_s: 60,
            postgres: None,
        }
    }
}

/// The default of `audit.hmac_key_env`.
pub const DEFAULT_AUDIT_KEY_ENV: &str = "TOKENGATE_AUDIT_KEY";

/// `audit.fsync`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// No request is forwarded or answered before its record is on disk (group commit).
    Always,
    /// Records are synced every 100 ms: up to that window can be lost in a crash.
    Interval,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// JSON lines or human-readable text.
    pub format: LogFormat,
}

/// `log.format`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

/// One `[[clients]]` entry: an internal caller.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The caller's name, as it appears in logs, metrics and the audit trail.
    pub name: String,
    /// Lowercase hex SHA-256 of the caller's gateway key (`tokengate keys new` makes both).
    pub key_sha256: Option<String>,
    /// The Common Name or a DNS subject-alternative name of the caller's client certificate
    /// (mutual TLS). With `key_sha256` too, the caller must present both.
    pub cert_subject: Option<String>,
    /// The operations the caller may use.
    pub allow: Vec<Operation>,
    /// The highest `remain_quota` a token it writes may have.
    pub max_remain_quota: Option<i64>,
    /// Whether it may write tokens with `unlimited_quota: true`.
    #[serde(default)]
    pub allow_unlimited_quota: bool,
    /// The groups its tokens may use (`""` is the account's own group).
    pub groups: Option<Vec<String>>,
    /// The models its tokens may be limited to; when set, every token must have a model limit.
    pub models: Option<Vec<String>>,
    /// How far ahead its tokens may expire, in days (and never `-1`).
    pub max_expiry_days: Option<u32>,
    /// The prefix of every token name it may create, change, reveal or delete.
    pub name_prefix: Option<String>,
    /// Overrides `rate_limit.reads_per_minute`.
    pub reads_per_minute: Option<u32>,
    /// Overrides `rate_limit.writes_per_minute`.
    pub writes_per_minute: Option<u32>,
    /// Overrides `rate_limit.burst`.
    pub burst: Option<u32>,
}

/// One fault in a configuration, naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted key at fault (`upstream.url`, `clients[1].key_sha256`), or the file for a
    /// syntax error.
    pub key: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every fault found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// One fault.
    pub fn one(key: impl Into<String>, message: impl Into<String>) -> ConfigErrors {
        ConfigErrors(vec![ConfigError {
            key: key.into(),
            message: message.into(),
        }])
    }
}

impl Config {
    /// Reads, parses and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(
                path.display().to_string(),
                format!("cannot read the configuration: {e}"),
            )
        })?;
        Config::parse(&text).map_err(|mut errors| {
            for error in &mut errors.0 {
                if error.key.is_empty() {
                    error.key = path.display().to_string();
                }
            }
            errors
        })
    }

    /// Parses and checks configuration text, reporting every fault it can find at once (SPEC §7).
    ///
    /// A TOML syntax error is reported alone: nothing after it can be trusted. Otherwise the
    /// faults that serde refuses (an unknown key, a wrong type, an unknown operation in `allow`)
    /// are collected by `read_collecting`, each with its key, line and column, and the rules of
    /// `Config::check` run on what is left: their faults are added, except those about a key
    /// already reported (a wrong-typed `key_sha256` is not "required" as well). The faults are
    /// listed in the order of the file.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        read::parse(text)
    }

    /// The rules that need more than the types: every fault, each naming its key.
    fn check(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut fault = |key: String, message: String| errors.push(ConfigError { key, message });

        let server = &self.server;
        if server.max_body_bytes == 0 || server.max_body_bytes > 16 << 20 {
            fault(
                "server.max_body_bytes".into(),
                "must be from 1 to 16777216".into(),
            );
        }
        if !MAX_CONNECTIONS.contains(&server.max_connections) {
            fault(
                "server.max_connections".into(),
                format!(
                    "must be from {} to {}",
                    MAX_CONNECTIONS.start(),
                    MAX_CONNECTIONS.end()
                ),
            );
        }
        if let Some(workers) = server.workers_setting {
            if !WORKERS.contains(&workers) {
                fault(
                    "server.workers".into(),
                    format!("must be from {} to {}", WORKERS.start(), WORKERS.end()),
                );
            }
        }
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&server.max_header_bytes) {
            fault(
                "server.max_header_bytes".into(),
                format!("must be from {MIN_HEADER_BYTES} to {MAX_HEADER_BYTES}"),
            );
        }
        for (key, value) in [
            ("server.request_timeout_ms", server.request_timeout_ms),
            ("server.shutdown_grace_ms", server.shutdown_grace_ms),
            ("upstream.timeout_ms", self.upstream.timeout_ms),
        ] {
            if value == 0 || value > 3_600_000 {
                fault(key.into(), "must be from 1 to 3600000 (one hour)".into());
            }
        }
        if server.listen == server.admin_listen && server.listen.port() != 0 {
            fault(
                "server.admin_listen".into(),
                "must differ from server.listen".into(),
            );
        }

        if let Some(tls) = &self.server.tls {
            if tls.client_auth.is_some() && tls.client_ca_file.is_none() {
                fault(
                    "server.tls.client_auth".into(),
                    "needs server.tls.client_ca_file (the CA that signs client certificates)"
                        .into(),
                );
            }
        }
        if !(1..=1024).contains(&self.limits.name_max_bytes) {
            fault(
                "limits.name_max_bytes".into(),
                "must be from 1 to 1024".into(),
            );
        }
        if self.audit.hmac_key_env.is_some() && self.audit.hmac_key_file.is_some() {
            fault(
                "audit.hmac_key_file".into(),
                "set either audit.hmac_key_env or audit.hmac_key_file, not both".into(),
            );
        }
        if self.audit.checkpoint_key_env.is_some() && self.audit.checkpoint_key_file.is_some() {
            fault(
                "audit.checkpoint_key_file".into(),
                "set either audit.checkpoint_key_env or audit.checkpoint_key_file, not both".into(),
            );
        }
        if !(1..=MAX_CHECKPOINT_EVERY).contains(&self.audit.checkpoint_every) {
            fault(
                "audit.checkpoint_every".into(),
                format!("must be from 1 to {MAX_CHECKPOINT_EVERY}"),
            );
        }
        if !(1..=MAX_CHECKPOINT_INTERVAL_S).contains(&self.audit.checkpoint_interval_s) {
            fault(
                "audit.checkpoint_interval_s".into(),
                format!("must be from 1 to {MAX_CHECKPOINT_INTERVAL_S} (a day)"),
            );
        }
        if self.audit.rotate_bytes < 4096 {
            fault("audit.rotate_bytes".into(), "must be at least 4096".into());
        }
        if !(MIN_RECORD_BYTES..=MAX_RECORD_BYTES).contains(&self.audit.max_record_bytes) {
            fault(
                "audit.max_record_bytes".into(),
                format!("must be from {MIN_RECORD_BYTES} to {MAX_RECORD_BYTES} (16 MiB)"),
            );
        } else if self.audit.queue_bytes < (2 * self.audit.max_record_bytes) as u64
            || self.audit.queue_bytes > MAX_QUEUE_BYTES
        {
            fault(
                "audit.queue_bytes".into(),
                format!(
                    "must be from twice audit.max_record_bytes ({}: a refusal's two records must fit) to {MAX_QUEUE_BYTES} (64 GiB)",
                    2 * self.audit.max_record_bytes
                ),
            );
        }
        if !(1..=1000).contains(&self.limits.max_batch) {
            fault("limits.max_batch".into(), "must be from 1 to 1000".into());
        }
        if !(1..=100).contains(&self.limits.batch_concurrency) {
            fault(
                "limits.batch_concurrency".into(),
                "must be from 1 to 100".into(),
            );
        }

        let rates = &self.rate_limit;
        for (key, value) in [
            ("rate_limit.reads_per_minute", Some(rates.reads_per_minute)),
            (
                "rate_limit.writes_per_minute",
                Some(rates.writes_per_minute),
            ),
            ("rate_limit.burst", Some(rates.burst)),
            (
                "rate_limit.upstream_requests_per_second",
                Some(rates.upstream_requests_per_second),
            ),
            (
                "rate_limit.unauthenticated_per_minute",
                Some(rates.unauthenticated_per_minute),
            ),
        ] {
            rate_rule(key.into(), value, &mut fault);
        }
        if !(1..=MAX_IDENTITIES).contains(&rates.max_identities) {
            fault(
                "rate_limit.max_identities".into(),
                format!("must be from 1 to {MAX_IDENTITIES}"),
            );
        }

        let upstream = &self.upstream;
        for (i, name) in upstream.extra_fields.iter().enumerate() {
            let known = crate::token::edit::TOKEN_FIELDS.contains(&name.as_str())
                || crate::token::edit::READ_ONLY_FIELDS.contains(&name.as_str());
            if name.is_empty() || known || upstream.extra_fields[..i].contains(name) {
                fault(
                    format!("upstream.extra_fields[{i}]"),
                    format!("`{name}` must be a non-empty field name that new-api does not already have, given once"),
                );
            }
        }
        if let Err(message) = crate::upstream::UpstreamUrl::parse(&upstream.url) {
            fault("upstream.url".into(), message);
        }
        if upstream.user_id < 1 {
            fault(
                "upstream.user_id".into(),
                "must be a user id of 1 or more".into(),
            );
        }
        match upstream.mode {
            Mode::Hold => {
                if upstream.access_token_env.is_some() && upstream.access_token_file.is_some() {
                    fault(
                        "upstream.access_token_file".into(),
                        "set either upstream.access_token_env or upstream.access_token_file, not both".into(),
                    );
                }
            }
            Mode::Passthrough => {
                for (key, set) in [
                    (
                        "upstream.access_token_env",
                        upstream.access_token_env.is_some(),
                    ),
                    (
                        "upstream.access_token_file",
                        upstream.access_token_file.is_some(),
                    ),
                ] {
                    if set {
                        fault(
                            key.into(),
                            "passthrough mode holds no credential: remove this key".into(),
                        );
                    }
                }
            }
        }

        for (i, client) in self.clients.iter().enumerate() {
            if !valid_client_name(&client.name) {
                fault(
                    format!("clients[{i}].name"),
                    "must be 1 to 64 characters of letters, digits, `.`, `_` or `-`".into(),
                );
            }
            if self.clients[..i].iter().any(|c| c.name == client.name) {
                fault(
                    format!("clients[{i}].name"),
                    format!("`{}` is used by another client", client.name),
                );
            }
            let mutual_tls = self
                .server
                .tls
                .as_ref()
                .is_some_and(|t| t.client_ca_file.is_some());
            match (&client.key_sha256, &client.cert_subject) {
                (None, None) => fault(
                    format!("clients[{i}].key_sha256"),
                    "is required (or cert_subject, with mutual TLS): the SHA-256 of the client's key, which `tokengate keys new` prints".into(),
                ),
                (Some(digest), _)
                    if digest.len() != 64
                        || !digest
                            .bytes()
                            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
                {
                    fault(
                        format!("clients[{i}].key_sha256"),
                        "must be 64 lowercase hex digits (the SHA-256 of the key; `tokengate keys new` prints it)".into(),
                    )
                }
                (Some(digest), _)
                    if self.clients[..i]
                        .iter()
                        .any(|c| c.key_sha256.as_ref() == Some(digest)) =>
                {
                    fault(
                        format!("clients[{i}].key_sha256"),
                        "the same key digest is given to another client".into(),
                    )
                }
                _ => {}
            }
            if let Some(subject) = &client.cert_subject {
                if !mutual_tls {
                    fault(
                        format!("clients[{i}].cert_subject"),
                        "needs mutual TLS: set server.tls.client_ca_file".into(),
                    );
                } else if subject.is_empty() || subject.len() > 253 {
                    fault(
                        format!("clients[{i}].cert_subject"),
                        "must be 1 to 253 characters (a certificate's Common Name or DNS name)"
                            .into(),
                    );
                } else if client.key_sha256.is_none()
                    && self.clients[..i].iter().any(|c| {
                        c.key_sha256.is_none()
                            && c.cert_subject
                                .as_ref()
                                .is_some_and(|s| s.eq_ignore_ascii_case(subject))
                    })
                {
                    fault(
                        format!("clients[{i}].cert_subject"),
                        "the same certificate subject identifies another client".into(),
                    );
                }
            }
            self.check_policy(i, client, &mut fault);
        }
        if let Some(cluster) = &self.cluster {
            check_cluster(cluster, &mut fault);
        }
        if let Some(postgres) = &self.audit.postgres {
            check_postgres(postgres, &self.audit.path, &mut fault);
        }
        errors
    }
}

/// The rules of `[audit.postgres]`: one source of the URL, a table name that is an identifier
/// (it is written into SQL, quoted), and a trail the shipper can read back (not standard output).
fn check_postgres(postgres: &PostgresConfig, path: &Path, fault: &mut impl FnMut(String, String)) {
    match (&postgres.url_env, &postgres.url_file) {
        (None, None) => fault(
            "audit.postgres.url_env".into(),
            "is required: set audit.postgres.url_env or audit.postgres.url_file (the URL is a secret, never written in the file)".into(),
        ),
        (Some(_), Some(_)) => fault(
            "audit.postgres.url_file".into(),
            "set either audit.postgres.url_env or audit.postgres.url_file, not both".into(),
        ),
        _ => {}
    }
    if !crate::audit::ship::table::valid_table_name(&postgres.table) {
        fault(
            "audit.postgres.table".into(),
            "must be a table name (letters, digits and `_`, not starting with a digit, at most 48 characters), optionally with its schema (`schema.table`)".into(),
        );
    }
    if path.as_os_str() == "-" {
        fault(
            "audit.postgres".into(),
            "needs audit.path to be a file: the shipper reads the records back from the trail's files, and standard output (`-`) cannot be read back".into(),
        );
    }
}

/// The rules of `[cluster]`: one source of the URL, and no password written in the file.
fn check_cluster(cluster: &ClusterConfig, fault: &mut impl FnMut(String, String)) {
    let sources = [
        cluster.url.is_some(),
        cluster.url_env.is_some(),
        cluster.url_file.is_some(),
    ];
    match sources.iter().filter(|set| **set).count() {
        0 => fault(
            "cluster.url".into(),
            "is required: set cluster.url, or cluster.url_env / cluster.url_file for a URL with a password".into(),
        ),
        1 => {}
        _ => fault(
            "cluster.url".into(),
            "set one of cluster.url, cluster.url_env and cluster.url_file".into(),
        ),
    }
    if let Some(url) = &cluster.url {
        let authority = url
            .split_once("://")
            .map_or(url.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or("");
        if authority.contains('@') {
            fault(
                "cluster.url".into(),
                "holds credentials, and secrets are never written in the configuration: put the URL in cluster.url_env or cluster.url_file".into(),
            );
        } else if !url.starts_with("redis://") {
            fault(
                "cluster.url".into(),
                "must be a redis:// URL (redis://host:port/db)".into(),
            );
        }
    }
    if !(1..=10_000).contains(&cluster.timeout_ms) {
        fault(
            "cluster.timeout_ms".into(),
            "must be from 1 to 10000".into(),
        );
    }
    if cluster.key_prefix.is_empty()
        || cluster.key_prefix.len() > 64
        || cluster
            .key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        fault(
            "cluster.key_prefix".into(),
            "must be 1 to 64 characters without white space".into(),
        );
    }
    if !cluster.instance.is_empty() && !valid_client_name(&cluster.instance) {
        fault(
            "cluster.instance".into(),
            "must be 1 to 64 characters of letters, digits, `.`, `_` or `-` (or empty: the host name)".into(),
        );
    }
}

impl Config {
    /// The policy keys of `clients[i]` (SPEC §5).
    fn check_policy(
        &self,
        i: usize,
        client: &ClientConfig,
        fault: &mut impl FnMut(String, String),
    ) {
        let key = |name: &str| format!("clients[{i}].{name}");
        if let Some(max) = client.max_remain_quota {
            if !(0..=crate::token::fields::MAX_QUOTA).contains(&max) {
                fault(
                    key("max_remain_quota"),
                    format!("must be from 0 to {}", crate::token::fields::MAX_QUOTA),
                );
            }
        }
        if let Some(days) = client.max_expiry_days {
            if !(1..=36_500).contains(&days) {
                fault(key("max_expiry_days"), "must be from 1 to 36500".into());
            }
        }
        if let Some(prefix) = &client.name_prefix {
            if prefix.is_empty()
                || prefix.len() > self.limits.name_max_bytes
                || prefix.chars().any(char::is_control)
            {
                fault(
                    key("name_prefix"),
                    format!(
                        "must be 1 to limits.name_max_bytes ({}) bytes without control characters",
                        self.limits.name_max_bytes
                    ),
                );
            }
        }
        if let Some(groups) = &client.groups {
            for (j, group) in groups.iter().enumerate() {
                if group.contains(',')
                    || group.chars().any(char::is_whitespace)
                    || groups[..j].contains(group)
                {
                    fault(
                        format!("clients[{i}].groups[{j}]"),
                        "must be a group name without commas or white space, given once (\"\" is the account's own group)".into(),
                    );
                }
            }
        }
        if let Some(models) = &client.models {
            if models.is_empty() {
                fault(
                    key("models"),
                    "must list at least one model (leave it out to allow every model)".into(),
                );
            }
            for (j, model) in models.iter().enumerate() {
                if model.is_empty()
                    || model.contains(',')
                    || model.trim() != model
                    || models[..j].contains(model)
                {
                    fault(
                        format!("clients[{i}].models[{j}]"),
                        "must be a model id without commas or surrounding spaces, given once"
                            .into(),
                    );
                }
            }
        }
        for (name, value) in [
            ("reads_per_minute", client.reads_per_minute),
            ("writes_per_minute", client.writes_per_minute),
            ("burst", client.burst),
        ] {
            rate_rule(key(name), value, fault);
        }
    }
}

/// A rate or bucket size, when set, is from 1 to [`MAX_PER_MINUTE`] for a `*_per_minute` key and
/// to [`MAX_RATE`] otherwise (an operation a caller must not use at all is left out of its `allow`
/// list).
fn rate_rule(key: String, value: Option<u32>, fault: &mut impl FnMut(String, String)) {
    let max = if key.ends_with("_per_minute") {
        MAX_PER_MINUTE
    } else {
        MAX_RATE
    };
    if value.is_some_and(|v| !(1..=max).contains(&v)) {
        fault(key, format!("must be from 1 to {max}"));
    }
}

/// Whether `name` is usable as a client name (it appears in logs, metrics labels and audit records).
pub fn valid_client_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_spec_defaults() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.server.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(config.server.max_body_bytes, 65536);
        assert_eq!(config.upstream.url, "http://127.0.0.1:3000");
        assert_eq!(config.upstream.mode, Mode::Hold);
        assert_eq!(config.upstream.auth_scheme, AuthScheme::Raw);
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let error = Config::parse("[server]\nlisen = \"127.0.0.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("lisen"), "{error}");
        let error = Config::parse(
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"\"\nallow = []\nmax_quota = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("max_quota"), "{error}");
        let error = Config::parse("[upstream]\ntimeout_ms = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("timeout_ms"), "{error}");
        let error =
            Config::parse("[[clients]]\nname = \"a\"\nkey_sha256 = \"\"\nallow = [\"lst\"]\n")
                .unwrap_err()
                .to_string();
        assert!(error.contains("lst"), "{error}");
    }

    #[test]
    fn a_secret_written_into_the_file_is_never_echoed() {
        for text in [
            "[upstream]\naccess_token = \"sk-SUPERSECRET-value\"\n",
            "[upstream]\nuser_id = \"sk-SUPERSECRET-value\"\n",
            "[upstream]\nurl = \"sk-SUPERSECRET-value\n",
            "[[clients]]\nname = \"a\"\nkey = \"sk-SUPERSECRET-value\"\n",
        ] {
            let error = Config::parse(text).unwrap_err().to_string();
            assert!(!error.contains("SUPERSECRET"), "{error}");
        }
        // Nor among several faults.
        let text = "[upstream]\nuser_id = \"sk-SUPERSECRET-value\"\naccess_token = \"sk-SUPERSECRET-value\"\n\
                    timeout_ms = \"sk-SUPERSECRET-value\"\n[[clients]]\nname = \"a\"\nallow = [\"sk-SUPERSECRET-value\"]\n";
        let errors = Config::parse(text).unwrap_err();
        assert_eq!(errors.0.len(), 5, "{errors}");
        let error = errors.to_string();
        assert!(!error.contains("SUPERSECRET"), "{error}");
        assert!(error.contains("access_token_env"), "{error}");
        let error = Config::parse("[upstream]\naccess_token = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("upstream.access_token:") && error.contains("access_token_env"),
            "{error}"
        );
    }

    #[test]
    fn every_semantic_fault_is_reported_with_its_key() {
        let text = r#"
            [server]
            max_body_bytes = 0
            trusted_proxies = ["10.0.0.0/8", "192.168.1.7"]
            [upstream]
            url = "ftp://x"
            user_id = 0
            access_token_env = "A"
            access_token_file = "/b"
            [[clients]]
            name = "team a"
            key_sha256 = "ABC"
            allow = ["list"]
            [[clients]]
            name = "team-b"
            key_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
            allow = []
            [[clients]]
            name = "team-b"
            key_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
            allow = []
        "#;
        let errors = Config::parse(text).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.max_body_bytes",
                "upstream.url",
                "upstream.user_id",
                "upstream.access_token_file",
                "clients[0].name",
                "clients[0].key_sha256",
                "clients[2].name",
                "clients[2].key_sha256",
            ]
        );
    }

    #[test]
    fn a_type_fault_does_not_hide_the_others() {
        let text = "[[clients]]\nname = \"a\"\nallow = [\"list\", \"lst\"]\nkey_sha256 = \"ABC\"\n";
        let errors = Config::parse(text).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["clients[0].allow", "clients[0].key_sha256"],
            "{errors:?}"
        );
        assert!(errors[0].message.contains("`lst`"), "{errors:?}");
        assert!(
            errors[0].message.ends_with("(line 3, column 18)"),
            "{errors:?}"
        );
        assert!(
            errors[1].message.ends_with("(line 4, column 1)"),
            "{errors:?}"
        );

        // A wrong type in one table, an unknown key in another, a semantic fault in a third, in
        // the order of the file (serde reads the tables by name, not in that order).
        let text = "[upstream]\ntimeout_ms = \"fast\"\n[server]\nlisen = \"127.0.0.1:1\"\n[audit]\nrotate_bytes = 1\n";
        let errors = Config::parse(text).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["upstream.timeout_ms", "server.lisen", "audit.rotate_bytes"],
            "{errors:?}"
        );
        assert!(
            errors[0].message.ends_with("(line 2, column 14)"),
            "{errors:?}"
        );
        assert!(
            errors[1].message.ends_with("(line 4, column 1)"),
            "{errors:?}"
        );

        // Several in one array, a multi-line one, an unknown table and its keys, a dotted key.
        let text = "[[clients]]\nname = \"a\"\nallow = [\n  \"lst\",\n  \"list\",\n  \"gte\",\n]\n\
                    key_sha256 = \"ABC\"\n[audt]\npath = 5\n[log]\nformat = \"txt\"\n";
        let errors = Config::parse(text).unwrap_err().0;
        let faults: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(faults.len(), 5, "{faults:#?}");
        assert!(
            faults[0].starts_with("clients[0].allow: unknown variant `lst`"),
            "{faults:#?}"
        );
        assert!(faults[0].ends_with("(line 4, column 3)"), "{faults:#?}");
        assert!(
            faults[1].starts_with("clients[0].allow: unknown variant `gte`"),
            "{faults:#?}"
        );
        assert!(faults[1].ends_with("(line 6, column 3)"), "{faults:#?}");
        assert!(
            faults[2].starts_with("clients[0].key_sha256: must be 64"),
            "{faults:#?}"
        );
        assert!(
            faults[3].starts_with("audt: unknown field `audt`"),
            "{faults:#?}"
        );
        assert!(
            faults[4].starts_with("log.format: unknown variant `txt`"),
            "{faults:#?}"
        );
    }

    #[test]
    fn a_blanked_key_is_not_reported_again_as_missing() {
        // `key_sha256 = 5`: not also "key_sha256 is required".
        let text =
            "[[clients]]\nname = \"a\"\nallow = []\nkey_sha256 = 5\n[server]\nmax_body_bytes = 0\n";
        let keys: Vec<String> = Config::parse(text)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["clients[0].key_sha256", "server.max_body_bytes"]);
        // `allow = "list"`: not also "missing field `allow`". The client is left out whole, so the
        // rules are not run, but what serde refuses elsewhere is still found.
        let text = "[[clients]]\nname = \"a\"\nallow = \"list\"\n[upstream]\nmode = \"proxy\"\n";
        let errors = Config::parse(text).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["clients[0].allow", "upstream.mode"], "{errors:?}");
        assert!(!errors[0].message.contains("missing"), "{errors:?}");
    }

    #[test]
    fn a_missing_required_key_is_named_in_its_table() {
        let text = "[[clients]]\nname = \"a\"\nallow = []\nkey_sha256 = \"ABC\"\n\
                    [[clients]]\nkey_sha256 = \"ABC\"\nallow = []\n[upstream]\ntimeout_ms = \"x\"\n\
                    [server]\ntls = { cert_file = \"c\" }\n";
        let errors = Config::parse(text).unwrap_err().0;
        let faults: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(faults.len(), 3, "{faults:#?}");
        assert!(
            faults[0].starts_with("clients[1].name: missing field `name` (line 5, column 1)"),
            "{faults:#?}"
        );
        assert!(
            faults[1].starts_with("upstream.timeout_ms: invalid type"),
            "{faults:#?}"
        );
        assert!(
            faults[2]
                .starts_with("server.tls.key_file: missing field `key_file` (line 11, column 7)"),
            "{faults:#?}"
        );
    }

    #[test]
    fn collecting_stops_at_a_bound_and_says_so() {
        let keys: String = (0..150).map(|i| format!("k{i} = 1\n")).collect();
        let errors = Config::parse(&format!("[log]\n{keys}")).unwrap_err().0;
        assert_eq!(errors.len(), read::MAX_REFUSED + 1);
        assert!(
            errors[read::MAX_REFUSED]
                .message
                .contains("more may follow"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_syntax_error_is_reported_alone() {
        let text = "[server]\nlisen = 1\nlisten = \"127.0.0.1:1\n[[clients]]\nallow = [\"lst\"]\n";
        let errors = Config::parse(text).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("line 3"), "{errors:?}");
    }

    #[test]
    fn a_valid_file_reads_as_before() {
        let text = include_str!("../../config/tokengate.toml");
        let config = Config::parse(text).unwrap();
        let direct: Config = toml::from_str(text).unwrap();
        assert_eq!(format!("{config:?}"), format!("{direct:?}"));
        let text = "server.listen = \"127.0.0.1:1\"\n[server.tls]\ncert_file = \"c\"\nkey_file = \"k\"\n\
                    [[clients]]\nname = \"a\"\nkey_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n\
                    allow = [\n  \"list\", # reads\n  \"get\",\n]\n";
        let config = Config::parse(text).unwrap();
        let direct: Config = toml::from_str(text).unwrap();
        assert_eq!(format!("{config:?}"), format!("{direct:?}"));
    }

    #[test]
    fn the_cluster_url_has_one_source_and_no_password_in_the_file() {
        let keys = |text: &str| -> Vec<String> {
            match Config::parse(text) {
                Ok(_) => Vec::new(),
                Err(errors) => errors.0.into_iter().map(|e| e.key).collect(),
            }
        };
        assert_eq!(
            keys("[cluster]\nurl = \"redis://127.0.0.1:6379/0\"\n"),
            Vec::<String>::new()
        );
        let config = Config::parse("[cluster]\nurl_env = \"REDIS_URL\"\n").unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(
            (cluster.key_prefix.as_str(), cluster.timeout_ms),
            ("tokengate:", 50)
        );
        assert_eq!(keys("[cluster]\n"), ["cluster.url"]);
        assert_eq!(
            keys("[cluster]\nurl = \"redis://:hunter2@10.0.0.1/0\"\n"),
            ["cluster.url"]
        );
        let error = Config::parse("[cluster]\nurl = \"redis://:hunter2@10.0.0.1/0\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            !error.contains("hunter2") && error.contains("url_env"),
            "{error}"
        );
        assert_eq!(
            keys("[cluster]\nurl = \"redis://a/0\"\nurl_env = \"X\"\n"),
            ["cluster.url"]
        );
        assert_eq!(
            keys("[cluster]\nurl = \"redis://a/0\"\ntimeout_ms = 0\ninstance = \"a b\"\non_unavailable = \"refuse\"\n"),
            ["cluster.timeout_ms", "cluster.instance"]
        );
    }

    #[test]
    fn connection_and_header_caps_are_checked_at_load() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.server.max_connections, 10_000);
        assert_eq!(config.server.max_header_bytes, 32_768);
        assert!(config.server.workers() >= 1);
        assert_eq!(
            Config::parse("[server]\nworkers = 3\n")
                .unwrap()
                .server
                .workers(),
            3
        );
        for (text, key) in [
            ("max_connections = 0", "server.max_connections"),
            ("max_connections = 1000001", "server.max_connections"),
            ("max_header_bytes = 100", "server.max_header_bytes"),
            ("workers = 0", "server.workers"),
            ("workers = 1025", "server.workers"),
            ("max_header_bytes = 8191", "server.max_header_bytes"),
            ("max_header_bytes = 1048577", "server.max_header_bytes"),
        ] {
            let errors = Config::parse(&format!("[server]\n{text}\n")).unwrap_err().0;
            let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
            assert_eq!(keys, [key], "{text}");
        }
        for text in [
            "max_connections = 1",
            "max_connections = 1000000",
            "max_header_bytes = 8192",
            "max_header_bytes = 1048576",
            "workers = 1",
            "workers = 1024",
        ] {
            assert!(
                Config::parse(&format!("[server]\n{text}\n")).is_ok(),
                "{text}"
            );
        }
    }

    #[test]
    fn trusted_proxies_take_cidrs_and_addresses() {
        let config =
            Config::parse("[server]\ntrusted_proxies = [\"10.1.2.3/8\", \"::1\"]\n").unwrap();
        let nets: Vec<String> = config
            .server
            .trusted_proxies
            .iter()
            .map(|c| c.0.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "::1/128"]);
        assert!(Config::parse("[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n").is_err());
    }
}
