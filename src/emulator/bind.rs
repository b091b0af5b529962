//! Binding a request body into new-api's structs the way Go's `encoding/json` does.
//!
//! Keys match field names exactly first, then case-insensitively; unknown keys are ignored; each
//! occurrence of a key is applied in order, so the last duplicate wins; `null` leaves a value
//! field untouched and sets a pointer or slice to nil; a type mismatch does not stop decoding, but
//! the first one is reported as `json: cannot unmarshal string into Go struct field
//! Token.remain_quota of type int`. `DeletedAt` is accepted and ignored (Go would parse it as a
//! time and could refuse it).

use super::config::Era;
use super::json::{decode, GoJson};

/// The `model.Token` fields a request can carry (plus E3's `auto_groups`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TokenInput {
    pub(crate) id: i64,
    pub(crate) user_id: i64,
    pub(crate) key: String,
    pub(crate) status: i64,
    pub(crate) name: String,
    pub(crate) created_time: i64,
    pub(crate) accessed_time: i64,
    pub(crate) expired_time: i64,
    pub(crate) remain_quota: i64,
    pub(crate) unlimited_quota: bool,
    pub(crate) model_limits_enabled: bool,
    pub(crate) model_limits: String,
    pub(crate) allow_ips: Option<String>,
    pub(crate) used_quota: i64,
    pub(crate) group: String,
    pub(crate) cross_group_retry: bool,
    /// The fork field of
    /// [`EmulatorConfig::fork_billing_type`](super::EmulatorConfig::fork_billing_type).
    pub(crate) billing_type: String,
    /// E3 only.
    pub(crate) auto_groups: Option<Vec<String>>,
    /// Whether the body named `auto_groups` at all (E3 update keeps the stored list otherwise).
    pub(crate) auto_groups_present: bool,
}

/// Collects the first type error, as Go's `d.saveError`.
struct Errors {
    first: Option<String>,
    structure: &'static str,
}

impl Errors {
    fn mismatch(&mut self, value: &GoJson, field: &str, go_type: &str) {
        if self.first.is_some() {
            return;
        }
        let what = match value {
            GoJson::Number(n) if go_type.starts_with("int") => format!("number {n}"),
            v => v.kind().to_owned(),
        };
        self.first = Some(format!(
            "json: cannot unmarshal {what} into Go struct field {}.{field} of type {go_type}",
            self.structure
        ));
    }

    fn int(&mut self, v: &GoJson, field: &str, go_type: &str, slot: &mut i64) {
        match v {
            GoJson::Null => {}
            GoJson::Number(n) => match parse_go_int(n) {
                Some(i) => *slot = i,
                None => self.mismatch(v, field, go_type),
            },
            _ => self.mismatch(v, field, go_type),
        }
    }

    fn boolean(&mut self, v: &GoJson, field: &str, slot: &mut bool) {
        match v {
            GoJson::Null => {}
            GoJson::Bool(b) => *slot = *b,
            _ => self.mismatch(v, field, "bool"),
        }
    }

    fn string(&mut self, v: &GoJson, field: &str, slot: &mut String) {
        match v {
            GoJson::Null => {}
            GoJson::Str(s) => *slot = s.clone(),
            _ => self.mismatch(v, field, "string"),
        }
    }

    fn opt_string(&mut self, v: &GoJson, field: &str, slot: &mut Option<String>) {
        match v {
            GoJson::Null => *slot = None,
            GoJson::Str(s) => *slot = Some(s.clone()),
            _ => self.mismatch(v, field, "string"),
        }
    }

    fn strings(&mut self, v: &GoJson, field: &str, slot: &mut Option<Vec<String>>) {
        match v {
            GoJson::Null => *slot = None,
            GoJson::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let mut s = String::new();
                    self.string(item, field, &mut s);
                    out.push(s);
                }
                *slot = Some(out);
            }
            _ => self.mismatch(v, field, "[]string"),
        }
    }

    fn finish<T>(self, value: T) -> Result<T, String> {
        match self.first {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }
}

/// `strconv.ParseInt(s, 10, 64)`: no fraction, no exponent.
fn parse_go_int(n: &str) -> Option<i64> {
    super::gostr::atoi_ok(n).filter(|_| !n.starts_with('+'))
}

/// Go's field lookup: exact name first, then ASCII case-insensitive.
fn field_name<'a>(key: &str, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .find(|n| **n == key)
        .or_else(|| names.iter().find(|n| n.eq_ignore_ascii_case(key)))
        .copied()
}

/// The top-level members, or Go's error for a body that is not an object.
fn members(body: &[u8], go_type: &str) -> Result<Vec<(String, GoJson)>, String> {
    match decode(body)? {
        GoJson::Object(m) => Ok(m),
        GoJson::Null => Ok(Vec::new()),
        other => Err(format!(
            "json: cannot unmarshal {} into Go value of type {go_type}",
            other.kind()
        )),
    }
}

const TOKEN_FIELDS: &[&str] = &[
    "id",
    "user_id",
    "key",
    "status",
    "name",
    "created_time",
    "accessed_time",
    "expired_time",
    "remain_quota",
    "unlimited_quota",
    "model_limits_enabled",
    "model_limits",
    "allow_ips",
    "used_quota",
    "group",
    "cross_group_retry",
    "billing_type",
    "DeletedAt",
    "auto_groups",
];

/// `c.ShouldBindJSON(&token)` for create and update. `billing_type` is a field only when the
/// fork switch is on (otherwise Go would ignore the key as unknown), `auto_groups` only in E3.
pub(crate) fn bind_token(body: &[u8], era: Era, billing_type: bool) -> Result<TokenInput, String> {
    let fields: Vec<&str> = TOKEN_FIELDS
        .iter()
        .copied()
        .filter(|name| match *name {
            "billing_type" => billing_type,
            "auto_groups" => era == Era::E3,
            _ => true,
        })
        .collect();
    let mut t = TokenInput::default();
    let mut e = Errors {
        first: None,
        structure: "Token",
    };
    for (key, v) in members(body, "model.Token")? {
        let Some(name) = field_name(&key, &fields) else {
            continue;
        };
        match name {
            "id" => e.int(&v, name, "int", &mut t.id),
            "user_id" => e.int(&v, name, "int", &mut t.user_id),
            "key" => e.string(&v, name, &mut t.key),
            "status" => e.int(&v, name, "int", &mut t.status),
            "name" => e.string(&v, name, &mut t.name),
            "created_time" => e.int(&v, name, "int64", &mut t.created_time),
            "accessed_time" => e.int(&v, name, "int64", &mut t.accessed_time),
            "expired_time" => e.int(&v, name, "int64", &mut t.expired_time),
            "remain_quota" => e.int(&v, name, "int", &mut t.remain_quota),
            "unlimited_quota" => e.boolean(&v, name, &mut t.unlimited_quota),
            "model_limits_enabled" => e.boolean(&v, name, &mut t.model_limits_enabled),
            "model_limits" => e.string(&v, name, &mut t.model_limits),
            "allow_ips" => e.opt_string(&v, name, &mut t.allow_ips),
            "used_quota" => e.int(&v, name, "int", &mut t.used_quota),
            "group" => e.string(&v, name, &mut t.group),
            "cross_group_retry" => e.boolean(&v, name, &mut t.cross_group_retry),
            "billing_type" => e.string(&v, name, &mut t.billing_type),
            "auto_groups" => {
                t.auto_groups_present = true;
                e.strings(&v, name, &mut t.auto_groups);
            }
            _ => {}
        }
    }
    e.finish(t)
}

/// `c.ShouldBindJSON(&TokenBatch{})`: the `ids` list (any error is the caller's invalid_params).
pub(crate) fn bind_ids(body: &[u8]) -> Result<Vec<i64>, String> {
    let mut ids = Vec::new();
    let mut e = Errors {
        first: None,
        structure: "TokenBatch",
    };
    for (key, v) in members(body, "controller.TokenBatch")? {
        if field_name(&key, &["ids"]).is_none() {
            continue;
        }
        match &v {
            GoJson::Null => ids.clear(),
            GoJson::Array(items) => {
                ids = items
                    .iter()
                    .map(|item| {
                        let mut id = 0;
                        e.int(item, "ids", "int", &mut id);
                        id
                    })
                    .collect();
            }
            other => e.mismatch(other, "ids", "[]int"),
        }
    }
    e.finish(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_like_go() {
        let t = bind_token(
            br#"{"NAME":"a","name":"b","x":[1,{}],"remain_quota":5}"#,
            Era::E2,
            false,
        )
        .unwrap();
        assert_eq!(t.name, "b");
        assert_eq!(t.remain_quota, 5);
        assert_eq!(
            bind_token(br#"{"remain_quota":"5"}"#, Era::E2, false).unwrap_err(),
            "json: cannot unmarshal string into Go struct field Token.remain_quota of type int"
        );
        assert_eq!(
            bind_token(br#"{"expired_time":1.5}"#, Era::E2, false).unwrap_err(),
            "json: cannot unmarshal number 1.5 into Go struct field Token.expired_time of type int64"
        );
        assert_eq!(
            bind_token(br#"{"name":5}"#, Era::E2, false).unwrap_err(),
            "json: cannot unmarshal number into Go struct field Token.name of type string"
        );
        assert_eq!(
            bind_token(b"[]", Era::E2, false).unwrap_err(),
            "json: cannot unmarshal array into Go value of type model.Token"
        );
        // The fork field binds like the other strings, and only when switched on.
        let t = bind_token(br#"{"Billing_Type":"tiered"}"#, Era::E2, true).unwrap();
        assert_eq!(t.billing_type, "tiered");
        let t = bind_token(br#"{"billing_type":"tiered"}"#, Era::E2, false).unwrap();
        assert_eq!(t.billing_type, "");
        assert_eq!(
            bind_token(br#"{"billing_type":1}"#, Era::E3, true).unwrap_err(),
            "json: cannot unmarshal number into Go struct field Token.billing_type of type string"
        );
        assert!(bind_token(br#"{"billing_type":1}"#, Era::E3, false).is_ok());
        assert_eq!(bind_ids(br#"{"ids":[1,2,2]}"#).unwrap(), vec![1, 2, 2]);
        assert!(bind_ids(br#"{"ids":["1"]}"#).is_err());
    }
}
