//! The command line (SPEC §7): `serve`, `check`, `keys new`, `audit verify`, `audit query`,
//! `audit repair`, `keys checkpoint`, `emulator`, `health`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::audit::chain::AuditKey;
use crate::audit::checkpoint::{write_key_pair, PublicKey};
use crate::audit::query::{self, Filter, Format, Stop};
use crate::audit::repair::{repair, Repair, RepairError};
use crate::audit::signed::{verify_signed, Signatures};
use crate::audit::verify::{trail_files, verify};
use crate::caller::{key_digest_hex, new_key};
use crate::config::{valid_client_name, Config, ConfigErrors, Mode};
use crate::emulator::{Emulator, EmulatorConfig, Era};
use crate::gateway::Gateway;
use crate::secret::Secret;
use crate::token::batch::BatchMode;
use crate::{server, telemetry};

/// tokengate: a gateway for the token API of new-api-compatible LLM aggregators.
#[derive(Debug, Parser)]
#[command(name = "tokengate", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ConfigArg),
    /// Load a configuration, resolve its secrets and files, and print a summary (exit 1 on any fault).
    Check(ConfigArg),
    /// Manage gateway keys.
    Keys {
        /// What to do with keys.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Work with the audit trail.
    Audit {
        /// What to do with the trail.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run the built-in new-api emulator alone: an in-memory upstream to try the gateway against.
    Emulator(EmulatorArgs),
    /// Show the whole product in one command: the emulator and the gateway on loopback, a
    /// walk-through of every kind of request with what the audit trail recorded, then a verify.
    Demo,
    /// Ask a running gateway's admin listener for /healthz (exit 0 when healthy); for container health checks.
    Health(HealthArgs),
}

/// `--config`
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(
        long,
        env = "TOKENGATE_CONFIG",
        default_value = "config/tokengate.toml"
    )]
    pub config: PathBuf,
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new random gateway key and print it with the `[[clients]]` lines that admit it.
    New {
        /// The client name to put in the `[[clients]]` entry.
        #[arg(long, default_value = "new-client")]
        client: String,
    },
    /// Make the Ed25519 key pair that signs audit checkpoints (SPEC §6.3): writes
    /// `checkpoint.key` (PKCS#8 v2 PEM, mode 0600: the gateway's `audit.checkpoint_key_file`) and
    /// `checkpoint.pub` (SPKI PEM: for auditors, `audit verify --public-key`). Existing files are
    /// never overwritten.
    Checkpoint {
        /// The directory to write the two files into (created when missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every hash, `prev` link and `seq` of the trail; print the record count and the head
    /// hash (exit 0 only for an intact trail, 1 at the first bad record, 2 on a usage, config or
    /// key problem). With --public-key, also every signed checkpoint (SPEC §6.3), with or without
    /// the audit key.
    Verify(AuditVerifyCommand),
    /// Print the changes the trail records, one line per request and token id (an intent and its
    /// outcome paired), oldest first, filtered; the chain is checked while it is read (exit 0
    /// when the trail is intact, whatever matched; 1 at the first bad record, which is named; 2 on
    /// a usage, config or key problem).
    Query(AuditQueryArgs),
    /// Cut a torn last line (a crash in the middle of a write) off the live file, keeping the
    /// bytes in `<audit.path>.torn`, so that `serve` resumes the chain; nothing else is ever
    /// rewritten (exit 0 when the trail then ends in a record that verifies, or nothing was torn;
    /// 1 when it does not; 2 on a usage, config or key problem).
    Repair(ConfigArg),
}

/// `audit verify` arguments.
#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// The configuration file; read only when the key or the files must come from its `[audit]`.
    #[command(flatten)]
    pub config: ConfigArg,
    /// A file holding the audit key (instead of `audit.hmac_key_file`/`audit.hmac_key_env`).
    #[arg(long, value_name = "FILE", conflicts_with = "key_env")]
    pub key_file: Option<PathBuf>,
    /// The environment variable holding the audit key (instead of the configuration's).
    #[arg(long, value_name = "VAR")]
    pub key_env: Option<String>,
    /// The trail files, oldest first; by default `<audit.path>.k … <audit.path>.n` then
    /// `<audit.path>` (k the oldest rotated file left: older ones may have been archived).
    #[arg(value_name = "FILES")]
    pub files: Vec<PathBuf>,
    /// Read the central store instead of files: every origin's rows in the PostgreSQL table of
    /// `[audit.postgres]` (SPEC §6.3).
    #[arg(long, conflicts_with = "files")]
    pub postgres: bool,
    /// With --postgres: the environment variable holding the PostgreSQL URL (instead of the
    /// configuration's `[audit.postgres]`).
    #[arg(long, value_name = "VAR", requires = "postgres")]
    pub pg_url_env: Option<String>,
}

/// `audit verify` arguments: the trail and its key, and the public key of its checkpoints.
#[derive(Debug, Args)]
pub struct AuditVerifyCommand {
    /// The trail and its key.
    #[command(flatten)]
    pub trail: AuditVerifyArgs,
    /// The checkpoint public key (SPKI PEM, `checkpoint.pub`): also check every signed
    /// checkpoint (SPEC §6.3). With neither --key-file nor --key-env, and FILES given, no audit
    /// key is used at all: links, `seq` and the checkpoints are checked and record hashes are not
    /// recomputed. Without FILES, the configuration's audit key is used when it can be read.
    /// Not with --postgres (the table's chains are checked with the audit key).
    #[arg(long, value_name = "FILE", conflicts_with = "postgres")]
    pub public_key: Option<PathBuf>,
}

/// `audit query` arguments.
#[derive(Debug, Args)]
pub struct AuditQueryArgs {
    /// The trail and its key, as for `audit verify`.
    #[command(flatten)]
    pub trail: AuditVerifyArgs,
    /// Only changes that name this token id.
    #[arg(long, value_name = "ID")]
    pub token: Option<u64>,
    /// Only changes made by this client (the `[[clients]]` name).
    #[arg(long, value_name = "NAME")]
    pub client: Option<String>,
    /// Only changes of this operation.
    #[arg(long, value_name = "OP", value_parser = clap::builder::PossibleValuesParser::new(
        crate::route::Operation::ALL.map(crate::route::Operation::as_str)
    ))]
    pub op: Option<String>,
    /// Only changes with this outcome (`unknown`: an intent with no outcome record).
    #[arg(long, value_name = "O", value_parser = clap::builder::PossibleValuesParser::new(query::RESULTS))]
    pub outcome: Option<String>,
    /// Only changes that are not a forwarded success: rejected, upstream_error, timeout,
    /// `upstream_success` false or an error status, or no outcome record (result unknown).
    #[arg(long)]
    pub failed: bool,
    /// Only changes at or after T: RFC 3339 (2026-11-22T15:20:01Z) or that long before now (45s,
    /// 30m, 12h, 7d).
    #[arg(long, value_name = "T", value_parser = time_arg)]
    pub since: Option<i64>,
    /// Only changes before T (as for --since).
    #[arg(long, value_name = "T", value_parser = time_arg)]
    pub until: Option<i64>,
    /// One line of text per change, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// `--since`/`--until`: milliseconds since the Unix epoch (a span counted back from now).
fn time_arg(text: &str) -> Result<i64, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    query::parse_time(text, now)
}

/// `emulator` arguments.
#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Where to listen (new-api's own default port is 3000).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The system access token the emulated account accepts.
    #[arg(long, env = "TOKENGATE_EMULATOR_TOKEN", hide_env_values = true)]
    access_token: Secret,
    /// The emulated account's user id (compared with New-Api-User).
    #[arg(long, default_value_t = 1)]
    user_id: i64,
    /// Which new-api era to emulate: e2 (New-Api-User required) or e3 (newest auth).
    #[arg(long, default_value = "e2")]
    era: Era,
    /// Emulate new-api's own rate limits (bare 429 with an empty body when exceeded).
    #[arg(long)]
    rate_limits: bool,
    /// Emulate a fork whose tokens carry a `billing_type` string, which a full update resets
    /// to "" when the body lacks it.
    #[arg(long)]
    fork_billing_type: bool,
}

/// `health` arguments.
#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The admin address to ask, instead of `server.admin_listen` from the configuration.
    #[arg(long)]
    admin: Option<SocketAddr>,
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(&args.config),
        Command::Check(args) => check(&args.config),
        Command::Keys {
            command: KeysCommand::New { client },
        } => keys_new(&client),
        Command::Keys {
            command: KeysCommand::Checkpoint { out },
        } => keys_checkpoint(&out),
        Command::Audit {
            command: AuditCommand::Verify(args),
        } => audit_verify(&args),
        Command::Audit {
            command: AuditCommand::Query(args),
        } => audit_query(&args),
        Command::Audit {
            command: AuditCommand::Repair(args),
        } => audit_repair(&args.config),
        Command::Emulator(args) => emulator(args),
        Command::Demo => demo(),
        Command::Health(args) => health(args),
    }
}

/// Prints configuration faults, one per line, each naming its key.
pub(crate) fn report(path: &Path, errors: &ConfigErrors) {
    eprintln!(
        "tokengate: the configuration {} is not valid:",
        path.display()
    );
    for error in &errors.0 {
        eprintln!("  {error}");
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn serve(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            report(path, &errors);
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log.format);
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tokengate: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The Redis connection of `[cluster]` is made by a task of this runtime.
    let _entered = runtime.enter();
    let mut gateway = match Gateway::build(&config) {
        Ok(gateway) => gateway,
        Err(errors) => {
            report(path, &errors);
            return ExitCode::from(2);
        }
    };
    if let Err(errors) = gateway.open_trail(&config.audit) {
        report(path, &errors);
        return ExitCode::from(2);
    }
    // A test hook (tests/audit_faults.rs): a stuck disk, without the privileges fsfreeze needs.
    if let (Some(file), Some(trail)) = (
        std::env::var_os("TOKENGATE_TEST_AUDIT_STALL_FILE"),
        &gateway.trail,
    ) {
        trail.faults().stall_while_exists(file.into());
    }
    let workers = config.server.workers();
    runtime.block_on(async {
        let api = server::bind_workers(config.server.listen, workers)
            .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen));
        let admin = TcpListener::bind(config.server.admin_listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.server.admin_listen));
        let (api, admin) = match (api, admin) {
            (Ok(api), Ok(admin)) => (api, admin),
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!("{error}");
                return ExitCode::FAILURE;
            }
        };
        let listen = api
            .first()
            .and_then(|api| api.local_addr().ok())
            .unwrap_or(config.server.listen);
        tracing::info!(
            listen = %listen,
            admin_listen = %admin.local_addr().map_or(config.server.admin_listen, |a| a),
            upstream = %gateway.upstream.url(),
            audit = %config.audit.path.display(),
            mode = ?config.upstream.mode,
            clients = config.clients.len(),
            workers,
            "tokengate listening"
        );
        let grace = Duration::from_millis(config.server.shutdown_grace_ms);
        let reload_from = Some(path.to_path_buf());
        match server::run_workers(gateway, api, admin, shutdown_signal(), grace, reload_from).await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        }
    })
}

/// Resolves on `SIGTERM` or `SIGINT` (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn check(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            report(path, &errors);
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tokengate: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The Redis connection of `[cluster]` is made by a task of this runtime.
    let _entered = runtime.enter();
    let gateway = match Gateway::build(&config) {
        Ok(gateway) => gateway,
        Err(errors) => {
            report(path, &errors);
            return ExitCode::FAILURE;
        }
    };
    let upstream = &config.upstream;
    println!("{}: OK", path.display());
    println!(
        "  listen         {}  (admin {})",
        config.server.listen, config.server.admin_listen
    );
    let batch = match upstream.batch_update {
        BatchMode::Fanout => format!("fanout, {} at a time", config.limits.batch_concurrency),
        BatchMode::Native => "native".into(),
    };
    println!(
        "  upstream       {}  (timeout {} ms, batch update {batch})",
        gateway.upstream.url(),
        upstream.timeout_ms,
    );
    if let Some(tls) = &config.server.tls {
        let clients = match (&tls.client_ca_file, tls.client_auth.unwrap_or_default()) {
            (None, _) => "no client certificates".to_string(),
            (Some(ca), auth) => format!(
                "client certificates from {} {}",
                ca.display(),
                match auth {
                    crate::config::ClientAuth::Required => "required",
                    crate::config::ClientAuth::Optional => "optional",
                }
            ),
        };
        println!(
            "  tls            {} (TLS 1.2/1.3, h2 and http/1.1), {clients}",
            tls.cert_file.display()
        );
    }
    let audit = &config.audit;
    let key_source = match (&audit.hmac_key_file, &audit.hmac_key_env) {
        (Some(file), _) => format!("file {}", file.display()),
        (None, Some(env)) => format!("environment variable {env}"),
        (None, None) => format!(
            "environment variable {}",
            crate::config::DEFAULT_AUDIT_KEY_ENV
        ),
    };
    println!(
        "  audit          {}  (fsync {}, rotate at {} bytes, reads {}), key from {key_source}",
        audit.path.display(),
        match audit.fsync {
            crate::config::Fsync::Always => "always",
            crate::config::Fsync::Interval => "every 100 ms",
        },
        audit.rotate_bytes,
        if audit.reads {
            "audited"
        } else {
            "not audited"
        },
    );
    println!(
        "                 records at most {} bytes (larger values omitted), at most {} bytes of them waiting for the disk; not ready below {} bytes free",
        audit.max_record_bytes, audit.queue_bytes, audit.min_free_bytes
    );
    match &gateway.checkpoints {
        Some(checkpoints) => {
            let source = match (&audit.checkpoint_key_file, &audit.checkpoint_key_env) {
                (Some(file), _) => format!("file {}", file.display()),
                (None, Some(env)) => format!("environment variable {env}"),
                (None, None) => "nowhere".into(),
            };
            println!(
                "  checkpoints    signed with the Ed25519 key from {source} (public key {}): every {} records, at least every {} s when records were written, and at shutdown; the key is read at start (a change needs a restart)",
                checkpoints.key.public_key().to_base64(),
                checkpoints.every,
                checkpoints.interval.as_secs()
            );
        }
        None => println!(
            "  checkpoints    none (no audit.checkpoint_key_file or audit.checkpoint_key_env)"
        ),
    }
    match upstream.mode {
        Mode::Hold => {
            let source = match (&upstream.access_token_file, &upstream.access_token_env) {
                (Some(file), _) => format!("file {}", file.display()),
                (None, Some(env)) => format!("environment variable {env}"),
                (None, None) => {
                    format!("environment variable {}", crate::config::DEFAULT_TOKEN_ENV)
                }
            };
            println!(
                "  credential     held: access token from {source}, sent {}, New-Api-User {}",
                match upstream.auth_scheme {
                    crate::config::AuthScheme::Raw => "raw",
                    crate::config::AuthScheme::Bearer => "as `Bearer <token>`",
                },
                upstream.user_id
            );
            let rates = &config.rate_limit;
            println!(
                "  rate limits    per client: reads {}/min, writes {}/min, burst {}; upstream {}/s{}",
                rates.reads_per_minute,
                rates.writes_per_minute,
                rates.burst,
                rates.upstream_requests_per_second,
                if rates.dry_run {
                    " (dry run: nothing is refused)"
                } else {
                    ""
                }
            );
            println!("  clients        {}", config.clients.len());
            for client in &config.clients {
                let allow: Vec<&str> = client.allow.iter().map(|op| op.as_str()).collect();
                let identified = match (&client.key_sha256, &client.cert_subject) {
                    (Some(_), Some(subject)) => format!("key and certificate `{subject}`"),
                    (None, Some(subject)) => format!("certificate `{subject}`"),
                    _ => "key".to_string(),
                };
                println!(
                    "    {:<20} by {identified}; allow: {}",
                    client.name,
                    allow.join(", ")
                );
                let rules = client_rules(client);
                if !rules.is_empty() {
                    println!("    {:<20} {}", "", rules.join(", "));
                }
            }
        }
        Mode::Passthrough => {
            println!("  credential     passthrough: each caller's own upstream token is forwarded");
            if !config.clients.is_empty() {
                println!("  warning        [[clients]] are not used in passthrough mode");
            }
        }
    }
    if let Some(target) = &gateway.audit_store {
        // Like Redis: an outage is reported, not refused (records wait in the local trail).
        let answer = runtime.block_on(async { target.connect().await.map(drop) });
        println!(
            "  audit store    PostgreSQL at {}, table {} (URL from {}): {}",
            target.describe(),
            target.table().name(),
            match config
                .audit
                .postgres
                .as_ref()
                .map(|p| (&p.url_env, &p.url_file))
            {
                Some((Some(env), _)) => format!("environment variable {env}"),
                Some((None, Some(file))) => format!("file {}", file.display()),
                _ => "?".into(),
            },
            match answer {
                Ok(()) => "answers".to_string(),
                Err(error) => format!(
                    "does NOT answer now ({error}): records wait in the local trail until it does"
                ),
            }
        );
    }
    if let (Some(cluster), Some(settings)) = (&gateway.cluster, &config.cluster) {
        // `check` connects to Redis and says whether it answers (SPEC §11); an outage is not a
        // fault of the file (a replica serves through one), so it is reported, not refused.
        let answer = runtime.block_on(cluster.ping()).map_err(|e| e.to_string());
        println!(
            "  cluster        shared state in Redis (instance {}, key prefix {:?}, timeout {} ms, on_unavailable {:?}): {}",
            gateway.origin,
            settings.key_prefix,
            settings.timeout_ms,
            settings.on_unavailable,
            match answer {
                Ok(()) => "answers".to_string(),
                Err(error) => format!("does NOT answer now ({error}): limits fall back, locked changes are refused until it does"),
            }
        );
    }
    ExitCode::SUCCESS
}

/// The policy and rate overrides of a client, as `check` prints them.
fn client_rules(client: &crate::config::ClientConfig) -> Vec<String> {
    let mut rules = Vec::new();
    let list = |items: &[String]| {
        items
            .iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if let Some(max) = client.max_remain_quota {
        rules.push(format!("max_remain_quota {max}"));
    }
    if client.allow_unlimited_quota {
        rules.push("allow_unlimited_quota".into());
    }
    if let Some(groups) = &client.groups {
        rules.push(format!("groups [{}]", list(groups)));
    }
    if let Some(models) = &client.models {
        rules.push(format!("models [{}]", list(models)));
    }
    if let Some(days) = client.max_expiry_days {
        rules.push(format!("max_expiry_days {days}"));
    }
    if let Some(prefix) = &client.name_prefix {
        rules.push(format!("name_prefix {prefix:?}"));
    }
    for (key, value) in [
        ("reads_per_minute", client.reads_per_minute),
        ("writes_per_minute", client.writes_per_minute),
        ("burst", client.burst),
    ] {
        if let Some(value) = value {
            rules.push(format!("{key} {value}"));
        }
    }
    rules
}

fn keys_new(client: &str) -> ExitCode {
    if !valid_client_name(client) {
        eprintln!(
            "tokengate: --client must be 1 to 64 characters of letters, digits, `.`, `_` or `-`"
        );
        return ExitCode::from(2);
    }
    let key = match new_key() {
        Ok(key) => key,
        Err(error) => {
            eprintln!("tokengate: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("# Gateway key for client \"{client}\". Hand it to the caller over a secure channel:");
    println!("# it is shown once, and tokengate keeps only its SHA-256 digest.");
    println!("{key}");
    println!();
    println!("# Add to the configuration, then choose the operations the caller may use:");
    println!("[[clients]]");
    println!("name = \"{client}\"");
    println!("key_sha256 = \"{}\"", key_digest_hex(&key));
    println!("allow = [\"list\", \"search\", \"get\", \"create\", \"update\", \"batch_update\", \"delete\", \"batch_delete\"]");
    ExitCode::SUCCESS
}

/// The configuration, when `needs_config` or no `--key-file`/`--key-env` is given, and the audit
/// key: from `--key-file`/`--key-env`, else the configuration's. A problem is reported here and
/// comes back as exit code 2.
pub(crate) fn config_and_key(
    args: &AuditVerifyArgs,
    needs_config: bool,
) -> Result<(Option<Config>, AuditKey), ExitCode> {
    let path = &args.config.config;
    let config = if needs_config || (args.key_file.is_none() && args.key_env.is_none()) {
        match Config::load(path) {
            Ok(config) => Some(config),
            Err(errors) => {
                report(path, &errors);
                return Err(ExitCode::from(2));
            }
        }
    } else {
        None
    };
    let key = match (&args.key_file, &args.key_env, &config) {
        (Some(file), _, _) => AuditKey::load(None, Some(file)),
        (None, Some(env), _) => AuditKey::load(Some(env), None),
        (None, None, Some(config)) => AuditKey::load(
            config.audit.hmac_key_env.as_deref(),
            config.audit.hmac_key_file.as_deref(),
        ),
        (None, None, None) => Err("no audit key: give --key-file or --key-env".to_owned()),
    };
    match key {
        Ok(key) => Ok((config, key)),
        Err(error) => {
            eprintln!("tokengate: {error}");
            Err(ExitCode::from(2))
        }
    }
}

/// The key and the files of the trail that `args` name, as `audit verify` and `audit query` find
/// them (`verb` says which, in messages); a problem is reported here and comes back as the exit
/// code to return.
fn trail_and_key(args: &AuditVerifyArgs, verb: &str) -> Result<(AuditKey, Vec<PathBuf>), ExitCode> {
    let (config, key) = config_and_key(args, args.files.is_empty())?;
    let files = match (&config, args.files.is_empty()) {
        (Some(config), true) => configured_files(config, verb)?,
        _ => args.files.clone(),
    };
    Ok((key, files))
}

/// What `audit query` says of its output on standard error: how many changes matched, and how
/// many of those have no outcome record yet.
pub(crate) fn matched(printed: u64, unknown: u64) -> String {
    let mut matched = if printed == 1 {
        "1 change matches".to_owned()
    } else {
        format!("{printed} changes match")
    };
    if unknown > 0 {
        matched.push_str(&format!(
            " ({unknown} with an unknown result: an intent with no outcome record)"
        ));
    }
    matched
}

/// `n word` or `n words`.
pub(crate) fn plural(n: u64, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

fn audit_verify(command: &AuditVerifyCommand) -> ExitCode {
    let args = &command.trail;
    if args.postgres {
        return crate::audit::ship::cli::verify(args);
    }
    if let Some(public) = &command.public_key {
        return audit_verify_signed(args, public);
    }
    let (key, files) = match trail_and_key(args, "verify") {
        Ok(found) => found,
        Err(code) => return code,
    };
    match verify(&files, &key) {
        Ok(summary) => {
            print_summary(&summary, None);
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("tokengate: audit trail broken at {failure}");
            ExitCode::FAILURE
        }
    }
}

/// `audit verify --public-key`: every checkpoint checked with the public key (SPEC §6.3), and the
/// records with the audit key when there is one. Which key is used: `--key-file`/`--key-env`
/// when given; none when FILES are given without them (an auditor's run: no configuration is
/// read); otherwise the configuration's, when it can be read, else none, and verify says why.
fn audit_verify_signed(args: &AuditVerifyArgs, public_path: &Path) -> ExitCode {
    let public = match PublicKey::load(public_path) {
        Ok(public) => public,
        Err(error) => {
            eprintln!("tokengate: checkpoint public key: {error}");
            return ExitCode::from(2);
        }
    };
    let key_flags = args.key_file.is_some() || args.key_env.is_some();
    let (key, files, no_key) = if key_flags {
        match trail_and_key(args, "verify") {
            Ok((key, files)) => (Some(key), files, None),
            Err(code) => return code,
        }
    } else if !args.files.is_empty() {
        (
            None,
            args.files.clone(),
            Some("no --key-file or --key-env given".to_owned()),
        )
    } else {
        let path = &args.config.config;
        let config = match Config::load(path) {
            Ok(config) => config,
            Err(errors) => {
                report(path, &errors);
                return ExitCode::from(2);
            }
        };
        let files = match configured_files(&config, "verify") {
            Ok(files) => files,
            Err(code) => return code,
        };
        match AuditKey::load(
            config.audit.hmac_key_env.as_deref(),
            config.audit.hmac_key_file.as_deref(),
        ) {
            Ok(key) => (Some(key), files, None),
            Err(error) => (None, files, Some(error)),
        }
    };
    let (summary, signatures) = match verify_signed(&files, key.as_ref(), &public) {
        Ok(found) => found,
        Err(failure) => {
            eprintln!("tokengate: audit trail broken at {failure}");
            return ExitCode::FAILURE;
        }
    };
    print_summary(&summary, no_key.as_deref());
    print_signatures(&signatures, &public);
    ExitCode::SUCCESS
}

/// What `audit verify` says of an intact trail: its counts (and, without the audit key, `why`
/// record hashes were not recomputed), where it starts when older files are gone, and its head.
fn print_summary(summary: &crate::audit::verify::Summary, no_key: Option<&str>) {
    let counts = format!(
        "{} in {}, last seq {}",
        plural(summary.records, "record"),
        plural(summary.files as u64, "file"),
        summary.last_seq
    );
    match no_key {
        None => println!("audit trail intact: {counts}"),
        Some(why) => {
            println!("audit trail links intact: {counts}");
            println!(
                "record hashes were not recomputed (no audit key: {why}): links, seq and signed checkpoints were checked"
            );
        }
    }
    // Older files may be archived or deleted (SPEC §6): say so, so that an auditor who expects the
    // whole trail sees that its beginning is not here.
    if summary.first_seq > 1 {
        println!(
            "starts at seq {}; earlier files are not present",
            summary.first_seq
        );
    }
    println!("head {}", summary.head);
}

/// What `audit verify --public-key` says of a trail's checkpoints.
fn print_signatures(signatures: &Signatures, public: &PublicKey) {
    match signatures.last_signed {
        Some(last) => println!(
            "checkpoints: {} signed by {}, all valid; last signed seq {last}",
            signatures.checkpoints,
            public.to_base64()
        ),
        None => println!("checkpoints: none: no record of this trail is signed"),
    }
    if let Some(seq) = signatures.digest_unchecked {
        println!(
            "the checkpoint at seq {seq} covers lines before the first record present: its signature was checked, its lines_sha256 could not be"
        );
    }
    if signatures.unsigned > 0 {
        let after = if signatures.last_signed.is_some() {
            "after the last checkpoint"
        } else {
            "in the trail"
        };
        println!(
            "{} {after} not yet signed",
            plural(signatures.unsigned, "record")
        );
    }
}

/// The files of the trail the configuration names (`verb` says what for, in messages).
fn configured_files(config: &Config, verb: &str) -> Result<Vec<PathBuf>, ExitCode> {
    let live = &config.audit.path;
    if live.as_os_str() == "-" {
        eprintln!("tokengate: audit.path is `-` (standard output): name the files to {verb}");
        return Err(ExitCode::from(2));
    }
    trail_files(live).map_err(|error| {
        eprintln!("tokengate: audit trail {}: {error}", live.display());
        ExitCode::FAILURE
    })
}

/// `keys checkpoint --out DIR`: the key pair that signs checkpoints. The private key goes to its
/// file only, never to the output.
fn keys_checkpoint(out: &Path) -> ExitCode {
    let (key, public_path, public) = match write_key_pair(out) {
        Ok(written) => written,
        Err(error) => {
            eprintln!("tokengate: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "wrote {} (the private key, mode 0600: keep it beside the gateway, as secret as the audit key)",
        key.display()
    );
    println!(
        "wrote {} (the public key: hand it to auditors)",
        public_path.display()
    );
    println!("public key {}", public.to_base64());
    println!();
    println!("# Add to [audit] in the configuration (the key is read at start):");
    println!("checkpoint_key_file = {:?}", key.display().to_string());
    println!("# Anyone can then check the trail without the audit key:");
    println!(
        "#   tokengate audit verify --public-key {} FILES…",
        public_path.display()
    );
    ExitCode::SUCCESS
}

/// `audit query`: the changes go to standard output; the verdict on the trail (intact, with its
/// record count, or broken at a named record) and any note on the output go to standard error,
/// so that the output holds changes only.
fn audit_query(args: &AuditQueryArgs) -> ExitCode {
    if args.trail.postgres {
        return crate::audit::ship::cli::query(args, query_filter(args));
    }
    let (key, files) = match trail_and_key(&args.trail, "query") {
        Ok(found) => found,
        Err(code) => return code,
    };
    let filter = query_filter(args);
    let out = std::io::BufWriter::with_capacity(64 << 10, std::io::stdout().lock());
    match query::run(&files, &key, filter, args.format, out) {
        Ok(report) => {
            for note in &report.notes {
                eprintln!("tokengate: note: {note}");
            }
            let summary = &report.summary;
            let mut verdict = format!(
                "audit trail intact: {} in {}, last seq {}",
                plural(summary.records, "record"),
                plural(summary.files as u64, "file"),
                summary.last_seq
            );
            if summary.first_seq > 1 {
                verdict.push_str(&format!(
                    " (starts at seq {}; earlier files are not present)",
                    summary.first_seq
                ));
            }
            let matched = matched(report.printed, report.unknown);
            eprintln!("{verdict}; {matched}");
            ExitCode::SUCCESS
        }
        Err(Stop::Broken(failure)) => {
            eprintln!("tokengate: audit trail broken at {failure}");
            ExitCode::FAILURE
        }
        // `| head`: the reader has gone; end as a process killed by SIGPIPE would.
        Err(Stop::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::from(141)
        }
        Err(Stop::Output(error)) => {
            eprintln!("tokengate: cannot write the output: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The filters of `audit query`'s arguments.
fn query_filter(args: &AuditQueryArgs) -> Filter {
    Filter {
        token: args.token,
        client: args.client.clone(),
        op: args.op.clone(),
        outcome: args.outcome.clone(),
        failed: args.failed,
        since: args.since,
        until: args.until,
    }
}

fn audit_repair(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            report(path, &errors);
            return ExitCode::from(2);
        }
    };
    let audit = &config.audit;
    if audit.path.as_os_str() == "-" {
        eprintln!("tokengate: audit.path is `-` (standard output): there is no file to repair");
        return ExitCode::from(2);
    }
    let key = match AuditKey::load(
        audit.hmac_key_env.as_deref(),
        audit.hmac_key_file.as_deref(),
    ) {
        Ok(key) => key,
        Err(error) => {
            eprintln!("tokengate: {error}");
            return ExitCode::from(2);
        }
    };
    let live = audit.path.display();
    match repair(&audit.path, &key) {
        Ok(Repair::NoLiveFile) => {
            println!("nothing to repair: {live} is missing or empty");
            ExitCode::SUCCESS
        }
        Ok(Repair::Intact { seq }) => {
            println!(
                "nothing to repair: the last line of {live} is a whole record (seq {seq}) that verifies"
            );
            ExitCode::SUCCESS
        }
        Ok(Repair::Cut {
            bytes,
            line,
            why,
            kept_in,
            resumes_after,
        }) => {
            println!(
                "cut {bytes} bytes off {live}: line {line}, a torn write ({why}); kept in {}",
                kept_in.display()
            );
            match resumes_after {
                Some((seq, hash)) => println!(
                    "the trail now ends at seq {seq} (hash {hash}), which verifies: serve resumes the chain at seq {}",
                    seq + 1
                ),
                None => println!("the trail now holds no record: serve starts it at seq 1"),
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tokengate: {error}");
            match error {
                RepairError::Io(_) => ExitCode::from(2),
                RepairError::NotTorn(_) | RepairError::StillBroken { .. } => ExitCode::FAILURE,
            }
        }
    }
}

fn emulator(args: EmulatorArgs) -> ExitCode {
    telemetry::init(crate::config::LogFormat::Text);
    let mut config = EmulatorConfig::new(args.access_token.expose(), args.user_id);
    config.era = args.era;
    config.rate_limits = args.rate_limits;
    config.fork_billing_type = args.fork_billing_type;
    let result = runtime().and_then(|runtime| {
        runtime.block_on(async {
            let listener = TcpListener::bind(args.listen).await?;
            tracing::info!(
                listen = %listener.local_addr()?,
                user_id = args.user_id,
                era = %args.era,
                rate_limits = args.rate_limits,
                "new-api emulator listening"
            );
            Emulator::new(config)
                .serve(listener, shutdown_signal())
                .await
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tokengate: emulator on {}: {error}", args.listen);
            ExitCode::FAILURE
        }
    }
}

fn demo() -> ExitCode {
    let result = runtime()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|runtime| runtime.block_on(crate::demo::run()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tokengate demo: {error}");
            ExitCode::FAILURE
        }
    }
}

fn health(args: HealthArgs) -> ExitCode {
    let addr = match args.admin {
        Some(addr) => addr,
        None => match Config::load(&args.config.config) {
            Ok(config) => config.server.admin_listen,
            Err(errors) => {
                report(&args.config.config, &errors);
                return ExitCode::FAILURE;
            }
        },
    };
    // A listener on all interfaces is asked on loopback.
    let addr = if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    };
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head.starts_with(b"HTTP/1.1 200"))
    };
    let result = match runtime() {
        Ok(runtime) => {
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(3), probe).await })
        }
        Err(error) => {
            eprintln!("tokengate: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => {
            eprintln!("tokengate: {addr} answered /healthz with an error status");
            ExitCode::FAILURE
        }
        Ok(Err(error)) => {
            eprintln!("tokengate: cannot ask {addr}: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("tokengate: {addr} did not answer within 3 s");
            ExitCode::FAILURE
        }
    }
}
