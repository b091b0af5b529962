//! PATCH (SPEC §4.5): a partial update merged into the token as the upstream stores it, so the
//! one full `PUT` new-api needs carries every field, the untouched ones as they were.
//!
//! The merged whole is checked as a full update with the same rules, except that a value equal
//! to the stored one passes as it is (SPEC §4.2 "stored values": a used unlimited token's negative
//! `remain_quota`, a past `expired_time` new-api keeps). Nothing the upstream stores is dropped
//! silently: a stored field the gateway does not know refuses the PATCH unless
//! `upstream.extra_fields` lists it (then it is carried), and a stored token that lacks a field
//! the full update needs (an upstream outside the new-api family) is refused, naming it.

use serde_json::{Map, Value};

use super::edit::{
    full_update, BodyError, Fault, Faults, Limits, TokenFields, COMPLETE_UPDATE_FIELDS,
    READ_ONLY_FIELDS, TOKEN_FIELDS,
};
use super::fields::Status;
use crate::route::TokenId;

/// Stored fields a full `PUT` carries besides [`COMPLETE_UPDATE_FIELDS`], kept when present.
const KEPT_FIELDS: [&str; 4] = [
    "cross_group_retry",
    "auto_groups",
    "mj_image_mode",
    "mj_custom_proxy",
];

/// The full update that applies `patch` to the `stored` token `id`, checked as a whole; `status`
/// is left out (a full `PUT` never changes it: SPEC §4.5 sends it on its own).
pub fn merge(
    stored: &Map<String, Value>,
    id: TokenId,
    patch: &TokenFields,
    limits: &Limits,
    now: i64,
) -> Result<TokenFields, BodyError> {
    check_stored_fields(stored, id, patch, limits)?;
    let mut merged = Map::new();
    let carried = COMPLETE_UPDATE_FIELDS
        .iter()
        .chain(KEPT_FIELDS.iter())
        .copied()
        .chain(limits.extra_fields.iter().map(String::as_str));
    for field in carried {
        if let Some(value) = stored.get(field) {
            merged.insert(field.to_owned(), value.clone());
        }
    }
    // Never send the patch alone as a full update (new-api would zero every other field).
    let Ok(Value::Object(changes)) = serde_json::to_value(patch) else {
        return Err(refusal(
            "",
            "the PATCH could not be merged into the stored token; nothing was sent".into(),
        ));
    };
    for (field, value) in changes {
        if field != "status" {
            merged.insert(field, value);
        }
    }
    merged.insert("id".into(), Value::from(id.get()));
    if patch.status == Some(Status::ENABLED) {
        enable_would_fail(&merged, id, now)?;
    }
    full_update(merged, stored, limits, now)
}

/// Refuses a merge that would drop or invent what the upstream stores: fields of the stored
/// token the gateway does not know (unless `upstream.extra_fields` lists them), and fields of a
/// full update the stored token lacks (and the PATCH does not set).
fn check_stored_fields(
    stored: &Map<String, Value>,
    id: TokenId,
    patch: &TokenFields,
    limits: &Limits,
) -> Result<(), BodyError> {
    let mut faults: Vec<Fault> = stored
        .keys()
        .filter(|k| {
            !TOKEN_FIELDS.contains(&k.as_str())
                && !READ_ONLY_FIELDS.contains(&k.as_str())
                && !limits.extra_fields.contains(k)
        })
        .map(|field| Fault::invalid(
            field,
            format!("is stored in token {id} but is not a field the gateway knows: the full update a PATCH sends would leave it out and new-api would reset it. List it in upstream.extra_fields to carry it unchanged"),
        ))
        .collect();
    let lacking: Vec<&str> = COMPLETE_UPDATE_FIELDS
        .iter()
        .copied()
        .filter(|field| !stored.contains_key(*field) && !patch.has(field))
        .collect();
    if !lacking.is_empty() {
        let message = format!(
            "token {id} as the upstream stores it has no {}: the upstream does not store every field of new-api's full update, so a PATCH cannot rebuild one without inventing them (is the upstream new-api?)",
            lacking.join(", ")
        );
        faults.extend(
            lacking
                .iter()
                .map(|field| Fault::invalid(field, message.clone())),
        );
    }
    if faults.is_empty() {
        Ok(())
    } else {
        Err(BodyError::Fields(Faults(faults)))
    }
}

/// SPEC §4.5: new-api applies the full `PUT` and then refuses the status-only one that enables
/// a token still expired or exhausted; predictable, so refused before anything is written.
fn enable_would_fail(merged: &Map<String, Value>, id: TokenId, now: i64) -> Result<(), BodyError> {
    let number = |field: &str| merged.get(field).and_then(Value::as_i64);
    if let Some(expiry) = number("expired_time").filter(|e| *e != -1 && *e <= now) {
        return Err(refusal(
            "status",
            format!("token {id} would still be expired (expired_time {expiry} is not in the future) when this PATCH enables it, and new-api refuses to enable an expired token after writing the other fields: send a later expired_time (or -1) in the same PATCH, or leave status out"),
        ));
    }
    let unlimited = merged.get("unlimited_quota").and_then(Value::as_bool) == Some(true);
    if let Some(quota) = number("remain_quota").filter(|q| *q <= 0 && !unlimited) {
        return Err(refusal(
            "status",
            format!("token {id} would still be exhausted (remain_quota {quota}) when this PATCH enables it, and new-api refuses to enable an exhausted token after writing the other fields: send a remain_quota above 0 (or unlimited_quota true) in the same PATCH, or leave status out"),
        ));
    }
    Ok(())
}

fn refusal(field: &str, message: String) -> BodyError {
    BodyError::Fields(Faults(vec![Fault::invalid(field, message)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::edit::{Edit, EditKind};
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn stored() -> Map<String, Value> {
        let token = json!({"id": 7, "user_id": 1, "key": "abcd**********wxyz", "status": 1,
            "name": "ci", "created_time": 1, "accessed_time": 1, "expired_time": -1,
            "remain_quota": 500, "unlimited_quota": false, "model_limits_enabled": true,
            "model_limits": "o3", "allow_ips": "10.0.0.0/8", "used_quota": 3, "group": "team",
            "cross_group_retry": false, "DeletedAt": null});
        token.as_object().unwrap().clone()
    }

    fn patch(body: &str) -> TokenFields {
        match Edit::parse(EditKind::Patch, body.as_bytes(), &Limits::default(), NOW).unwrap() {
            Edit::Patch(fields) => fields,
            other => panic!("{other:?}"),
        }
    }

    fn id() -> TokenId {
        TokenId::parse("7").unwrap()
    }

    #[test]
    fn a_patch_changes_its_fields_and_keeps_every_other() {
        let merged = merge(
            &stored(),
            id(),
            &patch(r#"{"remain_quota": 900}"#),
            &Limits::default(),
            NOW,
        )
        .unwrap();
        let value = serde_json::to_value(&merged).unwrap();
        assert_eq!(
            value,
            json!({"id": 7, "name": "ci", "expired_time": -1, "remain_quota": 900,
                "unlimited_quota": false, "model_limits_enabled": true, "model_limits": "o3",
                "allow_ips": "10.0.0.0/8", "group": "team", "cross_group_retry": false})
        );
    }

    #[test]
    fn status_is_left_to_its_own_put() {
        let merged = merge(
            &stored(),
            id(),
            &patch(r#"{"status": 2, "name": "x"}"#),
            &Limits::default(),
            NOW,
        )
        .unwrap();
        assert_eq!(merged.status, None);
        assert_eq!(merged.name.unwrap().as_str(), "x");
    }

    #[test]
    fn an_empty_patch_and_an_id_in_the_body_are_refused() {
        let code = |body: &str| match Edit::parse(
            EditKind::Patch,
            body.as_bytes(),
            &Limits::default(),
            NOW,
        ) {
            Err(BodyError::Fields(faults)) => (faults.code(), faults.field().map(str::to_owned)),
            other => panic!("{other:?}"),
        };
        assert_eq!(code("{}"), ("invalid_field", None));
        assert_eq!(
            code(r#"{"id": 7, "name": "x"}"#),
            ("unknown_field", Some("id".into()))
        );
        // Read-only fields alone change nothing: still empty.
        assert_eq!(
            code(r#"{"key": "x", "used_quota": 1}"#),
            ("invalid_field", None)
        );
    }

    #[test]
    fn a_stored_value_passes_unchanged_and_a_changed_one_is_judged() {
        // A used unlimited token: new-api lowered its quota below 0; an expired one.
        let mut token = stored();
        token.insert("unlimited_quota".into(), json!(true));
        token.insert("remain_quota".into(), json!(-12345));
        token.insert("expired_time".into(), json!(1_000));
        let merged = merge(
            &token,
            id(),
            &patch(r#"{"name": "x"}"#),
            &Limits::default(),
            NOW,
        )
        .expect("stored values pass as they are");
        let value = serde_json::to_value(&merged).unwrap();
        assert_eq!(value["remain_quota"], -12345);
        assert_eq!(value["expired_time"], 1_000);
        assert_eq!(value["name"], "x");
        // Sent back as read, it passes too (SPEC §4.2: judged once the token is read).
        let merged = merge(
            &token,
            id(),
            &patch(r#"{"remain_quota": -12345, "expired_time": 1000}"#),
            &Limits::default(),
            NOW,
        )
        .expect("stored values sent back pass");
        assert_eq!(
            serde_json::to_value(&merged).unwrap()["remain_quota"],
            -12345
        );
        // A value the PATCH changes is judged by the rules.
        let Err(BodyError::Fields(faults)) = merge(
            &token,
            id(),
            &patch(r#"{"remain_quota": -5}"#),
            &Limits::default(),
            NOW,
        ) else {
            panic!("a negative quota is never set")
        };
        assert_eq!(faults.field(), Some("remain_quota"));
        // And a refused value beside another fault is reported with it, before any read.
        let Err(BodyError::Fields(faults)) = Edit::parse(
            EditKind::Patch,
            br#"{"remain_quota": -5, "status": 9}"#,
            &Limits::default(),
            NOW,
        ) else {
            panic!("status 9 is never set")
        };
        assert_eq!(faults.field(), Some("remain_quota"));
        assert_eq!(faults.0.len(), 2);
    }

    #[test]
    fn unknown_stored_fields_refuse_unless_listed_and_listed_ones_are_carried() {
        let mut token = stored();
        token.insert("billing_type".into(), json!("tokens"));
        let Err(BodyError::Fields(faults)) = merge(
            &token,
            id(),
            &patch(r#"{"name": "x"}"#),
            &Limits::default(),
            NOW,
        ) else {
            panic!("an unknown stored field refuses the PATCH")
        };
        assert_eq!(faults.field(), Some("billing_type"));
        assert!(faults.0[0].message.contains("extra_fields"));
        let limits = Limits {
            extra_fields: vec!["billing_type".into()],
            ..Limits::default()
        };
        let merged = merge(&token, id(), &patch(r#"{"name": "x"}"#), &limits, NOW).unwrap();
        assert_eq!(
            serde_json::to_value(&merged).unwrap()["billing_type"],
            "tokens"
        );
    }

    #[test]
    fn a_token_lacking_full_update_fields_is_refused_naming_them() {
        let mut token = stored();
        for field in ["model_limits", "allow_ips", "group", "model_limits_enabled"] {
            token.remove(field);
        }
        let Err(BodyError::Fields(faults)) = merge(
            &token,
            id(),
            &patch(r#"{"name": "x"}"#),
            &Limits::default(),
            NOW,
        ) else {
            panic!("a one-api-shaped token cannot be rebuilt")
        };
        assert_eq!(faults.code(), "invalid_field");
        let message = &faults.0[0].message;
        assert!(
            message.contains("allow_ips") && message.contains("group"),
            "{message}"
        );
        assert!(
            !message.contains("PATCH /api/token"),
            "no advice to use PATCH: {message}"
        );
    }

    #[test]
    fn enabling_what_new_api_would_refuse_is_refused_before_anything_is_written() {
        let mut expired = stored();
        expired.insert("expired_time".into(), json!(NOW - 1));
        expired.insert("status".into(), json!(3));
        let refused = |token: &Map<String, Value>, body: &str| match merge(
            token,
            id(),
            &patch(body),
            &Limits::default(),
            NOW,
        ) {
            Err(BodyError::Fields(faults)) => faults.field().map(str::to_owned),
            Ok(_) => None,
            Err(other) => panic!("{other:?}"),
        };
        assert_eq!(
            refused(&expired, r#"{"status": 1, "group": "vip"}"#).as_deref(),
            Some("status")
        );
        assert_eq!(
            refused(
                &expired,
                &format!(r#"{{"status": 1, "expired_time": {}}}"#, NOW + 60)
            ),
            None,
            "a new expiry in the same PATCH"
        );
        let mut exhausted = stored();
        exhausted.insert("remain_quota".into(), json!(0));
        assert_eq!(
            refused(&exhausted, r#"{"status": 1, "name": "y"}"#).as_deref(),
            Some("status")
        );
        assert_eq!(
            refused(&exhausted, r#"{"status": 1, "remain_quota": 10}"#),
            None
        );
        assert_eq!(
            refused(&exhausted, r#"{"status": 2, "name": "y"}"#),
            None,
            "disabling"
        );
    }
}
