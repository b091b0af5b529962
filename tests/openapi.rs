//! The OpenAPI document (`openapi/tokengate.json`) is the callers' contract, so it is kept true by
//! tests, not by hand: it is valid OpenAPI 3.1 (openapi-spec-validator), its routes are exactly
//! the routes of SPEC §2 with the operations the router gives them, its body fields are the ones
//! the validator knows, the admin listener serves it, and schemathesis, run against a gateway with
//! the emulator behind it, finds no 5xx and no answer (status, headers, body) that the document
//! does not describe.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use http::{Method, Uri};
use serde_json::Value;
use support::tools::require_tool;
use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig, Era, NewToken, RunningEmulator};

const DOCUMENT_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/tokengate.json");

fn document() -> Value {
    serde_json::from_str(tokengate::openapi::DOCUMENT).expect("the document is JSON")
}

/// Every (method, path) the document describes.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if method != "parameters" {
                out.push((method.to_uppercase(), path.clone(), operation.clone()));
            }
        }
    }
    out
}

#[test]
fn the_embedded_document_is_the_file_in_the_repository() {
    let file = std::fs::read_to_string(DOCUMENT_PATH).unwrap();
    assert_eq!(file, tokengate::openapi::DOCUMENT);
    assert_eq!(document()["openapi"], "3.1.0");
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let Some(validator) = require_tool("openapi-spec-validator") else {
        return;
    };
    let output = std::process::Command::new(validator)
        .arg(DOCUMENT_PATH)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert!(text.contains("OK"), "{text}");
}

#[test]
fn every_route_of_spec_2_is_documented_with_its_operation() {
    let doc = document();
    let mut documented = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for (method, path, operation) in operations(&doc) {
        let uri: Uri = path.replace("{id}", "7").parse().unwrap();
        let method_ = Method::from_bytes(method.as_bytes()).unwrap();
        let route = tokengate::route::route(&method_, &uri)
            .unwrap_or_else(|e| panic!("{method} {path} is not a route: {e}"));
        assert_eq!(
            operation["x-tokengate-operation"],
            route.operation().as_str(),
            "{method} {path}"
        );
        assert!(ids.insert(operation["operationId"].as_str().unwrap().to_string()));
        documented.insert(format!("{method} {path}"));
        // Whether the operation takes a body is what the router says.
        assert_eq!(
            operation.get("requestBody").is_some(),
            route.endpoint.takes_body(),
            "{method} {path}"
        );
    }
    let spec: BTreeSet<String> = [
        "GET /api/token/",
        "GET /api/token/search",
        "GET /api/token/{id}",
        "GET /api/token/auto-groups",
        "POST /api/token/",
        "PUT /api/token/",
        "PATCH /api/token/{id}",
        "PUT /api/token/batch",
        "DELETE /api/token/{id}",
        "POST /api/token/batch",
        "POST /api/token/{id}/key",
        "POST /api/token/batch/keys",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(documented, spec);
    // Every operation name of the allow lists appears.
    let named: BTreeSet<String> = operations(&doc)
        .iter()
        .map(|(_, _, o)| o["x-tokengate-operation"].as_str().unwrap().to_owned())
        .collect();
    let all: BTreeSet<String> = tokengate::route::Operation::ALL
        .iter()
        .map(|op| op.as_str().to_owned())
        .collect();
    assert_eq!(named, all);
}

#[test]
fn the_body_schemas_name_the_fields_the_validator_knows() {
    use tokengate::token::edit::{COMPLETE_UPDATE_FIELDS, READ_ONLY_FIELDS, TOKEN_FIELDS};
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let keys = |name: &str| -> BTreeSet<String> {
        schemas[name]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let token: BTreeSet<String> = TOKEN_FIELDS.iter().map(|f| f.to_string()).collect();
    let read_only: BTreeSet<String> = READ_ONLY_FIELDS.iter().map(|f| f.to_string()).collect();
    let with_read_only: BTreeSet<String> = token.union(&read_only).cloned().collect();
    for name in ["CreateBody", "UpdateBody", "StatusOnlyBody"] {
        assert_eq!(keys(name), with_read_only, "{name}");
        assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
    }
    let without_id: BTreeSet<String> = token.iter().filter(|f| *f != "id").cloned().collect();
    assert_eq!(keys("PatchBody"), without_id);
    let mut batch: BTreeSet<String> = without_id.union(&read_only).cloned().collect();
    batch.extend(["ids".to_string(), "update_fields".to_string()]);
    assert_eq!(keys("BatchUpdateBody"), batch);
    let editable: BTreeSet<&str> = schemas["BatchUpdateBody"]["properties"]["update_fields"]
        ["items"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(editable, TOKEN_FIELDS[1..].iter().copied().collect());
    let mut complete: Vec<&str> = vec!["id"];
    complete.extend(COMPLETE_UPDATE_FIELDS);
    let required: Vec<&str> = schemas["UpdateBody"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, complete);
    // Every SPEC §9 code, and the 503 `token_busy` the code also answers.
    let codes: BTreeSet<&str> = schemas["Error"]["properties"]["error"]["properties"]["code"]
        ["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let spec: BTreeSet<&str> = [
        "bad_request",
        "invalid_json",
        "unknown_field",
        "invalid_field",
        "incomplete_update",
        "unauthenticated",
        "forbidden",
        "not_found",
        "method_not_allowed",
        "request_timeout",
        "body_too_large",
        "unsupported_media_type",
        "rate_limited",
        "upstream_rate_limited",
        "internal",
        "upstream_unavailable",
        "upstream_auth_failed",
        "audit_unavailable",
        "token_busy",
        "cluster_unavailable",
        "upstream_timeout",
    ]
    .into_iter()
    .collect();
    assert_eq!(codes, spec);
}

#[tokio::test]
async fn the_admin_listener_serves_the_document() {
    let (_upstream, gateway) = emulator_and_gateway().await;
    let reply = send(gateway.admin, "GET", "/openapi.json", &[], None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(reply.json(), document());
    let reply = send(gateway.admin, "POST", "/openapi.json", &[], None).await;
    reply.assert_envelope(405, "method_not_allowed");
    assert_eq!(reply.headers["allow"], "GET");
    // Callers never see it: the caller-facing listener serves only the token API.
    let reply = admin(gateway.addr, "GET", "/openapi.json", None).await;
    reply.assert_envelope(404, "not_found");
}

/// The checks every run makes: no 5xx; every status, content type, header and body described;
/// data the document calls invalid refused; methods the document lacks answered 405 with `Allow`;
/// a missing required header refused.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method,allow_header_conformance,negative_data_rejection,missing_required_header";

/// An emulator of `era` holding tokens up to the document's example id (873), so the examples
/// and some generated ids name tokens that exist.
async fn seeded_emulator(era: Era) -> RunningEmulator {
    let mut config = EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID);
    config.era = era;
    let upstream = Emulator::spawn(config).await.unwrap();
    let mut i = 0;
    while upstream.emulator.insert_token(
        USER_ID,
        NewToken {
            name: format!("seed-{i}"),
            ..NewToken::default()
        },
    ) < 873
    {
        i += 1;
    }
    upstream
}

/// Runs schemathesis over every operation against the gateway at `addr`, authenticating with
/// `key` and making `checks`: deterministic (the same cases every run), and bounded in time.
async fn schemathesis(addr: std::net::SocketAddr, key: &str, checks: &str) {
    let Some(schemathesis) = require_tool("schemathesis") else {
        return;
    };
    let report = tempfile::tempdir().unwrap();
    let log = report.path().join("schemathesis.log");
    let mut child = std::process::Command::new(schemathesis)
        .arg("run")
        .arg(DOCUMENT_PATH)
        .args(["--url", &format!("http://{addr}")])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args(["--checks", checks])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "25", "--workers", "1"])
        .arg("--generation-deterministic")
        .args(["--request-timeout", "10", "--no-color"])
        .arg("--report-dir")
        .arg(report.path())
        .current_dir(report.path())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::from(
            std::fs::File::options().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .unwrap();
    // Bounded in time: the gateway runs on this test's runtime meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis did not finish within 150 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap();
    println!("{text}");
    assert!(status.success(), "schemathesis failed:\n{text}");
    // It really ran every operation, in every phase.
    assert!(
        text.contains("Tested: 12"),
        "every operation was tested:\n{text}"
    );
    for phase in ["Examples", "Coverage", "Fuzzing"] {
        assert!(
            text.contains(&format!("✅ {phase}")),
            "{phase} ran and passed:\n{text}"
        );
    }
}

/// Hold mode in front of new-api's E2 era (the defaults): the document holds for every answer,
/// and a request without a valid gateway key is refused (`ignored_auth`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_every_answer_described_in_hold_mode() {
    let upstream = seeded_emulator(Era::E2).await;
    let mut options = Options::new(upstream.addr);
    // Requests without a key must meet the 401, never the limit on them.
    options.rate_limit = format!("{UNMET_RATE_LIMITS}unauthenticated_per_minute = 1000000\n");
    let gateway = TestGateway::start(options).await;
    schemathesis(gateway.addr, ADMIN_KEY, &format!("{CHECKS},ignored_auth")).await;
}

/// Pass-through mode in front of the E3 era, with native batch updates (new-api itself answers
/// `PUT /api/token/batch` with its 404): the upstream's own answers, refusals of the caller's
/// token included, are described too. (`ignored_auth` does not apply: new-api answers a wrong
/// access token with HTTP 200 and `success: false`, which passes through.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_every_answer_described_in_passthrough_mode() {
    let upstream = seeded_emulator(Era::E3).await;
    let mut options = Options::new(upstream.addr);
    options.mode = "passthrough";
    options.upstream_extra = "batch_update = \"native\"\n".into();
    let gateway = TestGateway::start(options).await;
    schemathesis(gateway.addr, UPSTREAM_TOKEN, CHECKS).await;
}
