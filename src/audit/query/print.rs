//! How a change is printed: one line of text (`field: from → to` for each change) or one JSON
//! object per line (`--format json`).

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::change::Change;
use super::token_ids;
use crate::audit::canonical::{write_canonical, write_object};

/// One change as a line of text: time, origin, client, source IP, op, token id, outcome, status
/// (and reason, `upstream_success=false`, `truncated`, `suppressed=N` when so), then ` | ` and
/// what changed.
pub(super) fn text(change: &Change<'_>, id: Option<u64>, out: &mut Vec<u8>) {
    let mut line = String::with_capacity(256);
    let mut column = |value: &str| {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(value);
    };
    column(&plain(change.get("ts")));
    column(&plain(change.get("origin")));
    column(&plain(change.get("client")));
    column(&plain(change.get("source_ip")));
    column(&plain(change.get("op")));
    column(&id.map_or_else(|| "-".to_owned(), |id| id.to_string()));
    column(&change.result());
    match change.outcome {
        None => column("-"),
        Some(outcome) => {
            column(&plain(outcome.get("status")));
            if let Some(reason) = outcome.get("reason").filter(|r| !r.is_null()) {
                column(&plain(Some(reason)));
            }
            if outcome.get("upstream_success") == Some(&Value::Bool(false)) {
                column("upstream_success=false");
            }
            if let Some(n) = outcome.get("suppressed").filter(|n| !n.is_null()) {
                column(&format!("suppressed={}", plain(Some(n))));
            }
        }
    }
    let truncated = [change.intent, change.outcome]
        .into_iter()
        .flatten()
        .any(|r| r.get("truncated") == Some(&Value::Bool(true)));
    if truncated {
        column("truncated");
    }
    let changes = what_changed(change, id);
    if !changes.is_empty() {
        line.push_str(" | ");
        line.push_str(&changes.join(", "));
    }
    line.push('\n');
    out.extend_from_slice(line.as_bytes());
}

/// What a change changed, one item per field: from the intent's `changes` (`field: from → to`,
/// SPEC §6.1); without them (version 1 records, `audit.capture_before = false`, a delete), its
/// `before` whole and the request body's fields (`field → value`, the ids left out: the line
/// names its token).
fn what_changed(change: &Change<'_>, id: Option<u64>) -> Vec<String> {
    let ids = change.first().map(token_ids).unwrap_or_default();
    let intent = change.intent;
    let mut items = Vec::new();
    match intent
        .and_then(|r| r.get("changes"))
        .map(|c| for_id(c, id, &ids))
    {
        Some(Value::Array(list)) if list.is_empty() => items.push("(nothing changed)".to_owned()),
        Some(Value::Array(list)) => {
            for item in list {
                match item.as_object() {
                    Some(member) if member.get("field").is_some_and(Value::is_string) => items
                        .push(format!(
                            "{}: {} → {}",
                            plain(member.get("field")),
                            value_text(member.get("from")),
                            value_text(member.get("to")),
                        )),
                    _ => items.push(value_text(Some(item))),
                }
            }
        }
        Some(other) if !other.is_null() => {
            items.push(format!("changes: {}", value_text(Some(other))))
        }
        _ => {
            let before = intent
                .and_then(|r| r.get("before"))
                .map(|b| for_id(b, id, &ids));
            if let Some(before) = before.filter(|b| !b.is_null()) {
                items.push(format!("before: {}", value_text(Some(before))));
            }
            match change.first().and_then(|r| r.get("request")) {
                Some(Value::Object(body)) if !is_omitted(body) => {
                    for (field, value) in body {
                        if field != "id" && field != "ids" {
                            items.push(format!(
                                "{} → {}",
                                plain_str(field),
                                value_text(Some(value))
                            ));
                        }
                    }
                }
                Some(Value::Null) | None => {}
                Some(other) => items.push(format!("request: {}", value_text(Some(other)))),
            }
        }
    }
    items
}

/// The part of a record's `before` or `changes` that is about token `id`, when a record of several
/// ids holds one per id (an object keyed by the ids, or an array in the order of `token_ids`);
/// otherwise the value itself.
fn for_id<'v>(value: &'v Value, id: Option<u64>, ids: &[u64]) -> &'v Value {
    let (Some(id), true) = (id, ids.len() > 1) else {
        return value;
    };
    match value {
        Value::Object(by_id) if !is_omitted(by_id) => {
            by_id.get(id.to_string().as_str()).unwrap_or(value)
        }
        Value::Array(per_id)
            if per_id.len() == ids.len() && per_id.iter().all(|v| !v.is_object()) =>
        {
            ids.iter()
                .position(|&i| i == id)
                .and_then(|at| per_id.get(at))
                .unwrap_or(value)
        }
        _ => value,
    }
}

/// Whether an object is what replaces a value that did not fit the record (SPEC §6, format):
/// `{"bytes": N, "omitted": true, "sha256": "<hex>"}`.
fn is_omitted(object: &Map<String, Value>) -> bool {
    object.get("omitted") == Some(&Value::Bool(true))
}

/// A value as compact (canonical) JSON, or `<omitted: N bytes, sha256 H>` for an omitted one,
/// `-` when missing.
fn value_text(value: Option<&Value>) -> String {
    match value {
        None => "-".to_owned(),
        Some(Value::Object(object)) if is_omitted(object) => {
            let mut text = String::from("<omitted");
            if let Some(bytes) = object.get("bytes") {
                let _ = write!(text, ": {} bytes", plain(Some(bytes)));
            }
            if let Some(digest) = object.get("sha256") {
                let _ = write!(text, ", sha256 {}", plain(Some(digest)));
            }
            text.push('>');
            text
        }
        Some(value) => json_text(value),
    }
}

fn json_text(value: &Value) -> String {
    let mut bytes = Vec::with_capacity(64);
    write_canonical(value, &mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A member as one word of a text line: a string as is when it holds no white space or control
/// character (else as JSON), a missing or null member as `-`, anything else as JSON. A line
/// stays one line whatever the record holds.
pub(super) fn plain(value: Option<&Value>) -> Cow<'_, str> {
    match value {
        None | Some(Value::Null) => Cow::Borrowed("-"),
        Some(Value::String(text)) => plain_str(text),
        Some(other) => Cow::Owned(json_text(other)),
    }
}

fn plain_str(text: &str) -> Cow<'_, str> {
    if !text.is_empty()
        && text != "-"
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '|')
    {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(json_text(&Value::String(text.to_owned())))
    }
}

/// One change as a JSON line, canonical (members sorted): `intent` and `outcome` (the records
/// whole, or null), `result` (`--outcome`'s words), `token_id` (the id this line is for, or null)
/// and `ts` (the first record's).
pub(super) fn json(change: &Change<'_>, id: Option<u64>, out: &mut Vec<u8>) {
    let record = |record: Option<&Map<String, Value>>, out: &mut Vec<u8>| match record {
        Some(record) => write_object(record, None, out),
        None => out.extend_from_slice(b"null"),
    };
    out.extend_from_slice(b"{\"intent\":");
    record(change.intent, out);
    out.extend_from_slice(b",\"outcome\":");
    record(change.outcome, out);
    out.extend_from_slice(b",\"result\":");
    write_canonical(&Value::String(change.result().into_owned()), out);
    out.extend_from_slice(b",\"token_id\":");
    match id {
        Some(id) => out.extend_from_slice(id.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"ts\":");
    write_canonical(change.get("ts").unwrap_or(&Value::Null), out);
    out.extend_from_slice(b"}\n");
}
