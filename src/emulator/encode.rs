//! Building answers byte for byte as gin and Go's `encoding/json` write them.
//!
//! Go structs keep their field order; `gin.H` is a map, so its keys come out sorted (the envelope
//! reads `{"data":..,"message":..,"success":..}`). Strings escape `<`, `>`, `&`, U+2028 and U+2029
//! as `\u003c`, `\u003e`, `\u0026`, `\u2028`, `\u2029`. No trailing newline.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use super::config::Era;
use super::store::{mask_key, StoredToken};

/// The response type of every emulator handler.
pub(crate) type Reply = Response<Full<Bytes>>;

const JSON_UTF8: &str = "application/json; charset=utf-8";

/// `json.Marshal`: compact, HTML-escaped.
pub(crate) fn go_marshal<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let raw = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    let text = String::from_utf8_lossy(&raw);
    text.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
        .into_bytes()
}

/// `c.JSON(status, value)`.
pub(crate) fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(go_marshal(value))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    resp
}

#[derive(Serialize)]
struct Success<'a, T: Serialize> {
    data: &'a T,
    message: &'static str,
    success: bool,
}

#[derive(Serialize)]
struct Plain<'a> {
    message: &'a str,
    success: bool,
}

#[derive(Serialize)]
struct Coded<'a> {
    code: &'a str,
    message: &'a str,
    success: bool,
}

/// `common.ApiSuccess(c, data)`.
pub(crate) fn ok_data<T: Serialize>(data: &T) -> Reply {
    let body = Success {
        data,
        message: "",
        success: true,
    };
    json(StatusCode::OK, &body)
}

/// `{"success":true,"message":""}` without data (create, delete).
pub(crate) fn ok_empty() -> Reply {
    fail_like(StatusCode::OK, "", true)
}

/// `{"success":false,"message":M}` with `status` (200 for handler errors).
pub(crate) fn fail(status: StatusCode, message: &str) -> Reply {
    fail_like(status, message, false)
}

fn fail_like(status: StatusCode, message: &str, success: bool) -> Reply {
    json(status, &Plain { message, success })
}

/// E3 auth failure: `{"code":C,"message":M,"success":false}`.
pub(crate) fn fail_code(status: StatusCode, code: &str, message: &str) -> Reply {
    let body = Coded {
        code,
        message,
        success: false,
    };
    json(status, &body)
}

/// A status with an empty body (rate limits).
pub(crate) fn empty(status: StatusCode) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    message: &'a str,
    r#type: &'static str,
    param: &'static str,
    code: &'static str,
}

#[derive(Serialize)]
struct NotFound<'a> {
    error: OpenAiError<'a>,
}

/// `controller.RelayNotFound`: 404 `Invalid URL (METHOD /path)`.
pub(crate) fn not_found(method: &str, path: &str) -> Reply {
    let message = format!("Invalid URL ({method} {path})");
    let body = NotFound {
        error: OpenAiError {
            message: &message,
            r#type: "invalid_request_error",
            param: "",
            code: "",
        },
    };
    json(StatusCode::NOT_FOUND, &body)
}

/// Go's `htmlEscape` (`html.EscapeString` with `&#34;`/`&#39;`).
fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

/// `http.Redirect` as gin's trailing-slash redirect calls it: 301 for GET (with Go's short HTML
/// body), 307 for every other method (no body).
pub(crate) fn redirect(is_get: bool, location: &str) -> Reply {
    let (status, text) = if is_get {
        (StatusCode::MOVED_PERMANENTLY, "Moved Permanently")
    } else {
        (StatusCode::TEMPORARY_REDIRECT, "Temporary Redirect")
    };
    let body = if is_get {
        format!("<a href=\"{}\">{text}</a>.\n\n", html_escape(location))
    } else {
        String::new()
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    if is_get {
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    resp
}

/// A token as the API shows it (Go struct order; the `billing_type` fork field, when on, after
/// `cross_group_retry` where such a fork declares it; E3 adds `auto_groups`).
#[derive(Serialize)]
pub(crate) struct TokenView<'a> {
    id: i64,
    user_id: i64,
    key: String,
    status: i64,
    name: &'a str,
    created_time: i64,
    accessed_time: i64,
    expired_time: i64,
    remain_quota: i64,
    unlimited_quota: bool,
    model_limits_enabled: bool,
    model_limits: &'a str,
    allow_ips: &'a Option<String>,
    used_quota: i64,
    group: &'a str,
    cross_group_retry: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    billing_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auto_groups: Option<&'a Option<Vec<String>>>,
    #[serde(rename = "DeletedAt")]
    deleted_at: (),
}

impl<'a> TokenView<'a> {
    /// The masked view of `t` (`buildMaskedTokenResponse`); `billing_type` is
    /// [`EmulatorConfig::fork_billing_type`](super::EmulatorConfig::fork_billing_type).
    pub(crate) fn masked(t: &'a StoredToken, era: Era, billing_type: bool) -> Self {
        TokenView {
            id: t.id,
            user_id: t.user_id,
            key: mask_key(&t.key),
            status: t.status,
            name: &t.name,
            created_time: t.created_time,
            accessed_time: t.accessed_time,
            expired_time: t.expired_time,
            remain_quota: t.remain_quota,
            unlimited_quota: t.unlimited_quota,
            model_limits_enabled: t.model_limits_enabled,
            model_limits: &t.model_limits,
            allow_ips: &t.allow_ips,
            used_quota: t.used_quota,
            group: &t.group,
            cross_group_retry: t.cross_group_retry,
            billing_type: billing_type.then_some(t.billing_type.as_str()),
            auto_groups: (era == Era::E3).then_some(&t.auto_groups),
            deleted_at: (),
        }
    }
}

/// `common.PageInfo` (struct order).
#[derive(Serialize)]
pub(crate) struct Page<'a> {
    pub(crate) page: i64,
    pub(crate) page_size: i64,
    pub(crate) total: usize,
    pub(crate) items: Vec<TokenView<'a>>,
}
