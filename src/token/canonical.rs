//! The canonical JSON (RFC 8785) of a token edit, written straight from its typed fields.
//!
//! A checked write's body is serialised once: these bytes are what the upstream receives and
//! what both audit records carry as `request` (SPEC §6). Going through a `serde_json::Value`
//! first (a `BTreeMap` of freshly allocated keys and values, then a second walk to write it) cost
//! as much as the rest of the validation on the profile of an audited `PUT`.
//!
//! Every typed field serialises as a string, an integer, a boolean, `null` or an array of strings,
//! whose compact JSON from `serde_json` is already canonical (the same escapes, plain decimal
//! integers); the unchecked values (`upstream.extra_fields`, carried stored values) may hold any
//! JSON and go through the canonical writer (so a number in them is forwarded as RFC 8785 writes a
//! double: `1e21` as `1e+21`, `-0` as `0`, the same number to any JSON reader). Members are then
//! sorted as RFC 8785 sorts them; new-api reads a body's members in any order.

use std::ops::Range;

use serde::Serialize;
use serde_json::{Map, Value};

use super::edit::TokenFields;
use crate::audit::canonical::{utf16_order, write_canonical, write_string};
use crate::route::TokenId;

/// Each member's name and where its value lies in one shared buffer, before sorting.
struct Members<'a> {
    values: Vec<u8>,
    list: Vec<(&'a str, Range<usize>)>,
}

impl<'a> Members<'a> {
    /// A typed field whose compact JSON is canonical (see the module's documentation).
    fn typed<T: Serialize>(&mut self, name: &'a str, value: Option<&T>) {
        let Some(value) = value else {
            return;
        };
        let start = self.values.len();
        // Writing strings, integers and booleans to a Vec cannot fail; on the impossible error
        // the partial value is dropped rather than left half-written.
        if serde_json::to_writer(&mut self.values, value).is_err() {
            self.values.truncate(start);
            return;
        }
        self.list.push((name, start..self.values.len()));
    }

    /// Members of a map of unchecked JSON values.
    fn map(&mut self, map: &'a Map<String, Value>) {
        for (name, value) in map {
            let start = self.values.len();
            write_canonical(value, &mut self.values);
            self.list.push((name, start..self.values.len()));
        }
    }

    /// The object: members sorted by name, and where a name comes twice the last one written
    /// (what `serde_json::to_value` of the same fields would keep).
    fn finish(mut self) -> Vec<u8> {
        self.list.sort_by(|a, b| utf16_order(a.0, b.0));
        let mut out = Vec::with_capacity(self.values.len() + self.list.len() * 24 + 2);
        out.push(b'{');
        let mut first = true;
        for (i, (name, range)) in self.list.iter().enumerate() {
            if self.list.get(i + 1).is_some_and(|next| next.0 == *name) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            write_string(name, &mut out);
            out.push(b':');
            out.extend_from_slice(&self.values[range.clone()]);
        }
        out.push(b'}');
        out
    }
}

impl TokenFields {
    /// The canonical JSON of these fields: the same bytes as the canonical form of
    /// `serde_json::to_value(self)`, without building that value.
    pub fn canonical_json(&self) -> Vec<u8> {
        // Taken apart whole, so that a field added to `TokenFields` cannot be left out of the
        // body the upstream receives without the compiler saying so.
        let TokenFields {
            id,
            name,
            remain_quota,
            unlimited_quota,
            expired_time,
            model_limits_enabled,
            model_limits,
            allow_ips,
            group,
            cross_group_retry,
            auto_groups,
            status,
            mj_image_mode,
            mj_custom_proxy,
            extra,
            carried,
            unconfirmed: _,
        } = self;
        let mut members = Members {
            values: Vec::with_capacity(256),
            list: Vec::with_capacity(16),
        };
        members.typed("id", id.map(TokenId::get).as_ref());
        members.typed("name", name.as_ref());
        members.typed("remain_quota", remain_quota.as_ref());
        members.typed("unlimited_quota", unlimited_quota.as_ref());
        members.typed("expired_time", expired_time.as_ref());
        members.typed("model_limits_enabled", model_limits_enabled.as_ref());
        members.typed("model_limits", model_limits.as_ref());
        members.typed("allow_ips", allow_ips.as_ref());
        members.typed("group", group.as_ref());
        members.typed("cross_group_retry", cross_group_retry.as_ref());
        members.typed("auto_groups", auto_groups.as_ref());
        members.typed("status", status.as_ref());
        members.typed("mj_image_mode", mj_image_mode.as_ref());
        members.typed("mj_custom_proxy", mj_custom_proxy.as_ref());
        members.map(extra);
        members.map(carried);
        members.finish()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::batch::BatchMode;
    use super::super::edit::{full_update, Edit, EditKind, Limits};
    use crate::audit::canonical::canonical;

    const NOW: i64 = 1_800_000_000;

    fn limits(extra: &[&str]) -> Limits {
        Limits {
            name_max_bytes: 50,
            max_batch: 100,
            require_complete_updates: true,
            extra_fields: extra.iter().map(|s| s.to_string()).collect(),
            batch_update: BatchMode::Fanout,
        }
    }

    /// What the records carried before: the canonical writer over the fields as a JSON value.
    fn through_a_value(edit: &Edit) -> String {
        String::from_utf8(canonical(&edit.to_value())).unwrap()
    }

    #[test]
    fn unchecked_values_and_awkward_names_are_written_as_the_canonical_writer_does() {
        // Extra fields of every JSON type, with names whose UTF-16 order is not their UTF-8
        // order (U+FB01 sorts after the surrogates of U+1F600), and strings that need escapes.
        let extra = ["billing_type", "\u{fb01}x", "\u{1f600}", "a\u{7f}"];
        let body = json!({
            "name": "n\"\\é😀", "remain_quota": 10, "unlimited_quota": false,
            "expired_time": -1, "model_limits_enabled": true, "model_limits": "gpt-4,o1",
            "allow_ips": null, "group": "auto", "cross_group_retry": true,
            "auto_groups": ["default", "vip"], "mj_image_mode": "fast",
            "mj_custom_proxy": "https://proxy.example/",
            "billing_type": {"z": [1.5, 1e21, -2.5, 1e-7], "a": {"b": null}},
            "\u{fb01}x": 1, "\u{1f600}": "s\u{1}\u{1f}\t\n\u{7f}\u{2028}", "a\u{7f}": 12345678901234567890u64,
        });
        let edit = Edit::parse(
            EditKind::Create,
            body.to_string().as_bytes(),
            &limits(&extra),
            NOW,
        )
        .unwrap();
        let written = String::from_utf8(edit.canonical_json()).unwrap();
        assert_eq!(written, through_a_value(&edit));
        assert!(written.contains(r#""1e+21""#) || written.contains("1e+21"));
        assert!(written.find('\u{1f600}') < written.find('\u{fb01}'));
        let back: Value = serde_json::from_str(&written).unwrap();
        let forwarded: Value = serde_json::from_slice(&edit.to_json()).unwrap();
        assert_eq!(back, forwarded);
    }

    #[test]
    fn carried_stored_values_and_ids_are_members_like_any_other() {
        // A used unlimited token's negative quota, equal to the stored one, is carried.
        let stored = json!({"id": 7, "remain_quota": -5, "name": "ci"});
        let merged = json!({
            "id": 7, "name": "ci", "remain_quota": -5, "unlimited_quota": true,
            "expired_time": -1, "model_limits_enabled": false, "model_limits": "",
            "allow_ips": "", "group": "",
        });
        let fields = full_update(
            merged.as_object().unwrap().clone(),
            stored.as_object().unwrap(),
            &limits(&[]),
            NOW,
        )
        .unwrap();
        assert_eq!(fields.carried.get("remain_quota"), Some(&json!(-5)));
        let edit = Edit::Update(fields);
        let written = String::from_utf8(edit.canonical_json()).unwrap();
        assert_eq!(written, through_a_value(&edit));
        assert!(written.starts_with(r#"{"allow_ips":"","expired_time":-1,"group":"","id":7,"#));
        for kind_body in [
            (EditKind::Ids, json!({"ids": [3, 1, 2]})),
            (EditKind::StatusOnly, json!({"id": 9, "status": 2})),
            (EditKind::Patch, json!({"status": 1})),
        ] {
            let edit = Edit::parse(
                kind_body.0,
                kind_body.1.to_string().as_bytes(),
                &limits(&[]),
                NOW,
            )
            .unwrap();
            assert_eq!(
                String::from_utf8(edit.canonical_json()).unwrap(),
                through_a_value(&edit)
            );
        }
    }
}
