use super::*;
use proptest::prelude::*;
use serde_json::json;

/// Feeds `records` (JSON objects; `seq` is added) to a query and returns its output lines, the
/// query kept for inspection.
struct Run {
    query: Query<Vec<u8>>,
    seq: u64,
}

impl Run {
    fn new(filter: Filter, format: Format) -> Run {
        Run {
            query: Query::new(filter, format, Vec::new()),
            seq: 0,
        }
    }

    fn feed(&mut self, record: Value) {
        self.seq += 1;
        let Value::Object(record) = record else {
            panic!("not an object")
        };
        self.query
            .record(Verified {
                file: 0,
                line: self.seq as usize,
                seq: self.seq,
                record,
            })
            .unwrap();
    }

    fn output(&self) -> Vec<String> {
        String::from_utf8(self.query.out.clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn finish(mut self) -> (Vec<String>, u64, u64, Vec<String>) {
        self.query.finish().unwrap();
        let lines = self.output();
        let Query {
            printed,
            unknown,
            notes,
            ..
        } = self.query;
        (lines, printed, unknown, notes)
    }
}

fn intent(request_id: &str, ids: &[u64], ts: &str) -> Value {
    json!({
        "v": 1, "ts": ts, "phase": "intent", "request_id": request_id,
        "caller_request_id": null, "client": "team-a", "source_ip": "10.0.0.7",
        "method": "PUT", "path": "/api/token/", "op": "update", "token_ids": ids,
        "request": {"id": ids.first(), "name": "n", "remain_quota": 5},
    })
}

fn outcome(request_id: &str, ids: &[u64], ts: &str, outcome: &str, status: u16) -> Value {
    let mut record = intent(request_id, ids, ts);
    let fields = record.as_object_mut().unwrap();
    fields.insert("phase".into(), json!("outcome"));
    fields.insert("outcome".into(), json!(outcome));
    fields.insert("status".into(), json!(status));
    fields.insert(
        "reason".into(),
        if outcome == "forwarded" {
            Value::Null
        } else {
            json!("forbidden")
        },
    );
    let success = if outcome == "forwarded" {
        json!(true)
    } else {
        Value::Null
    };
    fields.insert("upstream_success".into(), success);
    record
}

const T: &str = "2026-11-22T15:20:01.000Z";

#[test]
fn times_parse_as_rfc3339_or_spans_before_now() {
    let at = |text| parse_rfc3339(text);
    assert_eq!(at("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(at("1970-01-01T00:00:00.001Z"), Some(1));
    assert_eq!(at("2026-11-22T14:50:06.000Z"), Some(1_795_359_006_000));
    assert_eq!(at("2026-11-22T14:50:06Z"), Some(1_795_359_006_000));
    assert_eq!(at("2026-11-22t14:50:06z"), Some(1_795_359_006_000));
    assert_eq!(at("2026-11-22 14:50:06Z"), Some(1_795_359_006_000));
    assert_eq!(at("2026-11-22T16:50:06+02:00"), Some(1_795_359_006_000));
    assert_eq!(at("2026-11-22T13:20:06-01:30"), Some(1_795_359_006_000));
    assert_eq!(at("2026-11-22T14:50:06.1Z"), Some(1_795_359_006_100));
    assert_eq!(
        at("2026-11-22T14:50:06.123456789Z"),
        Some(1_795_359_006_123)
    );
    assert_eq!(at("2000-02-29T00:00:00.123Z"), Some(951_782_400_123));
    assert_eq!(at("2026-11-22"), Some(1_795_305_600_000));
    assert_eq!(at("1969-12-31T23:59:59Z"), Some(-1000));
    assert_eq!(at("2016-12-31T23:59:60Z"), Some(1_483_228_800_000));
    for bad in [
        "",
        "2026",
        "2026-11-22T",
        "2026-11-22T14:50Z",
        "2026-11-22T14:50:06",
        "2026-13-01T00:00:00Z",
        "2026-02-29T00:00:00Z",
        "2026-11-31",
        "2026-11-22T24:00:00Z",
        "2026-11-22T14:60:00Z",
        "2026-11-22T14:50:61Z",
        "2026-11-22T14:50:06.Z",
        "2026-11-22T14:50:06+0200",
        "2026-11-22T14:50:06+24:00",
        "2026-11-22T14:50:06Zx",
        "2026-11-22X14:50:06Z",
        "２026-11-22",
        "2026-11-22T14:50:06.000Z ",
        "+2026-11-22",
        "-026-11-22",
    ] {
        assert_eq!(at(bad), None, "{bad:?}");
    }
    let now = 1_795_359_006_000;
    assert_eq!(parse_time("45s", now), Ok(now - 45_000));
    assert_eq!(parse_time("30m", now), Ok(now - 1_800_000));
    assert_eq!(parse_time("12h", now), Ok(now - 43_200_000));
    assert_eq!(parse_time("7d", now), Ok(now - 604_800_000));
    assert_eq!(parse_time("0s", now), Ok(now));
    assert_eq!(parse_time("2026-11-22T14:50:06Z", 0), Ok(now));
    for bad in [
        "7w",
        "d",
        "-7d",
        "7 d",
        "1.5h",
        "99999999999999999999d",
        "yesterday",
        "7dd",
    ] {
        assert!(parse_time(bad, now).is_err(), "{bad:?}");
    }
    assert!(parse_time("7w", now).unwrap_err().contains("s, m, h or d"));
}

#[test]
fn days_from_civil_inverts_the_writers_timestamps() {
    use std::time::{Duration, UNIX_EPOCH};
    // Every day from 1900 to 2200, through the writer's own formatting.
    let mut day = -25_567i64;
    while day < 84_000 {
        let time = if day >= 0 {
            UNIX_EPOCH + Duration::from_secs(day as u64 * 86_400 + 3_723)
        } else {
            UNIX_EPOCH - Duration::from_secs((-day) as u64 * 86_400 - 3_723)
        };
        let text = super::super::writer::timestamp(time);
        if day >= 0 {
            assert_eq!(
                parse_rfc3339(&text),
                Some((day * 86_400 + 3_723) * 1000),
                "{text}"
            );
        }
        day += 1;
    }
}

#[test]
fn an_intent_pairs_with_its_outcome_by_request_and_token_id() {
    let mut run = Run::new(Filter::default(), Format::Text);
    // Two requests interleaved, and a second one on the same request id but another token.
    run.feed(intent("a", &[1], "2026-11-22T15:20:01.000Z"));
    run.feed(intent("b", &[2], "2026-11-22T15:20:02.000Z"));
    run.feed(intent("a", &[3], "2026-11-22T15:20:03.000Z"));
    run.feed(outcome(
        "b",
        &[2],
        "2026-11-22T15:20:04.000Z",
        "forwarded",
        200,
    ));
    // b completed, but a (earlier) still waits: b is held back.
    assert!(run.output().is_empty(), "{:?}", run.output());
    run.feed(outcome(
        "a",
        &[3],
        "2026-11-22T15:20:05.000Z",
        "rejected",
        403,
    ));
    run.feed(outcome(
        "a",
        &[1],
        "2026-11-22T15:20:06.000Z",
        "forwarded",
        200,
    ));
    assert!(run.query.pending.is_empty() && run.query.holding.is_empty());
    assert!(run.query.held.is_empty() && run.query.held_bytes == 0);
    let (lines, printed, unknown, notes) = run.finish();
    assert_eq!((printed, unknown), (3, 0));
    assert!(notes.is_empty());
    assert_eq!(
        lines,
        [
            "2026-11-22T15:20:01.000Z - team-a 10.0.0.7 update 1 forwarded 200 | name → \"n\", remain_quota → 5",
            "2026-11-22T15:20:02.000Z - team-a 10.0.0.7 update 2 forwarded 200 | name → \"n\", remain_quota → 5",
            "2026-11-22T15:20:03.000Z - team-a 10.0.0.7 update 3 rejected 403 forbidden | name → \"n\", remain_quota → 5",
        ]
    );
}

#[test]
fn a_patchs_two_puts_pair_in_turn_and_a_lone_outcome_is_a_change_of_its_own() {
    let mut run = Run::new(Filter::default(), Format::Json);
    run.feed(intent("p", &[7], "2026-11-22T15:20:01.000Z"));
    run.feed(outcome(
        "p",
        &[7],
        "2026-11-22T15:20:02.000Z",
        "forwarded",
        200,
    ));
    run.feed(intent("p", &[7], "2026-11-22T15:20:03.000Z"));
    run.feed(outcome(
        "p",
        &[7],
        "2026-11-22T15:20:04.000Z",
        "upstream_error",
        502,
    ));
    run.feed(outcome(
        "r",
        &[8],
        "2026-11-22T15:20:05.000Z",
        "rejected",
        403,
    ));
    let (lines, ..) = run.finish();
    let lines: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["intent"]["ts"], "2026-11-22T15:20:01.000Z");
    assert_eq!(lines[0]["outcome"]["ts"], "2026-11-22T15:20:02.000Z");
    assert_eq!(lines[1]["intent"]["ts"], "2026-11-22T15:20:03.000Z");
    assert_eq!(lines[1]["outcome"]["ts"], "2026-11-22T15:20:04.000Z");
    assert_eq!(lines[1]["result"], "upstream_error");
    assert_eq!(lines[2]["intent"], Value::Null);
    assert_eq!(lines[2]["result"], "rejected");
    assert_eq!(
        (lines[2]["token_id"].clone(), lines[2]["ts"].clone()),
        (json!(8), json!("2026-11-22T15:20:05.000Z"))
    );
}

#[test]
fn memory_holds_only_the_intents_in_flight() {
    // 100 000 changes, 8 in flight at once (7 once each outcome is read), never more kept.
    let mut run = Run::new(
        Filter {
            token: Some(5),
            ..Filter::default()
        },
        Format::Text,
    );
    let mut most = 0;
    for n in 0..100_000u64 {
        let id = format!("{n:032x}");
        run.feed(intent(&id, &[n % 10], T));
        if n >= 7 {
            let done = format!("{:032x}", n - 7);
            run.feed(outcome(&done, &[(n - 7) % 10], T, "forwarded", 200));
        }
        let kept: usize = run.query.pending.values().map(VecDeque::len).sum();
        most = most.max(kept);
        assert!(run.query.held.len() <= 8);
    }
    assert_eq!(most, 7);
    // Those that cannot match keep their key only.
    let kept_records = run
        .query
        .pending
        .values()
        .flatten()
        .filter(|p| p.intent.is_some())
        .count();
    assert!(kept_records <= 1, "{kept_records}");
    let (lines, printed, unknown, _) = run.finish();
    // The last seven never got their outcome: one of them names token 5.
    assert_eq!((printed, unknown), (10_000, 1));
    assert_eq!(lines.len(), 10_000);
    assert!(
        lines.last().unwrap().contains(" 5 unknown -"),
        "{:?}",
        lines.last()
    );
}

#[test]
fn a_new_writer_process_settles_the_intents_the_last_one_left() {
    let mut run = Run::new(Filter::default(), Format::Text);
    let first = |n: u64| format!("{:016x}{n:016x}", 0xaaaa_u64);
    let second = |n: u64| format!("{:016x}{n:016x}", 0xbbbb_u64);
    run.feed(intent(&first(1), &[1], "2026-11-22T15:20:01.000Z"));
    run.feed(intent(&first(2), &[2], "2026-11-22T15:20:02.000Z"));
    run.feed(outcome(
        &first(2),
        &[2],
        "2026-11-22T15:20:03.000Z",
        "forwarded",
        200,
    ));
    assert!(run.output().is_empty(), "held behind the first intent");
    // A crash, then a restart: a record of another process.
    run.feed(intent(&second(1), &[3], "2026-11-22T15:30:00.000Z"));
    assert_eq!(run.output().len(), 2, "{:?}", run.output());
    assert!(run.output()[0].contains(" 1 unknown -"));
    assert!(run.query.pending.len() == 1 && run.query.held.is_empty());
    run.feed(outcome(
        &second(1),
        &[3],
        "2026-11-22T15:30:01.000Z",
        "forwarded",
        200,
    ));
    let (lines, printed, unknown, _) = run.finish();
    assert_eq!((printed, unknown), (3, 1));
    assert!(lines[2].contains(" 3 forwarded 200"));
}

#[test]
fn output_held_past_the_cap_is_printed_with_a_note() {
    let mut run = Run::new(Filter::default(), Format::Json);
    run.feed(intent("stuck", &[1], T));
    let big = "x".repeat(1 << 20);
    let mut n = 0;
    while run.output().is_empty() {
        let id = format!("r{n}");
        let mut record = intent(&id, &[2], T);
        record["request"]["name"] = json!(big);
        run.feed(record.clone());
        record["phase"] = json!("outcome");
        record["outcome"] = json!("forwarded");
        run.feed(record);
        n += 1;
        assert!(n < 100, "the cap never released the output");
    }
    assert!(run.query.held_bytes <= MAX_HELD_BYTES);
    assert_eq!(run.query.notes.len(), 1);
    assert!(
        run.query.notes[0].contains("seq 1"),
        "{:?}",
        run.query.notes
    );
    run.feed(outcome("stuck", &[1], T, "forwarded", 200));
    let (lines, ..) = run.finish();
    assert_eq!(lines.len(), n + 1);
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["intent"]["request_id"], "stuck");
}

#[test]
fn a_change_of_several_ids_is_a_line_per_id() {
    let mut run = Run::new(Filter::default(), Format::Text);
    let mut delete = intent("d", &[4, 5, 6], T);
    delete["op"] = json!("batch_delete");
    delete["request"] = json!({"ids": [4, 5, 6]});
    delete["before"] = json!({"4": {"name": "four"}, "5": {"name": "five"}, "6": null});
    delete["changes"] = Value::Null;
    run.feed(delete.clone());
    let mut done = delete.clone();
    done["phase"] = json!("outcome");
    done["outcome"] = json!("forwarded");
    done["status"] = json!(200);
    run.feed(done);
    let (lines, ..) = run.finish();
    assert_eq!(
        lines,
        [
            "2026-11-22T15:20:01.000Z - team-a 10.0.0.7 batch_delete 4 - - | before: {\"name\":\"four\"}",
            "2026-11-22T15:20:01.000Z - team-a 10.0.0.7 batch_delete 5 - - | before: {\"name\":\"five\"}",
            "2026-11-22T15:20:01.000Z - team-a 10.0.0.7 batch_delete 6 - -",
        ]
        .map(|l| l.replace(" - - ", " forwarded 200 ").replace(" - -", " forwarded 200"))
    );
}

#[test]
fn changes_omitted_values_and_truncation_are_shown_as_such() {
    let mut run = Run::new(Filter::default(), Format::Text);
    let mut update = intent("u", &[873], T);
    update["v"] = json!(2);
    update["origin"] = json!("gw-1");
    update["truncated"] = json!(true);
    update["changes"] = json!([
        {"field": "model_limits", "from": {"bytes": 200000, "omitted": true, "sha256": "ab12"}, "to": ""},
        {"field": "remain_quota", "from": 500000, "to": 2000000},
        {"field": "status", "from": 1},
        "junk",
    ]);
    run.feed(update.clone());
    let mut done = update.clone();
    done["phase"] = json!("outcome");
    done["outcome"] = json!("forwarded");
    done["status"] = json!(200);
    done["upstream_success"] = json!(false);
    done["truncated"] = Value::Null;
    run.feed(done);
    let mut nothing = intent("n", &[9], T);
    nothing["changes"] = json!([]);
    run.feed(nothing);
    let mut omitted = intent("o", &[10], T);
    omitted["request"] = json!({"bytes": 5, "omitted": true, "sha256": "cd34"});
    run.feed(omitted);
    let (lines, ..) = run.finish();
    assert_eq!(
        lines,
        [
            "2026-11-22T15:20:01.000Z gw-1 team-a 10.0.0.7 update 873 forwarded 200 upstream_success=false truncated | model_limits: <omitted: 200000 bytes, sha256 ab12> → \"\", remain_quota: 500000 → 2000000, status: 1 → -, \"junk\"",
            "2026-11-22T15:20:01.000Z - team-a 10.0.0.7 update 9 unknown - | (nothing changed)",
            "2026-11-22T15:20:01.000Z - team-a 10.0.0.7 update 10 unknown - | request: <omitted: 5 bytes, sha256 cd34>",
        ]
    );
}

#[test]
fn filters_each_decide() {
    let feed = |filter: Filter| {
        let mut run = Run::new(filter, Format::Text);
        run.feed(intent("a", &[1], "2026-11-22T10:00:00.000Z"));
        run.feed(outcome(
            "a",
            &[1],
            "2026-11-22T10:00:00.100Z",
            "forwarded",
            200,
        ));
        let mut b = intent("b", &[2], "2026-11-22T11:00:00.000Z");
        b["client"] = json!("team-b");
        b["op"] = json!("delete");
        run.feed(b.clone());
        b["phase"] = json!("outcome");
        b["outcome"] = json!("forwarded");
        b["status"] = json!(200);
        b["upstream_success"] = json!(false);
        run.feed(b);
        run.feed(outcome(
            "c",
            &[3],
            "2026-11-22T12:00:00.000Z",
            "rejected",
            403,
        ));
        run.feed(outcome(
            "d",
            &[4],
            "2026-11-22T13:00:00.000Z",
            "timeout",
            504,
        ));
        run.feed(intent("e", &[5], "2026-11-22T14:00:00.000Z"));
        let (lines, ..) = run.finish();
        lines
            .iter()
            .map(|l| l.split(' ').nth(5).unwrap().parse::<u64>().unwrap())
            .collect::<Vec<u64>>()
    };
    let at = |t| parse_rfc3339(t);
    assert_eq!(feed(Filter::default()), [1, 2, 3, 4, 5]);
    let f = Filter::default;
    assert_eq!(
        feed(Filter {
            token: Some(3),
            ..f()
        }),
        [3]
    );
    assert_eq!(
        feed(Filter {
            client: Some("team-b".into()),
            ..f()
        }),
        [2]
    );
    assert_eq!(
        feed(Filter {
            op: Some("delete".into()),
            ..f()
        }),
        [2]
    );
    assert_eq!(
        feed(Filter {
            outcome: Some("forwarded".into()),
            ..f()
        }),
        [1, 2]
    );
    assert_eq!(
        feed(Filter {
            outcome: Some("unknown".into()),
            ..f()
        }),
        [5]
    );
    assert_eq!(
        feed(Filter {
            failed: true,
            ..f()
        }),
        [2, 3, 4, 5]
    );
    assert_eq!(
        feed(Filter {
            since: at("2026-11-22T11:00:00Z"),
            ..f()
        }),
        [2, 3, 4, 5]
    );
    assert_eq!(
        feed(Filter {
            until: at("2026-11-22T11:00:00Z"),
            ..f()
        }),
        [1]
    );
    assert_eq!(
        feed(Filter {
            since: at("2026-11-22T10:00:00.001Z"),
            until: at("2026-11-22T13:00:00.001Z"),
            failed: true,
            ..f()
        }),
        [2, 3, 4]
    );
    // The time is the intent's: an intent before --since keeps its outcome out too.
    assert_eq!(
        feed(Filter {
            since: at("2026-11-22T10:00:00.050Z"),
            ..f()
        }),
        [2, 3, 4, 5]
    );
}

/// Any JSON value in any member: nothing panics, every line is one line.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z \\n|→\\-0-9]{0,8}".prop_map(Value::String),
        Just(json!("intent")),
        Just(json!("outcome")),
        Just(json!("2026-11-22T15:20:01.000Z")),
        Just(json!({"omitted": true})),
        Just(json!({"omitted": true, "bytes": "x", "sha256": []})),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("field".to_owned()),
                    Just("from".to_owned()),
                    Just("to".to_owned()),
                    Just("1".to_owned()),
                    "[a-z]{1,3}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn records_of_any_shape_never_crash_the_query(
        records in prop::collection::vec(
            prop::collection::btree_map(
                prop_oneof![
                    Just("phase"), Just("request_id"), Just("token_ids"), Just("ts"),
                    Just("client"), Just("op"), Just("origin"), Just("outcome"),
                    Just("status"), Just("reason"), Just("request"), Just("before"),
                    Just("changes"), Just("truncated"), Just("upstream_success"),
                    Just("suppressed"), Just("source_ip"),
                ],
                any_value(),
                0..12,
            ),
            0..12,
        ),
        json_format in any::<bool>(),
        failed in any::<bool>(),
    ) {
        let filter = Filter {
            failed,
            since: if failed { Some(0) } else { None },
            ..Filter::default()
        };
        let format = if json_format { Format::Json } else { Format::Text };
        let mut run = Run::new(filter, format);
        for fields in records {
            let mut record: Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            // Pair some of them.
            if record.get("phase") == Some(&json!("intent")) {
                record.insert("request_id".into(), json!("x"));
            }
            run.feed(Value::Object(record));
        }
        let (lines, printed, ..) = run.finish();
        prop_assert_eq!(lines.len() as u64, printed);
        for line in lines {
            if json_format {
                prop_assert!(serde_json::from_str::<Value>(&line).is_ok());
            }
        }
    }
}
