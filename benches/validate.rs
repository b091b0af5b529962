//! Body validation cost (SPEC §4): `Edit::parse` then `canonical_json`, as the validate layer runs them on
//! every write; and `token_of`, the parse of new-api's answer to the read that confirms stored
//! values (and a PATCH's read, the before-read). Run with `cargo bench --bench validate`; figures
//! are recorded in BENCHMARKS.md.

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::StatusCode;
use serde_json::json;
use tokengate::read_token::token_of;
use tokengate::route::TokenId;
use tokengate::token::edit::{Edit, EditKind, Limits};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A token as `GET /api/token/7` returns it, edited and sent back: all complete-update fields,
/// `id`, `status` and the read-only fields.
fn full_update(now: i64) -> Vec<u8> {
    json!({
        "id": 7,
        "user_id": 42,
        "key": "abcd**********wxyz",
        "status": 1,
        "name": "ci-deploy",
        "created_time": 1_735_689_600,
        "accessed_time": 1_767_225_600,
        "expired_time": now + 30 * 86_400,
        "remain_quota": 5_000_000,
        "unlimited_quota": false,
        "model_limits_enabled": true,
        "model_limits": "gpt-4o,gpt-4o-mini",
        "allow_ips": "10.0.0.0/8",
        "used_quota": 12_345,
        "group": "default",
        "DeletedAt": null
    })
    .to_string()
    .into_bytes()
}

/// `count` distinct CIDR lines (`10.a.b.0/24`).
fn cidrs(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("10.{}.{}.0/24", (i / 256) % 256, i % 256))
        .collect()
}

/// A create whose `allow_ips` holds as many CIDR lines as fit in just under 64 KiB of JSON
/// (each `\n` is two bytes there).
fn big_allow_ips(bad_last_line: bool) -> Vec<u8> {
    let mut lines = Vec::new();
    let mut size = 0;
    for line in cidrs(8192) {
        if size + line.len() + 2 > 65_400 {
            break;
        }
        size += line.len() + 2;
        lines.push(line);
    }
    if bad_last_line {
        // Refused only after every other entry was checked: new-api's comma mistake.
        let last = lines.len() - 1;
        lines[last] = "1.1.1.1,2.2.2.2".into();
    }
    json!({"name": "office-egress", "expired_time": -1, "allow_ips": lines.join("\n")})
        .to_string()
        .into_bytes()
}

/// A create whose `model_limits` lists as many distinct model ids as fit in just under 64 KiB.
fn big_model_list() -> Vec<u8> {
    let mut models: Vec<String> = Vec::new();
    let mut size = 0;
    for i in 0.. {
        let model = format!("vendor-model-{i:05}");
        if size + model.len() + 1 > 65_000 {
            break;
        }
        size += model.len() + 1;
        models.push(model);
    }
    json!({"name": "all-models", "model_limits_enabled": true, "model_limits": models.join(",")})
        .to_string()
        .into_bytes()
}

/// A create whose `model_limits` lists the shortest distinct model ids (1 to 3 characters), as
/// many as fit in just under 64 KiB: the most entries a body can carry.
fn big_short_model_list() -> Vec<u8> {
    let alphabet: Vec<char> = ('a'..='z').chain('A'..='Z').chain('0'..='9').collect();
    let mut ids: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
    for a in &alphabet {
        for b in &alphabet {
            ids.push(format!("{a}{b}"));
        }
    }
    'outer: for a in &alphabet {
        for b in &alphabet {
            for c in &alphabet {
                if ids.len() > 20_000 {
                    break 'outer;
                }
                ids.push(format!("{a}{b}{c}"));
            }
        }
    }
    let mut models: Vec<String> = Vec::new();
    let mut size = 0;
    for id in ids {
        if size + id.len() + 1 > 65_000 {
            break;
        }
        size += id.len() + 1;
        models.push(id);
    }
    json!({"name": "short-models", "model_limits": models.join(",")})
        .to_string()
        .into_bytes()
}

/// A create with one unknown field whose name is just under 64 KiB (the "did you mean" hint
/// compares it with every known field name).
fn big_unknown_key() -> Vec<u8> {
    let key = "x".repeat(65_000);
    format!(r#"{{"name":"a","{key}":1}}"#).into_bytes()
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let now = now();
    let cases: [(&str, EditKind, Vec<u8>, bool); 6] = [
        ("full_update_300B", EditKind::Update, full_update(now), true),
        (
            "create_allow_ips_64KiB",
            EditKind::Create,
            big_allow_ips(false),
            true,
        ),
        (
            "create_model_limits_64KiB",
            EditKind::Create,
            big_model_list(),
            true,
        ),
        (
            "create_short_model_limits_64KiB",
            EditKind::Create,
            big_short_model_list(),
            true,
        ),
        (
            "refused_allow_ips_64KiB",
            EditKind::Create,
            big_allow_ips(true),
            false,
        ),
        (
            "refused_unknown_key_64KiB",
            EditKind::Create,
            big_unknown_key(),
            false,
        ),
    ];
    let mut group = c.benchmark_group("validate");
    for (name, kind, body, accepted) in &cases {
        // The bodies are what they claim: accepted (or refused) by the gateway's rules.
        assert_eq!(
            Edit::parse(*kind, body, &limits, now).is_ok(),
            *accepted,
            "{name}"
        );
        eprintln!("{name}: {} bytes", body.len());
        group.throughput(Throughput::Bytes(body.len() as u64));
        // 64 KiB bodies take milliseconds each: fewer samples keep the run short.
        group.sample_size(if body.len() > 1024 { 10 } else { 100 });
        group.bench_function(*name, |b| {
            b.iter(|| match Edit::parse(*kind, black_box(body), &limits, now) {
                Ok(edit) => edit.canonical_json().len(),
                Err(_) => 0,
            })
        });
    }
    group.finish();
    read_answer(c, now);
}

/// The confirm read of a full update (and a PATCH's read, the before-read): new-api's answer to
/// `GET /api/token/7`, `{success, message, data}` with the stored token in `data`.
fn read_answer(c: &mut Criterion, now: i64) {
    let token: serde_json::Value = serde_json::from_slice(&full_update(now)).unwrap_or_default();
    let answer = json!({"success": true, "message": "", "data": token})
        .to_string()
        .into_bytes();
    let Some(id) = TokenId::parse("7") else {
        panic!("7 is a token id");
    };
    assert!(token_of(StatusCode::OK, &answer, id).is_ok());
    let mut group = c.benchmark_group("read_token");
    group.throughput(Throughput::Bytes(answer.len() as u64));
    group.bench_function("token_of_400B", |b| {
        b.iter(|| token_of(StatusCode::OK, black_box(&answer), id).map_or(0, |t| t.len()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
