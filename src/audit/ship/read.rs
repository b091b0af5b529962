//! Reading the central store: `audit verify --postgres` and `audit query --postgres` (SPEC
//! §6.3). Both read one snapshot (a `REPEATABLE READ`, read-only transaction), so rows shipped
//! meanwhile neither break a chain half read nor slip between a query's two steps.
//!
//! **Query.** The filters the columns can answer (`--token` by the GIN index on `token_ids`,
//! `--client` by `(client, ts)`, `--since`/`--until` by `ts`, `--op`) pick the matching rows'
//! requests; every record of those requests (an intent's outcome, a batch's other ids) is
//! fetched by `(origin, request_id)`. Then every origin's whole chain is checked (by the primary
//! key, with every column compared to its line), and only records that verified, and were
//! picked, reach the pairing and printing of `audit query` ([`Changes`]), which applies every
//! filter exactly as over the files (`--outcome` and `--failed` there only: they depend on the
//! pairing). Checking only up to the last row picked would be cheaper, but a matching row
//! after it whose `token_ids` (say) were emptied, or that was deleted, would then be missed
//! silently; checked whole, it breaks the chain and the query fails naming it. So a query costs
//! an `audit verify --postgres`, as a query over files costs a verify of them. Each origin's
//! changes are kept in memory (what matched, not the table), then merged by time.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, IsolationLevel, Transaction};

use super::check::{check_origin, origins, CheckError, OriginSummary};
use super::target::Target;
use crate::audit::chain::AuditKey;
use crate::audit::query::{Changes, Filter, Format};

/// Opens the read-only snapshot both commands read.
async fn snapshot(client: &mut Client) -> Result<Transaction<'_>, String> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| format!("cannot start a read-only transaction: {e}"))
}

/// Checks every origin's chain in the table: each origin with its summary, or its first bad
/// row. `Err` when PostgreSQL cannot be read at all.
pub async fn verify(
    target: &Target,
    key: &AuditKey,
) -> Result<Vec<Result<OriginSummary, CheckError>>, String> {
    let mut client = target.connect().await?;
    let tx = snapshot(&mut client).await?;
    let origins = origins(&tx, target.table())
        .await
        .map_err(|e| format!("cannot read {}: {e}", target.table().name()))?;
    let mut results = Vec::with_capacity(origins.len());
    for origin in origins {
        let result = check_origin(&tx, target.table(), &origin, None, key, |_, _| Ok(())).await;
        if let Err(CheckError::Db(error)) = &result {
            return Err(error.clone());
        }
        results.push(result);
    }
    Ok(results)
}

/// What a query over the table printed.
#[derive(Debug)]
pub struct QueryReport {
    /// The output: every origin's changes, merged by time.
    pub output: Vec<u8>,
    /// The origins read, with the rows checked in each.
    pub origins: Vec<OriginSummary>,
    /// Lines printed.
    pub printed: u64,
    /// Lines printed whose result is unknown (an intent with no outcome).
    pub unknown: u64,
    /// Notes on the output, for standard error.
    pub notes: Vec<String>,
}

/// `audit query --postgres`: see the module documentation.
pub async fn query(
    target: &Target,
    key: &AuditKey,
    filter: Filter,
    format: Format,
) -> Result<QueryReport, CheckError> {
    let mut client = target.connect().await.map_err(CheckError::Db)?;
    let tx = snapshot(&mut client).await.map_err(CheckError::Db)?;
    let table = target.table();
    // The rows to pair and print, per origin: `None` for all of them (no filter the columns
    // answer). Every origin's whole chain is checked whatever matched (see the module docs).
    let mut candidates = candidates(&tx, target, &filter).await?;
    let wanted: Vec<(String, Option<Vec<i64>>)> = origins(&tx, table)
        .await?
        .into_iter()
        .map(|origin| {
            let seqs = candidates
                .as_mut()
                .map(|found| found.remove(&origin).unwrap_or_default());
            (origin, seqs)
        })
        .collect();
    let mut report = QueryReport {
        output: Vec::new(),
        origins: Vec::new(),
        printed: 0,
        unknown: 0,
        notes: Vec::new(),
    };
    let mut lines: Vec<(String, usize, Vec<u8>)> = Vec::new();
    for (index, (origin, seqs)) in wanted.into_iter().enumerate() {
        let mut changes = Changes::new(filter.clone(), format, Vec::new());
        let mut next = 0usize;
        let summary = check_origin(&tx, table, &origin, None, key, |seq, record| {
            let take = match &seqs {
                None => true,
                Some(seqs) => {
                    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
                    while next < seqs.len() && seqs[next] < seq {
                        next += 1;
                    }
                    seqs.get(next) == Some(&seq)
                }
            };
            if take {
                changes.record(seq, record)?;
            }
            Ok(())
        })
        .await?;
        let (out, printed, unknown, notes) = changes.finish().map_err(CheckError::Output)?;
        report.printed += printed;
        report.unknown += unknown;
        report
            .notes
            .extend(notes.into_iter().map(|n| format!("origin {origin:?}: {n}")));
        report.origins.push(summary);
        for line in out.split_inclusive(|b| *b == b'\n') {
            lines.push((time_of(line, format), index, line.to_vec()));
        }
    }
    // Merged by time; within one time, by origin, each origin's order kept (a stable sort).
    lines.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    for (_, _, line) in lines {
        report.output.extend_from_slice(&line);
    }
    Ok(report)
}

/// The rows of the requests that have a row passing the filters the columns answer, per origin
/// in `seq` order; `None` when no such filter is given (every row is a candidate).
async fn candidates(
    tx: &Transaction<'_>,
    target: &Target,
    filter: &Filter,
) -> Result<Option<BTreeMap<String, Vec<i64>>>, CheckError> {
    let mut conditions: Vec<String> = Vec::new();
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut param = |condition: &str, value: Box<dyn ToSql + Sync + Send>| {
        params.push(value);
        conditions.push(condition.replace('?', &format!("${}", params.len())));
    };
    if let Some(token) = filter.token {
        // An id beyond `bigint` is in no row.
        param(
            "token_ids @> ARRAY[?::bigint]",
            Box::new(i64::try_from(token).unwrap_or(-1)),
        );
    }
    if let Some(client) = &filter.client {
        param("client = ?", Box::new(client.clone()));
    }
    if let Some(op) = &filter.op {
        param("op = ?", Box::new(op.clone()));
    }
    let time = |ms: i64| UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    if let Some(since) = filter.since {
        param("ts >= ?", Box::new(time(since)));
    }
    if let Some(until) = filter.until {
        param("ts < ?", Box::new(time(until)));
    }
    if conditions.is_empty() {
        return Ok(None);
    }
    let sql = candidates_sql(target.table().sql(), &conditions.join(" AND "));
    let params: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = tx.query(&sql, &params).await?;
    let mut found: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for row in rows {
        let origin: String = row.try_get(0)?;
        let seq: i64 = row.try_get(1)?;
        found.entry(origin).or_default().push(seq);
    }
    Ok(Some(found))
}

/// The candidate rows' statement: the rows passing `conditions`, and every row of their
/// requests, ordered by origin and `seq`.
pub fn candidates_sql(table: &str, conditions: &str) -> String {
    format!(
        "WITH hits AS (SELECT origin, seq, request_id FROM {table} WHERE {conditions}) \
         SELECT origin, seq FROM hits \
         UNION \
         SELECT t.origin, t.seq FROM {table} t \
         JOIN (SELECT DISTINCT origin, request_id FROM hits WHERE request_id IS NOT NULL) r \
         ON t.origin = r.origin AND t.request_id = r.request_id \
         ORDER BY 1, 2"
    )
}

/// The time a printed change starts with (text) or ends with (JSON: its last member, `ts`), for
/// the merge; RFC 3339 in UTC with milliseconds sorts as text.
fn time_of(line: &[u8], format: Format) -> String {
    let text = String::from_utf8_lossy(line);
    match format {
        Format::Text => text.split(' ').next().unwrap_or_default().to_owned(),
        Format::Json => text
            .rfind(",\"ts\":")
            .map(|at| {
                text[at + 6..]
                    .trim_end()
                    .trim_end_matches('}')
                    .trim_matches('"')
                    .to_owned()
            })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_merge_by_the_time_they_print() {
        let text = b"2026-11-22T15:20:01.234Z gw-1 secops 10.1.2.3 update 873 forwarded 200\n";
        assert_eq!(time_of(text, Format::Text), "2026-11-22T15:20:01.234Z");
        let json = br#"{"intent":{"ts":"2026-01-01T00:00:00.000Z"},"outcome":null,"result":"unknown","token_id":1,"ts":"2026-11-22T15:20:01.234Z"}
"#;
        assert_eq!(time_of(json, Format::Json), "2026-11-22T15:20:01.234Z");
        assert!(candidates_sql("\"t\"", "op = $1").contains("WHERE op = $1"));
    }
}
