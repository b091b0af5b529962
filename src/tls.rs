//! Inbound TLS (SPEC §8): the caller-facing listener's rustls configuration, and who a client
//! certificate names.
//!
//! TLS 1.2 and 1.3 only, with the ring provider's suites (AEAD ciphers with forward secrecy:
//! nothing weak to turn off), HTTP/2 and HTTP/1.1 offered by ALPN. With `client_ca_file` a
//! caller's certificate must chain to that CA, checked by rustls during the handshake; a
//! certificate from elsewhere never reaches the request stack. Which *client* a good certificate
//! is for is decided later, by the authenticate layer, from its [`PeerIdentity`].

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientAuth, ConfigError, TlsConfig};

/// The rustls configuration of the caller-facing listener, read from the files `tls` names;
/// every fault names its key.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let fault = |key: &str, message: String| ConfigError {
        key: format!("server.tls.{key}"),
        message,
    };
    let chain = certificates(&tls.cert_file).map_err(|m| fault("cert_file", m))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| {
        fault(
            "key_file",
            format!(
                "{} holds no readable PEM private key: {e}",
                tls.key_file.display()
            ),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fault("cert_file", e.to_string()))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path).map_err(|m| fault("client_ca_file", m))? {
                roots.add(cert).map_err(|e| {
                    fault(
                        "client_ca_file",
                        format!("{} holds a certificate rustls refuses: {e}", path.display()),
                    )
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = match tls.client_auth.unwrap_or_default() {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| fault("client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        fault(
            "key_file",
            format!("the key does not fit the certificate, or is not usable: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file (at least one).
pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Who a verified client certificate names: its subject Common Name and its DNS
/// subject-alternative names (SPEC §8 `cert_subject` matches either).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's Common Name, if it has one in UTF-8.
    pub common_name: Option<String>,
    /// The DNS names of its subject-alternative-name extension.
    pub dns_names: Vec<String>,
}

impl PeerIdentity {
    /// Reads the names of a certificate rustls has already verified; a certificate whose names
    /// cannot be read names nobody.
    pub fn of(cert: &CertificateDer<'_>) -> PeerIdentity {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
            return PeerIdentity::default();
        };
        let common_name = cert
            .subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let dns_names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        PeerIdentity {
            common_name,
            dns_names,
        }
    }

    /// Whether `subject` is the Common Name or one of the DNS names (letter case aside, as DNS
    /// names compare).
    pub fn matches(&self, subject: &str) -> bool {
        self.common_name
            .iter()
            .chain(&self.dns_names)
            .any(|name| name.eq_ignore_ascii_case(subject))
    }
}
