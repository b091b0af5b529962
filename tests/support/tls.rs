//! Certificates made at test time (rcgen) and a TLS front that terminates TLS for any plain
//! TCP server (such as the emulator), so the gateway meets a real `https://` upstream.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::ServerName;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A certificate authority of the test's own.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// The CA certificate in PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            cert.der().clone(),
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
    }
}

impl TestCa {
    /// A certificate for `names` (subject-alternative names) and, when given, Common Name `cn`,
    /// signed by this CA: (certificate PEM, private key PEM).
    pub fn pem_pair(&self, cn: Option<&str>, names: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A TLS acceptor presenting `cert`, offering the protocols of `alpn` (ring, as the gateway).
pub fn acceptor(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> TlsAcceptor {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsAcceptor::from(Arc::new(config))
}

/// Listens on 127.0.0.1:0 for TLS with `cert`, and relays each connection to `target` in clear.
pub async fn tls_front(
    target: SocketAddr,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> SocketAddr {
    let acceptor = acceptor(cert, key, &[b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// A client identity: certificate and key PEM.
pub type Identity = (String, String);

/// What a TLS caller saw: the HTTP status and version, or why the connection failed.
pub struct Seen {
    pub status: u16,
    pub version: Version,
    pub body: String,
}

/// One `GET /api/token/` over TLS, trusting `ca`, offering `alpn`, with an optional client
/// certificate and key.
pub async fn call(
    addr: std::net::SocketAddr,
    ca: &TestCa,
    alpn: &[&[u8]],
    identity: Option<&Identity>,
    key: Option<&str>,
) -> Result<Seen, String> {
    call_with(rustls::DEFAULT_VERSIONS, addr, ca, alpn, identity, key).await
}

/// [`call`] offering only the TLS `versions` given.
pub async fn call_with(
    versions: &[&'static rustls::SupportedProtocolVersion],
    addr: std::net::SocketAddr,
    ca: &TestCa,
    alpn: &[&[u8]],
    identity: Option<&Identity>,
    key: Option<&str>,
) -> Result<Seen, String> {
    let tls = connect(versions, addr, ca, alpn, identity).await?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut request = Request::get(format!("https://127.0.0.1:{}/api/token/", addr.port()));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    let io = TokioIo::new(tls);
    let response = if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let version = response.version();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok(Seen {
        status,
        version,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A TLS connection to `addr` with the handshake done: trusting `ca`, offering the TLS `versions`
/// and `alpn`, with an optional client certificate and key.
pub async fn connect(
    versions: &[&'static rustls::SupportedProtocolVersion],
    addr: std::net::SocketAddr,
    ca: &TestCa,
    alpn: &[&[u8]],
    identity: Option<&Identity>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// The server CA, its certificate for 127.0.0.1 in `dir`, and the `[server.tls]` lines.
pub fn server_tls(dir: &std::path::Path, ca: &TestCa, extra: &str) -> String {
    let (cert, key) = ca.pem_pair(None, &["127.0.0.1"]);
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server-key.pem"), key).unwrap();
    format!(
        "cert_file = {:?}\nkey_file = {:?}\n{extra}",
        dir.join("server.pem").display().to_string(),
        dir.join("server-key.pem").display().to_string()
    )
}
