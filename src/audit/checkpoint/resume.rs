//! Rebuilding the writer's digest at start (SPEC §6.3): the lines since the last checkpoint, read
//! back from the files, wherever the last run stopped (a clean stop, a crash, a repair).

use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::LinesDigest;
use crate::audit::chain::AuditKey;
use crate::audit::verify::{check_record, read_line};

/// Whether a line of the trail is a checkpoint record, from its first bytes alone (the writer
/// reads back up to a whole trail at start): canonical JSON sorts members by name, every other
/// record begins with `before`, `caller_request_id` or `client`, and only a checkpoint record
/// begins with `{"checkpoint":`. [`resume`](self::resume) then checks the line in full.
fn looks_like_checkpoint(line: &[u8]) -> bool {
    line.starts_with(b"{\"checkpoint\":")
}

/// Rebuilds the writer's digest at start (after a clean stop or a crash): reads back the lines
/// from the last checkpoint record of the trail `files` (oldest first, as present) to its end,
/// checking each line's hash under `key` and its link to the one before, and digests them. With no
/// checkpoint in the trail, the lines from its first record: the trail must then start at seq 1,
/// or the first checkpoint could not say what it covers (the refusal names the way out).
pub(crate) fn resume(files: &[PathBuf], key: &AuditKey) -> Result<LinesDigest, String> {
    let mut start = None;
    for (index, file) in files.iter().enumerate().rev() {
        if let Some(offset) = last_checkpoint_in(file)? {
            start = Some((index, offset));
            break;
        }
    }
    let from_checkpoint = start.is_some();
    let (first_file, offset) = start.unwrap_or((0, 0));
    let mut digest = LinesDigest::new();
    let mut last: Option<(u64, String)> = None;
    let mut line = Vec::with_capacity(4096);
    for (index, file) in files.iter().enumerate().skip(first_file) {
        let fail = |e: io::Error| format!("cannot read {}: {e}", file.display());
        let mut handle = File::open(file).map_err(fail)?;
        if index == first_file {
            handle.seek(SeekFrom::Start(offset)).map_err(fail)?;
        }
        let mut reader = BufReader::with_capacity(64 << 10, handle);
        loop {
            line.clear();
            let read = read_line(&mut reader, &mut line).map_err(fail)?;
            if read == 0 {
                break;
            }
            let body = line.strip_suffix(b"\n").ok_or_else(|| {
                format!(
                    "{} ends in an incomplete line: run `tokengate audit repair`",
                    file.display()
                )
            })?;
            let (record, seq, hash) = check_record(body, key).map_err(|(seq, reason)| {
                format!(
                    "{} (seq {}): {reason}",
                    file.display(),
                    seq.map_or("?".into(), |s| s.to_string())
                )
            })?;
            match &last {
                None if !from_checkpoint && seq != 1 => {
                    return Err(format!(
                        "audit.checkpoint_key_* is set but the trail holds no checkpoint and its first records are not present (it starts at seq {seq}): \
                         the first checkpoint must cover the lines from seq 1. Put the earlier files back for the start, or start a new trail (move the old one aside)"
                    ))
                }
                Some((last_seq, last_hash))
                    if seq != last_seq + 1
                        || record.get("prev").and_then(Value::as_str) != Some(last_hash) =>
                {
                    return Err(format!(
                        "{} (seq {seq}): the record does not follow seq {last_seq}: `tokengate audit verify` shows where the trail breaks",
                        file.display()
                    ))
                }
                _ => {}
            }
            let is_checkpoint = record.get("phase").and_then(Value::as_str) == Some("checkpoint");
            digest.add(&line, !is_checkpoint);
            last = Some((seq, hash));
        }
    }
    Ok(digest)
}

/// The byte offset of the last checkpoint line of `file`, if it holds one.
fn last_checkpoint_in(file: &Path) -> Result<Option<u64>, String> {
    let fail = |e: io::Error| format!("cannot read {}: {e}", file.display());
    let mut reader = BufReader::with_capacity(64 << 10, File::open(file).map_err(fail)?);
    let mut offset = 0u64;
    let mut found = None;
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        let read = read_line(&mut reader, &mut line).map_err(fail)?;
        if read == 0 {
            return Ok(found);
        }
        if looks_like_checkpoint(&line) {
            found = Some(offset);
        }
        offset += read as u64;
    }
}
