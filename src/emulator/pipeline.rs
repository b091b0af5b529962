//! One request through new-api's middleware order: router (redirects first), global headers,
//! GlobalAPIRateLimit, UserAuth, route middleware (SearchRateLimit, CriticalRateLimit +
//! DisableCache), then the handler.

use std::net::SocketAddr;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use ring::rand::{SecureRandom, SystemRandom};

use super::auth::authenticate;
use super::encode::{empty, not_found, redirect};
use super::gostr::unescape_path;
use super::handlers::{handle, Ctx};
use super::messages::Lang;
use super::ratelimit::{client_ip, Limit, CRITICAL, GLOBAL_API, GLOBAL_WEB, SEARCH};
use super::routes::{redirect_location, resolve, Resolved, Route};
use super::server::{unix_now, Emulator};

pub(crate) use super::encode::Reply;

/// The value of `Auth-Version` after successful auth (E2/E3).
pub const AUTH_VERSION: &str = "864b7076dbcd0a3c01b5520316720ebf";
/// The value of `X-New-Api-Version` this emulator reports.
pub const NEW_API_VERSION: &str = "v1.0.0-rc.15";
const REQUEST_ID: &str = "x-oneapi-request-id";

/// Go's answer to a request it cannot parse (bad percent-encoding, unreadable body).
pub(crate) fn bad_request() -> Reply {
    let mut resp = empty(StatusCode::BAD_REQUEST);
    *resp.body_mut() = http_body_util::Full::new(Bytes::from_static(b"400 Bad Request"));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The answer to one request.
pub(crate) fn respond(emu: &Emulator, parts: &Parts, body: &[u8], peer: SocketAddr) -> Reply {
    let Some(path) = unescape_path(parts.uri.path()) else {
        return bad_request();
    };
    let config = &emu.inner.config;
    let ip = client_ip(&parts.headers, peer);
    let limited =
        |limit: Limit, key: &str| config.rate_limits && !emu.inner.limiter.allow(limit, key);
    let mut reply = match resolve(config.era, &parts.method, &path) {
        Resolved::Redirect(target) => {
            let location = redirect_location(&target, parts.uri.query(), &parts.headers);
            return redirect(parts.method == Method::GET, &location);
        }
        Resolved::NotFound if limited(GLOBAL_WEB, &ip) => empty(StatusCode::TOO_MANY_REQUESTS),
        Resolved::NotFound => not_found(parts.method.as_str(), &path),
        Resolved::Route(_) if limited(GLOBAL_API, &ip) => empty(StatusCode::TOO_MANY_REQUESTS),
        Resolved::Route(route) => {
            let lang = Lang::from_headers(&parts.headers);
            let mut store = emu.store();
            match authenticate(config.era, &store, &parts.headers, lang) {
                Err(reply) => reply,
                Ok(caller) => {
                    let critical = matches!(route, Route::RevealKey(_) | Route::BatchKeys);
                    let mut reply = if matches!(route, Route::Search)
                        && limited(SEARCH, &caller.id.to_string())
                        || critical && limited(CRITICAL, &ip)
                    {
                        empty(StatusCode::TOO_MANY_REQUESTS)
                    } else {
                        let ctx = Ctx {
                            era: config.era,
                            billing_type: config.fork_billing_type,
                            caller,
                            lang,
                            query: parts.uri.query(),
                            body,
                            now: unix_now(),
                        };
                        let mut reply = handle(&mut store, route, &ctx);
                        if critical {
                            disable_cache(&mut reply);
                        }
                        reply
                    };
                    set(&mut reply, "auth-version", AUTH_VERSION);
                    reply
                }
            }
        }
    };
    if !parts.headers.contains_key(REQUEST_ID) {
        set(&mut reply, REQUEST_ID, &request_id());
    }
    set(&mut reply, "x-new-api-version", NEW_API_VERSION);
    reply
}

fn set(reply: &mut Reply, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        reply
            .headers_mut()
            .insert(HeaderName::from_static(name), value);
    }
}

/// `middleware.DisableCache()`.
fn disable_cache(reply: &mut Reply) {
    set(
        reply,
        "cache-control",
        "no-store, no-cache, must-revalidate, private, max-age=0",
    );
    set(reply, "pragma", "no-cache");
    set(reply, "cdn-cache-control", "no-store");
    set(reply, "cloudflare-cdn-cache-control", "no-store");
    set(reply, "expires", "0");
}

/// new-api's request id: `YYYYMMDDhhmmss` + 9 digits of nanoseconds + 8 random characters.
fn request_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(now.as_secs()).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let mut random = [0u8; 8];
    let _ = SystemRandom::new().fill(&mut random);
    let suffix: String = random
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}{:09}{suffix}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_nanos()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(request_id().len(), 14 + 9 + 8);
    }
}
