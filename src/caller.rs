//! Who is calling: gateway keys, their digests, and the caller a request is made for.
//!
//! A key is never stored or logged in clear: the config holds its SHA-256, and a presented key
//! is looked up by its digest. In pass-through mode there are no keys: the caller's own upstream
//! access token is the credential, and its identity is `token:<12 hex digits of its SHA-256>`.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::{AuthScheme, ClientConfig, RateLimitConfig};
use crate::error::GatewayError;
use crate::policy::Policy;
use crate::ratelimit::identities::{Identities, IdentityKey};
use crate::ratelimit::{CallerLimits, Rates};
use crate::route::{Operation, OperationSet};
use crate::secret::strip_bearer;
use crate::tls::PeerIdentity;
use crate::upstream::Credential;

/// The prefix of every key `tokengate keys new` makes, so a leaked key is recognisable (and
/// secret scanners can be taught it).
pub const KEY_PREFIX: &str = "tg_";

/// A fresh gateway key: the prefix and 32 random bytes in hex.
pub fn new_key() -> Result<String, GatewayError> {
    Ok(format!("{KEY_PREFIX}{}", random_hex(32)?))
}

/// `n` bytes from the system's secure random number generator, in hex.
pub fn random_hex(n: usize) -> Result<String, GatewayError> {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| GatewayError::Internal("the system random number generator failed".into()))?;
    Ok(hex::encode(bytes))
}

/// The lowercase hex SHA-256 of a key, as `key_sha256` holds it.
pub fn key_digest_hex(key: &str) -> String {
    hex::encode(digest(&SHA256, key.as_bytes()))
}

/// The caller a request is made for, inserted by the authenticate layer.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The client name (hold mode) or `token:<12 hex>` (pass-through mode).
    pub name: Arc<str>,
    /// The operations it may use.
    pub allow: OperationSet,
    /// The credential its requests carry upstream.
    pub credential: Arc<Credential>,
    /// Its rate-limit buckets: a configured client's own, or a pass-through identity's from the
    /// bounded table ([`Identities`]), so no number of invented credentials grows the state.
    pub limits: Option<Arc<CallerLimits>>,
    /// Its policy (configured clients only).
    pub policy: Option<Arc<Policy>>,
    /// Whether it is a `[[clients]]` entry, whose name is a metric label.
    pub configured: bool,
}

impl Caller {
    /// Whether the caller may use `op`.
    pub fn may(&self, op: Operation) -> bool {
        self.allow.contains(op)
    }

    /// The `client` label of its metrics: its name when configured, `passthrough` otherwise (a
    /// label per pass-through token would grow without bound).
    pub fn metric_label(&self) -> &str {
        if self.configured {
            &self.name
        } else {
            "passthrough"
        }
    }
}

/// How callers are recognised.
#[derive(Debug)]
pub enum Authenticator {
    /// Hold mode: configured clients, by key digest or client certificate; all share the
    /// gateway's credential.
    Keys {
        /// Clients with a key, by its SHA-256, with the certificate subject they must also
        /// present when they have one.
        clients: HashMap<[u8; 32], (Caller, Option<String>)>,
        /// Clients identified by their certificate alone (`cert_subject` without a key).
        by_cert: Vec<(String, Caller)>,
    },
    /// Pass-through mode: the caller's token is the credential.
    Passthrough {
        /// How the token is sent upstream.
        scheme: AuthScheme,
        /// `New-Api-User` when the caller sends none.
        default_user: HeaderValue,
        /// The buckets of each identity (`token:<12 hex>`), at most `rate_limit.max_identities`.
        identities: Arc<Identities>,
    },
}

impl Authenticator {
    /// The hold-mode table of configured clients. The digests were checked at load.
    pub fn keys(
        clients: &[ClientConfig],
        rates: &RateLimitConfig,
        credential: Arc<Credential>,
    ) -> Authenticator {
        let mut by_key = HashMap::new();
        let mut by_cert = Vec::new();
        for client in clients {
            let caller = Caller {
                name: client.name.as_str().into(),
                allow: client.allow.iter().copied().collect(),
                credential: credential.clone(),
                limits: Some(Arc::new(CallerLimits::for_client(client, rates))),
                policy: Some(Arc::new(Policy::of(client))),
                configured: true,
            };
            let mut digest = [0u8; 32];
            match (&client.key_sha256, &client.cert_subject) {
                (Some(hex), subject) if hex::decode_to_slice(hex, &mut digest).is_ok() => {
                    by_key.insert(digest, (caller, subject.clone()));
                }
                (None, Some(subject)) => by_cert.push((subject.clone(), caller)),
                // Refused at load.
                _ => {}
            }
        }
        Authenticator::Keys {
            clients: by_key,
            by_cert,
        }
    }

    /// Pass-through mode: each caller's own token is forwarded, and each identity gets buckets of
    /// the `[rate_limit]` defaults, at most `rates.max_identities` of them.
    pub fn passthrough(
        scheme: AuthScheme,
        default_user: HeaderValue,
        rates: &RateLimitConfig,
    ) -> Authenticator {
        Authenticator::Passthrough {
            scheme,
            default_user,
            identities: Arc::new(Identities::new(
                rates.max_identities,
                Rates::defaults(rates),
            )),
        }
    }

    /// Keeps the rate-limit state of `previous` (the configuration before a reload) for every
    /// client whose name and rates did not change, and the pass-through identities' table when
    /// its rates and bound did not change.
    pub fn keep_limits_from(&mut self, previous: &Authenticator) {
        let (
            Authenticator::Keys { clients, by_cert },
            Authenticator::Keys {
                clients: old_clients,
                by_cert: old_by_cert,
            },
        ) = (&mut *self, previous)
        else {
            if let (
                Authenticator::Passthrough { identities, .. },
                Authenticator::Passthrough {
                    identities: old, ..
                },
            ) = (self, previous)
            {
                if old.rates() == identities.rates() && old.max() == identities.max() {
                    *identities = old.clone();
                }
            }
            return;
        };
        let old: HashMap<&str, &Arc<CallerLimits>> = old_clients
            .values()
            .map(|(caller, _)| caller)
            .chain(old_by_cert.iter().map(|(_, caller)| caller))
            .filter_map(|caller| Some((&*caller.name, caller.limits.as_ref()?)))
            .collect();
        let callers = clients
            .values_mut()
            .map(|(caller, _)| caller)
            .chain(by_cert.iter_mut().map(|(_, caller)| caller));
        for caller in callers {
            let kept = match (old.get(&*caller.name), &caller.limits) {
                (Some(old), Some(new)) if old.same_rates(new) => Some((*old).clone()),
                _ => None,
            };
            if kept.is_some() {
                caller.limits = kept;
            }
        }
    }

    /// How many rate-limit buckets the callers hold now (two per configured client, or per
    /// pass-through identity in the table).
    pub fn buckets(&self) -> usize {
        match self {
            Authenticator::Keys { clients, by_cert } => 2 * (clients.len() + by_cert.len()),
            Authenticator::Passthrough { identities, .. } => 2 * identities.len(),
        }
    }

    /// Identifies the caller from its `Authorization` value and its verified client certificate
    /// (and, in pass-through mode, its `New-Api-User`).
    pub fn authenticate(
        &self,
        authorization: Option<&HeaderValue>,
        new_api_user: Option<&HeaderValue>,
        peer: Option<&PeerIdentity>,
    ) -> Result<Caller, GatewayError> {
        let key = match authorization {
            Some(value) => strip_bearer(std::str::from_utf8(value.as_bytes()).map_err(|_| {
                GatewayError::BadRequest("the Authorization header is not valid UTF-8".into())
            })?),
            None => "",
        };
        // No key (no header, or an empty `Bearer`): a certificate alone may identify the caller.
        if key.is_empty() {
            return match self {
                Authenticator::Keys { clients, by_cert } => by_certificate(clients, by_cert, peer),
                Authenticator::Passthrough { .. } => Err(GatewayError::MissingKey),
            };
        }
        let sha = digest(&SHA256, key.as_bytes());
        match self {
            Authenticator::Keys { clients, .. } => {
                let mut digest = [0u8; 32];
                digest.copy_from_slice(sha.as_ref());
                let (caller, subject) = clients.get(&digest).ok_or(GatewayError::UnknownKey)?;
                match subject {
                    Some(subject) if !peer.is_some_and(|p| p.matches(subject)) => {
                        Err(GatewayError::CertificateRequired {
                            client: caller.name.to_string(),
                        })
                    }
                    _ => Ok(caller.clone()),
                }
            }
            Authenticator::Passthrough {
                scheme,
                default_user,
                identities,
            } => {
                let user = new_api_user
                    .cloned()
                    .unwrap_or_else(|| default_user.clone());
                let credential =
                    Credential::new(key, *scheme, user).map_err(GatewayError::BadRequest)?;
                let mut identity: IdentityKey = [0; 16];
                identity.copy_from_slice(&sha.as_ref()[..16]);
                Ok(Caller {
                    name: format!("token:{}", &hex::encode(sha)[..12]).into(),
                    allow: OperationSet::all(),
                    credential: Arc::new(credential),
                    limits: Some(identities.limits(&identity)),
                    policy: None,
                    configured: false,
                })
            }
        }
    }
}

/// A caller without a key: the client its certificate names, if one is identified by the
/// certificate alone.
fn by_certificate(
    clients: &HashMap<[u8; 32], (Caller, Option<String>)>,
    by_cert: &[(String, Caller)],
    peer: Option<&PeerIdentity>,
) -> Result<Caller, GatewayError> {
    let Some(peer) = peer else {
        return Err(GatewayError::MissingKey);
    };
    if let Some((_, caller)) = by_cert.iter().find(|(subject, _)| peer.matches(subject)) {
        return Ok(caller.clone());
    }
    // A certificate of a client that must also send its key.
    if clients
        .values()
        .any(|(_, subject)| subject.as_deref().is_some_and(|s| peer.matches(s)))
    {
        return Err(GatewayError::MissingKey);
    }
    Err(GatewayError::UnknownCertificate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential() -> Arc<Credential> {
        Arc::new(Credential::new("upstream", AuthScheme::Raw, HeaderValue::from(1)).unwrap())
    }

    #[test]
    fn new_keys_are_prefixed_random_and_match_their_digest() {
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("tg_") && a.len() == 3 + 64);
        assert_eq!(
            key_digest_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn keys_are_found_by_digest_in_every_spelling() {
        let key = "tg_secret";
        let table = Authenticator::keys(
            &[ClientConfig {
                name: "team-a".into(),
                key_sha256: Some(key_digest_hex(key)),
                allow: vec![Operation::List],
                ..ClientConfig::default()
            }],
            &RateLimitConfig::default(),
            credential(),
        );
        for spelling in [
            "Bearer tg_secret",
            "bearer  tg_secret",
            "BEARER tg_secret",
            "tg_secret",
            "Bearer\ttg_secret",
        ] {
            let caller = table
                .authenticate(Some(&HeaderValue::from_static(spelling)), None, None)
                .unwrap();
            assert_eq!(&*caller.name, "team-a", "{spelling}");
            assert!(caller.may(Operation::List) && !caller.may(Operation::Create));
        }
        let unknown = table.authenticate(
            Some(&HeaderValue::from_static("Bearer tg_other")),
            None,
            None,
        );
        assert_eq!(unknown.unwrap_err().code(), "unauthenticated");
        assert!(matches!(
            table.authenticate(None, None, None),
            Err(GatewayError::MissingKey)
        ));
        assert!(matches!(
            table.authenticate(Some(&HeaderValue::from_static("Bearer ")), None, None),
            Err(GatewayError::MissingKey)
        ));
        let latin1 = HeaderValue::from_bytes(b"Bearer \xe9t\xe9").unwrap();
        assert_eq!(
            table
                .authenticate(Some(&latin1), None, None)
                .unwrap_err()
                .code(),
            "bad_request"
        );
    }

    #[test]
    fn passthrough_identity_is_the_token_digest() {
        let auth = Authenticator::passthrough(
            AuthScheme::Raw,
            HeaderValue::from(1),
            &RateLimitConfig::default(),
        );
        let caller = auth
            .authenticate(Some(&HeaderValue::from_static("Bearer abc")), None, None)
            .unwrap();
        assert_eq!(&*caller.name, "token:ba7816bf8f01");
        assert!(Operation::ALL.iter().all(|op| caller.may(*op)));
        assert!(caller.limits.is_some() && !caller.configured);
        assert_eq!(caller.metric_label(), "passthrough");
    }

    #[test]
    fn a_reload_keeps_the_identities_while_their_rates_stay() {
        let rates = RateLimitConfig::default();
        let running = Authenticator::passthrough(AuthScheme::Raw, HeaderValue::from(1), &rates);
        running
            .authenticate(Some(&HeaderValue::from_static("abc")), None, None)
            .unwrap();
        assert_eq!(running.buckets(), 2);
        let mut same = Authenticator::passthrough(AuthScheme::Raw, HeaderValue::from(1), &rates);
        same.keep_limits_from(&running);
        assert_eq!(same.buckets(), 2, "the identity and its state are kept");
        let faster = RateLimitConfig {
            burst: 3,
            ..RateLimitConfig::default()
        };
        let mut changed =
            Authenticator::passthrough(AuthScheme::Raw, HeaderValue::from(1), &faster);
        changed.keep_limits_from(&running);
        assert_eq!(changed.buckets(), 0, "new rates: new buckets");
    }
}
