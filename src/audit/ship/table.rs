//! The central table (SPEC §6.3): its name, its schema and indexes, and what each row holds.
//!
//! A row is derived from its record's line alone ([`Row::of`]): the shipper inserts what it
//! derives, and `audit verify --postgres` / `audit query --postgres` derive it again from the
//! `line` they read and compare every column ([`Row::check_columns`]). So the columns that the
//! indexes serve a query by can never disagree with the line whose chain was checked: a row
//! whose `token_ids` (say) were edited to hide it from `--token` is reported as broken.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::audit::query::parse_rfc3339;

/// The longest table name (each part): index names add up to 15 characters to it, and
/// PostgreSQL identifiers stop at 63.
const MAX_NAME: usize = 48;

/// Whether `name` is a usable `audit.postgres.table`: `table` or `schema.table`, each part
/// letters, digits and `_`, not starting with a digit, at most 48 characters. Only such names are
/// written into SQL (quoted), so nothing in the configuration can change a statement.
pub fn valid_table_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.len() <= MAX_NAME
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !part.as_bytes()[0].is_ascii_digit()
        })
}

/// A checked table name, quoted for SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// As configured (`tokengate_audit`, `audit.trail`): for messages.
    name: String,
    /// Quoted for SQL (`"audit"."trail"`).
    quoted: String,
    /// The last part, the stem of the index names.
    stem: String,
}

impl Table {
    /// The table `name`, or `None` when it is not a [`valid_table_name`].
    pub fn new(name: &str) -> Option<Table> {
        if !valid_table_name(name) {
            return None;
        }
        let quoted = name
            .split('.')
            .map(|part| format!("\"{part}\""))
            .collect::<Vec<_>>()
            .join(".");
        let stem = name.rsplit('.').next().unwrap_or(name).to_owned();
        Some(Table {
            name: name.to_owned(),
            quoted,
            stem,
        })
    }

    /// The name as configured.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name quoted for SQL.
    pub fn sql(&self) -> &str {
        &self.quoted
    }

    /// The statements that create the table and its indexes when missing (SPEC §6.3). Which
    /// index serves what:
    /// - the primary key `(origin, seq)`: resuming (the highest `seq` of an origin), verifying
    ///   an origin's chain in order, the chain check of a query;
    /// - `<table>_token_ids_idx` (GIN on `token_ids`): `--token` (`token_ids @> ARRAY[id]`);
    /// - `<table>_ts_idx` (`ts`): `--since` / `--until`;
    /// - `<table>_client_ts_idx` (`client, ts`): `--client`;
    /// - `<table>_request_idx` (`origin, request_id`): the other records of a matching request
    ///   (an intent's outcome), which pairing needs.
    pub fn create_statements(&self) -> Vec<String> {
        let (t, stem) = (&self.quoted, &self.stem);
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 origin text NOT NULL, seq bigint NOT NULL, ts timestamptz, phase text, \
                 request_id text, client text, op text, token_ids bigint[], outcome text, \
                 line text NOT NULL, record jsonb, PRIMARY KEY (origin, seq))"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS \"{stem}_token_ids_idx\" ON {t} USING gin (token_ids)"
            ),
            format!("CREATE INDEX IF NOT EXISTS \"{stem}_ts_idx\" ON {t} (ts)"),
            format!("CREATE INDEX IF NOT EXISTS \"{stem}_client_ts_idx\" ON {t} (client, ts)"),
            format!(
                "CREATE INDEX IF NOT EXISTS \"{stem}_request_idx\" ON {t} (origin, request_id)"
            ),
        ]
    }

    /// The table and its indexes as `to_regclass` names them (each index in the table's schema),
    /// to find out whether anything must be created: a role that did not create them (and so
    /// may not) runs no DDL at all when they exist.
    pub fn relations(&self) -> Vec<String> {
        let schema = self
            .name
            .rsplit_once('.')
            .map(|(schema, _)| format!("\"{schema}\"."))
            .unwrap_or_default();
        let mut names = vec![self.quoted.clone()];
        for suffix in ["token_ids_idx", "ts_idx", "client_ts_idx", "request_idx"] {
            names.push(format!("{schema}\"{}_{suffix}\"", self.stem));
        }
        names
    }

    /// The multi-row insert of one batch (`$1` the origin, then one array per column, see
    /// [`Batch`]): idempotent, it returns the `seq` of each row it inserted, so the caller
    /// knows which rows were already there and compares their lines.
    pub fn insert_statement(&self) -> String {
        format!(
            "INSERT INTO {} (origin, seq, ts, phase, request_id, client, op, token_ids, outcome, line, record) \
             SELECT $1, u.seq, u.ts, u.phase, u.request_id, u.client, u.op, u.token_ids::bigint[], u.outcome, u.line, \
             CASE WHEN u.nul THEN NULL ELSE u.line::jsonb END \
             FROM unnest($2::bigint[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bool[]) \
             AS u(seq, ts, phase, request_id, client, op, token_ids, outcome, line, nul) \
             ON CONFLICT (origin, seq) DO NOTHING RETURNING seq",
            self.quoted
        )
    }

    /// The columns read back to check a row against its line, in [`Stored`]'s order.
    pub fn columns() -> &'static str {
        "seq, line, origin, ts, phase, request_id, client, op, token_ids, outcome, record::text"
    }
}

/// The columns of one row, derived from its record.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The `seq`.
    pub seq: i64,
    /// `ts`, when it is RFC 3339.
    pub ts: Option<SystemTime>,
    /// `phase`.
    pub phase: Option<String>,
    /// `request_id`.
    pub request_id: Option<String>,
    /// `client` (none for an unknown caller).
    pub client: Option<String>,
    /// `op`.
    pub op: Option<String>,
    /// `token_ids`, when the record has the array (ids beyond `bigint` are left out).
    pub token_ids: Option<Vec<i64>>,
    /// `outcome` (outcome records only).
    pub outcome: Option<String>,
    /// Whether the record holds a U+0000 character, which `jsonb` cannot store: its `record` is
    /// then NULL (the `line` still holds it, escaped, and is what is verified).
    pub nul: bool,
}

impl Row {
    /// The columns of the record `record` whose `seq` is `seq`.
    pub fn of(seq: u64, record: &Map<String, Value>) -> Row {
        let text = |field: &str| {
            record
                .get(field)
                .and_then(Value::as_str)
                // A text column cannot hold U+0000; such a value is left out (the line keeps it).
                .filter(|s| !s.contains('\0'))
                .map(str::to_owned)
        };
        let ts = record
            .get("ts")
            .and_then(Value::as_str)
            .and_then(parse_rfc3339)
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        let token_ids = record
            .get("token_ids")
            .and_then(Value::as_array)
            .map(|ids| {
                ids.iter()
                    .filter_map(Value::as_u64)
                    .filter_map(|id| i64::try_from(id).ok())
                    .collect()
            });
        Row {
            seq: i64::try_from(seq).unwrap_or(i64::MAX),
            ts,
            phase: text("phase"),
            request_id: text("request_id"),
            client: text("client"),
            op: text("op"),
            token_ids,
            outcome: text("outcome"),
            nul: record.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        }
    }

    /// `token_ids` as an array literal (`{1,2}`), cast to `bigint[]` by the insert.
    pub fn token_ids_literal(&self) -> Option<String> {
        self.token_ids.as_ref().map(|ids| {
            let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
            format!("{{{}}}", ids.join(","))
        })
    }

    /// Compares the columns a row holds with those derived from its line (and its `record` with
    /// the line's record): the name of the first column that differs.
    pub fn check_columns(
        &self,
        origin: &str,
        record: &Map<String, Value>,
        stored: &Stored,
    ) -> Result<(), String> {
        let differs = |column: &str| {
            Err(format!(
                "the row's {column} column does not match its line (the row was changed)"
            ))
        };
        if stored.origin != origin {
            return differs("origin");
        }
        if let Some(line_origin) = record.get("origin").and_then(Value::as_str) {
            if line_origin != origin {
                return Err(format!(
                    "the line's origin is {line_origin:?}, under origin {origin:?}"
                ));
            }
        }
        if stored.ts != self.ts {
            return differs("ts");
        }
        let columns = [
            ("phase", &stored.phase, &self.phase),
            ("request_id", &stored.request_id, &self.request_id),
            ("client", &stored.client, &self.client),
            ("op", &stored.op, &self.op),
            ("outcome", &stored.outcome, &self.outcome),
        ];
        for (column, held, derived) in columns {
            if held != derived {
                return differs(column);
            }
        }
        if stored.token_ids != self.token_ids {
            return differs("token_ids");
        }
        let record_matches = match (&stored.record, self.nul) {
            (None, true) => true,
            (Some(text), false) => {
                serde_json::from_str::<Map<String, Value>>(text).is_ok_and(|held| &held == record)
            }
            _ => false,
        };
        if !record_matches {
            return differs("record");
        }
        Ok(())
    }
}

/// The columns of a row as read back (all but `seq` and `line`, read first).
#[derive(Debug)]
pub struct Stored {
    /// The origin (replica) the rows belong to.
    pub origin: String,
    /// `ts`, when it is RFC 3339.
    pub ts: Option<SystemTime>,
    /// `phase`.
    pub phase: Option<String>,
    /// `request_id`.
    pub request_id: Option<String>,
    /// `client` (none for an unknown caller).
    pub client: Option<String>,
    /// `op`.
    pub op: Option<String>,
    /// `token_ids`.
    pub token_ids: Option<Vec<i64>>,
    /// `outcome` (outcome records only).
    pub outcome: Option<String>,
    /// `record` as text (`record::text`).
    pub record: Option<String>,
}

impl Stored {
    /// Reads the columns of [`Table::columns`] from index 2 on.
    pub fn from_row(row: &tokio_postgres::Row) -> Result<Stored, tokio_postgres::Error> {
        Ok(Stored {
            origin: row.try_get(2)?,
            ts: row.try_get(3)?,
            phase: row.try_get(4)?,
            request_id: row.try_get(5)?,
            client: row.try_get(6)?,
            op: row.try_get(7)?,
            token_ids: row.try_get(8)?,
            outcome: row.try_get(9)?,
            record: row.try_get(10)?,
        })
    }
}

/// Whether a string (or key) anywhere in `value` holds U+0000.
fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// The columns of a batch of rows, one array each, as [`Table::insert_statement`] takes them.
#[derive(Debug, Default)]
pub struct Batch {
    /// Each row's the `seq`.
    pub seq: Vec<i64>,
    /// Each row's `ts`, when it is RFC 3339.
    pub ts: Vec<Option<SystemTime>>,
    /// Each row's `phase`.
    pub phase: Vec<Option<String>>,
    /// Each row's `request_id`.
    pub request_id: Vec<Option<String>>,
    /// Each row's `client` (none for an unknown caller).
    pub client: Vec<Option<String>>,
    /// Each row's `op`.
    pub op: Vec<Option<String>>,
    /// Each row's `token_ids`.
    pub token_ids: Vec<Option<String>>,
    /// Each row's `outcome` (outcome records only).
    pub outcome: Vec<Option<String>>,
    /// The lines.
    pub line: Vec<String>,
    /// Whether each record holds U+0000 (its `record` is then NULL).
    pub nul: Vec<bool>,
    /// Bytes of lines held.
    pub bytes: usize,
}

impl Batch {
    /// Adds the record `record` (its `line` without the newline) with `seq`.
    pub fn push(&mut self, seq: u64, record: &Map<String, Value>, line: String) {
        let row = Row::of(seq, record);
        self.token_ids.push(row.token_ids_literal());
        self.seq.push(row.seq);
        self.ts.push(row.ts);
        self.phase.push(row.phase);
        self.request_id.push(row.request_id);
        self.client.push(row.client);
        self.op.push(row.op);
        self.outcome.push(row.outcome);
        self.nul.push(row.nul);
        self.bytes += line.len();
        self.line.push(line);
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_identifiers_only() {
        for good in ["tokengate_audit", "audit.trail", "_t1", "T"] {
            assert!(valid_table_name(good), "{good}");
        }
        for bad in [
            "",
            "1table",
            "a.b.c",
            "a b",
            "a;drop table x",
            "a\"b",
            ".a",
            "a.",
            &"x".repeat(49),
        ] {
            assert!(!valid_table_name(bad), "{bad}");
        }
        let table = Table::new("audit.trail").unwrap();
        assert_eq!(table.sql(), "\"audit\".\"trail\"");
        assert!(table.create_statements()[1].contains("\"trail_token_ids_idx\""));
        assert_eq!(table.relations()[1], "\"audit\".\"trail_token_ids_idx\"");
        assert_eq!(Table::new("t").unwrap().relations()[4], "\"t_request_idx\"");
    }

    #[test]
    fn rows_derive_from_the_record() {
        let record: Map<String, Value> = serde_json::from_str(
            r#"{"ts":"2026-11-22T15:13:23.123Z","phase":"intent","request_id":"r1","client":"a","op":"update","token_ids":[873,18446744073709551615],"request":{"name":"x\u0000"}}"#,
        )
        .unwrap();
        let row = Row::of(7, &record);
        assert_eq!(row.seq, 7);
        assert_eq!(row.token_ids, Some(vec![873]));
        assert_eq!(row.token_ids_literal().as_deref(), Some("{873}"));
        assert_eq!(row.outcome, None);
        assert!(row.nul);
        assert_eq!(
            row.ts,
            Some(UNIX_EPOCH + Duration::from_millis(1_795_360_403_123))
        );
        let empty = Row::of(1, &Map::new());
        assert_eq!((empty.token_ids, empty.nul, empty.ts), (None, false, None));
    }
}
