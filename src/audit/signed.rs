//! Checking a trail's signed checkpoints with the public key (SPEC §6.3, `tokengate audit verify
//! --public-key`): each checkpoint's signature, its `seq` and `head` against the record before
//! it, and its `lines_sha256` against the lines it covers (see [`super::checkpoint`] for what a
//! checkpoint covers).
//!
//! [`verify_signed`] reads the trail through [`Records`]: with the audit key every hash is
//! recomputed as `verify` does; without it ([`Records::unkeyed`]) links and `seq` continuity are
//! checked and the checkpoints alone prove that the signed lines are unchanged. A trail whose
//! oldest files are gone (retention) starts with lines whose checkpoint range began earlier: the
//! first checkpoint's digest then cannot be recomputed, which is reported, never a failure.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::chain::AuditKey;
use super::checkpoint::{message, Checkpoint, LinesDigest, PublicKey};
use super::verify::{Failure, Records, Summary};

/// What the checkpoints of an intact trail say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signatures {
    /// The number of checkpoints, each checked.
    pub checkpoints: u64,
    /// The last `seq` a checkpoint signed.
    pub last_signed: Option<u64>,
    /// Records (checkpoints not counted) after the last checkpoint, or in the whole trail when it
    /// has none: not yet signed.
    pub unsigned: u64,
    /// The `seq` of a checkpoint whose `lines_sha256` could not be checked because the lines it
    /// covers begin before the first record present (the trail's oldest files are gone); its
    /// signature, `seq` and `head` were checked.
    pub digest_unchecked: Option<u64>,
}

/// Checks the checkpoints of a trail one record at a time, in order.
pub struct CheckpointCheck<'a> {
    key: &'a PublicKey,
    digest: LinesDigest,
    /// Whether `digest` holds every line since the last checkpoint (or the trail's start): false
    /// until the first checkpoint when the trail does not start at seq 1.
    whole: bool,
    /// The `seq` and `hash` of the last record read.
    last: Option<(u64, String)>,
    signatures: Signatures,
}

impl<'a> CheckpointCheck<'a> {
    /// A check of the checkpoints signed by `key`.
    pub fn new(key: &'a PublicKey) -> CheckpointCheck<'a> {
        CheckpointCheck {
            key,
            digest: LinesDigest::new(),
            whole: false,
            last: None,
            signatures: Signatures::default(),
        }
    }

    /// Takes the next record of the trail (already checked by [`Records`]): `line` is its exact
    /// line, newline included. Says what is wrong with it as a checkpoint, if it is one.
    pub fn record(
        &mut self,
        seq: u64,
        record: &Map<String, Value>,
        line: &[u8],
    ) -> Result<(), String> {
        if self.last.is_none() {
            self.whole = seq == 1;
        }
        let is_checkpoint = record.get("phase").and_then(Value::as_str) == Some("checkpoint");
        if is_checkpoint {
            self.checkpoint(seq, record)?;
            self.digest = LinesDigest::new();
            self.whole = true;
        }
        self.digest.add(line, !is_checkpoint);
        self.signatures.unsigned = self.digest.records();
        let hash = record.get("hash").and_then(Value::as_str).unwrap_or("");
        self.last = Some((seq, hash.to_owned()));
        Ok(())
    }

    fn checkpoint(&mut self, seq: u64, record: &Map<String, Value>) -> Result<(), String> {
        let checkpoint = Checkpoint::of(record)?;
        let Some(origin) = record.get("origin").and_then(Value::as_str) else {
            return Err("the checkpoint record has no origin".into());
        };
        // What it signs must be the record before it: read, or (the first record present) named
        // by its own `prev`.
        let (before_seq, before_hash) = match &self.last {
            Some((last_seq, last_hash)) => (*last_seq, last_hash.as_str()),
            None => (
                seq.saturating_sub(1),
                record.get("prev").and_then(Value::as_str).unwrap_or(""),
            ),
        };
        if checkpoint.seq != before_seq {
            return Err(format!(
                "the checkpoint signs seq {} but the record before it is seq {before_seq}",
                checkpoint.seq
            ));
        }
        if checkpoint.head != before_hash {
            return Err(format!(
                "the checkpoint's head is not the hash of seq {before_seq}, the record before it"
            ));
        }
        let text = message(
            origin,
            checkpoint.seq,
            &checkpoint.head,
            &checkpoint.lines_sha256,
        );
        self.key.verify(&text, &checkpoint.signature)?;
        if self.whole {
            if self.digest.hex() != checkpoint.lines_sha256 {
                return Err(format!(
                    "lines_sha256 does not match the lines it covers (through seq {}): a line was changed, added or removed",
                    checkpoint.seq
                ));
            }
        } else {
            self.signatures.digest_unchecked = Some(seq);
        }
        self.signatures.checkpoints += 1;
        self.signatures.last_signed = Some(checkpoint.seq);
        Ok(())
    }

    /// What the checkpoints read so far say.
    pub fn signatures(&self) -> &Signatures {
        &self.signatures
    }
}

/// Reads the trail made of `files` (oldest first) and checks every checkpoint signed with
/// `public`, and every record as `verify` does when `key` is given (else links and `seq` only).
/// Returns the trail's summary and what its checkpoints say, or the first bad record (a
/// checkpoint that does not check is one).
pub fn verify_signed(
    files: &[PathBuf],
    key: Option<&AuditKey>,
    public: &PublicKey,
) -> Result<(Summary, Signatures), Failure> {
    let mut records = match key {
        Some(key) => Records::new(files, key),
        None => Records::unkeyed(files),
    };
    let mut check = CheckpointCheck::new(public);
    while let Some(record) = records.next() {
        let record = record?;
        if let Err(reason) = check.record(record.seq, &record.record, records.line()) {
            return Err(Failure {
                file: files[record.file].clone(),
                line: record.line,
                seq: Some(record.seq),
                reason,
                torn: false,
            });
        }
    }
    Ok((records.summary(), check.signatures().clone()))
}
