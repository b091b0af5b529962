//! Opens one connection to the upstream: TCP with `TCP_NODELAY`, TLS for an `https://` upstream
//! (the configured roots, SNI from the host, ALPN offering `h2` then `http/1.1`), and hyper's
//! HTTP/1.1 or HTTP/2 handshake as ALPN decided. The connection's driver task is spawned on the
//! current runtime, so a worker's connections are driven by the worker's own thread.
//!
//! TCP is hyper-util's `HttpConnector` (its connector alone, not its legacy pool): it resolves the
//! host, shares `upstream.timeout_ms` among a host name's addresses so one that never answers
//! leaves time for the next, and races the other address family after [`HAPPY_EYEBALLS`] (RFC
//! 6555), so a host whose IPv6 address is black-holed is still reached promptly over IPv4. The
//! caller bounds the whole exchange, connecting included, by one deadline.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, Write};
use hyper_util::client::legacy::connect::dns::GaiResolver;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tower::Service;

use super::UpstreamUrl;

/// The body type of every upstream request (read whole before it is sent).
pub(super) type Body = Full<Bytes>;

/// A connection's request sender: fresh from [`Connector::connect`], or taken from a thread's
/// connections for one request.
pub(super) enum Sender {
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

/// How long a connection attempt to a host name's first address family runs alone before one to
/// the other family starts beside it (what hyper-util's client used, and RFC 6555 suggests).
const HAPPY_EYEBALLS: Duration = Duration::from_millis(300);

/// How often an HTTP/2 connection pings the upstream, idle or not: a connection whose peer
/// vanished without a FIN or RST (a dropped NAT entry, a frozen host) is closed when a ping goes
/// unanswered for `upstream.timeout_ms`, instead of taking every request of its thread until the
/// kernel gives up on it minutes later.
const H2_PING_INTERVAL: Duration = Duration::from_secs(10);

/// How to reach the upstream: where, and with which TLS settings.
pub(super) struct Connector {
    /// The upstream's scheme and authority, as `HttpConnector` takes them.
    origin: Uri,
    /// TCP: resolution, per-address timeouts, happy eyeballs, `TCP_NODELAY`.
    tcp: HttpConnector<GaiResolver>,
    /// `Some` for an `https://` upstream.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// HTTP/2's handshake, with its pings.
    h2: http2::Builder<TokioExecutor>,
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
        let origin = Uri::builder()
            .scheme(url.scheme.clone())
            .authority(url.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|_| "has an invalid host".to_string())?;
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
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(timeout)
            .keep_alive_while_idle(true);
        Ok(Connector {
            origin,
            tcp: tcp_connector(HttpConnector::new(), timeout),
            tls,
            h2,
        })
    }

    /// Whether connections may be HTTP/2 (ALPN offers it over TLS; clear text is HTTP/1.1).
    pub(super) fn offers_h2(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens a connection and performs the HTTP handshake ALPN chose (HTTP/1.1 in clear).
    pub(super) async fn connect(&self) -> Result<Sender, ConnectError> {
        let tcp = self
            .tcp
            .clone()
            .call(self.origin.clone())
            .await
            .map_err(|e| ConnectError(without_address(&e).into()))?
            .into_inner();
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
            let (sender, connection) = self
                .h2
                .handshake(io)
                .await
                .map_err(|e| ConnectError(e.into()))?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream HTTP/2 connection ended");
                }
            });
            Ok(Sender::Http2(sender))
        } else {
            http1_over(io).await
        }
    }
}

/// `connector` set up as the gateway connects: any scheme (TLS is layered on top here),
/// `TCP_NODELAY`, `timeout` shared among a host name's addresses, and happy eyeballs.
fn tcp_connector<R>(mut connector: HttpConnector<R>, timeout: Duration) -> HttpConnector<R> {
    connector.enforce_http(false);
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(timeout));
    connector.set_happy_eyeballs_timeout(Some(HAPPY_EYEBALLS));
    connector
}

/// hyper-util's connect error as an `io::Error` of the same kind and text, without the address it
/// carries (its `Debug` prints it, and an error's chain may be logged).
fn without_address(error: &(dyn std::error::Error + 'static)) -> io::Error {
    let mut cause = error.source();
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io::Error::new(io.kind(), format!("{error}: {io}"));
        }
        cause = e.source();
    }
    io::Error::other(error.to_string())
}

/// The HTTP/1.1 handshake over `io`, its driver spawned on the current runtime.
async fn http1_over<T>(io: T) -> Result<Sender, ConnectError>
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
    Ok(Sender::Http1(sender))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::future::Future;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use hyper_util::client::legacy::connect::dns::Name;
    use tokio::net::{TcpListener, TcpSocket, TcpStream};
    use tokio::time::Instant;

    /// A resolver that answers every name with the same addresses, in order.
    #[derive(Clone)]
    struct Fixed(Vec<SocketAddr>);

    impl Service<Name> for Fixed {
        type Response = std::vec::IntoIter<SocketAddr>;
        type Error = io::Error;
        type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Name) -> Self::Future {
            let addresses = self.0.clone();
            Box::pin(async move { Ok(addresses.into_iter()) })
        }
    }

    /// An IPv4 address whose SYNs go unanswered: a listener that never accepts, its accept
    /// queue filled (Linux then drops further SYNs, and a connect hangs as on a black-holed
    /// route). Keep the listener and the streams that fill its queue for as long as it is needed.
    async fn black_hole() -> (SocketAddr, TcpListener, Vec<TcpStream>) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let address = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(address))
                .await
            {
                Ok(stream) => queued.push(stream.unwrap()),
                Err(_hangs) => break,
            }
            assert!(queued.len() < 64, "the accept queue never filled");
        }
        (address, listener, queued)
    }

    /// A host name whose first address (IPv4) never answers and whose second (IPv6) accepts is
    /// reached on the second after the happy-eyeballs delay, not after the first's share of the
    /// timeout (5 s here).
    #[tokio::test]
    async fn a_black_holed_address_family_gives_way_to_the_other_promptly() {
        let served = match TcpListener::bind("[::1]:0").await {
            Ok(listener) => listener,
            Err(error) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "IPv6 loopback is needed under CI: {error}"
                );
                eprintln!("skipped: no IPv6 loopback ({error})");
                return;
            }
        };
        let served_at = served.local_addr().unwrap();
        let (hole, _listener, _queued) = black_hole().await;
        let mut tcp = tcp_connector(
            HttpConnector::new_with_resolver(Fixed(vec![hole, served_at])),
            Duration::from_secs(10),
        );
        let started = Instant::now();
        let stream = tcp
            .call("http://upstream.test/".parse().unwrap())
            .await
            .unwrap()
            .into_inner();
        let took = started.elapsed();
        assert_eq!(stream.peer_addr().unwrap(), served_at);
        assert!(stream.nodelay().unwrap());
        assert!(took >= HAPPY_EYEBALLS, "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
