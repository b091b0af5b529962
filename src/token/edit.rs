//! The body of each write operation as a typed edit (SPEC §4.1, §4.3, §4.4): parsed once,
//! every fault collected, and forwarded as the checked edit (never as the bytes the caller sent).
//!
//! The read-only fields a `GET` returns are accepted and dropped, so a caller can `GET` a token,
//! edit it and `PUT` it back; fields named in `upstream.extra_fields` pass through unchecked;
//! anything else is an unknown field.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use super::batch::{self, BatchMode, BatchUpdate};
use super::fields::{
    self, AllowIps, AutoGroups, Expiry, Groups, ModelLimits, Name, ProxyUrl, Quota, Refusal, Rules,
    Status, Text,
};
use super::json::{self, JsonError};
use crate::route::TokenId;

/// The fields a `GET` returns that nobody can set: accepted in a body and not forwarded.
pub const READ_ONLY_FIELDS: [&str; 7] = [
    "key",
    "user_id",
    "created_time",
    "accessed_time",
    "used_quota",
    "DeletedAt",
    "username",
];

/// The fields a full update must carry, since new-api writes the zero value of any it lacks.
pub const COMPLETE_UPDATE_FIELDS: [&str; 8] = [
    "name",
    "expired_time",
    "remain_quota",
    "unlimited_quota",
    "model_limits_enabled",
    "model_limits",
    "allow_ips",
    "group",
];

/// Every field a token edit may carry (SPEC §4.2).
pub const TOKEN_FIELDS: [&str; 14] = [
    "id",
    "name",
    "remain_quota",
    "unlimited_quota",
    "expired_time",
    "model_limits_enabled",
    "model_limits",
    "allow_ips",
    "group",
    "cross_group_retry",
    "auto_groups",
    "status",
    "mj_image_mode",
    "mj_custom_proxy",
];

/// What the body rules depend on besides the body and the time.
#[derive(Clone, Debug)]
pub struct Limits {
    /// `limits.name_max_bytes`.
    pub name_max_bytes: usize,
    /// `limits.max_batch`: the most ids in one batch.
    pub max_batch: usize,
    /// `limits.require_complete_updates`.
    pub require_complete_updates: bool,
    /// `upstream.extra_fields`: fork fields passed through unchecked.
    pub extra_fields: Vec<String>,
    /// `upstream.batch_update`: which fields a batch update can apply depends on it.
    pub batch_update: BatchMode,
}

impl Default for Limits {
    /// The defaults of SPEC §10 (`[limits]`), with no extra fields.
    fn default() -> Self {
        Limits {
            name_max_bytes: 50,
            max_batch: 100,
            require_complete_updates: true,
            extra_fields: Vec::new(),
            batch_update: BatchMode::Fanout,
        }
    }
}

/// Which body shape an operation takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EditKind {
    /// `POST /api/token/`
    Create,
    /// `PUT /api/token/`
    Update,
    /// `PUT /api/token/?status_only=true`
    StatusOnly,
    /// `{"ids": [..]}`: `POST /api/token/batch` and `POST /api/token/batch/keys`.
    Ids,
    /// `PATCH /api/token/{id}`: a non-empty subset of the editable fields, no `id`.
    Patch,
    /// `PUT /api/token/batch`: `ids`, `update_fields` and the fields they name.
    BatchUpdate,
}

/// The fields of one token edit, each present or not, every one checked.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TokenFields {
    /// `id`
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_id"
    )]
    pub id: Option<TokenId>,
    /// `name`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    /// `remain_quota`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remain_quota: Option<Quota>,
    /// `unlimited_quota`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unlimited_quota: Option<bool>,
    /// `expired_time`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired_time: Option<Expiry>,
    /// `model_limits_enabled`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_limits_enabled: Option<bool>,
    /// `model_limits`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_limits: Option<ModelLimits>,
    /// `allow_ips` (present as null is kept: it writes NULL upstream)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_ips: Option<AllowIps>,
    /// `group`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Groups>,
    /// `cross_group_retry`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_group_retry: Option<bool>,
    /// `auto_groups`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_groups: Option<AutoGroups>,
    /// `status`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// `mj_image_mode` (forks)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mj_image_mode: Option<Text>,
    /// `mj_custom_proxy` (forks)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mj_custom_proxy: Option<ProxyUrl>,
    /// `upstream.extra_fields`, as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// Values equal to the token as the upstream stores it that the rules would refuse (SPEC §4.2
    /// "stored values": new-api wrote them itself, as a used unlimited token's negative
    /// `remain_quota`): carried unchanged.
    #[serde(flatten)]
    pub carried: Map<String, Value>,
    /// Values of a full or status-only update that only the stored token can judge: each passes
    /// if the stored token holds the same value ([`Edit::confirm`], under the token's lock).
    #[serde(skip)]
    pub unconfirmed: Vec<Unconfirmed>,
}

/// A value that passes only if the stored token holds the same one, with the fault to report if
/// it does not.
#[derive(Clone, Debug, PartialEq)]
pub struct Unconfirmed {
    /// The field.
    pub field: String,
    /// The value sent.
    pub value: Value,
    /// Why it fails when the stored value differs.
    pub fault: Fault,
}

/// The token as the upstream stores it, when a value that breaks a rule may be a stored one.
#[derive(Clone, Copy, Debug)]
pub(super) enum Stored<'a> {
    /// No stored token applies (a create, a batch's fields).
    None,
    /// Known: a PATCH or a batch read it; values equal to it are carried.
    Known(&'a Map<String, Value>),
    /// Not read yet (a full or status-only update, a PATCH before its merge): such values wait
    /// for the read.
    Later,
}

fn serialize_id<S: serde::Serializer>(
    id: &Option<TokenId>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => serializer.serialize_u64(id.get()),
        None => serializer.serialize_none(),
    }
}

impl TokenFields {
    /// Whether the named field is present.
    pub(super) fn has(&self, field: &str) -> bool {
        if self.carried.contains_key(field) {
            return true;
        }
        match field {
            "id" => self.id.is_some(),
            "name" => self.name.is_some(),
            "remain_quota" => self.remain_quota.is_some(),
            "unlimited_quota" => self.unlimited_quota.is_some(),
            "expired_time" => self.expired_time.is_some(),
            "model_limits_enabled" => self.model_limits_enabled.is_some(),
            "model_limits" => self.model_limits.is_some(),
            "allow_ips" => self.allow_ips.is_some(),
            "group" => self.group.is_some(),
            "cross_group_retry" => self.cross_group_retry.is_some(),
            "auto_groups" => self.auto_groups.is_some(),
            "status" => self.status.is_some(),
            "mj_image_mode" => self.mj_image_mode.is_some(),
            "mj_custom_proxy" => self.mj_custom_proxy.is_some(),
            other => self.extra.contains_key(other),
        }
    }

    /// Removes a field set by [`TokenFields::set`] (a value that is then carried or refused).
    fn set_none(&mut self, key: &str) {
        match key {
            "status" => self.status = None,
            "cross_group_retry" => self.cross_group_retry = None,
            "auto_groups" => self.auto_groups = None,
            _ => {}
        }
    }

    /// Checks one field into place; `Ok(false)` when `key` is not a token field.
    pub(super) fn set(&mut self, key: &str, value: &Value, rules: &Rules) -> Result<bool, Refusal> {
        fn put<T>(slot: &mut Option<T>, parsed: Result<T, Refusal>) -> Result<bool, Refusal> {
            *slot = Some(parsed?);
            Ok(true)
        }
        match key {
            "id" => put(&mut self.id, fields::token_id(value)),
            "name" => put(&mut self.name, Name::parse(value, rules)),
            "remain_quota" => put(&mut self.remain_quota, Quota::parse(value)),
            "unlimited_quota" => put(&mut self.unlimited_quota, fields::boolean(value)),
            "expired_time" => put(&mut self.expired_time, Expiry::parse(value, rules)),
            "model_limits_enabled" => put(&mut self.model_limits_enabled, fields::boolean(value)),
            "model_limits" => put(&mut self.model_limits, ModelLimits::parse(value)),
            "allow_ips" => put(&mut self.allow_ips, AllowIps::parse(value)),
            "group" => put(&mut self.group, Groups::parse(value)),
            "cross_group_retry" => put(&mut self.cross_group_retry, fields::boolean(value)),
            "auto_groups" => put(&mut self.auto_groups, AutoGroups::parse(value)),
            "status" => put(&mut self.status, Status::parse(value)),
            "mj_image_mode" => put(&mut self.mj_image_mode, Text::parse(value)),
            "mj_custom_proxy" => put(&mut self.mj_custom_proxy, ProxyUrl::parse(value)),
            _ => Ok(false),
        }
    }
}

/// A checked write body.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// Create a token (`name` present).
    Create(TokenFields),
    /// A full update (`id` present and, unless turned off, every field of
    /// [`COMPLETE_UPDATE_FIELDS`]).
    Update(TokenFields),
    /// A status-only update (`id` and `status` present).
    StatusOnly(TokenFields),
    /// The ids of a batch: 1 to `limits.max_batch`, distinct.
    Ids(Vec<TokenId>),
    /// A partial update: the fields to change (the id is in the path).
    Patch(TokenFields),
    /// A batch update: the named fields, to apply to every id.
    BatchUpdate(BatchUpdate),
}

impl Edit {
    /// Parses and checks a body of `kind`; `now` is the Unix time in seconds.
    pub fn parse(
        kind: EditKind,
        body: &[u8],
        limits: &Limits,
        now: i64,
    ) -> Result<Edit, BodyError> {
        let rules = Rules {
            name_max_bytes: limits.name_max_bytes,
            now,
        };
        let mut faults = Vec::new();
        let edit = match kind {
            EditKind::Ids => {
                let map = json::parse_object(body).map_err(BodyError::Json)?;
                Edit::Ids(ids(map, limits, &mut faults))
            }
            EditKind::BatchUpdate => {
                let map = json::parse_object(body).map_err(BodyError::Json)?;
                Edit::BatchUpdate(batch::parse(map, limits, &rules, &mut faults))
            }
            _ => {
                let stored = match kind {
                    // A PATCH's held-back values are judged by its merge, against the token read.
                    EditKind::Update | EditKind::StatusOnly | EditKind::Patch => Stored::Later,
                    _ => Stored::None,
                };
                // Each member is checked into its field as it is read: no map of the body.
                let mut reader = FieldReader::new(kind, limits, &rules, stored);
                json::for_each_member(body, |key, value| reader.member(key, value))
                    .map_err(BodyError::Json)?;
                let fields = reader.finish(&mut faults);
                match kind {
                    EditKind::Create => Edit::Create(fields),
                    EditKind::Update => Edit::Update(fields),
                    EditKind::Patch => Edit::Patch(fields),
                    _ => Edit::StatusOnly(fields),
                }
            }
        };
        if faults.is_empty() {
            Ok(edit)
        } else {
            Err(BodyError::Fields(Faults(faults)))
        }
    }

    /// The ids the edit names (for the audit trail and policy).
    pub fn token_ids(&self) -> Vec<TokenId> {
        match self {
            Edit::Create(_) | Edit::Patch(_) => Vec::new(),
            Edit::Update(fields) | Edit::StatusOnly(fields) => fields.id.into_iter().collect(),
            Edit::Ids(ids) => ids.clone(),
            Edit::BatchUpdate(batch) => batch.ids.clone(),
        }
    }

    /// The values of a full or status-only update that wait for the stored token.
    pub fn unconfirmed(&self) -> &[Unconfirmed] {
        match self {
            Edit::Update(fields) | Edit::StatusOnly(fields) => &fields.unconfirmed,
            _ => &[],
        }
    }

    /// Judges the values that wait for the stored token (SPEC §4.2): each passes when `stored`
    /// holds the same value, and every other is refused with its fault.
    pub fn confirm(&mut self, stored: &Map<String, Value>) -> Result<(), BodyError> {
        let (Edit::Update(fields) | Edit::StatusOnly(fields)) = self else {
            return Ok(());
        };
        let faults: Vec<Fault> = std::mem::take(&mut fields.unconfirmed)
            .into_iter()
            .filter(|u| !same_value(stored.get(&u.field), &u.value))
            .map(|u| u.fault)
            .collect();
        if faults.is_empty() {
            Ok(())
        } else {
            Err(BodyError::Fields(Faults(faults)))
        }
    }

    /// How many tokens a batch names (what it costs in the rate limit); `None` for one token.
    pub fn batch_len(&self) -> Option<usize> {
        match self {
            Edit::Ids(ids) => Some(ids.len()),
            Edit::BatchUpdate(batch) => Some(batch.ids.len()),
            _ => None,
        }
    }

    /// Exactly the checked fields, in serde's order (the gateway forwards
    /// [`Edit::canonical_json`], the same fields with sorted members; this is the reference the
    /// property tests compare both against).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs of strings, integers and JSON values cannot fail.
        match self {
            Edit::Create(fields)
            | Edit::Update(fields)
            | Edit::StatusOnly(fields)
            | Edit::Patch(fields) => serde_json::to_vec(fields),
            Edit::Ids(ids) => serde_json::to_vec(&IdsBody::of(ids)),
            Edit::BatchUpdate(batch) => serde_json::to_vec(&batch.to_value()),
        }
        .unwrap_or_default()
    }

    /// The checked edit in canonical JSON (RFC 8785): written once, it is both the body the
    /// upstream receives and the `request` of the audit records (SPEC §6).
    pub fn canonical_json(&self) -> Vec<u8> {
        match self {
            Edit::Create(fields)
            | Edit::Update(fields)
            | Edit::StatusOnly(fields)
            | Edit::Patch(fields) => fields.canonical_json(),
            Edit::Ids(_) | Edit::BatchUpdate(_) => {
                crate::audit::canonical::canonical(&self.to_value())
            }
        }
    }

    /// The checked fields as a JSON value.
    pub fn to_value(&self) -> Value {
        match self {
            Edit::Create(fields)
            | Edit::Update(fields)
            | Edit::StatusOnly(fields)
            | Edit::Patch(fields) => serde_json::to_value(fields),
            Edit::Ids(ids) => serde_json::to_value(IdsBody::of(ids)),
            Edit::BatchUpdate(batch) => Ok(batch.to_value()),
        }
        .unwrap_or(Value::Null)
    }
}

/// `{"ids": [..]}` as forwarded.
#[derive(Serialize)]
struct IdsBody {
    ids: Vec<u64>,
}

impl IdsBody {
    fn of(ids: &[TokenId]) -> IdsBody {
        IdsBody {
            ids: ids.iter().map(|id| id.get()).collect(),
        }
    }
}

/// Whether `sent` is the `stored` value. Numbers by value, but an integer only as an integer:
/// `-0` (a float to serde_json) is 0, as new-api reads it, while `5.0` is not 5 (new-api's
/// integer fields refuse it, so carrying it would fail upstream).
pub(crate) fn same_value(stored: Option<&Value>, sent: &Value) -> bool {
    let minus_zero =
        |n: &serde_json::Number| n.as_f64().is_some_and(|f| f == 0.0 && f.is_sign_negative());
    match (stored, sent) {
        (Some(Value::Number(a)), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => a == b,
            (Some(0), None) => minus_zero(b),
            (None, Some(0)) => minus_zero(a),
            (Some(_), None) | (None, Some(_)) => false,
            (None, None) => a.as_f64() == b.as_f64(),
        },
        (Some(stored), sent) => stored == sent,
        (None, _) => false,
    }
}

/// Checks `map` as the body of a full update: a PATCH merged into `stored`, the token as the
/// upstream stores it (values equal to it are carried as they are).
pub(super) fn full_update(
    map: Map<String, Value>,
    stored: &Map<String, Value>,
    limits: &Limits,
    now: i64,
) -> Result<TokenFields, BodyError> {
    let rules = Rules {
        name_max_bytes: limits.name_max_bytes,
        now,
    };
    let mut faults = Vec::new();
    let mut reader = FieldReader::new(EditKind::Update, limits, &rules, Stored::Known(stored));
    for (key, value) in map {
        reader.member(&key, value);
    }
    let fields = reader.finish(&mut faults);
    if faults.is_empty() {
        Ok(fields)
    } else {
        Err(BodyError::Fields(Faults(faults)))
    }
}

/// Reads the token fields of a create, update, status-only or PATCH body, one member at a time
/// ([`FieldReader::member`]) and then as a whole ([`FieldReader::finish`]). A value that breaks a
/// rule but may be the stored one (SPEC §4.2) is carried when it equals `stored`, or, for a full
/// or status-only update, waits for the read when every other field passes.
struct FieldReader<'a> {
    kind: EditKind,
    limits: &'a Limits,
    rules: &'a Rules,
    stored: Stored<'a>,
    fields: TokenFields,
    /// Refused values that wait for the stored token, in the order read.
    waiting: Vec<Unconfirmed>,
    /// The faults of the members, in the order read.
    faults: Vec<Fault>,
}

impl<'a> FieldReader<'a> {
    fn new(
        kind: EditKind,
        limits: &'a Limits,
        rules: &'a Rules,
        stored: Stored<'a>,
    ) -> FieldReader<'a> {
        FieldReader {
            kind,
            limits,
            rules,
            stored,
            fields: TokenFields::default(),
            waiting: Vec::new(),
            faults: Vec::new(),
        }
    }

    /// Checks one member of the body (each name comes at most once: the JSON reader refuses a
    /// repeated one).
    fn member(&mut self, key: &str, value: Value) {
        if self.kind == EditKind::Patch && key == "id" {
            self.faults.push(Fault {
                field: key.into(),
                code: FaultCode::UnknownField,
                message: "is not a field of a PATCH: the token id is in the path".into(),
            });
            return;
        }
        match self.fields.set(key, &value, self.rules) {
            Ok(true) => {}
            Err(message) => {
                let fault = Fault::invalid(key, message);
                self.refused(key.into(), value, fault);
            }
            Ok(false) if READ_ONLY_FIELDS.contains(&key) => {}
            Ok(false) if self.limits.extra_fields.iter().any(|extra| extra == key) => {
                self.fields.extra.insert(key.into(), value);
            }
            Ok(false) => self.faults.push(Fault::unknown(key, &TOKEN_FIELDS)),
        }
    }

    /// A refused value: carried when it is the stored one, waiting for the read, or a fault.
    fn refused(&mut self, key: String, value: Value, fault: Fault) {
        // `id` names the token and `status` is what a status change sets: never stored values.
        let storable = key != "id" && key != "status";
        match self.stored {
            Stored::Known(stored) if storable && same_value(stored.get(&key), &value) => {
                self.fields.carried.insert(key, value);
            }
            Stored::Later if storable => self.waiting.push(Unconfirmed {
                field: key,
                value,
                fault,
            }),
            _ => self.faults.push(fault),
        }
    }

    /// The checks of the body as a whole; its faults, the members' first in key order, are
    /// added to `faults`.
    fn finish(mut self, faults: &mut Vec<Fault>) -> TokenFields {
        // The members came in the body's order: faults and waiting values are reported in key
        // order whatever it was (each name once, so a stable sort by name is that order).
        self.faults.sort_by(|a, b| a.field.cmp(&b.field));
        self.waiting.sort_by(|a, b| a.field.cmp(&b.field));
        faults.append(&mut self.faults);
        let kind = self.kind;
        if matches!(kind, EditKind::Create | EditKind::Update) {
            for (key, value, fault) in ignored_by_new_api(kind, &self.fields) {
                self.fields.set_none(&key);
                self.refused(key, value, fault);
            }
            faults.append(&mut self.faults);
        }
        let FieldReader {
            limits,
            stored,
            mut fields,
            mut waiting,
            ..
        } = self;
        let required: &[&str] = match kind {
            EditKind::Create => &["name"],
            EditKind::Update => &["id"],
            EditKind::Patch => &[],
            _ => &["id", "status"],
        };
        if kind == EditKind::Patch
            && fields == TokenFields::default()
            && waiting.is_empty()
            && faults.is_empty()
        {
            faults.push(Fault::invalid(
                "",
                "a PATCH must carry at least one field to change".into(),
            ));
        }
        for field in required {
            if !fields.has(field) && !faults.iter().any(|f| f.field == *field) {
                faults.push(Fault::invalid(field, "is required".into()));
            }
        }
        if kind == EditKind::Update && limits.require_complete_updates {
            for field in COMPLETE_UPDATE_FIELDS {
                let waits = waiting.iter().any(|w| w.field == field);
                if !fields.has(field) && !waits && !faults.iter().any(|f| f.field == field) {
                    faults.push(Fault {
                        field: field.into(),
                        code: FaultCode::IncompleteUpdate,
                        message: String::new(),
                    });
                }
            }
        }
        // A full update's `status` is never applied by new-api (SPEC §4.2): it must be the stored one.
        if let (EditKind::Update, Stored::Later, Some(status)) = (kind, stored, fields.status) {
            waiting.push(Unconfirmed {
                field: "status".into(),
                value: Value::from(status.get()),
                fault: Fault::invalid(
                    "status",
                    format!("{} differs from the token's stored status, and new-api's full update never changes status: change it with a status-only update (PUT /api/token/?status_only=true) or PATCH, or send the stored value", status.get()),
                ),
            });
        }
        if faults.is_empty() {
            for waiting in waiting {
                if waiting.field != "status" {
                    fields
                        .carried
                        .insert(waiting.field.clone(), waiting.value.clone());
                }
                fields.unconfirmed.push(waiting);
            }
        } else if waiting.iter().any(|w| w.field != "status") {
            // Another fault refuses the body anyway: every fault is reported at once, those of the
            // body's fields in key order, then the missing ones.
            faults.extend(
                waiting
                    .into_iter()
                    .filter(|w| w.field != "status")
                    .map(|w| w.fault),
            );
            let missing =
                |f: &Fault| f.code == FaultCode::IncompleteUpdate || f.message == "is required";
            faults.sort_by(|a, b| (missing(a), &a.field).cmp(&(missing(b), &b.field)));
        }
        fields
    }
}

/// What new-api would silently not apply (SPEC §4.2), as the value sent and the fault: a
/// `status` other than 1 on a create (new-api creates every token enabled), and a
/// `cross_group_retry` true or a non-empty `auto_groups` on a token whose group is not `auto`
/// (new-api clears them then).
fn ignored_by_new_api(kind: EditKind, fields: &TokenFields) -> Vec<(String, Value, Fault)> {
    let mut ignored = Vec::new();
    if let (EditKind::Create, Some(status)) = (kind, fields.status) {
        if status.get() != 1 {
            ignored.push((
                "status".to_string(),
                Value::from(status.get()),
                Fault::invalid(
                    "status",
                    format!("{} is not applied on a create: new-api creates every token enabled; create it, then change its status with a status-only update or PATCH", status.get()),
                ),
            ));
        }
    }
    // The group as new-api will store it: what the body says, else the zero value "".
    let group = fields
        .group
        .as_ref()
        .map(|g| g.as_str())
        .or_else(|| fields.carried.get("group").and_then(Value::as_str))
        .unwrap_or("");
    if group == "auto" {
        return ignored;
    }
    if fields.cross_group_retry == Some(true) {
        ignored.push((
            "cross_group_retry".to_string(),
            Value::Bool(true),
            Fault::invalid(
                "cross_group_retry",
                format!("true is cleared by new-api on a token whose group is not `auto` (it is `{}`): send false, or set group to auto", group.escape_debug()),
            ),
        ));
    }
    if let Some(auto) = fields
        .auto_groups
        .as_ref()
        .filter(|a| a.groups().next().is_some())
    {
        ignored.push((
            "auto_groups".to_string(),
            serde_json::to_value(auto).unwrap_or(Value::Null),
            Fault::invalid(
                "auto_groups",
                format!("is cleared by new-api on a token whose group is not `auto` (it is `{}`): send null or [], or set group to auto", group.escape_debug()),
            ),
        ));
    }
    ignored
}

/// Reads `{"ids": [..]}`.
fn ids(mut map: Map<String, Value>, limits: &Limits, faults: &mut Vec<Fault>) -> Vec<TokenId> {
    let value = map.remove("ids");
    for key in map.keys() {
        faults.push(Fault::unknown(key, &["ids"]));
    }
    id_list(value, false, limits, faults)
}

/// Reads the `ids` of a batch: a JSON array of ids or, when `comma_string`, also a string of ids
/// separated by commas (spaces around them allowed); 1 to `limits.max_batch`, distinct.
pub(super) fn id_list(
    value: Option<Value>,
    comma_string: bool,
    limits: &Limits,
    faults: &mut Vec<Fault>,
) -> Vec<TokenId> {
    let mut refuse = |message: String| {
        faults.push(Fault::invalid("ids", message));
        Vec::new()
    };
    let entries: Vec<Result<TokenId, String>> = match value {
        None => return refuse("is required: send {\"ids\": [1, 2, 3]}".into()),
        Some(Value::Array(items)) => items.iter().map(fields::token_id).collect(),
        Some(Value::String(text)) if comma_string => text
            .split(',')
            .map(|entry| {
                let entry = entry.trim_matches(' ');
                TokenId::parse(entry).ok_or_else(|| {
                    format!(
                        "`{}` is not a token id (a whole number from 1 to 9007199254740991, 2^53-1)",
                        entry.escape_debug()
                    )
                })
            })
            .collect(),
        Some(other) => {
            let shape = if comma_string {
                "an array of token ids or a string of ids separated by commas"
            } else {
                "an array of token ids"
            };
            return refuse(format!("must be {shape}, not {}", json::kind(&other)));
        }
    };
    if entries.is_empty() || entries.len() > limits.max_batch {
        return refuse(format!(
            "lists {} ids; send 1 to {}",
            entries.len(),
            limits.max_batch
        ));
    }
    let mut ids = Vec::with_capacity(entries.len());
    for entry in entries {
        match entry {
            Ok(id) if ids.contains(&id) => return refuse(format!("lists the id {id} twice")),
            Ok(id) => ids.push(id),
            Err(message) => {
                return refuse(format!("every entry must be a token id: {message}"));
            }
        }
    }
    ids
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not one strict JSON object (400 `invalid_json`).
    Json(JsonError),
    /// One or more field faults.
    Fields(Faults),
}

/// The SPEC §9 code of a field fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultCode {
    /// A field rule, or a required field missing (`invalid_field`).
    InvalidField,
    /// A field the operation does not know (`unknown_field`).
    UnknownField,
    /// A field a full update must carry (`incomplete_update`).
    IncompleteUpdate,
}

impl FaultCode {
    /// The SPEC §9 code.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultCode::InvalidField => "invalid_field",
            FaultCode::UnknownField => "unknown_field",
            FaultCode::IncompleteUpdate => "incomplete_update",
        }
    }
}

/// One faulty field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The field's name, as sent.
    pub field: String,
    /// Which kind of fault.
    pub code: FaultCode,
    /// What is wrong (empty for a missing field of a full update).
    pub message: String,
}

impl Fault {
    pub(super) fn invalid(field: &str, message: String) -> Fault {
        Fault {
            field: field.into(),
            code: FaultCode::InvalidField,
            message,
        }
    }

    pub(super) fn unknown(field: &str, known: &[&str]) -> Fault {
        let hint = closest(field, known)
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default();
        Fault {
            field: field.into(),
            code: FaultCode::UnknownField,
            message: format!("is not a field of this operation{hint}"),
        }
    }
}

/// Every fault of one body, in the order found (body keys in sorted order, then missing fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Faults(pub Vec<Fault>);

impl Faults {
    /// The code of the first fault (the envelope's `error.code`).
    pub fn code(&self) -> &'static str {
        self.0.first().map_or("invalid_field", |f| f.code.as_str())
    }

    /// The first faulty field (`error.field`); a fault of the whole body names none.
    pub fn field(&self) -> Option<&str> {
        self.fields().first().copied()
    }

    /// Every faulty field (`error.fields`).
    pub fn fields(&self) -> Vec<&str> {
        self.0
            .iter()
            .map(|f| f.field.as_str())
            .filter(|f| !f.is_empty())
            .collect()
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let s = if first { "" } else { "; " };
            first = false;
            f.write_str(s)
        };
        for fault in self
            .0
            .iter()
            .filter(|f| f.code != FaultCode::IncompleteUpdate)
        {
            sep(f)?;
            if fault.field.is_empty() {
                f.write_str(&fault.message)?;
            } else {
                write!(f, "`{}` {}", fault.field.escape_debug(), fault.message)?;
            }
        }
        let missing: Vec<&str> = self
            .0
            .iter()
            .filter(|f| f.code == FaultCode::IncompleteUpdate)
            .map(|f| f.field.as_str())
            .collect();
        if !missing.is_empty() {
            sep(f)?;
            write!(
                f,
                "a full update must carry every editable field, because new-api resets any field left out (an omitted expired_time expires the token at once); missing: {}. To change only some fields, send them with PATCH /api/token/{{id}}",
                missing.join(", ")
            )?;
        }
        Ok(())
    }
}

/// The known name nearest to a misspelt one (at most two edits away). Field names are short: a
/// name far longer than any is not a misspelling, and is not compared (that costs time).
pub(super) fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    if name.len() > 32 {
        return None;
    }
    known
        .iter()
        .map(|k| (distance(name, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, over characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn limits() -> Limits {
        Limits {
            name_max_bytes: 50,
            max_batch: 3,
            require_complete_updates: true,
            extra_fields: vec!["billing_type".into()],
            batch_update: BatchMode::Fanout,
        }
    }

    fn parse(kind: EditKind, body: serde_json::Value) -> Result<Edit, BodyError> {
        Edit::parse(kind, body.to_string().as_bytes(), &limits(), NOW)
    }

    fn faults(result: Result<Edit, BodyError>) -> Faults {
        match result {
            Err(BodyError::Fields(faults)) => faults,
            other => panic!("expected field faults, got {other:?}"),
        }
    }

    #[test]
    fn the_same_value_is_an_integer_for_an_integer() {
        let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap();
        assert!(same_value(Some(&parse("5")), &parse("5")));
        assert!(same_value(Some(&parse("0")), &parse("-0")));
        assert!(same_value(Some(&parse("-0")), &parse("0")));
        assert!(same_value(Some(&parse("-1.5")), &parse("-1.5")));
        // new-api's integer fields refuse 5.0: never carried as the stored 5.
        assert!(!same_value(Some(&parse("5")), &parse("5.0")));
        assert!(!same_value(Some(&parse("-12345")), &parse("-12345.0")));
        assert!(!same_value(Some(&parse("0")), &parse("0.0")));
        assert!(!same_value(None, &parse("5")));
        assert!(!same_value(Some(&parse("\"5\"")), &parse("5")));
    }

    #[test]
    fn a_get_response_round_trips_as_a_full_update() {
        let token = json!({
            "id": 7, "user_id": 1, "key": "abcd**********wxyz", "status": 1, "name": "ci",
            "created_time": 1, "accessed_time": 2, "expired_time": -1, "remain_quota": 10,
            "unlimited_quota": false, "model_limits_enabled": false, "model_limits": "",
            "allow_ips": null, "used_quota": 0, "group": "", "cross_group_retry": false, "DeletedAt": null
        });
        let edit = parse(EditKind::Update, token).unwrap();
        let forwarded: serde_json::Value = serde_json::from_slice(&edit.to_json()).unwrap();
        assert_eq!(
            forwarded,
            json!({
                "id": 7, "status": 1, "name": "ci", "expired_time": -1, "remain_quota": 10,
                "unlimited_quota": false, "model_limits_enabled": false, "model_limits": "",
                "allow_ips": null, "group": "", "cross_group_retry": false
            })
        );
        assert_eq!(edit.token_ids(), [TokenId::parse("7").unwrap()]);
    }

    /// `members` as a body's text in the order given (`json!` would sort them).
    fn body_in_order(members: &[(&str, &str)]) -> Vec<u8> {
        let inner: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", inner.join(",")).into_bytes()
    }

    #[test]
    fn the_order_of_a_bodys_members_changes_nothing() {
        // Accepted with values waiting for the stored token, and refused with faults of every
        // kind: the edit, its waiting values and its faults are the same in any member order.
        let waiting = [
            ("id", "7"),
            ("status", "1"),
            ("name", "\"ci\""),
            ("expired_time", "-1"),
            ("remain_quota", "-5"),
            ("unlimited_quota", "true"),
            ("model_limits_enabled", "false"),
            ("model_limits", "\"\""),
            ("allow_ips", "null"),
            ("group", "\"\""),
            ("cross_group_retry", "true"),
            ("key", "\"sk\""),
            ("billing_type", "2"),
        ];
        let refused = [
            ("zzz", "1"),
            ("status", "9"),
            ("name", "\"\""),
            ("remain_quota", "-5"),
            ("expired_time", "0"),
            ("cross_group_retry", "true"),
            ("auto_groups", "[\"a\"]"),
            ("aaa", "1"),
            ("id", "1"),
        ];
        for (kind, members) in [
            (EditKind::Update, &waiting[..]),
            (EditKind::Update, &refused[..]),
            (EditKind::Create, &refused[..]),
            (EditKind::Patch, &refused[..]),
            (EditKind::StatusOnly, &refused[..]),
        ] {
            let mut sorted = members.to_vec();
            sorted.sort();
            let expected = Edit::parse(kind, &body_in_order(&sorted), &limits(), NOW);
            let mut reversed = sorted.clone();
            reversed.reverse();
            for order in [members.to_vec(), reversed] {
                let result = Edit::parse(kind, &body_in_order(&order), &limits(), NOW);
                assert_eq!(result, expected, "{kind:?} {order:?}");
            }
        }
        let Ok(edit) = Edit::parse(EditKind::Update, &body_in_order(&waiting), &limits(), NOW)
        else {
            panic!("the stored values wait for the read");
        };
        let waits: Vec<&str> = edit
            .unconfirmed()
            .iter()
            .map(|u| u.field.as_str())
            .collect();
        // The members' in key order, then what new-api would not apply, then `status`.
        assert_eq!(waits, ["remain_quota", "cross_group_retry", "status"]);
        let f = faults(Edit::parse(
            EditKind::Create,
            &body_in_order(&refused),
            &limits(),
            NOW,
        ));
        assert_eq!(
            f.fields(),
            [
                "aaa",
                "expired_time",
                "name",
                "remain_quota",
                "status",
                "zzz",
                "cross_group_retry",
                "auto_groups"
            ]
        );
    }

    #[test]
    fn every_fault_is_reported_with_a_hint() {
        let f = faults(parse(
            EditKind::Create,
            json!({"remain_qouta": 5, "name": "", "expired_time": 0, "status": 9}),
        ));
        assert_eq!(
            f.fields(),
            ["expired_time", "name", "remain_qouta", "status"]
        );
        assert_eq!(f.code(), "invalid_field");
        assert!(f.to_string().contains("did you mean `remain_quota`"), "{f}");
        let f = faults(parse(EditKind::Create, json!({"bogus": 1, "name": "x"})));
        assert_eq!((f.code(), f.field()), ("unknown_field", Some("bogus")));
    }

    #[test]
    fn required_fields_per_operation() {
        assert_eq!(
            faults(parse(EditKind::Create, json!({}))).fields(),
            ["name"]
        );
        let f = faults(parse(EditKind::Update, json!({"name": "x"})));
        assert_eq!(f.0[0].field, "id");
        assert_eq!(f.0[0].code, FaultCode::InvalidField);
        let f = faults(parse(EditKind::Update, json!({"id": 1, "name": "x"})));
        assert_eq!(f.code(), "incomplete_update");
        assert_eq!(f.field(), Some("expired_time"));
        assert!(
            f.to_string()
                .contains("missing: expired_time, remain_quota"),
            "{f}"
        );
        assert_eq!(
            faults(parse(EditKind::StatusOnly, json!({"id": 1}))).fields(),
            ["status"]
        );
        assert!(parse(
            EditKind::StatusOnly,
            json!({"id": 1, "status": 2, "name": "x"})
        )
        .is_ok());
        let mut lax = limits();
        lax.require_complete_updates = false;
        assert!(Edit::parse(EditKind::Update, br#"{"id":1,"name":"x"}"#, &lax, NOW).is_ok());
    }

    #[test]
    fn extra_fields_pass_through_and_ids_are_checked() {
        let edit = parse(
            EditKind::Create,
            json!({"name": "x", "billing_type": {"any": [1]}}),
        )
        .unwrap();
        assert!(String::from_utf8(edit.to_json())
            .unwrap()
            .contains(r#""billing_type":{"any":[1]}"#));
        assert_eq!(
            parse(EditKind::Ids, json!({"ids": [3, 1, 2]}))
                .unwrap()
                .to_json(),
            br#"{"ids":[3,1,2]}"#
        );
        for bad in [
            json!({}),
            json!({"ids": []}),
            json!({"ids": [1, 2, 3, 4]}),
            json!({"ids": [1, 1]}),
            json!({"ids": "1,2"}),
            json!({"ids": [0]}),
        ] {
            assert_eq!(
                faults(parse(EditKind::Ids, bad.clone())).field(),
                Some("ids"),
                "{bad}"
            );
        }
        assert_eq!(
            faults(parse(EditKind::Ids, json!({"ids": [1], "id": 2}))).code(),
            "unknown_field"
        );
    }

    #[test]
    fn json_faults_are_not_field_faults() {
        assert!(matches!(
            Edit::parse(
                EditKind::Create,
                br#"{"name":"a","name":"b"}"#,
                &limits(),
                NOW
            ),
            Err(BodyError::Json(_))
        ));
        assert!(matches!(
            Edit::parse(EditKind::Create, b"[]", &limits(), NOW),
            Err(BodyError::Json(_))
        ));
    }

    #[test]
    fn edit_distance() {
        assert_eq!(distance("remain_qouta", "remain_quota"), 2);
        assert_eq!(closest("nme", &TOKEN_FIELDS), Some("name"));
        assert_eq!(closest("zzzzzz", &TOKEN_FIELDS), None);
    }
}
