//! What `deploy/` ships, checked the way an operator's tools would check it: the Prometheus alerts
//! with `promtool` (syntax, and unit tests that fire each alert on made-up series and stay quiet
//! on healthy ones), the Kubernetes manifests with `kubernetes-validate` (strict, against a current
//! Kubernetes), the configurations inside them with the gateway's own loader, and the Grafana
//! dashboard against a running gateway's `/metrics`: a panel whose metric the gateway does not
//! expose shows nothing, silently, so every name in every query must be in the scrape.
//!
//! Each check is shown able to fail: a mutated copy of what it checks must make it fail.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::tools::require_tool;
use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig, NewToken};

/// The Kubernetes version the manifests are validated against (one `kubernetes-validate` knows).
const KUBERNETES_VERSION: &str = "1.37.0";

/// The alerts issue 22 asks for, by the name the rules file gives them.
const ALERTS: [&str; 8] = [
    "TokengateAuditUnavailable",
    "TokengateUpstreamCredentialRefused",
    "TokengateClusterDown",
    "TokengateAuditShippingStalled",
    "TokengateAuditShippingLagHigh",
    "TokengateNotReady",
    "TokengateServerErrorsRising",
    "TokengateRateLimitedRising",
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `promtool` on the `PATH` (Debian's `prometheus` package). Missing: the test fails under
/// `CI=true` (`.ci/run` installs it) and is skipped, saying why, elsewhere.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        support::tools::missing("promtool", "apt-get install prometheus; .ci/run does");
    }
    found
}

fn run(program: &Path, args: &[&str], dir: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()))
}

fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// Prometheus alerts

const RULES: &str = "deploy/prometheus/tokengate-alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/tokengate-alerts.test.yml";

/// Each alert of a rules file: its name and the lines of its rule, up to the next rule.
fn alert_rules(text: &str) -> Vec<(String, String)> {
    let mut rules: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert:") {
            rules.push((name.trim().to_owned(), String::new()));
        } else if let Some((_, body)) = rules.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    rules
}

/// The `expr` of an alert rule's lines: the rest of its line, or the block under `expr: |`.
fn rule_expr(body: &str) -> String {
    let mut lines = body.lines();
    let Some((indent, first)) = lines.by_ref().find_map(|line| {
        let trimmed = line.trim_start();
        let rest = trimmed.strip_prefix("expr:")?;
        Some((line.len() - trimmed.len(), rest.trim()))
    }) else {
        return String::new();
    };
    if first != "|" {
        return first.to_owned();
    }
    lines
        .take_while(|line| line.len() - line.trim_start().len() > indent)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each `alert_rule_test` case of a promtool test file: the alert it is about, and whether it
/// expects the alert to fire (`exp_alerts:` with entries) or not (`exp_alerts: []`).
fn alert_cases(text: &str) -> Vec<(String, bool)> {
    let mut cases = Vec::new();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    while let Some(line) = lines.next() {
        if let Some(name) = line.strip_prefix("alertname:") {
            let expects = lines.next().unwrap_or("");
            assert!(
                expects.starts_with("exp_alerts:"),
                "{name}: exp_alerts must follow alertname, found {expects:?}"
            );
            let fires = expects.trim_end() == "exp_alerts:";
            cases.push((name.trim().to_owned(), fires));
        }
    }
    cases
}

/// The rules and their tests, copied into a temporary directory with `mutate` applied to the
/// rules, then `promtool test rules` there.
fn test_rules_mutated(promtool: &Path, mutate: impl Fn(&str) -> String) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let rules = mutate(&read(&repo(RULES)));
    std::fs::write(dir.path().join("tokengate-alerts.yml"), rules).unwrap();
    std::fs::copy(
        repo(RULE_TESTS),
        dir.path().join("tokengate-alerts.test.yml"),
    )
    .unwrap();
    run(
        promtool,
        &["test", "rules", "tokengate-alerts.test.yml"],
        dir.path(),
    )
}

/// `text` with the expression of alert `name` replaced by `expr` (a one-line or a block one).
fn replace_expr(text: &str, name: &str, expr: &str) -> String {
    let mut out = String::new();
    let mut in_rule = false;
    let mut skip_deeper_than: Option<usize> = None;
    let mut replaced = false;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(depth) = skip_deeper_than {
            if line.trim().is_empty() || indent > depth {
                continue;
            }
            skip_deeper_than = None;
        }
        if let Some(other) = line.trim_start().strip_prefix("- alert:") {
            in_rule = other.trim() == name;
        }
        if in_rule && !replaced && line.trim_start().starts_with("expr:") {
            out.push_str(&format!("{}expr: '{expr}'\n", " ".repeat(indent)));
            if line.trim_end().ends_with('|') {
                skip_deeper_than = Some(indent);
            }
            replaced = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(replaced, "no expr found for {name}");
    out
}

#[test]
fn the_alert_rules_pass_promtool_check_rules_and_a_broken_rule_does_not() {
    let Some(promtool) = promtool() else { return };
    let output = run(&promtool, &["check", "rules", RULES], &repo("."));
    assert!(output.status.success(), "{}", said(&output));
    let expected = format!("SUCCESS: {} rules found", ALERTS.len());
    assert!(said(&output).contains(&expected), "{}", said(&output));

    // The same check refuses a rule whose expression does not parse.
    let dir = tempfile::tempdir().unwrap();
    let broken = read(&repo(RULES)).replacen(
        "expr: tokengate_cluster_up == 0",
        "expr: tokengate_cluster_up == == 0",
        1,
    );
    assert_ne!(broken, read(&repo(RULES)), "the mutation must apply");
    std::fs::write(dir.path().join("broken.yml"), broken).unwrap();
    let output = run(&promtool, &["check", "rules", "broken.yml"], dir.path());
    assert!(!output.status.success(), "{}", said(&output));
}

#[test]
fn every_alert_has_a_summary_a_runbook_a_severity_and_cases_that_fire_and_that_do_not() {
    let rules = alert_rules(&read(&repo(RULES)));
    let names: Vec<&str> = rules.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ALERTS, "the alerts of {RULES}");
    for (name, body) in &rules {
        for key in ["expr:", "severity:", "summary:", "runbook:"] {
            assert!(
                body.lines().any(|l| l.trim_start().starts_with(key)),
                "{name} has no {key}"
            );
        }
    }
    let cases = alert_cases(&read(&repo(RULE_TESTS)));
    for name in ALERTS {
        assert!(
            cases.contains(&(name.to_owned(), true)),
            "no case of {RULE_TESTS} fires {name}"
        );
        assert!(
            cases.contains(&(name.to_owned(), false)),
            "no case of {RULE_TESTS} shows {name} quiet on healthy series"
        );
    }
    for (name, _) in &cases {
        assert!(
            ALERTS.contains(&name.as_str()),
            "a case of an unknown alert {name}"
        );
    }
}

#[test]
fn promtool_unit_tests_fire_each_alert_and_catch_an_alert_that_never_or_always_fires() {
    let Some(promtool) = promtool() else { return };
    let output = run(
        &promtool,
        &["test", "rules", "tokengate-alerts.test.yml"],
        &repo("deploy/prometheus"),
    );
    assert!(output.status.success(), "{}", said(&output));
    assert!(said(&output).contains("SUCCESS"), "{}", said(&output));

    for name in ALERTS {
        // An alert that can never fire fails its firing case...
        let output = test_rules_mutated(&promtool, |rules| {
            replace_expr(rules, name, "vector(1) > 2")
        });
        assert!(
            !output.status.success() && said(&output).contains(name),
            "the unit tests do not notice that {name} never fires: {}",
            said(&output)
        );
        // ...and one that fires on every series fails on the healthy series beside it.
        let output = test_rules_mutated(&promtool, |rules| {
            replace_expr(rules, name, r#"{__name__=~"tokengate_.+"}"#)
        });
        assert!(
            !output.status.success() && said(&output).contains(name),
            "the unit tests do not notice that {name} fires on healthy series: {}",
            said(&output)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests

/// Every manifest under `deploy/kubernetes`, sorted.
fn manifests() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![repo("deploy/kubernetes")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn kubernetes_validate(tool: &Path, files: &[PathBuf]) -> Output {
    let mut args = vec!["-k", KUBERNETES_VERSION, "--strict"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    run(tool, &args, &repo("."))
}

#[test]
fn every_manifest_validates_strictly_against_a_current_kubernetes() {
    let Some(tool) = require_tool("kubernetes-validate") else {
        return;
    };
    let files = manifests();
    let relative: Vec<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(repo("deploy/kubernetes"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        relative,
        [
            "central/configmap.yaml",
            "central/poddisruptionbudget.yaml",
            "central/service.yaml",
            "central/statefulset.yaml",
            "sidecar/configmap.yaml",
            "sidecar/deployment.yaml",
        ]
    );
    let output = kubernetes_validate(&tool, &files);
    let text = said(&output);
    assert!(output.status.success(), "{text}");
    // Every resource of every file was checked, and none failed.
    let short = KUBERNETES_VERSION.rsplit_once('.').unwrap().0;
    for resource in [
        "configmap/tokengate",
        "poddisruptionbudget/tokengate",
        "service/tokengate",
        "service/tokengate-pods",
        "statefulset/tokengate",
        "configmap/team-a-tokengate",
        "deployment/team-a-app",
        "persistentvolumeclaim/team-a-tokengate-audit",
    ] {
        let line = format!("passed for resource {resource} against version {short}");
        assert!(text.contains(&line), "{resource} not validated: {text}");
    }
    assert!(!text.contains("ERROR"), "{text}");

    // Strict mode refuses a field Kubernetes does not know (a typo that kubectl would drop).
    let dir = tempfile::tempdir().unwrap();
    let typo = read(&repo("deploy/kubernetes/central/statefulset.yaml")).replacen(
        "readOnlyRootFilesystem: true",
        "readOnlyRootFileSystem: true",
        1,
    );
    let broken = dir.path().join("statefulset.yaml");
    std::fs::write(&broken, typo).unwrap();
    let output = kubernetes_validate(&tool, &[broken]);
    assert!(!output.status.success(), "{}", said(&output));
    assert!(
        said(&output).contains("readOnlyRootFileSystem"),
        "{}",
        said(&output)
    );
}

/// The indented block of `key: |` in a manifest (a ConfigMap's file), without its indentation.
fn block_scalar(manifest: &str, key: &str) -> String {
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != format!("{key}: |"));
    assert!(lines.next().is_some(), "no `{key}: |` block");
    let mut indent = None;
    let mut out = String::new();
    for line in lines {
        if line.trim().is_empty() {
            out.push('\n');
            continue;
        }
        let this = line.len() - line.trim_start().len();
        let depth = *indent.get_or_insert(this);
        if this < depth {
            break;
        }
        out.push_str(&line[depth..]);
        out.push('\n');
    }
    out
}

/// Whether a manifest has a line that is `wanted` once trimmed of its indentation.
fn has_line(manifest: &str, wanted: &str) -> bool {
    manifest.lines().any(|l| l.trim() == wanted)
}

/// How many lines `key` of a manifest have, as their next line that is not a comment, one
/// starting with `next` (`requests:` then `cpu:`: a container's, not a volume claim's).
fn followed_by(manifest: &str, key: &str, next: &str) -> usize {
    let lines: Vec<&str> = manifest
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    lines
        .windows(2)
        .filter(|pair| pair[0] == key && pair[1].starts_with(next))
        .count()
}

#[test]
fn the_configurations_in_the_manifests_load_and_agree_with_the_pods_and_the_image() {
    let dockerfile = read(&repo("Dockerfile"));
    for (wanted, what) in [
        (
            "ENV TOKENGATE_CONFIG=/etc/tokengate/tokengate.toml",
            "the config location",
        ),
        ("WORKDIR /var/lib/tokengate", "the trail's directory"),
        (
            "USER nonroot:nonroot",
            "the user (distroless nonroot is 65532)",
        ),
        ("EXPOSE 8080 9090", "the ports"),
        (
            "FROM gcr.io/distroless/cc-debian12:nonroot",
            "the base image",
        ),
    ] {
        assert!(
            has_line(&dockerfile, wanted),
            "the Dockerfile changed {what}"
        );
    }

    let mut shared = Vec::new();
    for (dir, pod_file, secret) in [
        ("central", "statefulset.yaml", "tokengate"),
        ("sidecar", "deployment.yaml", "team-a-tokengate"),
    ] {
        let configmap = read(&repo(&format!("deploy/kubernetes/{dir}/configmap.yaml")));
        let pod = read(&repo(&format!("deploy/kubernetes/{dir}/{pod_file}")));
        let toml = block_scalar(&configmap, "tokengate.toml");
        let config = tokengate::Config::parse(&toml)
            .unwrap_or_else(|e| panic!("{dir}/configmap.yaml does not load: {e:?}\n{toml}"));

        // Where the pod puts things is where the configuration looks for them.
        assert!(config.audit.path.starts_with("/var/lib/tokengate/audit"));
        for file in [
            config.audit.hmac_key_file.as_ref(),
            config.upstream.access_token_file.as_ref(),
        ] {
            let file = file.unwrap_or_else(|| panic!("{dir}: secrets come from files"));
            assert!(
                file.starts_with("/run/secrets/tokengate"),
                "{dir}: {file:?}"
            );
            let name = file.file_name().unwrap().to_str().unwrap();
            assert!(has_line(&pod, &format!("- key: {name}")), "{dir}: {name}");
        }
        let cluster = config.cluster.as_ref().expect("replicas share Redis (§11)");
        let variable = cluster
            .url_env
            .as_deref()
            .expect("the Redis URL is a secret");
        assert!(has_line(&pod, &format!("- name: {variable}")), "{dir}");
        assert!(has_line(&pod, &format!("name: {secret}")), "{dir}");
        assert_eq!(config.server.admin_listen.port(), 9090, "{dir}");
        assert!(
            config.server.admin_listen.ip().is_unspecified(),
            "{dir}: the kubelet probes the pod's address"
        );
        for wanted in [
            "mountPath: /etc/tokengate",
            "mountPath: /run/secrets/tokengate",
            "mountPath: /var/lib/tokengate",
            "value: /etc/tokengate/tokengate.toml",
            r#"args: ["serve", "--config", "/etc/tokengate/tokengate.toml"]"#,
            "path: /healthz",
            "path: /readyz",
            "port: admin",
            "containerPort: 9090",
            "runAsNonRoot: true",
            "runAsUser: 65532",
            "fsGroup: 65532",
            "allowPrivilegeEscalation: false",
            "readOnlyRootFilesystem: true",
            "privileged: false",
            r#"drop: ["ALL"]"#,
            "type: RuntimeDefault",
            "automountServiceAccountToken: false",
        ] {
            assert!(has_line(&pod, wanted), "{dir}/{pod_file} lacks {wanted}");
        }
        // Requests and a memory limit on every container.
        let containers = pod.matches("image: ").count();
        assert_eq!(followed_by(&pod, "requests:", "cpu:"), containers, "{dir}");
        assert_eq!(followed_by(&pod, "limits:", "memory:"), containers, "{dir}");
        // Every container's security context drops every capability.
        assert_eq!(pod.matches(r#"drop: ["ALL"]"#).count(), containers, "{dir}");

        shared.push((
            cluster.key_prefix.clone(),
            config.rate_limit.upstream_requests_per_second,
        ));
        match dir {
            "central" => {
                assert_eq!(config.server.listen.port(), 8080);
                assert!(config.server.listen.ip().is_unspecified());
                // Each replica's name is its host name (the pod's stable name): no instance.
                assert_eq!(cluster.instance, "");
                assert!(has_line(&pod, "kind: StatefulSet"));
                assert!(has_line(&pod, "volumeClaimTemplates:"));
                assert!(has_line(&pod, "containerPort: 8080"));
            }
            _ => {
                // The sidecar's callers are the pod's own containers: loopback only.
                assert!(config.server.listen.ip().is_loopback());
                assert!(
                    !cluster.instance.is_empty(),
                    "a Deployment's pod names change"
                );
                assert!(has_line(&pod, "type: Recreate"), "one writer per trail");
                assert!(has_line(&pod, "replicas: 1"), "one writer per trail");
                assert!(has_line(&pod, "restartPolicy: Always"), "a native sidecar");
                assert!(has_line(&pod, "value: http://127.0.0.1:8080"));
            }
        }
    }
    // The sidecar and the central gateway share one upstream cap and one set of token locks.
    assert_eq!(
        shared[0], shared[1],
        "central and sidecar: key_prefix and upstream cap"
    );
    let pdb = read(&repo("deploy/kubernetes/central/poddisruptionbudget.yaml"));
    assert!(has_line(&pdb, "kind: PodDisruptionBudget"));
    let service = read(&repo("deploy/kubernetes/central/service.yaml"));
    assert!(
        has_line(&service, "name: tokengate-pods"),
        "the headless Service"
    );
    assert!(
        has_line(&service, "clusterIP: None"),
        "the headless Service"
    );
    assert!(has_line(&service, "targetPort: http"), "callers reach 8080");
    let statefulset = read(&repo("deploy/kubernetes/central/statefulset.yaml"));
    assert!(has_line(&statefulset, "serviceName: tokengate-pods"));
}

#[test]
fn tokengate_check_accepts_each_configmap_with_its_secrets_and_reaches_redis() {
    let Some(redis) = support::redis::RedisServer::start() else {
        return;
    };
    for (dir, origin) in [("central", None), ("sidecar", Some("team-a-app"))] {
        // The pod's paths, moved into a temporary directory: secrets as the Secret's files, the
        // volume empty as a new claim is.
        let root = tempfile::tempdir().unwrap();
        let secrets = root.path().join("secrets");
        let state = root.path().join("state");
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(
            secrets.join("upstream-token"),
            format!("{UPSTREAM_TOKEN}\n"),
        )
        .unwrap();
        std::fs::write(secrets.join("audit-key"), format!("{AUDIT_KEY}\n")).unwrap();
        let configmap = read(&repo(&format!("deploy/kubernetes/{dir}/configmap.yaml")));
        let toml = block_scalar(&configmap, "tokengate.toml")
            .replace("/run/secrets/tokengate", secrets.to_str().unwrap())
            .replace("/var/lib/tokengate", state.to_str().unwrap());
        let config = root.path().join("tokengate.toml");
        std::fs::write(&config, toml).unwrap();

        let url = redis.url();
        let (code, stdout, stderr) = run_cli(
            &["check", "--config", config.to_str().unwrap()],
            &[("TOKENGATE_REDIS_URL", url.as_str())],
        );
        assert_eq!(code, 0, "{dir}: {stdout}{stderr}");
        let cluster = stdout
            .lines()
            .find(|l| l.trim_start().starts_with("cluster"))
            .unwrap_or_else(|| panic!("{dir}: no cluster line: {stdout}"));
        assert!(cluster.ends_with(": answers"), "{dir}: {cluster}");
        if let Some(origin) = origin {
            assert!(
                cluster.contains(&format!("(instance {origin},")),
                "{cluster}"
            );
        }
        // No secret is printed back.
        for secret in [UPSTREAM_TOKEN, AUDIT_KEY] {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "{dir}"
            );
        }

        // Without the Redis URL's variable (a Secret not mounted), check names the key at fault.
        let output = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["check", "--config", config.to_str().unwrap()])
            .env_remove("TOKENGATE_REDIS_URL")
            .env_remove("TOKENGATE_CONFIG")
            .output()
            .unwrap();
        let (code, stdout, stderr) = (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        assert_ne!(code, 0, "{dir}: {stdout}");
        assert!(stderr.contains("TOKENGATE_REDIS_URL"), "{dir}: {stderr}");
    }
}

#[test]
fn the_block_reader_takes_a_configmap_file_whole_and_nothing_after_it() {
    let manifest = "data:\n  a.toml: |\n    [x]\n    y = 1\n\n    z = \"2\"\n  b: c\n";
    assert_eq!(
        block_scalar(manifest, "a.toml"),
        "[x]\ny = 1\n\nz = \"2\"\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Grafana dashboard

const DASHBOARD: &str = "deploy/grafana/tokengate.json";

/// PromQL words that are not metric names.
const NOT_METRICS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "inf",
    "nan",
];

/// Skips a quoted string starting at `i` (the quote); returns the index after it.
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && quote != '`' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

/// Skips from the opener at `i` to after its closer, strings inside included.
fn skip_group(chars: &[char], i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < chars.len() {
        match chars[j] {
            '"' | '\'' | '`' => {
                j = skip_string(chars, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}

/// The metric names a PromQL expression (with Grafana's `$variables`) selects: identifiers that
/// are not functions, keywords, label names (in `{…}` or a `by (…)` list), string contents,
/// durations or variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(&chars, i, '{', '}');
        } else if c == '[' {
            i = skip_group(&chars, i, '[', ']');
        } else if c == '$' {
            // A Grafana variable: $name or ${name}.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(&chars, i, '{', '}');
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration (0.99, 5m, 1e3).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            let grouping = matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            );
            if call && grouping {
                // A list of label names.
                i = skip_group(&chars, next, '(', ')');
            } else if !call && !NOT_METRICS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The query of a `label_values(metric{…}, label)` template variable: the selector part.
fn template_expr(query: &str) -> Option<String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    // The label is the last argument; with one argument there is no metric at all.
    inner
        .rsplit_once(',')
        .map(|(selector, _)| selector.to_owned())
}

/// Every query of the dashboard: each panel's targets (rows' panels included) and each
/// template variable's.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    fn panels(list: &serde_json::Value, out: &mut Vec<String>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a target of {:?} without expr", panel["title"]));
                out.push(expr.to_owned());
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] == "query" {
            let query = variable["query"]["query"]
                .as_str()
                .or(variable["query"].as_str())
                .expect("a query variable has a query");
            let selector = template_expr(query)
                .unwrap_or_else(|| panic!("an unexpected variable query {query}"));
            out.push(selector);
        }
    }
    out
}

/// What a scrape holds: the name of every sample, and the type of every family.
fn scrape(text: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let mut samples = BTreeSet::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                types.insert(name.to_owned(), kind.to_owned());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_owned());
        }
    }
    (samples, types)
}

/// Why `name` is not something a query can select from this scrape, if it is not: it must be a
/// sample's name, of a family whose type has that sample (`_bucket`, `_sum`, `_count` of a
/// histogram, `_total` of a counter, the bare name of a gauge). A name ending in one of those
/// suffixes is stripped only when the stripped name is a family of the right type, so a gauge
/// whose own name ends in `_count` is still found whole.
fn unexposed(
    name: &str,
    samples: &BTreeSet<String>,
    types: &BTreeMap<String, String>,
) -> Option<String> {
    if !samples.contains(name) {
        return Some(format!("{name} is not in the scrape"));
    }
    if types.get(name).is_some_and(|t| t == "gauge") {
        return None;
    }
    for (suffix, kinds) in [
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"][..]),
        ("_count", &["histogram", "summary"][..]),
        ("_total", &["counter"][..]),
    ] {
        if let Some(family) = name.strip_suffix(suffix) {
            if types
                .get(family)
                .is_some_and(|t| kinds.contains(&t.as_str()))
            {
                return None;
            }
        }
    }
    Some(format!(
        "{name} is a sample of no family of the scrape: {types:?}"
    ))
}

#[test]
fn the_metric_name_reader_finds_metrics_and_nothing_else() {
    let expr = r#"histogram_quantile(0.99, sum by (le, op) (rate(tokengate_request_duration_seconds_bucket{job=~"$job", status="tokengate_fake"}[$__rate_interval]))) / on (instance) group_left (pod) max without (le) (tokengate_ready offset 5m) and bool tokengate_cluster_up{x='a}b'} > ${threshold}"#;
    assert_eq!(
        metric_names(expr),
        BTreeSet::from([
            "tokengate_request_duration_seconds_bucket".to_owned(),
            "tokengate_ready".to_owned(),
            "tokengate_cluster_up".to_owned(),
        ])
    );
    assert_eq!(
        template_expr(r#"label_values(tokengate_ready{job=~"$job"}, instance)"#).as_deref(),
        Some(r#"tokengate_ready{job=~"$job"}"#)
    );
    assert_eq!(template_expr("label_values(job)"), None);

    let text = "# TYPE tokengate_requests counter\ntokengate_requests_total{op=\"list\"} 1\n# TYPE tokengate_x_seconds histogram\ntokengate_x_seconds_bucket{le=\"+Inf\"} 1\ntokengate_x_seconds_sum 0.1\ntokengate_x_seconds_count 1\n# TYPE tokengate_jobs_count gauge\ntokengate_jobs_count 3\n";
    let (samples, types) = scrape(text);
    for good in [
        "tokengate_requests_total",
        "tokengate_x_seconds_bucket",
        "tokengate_x_seconds_count",
        "tokengate_jobs_count",
    ] {
        assert_eq!(unexposed(good, &samples, &types), None, "{good}");
    }
    for bad in [
        "tokengate_requests",
        "tokengate_x_seconds",
        "tokengate_jobs",
        "tokengate_nonexistent_total",
    ] {
        assert!(unexposed(bad, &samples, &types).is_some(), "{bad}");
    }
}

const LIMITED_KEY: &str = "tg_limited_key_for_deploy_tests_33333333333333333333333333333333";

/// Clients for the dashboard's scrape: `admin` (everything), and `limited`, with a burst of one
/// write and a quota cap, to draw a rate-limit and a policy refusal.
fn clients() -> String {
    format!(
        "{}{}",
        client_entry("admin", ADMIN_KEY, "allow_unlimited_quota = true"),
        client_entry(
            "limited",
            LIMITED_KEY,
            "max_remain_quota = 1000\nwrites_per_minute = 1\nburst = 1"
        )
    )
}

async fn as_limited(gateway: &TestGateway, body: &str) -> Reply {
    let auth = format!("Bearer {LIMITED_KEY}");
    send(
        gateway.addr,
        "POST",
        "/api/token/",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Some(body),
    )
    .await
}

#[tokio::test]
async fn every_dashboard_query_and_alert_names_only_metrics_a_running_gateway_exposes() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&repo(DASHBOARD))).expect("the dashboard is JSON");
    let exprs = dashboard_exprs(&dashboard);
    let mut wanted = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr}");
        wanted.extend(names);
    }
    // The alerts' expressions too: an alert and its promtool test that misspelled the same metric
    // would pass promtool and never fire.
    let rules = alert_rules(&read(&repo(RULES)));
    assert!(rules.len() >= 8, "{rules:?}");
    for (alert, body) in &rules {
        let expr = rule_expr(body);
        let names = metric_names(&expr);
        assert!(
            !names.is_empty(),
            "no metric in the expr of {alert}: {expr:?}"
        );
        wanted.extend(names);
    }
    // The reader found what the dashboard and the alerts are known to name (so an empty or broken
    // reader fails).
    for known in [
        "tokengate_requests_total",
        "tokengate_request_duration_seconds_bucket",
        "tokengate_request_duration_seconds_sum",
        "tokengate_request_duration_seconds_count",
        "tokengate_ready",
        "tokengate_cluster_up",
        "tokengate_cluster_lock_wait_seconds_bucket",
        "tokengate_audit_failures_total",
        "tokengate_upstream_auth_failures_total",
        "tokengate_rate_limited_total",
        "tokengate_audit_ship_lag_records",
        "tokengate_audit_shipped_total",
    ] {
        assert!(
            wanted.contains(known),
            "{known} not found in the dashboard: {wanted:?}"
        );
    }
    assert!(wanted.len() >= 25, "{wanted:?}");

    // A gateway with some of everything: answered requests, a PATCH, refusals of each kind. No
    // [cluster]: its metrics are there without one (cluster_up is 1, meaning "nothing to reach").
    let emulator = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let id = emulator.emulator.insert_token(
        USER_ID,
        NewToken {
            name: "dash".into(),
            remain_quota: 10,
            ..NewToken::default()
        },
    );
    let mut options = Options::new(emulator.addr);
    options.clients = Some(clients());
    options.rate_limit = "upstream_requests_per_second = 1000\n".into();
    let gateway = TestGateway::start(options.clone()).await;
    assert_eq!(
        admin(gateway.addr, "GET", "/api/token/", None).await.status,
        200
    );
    let patch = admin(
        gateway.addr,
        "PATCH",
        &format!("/api/token/{id}"),
        Some(r#"{"remain_quota": 20}"#),
    )
    .await;
    assert_eq!(patch.status, 200, "{}", patch.text());
    admin(gateway.addr, "POST", "/api/token/", Some("{not json"))
        .await
        .assert_envelope(400, "invalid_json");
    as_limited(&gateway, r#"{"name": "too-much", "remain_quota": 5000}"#)
        .await
        .assert_envelope(403, "forbidden");
    as_limited(&gateway, r#"{"name": "second", "remain_quota": 10}"#)
        .await
        .assert_envelope(429, "rate_limited");
    let text = send(gateway.admin, "GET", "/metrics", &[], None)
        .await
        .text();

    // The same in dry run: the would-be refusals have their own counter.
    options.rate_limit = "upstream_requests_per_second = 1000\ndry_run = true\n".into();
    let dry = TestGateway::start(options).await;
    for name in ["one", "two"] {
        let body = format!(r#"{{"name": "{name}", "remain_quota": 10}}"#);
        assert_eq!(as_limited(&dry, &body).await.status, 200);
    }
    let dry_text = send(dry.admin, "GET", "/metrics", &[], None).await.text();
    assert!(
        dry_text
            .contains(r#"tokengate_rate_limited_dry_run_total{client="limited",class="writes"} 1"#),
        "{dry_text}"
    );

    let (mut samples, mut types) = scrape(&text);
    let (dry_samples, dry_types) = scrape(&dry_text);
    samples.extend(dry_samples);
    types.extend(dry_types);
    let missing: Vec<String> = wanted
        .iter()
        .filter_map(|name| unexposed(name, &samples, &types))
        .collect();
    assert!(missing.is_empty(), "{missing:#?}\n{text}");

    // And the check notices a name the gateway does not expose.
    let fake = metric_names("sum(rate(tokengate_audit_teleported_total[5m]))");
    assert!(fake
        .iter()
        .any(|name| unexposed(name, &samples, &types).is_some()));
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let Some(promtool) = promtool() else { return };
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&repo(DASHBOARD))).expect("the dashboard is JSON");
    // Each query as a recording rule, with Grafana's variables as a Prometheus would see them
    // after Grafana filled them in; promtool parses every expression.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let exprs = dashboard_exprs(&dashboard);
    for (n, expr) in exprs.iter().enumerate() {
        let filled = expr
            .replace("$__rate_interval", "5m")
            .replace("$job", ".+")
            .replace("$instance", ".+");
        let quoted = serde_json::to_string(&filled).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yml"), &rules).unwrap();
    let output = run(&promtool, &["check", "rules", "dashboard.yml"], dir.path());
    assert!(output.status.success(), "{}\n{rules}", said(&output));
    let expected = format!("SUCCESS: {} rules found", exprs.len());
    assert!(said(&output).contains(&expected), "{}", said(&output));

    // A query that does not parse is caught the same way.
    std::fs::write(
        dir.path().join("broken.yml"),
        rules.replacen("sum by (status)", "sum by (status", 1),
    )
    .unwrap();
    let output = run(&promtool, &["check", "rules", "broken.yml"], dir.path());
    assert!(!output.status.success(), "{}", said(&output));
}
