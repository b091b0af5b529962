//! Where the central store is: the PostgreSQL URL (a secret, SPEC §6.3) read from
//! `audit.postgres.url_env` / `url_file`, and the table. Only [`Target::describe`]'s host, port
//! and database ever reach a log line or a message; the URL itself (and its password) never does,
//! not even in `Debug`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};

use super::table::Table;
use crate::config::PostgresConfig;
use crate::secret;

/// The longest a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A resolved `[audit.postgres]`.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    table: Table,
    described: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({}, table {})", self.described, self.table.name())
    }
}

impl Target {
    /// Resolves `config`: `(key, message)` naming the key at fault.
    pub fn resolve(config: &PostgresConfig) -> Result<Target, (String, String)> {
        let (key, url) = match (&config.url_env, &config.url_file) {
            (Some(name), _) => ("audit.postgres.url_env", secret::from_env(name)),
            (None, Some(path)) => ("audit.postgres.url_file", secret::from_file(path)),
            (None, None) => (
                "audit.postgres.url_env",
                Err("is required (or audit.postgres.url_file)".to_owned()),
            ),
        };
        let url = url.map_err(|message| (key.to_owned(), message))?;
        let table = Table::new(&config.table).ok_or_else(|| {
            (
                "audit.postgres.table".to_owned(),
                "is not a valid table name".to_owned(),
            )
        })?;
        Target::new(url.expose(), table).map_err(|message| (key.to_owned(), message))
    }

    /// The target of `url` (a `postgres://` URL or a `key=value` connection string) and `table`.
    /// The error never quotes the URL.
    pub fn new(url: &str, table: Table) -> Result<Target, String> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|_| {
            "is not a valid PostgreSQL connection URL (postgres://user:password@host:port/database)"
                .to_owned()
        })?;
        if config.get_hosts().is_empty() {
            return Err("names no host (postgres://user:password@host:port/database)".to_owned());
        }
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("tokengate");
        let described = describe(&config);
        Ok(Target {
            config,
            table,
            described,
        })
    }

    /// The table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// `host:port/database`, for logs and messages: never the user or the password.
    pub fn describe(&self) -> &str {
        &self.described
    }

    /// Connects (TLS is not used: the store is on a trusted network or loopback), and drives
    /// the connection on a task of the current runtime. Errors name the target, never the URL.
    pub async fn connect(&self) -> Result<Client, String> {
        let connect = self.config.connect(NoTls);
        let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                format!(
                    "PostgreSQL at {} did not answer within {} s",
                    self.described,
                    CONNECT_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("cannot connect to PostgreSQL at {}: {e}", self.described))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "the PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// Creates the table and its indexes when missing (nothing is run when they all exist).
    /// Replicas starting together take turns (a transaction-scoped advisory lock), since
    /// `CREATE … IF NOT EXISTS` races with itself.
    pub async fn ensure_table(&self, client: &mut Client) -> Result<(), tokio_postgres::Error> {
        let present: Option<bool> = client
            .query_one(
                "SELECT bool_and(to_regclass(name) IS NOT NULL) FROM unnest($1::text[]) AS name",
                &[&self.table.relations()],
            )
            .await?
            .try_get(0)?;
        if present == Some(true) {
            return Ok(());
        }
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("tokengate audit table {}", self.table.name())],
        )
        .await?;
        for statement in self.table.create_statements() {
            tx.batch_execute(&statement).await?;
        }
        tx.commit().await
    }
}

/// `host:port/database` of `config` (the first host; `+n` when there are more).
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        #[cfg(unix)]
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "?".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let more = config.get_hosts().len().saturating_sub(1);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    if more > 0 {
        format!("{host}:{port}/{db} (+{more} hosts)")
    } else {
        format!("{host}:{port}/{db}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_and_errors_never_hold_the_password() {
        let table = Table::new("tokengate_audit").unwrap();
        let target = Target::new(
            "postgres://auditor:hunter2@db.internal:5433/audit",
            table.clone(),
        )
        .unwrap();
        assert_eq!(target.describe(), "db.internal:5433/audit");
        assert!(!format!("{target:?}").contains("hunter2"));
        let error = Target::new("postgres://auditor:hunter2@db:notaport/x", table).unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
