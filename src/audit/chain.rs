//! The hash chain of the audit trail (SPEC §6, tamper evidence).
//!
//! Each record carries `prev` (the previous record's `hash`, or [`GENESIS`] for the first record
//! of the trail) and `hash`: the lowercase hex HMAC-SHA256, keyed with the [`AuditKey`], of the
//! record's canonical JSON ([`super::canonical`]) without its `hash` member. Since `prev` is
//! hashed too, changing, removing or reordering any record breaks the chain from there on, and
//! without the key no one can compute a hash that verifies.

use std::fmt;
use std::path::Path;

use ring::hmac;
use serde_json::{Map, Value};

use super::canonical::write_object;
use crate::config::DEFAULT_AUDIT_KEY_ENV;
use crate::secret;

/// The `prev` of the first record of a trail: 64 `0`s.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The shortest audit key accepted, in bytes (after surrounding white space is removed).
pub const MIN_KEY_BYTES: usize = 32;

/// The HMAC-SHA256 key of the audit trail. Its `Debug` prints `AuditKey(***)`.
#[derive(Clone)]
pub struct AuditKey(hmac::Key);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(***)")
    }
}

impl AuditKey {
    /// A key from its bytes, surrounding white space removed; they must be at least
    /// [`MIN_KEY_BYTES`] long. The error never holds the value.
    pub fn new(bytes: &[u8]) -> Result<AuditKey, String> {
        let bytes = bytes.trim_ascii();
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the audit key must be at least {MIN_KEY_BYTES} bytes long (surrounding white space removed); it has {}",
                bytes.len()
            ));
        }
        Ok(AuditKey(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// Loads the key the way `[audit]` names it: from `file` when given, otherwise from the
    /// environment variable `env` (by default [`DEFAULT_AUDIT_KEY_ENV`]). Errors name the file or
    /// the variable, never the value.
    pub fn load(env: Option<&str>, file: Option<&Path>) -> Result<AuditKey, String> {
        match file {
            Some(file) => {
                let value = secret::from_file(file).map_err(|e| format!("audit key: {e}"))?;
                AuditKey::new(value.expose().as_bytes())
                    .map_err(|e| format!("{e}: in the file {}", file.display()))
            }
            None => {
                let name = env.unwrap_or(DEFAULT_AUDIT_KEY_ENV);
                let value = secret::from_env(name).map_err(|e| format!("audit key: {e}"))?;
                AuditKey::new(value.expose().as_bytes())
                    .map_err(|e| format!("{e}: in the environment variable {name}"))
            }
        }
    }

    /// The lowercase hex HMAC-SHA256 of `data`.
    pub(crate) fn sign(&self, data: &[u8]) -> String {
        hex::encode(hmac::sign(&self.0, data).as_ref())
    }
}

/// The `hash` that `record` must carry: the lowercase hex HMAC-SHA256 of its canonical JSON
/// without its `hash` member (whether it has one or not).
pub fn hash_of(key: &AuditKey, record: &Map<String, Value>) -> String {
    let mut bytes = Vec::with_capacity(512);
    write_object(record, Some("hash"), &mut bytes);
    key.sign(&bytes)
}

/// Seals a record: removes any `hash` member, then inserts the one [`hash_of`] computes. The
/// record must already hold its `prev`. The gateway's writer seals [`super::record::Draft`]s
/// instead; this map form serves whoever builds records by hand (tests, tools), and checks that
/// a sealed draft reads back as the same bytes.
pub fn seal(key: &AuditKey, record: &mut Map<String, Value>) {
    record.remove("hash");
    let hash = hash_of(key, record);
    record.insert("hash".to_owned(), Value::String(hash));
}

/// The line of the trail for a (sealed) record: its canonical JSON, `hash` included, then `\n`.
/// These are the exact bytes the writer appends, and the form `verify` expects.
pub fn line(record: &Map<String, Value>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(512);
    write_object(record, None, &mut bytes);
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn record(seq: u64, prev: &str) -> Map<String, Value> {
        let Value::Object(map) = json!({
            "v": 1, "seq": seq, "ts": "2025-01-01T00:00:00.000Z", "phase": "intent",
            "request_id": "r1", "client": "team-a", "op": "create", "token_ids": [],
            "request": {"name": "x", "remain_quota": 10}, "prev": prev,
        }) else {
            unreachable!()
        };
        map
    }

    #[test]
    fn genesis_is_64_zeros() {
        assert_eq!(GENESIS.len(), 64);
        assert!(GENESIS.bytes().all(|b| b == b'0'));
    }

    #[test]
    fn keys_must_be_32_bytes_after_trimming() {
        assert!(AuditKey::new(KEY).is_ok());
        let short = AuditKey::new(b"  0123456789abcdef0123456789abcde \n").unwrap_err();
        assert!(short.contains("at least 32 bytes"), "{short}");
        assert!(!short.contains("0123456789"), "{short}");
        // Surrounding white space does not count, nor change the key.
        let padded = AuditKey::new(b"\n 0123456789abcdef0123456789abcdef\t\n").unwrap();
        let plain = AuditKey::new(KEY).unwrap();
        let r = record(1, GENESIS);
        assert_eq!(hash_of(&padded, &r), hash_of(&plain, &r));
        assert_eq!(format!("{plain:?}"), "AuditKey(***)");
    }

    #[test]
    fn keys_load_from_a_file_or_a_named_variable_and_errors_name_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.key");
        std::fs::write(&file, b"0123456789abcdef0123456789abcdef\n").unwrap();
        let env = "TOKENGATE_TEST_AUDIT_KEY_CHAIN_RS";
        std::env::set_var(env, "this-is-the-env-value-that-is-long-enough");
        // The file wins over the variable.
        let from_file = AuditKey::load(Some(env), Some(&file)).unwrap();
        let r = record(1, GENESIS);
        assert_eq!(
            hash_of(&from_file, &r),
            hash_of(&AuditKey::new(KEY).unwrap(), &r)
        );
        let from_env = AuditKey::load(Some(env), None).unwrap();
        assert_ne!(hash_of(&from_env, &r), hash_of(&from_file, &r));

        std::env::set_var(env, "short-secret-value");
        let error = AuditKey::load(Some(env), None).unwrap_err();
        assert!(error.contains(env) && error.contains("32"), "{error}");
        assert!(!error.contains("short-secret-value"), "{error}");
        std::env::remove_var(env);
        let error = AuditKey::load(Some(env), None).unwrap_err();
        assert!(error.contains(env) && error.contains("not set"), "{error}");

        let missing = dir.path().join("missing.key");
        let error = AuditKey::load(None, Some(&missing)).unwrap_err();
        assert!(error.contains("missing.key"), "{error}");
        std::fs::write(&file, b"short-file-secret").unwrap();
        let error = AuditKey::load(None, Some(&file)).unwrap_err();
        assert!(error.contains("audit.key") && !error.contains("short-file-secret"));
    }

    #[test]
    fn seal_hashes_the_record_without_its_hash() {
        let key = AuditKey::new(KEY).unwrap();
        let mut r = record(1, GENESIS);
        r.insert("hash".into(), json!("stale"));
        seal(&key, &mut r);
        let hash = r["hash"].as_str().unwrap().to_owned();
        assert_eq!(hash.len(), 64);
        assert!(hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(hash_of(&key, &r), hash);
        // The same as an HMAC over the canonical JSON of the record without `hash`.
        let mut without = r.clone();
        without.remove("hash");
        let expected = hex::encode(
            hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, KEY),
                &super::super::canonical::canonical(&Value::Object(without)),
            )
            .as_ref(),
        );
        assert_eq!(hash, expected);
        // Any change to a field, `prev` included, changes it.
        let mut edited = r.clone();
        edited.insert("seq".into(), json!(2));
        assert_ne!(hash_of(&key, &edited), hash);
        let mut relinked = r.clone();
        relinked.insert("prev".into(), json!("1".repeat(64)));
        assert_ne!(hash_of(&key, &relinked), hash);
        // Another key gives another hash.
        let other = AuditKey::new(b"abcdef0123456789abcdef0123456789").unwrap();
        assert_ne!(hash_of(&other, &r), hash);
    }

    #[test]
    fn a_line_is_the_canonical_record_and_reads_back_to_the_same_hash() {
        let key = AuditKey::new(KEY).unwrap();
        let mut r = record(7, GENESIS);
        seal(&key, &mut r);
        let bytes = line(&r);
        assert_eq!(bytes.last(), Some(&b'\n'));
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with("{\"client\":\"team-a\",\"hash\":\""),
            "{text}"
        );
        let back: Map<String, Value> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(hash_of(&key, &back), r["hash"].as_str().unwrap());
        assert_eq!(line(&back), bytes);
    }
}
