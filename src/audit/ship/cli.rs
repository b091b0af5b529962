//! `tokengate audit verify --postgres` and `tokengate audit query --postgres` (SPEC §6.3): the
//! key and the table found as for the files, the exit codes of the file commands (0 intact, 1 a
//! bad row named by origin and `seq`, 2 a usage, configuration, key or connection problem).

use std::process::ExitCode;

use super::read;
use super::table::Table;
use super::target::Target;
use crate::audit::chain::AuditKey;
use crate::audit::query::Filter;
use crate::cli::{config_and_key, matched, plural, AuditQueryArgs, AuditVerifyArgs};
use crate::config::DEFAULT_AUDIT_TABLE;
use crate::secret;

/// The audit key and the central store `args` name: the key from `--key-file`/`--key-env` or
/// the configuration, the URL from `--pg-url-env` or the configuration's `[audit.postgres]`.
fn key_and_target(args: &AuditVerifyArgs) -> Result<(AuditKey, Target), ExitCode> {
    let path = &args.config.config;
    let (config, key) = config_and_key(args, args.pg_url_env.is_none())?;
    let postgres = config.as_ref().and_then(|c| c.audit.postgres.as_ref());
    let target = match (&args.pg_url_env, postgres) {
        (Some(var), _) => {
            let table = postgres.map_or(DEFAULT_AUDIT_TABLE, |p| p.table.as_str());
            secret::from_env(var).and_then(|url| {
                Target::new(url.expose(), Table::new(table).ok_or("bad table name")?)
                    .map_err(|e| format!("--pg-url-env {var} {e}"))
            })
        }
        (None, Some(postgres)) => {
            Target::resolve(postgres).map_err(|(key, message)| format!("{key} {message}"))
        }
        (None, None) => Err(format!(
            "{} has no [audit.postgres]: give --pg-url-env VAR (the variable holding the PostgreSQL URL)",
            path.display()
        )),
    };
    let target = target.map_err(|error| {
        eprintln!("tokengate: {error}");
        ExitCode::from(2)
    })?;
    Ok((key, target))
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("tokengate: cannot start the runtime: {error}");
            ExitCode::FAILURE
        })
}

/// `audit verify --postgres`: each origin with its count and head on standard output; each
/// broken origin's first bad row on standard error.
pub fn verify(args: &AuditVerifyArgs) -> ExitCode {
    let (key, target) = match key_and_target(args) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(read::verify(&target, &key)) {
        Ok(results) => verdict(&target, results),
        Err(error) => {
            eprintln!(
                "tokengate: cannot read the central store {} at {}: {error}",
                target.table().name(),
                target.describe()
            );
            ExitCode::from(2)
        }
    }
}

fn verdict(
    target: &Target,
    results: Vec<Result<super::check::OriginSummary, super::check::CheckError>>,
) -> ExitCode {
    let (mut intact, mut records, mut broken) = (0u64, 0u64, 0u64);
    for result in &results {
        match result {
            Ok(summary) => {
                intact += 1;
                records += summary.records;
                println!(
                    "origin {}: intact, {}, last seq {}, head {}",
                    summary.origin,
                    plural(summary.records, "record"),
                    summary.last_seq,
                    summary.head
                );
            }
            Err(failure) => {
                broken += 1;
                eprintln!("tokengate: central store broken at {failure}");
            }
        }
    }
    let store = format!("{} at {}", target.table().name(), target.describe());
    if broken > 0 {
        eprintln!(
            "central store {store}: {} broken, {} intact",
            plural(broken, "origin"),
            plural(intact, "origin")
        );
        return ExitCode::FAILURE;
    }
    println!(
        "central store {store} intact: {}, {}",
        plural(intact, "origin"),
        plural(records, "record")
    );
    ExitCode::SUCCESS
}

/// `audit query --postgres`: the changes on standard output, merged by time; the verdict on
/// standard error, as for the files.
pub fn query(args: &AuditQueryArgs, filter: Filter) -> ExitCode {
    let (key, target) = match key_and_target(&args.trail) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(read::query(&target, &key, filter, args.format)) {
        Ok(report) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            if let Err(error) = out.write_all(&report.output).and_then(|()| out.flush()) {
                if error.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::from(141);
                }
                eprintln!("tokengate: cannot write the output: {error}");
                return ExitCode::FAILURE;
            }
            for note in &report.notes {
                eprintln!("tokengate: note: {note}");
            }
            let checked: u64 = report.origins.iter().map(|o| o.records).sum();
            let matched = matched(report.printed, report.unknown);
            eprintln!(
                "central store {} intact as read: {} checked in {}; {matched}",
                target.table().name(),
                plural(checked, "record"),
                plural(report.origins.len() as u64, "origin"),
            );
            ExitCode::SUCCESS
        }
        Err(failure @ super::check::CheckError::Bad { .. }) => {
            eprintln!("tokengate: central store broken at {failure}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!(
                "tokengate: cannot query the central store {} at {}: {error}",
                target.table().name(),
                target.describe()
            );
            ExitCode::from(2)
        }
    }
}
