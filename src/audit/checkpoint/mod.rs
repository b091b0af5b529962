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
//!
//! - `keys.rs`: the private and public keys, their PEM, and `tokengate keys checkpoint`;
//! - `resume.rs`: the digest rebuilt from the files when the writer starts.

mod keys;
mod resume;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::digest;
use serde_json::{Map, Value};

use super::canonical;
use super::record::{self, Draft};

pub use keys::{write_key_pair, CheckpointKey, PublicKey};
pub(crate) use resume::resume;

/// The first line of the signed text: what it is, and the version of its layout.
pub const MESSAGE_HEADER: &str = "tokengate audit checkpoint v1";

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

#[cfg(test)]
mod tests {
    use super::*;

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
