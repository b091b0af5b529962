//! The configuration as an operator meets it: the shipped example loads and states the defaults,
//! `tokengate check` names every faulty key, `keys new` makes a key that works, and no `Debug`
//! print holds a secret.

mod support;

use std::path::Path;

use support::*;
use tokengate::config::{ServerConfig, UpstreamConfig};
use tokengate::Config;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tokengate.toml");

#[test]
fn the_example_config_loads_and_states_the_defaults() {
    let config = Config::load(Path::new(EXAMPLE)).unwrap();
    assert_eq!(
        format!("{:?}", config.server),
        format!("{:?}", ServerConfig::default())
    );
    let upstream = UpstreamConfig {
        access_token_env: Some("TOKENGATE_UPSTREAM_TOKEN".into()),
        ..Default::default()
    };
    assert_eq!(format!("{:?}", config.upstream), format!("{upstream:?}"));
    assert_eq!(
        format!("{:?}", config.limits),
        format!("{:?}", tokengate::config::LimitsConfig::default())
    );
    let audit = tokengate::config::AuditConfig {
        hmac_key_env: Some("TOKENGATE_AUDIT_KEY".into()),
        ..Default::default()
    };
    assert_eq!(format!("{:?}", config.audit), format!("{audit:?}"));
    assert_eq!(config.clients.len(), 1);
    assert_eq!(
        config.clients[0].key_sha256,
        Some(tokengate::caller::key_digest_hex("tg_example_do_not_use"))
    );
}

#[test]
fn check_accepts_the_example_with_its_secret_and_names_the_missing_one() {
    let (code, stdout, stderr) = run_cli(
        &["check", "--config", EXAMPLE],
        &[
            ("TOKENGATE_UPSTREAM_TOKEN", UPSTREAM_TOKEN),
            ("TOKENGATE_AUDIT_KEY", AUDIT_KEY),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("OK") && stdout.contains("team-a"),
        "{stdout}"
    );
    assert!(!stdout.contains(UPSTREAM_TOKEN) && !stderr.contains(UPSTREAM_TOKEN));

    let (code, _, stderr) = run_cli(&["check", "--config", EXAMPLE], &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("audit.hmac_key_env") && stderr.contains("TOKENGATE_AUDIT_KEY"),
        "{stderr}"
    );
    assert!(
        stderr.contains("upstream.access_token_env") && stderr.contains("TOKENGATE_UPSTREAM_TOKEN"),
        "{stderr}"
    );
    // TOKENGATE_CONFIG names the file too.
    let (code, _, _) = run_cli(
        &["check"],
        &[
            ("TOKENGATE_CONFIG", EXAMPLE),
            ("TOKENGATE_UPSTREAM_TOKEN", "x"),
            ("TOKENGATE_AUDIT_KEY", AUDIT_KEY),
        ],
    );
    assert_eq!(code, 0);
}

#[test]
fn check_reports_every_bad_key_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let cases = [
        ("[server]\nlisen = \"127.0.0.1:1\"\n", "server.lisen"),
        ("[upstream]\ntimeout_ms = \"soon\"\n", "upstream.timeout_ms"),
        ("[upstream]\nmode = \"proxy\"\n", "upstream.mode"),
        (
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"x\"\nallow = [\"lst\"]\n",
            "clients[0].allow",
        ),
        ("[rate_limit]\nbrust = 1\n", "rate_limit.brust"),
        ("[rate_limit]\nburst = 0\n", "rate_limit.burst"),
        (
            "[rate_limit]\nupstream_requests_per_second = 0\n",
            "rate_limit.upstream_requests_per_second",
        ),
        (
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"x\"\nallow = []\nmax_expiry_days = 0\n",
            "clients[0].max_expiry_days",
        ),
        (
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"x\"\nallow = []\nmodels = []\n",
            "clients[0].models",
        ),
        (
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"x\"\nallow = []\ngroups = [\"a,b\"]\n",
            "clients[0].groups[0]",
        ),
        (
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"x\"\nallow = []\nwrites_per_minute = 0\n",
            "clients[0].writes_per_minute",
        ),
        (
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"x\"\nallow = []\nmax_remain_quota = -1\n",
            "clients[0].max_remain_quota",
        ),
        ("[audit]\nfsync = \"sometimes\"\n", "audit.fsync"),
        (
            "[audit]\nmax_record_bytes = 1000\n",
            "audit.max_record_bytes",
        ),
        (
            "[audit]\nmax_record_bytes = 99999999\n",
            "audit.max_record_bytes",
        ),
        ("[audit]\nqueue_bytes = 100000\n", "audit.queue_bytes"),
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        (
            "[server]\nmax_header_bytes = 100\n",
            "server.max_header_bytes",
        ),
    ];
    for (text, key) in cases {
        std::fs::write(&path, text).unwrap();
        let (code, _, stderr) = run_cli(
            &["check", "--config", path.to_str().unwrap()],
            &[("TOKENGATE_UPSTREAM_TOKEN", "x")],
        );
        assert_eq!(code, 1, "{text}");
        assert!(stderr.contains(key), "{key} not named:\n{stderr}");
    }
    // Several faults at once: all reported.
    std::fs::write(
        &path,
        "[upstream]\nurl = \"ftp://x\"\nuser_id = 0\naccess_token_file = \"/nonexistent/token\"\n[[clients]]\nname = \"a b\"\nkey_sha256 = \"x\"\nallow = []\n",
    )
    .unwrap();
    let (code, _, stderr) = run_cli(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    for key in [
        "upstream.url",
        "upstream.user_id",
        "clients[0].name",
        "clients[0].key_sha256",
    ] {
        assert!(stderr.contains(key), "{key} not named:\n{stderr}");
    }
    let (code, _, stderr) = run_cli(&["check", "--config", "/nonexistent/tokengate.toml"], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/tokengate.toml"), "{stderr}");
}

#[test]
fn check_reports_a_refused_value_and_the_faults_after_it_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[clients]]\nname = \"a\"\nallow = [\"list\", \"lst\"]\nkey_sha256 = \"ABC\"\n[server]\nlisen = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run_cli(
        &["check", "--config", path.to_str().unwrap()],
        &[("TOKENGATE_UPSTREAM_TOKEN", "x")],
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    // Each fault on its own line, with its key first and its place in the file last.
    for (fault, place) in [
        (
            "clients[0].allow: unknown variant `lst`",
            "(line 3, column 18)",
        ),
        (
            "clients[0].key_sha256: must be 64 lowercase hex digits",
            "(line 4, column 1)",
        ),
        ("server.lisen: unknown field `lisen`", "(line 6, column 1)"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|line| line.trim_start().starts_with(fault) && line.ends_with(place)),
            "{fault} {place} not named:\n{stderr}"
        );
    }
}

#[test]
fn a_missing_token_file_is_named_and_serve_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[upstream]\naccess_token_file = \"/nonexistent/token\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run_cli(&["serve", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("upstream.access_token_file") && stderr.contains("/nonexistent/token"),
        "{stderr}"
    );
}

#[tokio::test]
async fn keys_new_prints_a_key_whose_lines_admit_it() {
    let (code, stdout, _) = run_cli(&["keys", "new", "--client", "team-z"], &[]);
    assert_eq!(code, 0);
    let key = stdout
        .lines()
        .find(|l| l.starts_with("tg_"))
        .unwrap()
        .to_string();
    assert_eq!(key.len(), 3 + 64, "32 random bytes in hex after the prefix");
    let entry: String = stdout
        .lines()
        .skip_while(|l| *l != "[[clients]]")
        .collect::<Vec<_>>()
        .join("\n");
    let config = Config::parse(&entry).unwrap();
    assert_eq!(config.clients[0].name, "team-z");
    assert_eq!(
        config.clients[0].key_sha256,
        Some(tokengate::caller::key_digest_hex(&key))
    );
    let (_, again, _) = run_cli(&["keys", "new"], &[]);
    assert!(!again.contains(&key), "every key is fresh");
    let (code, _, stderr) = run_cli(&["keys", "new", "--client", "bad name\"]"], &[]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn debug_prints_hold_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t");
    std::fs::write(&token, UPSTREAM_TOKEN).unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, AUDIT_KEY).unwrap();
    let text = format!(
        "[upstream]\naccess_token_file = {:?}\n[audit]\nhmac_key_file = {:?}\n",
        token.display().to_string(),
        key.display().to_string()
    );
    let config = Config::parse(&text).unwrap();
    let gateway = tokengate::Gateway::build(&config).unwrap();
    let printed = format!("{config:?} {gateway:?} {:#?}", gateway.authenticator);
    assert!(
        !printed.contains(UPSTREAM_TOKEN) && !printed.contains(AUDIT_KEY),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_subcommand_serves_new_api() {
    let port = refused_addr().await.port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args([
            "emulator",
            "--listen",
            &listen,
            "--access-token",
            "emu-token",
            "--user-id",
            "9",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = listen.parse().unwrap();
    let mut reply = None;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            reply = Some(
                send(
                    addr,
                    "GET",
                    "/api/token/",
                    &[("authorization", "emu-token"), ("new-api-user", "9")],
                    None,
                )
                .await,
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let reply = reply.expect("the emulator listened");
    assert_eq!(reply.json()["success"], true, "{}", reply.text());
}

#[test]
fn help_never_prints_a_secret_taken_from_the_environment() {
    let secret = "EmulatorTokenFromTheEnvironment123";
    let (code, stdout, stderr) = run_cli(
        &["emulator", "--help"],
        &[("TOKENGATE_EMULATOR_TOKEN", secret)],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("TOKENGATE_EMULATOR_TOKEN"), "{stdout}");
    assert!(
        !stdout.contains(secret) && !stderr.contains(secret),
        "{stdout}"
    );
}
