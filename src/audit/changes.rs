//! What a change does to a token, as its intent record says it (SPEC §6.1): `before`, the token
//! as the upstream held it (its editable fields and `status`, never `key` or another read-only
//! field), and `changes`, `[{"field", "from", "to"}]` for every field whose stored value the
//! change alters, sorted by field name.
//!
//! "After" is what new-api stores, not what was sent: a full update overwrites every field it
//! copies and writes the zero value of one left out; a status-only update changes `status` and
//! nothing else; in the E3 era a group other than `auto` clears `auto_groups` and
//! `cross_group_retry`. A field the stored token does not have (a fork's `mj_image_mode` sent to
//! new-api) is one the upstream does not store, and is not a change, unless it is one of new-api's
//! own.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::token::edit::{same_value, Edit, TokenFields, COMPLETE_UPDATE_FIELDS, TOKEN_FIELDS};

/// What one intent record says a change does to one token.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The token the record is about (none for a create: new-api chooses the id).
    pub token_id: Option<u64>,
    /// `before` in canonical JSON; `None` is null (a create, or a token not read).
    pub before: Option<Arc<[u8]>>,
    /// `changes` in canonical JSON; `None` is null (a delete, or a token not read).
    pub changes: Option<Arc<[u8]>>,
}

impl Change {
    /// A change of token `id` that was not read (`audit.capture_before = false`): both null.
    pub fn unread(id: u64) -> Change {
        Change {
            token_id: Some(id),
            before: None,
            changes: None,
        }
    }

    /// The change `edit` makes to token `id`, stored as `stored` (no edit: a delete, whose
    /// `changes` are null); `extra_fields` are the fork fields (`upstream.extra_fields`) that
    /// count as editable.
    pub fn of(
        id: u64,
        stored: &Map<String, Value>,
        edit: Option<&Edit>,
        extra_fields: &[String],
    ) -> Change {
        let before = editable(stored, extra_fields);
        let changes = edit
            .and_then(|edit| after(stored, edit))
            .map(|after| diff(&before, &editable(&after, extra_fields)));
        Change {
            token_id: Some(id),
            before: Some(canonical(&Value::Object(before))),
            changes: changes.map(|c| canonical(&Value::Array(c))),
        }
    }

    /// A create of `fields`: `before` null, `changes` every field the create sets, from null.
    pub fn created(fields: &TokenFields, extra_fields: &[String]) -> Change {
        let changes = diff(&Map::new(), &editable(&created(fields), extra_fields));
        Change {
            token_id: None,
            before: None,
            changes: Some(canonical(&Value::Array(changes))),
        }
    }
}

fn canonical(value: &Value) -> Arc<[u8]> {
    super::canonical::canonical(value).into()
}

/// The fields of `token` a `before` shows: the editable ones of SPEC §4.2 (but `id`, which the
/// record's `token_ids` carries), `status`, and the fork fields of `upstream.extra_fields`.
pub fn editable(token: &Map<String, Value>, extra_fields: &[String]) -> Map<String, Value> {
    token
        .iter()
        .filter(|(field, _)| {
            let field = field.as_str();
            (field != "id" && TOKEN_FIELDS.contains(&field))
                || extra_fields.iter().any(|extra| extra == field)
        })
        .map(|(field, value)| (field.clone(), value.clone()))
        .collect()
}

/// The token as new-api stores it after `edit` is applied to `stored`, or `None` when the edit
/// leaves nothing to compare (a delete).
pub fn after(stored: &Map<String, Value>, edit: &Edit) -> Option<Map<String, Value>> {
    match edit {
        Edit::Update(fields) => Some(full_update(stored, fields)),
        Edit::StatusOnly(fields) => {
            let mut after = stored.clone();
            if let Some(status) = body(fields).remove("status") {
                after.insert("status".into(), status);
            }
            Some(after)
        }
        Edit::BatchUpdate(batch) => {
            let mut after = stored.clone();
            for (field, value) in body(&batch.fields) {
                if stored.contains_key(&field) || is_new_apis(&field) {
                    after.insert(field, value);
                }
            }
            Some(after)
        }
        Edit::Ids(_) | Edit::Create(_) | Edit::Patch(_) => None,
    }
}

/// The fields a body sets, without `id` (the record's `token_ids` carries it).
fn body(fields: &TokenFields) -> Map<String, Value> {
    let Ok(Value::Object(mut body)) = serde_json::to_value(fields) else {
        return Map::new();
    };
    body.remove("id");
    body
}

/// Whether new-api itself stores `field` (every era): a change of it is one even when the stored
/// token did not show it.
fn is_new_apis(field: &str) -> bool {
    COMPLETE_UPDATE_FIELDS.contains(&field) || field == "status"
}

/// What new-api's full update copies from the body unconditionally, with the zero value it
/// writes for one left out (upstream-new-api.md §4.2, step 7).
fn overwritten() -> [(&'static str, Value); 9] {
    [
        ("name", Value::from("")),
        ("expired_time", Value::from(0)),
        ("remain_quota", Value::from(0)),
        ("unlimited_quota", Value::Bool(false)),
        ("model_limits_enabled", Value::Bool(false)),
        ("model_limits", Value::from("")),
        ("allow_ips", Value::Null),
        ("group", Value::from("")),
        ("cross_group_retry", Value::Bool(false)),
    ]
}

/// The zero value of a field of the JSON type of `like` (a fork's field left out of a full
/// update: Go writes its zero value, as new-api does for its own).
fn zero_like(like: &Value) -> Value {
    match like {
        Value::String(_) => Value::from(""),
        Value::Number(_) => Value::from(0),
        Value::Bool(_) => Value::Bool(false),
        Value::Null | Value::Array(_) | Value::Object(_) => Value::Null,
    }
}

/// `stored` after a full update with `fields`: every copied field is the body's value or its
/// zero, `status` is unchanged, and (E3, where the token shows `auto_groups`) a group other than
/// `auto` clears `auto_groups` and `cross_group_retry`, while `auto` keeps the stored
/// `auto_groups` unless the body names it.
fn full_update(stored: &Map<String, Value>, fields: &TokenFields) -> Map<String, Value> {
    let mut sent = body(fields);
    sent.remove("status");
    let mut after = stored.clone();
    for (field, zero) in overwritten() {
        let value = sent.remove(field).unwrap_or(zero);
        if stored.contains_key(field) || is_new_apis(field) {
            after.insert(field.into(), value);
        }
    }
    let auto_groups = sent.remove("auto_groups");
    // Fork fields the token shows: the body's value, or the zero of their type.
    for (field, value) in stored {
        if field == "auto_groups" || field == "status" || after_is_set(field) {
            continue;
        }
        if let Some(sent) = sent.remove(field) {
            after.insert(field.clone(), sent);
        } else if is_fork_field(field) {
            after.insert(field.clone(), zero_like(value));
        }
    }
    if stored.contains_key("auto_groups") {
        if after.get("group").and_then(Value::as_str) != Some("auto") {
            after.insert("auto_groups".into(), Value::Null);
            after.insert("cross_group_retry".into(), Value::Bool(false));
        } else if let Some(groups) = auto_groups {
            after.insert("auto_groups".into(), groups);
        }
    }
    after
}

/// Whether `field` is one [`overwritten`] already wrote.
fn after_is_set(field: &str) -> bool {
    overwritten().iter().any(|(name, _)| *name == field)
}

/// A field a full update copies that new-api does not know: the fork fields of SPEC §4.2
/// (`mj_image_mode`, `mj_custom_proxy`) and anything else the token shows that is not a
/// read-only field (only `upstream.extra_fields` reach a record: [`editable`]).
fn is_fork_field(field: &str) -> bool {
    !crate::token::edit::READ_ONLY_FIELDS.contains(&field)
        && !matches!(field, "id" | "status" | "auto_groups")
}

/// The token a create of `fields` stores, with new-api's defaults for what it leaves out
/// (upstream-new-api.md §4.1): enabled, never expiring (an `expired_time` of 0 too), no quota,
/// no limits, the account's own group, no cross-group retry, `allow_ips` `""` for null.
fn created(fields: &TokenFields) -> Map<String, Value> {
    let mut token = body(fields);
    token.insert("status".into(), Value::from(1));
    let defaults = [
        ("expired_time", Value::from(-1)),
        ("remain_quota", Value::from(0)),
        ("unlimited_quota", Value::Bool(false)),
        ("model_limits_enabled", Value::Bool(false)),
        ("model_limits", Value::from("")),
        ("allow_ips", Value::from("")),
        ("group", Value::from("")),
        ("name", Value::from("")),
        ("cross_group_retry", Value::Bool(false)),
    ];
    for (field, default) in defaults {
        let value = token.entry(field).or_insert(Value::Null);
        if value.is_null() || (field == "expired_time" && value.as_i64() == Some(0)) {
            *value = default;
        }
    }
    if token.get("group").and_then(Value::as_str) != Some("auto") {
        if let Some(retry) = token.get_mut("cross_group_retry") {
            *retry = Value::Bool(false);
        }
        if let Some(groups) = token.get_mut("auto_groups") {
            *groups = Value::Null;
        }
    }
    token
}

/// `[{"field", "from", "to"}]` for every field whose value differs between `before` and
/// `after` (a field one lacks is null there), sorted by field name.
pub fn diff(before: &Map<String, Value>, after: &Map<String, Value>) -> Vec<Value> {
    let mut fields: Vec<&String> = before.keys().chain(after.keys()).collect();
    fields.sort();
    fields.dedup();
    fields
        .into_iter()
        .filter_map(|field| {
            let from = before.get(field).unwrap_or(&Value::Null);
            let to = after.get(field).unwrap_or(&Value::Null);
            (!same_value(Some(from), to))
                .then(|| serde_json::json!({"field": field, "from": from, "to": to}))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::edit::{EditKind, Limits};
    use serde_json::json;

    const NOW: i64 = 1_700_000_000;

    fn stored() -> Map<String, Value> {
        let Value::Object(token) = json!({
            "id": 7, "user_id": 1, "key": "abcd**********wxyz", "status": 1, "name": "ci",
            "created_time": 1, "accessed_time": 2, "expired_time": -1, "remain_quota": 500_000,
            "unlimited_quota": false, "model_limits_enabled": false, "model_limits": "",
            "allow_ips": "", "used_quota": 9, "group": "", "cross_group_retry": false,
            "DeletedAt": null,
        }) else {
            unreachable!()
        };
        token
    }

    fn edit(kind: EditKind, body: Value) -> Edit {
        let limits = Limits {
            require_complete_updates: false,
            ..Limits::default()
        };
        Edit::parse(kind, body.to_string().as_bytes(), &limits, NOW).unwrap()
    }

    fn read(change: &Change) -> (Value, Value) {
        let parse = |bytes: &Option<Arc<[u8]>>| {
            bytes
                .as_deref()
                .map_or(Value::Null, |b| serde_json::from_slice(b).unwrap())
        };
        (parse(&change.before), parse(&change.changes))
    }

    #[test]
    fn before_is_the_editable_fields_and_status_never_the_key() {
        let (before, _) = read(&Change::of(7, &stored(), None, &[]));
        assert_eq!(
            before,
            json!({"status": 1, "name": "ci", "expired_time": -1, "remain_quota": 500_000,
                   "unlimited_quota": false, "model_limits_enabled": false, "model_limits": "",
                   "allow_ips": "", "group": "", "cross_group_retry": false})
        );
        let mut fork = stored();
        fork.insert("billing_type".into(), json!("tiered"));
        fork.insert("subnet".into(), json!("10.0.0.0/8"));
        let (before, changes) = read(&Change::of(7, &fork, None, &["billing_type".into()]));
        assert_eq!(before["billing_type"], "tiered");
        assert!(before.get("subnet").is_none() && before.get("key").is_none());
        assert_eq!(
            changes,
            Value::Null,
            "a delete changes nothing field by field"
        );
    }

    #[test]
    fn a_full_update_writes_zero_values_and_leaves_status() {
        let update = edit(
            EditKind::Update,
            json!({"id": 7, "name": "ci", "remain_quota": 2_000_000, "status": 2, "group": "vip"}),
        );
        let (_, changes) = read(&Change::of(7, &stored(), Some(&update), &[]));
        assert_eq!(
            changes,
            json!([
                {"field": "allow_ips", "from": "", "to": null},
                {"field": "expired_time", "from": -1, "to": 0},
                {"field": "group", "from": "", "to": "vip"},
                {"field": "remain_quota", "from": 500_000, "to": 2_000_000},
            ])
        );
        // Sending what is stored changes nothing.
        let same = edit(
            EditKind::Update,
            json!({"id": 7, "name": "ci", "expired_time": -1, "remain_quota": 500_000,
                   "unlimited_quota": false, "model_limits_enabled": false, "model_limits": "",
                   "allow_ips": "", "group": "", "status": 1}),
        );
        assert_eq!(
            read(&Change::of(7, &stored(), Some(&same), &[])).1,
            json!([])
        );
    }

    #[test]
    fn e3_clears_auto_groups_unless_the_group_is_auto() {
        let mut e3 = stored();
        e3.insert("group".into(), json!("auto"));
        e3.insert("cross_group_retry".into(), json!(true));
        e3.insert("auto_groups".into(), json!(["default"]));
        let base = json!({"id": 7, "name": "ci", "expired_time": -1, "remain_quota": 500_000,
            "unlimited_quota": false, "model_limits_enabled": false, "model_limits": "",
            "allow_ips": ""});
        let mut away = base.clone();
        away["group"] = json!("vip");
        let (_, changes) = read(&Change::of(
            7,
            &e3,
            Some(&edit(EditKind::Update, away)),
            &[],
        ));
        assert_eq!(
            changes,
            json!([
                {"field": "auto_groups", "from": ["default"], "to": null},
                {"field": "cross_group_retry", "from": true, "to": false},
                {"field": "group", "from": "auto", "to": "vip"},
            ])
        );
        let mut stay = base;
        stay["group"] = json!("auto");
        stay["cross_group_retry"] = json!(true);
        let (_, changes) = read(&Change::of(
            7,
            &e3,
            Some(&edit(EditKind::Update, stay)),
            &[],
        ));
        assert_eq!(
            changes,
            json!([]),
            "auto_groups kept when the body does not name it"
        );
    }

    #[test]
    fn a_status_only_update_changes_status_alone() {
        let whole = edit(
            EditKind::StatusOnly,
            json!({"id": 7, "status": 2, "name": "other", "remain_quota": 1}),
        );
        let (_, changes) = read(&Change::of(7, &stored(), Some(&whole), &[]));
        assert_eq!(changes, json!([{"field": "status", "from": 1, "to": 2}]));
    }

    #[test]
    fn a_fork_field_left_out_of_a_full_update_is_zeroed_and_one_never_stored_is_no_change() {
        let mut fork = stored();
        fork.insert("billing_type".into(), json!("tiered"));
        let limits = Limits {
            extra_fields: vec!["billing_type".into()],
            require_complete_updates: false,
            ..Limits::default()
        };
        let update = Edit::parse(
            EditKind::Update,
            br#"{"id":7,"name":"ci","expired_time":-1,"remain_quota":500000,"allow_ips":"","mj_image_mode":"fast"}"#,
            &limits,
            NOW,
        )
        .unwrap();
        let (_, changes) = read(&Change::of(
            7,
            &fork,
            Some(&update),
            &["billing_type".into()],
        ));
        assert_eq!(
            changes,
            json!([{"field": "billing_type", "from": "tiered", "to": ""}])
        );
    }

    #[test]
    fn a_create_lists_every_field_it_sets_with_new_apis_defaults() {
        let create = edit(
            EditKind::Create,
            json!({"name": "new", "remain_quota": 100, "allow_ips": null}),
        );
        let Edit::Create(fields) = &create else {
            unreachable!()
        };
        let (before, changes) = read(&Change::created(fields, &[]));
        assert_eq!(before, Value::Null);
        assert_eq!(
            changes,
            json!([
                {"field": "allow_ips", "from": null, "to": ""},
                {"field": "cross_group_retry", "from": null, "to": false},
                {"field": "expired_time", "from": null, "to": -1},
                {"field": "group", "from": null, "to": ""},
                {"field": "model_limits", "from": null, "to": ""},
                {"field": "model_limits_enabled", "from": null, "to": false},
                {"field": "name", "from": null, "to": "new"},
                {"field": "remain_quota", "from": null, "to": 100},
                {"field": "status", "from": null, "to": 1},
                {"field": "unlimited_quota", "from": null, "to": false},
            ])
        );
    }
}
