//! Inbound TLS and mutual TLS (SPEC §8) with certificates made at test time: HTTPS callers over
//! HTTP/1.1 and HTTP/2 (by ALPN); with a client CA, a good certificate identifies its client, one
//! from another CA or none is refused at the handshake, and a client with both a key and a
//! `cert_subject` must present both.

mod support;

use http::Version;
use support::tls::{call, call_with, connect, server_tls, TestCa};
use support::*;

#[tokio::test]
async fn a_silent_connection_after_the_handshake_is_closed_after_the_header_timeout() {
    let upstream = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("server CA");
    let mut options = Options::new(upstream.addr);
    options.server_tls = server_tls(dir.path(), &ca, "");
    options.request_timeout_ms = 300;
    let gateway = TestGateway::start(options).await;
    for alpn in [&[b"http/1.1".as_slice()][..], &[b"h2"], &[]] {
        // The handshake completes, then the client sends nothing.
        let mut silent = connect(rustls::DEFAULT_VERSIONS, gateway.addr, &ca, alpn, None)
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut silent, &mut buf),
        )
        .await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "ALPN {alpn:?}: a silent TLS connection is closed: {read:?}"
        );
    }
    // A caller that speaks after the handshake is served as ever.
    let served = call(gateway.addr, &ca, &[b"h2"], None, Some(ADMIN_KEY))
        .await
        .unwrap();
    assert_eq!(served.status, 200, "{}", served.body);
}

#[tokio::test]
async fn https_callers_are_served_over_http1_and_http2() {
    let upstream = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("server CA");
    let mut options = Options::new(upstream.addr);
    options.server_tls = server_tls(dir.path(), &ca, "");
    let gateway = TestGateway::start(options).await;

    let h1 = call(gateway.addr, &ca, &[b"http/1.1"], None, Some(ADMIN_KEY))
        .await
        .unwrap();
    assert_eq!(
        (h1.status, h1.version),
        (200, Version::HTTP_11),
        "{}",
        h1.body
    );
    let h2 = call(
        gateway.addr,
        &ca,
        &[b"h2", b"http/1.1"],
        None,
        Some(ADMIN_KEY),
    )
    .await
    .unwrap();
    assert_eq!(
        (h2.status, h2.version),
        (200, Version::HTTP_2),
        "{}",
        h2.body
    );
    // TLS 1.2 and TLS 1.3 each on their own.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let seen = call_with(&[version], gateway.addr, &ca, &[], None, Some(ADMIN_KEY))
            .await
            .unwrap();
        assert_eq!(seen.status, 200, "{version:?}: {}", seen.body);
    }
    // Keys are still checked over TLS.
    let unknown = call(gateway.addr, &ca, &[], None, Some("tg_nobody"))
        .await
        .unwrap();
    assert_eq!(unknown.status, 401);
    // A caller that does not trust the server's CA does not get through the handshake, and
    // plain HTTP on the TLS port gets no answer.
    assert!(call(
        gateway.addr,
        &TestCa::new("other"),
        &[],
        None,
        Some(ADMIN_KEY)
    )
    .await
    .is_err());
    let plain = raw(
        gateway.addr,
        b"GET /api/token/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        !plain.starts_with("HTTP/"),
        "plain HTTP was served: {plain}"
    );
    assert_eq!(upstream.emulator.seen().len(), 4);
}

#[tokio::test]
async fn mutual_tls_identifies_callers_by_certificate() {
    let upstream = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("server CA");
    let clients_ca = TestCa::new("clients CA");
    std::fs::write(dir.path().join("clients-ca.pem"), clients_ca.pem()).unwrap();
    let mut options = Options::new(upstream.addr);
    options.server_tls = server_tls(
        dir.path(),
        &ca,
        &format!(
            "client_ca_file = {:?}\n",
            dir.path().join("clients-ca.pem").display().to_string()
        ),
    );
    let both_key = "tg_both_key_77777777777777777777777777777777777777777777777777777";
    options.clients = Some(format!(
        "{}{}",
        "\n[[clients]]\nname = \"by-cert\"\ncert_subject = \"team-a.internal\"\nallow = [\"list\"]\n",
        client_entry("both", both_key, "cert_subject = \"team-b.internal\"")
    ));
    let gateway = TestGateway::start(options).await;

    // The certificate alone identifies `by-cert`: by its DNS name, or by its Common Name.
    let by_dns = clients_ca.pem_pair(None, &["team-a.internal"]);
    let by_cn = clients_ca.pem_pair(Some("team-a.internal"), &[]);
    for identity in [&by_dns, &by_cn] {
        let seen = call(gateway.addr, &ca, &[], Some(identity), None)
            .await
            .unwrap();
        assert_eq!(seen.status, 200, "{}", seen.body);
    }
    // An empty `Bearer` is no key: the certificate still identifies the caller.
    let seen = call(gateway.addr, &ca, &[], Some(&by_dns), Some(""))
        .await
        .unwrap();
    assert_eq!(seen.status, 200, "{}", seen.body);
    // `both` must present its certificate and its key.
    let team_b = clients_ca.pem_pair(None, &["team-b.internal"]);
    let both = call(gateway.addr, &ca, &[], Some(&team_b), Some(both_key))
        .await
        .unwrap();
    assert_eq!(both.status, 200, "{}", both.body);
    let key_only = call(gateway.addr, &ca, &[], Some(&by_dns), Some(both_key))
        .await
        .unwrap();
    assert_eq!(key_only.status, 401, "{}", key_only.body);
    assert!(
        key_only.body.contains("client certificate"),
        "{}",
        key_only.body
    );
    let cert_only = call(gateway.addr, &ca, &[], Some(&team_b), None)
        .await
        .unwrap();
    assert_eq!(cert_only.status, 401, "{}", cert_only.body);
    // A good certificate that names no client, without a key.
    let stranger = clients_ca.pem_pair(None, &["stranger.internal"]);
    let seen = call(gateway.addr, &ca, &[], Some(&stranger), None)
        .await
        .unwrap();
    assert_eq!(seen.status, 401, "{}", seen.body);

    // A certificate from another CA, and none at all, are refused at the handshake (or, with
    // TLS 1.3, on the first read after it): no request is answered.
    let foreign = TestCa::new("clients CA").pem_pair(None, &["team-a.internal"]);
    for identity in [Some(&foreign), None] {
        let refused = call(gateway.addr, &ca, &[], identity, Some(both_key)).await;
        assert!(refused.is_err(), "answered {:?}", refused.map(|s| s.status));
    }
    // Only the four identified requests reached the upstream.
    assert_eq!(upstream.emulator.seen().len(), 4);
}

#[tokio::test]
async fn optional_client_auth_admits_keys_without_certificates() {
    let upstream = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("server CA");
    let clients_ca = TestCa::new("clients CA");
    std::fs::write(dir.path().join("clients-ca.pem"), clients_ca.pem()).unwrap();
    let mut options = Options::new(upstream.addr);
    options.server_tls = server_tls(
        dir.path(),
        &ca,
        &format!(
            "client_ca_file = {:?}\nclient_auth = \"optional\"\n",
            dir.path().join("clients-ca.pem").display().to_string()
        ),
    );
    let gateway = TestGateway::start(options).await;
    let seen = call(gateway.addr, &ca, &[], None, Some(ADMIN_KEY))
        .await
        .unwrap();
    assert_eq!(seen.status, 200, "{}", seen.body);
    // A certificate that is presented must still chain to the CA.
    let foreign = TestCa::new("clients CA").pem_pair(None, &["x.internal"]);
    assert!(
        call(gateway.addr, &ca, &[], Some(&foreign), Some(ADMIN_KEY))
            .await
            .is_err()
    );
}

#[test]
fn tls_files_and_cert_subjects_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("server CA");
    let lines = server_tls(dir.path(), &ca, "");
    std::fs::write(dir.path().join("server-key.pem"), "not a key").unwrap();
    let text = format!(
        "[server.tls]\n{lines}\n[upstream]\nmode = \"passthrough\"\n[audit]\nhmac_key_env = \"NOPE\"\n"
    );
    let config = tokengate::Config::parse(&text).unwrap();
    let errors = tokengate::Gateway::build(&config).unwrap_err();
    assert!(
        errors.0.iter().any(|e| e.key == "server.tls.key_file"),
        "{errors}"
    );
    // `cert_subject` needs mutual TLS; a client needs a key or a subject.
    let errors = tokengate::Config::parse(
        "[[clients]]\nname = \"a\"\ncert_subject = \"a.internal\"\nallow = []\n[[clients]]\nname = \"b\"\nallow = []\n",
    )
    .unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["clients[0].cert_subject", "clients[1].key_sha256"]);
    // `client_auth` means nothing without a client CA: it is refused, not ignored.
    let errors = tokengate::Config::parse(
        "[server.tls]\ncert_file = \"a.pem\"\nkey_file = \"b.pem\"\nclient_auth = \"optional\"\n",
    )
    .unwrap_err();
    assert_eq!(errors.0[0].key, "server.tls.client_auth", "{errors}");
}
