//! Signed checkpoints (SPEC §6.3): the writer signs after every `audit.checkpoint_every` records,
//! by interval and at shutdown, and goes on correctly after a SIGKILL, a repair and retention;
//! `audit verify --public-key` proves the signed part of a trail whole without the audit key, and
//! catches what an intruder holding the audit key could otherwise re-seal; keys made by
//! `tokengate keys checkpoint` and by `openssl genpkey` both work, and the private key never shows.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use support::tmpfs::Tmpfs;
use support::*;
use tokengate::audit::chain::{line, seal, AuditKey};
use tokengate::audit::checkpoint::{message, CheckpointKey};
use tokengate::audit::verify::trail_files;
use tokengate::emulator::RunningEmulator;

/// `tokengate keys checkpoint --out DIR`: (private key, public key, the command's stdout).
fn key_pair(dir: &Path) -> (PathBuf, PathBuf, String) {
    let (code, stdout, stderr) =
        run_cli(&["keys", "checkpoint", "--out", dir.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    (
        dir.join("checkpoint.key"),
        dir.join("checkpoint.pub"),
        stdout,
    )
}

/// The base64 body of a PEM file (what must never appear in any output).
fn pem_body(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect()
}

/// Gateway options signing with `key`, every `every` records, at least every `interval_s`.
fn options(
    upstream: &RunningEmulator,
    key: &Path,
    every: u64,
    interval_s: u64,
    trail: Option<&Path>,
) -> Options {
    let mut options = Options::new(upstream.addr);
    options.audit_extra = format!(
        "checkpoint_key_file = {:?}\ncheckpoint_every = {every}\ncheckpoint_interval_s = {interval_s}\n",
        key.display().to_string()
    );
    options.audit_path = trail.map(Path::to_path_buf);
    options
}

/// `n` creates through `addr`, one after the other: 2 records each (intent, outcome).
async fn creates(addr: std::net::SocketAddr, prefix: &str, n: usize) {
    for i in 0..n {
        let body = format!(r#"{{"name":"{prefix}-{i}"}}"#);
        let reply = admin(addr, "POST", "/api/token/", Some(&body)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
}

fn parse(line: &str) -> Map<String, Value> {
    serde_json::from_str(line).unwrap()
}

fn is_checkpoint(record: &Map<String, Value>) -> bool {
    record["phase"] == "checkpoint"
}

/// Writes `lines` as one trail file in a new directory.
fn write_trail(lines: &[String]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trail.jsonl");
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

/// `audit verify --public-key PUB FILES…`, with the tests' audit key when `with_key`.
fn verify_public(public: &Path, files: &[PathBuf], with_key: bool) -> (i32, String, String) {
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), AUDIT_KEY).unwrap();
    let mut args = vec![
        "audit".to_string(),
        "verify".into(),
        "--public-key".into(),
        public.display().to_string(),
    ];
    if with_key {
        args.push("--key-file".into());
        args.push(key.path().display().to_string());
    }
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_cli(&args, &[])
}

/// Seals `lines[from..]` again with the audit key, each linked to the one before: what an
/// intruder holding the audit key does after changing a line.
fn reseal_from(lines: &mut [String], from: usize) {
    let key = AuditKey::new(AUDIT_KEY.as_bytes()).unwrap();
    let mut prev = parse(&lines[from - 1])["hash"].clone();
    for text in &mut lines[from..] {
        let mut record = parse(text);
        record.insert("prev".into(), prev);
        seal(&key, &mut record);
        prev = record["hash"].clone();
        *text = String::from_utf8(line(&record))
            .unwrap()
            .trim_end()
            .to_owned();
    }
}

/// The number of records (checkpoints not counted) between consecutive checkpoints, and after
/// the last one.
fn runs_between_checkpoints(records: &[Map<String, Value>]) -> Vec<usize> {
    let mut runs = vec![0];
    for record in records {
        if is_checkpoint(record) {
            runs.push(0);
        } else {
            *runs.last_mut().unwrap() += 1;
        }
    }
    runs
}

/// Checks the shape of every checkpoint record: a record of the chain, signing the one before.
fn assert_checkpoint_shapes(records: &[Map<String, Value>]) {
    for (i, record) in records.iter().enumerate().filter(|(_, r)| is_checkpoint(r)) {
        let keys: Vec<&str> = record.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "checkpoint",
                "hash",
                "origin",
                "phase",
                "prev",
                "seq",
                "ts",
                "v"
            ],
            "{record:?}"
        );
        let checkpoint = &record["checkpoint"];
        let before = &records[i - 1];
        assert_eq!(checkpoint["seq"], before["seq"]);
        assert_eq!(checkpoint["head"], before["hash"]);
        assert_eq!(record["prev"], before["hash"]);
        assert_eq!(record["v"], 2);
        assert_eq!(checkpoint["lines_sha256"].as_str().unwrap().len(), 64);
        assert!(checkpoint["signature"].as_str().unwrap().ends_with("=="));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_every_n_records_and_at_shutdown_verify_with_the_public_key_alone() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public, _) = key_pair(keys.path());
    let upstream = emulator().await;
    let mut gateway = TestGateway::start(options(&upstream, &private, 5, 3600, None)).await;
    creates(gateway.addr, "count", 12).await;
    let path = gateway.audit_path.clone();
    gateway.shutdown().await.unwrap();

    let records: Vec<_> = audit_lines(&path).iter().map(|l| parse(l)).collect();
    // 24 records: a checkpoint after every 5th, and one at shutdown for the last 4.
    assert_eq!(runs_between_checkpoints(&records), [5, 5, 5, 5, 4, 0]);
    assert_eq!(records.len(), 29);
    assert!(is_checkpoint(records.last().unwrap()));
    assert_checkpoint_shapes(&records);

    let files = trail_files(&path).unwrap();
    let (code, stdout, stderr) = verify_public(&public, &files, false);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("audit trail links intact: 29 records"),
        "{stdout}"
    );
    assert!(
        stdout.contains("record hashes were not recomputed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("checkpoints: 5 signed by") && stdout.contains("last signed seq 28"),
        "{stdout}"
    );
    assert!(!stdout.contains("not yet signed"), "{stdout}");
    // With the audit key too: everything plain verify checks, and the checkpoints.
    let (code, stdout, stderr) = verify_public(&public, &files, true);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("audit trail intact: 29 records"),
        "{stdout}"
    );
    assert!(!stdout.contains("not recomputed"), "{stdout}");
    assert!(stdout.contains("checkpoints: 5 signed"), "{stdout}");
    // Checkpoint records are records of the chain like any other for plain verify, and a query
    // lists the changes alone.
    let (code, stdout, stderr) = audit_verify(&files);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, stderr) = audit_cli("query", &path, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 12, "{stdout}");
    assert!(!stdout.contains("checkpoint"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_comes_by_interval_and_none_without_new_records() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public, _) = key_pair(keys.path());
    let upstream = emulator().await;
    let started = Instant::now();
    let mut gateway = TestGateway::start(options(&upstream, &private, 1000, 1, None)).await;
    creates(gateway.addr, "interval", 1).await;
    let path = gateway.audit_path.clone();
    let count = |path: &Path| {
        audit_lines(path)
            .iter()
            .filter(|l| is_checkpoint(&parse(l)))
            .count()
    };
    while count(&path) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no checkpoint by interval"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Nothing written since: no more checkpoints, by interval or at shutdown.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count(&path), 1);
    gateway.shutdown().await.unwrap();
    let records: Vec<_> = audit_lines(&path).iter().map(|l| parse(l)).collect();
    assert_eq!(runs_between_checkpoints(&records), [2, 0]);
    let (code, stdout, stderr) = verify_public(&public, &trail_files(&path).unwrap(), false);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("checkpoints: 1 signed"), "{stdout}");
}

/// A trail of 6 creates signed every 4 records: r1-r4 C5 r6-r9 C10 r11-r14 C15.
async fn signed_trail() -> (tempfile::TempDir, PathBuf, PathBuf, Vec<String>) {
    let keys = tempfile::tempdir().unwrap();
    let (private, public, _) = key_pair(keys.path());
    let upstream = emulator().await;
    let mut gateway = TestGateway::start(options(&upstream, &private, 4, 3600, None)).await;
    creates(gateway.addr, "t", 6).await;
    let path = gateway.audit_path.clone();
    gateway.shutdown().await.unwrap();
    let lines = audit_lines(&path);
    let phases: Vec<bool> = lines.iter().map(|l| is_checkpoint(&parse(l))).collect();
    assert_eq!(lines.len(), 15);
    assert!(phases[4] && phases[9] && phases[14]);
    (keys, private, public, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_key_catches_what_the_audit_key_can_reseal() {
    let (keys, private, public, lines) = signed_trail().await;
    let fails = |lines: &[String], with_key: bool, at_seq: u64, reason: &str| {
        let (_dir, file) = write_trail(lines);
        let (code, stdout, stderr) = verify_public(&public, &[file], with_key);
        assert_eq!(code, 1, "{stdout}{stderr}");
        assert!(
            stderr.contains(&format!("(seq {at_seq})")) && stderr.contains(reason),
            "expected seq {at_seq} and {reason:?}: {stderr}"
        );
    };

    // A record covered by a checkpoint, changed without touching its hash: without the audit
    // key only the checkpoint's digest can tell, and it does.
    let mut edited = lines.clone();
    edited[1] = edited[1].replace("\"t-0\"", "\"t-X\"");
    assert_ne!(edited[1], lines[1]);
    fails(&edited, false, 5, "lines_sha256");

    // The same change by an intruder with the audit key, who seals the chain again: plain
    // verify passes, the checkpoint does not (its head no longer names the record before it, and
    // re-signing needs the private key).
    reseal_from(&mut edited, 1);
    let (_dir, file) = write_trail(&edited);
    let (code, stdout, stderr) = audit_verify(&[file]);
    assert_eq!(
        code, 0,
        "the re-sealed chain passes plain verify: {stdout}{stderr}"
    );
    fails(&edited, false, 5, "head");
    fails(&edited, true, 5, "head");

    // The intruder also fixes the head: then the signature fails.
    let mut fixed = edited.clone();
    let mut checkpoint = parse(&fixed[4]);
    checkpoint["checkpoint"]["head"] = parse(&fixed[3])["hash"].clone();
    fixed[4] = String::from_utf8(line(&checkpoint))
        .unwrap()
        .trim_end()
        .to_owned();
    reseal_from(&mut fixed, 4);
    fails(&fixed, true, 5, "signature");

    // A line deleted.
    let mut deleted = lines.clone();
    deleted.remove(6);
    fails(&deleted, false, 8, "missing");

    // A signature forged with another key, the chain re-sealed.
    let other = tempfile::tempdir().unwrap();
    let (other_private, other_public, _) = key_pair(other.path());
    let other_key = CheckpointKey::load(None, Some(&other_private)).unwrap();
    let mut forged = lines.clone();
    let mut checkpoint = parse(&forged[9]);
    let c = checkpoint["checkpoint"].clone();
    let text = message(
        checkpoint["origin"].as_str().unwrap(),
        c["seq"].as_u64().unwrap(),
        c["head"].as_str().unwrap(),
        c["lines_sha256"].as_str().unwrap(),
    );
    checkpoint["checkpoint"]["signature"] = Value::String(other_key.sign(&text));
    forged[9] = String::from_utf8(line(&checkpoint))
        .unwrap()
        .trim_end()
        .to_owned();
    reseal_from(&mut forged, 9);
    fails(&forged, true, 10, "signature");

    // The intact trail against a key other than the one configured.
    let (_dir, file) = write_trail(&lines);
    let (code, _, stderr) = verify_public(&other_public, &[file], false);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("(seq 5)") && stderr.contains("signature"),
        "{stderr}"
    );

    // A checkpoint line itself edited where no signature names it (its ts), its hash kept:
    // the next checkpoint covers that line, and catches it.
    let mut moved = lines.clone();
    let mut checkpoint = parse(&moved[4]);
    checkpoint["ts"] = Value::String("2001-01-01T00:00:00.000Z".into());
    moved[4] = String::from_utf8(line(&checkpoint))
        .unwrap()
        .trim_end()
        .to_owned();
    fails(&moved, false, 10, "lines_sha256");

    // The last checkpoint cut off: what is left still checks, and its tail is reported unsigned.
    let cut = &lines[..14];
    let (_dir, file) = write_trail(cut);
    let (code, stdout, stderr) = verify_public(&public, std::slice::from_ref(&file), false);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("last signed seq 9"), "{stdout}");
    assert!(
        stdout.contains("4 records after the last checkpoint not yet signed"),
        "{stdout}"
    );
    // ... which is why an unsigned record changed is only caught with the audit key.
    let mut unsigned = cut.to_vec();
    unsigned[12] = unsigned[12].replace("\"t-5\"", "\"t-Y\"");
    assert_ne!(unsigned[12], cut[12]);
    let (_dir, file) = write_trail(&unsigned);
    let (code, ..) = verify_public(&public, std::slice::from_ref(&file), false);
    assert_eq!(code, 0);
    let (code, _, stderr) = verify_public(&public, &[file], true);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("hash mismatch"), "{stderr}");

    // The private key appears nowhere.
    let secret = pem_body(&private);
    let (_dir, file) = write_trail(&lines);
    let (_, stdout, stderr) = verify_public(&public, &[file], true);
    assert!(!stdout.contains(&secret) && !stderr.contains(&secret));
    drop(keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_between_checkpoints_signs_the_lines_before_the_kill_after_restart() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public, _) = key_pair(keys.path());
    let upstream = emulator().await;
    let options = options(&upstream, &private, 3, 3600, None);
    let mut gateway = Process::serve(&options, &[]);
    creates(gateway.addr, "before-kill", 5).await;
    gateway.signal("KILL");
    let mut gateway = tokio::task::spawn_blocking(move || {
        gateway.wait(Duration::from_secs(10));
        gateway
    })
    .await
    .unwrap();
    let first_output = gateway.output();
    let dir = gateway.take_dir();
    let trail = dir.path().join("audit").join("trail.jsonl");
    // r1-r3 C r4-r6 C r7-r9 C r10: one record waits for its checkpoint.
    let records: Vec<_> = audit_lines(&trail).iter().map(|l| parse(l)).collect();
    assert_eq!(runs_between_checkpoints(&records), [3, 3, 3, 1]);

    let mut restarted = Process::serve_in(&options, &[], dir);
    creates(restarted.addr, "after-kill", 1).await;
    restarted.signal("TERM");
    let mut restarted = tokio::task::spawn_blocking(move || {
        restarted.wait(Duration::from_secs(10));
        restarted
    })
    .await
    .unwrap();
    let output = restarted.output();
    let dir = restarted.take_dir();
    let trail = dir.path().join("audit").join("trail.jsonl");
    let records: Vec<_> = audit_lines(&trail).iter().map(|l| parse(l)).collect();
    // The record from before the kill counts: a checkpoint after it and the 2 new ones, and
    // nothing left for shutdown.
    assert_eq!(runs_between_checkpoints(&records), [3, 3, 3, 3, 0]);
    assert_checkpoint_shapes(&records);
    let (code, stdout, stderr) = verify_public(&public, &trail_files(&trail).unwrap(), true);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("checkpoints: 4 signed"), "{stdout}");
    let secret = pem_body(&private);
    assert!(!first_output.contains(&secret) && !output.contains(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repaired_trail_and_a_trail_without_its_oldest_files_go_on_signing() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public, _) = key_pair(keys.path());
    let upstream = emulator().await;
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("trail.jsonl");
    let mut options = options(&upstream, &private, 3, 3600, Some(&path));
    options.audit_extra.push_str("rotate_bytes = 4096\n");
    let mut gateway = TestGateway::start(options.clone()).await;
    creates(gateway.addr, "rotated", 20).await;
    gateway.shutdown().await.unwrap();
    drop(gateway);
    assert!(trail_files(&path).unwrap().len() >= 4, "rotated");

    // A crash in the middle of a write, cut by `audit repair`; then the writer goes on.
    let torn = br#"{"caller_request_id":null,"client":"adm"#;
    let mut live = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut live, torn).unwrap();
    drop(live);
    let (code, stdout, stderr) = audit_cli("repair", &path, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let mut gateway = TestGateway::start(options.clone()).await;
    creates(gateway.addr, "repaired", 2).await;
    gateway.shutdown().await.unwrap();
    drop(gateway);
    let files = trail_files(&path).unwrap();
    let (code, stdout, stderr) = verify_public(&public, &files, true);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // The oldest file archived: the first checkpoint left covers lines that are gone (said, not
    // failed), and the gateway resumes from the last checkpoint left.
    std::fs::remove_file(&files[0]).unwrap();
    let mut gateway = TestGateway::start(options).await;
    creates(gateway.addr, "retained", 2).await;
    gateway.shutdown().await.unwrap();
    let (code, stdout, stderr) = verify_public(&public, &trail_files(&path).unwrap(), false);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("earlier files are not present"), "{stdout}");
    assert!(
        stdout.contains("covers lines before the first record present"),
        "{stdout}"
    );
    assert!(!stdout.contains("not yet signed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_checkpoint_writes_a_0600_key_it_never_prints_and_never_overwrites() {
    let keys = tempfile::tempdir().unwrap();
    let out = keys.path().join("new");
    let (private, public, stdout) = key_pair(&out);
    let secret = pem_body(&private);
    assert!(!stdout.contains(&secret), "{stdout}");
    assert!(stdout.contains("checkpoint_key_file"), "{stdout}");
    let pem = std::fs::read_to_string(&private).unwrap();
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "PKCS#8 PEM"
    );
    assert!(std::fs::read_to_string(&public)
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----\n"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // PKCS#8 v2: version 1 and the public key inside (ring's from_pkcs8 reads only v2).
    let key = CheckpointKey::load(None, Some(&private)).unwrap();
    assert!(stdout.contains(&key.public_key().to_base64()), "{stdout}");
    assert_eq!(format!("{key:?}"), "CheckpointKey(***)");

    let (code, stdout, stderr) =
        run_cli(&["keys", "checkpoint", "--out", out.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("exists already"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&private).unwrap(), pem, "untouched");

    // `check` loads the key and says it is configured, from a file or a variable; a bad one is
    // refused naming its key, never showing it.
    let dir = tempfile::tempdir().unwrap();
    write_secrets(dir.path(), false);
    let config = dir.path().join("tokengate.toml");
    let mut options = Options::new("127.0.0.1:9".parse().unwrap());
    options.audit_extra = format!(
        "checkpoint_key_file = {:?}\n",
        private.display().to_string()
    );
    std::fs::write(&config, options.toml(dir.path())).unwrap();
    let (code, stdout, stderr) = run_cli(&["check", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("checkpoints    signed with the Ed25519 key from file")
            && stdout.contains(&key.public_key().to_base64())
            && stdout.contains("every 1000 records, at least every 60 s"),
        "{stdout}"
    );
    assert!(!stdout.contains(&secret) && !stderr.contains(&secret));

    options.audit_extra =
        "checkpoint_key_env = \"TG_TEST_CHECKPOINT_KEY\"\ncheckpoint_every = 10\n".into();
    std::fs::write(&config, options.toml(dir.path())).unwrap();
    let (code, stdout, stderr) = run_cli(
        &["check", "--config", config.to_str().unwrap()],
        &[("TG_TEST_CHECKPOINT_KEY", &pem)],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("environment variable TG_TEST_CHECKPOINT_KEY")
            && stdout.contains("every 10 records"),
        "{stdout}"
    );
    assert!(!stdout.contains(&secret) && !stderr.contains(&secret));

    let (code, stdout, stderr) = run_cli(
        &["check", "--config", config.to_str().unwrap()],
        &[("TG_TEST_CHECKPOINT_KEY", &pem.replace("PRIVATE", "PUBLIC"))],
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("audit.checkpoint_key_env"), "{stderr}");
    assert!(!stderr.contains(&secret), "{stderr}");

    options.audit_extra = format!(
        "checkpoint_key_file = {:?}\ncheckpoint_key_env = \"X\"\ncheckpoint_every = 0\ncheckpoint_interval_s = 0\n",
        public.display().to_string()
    );
    std::fs::write(&config, options.toml(dir.path())).unwrap();
    let (code, _, stderr) = run_cli(&["check", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{stderr}");
    for key in [
        "audit.checkpoint_key_file",
        "audit.checkpoint_every",
        "audit.checkpoint_interval_s",
    ] {
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
}

/// Whether `openssl` can be run; under CI (which installs it) its absence fails the test.
fn openssl() -> bool {
    let found = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        support::tools::missing("openssl", "apt-get install openssl; .ci/run does");
    }
    found
}

fn run_openssl(args: &[&str]) -> String {
    let output = std::process::Command::new("openssl")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "openssl {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openssl_key_signs_and_openssl_checks_the_signatures() {
    if !openssl() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    // A PKCS#8 v1 key as openssl writes it, and its public key.
    let private = keys.path().join("openssl.key");
    let public = keys.path().join("openssl.pub");
    run_openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        private.to_str().unwrap(),
    ]);
    run_openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let upstream = emulator().await;
    let mut gateway = TestGateway::start(options(&upstream, &private, 2, 3600, None)).await;
    creates(gateway.addr, "openssl", 2).await;
    let path = gateway.audit_path.clone();
    gateway.shutdown().await.unwrap();
    let (code, stdout, stderr) = verify_public(&public, &trail_files(&path).unwrap(), false);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("checkpoints: 2 signed"), "{stdout}");

    // Each signature checks with openssl from the record alone.
    let check = |public: &Path, text: &str, signature: &str| {
        use base64::Engine;
        let msg = keys.path().join("msg");
        let sig = keys.path().join("sig");
        std::fs::write(&msg, text).unwrap();
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .unwrap();
        std::fs::write(&sig, signature).unwrap();
        let said = run_openssl(&[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            public.to_str().unwrap(),
            "-rawin",
            "-in",
            msg.to_str().unwrap(),
            "-sigfile",
            sig.to_str().unwrap(),
        ]);
        assert!(said.contains("Signature Verified Successfully"), "{said}");
    };
    let mut checked = 0;
    for record in audit_lines(&path).iter().map(|l| parse(l)) {
        if !is_checkpoint(&record) {
            continue;
        }
        let c = &record["checkpoint"];
        let text = message(
            record["origin"].as_str().unwrap(),
            c["seq"].as_u64().unwrap(),
            c["head"].as_str().unwrap(),
            c["lines_sha256"].as_str().unwrap(),
        );
        check(&public, &text, c["signature"].as_str().unwrap());
        checked += 1;
    }
    assert_eq!(checked, 2);
    // What a key `tokengate keys checkpoint` wrote signs checks with openssl and its
    // checkpoint.pub (OpenSSL 3.0 does not read the PKCS#8 v2 private key itself).
    let (ours_private, ours_public, _) = key_pair(&keys.path().join("ours"));
    let ours = CheckpointKey::load(None, Some(&ours_private)).unwrap();
    let text = message("gw-1", 41, &"a".repeat(64), &"b".repeat(64));
    check(&ours_public, &text, &ours.sign(&text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_turned_on_for_an_unsigned_trail_sign_it_from_seq_1_unless_its_start_is_gone() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public, _) = key_pair(keys.path());
    let upstream = emulator().await;
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("trail.jsonl");
    let mut unsigned = Options::new(upstream.addr);
    unsigned.audit_path = Some(path.clone());
    unsigned.audit_extra = "rotate_bytes = 4096\n".into();
    let mut gateway = TestGateway::start(unsigned).await;
    creates(gateway.addr, "unsigned", 10).await;
    gateway.shutdown().await.unwrap();
    drop(gateway);
    let files = trail_files(&path).unwrap();
    assert!(files.len() >= 3, "rotated");

    // The same trail without its oldest file: the first checkpoint could not say what it
    // covers, so the gateway refuses to start, saying why.
    let cut = tempfile::tempdir().unwrap();
    let cut_path = cut.path().join("trail.jsonl");
    for file in &files[1..] {
        std::fs::copy(file, cut.path().join(file.file_name().unwrap())).unwrap();
    }
    let mut options = options(&upstream, &private, 1000, 3600, Some(&cut_path));
    let secrets = tempfile::tempdir().unwrap();
    write_secrets(secrets.path(), false);
    let config = tokengate::Config::parse(&options.toml(secrets.path())).unwrap();
    let mut refused = tokengate::Gateway::build(&config).unwrap();
    let error = refused.open_trail(&config.audit).unwrap_err().to_string();
    assert!(
        error.contains("holds no checkpoint") && error.contains("starts at seq"),
        "{error}"
    );
    drop(refused);

    // The whole trail: the first checkpoint covers it from seq 1.
    options.audit_path = Some(path.clone());
    let mut gateway = TestGateway::start(options).await;
    creates(gateway.addr, "signed", 1).await;
    gateway.shutdown().await.unwrap();
    let records: Vec<_> = audit_lines(&path).iter().map(|l| parse(l)).collect();
    assert_eq!(runs_between_checkpoints(&records), [22, 0]);
    let (code, stdout, stderr) = verify_public(&public, &trail_files(&path).unwrap(), false);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("checkpoints: 1 signed") && stdout.contains("last signed seq 22"),
        "{stdout}"
    );
}

/// A batch that fails on a full disk is cut back, and the digest with it: the checkpoints after
/// the fault clears cover exactly the lines on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_takes_the_digest_back_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = Tmpfs::mount(dir.path().join("small"), "256k") else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (private, public, _) = key_pair(keys.path());
    let upstream = emulator().await;
    let path = mount.0.join("trail.jsonl");
    let mut options = options(&upstream, &private, 1, 3600, Some(&path));
    options.audit_extra.push_str("min_free_bytes = 0\n");
    let mut gateway = TestGateway::start(options).await;
    creates(gateway.addr, "before", 1).await;

    let filler = mount.0.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut file, &[0u8; 4096]).is_ok() {}
    drop(file);
    let mut refused = false;
    for i in 0..64 {
        let body = format!(r#"{{"name":"fill-{i:02}"}}"#);
        if admin(gateway.addr, "POST", "/api/token/", Some(&body))
            .await
            .status
            == 503
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "a full file system refuses writes");
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = admin(
            gateway.addr,
            "POST",
            "/api/token/",
            Some(r#"{"name":"after"}"#),
        )
        .await;
        if reply.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "writing resumes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gateway.shutdown().await.unwrap();
    let files = trail_files(&path).unwrap();
    let (code, stdout, stderr) = verify_public(&public, &files, true);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let records: Vec<_> = audit_lines(&path).iter().map(|l| parse(l)).collect();
    assert!(
        runs_between_checkpoints(&records).iter().all(|&n| n <= 1),
        "a checkpoint after every record"
    );
}

/// A reload reads and checks the configuration's checkpoint key but keeps signing with the one
/// read at start, and names each change it ignores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_running_checkpoint_key_and_says_so() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public, _) = key_pair(&keys.path().join("first"));
    let (other_private, _, _) = key_pair(&keys.path().join("second"));
    let upstream = emulator().await;
    let mut options = options(&upstream, &private, 2, 3600, None);
    let gateway = Process::serve(&options, &[]);
    creates(gateway.addr, "before-reload", 1).await;
    options.audit_extra = format!(
        "checkpoint_key_file = {:?}\ncheckpoint_every = 3\ncheckpoint_interval_s = 3600\n",
        other_private.display().to_string()
    );
    let config = gateway.config_path();
    let dir = config.parent().unwrap().to_path_buf();
    std::fs::write(
        &config,
        options
            .toml(&dir)
            .replace("format = \"text\"", "format = \"json\""),
    )
    .unwrap();
    gateway.signal("HUP");
    gateway.wait_for("configuration reloaded", 1);
    let output = gateway.output();
    for key in ["audit.checkpoint_key_file", "audit.checkpoint_every"] {
        assert!(
            output.contains(&format!("the change to {key} is ignored")),
            "{key}: {output}"
        );
    }
    assert!(!output.contains("audit.checkpoint_interval_s"), "{output}");
    creates(gateway.addr, "after-reload", 2).await;
    gateway.signal("TERM");
    let mut gateway = tokio::task::spawn_blocking(move || {
        let mut gateway = gateway;
        gateway.wait(Duration::from_secs(10));
        gateway
    })
    .await
    .unwrap();
    let home = gateway.take_dir();
    let trail = home.path().join("audit").join("trail.jsonl");
    let records: Vec<_> = audit_lines(&trail).iter().map(|l| parse(l)).collect();
    assert_eq!(runs_between_checkpoints(&records), [2, 2, 2, 0]);
    let (code, stdout, stderr) = verify_public(&public, &trail_files(&trail).unwrap(), true);
    assert_eq!(
        code, 0,
        "signed by the first key throughout: {stdout}{stderr}"
    );
    assert!(stdout.contains("checkpoints: 3 signed"), "{stdout}");
}
