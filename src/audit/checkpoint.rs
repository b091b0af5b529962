//! Signed checkpoints (SPEC §6.3): an Ed25519 signature, now and then, over where the trail
//! stands, so that anyone holding only the public key can prove that the signed part of a trail
//! is whole and unchanged. The HMAC of every record (SPEC §6) proves that to the holders of the
//! audit key, who could also re-seal a forged trail; the checkpoint key signs and never verifies,
//! so an auditor needs no secret, and the gateway's HMAC key alone no longer suffices to rewrite
//! the past.
//!
//! A checkpoint is a record of the chain like any other (`v`, `origin`, `seq`, `ts`, `prev`,
//! `hash`), with `"phase": "checkpoint"` and
//! `"checkpoint": {"head": H, "lines_sha256": D, "seq": S, "signature": SIG}`:
//!
//! - S and H are the `seq` and `hash` of the record just before it;
//! - D is the hex SHA-256 of the exact bytes (newlines included) of every line after the point
//!   the previous checkpoint signed, up to and including seq S: the lines with a `seq` above the
//!   previous checkpoint's S (or from the first record of the trail). The previous checkpoint's
//!   own line (seq S + 1) is therefore the first line of the next D: the signed ranges leave no
//!   line of the trail out, so a checkpoint line edited afterwards (its `ts`, say, which no
//!   signature names) is caught by the next checkpoint like any other line;
//! - SIG is the base64 Ed25519 signature of the UTF-8 text [`message`]:
//!   `tokengate audit checkpoint v1\n<origin>\n<S>\n<H>\n<D>\n`.
//!
//! The keys: `audit.checkpoint_key_file` or `audit.checkpoint_key_env` holds the private key as
//! PKCS#8 PEM, version 1 (what `openssl genpkey -algorithm ed25519` writes) or version 2 (with the
//! public key, what `tokengate keys checkpoint` writes); the public key is SPKI PEM. The writer
//! signs with the key read at start (a change needs a restart: a `SIGHUP` reads and checks the
//! key but keeps the running one), and its `Debug` prints `***`.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde_json::{Map, Value};

use super::canonical;
use super::chain::AuditKey;
use super::record::{self, Draft};
use super::verify::{check_line, MAX_LINE_BYTES};
use crate::secret;

/// The first line of the signed text: what it is, and the version of its layout.
pub const MESSAGE_HEADER: &str = "tokengate audit checkpoint v1";

/// The DER of an Ed25519 SubjectPublicKeyInfo before its 32 key bytes (RFC 8410): SEQUENCE,
/// AlgorithmIdentifier { id-Ed25519 (1.3.101.112) }, BIT STRING of 33 bytes (no unused bits).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The UTF-8 text a checkpoint signs: who wrote the trail, the `seq` and `hash` it signs, and the
/// digest of the lines since the previous checkpoint, one per line.
pub fn message(origin: &str, seq: u64, head: &str, lines_sha256: &str) -> String {
    format!("{MESSAGE_HEADER}\n{origin}\n{seq}\n{head}\n{lines_sha256}\n")
}

/// The running SHA-256 of the lines a checkpoint will cover.
#[derive(Clone)]
pub struct LinesDigest {
    context: digest::Context,
    /// Records (checkpoints not counted) among the lines: what `audit.checkpoint_every` counts,
    /// and "records written since the last checkpoint".
    records: u64,
}

impl LinesDigest {
    /// A digest of no line yet.
    pub fn new() -> LinesDigest {
        LinesDigest {
            context: digest::Context::new(&digest::SHA256),
            records: 0,
        }
    }

    /// Adds one line, its newline included; `record` says whether it counts as a record (every
    /// line but a checkpoint's).
    pub fn add(&mut self, line: &[u8], record: bool) {
        self.context.update(line);
        self.records += u64::from(record);
    }

    /// The records added since the digest started.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The lowercase hex SHA-256 of the lines added so far.
    pub fn hex(&self) -> String {
        hex::encode(self.context.clone().finish().as_ref())
    }
}

impl fmt::Debug for LinesDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinesDigest({} records)", self.records)
    }
}

impl Default for LinesDigest {
    fn default() -> Self {
        LinesDigest::new()
    }
}

/// The `checkpoint` member of a checkpoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The `seq` of the record before the checkpoint: the last one it signs.
    pub seq: u64,
    /// The `hash` of that record.
    pub head: String,
    /// The hex SHA-256 of the lines it covers.
    pub lines_sha256: String,
    /// The base64 Ed25519 signature of [`message`].
    pub signature: String,
}

impl Checkpoint {
    /// The `checkpoint` member of `record`, every part present and of the right type.
    pub fn of(record: &Map<String, Value>) -> Result<Checkpoint, String> {
        let Some(Value::Object(member)) = record.get("checkpoint") else {
            return Err("a checkpoint record without its `checkpoint` object".into());
        };
        let text = |name: &str| {
            member
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("the checkpoint has no {name} (a string)"))
        };
        let seq = member
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or("the checkpoint has no seq (an integer)")?;
        Ok(Checkpoint {
            seq,
            head: text("head")?,
            lines_sha256: text("lines_sha256")?,
            signature: text("signature")?,
        })
    }

    /// Its canonical JSON (RFC 8785: members sorted, no white space).
    fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"head\":");
        canonical::write_string(&self.head, &mut out);
        out.extend_from_slice(b",\"lines_sha256\":");
        canonical::write_string(&self.lines_sha256, &mut out);
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        out.extend_from_slice(b",\"signature\":");
        canonical::write_string(&self.signature, &mut out);
        out.push(b'}');
        out
    }
}

/// The private key that signs checkpoints. Its `Debug` prints `CheckpointKey(***)`, and no error
/// holds any of its bytes.
pub struct CheckpointKey(Ed25519KeyPair);

impl fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CheckpointKey(***)")
    }
}

impl CheckpointKey {
    /// The key in a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`): version 2, whose public key is
    /// checked against the private one, or version 1 as `openssl genpkey -algorithm ed25519`
    /// writes it.
    pub fn from_pem(pem: &[u8]) -> Result<CheckpointKey, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| {
            "not a PKCS#8 private key in PEM (-----BEGIN PRIVATE KEY-----)".to_owned()
        })?;
        let bytes = der.secret_pkcs8_der();
        match Ed25519KeyPair::from_pkcs8(bytes) {
            Ok(pair) => Ok(CheckpointKey(pair)),
            Err(_) => Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
                .map(CheckpointKey)
                .map_err(|e| format!("not an Ed25519 private key ({e})")),
        }
    }

    /// Loads the key the way `[audit]` names it: from `file` when given, otherwise from the
    /// environment variable `env` (which holds the PEM text). Errors name the file or the
    /// variable, never the value.
    pub fn load(env: Option<&str>, file: Option<&Path>) -> Result<CheckpointKey, String> {
        let (value, source) = match (file, env) {
            (Some(file), _) => (
                secret::from_file(file),
                format!("in the file {}", file.display()),
            ),
            (None, Some(env)) => (
                secret::from_env(env),
                format!("in the environment variable {env}"),
            ),
            (None, None) => return Err("no checkpoint key is configured".into()),
        };
        let value = value.map_err(|e| format!("checkpoint key: {e}"))?;
        CheckpointKey::from_pem(value.expose().as_bytes())
            .map_err(|e| format!("checkpoint key {source}: {e}"))
    }

    /// The public key that checks its signatures.
    pub fn public_key(&self) -> PublicKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(bytes)
    }

    /// The base64 Ed25519 signature of `message`.
    pub fn sign(&self, message: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0.sign(message.as_bytes()))
    }
}

/// An Ed25519 public key, which checks checkpoint signatures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl PublicKey {
    /// The key in an SPKI PEM (`-----BEGIN PUBLIC KEY-----`), as `tokengate keys checkpoint`
    /// and `openssl pkey -pubout` write it.
    pub fn from_pem(pem: &[u8]) -> Result<PublicKey, String> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem)
            .map_err(|_| "not a public key in PEM (-----BEGIN PUBLIC KEY-----)".to_owned())?;
        let der: &[u8] = der.as_ref();
        match der.strip_prefix(&SPKI_PREFIX[..]) {
            Some(key) if key.len() == 32 => {
                let mut bytes = [0u8; 32];
                bytes.copy_from_slice(key);
                Ok(PublicKey(bytes))
            }
            _ => Err("not an Ed25519 public key".into()),
        }
    }

    /// Reads the key from the PEM file at `path`.
    pub fn load(path: &Path) -> Result<PublicKey, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        PublicKey::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The SPKI PEM of the key.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        pem_text("PUBLIC KEY", der)
    }

    /// The 32 key bytes in base64: a short name for the key in `check` and `verify` output.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Whether `signature` (base64) is this key's signature of `message`.
    pub fn verify(&self, message: &str, signature: &str) -> Result<(), String> {
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| "the signature is not base64".to_owned())?;
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message.as_bytes(), &signature)
            .map_err(|_| {
                "the signature does not verify: the checkpoint was changed, or signed by another key"
                    .to_owned()
            })
    }
}

/// PEM text with `\n` line ends.
fn pem_text(tag: &str, der: Vec<u8>) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Makes a new key pair and writes `checkpoint.key` (PKCS#8 v2 PEM, mode 0600, created only if
/// absent) and `checkpoint.pub` (SPKI PEM) into `dir`, which is created when missing. Returns the
/// two paths and the public key. An existing key is never overwritten: it may be the one that
/// signed a trail.
pub fn write_key_pair(dir: &Path) -> Result<(PathBuf, PathBuf, PublicKey), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let key_path = dir.join("checkpoint.key");
    let pub_path = dir.join("checkpoint.pub");
    for path in [&key_path, &pub_path] {
        if path.exists() {
            return Err(format!(
                "{} exists already: it is not overwritten (it may be the key of a trail); choose another --out",
                path.display()
            ));
        }
    }
    let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| "the system's random number generator failed".to_owned())?;
    let pair = Ed25519KeyPair::from_pkcs8(document.as_ref())
        .map_err(|e| format!("the new key does not read back ({e})"))?;
    let public = CheckpointKey(pair).public_key();
    let private = secret::Secret::new(pem_text("PRIVATE KEY", document.as_ref().to_vec()));
    write_new(&key_path, private.expose().as_bytes(), 0o600)?;
    write_new(&pub_path, public.to_pem().as_bytes(), 0o644)?;
    Ok((key_path, pub_path, public))
}

/// Writes `bytes` to a new file at `path` with `mode` (on Unix), and syncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `audit.checkpoint_*`: the key and when to sign.
#[derive(Clone, Debug)]
pub struct Checkpoints {
    /// The private key.
    pub key: Arc<CheckpointKey>,
    /// `audit.checkpoint_every`: records (checkpoints not counted) between two checkpoints.
    pub every: u64,
    /// `audit.checkpoint_interval_s`: the longest a written record waits for its checkpoint.
    pub interval: Duration,
}

/// The writer's side: the settings, the digest of the lines since the last checkpoint, and when
/// that checkpoint was written.
#[derive(Debug)]
pub(crate) struct Signer {
    settings: Checkpoints,
    origin: Arc<str>,
    digest: LinesDigest,
    last: Instant,
}

impl Signer {
    /// A signer that goes on from `digest` (what [`resume`] rebuilt from the files).
    pub(crate) fn new(settings: Checkpoints, origin: Arc<str>, digest: LinesDigest) -> Signer {
        Signer {
            settings,
            origin,
            digest,
            last: Instant::now(),
        }
    }

    /// The digest as it stands: what a failed batch goes back to.
    pub(crate) fn snapshot(&self) -> LinesDigest {
        self.digest.clone()
    }

    /// Goes back to a snapshot (after a failed batch, whose lines are cut off the file).
    pub(crate) fn restore(&mut self, digest: LinesDigest) {
        self.digest = digest;
    }

    /// Adds the line of a record just sealed.
    pub(crate) fn add(&mut self, line: &[u8]) {
        self.digest.add(line, true);
    }

    /// Whether `audit.checkpoint_every` records were written since the last checkpoint.
    pub(crate) fn due_by_count(&self) -> bool {
        self.digest.records() >= self.settings.every
    }

    /// Whether records were written since the last checkpoint and `audit.checkpoint_interval_s`
    /// has passed since it.
    pub(crate) fn due_by_time(&self) -> bool {
        self.digest.records() > 0 && self.last.elapsed() >= self.settings.interval
    }

    /// Whether records were written since the last checkpoint (at shutdown, one is due then).
    pub(crate) fn pending(&self) -> bool {
        self.digest.records() > 0
    }

    /// The checkpoint record after record `seq` whose hash is `head`, signed.
    pub(crate) fn draft(&self, seq: u64, head: &str) -> Draft {
        let lines_sha256 = self.digest.hex();
        let signature = self
            .settings
            .key
            .sign(&message(&self.origin, seq, head, &lines_sha256));
        let checkpoint = Checkpoint {
            seq,
            head: head.to_owned(),
            lines_sha256,
            signature,
        };
        record::checkpoint(&self.origin, &checkpoint.canonical())
    }

    /// Starts the next range with the line of the checkpoint just sealed.
    pub(crate) fn restart(&mut self, checkpoint_line: &[u8]) {
        self.digest = LinesDigest::new();
        self.digest.add(checkpoint_line, false);
    }

    /// Notes that the batch holding a checkpoint is durable: the interval starts again.
    pub(crate) fn written(&mut self) {
        self.last = Instant::now();
    }
}

/// Whether a line of the trail is a checkpoint record, from its first bytes alone (the writer
/// reads back up to a whole trail at start): canonical JSON sorts members by name, every other
/// record begins with `before`, `caller_request_id` or `client`, and only a checkpoint record
/// begins with `{"checkpoint":`. [`resume`] then checks the line in full.
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
            let read = io::Read::take(&mut reader, MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(fail)?;
            if read == 0 {
                break;
            }
            let body = line.strip_suffix(b"\n").ok_or_else(|| {
                format!(
                    "{} ends in an incomplete line: run `tokengate audit repair`",
                    file.display()
                )
            })?;
            let (record, seq, hash) = check_line(body, key).map_err(|(seq, reason)| {
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
        let read = io::Read::take(&mut reader, MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(fail)?;
        if read == 0 {
            return Ok(found);
        }
        if looks_like_checkpoint(&line) {
            found = Some(offset);
        }
        offset += read as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 key as `tokengate keys checkpoint` writes it.
    fn new_key() -> (CheckpointKey, String) {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pem = pem_text("PRIVATE KEY", document.as_ref().to_vec());
        (CheckpointKey::from_pem(pem.as_bytes()).unwrap(), pem)
    }

    #[test]
    fn the_message_is_five_lines_in_the_documented_order() {
        let head = "ab".repeat(32);
        let digest = "cd".repeat(32);
        assert_eq!(
            message("gw-1", 1000, &head, &digest),
            format!("tokengate audit checkpoint v1\ngw-1\n1000\n{head}\n{digest}\n")
        );
    }

    #[test]
    fn the_digest_is_the_sha256_of_the_exact_lines_and_counts_records() {
        let mut d = LinesDigest::new();
        assert_eq!(
            d.hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        d.add(b"{\"a\":1}\n", false);
        d.add(b"{\"b\":2}\n", true);
        assert_eq!(d.records(), 1);
        let whole = hex::encode(digest::digest(&digest::SHA256, b"{\"a\":1}\n{\"b\":2}\n"));
        assert_eq!(d.hex(), whole);
        // Reading the digest does not end it.
        d.add(b"x\n", true);
        assert_ne!(d.hex(), whole);
    }

    #[test]
    fn a_signature_verifies_with_the_public_key_only() {
        let (key, _) = new_key();
        let public = key.public_key();
        let text = message("gw", 3, &"0".repeat(64), &"1".repeat(64));
        let signature = key.sign(&text);
        public.verify(&text, &signature).unwrap();
        assert!(public
            .verify(
                &message("gw", 4, &"0".repeat(64), &"1".repeat(64)),
                &signature
            )
            .is_err());
        let (other, _) = new_key();
        assert!(other.public_key().verify(&text, &signature).is_err());
        assert!(public.verify(&text, "not base64!").is_err());
        // The public key goes through its PEM.
        assert_eq!(
            PublicKey::from_pem(public.to_pem().as_bytes()).unwrap(),
            public
        );
        assert!(public.to_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
    }

    #[test]
    fn keys_never_show_and_bad_pem_is_refused_without_its_bytes() {
        let (key, pem) = new_key();
        assert_eq!(format!("{key:?}"), "CheckpointKey(***)");
        let error = CheckpointKey::from_pem(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(error.contains("Ed25519"), "{error}");
        let error = CheckpointKey::from_pem(b"nothing").unwrap_err();
        assert!(error.contains("PKCS#8"), "{error}");
        // A public key is not a private one, and the reverse.
        assert!(CheckpointKey::from_pem(key.public_key().to_pem().as_bytes()).is_err());
        assert!(PublicKey::from_pem(pem.as_bytes()).is_err());
    }

    #[test]
    fn a_v1_key_without_its_public_half_signs_the_same() {
        // PKCS#8 v1 of RFC 8410 §10.3: version 0, id-Ed25519, the 32-byte seed, no public key.
        let seed = [7u8; 32];
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&seed);
        let v1 = CheckpointKey::from_pem(pem_text("PRIVATE KEY", der).as_bytes()).unwrap();
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        assert_eq!(v1.public_key().0.as_slice(), pair.public_key().as_ref());
        let text = message("gw", 1, "h", "d");
        v1.public_key().verify(&text, &v1.sign(&text)).unwrap();
    }

    #[test]
    fn the_checkpoint_member_is_canonical_and_reads_back() {
        let checkpoint = Checkpoint {
            seq: 12,
            head: "a".repeat(64),
            lines_sha256: "b".repeat(64),
            signature: "c2ln+/==".into(),
        };
        let bytes = checkpoint.canonical();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(canonical::canonical(&value), bytes);
        let mut record = Map::new();
        record.insert("checkpoint".into(), value);
        assert_eq!(Checkpoint::of(&record).unwrap(), checkpoint);
        record.insert("checkpoint".into(), serde_json::json!({"seq": "12"}));
        assert!(Checkpoint::of(&record).is_err());
    }
}
