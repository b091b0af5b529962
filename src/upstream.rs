//! The upstream new-api: its URL, the credential the gateway injects, and a client (each
//! sending thread with connections of its own: [`pool`], [`connect`]) that sends a request and
//! reads the whole answer within one deadline.
//!
//! Everything that can go wrong here becomes a [`GatewayError`] that says what happened without
//! saying where the upstream is: refused or reset connections and TLS failures are 502
//! `upstream_unavailable`, redirects too (a `Location` would leak the upstream's address), no
//! answer in time is 504, a bare 429 is `upstream_rate_limited`, and a 401/403 in hold mode means
//! the gateway's own credential was refused (502 `upstream_auth_failed`). In pass-through mode a
//! refusal of the caller's own token passes through on its forwarded request, and is a 401
//! `unauthenticated` on a read the gateway makes for its own checks.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, AUTHORIZATION, HOST};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use tokio::time::Instant;

use crate::config::{AuthScheme, Mode, RateLimitConfig, UpstreamConfig};
use crate::context::{RequestContext, UpstreamFacts};
use crate::error::{BoxError, GatewayError};
use crate::layers::detach::InFlight;
use crate::metrics::Metrics;
use crate::ratelimit::shared::SharedBuckets;
use crate::ratelimit::UpstreamLimit;
use crate::route::Operation;
use crate::secret::{strip_bearer, Secret};

mod connect;
mod pool;
mod refusals;

use connect::{ConnectError, Connector};
pub(crate) use pool::close_expired_idle;
use pool::Pool;

/// `New-Api-User`, the header new-api compares with the user who owns the access token.
pub const NEW_API_USER: HeaderName = HeaderName::from_static("new-api-user");

/// The largest upstream answer the gateway reads (a page of 100 tokens is about 60 KiB).
const MAX_UPSTREAM_BODY: usize = 16 << 20;

/// The upstream base URL: scheme, authority and an optional path prefix, checked at load.
#[derive(Clone, Debug)]
pub struct UpstreamUrl {
    scheme: Scheme,
    authority: Authority,
    /// `Host`, set on every request: otherwise the client formats it from the URI each time.
    host: HeaderValue,
    /// A path prefix without trailing slash (`""` for none).
    prefix: String,
}

impl UpstreamUrl {
    /// Parses `http(s)://host[:port][/prefix]`.
    pub fn parse(text: &str) -> Result<UpstreamUrl, String> {
        // Messages never repeat the URL: a mistaken one may carry a credential.
        let uri: Uri = text.parse().map_err(|e| format!("is not a URL ({e})"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err("must start with http:// or https://".into()),
        };
        let authority = uri.authority().cloned().ok_or("has no host")?;
        if authority.as_str().contains('@') {
            return Err("must not carry a user name or password; the credential comes from upstream.access_token_env or upstream.access_token_file".into());
        }
        if uri.query().is_some() || text.contains('#') {
            return Err("must not have a query or fragment".into());
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| "has an invalid host")?;
        Ok(UpstreamUrl {
            scheme,
            authority,
            host,
            prefix,
        })
    }

    /// The full URI of a canonical path and query.
    fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let builder = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        if self.prefix.is_empty() {
            builder.path_and_query(path_and_query).build()
        } else {
            builder
                .path_and_query(format!("{}{path_and_query}", self.prefix))
                .build()
        }
    }

    /// Whether the upstream is reached over TLS.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

/// The `Authorization` and `New-Api-User` values sent upstream. Both values are marked
/// sensitive, and `Debug` prints neither.
#[derive(Clone)]
pub struct Credential {
    authorization: HeaderValue,
    user: HeaderValue,
}

impl Credential {
    /// Builds the headers for `token` (any `Bearer` prefix removed) in the configured scheme.
    pub fn new(token: &str, scheme: AuthScheme, user: HeaderValue) -> Result<Credential, String> {
        let token = strip_bearer(token);
        if token.is_empty() {
            return Err("the access token is empty".into());
        }
        let value = match scheme {
            AuthScheme::Raw => HeaderValue::from_str(token),
            AuthScheme::Bearer => HeaderValue::from_str(&format!("Bearer {token}")),
        };
        let mut authorization = value.map_err(|_| {
            "the access token holds characters that cannot be sent in a header".to_string()
        })?;
        authorization.set_sensitive(true);
        Ok(Credential {
            authorization,
            user,
        })
    }

    /// The credential the gateway holds in hold mode.
    pub fn held(token: &Secret, scheme: AuthScheme, user_id: i64) -> Result<Credential, String> {
        Credential::new(token.expose(), scheme, HeaderValue::from(user_id))
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential { .. }")
    }
}

/// One request to the upstream. No `Debug`: its query may hold a searched key fragment, and its
/// body a token's fields.
pub struct UpstreamRequest<'a> {
    /// The operation it serves (for metrics).
    pub op: Operation,
    /// The method.
    pub method: Method,
    /// The canonical path and query (SPEC §2).
    pub path_and_query: &'a str,
    /// Headers already filtered for forwarding; the credential is added here.
    pub headers: HeaderMap,
    /// The body, read whole.
    pub body: Bytes,
    /// The credential to inject.
    pub credential: &'a Credential,
    /// When the caller's request runs out of time.
    pub deadline: Instant,
    /// The caller's request this serves; `None` for the gateway's own readiness probe, which the
    /// global rate limit does not count.
    pub served: Option<Served<'a>>,
}

/// The caller's request an upstream request serves.
#[derive(Clone, Copy)]
pub struct Served<'a> {
    /// Its context: the upstream's answer is recorded there for the audit trail when
    /// `records_answer`, and a refusal by the global rate limit adds its `RateLimit` fields.
    pub context: &'a RequestContext,
    /// The caller's metric label ([`crate::caller::Caller::metric_label`]).
    pub caller_label: &'a str,
    /// Whether this answer is the one the caller's request is about (the forwarded request), as
    /// opposed to a read the gateway makes for its own checks.
    pub records_answer: bool,
}

/// The upstream's answer, read whole. No `Debug`: a key reveal's body holds token keys in clear.
pub struct UpstreamResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers as the upstream sent them.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// Tells the [`Upstream`]s apart in each thread's connections (a reload builds a new one).
static NEXT_UPSTREAM: AtomicU64 = AtomicU64::new(0);

/// A client for the one upstream: each thread that sends (each worker thread of
/// `server.workers`) keeps connections of its own, so a request and the upstream connection it
/// takes are driven on the same thread, never handed across threads.
pub struct Upstream {
    /// Each thread's connections, all made with the same TLS configuration.
    pool: Pool,
    url: UpstreamUrl,
    timeout: Duration,
    mode: Mode,
    limit: UpstreamLimit,
    /// With `[cluster]`, the global cap is one bucket every replica shares.
    shared: Option<Arc<SharedBuckets>>,
    /// The gateway's detached changes: at shutdown it cuts every exchange still waiting short.
    in_flight: Arc<InFlight>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Upstream({})", self.url)
    }
}

impl Upstream {
    /// A client for the configured upstream, trusting the web PKI roots or `upstream.ca_file`.
    /// It serves the detached changes of `in_flight`.
    pub fn new(
        config: &UpstreamConfig,
        rates: &RateLimitConfig,
        in_flight: Arc<InFlight>,
        metrics: Arc<Metrics>,
    ) -> Result<Upstream, (String, String)> {
        let url = UpstreamUrl::parse(&config.url).map_err(|e| ("upstream.url".to_string(), e))?;
        let tls = tls_config(config).map_err(|e| ("upstream.ca_file".to_string(), e))?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let connector =
            Connector::new(&url, tls, timeout).map_err(|e| ("upstream.url".to_string(), e))?;
        Ok(Upstream {
            pool: Pool::new(NEXT_UPSTREAM.fetch_add(1, Ordering::Relaxed), connector),
            url,
            timeout,
            mode: config.mode,
            limit: UpstreamLimit::new(rates),
            shared: None,
            in_flight,
            metrics,
        })
    }

    /// The client with its global cap shared through `shared` (SPEC §11), when given.
    pub fn with_shared(mut self, shared: Option<Arc<SharedBuckets>>) -> Upstream {
        self.shared = shared;
        self
    }

    /// Shares the global cap through `shared` and serves the changes of `in_flight` (a reload
    /// keeps the running gateway's).
    pub fn share(&mut self, shared: Option<Arc<SharedBuckets>>, in_flight: Arc<InFlight>) {
        self.shared = shared;
        self.in_flight = in_flight;
    }

    /// The base URL (for start-up logs; it holds no secret).
    pub fn url(&self) -> &UpstreamUrl {
        &self.url
    }

    /// Sends one request with the credential injected and reads the whole answer, within
    /// `upstream.timeout_ms` and the caller's deadline.
    pub async fn send(
        &self,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, GatewayError> {
        if let Some(served) = request.served {
            self.admit(served).await?;
        }
        if Instant::now() >= request.deadline {
            return Err(GatewayError::DeadlinePassed);
        }
        let uri = self
            .url
            .uri(request.path_and_query)
            .map_err(|e| GatewayError::Internal(e.into()))?;
        if let Some(Served {
            context,
            records_answer: true,
            ..
        }) = request.served
        {
            // From here the change may reach the upstream: its outcome is no longer `rejected`.
            context.set_forwarded();
            if let Some(read_at) = context.take_read_at() {
                self.metrics.patch_window(read_at.elapsed());
            }
        }
        let mut outbound = http::Request::new(Full::new(request.body));
        *outbound.method_mut() = request.method;
        *outbound.uri_mut() = uri;
        *outbound.headers_mut() = request.headers;
        outbound.headers_mut().insert(HOST, self.url.host.clone());
        outbound
            .headers_mut()
            .insert(AUTHORIZATION, request.credential.authorization.clone());
        outbound
            .headers_mut()
            .insert(NEW_API_USER, request.credential.user.clone());

        // One deadline for the whole exchange, connecting included: the sooner of the caller's
        // and `upstream.timeout_ms` from now.
        let started = Instant::now();
        let until = request.deadline.min(started + self.timeout);
        let budget = until.saturating_duration_since(started);
        let exchange = async {
            let (response, lease) = self.pool.send(outbound).await.map_err(classify)?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_UPSTREAM_BODY)
                .collect()
                .await
                .map_err(classify)?
                .to_bytes();
            lease.release();
            Ok::<_, GatewayError>((parts, body))
        };
        // Shutdown stops waiting for changes (SPEC §6): recorded as a timeout like one that ran
        // out. Only what serves a detached request (any method but GET, its reads included)
        // registers for that; a caller's GET is not detached.
        let detached = request
            .served
            .is_some_and(|served| served.context.method != Method::GET);
        let cut_off = async {
            if detached {
                self.in_flight.cut_off().await
            } else {
                std::future::pending().await
            }
        };
        let result = tokio::select! {
            result = tokio::time::timeout_at(until, exchange) => result.ok(),
            () = cut_off => None,
        };
        self.metrics
            .upstream_duration(request.op, started.elapsed());
        let (parts, body) = match result {
            None => {
                self.pool.forget_h2();
                return Err(GatewayError::UpstreamTimeout(budget.as_millis() as u64));
            }
            Some(outcome) => outcome?,
        };

        let status = parts.status;
        if let Some(Served {
            context,
            records_answer: true,
            ..
        }) = request.served
        {
            context.set_upstream(UpstreamFacts {
                status: status.as_u16(),
                body: body.clone(),
            });
        }
        if status.is_informational() {
            // hyper hands over a 101 (an upgrade nobody asked for); no token answer is one.
            tracing::warn!(
                status = status.as_u16(),
                "upstream answered with an informational status; refused"
            );
            return Err(GatewayError::UpstreamUnavailable {
                reason: "the upstream answered with an informational (1xx) status",
                source: None,
            });
        }
        if status.is_redirection() {
            // The path only: a redirect keeps the query, which can hold a key fragment.
            let location = parts
                .headers
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok());
            let location = location.map(|l| l.split('?').next().unwrap_or(""));
            tracing::warn!(
                status = status.as_u16(),
                location,
                "upstream answered with a redirect; refused"
            );
            return Err(GatewayError::UpstreamUnavailable {
                reason: "the upstream answered with a redirect",
                source: None,
            });
        }
        let refusal = (status == StatusCode::OK)
            .then(|| refused_credential(&body))
            .flatten();
        let refused =
            matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) || refusal.is_some();
        if refused && self.mode == Mode::Hold {
            self.metrics.upstream_auth_failure();
            tracing::error!(
                status = status.as_u16(),
                refusal = refusal.map(|r| r.key),
                language = refusal.map(|r| r.locale),
                "the upstream refused the gateway's own credential: check upstream.access_token_env/_file and upstream.user_id"
            );
            return Err(GatewayError::UpstreamAuthFailed);
        }
        // In pass-through mode the credential is the caller's own: the caller's forwarded request
        // gets the upstream's refusal as it is, but a read the gateway makes for its own checks
        // (a before-read, a PATCH's read, a `name_prefix` check) must not turn it into a 502
        // blaming the upstream: the caller's key was refused, which is a 401.
        let own_read = request.served.is_some_and(|served| !served.records_answer);
        if refused && own_read {
            return Err(GatewayError::CallerCredentialRefused);
        }
        if status == StatusCode::TOO_MANY_REQUESTS && body.is_empty() {
            return Err(GatewayError::UpstreamRateLimited);
        }
        Ok(UpstreamResponse {
            status,
            headers: parts.headers,
            body,
        })
    }
}

impl Upstream {
    /// Waits for room under `rate_limit.upstream_requests_per_second` (at most a second), or
    /// refuses with 429 `rate_limited`; in dry run, counts and logs instead of waiting.
    async fn admit(&self, served: Served<'_>) -> Result<(), GatewayError> {
        if served.context.take_prepaid() {
            return Ok(());
        }
        self.take_room(served).await
    }

    /// Takes the room of `n` upstream requests of `served` at once under the global cap, before
    /// the first of them is sent (a PATCH: its read and its writes), so that nothing waits for the
    /// cap between its read and its write (SPEC §4.5, the quota race).
    pub async fn prepay(&self, served: Served<'_>, n: u32) -> Result<(), GatewayError> {
        for _ in 0..n {
            self.take_room(served).await?;
        }
        served.context.prepay(n);
        Ok(())
    }

    async fn take_room(&self, served: Served<'_>) -> Result<(), GatewayError> {
        let decided = match &self.shared {
            None => self.limit.acquire().await,
            Some(shared) => self.limit.acquire_shared(shared).await.ok_or_else(|| {
                GatewayError::ClusterUnavailable(
                    "the shared upstream cap cannot be reached (cluster.on_unavailable = \"refuse\")"
                        .into(),
                )
            })?,
        };
        let refused = match decided {
            Ok(false) => return Ok(()),
            Ok(true) => {
                self.metrics
                    .rate_limited(served.caller_label, "upstream", true);
                tracing::info!(
                    request_id = %served.context.id,
                    client = served.caller_label,
                    class = "upstream",
                    "rate limit would refuse this request (rate_limit.dry_run)"
                );
                return Ok(());
            }
            Err(status) => status,
        };
        self.metrics
            .rate_limited(served.caller_label, "upstream", false);
        served.context.set_rate(refused);
        Err(GatewayError::RateLimited {
            policy: refused.policy,
            retry_after: refused.reset,
        })
    }
}

/// new-api's answer envelope. It answers failures with HTTP 200 too, so `success` decides. Only
/// `success` and `message` are read: `data` may hold token keys (a reveal) and is never looked at.
#[derive(Debug, serde::Deserialize)]
pub struct Envelope<'a> {
    /// `success`, when the answer has one.
    pub success: Option<bool>,
    /// `message`, when the answer has one.
    #[serde(borrow)]
    pub message: Option<std::borrow::Cow<'a, str>>,
}

impl Envelope<'_> {
    /// The envelope of a body, if it is a JSON object.
    pub fn parse(body: &[u8]) -> Option<Envelope<'_>> {
        serde_json::from_slice(body).ok()
    }
}

/// The largest HTTP 200 body read for a credential refusal. new-api's refusal is a bare
/// `{"message":…,"success":false}` (under 80 bytes in any shipped language, UTF-8); 512
/// still holds the longest with every non-ASCII character `\uXXXX`-escaped and a `data` field
/// (tested below), and keeps token pages and reveals from ever being parsed here.
const MAX_REFUSAL_BODY: usize = 512;

/// Which credential refusal an HTTP 200 body is, if new-api refused the credential (it answers
/// most auth failures with 200 and `success: false`, in the caller's language: see
/// [`refusals`]); only small failure envelopes are parsed.
fn refused_credential(body: &[u8]) -> Option<&'static refusals::Refusal> {
    // memmem: a byte-by-byte window compare cost a tenth of a pass-through GET (BENCHMARKS.md).
    if body.len() > MAX_REFUSAL_BODY || memchr::memmem::find(body, b"\"success\":false").is_none() {
        return None;
    }
    let envelope = Envelope::parse(body)?;
    if envelope.success != Some(false) {
        return None;
    }
    refusals::credential_refusal(&envelope.message?)
}

/// Names what went wrong on the way to the upstream, from the error's cause chain.
fn classify(error: BoxError) -> GatewayError {
    let mut tls = false;
    let mut connect = false;
    let mut too_large = false;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
    while let Some(e) = cause {
        tls |= e.is::<rustls::Error>();
        too_large |= e.is::<http_body_util::LengthLimitError>();
        connect |= e.is::<ConnectError>();
        // `io::Error::source` skips the error it wraps (a rustls error, say): descend into it.
        cause = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    let reason = if tls {
        "the TLS handshake with the upstream failed (its certificate is not trusted or not for its name)"
    } else if connect {
        "the connection to the upstream was refused or could not be made"
    } else if too_large {
        "the upstream's answer is larger than the gateway reads"
    } else {
        "the connection to the upstream was closed or reset before it answered"
    };
    GatewayError::UpstreamUnavailable {
        reason,
        source: Some(error),
    }
}

/// The TLS settings for an `https://` upstream: TLS 1.2 and 1.3 with the ring provider, trusting
/// either the bundled web PKI roots or only the CA in `upstream.ca_file`.
fn tls_config(config: &UpstreamConfig) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            for cert in crate::tls::certificates(path)? {
                roots.add(cert).map_err(|e| {
                    format!("{} holds a certificate rustls refuses: {e}", path.display())
                })?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_a_prefix_and_refuse_the_rest() {
        let url = UpstreamUrl::parse("https://api.example.com:8443/newapi/").unwrap();
        assert_eq!(
            url.uri("/api/token/?p=1").unwrap().to_string(),
            "https://api.example.com:8443/newapi/api/token/?p=1"
        );
        assert_eq!(
            UpstreamUrl::parse("http://127.0.0.1:3000")
                .unwrap()
                .uri("/api/token/")
                .unwrap(),
            "http://127.0.0.1:3000/api/token/"
        );
        for bad in [
            "ftp://x",
            "127.0.0.1:3000",
            "http://u:p@host",
            "http://host/?a=1",
            "http://host/#x",
            "not a url",
        ] {
            assert!(UpstreamUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credential_refusals_in_200_envelopes_are_recognised() {
        let key = |body: &[u8]| refused_credential(body).map(|r| (r.key, r.locale));
        assert_eq!(
            key(br#"{"message":"Unauthorized, invalid access token","success":false}"#),
            Some(("auth.access_token_invalid", "en"))
        );
        assert_eq!(
            key("{\"success\":false,\"message\":\"用户已被封禁\"}".as_bytes()),
            Some(("auth.user_banned", "zh-CN"))
        );
        assert_eq!(
            key("{\"message\":\"無權進行此操作，權限不足\",\"success\":false}".as_bytes()),
            Some(("auth.insufficient_privilege", "zh-TW"))
        );
        for other in [
            "{\"message\":\"令牌名稱過長\",\"success\":false}".as_bytes(),
            br#"{"message":"record not found","success":false}"#,
            br#"{"message":"Unauthorized, invalid access token","success":true}"#,
            br#"{"success":false}"#,
            b"not json",
        ] {
            assert_eq!(key(other), None, "{}", String::from_utf8_lossy(other));
        }
        // Over the cap, even a refusal is not parsed (a token page never is).
        let padded = format!(
            r#"{{"message":"User has been banned","success":false,"data":"{}"}}"#,
            " ".repeat(MAX_REFUSAL_BODY)
        );
        assert_eq!(key(padded.as_bytes()), None);
    }

    #[test]
    fn the_size_cap_holds_every_refusal_however_it_is_encoded() {
        for refusal in refusals::CREDENTIAL_REFUSALS {
            // new-api's own encoding: gin.H keys sorted, compact, raw UTF-8.
            let plain = format!(r#"{{"message":"{}","success":false}}"#, refusal.text);
            assert!(plain.len() < 80, "{refusal:?}");
            // The most a JSON encoder could make of it: every non-ASCII character escaped,
            // and a `data` field besides.
            let escaped: String = refusal
                .text
                .chars()
                .map(|c| {
                    if c.is_ascii() {
                        c.to_string()
                    } else {
                        format!("\\u{:04x}", c as u32)
                    }
                })
                .collect();
            let widest = format!(r#"{{"data":null,"message":"{escaped}","success":false}}"#);
            assert!(widest.len() <= MAX_REFUSAL_BODY, "{refusal:?}");
            for body in [plain, widest] {
                assert_eq!(
                    refused_credential(body.as_bytes()).map(|r| r.key),
                    Some(refusal.key),
                    "{body}"
                );
            }
        }
    }

    #[test]
    fn credential_strips_bearer_and_hides_itself() {
        let user = HeaderValue::from(7);
        let raw = Credential::new("bearer  abc123", AuthScheme::Raw, user.clone()).unwrap();
        assert_eq!(raw.authorization, "abc123");
        assert!(raw.authorization.is_sensitive());
        let bearer = Credential::new("BEARER abc123", AuthScheme::Bearer, user).unwrap();
        assert_eq!(bearer.authorization, "Bearer abc123");
        assert_eq!(format!("{bearer:?}"), "Credential { .. }");
        assert!(Credential::new("Bearer ", AuthScheme::Raw, HeaderValue::from(1)).is_err());
    }
}
