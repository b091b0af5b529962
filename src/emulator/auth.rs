//! `UserAuth()`: new-api's `authHelper` for the token routes, in E2 and E3 form.
//!
//! E2 checks, in order: `Authorization` present (401), the access token after replacing the
//! first exact `"Bearer "` (200), user info valid (200), `New-Api-User` present (401), an
//! `strconv.Atoi` integer (401), equal to the user's id (401), user not banned (200), role at least
//! common user (200). Session cookies are not modelled: a `Cookie` header is ignored, so such a
//! request authenticates by its `Authorization` alone.
//!
//! E3 reads `Authorization` only (trimmed; the raw token, or `Bearer <token>` in any letter case),
//! skips `New-Api-User`, and fails with 401/403 plus a `code`. Dashboard JWTs are not modelled:
//! only the access token (PAT) is accepted.

use http::header::AUTHORIZATION;
use http::{HeaderMap, StatusCode};

use super::config::{Era, User};
use super::encode::{fail, fail_code, Reply};
use super::gostr::atoi;
use super::messages::{Lang, Msg};
use super::store::Store;

/// The authenticated caller (what new-api stores in the gin context).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) id: i64,
    pub(crate) role: i64,
}

/// The role of new-api's root user.
pub(crate) const ROLE_ROOT: i64 = 100;
const ROLE_COMMON: i64 = 1;
const STATUS_BANNED: i64 = 2;

fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
        .unwrap_or_default()
}

/// Authenticate a token-route request; `Err` is the complete failure answer.
pub(crate) fn authenticate(
    era: Era,
    store: &Store,
    headers: &HeaderMap,
    lang: Lang,
) -> Result<Caller, Reply> {
    match era {
        Era::E2 => authenticate_e2(store, headers, lang),
        Era::E3 => authenticate_e3(store, headers, lang),
    }
}

fn authenticate_e2(store: &Store, headers: &HeaderMap, lang: Lang) -> Result<Caller, Reply> {
    let deny = |status: StatusCode, msg: Msg| fail(status, &msg.text(lang));
    let authorization = header_text(headers, AUTHORIZATION.as_str());
    if authorization.is_empty() {
        return Err(deny(StatusCode::UNAUTHORIZED, Msg::NotLoggedIn));
    }
    let token = authorization.replacen("Bearer ", "", 1);
    let user: &User = match store.user_by_access_token(&token) {
        Some(u) if !u.username.is_empty() => u,
        _ => return Err(deny(StatusCode::OK, Msg::AccessTokenInvalid)),
    };
    if !user.is_valid() {
        return Err(deny(StatusCode::OK, Msg::UserInfoInvalid));
    }
    let claimed = header_text(headers, "new-api-user");
    if claimed.is_empty() {
        return Err(deny(StatusCode::UNAUTHORIZED, Msg::UserIdNotProvided));
    }
    let Ok(claimed) = atoi(&claimed) else {
        return Err(deny(StatusCode::UNAUTHORIZED, Msg::UserIdFormatError));
    };
    if claimed != user.id {
        return Err(deny(StatusCode::UNAUTHORIZED, Msg::UserIdMismatch));
    }
    if user.status == STATUS_BANNED {
        return Err(deny(StatusCode::OK, Msg::UserBanned));
    }
    if user.role < ROLE_COMMON {
        return Err(deny(StatusCode::OK, Msg::InsufficientPrivilege));
    }
    Ok(Caller {
        id: user.id,
        role: user.role,
    })
}

/// E3's `authorizationToken()`.
fn e3_token(headers: &HeaderMap) -> Option<String> {
    let value = header_text(headers, AUTHORIZATION.as_str());
    let fields: Vec<&str> = value.split_whitespace().collect();
    match fields.as_slice() {
        [token] => Some((*token).to_owned()),
        [scheme, token] if scheme.eq_ignore_ascii_case("bearer") => Some((*token).to_owned()),
        _ => None,
    }
}

fn authenticate_e3(store: &Store, headers: &HeaderMap, lang: Lang) -> Result<Caller, Reply> {
    let deny = |status: StatusCode, code: &str, msg: Msg| fail_code(status, code, &msg.text(lang));
    let user = e3_token(headers).and_then(|t| store.user_by_access_token(&t));
    let Some(user) = user.filter(|u| !u.username.is_empty()) else {
        return Err(deny(
            StatusCode::UNAUTHORIZED,
            "AUTH_UNAUTHORIZED",
            Msg::AccessTokenInvalid,
        ));
    };
    if !user.is_valid() {
        return Err(deny(
            StatusCode::UNAUTHORIZED,
            "AUTH_USER_INVALID",
            Msg::UserInfoInvalid,
        ));
    }
    if user.status == STATUS_BANNED {
        return Err(deny(
            StatusCode::UNAUTHORIZED,
            "AUTH_USER_DISABLED",
            Msg::UserBanned,
        ));
    }
    if user.role < ROLE_COMMON {
        return Err(deny(
            StatusCode::FORBIDDEN,
            "AUTH_INSUFFICIENT_PRIVILEGE",
            Msg::InsufficientPrivilege,
        ));
    }
    Ok(Caller {
        id: user.id,
        role: user.role,
    })
}
