//! The first bytes of a connection, read by the gateway under the header timeout before hyper
//! sees them.
//!
//! hyper-util's automatic choice between HTTP/1.1 and HTTP/2 reads until it holds the 24 bytes of
//! the HTTP/2 connection preface or a byte that differs from it, with no timer of its own: a
//! client that sends `PRI` and then nothing would hold its connection, and a place under
//! `server.max_connections`, for ever. So the gateway reads those bytes itself, under the header
//! timeout, and hands hyper a stream that gives them back first. hyper's choice then finds its
//! answer in them at once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the bytes read differ from the HTTP/2 preface or hold all of it (never more than
/// its 24 bytes). `None`: the peer closed first.
pub(super) async fn read<I: AsyncRead + Unpin>(mut io: I) -> io::Result<Option<Prefixed<I>>> {
    let mut head = [0u8; PREFACE.len()];
    let mut len = 0;
    loop {
        let n = io.read(&mut head[len..]).await?;
        if n == 0 {
            return Ok(None);
        }
        len += n;
        if len == PREFACE.len() || head[..len] != PREFACE[..len] {
            return Ok(Some(Prefixed {
                head,
                start: 0,
                end: len,
                io,
            }));
        }
    }
}

/// A stream that reads its first bytes from `head`, then from `io`; writes go to `io`.
pub(super) struct Prefixed<I> {
    head: [u8; PREFACE.len()],
    start: usize,
    end: usize,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.start < this.end {
            let n = (this.end - this.start).min(buf.remaining());
            buf.put_slice(&this.head[this.start..this.start + n]);
            this.start += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Reads `sent`, written in `pieces`, through `read` and the stream it returns.
    async fn through(pieces: &[&[u8]]) -> (usize, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(64);
        for piece in pieces {
            client.write_all(piece).await.unwrap();
        }
        drop(client);
        let mut prefixed = read(server).await.unwrap().unwrap();
        let held = prefixed.end;
        let mut all = Vec::new();
        prefixed.read_to_end(&mut all).await.unwrap();
        (held, all)
    }

    #[tokio::test]
    async fn stops_at_the_first_byte_off_the_preface_and_gives_everything_back() {
        let (held, all) = through(&[b"GET / HTTP/1.1\r\n\r\n"]).await;
        assert!(held <= 24);
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
        // A request that starts like the preface.
        let (held, all) = through(&[b"PR", b"I * HTTP/1.1\r\n"]).await;
        assert!((3..=24).contains(&held), "{held}");
        assert_eq!(all, b"PRI * HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn reads_the_whole_preface_in_pieces_and_no_further() {
        let mut sent = PREFACE.to_vec();
        sent.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        let (held, all) = through(&[&sent[..3], &sent[3..20], &sent[20..]]).await;
        assert_eq!(held, 24);
        assert_eq!(all, sent);
    }

    #[tokio::test]
    async fn a_peer_that_closes_mid_preface_is_none() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HT").await.unwrap();
        drop(client);
        assert!(read(server).await.unwrap().is_none());
    }
}
