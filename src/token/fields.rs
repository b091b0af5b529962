//! One type per field rule of SPEC §4.2, each built only from a valid JSON value (parse, don't
//! validate). A refusal is a message a person can act on; the caller names the field.
//!
//! new-api checks almost nothing on write (it stores a comma list of IPs as one bogus entry, any
//! status integer, an expiry of 0 that expires the token at once), so these rules are where such
//! mistakes stop.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use serde_json::Value;

use super::json::kind;
use crate::route::TokenId;

/// new-api's own quota ceiling (500 000 units = US$1, so US$1e9).
pub const MAX_QUOTA: i64 = 500_000_000_000_000;
/// An expiry above this is surely in milliseconds (10^11 seconds is the year 5138).
pub const MILLISECONDS_HINT: i64 = 100_000_000_000;
/// new-api's `MaxTokenAutoGroups`.
pub const MAX_AUTO_GROUPS: usize = 5;

/// What the rules depend on besides the value.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// `limits.name_max_bytes`.
    pub name_max_bytes: usize,
    /// The current Unix time in seconds (an expiry must be later).
    pub now: i64,
}

/// A field rule's refusal: what is wrong, for a person.
pub type Refusal = String;

/// A JSON integer (not a string, not `1.0`) that fits in an i64. `-0` is 0 (serde_json reads it
/// as the float -0.0, since no integer type has a negative zero).
fn integer(value: &Value) -> Result<i64, Refusal> {
    match value {
        Value::Number(n) if n.as_f64().is_some_and(|f| f == 0.0 && f.is_sign_negative()) => Ok(0),
        Value::Number(n) => n.as_i64().ok_or_else(|| {
            if n.is_f64() {
                format!("must be a whole number, not {n}")
            } else {
                format!("{n} is out of range")
            }
        }),
        other => Err(format!("must be a JSON integer, not {}", kind(other))),
    }
}

fn string(value: &Value) -> Result<&str, Refusal> {
    value
        .as_str()
        .ok_or_else(|| format!("must be a JSON string, not {}", kind(value)))
}

/// A JSON boolean (`true` or `false`, never `1` or `"true"`).
pub fn boolean(value: &Value) -> Result<bool, Refusal> {
    value
        .as_bool()
        .ok_or_else(|| format!("must be true or false, not {}", kind(value)))
}

/// A token id in a body (`id`, `ids`): 1 to 2^53-1 ([`TokenId::MAX`], SPEC §2).
pub fn token_id(value: &Value) -> Result<TokenId, Refusal> {
    let n = integer(value)?;
    if n < 1 {
        return Err(format!("{n} is not a token id (ids are 1 or more)"));
    }
    TokenId::new(n.unsigned_abs()).ok_or_else(|| {
        format!(
            "{n} is not a token id: ids are at most {} (2^53-1)",
            TokenId::MAX
        )
    })
}

/// `name`: 1 to `limits.name_max_bytes` bytes of UTF-8 (new-api measures bytes), no control
/// characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// Checks a name.
    pub fn parse(value: &Value, rules: &Rules) -> Result<Name, Refusal> {
        let name = string(value)?;
        if name.is_empty() {
            return Err("must not be empty".into());
        }
        if name.len() > rules.name_max_bytes {
            return Err(format!(
                "is {} bytes long; at most {} bytes of UTF-8 are allowed (a character outside ASCII takes 2 to 4 bytes)",
                name.len(),
                rules.name_max_bytes
            ));
        }
        if name.chars().any(char::is_control) {
            return Err("must not contain control characters (such as a newline or tab)".into());
        }
        Ok(Name(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `remain_quota`: 0 to 500 000 000 000 000, checked even when `unlimited_quota` is true.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Quota(i64);

impl Quota {
    /// Checks a quota.
    pub fn parse(value: &Value) -> Result<Quota, Refusal> {
        let n = integer(value)?;
        if !(0..=MAX_QUOTA).contains(&n) {
            return Err(format!(
                "must be from 0 to {MAX_QUOTA} (500000 units = US$1), not {n}"
            ));
        }
        Ok(Quota(n))
    }

    /// The quota in units.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// `expired_time`: never (`-1`), or a Unix time in seconds later than now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// `-1`
    Never,
    /// Seconds since the Unix epoch.
    At(i64),
}

impl Serialize for Expiry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Expiry::Never => serializer.serialize_i64(-1),
            Expiry::At(seconds) => serializer.serialize_i64(*seconds),
        }
    }
}

impl Expiry {
    /// Checks an expiry against the current time.
    pub fn parse(value: &Value, rules: &Rules) -> Result<Expiry, Refusal> {
        match integer(value)? {
            -1 => Ok(Expiry::Never),
            0 => Err("0 is refused: use -1 for a token that never expires (new-api reads 0 as \"never\" on create but expires the token at once on update)".into()),
            n if n > MILLISECONDS_HINT => Err(format!(
                "{n} looks like milliseconds; expired_time is a Unix time in seconds (did you mean {}?)",
                n / 1000
            )),
            n if n <= rules.now => Err(format!(
                "{n} is not in the future (now is {}); use -1 for a token that never expires",
                rules.now
            )),
            n => Ok(Expiry::At(n)),
        }
    }

    /// The value new-api stores: `-1` or the Unix time in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Expiry::Never => -1,
            Expiry::At(seconds) => seconds,
        }
    }
}

/// `model_limits`: comma-separated model ids, no empty entry, no surrounding spaces, no
/// duplicates; `""` means no limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ModelLimits(String);

impl ModelLimits {
    /// Checks a model list.
    pub fn parse(value: &Value) -> Result<ModelLimits, Refusal> {
        let text = string(value)?;
        comma_list(text, "model", |_| None)?;
        Ok(ModelLimits(text.to_owned()))
    }

    /// The models, in order (none for `""`).
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.0.split(',').filter(|m| !m.is_empty())
    }

    /// The list as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `group`: comma-separated group names, no empty entry, no spaces; `""` is the account's own
/// group and `auto` new-api's automatic routing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Groups(String);

impl Groups {
    /// Checks a group list.
    pub fn parse(value: &Value) -> Result<Groups, Refusal> {
        let text = string(value)?;
        let no_spaces = |entry: &str| {
            entry
                .chars()
                .any(char::is_whitespace)
                .then_some("contains white space")
        };
        comma_list(text, "group", no_spaces)?;
        Ok(Groups(text.to_owned()))
    }

    /// The groups, in order (none for `""`, the account's own group).
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.0.split(',').filter(|g| !g.is_empty())
    }

    /// The list as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a comma-separated list: `""` or entries that are non-empty, without surrounding white
/// space, distinct, and pass `extra`.
fn comma_list(
    text: &str,
    what: &str,
    extra: impl Fn(&str) -> Option<&'static str>,
) -> Result<(), Refusal> {
    if text.is_empty() {
        return Ok(());
    }
    let mut seen = std::collections::HashSet::new();
    for entry in text.split(',') {
        if entry.is_empty() {
            return Err(format!(
                "has an empty {what} entry (two commas in a row, or a comma at an end)"
            ));
        }
        if entry.trim() != entry {
            return Err(format!(
                "{what} `{}` has spaces around it; separate entries with a bare comma",
                entry.escape_debug()
            ));
        }
        if entry.chars().any(char::is_control) {
            return Err(format!(
                "{what} `{}` contains a control character",
                entry.escape_debug()
            ));
        }
        if let Some(why) = extra(entry) {
            return Err(format!("{what} `{}` {why}", entry.escape_debug()));
        }
        // A set, not a scan of the entries before: 17 000 short entries fit in 64 KiB.
        if !seen.insert(entry) {
            return Err(format!("lists the {what} `{}` twice", entry.escape_debug()));
        }
    }
    Ok(())
}

/// `allow_ips`: addresses or CIDRs separated by `\n` (one trailing `\n` tolerated); `""` or null
/// means no limit. Kept as sent, so the upstream stores exactly what was checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AllowIps(Option<String>);

impl AllowIps {
    /// Checks an IP allow list.
    pub fn parse(value: &Value) -> Result<AllowIps, Refusal> {
        let text = match value {
            Value::Null => return Ok(AllowIps(None)),
            other => string(other)?,
        };
        let body = text.strip_suffix('\n').unwrap_or(text);
        if body.is_empty() {
            return if text.is_empty() {
                Ok(AllowIps(Some(String::new())))
            } else {
                Err("is a bare newline; use \"\" or null for no limit".into())
            };
        }
        for entry in body.split('\n') {
            if entry.is_empty() {
                return Err(
                    "has an empty entry (two newlines in a row); put one address or CIDR per line"
                        .into(),
                );
            }
            if entry.contains(',') {
                return Err(format!(
                    "entry `{}` contains a comma: put one address or CIDR per line, separated by \\n (new-api would merge `1.1.1.1,2.2.2.2` into one bogus entry)",
                    entry.escape_debug()
                ));
            }
            if entry.chars().any(char::is_whitespace) {
                return Err(format!(
                    "entry `{}` contains white space",
                    entry.escape_debug()
                ));
            }
            if entry.parse::<IpAddr>().is_err() && entry.parse::<IpNet>().is_err() {
                return Err(format!(
                    "entry `{}` is not an IPv4 or IPv6 address or CIDR (such as 10.0.0.0/8 or 2001:db8::/32)",
                    entry.escape_debug()
                ));
            }
        }
        Ok(AllowIps(Some(text.to_owned())))
    }
}

/// `auto_groups`: at most 5 distinct group names, or null.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AutoGroups(Option<Vec<String>>);

impl AutoGroups {
    /// Checks an automatic-group list.
    pub fn parse(value: &Value) -> Result<AutoGroups, Refusal> {
        let items = match value {
            Value::Null => return Ok(AutoGroups(None)),
            Value::Array(items) => items,
            other => {
                return Err(format!(
                    "must be an array of group names or null, not {}",
                    kind(other)
                ))
            }
        };
        if items.len() > MAX_AUTO_GROUPS {
            return Err(format!(
                "lists {} groups; at most {MAX_AUTO_GROUPS} are allowed",
                items.len()
            ));
        }
        let mut groups: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            let group = string(item).map_err(|e| format!("every entry {e}"))?;
            if group.is_empty()
                || group
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == ',')
            {
                return Err(format!("`{}` is not a group name", group.escape_debug()));
            }
            if groups.iter().any(|g| g == group) {
                return Err(format!("lists `{}` twice", group.escape_debug()));
            }
            groups.push(group.to_owned());
        }
        Ok(AutoGroups(Some(groups)))
    }

    /// The groups (none for null).
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.0.iter().flatten().map(String::as_str)
    }
}

/// `status`: 1 enabled, 2 disabled, 3 expired, 4 exhausted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Status(i64);

impl Status {
    /// `1`: the token is in use.
    pub const ENABLED: Status = Status(1);

    /// Checks a status.
    pub fn parse(value: &Value) -> Result<Status, Refusal> {
        match integer(value)? {
            n @ 1..=4 => Ok(Status(n)),
            n => Err(format!(
                "must be 1 (enabled), 2 (disabled), 3 (expired) or 4 (exhausted), not {n}"
            )),
        }
    }

    /// The status code.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// `mj_custom_proxy` (forks): empty, or an `http(s)://` URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ProxyUrl(String);

impl ProxyUrl {
    /// Checks a proxy URL.
    pub fn parse(value: &Value) -> Result<ProxyUrl, Refusal> {
        let text = string(value)?;
        if text.is_empty() {
            return Ok(ProxyUrl(String::new()));
        }
        let uri: http::Uri = text
            .parse()
            .map_err(|_| format!("`{}` is not a URL", text.escape_debug()))?;
        match (uri.scheme_str(), uri.host()) {
            (Some("http" | "https"), Some(host)) if !host.is_empty() => {
                Ok(ProxyUrl(text.to_owned()))
            }
            _ => Err(format!(
                "`{}` must be an http:// or https:// URL, or empty",
                text.escape_debug()
            )),
        }
    }
}

/// A free-form string field of a fork (`mj_image_mode`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Text(String);

impl Text {
    /// Checks that the value is a string.
    pub fn parse(value: &Value) -> Result<Text, Refusal> {
        string(value).map(|s| Text(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RULES: Rules = Rules {
        name_max_bytes: 50,
        now: 1_800_000_000,
    };

    #[test]
    fn names_are_measured_in_bytes() {
        let ok = |s: &str| Name::parse(&json!(s), &RULES).is_ok();
        assert!(ok(&"a".repeat(50)));
        assert!(!ok(&"a".repeat(51)));
        // 16 three-byte characters and two ASCII bytes: 50 bytes; one more byte is 51.
        assert!(ok(&format!("{}ab", "令".repeat(16))));
        assert!(!ok(&format!("{}abc", "令".repeat(16))));
        assert!(!ok(&"令".repeat(17)));
        assert!(!ok(""));
        assert!(!ok("tab\there"));
        assert!(Name::parse(&json!(5), &RULES).is_err());
    }

    #[test]
    fn quota_range() {
        assert!(Quota::parse(&json!(0)).is_ok());
        assert!(Quota::parse(&json!(MAX_QUOTA)).is_ok());
        for bad in [
            json!(MAX_QUOTA + 1),
            json!(-1),
            json!("5"),
            json!(1.0),
            json!(1e20),
        ] {
            assert!(Quota::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expiry_rules_with_hints() {
        let now = RULES.now;
        assert_eq!(Expiry::parse(&json!(-1), &RULES), Ok(Expiry::Never));
        assert_eq!(
            Expiry::parse(&json!(now + 60), &RULES),
            Ok(Expiry::At(now + 60))
        );
        assert!(Expiry::parse(&json!(0), &RULES).unwrap_err().contains("-1"));
        assert!(Expiry::parse(&json!(now - 1), &RULES)
            .unwrap_err()
            .contains("not in the future"));
        assert!(Expiry::parse(&json!(now), &RULES).is_err());
        assert!(Expiry::parse(&json!(now * 1000), &RULES)
            .unwrap_err()
            .contains("milliseconds"));
        assert!(Expiry::parse(&json!(-2), &RULES).is_err());
    }

    #[test]
    fn model_and_group_lists() {
        assert!(ModelLimits::parse(&json!("")).is_ok());
        assert!(ModelLimits::parse(&json!("gpt-4o,claude-3-5-sonnet")).is_ok());
        for bad in ["gpt-4o,", ",gpt-4o", "a,,b", "a, b", " a", "a,a"] {
            assert!(ModelLimits::parse(&json!(bad)).is_err(), "{bad:?}");
        }
        assert!(ModelLimits::parse(&json!(["a"])).is_err());
        assert!(Groups::parse(&json!("")).is_ok());
        assert!(Groups::parse(&json!("default,vip")).is_ok());
        assert!(Groups::parse(&json!("auto")).is_ok());
        for bad in ["a b", "a,", "a,,b", "vip,vip"] {
            assert!(Groups::parse(&json!(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ip_allow_lists() {
        for ok in [
            json!(null),
            json!(""),
            json!("1.2.3.4"),
            json!("1.2.3.4\n"),
            json!("10.0.0.0/8\n2001:db8::/32\n::1"),
            json!("192.168.1.7/32"),
        ] {
            assert!(AllowIps::parse(&ok).is_ok(), "{ok}");
        }
        let comma = AllowIps::parse(&json!("1.1.1.1,2.2.2.2")).unwrap_err();
        assert!(comma.contains("comma") && comma.contains("\\n"), "{comma}");
        for bad in [
            "10.0.0.0/33",
            "2001:db8::/129",
            "1.2.3",
            "1.2.3.4\n\n5.6.7.8",
            "\n",
            "1.2.3.4 ",
            "1.2.3.4\r\n",
            "host.example",
        ] {
            assert!(AllowIps::parse(&json!(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn statuses_booleans_ids_and_auto_groups() {
        for n in 1..=4 {
            assert!(Status::parse(&json!(n)).is_ok());
        }
        for bad in [json!(0), json!(5), json!(99), json!("1")] {
            assert!(Status::parse(&bad).is_err(), "{bad}");
        }
        assert!(boolean(&json!(true)).is_ok());
        for bad in [json!(1), json!("true"), json!(null)] {
            assert!(boolean(&bad).is_err(), "{bad}");
        }
        assert!(token_id(&json!(9_007_199_254_740_991u64)).is_ok());
        for bad in [
            json!(0),
            json!(-5),
            json!(9_007_199_254_740_992u64),
            json!(i64::MAX),
            json!(u64::MAX),
            json!("7"),
            json!(7.0),
        ] {
            assert!(token_id(&bad).is_err(), "{bad}");
        }
        let above = token_id(&json!(9_007_199_254_740_993u64)).unwrap_err();
        assert!(above.contains("at most 9007199254740991"), "{above}");
        assert!(AutoGroups::parse(&json!(null)).is_ok());
        assert!(AutoGroups::parse(&json!(["a", "b", "c", "d", "e"])).is_ok());
        assert!(AutoGroups::parse(&json!(["a", "b", "c", "d", "e", "f"])).is_err());
        assert!(AutoGroups::parse(&json!(["a", "a"])).is_err());
        assert!(AutoGroups::parse(&json!("a")).is_err());
    }

    #[test]
    fn proxy_urls() {
        assert!(ProxyUrl::parse(&json!("")).is_ok());
        assert!(ProxyUrl::parse(&json!("https://mj.example/proxy")).is_ok());
        for bad in ["ftp://x", "mj.example", "http://", "https:///x"] {
            assert!(ProxyUrl::parse(&json!(bad)).is_err(), "{bad}");
        }
    }
}
