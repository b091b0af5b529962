//! `tokengate audit query` (SPEC §6.2) through the binary, on real files: trails a gateway wrote in
//! front of the emulator (whatever their record version), and trails sealed here with the chain
//! functions, so that they hold what a gateway may not write today: version 2 records with
//! `before` and `changes`, checkpoints, intents whose outcome never came, truncated records,
//! records of odd shapes. Tampered trails are refused, naming the record.

mod support;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};
use support::*;
use tokengate::audit::chain::{line, seal, AuditKey, GENESIS};
use tokengate::audit::writer::timestamp;
use tokengate::emulator::NewToken;

/// A trail sealed here: records pushed in order, then written across files.
struct Synthetic {
    dir: tempfile::TempDir,
    path: PathBuf,
    key_file: PathBuf,
    records: Vec<Map<String, Value>>,
}

impl Synthetic {
    fn new() -> Synthetic {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let key_file = dir.path().join("audit.key");
        std::fs::write(&key_file, format!("{AUDIT_KEY}\n")).unwrap();
        Synthetic {
            dir,
            path,
            key_file,
            records: Vec::new(),
        }
    }

    fn push(&mut self, record: Value) -> &mut Synthetic {
        let Value::Object(record) = record else {
            panic!("not an object")
        };
        self.records.push(record);
        self
    }

    /// Seals every record (`seq` from 1, `prev` chained) and writes `counts[i]` of them to the
    /// i-th file (`<path>.1`, … then the live `<path>`; all in the live file when `counts` is
    /// empty). Returns the files.
    fn write(&self, counts: &[usize]) -> Vec<PathBuf> {
        let key = AuditKey::new(AUDIT_KEY.as_bytes()).unwrap();
        let counts = if counts.is_empty() {
            vec![self.records.len()]
        } else {
            counts.to_vec()
        };
        assert_eq!(counts.iter().sum::<usize>(), self.records.len());
        let mut prev = GENESIS.to_owned();
        let mut records = self.records.iter();
        let mut files = Vec::new();
        for (i, &count) in counts.iter().enumerate() {
            let file = if i + 1 == counts.len() {
                self.path.clone()
            } else {
                PathBuf::from(format!("{}.{}", self.path.display(), i + 1))
            };
            let mut bytes = Vec::new();
            for record in records.by_ref().take(count) {
                let mut record = record.clone();
                record.insert("prev".into(), json!(prev));
                bytes.extend_from_slice(&sealed(&key, &mut record, &mut prev));
            }
            std::fs::write(&file, bytes).unwrap();
            files.push(file);
        }
        files
    }

    /// `audit query --config C ARGS` where C names the trail and its key.
    fn query(&self, args: &[&str]) -> (i32, String, String) {
        let config = self.dir.path().join("tokengate.toml");
        std::fs::write(
            &config,
            format!(
                "[audit]\npath = {:?}\nhmac_key_file = {:?}\n",
                self.path.display().to_string(),
                self.key_file.display().to_string()
            ),
        )
        .unwrap();
        let mut all = vec!["audit", "query", "--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        run_cli(&all, &[])
    }
}

/// Seals `record` as the next one after `prev` (its `seq` already set by [`numbered`]) and returns
/// its line; `prev` becomes its hash.
fn sealed(key: &AuditKey, record: &mut Map<String, Value>, prev: &mut String) -> Vec<u8> {
    seal(key, record);
    *prev = record["hash"].as_str().unwrap().to_owned();
    line(record)
}

/// Numbers the records of a trail 1, 2, 3…
fn numbered(trail: &mut Synthetic) -> &mut Synthetic {
    for (i, record) in trail.records.iter_mut().enumerate() {
        record.insert("seq".into(), json!(i as u64 + 1));
    }
    trail
}

/// A time `ago` before now, as records carry it.
fn ago(ago: Duration) -> String {
    timestamp(SystemTime::now() - ago)
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// A version 2 intent: `extra` members added or replaced.
fn intent(request_id: &str, op: &str, ids: &[u64], ts: &str, extra: Value) -> Value {
    let mut record = json!({
        "v": 2, "origin": "gw-1", "ts": ts, "phase": "intent", "request_id": request_id,
        "caller_request_id": null, "client": "secops", "source_ip": "10.0.0.7",
        "method": "PUT", "path": "/api/token/", "op": op, "token_ids": ids,
        "request": {"id": ids.first(), "name": "ci-bot", "remain_quota": 2000000},
        "before": {"name": "ci-bot", "remain_quota": 500000, "status": 1},
        "changes": [{"field": "remain_quota", "from": 500000, "to": 2000000}],
    });
    merge(&mut record, extra);
    record
}

/// The outcome of `intent`: `outcome` (`forwarded` answers 200 with success), `extra` added.
fn outcome_of(intent: &Value, ts: &str, outcome: &str, extra: Value) -> Value {
    let mut record = intent.clone();
    let fields = record.as_object_mut().unwrap();
    fields.remove("before");
    fields.remove("changes");
    let forwarded = outcome == "forwarded";
    merge(
        &mut record,
        json!({
            "phase": "outcome", "ts": ts, "outcome": outcome,
            "reason": if forwarded { Value::Null } else { json!("forbidden") },
            "status": if forwarded { 200 } else { 403 },
            "upstream_status": if forwarded { json!(200) } else { Value::Null },
            "upstream_success": if forwarded { json!(true) } else { Value::Null },
            "upstream_message": if forwarded { json!("") } else { Value::Null },
            "duration_ms": 3,
        }),
    );
    merge(&mut record, extra);
    record
}

fn merge(record: &mut Value, extra: Value) {
    if let Value::Object(extra) = extra {
        let fields = record.as_object_mut().unwrap();
        for (name, value) in extra {
            fields.insert(name, value);
        }
    }
}

fn lines(stdout: &str) -> Vec<&str> {
    stdout.lines().collect()
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The token id column of text lines (the sixth).
fn ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| l.split(' ').nth(5).unwrap().to_owned())
        .collect()
}

#[test]
fn who_changed_token_873s_quota_last_week() {
    let mut trail = Synthetic::new();
    let old = intent("r-old", "update", &[873], &ago(8 * DAY), json!({}));
    let recent = intent("r-new", "update", &[873], &ago(2 * DAY), json!({}));
    let other = intent("r-other", "update", &[874], &ago(DAY), json!({}));
    trail
        .push(old.clone())
        .push(outcome_of(&old, &ago(8 * DAY), "forwarded", json!({})))
        .push(recent.clone())
        .push(outcome_of(&recent, &ago(2 * DAY), "forwarded", json!({})))
        .push(other.clone())
        .push(outcome_of(&other, &ago(DAY), "forwarded", json!({})));
    numbered(&mut trail).write(&[]);
    let (code, stdout, stderr) = trail.query(&["--token", "873", "--since", "7d"]);
    assert_eq!(code, 0, "{stderr}");
    let got = lines(&stdout);
    assert_eq!(got.len(), 1, "{stdout}");
    let ts = recent["ts"].as_str().unwrap();
    assert_eq!(
        got[0],
        format!(
            "{ts} gw-1 secops 10.0.0.7 update 873 forwarded 200 | remain_quota: 500000 → 2000000"
        )
    );
    assert!(
        stderr.contains("audit trail intact: 6 records in 1 file, last seq 6; 1 change matches"),
        "{stderr}"
    );
    // Without --since, both changes of 873, oldest first.
    let (code, stdout, _) = trail.query(&["--token", "873"]);
    assert_eq!(code, 0);
    assert_eq!(ids(&stdout), ["873", "873"]);
    assert!(lines(&stdout)[0].starts_with(old["ts"].as_str().unwrap()));
}

#[test]
fn intents_and_outcomes_pair_by_request_and_token_id_in_the_order_they_began() {
    let mut trail = Synthetic::new();
    let t = |s: u64| format!("2026-11-22T15:20:{s:02}.000Z");
    // A fan-out batch (two ids under one request id), interleaved with an update and a PATCH
    // whose two PUTs share their request id and token id.
    let part_a = intent("batch-1", "batch_update", &[10], &t(1), json!({}));
    let part_b = intent("batch-1", "batch_update", &[11], &t(2), json!({}));
    let update = intent("upd-1", "update", &[12], &t(3), json!({}));
    let put_1 = intent("patch-1", "update", &[13], &t(6), json!({}));
    let put_2 = intent(
        "patch-1",
        "update",
        &[13],
        &t(8),
        json!({"changes": [{"field": "status", "from": 1, "to": 2}]}),
    );
    trail
        .push(part_a.clone())
        .push(part_b.clone())
        .push(update.clone())
        .push(outcome_of(&part_b, &t(4), "forwarded", json!({})))
        .push(outcome_of(
            &update,
            &t(5),
            "upstream_error",
            json!({"status": 502, "reason": "upstream_unavailable"}),
        ))
        .push(put_1.clone())
        .push(outcome_of(&part_a, &t(7), "forwarded", json!({})))
        .push(outcome_of(&put_1, &t(7), "forwarded", json!({})))
        .push(put_2.clone())
        .push(outcome_of(&put_2, &t(9), "forwarded", json!({})));
    numbered(&mut trail).write(&[]);

    let (code, stdout, stderr) = trail.query(&["--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let changes = json_lines(&stdout);
    assert_eq!(changes.len(), 5, "{stdout}");
    let summary: Vec<(Value, Value, Value, Value)> = changes
        .iter()
        .map(|c| {
            (
                c["token_id"].clone(),
                c["intent"]["seq"].clone(),
                c["outcome"]["seq"].clone(),
                c["result"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (json!(10), json!(1), json!(7), json!("forwarded")),
            (json!(11), json!(2), json!(4), json!("forwarded")),
            (json!(12), json!(3), json!(5), json!("upstream_error")),
            (json!(13), json!(6), json!(8), json!("forwarded")),
            (json!(13), json!(9), json!(10), json!("forwarded")),
        ]
    );
    for change in &changes {
        assert_eq!(
            change["intent"]["request_id"],
            change["outcome"]["request_id"]
        );
        assert_eq!(
            change["intent"]["token_ids"],
            change["outcome"]["token_ids"]
        );
        assert_eq!(change["ts"], change["intent"]["ts"]);
        // The records whole, hash included: a reader can check them again.
        assert_eq!(change["outcome"]["hash"].as_str().unwrap().len(), 64);
    }
    // The same in text, with the PATCH's status change on its own line.
    let (_, text, _) = trail.query(&[]);
    let text = lines(&text);
    assert_eq!(text.len(), 5);
    assert!(
        text[2].contains(" 12 upstream_error 502 upstream_unavailable |"),
        "{}",
        text[2]
    );
    assert!(
        text[4].ends_with(" 13 forwarded 200 | status: 1 → 2"),
        "{}",
        text[4]
    );
}

#[test]
fn an_intent_with_no_outcome_is_a_change_whose_result_is_unknown() {
    let mut trail = Synthetic::new();
    let t = |s: u64| format!("2026-11-22T15:20:{s:02}.000Z");
    let done = intent("a", "update", &[1], &t(1), json!({}));
    let lost = intent(
        "b",
        "delete",
        &[2],
        &t(2),
        json!({"changes": null, "request": null, "method": "DELETE"}),
    );
    trail.push(done.clone()).push(lost.clone()).push(outcome_of(
        &done,
        &t(3),
        "forwarded",
        json!({}),
    ));
    numbered(&mut trail).write(&[]);

    let (code, stdout, _) = trail.query(&[]);
    assert_eq!(code, 0);
    let got = lines(&stdout);
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[1],
        format!(
            "{} gw-1 secops 10.0.0.7 delete 2 unknown - | before: {{\"name\":\"ci-bot\",\"remain_quota\":500000,\"status\":1}}",
            t(2)
        )
    );
    for args in [&["--failed"][..], &["--outcome", "unknown"]] {
        let (code, stdout, _) = trail.query(args);
        assert_eq!(code, 0);
        assert_eq!(ids(&stdout), ["2"], "{args:?}");
    }
    let (_, stdout, stderr) = trail.query(&["--failed", "--format", "json"]);
    assert!(
        stderr.contains("1 change matches (1 with an unknown result"),
        "{stderr}"
    );
    let unknown = &json_lines(&stdout)[0];
    assert_eq!(unknown["outcome"], Value::Null);
    assert_eq!(unknown["result"], "unknown");
    assert_eq!(unknown["intent"]["request_id"], "b");
    let (_, stdout, _) = trail.query(&["--outcome", "forwarded"]);
    assert_eq!(ids(&stdout), ["1"]);
}

#[test]
fn checkpoints_are_skipped_and_a_record_of_several_ids_is_a_line_per_id() {
    let mut trail = Synthetic::new();
    let t = |s: u64| format!("2026-11-22T15:20:{s:02}.000Z");
    let delete = intent(
        "bd",
        "batch_delete",
        &[21, 22, 23],
        &t(1),
        json!({"method": "POST", "path": "/api/token/batch", "request": {"ids": [21, 22, 23]},
            "before": null, "changes": null}),
    );
    let big = intent(
        "big",
        "update",
        &[24],
        &t(3),
        json!({"truncated": true, "request": {"id": 24, "model_limits": {"bytes": 200000, "omitted": true, "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}},
            "changes": [{"field": "model_limits", "from": "", "to": {"bytes": 200000, "omitted": true, "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}]}),
    );
    trail
        .push(delete.clone())
        .push(
            json!({"v": 2, "origin": "gw-1", "ts": t(2), "phase": "checkpoint",
            "checkpoint": {"seq": 1, "head": "00", "lines_sha256": "00", "signature": "AA=="}}),
        )
        .push(outcome_of(&delete, &t(2), "forwarded", json!({})))
        .push(big.clone())
        .push(outcome_of(
            &big,
            &t(4),
            "forwarded",
            json!({"upstream_success": false}),
        ));
    numbered(&mut trail).write(&[]);

    let (code, stdout, stderr) = trail.query(&[]);
    assert_eq!(code, 0, "{stderr}");
    let got = lines(&stdout);
    assert_eq!(got.len(), 4, "{stdout}");
    for (line, id) in got.iter().zip(["21", "22", "23"]) {
        assert_eq!(
            *line,
            format!(
                "{} gw-1 secops 10.0.0.7 batch_delete {id} forwarded 200",
                t(1)
            )
        );
    }
    assert_eq!(
        got[3],
        format!("{} gw-1 secops 10.0.0.7 update 24 forwarded 200 upstream_success=false truncated | model_limits: \"\" → <omitted: 200000 bytes, sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08>", t(3))
    );
    let (_, stdout, _) = trail.query(&["--token", "22", "--format", "json"]);
    let one = json_lines(&stdout);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["token_id"], 22);
    assert_eq!(one[0]["intent"]["token_ids"], json!([21, 22, 23]));
    // upstream_success false is a failure even though forwarded.
    let (_, stdout, _) = trail.query(&["--failed"]);
    assert_eq!(ids(&stdout), ["24"]);
}

#[test]
fn each_filter_and_both_kinds_of_time() {
    let mut trail = Synthetic::new();
    let a = intent("a", "update", &[1], "2026-11-20T10:00:00.000Z", json!({}));
    let b = intent(
        "b",
        "delete",
        &[2],
        "2026-11-21T10:00:00.000Z",
        json!({"client": "team-b"}),
    );
    let create = intent(
        "c",
        "create",
        &[],
        "2026-11-22T10:00:00.000Z",
        json!({"before": null, "request": {"name": "new"},
        "changes": [{"field": "name", "from": null, "to": "new"}]}),
    );
    trail
        .push(a.clone())
        .push(outcome_of(
            &a,
            "2026-11-20T10:00:00.010Z",
            "forwarded",
            json!({}),
        ))
        .push(b.clone())
        .push(outcome_of(
            &b,
            "2026-11-21T10:00:00.010Z",
            "timeout",
            json!({"status": 504, "reason": "upstream_timeout"}),
        ))
        .push(create.clone())
        .push(outcome_of(
            &create,
            "2026-11-22T10:00:00.010Z",
            "forwarded",
            json!({}),
        ))
        // Refused before forwarding: an outcome alone, with no client (an unknown key).
        .push(
            json!({"v": 2, "origin": "gw-1", "ts": "2026-11-23T10:00:00.000Z", "phase": "outcome",
            "request_id": "d", "caller_request_id": null, "client": null, "source_ip": "10.9.9.9",
            "method": "DELETE", "path": "/api/token/4", "op": "delete", "token_ids": [4],
            "request": null, "outcome": "rejected", "reason": "unauthenticated", "status": 401,
            "upstream_status": null, "upstream_success": null, "upstream_message": null,
            "duration_ms": 0}),
        )
        .push(
            json!({"v": 2, "origin": "gw-1", "ts": ago(HOUR), "phase": "outcome",
            "request_id": "e", "client": "secops", "source_ip": "10.0.0.7", "op": "list",
            "token_ids": [], "request": null, "outcome": "forwarded", "status": 200,
            "upstream_success": true}),
        );
    numbered(&mut trail).write(&[]);

    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec![], vec!["1", "2", "-", "4", "-"]),
        (vec!["--token", "2"], vec!["2"]),
        (vec!["--client", "team-b"], vec!["2"]),
        (vec!["--client", "secops"], vec!["1", "-", "-"]),
        (vec!["--op", "delete"], vec!["2", "4"]),
        (vec!["--op", "create"], vec!["-"]),
        (vec!["--op", "list"], vec!["-"]),
        (vec!["--op", "batch_delete"], vec![]),
        (vec!["--outcome", "timeout"], vec!["2"]),
        (vec!["--outcome", "rejected"], vec!["4"]),
        (vec!["--outcome", "upstream_error"], vec![]),
        (vec!["--failed"], vec!["2", "4"]),
        (
            vec!["--failed", "--op", "delete", "--client", "team-b"],
            vec!["2"],
        ),
        (
            vec!["--since", "2026-11-21T10:00:00Z"],
            vec!["2", "-", "4", "-"],
        ),
        (
            vec!["--since", "2026-11-21T10:00:00.001Z"],
            vec!["-", "4", "-"],
        ),
        (
            vec!["--since", "2026-11-21T12:00:00+02:00"],
            vec!["2", "-", "4", "-"],
        ),
        (vec!["--until", "2026-11-21T10:00:00Z"], vec!["1"]),
        (
            vec!["--since", "2026-11-21", "--until", "2026-11-23"],
            vec!["2", "-"],
        ),
        (vec!["--since", "2h"], vec!["-"]),
        (vec!["--since", "30m"], vec![]),
        (vec!["--until", "2h"], vec!["1", "2", "-", "4"]),
        (vec!["--since", "7200s", "--op", "list"], vec!["-"]),
        (vec!["--since", "36500d"], vec!["1", "2", "-", "4", "-"]),
    ];
    for (args, expected) in cases {
        let (code, stdout, stderr) = trail.query(&args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert_eq!(ids(&stdout), expected, "{args:?}: {stdout}");
        assert!(stderr.contains("audit trail intact: 8 records"), "{stderr}");
    }
    let (_, stdout, _) = trail.query(&["--outcome", "rejected"]);
    assert_eq!(
        stdout,
        "2026-11-23T10:00:00.000Z gw-1 - 10.9.9.9 delete 4 rejected 401 unauthenticated\n"
    );
    let (_, stdout, _) = trail.query(&["--op", "create"]);
    assert!(
        stdout.ends_with(" create - forwarded 200 | name: null → \"new\"\n"),
        "{stdout}"
    );
}

/// Version 1 records, as gateways wrote them before SPEC §6.1: no `origin`, no `before` or
/// `changes`; the request body stands for what changed.
fn v1(seq: u64) -> Value {
    let mut record = json!({
        "v": 1, "seq": seq, "ts": format!("2025-06-01T12:00:{:02}.{:03}Z", seq % 60, seq % 1000),
        "phase": if seq % 2 == 1 { "intent" } else { "outcome" },
        "request_id": format!("01JZ{:08}", seq.div_ceil(2)), "caller_request_id": null,
        "client": "team-a", "source_ip": "10.0.0.7", "method": "PUT", "path": "/api/token/",
        "op": "update", "token_ids": [40 + seq.div_ceil(2)],
        "request": {"id": 40 + seq.div_ceil(2), "name": "ci-bot — 夜間", "remain_quota": 500000},
    });
    if seq.is_multiple_of(2) {
        merge(
            &mut record,
            json!({"outcome": "forwarded", "reason": null, "status": 200, "upstream_status": 200,
                "upstream_success": true, "upstream_message": "", "duration_ms": 12}),
        );
    }
    record
}

#[test]
fn a_version_1_trail_across_rotated_files_and_a_mixed_one() {
    let mut trail = Synthetic::new();
    for seq in 1..=8 {
        trail.push(v1(seq));
    }
    let files = trail.write(&[3, 3, 2]);
    let (code, stdout, stderr) = trail.query(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("audit trail intact: 8 records in 3 files, last seq 8; 4 changes match"),
        "{stderr}"
    );
    assert_eq!(
        lines(&stdout)[0],
        "2025-06-01T12:00:01.001Z - team-a 10.0.0.7 update 41 forwarded 200 | name → \"ci-bot — 夜間\", remain_quota → 500000"
    );
    // The pair of seq 3 and 4 spans two files.
    assert!(lines(&stdout)[1]
        .starts_with("2025-06-01T12:00:03.003Z - team-a 10.0.0.7 update 42 forwarded 200"));
    // Files named on the command line, with the key from a variable.
    let mut args = vec![
        "audit",
        "query",
        "--key-env",
        "QUERY_TEST_KEY",
        "--token",
        "44",
    ];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let (code, named, stderr) = run_cli(&args, &[("QUERY_TEST_KEY", AUDIT_KEY)]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(ids(&named), ["44"]);
    // The oldest file archived: the trail starts later, and the first outcome has no intent.
    let (code, rest, stderr) = run_cli(
        &args[..6]
            .iter()
            .copied()
            .chain(names[1..].iter().map(String::as_str))
            .collect::<Vec<_>>(),
        &[("QUERY_TEST_KEY", AUDIT_KEY)],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("starts at seq 4"), "{stderr}");
    assert_eq!(ids(&rest), ["44"]);

    // Version 1 and version 2 records in one trail (a gateway upgraded in place).
    let mut mixed = Synthetic::new();
    for seq in 1..=2 {
        mixed.push(v1(seq));
    }
    let v2 = intent(
        "v2",
        "update",
        &[873],
        "2026-11-22T15:20:01.000Z",
        json!({}),
    );
    mixed.push(v2.clone()).push(outcome_of(
        &v2,
        "2026-11-22T15:20:01.020Z",
        "forwarded",
        json!({}),
    ));
    numbered(&mut mixed).write(&[]);
    let (code, stdout, stderr) = mixed.query(&[]);
    assert_eq!(code, 0, "{stderr}");
    let got = lines(&stdout);
    assert!(
        got[0].starts_with("2025-06-01T12:00:01.001Z - team-a"),
        "{stdout}"
    );
    assert!(
        got[1].ends_with("remain_quota: 500000 → 2000000"),
        "{stdout}"
    );
}

#[test]
fn a_tampered_trail_is_refused_naming_the_first_bad_record() {
    let mut trail = Synthetic::new();
    for seq in 1..=8 {
        trail.push(v1(seq));
    }
    let files = trail.write(&[4, 4]);
    // An edit in the second file: its second line, seq 6.
    let text = std::fs::read_to_string(&files[1]).unwrap();
    let mut edited: Vec<String> = text.lines().map(str::to_owned).collect();
    edited[1] = edited[1].replace("\"remain_quota\":500000", "\"remain_quota\":9");
    std::fs::write(&files[1], edited.join("\n") + "\n").unwrap();
    let (code, stdout, stderr) = trail.query(&[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "audit trail broken at {}:2 (seq 6): hash mismatch",
            files[1].display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("intact"), "{stderr}");
    // Nothing from the forged record or after it is printed.
    assert!(!stdout.contains("remain_quota → 9"), "{stdout}");
    assert!(!stdout.contains(" 44 "), "{stdout}");
    // A trail sealed with another key is refused at its first record.
    std::fs::write(&files[1], text).unwrap();
    let other = trail.dir.path().join("other.key");
    std::fs::write(&other, "another-audit-key-of-enough-length-0123456789").unwrap();
    let mut args = vec!["audit", "query", "--key-file", other.to_str().unwrap()];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let (code, stdout, stderr) = run_cli(&args, &[]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!("{}:1 (seq 1): hash mismatch", files[0].display())),
        "{stderr}"
    );
    // A record removed: the gap is named.
    let mut gap: Vec<&str> = std::fs::read_to_string(&files[0])
        .unwrap()
        .leak()
        .lines()
        .collect();
    gap.remove(2);
    std::fs::write(&files[0], gap.join("\n") + "\n").unwrap();
    let (code, _, stderr) = trail.query(&["--token", "41"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "{}:3 (seq 4): seq 4 where 3 was expected",
            files[0].display()
        )),
        "{stderr}"
    );
    // The key is never printed.
    assert!(!stderr.contains(AUDIT_KEY));
}

#[test]
fn usage_config_and_key_problems_exit_2() {
    let mut trail = Synthetic::new();
    trail.push(v1(1)).push(v1(2));
    trail.write(&[]);
    for args in [
        &["--since", "yesterday"][..],
        &["--until", "2026-13-01T00:00:00Z"],
        &["--since", "7w"],
        &["--op", "rename"],
        &["--outcome", "maybe"],
        &["--format", "xml"],
        &["--token", "x"],
        &["--token", "-1"],
    ] {
        let (code, stdout, stderr) = trail.query(args);
        assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
        assert!(stdout.is_empty());
    }
    let (code, _, stderr) = run_cli(
        &["audit", "query", "--config", "/nonexistent/tokengate.toml"],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = run_cli(
        &[
            "audit",
            "query",
            "--key-env",
            "QUERY_TEST_NO_SUCH_VAR",
            trail.path.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("QUERY_TEST_NO_SUCH_VAR"), "{stderr}");
    let (code, _, stderr) = run_cli(
        &[
            "audit",
            "query",
            "--key-env",
            "QUERY_TEST_SHORT_KEY",
            trail.path.to_str().unwrap(),
        ],
        &[("QUERY_TEST_SHORT_KEY", "short")],
    );
    assert_eq!(code, 2, "{stderr}");
    // Nothing matching is not a failure.
    let (code, stdout, stderr) = trail.query(&["--token", "999"]);
    assert_eq!((code, stdout.as_str()), (0, ""), "{stderr}");
    assert!(stderr.contains("0 changes match"), "{stderr}");
    // An empty trail is intact.
    std::fs::write(&trail.path, "").unwrap();
    let (code, stdout, stderr) = trail.query(&[]);
    assert_eq!((code, stdout.as_str()), (0, ""), "{stderr}");
}

#[test]
fn records_of_odd_shapes_inside_an_intact_chain_never_crash_it() {
    let mut trail = Synthetic::new();
    let odd = [
        json!({"v": 2}),
        json!({"v": 2, "phase": "intent"}),
        json!({"v": 2, "phase": "outcome"}),
        json!({"v": 2, "phase": "intent", "request_id": 5, "token_ids": "all", "ts": 7,
            "client": ["x"], "op": {"a": 1}, "changes": {"omitted": true}, "request": [1, 2]}),
        json!({"v": 2, "phase": "outcome", "request_id": 5, "token_ids": [1.5, -1, null, 2],
            "outcome": 3, "status": "ok", "reason": {"x": "y\nz"}, "upstream_success": "no",
            "suppressed": 12, "ts": "2026-11-22T15:20:01.000Z"}),
        json!({"v": 2, "phase": "intent", "request_id": "x", "token_ids": [9], "ts": "not a time",
            "client": "a b\nc", "origin": "", "changes": [null, 1, {"field": 3}, {"field": "f"}],
            "before": {"9": 1}}),
        json!({"v": 2, "phase": "intent", "request_id": "y", "token_ids": [1, 2],
            "changes": [[{"field": "a", "from": 1, "to": 2}], "x"],
            "before": [{"a": 1}, {"a": 2}]}),
        json!({"v": 2, "phase": "remark", "request_id": "x", "token_ids": [9]}),
    ];
    for record in odd {
        trail.push(record);
    }
    numbered(&mut trail).write(&[]);
    for args in [
        &[][..],
        &["--format", "json"],
        &["--failed"],
        &["--since", "1d"],
        &["--token", "2"],
    ] {
        let (code, stdout, stderr) = trail.query(args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        for line in stdout.lines() {
            if args == ["--format", "json"] {
                serde_json::from_str::<Value>(line).unwrap();
            }
        }
    }
    let (_, stdout, _) = trail.query(&[]);
    // The newline inside the client name stays inside one line.
    assert!(stdout.contains("\"a b\\nc\""), "{stdout}");
    assert!(stdout.contains("suppressed=12"), "{stdout}");
}

#[tokio::test]
async fn a_trail_a_gateway_wrote_reads_as_its_changes() {
    let (upstream, gateway) = emulator_and_gateway().await;
    let token = |name: &str| NewToken {
        name: name.into(),
        remain_quota: 500_000,
        ..NewToken::default()
    };
    let a = upstream.emulator.insert_token(USER_ID, token("a"));
    let b = upstream.emulator.insert_token(USER_ID, token("b"));
    let c = upstream.emulator.insert_token(USER_ID, token("c"));
    let create = admin(
        gateway.addr,
        "POST",
        "/api/token/",
        Some(r#"{"name":"made","remain_quota":7}"#),
    )
    .await;
    assert_eq!(create.status, 200);
    let patch = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{a}"),
        Some(r#"{"remain_quota":2000000}"#),
    )
    .await;
    assert_eq!(patch.json()["success"], true, "{}", patch.text());
    let forbidden = send(
        gateway.addr,
        "DELETE",
        &format!("/api/token/{b}"),
        &[("authorization", &format!("Bearer {READER_KEY}"))],
        None,
    )
    .await;
    assert_eq!(forbidden.status, 403);
    let batch = admin(
        gateway.addr,
        "POST",
        "/api/token/batch",
        Some(&format!(r#"{{"ids":[{b},{c}]}}"#)),
    )
    .await;
    assert_eq!(batch.json()["success"], true, "{}", batch.text());
    let missing = admin(gateway.addr, "DELETE", "/api/token/999999", None).await;
    // A read is not audited by default: not a change.
    admin(gateway.addr, "GET", "/api/token/", None).await;

    // The binary reads the trail while the gateway still holds it open for writing.
    let path = gateway.audit_path.clone();
    let q = |args: &[&str]| {
        let path = path.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                audit_cli("query", &path, &args)
            })
            .await
            .unwrap()
        }
    };

    let (code, stdout, stderr) = q(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    let text = lines(&stdout);
    let records = audit_records(&gateway.audit_path);
    // create, the PATCH's PUT, the refused delete, the batch delete's two ids, the delete of a
    // token the upstream does not have: one line each.
    assert_eq!(text.len(), 6, "{stdout}\n{records:#?}");
    let columns: Vec<Vec<&str>> = text.iter().map(|l| l.split(' ').collect()).collect();
    let row = |i: usize| (columns[i][4], columns[i][5], columns[i][6]);
    assert_eq!(row(0), ("create", "-", "forwarded"));
    assert_eq!(row(1), ("update", a.to_string().as_str(), "forwarded"));
    assert_eq!(row(2), ("delete", b.to_string().as_str(), "rejected"));
    assert_eq!(
        row(3),
        ("batch_delete", b.to_string().as_str(), "forwarded")
    );
    assert_eq!(
        row(4),
        ("batch_delete", c.to_string().as_str(), "forwarded")
    );
    assert_eq!(row(5).0, "delete");
    assert_eq!(columns[5][5], "999999");
    assert_eq!(
        (columns[2][2], columns[2][7], columns[2][8]),
        ("reader", "403", "forbidden")
    );
    for column in &columns {
        assert!(
            matches!(column[2], "admin" | "reader") && column[3] == "127.0.0.1",
            "{column:?}"
        );
    }
    // The PATCH's change: from → to when the records carry changes (version 2), the body sent
    // otherwise (version 1).
    assert!(
        text[1].contains("remain_quota: 500000 → 2000000")
            || text[1].contains("remain_quota → 2000000"),
        "{}",
        text[1]
    );
    // The delete of a token the upstream does not have failed, whether the gateway found out
    // by reading it first (version 2: rejected, not_found) or new-api said so (success false).
    assert_ne!(missing.json()["success"], true);

    // Each filter against what the gateway wrote.
    let (_, stdout, _) = q(&["--token", &a.to_string()]).await;
    assert_eq!(lines(&stdout).len(), 1, "{stdout}");
    let (_, stdout, _) = q(&["--token", &b.to_string()]).await;
    assert_eq!(lines(&stdout).len(), 2, "{stdout}");
    let (_, stdout, _) = q(&["--client", "reader"]).await;
    assert_eq!(ids(&stdout), [b.to_string()]);
    let (_, stdout, _) = q(&["--op", "batch_delete"]).await;
    assert_eq!(ids(&stdout), [b.to_string(), c.to_string()]);
    let (_, stdout, _) = q(&["--outcome", "rejected", "--op", "delete"]).await;
    assert!(ids(&stdout).contains(&b.to_string()), "{stdout}");
    let (_, stdout, _) = q(&["--failed"]).await;
    let failed = ids(&stdout);
    assert!(failed.contains(&b.to_string()), "{stdout}");
    assert!(failed.contains(&"999999".to_string()), "{stdout}");
    let (_, stdout, _) = q(&["--since", "1h"]).await;
    assert_eq!(lines(&stdout).len(), 6);
    let (code, stdout, stderr) = q(&["--until", "1h"]).await;
    assert_eq!((code, stdout.as_str()), (0, ""), "{stderr}");
    let (_, stdout, _) = q(&["--since", &timestamp(SystemTime::now() + HOUR)]).await;
    assert!(stdout.is_empty());

    // JSON: the records whole, paired by request id and token id.
    let (code, stdout, _) = q(&["--format", "json"]).await;
    assert_eq!(code, 0);
    let changes = json_lines(&stdout);
    assert_eq!(changes.len(), 6);
    let rid = |reply: &Reply| json!(reply.headers["x-request-id"].to_str().unwrap());
    assert_eq!(changes[1]["intent"]["request_id"], rid(&patch));
    assert_eq!(changes[1]["outcome"]["request_id"], rid(&patch));
    assert_eq!(changes[1]["token_id"], a);
    assert_eq!(changes[2]["intent"], Value::Null);
    assert_eq!(changes[2]["outcome"]["request_id"], rid(&forbidden));
    assert_eq!(changes[3]["intent"]["request_id"], rid(&batch));
    assert_eq!(changes[4]["intent"]["request_id"], rid(&batch));
    // Version 2: an intent (with its own `before`) and an outcome per id of a batch delete.
    assert_eq!(changes[3]["intent"]["token_ids"], json!([b]));
    assert_eq!(changes[4]["intent"]["token_ids"], json!([c]));
    assert_eq!(changes[3]["intent"]["before"]["name"], "b");
    assert_eq!(
        (
            changes[3]["token_id"].clone(),
            changes[4]["token_id"].clone()
        ),
        (json!(b), json!(c))
    );
    for change in &changes {
        let first = if change["intent"].is_null() {
            &change["outcome"]
        } else {
            &change["intent"]
        };
        assert_eq!(change["ts"], first["ts"]);
        if !change["intent"].is_null() {
            assert_eq!(
                change["intent"]["token_ids"],
                change["outcome"]["token_ids"]
            );
            assert_eq!(change["intent"]["phase"], "intent");
            assert_eq!(change["outcome"]["phase"], "outcome");
        }
    }
    // Every record was read and checked.
    let (_, _, stderr) = q(&[]).await;
    assert!(
        stderr.contains(&format!("audit trail intact: {} records", records.len())),
        "{stderr}"
    );
}

/// The peak resident size (VmHWM) of a running process, in KiB, while it can be read.
fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What [`query_peak`] saw.
struct Peak {
    /// The highest peak resident size read while the query ran, KiB.
    kib: u64,
    /// The output lines.
    lines: usize,
    /// The output lines of changes whose result is unknown: (line index, the change).
    unknown: Vec<(usize, Value)>,
    stderr: String,
}

/// Runs `audit query --format json` on `trail`, reading its output a line at a time, and
/// samples the query's peak resident size as it goes.
fn query_peak(trail: &Synthetic) -> Peak {
    use std::io::BufRead;
    let config = trail.dir.path().join("tokengate.toml");
    std::fs::write(
        &config,
        format!(
            "[audit]\npath = {:?}\nhmac_key_file = {:?}\n",
            trail.path.display().to_string(),
            trail.key_file.display().to_string()
        ),
    )
    .unwrap();
    let stderr_file = trail.dir.path().join("stderr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["audit", "query", "--config", config.to_str().unwrap()])
        .args(["--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr_file).unwrap())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut peak = Peak {
        kib: 0,
        lines: 0,
        unknown: Vec::new(),
        stderr: String::new(),
    };
    for line in stdout.lines() {
        let line = line.unwrap();
        // The query blocks on a full pipe between reads: its peak is read while it runs.
        if peak.lines.is_multiple_of(500) {
            if let Some(kib) = peak_kib(child.id()) {
                peak.kib = peak.kib.max(kib);
            }
        }
        if line.contains("\"result\":\"unknown\"") {
            peak.unknown
                .push((peak.lines, serde_json::from_str(&line).unwrap()));
        }
        peak.lines += 1;
    }
    assert!(child.wait().unwrap().success());
    peak.stderr = std::fs::read_to_string(&stderr_file).unwrap();
    peak
}

/// A trail of `changes` forwarded updates as gateways write them: 20 000 changes per process
/// (request ids with its prefix), eight in flight at once; every other process crashes at its end,
/// leaving the intents in flight without their outcome. With `lost` set, the outcome of that
/// change is lost while its process runs on (SPEC §6: the trail could not take it).
fn big_trail(changes: u64, lost: Option<u64>) -> Synthetic {
    use std::io::Write;
    let trail = Synthetic::new();
    let key = AuditKey::new(AUDIT_KEY.as_bytes()).unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create(&trail.path).unwrap());
    let (mut prev, mut seq) = (GENESIS.to_owned(), 0u64);
    let mut write = |record: Value| {
        seq += 1;
        let Value::Object(mut record) = record else {
            unreachable!()
        };
        record.insert("seq".into(), json!(seq));
        record.insert("prev".into(), json!(prev));
        out.write_all(&sealed(&key, &mut record, &mut prev))
            .unwrap();
    };
    const PER_PROCESS: u64 = 20_000;
    let rid = |n: u64| {
        format!(
            "{:016x}{n:016x}",
            0x5eed_0000_0000_0000u64 + n / PER_PROCESS
        )
    };
    let ts = |n: u64| {
        format!(
            "2026-11-22T{:02}:{:02}:{:02}.{:03}Z",
            n / 360_000 % 24,
            n / 6_000 % 60,
            n / 100 % 60,
            n % 100 * 10
        )
    };
    let change = |n: u64| intent(&rid(n), "update", &[n % 5000], &ts(n), json!({}));
    let mut in_flight = std::collections::VecDeque::new();
    for n in 0..changes {
        if n > 0 && n.is_multiple_of(PER_PROCESS) {
            let crashed = (n / PER_PROCESS - 1).is_multiple_of(2);
            for done in in_flight.drain(..) {
                if !crashed {
                    write(outcome_of(&change(done), &ts(n), "forwarded", json!({})));
                }
            }
        }
        write(change(n));
        if Some(n) != lost {
            in_flight.push_back(n);
        }
        if in_flight.len() > 8 {
            let done = in_flight.pop_front().unwrap();
            write(outcome_of(&change(done), &ts(n), "forwarded", json!({})));
        }
    }
    // The last process crashes too when its number is even.
    if (changes.saturating_sub(1) / PER_PROCESS) % 2 == 1 {
        for done in in_flight.drain(..) {
            write(outcome_of(
                &change(done),
                &ts(changes),
                "forwarded",
                json!({}),
            ));
        }
    }
    drop(out);
    trail
}

#[test]
fn memory_stays_bounded_whatever_the_size_of_the_trail() {
    // 100 000 changes (about 200 000 records), and 2 000: the peak resident size of the query
    // is the same, every change printed (JSON, the largest output).
    let small = query_peak(&big_trail(2_000, None));
    assert_eq!(small.lines, 2_000);
    let big_trail = big_trail(100_000, None);
    let size = std::fs::metadata(&big_trail.path).unwrap().len();
    assert!(size > 64 << 20, "{size}");
    let big = query_peak(&big_trail);
    assert_eq!(big.lines, 100_000);
    assert!(
        big.kib < small.kib + 4096,
        "peak RSS {} KiB over a {} MiB trail, {} KiB over a small one",
        big.kib,
        size >> 20,
        small.kib
    );
    // The changes in flight at each crash (the first, third and last process) are unknown, and
    // printed in their place.
    assert_eq!(big.unknown.len(), 24);
    for (at, change) in &big.unknown {
        let n = change["intent"]["request_id"].as_str().unwrap()[16..].to_owned();
        let n = u64::from_str_radix(&n, 16).unwrap() as usize;
        assert_eq!(*at, n, "change {n} printed at line {at}");
    }
    assert!(!big.stderr.contains("note"), "{}", big.stderr);

    // An outcome lost early in a process: everything after it waits behind it until the
    // restart, up to the cap; then the order gives way, memory stays bounded, and a note says so.
    let stuck = query_peak(&self::big_trail(30_000, Some(5)));
    assert_eq!(stuck.lines, 30_000);
    assert!(
        stuck.kib < small.kib + 3 * 8192,
        "peak RSS {} KiB, {} KiB over a small trail",
        stuck.kib,
        small.kib
    );
    assert!(
        stuck
            .stderr
            .contains("note: the intent at seq 6 had no outcome yet"),
        "{}",
        stuck.stderr
    );
    let (at, change) = &stuck.unknown[0];
    assert_eq!(change["intent"]["seq"], 6);
    assert!(*at > 5000, "printed once known, at the restart: line {at}");
}
