//! The body of `PUT /api/token/batch` (SPEC §4.6): which tokens, which fields to apply to each,
//! and the fields the body carries without naming them.
//!
//! A field is applied only if `update_fields` names it. The kkiai document's own example sends
//! values it does not name, so those are accepted, never applied, and listed as ignored: a caller
//! who forgot to name a field is told, and nothing is applied that the caller did not select.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::edit::{
    closest, id_list, Fault, FaultCode, Limits, TokenFields, READ_ONLY_FIELDS, TOKEN_FIELDS,
};
use super::fields::Rules;
use super::json;
use crate::route::TokenId;

/// `upstream.batch_update`: how a batch update reaches new-api.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchMode {
    /// Read, merge and write each token, as a PATCH does: works on every new-api.
    #[default]
    Fanout,
    /// One request to an upstream that serves `PUT /api/token/batch` itself (kkiai-style forks).
    Native,
}

/// Fork fields that new-api does not store: a fan-out's read-merge-write cannot apply them.
const UNSTORED_FIELDS: [&str; 2] = ["mj_image_mode", "mj_custom_proxy"];

/// A checked batch update.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchUpdate {
    /// The tokens to update: 1 to `limits.max_batch`, distinct, in the order sent.
    pub ids: Vec<TokenId>,
    /// `ids` exactly as the caller sent it (an array or a comma string): native mode forwards it.
    pub ids_sent: Value,
    /// The field names to apply, in the order sent.
    pub update_fields: Vec<String>,
    /// The named fields, each checked by its rule; nothing else.
    pub fields: TokenFields,
    /// Fields present in the body but not named: not applied, reported to the caller.
    pub ignored: Vec<String>,
}

impl BatchUpdate {
    /// The body native mode forwards, and the audit trail records: `ids` as sent,
    /// `update_fields`, and the named fields only.
    pub fn to_value(&self) -> Value {
        let mut body = match serde_json::to_value(&self.fields) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        body.insert("ids".into(), self.ids_sent.clone());
        body.insert(
            "update_fields".into(),
            Value::from(self.update_fields.clone()),
        );
        Value::Object(body)
    }
}

/// Reads a batch update body; every fault goes to `faults`.
pub(super) fn parse(
    mut map: Map<String, Value>,
    limits: &Limits,
    rules: &Rules,
    faults: &mut Vec<Fault>,
) -> BatchUpdate {
    let ids_sent = map.remove("ids");
    let ids = id_list(ids_sent.clone(), true, limits, faults);
    let update_fields = update_fields(map.remove("update_fields"), limits, faults);
    let mut fields = TokenFields::default();
    let mut ignored = Vec::new();
    for (key, value) in map {
        if key == "id" {
            faults.push(Fault {
                field: key,
                code: FaultCode::UnknownField,
                message: "is not a field of a batch update: list the tokens in `ids`".into(),
            });
            continue;
        }
        let known = TOKEN_FIELDS.contains(&key.as_str())
            || READ_ONLY_FIELDS.contains(&key.as_str())
            || limits.extra_fields.contains(&key);
        if !known {
            let mut names: Vec<&str> = vec!["ids", "update_fields"];
            names.extend(TOKEN_FIELDS.iter().skip(1));
            faults.push(Fault::unknown(&key, &names));
        } else if !update_fields.contains(&key) {
            ignored.push(key);
        } else if limits.batch_update == BatchMode::Fanout
            && UNSTORED_FIELDS.contains(&key.as_str())
        {
            faults.push(Fault::invalid(
                &key,
                "cannot be applied by a fan-out batch: new-api does not store it, so reading and writing each token back would drop it. It needs upstream.batch_update = \"native\", on an upstream that serves PUT /api/token/batch itself".into(),
            ));
        } else {
            match fields.set(&key, &value, rules) {
                Ok(true) => {}
                Err(message) => faults.push(Fault::invalid(&key, message)),
                // An `upstream.extra_fields` field, passed on unchecked.
                Ok(false) => {
                    fields.extra.insert(key, value);
                }
            }
        }
    }
    for name in &update_fields {
        if !fields.has(name) && !faults.iter().any(|f| &f.field == name) {
            faults.push(Fault::invalid(
                name,
                "is named in update_fields but has no value in the body".into(),
            ));
        }
    }
    BatchUpdate {
        ids,
        ids_sent: ids_sent.unwrap_or(Value::Null),
        update_fields,
        fields,
        ignored,
    }
}

/// Reads `update_fields`: a non-empty array of distinct editable field names.
fn update_fields(value: Option<Value>, limits: &Limits, faults: &mut Vec<Fault>) -> Vec<String> {
    let mut refuse = |message: String| {
        faults.push(Fault::invalid("update_fields", message));
        Vec::new()
    };
    let items =
        match value {
            None => return refuse(
                "is required: name the fields to apply, for example [\"group\", \"remain_quota\"]"
                    .into(),
            ),
            Some(Value::Array(items)) if items.is_empty() => {
                return refuse("must name at least one field".into())
            }
            Some(Value::Array(items)) => items,
            Some(other) => {
                return refuse(format!(
                    "must be an array of field names, not {}",
                    json::kind(&other)
                ))
            }
        };
    let editable: Vec<&str> = TOKEN_FIELDS
        .iter()
        .skip(1) // `id`: the tokens are in `ids`
        .copied()
        .chain(limits.extra_fields.iter().map(String::as_str))
        .collect();
    let mut names: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(name) = item else {
            return refuse(format!(
                "every entry must be a field name (a string), not {}",
                json::kind(&item)
            ));
        };
        if names.contains(&name) {
            return refuse(format!("names `{}` twice", name.escape_debug()));
        }
        if !editable.contains(&name.as_str()) {
            let hint = closest(&name, &editable)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            return refuse(format!(
                "names `{}`, which is not an editable field{hint}",
                name.escape_debug()
            ));
        }
        names.push(name);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::edit::{BodyError, Edit, EditKind};
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn parse(body: Value, mode: BatchMode) -> Result<BatchUpdate, Vec<(String, &'static str)>> {
        let limits = Limits {
            max_batch: 3,
            batch_update: mode,
            extra_fields: vec!["billing_type".into()],
            ..Limits::default()
        };
        match Edit::parse(
            EditKind::BatchUpdate,
            body.to_string().as_bytes(),
            &limits,
            NOW,
        ) {
            Ok(Edit::BatchUpdate(batch)) => Ok(batch),
            Err(BodyError::Fields(faults)) => Err(faults
                .0
                .into_iter()
                .map(|f| (f.field, f.code.as_str()))
                .collect()),
            other => panic!("{other:?}"),
        }
    }

    fn ids(batch: &BatchUpdate) -> Vec<u64> {
        batch.ids.iter().map(|id| id.get()).collect()
    }

    #[test]
    fn ids_as_an_array_or_a_comma_string_are_the_same() {
        let array = parse(
            json!({"ids": [873, 869], "update_fields": ["group"], "group": "vip"}),
            BatchMode::Fanout,
        )
        .unwrap();
        let string = parse(
            json!({"ids": " 873 , 869", "update_fields": ["group"], "group": "vip"}),
            BatchMode::Fanout,
        )
        .unwrap();
        assert_eq!(ids(&array), [873, 869]);
        assert_eq!(ids(&array), ids(&string));
        assert_eq!(array.fields, string.fields);
        // Native mode forwards `ids` exactly as sent.
        assert_eq!(string.to_value()["ids"], json!(" 873 , 869"));
        for bad in ["", "1,,2", "1;2", "1,1", "1,2,3,4", "01", "-1", "1 2"] {
            let faults = parse(
                json!({"ids": bad, "update_fields": ["group"], "group": "vip"}),
                BatchMode::Fanout,
            )
            .unwrap_err();
            assert_eq!(faults, [("ids".to_string(), "invalid_field")], "{bad:?}");
        }
    }

    #[test]
    fn only_named_fields_are_applied_and_the_rest_are_reported() {
        let batch = parse(
            json!({"ids": [1], "update_fields": ["remain_quota"], "remain_quota": 5,
                "group": "vip", "key": "sk-x"}),
            BatchMode::Fanout,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&batch.fields).unwrap(),
            json!({"remain_quota": 5})
        );
        assert_eq!(batch.ignored, ["group", "key"]);
        assert_eq!(
            batch.to_value(),
            json!({"ids": [1], "update_fields": ["remain_quota"], "remain_quota": 5})
        );
    }

    #[test]
    fn update_fields_is_checked() {
        let fault = |update_fields: Value| {
            parse(
                json!({"ids": [1], "update_fields": update_fields, "group": "vip"}),
                BatchMode::Fanout,
            )
            .unwrap_err()
        };
        for bad in [
            json!([]),
            json!("group"),
            json!(["group", "group"]),
            json!([1]),
            json!(["id"]),
            json!(["used_quota"]),
        ] {
            assert_eq!(
                fault(bad.clone())[0],
                ("update_fields".to_string(), "invalid_field"),
                "{bad}"
            );
        }
        // Named but absent, and named but invalid.
        assert_eq!(
            fault(json!(["group", "name"])),
            [("name".to_string(), "invalid_field")]
        );
        assert_eq!(
            parse(
                json!({"ids": [1], "update_fields": ["expired_time"], "expired_time": 5}),
                BatchMode::Fanout
            )
            .unwrap_err(),
            [("expired_time".to_string(), "invalid_field")]
        );
        // Unknown keys and `id` are faults, named or not.
        assert_eq!(
            parse(
                json!({"ids": [1], "update_fields": ["group"], "group": "a", "gruop": "b", "id": 1}),
                BatchMode::Fanout
            )
            .unwrap_err(),
            [
                ("gruop".to_string(), "unknown_field"),
                ("id".to_string(), "unknown_field")
            ]
        );
        // Extra fields of a fork can be named.
        assert!(parse(
            json!({"ids": [1], "update_fields": ["billing_type"], "billing_type": 2}),
            BatchMode::Fanout
        )
        .is_ok());
    }

    #[test]
    fn unstored_fields_need_native_mode() {
        let body = json!({"ids": [1], "update_fields": ["mj_image_mode"], "mj_image_mode": "fast"});
        let faults = parse(body.clone(), BatchMode::Fanout).unwrap_err();
        assert_eq!(faults, [("mj_image_mode".to_string(), "invalid_field")]);
        let native = parse(body, BatchMode::Native).unwrap();
        assert_eq!(native.to_value()["mj_image_mode"], json!("fast"));
        // Present but not named, they are only ignored.
        let batch = parse(
            json!({"ids": [1], "update_fields": ["group"], "group": "a", "mj_image_mode": "fast"}),
            BatchMode::Fanout,
        )
        .unwrap();
        assert_eq!(batch.ignored, ["mj_image_mode"]);
    }
}
