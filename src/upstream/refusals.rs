//! The texts with which new-api refuses the gateway's own credential in an HTTP 200 envelope, in
//! every language new-api ships messages in (SPEC §3).
//!
//! new-api (E1/E2) answers four failures of the access token's account with HTTP 200 and
//! `{"message":…,"success":false}`, so only the message tells them from an ordinary refusal of
//! the caller's request. The caller's `Accept-Language` passes through the gateway, and new-api
//! picks the message language from its first tag, so each text is needed in each language.
//!
//! **Source.** QuantumNous/new-api `i18n/locales/{en,zh-CN,zh-TW}.yaml` at commit
//! `116255f076a3e9d92b0c9a85303daae73997b55e` (main, 2026-08-15); the texts have not changed since
//! `59c582d13c2d146bf865638dea28d8df345cff5f` (2026-04-12), which moved them from hard-coded
//! Chinese in `middleware/auth.go` into the catalogue (the zh-CN texts are those hard-coded E1
//! strings). Those three files are every locale upstream ships: `i18n.go` loads exactly them, and
//! `normalizeLang` maps the first `Accept-Language` tag `zh-tw…` to zh-TW, any other `zh…` to
//! zh-CN and everything else to en. Other locale files seen in the fork network (es, fr, ja, ru, vi,
//! pt, pt-BR, ko-KR, fa) belong to forks or unmerged pull requests and are not listed here.
//!
//! **Which keys.** Only the answers that refuse the credential itself and come with HTTP 200 (from
//! `authHelper`): `auth.access_token_invalid`, `auth.user_info_invalid`, `auth.user_banned` and
//! `auth.insufficient_privilege`. The other `auth.*` keys (`not_logged_in`, and the
//! `New-Api-User` ones `user_id_not_provided`, `user_id_format_error`, `user_id_mismatch`) come
//! with HTTP 401, which the status alone already maps; so does every E3 refusal (401/403).
//!
//! Texts are matched whole and exactly: a substring or prefix guess could swallow an ordinary
//! message that merely begins like one of these.

/// One refusal text and the catalogue key and locale it comes from (which the gateway's log names,
/// so an operator sees which of the four faults it is).
#[derive(Debug, Clone, Copy)]
pub(super) struct Refusal {
    /// The new-api i18n key (`i18n/keys.go`).
    pub(super) key: &'static str,
    /// The locale file (`i18n/locales/<locale>.yaml`).
    pub(super) locale: &'static str,
    /// The message, byte for byte.
    pub(super) text: &'static str,
}

const fn refusal(key: &'static str, locale: &'static str, text: &'static str) -> Refusal {
    Refusal { key, locale, text }
}

/// Every credential refusal, by key then locale (en, zh-CN, zh-TW).
pub(super) static CREDENTIAL_REFUSALS: [Refusal; 12] = [
    refusal(
        "auth.access_token_invalid",
        "en",
        "Unauthorized, invalid access token",
    ),
    refusal(
        "auth.access_token_invalid",
        "zh-CN",
        "无权进行此操作，access token 无效",
    ),
    refusal(
        "auth.access_token_invalid",
        "zh-TW",
        "無權進行此操作，access token 無效",
    ),
    refusal(
        "auth.user_info_invalid",
        "en",
        "Unauthorized, invalid user info",
    ),
    refusal(
        "auth.user_info_invalid",
        "zh-CN",
        "无权进行此操作，用户信息无效",
    ),
    refusal(
        "auth.user_info_invalid",
        "zh-TW",
        "無權進行此操作，使用者資訊無效",
    ),
    refusal("auth.user_banned", "en", "User has been banned"),
    refusal("auth.user_banned", "zh-CN", "用户已被封禁"),
    refusal("auth.user_banned", "zh-TW", "使用者已被封禁"),
    refusal(
        "auth.insufficient_privilege",
        "en",
        "Unauthorized, insufficient privileges",
    ),
    refusal(
        "auth.insufficient_privilege",
        "zh-CN",
        "无权进行此操作，权限不足",
    ),
    refusal(
        "auth.insufficient_privilege",
        "zh-TW",
        "無權進行此操作，權限不足",
    ),
];

/// The credential refusal `message` is, exactly, in any shipped language.
pub(super) fn credential_refusal(message: &str) -> Option<&'static Refusal> {
    CREDENTIAL_REFUSALS.iter().find(|r| r.text == message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_entry_is_distinct_and_each_key_has_every_locale() {
        let texts: HashSet<&str> = CREDENTIAL_REFUSALS.iter().map(|r| r.text).collect();
        assert_eq!(
            texts.len(),
            CREDENTIAL_REFUSALS.len(),
            "a text is listed twice"
        );
        let pairs: HashSet<(&str, &str)> = CREDENTIAL_REFUSALS
            .iter()
            .map(|r| (r.key, r.locale))
            .collect();
        assert_eq!(pairs.len(), CREDENTIAL_REFUSALS.len(), "a key/locale twice");
        let keys: HashSet<&str> = CREDENTIAL_REFUSALS.iter().map(|r| r.key).collect();
        let locales: HashSet<&str> = CREDENTIAL_REFUSALS.iter().map(|r| r.locale).collect();
        assert_eq!(locales, HashSet::from(["en", "zh-CN", "zh-TW"]));
        assert_eq!(keys.len() * locales.len(), CREDENTIAL_REFUSALS.len());
        for r in CREDENTIAL_REFUSALS {
            assert_eq!(credential_refusal(r.text).map(|f| f.key), Some(r.key));
            assert_eq!(r.text.trim(), r.text, "{r:?}");
        }
    }

    #[test]
    fn ordinary_failures_in_every_language_are_not_refusals() {
        // Answers new-api gives the caller's own request (token.*, common.*, gorm, hard-coded
        // controller texts) and the 401 auth texts, in en, zh-CN and zh-TW (same source commit).
        for message in [
            "record not found",
            "Invalid parameters",
            "无效的参数",
            "無效的參數",
            "Token name is too long",
            "令牌名称过长",
            "令牌名稱過長",
            "Quota value cannot be negative",
            "额度值不能为负数",
            "額度值不能為負數",
            "批次請求數量過多，最多 100 條",
            "令牌已過期，無法啟用，請先修改令牌過期時間，或者設定為永不過期",
            "已达到最大令牌数量限制 (1000)",
            "Unauthorized, New-Api-User does not match logged in user",
            "無權進行此操作，New-Api-User 與登入使用者不匹配",
            "無權進行此操作，未登入且未提供 access token",
            // Near misses: a prefix, other spacing, the other script, another case.
            "無權進行此操作",
            "無權進行此操作，access token 無效 ",
            "無權進行此操作，access token无效",
            "无权进行此操作，access token 無效",
            "unauthorized, invalid access token",
            "",
        ] {
            assert!(credential_refusal(message).is_none(), "{message}");
        }
    }
}
