//! Checking an origin's chain as the table holds it (SPEC §6.3): each row's `line` verified as a
//! record of a trail (its `hash`, its `prev` link, `seq` from 1 without gaps, by
//! [`check_line`], the code `audit verify` runs on files), and each row's other columns compared
//! with what its line says ([`Row::check_columns`]), so a query served by those columns cannot be
//! misled by a row edited outside its line.

use std::fmt;

use serde_json::{Map, Value};
use tokio_postgres::Transaction;

use super::table::{Row, Stored, Table};
use crate::audit::chain::{AuditKey, GENESIS};
use crate::audit::verify::check_line;

/// Rows fetched per round trip.
const CHUNK: i32 = 5000;

/// What an intact origin holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginSummary {
    /// The origin (replica) the rows belong to.
    pub origin: String,
    /// The rows checked.
    pub records: u64,
    /// The `seq` of the last row checked.
    pub last_seq: u64,
    /// The `hash` of its last record ([`GENESIS`] when it has none).
    pub head: String,
}

/// Why an origin's check stopped.
#[derive(Debug)]
pub enum CheckError {
    /// The first bad row: the origin, the row's `seq`, what is wrong.
    Bad {
        /// The origin (replica) the rows belong to.
        origin: String,
        /// The `seq`.
        seq: Option<i64>,
        /// What is wrong.
        reason: String,
    },
    /// PostgreSQL failed (the chain is not known to be broken).
    Db(String),
    /// The records could not be handed on.
    Output(std::io::Error),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Bad {
                origin,
                seq: Some(seq),
                reason,
            } => write!(f, "origin {origin:?}, seq {seq}: {reason}"),
            CheckError::Bad {
                origin,
                seq: None,
                reason,
            } => write!(f, "origin {origin:?}: {reason}"),
            CheckError::Db(error) => write!(f, "PostgreSQL failed: {error}"),
            CheckError::Output(error) => write!(f, "cannot write the output: {error}"),
        }
    }
}

impl From<tokio_postgres::Error> for CheckError {
    fn from(error: tokio_postgres::Error) -> CheckError {
        CheckError::Db(error.to_string())
    }
}

/// The origins the table holds, sorted.
pub async fn origins(
    tx: &Transaction<'_>,
    table: &Table,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = tx
        .query(
            &format!(
                "SELECT DISTINCT origin FROM {} ORDER BY origin",
                table.sql()
            ),
            &[],
        )
        .await?;
    rows.iter().map(|row| row.try_get(0)).collect()
}

/// Checks the rows of `origin` in `seq` order, from seq 1 up to `upto` (all when `None`), under
/// `key`, handing each record that verified to `on_record` (in order); stops at the first bad
/// row. Reads in chunks, so memory holds [`CHUNK`] rows, never the origin.
pub async fn check_origin(
    tx: &Transaction<'_>,
    table: &Table,
    origin: &str,
    upto: Option<i64>,
    key: &AuditKey,
    mut on_record: impl FnMut(u64, Map<String, Value>) -> std::io::Result<()>,
) -> Result<OriginSummary, CheckError> {
    let statement = tx
        .prepare(&format!(
            "SELECT {} FROM {} WHERE origin = $1 AND seq <= $2 ORDER BY seq",
            Table::columns(),
            table.sql()
        ))
        .await?;
    let upto = upto.unwrap_or(i64::MAX);
    let portal = tx.bind(&statement, &[&origin, &upto]).await?;
    let mut summary = OriginSummary {
        origin: origin.to_owned(),
        records: 0,
        last_seq: 0,
        head: GENESIS.to_owned(),
    };
    let bad = |seq: Option<i64>, reason: String| CheckError::Bad {
        origin: origin.to_owned(),
        seq,
        reason,
    };
    loop {
        let rows = tx.query_portal(&portal, CHUNK).await?;
        if rows.is_empty() {
            return Ok(summary);
        }
        for row in &rows {
            let seq: i64 = row.try_get(0)?;
            let line: String = row.try_get(1)?;
            let stored = Stored::from_row(row)?;
            let expected = summary.last_seq + 1;
            let (record, hash) = check_line(line.as_bytes(), key, expected, &summary.head)
                .map_err(|(_, reason)| bad(Some(seq), reason))?;
            if u64::try_from(seq).ok() != Some(expected) {
                return Err(bad(
                    Some(seq),
                    format!("the row's seq column says {seq} but its line is the record at seq {expected}"),
                ));
            }
            Row::of(expected, &record)
                .check_columns(origin, &record, &stored)
                .map_err(|reason| bad(Some(seq), reason))?;
            summary.records += 1;
            summary.last_seq = expected;
            summary.head = hash;
            on_record(expected, record).map_err(CheckError::Output)?;
        }
    }
}
