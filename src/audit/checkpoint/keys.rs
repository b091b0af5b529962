//! The keys of signed checkpoints (SPEC §6.3): the Ed25519 private key that signs, in PKCS#8
//! PEM (version 1 as `openssl genpkey -algorithm ed25519` writes it, or version 2 with the public
//! key, as [`write_key_pair`] does), and the public key that checks, in SPKI PEM. Reading PEM is
//! rustls-pki-types' parser; writing it is the `pem` crate's.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

use crate::secret;

/// The DER of an Ed25519 SubjectPublicKeyInfo before its 32 key bytes (RFC 8410): SEQUENCE,
/// AlgorithmIdentifier { id-Ed25519 (1.3.101.112) }, BIT STRING of 33 bytes (no unused bits).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

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

#[cfg(test)]
mod tests {
    use super::super::message;
    use super::*;

    /// A v2 key as `tokengate keys checkpoint` writes it.
    fn new_key() -> (CheckpointKey, String) {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pem = pem_text("PRIVATE KEY", document.as_ref().to_vec());
        (CheckpointKey::from_pem(pem.as_bytes()).unwrap(), pem)
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
}
