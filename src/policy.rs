//! Per-caller policy (SPEC §5): what a client may write, judged on the token **as it would be
//! stored after the change**, not on the fields the body happens to carry.
//!
//! A pure check over the typed edit: no HTTP, no clock of its own (`now` is given). The one rule
//! that needs the upstream, `name_prefix` on a token that already exists, is judged here on the
//! name the policy layer reads first ([`Policy::judge_current_name`]).

use std::fmt;

use serde_json::{Map, Value};

use crate::config::ClientConfig;
use crate::route::TokenId;
use crate::token::edit::{Edit, TokenFields};

/// Seconds in a day, for `max_expiry_days`.
const DAY: i64 = 86_400;

/// One client's policy; every rule is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    max_remain_quota: Option<i64>,
    allow_unlimited_quota: bool,
    groups: Option<Vec<String>>,
    models: Option<Vec<String>>,
    max_expiry_days: Option<u32>,
    name_prefix: Option<String>,
}

/// How new-api fills the fields a write leaves out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Omitted {
    /// A create: `expired_time` -1, no quota, `unlimited_quota` false, no model limit, group `""`.
    CreateDefaults,
    /// A full update: new-api writes the zero value of each field left out (`expired_time` 0).
    ZeroValues,
    /// The fields a batch update names, before any token is read: what it leaves out keeps each
    /// token's stored value, unknown here, so only the rules on the fields it sets are judged
    /// (each token is judged again, merged, as it is written).
    Stored,
}

/// One rule a token breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The policy key (`max_remain_quota`, `name_prefix`…), also the metric label.
    pub rule: &'static str,
    /// The token field at fault.
    pub field: &'static str,
    /// What is wrong, for a person; it names the rule.
    pub message: String,
}

/// Every rule a write breaks, for the 403 `forbidden`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRefusal {
    /// The client refused.
    pub client: String,
    /// The rules broken, at least one.
    pub violations: Vec<Violation>,
}

impl fmt::Display for PolicyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client `{}` may not do this: ", self.client)?;
        for (i, violation) in self.violations.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&violation.message)?;
        }
        Ok(())
    }
}

impl Policy {
    /// The policy keys of a `[[clients]]` entry (checked at load).
    pub fn of(client: &ClientConfig) -> Policy {
        Policy {
            max_remain_quota: client.max_remain_quota,
            allow_unlimited_quota: client.allow_unlimited_quota,
            groups: client.groups.clone(),
            models: client.models.clone(),
            max_expiry_days: client.max_expiry_days,
            name_prefix: client.name_prefix.clone(),
        }
    }

    /// Whether the policy refuses nothing at all: only a client with `allow_unlimited_quota =
    /// true` and no other rule. (A client with no policy key is not such a client: it may not
    /// write an unlimited token, SPEC §5.)
    pub fn refuses_nothing(&self) -> bool {
        *self
            == Policy {
                allow_unlimited_quota: true,
                ..Policy::default()
            }
    }

    /// Whether judging a request could refuse it: `name_prefix` judges every change of an
    /// existing token, the other rules judge only the token a request writes (`edit`). A read,
    /// or any request of a client that refuses nothing, is never judged.
    pub fn may_refuse(&self, edit: Option<&Edit>) -> bool {
        self.checks_current_names() || (edit.is_some() && !self.refuses_nothing())
    }

    /// Whether the policy needs the current name of the tokens a request names.
    pub fn checks_current_names(&self) -> bool {
        self.name_prefix.is_some()
    }

    /// Judges the token an edit would store, if the edit writes a whole token: a create (with
    /// new-api's defaults for what it omits) or a full update (with the zero values new-api
    /// writes). A status-only update and the id lists of batches store no new fields: only
    /// `name_prefix` applies to them, on the current names.
    pub fn judge_edit(&self, edit: &Edit, now: i64) -> Vec<Violation> {
        match edit {
            Edit::Create(fields) => self.judge(fields, Omitted::CreateDefaults, now),
            Edit::Update(fields) => self.judge(fields, Omitted::ZeroValues, now),
            Edit::BatchUpdate(batch) => self.judge(&batch.fields, Omitted::Stored, now),
            // A PATCH is judged once merged: the patch layer replaces it with the full update.
            Edit::StatusOnly(_) | Edit::Ids(_) | Edit::Patch(_) => Vec::new(),
        }
    }

    /// Every rule broken by the token `fields` would store, omitted fields filled as `omitted`.
    pub fn judge(&self, fields: &TokenFields, omitted: Omitted, now: i64) -> Vec<Violation> {
        self.judge_view(&View::of(fields), omitted, now)
    }

    /// Every rule broken by a token as the upstream stores it (a JSON object: the answer of a
    /// read, with a change merged in), for what puts it into use (SPEC §5: enabling judges the
    /// stored token by every rule). Values new-api wrote itself are judged as they are; fields
    /// the object lacks (an upstream that does not store them) are not judged.
    pub fn judge_stored(&self, token: &Map<String, Value>, now: i64) -> Vec<Violation> {
        self.judge_view(&View::stored(token), Omitted::Stored, now)
    }

    fn judge_view(&self, token: &View<'_>, omitted: Omitted, now: i64) -> Vec<Violation> {
        let mut violations = Vec::new();
        let mut refuse = |rule, field, message| {
            violations.push(Violation {
                rule,
                field,
                message,
            })
        };

        // Whether a rule on a field left out is judged: not when its value is the stored one.
        let judged = |present: bool| present || omitted != Omitted::Stored;

        if token.unlimited_quota == Some(true) && !self.allow_unlimited_quota {
            refuse(
                "allow_unlimited_quota",
                "unlimited_quota",
                "unlimited_quota must be false: this client may not write unlimited tokens (allow_unlimited_quota is false)".into(),
            );
        }
        if let (Some(max), true) = (self.max_remain_quota, judged(token.remain_quota.is_some())) {
            let quota = token.remain_quota.unwrap_or(0);
            if quota > max {
                refuse(
                    "max_remain_quota",
                    "remain_quota",
                    format!(
                        "remain_quota {quota} is above this client's max_remain_quota of {max}"
                    ),
                );
            }
        }

        if let (Some(allowed), true) = (&self.groups, judged(token.group.is_some())) {
            let mut entries = entries(token.group.unwrap_or("")).peekable();
            let outside = if entries.peek().is_none() {
                (!allowed.iter().any(String::is_empty))
                    .then(|| "\"\" (the account's own group)".to_string())
            } else {
                first_outside(entries, allowed).map(|g| format!("`{g}`"))
            };
            if let Some(group) = outside {
                refuse(
                    "groups",
                    "group",
                    format!(
                        "group {group} is not in this client's groups ({})",
                        list(allowed)
                    ),
                );
            }
        }
        // new-api keeps `auto_groups` only on a token of the group `auto` and clears it on any
        // other (SPEC §5: E3 semantics count as stored); a group the change leaves as stored is
        // unknown here, so the list is judged then.
        let auto_kept = token
            .group
            .map_or(omitted == Omitted::Stored, |group| group == AUTO_GROUP);
        if let (Some(allowed), true) = (&self.groups, auto_kept) {
            let auto = token.auto_groups.iter().flatten().copied();
            if let Some(group) = first_outside(auto, allowed) {
                refuse(
                    "groups",
                    "auto_groups",
                    format!(
                        "auto_groups lists `{group}`, which is not in this client's groups ({})",
                        list(allowed)
                    ),
                );
            }
        }

        let models_set = token.model_limits_enabled.is_some() || token.model_limits.is_some();
        if let (Some(allowed), true) = (&self.models, judged(models_set)) {
            // A batch that sets only `model_limits` leaves `model_limits_enabled` as stored.
            let enabled = token
                .model_limits_enabled
                .unwrap_or(omitted == Omitted::Stored);
            let mut models = entries(token.model_limits.unwrap_or("")).peekable();
            let message = if !enabled {
                Some("model_limits_enabled must be true: this client's tokens must be limited to its models".to_string())
            } else if !judged(token.model_limits.is_some()) {
                None
            } else if models.peek().is_none() {
                Some("model_limits must list at least one model: this client's tokens must be limited to its models".to_string())
            } else {
                first_outside(models, allowed)
                    .map(|model| format!("model `{model}` is not in this client's models"))
            };
            if let Some(message) = message {
                refuse(
                    "models",
                    "model_limits",
                    format!("{message} ({})", list(allowed)),
                );
            }
        }

        if let (Some(days), true) = (self.max_expiry_days, judged(token.expired_time.is_some())) {
            let expiry = token.expired_time.unwrap_or(match omitted {
                Omitted::CreateDefaults => -1,
                Omitted::ZeroValues | Omitted::Stored => 0,
            });
            let latest = now.saturating_add(i64::from(days) * DAY);
            if expiry == -1 {
                refuse(
                    "max_expiry_days",
                    "expired_time",
                    format!("expired_time must be set: this client's tokens must expire within max_expiry_days ({days} days), and -1 never expires"),
                );
            } else if expiry > latest {
                refuse(
                    "max_expiry_days",
                    "expired_time",
                    format!("expired_time {expiry} is more than max_expiry_days ({days} days) away; the latest allowed now is {latest}"),
                );
            }
        }

        if let (Some(prefix), true) = (&self.name_prefix, judged(token.name.is_some())) {
            if !token.name.unwrap_or("").starts_with(prefix.as_str()) {
                refuse(
                    "name_prefix",
                    "name",
                    format!(
                        "name must start with this client's name_prefix `{}`",
                        prefix.escape_debug()
                    ),
                );
            }
        }
        violations
    }

    /// `name_prefix` on a token that exists: the caller may change, reveal or delete it only if
    /// its current name starts with the prefix.
    pub fn judge_current_name(&self, id: TokenId, current: &str) -> Option<Violation> {
        let prefix = self.name_prefix.as_deref()?;
        (!current.starts_with(prefix)).then(|| Violation {
            rule: "name_prefix",
            field: "name",
            message: format!(
                "token {id} is named outside this client's name_prefix `{}`",
                prefix.escape_debug()
            ),
        })
    }
}

/// new-api's automatic routing group, the only one that keeps `auto_groups`.
const AUTO_GROUP: &str = "auto";

/// The values the rules read, from a checked edit or from a token as the upstream stores it
/// (whose values may lie outside the body rules: new-api writes some itself).
#[derive(Debug, Default)]
struct View<'a> {
    name: Option<&'a str>,
    remain_quota: Option<i64>,
    unlimited_quota: Option<bool>,
    expired_time: Option<i64>,
    model_limits_enabled: Option<bool>,
    /// Comma-separated, as stored.
    model_limits: Option<&'a str>,
    /// Comma-separated, as stored.
    group: Option<&'a str>,
    auto_groups: Option<Vec<&'a str>>,
}

impl<'a> View<'a> {
    /// The checked fields, and where a field is a carried stored value (one the body rules would
    /// refuse, sent equal to the stored one: SPEC §4.2) that value, as the upstream will store
    /// it: a PATCH that carries a stored `expired_time` in milliseconds is judged on it.
    fn of(fields: &'a TokenFields) -> View<'a> {
        let carried = View::stored(&fields.carried);
        View {
            name: fields.name.as_ref().map(|n| n.as_str()).or(carried.name),
            remain_quota: fields
                .remain_quota
                .map(|q| q.get())
                .or(carried.remain_quota),
            unlimited_quota: fields.unlimited_quota.or(carried.unlimited_quota),
            expired_time: fields
                .expired_time
                .map(|e| e.seconds())
                .or(carried.expired_time),
            model_limits_enabled: fields.model_limits_enabled.or(carried.model_limits_enabled),
            model_limits: fields
                .model_limits
                .as_ref()
                .map(|m| m.as_str())
                .or(carried.model_limits),
            group: fields.group.as_ref().map(|g| g.as_str()).or(carried.group),
            auto_groups: fields
                .auto_groups
                .as_ref()
                .map(|a| a.groups().collect())
                .or(carried.auto_groups),
        }
    }

    fn stored(token: &'a Map<String, Value>) -> View<'a> {
        let text = |key: &str| token.get(key).and_then(Value::as_str);
        let flag = |key: &str| token.get(key).and_then(Value::as_bool);
        let number = |key: &str| token.get(key).and_then(Value::as_i64);
        View {
            name: text("name"),
            remain_quota: number("remain_quota"),
            unlimited_quota: flag("unlimited_quota"),
            expired_time: number("expired_time"),
            model_limits_enabled: flag("model_limits_enabled"),
            model_limits: text("model_limits"),
            group: text("group"),
            auto_groups: token
                .get("auto_groups")
                .and_then(Value::as_array)
                .map(|groups| groups.iter().filter_map(Value::as_str).collect()),
        }
    }
}

/// The entries of a comma-separated list (none for `""`).
fn entries(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').filter(|entry| !entry.is_empty())
}

/// The first entry not in `allowed`.
fn first_outside<'a>(
    entries: impl IntoIterator<Item = &'a str>,
    allowed: &[String],
) -> Option<&'a str> {
    entries
        .into_iter()
        .find(|entry| !allowed.iter().any(|a| a == entry))
}

/// An allowed set as a person reads it: `"" , team-a, auto` (at most 10 shown).
fn list(allowed: &[String]) -> String {
    let mut shown: Vec<String> = allowed
        .iter()
        .take(10)
        .map(|a| {
            if a.is_empty() {
                "\"\"".into()
            } else {
                format!("`{a}`")
            }
        })
        .collect();
    if allowed.len() > 10 {
        shown.push(format!("and {} more", allowed.len() - 10));
    }
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::edit::{EditKind, Limits};

    const NOW: i64 = 1_800_000_000;

    fn create(body: &str) -> Edit {
        Edit::parse(EditKind::Create, body.as_bytes(), &Limits::default(), NOW).unwrap()
    }

    /// A complete full update, with `overrides` replacing its fields.
    fn update(overrides: serde_json::Value) -> Edit {
        let mut body = serde_json::json!({"id": 1, "name": "t", "remain_quota": 0,
            "unlimited_quota": false, "model_limits_enabled": false, "model_limits": "",
            "allow_ips": "", "group": "", "expired_time": -1});
        for (key, value) in overrides.as_object().unwrap() {
            body[key] = value.clone();
        }
        let body = serde_json::to_vec(&body).unwrap();
        Edit::parse(EditKind::Update, &body, &Limits::default(), NOW).unwrap()
    }

    fn rules(policy: &Policy, edit: &Edit) -> Vec<(&'static str, &'static str)> {
        policy
            .judge_edit(edit, NOW)
            .into_iter()
            .map(|v| (v.rule, v.field))
            .collect()
    }

    fn batch(body: &str) -> Edit {
        Edit::parse(
            EditKind::BatchUpdate,
            body.as_bytes(),
            &Limits::default(),
            NOW,
        )
        .unwrap()
    }

    #[test]
    fn a_batch_is_judged_on_the_fields_it_sets() {
        let strict = Policy {
            max_remain_quota: Some(10),
            groups: Some(vec!["team".into()]),
            models: Some(vec!["o3".into()]),
            max_expiry_days: Some(1),
            name_prefix: Some("ci-".into()),
            ..Policy::default()
        };
        // Fields left out keep their stored values, unknown before each token is read.
        let quota = batch(r#"{"ids":[1],"update_fields":["remain_quota"],"remain_quota":5}"#);
        assert_eq!(rules(&strict, &quota), []);
        let everything = batch(
            r#"{"ids":[1],"update_fields":["remain_quota","group","model_limits","expired_time","name","unlimited_quota"],
            "remain_quota":11,"group":"vip","model_limits":"gpt-4o","expired_time":-1,"name":"x","unlimited_quota":true}"#,
        );
        assert_eq!(
            rules(&strict, &everything),
            [
                ("allow_unlimited_quota", "unlimited_quota"),
                ("max_remain_quota", "remain_quota"),
                ("groups", "group"),
                ("models", "model_limits"),
                ("max_expiry_days", "expired_time"),
                ("name_prefix", "name"),
            ]
        );
        let disabled = batch(
            r#"{"ids":[1],"update_fields":["model_limits_enabled"],"model_limits_enabled":false}"#,
        );
        assert_eq!(rules(&strict, &disabled), [("models", "model_limits")]);
    }

    #[test]
    fn no_policy_allows_anything_valid() {
        let edit = create(r#"{"name":"x","unlimited_quota":true,"group":"vip","expired_time":-1}"#);
        let open = Policy {
            allow_unlimited_quota: true,
            ..Policy::default()
        };
        assert_eq!(rules(&open, &edit), []);
    }

    #[test]
    fn a_client_without_policy_keys_is_still_judged() {
        let bare = Policy::of(&ClientConfig::default());
        assert!(!bare.refuses_nothing());
        let edit = create(r#"{"name":"a","unlimited_quota":true}"#);
        assert!(bare.may_refuse(Some(&edit)));
        assert!(!bare.may_refuse(None), "a read writes no token");
        assert_eq!(
            rules(&bare, &edit),
            [("allow_unlimited_quota", "unlimited_quota")]
        );
        let open = Policy {
            allow_unlimited_quota: true,
            ..Policy::default()
        };
        assert!(open.refuses_nothing() && !open.may_refuse(Some(&edit)));
        let prefixed = Policy {
            name_prefix: Some("p-".into()),
            ..open
        };
        assert!(
            prefixed.may_refuse(None),
            "a delete's current name is judged"
        );
    }

    #[test]
    fn quota_at_the_cap_passes_and_one_above_is_refused() {
        let policy = Policy {
            max_remain_quota: Some(500_000),
            ..Policy::default()
        };
        assert_eq!(
            rules(&policy, &create(r#"{"name":"a","remain_quota":500000}"#)),
            []
        );
        let refused = policy.judge_edit(&create(r#"{"name":"a","remain_quota":500001}"#), NOW);
        assert_eq!(refused.len(), 1);
        assert_eq!(
            (refused[0].rule, refused[0].field),
            ("max_remain_quota", "remain_quota")
        );
        assert!(refused[0].message.contains("max_remain_quota of 500000"));
        // A create without a quota stores 0.
        assert_eq!(rules(&policy, &create(r#"{"name":"a"}"#)), []);
    }

    #[test]
    fn unlimited_quota_needs_its_permission() {
        let policy = Policy::default();
        assert_eq!(
            rules(&policy, &create(r#"{"name":"a","unlimited_quota":true}"#)),
            [("allow_unlimited_quota", "unlimited_quota")]
        );
        assert_eq!(
            rules(&policy, &create(r#"{"name":"a","unlimited_quota":false}"#)),
            []
        );
        assert_eq!(
            rules(
                &policy,
                &update(serde_json::json!({"unlimited_quota": true}))
            ),
            [("allow_unlimited_quota", "unlimited_quota")]
        );
    }

    #[test]
    fn expiry_one_day_past_the_limit_is_refused_and_never_expiring_too() {
        let policy = Policy {
            max_expiry_days: Some(30),
            ..Policy::default()
        };
        let at = |t: i64| create(&format!(r#"{{"name":"a","expired_time":{t}}}"#));
        assert_eq!(rules(&policy, &at(NOW + 30 * DAY)), []);
        assert_eq!(
            rules(&policy, &at(NOW + 31 * DAY)),
            [("max_expiry_days", "expired_time")]
        );
        assert_eq!(
            rules(&policy, &at(-1)),
            [("max_expiry_days", "expired_time")]
        );
        // A create that omits the expiry gets new-api's default, -1: refused.
        assert_eq!(
            rules(&policy, &create(r#"{"name":"a"}"#)),
            [("max_expiry_days", "expired_time")]
        );
    }

    #[test]
    fn models_must_be_enabled_non_empty_and_inside_the_set() {
        let policy = Policy {
            models: Some(vec!["gpt-4o".into(), "o3".into()]),
            ..Policy::default()
        };
        let with = |enabled: bool, models: &str| {
            create(&format!(
                r#"{{"name":"a","model_limits_enabled":{enabled},"model_limits":"{models}"}}"#
            ))
        };
        assert_eq!(rules(&policy, &with(true, "gpt-4o,o3")), []);
        assert_eq!(rules(&policy, &with(true, "o3")), []);
        assert_eq!(
            rules(&policy, &with(true, "gpt-4o,claude")),
            [("models", "model_limits")]
        );
        assert_eq!(
            rules(&policy, &with(true, "")),
            [("models", "model_limits")]
        );
        assert_eq!(
            rules(&policy, &with(false, "o3")),
            [("models", "model_limits")]
        );
        // A create with no model limit at all is refused too.
        assert_eq!(
            rules(&policy, &create(r#"{"name":"a"}"#)),
            [("models", "model_limits")]
        );
        let message = &policy.judge_edit(&with(true, "claude"), NOW)[0].message;
        assert!(
            message.contains("`claude`") && message.contains("`gpt-4o`"),
            "{message}"
        );
    }

    #[test]
    fn groups_cover_the_own_group_each_entry_and_auto_groups() {
        let policy = Policy {
            groups: Some(vec!["team".into(), "auto".into()]),
            ..Policy::default()
        };
        let group = |g: &str| create(&format!(r#"{{"name":"a","group":"{g}"}}"#));
        assert_eq!(rules(&policy, &group("team")), []);
        assert_eq!(rules(&policy, &group("team,auto")), []);
        assert_eq!(rules(&policy, &group("team,vip")), [("groups", "group")]);
        assert_eq!(
            rules(&policy, &group("")),
            [("groups", "group")],
            "the own group needs \"\""
        );
        assert_eq!(
            rules(&policy, &create(r#"{"name":"a"}"#)),
            [("groups", "group")]
        );
        let auto = create(r#"{"name":"a","group":"auto","auto_groups":["team","vip"]}"#);
        assert_eq!(rules(&policy, &auto), [("groups", "auto_groups")]);
        let own = Policy {
            groups: Some(vec![String::new()]),
            ..Policy::default()
        };
        assert_eq!(rules(&own, &group("")), []);
        assert_eq!(rules(&own, &group("team")), [("groups", "group")]);
    }

    #[test]
    fn name_prefix_on_new_names_and_current_names() {
        let policy = Policy {
            name_prefix: Some("team-a-".into()),
            ..Policy::default()
        };
        assert_eq!(rules(&policy, &create(r#"{"name":"team-a-ci"}"#)), []);
        assert_eq!(
            rules(&policy, &create(r#"{"name":"team-b-ci"}"#)),
            [("name_prefix", "name")]
        );
        assert_eq!(
            rules(&policy, &create(r#"{"name":"team-a"}"#)),
            [("name_prefix", "name")]
        );
        // A rename outside the prefix by a full update.
        assert_eq!(
            rules(&policy, &update(serde_json::json!({"name": "other"}))),
            [("name_prefix", "name")]
        );
        assert_eq!(
            rules(&policy, &update(serde_json::json!({"name": "team-a-x"}))),
            []
        );
        let id = TokenId::parse("7").unwrap();
        assert_eq!(policy.judge_current_name(id, "team-a-ci"), None);
        let refused = policy.judge_current_name(id, "team-b-ci").unwrap();
        assert_eq!((refused.rule, refused.field), ("name_prefix", "name"));
        assert!(refused.message.contains("token 7"));
        assert!(Policy::default()
            .judge_current_name(id, "anything")
            .is_none());
    }

    #[test]
    fn a_full_update_is_judged_with_the_zero_values_new_api_writes() {
        let policy = Policy {
            max_expiry_days: Some(1),
            groups: Some(vec!["team".into()]),
            ..Policy::default()
        };
        let limits = Limits {
            require_complete_updates: false,
            ..Limits::default()
        };
        let sparse =
            Edit::parse(EditKind::Update, br#"{"id":1,"name":"a"}"#, &limits, NOW).unwrap();
        // The omitted group is stored as "" (refused); the omitted expiry as 0 (allowed: it is
        // not -1 and not too far).
        assert_eq!(rules(&policy, &sparse), [("groups", "group")]);
    }

    /// SPEC §5: a PATCH is judged on the merged token. A stored value the body rules would
    /// refuse is carried when the merge sends it back unchanged, and it is judged as stored: a
    /// rename does not slip a stored expiry in milliseconds (years away) past `max_expiry_days`.
    #[test]
    fn a_merged_patch_is_judged_on_the_stored_values_it_carries() {
        let stored = serde_json::json!({"id": 7, "name": "t", "remain_quota": 5,
            "unlimited_quota": false, "model_limits_enabled": false, "model_limits": "",
            "allow_ips": "", "group": "", "expired_time": (NOW + 86_400) * 1000, "status": 1});
        let stored = stored.as_object().unwrap();
        let Edit::Patch(rename) = Edit::parse(
            EditKind::Patch,
            br#"{"name":"renamed"}"#,
            &Limits::default(),
            NOW,
        )
        .unwrap() else {
            panic!("not a PATCH");
        };
        let id = crate::route::TokenId::parse("7").unwrap();
        let merged =
            crate::token::patch::merge(stored, id, &rename, &Limits::default(), NOW).unwrap();
        assert!(merged.carried.contains_key("expired_time"));
        let policy = Policy {
            max_expiry_days: Some(30),
            ..Policy::default()
        };
        assert_eq!(
            rules(&policy, &Edit::Update(merged.clone())),
            [("max_expiry_days", "expired_time")]
        );
        // Without the rule the same merge passes: only the rule refuses it.
        assert_eq!(rules(&Policy::default(), &Edit::Update(merged)), []);
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let policy = Policy {
            max_remain_quota: Some(10),
            name_prefix: Some("p-".into()),
            ..Policy::default()
        };
        let edit = create(r#"{"name":"x","remain_quota":11,"unlimited_quota":true}"#);
        assert_eq!(
            rules(&policy, &edit),
            [
                ("allow_unlimited_quota", "unlimited_quota"),
                ("max_remain_quota", "remain_quota"),
                ("name_prefix", "name")
            ]
        );
        let status_only = Edit::parse(
            EditKind::StatusOnly,
            br#"{"id":1,"status":2,"unlimited_quota":true}"#,
            &Limits::default(),
            NOW,
        )
        .unwrap();
        assert_eq!(
            rules(&policy, &status_only),
            [],
            "status-only stores no new fields"
        );
    }
}
