//! A change as the trail tells it (an intent and its outcome record), and the filters that
//! admit it.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::print::plain;
use super::time::parse_rfc3339;
use super::{token_ids, Filter};

/// A change as far as the trail tells it: its intent and its outcome record, either possibly
/// missing (never both).
pub(super) struct Change<'r> {
    pub(super) intent: Option<&'r Map<String, Value>>,
    pub(super) outcome: Option<&'r Map<String, Value>>,
}

impl<'r> Change<'r> {
    /// The first record of the change: the intent, or the lone outcome. The change's time,
    /// client, op and ids are this record's.
    pub(super) fn first(&self) -> Option<&'r Map<String, Value>> {
        self.intent.or(self.outcome)
    }

    /// A member of the first record, or of the outcome when the first lacks it (for display).
    pub(super) fn get(&self, name: &str) -> Option<&'r Value> {
        self.first()
            .and_then(|r| r.get(name))
            .or_else(|| self.outcome.and_then(|r| r.get(name)))
    }

    /// The ids the lines of this change are for: the first record's, or one line with none.
    pub(super) fn ids(&self) -> Vec<Option<u64>> {
        let ids = self.first().map(token_ids).unwrap_or_default();
        if ids.is_empty() {
            vec![None]
        } else {
            ids.into_iter().map(Some).collect()
        }
    }

    pub(super) fn ts(&self) -> Option<&'r str> {
        self.first()?.get("ts")?.as_str()
    }

    /// `forwarded`, `rejected`, `upstream_error`, `timeout` (or whatever the outcome record says),
    /// or `unknown` when there is no outcome record.
    pub(super) fn result(&self) -> Cow<'r, str> {
        match self.outcome {
            None => Cow::Borrowed("unknown"),
            Some(outcome) => match outcome.get("outcome") {
                Some(Value::String(word)) => Cow::Borrowed(word.as_str()),
                other => Cow::Owned(plain(other).into_owned()),
            },
        }
    }

    /// Whether the change is anything but a forwarded success: not forwarded, no outcome, or
    /// forwarded but failed (`upstream_success` false, or an error status).
    pub(super) fn failed(&self) -> bool {
        let Some(outcome) = self.outcome else {
            return true;
        };
        outcome.get("outcome").and_then(Value::as_str) != Some("forwarded")
            || outcome.get("upstream_success") == Some(&Value::Bool(false))
            || outcome
                .get("status")
                .and_then(Value::as_u64)
                .is_some_and(|s| s >= 400)
    }
}

impl Filter {
    /// The conditions that the first record decides: token, client, op and time.
    pub(super) fn admits_record(&self, change: &Change<'_>, id: Option<u64>) -> bool {
        let first = change.first();
        let text = |name: &str| first.and_then(|r| r.get(name)).and_then(Value::as_str);
        if self.token.is_some() && self.token != id {
            return false;
        }
        if self.client.is_some() && self.client.as_deref() != text("client") {
            return false;
        }
        if self.op.is_some() && self.op.as_deref() != text("op") {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(at) = change.ts().and_then(parse_rfc3339) else {
                return false;
            };
            if self.since.is_some_and(|since| at < since)
                || self.until.is_some_and(|until| at >= until)
            {
                return false;
            }
        }
        true
    }

    /// The conditions that the outcome decides.
    pub(super) fn admits_result(&self, change: &Change<'_>) -> bool {
        if let Some(outcome) = &self.outcome {
            if change.result() != outcome.as_str() {
                return false;
            }
        }
        !self.failed || change.failed()
    }
}
