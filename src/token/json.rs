//! Strict JSON for request bodies (SPEC §4.1): one object, valid UTF-8, at most 32 levels of
//! nested arrays and objects (the top object is level 1), and no duplicate key at any level.
//!
//! A duplicate key is read differently by different parsers (Go keeps the last, some keep the
//! first), so a body that carries one is refused rather than guessed at. serde_json's own `Value`
//! keeps the last silently, so the body is read through a visitor that refuses instead.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The deepest nesting SPEC §4.1 allows.
pub const MAX_DEPTH: usize = 32;

/// Why a body is not acceptable JSON, for a person (with line and column where known).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(pub String);

/// Parses `bytes` as exactly one JSON object under the SPEC §4.1 rules.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(JsonError("the body is not valid UTF-8".into()));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = Strict { level: 1 }
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|e| JsonError(describe(&e)))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(JsonError(format!(
            "the body must be one JSON object, not {}",
            kind(&other)
        ))),
    }
}

/// Reads `bytes` as [`parse_object`] does, handing each member of the object to `member` as it is
/// read instead of building the map of them: a write's fields are checked in the same pass that
/// reads them (in the body's order, not the map's sorted one). On a refusal `member` may have seen
/// some members; the error is [`parse_object`]'s own, word for word (the failure path reads the
/// body again with it, so the two can never describe one body differently).
pub fn for_each_member(bytes: &[u8], member: impl FnMut(&str, Value)) -> Result<(), JsonError> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(JsonError("the body is not valid UTF-8".into()));
    };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let read = deserializer
        .deserialize_map(Members { member })
        .and_then(|()| deserializer.end());
    match read {
        Ok(()) => Ok(()),
        Err(error) => Err(match parse_object(bytes) {
            Err(error) => error,
            // Unreachable while both accept the same bodies; serde_json's words if ever not.
            Ok(_) => JsonError(describe(&error)),
        }),
    }
}

/// The top-level object of [`for_each_member`]: duplicate names refused (compared without
/// copying the names that need no unescaping), each value read by [`Strict`] at level 2.
struct Members<F> {
    member: F,
}

impl<'de, F: FnMut(&str, Value)> Visitor<'de> for Members<F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("one JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut access: A) -> Result<(), A::Error> {
        let inner = Strict { level: 1 }.nested()?;
        let mut seen: BTreeSet<Cow<'de, str>> = BTreeSet::new();
        while let Some(key) = access.next_key_seed(Key)? {
            if seen.contains(&key) {
                return Err(A::Error::custom(format_args!(
                    "the key `{}` appears twice in one object",
                    key.escape_debug()
                )));
            }
            let value = access.next_value_seed(inner)?;
            (self.member)(&key, value);
            seen.insert(key);
        }
        Ok(())
    }
}

/// A member name, borrowed from the body unless it had to be unescaped.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// A person's words for serde_json's error.
fn describe(error: &serde_json::Error) -> String {
    let text = error.to_string();
    if error.is_eof() {
        format!("the body is not complete JSON ({text})")
    } else if error.is_syntax() || error.is_data() {
        format!("the body is not valid JSON: {text}")
    } else {
        text
    }
}

/// What kind of JSON value this is, as a person says it.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number with a fraction or exponent",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads one value at nesting `level`, refusing duplicate keys and nesting past [`MAX_DEPTH`].
#[derive(Clone, Copy)]
struct Strict {
    level: usize,
}

impl Strict {
    fn nested<E: serde::de::Error>(self) -> Result<Strict, E> {
        if self.level > MAX_DEPTH {
            return Err(E::custom(format_args!(
                "arrays and objects are nested deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(Strict {
            level: self.level + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json never hands a non-finite float; `from_f64` is total for finite ones.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(A::Error::custom(format_args!(
                    "the key `{}` appears twice in one object",
                    key.escape_debug()
                )));
            }
            let value = access.next_value_seed(inner)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        // `levels` nested objects in all: {"a":{"a":...{}}}
        let mut text = "{}".to_string();
        for _ in 1..levels {
            text = format!("{{\"a\":{text}}}");
        }
        text
    }

    #[test]
    fn one_object_is_accepted() {
        let map = parse_object(br#" {"name":"x","ids":[1,2],"n":null} "#).unwrap();
        assert_eq!(map["name"], "x");
        assert!(parse_object(b"{}").unwrap().is_empty());
    }

    #[test]
    fn anything_but_one_object_is_refused() {
        for body in [
            &b""[..],
            b"[]",
            b"1",
            b"\"x\"",
            b"null",
            b"{} {}",
            b"{}x",
            b"{\"a\":1,}",
            b"{'a':1}",
            b"{\"a\":01}",
        ] {
            assert!(
                parse_object(body).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let error = parse_object(b"[1]").unwrap_err();
        assert!(error.0.contains("one JSON object, not an array"), "{error}");
        assert!(parse_object(b"{\"a\":\"\xff\"}")
            .unwrap_err()
            .0
            .contains("UTF-8"));
    }

    #[test]
    fn duplicate_keys_are_refused_at_every_level() {
        for body in [
            r#"{"name":"a","name":"b"}"#,
            r#"{"x":{"k":1,"k":1}}"#,
            r#"{"x":[{"k":1},{"j":1,"j":2}]}"#,
        ] {
            let error = parse_object(body.as_bytes()).unwrap_err();
            assert!(error.0.contains("appears twice"), "{body}: {error}");
        }
        // Keys equal only after unescaping are the same key.
        assert!(parse_object(br#"{"name":1,"n\u0061me":2}"#).is_err());
        // The same key in sibling objects is fine.
        assert!(parse_object(br#"{"a":{"k":1},"b":{"k":1}}"#).is_ok());
    }

    /// What [`for_each_member`] hands over, in order, or its error.
    fn members(body: &[u8]) -> Result<Vec<(String, Value)>, JsonError> {
        let mut seen = Vec::new();
        for_each_member(body, |key, value| seen.push((key.to_owned(), value)))?;
        Ok(seen)
    }

    #[test]
    fn members_come_in_the_bodys_order_and_refusals_are_parse_objects() {
        let read = members(br#"{"z":1,"a":{"k":[true]},"n\u0061me":"x"}"#).unwrap();
        let names: Vec<&str> = read.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["z", "a", "name"]);
        assert_eq!(read[1].1["k"][0], true);
        assert!(members(b"{}").unwrap().is_empty());
        let deep = format!("{{\"a\":{}", "[".repeat(100_000));
        let too_deep = format!("{{\"a\":{}1{}}}", "[".repeat(32), "]".repeat(32));
        for body in [
            &b""[..],
            b"[]",
            b"[1",
            b"1",
            b"null",
            b"{} {}",
            b"{}x",
            b"{\"a\":1,}",
            b"{\"a\":01}",
            b"{\"a\":\"\xff\"}",
            br#"{"name":"a","name":"b"}"#,
            br#"{"name":1,"n\u0061me":2}"#,
            br#"{"x":{"k":1,"k":1}}"#,
            deep.as_bytes(),
            too_deep.as_bytes(),
        ] {
            let error = members(body).unwrap_err();
            assert_eq!(
                Err(error),
                parse_object(body),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(members(nested(32).as_bytes()).is_ok());
    }

    #[test]
    fn nesting_stops_at_32_levels() {
        assert!(parse_object(nested(32).as_bytes()).is_ok());
        let error = parse_object(nested(33).as_bytes()).unwrap_err();
        assert!(error.0.contains("deeper than 32"), "{error}");
        let arrays = format!("{{\"a\":{}1{}}}", "[".repeat(31), "]".repeat(31));
        assert!(parse_object(arrays.as_bytes()).is_ok());
        let arrays = format!("{{\"a\":{}1{}}}", "[".repeat(32), "]".repeat(32));
        assert!(parse_object(arrays.as_bytes()).is_err());
        // Far deeper than serde_json's own limit: still a clean refusal, never a stack overflow.
        let deep = format!("{{\"a\":{}", "[".repeat(100_000));
        assert!(parse_object(deep.as_bytes()).is_err());
    }
}
