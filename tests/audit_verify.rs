//! `tokengate audit verify` (SPEC §6, §7) on real trails: rotated files written the way the writer
//! writes them (sealed canonical lines, `seq` 1…n, `prev` chained), then tampered with in every way
//! an intruder or an accident could, checked through the binary itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Map, Value};
use tokengate::audit::chain::{line, seal, AuditKey, GENESIS};

const KEY: &str = "audit-key-for-tests-0123456789abcdef-XYZ";
const OTHER_KEY: &str = "a-different-audit-key-0123456789abcdef";

/// A trail in a temporary directory: `audit.jsonl.1`, `audit.jsonl.2`, `audit.jsonl`.
struct Trail {
    dir: tempfile::TempDir,
    path: PathBuf,
    files: Vec<PathBuf>,
    hashes: Vec<String>,
    key_file: PathBuf,
}

impl Trail {
    /// Writes `counts[i]` records to the i-th file; the last one is the live file.
    fn new(counts: &[usize]) -> Trail {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let key_file = dir.path().join("audit.key");
        std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
        let key = AuditKey::new(KEY.as_bytes()).unwrap();
        let mut prev = GENESIS.to_owned();
        let mut seq = 0u64;
        let (mut files, mut hashes) = (Vec::new(), Vec::new());
        for (i, &count) in counts.iter().enumerate() {
            let file = if i + 1 == counts.len() {
                path.clone()
            } else {
                PathBuf::from(format!("{}.{}", path.display(), i + 1))
            };
            let mut bytes = Vec::new();
            for _ in 0..count {
                seq += 1;
                let mut record = record(seq, &prev);
                seal(&key, &mut record);
                prev = record["hash"].as_str().unwrap().to_owned();
                hashes.push(prev.clone());
                bytes.extend_from_slice(&line(&record));
            }
            std::fs::write(&file, bytes).unwrap();
            files.push(file);
        }
        Trail {
            dir,
            path,
            files,
            hashes,
            key_file,
        }
    }

    fn head(&self) -> &str {
        self.hashes.last().map_or(GENESIS, String::as_str)
    }

    fn lines(&self, file: usize) -> Vec<String> {
        std::fs::read_to_string(&self.files[file])
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn set_lines(&self, file: usize, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&self.files[file], text).unwrap();
    }

    /// `audit verify --key-file KEY` (no files: from a config naming the path).
    fn verify(&self) -> (i32, String, String) {
        let config = self.config(&format!("hmac_key_file = {:?}", self.key_file));
        run(&[
            "audit",
            "verify",
            "--config",
            config.to_str().unwrap(),
            "--key-file",
            self.key_file.to_str().unwrap(),
        ])
    }

    /// A config whose `[audit]` names the trail's path and `key_line`.
    fn config(&self, key_line: &str) -> PathBuf {
        let config = self.dir.path().join("tokengate.toml");
        std::fs::write(
            &config,
            format!("[audit]\npath = {:?}\n{key_line}\n", self.path),
        )
        .unwrap();
        config
    }
}

/// An audit record as the writer makes them (intent and outcome alternate).
fn record(seq: u64, prev: &str) -> Map<String, Value> {
    let request_id = format!("01JZ{:08}", seq.div_ceil(2));
    let mut record = json!({
        "v": 1,
        "seq": seq,
        "ts": format!("2025-06-01T12:00:{:02}.{:03}Z", seq % 60, seq % 1000),
        "phase": if seq % 2 == 1 { "intent" } else { "outcome" },
        "request_id": request_id,
        "caller_request_id": null,
        "client": "team-a",
        "source_ip": "10.0.0.7",
        "method": "PUT",
        "path": "/api/token/",
        "op": "update",
        "token_ids": [40 + seq],
        "request": {"id": 40 + seq, "name": "ci-bot — 夜間", "remain_quota": 500000, "unlimited_quota": false, "expired_time": -1},
        "prev": prev,
    });
    if seq.is_multiple_of(2) {
        let fields = record.as_object_mut().unwrap();
        fields.insert("outcome".into(), json!("forwarded"));
        fields.insert("reason".into(), Value::Null);
        fields.insert("status".into(), json!(200));
        fields.insert("upstream_status".into(), json!(200));
        fields.insert("upstream_success".into(), json!(true));
        fields.insert("upstream_message".into(), json!(""));
        fields.insert("duration_ms".into(), json!(12));
    }
    match record {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

fn run(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .env_remove("TOKENGATE_CONFIG")
        .env_remove("TOKENGATE_AUDIT_KEY")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    for secret in [KEY, OTHER_KEY] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "the key was printed: {stdout} {stderr}"
        );
    }
    (output.status.code().unwrap_or(-1), stdout, stderr)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Asserts a failure (exit 1) at `file:line (seq N)`.
fn assert_broken_at(result: (i32, String, String), file: &Path, line: usize, seq: Option<u64>) {
    let (code, stdout, stderr) = result;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let at = match seq {
        Some(seq) => format!("{}:{line} (seq {seq}): ", file.display()),
        None => format!("{}:{line}: ", file.display()),
    };
    assert!(stderr.contains(&at), "expected {at:?} in {stderr}");
    assert!(!stdout.contains("head"), "{stdout}");
}

#[test]
fn an_intact_trail_verifies_with_its_count_and_head() {
    let trail = Trail::new(&[4, 5, 3]);
    let (code, stdout, stderr) = trail.verify();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("12 records in 3 files"), "{stdout}");
    assert!(
        stdout.contains(&format!("head {}", trail.head())),
        "{stdout}"
    );

    // The key and the path both from the config.
    let config = trail.config(&format!("hmac_key_file = {:?}", trail.key_file));
    let (code, stdout, stderr) = run(&["audit", "verify", "--config", s(&config)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&format!("head {}", trail.head())));

    // The key from an environment variable, the files named: no config is read.
    let output = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["audit", "verify", "--config", "/nonexistent/tokengate.toml"])
        .args(["--key-env", "MY_AUDIT_KEY"])
        .args(&trail.files)
        .env("MY_AUDIT_KEY", format!("  {KEY}\n"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(stdout.contains(&format!("head {}", trail.head())) && !stdout.contains(KEY));

    // The config's hmac_key_env, and the default variable.
    let config = trail.config("hmac_key_env = \"TRAIL_KEY\"");
    let output = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["audit", "verify"])
        .env("TOKENGATE_CONFIG", &config)
        .env("TRAIL_KEY", KEY)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let config = trail.config("");
    let output = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["audit", "verify", "--config", s(&config)])
        .env("TOKENGATE_AUDIT_KEY", KEY)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

#[test]
fn an_edited_record_is_reported_by_file_line_and_seq() {
    let trail = Trail::new(&[4, 5, 3]);
    let mut lines = trail.lines(1);
    assert!(lines[2].contains("\"remain_quota\":500000"));
    lines[2] = lines[2].replace("\"remain_quota\":500000", "\"remain_quota\":900000");
    trail.set_lines(1, &lines);
    let result = trail.verify();
    assert!(result.2.contains("hash"), "{}", result.2);
    assert_broken_at(result, &trail.files[1], 3, Some(7));
}

#[test]
fn a_deleted_record_is_reported() {
    let trail = Trail::new(&[4, 5, 3]);
    let mut lines = trail.lines(1);
    lines.remove(1);
    trail.set_lines(1, &lines);
    assert_broken_at(trail.verify(), &trail.files[1], 2, Some(7));
}

#[test]
fn two_swapped_records_are_reported() {
    let trail = Trail::new(&[4, 5, 3]);
    let mut lines = trail.lines(2);
    lines.swap(0, 1);
    trail.set_lines(2, &lines);
    assert_broken_at(trail.verify(), &trail.files[2], 1, Some(11));
}

#[test]
fn a_removed_middle_file_is_reported() {
    // `.1`, `.2`, live: without `.2` the chain breaks at the first record of the live file.
    let trail = Trail::new(&[4, 5, 3]);
    std::fs::remove_file(&trail.files[1]).unwrap();
    assert_broken_at(trail.verify(), &trail.path, 1, Some(10));
    // `.1`, `.2`, `.3`, live: without `.2` the numbering has a gap, named.
    let trail = Trail::new(&[3, 3, 3, 2]);
    std::fs::remove_file(&trail.files[1]).unwrap();
    let (code, stdout, stderr) = trail.verify();
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains(&format!("{} is missing", trail.files[1].display())),
        "{stderr}"
    );
    // The files named on the command line, the middle one left out.
    let trail = Trail::new(&[4, 5, 3]);
    let result = run(&[
        "audit",
        "verify",
        "--key-file",
        s(&trail.key_file),
        s(&trail.files[0]),
        s(&trail.files[2]),
    ]);
    assert_broken_at(result, &trail.files[2], 1, Some(10));
    // A rotated file renamed to close the gap.
    let trail = Trail::new(&[2, 2, 2, 1]);
    std::fs::remove_file(&trail.files[1]).unwrap();
    std::fs::rename(&trail.files[2], &trail.files[1]).unwrap();
    assert_broken_at(trail.verify(), &trail.files[1], 1, Some(5));
}

#[test]
fn archived_oldest_files_verify_from_where_the_trail_starts() {
    // SPEC §6, retention: the oldest rotated file archived, what remains links up.
    let trail = Trail::new(&[4, 5, 3]);
    std::fs::remove_file(&trail.files[0]).unwrap();
    let (code, stdout, stderr) = trail.verify();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("8 records in 2 files, last seq 12"),
        "{stdout}"
    );
    assert!(
        stdout.contains("starts at seq 5; earlier files are not present"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("head {}", trail.head())),
        "{stdout}"
    );
    // Every rotated file gone: the live file alone, from where it starts.
    std::fs::remove_file(&trail.files[1]).unwrap();
    let (code, stdout, stderr) = trail.verify();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("starts at seq 10;"), "{stdout}");
    // A whole trail says nothing of the kind.
    let whole = Trail::new(&[4, 5, 3]);
    let (code, stdout, _) = whole.verify();
    assert_eq!(code, 0);
    assert!(!stdout.contains("starts at"), "{stdout}");
    // What remains must still link up: the oldest file gone and one in the middle too is a gap.
    let trail = Trail::new(&[3, 3, 3, 3, 2]);
    std::fs::remove_file(&trail.files[0]).unwrap();
    std::fs::remove_file(&trail.files[2]).unwrap();
    let (code, stdout, stderr) = trail.verify();
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains(&format!("{} is missing", trail.files[2].display())),
        "{stderr}"
    );
    // And the first record left must not pose as the start of a trail.
    let trail = Trail::new(&[3, 3]);
    std::fs::remove_file(&trail.files[0]).unwrap();
    let mut lines = trail.lines(1);
    let mut first: Map<String, Value> = serde_json::from_str(&lines[0]).unwrap();
    first.insert("prev".into(), json!(GENESIS));
    seal(&AuditKey::new(KEY.as_bytes()).unwrap(), &mut first);
    lines[0] = String::from_utf8(line(&first))
        .unwrap()
        .trim_end()
        .to_owned();
    trail.set_lines(1, &lines);
    let result = trail.verify();
    assert!(result.2.contains("genesis"), "{}", result.2);
    assert_broken_at(result, &trail.path, 1, Some(4));
}

#[test]
fn a_torn_last_line_is_reported() {
    let trail = Trail::new(&[4, 5, 3]);
    let bytes = std::fs::read(&trail.path).unwrap();
    std::fs::write(&trail.path, &bytes[..bytes.len() - 40]).unwrap();
    let result = trail.verify();
    assert!(result.2.contains("torn"), "{}", result.2);
    assert_broken_at(result, &trail.path, 3, None);
}

#[test]
fn a_wrong_key_fails_at_the_first_record() {
    let trail = Trail::new(&[4, 5, 3]);
    let wrong = trail.dir.path().join("wrong.key");
    std::fs::write(&wrong, OTHER_KEY).unwrap();
    let config = trail.config("");
    let result = run(&[
        "audit",
        "verify",
        "--config",
        s(&config),
        "--key-file",
        s(&wrong),
    ]);
    assert_broken_at(result, &trail.files[0], 1, Some(1));
}

#[test]
fn an_empty_trail_is_intact_with_the_genesis_head() {
    let trail = Trail::new(&[0]);
    std::fs::remove_file(&trail.path).unwrap();
    let (code, stdout, stderr) = trail.verify();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("0 records in 0 files"), "{stdout}");
    assert!(stdout.contains(&format!("head {GENESIS}")), "{stdout}");
    // A fresh empty live file after a rotation is fine too.
    let trail = Trail::new(&[3, 0]);
    let (code, stdout, _) = trail.verify();
    assert_eq!(code, 0);
    assert!(stdout.contains("3 records in 2 files") && stdout.contains(trail.head()));
}

#[test]
fn key_and_config_problems_exit_2_without_printing_the_key() {
    let trail = Trail::new(&[2]);
    // A short key.
    let short = trail.dir.path().join("short.key");
    std::fs::write(&short, "too-short-a-secret").unwrap();
    let (code, _, stderr) = run(&["audit", "verify", "--key-file", s(&short), s(&trail.path)]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("32") && stderr.contains("short.key") && !stderr.contains("too-short"),
        "{stderr}"
    );
    // The variable named by the config is not set.
    let config = trail.config("hmac_key_env = \"UNSET_AUDIT_KEY_VAR\"");
    let (code, _, stderr) = run(&["audit", "verify", "--config", s(&config)]);
    assert_eq!(code, 2);
    assert!(stderr.contains("UNSET_AUDIT_KEY_VAR"), "{stderr}");
    // No config file.
    let (code, _, stderr) = run(&["audit", "verify", "--config", "/nonexistent/x.toml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/x.toml"), "{stderr}");
    // Both key options.
    let (code, _, _) = run(&[
        "audit",
        "verify",
        "--key-file",
        s(&trail.key_file),
        "--key-env",
        "X",
    ]);
    assert_eq!(code, 2);
}
