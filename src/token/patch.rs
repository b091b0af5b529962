//! PATCH (SPEC §4.5): a partial update merged into the token as the upstream stores it, so the
//! one full `PUT` new-api needs carries every field, the untouched ones as they were.
//!
//! The merged whole is checked as a full update with the same rules, so a stored value that breaks
//! a rule (a past `expired_time`, an `allow_ips` entry with a comma) is reported, naming it as the
//! stored value, rather than written back unnoticed.

use serde_json::{Map, Value};

use super::edit::{
    full_update, BodyError, Fault, Faults, Limits, TokenFields, COMPLETE_UPDATE_FIELDS,
};
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
        return Err(BodyError::Fields(Faults(vec![Fault::invalid(
            "",
            "the PATCH could not be merged into the stored token; nothing was sent".into(),
        )])));
    };
    let changed: Vec<String> = changes.keys().cloned().collect();
    for (field, value) in changes {
        if field != "status" {
            merged.insert(field, value);
        }
    }
    merged.insert("id".into(), Value::from(id.get()));
    match full_update(merged, limits, now) {
        Ok(fields) => Ok(fields),
        Err(BodyError::Fields(mut faults)) => {
            for fault in &mut faults.0 {
                if !changed.contains(&fault.field) && !fault.message.is_empty() {
                    fault.message = format!(
                        "{} (this is the token's stored value: send `{}` in the same PATCH or batch update to replace it)",
                        fault.message, fault.field
                    );
                }
            }
            Err(BodyError::Fields(faults))
        }
        Err(other) => Err(other),
    }
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
    fn a_stored_value_that_breaks_a_rule_is_named_as_stored() {
        let mut token = stored();
        token.insert("expired_time".into(), json!(1_000));
        let Err(BodyError::Fields(faults)) = merge(
            &token,
            id(),
            &patch(r#"{"name": "x"}"#),
            &Limits::default(),
            NOW,
        ) else {
            panic!("a past expiry is refused")
        };
        assert_eq!(faults.field(), Some("expired_time"));
        assert!(
            faults.0[0].message.contains("stored value"),
            "{}",
            faults.0[0].message
        );
        // Sending a new expiry with the PATCH fixes it.
        let fixed = patch(&format!(r#"{{"name": "x", "expired_time": {}}}"#, NOW + 60));
        assert!(merge(&token, id(), &fixed, &Limits::default(), NOW).is_ok());
    }
}
