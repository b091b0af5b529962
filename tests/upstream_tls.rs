//! An `https://` upstream with certificates made at test time: trusted through `upstream.ca_file`,
//! and refused, with a 502 that says TLS failed, when the CA or the name is wrong (never a silent
//! fallback to plain text or to no verification).

mod support;

use support::tls::{tls_front, TestCa};
use support::*;
use tokengate::emulator::{Emulator, EmulatorConfig};

async fn gateway_via_tls(
    front: std::net::SocketAddr,
    ca_pem: Option<&str>,
    dir: &std::path::Path,
) -> TestGateway {
    let mut options = Options::new(front);
    options.upstream = format!("https://{front}");
    if let Some(pem) = ca_pem {
        let path = dir.join(format!("ca-{}.pem", front.port()));
        std::fs::write(&path, pem).unwrap();
        options.ca_file = Some(path.display().to_string());
    }
    TestGateway::start(options).await
}

#[tokio::test]
async fn a_private_ca_upstream_is_trusted_through_ca_file_only() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tokengate test CA");
    let (cert, key) = ca.leaf(&["127.0.0.1"]);
    let front = tls_front(upstream.addr, cert, key).await;

    let gateway = gateway_via_tls(front, Some(&ca.pem()), dir.path()).await;
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["success"], true);
    assert_eq!(upstream.emulator.seen().len(), 1);
    assert_eq!(
        upstream.emulator.seen()[0].headers["authorization"],
        UPSTREAM_TOKEN
    );

    // Another CA, and the web PKI roots: the handshake fails and nothing is sent.
    let other = TestCa::new("someone else's CA");
    for gateway in [
        gateway_via_tls(front, Some(&other.pem()), dir.path()).await,
        gateway_via_tls(front, None, dir.path()).await,
    ] {
        let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
        reply.assert_envelope(502, "upstream_unavailable");
        assert!(
            reply.json()["message"].as_str().unwrap().contains("TLS"),
            "{}",
            reply.text()
        );
    }
    assert_eq!(upstream.emulator.seen().len(), 1);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let upstream = Emulator::spawn(EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tokengate test CA");
    let (cert, key) = ca.leaf(&["upstream.example"]);
    let front = tls_front(upstream.addr, cert, key).await;
    let gateway = gateway_via_tls(front, Some(&ca.pem()), dir.path()).await;
    let reply = admin(gateway.addr, "GET", "/api/token/", None).await;
    reply.assert_envelope(502, "upstream_unavailable");
    assert!(
        reply.json()["message"].as_str().unwrap().contains("TLS"),
        "{}",
        reply.text()
    );
    assert!(upstream.emulator.seen().is_empty());
}

#[test]
fn a_ca_file_that_is_missing_or_not_pem_is_named_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    for path in [dir.path().join("missing.pem"), not_pem] {
        let text = format!(
            "[upstream]\nurl = \"https://127.0.0.1:1\"\nmode = \"passthrough\"\nca_file = {:?}\n",
            path.display().to_string()
        );
        let config = tokengate::Config::parse(&text).unwrap();
        let errors = tokengate::Gateway::build(&config).unwrap_err();
        assert_eq!(errors.0[0].key, "upstream.ca_file", "{errors}");
    }
}
