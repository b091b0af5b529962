//! new-api's in-memory rate limiter (a sliding-window log) and gin's `ClientIP()`.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;

/// One limit: at most `max` requests per `window` for a key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    pub(crate) prefix: &'static str,
    pub(crate) max: usize,
    pub(crate) window: Duration,
}

/// GlobalAPIRateLimit: every `/api` route, before auth, per client IP.
pub(crate) const GLOBAL_API: Limit = Limit {
    prefix: "GA",
    max: 180,
    window: Duration::from_secs(180),
};
/// GlobalWebRateLimit: the NoRoute handler, per client IP.
pub(crate) const GLOBAL_WEB: Limit = Limit {
    prefix: "GW",
    max: 60,
    window: Duration::from_secs(180),
};
/// SearchRateLimit: `/api/token/search`, after auth, per user id.
pub(crate) const SEARCH: Limit = Limit {
    prefix: "SR:user:",
    max: 10,
    window: Duration::from_secs(60),
};
/// CriticalRateLimit: key reveals, per client IP, one bucket shared by all critical routes.
pub(crate) const CRITICAL: Limit = Limit {
    prefix: "CT",
    max: 20,
    window: Duration::from_secs(1200),
};

/// Request timestamps per key; rejected requests are not recorded.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    log: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// Whether one more request under `limit` for `key` is allowed (and record it if so).
    pub(crate) fn allow(&self, limit: Limit, key: &str) -> bool {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let queue = log.entry(format!("{}{key}", limit.prefix)).or_default();
        let now = Instant::now();
        if queue.len() < limit.max {
            queue.push_back(now);
            return true;
        }
        match queue.front() {
            Some(oldest) if now.duration_since(*oldest) >= limit.window => {
                queue.pop_front();
                queue.push_back(now);
                true
            }
            _ => false,
        }
    }
}

/// gin's `ClientIP()` with its defaults (every proxy trusted): the left-most `X-Forwarded-For`
/// address when every entry parses, else `X-Real-IP`, else the peer address.
pub(crate) fn client_ip(headers: &HeaderMap, peer: SocketAddr) -> String {
    for name in ["x-forwarded-for", "x-real-ip"] {
        let Some(value) = headers.get(name) else {
            continue;
        };
        let value = String::from_utf8_lossy(value.as_bytes());
        let items: Vec<&str> = value.split(',').map(str::trim).collect();
        if items.iter().all(|i| i.parse::<IpAddr>().is_ok()) {
            if let Some(first) = items.first() {
                return (*first).to_owned();
            }
        }
    }
    peer.ip().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_log() {
        let rl = RateLimiter::default();
        let limit = Limit {
            prefix: "T",
            max: 2,
            window: Duration::from_secs(60),
        };
        assert!(rl.allow(limit, "a"));
        assert!(rl.allow(limit, "a"));
        assert!(!rl.allow(limit, "a"));
        assert!(rl.allow(limit, "b"));
    }

    #[test]
    fn client_ip_rules() {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(client_ip(&h, peer), "127.0.0.1");
        h.insert("x-real-ip", "10.0.0.2".parse().unwrap());
        assert_eq!(client_ip(&h, peer), "10.0.0.2");
        h.insert("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        assert_eq!(client_ip(&h, peer), "1.1.1.1");
        h.insert("x-forwarded-for", "1.1.1.1, junk".parse().unwrap());
        assert_eq!(client_ip(&h, peer), "10.0.0.2");
    }
}
