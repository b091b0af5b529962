//! A kept-alive HTTP/1.1 connection written by hand: one TCP connection, never pooled (a client's
//! pool would hide which connection a request takes, or open new ones unseen).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One caller connection, kept alive across requests.
pub struct Connection {
    stream: BufReader<TcpStream>,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Connection {
        Connection {
            stream: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }

    /// Writes a list request with `key`, keeping the connection alive.
    pub async fn ask(&mut self, key: &str) {
        let request = format!(
            "GET /api/token/ HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {key}\r\n\r\n"
        );
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
    }

    /// Reads one answer (status line, headers, a `Content-Length` body) and returns its status.
    pub async fn answer(&mut self) -> u16 {
        let mut line = String::new();
        self.stream.read_line(&mut line).await.unwrap();
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {line:?}"));
        let mut length = 0;
        loop {
            let mut header = String::new();
            self.stream.read_line(&mut header).await.unwrap();
            if header == "\r\n" || header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).await.unwrap();
        status
    }

    /// Whether an answer starts arriving within `wait`.
    pub async fn answers_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.stream.fill_buf())
            .await
            .is_ok_and(|read| read.is_ok_and(|bytes| !bytes.is_empty()))
    }
}
