//! Checking a trail (SPEC §6, verify): every line one canonical JSON record, every `hash`, every
//! `prev` link, `seq` without gaps, and the order of the files. The first bad record is reported
//! by file, line and `seq`.
//!
//! [`trail_files`] lists the files of a trail in order, [`Records`] reads them all (streaming, one
//! line at a time, each record checked before it is handed out: `verify` and `audit query` both
//! read through it), [`verify`] reads them to the end, and [`tail`] reads only the end of the last
//! one (what the writer resumes from).

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::canonical::write_object;
use super::chain::{hash_of, AuditKey, GENESIS};

/// The longest line read; a longer one is reported rather than held in memory. It must exceed any
/// record the gateway writes, or the gateway would refuse to start on its own trail: records are
/// at most `audit.max_record_bytes` (16 MiB at most) since issue 17, and trails written before
/// held records of a checked body of up to 16 MiB plus an `upstream_message` of up to 16 MiB.
pub const MAX_LINE_BYTES: usize = 48 << 20;

/// Reads one line of a trail file into `buf`, its `\n` included, and no more than
/// `MAX_LINE_BYTES + 1` bytes of it: a longer line stops there (its length then says it is too
/// long), so a damaged file without newlines never fills memory.
pub(crate) fn read_line<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<usize> {
    reader
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', buf)
}

/// The files of the trail whose live file is `path`, oldest first: `<path>.k`, `<path>.k+1`, …
/// `<path>.n` (numeric order, higher is newer), then `<path>` if it exists. The oldest rotated
/// files may be gone (retention is the operator's, SPEC §6), so the numbering may start above 1;
/// a gap inside it is an error naming the missing file. A directory that does not exist gives no
/// files.
pub fn trail_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let numbers = rotated_numbers(path)?;
    if let Some(pair) = numbers.windows(2).find(|pair| pair[1] != pair[0] + 1) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} is missing: the trail has {} and {} but not the files between them",
                rotated(path, pair[0] + 1).display(),
                rotated(path, pair[0]).display(),
                rotated(path, pair[1]).display()
            ),
        ));
    }
    Ok(with_live(path, &numbers))
}

/// What the writer needs to resume (SPEC §6, retention): every file of the trail that is present,
/// oldest first, whatever is missing between them (only the newest record matters to it), and
/// the highest `n` of `<path>.<n>` (0 when none), which the next rotation must pass.
pub fn present_files(path: &Path) -> io::Result<(Vec<PathBuf>, u64)> {
    let numbers = rotated_numbers(path)?;
    let highest = numbers.last().copied().unwrap_or(0);
    Ok((with_live(path, &numbers), highest))
}

/// The rotated file `<path>.<n>`.
fn rotated(path: &Path, n: u64) -> PathBuf {
    let mut file = path.as_os_str().to_owned();
    file.push(format!(".{n}"));
    PathBuf::from(file)
}

/// `<path>.<n>` for each of `numbers`, then `<path>` if it exists.
fn with_live(path: &Path, numbers: &[u64]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = numbers.iter().map(|&n| rotated(path, n)).collect();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    files
}

/// The numbers n ≥ 1 of the files `<path>.<n>` (plain decimal) beside `path`, ascending.
fn rotated_numbers(path: &Path) -> io::Result<Vec<u64>> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        ));
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(io::Error::new(
                error.kind(),
                format!("cannot list {}: {error}", dir.display()),
            ))
        }
    };
    let prefix = format!("{name}.");
    let mut numbers = Vec::new();
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(suffix) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        // Only `<path>.<n>` in plain decimal, n ≥ 1 (not `.01`, not `.tmp`).
        if suffix.is_empty()
            || suffix.starts_with('0')
            || !suffix.bytes().all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(n) = suffix.parse::<u64>() {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// What an intact trail holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The number of records.
    pub records: u64,
    /// The number of files read (empty ones included).
    pub files: usize,
    /// The `hash` of the last record, or [`GENESIS`] for an empty trail.
    pub head: String,
    /// The `seq` of the last record (0 for an empty trail).
    pub last_seq: u64,
    /// The `seq` of the first record: 1 for a whole trail, more when its oldest files were
    /// archived or deleted (0 for an empty trail).
    pub first_seq: u64,
}

/// The first bad record of a trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The file holding it.
    pub file: PathBuf,
    /// Its line in that file, from 1 (0 when the file itself could not be read).
    pub line: usize,
    /// Its `seq`, when it could be read.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
    /// Whether it is the live file's last line left torn by a crash in the middle of a write (no
    /// newline at its end, or not JSON at all), which `tokengate audit repair` cuts off. Only
    /// [`tail`] says so: anywhere else such a line is damage, not a torn write.
    pub torn: bool,
}

impl Failure {
    fn new(file: &Path, line: usize, seq: Option<u64>, reason: impl Into<String>) -> Failure {
        Failure {
            file: file.to_path_buf(),
            line,
            seq,
            reason: reason.into(),
            torn: false,
        }
    }

    fn torn(mut self) -> Failure {
        self.torn = true;
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for Failure {}

/// Where the chain stands after the records read so far.
struct Chain {
    records: u64,
    first_seq: u64,
    last_seq: u64,
    head: String,
}

/// Verifies the trail made of `files`, oldest first: each line one JSON object in canonical form,
/// `v` 1 or 2, its `hash` the HMAC of the rest under `key`, its `prev` the previous record's
/// `hash`, its `seq` the previous one plus 1, and the last line complete. Empty files are allowed.
/// Returns the first bad record.
///
/// The first record is either the trail's very first (`seq` 1, `prev` [`GENESIS`]) or, when the
/// oldest files were archived or deleted (SPEC §6, retention), a later one whose `prev` cannot be
/// checked: the summary's `first_seq` says where the trail starts, and everything from there on
/// must link up. A record with `seq` above 1 and a genesis `prev` is refused: it claims to start a
/// chain it is not the start of.
pub fn verify(files: &[PathBuf], key: &AuditKey) -> Result<Summary, Failure> {
    let mut records = Records::new(files, key);
    for record in &mut records {
        record?;
    }
    Ok(records.summary())
}

/// One record of a trail as [`Records`] yields it: its hash, its `prev` link and its `seq`
/// already checked against the records before it.
#[derive(Debug)]
pub struct Verified {
    /// The index, in the files given to [`Records::new`], of the file holding it.
    pub file: usize,
    /// Its line in that file, from 1.
    pub line: usize,
    /// Its `seq`.
    pub seq: u64,
    /// The record, `hash` included.
    pub record: Map<String, Value>,
}

/// The records of a trail, read and checked one line at a time (the streaming reader behind
/// [`verify`] and `tokengate audit query`): memory holds one line, never the trail, whatever its
/// size. Each item is a record that verified and links to the one before it, or the first bad
/// record, after which the iterator ends: a reader never sees a record past a break, so nothing
/// built on it can silently read a forged trail. Once it has ended without a failure,
/// [`Records::summary`] tells what the intact trail held.
pub struct Records<'a> {
    files: &'a [PathBuf],
    /// The audit key; `None` when only links are checked ([`Records::unkeyed`]).
    key: Option<&'a AuditKey>,
    /// The next file to open.
    next_file: usize,
    /// The file being read: its index and reader.
    reader: Option<(usize, BufReader<File>)>,
    /// The number of the last line read in the current file.
    number: usize,
    buf: Vec<u8>,
    chain: Chain,
    /// Set at the first bad record: nothing is read after it.
    ended: bool,
}

impl<'a> Records<'a> {
    /// Reads the trail made of `files`, oldest first, checking records under `key` (the checks of
    /// [`verify`]).
    pub fn new(files: &'a [PathBuf], key: &'a AuditKey) -> Records<'a> {
        Records::with_key(files, Some(key))
    }

    /// Reads the trail made of `files` without the audit key (SPEC §6.3, `audit verify
    /// --public-key` alone): every check of [`Records::new`] but the recomputing of each `hash`,
    /// which must still be 64 lowercase hex digits. Links (`prev` = the previous record's `hash`
    /// as written) and `seq` continuity are checked; what proves the records unchanged is then
    /// the signed checkpoints.
    pub fn unkeyed(files: &'a [PathBuf]) -> Records<'a> {
        Records::with_key(files, None)
    }

    fn with_key(files: &'a [PathBuf], key: Option<&'a AuditKey>) -> Records<'a> {
        Records {
            files,
            key,
            next_file: 0,
            reader: None,
            number: 0,
            buf: Vec::with_capacity(4096),
            chain: Chain {
                records: 0,
                first_seq: 0,
                last_seq: 0,
                head: GENESIS.to_owned(),
            },
            ended: false,
        }
    }

    /// The files being read, as given.
    pub fn files(&self) -> &'a [PathBuf] {
        self.files
    }

    /// The exact line of the record last yielded, newline included (what a checkpoint's
    /// `lines_sha256` covers).
    pub fn line(&self) -> &[u8] {
        &self.buf
    }

    /// What the records read so far hold: the whole trail's summary once the iterator has ended
    /// without a failure.
    pub fn summary(&self) -> Summary {
        Summary {
            records: self.chain.records,
            files: self.files.len(),
            head: self.chain.head.clone(),
            last_seq: self.chain.last_seq,
            first_seq: self.chain.first_seq,
        }
    }

    /// Ends the iteration with `failure`.
    fn fail(&mut self, failure: Failure) -> Option<Result<Verified, Failure>> {
        self.ended = true;
        self.reader = None;
        Some(Err(failure))
    }
}

impl Iterator for Records<'_> {
    type Item = Result<Verified, Failure>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        loop {
            let Some((index, reader)) = self.reader.as_mut() else {
                let index = self.next_file;
                let file = self.files.get(index)?;
                self.next_file += 1;
                self.number = 0;
                match File::open(file) {
                    Ok(handle) => {
                        self.reader = Some((index, BufReader::with_capacity(64 << 10, handle)))
                    }
                    Err(e) => {
                        return self.fail(Failure::new(file, 0, None, format!("cannot open: {e}")))
                    }
                }
                continue;
            };
            let index = *index;
            let file = &self.files[index];
            self.buf.clear();
            let read = match read_line(reader, &mut self.buf) {
                Ok(read) => read,
                Err(e) => {
                    let failure =
                        Failure::new(file, self.number + 1, None, format!("cannot read: {e}"));
                    return self.fail(failure);
                }
            };
            if read == 0 {
                self.reader = None;
                continue;
            }
            self.number += 1;
            let number = self.number;
            if self.buf.last() != Some(&b'\n') {
                let reason = if self.buf.len() > MAX_LINE_BYTES {
                    format!("the line is longer than {MAX_LINE_BYTES} bytes")
                } else {
                    "the last line is incomplete (no newline at its end): a torn write".to_owned()
                };
                return self.fail(Failure::new(file, number, None, reason));
            }
            let chain = &self.chain;
            let first = chain.records == 0;
            let checked = check_record_keyed(&self.buf[..self.buf.len() - 1], self.key).and_then(
                |(record, seq, hash)| {
                    if first && seq > 1 {
                        check_later_start(&record, seq)?;
                    } else {
                        check_link(&record, seq, chain.last_seq + 1, &chain.head)?;
                    }
                    Ok((record, seq, hash))
                },
            );
            let (record, seq, hash) = match checked {
                Ok(checked) => checked,
                Err((seq, reason)) => return self.fail(Failure::new(file, number, seq, reason)),
            };
            if first {
                self.chain.first_seq = seq;
            }
            self.chain.records += 1;
            self.chain.last_seq = seq;
            self.chain.head = hash;
            return Some(Ok(Verified {
                file: index,
                line: number,
                seq,
                record,
            }));
        }
    }
}

/// Checks the first record of a trail whose oldest records are not present: its `prev` must be a
/// hash (what the record before it, not present, carried), never the genesis value.
fn check_later_start(record: &Map<String, Value>, seq: u64) -> Result<(), Fault> {
    match record.get("prev").and_then(Value::as_str) {
        Some(GENESIS) => Err((
            Some(seq),
            format!("seq {seq} where 1 was expected: the record's prev is the genesis value, so it claims to start the trail, but a trail starts at seq 1"),
        )),
        Some(prev) if is_hex_hash(prev) => Ok(()),
        Some(_) => Err((Some(seq), "prev is not a hash (64 lowercase hex digits)".to_owned())),
        None => Err((Some(seq), "the record has no prev".to_owned())),
    }
}

/// Whether `text` has the form of a `hash`: 64 lowercase hex digits.
fn is_hex_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A fault found in one record: its `seq` if readable, and the reason.
type Fault = (Option<u64>, String);

/// The record versions read: 1, and 2 (SPEC §6: version 2 adds `origin` and the fields of §6.1;
/// version 1 records stay readable by every tool).
const VERSIONS: [u64; 2] = [1, 2];

/// Checks one line (without its `\n`) on its own: a canonical JSON object, `v` 1 or 2, a `seq`,
/// and a `hash` that verifies. Returns the record, its `seq` and its `hash`. The checkpoint writer
/// reads back the lines it resumes from with it.
pub(crate) fn check_record(
    bytes: &[u8],
    key: &AuditKey,
) -> Result<(Map<String, Value>, u64, String), Fault> {
    check_record_keyed(bytes, Some(key))
}

/// [`check_record`], or without a key ([`Records::unkeyed`]) the same checks but the `hash`
/// recomputed: it must then be 64 lowercase hex digits.
fn check_record_keyed(
    bytes: &[u8],
    key: Option<&AuditKey>,
) -> Result<(Map<String, Value>, u64, String), Fault> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| (None, format!("the line is not valid JSON: {e}")))?;
    let Value::Object(record) = value else {
        return Err((None, "the line is not a JSON object".to_owned()));
    };
    let seq = record.get("seq").and_then(Value::as_u64);
    match record.get("v") {
        Some(v) if v.as_u64().is_some_and(|v| VERSIONS.contains(&v)) => {}
        Some(v) => return Err((seq, format!("v is {v}, not 1 or 2"))),
        None => return Err((seq, "the record has no v".to_owned())),
    }
    let Some(hash) = record.get("hash").and_then(Value::as_str) else {
        return Err((seq, "the record has no hash".to_owned()));
    };
    if key.is_none() && !is_hex_hash(hash) {
        return Err((seq, "hash is not 64 lowercase hex digits".to_owned()));
    }
    if key.is_some_and(|key| hash_of(key, &record) != hash) {
        return Err((
            seq,
            "hash mismatch: the record was changed, or it was sealed with another key".to_owned(),
        ));
    }
    // The hash covers the parsed record; the line must also be exactly its canonical form, so
    // that what a reader of the file sees (duplicate members, say) is what was hashed.
    let mut canonical_form = Vec::with_capacity(bytes.len());
    write_object(&record, None, &mut canonical_form);
    if canonical_form != bytes {
        return Err((
            seq,
            "the line is not the canonical JSON (RFC 8785) of its record".to_owned(),
        ));
    }
    let Some(seq) = seq.filter(|&s| s > 0) else {
        return Err((
            None,
            "the record has no seq (a positive integer)".to_owned(),
        ));
    };
    let hash = hash.to_owned();
    Ok((record, seq, hash))
}

/// Checks that a record follows the previous one: `seq` one more, `prev` its `hash`.
fn check_link(
    record: &Map<String, Value>,
    seq: u64,
    expected_seq: u64,
    head: &str,
) -> Result<(), Fault> {
    if seq != expected_seq {
        let what = if seq > expected_seq {
            "records are missing before it"
        } else {
            "records are out of order or repeated"
        };
        return Err((
            Some(seq),
            format!("seq {seq} where {expected_seq} was expected: {what}"),
        ));
    }
    match record.get("prev").and_then(Value::as_str) {
        Some(prev) if prev == head => Ok(()),
        Some(_) if head == GENESIS => Err((
            Some(seq),
            "prev is not the genesis value (64 zeros) although this is the first record".to_owned(),
        )),
        Some(_) => Err((
            Some(seq),
            "prev does not match the hash of the previous record: the chain is broken".to_owned(),
        )),
        None => Err((Some(seq), "the record has no prev".to_owned())),
    }
}

/// Checks one line (without its newline) of a trail read from elsewhere than its files (the
/// central store, SPEC §6.3) as [`Records`] checks a line of a file: a canonical record whose
/// `hash` verifies under `key`, with `seq` `expected_seq` and `prev` `head` (the hash of the
/// record before, or [`GENESIS`]). Returns the record and its `hash`, or the `seq` read (if any)
/// and the reason.
pub fn check_line(
    bytes: &[u8],
    key: &AuditKey,
    expected_seq: u64,
    head: &str,
) -> Result<(Map<String, Value>, String), Fault> {
    let (record, seq, hash) = check_record(bytes, key)?;
    check_link(&record, seq, expected_seq, head)?;
    Ok((record, hash))
}

/// The `(seq, hash)` of the last record of the trail made of `files` (the last line of the last
/// non-empty file), after checking that this line is complete and that its record verifies
/// under `key`; `None` when the trail holds no record. Only the end of that file is read.
pub fn tail(files: &[PathBuf], key: &AuditKey) -> Result<Option<(u64, String)>, Failure> {
    for file in files.iter().rev() {
        let io_failure = |e: io::Error| Failure::new(file, 0, None, format!("cannot read: {e}"));
        let mut handle = File::open(file).map_err(io_failure)?;
        let len = handle.metadata().map_err(io_failure)?.len();
        if len == 0 {
            continue;
        }
        let (start, bytes) = last_line(&mut handle, len).map_err(io_failure)?;
        let number = || line_number(file, start);
        if bytes.last() != Some(&b'\n') {
            return Err(Failure::new(
                file,
                number(),
                None,
                "the last line is incomplete (no newline at its end): a torn write",
            )
            .torn());
        }
        if bytes.len() > MAX_LINE_BYTES + 1 {
            return Err(Failure::new(
                file,
                number(),
                None,
                format!("the last line is longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        let line = &bytes[..bytes.len() - 1];
        return match check_record(line, key) {
            Ok((_, seq, hash)) => Ok(Some((seq, hash))),
            Err((seq, reason)) => {
                let failure = Failure::new(file, number(), seq, reason);
                Err(if is_record(line) {
                    failure
                } else {
                    failure.torn()
                })
            }
        };
    }
    Ok(None)
}

/// Whether `line` (without its `\n`) is a JSON object at all. A last line that is not is what a
/// crash in the middle of a write leaves (part of a record, or zeros where the file system had
/// already extended the file), never a line the writer wrote.
pub(crate) fn is_record(line: &[u8]) -> bool {
    serde_json::from_slice::<Map<String, Value>>(line).is_ok()
}

/// The last line of a non-empty file of `len` bytes (with its `\n` if it has one), and the offset
/// where it starts. Reads backwards from the end, in growing windows, up to one line's worth.
fn last_line(file: &mut File, len: u64) -> io::Result<(u64, Vec<u8>)> {
    let limit = MAX_LINE_BYTES as u64 + 2;
    let mut window: u64 = 64 << 10;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::with_capacity((len - start) as usize);
        file.by_ref().take(len - start).read_to_end(&mut bytes)?;
        // The newline that ends the line before the last one (the last byte is left out: it may be
        // the last line's own newline).
        let body = &bytes[..bytes.len().saturating_sub(1)];
        if let Some(at) = body.iter().rposition(|&b| b == b'\n') {
            let at = at + 1;
            return Ok((start + at as u64, bytes.split_off(at)));
        }
        if start == 0 || window >= limit {
            return Ok((start, bytes));
        }
        window = (window * 4).min(limit);
    }
}

/// The 1-based number of the line starting at byte `offset` of `file` (0 if it cannot be read);
/// for failure reports only.
fn line_number(file: &Path, offset: u64) -> usize {
    let count = || -> io::Result<usize> {
        let mut reader = BufReader::with_capacity(64 << 10, File::open(file)?).take(offset);
        let mut lines = 1;
        loop {
            let chunk = reader.fill_buf()?;
            if chunk.is_empty() {
                return Ok(lines);
            }
            lines += chunk.iter().filter(|&&b| b == b'\n').count();
            let used = chunk.len();
            reader.consume(used);
        }
    };
    count().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{line, seal};
    use serde_json::json;
    use std::io::Write;

    fn key() -> AuditKey {
        AuditKey::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    /// Writes `counts[i]` records to file i (`path.1`, …, then `path` for the last), chained.
    fn trail(dir: &Path, counts: &[usize]) -> (PathBuf, Vec<PathBuf>, Vec<String>) {
        let path = dir.join("audit.jsonl");
        let key = key();
        let mut prev = GENESIS.to_owned();
        let mut seq = 0u64;
        let mut files = Vec::new();
        let mut hashes = Vec::new();
        for (i, &count) in counts.iter().enumerate() {
            let file = if i + 1 == counts.len() {
                path.clone()
            } else {
                PathBuf::from(format!("{}.{}", path.display(), i + 1))
            };
            let mut out = File::create(&file).unwrap();
            for _ in 0..count {
                seq += 1;
                let Value::Object(mut record) = json!({
                    "v": 1, "seq": seq, "ts": "2025-06-01T12:00:00.000Z", "phase": "intent",
                    "request_id": format!("req-{seq}"), "op": "delete", "token_ids": [seq],
                    "prev": prev,
                }) else {
                    unreachable!()
                };
                seal(&key, &mut record);
                prev = record["hash"].as_str().unwrap().to_owned();
                hashes.push(prev.clone());
                out.write_all(&line(&record)).unwrap();
            }
            files.push(file);
        }
        (path, files, hashes)
    }

    fn lines(file: &Path) -> Vec<String> {
        std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(file: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        if !lines.is_empty() {
            text.push('\n');
        }
        std::fs::write(file, text).unwrap();
    }

    #[test]
    fn trail_files_are_listed_oldest_first_in_numeric_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        assert!(trail_files(&path).unwrap().is_empty());
        assert!(trail_files(&dir.path().join("nodir/a.jsonl"))
            .unwrap()
            .is_empty());
        for n in 1..=11 {
            std::fs::write(format!("{}.{n}", path.display()), "").unwrap();
        }
        // Not part of the trail.
        for other in [
            "a.jsonl.tmp",
            "a.jsonl.01",
            "a.jsonl.0",
            "b.jsonl.12",
            "a.jsonl.1x",
        ] {
            std::fs::write(dir.path().join(other), "").unwrap();
        }
        let files = trail_files(&path).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let expected: Vec<String> = (1..=11).map(|n| format!("a.jsonl.{n}")).collect();
        assert_eq!(names, expected);
        std::fs::write(&path, "").unwrap();
        assert_eq!(trail_files(&path).unwrap().last(), Some(&path));
        assert_eq!(trail_files(&path).unwrap().len(), 12);
    }

    #[test]
    fn a_gap_in_the_numbering_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        for n in [1, 3] {
            std::fs::write(format!("{}.{n}", path.display()), "").unwrap();
        }
        let error = trail_files(&path).unwrap_err().to_string();
        assert!(error.contains("a.jsonl.2 is missing"), "{error}");
        // The writer lists what is there all the same, and passes the highest number.
        let (present, highest) = present_files(&path).unwrap();
        assert_eq!(present.len(), 2);
        assert_eq!(highest, 3);
        // The oldest files archived: the trail starts at the oldest one left.
        std::fs::remove_file(format!("{}.1", path.display())).unwrap();
        let files = trail_files(&path).unwrap();
        assert_eq!(files, [PathBuf::from(format!("{}.3", path.display()))]);
        std::fs::write(format!("{}.4", path.display()), "").unwrap();
        std::fs::write(format!("{}.6", path.display()), "").unwrap();
        let error = trail_files(&path).unwrap_err().to_string();
        assert!(error.contains("a.jsonl.5 is missing"), "{error}");
        assert_eq!(present_files(&path).unwrap().1, 6);
        assert_eq!(present_files(&dir.path().join("none")).unwrap().1, 0);
    }

    #[test]
    fn an_intact_trail_verifies_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let (path, files, hashes) = trail(dir.path(), &[3, 4, 0]);
        assert_eq!(trail_files(&path).unwrap(), files);
        let summary = verify(&files, &key()).unwrap();
        assert_eq!(
            summary,
            Summary {
                records: 7,
                files: 3,
                head: hashes[6].clone(),
                last_seq: 7,
                first_seq: 1,
            }
        );
        // The tail skips the empty live file.
        assert_eq!(tail(&files, &key()).unwrap(), Some((7, hashes[6].clone())));
        assert_eq!(
            verify(&[], &key()).unwrap(),
            Summary {
                records: 0,
                files: 0,
                head: GENESIS.to_owned(),
                last_seq: 0,
                first_seq: 0,
            }
        );
        assert_eq!(tail(&[], &key()).unwrap(), None);
        assert_eq!(tail(&files[2..], &key()).unwrap(), None);
    }

    fn failure(files: &[PathBuf]) -> Failure {
        verify(files, &key()).unwrap_err()
    }

    #[test]
    fn an_edited_record_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let (_, files, _) = trail(dir.path(), &[3, 3]);
        let mut l = lines(&files[1]);
        l[1] = l[1].replace("\"op\":\"delete\"", "\"op\":\"create\"");
        write_lines(&files[1], &l);
        let f = failure(&files);
        assert_eq!(
            (f.file.clone(), f.line, f.seq),
            (files[1].clone(), 2, Some(5))
        );
        assert!(f.reason.contains("hash mismatch"), "{f}");
        assert_eq!(
            f.to_string(),
            format!("{}:2 (seq 5): {}", files[1].display(), f.reason)
        );
    }

    #[test]
    fn deleted_swapped_and_dropped_records_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let (_, files, _) = trail(dir.path(), &[3, 3, 3]);
        let original = lines(&files[0]);

        let mut l = original.clone();
        l.remove(1);
        write_lines(&files[0], &l);
        let f = failure(&files);
        assert_eq!((f.line, f.seq), (2, Some(3)));
        assert!(f.reason.contains("missing"), "{f}");

        // The first two swapped: seq 2 could start a trail whose first record is not present,
        // but seq 1 cannot follow it.
        let mut l = original.clone();
        l.swap(0, 1);
        write_lines(&files[0], &l);
        let f = failure(&files);
        assert_eq!((f.line, f.seq), (2, Some(1)));
        assert!(f.reason.contains("out of order"), "{f}");

        // The very first record cut off is what archiving the oldest records looks like: the
        // summary says the trail starts at seq 2 (what retention allows, SPEC §6), never 1.
        let mut l = original.clone();
        l.remove(0);
        write_lines(&files[0], &l);
        assert_eq!(verify(&files, &key()).unwrap().first_seq, 2);

        // The last record of the first file removed: caught at the first of the next.
        let mut l = original.clone();
        l.pop();
        write_lines(&files[0], &l);
        let f = failure(&files);
        assert_eq!(
            (f.file.clone(), f.line, f.seq),
            (files[1].clone(), 1, Some(4))
        );
        write_lines(&files[0], &original);

        // A middle file left out, or the files out of order.
        let f = failure(&[files[0].clone(), files[2].clone()]);
        assert_eq!(
            (f.file.clone(), f.line, f.seq),
            (files[2].clone(), 1, Some(7))
        );
        let f = failure(&[files[1].clone(), files[0].clone(), files[2].clone()]);
        assert_eq!(
            (f.file.clone(), f.line, f.seq),
            (files[0].clone(), 1, Some(1))
        );
        assert!(f.reason.contains("out of order"), "{f}");
        // The first file left out (archived): the trail starts at seq 4, and links up from there.
        let rest = verify(&files[1..], &key()).unwrap();
        assert_eq!((rest.first_seq, rest.last_seq, rest.records), (4, 9, 6));
        // ... and from there on the order still counts.
        let f = failure(&[files[1].clone(), files[2].clone(), files[0].clone()]);
        assert_eq!((f.file.clone(), f.seq), (files[0].clone(), Some(1)));
        assert!(verify(&files, &key()).is_ok());
    }

    #[test]
    fn a_relinked_record_with_the_right_seq_is_caught_by_prev() {
        // A record sealed again with the key, its seq right but linked to another chain (as one
        // taken from another trail would be): only prev differs, and its hash verifies.
        let dir = tempfile::tempdir().unwrap();
        let (_, files, _) = trail(dir.path(), &[3]);
        let mut l = lines(&files[0]);
        let mut record: Map<String, Value> = serde_json::from_str(&l[1]).unwrap();
        record.insert("prev".into(), json!("f".repeat(64)));
        seal(&key(), &mut record);
        l[1] = String::from_utf8(line(&record))
            .unwrap()
            .trim_end()
            .to_owned();
        write_lines(&files[0], &l);
        let f = failure(&files);
        assert_eq!((f.line, f.seq), (2, Some(2)));
        assert!(f.reason.contains("prev"), "{f}");
    }

    #[test]
    fn torn_lines_wrong_keys_and_junk_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let (_, files, _) = trail(dir.path(), &[2, 2]);
        let other = AuditKey::new(b"another key that is long enough!!").unwrap();
        let f = verify(&files, &other).unwrap_err();
        assert_eq!(
            (f.file.clone(), f.line, f.seq),
            (files[0].clone(), 1, Some(1))
        );
        assert!(tail(&files, &other).is_err());

        let whole = std::fs::read(&files[1]).unwrap();
        std::fs::write(&files[1], &whole[..whole.len() - 10]).unwrap();
        let f = failure(&files);
        assert_eq!((f.file.clone(), f.line, f.seq), (files[1].clone(), 2, None));
        assert!(f.reason.contains("torn"), "{f}");
        let t = tail(&files, &key()).unwrap_err();
        assert_eq!((t.line, t.reason.clone()), (2, f.reason.clone()));
        // Only the newline missing is a torn write too.
        std::fs::write(&files[1], &whole[..whole.len() - 1]).unwrap();
        assert!(failure(&files).reason.contains("torn"));
        assert!(tail(&files, &key()).unwrap_err().reason.contains("torn"));

        for junk in ["", "[]", "{\"v\":1", "not json"] {
            let mut l = lines(&files[0]);
            l.insert(1, junk.to_owned());
            write_lines(&files[1], &[]);
            write_lines(&files[0], &l);
            let f = failure(&files);
            assert_eq!((f.line, f.seq), (2, None), "{junk:?}: {f}");
        }
    }

    #[test]
    fn a_non_canonical_line_is_caught_even_with_a_valid_hash() {
        let dir = tempfile::tempdir().unwrap();
        let (_, files, _) = trail(dir.path(), &[2]);
        let mut l = lines(&files[0]);
        // A duplicate member: the parser keeps the last one, which is the hashed value.
        l[0] = l[0].replacen("{", "{\"op\":\"create\",", 1);
        write_lines(&files[0], &l);
        let f = failure(&files);
        assert_eq!((f.line, f.seq), (1, Some(1)));
        assert!(f.reason.contains("canonical"), "{f}");
    }

    #[test]
    fn a_later_start_must_not_claim_the_genesis() {
        // Records cut from the front and the first one left re-sealed as if it began the trail:
        // a trail that starts later must carry the hash of a record before it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let Value::Object(mut record) = json!({"v": 1, "seq": 5, "prev": GENESIS}) else {
            unreachable!()
        };
        seal(&key(), &mut record);
        std::fs::write(&path, line(&record)).unwrap();
        let f = failure(std::slice::from_ref(&path));
        assert_eq!((f.line, f.seq), (1, Some(5)));
        assert!(f.reason.contains("genesis"), "{f}");
        record.insert("prev".into(), json!("1".repeat(64)));
        seal(&key(), &mut record);
        std::fs::write(&path, line(&record)).unwrap();
        let summary = verify(std::slice::from_ref(&path), &key()).unwrap();
        assert_eq!((summary.first_seq, summary.last_seq), (5, 5));
        record.insert("prev".into(), json!("xyz"));
        seal(&key(), &mut record);
        std::fs::write(&path, line(&record)).unwrap();
        assert!(failure(std::slice::from_ref(&path))
            .reason
            .contains("not a hash"));
    }

    #[test]
    fn v_must_be_1_or_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        // Version 2 (SPEC §6.1) reads as version 1 does, and the two mix in one trail.
        let Value::Object(mut first) = json!({"v": 2, "seq": 1, "prev": GENESIS}) else {
            unreachable!()
        };
        seal(&key(), &mut first);
        let Value::Object(mut second) = json!({"v": 1, "seq": 2, "prev": first["hash"]}) else {
            unreachable!()
        };
        seal(&key(), &mut second);
        let mut bytes = line(&first);
        bytes.extend(line(&second));
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            verify(std::slice::from_ref(&path), &key()).unwrap().records,
            2
        );
        for v in [json!(3), json!(0), json!("2"), Value::Null] {
            let Value::Object(mut record) = json!({"v": v, "seq": 1, "prev": GENESIS}) else {
                unreachable!()
            };
            seal(&key(), &mut record);
            std::fs::write(&path, line(&record)).unwrap();
            let f = failure(std::slice::from_ref(&path));
            assert_eq!((f.line, f.seq), (1, Some(1)));
            assert!(f.reason.contains("not 1 or 2"), "{f}");
        }
    }

    #[test]
    fn records_are_yielded_in_order_and_stop_at_the_first_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let (_, files, hashes) = trail(dir.path(), &[2, 0, 3]);
        let seen: Vec<(usize, usize, u64, String)> = Records::new(&files, &key())
            .map(|r| {
                let r = r.unwrap();
                (
                    r.file,
                    r.line,
                    r.seq,
                    r.record["hash"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (0, 1, 1, hashes[0].clone()),
                (0, 2, 2, hashes[1].clone()),
                (2, 1, 3, hashes[2].clone()),
                (2, 2, 4, hashes[3].clone()),
                (2, 3, 5, hashes[4].clone()),
            ]
        );
        let mut l = lines(&files[2]);
        l[1] = l[1].replace("\"op\":\"delete\"", "\"op\":\"create\"");
        write_lines(&files[2], &l);
        let key = key();
        let mut records = Records::new(&files, &key);
        let read: Vec<_> = records.by_ref().collect();
        assert_eq!(read.len(), 4, "three good records, then the failure");
        let failure = read[3].as_ref().unwrap_err();
        assert_eq!((failure.line, failure.seq), (2, Some(4)));
        assert!(records.next().is_none(), "nothing is read past a break");
        assert_eq!(records.summary().last_seq, 3);
    }

    #[test]
    fn the_tail_of_a_long_file_is_found_from_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (_, files, hashes) = trail(dir.path(), &[2000]);
        assert!(std::fs::metadata(&files[0]).unwrap().len() > 64 << 10);
        assert_eq!(
            tail(&files, &key()).unwrap(),
            Some((2000, hashes[1999].clone()))
        );
        // One huge last line (bigger than the first window).
        let mut record: Map<String, Value> =
            serde_json::from_str(lines(&files[0]).last().unwrap()).unwrap();
        record.insert("request".into(), json!("x".repeat(300 << 10)));
        record.insert("seq".into(), json!(2001));
        record.insert("prev".into(), json!(hashes[1999]));
        seal(&key(), &mut record);
        let mut out = std::fs::OpenOptions::new()
            .append(true)
            .open(&files[0])
            .unwrap();
        out.write_all(&line(&record)).unwrap();
        let head = record["hash"].as_str().unwrap().to_owned();
        assert_eq!(tail(&files, &key()).unwrap(), Some((2001, head.clone())));
        assert_eq!(verify(&files, &key()).unwrap().head, head);
        // A file of a single line.
        let single = dir.path().join("single");
        std::fs::create_dir(&single).unwrap();
        let (_, one, h) = trail(&single, &[1]);
        assert_eq!(tail(&one, &key()).unwrap(), Some((1, h[0].clone())));
        // A bad last record is reported with its line number.
        let mut l = lines(&files[0]);
        let last = l.len() - 1;
        l[last] = l[last].replace("\"op\":\"delete\"", "\"op\":\"create\"");
        write_lines(&files[0], &l);
        let t = tail(&files, &key()).unwrap_err();
        assert_eq!((t.line, t.seq), (2001, Some(2001)));
    }
}
