//! Which headers cross the gateway, in each direction (SPEC §3).
//!
//! Towards the upstream, the caller's headers pass except: its credentials (`Authorization`,
//! `New-Api-User`, and `Cookie`, which new-api would authenticate before the header),
//! `Accept-Encoding` (the gateway reads upstream bodies), hop-by-hop headers, framing headers the
//! client recomputes, the caller's `X-Request-Id`, and forwarding headers unless the peer is a
//! trusted proxy. The gateway then sets `X-Forwarded-For` to the one caller IP, its own
//! `X-Request-Id`, and the request's checked `traceparent` and `tracestate`
//! ([`crate::trace_context`]); the credential is added by [`crate::upstream`]. Towards the caller, hop-by-hop
//! and framing headers and `Set-Cookie` are dropped and the gateway's `X-Request-Id` is set.

use std::net::IpAddr;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use smallvec::SmallVec;

use crate::context::{RequestId, SourceIp};
use crate::error::GatewayError;
use crate::trace_context::{TraceContext, TRACEPARENT, TRACESTATE};
use crate::upstream::NEW_API_USER;

/// `X-Request-Id`
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Oneapi-Request-Id`: new-api's own request id, which it takes from the request when present.
pub const X_ONEAPI_REQUEST_ID: HeaderName = HeaderName::from_static("x-oneapi-request-id");
/// `X-Forwarded-For`
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus those the client
/// library sets itself for the new hop.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::CONTENT_LENGTH
        || name == header::HOST
        || name.as_str().starts_with("proxy-")
}

/// Headers that say where a request came from; only a trusted proxy may set them.
fn is_forwarding(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("x-forwarded-") || name == "forwarded" || name == "x-real-ip"
}

/// The names a message's `Connection` header lists (hop-by-hop for this message), less those
/// dropped anyway: none are usually left (`Connection: keep-alive` names a hop-by-hop header), so
/// this allocates nothing on the common path.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !is_hop_by_hop(name))
        .collect()
}

/// The names of `headers` that `drop` picks, gathered first (a map cannot be changed while it is
/// read), then removed with every value each has. A request or an answer drops a handful of
/// names, so they sit on the stack; removing them in place keeps every other header where it is
/// (no new map, no copy of the names and values kept).
fn remove_where(headers: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    let dropped: SmallVec<[HeaderName; 8]> = headers.keys().filter(|n| drop(n)).cloned().collect();
    for name in dropped {
        headers.remove(name);
    }
}

/// The headers to send upstream for a caller's request (before the credential is added): the
/// caller's own, filtered in place.
pub fn to_upstream(
    mut headers: HeaderMap,
    source: SourceIp,
    request_id: &RequestId,
    trace: &TraceContext,
) -> HeaderMap {
    let listed = connection_listed(&headers);
    remove_where(&mut headers, |name| {
        is_hop_by_hop(name)
            || listed.contains(name)
            || name == header::AUTHORIZATION
            || name == NEW_API_USER
            || name == header::COOKIE
            // Set below.
            || name == header::ACCEPT_ENCODING
            // The body sent is the gateway's own plain serialisation (an encoded one is refused).
            || name == header::CONTENT_ENCODING
            || name == header::EXPECT
            // The gateway's own id, the one caller IP and the checked trace context are set below.
            || name == X_REQUEST_ID
            || name == X_ONEAPI_REQUEST_ID
            || name == X_FORWARDED_FOR
            || name == TRACEPARENT
            || name == TRACESTATE
            || (is_forwarding(name) && !source.via_trusted_proxy)
    });
    // The gateway reads upstream answers (envelopes, tokens to merge), and a caller must get the
    // bytes it can read: never a compressed answer (new-api compresses when asked to).
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    // An IP address in text is always a valid header value.
    if let Ok(ip) = HeaderValue::from_str(&source.ip.to_string()) {
        headers.insert(X_FORWARDED_FOR, ip);
    }
    if let Ok(id) = HeaderValue::from_str(request_id.as_str()) {
        // new-api logs under the id it is given: its log lines then carry the gateway's id.
        headers.insert(X_ONEAPI_REQUEST_ID, id.clone());
        headers.insert(X_REQUEST_ID, id);
    }
    trace.apply(&mut headers);
    headers
}

/// The upstream's response headers as the caller gets them, filtered in place (the
/// request-context layer then sets the gateway's `X-Request-Id` on every answer).
pub fn to_caller(mut headers: HeaderMap) -> HeaderMap {
    let listed = connection_listed(&headers);
    remove_where(&mut headers, |name| {
        is_hop_by_hop(name)
            || listed.contains(name)
            || name == X_REQUEST_ID
            // A session cookie of the upstream account must never reach a caller.
            || name == header::SET_COOKIE
    });
    headers
}

/// The caller IP (SPEC §3): the peer, unless the peer is a trusted proxy; then the right-most
/// `X-Forwarded-For` entry that is not itself trusted (or the left-most, when all are).
pub fn source_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Result<SourceIp, GatewayError> {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Ok(SourceIp {
            ip: peer,
            via_trusted_proxy: false,
        });
    }
    let mut entries = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        let text = std::str::from_utf8(value.as_bytes()).map_err(|_| {
            GatewayError::BadRequest("the X-Forwarded-For header is not valid UTF-8".into())
        })?;
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let ip: IpAddr = entry.parse().map_err(|_| {
                GatewayError::BadRequest(format!(
                    "the X-Forwarded-For entry `{}` is not an IP address",
                    entry.escape_debug()
                ))
            })?;
            entries.push(ip.to_canonical());
        }
    }
    let ip = entries
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(entries.first())
        .copied()
        .unwrap_or(peer);
    Ok(SourceIp {
        ip,
        via_trusted_proxy: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn credentials_hop_by_hop_and_untrusted_forwarding_are_dropped() {
        let inbound = headers(&[
            ("authorization", "Bearer tg_caller"),
            ("new-api-user", "99"),
            ("cookie", "session=abc"),
            ("accept-encoding", "gzip"),
            ("content-encoding", "gzip"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic x"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-request-id", "caller-id"),
            ("x-oneapi-request-id", "forged"),
            ("traceparent", "forged"),
            ("tracestate", "forged=1"),
            ("accept-language", "zh-CN"),
            ("content-type", "application/json"),
            ("user-agent", "curl/8"),
        ]);
        let source = SourceIp {
            ip: "10.1.1.1".parse().unwrap(),
            via_trusted_proxy: false,
        };
        let trace = TraceContext::start();
        let out = to_upstream(inbound, source, &RequestId::from_static("gw-id"), &trace);
        // Filtering in place moves kept names around; the order of different names carries no
        // meaning (RFC 9110 §5.3), so the set is compared.
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept-encoding",
                "accept-language",
                "content-type",
                "traceparent",
                "user-agent",
                "x-forwarded-for",
                "x-oneapi-request-id",
                "x-request-id",
            ]
        );
        assert_eq!(out["accept-encoding"], "identity");
        assert_eq!(out["x-forwarded-for"], "10.1.1.1");
        assert_eq!(out["x-request-id"], "gw-id");
        assert_eq!(out["x-oneapi-request-id"], "gw-id");
        // The caller's malformed trace is replaced by the request's own, its tracestate dropped.
        assert_eq!(&out["traceparent"], trace.traceparent());
    }

    #[test]
    fn a_trusted_proxy_keeps_its_forwarding_headers() {
        let inbound = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        let source = SourceIp {
            ip: "1.2.3.4".parse().unwrap(),
            via_trusted_proxy: true,
        };
        let out = to_upstream(
            inbound,
            source,
            &RequestId::from_static("id"),
            &TraceContext::start(),
        );
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn source_ip_honours_only_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = headers(&[("x-forwarded-for", "9.9.9.9, 1.2.3.4, 10.0.0.2")]);
        let from_proxy = source_ip("10.0.0.1".parse().unwrap(), &xff, &trusted).unwrap();
        assert_eq!(from_proxy.ip.to_string(), "1.2.3.4");
        let direct = source_ip("8.8.8.8".parse().unwrap(), &xff, &trusted).unwrap();
        assert_eq!(direct.ip.to_string(), "8.8.8.8");
        let all_trusted = headers(&[("x-forwarded-for", "10.0.0.5, 10.0.0.6")]);
        assert_eq!(
            source_ip("10.0.0.1".parse().unwrap(), &all_trusted, &trusted)
                .unwrap()
                .ip
                .to_string(),
            "10.0.0.5"
        );
        let none = source_ip("10.0.0.1".parse().unwrap(), &HeaderMap::new(), &trusted).unwrap();
        assert_eq!(none.ip.to_string(), "10.0.0.1");
        let mapped = source_ip(
            "::ffff:8.8.4.4".parse().unwrap(),
            &HeaderMap::new(),
            &trusted,
        )
        .unwrap();
        assert_eq!(mapped.ip.to_string(), "8.8.4.4");
        let bad = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(
            source_ip("10.0.0.1".parse().unwrap(), &bad, &trusted)
                .unwrap_err()
                .code(),
            "bad_request"
        );
    }

    #[test]
    fn caller_gets_no_upstream_request_id_and_no_hop_headers() {
        let upstream = headers(&[
            ("content-type", "application/json"),
            ("x-request-id", "upstream-id"),
            ("transfer-encoding", "chunked"),
            ("set-cookie", "session=upstream"),
            ("cache-control", "no-store"),
            ("cache-control", "private"),
        ]);
        let out = to_caller(upstream);
        assert!(out.get("x-request-id").is_none());
        assert!(out.get("transfer-encoding").is_none());
        assert!(out.get("set-cookie").is_none());
        assert_eq!(out.get_all("cache-control").iter().count(), 2);
    }
}
