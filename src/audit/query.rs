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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::canonical::{write_canonical, write_object};
use super::chain::AuditKey;
use super::verify::{Failure, Records, Summary, Verified};

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

/// A change as far as the trail tells it: its intent and its outcome record, either possibly
/// missing (never both).
struct Change<'r> {
    intent: Option<&'r Map<String, Value>>,
    outcome: Option<&'r Map<String, Value>>,
}

impl<'r> Change<'r> {
    /// The first record of the change: the intent, or the lone outcome. The change's time,
    /// client, op and ids are this record's.
    fn first(&self) -> Option<&'r Map<String, Value>> {
        self.intent.or(self.outcome)
    }

    /// A member of the first record, or of the outcome when the first lacks it (for display).
    fn get(&self, name: &str) -> Option<&'r Value> {
        self.first()
            .and_then(|r| r.get(name))
            .or_else(|| self.outcome.and_then(|r| r.get(name)))
    }

    /// The ids the lines of this change are for: the first record's, or one line with none.
    fn ids(&self) -> Vec<Option<u64>> {
        let ids = self.first().map(token_ids).unwrap_or_default();
        if ids.is_empty() {
            vec![None]
        } else {
            ids.into_iter().map(Some).collect()
        }
    }

    fn ts(&self) -> Option<&'r str> {
        self.first()?.get("ts")?.as_str()
    }

    /// `forwarded`, `rejected`, `upstream_error`, `timeout` (or whatever the outcome record says),
    /// or `unknown` when there is no outcome record.
    fn result(&self) -> Cow<'r, str> {
        match self.outcome {
            None => Cow::Borrowed("unknown"),
            Some(outcome) => match outcome.get("outcome") {
                Some(Value::String(word)) => Cow::Borrowed(word.as_str()),
                other => Cow::Owned(plain(other).into_owned()),
            },
        }
    }

    /// Whether the change is anything but a forwarded success: not forwarded, no outcome, or
    /// forwarded but failed (`upstream_success` false, or an error status).
    fn failed(&self) -> bool {
        let Some(outcome) = self.outcome else {
            return true;
        };
        outcome.get("outcome").and_then(Value::as_str) != Some("forwarded")
            || outcome.get("upstream_success") == Some(&Value::Bool(false))
            || outcome
                .get("status")
                .and_then(Value::as_u64)
                .is_some_and(|s| s >= 400)
    }
}

impl Filter {
    /// The conditions that the first record decides: token, client, op and time.
    fn admits_record(&self, change: &Change<'_>, id: Option<u64>) -> bool {
        let first = change.first();
        let text = |name: &str| first.and_then(|r| r.get(name)).and_then(Value::as_str);
        if self.token.is_some() && self.token != id {
            return false;
        }
        if self.client.is_some() && self.client.as_deref() != text("client") {
            return false;
        }
        if self.op.is_some() && self.op.as_deref() != text("op") {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(at) = change.ts().and_then(parse_rfc3339) else {
                return false;
            };
            if self.since.is_some_and(|since| at < since)
                || self.until.is_some_and(|until| at >= until)
            {
                return false;
            }
        }
        true
    }

    /// The conditions that the outcome decides.
    fn admits_result(&self, change: &Change<'_>) -> bool {
        if let Some(outcome) = &self.outcome {
            if change.result() != outcome.as_str() {
                return false;
            }
        }
        !self.failed || change.failed()
    }
}

/// One change as a line of text: time, origin, client, source IP, op, token id, outcome, status
/// (and reason, `upstream_success=false`, `truncated`, `suppressed=N` when so), then ` | ` and
/// what changed.
fn text(change: &Change<'_>, id: Option<u64>, out: &mut Vec<u8>) {
    let mut line = String::with_capacity(256);
    let mut column = |value: &str| {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(value);
    };
    column(&plain(change.get("ts")));
    column(&plain(change.get("origin")));
    column(&plain(change.get("client")));
    column(&plain(change.get("source_ip")));
    column(&plain(change.get("op")));
    column(&id.map_or_else(|| "-".to_owned(), |id| id.to_string()));
    column(&change.result());
    match change.outcome {
        None => column("-"),
        Some(outcome) => {
            column(&plain(outcome.get("status")));
            if let Some(reason) = outcome.get("reason").filter(|r| !r.is_null()) {
                column(&plain(Some(reason)));
            }
            if outcome.get("upstream_success") == Some(&Value::Bool(false)) {
                column("upstream_success=false");
            }
            if let Some(n) = outcome.get("suppressed").filter(|n| !n.is_null()) {
                column(&format!("suppressed={}", plain(Some(n))));
            }
        }
    }
    let truncated = [change.intent, change.outcome]
        .into_iter()
        .flatten()
        .any(|r| r.get("truncated") == Some(&Value::Bool(true)));
    if truncated {
        column("truncated");
    }
    let changes = what_changed(change, id);
    if !changes.is_empty() {
        line.push_str(" | ");
        line.push_str(&changes.join(", "));
    }
    line.push('\n');
    out.extend_from_slice(line.as_bytes());
}

/// What a change changed, one item per field: from the intent's `changes` (`field: from → to`,
/// SPEC §6.1); without them (version 1 records, `audit.capture_before = false`, a delete), its
/// `before` whole and the request body's fields (`field → value`, the ids left out: the line
/// names its token).
fn what_changed(change: &Change<'_>, id: Option<u64>) -> Vec<String> {
    let ids = change.first().map(token_ids).unwrap_or_default();
    let intent = change.intent;
    let mut items = Vec::new();
    match intent
        .and_then(|r| r.get("changes"))
        .map(|c| for_id(c, id, &ids))
    {
        Some(Value::Array(list)) if list.is_empty() => items.push("(nothing changed)".to_owned()),
        Some(Value::Array(list)) => {
            for item in list {
                match item.as_object() {
                    Some(member) if member.get("field").is_some_and(Value::is_string) => items
                        .push(format!(
                            "{}: {} → {}",
                            plain(member.get("field")),
                            value_text(member.get("from")),
                            value_text(member.get("to")),
                        )),
                    _ => items.push(value_text(Some(item))),
                }
            }
        }
        Some(other) if !other.is_null() => {
            items.push(format!("changes: {}", value_text(Some(other))))
        }
        _ => {
            let before = intent
                .and_then(|r| r.get("before"))
                .map(|b| for_id(b, id, &ids));
            if let Some(before) = before.filter(|b| !b.is_null()) {
                items.push(format!("before: {}", value_text(Some(before))));
            }
            match change.first().and_then(|r| r.get("request")) {
                Some(Value::Object(body)) if !is_omitted(body) => {
                    for (field, value) in body {
                        if field != "id" && field != "ids" {
                            items.push(format!(
                                "{} → {}",
                                plain_str(field),
                                value_text(Some(value))
                            ));
                        }
                    }
                }
                Some(Value::Null) | None => {}
                Some(other) => items.push(format!("request: {}", value_text(Some(other)))),
            }
        }
    }
    items
}

/// The part of a record's `before` or `changes` that is about token `id`, when a record of several
/// ids holds one per id (an object keyed by the ids, or an array in the order of `token_ids`);
/// otherwise the value itself.
fn for_id<'v>(value: &'v Value, id: Option<u64>, ids: &[u64]) -> &'v Value {
    let (Some(id), true) = (id, ids.len() > 1) else {
        return value;
    };
    match value {
        Value::Object(by_id) if !is_omitted(by_id) => {
            by_id.get(id.to_string().as_str()).unwrap_or(value)
        }
        Value::Array(per_id)
            if per_id.len() == ids.len() && per_id.iter().all(|v| !v.is_object()) =>
        {
            ids.iter()
                .position(|&i| i == id)
                .and_then(|at| per_id.get(at))
                .unwrap_or(value)
        }
        _ => value,
    }
}

/// Whether an object is what replaces a value that did not fit the record (SPEC §6, format):
/// `{"bytes": N, "omitted": true, "sha256": "<hex>"}`.
fn is_omitted(object: &Map<String, Value>) -> bool {
    object.get("omitted") == Some(&Value::Bool(true))
}

/// A value as compact (canonical) JSON, or `<omitted: N bytes, sha256 H>` for an omitted one,
/// `-` when missing.
fn value_text(value: Option<&Value>) -> String {
    match value {
        None => "-".to_owned(),
        Some(Value::Object(object)) if is_omitted(object) => {
            let mut text = String::from("<omitted");
            if let Some(bytes) = object.get("bytes") {
                let _ = write!(text, ": {} bytes", plain(Some(bytes)));
            }
            if let Some(digest) = object.get("sha256") {
                let _ = write!(text, ", sha256 {}", plain(Some(digest)));
            }
            text.push('>');
            text
        }
        Some(value) => json_text(value),
    }
}

fn json_text(value: &Value) -> String {
    let mut bytes = Vec::with_capacity(64);
    write_canonical(value, &mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A member as one word of a text line: a string as is when it holds no white space or control
/// character (else as JSON), a missing or null member as `-`, anything else as JSON. A line
/// stays one line whatever the record holds.
fn plain(value: Option<&Value>) -> Cow<'_, str> {
    match value {
        None | Some(Value::Null) => Cow::Borrowed("-"),
        Some(Value::String(text)) => plain_str(text),
        Some(other) => Cow::Owned(json_text(other)),
    }
}

fn plain_str(text: &str) -> Cow<'_, str> {
    if !text.is_empty()
        && text != "-"
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '|')
    {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(json_text(&Value::String(text.to_owned())))
    }
}

/// One change as a JSON line, canonical (members sorted): `intent` and `outcome` (the records
/// whole, or null), `result` (`--outcome`'s words), `token_id` (the id this line is for, or null)
/// and `ts` (the first record's).
fn json(change: &Change<'_>, id: Option<u64>, out: &mut Vec<u8>) {
    let record = |record: Option<&Map<String, Value>>, out: &mut Vec<u8>| match record {
        Some(record) => write_object(record, None, out),
        None => out.extend_from_slice(b"null"),
    };
    out.extend_from_slice(b"{\"intent\":");
    record(change.intent, out);
    out.extend_from_slice(b",\"outcome\":");
    record(change.outcome, out);
    out.extend_from_slice(b",\"result\":");
    write_canonical(&Value::String(change.result().into_owned()), out);
    out.extend_from_slice(b",\"token_id\":");
    match id {
        Some(id) => out.extend_from_slice(id.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"ts\":");
    write_canonical(change.get("ts").unwrap_or(&Value::Null), out);
    out.extend_from_slice(b"}\n");
}

/// Parses `--since`/`--until`: RFC 3339 (`2026-11-22T15:20:01Z`, fractions and offsets allowed,
/// or a date alone for its midnight UTC) or a span before `now_ms`: digits then `s`, `m`, `h` or
/// `d` (`45s`, `30m`, `12h`, `7d`). Milliseconds since the Unix epoch.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Some(unit) = text.chars().last().filter(|c| c.is_ascii_alphabetic()) {
        let digits = &text[..text.len() - 1];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            let unit_ms: i64 = match unit {
                's' => 1_000,
                'm' => 60_000,
                'h' => 3_600_000,
                'd' => 86_400_000,
                _ => {
                    return Err(format!(
                        "{text:?}: a span ends in s, m, h or d (45s, 30m, 12h, 7d)"
                    ))
                }
            };
            return digits
                .parse::<i64>()
                .ok()
                .and_then(|n| n.checked_mul(unit_ms))
                .and_then(|span| now_ms.checked_sub(span))
                .ok_or_else(|| format!("{text:?}: the span is too long"));
        }
    }
    parse_rfc3339(text).ok_or_else(|| {
        format!("{text:?} is neither a time in RFC 3339 (2026-11-22T15:20:01Z) nor a span before now (45s, 30m, 12h, 7d)")
    })
}

/// Milliseconds since the Unix epoch of an RFC 3339 time (`2026-11-22T15:20:01.123Z`, `t` or a
/// space for `T`, `z` for `Z`, any fraction (to the millisecond), `+hh:mm`/`-hh:mm` offsets, a
/// leap second's `:60`), or of a date alone (`2026-11-22`, its midnight UTC); `None` if `text`
/// is neither. Record times (`ts`) are read with it too.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let number = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let byte = |at: usize| b.get(at).copied();
    let (year, month, day) = (number(0, 4)?, number(5, 2)?, number(8, 2)?);
    if byte(4) != Some(b'-') || byte(7) != Some(b'-') {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Some(days * 86_400_000);
    }
    if !matches!(byte(10), Some(b'T' | b't' | b' '))
        || byte(13) != Some(b':')
        || byte(16) != Some(b':')
    {
        return None;
    }
    let (hour, minute, second) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0i64;
    if byte(at) == Some(b'.') {
        at += 1;
        let start = at;
        while byte(at).is_some_and(|d| d.is_ascii_digit()) {
            if at - start < 3 {
                millis = millis * 10 + i64::from(byte(at)? - b'0');
            }
            at += 1;
        }
        if at == start {
            return None;
        }
        for _ in (at - start).min(3)..3 {
            millis *= 10;
        }
    }
    let offset = match byte(at)? {
        b'Z' | b'z' if b.len() == at + 1 => 0,
        sign @ (b'+' | b'-') if b.len() == at + 6 && byte(at + 3) == Some(b':') => {
            let (hours, minutes) = (number(at + 1, 2)?, number(at + 4, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return None,
    };
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(seconds * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm, the inverse of the one in
/// [`super::writer::timestamp`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Feeds `records` (JSON objects; `seq` is added) to a query and returns its output lines, the
    /// query kept for inspection.
    struct Run {
        query: Query<Vec<u8>>,
        seq: u64,
    }

    impl Run {
        fn new(filter: Filter, format: Format) -> Run {
            Run {
                query: Query::new(filter, format, Vec::new()),
                seq: 0,
            }
        }

        fn feed(&mut self, record: Value) {
            self.seq += 1;
            let Value::Object(record) = record else {
                panic!("not an object")
            };
            self.query
                .record(Verified {
                    file: 0,
                    line: self.seq as usize,
                    seq: self.seq,
                    record,
                })
                .unwrap();
        }

        fn output(&self) -> Vec<String> {
            String::from_utf8(self.query.out.clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }

        fn finish(mut self) -> (Vec<String>, u64, u64, Vec<String>) {
            self.query.finish().unwrap();
            let lines = self.output();
            let Query {
                printed,
                unknown,
                notes,
                ..
            } = self.query;
            (lines, printed, unknown, notes)
        }
    }

    fn intent(request_id: &str, ids: &[u64], ts: &str) -> Value {
        json!({
            "v": 1, "ts": ts, "phase": "intent", "request_id": request_id,
            "caller_request_id": null, "client": "team-a", "source_ip": "10.0.0.7",
            "method": "PUT", "path": "/api/token/", "op": "update", "token_ids": ids,
            "request": {"id": ids.first(), "name": "n", "remain_quota": 5},
        })
    }

    fn outcome(request_id: &str, ids: &[u64], ts: &str, outcome: &str, status: u16) -> Value {
        let mut record = intent(request_id, ids, ts);
        let fields = record.as_object_mut().unwrap();
        fields.insert("phase".into(), json!("outcome"));
        fields.insert("outcome".into(), json!(outcome));
        fields.insert("status".into(), json!(status));
        fields.insert(
            "reason".into(),
            if outcome == "forwarded" {
                Value::Null
            } else {
                json!("forbidden")
            },
        );
        let success = if outcome == "forwarded" {
            json!(true)
        } else {
            Value::Null
        };
        fields.insert("upstream_success".into(), success);
        record
    }

    const T: &str = "2026-11-22T15:20:01.000Z";

    #[test]
    fn times_parse_as_rfc3339_or_spans_before_now() {
        let at = |text| parse_rfc3339(text);
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(at("1970-01-01T00:00:00.001Z"), Some(1));
        assert_eq!(at("2026-11-22T14:50:06.000Z"), Some(1_795_359_006_000));
        assert_eq!(at("2026-11-22T14:50:06Z"), Some(1_795_359_006_000));
        assert_eq!(at("2026-11-22t14:50:06z"), Some(1_795_359_006_000));
        assert_eq!(at("2026-11-22 14:50:06Z"), Some(1_795_359_006_000));
        assert_eq!(at("2026-11-22T16:50:06+02:00"), Some(1_795_359_006_000));
        assert_eq!(at("2026-11-22T13:20:06-01:30"), Some(1_795_359_006_000));
        assert_eq!(at("2026-11-22T14:50:06.1Z"), Some(1_795_359_006_100));
        assert_eq!(
            at("2026-11-22T14:50:06.123456789Z"),
            Some(1_795_359_006_123)
        );
        assert_eq!(at("2000-02-29T00:00:00.123Z"), Some(951_782_400_123));
        assert_eq!(at("2026-11-22"), Some(1_795_305_600_000));
        assert_eq!(at("1969-12-31T23:59:59Z"), Some(-1000));
        assert_eq!(at("2016-12-31T23:59:60Z"), Some(1_483_228_800_000));
        for bad in [
            "",
            "2026",
            "2026-11-22T",
            "2026-11-22T14:50Z",
            "2026-11-22T14:50:06",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-31",
            "2026-11-22T24:00:00Z",
            "2026-11-22T14:60:00Z",
            "2026-11-22T14:50:61Z",
            "2026-11-22T14:50:06.Z",
            "2026-11-22T14:50:06+0200",
            "2026-11-22T14:50:06+24:00",
            "2026-11-22T14:50:06Zx",
            "2026-11-22X14:50:06Z",
            "２026-11-22",
            "2026-11-22T14:50:06.000Z ",
            "+2026-11-22",
            "-026-11-22",
        ] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
        let now = 1_795_359_006_000;
        assert_eq!(parse_time("45s", now), Ok(now - 45_000));
        assert_eq!(parse_time("30m", now), Ok(now - 1_800_000));
        assert_eq!(parse_time("12h", now), Ok(now - 43_200_000));
        assert_eq!(parse_time("7d", now), Ok(now - 604_800_000));
        assert_eq!(parse_time("0s", now), Ok(now));
        assert_eq!(parse_time("2026-11-22T14:50:06Z", 0), Ok(now));
        for bad in [
            "7w",
            "d",
            "-7d",
            "7 d",
            "1.5h",
            "99999999999999999999d",
            "yesterday",
            "7dd",
        ] {
            assert!(parse_time(bad, now).is_err(), "{bad:?}");
        }
        assert!(parse_time("7w", now).unwrap_err().contains("s, m, h or d"));
    }

    #[test]
    fn days_from_civil_inverts_the_writers_timestamps() {
        use std::time::{Duration, UNIX_EPOCH};
        // Every day from 1900 to 2200, through the writer's own formatting.
        let mut day = -25_567i64;
        while day < 84_000 {
            let time = if day >= 0 {
                UNIX_EPOCH + Duration::from_secs(day as u64 * 86_400 + 3_723)
            } else {
                UNIX_EPOCH - Duration::from_secs((-day) as u64 * 86_400 - 3_723)
            };
            let text = super::super::writer::timestamp(time);
            if day >= 0 {
                assert_eq!(
                    parse_rfc3339(&text),
                    Some((day * 86_400 + 3_723) * 1000),
                    "{text}"
                );
            }
            day += 1;
        }
    }

    #[test]
    fn an_intent_pairs_with_its_outcome_by_request_and_token_id() {
        let mut run = Run::new(Filter::default(), Format::Text);
        // Two requests interleaved, and a second one on the same request id but another token.
        run.feed(intent("a", &[1], "2026-11-22T15:20:01.000Z"));
        run.feed(intent("b", &[2], "2026-11-22T15:20:02.000Z"));
        run.feed(intent("a", &[3], "2026-11-22T15:20:03.000Z"));
        run.feed(outcome(
            "b",
            &[2],
            "2026-11-22T15:20:04.000Z",
            "forwarded",
            200,
        ));
        // b completed, but a (earlier) still waits: b is held back.
        assert!(run.output().is_empty(), "{:?}", run.output());
        run.feed(outcome(
            "a",
            &[3],
            "2026-11-22T15:20:05.000Z",
            "rejected",
            403,
        ));
        run.feed(outcome(
            "a",
            &[1],
            "2026-11-22T15:20:06.000Z",
            "forwarded",
            200,
        ));
        assert!(run.query.pending.is_empty() && run.query.holding.is_empty());
        assert!(run.query.held.is_empty() && run.query.held_bytes == 0);
        let (lines, printed, unknown, notes) = run.finish();
        assert_eq!((printed, unknown), (3, 0));
        assert!(notes.is_empty());
        assert_eq!(
            lines,
            [
                "2026-11-22T15:20:01.000Z - team-a 10.0.0.7 update 1 forwarded 200 | name → \"n\", remain_quota → 5",
                "2026-11-22T15:20:02.000Z - team-a 10.0.0.7 update 2 forwarded 200 | name → \"n\", remain_quota → 5",
                "2026-11-22T15:20:03.000Z - team-a 10.0.0.7 update 3 rejected 403 forbidden | name → \"n\", remain_quota → 5",
            ]
        );
    }

    #[test]
    fn a_patchs_two_puts_pair_in_turn_and_a_lone_outcome_is_a_change_of_its_own() {
        let mut run = Run::new(Filter::default(), Format::Json);
        run.feed(intent("p", &[7], "2026-11-22T15:20:01.000Z"));
        run.feed(outcome(
            "p",
            &[7],
            "2026-11-22T15:20:02.000Z",
            "forwarded",
            200,
        ));
        run.feed(intent("p", &[7], "2026-11-22T15:20:03.000Z"));
        run.feed(outcome(
            "p",
            &[7],
            "2026-11-22T15:20:04.000Z",
            "upstream_error",
            502,
        ));
        run.feed(outcome(
            "r",
            &[8],
            "2026-11-22T15:20:05.000Z",
            "rejected",
            403,
        ));
        let (lines, ..) = run.finish();
        let lines: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["intent"]["ts"], "2026-11-22T15:20:01.000Z");
        assert_eq!(lines[0]["outcome"]["ts"], "2026-11-22T15:20:02.000Z");
        assert_eq!(lines[1]["intent"]["ts"], "2026-11-22T15:20:03.000Z");
        assert_eq!(lines[1]["outcome"]["ts"], "2026-11-22T15:20:04.000Z");
        assert_eq!(lines[1]["result"], "upstream_error");
        assert_eq!(lines[2]["intent"], Value::Null);
        assert_eq!(lines[2]["result"], "rejected");
        assert_eq!(
            (lines[2]["token_id"].clone(), lines[2]["ts"].clone()),
            (json!(8), json!("2026-11-22T15:20:05.000Z"))
        );
    }

    #[test]
    fn memory_holds_only_the_intents_in_flight() {
        // 100 000 changes, 8 in flight at once (7 once each outcome is read), never more kept.
        let mut run = Run::new(
            Filter {
                token: Some(5),
                ..Filter::default()
            },
            Format::Text,
        );
        let mut most = 0;
        for n in 0..100_000u64 {
            let id = format!("{n:032x}");
            run.feed(intent(&id, &[n % 10], T));
            if n >= 7 {
                let done = format!("{:032x}", n - 7);
                run.feed(outcome(&done, &[(n - 7) % 10], T, "forwarded", 200));
            }
            let kept: usize = run.query.pending.values().map(VecDeque::len).sum();
            most = most.max(kept);
            assert!(run.query.held.len() <= 8);
        }
        assert_eq!(most, 7);
        // Those that cannot match keep their key only.
        let kept_records = run
            .query
            .pending
            .values()
            .flatten()
            .filter(|p| p.intent.is_some())
            .count();
        assert!(kept_records <= 1, "{kept_records}");
        let (lines, printed, unknown, _) = run.finish();
        // The last seven never got their outcome: one of them names token 5.
        assert_eq!((printed, unknown), (10_000, 1));
        assert_eq!(lines.len(), 10_000);
        assert!(
            lines.last().unwrap().contains(" 5 unknown -"),
            "{:?}",
            lines.last()
        );
    }

    #[test]
    fn a_new_writer_process_settles_the_intents_the_last_one_left() {
        let mut run = Run::new(Filter::default(), Format::Text);
        let first = |n: u64| format!("{:016x}{n:016x}", 0xaaaa_u64);
        let second = |n: u64| format!("{:016x}{n:016x}", 0xbbbb_u64);
        run.feed(intent(&first(1), &[1], "2026-11-22T15:20:01.000Z"));
        run.feed(intent(&first(2), &[2], "2026-11-22T15:20:02.000Z"));
        run.feed(outcome(
            &first(2),
            &[2],
            "2026-11-22T15:20:03.000Z",
            "forwarded",
            200,
        ));
        assert!(run.output().is_empty(), "held behind the first intent");
        // A crash, then a restart: a record of another process.
        run.feed(intent(&second(1), &[3], "2026-11-22T15:30:00.000Z"));
        assert_eq!(run.output().len(), 2, "{:?}", run.output());
        assert!(run.output()[0].contains(" 1 unknown -"));
        assert!(run.query.pending.len() == 1 && run.query.held.is_empty());
        run.feed(outcome(
            &second(1),
            &[3],
            "2026-11-22T15:30:01.000Z",
            "forwarded",
            200,
        ));
        let (lines, printed, unknown, _) = run.finish();
        assert_eq!((printed, unknown), (3, 1));
        assert!(lines[2].contains(" 3 forwarded 200"));
    }

    #[test]
    fn output_held_past_the_cap_is_printed_with_a_note() {
        let mut run = Run::new(Filter::default(), Format::Json);
        run.feed(intent("stuck", &[1], T));
        let big = "x".repeat(1 << 20);
        let mut n = 0;
        while run.output().is_empty() {
            let id = format!("r{n}");
            let mut record = intent(&id, &[2], T);
            record["request"]["name"] = json!(big);
            run.feed(record.clone());
            record["phase"] = json!("outcome");
            record["outcome"] = json!("forwarded");
            run.feed(record);
            n += 1;
            assert!(n < 100, "the cap never released the output");
        }
        assert!(run.query.held_bytes <= MAX_HELD_BYTES);
        assert_eq!(run.query.notes.len(), 1);
        assert!(
            run.query.notes[0].contains("seq 1"),
            "{:?}",
            run.query.notes
        );
        run.feed(outcome("stuck", &[1], T, "forwarded", 200));
        let (lines, ..) = run.finish();
        assert_eq!(lines.len(), n + 1);
        let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        assert_eq!(last["intent"]["request_id"], "stuck");
    }

    #[test]
    fn a_change_of_several_ids_is_a_line_per_id() {
        let mut run = Run::new(Filter::default(), Format::Text);
        let mut delete = intent("d", &[4, 5, 6], T);
        delete["op"] = json!("batch_delete");
        delete["request"] = json!({"ids": [4, 5, 6]});
        delete["before"] = json!({"4": {"name": "four"}, "5": {"name": "five"}, "6": null});
        delete["changes"] = Value::Null;
        run.feed(delete.clone());
        let mut done = delete.clone();
        done["phase"] = json!("outcome");
        done["outcome"] = json!("forwarded");
        done["status"] = json!(200);
        run.feed(done);
        let (lines, ..) = run.finish();
        assert_eq!(
            lines,
            [
                "2026-11-22T15:20:01.000Z - team-a 10.0.0.7 batch_delete 4 - - | before: {\"name\":\"four\"}",
                "2026-11-22T15:20:01.000Z - team-a 10.0.0.7 batch_delete 5 - - | before: {\"name\":\"five\"}",
                "2026-11-22T15:20:01.000Z - team-a 10.0.0.7 batch_delete 6 - -",
            ]
            .map(|l| l.replace(" - - ", " forwarded 200 ").replace(" - -", " forwarded 200"))
        );
    }

    #[test]
    fn changes_omitted_values_and_truncation_are_shown_as_such() {
        let mut run = Run::new(Filter::default(), Format::Text);
        let mut update = intent("u", &[873], T);
        update["v"] = json!(2);
        update["origin"] = json!("gw-1");
        update["truncated"] = json!(true);
        update["changes"] = json!([
            {"field": "model_limits", "from": {"bytes": 200000, "omitted": true, "sha256": "ab12"}, "to": ""},
            {"field": "remain_quota", "from": 500000, "to": 2000000},
            {"field": "status", "from": 1},
            "junk",
        ]);
        run.feed(update.clone());
        let mut done = update.clone();
        done["phase"] = json!("outcome");
        done["outcome"] = json!("forwarded");
        done["status"] = json!(200);
        done["upstream_success"] = json!(false);
        done["truncated"] = Value::Null;
        run.feed(done);
        let mut nothing = intent("n", &[9], T);
        nothing["changes"] = json!([]);
        run.feed(nothing);
        let mut omitted = intent("o", &[10], T);
        omitted["request"] = json!({"bytes": 5, "omitted": true, "sha256": "cd34"});
        run.feed(omitted);
        let (lines, ..) = run.finish();
        assert_eq!(
            lines,
            [
                "2026-11-22T15:20:01.000Z gw-1 team-a 10.0.0.7 update 873 forwarded 200 upstream_success=false truncated | model_limits: <omitted: 200000 bytes, sha256 ab12> → \"\", remain_quota: 500000 → 2000000, status: 1 → -, \"junk\"",
                "2026-11-22T15:20:01.000Z - team-a 10.0.0.7 update 9 unknown - | (nothing changed)",
                "2026-11-22T15:20:01.000Z - team-a 10.0.0.7 update 10 unknown - | request: <omitted: 5 bytes, sha256 cd34>",
            ]
        );
    }

    #[test]
    fn filters_each_decide() {
        let feed = |filter: Filter| {
            let mut run = Run::new(filter, Format::Text);
            run.feed(intent("a", &[1], "2026-11-22T10:00:00.000Z"));
            run.feed(outcome(
                "a",
                &[1],
                "2026-11-22T10:00:00.100Z",
                "forwarded",
                200,
            ));
            let mut b = intent("b", &[2], "2026-11-22T11:00:00.000Z");
            b["client"] = json!("team-b");
            b["op"] = json!("delete");
            run.feed(b.clone());
            b["phase"] = json!("outcome");
            b["outcome"] = json!("forwarded");
            b["status"] = json!(200);
            b["upstream_success"] = json!(false);
            run.feed(b);
            run.feed(outcome(
                "c",
                &[3],
                "2026-11-22T12:00:00.000Z",
                "rejected",
                403,
            ));
            run.feed(outcome(
                "d",
                &[4],
                "2026-11-22T13:00:00.000Z",
                "timeout",
                504,
            ));
            run.feed(intent("e", &[5], "2026-11-22T14:00:00.000Z"));
            let (lines, ..) = run.finish();
            lines
                .iter()
                .map(|l| l.split(' ').nth(5).unwrap().parse::<u64>().unwrap())
                .collect::<Vec<u64>>()
        };
        let at = |t| parse_rfc3339(t);
        assert_eq!(feed(Filter::default()), [1, 2, 3, 4, 5]);
        let f = Filter::default;
        assert_eq!(
            feed(Filter {
                token: Some(3),
                ..f()
            }),
            [3]
        );
        assert_eq!(
            feed(Filter {
                client: Some("team-b".into()),
                ..f()
            }),
            [2]
        );
        assert_eq!(
            feed(Filter {
                op: Some("delete".into()),
                ..f()
            }),
            [2]
        );
        assert_eq!(
            feed(Filter {
                outcome: Some("forwarded".into()),
                ..f()
            }),
            [1, 2]
        );
        assert_eq!(
            feed(Filter {
                outcome: Some("unknown".into()),
                ..f()
            }),
            [5]
        );
        assert_eq!(
            feed(Filter {
                failed: true,
                ..f()
            }),
            [2, 3, 4, 5]
        );
        assert_eq!(
            feed(Filter {
                since: at("2026-11-22T11:00:00Z"),
                ..f()
            }),
            [2, 3, 4, 5]
        );
        assert_eq!(
            feed(Filter {
                until: at("2026-11-22T11:00:00Z"),
                ..f()
            }),
            [1]
        );
        assert_eq!(
            feed(Filter {
                since: at("2026-11-22T10:00:00.001Z"),
                until: at("2026-11-22T13:00:00.001Z"),
                failed: true,
                ..f()
            }),
            [2, 3, 4]
        );
        // The time is the intent's: an intent before --since keeps its outcome out too.
        assert_eq!(
            feed(Filter {
                since: at("2026-11-22T10:00:00.050Z"),
                ..f()
            }),
            [2, 3, 4, 5]
        );
    }

    /// Any JSON value in any member: nothing panics, every line is one line.
    fn any_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            "[a-z \\n|→\\-0-9]{0,8}".prop_map(Value::String),
            Just(json!("intent")),
            Just(json!("outcome")),
            Just(json!("2026-11-22T15:20:01.000Z")),
            Just(json!({"omitted": true})),
            Just(json!({"omitted": true, "bytes": "x", "sha256": []})),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("field".to_owned()),
                        Just("from".to_owned()),
                        Just("to".to_owned()),
                        Just("1".to_owned()),
                        "[a-z]{1,3}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn records_of_any_shape_never_crash_the_query(
            records in prop::collection::vec(
                prop::collection::btree_map(
                    prop_oneof![
                        Just("phase"), Just("request_id"), Just("token_ids"), Just("ts"),
                        Just("client"), Just("op"), Just("origin"), Just("outcome"),
                        Just("status"), Just("reason"), Just("request"), Just("before"),
                        Just("changes"), Just("truncated"), Just("upstream_success"),
                        Just("suppressed"), Just("source_ip"),
                    ],
                    any_value(),
                    0..12,
                ),
                0..12,
            ),
            json_format in any::<bool>(),
            failed in any::<bool>(),
        ) {
            let filter = Filter {
                failed,
                since: if failed { Some(0) } else { None },
                ..Filter::default()
            };
            let format = if json_format { Format::Json } else { Format::Text };
            let mut run = Run::new(filter, format);
            for fields in records {
                let mut record: Map<String, Value> =
                    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                // Pair some of them.
                if record.get("phase") == Some(&json!("intent")) {
                    record.insert("request_id".into(), json!("x"));
                }
                run.feed(Value::Object(record));
            }
            let (lines, printed, ..) = run.finish();
            prop_assert_eq!(lines.len() as u64, printed);
            for line in lines {
                if json_format {
                    prop_assert!(serde_json::from_str::<Value>(&line).is_ok());
                }
            }
        }
    }
}
