//! Opens one connection to the upstream: TCP with `TCP_NODELAY`, TLS for an `https://` upstream
//! (the configured roots, SNI from the host, ALPN offering `h2` then `http/1.1`), and hyper's
//! HTTP/1.1 or HTTP/2 handshake as ALPN decided. The connection's driver task is spawned on the
//! current runtime, so a worker's connections are driven by the worker's own thread.
//!
//! The caller bounds the whole exchange, connecting included, by one deadline; the only timer
//! here shares `upstream.timeout_ms` among the addresses of a host name that resolves to several
//! (as hyper-util's connector did), so one that never answers leaves time for the next.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::UpstreamUrl;

/// The body type of every upstream request (read whole before it is sent).
pub(super) type Body = Full<Bytes>;

/// A fresh connection, ready for its first request.
pub(super) enum Fresh {
    /// HTTP/1.1: one request at a time, then back to the thread's idle list.
    Http1(http1::SendRequest<Body>),
    /// HTTP/2 (the TLS upstream's ALPN chose `h2`): shared by the thread's concurrent requests.
    Http2(http2::SendRequest<Body>),
}

/// Could not open a connection (refused, unreachable, no such host, TLS refused): marks the
/// cause so that [`super::classify`] can say the connection could not be made. Its text never
/// names the upstream's address.
#[derive(Debug)]
pub(super) struct ConnectError(pub(super) Box<dyn std::error::Error + Send + Sync>);

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not connect to the upstream")
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// How to reach the upstream: where, and with which TLS settings.
pub(super) struct Connector {
    /// The host without IPv6 brackets, as name resolution and SNI want it.
    host: String,
    port: u16,
    /// `upstream.timeout_ms`, shared among a host name's addresses.
    timeout: Duration,
    /// `Some` for an `https://` upstream.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Connector {
    /// A connector for `url` within `timeout`; `tls` is used only when the URL is `https://`.
    pub(super) fn new(
        url: &UpstreamUrl,
        tls: rustls::ClientConfig,
        timeout: Duration,
    ) -> Result<Connector, String> {
        let host = url
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let https = url.is_https();
        let port = url
            .authority
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let mut config = tls;
            // What hyper-rustls offered with HTTP/1.1 and HTTP/2 enabled: h2 first.
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone())
                .map_err(|_| "has a host that is not a valid TLS server name".to_string())?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Connector {
            host,
            port,
            timeout,
            tls,
        })
    }

    /// Opens a connection and performs the HTTP handshake ALPN chose (HTTP/1.1 in clear).
    pub(super) async fn connect(&self) -> Result<Fresh, ConnectError> {
        let tcp = self.tcp().await.map_err(|e| ConnectError(e.into()))?;
        tcp.set_nodelay(true).map_err(|e| ConnectError(e.into()))?;
        let Some((tls, name)) = &self.tls else {
            return http1_over(TokioIo::new(tcp)).await;
        };
        let stream = tls
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| ConnectError(e.into()))?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        if h2 {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| ConnectError(e.into()))?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream HTTP/2 connection ended");
                }
            });
            Ok(Fresh::Http2(sender))
        } else {
            http1_over(io).await
        }
    }
}

impl Connector {
    /// A TCP connection to the first of the host's addresses that accepts (an IP address is
    /// not looked up). Errors never name the host or an address.
    async fn tcp(&self) -> io::Result<TcpStream> {
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect();
        let share = self.timeout / u32::try_from(addresses.len().max(1)).unwrap_or(u32::MAX);
        let mut last = None;
        for &address in &addresses {
            let attempt = TcpStream::connect(address);
            let result = if addresses.len() == 1 {
                attempt.await
            } else {
                tokio::time::timeout(share, attempt)
                    .await
                    .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")))
            };
            match result {
                Ok(stream) => return Ok(stream),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "the host name resolved to no address",
            )
        }))
    }
}

/// The HTTP/1.1 handshake over `io`, its driver spawned on the current runtime.
async fn http1_over<T>(io: T) -> Result<Fresh, ConnectError>
where
    T: Read + Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io)
        .await
        .map_err(|e| ConnectError(e.into()))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
        }
    });
    Ok(Fresh::Http1(sender))
}
