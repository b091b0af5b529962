//! Property tests of body validation (SPEC §4.1–§4.4): valid bodies generated field by field are
//! accepted and forwarded as exactly their token fields; arbitrary bytes and JSON never panic the
//! validator; and through the gateway over real sockets, a body reaches the upstream if and only if
//! `Edit::parse` accepts it, as exactly the checked edit, while everything else is a 4xx envelope.

mod support;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use support::*;
use tokengate::token::edit::{
    BodyError, Edit, EditKind, Limits, COMPLETE_UPDATE_FIELDS, READ_ONLY_FIELDS, TOKEN_FIELDS,
};
use tokengate::token::fields::MAX_QUOTA;

/// The unit tests' clock (2027-01-15): fixed, so an expiry generated as "later than now" stays so.
const NOW: i64 = 1_800_000_000;

/// The largest token id (SPEC §2): 2^53-1.
const MAX_ID: i64 = tokengate::route::TokenId::MAX as i64;

const KINDS: [EditKind; 4] = [
    EditKind::Create,
    EditKind::Update,
    EditKind::StatusOnly,
    EditKind::Ids,
];

/// The limits the test gateway runs with (the configuration defaults, no extra fields).
fn gateway_limits() -> Limits {
    Limits {
        name_max_bytes: 50,
        max_batch: 100,
        require_complete_updates: true,
        extra_fields: Vec::new(),
        batch_update: tokengate::token::batch::BatchMode::Fanout,
    }
}

/// `cases` cases, and no regression files (a failure prints its minimal input instead).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies for valid field values (every rule of src/token/fields.rs).
// ---------------------------------------------------------------------------------------------

/// A character that is not a control character (Unicode Cc), from ASCII, Latin, CJK, emoji and
/// the JSON-escaped ones, so names cover 1- to 4-byte UTF-8.
fn name_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range(' ', '~'),
        1 => Just('"'),
        1 => Just('\\'),
        1 => Just('/'),
        2 => proptest::char::range('\u{a0}', '\u{2ff}'),
        1 => Just('\u{2028}'),
        2 => proptest::char::range('\u{4e00}', '\u{9fff}'),
        2 => proptest::char::range('\u{1f300}', '\u{1faff}'),
        1 => any::<char>(),
    ]
    .prop_filter("no control characters", |c| !c.is_control())
}

/// A name of 1 to `max_bytes` bytes of UTF-8 without control characters.
fn valid_name(max_bytes: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(name_char(), 1..=max_bytes).prop_map(move |chars| {
        let mut name = String::new();
        for c in chars {
            if name.len() + c.len_utf8() > max_bytes {
                break;
            }
            name.push(c);
        }
        if name.is_empty() {
            name.push('x');
        }
        name
    })
}

fn valid_quota() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0), Just(MAX_QUOTA), 0..=MAX_QUOTA, 0..=1_000_000i64,]
}

/// `-1`, or a time from `earliest` to `now + 10^9` (well under the 10^11 milliseconds hint).
fn valid_expiry(now: i64, earliest: i64) -> impl Strategy<Value = i64> {
    prop_oneof![Just(-1), earliest..=now + 1_000_000_000]
}

/// Distinct entries of `entry`, in generated order, joined with `,` (`""` when none).
fn comma_list(entry: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    proptest::collection::vec(entry, 0..8).prop_map(|entries| {
        let mut distinct: Vec<String> = Vec::new();
        for e in entries {
            if !distinct.contains(&e) {
                distinct.push(e);
            }
        }
        distinct.join(",")
    })
}

/// A model id: no comma, no control character, no white space at either end (inside is fine).
fn model_id() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-zA-Z0-9][a-zA-Z0-9._:/@+-]{0,30}",
        1 => "[a-z0-9]{1,8}( [a-z0-9]{1,8}){0,2}",
        1 => "[a-z]{1,4}[\u{4e00}-\u{4e20}]{1,4}",
        1 => Just("gpt-4o".to_string()),
        1 => Just("claude-3-5-sonnet-20241022".to_string()),
    ]
    .boxed()
}

/// A group name: no comma, no white space, no control character.
fn group_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-zA-Z0-9_.:-]{1,20}",
        1 => Just("auto".to_string()),
        1 => Just("default".to_string()),
        1 => "[\u{4e00}-\u{4e20}]{1,3}",
    ]
    .boxed()
}

/// One address or CIDR, as a person (or `Display`) writes it.
fn ip_entry() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<Ipv4Addr>().prop_map(|a| a.to_string()),
        any::<Ipv6Addr>().prop_map(|a| a.to_string()),
        (any::<Ipv4Addr>(), 0u8..=32).prop_map(|(a, p)| format!("{a}/{p}")),
        (any::<Ipv6Addr>(), 0u8..=128).prop_map(|(a, p)| format!("{a}/{p}")),
        (any::<u16>(), 0u8..=64).prop_map(|(a, p)| format!("2001:db8:{a:x}::/{p}")),
        any::<Ipv4Addr>().prop_map(|a| a.to_ipv6_mapped().to_string()),
    ]
}

/// `allow_ips`: null, `""`, or 1 to 20 entries separated by `\n`, maybe with one trailing `\n`.
fn valid_allow_ips() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => Just(json!("")),
        6 => (proptest::collection::vec(ip_entry(), 1..20), any::<bool>()).prop_map(
            |(entries, trailing)| {
                let mut text = entries.join("\n");
                if trailing {
                    text.push('\n');
                }
                Value::String(text)
            }
        ),
    ]
}

/// `auto_groups`: null or at most 5 distinct group names.
fn valid_auto_groups() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        proptest::collection::vec(group_name(), 0..=5).prop_map(|names| {
            let mut distinct: Vec<String> = Vec::new();
            for n in names {
                if !distinct.contains(&n) {
                    distinct.push(n);
                }
            }
            json!(distinct)
        }),
    ]
}

fn valid_proxy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "https?://[a-z]{1,12}\\.example(:[1-9][0-9]{0,3})?(/[a-z0-9]{0,8})?",
    ]
}

/// A small arbitrary JSON value (for read-only fields, whose values are never checked).
fn small_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Some of the read-only fields a `GET` returns, with any values.
fn read_only_fields() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::vec(
        (
            proptest::sample::select(&READ_ONLY_FIELDS[..]),
            small_json(),
        ),
        0..4,
    )
    .prop_map(|pairs| pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// Any of the settable token fields other than `id`, `name` and `status`, each valid.
fn optional_fields(now: i64, earliest: i64) -> impl Strategy<Value = Map<String, Value>> {
    (
        (
            proptest::option::of(valid_quota()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(valid_expiry(now, earliest)),
            proptest::option::of(any::<bool>()),
            proptest::option::of(comma_list(model_id())),
            proptest::option::of(valid_allow_ips()),
        ),
        (
            proptest::option::of(comma_list(group_name())),
            proptest::option::of(any::<bool>()),
            proptest::option::of(valid_auto_groups()),
            proptest::option::of(".{0,16}"),
            proptest::option::of(valid_proxy()),
        ),
    )
        .prop_map(|((q, u, e, mle, ml, ips), (g, cgr, ag, mjm, mjp))| {
            let fields = [
                ("remain_quota", q.map(Value::from)),
                ("unlimited_quota", u.map(Value::from)),
                ("expired_time", e.map(Value::from)),
                ("model_limits_enabled", mle.map(Value::from)),
                ("model_limits", ml.map(Value::from)),
                ("allow_ips", ips),
                ("group", g.map(Value::from)),
                ("cross_group_retry", cgr.map(Value::from)),
                ("auto_groups", ag),
                ("mj_image_mode", mjm.map(Value::from)),
                ("mj_custom_proxy", mjp.map(Value::from)),
            ];
            let mut map = Map::new();
            for (key, value) in fields {
                if let Some(value) = value {
                    map.insert(key.to_string(), value);
                }
            }
            map
        })
}

/// Leaves out what new-api would silently not apply on a token whose group is not `auto` (SPEC
/// §4.2: refused): a `cross_group_retry` true and a non-empty `auto_groups`.
fn keep_what_new_api_applies(fields: &mut Map<String, Value>) {
    if fields.get("group").and_then(Value::as_str) == Some("auto") {
        return;
    }
    if fields.get("cross_group_retry") == Some(&json!(true)) {
        fields.insert("cross_group_retry".into(), json!(false));
    }
    if fields
        .get("auto_groups")
        .and_then(Value::as_array)
        .is_some_and(|groups| !groups.is_empty())
    {
        fields.insert("auto_groups".into(), Value::Null);
    }
}

/// A valid body of `kind` and the object it must be forwarded as (the body less its read-only
/// fields). `earliest` is the earliest expiry generated.
fn valid_body(kind: EditKind, now: i64, earliest: i64) -> BoxedStrategy<(Value, Value)> {
    // Ids run from 1 to 2^53-1 (SPEC §2).
    let id = 1..=MAX_ID;
    let with_read_only = |forwarded: Map<String, Value>, read_only: Map<String, Value>| {
        let mut body = forwarded.clone();
        for (k, v) in read_only {
            body.insert(k, v);
        }
        (Value::Object(body), Value::Object(forwarded))
    };
    match kind {
        EditKind::Patch | EditKind::BatchUpdate => {
            unreachable!("not in KINDS: tests/patch.rs and tests/batch_update.rs test them")
        }
        // new-api creates every token enabled: any other status is refused (SPEC §4.2).
        EditKind::Create => (
            valid_name(50),
            optional_fields(now, earliest),
            proptest::option::of(Just(1i64)),
            read_only_fields(),
        )
            .prop_map(move |(name, mut fields, status, read_only)| {
                fields.insert("name".into(), json!(name));
                if let Some(status) = status {
                    fields.insert("status".into(), json!(status));
                }
                keep_what_new_api_applies(&mut fields);
                with_read_only(fields, read_only)
            })
            .boxed(),
        EditKind::Update => (
            id,
            valid_name(50),
            optional_fields(now, earliest),
            (
                valid_quota(),
                any::<bool>(),
                valid_expiry(now, earliest),
                any::<bool>(),
                comma_list(model_id()),
                valid_allow_ips(),
                comma_list(group_name()),
            ),
            read_only_fields(),
        )
            // No `status`: a full update's must be the stored one (SPEC §4.2), which only a read
            // of the token can tell (the rig's upstream holds no token).
            .prop_map(move |(id, name, mut fields, complete, read_only)| {
                let (quota, unlimited, expiry, mle, models, ips, group) = complete;
                fields.insert("id".into(), json!(id));
                fields.insert("name".into(), json!(name));
                fields.insert("remain_quota".into(), json!(quota));
                fields.insert("unlimited_quota".into(), json!(unlimited));
                fields.insert("expired_time".into(), json!(expiry));
                fields.insert("model_limits_enabled".into(), json!(mle));
                fields.insert("model_limits".into(), json!(models));
                fields.insert("allow_ips".into(), ips);
                fields.insert("group".into(), json!(group));
                keep_what_new_api_applies(&mut fields);
                with_read_only(fields, read_only)
            })
            .boxed(),
        EditKind::StatusOnly => (
            id,
            1..=4i64,
            proptest::option::of(valid_name(50)),
            optional_fields(now, earliest),
            read_only_fields(),
        )
            .prop_map(move |(id, status, name, mut fields, read_only)| {
                fields.insert("id".into(), json!(id));
                fields.insert("status".into(), json!(status));
                if let Some(name) = name {
                    fields.insert("name".into(), json!(name));
                }
                with_read_only(fields, read_only)
            })
            .boxed(),
        EditKind::Ids => proptest::collection::btree_set(1..=MAX_ID, 1..=100)
            .prop_shuffle_ids()
            .prop_map(|ids| {
                let body = json!({ "ids": ids });
                (body.clone(), body)
            })
            .boxed(),
    }
}

/// Shuffles a set of ids into a vector, so batches are not always sorted.
trait ShuffleIds {
    fn prop_shuffle_ids(self) -> BoxedStrategy<Vec<i64>>;
}

impl<S> ShuffleIds for S
where
    S: Strategy<Value = std::collections::BTreeSet<i64>> + 'static,
{
    fn prop_shuffle_ids(self) -> BoxedStrategy<Vec<i64>> {
        self.prop_map(|set| set.into_iter().collect::<Vec<_>>())
            .prop_shuffle()
            .boxed()
    }
}

fn any_kind() -> impl Strategy<Value = EditKind> {
    proptest::sample::select(&KINDS[..])
}

/// A valid body of any kind, with its kind and the object it must be forwarded as.
fn any_valid(now: i64, earliest: i64) -> impl Strategy<Value = (EditKind, Value, Value)> {
    any_kind().prop_flat_map(move |kind| {
        valid_body(kind, now, earliest).prop_map(move |(body, forwarded)| (kind, body, forwarded))
    })
}

// ---------------------------------------------------------------------------------------------
// Strategies for arbitrary input.
// ---------------------------------------------------------------------------------------------

/// An integer, biased to the edges the rules care about. `avoid` is a time around which nothing is
/// generated (a time test and gateway could judge differently a second apart).
fn interesting_int(avoid: i64) -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (-3i64..=6).prop_map(Value::from),
        1 => Just(json!(MAX_QUOTA)),
        1 => Just(json!(MAX_QUOTA + 1)),
        1 => Just(json!(i64::MAX)),
        1 => Just(json!(MAX_ID)),
        1 => Just(json!(MAX_ID + 1)),
        1 => Just(json!(i64::MIN)),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(100_000_000_000i64)),
        1 => Just(json!(100_000_000_001i64)),
        2 => (avoid + 3600..avoid + 1_000_000_000).prop_map(Value::from),
        1 => (0..avoid - 3600).prop_map(Value::from),
        3 => any::<i64>().prop_map(Value::from),
    ]
}

/// A string, biased to shapes the rules care about.
fn interesting_string() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => ".{0,20}",
        2 => valid_name(50),
        1 => "[a-z]{1,6}(,[a-z ]{0,6}){0,4},?",
        1 => proptest::collection::vec(ip_entry(), 0..4).prop_map(|e| e.join("\n")),
        1 => proptest::collection::vec(ip_entry(), 0..4).prop_map(|e| e.join(",")),
        1 => "[0-9./:a-f]{0,20}(\n[0-9./:a-f ]{0,20}){0,3}\n?",
        1 => valid_proxy(),
        1 => "(ftp|http|https)://[a-z/]{0,10}",
        1 => Just("a".repeat(51)),
        1 => "[\\x00-\\x1f\u{7f}-\u{9f}]{1,3}",
    ]
}

/// An arbitrary JSON value of any type, nested up to a few levels.
fn any_json(avoid: i64) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        interesting_int(avoid),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        interesting_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((any_key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// A key: mostly one the validator knows (token, read-only, `ids`), sometimes a near miss or noise.
fn any_key() -> impl Strategy<Value = String> {
    let mut known: Vec<&'static str> = TOKEN_FIELDS.to_vec();
    known.extend(READ_ONLY_FIELDS);
    known.push("ids");
    prop_oneof![
        6 => proptest::sample::select(known).prop_map(str::to_string),
        1 => Just("remain_qouta".to_string()),
        1 => Just("n\\u0061me".to_string()),
        1 => ".{0,8}",
    ]
}

/// The text of a JSON object from `(key, value)` pairs, keys written as given (so a pair list may
/// hold a duplicate key, or an escaped spelling of another key, which `serde_json` never writes).
fn object_text(pairs: &[(String, Value)]) -> String {
    let members: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            // A key already holding a JSON escape is written raw; others are escaped properly.
            let key = if k.contains("\\u") {
                format!("\"{k}\"")
            } else {
                Value::String(k.clone()).to_string()
            };
            format!("{key}:{v}")
        })
        .collect();
    format!("{{{}}}", members.join(","))
}

/// A random JSON object body: token-ish keys with arbitrary values, maybe a duplicate key.
fn any_object_text(avoid: i64) -> impl Strategy<Value = String> {
    let value = prop_oneof![
        3 => any_json(avoid),
        1 => interesting_int(avoid),
        1 => interesting_string().prop_map(Value::String),
    ];
    proptest::collection::vec((any_key(), value), 0..12).prop_map(|pairs| object_text(&pairs))
}

/// A body for a random kind: a random object, or a valid body of that kind with one key set to
/// an arbitrary value (so acceptance and refusal are both common).
fn any_object_for_kind(now: i64) -> impl Strategy<Value = (EditKind, String)> {
    prop_oneof![
        1 => (any_kind(), any_object_text(now)),
        2 => (any_valid(now, now + 3600), any_key(), any_json(now), any::<bool>()).prop_map(
            |((kind, body, _), key, value, remove)| {
                let mut pairs: Vec<(String, Value)> =
                    body.as_object().unwrap().clone().into_iter().collect();
                if remove {
                    pairs.retain(|(k, _)| *k != key);
                } else if let Some(pair) = pairs.iter_mut().find(|(k, _)| *k == key) {
                    pair.1 = value;
                } else {
                    pairs.push((key, value));
                }
                (kind, object_text(&pairs))
            }
        ),
    ]
}

/// Arbitrary bytes: pure noise, or a valid body with bytes flipped, cut or inserted.
fn any_bytes(now: i64) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..256),
        1 => "[{}\\[\\]\",:0-9a-z \\\\]{0,64}".prop_map(String::into_bytes),
        3 => (
            any_valid(now, now + 3600),
            proptest::collection::vec(
                (
                    any::<prop::sample::Index>(),
                    prop_oneof![3 => 0x20u8..0x7f, 1 => any::<u8>()],
                    0..8u8,
                ),
                1..4,
            )
        )
            .prop_map(|((_, body, _), edits)| {
                let mut bytes = body.to_string().into_bytes();
                for (at, byte, how) in edits {
                    if bytes.is_empty() {
                        bytes.push(byte);
                        continue;
                    }
                    let i = at.index(bytes.len());
                    match how {
                        0..=3 => bytes[i] = byte,
                        4..=6 => bytes.insert(i, byte),
                        _ => bytes.truncate(i),
                    }
                }
                bytes
            }),
    ]
}

/// A value nested `levels` deep in arrays inside one object (`{"k":[[..]]}`).
fn nested_text(key: &str, levels: usize) -> String {
    format!(
        "{{{}:{}1{}}}",
        Value::String(key.into()),
        "[".repeat(levels),
        "]".repeat(levels)
    )
}

// ---------------------------------------------------------------------------------------------
// Unit level: Edit::parse and to_json.
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    /// A valid body is accepted and forwarded as exactly its fields less the read-only ones; the
    /// forwarded body is itself accepted again and forwarded unchanged.
    #[test]
    fn valid_bodies_round_trip((kind, body, forwarded) in any_valid(NOW, NOW + 1)) {
        let limits = gateway_limits();
        let text = body.to_string();
        let edit = Edit::parse(kind, text.as_bytes(), &limits, NOW);
        prop_assert!(edit.is_ok(), "{kind:?} {text}: {edit:?}");
        let written = edit.unwrap().to_json();
        let out: Value = serde_json::from_slice(&written).unwrap();
        prop_assert_eq!(&out, &forwarded, "{:?} {}", kind, text);
        for field in READ_ONLY_FIELDS {
            prop_assert!(out.get(field).is_none());
        }
        let again = Edit::parse(kind, &written, &limits, NOW).unwrap();
        prop_assert_eq!(again.to_json(), written);
    }

    /// The body forwarded and recorded (`canonical_json`, written from the typed fields) is the
    /// RFC 8785 form of the checked fields: the bytes the canonical writer gives for them as a
    /// JSON value, and the same JSON as serde's own serialisation of them.
    #[test]
    fn the_forwarded_body_is_the_canonical_json_of_the_checked_fields(
        (kind, body, _) in any_valid(NOW, NOW + 1),
    ) {
        let edit = Edit::parse(kind, body.to_string().as_bytes(), &gateway_limits(), NOW).unwrap();
        let canonical = edit.canonical_json();
        prop_assert_eq!(
            String::from_utf8(canonical.clone()).unwrap(),
            String::from_utf8(tokengate::audit::canonical::canonical(&edit.to_value())).unwrap()
        );
        let serde_json: Value = serde_json::from_slice(&edit.to_json()).unwrap();
        prop_assert_eq!(serde_json::from_slice::<Value>(&canonical).unwrap(), serde_json);
    }

    /// Leaving any complete-update field out of a valid full update is an `incomplete_update`
    /// naming exactly that field.
    #[test]
    fn a_full_update_missing_a_field_is_incomplete(
        (body, _) in valid_body(EditKind::Update, NOW, NOW + 1),
        drop in proptest::sample::select(&COMPLETE_UPDATE_FIELDS[..]),
    ) {
        let mut body = body;
        let map = body.as_object_mut().unwrap();
        map.remove(drop);
        if drop == "group" {
            // Without `group` the token is stored in the account's own group, on which new-api
            // clears these two: sending them is then refused too (SPEC §4.2).
            map.remove("auto_groups");
            map.remove("cross_group_retry");
        }
        let result = Edit::parse(EditKind::Update, body.to_string().as_bytes(), &gateway_limits(), NOW);
        match result {
            Err(BodyError::Fields(faults)) => {
                prop_assert_eq!(faults.code(), "incomplete_update");
                prop_assert_eq!(faults.fields(), vec![drop]);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// Arbitrary bytes never panic the validator, for any kind.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in any_bytes(NOW)) {
        let limits = gateway_limits();
        for kind in KINDS {
            if let Ok(edit) = Edit::parse(kind, &bytes, &limits, NOW) {
                let written = edit.to_json();
                prop_assert_eq!(Edit::parse(kind, &written, &limits, NOW).map(|e| e.to_json()), Ok(written));
            }
        }
    }

    /// Arbitrary JSON values (any type, objects with token-ish keys, duplicate keys, deep
    /// nesting) never panic the validator, and what it accepts re-parses to the same edit.
    #[test]
    fn arbitrary_json_never_panics(
        value in any_json(NOW),
        object in any_object_text(NOW),
        (key, levels) in (any_key(), 0usize..40),
    ) {
        let limits = gateway_limits();
        let deep = nested_text(&key, levels);
        for text in [value.to_string(), object, deep] {
            for kind in KINDS {
                if let Ok(edit) = Edit::parse(kind, text.as_bytes(), &limits, NOW) {
                    let written = edit.to_json();
                    prop_assert_eq!(
                        Edit::parse(kind, &written, &limits, NOW).map(|e| e.to_json()),
                        Ok(written)
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Through the gateway, over real sockets.
// ---------------------------------------------------------------------------------------------

/// The method and path of each kind, and for status-only the query that selects it.
fn request_of(kind: EditKind, reveal: bool) -> (&'static str, &'static str) {
    match kind {
        EditKind::Create => ("POST", "/api/token/"),
        EditKind::Update => ("PUT", "/api/token/"),
        EditKind::StatusOnly => ("PUT", "/api/token/?status_only=true"),
        EditKind::Ids if reveal => ("POST", "/api/token/batch/keys"),
        EditKind::Ids => ("POST", "/api/token/batch"),
        EditKind::Patch | EditKind::BatchUpdate => {
            unreachable!("not in KINDS: tests/patch.rs and tests/batch_update.rs test them")
        }
    }
}

/// One emulator and gateway for a whole property, on a runtime of its own.
struct Rig {
    runtime: tokio::runtime::Runtime,
    upstream: tokengate::emulator::RunningEmulator,
    gateway: TestGateway,
    client: Client<HttpConnector, Full<Bytes>>,
    /// How many checked bodies the validator accepted, and refused.
    accepted: AtomicUsize,
    refused: AtomicUsize,
}

impl Rig {
    fn start() -> Rig {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (upstream, gateway) = runtime.block_on(unread_gateway());
        let client = {
            let _guard = runtime.enter();
            Client::builder(TokioExecutor::new()).build_http()
        };
        Rig {
            runtime,
            upstream,
            gateway,
            client,
            accepted: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        }
    }

    /// Sends `body` (any bytes) as JSON with the admin key, after forgetting what the upstream saw.
    fn send(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        self.upstream.emulator.clear_seen();
        let request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(format!("http://{}{path}", self.gateway.addr))
            .header("authorization", format!("Bearer {ADMIN_KEY}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap();
        self.runtime.block_on(async {
            let response = self.client.request(request).await.unwrap();
            let (parts, body) = response.into_parts();
            Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: body.collect().await.unwrap().to_bytes(),
            }
        })
    }

    /// (accepted, refused) so far.
    fn tally(&self) -> (usize, usize) {
        (
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    /// Sends `body` for `kind` and checks the outcome against `Edit::parse` with the gateway's
    /// limits: accepted bodies reach the upstream once, as exactly the checked edit; refused ones
    /// are a 4xx envelope with the validator's code and field, and nothing reaches the upstream.
    fn check(&self, kind: EditKind, reveal: bool, body: &[u8]) -> Result<(), TestCaseError> {
        let (method, path) = request_of(kind, reveal);
        let expected = Edit::parse(kind, body, &gateway_limits(), unix_now());
        let tally = if expected.is_ok() {
            &self.accepted
        } else {
            &self.refused
        };
        tally.fetch_add(1, Ordering::Relaxed);
        let reply = self.send(method, path, body);
        let seen = self.upstream.emulator.seen();
        let shown = String::from_utf8_lossy(body);
        match expected {
            // Values only the stored token can judge: the token is read first, and since the
            // rig's upstream holds no token, the answer is the 404 of a token that does not exist.
            Ok(edit) if !edit.unconfirmed().is_empty() => {
                prop_assert!(
                    seen.len() == 1 && seen[0].method == "GET",
                    "{} {} {}: only the read: {:?}",
                    method,
                    path,
                    shown,
                    seen
                );
                reply.assert_envelope(404, "not_found");
            }
            Ok(edit) => {
                prop_assert_eq!(
                    seen.len(),
                    1,
                    "{} {} {}: {}",
                    method,
                    path,
                    shown,
                    reply.text()
                );
                prop_assert_eq!(seen[0].method.as_str(), method);
                let got: Value = serde_json::from_slice(&seen[0].body).unwrap();
                let want: Value = serde_json::from_slice(&edit.to_json()).unwrap();
                prop_assert_eq!(got, want, "{} {} {}", method, path, shown);
            }
            Err(error) => {
                prop_assert!(
                    seen.is_empty(),
                    "{} {} {} reached the upstream ({:?})",
                    method,
                    path,
                    shown,
                    error
                );
                prop_assert!(
                    (400..500).contains(&reply.status),
                    "{} {} {}: {} {}",
                    method,
                    path,
                    shown,
                    reply.status,
                    reply.text()
                );
                let (code, field) = match &error {
                    BodyError::Json(_) => ("invalid_json", None),
                    BodyError::Fields(faults) => (faults.code(), faults.field()),
                };
                reply.assert_envelope(400, code);
                let json = reply.json();
                prop_assert_eq!(json["error"]["field"].as_str(), field, "{}", json);
            }
        }
        Ok(())
    }
}

/// Every valid body of every kind reaches the upstream as exactly its token fields.
#[test]
fn valid_bodies_reach_the_upstream_as_checked() {
    let rig = Rig::start();
    let now = unix_now();
    let mut runner = proptest::test_runner::TestRunner::new(config(64));
    let strategy = (any_valid(now, now + 3600), any::<bool>());
    runner
        .run(&strategy, |((kind, body, forwarded), reveal)| {
            let (method, path) = request_of(kind, reveal);
            let reply = rig.send(method, path, body.to_string().as_bytes());
            let seen = rig.upstream.emulator.seen();
            prop_assert_eq!(
                seen.len(),
                1,
                "{} {} {}: {}",
                method,
                path,
                body,
                reply.text()
            );
            let got: Value = serde_json::from_slice(&seen[0].body).unwrap();
            prop_assert_eq!(got, forwarded, "{} {} {}", method, path, body);
            Ok(())
        })
        .unwrap();
}

/// Random bytes reach the upstream only when the validator accepts them, else a 4xx envelope.
#[test]
fn random_bytes_reach_the_upstream_only_if_accepted() {
    let rig = Rig::start();
    let now = unix_now();
    let mut runner = proptest::test_runner::TestRunner::new(config(64));
    let strategy = (any_bytes(now), any_kind(), any::<bool>());
    runner
        .run(&strategy, |(bytes, kind, reveal)| {
            rig.check(kind, reveal, &bytes)
        })
        .unwrap();
    let (accepted, refused) = rig.tally();
    eprintln!("random bytes: {accepted} accepted, {refused} refused");
    assert!(refused > 0);
}

/// Random JSON objects with token-ish keys reach the upstream only when the validator accepts
/// them, else a 4xx envelope.
#[test]
fn random_objects_reach_the_upstream_only_if_accepted() {
    let rig = Rig::start();
    let now = unix_now();
    let mut runner = proptest::test_runner::TestRunner::new(config(64));
    let strategy = (any_object_for_kind(now), any::<bool>());
    runner
        .run(&strategy, |((kind, text), reveal)| {
            rig.check(kind, reveal, text.as_bytes())
        })
        .unwrap();
    let (accepted, refused) = rig.tally();
    eprintln!("random objects: {accepted} accepted, {refused} refused");
    // Both outcomes are exercised (valid bodies with one key changed are often still valid).
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
}

/// An emulator and a gateway that reads no token before a change (`audit.capture_before =
/// false`): these bodies name tokens that do not exist, and what is checked here is what reaches
/// the upstream of them.
async fn unread_gateway() -> (tokengate::emulator::RunningEmulator, TestGateway) {
    let emulator = tokengate::emulator::Emulator::spawn(tokengate::emulator::EmulatorConfig::new(
        UPSTREAM_TOKEN,
        USER_ID,
    ))
    .await
    .unwrap();
    let mut options = Options::new(emulator.addr);
    options.audit_extra = "capture_before = false\n".into();
    (emulator, TestGateway::start(options).await)
}
