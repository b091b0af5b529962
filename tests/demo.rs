//! `tokengate demo` (SPEC §7) runs to the end as a newcomer would run it: every step of the
//! walk-through is printed with its answer and audit records, the trail verifies, nothing is
//! left behind, and none of the run's secrets is printed.

mod support;

use support::run_cli;

#[test]
fn the_demo_runs_to_the_end_and_shows_every_step() {
    let (code, stdout, stderr) = run_cli(&["demo"], &[]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");

    // Each step, its answer, and what the trail recorded.
    for expected in [
        "1. Create a token",
        "→ POST /api/token/",
        "audit #1 intent  create",
        "#2 outcome create",
        "forwarded 200 upstream_success=true",
        "A full update",
        "changes remain_quota: 500000 → 600000",
        "rejected 400 incomplete_update",
        "did you mean `remain_quota`?",
        "→ PATCH /api/token/",
        "→ PUT /api/token/batch",
        "\"ignored\":[\"group\"]",
        "updated 2 of 2 tokens",
        "batch_update tokens [",
        "rejected 403 forbidden",
        "× 429",
        "retry-after: 1",
        "ratelimit-policy: \"reads\";q=60;w=60",
        "→ DELETE /api/token/",
        "delete       tokens [3]  deletes {",
        "#19 outcome delete",
        "audit verify: OK, 19 records, chain intact, head ",
        "Who changed demo-ci, from what to what: `tokengate audit query --token ",
        "update 1 forwarded 200 | remain_quota: 500000 → 600000",
        "update 1 forwarded 200 | remain_quota: 600000 → 750000",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    // The temporary directory is gone.
    let dir = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("temporary files"))
        .map(str::trim)
        .expect("the demo names its directory");
    assert!(!std::path::Path::new(dir).exists(), "{dir} was left behind");

    // No secret of the run is printed on either stream: the caller's key (`tg_…`), the upstream
    // token and the audit key are 64 random hex digits; the only such string shown is the
    // trail's head hash (request ids, 32 digits, are not secrets).
    assert!(!stdout.contains("tg_") && !stderr.contains("tg_"));
    let head = stdout
        .split("head ")
        .last()
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    for run in [stdout.as_str(), stderr.as_str()]
        .iter()
        .flat_map(|text| text.split(|c: char| !c.is_ascii_hexdigit()))
        .filter(|run| run.len() >= 48)
    {
        assert_eq!(run, head, "an unexpected long hex string was printed");
    }
}
