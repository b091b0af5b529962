//! Reading the local trail back for the shipper: from a given `seq` on, across rotated files
//! (`<path>.n`, then `<path>`), following the live file as it grows and as it is rotated.
//!
//! Only durable records are handed out (those at or below the `seq` the writer published after
//! its sync): a line past that is not read into a batch, because a failed write may still cut it
//! back and write another record with its `seq`. A line that is not complete yet is left for the
//! next read. Records are taken as they are on disk, their chain is not rechecked here: the
//! writer resumed from a verified tail, and `audit verify --postgres` checks what arrived.

use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::audit::verify::{present_files, read_line};
use crate::audit::writer::identity_of;

/// Why the trail cannot be shipped on from where the table ends: shipping of this origin stops
/// until an operator acts (records would otherwise be skipped).
#[derive(Debug)]
pub struct Gap(pub String);

/// One record read back: its `seq`, its record and its line (without the newline).
pub struct Line {
    /// The `seq`.
    pub seq: u64,
    /// The record.
    pub record: Map<String, Value>,
    /// Its line, without the newline.
    pub text: String,
}

/// The reader.
pub struct Source {
    live: PathBuf,
    /// The file being read, where its next line starts, and its identity.
    open: Option<Open>,
    /// The `seq` of the next record to hand out.
    next: u64,
    buf: Vec<u8>,
}

struct Open {
    reader: BufReader<File>,
    offset: u64,
    identity: (u64, u64),
}

impl Source {
    /// A reader of the trail whose live file is `live`, positioned at the record `next`.
    pub fn new(live: &Path, next: u64) -> Source {
        Source {
            live: live.to_path_buf(),
            open: None,
            next: next.max(1),
            buf: Vec::with_capacity(4096),
        }
    }

    /// The `seq` of the next record it hands out.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The next record if it is durable (`seq` at most `durable`) and on disk; `Ok(None)` when it
    /// is not there yet (to try again later). A record missing from the trail is a [`Gap`].
    pub fn read(&mut self, durable: u64) -> Result<Option<Line>, Gap> {
        if self.next > durable {
            return Ok(None);
        }
        if self.open.is_none() && !self.locate()? {
            return Ok(None);
        }
        loop {
            let Some(open) = self.open.as_mut() else {
                return Ok(None);
            };
            self.buf.clear();
            let read = read_line(&mut open.reader, &mut self.buf);
            let read = match read {
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the audit trail back for shipping");
                    self.open = None;
                    return Ok(None);
                }
            };
            if read == 0 || self.buf.last() != Some(&b'\n') {
                // The end of this file for now: go back to the line's start, and move on to the
                // next file if this one was rotated away.
                let _ = open.reader.seek(SeekFrom::Start(open.offset));
                if !self.advance()? {
                    return Ok(None);
                }
                continue;
            }
            let line = &self.buf[..self.buf.len() - 1];
            let record: Map<String, Value> = serde_json::from_slice(line).map_err(|e| {
                Gap(format!(
                    "the record expected at seq {} is not JSON ({e})",
                    self.next
                ))
            })?;
            let seq = record.get("seq").and_then(Value::as_u64);
            if seq != Some(self.next) {
                return Err(Gap(format!(
                    "seq {} is expected next but the trail holds {} there: records are missing from the local trail",
                    self.next,
                    seq.map_or_else(|| "a record without seq".to_owned(), |s| format!("seq {s}"))
                )));
            }
            let text = String::from_utf8(line.to_vec())
                .map_err(|_| Gap(format!("the record at seq {} is not UTF-8", self.next)))?;
            open.offset += read as u64;
            self.next += 1;
            return Ok(Some(Line {
                seq: self.next - 1,
                record,
                text,
            }));
        }
    }

    /// Opens the file holding the record `next` and positions it at that record's line; `false`
    /// when no file holds it yet.
    fn locate(&mut self) -> Result<bool, Gap> {
        let (files, _) = present_files(&self.live)
            .map_err(|e| Gap(format!("cannot list the trail's files: {e}")))?;
        // The last file whose first record is at or before `next` (reading on from there moves
        // to the files after it); in a trail with no record yet, the live file.
        let mut chosen = None;
        let mut oldest = None;
        for file in files.iter().rev() {
            match first_seq(file) {
                Ok(Some(first)) if first <= self.next => {
                    chosen = Some(file);
                    break;
                }
                Ok(Some(first)) => oldest = Some((file, first)),
                Ok(None) => {}
                Err(_) => return Ok(false),
            }
        }
        let file = match (chosen, oldest) {
            (Some(file), _) => file,
            (None, Some((file, first))) => {
                return Err(Gap(format!(
                    "seq {} is not shipped yet but the oldest file present ({}) starts at seq {first}: the records between were archived or deleted before they were shipped",
                    self.next,
                    file.display()
                )))
            }
            (None, None) => match files.last() {
                Some(file) => file,
                None => return Ok(false),
            },
        };
        let Ok(mut open) = open(file) else {
            return Ok(false);
        };
        // Skip to the line of `next`.
        let mut line = Vec::new();
        loop {
            line.clear();
            let Ok(read) = read_line(&mut open.reader, &mut line) else {
                return Ok(false);
            };
            if read == 0 || line.last() != Some(&b'\n') {
                let _ = open.reader.seek(SeekFrom::Start(open.offset));
                break;
            }
            let seq = serde_json::from_slice::<Map<String, Value>>(&line[..line.len() - 1])
                .ok()
                .and_then(|r| r.get("seq").and_then(Value::as_u64));
            if seq.is_some_and(|s| s >= self.next) {
                let _ = open.reader.seek(SeekFrom::Start(open.offset));
                break;
            }
            open.offset += read as u64;
        }
        self.open = Some(open);
        Ok(true)
    }

    /// At the end of the open file: moves to the file after it if it was rotated (its
    /// successor exists), else stays. `false` when there is nothing more to read now.
    fn advance(&mut self) -> Result<bool, Gap> {
        let Some(current) = &self.open else {
            return self.locate();
        };
        let (files, _) = present_files(&self.live)
            .map_err(|e| Gap(format!("cannot list the trail's files: {e}")))?;
        let position = files
            .iter()
            .position(|f| identity(f).is_some_and(|id| id == current.identity));
        match position {
            // Still the live file (or the newest): nothing more yet.
            Some(i) if i + 1 == files.len() => Ok(false),
            Some(i) => match open(&files[i + 1]) {
                Ok(next) => {
                    self.open = Some(next);
                    Ok(true)
                }
                Err(_) => Ok(false),
            },
            // The file is gone (archived, or replaced): look for `next` again.
            None => {
                self.open = None;
                self.locate()
            }
        }
    }
}

fn open(path: &Path) -> io::Result<Open> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    Ok(Open {
        reader: BufReader::with_capacity(256 << 10, file),
        offset: 0,
        identity: identity_of(&meta),
    })
}

/// The `seq` of the first record of `path` (`None` for an empty file).
fn first_seq(path: &Path) -> io::Result<Option<u64>> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    read_line(&mut reader, &mut line)?;
    if line.last() != Some(&b'\n') {
        return Ok(None);
    }
    Ok(
        serde_json::from_slice::<Map<String, Value>>(&line[..line.len() - 1])
            .ok()
            .and_then(|r| r.get("seq").and_then(Value::as_u64)),
    )
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| identity_of(&m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(seq: u64) -> String {
        format!("{{\"seq\":{seq},\"v\":2}}\n")
    }

    #[test]
    fn reads_across_rotation_only_what_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("trail.jsonl");
        std::fs::write(dir.path().join("trail.jsonl.1"), line(1) + &line(2)).unwrap();
        std::fs::write(&live, line(3)).unwrap();
        let mut source = Source::new(&live, 2);
        assert_eq!(source.read(3).unwrap().unwrap().seq, 2);
        assert_eq!(source.read(3).unwrap().unwrap().seq, 3);
        assert!(source.read(3).unwrap().is_none());
        // A record written but not durable is not read; a partial line neither.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&live)
            .unwrap();
        file.write_all(line(4).as_bytes()).unwrap();
        file.write_all(b"{\"seq\":5").unwrap();
        assert!(source.read(3).unwrap().is_none());
        assert_eq!(source.read(5).unwrap().unwrap().seq, 4);
        assert!(source.read(5).unwrap().is_none());
        file.write_all(b",\"v\":2}\n").unwrap();
        // Rotation while reading: the rest of the old file, then the new one.
        std::fs::rename(&live, dir.path().join("trail.jsonl.2")).unwrap();
        std::fs::write(&live, line(6)).unwrap();
        assert_eq!(source.read(6).unwrap().unwrap().seq, 5);
        assert_eq!(source.read(6).unwrap().unwrap().seq, 6);
    }

    #[test]
    fn a_missing_record_is_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("trail.jsonl");
        std::fs::write(&live, line(1) + &line(3)).unwrap();
        let mut source = Source::new(&live, 1);
        assert_eq!(source.read(3).unwrap().unwrap().seq, 1);
        assert!(source.read(3).is_err());
        // Records archived before they were shipped.
        std::fs::write(dir.path().join("trail.jsonl.2"), line(5)).unwrap();
        std::fs::write(&live, line(6)).unwrap();
        let mut source = Source::new(&live, 2);
        let Err(Gap(reason)) = source.read(6) else {
            panic!("no gap")
        };
        assert!(reason.contains("archived"), "{reason}");
    }
}
