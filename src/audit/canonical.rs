//! Canonical JSON: RFC 8785, the JSON Canonicalization Scheme (JCS).
//!
//! The audit trail hashes the canonical form of each record (SPEC §6), so the same record always
//! gives the same bytes, whoever wrote it and whatever order its fields were built in:
//!
//! - object members sorted by their names compared as UTF-16 code units (sorted here, never left
//!   to the map type: `serde_json`'s `preserve_order` feature could be switched on by another crate);
//! - no insignificant white space;
//! - strings with only `"`, `\` and the control characters U+0000–U+001F escaped (`\b \t \n \f \r`
//!   in short form, the rest as `\u00xx` in lowercase hex); everything else, U+007F and non-ASCII
//!   included, is written as is;
//! - integers in plain decimal; other numbers as ECMAScript writes a double (shortest round-trip
//!   digits, exponent form from 1e21 and below 1e-6, `-0` as `0`).

use std::cmp::Ordering;
use std::io::Write as _;

use serde_json::{Map, Number, Value};

/// The canonical JSON (RFC 8785) of `value`.
pub fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out);
    out
}

/// Appends the canonical JSON (RFC 8785) of `value` to `out`.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => write_number(number, out),
        Value::String(string) => write_string(string, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map, None, out),
    }
}

/// Appends the canonical JSON of the object `map`, leaving out the member named `except` if any
/// (the audit hash covers a record without its own `hash`, and this spares a copy of the record).
pub(crate) fn write_object(map: &Map<String, Value>, except: Option<&str>, out: &mut Vec<u8>) {
    let mut members: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(name, _)| Some(name.as_str()) != except)
        .collect();
    members.sort_by(|a, b| utf16_order(a.0, b.0));
    out.push(b'{');
    for (i, (name, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(name, out);
        out.push(b':');
        write_canonical(value, out);
    }
    out.push(b'}');
}

/// RFC 8785 §3.2.3: member names compare as arrays of UTF-16 code units.
pub(crate) fn utf16_order(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

pub(crate) fn write_string(string: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = string.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_number(number: &Number, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    if let Some(int) = number.as_i64() {
        let _ = write!(out, "{int}");
    } else if let Some(int) = number.as_u64() {
        let _ = write!(out, "{int}");
    } else if let Some(float) = number.as_f64() {
        out.extend_from_slice(es_number(float).as_bytes());
    } else {
        out.extend_from_slice(number.to_string().as_bytes());
    }
}

/// ECMAScript's Number::toString for a double (ECMA-262 §6.1.6.1.20), which RFC 8785 §3.2.2.3
/// adopts: the shortest digits that read back as the same double, then plain or exponent form.
fn es_number(value: f64) -> String {
    if value == 0.0 {
        return "0".to_owned(); // -0 too
    }
    if !value.is_finite() {
        // serde_json never holds NaN or an infinity; JSON has no way to write them.
        return "null".to_owned();
    }
    let sign = if value < 0.0 { "-" } else { "" };
    // Rust's `{:e}` writes the shortest round-trip digits: `d[.ddd]e[-]x`.
    let scientific = format!("{:e}", value.abs());
    let Some((mantissa, exponent)) = scientific.split_once('e') else {
        return format!("{value}");
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i64;
    // value = 0.d1d2…dk × 10^n
    let n = exponent.parse::<i64>().unwrap_or(0) + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        format!("{int}.{frac}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let e_sign = if e < 0 { '-' } else { '+' };
        let (first, rest) = digits.split_at(1);
        if rest.is_empty() {
            format!("{first}e{e_sign}{}", e.abs())
        } else {
            format!("{first}.{rest}e{e_sign}{}", e.abs())
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(value: &Value) -> String {
        String::from_utf8(canonical(value)).unwrap()
    }

    #[test]
    #[allow(clippy::excessive_precision)] // the RFC's own digits
    fn rfc8785_example_3_2_2() {
        // RFC 8785 §3.2.2, with the numbers written as Rust literals (correctly rounded doubles).
        let value = json!({
            "numbers": [333333333.33333329_f64, 1E30_f64, 4.50_f64, 2e-3_f64, 0.000000000000000000000000001_f64],
            "string": "\u{20ac}$\u{000F}\u{000a}A'\u{0042}\u{0022}\u{005c}\\\"/",
            "literals": [null, true, false]
        });
        assert_eq!(
            text(&value),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn members_sort_by_utf16_code_units() {
        // RFC 8785 §3.2.3: U+1F600 (surrogates D83D DE00) sorts before U+FB33, unlike in UTF-8.
        let value: Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        assert_eq!(
            text(&value),
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
             \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
             \"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
    }

    #[test]
    fn nested_objects_are_sorted_and_compact() {
        let value =
            json!({"b": [1, {"z": 1, "a": [true, null]}], "a": {"y": "x", "x": {}}, "": []});
        assert_eq!(
            text(&value),
            r#"{"":[],"a":{"x":{},"y":"x"},"b":[1,{"a":[true,null],"z":1}]}"#
        );
    }

    #[test]
    fn strings_escape_only_what_jcs_escapes() {
        let value = json!("\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f} \u{7f}é€😀\u{2028}\"\\/");
        assert_eq!(
            text(&value),
            "\"\\u0000\\u0001\\b\\t\\n\\u000b\\f\\r\\u001f \u{7f}é€😀\u{2028}\\\"\\\\/\""
        );
        // And it reads back as the same string.
        assert_eq!(
            serde_json::from_slice::<Value>(&canonical(&value)).unwrap(),
            value
        );
    }

    #[test]
    fn numbers_follow_ecmascript() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (0.1, "0.1"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e-7, "1e-7"),
            (1e-6, "0.000001"),
            (1.5e-7, "1.5e-7"),
            (0.000123, "0.000123"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (-2.5e25, "-2.5e+25"),
            (9007199254740992.0, "9007199254740992"),
            (295147905179352830000.0, "295147905179352830000"),
            (4.35, "4.35"),
            (0.1 + 0.2, "0.30000000000000004"),
            (100.0, "100"),
        ];
        for &(value, expected) in cases {
            assert_eq!(es_number(value), expected, "{value:e}");
            assert_eq!(text(&json!(value)), expected, "{value:e}");
        }
    }

    #[test]
    fn integers_are_plain_decimal() {
        assert_eq!(
            text(&json!([0, -1, i64::MIN, u64::MAX, 1_000_000])),
            "[0,-1,-9223372036854775808,18446744073709551615,1000000]"
        );
    }

    #[test]
    fn canonical_form_is_stable_through_a_reparse() {
        let value = json!({"seq": 3, "f": [1e21, 0.5, -0.0], "s": "a\u{7f}b", "n": null});
        let once = canonical(&value);
        let again = canonical(&serde_json::from_slice::<Value>(&once).unwrap());
        assert_eq!(once, again);
    }

    #[test]
    fn write_object_can_leave_one_member_out() {
        let Value::Object(map) = json!({"b": 1, "hash": "x", "a": 2}) else {
            unreachable!()
        };
        let mut out = Vec::new();
        write_object(&map, Some("hash"), &mut out);
        assert_eq!(out, br#"{"a":2,"b":1}"#);
    }
}
