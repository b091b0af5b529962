//! Header filtering cost (SPEC §3): the caller's headers as they go upstream, and the upstream's
//! answer headers as they go back, on every forwarded request. Run with
//! `cargo bench --bench headers`; figures are recorded in BENCHMARKS.md.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokengate::context::{RequestId, SourceIp};
use tokengate::headers::{to_caller, to_upstream};
use tokengate::trace_context::TraceContext;

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// What `wrk`, curl or an SDK sends with a token-management call.
fn caller_headers() -> HeaderMap {
    map(&[
        ("host", "tokengate.internal:8080"),
        ("user-agent", "python-httpx/0.27.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        ("connection", "keep-alive"),
        (
            "authorization",
            "Bearer tg_0123456789abcdef0123456789abcdef",
        ),
        ("content-type", "application/json"),
        ("content-length", "312"),
    ])
}

/// What new-api answers with (Gin, behind no proxy).
fn upstream_headers() -> HeaderMap {
    map(&[
        ("content-type", "application/json; charset=utf-8"),
        ("date", "Wed, 02 Dec 2026 16:30:00 GMT"),
        ("content-length", "412"),
        ("x-oneapi-request-id", "20261202163000123456789"),
        ("vary", "Origin"),
    ])
}

fn headers(c: &mut Criterion) {
    let source = SourceIp {
        ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        via_trusted_proxy: false,
    };
    let id = RequestId::next();
    let trace = TraceContext::start();
    let inbound = caller_headers();
    c.bench_function("to_upstream", |b| {
        b.iter_batched(
            || inbound.clone(),
            |inbound| black_box(to_upstream(inbound, source, &id, &trace)),
            BatchSize::SmallInput,
        )
    });
    let answer = upstream_headers();
    c.bench_function("to_caller", |b| {
        b.iter_batched(
            || answer.clone(),
            |answer| black_box(to_caller(answer)),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, headers);
criterion_main!(benches);
