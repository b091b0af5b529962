//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>, SPEC §3): which `traceparent` and
//! `tracestate` the upstream gets, and the trace id the access log and the audit trail record.
//!
//! - A caller's valid `traceparent` is passed on **unchanged**: same trace id, same flags, and
//!   the caller's own parent id. The gateway records no spans (it exports nothing to a tracing
//!   backend), so a parent id of its own would name a span no backend ever receives, and the
//!   upstream's spans would hang under a hole instead of under the caller's span. Its `tracestate`
//!   goes with it when it is valid, and is dropped when it is not.
//! - A `traceparent` of a higher version than `00` is read as the specification says (its first
//!   55 characters, when followed by `-` or the end) and sent on as version `00` with the same
//!   trace id, parent id and flags: `00` is the only format the gateway can vouch for.
//! - A missing or malformed `traceparent` (wrong length, upper-case hex, an all-zero trace or
//!   parent id, version `ff`, two `traceparent` headers) never fails the request: the gateway
//!   starts a trace of its own, a random 16-byte trace id and 8-byte parent id with flags `01`
//!   (sampled). The gateway does record the request under that trace id (its access-log line and
//!   audit records), so "the caller may have recorded trace data" is true, and a parent-based
//!   sampler behind it keeps the trace, so the id in an audit record can be looked up there. A
//!   `tracestate` that came with a malformed `traceparent` is dropped, as the specification says.
//!
//! The trace id is kept apart from the request id: the request id is the gateway's own and
//! unique per request; the trace id is the caller's when it sent one, shared by every hop.

use http::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The length of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
const TRACEPARENT_LEN: usize = 55;
/// The most list members a `tracestate` may have.
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The trace a request belongs to, and what to send upstream for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The `traceparent` every upstream request of this request carries.
    traceparent: HeaderValue,
    /// The caller's `tracestate`, when it and its `traceparent` were valid.
    tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// The caller's trace, when its request carries a valid `traceparent` (and, with it, its
    /// `tracestate` if that is valid too); `None` when the gateway must start one.
    pub fn continued(headers: &HeaderMap) -> Option<TraceContext> {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return None;
        };
        let traceparent = parse_traceparent(value.as_bytes())?;
        Some(TraceContext {
            traceparent,
            tracestate: tracestate(headers),
        })
    }

    /// A new trace: a random trace id and parent id, flags `01`.
    pub fn start() -> TraceContext {
        let mut bytes = random_bytes();
        // An all-zero id is invalid; 2^-128 (or a failed random source) must not make one.
        if bytes[..16].iter().all(|b| *b == 0) {
            bytes[15] = 1;
        }
        if bytes[16..].iter().all(|b| *b == 0) {
            bytes[23] = 1;
        }
        // Written on the stack: every request without a trace of its own starts one.
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-01";
        let hexed = hex::encode_to_slice(&bytes[..16], &mut text[3..35])
            .and_then(|()| hex::encode_to_slice(&bytes[16..], &mut text[36..52]));
        TraceContext {
            // Lowercase hex and dashes are always a valid header value.
            traceparent: hexed
                .ok()
                .and_then(|()| HeaderValue::from_bytes(&text).ok())
                .unwrap_or(HeaderValue::from_static(
                    "00-00000000000000000000000000000001-0000000000000001-01",
                )),
            tracestate: None,
        }
    }

    /// The trace id: 32 lowercase hex digits.
    pub fn trace_id(&self) -> &str {
        // A parsed or made `traceparent` is ASCII of 55 bytes: the id is bytes 3..35.
        self.traceparent
            .to_str()
            .ok()
            .and_then(|text| text.get(3..35))
            .unwrap_or("")
    }

    /// The `traceparent` sent upstream.
    pub fn traceparent(&self) -> &HeaderValue {
        &self.traceparent
    }

    /// The `tracestate` sent upstream, if any.
    pub fn tracestate(&self) -> Option<&HeaderValue> {
        self.tracestate.as_ref()
    }

    /// Sets `traceparent` (and `tracestate`, or none) on an upstream request's headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.traceparent.clone());
        match &self.tracestate {
            Some(state) => {
                headers.insert(TRACESTATE, state.clone());
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
    }
}

/// Reads a `traceparent` by the specification's rules; returns the version-00 value to send.
fn parse_traceparent(value: &[u8]) -> Option<HeaderValue> {
    if value.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = &value[..2];
    if !is_lower_hex(version) || version == b"ff" || value[2] != b'-' {
        return None;
    }
    if version == b"00" {
        if value.len() != TRACEPARENT_LEN {
            return None;
        }
    } else if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' {
        // A later version may append fields, each after a dash.
        return None;
    }
    let trace_id = &value[3..35];
    let parent_id = &value[36..52];
    let flags = &value[53..55];
    let well_formed = is_lower_hex(trace_id)
        && value[35] == b'-'
        && is_lower_hex(parent_id)
        && value[52] == b'-'
        && is_lower_hex(flags);
    if !well_formed || is_zero(trace_id) || is_zero(parent_id) {
        return None;
    }
    let mut out = Vec::with_capacity(TRACEPARENT_LEN);
    out.extend_from_slice(b"00-");
    out.extend_from_slice(&value[3..TRACEPARENT_LEN]);
    HeaderValue::from_bytes(&out).ok()
}

fn is_lower_hex(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

fn is_zero(hex: &[u8]) -> bool {
    hex.iter().all(|b| *b == b'0')
}

/// The caller's `tracestate` headers as one value, when every list member is valid; `None`
/// when there is none, it holds no member, or any member is malformed (the whole is dropped).
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let values: Vec<&HeaderValue> = headers.get_all(TRACESTATE).iter().collect();
    let mut keys: Vec<&str> = Vec::new();
    for value in &values {
        let text = value.to_str().ok()?;
        for member in text.split(',') {
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            let (key, state) = member.split_once('=')?;
            // The member limit is checked before the next key is compared with the others, so
            // a long list (the request head allows thousands) costs at most 32 × 32 comparisons.
            if keys.len() == MAX_TRACESTATE_MEMBERS
                || !valid_key(key)
                || !valid_state_value(state)
                || keys.contains(&key)
            {
                return None;
            }
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return None;
    }
    match values.as_slice() {
        [one] => Some((*one).clone()),
        many => {
            let joined: Vec<&[u8]> = many.iter().map(|v| v.as_bytes()).collect();
            HeaderValue::from_bytes(&joined.join(&b","[..])).ok()
        }
    }
}

/// A list member's key: `simple-key` or `tenant-id@system-id`.
fn valid_key(key: &str) -> bool {
    let rest_ok = |rest: &str| {
        rest.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/'))
    };
    match key.split_once('@') {
        None => {
            key.len() <= 256
                && key.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
                && rest_ok(&key[1..])
        }
        Some((tenant, system)) => {
            tenant.len() <= 241
                && tenant
                    .as_bytes()
                    .first()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && rest_ok(&tenant[1..])
                && system.len() <= 14
                && system
                    .as_bytes()
                    .first()
                    .is_some_and(u8::is_ascii_lowercase)
                && rest_ok(&system[1..])
        }
    }
}

/// A list member's value: 1 to 256 printable ASCII characters other than `,` and `=`, spaces
/// allowed inside but not at the end.
fn valid_state_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    (1..=256).contains(&bytes.len())
        && bytes.last().is_some_and(|b| *b != b' ')
        && bytes
            .iter()
            .all(|b| matches!(b, 0x20..=0x7e) && *b != b',' && *b != b'=')
}

/// 24 random bytes (a trace id and a parent id). Should the system's random source fail, a
/// digest of a per-process counter and the time still gives distinct ids.
fn random_bytes() -> [u8; 24] {
    let mut bytes = [0u8; 24];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_ok() {
        return bytes;
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut seed = Vec::with_capacity(24);
    seed.extend_from_slice(&n.to_le_bytes());
    seed.extend_from_slice(&nanos.to_le_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &seed);
    bytes.copy_from_slice(&digest.as_ref()[..24]);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

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
    fn a_valid_traceparent_is_kept_unchanged() {
        let trace = TraceContext::continued(&headers(&[("traceparent", VALID)])).unwrap();
        assert_eq!(trace.traceparent(), VALID);
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.tracestate(), None);
        let unsampled = VALID.replace("-01", "-00");
        let trace = TraceContext::continued(&headers(&[("traceparent", &unsampled)])).unwrap();
        assert_eq!(trace.traceparent(), unsampled.as_str());
    }

    #[test]
    fn malformed_traceparents_are_not_continued() {
        for bad in [
            "",
            "00",
            // One character short, one too many.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-010",
            // Upper-case hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff, and a version that is not hex.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Wrong separators, non-hex characters.
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            // A later version whose 56th character is not a dash.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            let trace = TraceContext::continued(&headers(&[("traceparent", bad)]));
            assert_eq!(trace, None, "{bad:?}");
        }
        // Two traceparent headers are ambiguous: a new trace.
        let two = headers(&[("traceparent", VALID), ("traceparent", VALID)]);
        assert_eq!(TraceContext::continued(&two), None);
        assert_eq!(TraceContext::continued(&HeaderMap::new()), None);
    }

    #[test]
    fn a_higher_version_is_read_and_sent_as_version_00() {
        for later in [
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
        ] {
            let trace = TraceContext::continued(&headers(&[("traceparent", later)])).unwrap();
            assert_eq!(trace.traceparent(), VALID, "{later}");
        }
    }

    #[test]
    fn tracestate_passes_only_when_valid_and_with_a_valid_traceparent() {
        let state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
        let trace =
            TraceContext::continued(&headers(&[("traceparent", VALID), ("tracestate", state)]))
                .unwrap();
        assert_eq!(trace.tracestate().unwrap(), state);
        // Two headers are one list.
        let trace = TraceContext::continued(&headers(&[
            ("traceparent", VALID),
            ("tracestate", "rojo=1"),
            ("tracestate", "tenant@vendor=x y"),
        ]))
        .unwrap();
        assert_eq!(trace.tracestate().unwrap(), "rojo=1,tenant@vendor=x y");
        for bad in [
            "Rojo=1",
            "rojo",
            "rojo=",
            "rojo=a,rojo=b",
            "rojo=a=b",
            "1abc=x",
            "rojo=a b=c",
            "tenant@VENDOR=x",
            "tenant@averyveryverylongsystem=x",
            ",,,",
        ] {
            let trace =
                TraceContext::continued(&headers(&[("traceparent", VALID), ("tracestate", bad)]))
                    .unwrap();
            assert_eq!(trace.tracestate(), None, "{bad:?}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        let trace = TraceContext::continued(&headers(&[
            ("traceparent", VALID),
            ("tracestate", &many.join(",")),
        ]))
        .unwrap();
        assert_eq!(trace.tracestate(), None, "33 members are too many");
        let most = many[..32].join(",");
        let trace =
            TraceContext::continued(&headers(&[("traceparent", VALID), ("tracestate", &most)]))
                .unwrap();
        assert!(trace.tracestate().is_some(), "32 members are allowed");
        // A head of 1 MiB (the largest server.max_header_bytes) holds some 130 000 members: the
        // list is given up at the 33rd, before comparing each key with every other (which took
        // billions of comparisons per request, before authentication).
        let flood: Vec<String> = (0..130_000).map(|i| format!("k{i}=v")).collect();
        let trace = TraceContext::continued(&headers(&[
            ("traceparent", VALID),
            ("tracestate", &flood.join(",")),
        ]))
        .unwrap();
        assert_eq!(trace.tracestate(), None);
        // With a malformed traceparent, the tracestate is not even read.
        let bad = headers(&[("traceparent", "nonsense"), ("tracestate", "rojo=1")]);
        assert_eq!(TraceContext::continued(&bad), None);
    }

    #[test]
    fn a_started_trace_is_valid_random_and_sampled() {
        let a = TraceContext::start();
        let b = TraceContext::start();
        assert_ne!(a.trace_id(), b.trace_id());
        for trace in [&a, &b] {
            let text = trace.traceparent().to_str().unwrap();
            assert!(text.starts_with("00-") && text.ends_with("-01"), "{text}");
            let again = parse_traceparent(text.as_bytes()).unwrap();
            assert_eq!(&again, trace.traceparent());
            assert_eq!(trace.trace_id().len(), 32);
        }
    }

    #[test]
    fn apply_replaces_whatever_the_headers_held() {
        let mut out = headers(&[("tracestate", "stale=1")]);
        TraceContext::start().apply(&mut out);
        assert!(out.get(TRACESTATE).is_none());
        assert_eq!(out.get_all(TRACEPARENT).iter().count(), 1);
    }
}
