//! `tokengate audit query` (SPEC §6.2): the changes a trail records, one per request and token id,
//! filtered, oldest first, read from a trail checked while it is read.
//!
//! The trail is read by [`Records`], the streaming reader of `audit verify`: every record's hash,
//! `prev` link and `seq` are checked before the record is looked at, and reading stops at the first
//! bad record, so a query never prints from past a break in the chain.
//!
//! **Pairing.** A change is an `intent` record and its `outcome` record, paired by `request_id` and
//! `token_ids` (the whole list: one id in the records of a PATCH's `PUT`s and of a fan-out part,
//! several in a batch delete's or a native batch update's, none in a create's), the first outcome
//! with the oldest waiting intent of that key (the two `PUT`s of a PATCH share their key and follow
//! one another). An outcome with no intent waiting is a change of its own: a request refused before
//! forwarding (or one whose intent is in an archived file). An intent whose outcome never comes has
//! a result that is `unknown` (a crash, SPEC §6). A change whose records name several ids is
//! printed once per id, so `--token` finds it and every line names one token.
//!
//! **Order and memory.** Changes are printed in the order of their first record (the intent, or
//! the lone outcome): oldest first, by the time printed. Only intents still waiting for their
//! outcome are kept (and of those that cannot match the filters, only their key), and the
//! output of changes that completed while an earlier matching intent still waits is held back
//! until that one completes. Both are bounded by what was in flight when the records were
//! written, not by the size of the trail:
//!
//! - a crash leaves intents that will never complete; they are known to be `unknown` as soon as
//!   the next process writes (request ids carry a per-process prefix, SPEC §6 says a trail has one
//!   writer at a time, and a process ending cleanly writes every outcome first), else at the end
//!   of the trail;
//! - an outcome record lost while its process runs on (SPEC §6: the trail could not take it) leaves
//!   an intent waiting until the next restart, so the held-back output is capped at
//!   [`MAX_HELD_BYTES`]: past it, the oldest waiting intent stops holding later changes back (it
//!   is printed when it completes, out of order), and a note on standard error says so.
//!
//! **Shapes.** A record of an unexpected shape inside an intact chain (a member missing or of
//! another type) never stops the query: what cannot be read is printed as `-` or as its JSON.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Write};
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::chain::AuditKey;
use super::verify::{Failure, Records, Summary, Verified};
use change::Change;
use print::{json, text};
pub use time::{parse_rfc3339, parse_time};

mod change;
mod print;
mod time;

/// The words `--outcome` takes: the outcome records' `outcome` values, and `unknown` for an intent
/// with no outcome record.
pub const RESULTS: [&str; 5] = [
    "forwarded",
    "rejected",
    "upstream_error",
    "timeout",
    "unknown",
];

/// The most bytes of output held back behind intents still waiting for their outcome (see the
/// module documentation). What completes while a gateway's changes are in flight is a few lines;
/// more than this means an intent whose outcome will not come before a restart (an outcome record
/// lost to a failing disk, SPEC §6), and holding everything after it until then would grow with
/// the trail.
pub const MAX_HELD_BYTES: usize = 8 << 20;

/// Which changes to print. Every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `--token`: the change names this token id.
    pub token: Option<u64>,
    /// `--client`: the record's `client`.
    pub client: Option<String>,
    /// `--op`: the record's `op`.
    pub op: Option<String>,
    /// `--outcome`: the outcome record's `outcome`, or `unknown` when there is none.
    pub outcome: Option<String>,
    /// `--failed`: anything but a forwarded success.
    pub failed: bool,
    /// `--since`: the change's time is at or after this, in milliseconds since the Unix epoch.
    pub since: Option<i64>,
    /// `--until`: the change's time is before this, in milliseconds since the Unix epoch.
    pub until: Option<i64>,
}

/// How changes are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per change: time, origin, client, source IP, op, token id, outcome and status,
    /// then what changed.
    #[default]
    Text,
    /// One JSON object per line: the intent and outcome records whole, and `result`, `token_id`
    /// and `ts`.
    Json,
}

/// What a query read and printed, once the trail was read to its end and found intact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The trail read (as `audit verify` reports it).
    pub summary: Summary,
    /// The lines printed (a change of several ids prints one line per id it matches).
    pub printed: u64,
    /// Intents printed with an unknown result.
    pub unknown: u64,
    /// Anything the reader should know about the output (printed on standard error).
    pub notes: Vec<String>,
}

/// Why a query stopped before the end of the trail.
#[derive(Debug)]
pub enum Stop {
    /// The chain is broken at this record: what was printed before it came from records that
    /// verified, nothing after it was read.
    Broken(Failure),
    /// The output could not be written.
    Output(io::Error),
}

/// Reads the trail made of `files` (checked under `key` as `audit verify` checks it) and writes
/// the changes that pass `filter` to `out`, as `format` says.
pub fn run<W: Write>(
    files: &[PathBuf],
    key: &AuditKey,
    filter: Filter,
    format: Format,
    out: W,
) -> Result<Report, Stop> {
    let mut records = Records::new(files, key);
    let mut query = Query::new(filter, format, out);
    for record in &mut records {
        query
            .record(record.map_err(Stop::Broken)?)
            .map_err(Stop::Output)?;
    }
    query.finish().map_err(Stop::Output)?;
    Ok(Report {
        summary: records.summary(),
        printed: query.printed,
        unknown: query.unknown,
        notes: query.notes,
    })
}

/// The pairing, filtering and printing of [`run`], fed one verified record at a time: for a
/// trail read from elsewhere than its files (an origin's rows in the central store, SPEC §6.3).
/// The records must come in `seq` order, every one checked (hash, link, `seq`) before.
pub struct Changes<W: Write>(Query<W>);

impl<W: Write> Changes<W> {
    /// Prints the changes that pass `filter` to `out`, as `format` says.
    pub fn new(filter: Filter, format: Format, out: W) -> Changes<W> {
        Changes(Query::new(filter, format, out))
    }

    /// Takes the next record (`seq` and the record, `hash` included).
    pub fn record(&mut self, seq: u64, record: Map<String, Value>) -> io::Result<()> {
        self.0.record(Verified {
            file: 0,
            line: 0,
            seq,
            record,
        })
    }

    /// The end of the records: prints what was waiting. Returns the output, the lines printed,
    /// those with an unknown result, and the notes.
    pub fn finish(mut self) -> io::Result<(W, u64, u64, Vec<String>)> {
        self.0.finish()?;
        let Query {
            out,
            printed,
            unknown,
            notes,
            ..
        } = self.0;
        Ok((out, printed, unknown, notes))
    }
}

/// An intent waiting for its outcome.
#[derive(Debug)]
struct Pending {
    /// Its place in the output order.
    ordinal: u64,
    /// The record, kept only when the change may match the filters; otherwise only its key is
    /// kept, so that its outcome is recognised and not taken for a change of its own.
    intent: Option<Map<String, Value>>,
    /// The per-process prefix of its request id (see [`writer_of`]).
    writer: Option<u64>,
}

/// The key that pairs an intent with its outcome: `request_id` and `token_ids`.
type Key = (String, Vec<u64>);

/// The pairing and ordering state of a query (see the module documentation).
struct Query<W: Write> {
    filter: Filter,
    format: Format,
    out: W,
    /// Intents waiting for their outcome, oldest first per key.
    pending: HashMap<Key, VecDeque<Pending>>,
    /// The ordinals of waiting intents that may match (with their `seq`): output after the first
    /// of them is held back.
    holding: BTreeMap<u64, u64>,
    /// Output held back, by ordinal.
    held: BTreeMap<u64, Vec<u8>>,
    held_bytes: usize,
    next_ordinal: u64,
    /// The per-process prefix of the request ids of the latest records.
    writer: Option<u64>,
    printed: u64,
    unknown: u64,
    notes: Vec<String>,
}

impl<W: Write> Query<W> {
    fn new(filter: Filter, format: Format, out: W) -> Query<W> {
        Query {
            filter,
            format,
            out,
            pending: HashMap::new(),
            holding: BTreeMap::new(),
            held: BTreeMap::new(),
            held_bytes: 0,
            next_ordinal: 0,
            writer: None,
            printed: 0,
            unknown: 0,
            notes: Vec::new(),
        }
    }

    /// Takes the next record of the trail.
    fn record(&mut self, verified: Verified) -> io::Result<()> {
        let Verified { record, seq, .. } = verified;
        let writer = writer_of(&record);
        if let Some(writer) = writer {
            if self.writer.is_some_and(|w| w != writer) {
                self.orphans(writer)?;
            }
            self.writer = Some(writer);
        }
        match record.get("phase").and_then(Value::as_str) {
            Some("intent") => {
                self.intent(record, seq, writer);
                Ok(())
            }
            Some("outcome") => self.outcome(record),
            // Checkpoints (SPEC §6.3) and anything else are not changes.
            _ => Ok(()),
        }
    }

    fn intent(&mut self, record: Map<String, Value>, seq: u64, writer: Option<u64>) {
        let ordinal = self.ordinal();
        let change = Change {
            intent: Some(&record),
            outcome: None,
        };
        let may_match = change
            .ids()
            .into_iter()
            .any(|id| self.filter.admits_record(&change, id));
        if may_match {
            self.holding.insert(ordinal, seq);
        }
        let key = key_of(&record);
        self.pending.entry(key).or_default().push_back(Pending {
            ordinal,
            intent: may_match.then_some(record),
            writer,
        });
    }

    fn outcome(&mut self, record: Map<String, Value>) -> io::Result<()> {
        let key = key_of(&record);
        let waiting = match self.pending.get_mut(&key) {
            Some(queue) => {
                let first = queue.pop_front();
                if queue.is_empty() {
                    self.pending.remove(&key);
                }
                first
            }
            None => None,
        };
        match waiting {
            Some(pending) => {
                if let Some(intent) = &pending.intent {
                    self.complete(pending.ordinal, Some(intent), Some(&record))?;
                }
                self.release(pending.ordinal)
            }
            None => {
                let ordinal = self.ordinal();
                self.complete(ordinal, None, Some(&record))
            }
        }
    }

    /// Resolves as `unknown` every waiting intent written by another process than `writer`: that
    /// process has ended, and its outcomes will never come.
    fn orphans(&mut self, writer: u64) -> io::Result<()> {
        let mut orphans = Vec::new();
        self.pending.retain(|_, queue| {
            let (gone, kept): (VecDeque<Pending>, VecDeque<Pending>) = queue
                .drain(..)
                .partition(|p| p.writer.is_some_and(|w| w != writer));
            orphans.extend(gone);
            *queue = kept;
            !queue.is_empty()
        });
        self.resolve_unknown(orphans)
    }

    /// Prints `intents` (in their order) as changes whose result is unknown.
    fn resolve_unknown(&mut self, mut intents: Vec<Pending>) -> io::Result<()> {
        intents.sort_by_key(|p| p.ordinal);
        for pending in intents {
            if let Some(intent) = &pending.intent {
                self.complete(pending.ordinal, Some(intent), None)?;
            }
            self.release(pending.ordinal)?;
        }
        Ok(())
    }

    /// Renders the lines of the change at `ordinal` that pass the filters, and prints them, or
    /// holds them back while an earlier intent that may match still waits.
    fn complete(
        &mut self,
        ordinal: u64,
        intent: Option<&Map<String, Value>>,
        outcome: Option<&Map<String, Value>>,
    ) -> io::Result<()> {
        let change = Change { intent, outcome };
        let mut bytes = Vec::new();
        for id in change.ids() {
            if self.filter.admits_record(&change, id) && self.filter.admits_result(&change) {
                match self.format {
                    Format::Text => text(&change, id, &mut bytes),
                    Format::Json => json(&change, id, &mut bytes),
                }
                self.printed += 1;
                if outcome.is_none() {
                    self.unknown += 1;
                }
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        if self
            .holding
            .keys()
            .next()
            .is_some_and(|&first| first < ordinal)
        {
            self.held_bytes += bytes.len();
            self.held.insert(ordinal, bytes);
            if self.held_bytes > MAX_HELD_BYTES {
                self.overflow()?;
            }
            Ok(())
        } else {
            self.out.write_all(&bytes)
        }
    }

    /// The change at `ordinal` is printed (or cannot match): it holds nothing back any more.
    fn release(&mut self, ordinal: u64) -> io::Result<()> {
        if self.holding.remove(&ordinal).is_some() {
            self.flush_held()?;
        }
        Ok(())
    }

    /// Prints the held-back output that no waiting intent precedes any more.
    fn flush_held(&mut self) -> io::Result<()> {
        let limit = self.holding.keys().next().copied().unwrap_or(u64::MAX);
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() >= limit {
                break;
            }
            let bytes = entry.remove();
            self.held_bytes -= bytes.len();
            self.out.write_all(&bytes)?;
        }
        Ok(())
    }

    /// Too much output is held back: the oldest waiting intents stop holding it, and a note says
    /// that the order is broken there.
    fn overflow(&mut self) -> io::Result<()> {
        while self.held_bytes > MAX_HELD_BYTES {
            let Some((_, seq)) = self.holding.pop_first() else {
                break;
            };
            self.notes.push(format!(
                "the intent at seq {seq} had no outcome yet after {} MiB of later changes: those were printed before it, and it is printed where its outcome (or the end of the trail) was read",
                MAX_HELD_BYTES >> 20
            ));
            self.flush_held()?;
        }
        Ok(())
    }

    fn ordinal(&mut self) -> u64 {
        self.next_ordinal += 1;
        self.next_ordinal
    }

    /// The end of the trail: every intent still waiting has an unknown result.
    fn finish(&mut self) -> io::Result<()> {
        let waiting: Vec<Pending> = self
            .pending
            .drain()
            .flat_map(|(_, queue)| queue.into_iter())
            .collect();
        self.resolve_unknown(waiting)?;
        self.holding.clear();
        self.flush_held()?;
        self.out.flush()
    }
}

/// The `request_id` and `token_ids` of a record (empty when missing or of another type).
fn key_of(record: &Map<String, Value>) -> Key {
    let request_id = record
        .get("request_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    (request_id, token_ids(record))
}

/// The integer members of a record's `token_ids`.
fn token_ids(record: &Map<String, Value>) -> Vec<u64> {
    match record.get("token_ids") {
        Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_u64).collect(),
        _ => Vec::new(),
    }
}

/// The per-process prefix of a record's request id: the gateway's ids are 32 lowercase hex
/// digits, 16 of a random prefix drawn once per process and 16 of a counter
/// (`crate::context::RequestId`). `None` for ids of another form, which never end a wait early.
fn writer_of(record: &Map<String, Value>) -> Option<u64> {
    let id = record.get("request_id")?.as_str()?;
    if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(id.get(..16)?, 16).ok()
}

#[cfg(test)]
mod tests;
