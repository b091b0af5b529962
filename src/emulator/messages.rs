//! The message catalogue: new-api's translated texts (English and zh-CN) and the language choice.
//!
//! new-api E2/E3 picks the language from the user's saved setting, then a language cookie, then the
//! first tag of `Accept-Language`, and falls back to English. Emulated users have no saved setting
//! and the cookie is not modelled, so only `Accept-Language` counts here: a first tag starting with
//! `zh` (including `zh-TW`, for which no traditional texts are known) gives zh-CN, anything else
//! English.

use http::header::ACCEPT_LANGUAGE;
use http::HeaderMap;

/// The largest quota new-api accepts: `1e9 × QuotaPerUnit` (500 000).
pub(crate) const MAX_QUOTA: i64 = 500_000_000_000_000;
/// `common.batch_too_many`'s limit for `POST /api/token/batch/keys`.
pub(crate) const MAX_BATCH_KEYS: usize = 100;

/// The language a message is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    En,
    ZhCn,
}

impl Lang {
    /// The language new-api would pick for a request with these headers.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Lang {
        let Some(value) = headers.get(ACCEPT_LANGUAGE) else {
            return Lang::En;
        };
        let value = String::from_utf8_lossy(value.as_bytes());
        let first = value.split(',').next().unwrap_or_default();
        let tag = first.split(';').next().unwrap_or_default().trim();
        if tag.to_ascii_lowercase().starts_with("zh") {
            Lang::ZhCn
        } else {
            Lang::En
        }
    }
}

/// An i18n key of new-api (`auth.*`, `token.*`, `common.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Msg {
    NotLoggedIn,
    AccessTokenInvalid,
    UserInfoInvalid,
    UserIdNotProvided,
    UserIdFormatError,
    UserIdMismatch,
    UserBanned,
    InsufficientPrivilege,
    NameTooLong,
    QuotaNegative,
    QuotaExceedMax,
    ExpiredCannotEnable,
    ExhaustedCannotEnable,
    InvalidParams,
    BatchTooMany,
}

impl Msg {
    /// The text of this message in `lang`, with `{{.Max}}` filled in.
    pub(crate) fn text(self, lang: Lang) -> String {
        let (zh, en) = match self {
            Msg::NotLoggedIn => (
                "无权进行此操作，未登录且未提供 access token",
                "Unauthorized, not logged in and no access token provided",
            ),
            Msg::AccessTokenInvalid => (
                "无权进行此操作，access token 无效",
                "Unauthorized, invalid access token",
            ),
            Msg::UserInfoInvalid => (
                "无权进行此操作，用户信息无效",
                "Unauthorized, invalid user info",
            ),
            Msg::UserIdNotProvided => (
                "无权进行此操作，未提供 New-Api-User",
                "Unauthorized, New-Api-User header not provided",
            ),
            Msg::UserIdFormatError => (
                "无权进行此操作，New-Api-User 格式错误",
                "Unauthorized, New-Api-User header format error",
            ),
            Msg::UserIdMismatch => (
                "无权进行此操作，New-Api-User 与登录用户不匹配",
                "Unauthorized, New-Api-User does not match logged in user",
            ),
            Msg::UserBanned => ("用户已被封禁", "User has been banned"),
            Msg::InsufficientPrivilege => (
                "无权进行此操作，权限不足",
                "Unauthorized, insufficient privileges",
            ),
            Msg::NameTooLong => ("令牌名称过长", "Token name is too long"),
            Msg::QuotaNegative => ("额度值不能为负数", "Quota value cannot be negative"),
            Msg::QuotaExceedMax => (
                "额度值超出有效范围，最大值为 {{.Max}}",
                "Quota value exceeds valid range, maximum is {{.Max}}",
            ),
            Msg::ExpiredCannotEnable => (
                "令牌已过期，无法启用，请先修改令牌过期时间，或者设置为永不过期",
                "Token has expired and cannot be enabled. Please modify the expiration time or set it to never expire",
            ),
            Msg::ExhaustedCannotEnable => (
                "令牌可用额度已用尽，无法启用，请先修改令牌剩余额度，或者设置为无限额度",
                "Token quota is exhausted and cannot be enabled. Please modify the remaining quota or set it to unlimited",
            ),
            Msg::InvalidParams => ("无效的参数", "Invalid parameters"),
            Msg::BatchTooMany => (
                "批量请求数量过多，最多 {{.Max}} 条",
                "Too many items in batch request, maximum is {{.Max}}",
            ),
        };
        let text = if lang == Lang::ZhCn { zh } else { en };
        let max = match self {
            Msg::QuotaExceedMax => MAX_QUOTA.to_string(),
            Msg::BatchTooMany => MAX_BATCH_KEYS.to_string(),
            _ => return text.to_owned(),
        };
        text.replace("{{.Max}}", &max)
    }
}

/// Untranslated message: the per-user token cap (`已达到最大令牌数量限制 (%d)`).
pub(crate) fn max_tokens_reached(max: usize) -> String {
    format!("已达到最大令牌数量限制 ({max})")
}
/// Untranslated message: a zero id (`GetTokenByIds`, `DeleteTokenById`).
pub(crate) const ID_EMPTY: &str = "id 或 userId 为空！";
/// gorm's `ErrRecordNotFound`.
pub(crate) const RECORD_NOT_FOUND: &str = "record not found";
/// Search: `%%` in a pattern.
pub(crate) const SEARCH_DOUBLE_PERCENT: &str = "搜索模式中不允许包含连续的 % 通配符";
/// Search: more than two `%`.
pub(crate) const SEARCH_TOO_MANY_PERCENT: &str = "搜索模式中最多允许包含 2 个 % 通配符";
/// Search: a fuzzy pattern shorter than 2 bytes.
pub(crate) const SEARCH_TOO_SHORT: &str = "使用模糊搜索时，关键词长度至少为 2 个字符";
/// Search: fuzzy search by a user holding more than the token cap.
pub(crate) const SEARCH_TOO_MANY_TOKENS: &str =
    "令牌数量超过上限，仅允许精确搜索，请勿使用 % 通配符";
