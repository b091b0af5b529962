//! The message catalogue: new-api's translated texts (en, zh-CN, zh-TW) and the language choice.
//!
//! The locales are every one upstream ships (`i18n/locales/{en,zh-CN,zh-TW}.yaml`, texts as of
//! QuantumNous/new-api 116255f, 2026-08-15). new-api E2/E3 picks the language from the user's
//! saved setting, then the first tag of `Accept-Language` (`i18n.ParseAcceptLanguage` and
//! `normalizeLang`), and falls back to English. Emulated users have no saved setting (and auth
//! failures come before the user is known anyway), so only `Accept-Language` counts here: its first
//! comma-separated tag, without `;q=…`, trimmed and lowercased, gives zh-TW when it starts with
//! `zh-tw`, zh-CN for any other `zh` start (`zh-Hant`, `zh-HK` and `zh_TW` included, as upstream
//! does), and English for anything else or no header.

use http::header::ACCEPT_LANGUAGE;
use http::HeaderMap;

/// The largest quota new-api accepts: `1e9 × QuotaPerUnit` (500 000).
pub(crate) const MAX_QUOTA: i64 = 500_000_000_000_000;
/// `common.batch_too_many`'s limit for `POST /api/token/batch/keys`.
pub(crate) const MAX_BATCH_KEYS: usize = 100;

/// The language a message is written in: one per locale file new-api ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    En,
    ZhCn,
    ZhTw,
}

impl Lang {
    /// The language new-api would pick for a request with these headers.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Lang {
        let Some(value) = headers.get(ACCEPT_LANGUAGE) else {
            return Lang::En;
        };
        let value = String::from_utf8_lossy(value.as_bytes());
        let first = value.split(',').next().unwrap_or_default();
        Lang::from_tag(first.split(';').next().unwrap_or_default())
    }

    /// new-api's `normalizeLang`: prefixes only, so any `zh-tw…` is zh-TW and any other `zh…`
    /// (even `zh-Hant-TW`) is zh-CN.
    fn from_tag(tag: &str) -> Lang {
        let tag = tag.trim().to_ascii_lowercase();
        if tag.starts_with("zh-tw") {
            Lang::ZhTw
        } else if tag.starts_with("zh") {
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
    /// The texts of this message: en, zh-CN, zh-TW.
    fn texts(self) -> [&'static str; 3] {
        match self {
            Msg::NotLoggedIn => [
                "Unauthorized, not logged in and no access token provided",
                "无权进行此操作，未登录且未提供 access token",
                "無權進行此操作，未登入且未提供 access token",
            ],
            Msg::AccessTokenInvalid => [
                "Unauthorized, invalid access token",
                "无权进行此操作，access token 无效",
                "無權進行此操作，access token 無效",
            ],
            Msg::UserInfoInvalid => [
                "Unauthorized, invalid user info",
                "无权进行此操作，用户信息无效",
                "無權進行此操作，使用者資訊無效",
            ],
            Msg::UserIdNotProvided => [
                "Unauthorized, New-Api-User header not provided",
                "无权进行此操作，未提供 New-Api-User",
                "無權進行此操作，未提供 New-Api-User",
            ],
            Msg::UserIdFormatError => [
                "Unauthorized, New-Api-User header format error",
                "无权进行此操作，New-Api-User 格式错误",
                "無權進行此操作，New-Api-User 格式錯誤",
            ],
            Msg::UserIdMismatch => [
                "Unauthorized, New-Api-User does not match logged in user",
                "无权进行此操作，New-Api-User 与登录用户不匹配",
                "無權進行此操作，New-Api-User 與登入使用者不匹配",
            ],
            Msg::UserBanned => ["User has been banned", "用户已被封禁", "使用者已被封禁"],
            Msg::InsufficientPrivilege => [
                "Unauthorized, insufficient privileges",
                "无权进行此操作，权限不足",
                "無權進行此操作，權限不足",
            ],
            Msg::NameTooLong => ["Token name is too long", "令牌名称过长", "令牌名稱過長"],
            Msg::QuotaNegative => [
                "Quota value cannot be negative",
                "额度值不能为负数",
                "額度值不能為負數",
            ],
            Msg::QuotaExceedMax => [
                "Quota value exceeds valid range, maximum is {{.Max}}",
                "额度值超出有效范围，最大值为 {{.Max}}",
                "額度值超出有效範圍，最大值為 {{.Max}}",
            ],
            Msg::ExpiredCannotEnable => [
                "Token has expired and cannot be enabled. Please modify the expiration time or set it to never expire",
                "令牌已过期，无法启用，请先修改令牌过期时间，或者设置为永不过期",
                "令牌已過期，無法啟用，請先修改令牌過期時間，或者設定為永不過期",
            ],
            Msg::ExhaustedCannotEnable => [
                "Token quota is exhausted and cannot be enabled. Please modify the remaining quota or set it to unlimited",
                "令牌可用额度已用尽，无法启用，请先修改令牌剩余额度，或者设置为无限额度",
                "令牌可用額度已用盡，無法啟用，請先修改令牌剩餘額度，或者設定為無限額度",
            ],
            Msg::InvalidParams => ["Invalid parameters", "无效的参数", "無效的參數"],
            Msg::BatchTooMany => [
                "Too many items in batch request, maximum is {{.Max}}",
                "批量请求数量过多，最多 {{.Max}} 条",
                "批次請求數量過多，最多 {{.Max}} 條",
            ],
        }
    }

    /// The text of this message in `lang`, with `{{.Max}}` filled in.
    pub(crate) fn text(self, lang: Lang) -> String {
        let [en, zh_cn, zh_tw] = self.texts();
        let text = match lang {
            Lang::En => en,
            Lang::ZhCn => zh_cn,
            Lang::ZhTw => zh_tw,
        };
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
