//! Checks every write body before the upstream sees it (SPEC §4): `Content-Type` (415), one
//! strict JSON object (400 `invalid_json`), and the field rules of its operation (400, every fault
//! reported). The body forwarded is the checked edit, re-serialised once in canonical JSON
//! (the same bytes the audit records carry as `request`); the typed [`Edit`] is left in
//! the request's extensions for the layers below (policy, audit).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Request};

use super::check::Check;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::route::{Endpoint, Route};
use crate::token::edit::{Edit, EditKind, Limits};

/// Parses the body of a write into its [`Edit`].
#[derive(Clone, Debug)]
pub struct Validate {
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
}

impl Validate {
    /// Validates with `limits`, counting refusals in `metrics`.
    pub fn new(limits: Arc<Limits>, metrics: Arc<Metrics>) -> Self {
        Validate { limits, metrics }
    }
}

impl Check<Bytes> for Validate {
    fn check(&self, request: &mut Request<Bytes>) -> Result<(), GatewayError> {
        let Some(route) = request.extensions().get::<Route>() else {
            return Err(GatewayError::Internal("validate runs after route".into()));
        };
        let op = route.operation();
        let kind = match route.endpoint {
            Endpoint::Create => EditKind::Create,
            Endpoint::Update { status_only: false } => EditKind::Update,
            Endpoint::Update { status_only: true } => EditKind::StatusOnly,
            Endpoint::BatchDelete | Endpoint::RevealKeys => EditKind::Ids,
            Endpoint::Patch(_) => EditKind::Patch,
            Endpoint::BatchUpdate => EditKind::BatchUpdate,
            _ => return Ok(()),
        };
        let checked = json_content_type(request.headers()).and_then(|()| {
            Edit::parse(kind, request.body(), &self.limits, unix_now()).map_err(GatewayError::from)
        });
        match checked {
            Ok(edit) => {
                let context = RequestContext::of(request)?;
                context.set_token_ids(edit.token_ids().iter().map(|id| id.get()).collect());
                let body = Bytes::from(edit.canonical_json());
                context.set_request_json(body.clone());
                *request.body_mut() = body;
                request.extensions_mut().insert(edit);
                Ok(())
            }
            Err(refusal) => {
                self.metrics.validation_refusal(op, refusal.code());
                Err(refusal)
            }
        }
    }
}

/// `application/json`, with `charset=utf-8` or no parameter (any letter case, quoted or not).
fn json_content_type(headers: &HeaderMap) -> Result<(), GatewayError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Err(GatewayError::UnsupportedMediaType);
    };
    let text = std::str::from_utf8(value.as_bytes()).map_err(|_| {
        GatewayError::BadRequest("the Content-Type header is not valid UTF-8".into())
    })?;
    let mut parts = text.split(';');
    let media_type = parts.next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(GatewayError::UnsupportedMediaType);
    }
    for parameter in parts.map(str::trim).filter(|p| !p.is_empty()) {
        let utf8 = parameter.split_once('=').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("charset")
                && value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        });
        if !utf8 {
            return Err(GatewayError::UnsupportedMediaType);
        }
    }
    Ok(())
}

/// The current Unix time in seconds (an expiry must be later; policy counts from it).
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn only_json_in_utf8_is_a_body() {
        let check = |value: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_bytes(value).unwrap());
            json_content_type(&headers).map_err(|e| e.code())
        };
        for ok in [
            &b"application/json"[..],
            b"application/json; charset=utf-8",
            b"Application/JSON;charset=\"UTF-8\"",
            b"application/json;",
        ] {
            assert_eq!(check(ok), Ok(()), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"text/plain"[..],
            b"application/json; charset=latin1",
            b"application/json; boundary=x",
            b"application/jsonx",
            b"application/x-www-form-urlencoded",
        ] {
            assert_eq!(
                check(bad),
                Err("unsupported_media_type"),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(check(b"application/json; charset=\xe9"), Err("bad_request"));
        assert_eq!(
            json_content_type(&HeaderMap::new()).map_err(|e| e.code()),
            Err("unsupported_media_type")
        );
    }
}
