//! `tokengate audit repair` (SPEC §6, retention and repair): cuts a torn last line (a crash in the
//! middle of a write) off the live file, so that `serve` resumes the chain instead of refusing to
//! extend it.
//!
//! Before this command the only way out was to move the trail aside, after which a new file
//! started again at seq 1, a seq the moved file had already used, and `verify` of the new file
//! reported an intact trail that left out every record of the old one. Repair keeps the chain:
//! it removes only what no writer could have meant as a record, and keeps those bytes.
//!
//! What it cuts, and nothing else: the live file's last line when it has no `\n` at its end, or
//! when it is not a JSON object at all. A last line that is a whole record which does not verify
//! (a wrong key, or a record changed by someone) is not a torn write, and is never touched.
//!
//! The cut bytes are appended to `<path>.torn` (created with mode 0600 if missing), each cut on a
//! line of its own (a `\n` is added after bytes that lack one): appending rather than replacing
//! means a second repair never destroys what an earlier one kept, and a cut is never lost if the
//! command is interrupted (it is synced to `<path>.torn` before the live file is cut, so the worst
//! case is the same bytes kept twice).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::chain::AuditKey;
use super::verify::{is_record, present_files, tail, Failure};

/// The longest last line whose content is examined: past it, a complete line is not something
/// the writer wrote whole (records are bounded by `audit.max_record_bytes`) and is left alone.
const MAX_EXAMINED: u64 = super::verify::MAX_LINE_BYTES as u64 + 1;

/// What `repair` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Repair {
    /// The live file is missing or empty: nothing to cut.
    NoLiveFile,
    /// The last line is whole: nothing was cut. `seq` is the record's, when it verifies.
    Intact {
        /// The last record's `seq`.
        seq: u64,
    },
    /// The torn last line was cut off.
    Cut {
        /// How many bytes were cut (and kept).
        bytes: u64,
        /// The line they were, from 1.
        line: usize,
        /// Why the line counts as torn.
        why: &'static str,
        /// Where the bytes were kept.
        kept_in: PathBuf,
        /// The trail's last record after the cut (`seq`, `hash`), if any.
        resumes_after: Option<(u64, String)>,
    },
}

/// Why `repair` refused, or could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(String),
    /// The last line is not torn, yet the trail's tail does not verify: repair is not the remedy.
    #[error("not repaired: {0}; audit repair cuts only a torn last line (no newline at its end, or not JSON), and this one is a whole record: check the key (audit.hmac_key_*), and `tokengate audit verify` to see what is wrong")]
    NotTorn(Failure),
    /// The cut was made, but the record now last does not verify either.
    #[error("cut {cut} bytes (kept in {kept}), but the trail still does not end in a good record: {failure}")]
    StillBroken {
        /// Bytes cut.
        cut: u64,
        /// Where they were kept.
        kept: String,
        /// What is wrong with the new last record.
        failure: Failure,
    },
}

/// Cuts the torn last line, if any, off the live file `path` of the trail sealed with `key`.
pub fn repair(path: &Path, key: &AuditKey) -> Result<Repair, RepairError> {
    // Never cut a file a running gateway writes (SPEC §6, one writer per trail).
    let _lock = super::lock::TrailLock::take(path).map_err(RepairError::Io)?;
    let io = |what: &str, e: io::Error| RepairError::Io(format!("{what} {}: {e}", path.display()));
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Repair::NoLiveFile),
        Err(e) => return Err(io("cannot open", e)),
    };
    let len = file.metadata().map_err(|e| io("cannot read", e))?.len();
    if len == 0 {
        return Ok(Repair::NoLiveFile);
    }
    let start = last_line_start(&mut file, len).map_err(|e| io("cannot read", e))?;
    let ends_with_newline =
        read_at(&mut file, len - 1, 1).map_err(|e| io("cannot read", e))? == b"\n";
    let why = if !ends_with_newline {
        "no newline at its end"
    } else if len - start <= MAX_EXAMINED {
        let line = read_at(&mut file, start, len - 1 - start).map_err(|e| io("cannot read", e))?;
        if is_record(&line) {
            return whole_last_line(path, key);
        }
        "not a JSON record"
    } else {
        return whole_last_line(path, key);
    };
    let kept_in = torn_path(path);
    keep(&mut file, start, len, &kept_in).map_err(|e| {
        RepairError::Io(format!(
            "cannot keep the torn bytes in {}: {e}; nothing was cut",
            kept_in.display()
        ))
    })?;
    file.set_len(start)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("cannot cut the torn line off", e))?;
    let line = line_count(&mut file, start).map_err(|e| io("cannot read", e))? + 1;
    let cut = len - start;
    let resumes_after = after_cut(path, key).map_err(|failure| RepairError::StillBroken {
        cut,
        kept: kept_in.display().to_string(),
        failure,
    })?;
    Ok(Repair::Cut {
        bytes: cut,
        line,
        why,
        kept_in,
        resumes_after,
    })
}

/// `<path>.torn`, where cut bytes are kept.
pub fn torn_path(path: &Path) -> PathBuf {
    let mut torn = path.as_os_str().to_owned();
    torn.push(".torn");
    PathBuf::from(torn)
}

/// The last line is whole: nothing to cut. Reports its record, or refuses if it does not verify.
fn whole_last_line(path: &Path, key: &AuditKey) -> Result<Repair, RepairError> {
    let files = present(path)?;
    match tail(&files, key) {
        Ok(Some((seq, _))) => Ok(Repair::Intact { seq }),
        Ok(None) => Ok(Repair::NoLiveFile),
        Err(failure) => Err(RepairError::NotTorn(failure)),
    }
}

/// The trail's last record after a cut, which must verify.
fn after_cut(path: &Path, key: &AuditKey) -> Result<Option<(u64, String)>, Failure> {
    let files = present_files(path)
        .map(|(files, _)| files)
        .map_err(|e| Failure {
            file: path.to_path_buf(),
            line: 0,
            seq: None,
            reason: e.to_string(),
            torn: false,
        })?;
    tail(&files, key)
}

fn present(path: &Path) -> Result<Vec<PathBuf>, RepairError> {
    present_files(path)
        .map(|(files, _)| files)
        .map_err(|e| RepairError::Io(format!("cannot list the trail at {}: {e}", path.display())))
}

/// Appends bytes `start..len` of `file` to `kept_in` (then a `\n` if they lack one) and syncs it
/// and its directory, so the bytes are safe before anything is cut.
fn keep(file: &mut File, start: u64, len: u64, kept_in: &Path) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(kept_in)?;
    file.seek(SeekFrom::Start(start))?;
    io::copy(&mut Read::by_ref(file).take(len - start), &mut out)?;
    if read_at(file, len - 1, 1)? != b"\n" {
        out.write_all(b"\n")?;
    }
    out.sync_all()?;
    if let Some(dir) = kept_in.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Where the last line of a non-empty file of `len` bytes starts: just after the last `\n` before
/// its final byte (which may be the last line's own `\n`), or 0. Scans backwards in 64 KiB steps,
/// holding no more than that, however long the line.
fn last_line_start(file: &mut File, len: u64) -> io::Result<u64> {
    const STEP: u64 = 64 << 10;
    let mut end = len - 1;
    while end > 0 {
        let start = end.saturating_sub(STEP);
        let chunk = read_at(file, start, end - start)?;
        if let Some(at) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + at as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// `count` bytes of `file` from `offset`.
fn read_at(file: &mut File, offset: u64, count: u64) -> io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::with_capacity(count as usize);
    Read::by_ref(file).take(count).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The number of `\n` in the first `end` bytes of `file` (the lines before the one at `end`).
fn line_count(file: &mut File, end: u64) -> io::Result<usize> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = io::BufReader::with_capacity(64 << 10, Read::by_ref(file).take(end));
    let mut lines = 0;
    loop {
        let chunk = io::BufRead::fill_buf(&mut reader)?;
        if chunk.is_empty() {
            return Ok(lines);
        }
        lines += memchr::memchr_iter(b'\n', chunk).count();
        let used = chunk.len();
        io::BufRead::consume(&mut reader, used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{line, seal, GENESIS};
    use serde_json::{json, Map, Value};

    fn key() -> AuditKey {
        AuditKey::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    /// A live file of `n` chained records; returns its path and the bytes.
    fn trail(dir: &Path, n: u64) -> (PathBuf, Vec<u8>) {
        let path = dir.join("t.jsonl");
        let mut prev = GENESIS.to_owned();
        let mut bytes = Vec::new();
        for seq in 1..=n {
            let Value::Object(mut record) = json!({"v": 1, "seq": seq, "prev": prev}) else {
                unreachable!()
            };
            seal(&key(), &mut record);
            prev = record["hash"].as_str().unwrap().to_owned();
            bytes.extend_from_slice(&line(&record));
        }
        std::fs::write(&path, &bytes).unwrap();
        (path, bytes)
    }

    #[test]
    fn a_torn_tail_is_cut_and_kept_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let (path, whole) = trail(dir.path(), 3);
        assert_eq!(repair(&path, &key()).unwrap(), Repair::Intact { seq: 3 });
        assert_eq!(std::fs::read(&path).unwrap(), whole);
        assert!(!torn_path(&path).exists());

        // Part of a fourth record, without its newline.
        let mut torn = whole.clone();
        torn.extend_from_slice(b"{\"client\":\"team-a\",\"hash\":\"ab");
        std::fs::write(&path, &torn).unwrap();
        let Repair::Cut {
            bytes,
            line,
            resumes_after,
            ..
        } = repair(&path, &key()).unwrap()
        else {
            panic!("cut")
        };
        assert_eq!((bytes, line), (29, 4));
        assert_eq!(resumes_after.map(|(seq, _)| seq), Some(3));
        assert_eq!(std::fs::read(&path).unwrap(), whole);
        assert_eq!(
            std::fs::read(torn_path(&path)).unwrap(),
            b"{\"client\":\"team-a\",\"hash\":\"ab\n"
        );

        // Zeros ending in a newline (not JSON): cut too, and appended to what was kept.
        let mut zeros = whole.clone();
        zeros.extend_from_slice(&[0, 0, 0, b'\n']);
        std::fs::write(&path, &zeros).unwrap();
        assert!(matches!(
            repair(&path, &key()).unwrap(),
            Repair::Cut {
                why: "not a JSON record",
                ..
            }
        ));
        assert_eq!(std::fs::read(&path).unwrap(), whole);
        assert_eq!(
            std::fs::read(torn_path(&path)).unwrap(),
            b"{\"client\":\"team-a\",\"hash\":\"ab\n\0\0\0\n"
        );
    }

    #[test]
    fn a_whole_record_that_does_not_verify_is_never_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (path, whole) = trail(dir.path(), 2);
        let text = String::from_utf8(whole).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        let mut last: Map<String, Value> = serde_json::from_str(lines[1]).unwrap();
        last.insert("seq".into(), json!(9));
        let changed = serde_json::to_string(&last).unwrap();
        lines[1] = &changed;
        let edited = format!("{}\n", lines.join("\n"));
        std::fs::write(&path, &edited).unwrap();
        let error = repair(&path, &key()).unwrap_err();
        assert!(matches!(error, RepairError::NotTorn(_)), "{error}");
        assert!(error.to_string().contains("whole record"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);
        assert!(!torn_path(&path).exists());
        // An empty or missing live file: nothing to do.
        std::fs::write(&path, b"").unwrap();
        assert_eq!(repair(&path, &key()).unwrap(), Repair::NoLiveFile);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(repair(&path, &key()).unwrap(), Repair::NoLiveFile);
    }

    #[test]
    fn a_file_of_one_torn_line_is_cut_to_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, vec![b'x'; 200 << 10]).unwrap();
        let Repair::Cut {
            bytes,
            line,
            resumes_after,
            ..
        } = repair(&path, &key()).unwrap()
        else {
            panic!("cut")
        };
        assert_eq!((bytes, line, resumes_after), (200 << 10, 1, None));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(
            std::fs::metadata(torn_path(&path)).unwrap().len(),
            (200 << 10) + 1
        );
    }
}
