//! The running gateway's state, built once from a checked [`Config`]: everything outside the file
//! (the upstream token, CA files) is resolved here, so `check` and `serve` fail the same way.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use ipnet::IpNet;

use crate::audit::chain::AuditKey;
use crate::audit::checkpoint::{CheckpointKey, Checkpoints};
use crate::audit::ship::shipper::Shipper;
use crate::audit::ship::target::Target;
use crate::audit::writer::Trail;
use crate::caller::Authenticator;
use crate::cluster::Cluster;
use crate::config::ClusterConfig;
use crate::config::{AuditConfig, Config, ConfigError, ConfigErrors, Mode, DEFAULT_TOKEN_ENV};
use crate::layers::detach::InFlight;
use crate::locks::TokenLocks;
use crate::metrics::Metrics;
use crate::ratelimit::shared::SharedBuckets;
use crate::ratelimit::unauthenticated::Unauthenticated;
use crate::secret::{self, Secret};
use crate::token::edit::Limits;
use crate::upstream::{Credential, Upstream};

/// Everything the request stack and the admin listener share.
#[derive(Clone, Debug)]
pub struct Gateway {
    /// The pooled upstream client.
    pub upstream: Arc<Upstream>,
    /// How callers are recognised.
    pub authenticator: Arc<Authenticator>,
    /// `server.trusted_proxies`.
    pub trusted_proxies: Arc<[IpNet]>,
    /// `server.max_body_bytes`.
    pub max_body_bytes: usize,
    /// `server.max_connections`: read by the caller-facing accept loop each time it wants to
    /// accept, so a reload moves the cap for the next connection.
    pub max_connections: usize,
    /// `server.max_header_bytes`: the connection builder of each new caller connection is made
    /// with the value in force when it is accepted.
    pub max_header_bytes: usize,
    /// What body validation depends on (`[limits]`, `upstream.extra_fields`).
    pub limits: Arc<Limits>,
    /// `[server.tls]`: the caller-facing listener's TLS configuration, if it speaks TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `limits.batch_concurrency`: tokens of a fan-out batch update written at once.
    pub batch_concurrency: usize,
    /// `server.request_timeout_ms`.
    pub request_timeout: Duration,
    /// `upstream.ready_check`.
    pub ready_check: bool,
    /// The held credential (hold mode), for the readiness probe.
    pub held_credential: Option<Arc<Credential>>,
    /// The key that seals the audit trail.
    pub audit_key: AuditKey,
    /// The open audit trail (after [`Gateway::open_trail`]); `check` never opens it.
    pub trail: Option<Arc<Trail>>,
    /// `audit.checkpoint_*`: the key that signs checkpoints and when (SPEC §6.3), loaded (and so
    /// validated) by `check` too; read at start, kept across reloads.
    pub checkpoints: Option<Checkpoints>,
    /// `[audit.postgres]`: the central store (SPEC §6.3), its URL resolved.
    pub audit_store: Option<Target>,
    /// The shipper to it, started with the trail (after [`Gateway::open_trail`]).
    pub shipper: Option<Arc<Shipper>>,
    /// `audit.reads`.
    pub audit_reads: bool,
    /// `audit.capture_before`: read each token before a change that does not read it anyway.
    pub audit_capture_before: bool,
    /// `rate_limit.dry_run`.
    pub rate_limit_dry_run: bool,
    /// Per-token serialisation of changes, shared across reloads so in-flight and new requests
    /// for one token still take turns.
    pub locks: Arc<TokenLocks>,
    /// `[cluster]`: the Redis the replicas share (SPEC §11), kept across reloads.
    pub cluster: Option<Arc<Cluster>>,
    /// The replicas' shared rate-limit buckets, with `[cluster]`.
    pub shared_limits: Option<Arc<SharedBuckets>>,
    /// This replica's name in the audit trail: `cluster.instance`, else the host name.
    pub origin: Arc<str>,
    /// The requests that run on after their caller is gone (SPEC §6), for shutdown to wait for;
    /// shared across reloads.
    pub in_flight: Arc<InFlight>,
    /// `upstream.timeout_ms`: the longest shutdown waits for them.
    pub upstream_timeout: Duration,
    /// Refusals before authentication, counted per source address (SPEC §5); kept across a
    /// reload while its rate and bound stay.
    pub unauthenticated: Arc<Unauthenticated>,
    /// What only a restart changes (SPEC §7), to report a reload that asks for more.
    pub restart_only: RestartOnly,
    /// What the upstream client was built from: a reload keeps the client when they are equal.
    upstream_settings: String,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
}

impl Gateway {
    /// Resolves secrets and files and builds the state; every fault names its key.
    pub fn build(config: &Config) -> Result<Gateway, ConfigErrors> {
        let gateway = Gateway::build_with(config, Arc::new(Metrics::new()))?;
        // Up until a call finds otherwise (a reload sets it from the running cluster instead: a
        // refused one must not touch it).
        gateway.metrics.set_cluster_up(true);
        Ok(gateway)
    }

    /// [`Gateway::build`] into an existing metrics registry.
    fn build_with(config: &Config, metrics: Arc<Metrics>) -> Result<Gateway, ConfigErrors> {
        let mut errors = Vec::new();
        let cluster = match config.cluster.as_ref().map(|c| cluster(c, metrics.clone())) {
            Some(Ok(cluster)) => Some(Arc::new(cluster)),
            Some(Err(error)) => {
                errors.push(error);
                None
            }
            None => None,
        };
        let shared_limits = cluster
            .as_ref()
            .map(|cluster| Arc::new(SharedBuckets::new(cluster.clone())));
        let in_flight = Arc::new(InFlight::default());
        let upstream = Upstream::new(
            &config.upstream,
            &config.rate_limit,
            in_flight.clone(),
            metrics.clone(),
        )
        .map(|upstream| upstream.with_shared(shared_limits.clone()))
        .map_err(|(key, message)| errors.push(ConfigError { key, message }))
        .ok();
        let held_credential = match config.upstream.mode {
            Mode::Hold => match held_credential(config) {
                Ok(credential) => Some(Arc::new(credential)),
                Err(error) => {
                    errors.push(error);
                    None
                }
            },
            Mode::Passthrough => None,
        };
        let audit = &config.audit;
        let audit_key = AuditKey::load(
            audit.hmac_key_env.as_deref(),
            audit.hmac_key_file.as_deref(),
        )
        .map_err(|message| {
            let key = if audit.hmac_key_file.is_some() {
                "audit.hmac_key_file"
            } else {
                "audit.hmac_key_env"
            };
            errors.push(ConfigError {
                key: key.into(),
                message,
            })
        })
        .ok();
        let checkpoints = checkpoints(audit)
            .map_err(|error| errors.push(error))
            .ok()
            .flatten();
        let audit_store = match audit.postgres.as_ref().map(Target::resolve) {
            Some(Ok(target)) => Some(target),
            Some(Err((key, message))) => {
                errors.push(ConfigError { key, message });
                None
            }
            None => None,
        };
        let tls = match config.server.tls.as_ref().map(crate::tls::server_config) {
            Some(Ok(tls)) => Some(tls),
            Some(Err(error)) => {
                errors.push(error);
                None
            }
            None => None,
        };
        let (Some(upstream), Some(audit_key), true) = (upstream, audit_key, errors.is_empty())
        else {
            return Err(ConfigErrors(errors));
        };
        let authenticator = match &held_credential {
            Some(credential) => {
                Authenticator::keys(&config.clients, &config.rate_limit, credential.clone())
            }
            None => Authenticator::passthrough(
                config.upstream.auth_scheme,
                HeaderValue::from(config.upstream.user_id),
                &config.rate_limit,
            ),
        };
        // Two buckets per configured client (or pass-through identity) and one for the upstream.
        metrics.set_rate_limit_buckets(authenticator.buckets() + 1);
        Ok(Gateway {
            upstream: Arc::new(upstream),
            authenticator: Arc::new(authenticator),
            trusted_proxies: config.server.trusted_proxies.iter().map(|c| c.0).collect(),
            max_body_bytes: config.server.max_body_bytes,
            max_connections: config.server.max_connections,
            max_header_bytes: config.server.max_header_bytes,
            limits: Arc::new(Limits {
                name_max_bytes: config.limits.name_max_bytes,
                max_batch: config.limits.max_batch,
                require_complete_updates: config.limits.require_complete_updates,
                extra_fields: config.upstream.extra_fields.clone(),
                batch_update: config.upstream.batch_update,
            }),
            batch_concurrency: config.limits.batch_concurrency,
            tls,
            request_timeout: Duration::from_millis(config.server.request_timeout_ms),
            ready_check: config.upstream.ready_check,
            held_credential,
            audit_key,
            trail: None,
            checkpoints,
            audit_store,
            shipper: None,
            audit_reads: audit.reads,
            audit_capture_before: audit.capture_before,
            rate_limit_dry_run: config.rate_limit.dry_run,
            locks: Arc::new(match &cluster {
                // A lease longer than any request can live (SPEC §11): a replica that dies
                // holding a lock blocks its token until the lease ends, never longer.
                Some(cluster) => TokenLocks::shared(
                    cluster.clone(),
                    Duration::from_millis(
                        config.server.request_timeout_ms + config.upstream.timeout_ms,
                    ),
                ),
                None => TokenLocks::default(),
            }),
            origin: origin(config).into(),
            cluster,
            shared_limits,
            in_flight,
            upstream_timeout: Duration::from_millis(config.upstream.timeout_ms),
            unauthenticated: Arc::new(Unauthenticated::new(
                config.rate_limit.unauthenticated_per_minute,
                config.rate_limit.max_identities,
            )),
            restart_only: RestartOnly::of(config),
            upstream_settings: upstream_settings(config),
            metrics,
        })
    }

    /// The gateway `config` describes, for a `SIGHUP` reload (SPEC §7): clients, policies,
    /// limits (`server.max_connections` and `server.max_header_bytes` too: the accept loop reads
    /// them from the gateway in force), TLS certificates and the upstream token are new; the trail, the metrics, the
    /// per-token locks and the rate-limit state of clients whose rates did not change are kept.
    /// The upstream client (its connection pool and the global `upstream_requests_per_second`
    /// bucket) is kept unless its own settings changed. What needs a restart (listen addresses,
    /// the upstream URL, the `[audit]` trail settings, the log format, the shutdown grace,
    /// turning TLS on or off) keeps its running value, and each change to it is logged as
    /// ignored.
    pub fn reload(&self, config: &Config) -> Result<Gateway, ConfigErrors> {
        let mut next = Gateway::build_with(config, self.metrics.clone())?;
        for ignored in self.restart_only.changes(&next.restart_only) {
            tracing::warn!(
                key = ignored,
                "SIGHUP: the change to {ignored} is ignored: it needs a restart, and the running value stays"
            );
        }
        if next.restart_only.upstream_url != self.restart_only.upstream_url
            || next.upstream_settings == self.upstream_settings
        {
            next.upstream = self.upstream.clone();
            next.upstream_settings = self.upstream_settings.clone();
        }
        if next.tls.is_some() != self.tls.is_some() {
            next.tls = self.tls.clone();
        }
        if let Some(authenticator) = Arc::get_mut(&mut next.authenticator) {
            authenticator.keep_limits_from(&self.authenticator);
        }
        next.trail = self.trail.clone();
        // `[audit.postgres]` needs a restart: the running shipper stays.
        next.audit_store = self.audit_store.clone();
        next.shipper = self.shipper.clone();
        // The one `[audit]` key a reload applies: it only moves the readiness threshold.
        if let Some(trail) = &next.trail {
            trail.set_min_free_bytes(config.audit.min_free_bytes);
        }
        next.audit_key = self.audit_key.clone();
        next.checkpoints = self.checkpoints.clone();
        next.locks = self.locks.clone();
        // `[cluster]` needs a restart: the running connection, buckets and name stay.
        next.cluster = self.cluster.clone();
        next.metrics
            .set_cluster_up(next.cluster.as_ref().is_none_or(|c| c.is_up()));
        next.shared_limits = self.shared_limits.clone();
        next.origin = self.origin.clone();
        if let Some(upstream) = Arc::get_mut(&mut next.upstream) {
            upstream.share(self.shared_limits.clone(), self.in_flight.clone());
        }
        next.in_flight = self.in_flight.clone();
        if next.unauthenticated.settings() == self.unauthenticated.settings() {
            next.unauthenticated = self.unauthenticated.clone();
        }
        next.restart_only = self.restart_only.clone();
        Ok(next)
    }

    /// Opens the audit trail for writing (resuming its chain) and starts its writer; `serve`
    /// refuses to start when this fails.
    pub fn open_trail(&mut self, config: &AuditConfig) -> Result<(), ConfigErrors> {
        let trail = Trail::open(
            config,
            self.audit_key.clone(),
            self.metrics.clone(),
            self.origin.clone(),
            self.checkpoints.clone(),
        )
        .map_err(|message| ConfigErrors::one("audit.path", message))?;
        // The shipper reads the records back from the trail's files, after they are durable;
        // it runs on the current runtime, and never holds a request.
        if let Some(target) = &self.audit_store {
            tracing::info!(
                postgres = %target.describe(),
                table = %target.table().name(),
                origin = %self.origin,
                "shipping the audit trail to PostgreSQL"
            );
            self.shipper = Some(Arc::new(Shipper::start(
                target.clone(),
                &trail,
                &config.path,
                self.metrics.clone(),
            )));
        }
        self.trail = Some(Arc::new(trail));
        Ok(())
    }
}

/// `audit.checkpoint_*`: the signing key, read from its file or variable, and when to sign; `None`
/// when no key is configured. The error names the key, never its value.
fn checkpoints(audit: &AuditConfig) -> Result<Option<Checkpoints>, ConfigError> {
    let (env, file) = (
        audit.checkpoint_key_env.as_deref(),
        audit.checkpoint_key_file.as_deref(),
    );
    if env.is_none() && file.is_none() {
        return Ok(None);
    }
    let key = CheckpointKey::load(env, file).map_err(|message| ConfigError {
        key: if file.is_some() {
            "audit.checkpoint_key_file"
        } else {
            "audit.checkpoint_key_env"
        }
        .into(),
        message,
    })?;
    Ok(Some(Checkpoints {
        key: Arc::new(key),
        every: audit.checkpoint_every,
        interval: Duration::from_secs(audit.checkpoint_interval_s),
    }))
}

/// The cluster `[cluster]` describes, its URL read from the file or the environment when it
/// holds a password. Not connected yet: the first call connects.
fn cluster(config: &ClusterConfig, metrics: Arc<Metrics>) -> Result<Cluster, ConfigError> {
    let (key, url): (&str, Result<Secret, String>) =
        match (&config.url, &config.url_env, &config.url_file) {
            (Some(url), _, _) => ("cluster.url", Ok(Secret::new(url.as_str()))),
            (None, Some(name), _) => ("cluster.url_env", secret::from_env(name)),
            (None, None, Some(path)) => ("cluster.url_file", secret::from_file(path)),
            (None, None, None) => ("cluster.url", Err("is required".into())),
        };
    let error = |message: String| ConfigError {
        key: key.to_string(),
        message,
    };
    let url = url.map_err(error)?;
    Cluster::new(
        url.expose(),
        &config.key_prefix,
        Duration::from_millis(config.timeout_ms),
        config.on_unavailable,
        metrics,
    )
    .map_err(error)
}

/// This replica's name in the audit trail (SPEC §6 `origin`): `cluster.instance`, else the host
/// name.
fn origin(config: &Config) -> String {
    let instance = config.cluster.as_ref().map_or("", |c| c.instance.as_str());
    if !instance.is_empty() {
        return instance.to_owned();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "tokengate".into())
}

/// Reads the upstream access token from `access_token_file` or `access_token_env`.
fn held_credential(config: &Config) -> Result<Credential, ConfigError> {
    let upstream = &config.upstream;
    let (key, token): (&str, Result<Secret, String>) =
        match (&upstream.access_token_file, &upstream.access_token_env) {
            (Some(path), _) => ("upstream.access_token_file", secret::from_file(path)),
            (None, Some(name)) => ("upstream.access_token_env", secret::from_env(name)),
            (None, None) => (
                "upstream.access_token_env",
                secret::from_env(DEFAULT_TOKEN_ENV),
            ),
        };
    let error = |message: String| ConfigError {
        key: key.to_string(),
        message,
    };
    let token = token.map_err(error)?;
    Credential::held(&token, upstream.auth_scheme, upstream.user_id).map_err(error)
}

/// What [`Upstream::new`] reads, as comparable text (no secret: the token is not among it).
fn upstream_settings(config: &Config) -> String {
    let (upstream, rates) = (&config.upstream, &config.rate_limit);
    format!(
        "{} {:?} {} {:?} {} {}",
        upstream.url,
        upstream.mode,
        upstream.timeout_ms,
        upstream.ca_file,
        rates.upstream_requests_per_second,
        rates.dry_run
    )
}

/// The settings a reload cannot change (SPEC §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartOnly {
    listen: std::net::SocketAddr,
    admin_listen: std::net::SocketAddr,
    upstream_url: String,
    audit_path: std::path::PathBuf,
    audit_fsync: crate::config::Fsync,
    audit_rotate_bytes: u64,
    audit_max_record_bytes: usize,
    audit_queue_bytes: u64,
    audit_hmac_key_env: Option<String>,
    audit_hmac_key_file: Option<std::path::PathBuf>,
    log_format: crate::config::LogFormat,
    shutdown_grace_ms: u64,
    workers: Option<usize>,
    tls: bool,
    /// `[cluster]`'s keys, each as comparable text (the URL by its own value, never shown).
    cluster: Vec<(&'static str, String)>,
    /// `audit.checkpoint_*` (SPEC §6.3): the writer signs with the key it read at start.
    checkpoints: [(&'static str, String); 4],
    /// `[audit.postgres]`'s keys, as comparable text (where the URL comes from, never the URL).
    audit_postgres: String,
}

impl RestartOnly {
    fn of(config: &Config) -> RestartOnly {
        RestartOnly {
            listen: config.server.listen,
            admin_listen: config.server.admin_listen,
            upstream_url: config.upstream.url.clone(),
            // The trail writer is opened once: every `[audit]` key but `reads` and
            // `min_free_bytes` is read at start.
            audit_path: config.audit.path.clone(),
            audit_fsync: config.audit.fsync,
            audit_rotate_bytes: config.audit.rotate_bytes,
            audit_max_record_bytes: config.audit.max_record_bytes,
            audit_queue_bytes: config.audit.queue_bytes,
            audit_hmac_key_env: config.audit.hmac_key_env.clone(),
            audit_hmac_key_file: config.audit.hmac_key_file.clone(),
            log_format: config.log.format,
            shutdown_grace_ms: config.server.shutdown_grace_ms,
            workers: config.server.workers_setting,
            tls: config.server.tls.is_some(),
            checkpoints: [
                (
                    "audit.checkpoint_key_env",
                    format!("{:?}", config.audit.checkpoint_key_env),
                ),
                (
                    "audit.checkpoint_key_file",
                    format!("{:?}", config.audit.checkpoint_key_file),
                ),
                (
                    "audit.checkpoint_every",
                    config.audit.checkpoint_every.to_string(),
                ),
                (
                    "audit.checkpoint_interval_s",
                    config.audit.checkpoint_interval_s.to_string(),
                ),
            ],
            audit_postgres: format!(
                "{:?}",
                config
                    .audit
                    .postgres
                    .as_ref()
                    .map(|p| (&p.url_env, &p.url_file, &p.table))
            ),
            cluster: match &config.cluster {
                None => vec![("[cluster]", String::new())],
                Some(c) => vec![
                    ("[cluster]", "on".into()),
                    ("cluster.url", c.url.clone().unwrap_or_default()),
                    ("cluster.url_env", c.url_env.clone().unwrap_or_default()),
                    ("cluster.url_file", format!("{:?}", c.url_file)),
                    ("cluster.instance", c.instance.clone()),
                    ("cluster.key_prefix", c.key_prefix.clone()),
                    ("cluster.timeout_ms", c.timeout_ms.to_string()),
                    ("cluster.on_unavailable", format!("{:?}", c.on_unavailable)),
                ],
            },
        }
    }

    /// The keys whose value differs in `next`.
    fn changes(&self, next: &RestartOnly) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut differs = |key, yes: bool| {
            if yes {
                changed.push(key);
            }
        };
        differs("server.listen", self.listen != next.listen);
        differs(
            "server.admin_listen",
            self.admin_listen != next.admin_listen,
        );
        differs("upstream.url", self.upstream_url != next.upstream_url);
        differs("audit.path", self.audit_path != next.audit_path);
        differs("audit.fsync", self.audit_fsync != next.audit_fsync);
        differs(
            "audit.rotate_bytes",
            self.audit_rotate_bytes != next.audit_rotate_bytes,
        );
        differs(
            "audit.max_record_bytes",
            self.audit_max_record_bytes != next.audit_max_record_bytes,
        );
        differs(
            "audit.queue_bytes",
            self.audit_queue_bytes != next.audit_queue_bytes,
        );
        differs(
            "audit.hmac_key_env",
            self.audit_hmac_key_env != next.audit_hmac_key_env,
        );
        differs(
            "audit.hmac_key_file",
            self.audit_hmac_key_file != next.audit_hmac_key_file,
        );
        differs("log.format", self.log_format != next.log_format);
        differs(
            "server.shutdown_grace_ms",
            self.shutdown_grace_ms != next.shutdown_grace_ms,
        );
        differs("server.workers", self.workers != next.workers);
        differs("server.tls (turned on or off)", self.tls != next.tls);
        for ((key, was), (_, is)) in self.checkpoints.iter().zip(&next.checkpoints) {
            differs(key, was != is);
        }
        differs(
            "[audit.postgres]",
            self.audit_postgres != next.audit_postgres,
        );
        if self.cluster.len() != next.cluster.len() {
            changed.push("[cluster] (turned on or off)");
        } else {
            for ((key, was), (_, is)) in self.cluster.iter().zip(&next.cluster) {
                if was != is {
                    changed.push(key);
                }
            }
        }
        changed
    }
}
