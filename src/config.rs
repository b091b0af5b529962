//! The configuration file (SPEC §10): plain serde structs, every one refusing unknown keys, with
//! the defaults of the spec, checked once at load.
//!
//! Loading has two steps. [`Config::load`] parses the TOML and checks every rule that needs only
//! the file (collecting *all* faults, each naming its key: what serde refuses and what the rules
//! refuse alike; a TOML syntax error alone). [`crate::gateway::Gateway::build`]
//! then resolves what lies outside the file (secrets from `*_env`/`*_file`, CA files). Both run in
//! `tokengate check` and `tokengate serve`.

use std::cell::Cell;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::route::Operation;
use crate::token::batch::BatchMode;

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
        }
    }
}

/// The range of `server.max_connections`.
pub const MAX_CONNECTIONS: std::ops::RangeInclusive<usize> = 1..=1_000_000;

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
    /// The most pass-through identities whose buckets are kept (the longest idle go first).
    pub max_identities: usize,
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
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: PathBuf::from("audit/tokengate.audit.jsonl"),
            fsync: Fsync::Always,
            hmac_key_env: None,
            hmac_key_file: None,
            rotate_bytes: 104_857_600,
            reads: false,
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
        let root = toml::de::DeTable::parse(text)
            .map_err(|error| ConfigErrors(vec![syntax_error(text, &error, None)]))?;
        // Each fault with where the file has it, to list them in file order.
        let mut faults: Vec<(usize, ConfigError)> = Vec::new();
        if let Some(config) = read_collecting(text, &mut faults) {
            let refused = faults.len();
            for mut fault in config.check() {
                if faults[..refused]
                    .iter()
                    .any(|(_, f)| covers(&f.key, &fault.key))
                {
                    continue;
                }
                let at = match position_of(root.get_ref(), &fault.key) {
                    Some((at, true)) => {
                        let (line, column) = line_column(text, at);
                        fault
                            .message
                            .push_str(&format!(" (line {line}, column {column})"));
                        at
                    }
                    Some((at, false)) => at,
                    None => usize::MAX,
                };
                faults.push((at, fault));
            }
            if faults.is_empty() {
                return Ok(config);
            }
        }
        if faults.is_empty() {
            // Not expected (reading stops only after a fault), but never an empty list of faults.
            if let Err(error) = toml::from_str::<Config>(text) {
                faults.push((0, syntax_error(text, &error, None)));
            }
        }
        faults.sort_by_key(|(at, _)| *at);
        Err(ConfigErrors(faults.into_iter().map(|(_, f)| f).collect()))
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
        if self.audit.rotate_bytes < 4096 {
            fault("audit.rotate_bytes".into(), "must be at least 4096".into());
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
        errors
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

/// A TOML syntax or type error, named by the dotted key it stands at (`server.listen`,
/// `clients[1].allow`) when the parser points at one, with the parser's message and the line and
/// column. The source line itself is never quoted: it may hold a secret pasted into the file by
/// mistake, and this text reaches logs.
///
/// The key is that of the line of `key_offset` when given (the line of the key of a value written
/// over several lines), else of the fault's own line.
fn syntax_error(text: &str, error: &toml::de::Error, key_offset: Option<usize>) -> ConfigError {
    let Some(span) = error.span() else {
        return ConfigError {
            key: String::new(),
            message: error.message().trim_end().to_string(),
        };
    };
    let key = key_at(text, key_offset.unwrap_or(span.start));
    let (line, column) = line_column(text, span.start);
    let mut message = error.message().trim_end().to_string();
    // serde quotes the offending value (`invalid type: string "…"`): a value long enough to be a
    // credential is not repeated. Short ones (a misspelt `"lst"`) stay, since they help.
    let value = text
        .get(span.clone())
        .unwrap_or("")
        .trim()
        .trim_matches(|c| c == '"' || c == '\'');
    if value.len() >= REDACT_FROM {
        message = message.replace(value, "<value hidden>");
    }
    message.push_str(&format!(" (line {line}, column {column})"));
    let leaf = key.rsplit('.').next().unwrap_or("");
    if SECRET_WORDS.iter().any(|word| leaf.contains(word))
        && !leaf.ends_with("_env")
        && !leaf.ends_with("_file")
    {
        message.push_str(
            ". Secrets are never written in the configuration: name an environment variable with \
             `*_env` or a file with `*_file` (upstream.access_token_env, upstream.access_token_file)",
        );
    }
    ConfigError { key, message }
}

/// How many faults serde refuses are collected from one file before the rest is left unread.
const MAX_REFUSED: usize = 100;

/// Reads `text`, a TOML document, into a [`Config`], adding to `faults` every fault serde refuses,
/// with its offset in the file. Serde stops at the first one, so each is recorded, the smallest
/// piece of the document that holds it is blanked ([`piece_to_blank`], [`blank`]), and the
/// document is read again, until it reads. Blanking replaces bytes with spaces and keeps
/// newlines, so every offset, line and column stays that of the file as written, and so does
/// every key ([`key_at`] reads the file as written).
///
/// The config read from what is left is returned when the rules of [`Config::check`] can judge it:
/// not when reading stopped (a fault that comes back, a piece that cannot be blanked, more than
/// [`MAX_REFUSED`] faults), and not when a table lacking a required key was left out whole: a
/// client left out shifts the index of every client after it (the rules would name the wrong
/// ones), a `[server.tls]` left out makes every `cert_subject` look wrong.
fn read_collecting(text: &str, faults: &mut Vec<(usize, ConfigError)>) -> Option<Config> {
    let mut current = text.to_string();
    let mut whole = true;
    let mut seen: Vec<(usize, String)> = Vec::new();
    for _ in 0..MAX_REFUSED {
        let error = match toml::from_str::<Config>(&current) {
            Ok(config) => return whole.then_some(config),
            Err(error) => error,
        };
        let Some(span) = error.span() else {
            faults.push((usize::MAX, syntax_error(text, &error, None)));
            return None;
        };
        let this = (span.start, error.message().to_string());
        if seen.contains(&this) {
            return None;
        }
        seen.push(this);
        let piece = piece_to_blank(&current, &span);
        let mut fault = syntax_error(text, &error, piece.as_ref().and_then(|p| p.key));
        if let Some(field) = missing_field(error.message()) {
            // A required key is absent (serde points at its table). When that key was blanked
            // here, its fault is already reported: its absence is not another one. Either way
            // nothing can stand in for it, so its whole table is blanked and the rules are not run.
            // Its table's other keys were all read before serde noticed.
            fault.key = format!("{}.{field}", table_at(text, span.start));
            whole = false;
            if !faults.iter().any(|(_, f)| covers(&f.key, &fault.key)) {
                faults.push((span.start, fault));
            }
        } else {
            faults.push((span.start, fault));
        }
        let piece = piece?;
        let blanked = blank(&current, &piece.span);
        if blanked == current || toml::de::DeTable::parse(&blanked).is_err() {
            return None;
        }
        current = blanked;
    }
    faults.push((
        usize::MAX,
        ConfigError {
            key: String::new(),
            message: format!("reading stopped after {MAX_REFUSED} faults: more may follow"),
        },
    ));
    None
}

/// The field of serde's "missing field `allow`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

/// Whether a fault at `key` is about the `reported` key or lies under it (`clients[0].groups[1]`
/// under `clients[0].groups`, anything of `clients[0]` under `clients[0]`).
fn covers(reported: &str, key: &str) -> bool {
    key.strip_prefix(reported)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// A byte range of the configuration text.
type Span = std::ops::Range<usize>;

/// What [`read_collecting`] blanks to get past a fault.
struct Piece {
    span: Span,
    /// Where the key of the entry holding the fault starts, when it is not on the fault's line (an
    /// element of an array written over several lines).
    key: Option<usize>,
}

/// The smallest piece of `text` (a TOML document) whose blanking removes the fault serde reported
/// at `fault`:
/// - when the fault is an element of an array (the `"lst"` of `allow = ["list", "lst"]`), that
///   element with a comma next to it, so that the array stays valid TOML;
/// - when it is in a table header (an unknown `[audt]`, or `[[clients]]` lacking a required key),
///   that table's whole section, up to the next header, so that its keys do not fall into the
///   table before it;
/// - otherwise the `key = value` entry that holds it (a wrong type, an unknown key), dotted prefix
///   included, with a comma next to it inside an inline table.
fn piece_to_blank(text: &str, fault: &Span) -> Option<Piece> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut headers = Vec::new();
    for (_, value) in root.get_ref().iter() {
        header_starts(text, value, &mut headers);
    }
    headers.sort_unstable();
    let finder = PieceFinder {
        text,
        fault,
        headers,
        key: Cell::new(None),
    };
    let span = finder.in_table(root.get_ref())?;
    Some(Piece {
        span,
        key: finder.key.get(),
    })
}

/// A value of the parsed document, with its span in the text.
type DeSpanned<'i> = toml::Spanned<toml::de::DeValue<'i>>;

/// Whether `value` is a table opened by a header (`[server]`, each `[[clients]]`): the parser
/// gives such a table the span of its header, and its keys follow on the lines below.
fn is_header(text: &str, value: &DeSpanned<'_>) -> bool {
    value.get_ref().is_table()
        && text
            .get(value.span().start..)
            .is_some_and(|rest| rest.starts_with('['))
}

/// Adds the start of every table header in `value` to `out`.
fn header_starts(text: &str, value: &DeSpanned<'_>, out: &mut Vec<usize>) {
    match value.get_ref() {
        toml::de::DeValue::Table(table) => {
            if is_header(text, value) {
                out.push(value.span().start);
            }
            for (_, inner) in table.iter() {
                header_starts(text, inner, out);
            }
        }
        toml::de::DeValue::Array(items) => {
            for item in items.iter() {
                header_starts(text, item, out);
            }
        }
        _ => {}
    }
}

/// The search of [`piece_to_blank`].
struct PieceFinder<'a> {
    text: &'a str,
    fault: &'a Span,
    /// Where every table header starts, in order: a section ends where the next one starts.
    headers: Vec<usize>,
    /// The start of the key of the outermost `key = value` entry holding the fault.
    key: Cell<Option<usize>>,
}

impl PieceFinder<'_> {
    /// Whether `span` holds the fault.
    fn holds(&self, span: &Span) -> bool {
        span.start <= self.fault.start && self.fault.end <= span.end
    }

    fn in_table(&self, table: &toml::de::DeTable<'_>) -> Option<Span> {
        table
            .iter()
            .find_map(|(key, value)| self.in_entry(key.span(), value))
    }

    fn in_entry(&self, key: Span, value: &DeSpanned<'_>) -> Option<Span> {
        match value.get_ref() {
            toml::de::DeValue::Table(table) if is_header(self.text, value) => {
                self.in_section(value.span(), table)
            }
            // `[[clients]]`: every element is a header table.
            toml::de::DeValue::Array(items) if items.iter().any(|i| is_header(self.text, i)) => {
                items
                    .iter()
                    .find_map(|item| self.in_section(item.span(), item.get_ref().as_table()?))
            }
            // A table without header or braces: the `server` of `server.listen = …` or of
            // `[server.tls]`. Its entries carry the dotted prefix with them.
            toml::de::DeValue::Table(table)
                if !self
                    .text
                    .get(value.span().start..)
                    .is_some_and(|rest| rest.starts_with('{')) =>
            {
                self.in_table(table)
            }
            _ => {
                let entry = self.entry(key, value);
                if self.holds(&entry) {
                    if self.key.get().is_none() {
                        self.key.set(Some(entry.start));
                    }
                    Some(self.in_value(value).unwrap_or(entry))
                } else {
                    None
                }
            }
        }
    }

    /// The section of the table whose header is `header` when the fault is in that header, else
    /// the piece inside its keys.
    fn in_section(&self, header: Span, table: &toml::de::DeTable<'_>) -> Option<Span> {
        if self.holds(&header) {
            let end = self.headers.iter().find(|&&start| start > header.start);
            return Some(header.start..end.copied().unwrap_or(self.text.len()));
        }
        self.in_table(table)
    }

    /// The piece inside an inline array or table that holds the fault, if one does.
    fn in_value(&self, value: &DeSpanned<'_>) -> Option<Span> {
        match value.get_ref() {
            toml::de::DeValue::Array(items) => {
                let i = items.iter().position(|item| self.holds(&item.span()))?;
                let item = items.get(i)?;
                if let Some(piece) = self.in_value(item) {
                    return Some(piece);
                }
                let previous = i.checked_sub(1).and_then(|p| items.get(p));
                Some(self.with_comma(item.span(), previous.map(|p| p.span().end)))
            }
            toml::de::DeValue::Table(table) => {
                let piece = self.in_table(table)?;
                let mut entries: Vec<Span> =
                    table.iter().map(|(k, v)| self.entry(k.span(), v)).collect();
                entries.sort_by_key(|entry| entry.start);
                match entries.iter().position(|entry| *entry == piece) {
                    Some(i) => {
                        let previous = i.checked_sub(1).and_then(|p| entries.get(p));
                        Some(self.with_comma(piece, previous.map(|p| p.end)))
                    }
                    // A piece deeper inside one of its values.
                    None => Some(piece),
                }
            }
            _ => None,
        }
    }

    /// The `key = value` entry of `key`, from the start of its dotted prefix.
    fn entry(&self, key: Span, value: &DeSpanned<'_>) -> Span {
        dotted_start(self.text, key.start)..value.span().end
    }

    /// `piece` of an array or inline table, with the comma after it, or else the comma before it
    /// (after the previous piece, which ends at `previous_end`): the list stays valid without it.
    fn with_comma(&self, piece: Span, previous_end: Option<usize>) -> Span {
        if let Some(comma) = comma_after(self.text, piece.end) {
            return piece.start..comma + 1;
        }
        match previous_end.and_then(|end| comma_after(self.text, end)) {
            Some(comma) => comma..piece.end,
            None => piece,
        }
    }
}

/// The offset of the comma that comes next after `from`, past white space and comments, if what
/// comes next is a comma.
fn comma_after(text: &str, mut from: usize) -> Option<usize> {
    loop {
        let rest = text.get(from..)?;
        let next = rest.trim_start();
        from += rest.len() - next.len();
        if next.starts_with('#') {
            from += next.find('\n').unwrap_or(next.len());
        } else {
            return next.starts_with(',').then_some(from);
        }
    }
}

/// Where the key whose last part starts at `start` begins: before its dotted prefix (the
/// `server.` of `server.listen = …`), which a blanked entry must take with it.
fn dotted_start(text: &str, mut start: usize) -> usize {
    loop {
        let Some(before) = text.get(..start) else {
            return start;
        };
        let Some(before) = before.trim_end_matches([' ', '\t']).strip_suffix('.') else {
            return start;
        };
        let before = before.trim_end_matches([' ', '\t']);
        let rest = match before.chars().next_back() {
            Some(quote @ ('"' | '\'')) => {
                let inner = &before[..before.len() - 1];
                match inner.rfind(quote) {
                    Some(open) => &inner[..open],
                    None => return start,
                }
            }
            _ => before
                .trim_end_matches(|c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')),
        };
        if rest.len() == before.len() {
            return start;
        }
        start = rest.len();
    }
}

/// `text` with the bytes of `piece` replaced by spaces, newlines kept: every offset, line and
/// column stays where it was.
fn blank(text: &str, piece: &Span) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        if piece.contains(&i) && c != '\n' && c != '\r' {
            out.extend(std::iter::repeat_n(' ', c.len_utf8()));
        } else {
            out.push(c);
        }
    }
    out
}

/// Where the dotted key (`clients[1].key_sha256`, `upstream.extra_fields[0]`) of a fault found by
/// [`Config::check`] is written in the file, and `true`; or where its closest table is, and
/// `false` (a required key left out); `None` when neither is in the file.
fn position_of(root: &toml::de::DeTable<'_>, dotted: &str) -> Option<(usize, bool)> {
    let mut table = Some(root);
    let mut at = None;
    for part in dotted.split('.') {
        let (name, index) = match part.strip_suffix(']').and_then(|p| p.split_once('[')) {
            Some((name, index)) => (name, index.parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((key, mut value)) =
            table.and_then(|t| t.iter().find(|(key, _)| key.get_ref() == name))
        else {
            return at.map(|at| (at, false));
        };
        at = Some(key.span().start);
        if let Some(index) = index {
            match value
                .get_ref()
                .as_array()
                .and_then(|items| items.get(index))
            {
                Some(item) => value = item,
                None => return at.map(|at| (at, false)),
            }
            at = Some(value.span().start);
        }
        table = value.get_ref().as_table();
    }
    at.map(|at| (at, true))
}

/// The line and column (from 1, column in bytes) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Values at least this long are not repeated in error messages.
const REDACT_FROM: usize = 12;

/// Key names that suggest a secret was written into the file itself.
const SECRET_WORDS: [&str; 4] = ["token", "key", "secret", "password"];

/// The dotted key of the `key = value` line holding byte `offset`, after the table header above it.
fn key_at(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    if let Some(header) = line.strip_prefix('[') {
        // The fault is a table header itself (an unknown section such as `[audit]`).
        return header
            .trim_matches(|c| c == '[' || c == ']' || c == ' ')
            .to_string();
    }
    let key = line.split_once('=').map(|(k, _)| k.trim()).unwrap_or("");
    let table = table_of(&before[..line_start]);
    match (table.is_empty(), key.is_empty()) {
        (_, true) => table,
        (true, false) => key.to_string(),
        (false, false) => format!("{table}.{key}"),
    }
}

/// The table that the value at `offset` is: the table of a header on that line, with its index in
/// an array of tables (`clients[1]`), or else the key of an inline table (`server.tls`).
fn table_at(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text
        .get(offset..)
        .and_then(|rest| rest.find('\n'))
        .map_or(text.len(), |i| offset + i);
    match text.get(line_start..line_end) {
        Some(line) if line.trim_start().starts_with('[') => table_of(&text[..line_end]),
        _ => key_at(text, offset),
    }
}

/// The table in force after the lines of `lines`, by their headers: `server.tls`, `clients[1]`.
fn table_of(lines: &str) -> String {
    let mut table = String::new();
    let mut arrays: Vec<(String, usize)> = Vec::new();
    for header in lines.lines().map(str::trim) {
        if let Some(name) = header.strip_prefix("[[").and_then(|h| h.split("]]").next()) {
            let name = name.trim().to_string();
            let index = match arrays.iter_mut().find(|(n, _)| *n == name) {
                Some((_, count)) => {
                    *count += 1;
                    *count - 1
                }
                None => {
                    arrays.push((name.clone(), 1));
                    0
                }
            };
            table = format!("{name}[{index}]");
        } else if let Some(name) = header.strip_prefix('[').and_then(|h| h.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    table
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

    /// Where serde points for each kind of fault, as [`read_collecting`] relies on it.
    #[test]
    fn serde_points_at_the_fault() {
        let client = "[[clients]]\nname = \"a\"\n";
        for (text, pointed, start) in [
            // an unknown key: the key
            (
                "[server]\nlisen = 1\n".to_string(),
                "lisen",
                "unknown field `lisen`",
            ),
            (
                format!("{client}allow = []\nmax_quota = 1\n"),
                "max_quota",
                "unknown field",
            ),
            (
                "server.lisen = 1\n".into(),
                "lisen",
                "unknown field `lisen`",
            ),
            // an unknown table: its name in the header
            ("[audt]\nx = 1\n".into(), "audt", "unknown field `audt`"),
            (
                "[serve.tls]\nx = 1\n".into(),
                "serve",
                "unknown field `serve`",
            ),
            // a wrong type: the value
            (
                "[upstream]\ntimeout_ms = \"fast\"\n".into(),
                "\"fast\"",
                "invalid type",
            ),
            (
                format!("{client}allow = \"list\"\n"),
                "\"list\"",
                "invalid type",
            ),
            (
                "[[clients]]\nname = 5\nallow = []\n".into(),
                "5",
                "invalid type",
            ),
            // an unknown operation: the element, on one line or several
            (
                format!("{client}allow = [\"list\", \"lst\"]\n"),
                "\"lst\"",
                "unknown variant `lst`",
            ),
            (
                format!("{client}allow = [\n  \"list\",\n  \"lst\",\n]\n"),
                "\"lst\"",
                "unknown variant",
            ),
            // a value refused by a conversion (`Cidr`): the whole array, not the element
            (
                "[server]\ntrusted_proxies = [\"::1\", \"x\"]\n".into(),
                "[\"::1\", \"x\"]",
                "an entry is not an IP address",
            ),
            // a missing required key: the header of its table, or the inline table
            (
                "[[clients]]\nname = \"a\"\n".into(),
                "[[clients]]",
                "missing field `allow`",
            ),
            (
                "[server]\ntls = { cert_file = \"c\" }\n".into(),
                "{ cert_file = \"c\" }",
                "missing field `key_file`",
            ),
        ] {
            let error = toml::from_str::<Config>(&text).unwrap_err();
            let span = error.span().unwrap();
            assert_eq!(&text[span], pointed, "{text}");
            assert!(
                error.message().starts_with(start),
                "{text}: {}",
                error.message()
            );
        }
    }

    /// The text left after blanking the first fault serde finds in `text`.
    fn blank_first(text: &str) -> String {
        let span = toml::from_str::<Config>(text).unwrap_err().span().unwrap();
        let piece = piece_to_blank(text, &span).unwrap();
        let blanked = blank(text, &piece.span);
        assert_eq!(blanked.len(), text.len());
        toml::de::DeTable::parse(&blanked).unwrap();
        blanked
    }

    #[test]
    fn blanking_takes_the_smallest_piece_and_keeps_every_offset() {
        let client = "[[clients]]\nname = \"a\"\n";
        for (text, left) in [
            // an element, with the comma after it, or before it when it is the last
            (
                format!("{client}allow = [\"lst\", \"list\"]\n"),
                format!("{client}allow = [       \"list\"]\n"),
            ),
            (
                format!("{client}allow = [\"list\", \"lst\"]\n"),
                format!("{client}allow = [\"list\"       ]\n"),
            ),
            (
                format!("{client}allow = [\n  \"list\", # reads\n  \"lst\"\n]\n"),
                format!("{client}allow = [\n  \"list\"         \n       \n]\n"),
            ),
            // an entry, its dotted prefix included
            (
                "[upstream]\ntimeout_ms = \"fast\"\nuser_id = 2\n".into(),
                "[upstream]\n                   \nuser_id = 2\n".into(),
            ),
            ("server.lisen = 1\n".into(), "                \n".into()),
            // an unknown table: its whole section, up to the next header
            (
                "[audt]\npath = \"x\"\n\n[log]\nformat = \"text\"\n".into(),
                "      \n          \n\n[log]\nformat = \"text\"\n".into(),
            ),
            // an entry of an inline table, with its comma
            (
                "[server]\ntls = { cert_file = 5, key_file = \"k\" }\n".into(),
                "[server]\ntls = {                key_file = \"k\" }\n".into(),
            ),
        ] {
            assert_eq!(blank_first(&text), left, "{text}");
        }
        // Multi-byte characters blank to as many spaces as they have bytes.
        let text = "[upstream]\nuser_id = \"éé\" # é\n";
        let left = format!("[upstream]\n{} # é\n", " ".repeat(16));
        assert_eq!(blank_first(text), left);
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
        assert_eq!(errors.len(), MAX_REFUSED + 1);
        assert!(
            errors[MAX_REFUSED].message.contains("more may follow"),
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
        let text = include_str!("../config/tokengate.toml");
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
    fn connection_and_header_caps_are_checked_at_load() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.server.max_connections, 10_000);
        assert_eq!(config.server.max_header_bytes, 32_768);
        for (text, key) in [
            ("max_connections = 0", "server.max_connections"),
            ("max_connections = 1000001", "server.max_connections"),
            ("max_header_bytes = 100", "server.max_header_bytes"),
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
