//! Refusals before a caller is known are limited per source address (SPEC §5): within the limit
//! each is a 401 with its audit record; past it a 429 with no record of its own, and one summary
//! record per address and minute (or at shutdown) with `suppressed`: N. The table of addresses is
//! bounded by `rate_limit.max_identities`.

mod support;

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::*;

/// `DELETE /api/token/1` with an unknown key, from source address `from`.
async fn unknown_key_from(from: IpAddr, gateway: SocketAddr) -> Reply {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(from));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let request = Request::builder()
        .method(Method::DELETE)
        .uri(format!("http://{gateway}/api/token/1"))
        .header("authorization", "Bearer tg_not_a_key_of_this_gateway")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn local(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::from([127, a, b, c])
}

#[tokio::test]
async fn refusals_past_the_limit_are_429_and_summed_up_per_address() {
    let (upstream, mut gateway) = {
        let emulator = tokengate::emulator::Emulator::spawn(
            tokengate::emulator::EmulatorConfig::new(UPSTREAM_TOKEN, USER_ID),
        )
        .await
        .unwrap();
        let mut options = Options::new(emulator.addr);
        options.rate_limit =
            format!("{UNMET_RATE_LIMITS}unauthenticated_per_minute = 60\nmax_identities = 50\n");
        let gateway = TestGateway::start(options).await;
        (emulator, gateway)
    };
    let flooder = local(0, 0, 7);
    // Burst 20: recorded one by one, with the RateLimit fields of the address's bucket.
    for i in 0..20 {
        let reply = unknown_key_from(flooder, gateway.addr).await;
        reply.assert_envelope(401, "unauthenticated");
        if i == 19 {
            let fields = reply.headers["ratelimit"].to_str().unwrap();
            assert_eq!(fields, r#""unauthenticated";r=0;t=1"#);
        }
    }
    // Past it: 429 with Retry-After, and no record of its own.
    for _ in 0..15 {
        let reply = unknown_key_from(flooder, gateway.addr).await;
        reply.assert_envelope(429, "rate_limited");
        assert!(reply.headers.contains_key("retry-after"));
        assert_eq!(
            reply.headers["ratelimit-policy"].to_str().unwrap(),
            r#""unauthenticated";q=60;w=60"#
        );
    }
    // Another address is not affected.
    unknown_key_from(local(0, 0, 8), gateway.addr)
        .await
        .assert_envelope(401, "unauthenticated");
    assert!(upstream.emulator.seen().is_empty());
    let records = audit_records(&gateway.audit_path);
    assert_eq!(records.len(), 21, "20 + 1 refusals recorded one by one");
    assert!(records.iter().all(|r| r["reason"] == "unauthenticated"));

    // Many more addresses: the table stays within max_identities.
    for n in 0..200u8 {
        unknown_key_from(local(1, 0, n), gateway.addr).await;
    }
    let metrics = send(gateway.admin, "GET", "/metrics", &[], None)
        .await
        .text();
    let tracked: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tokengate_unauthenticated_addresses "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(tracked <= 50, "{tracked} addresses tracked");
    assert!(
        metrics.contains(
            r#"tokengate_rate_limited_total{client="unauthenticated",class="unauthenticated"} 15"#
        ),
        "{metrics}"
    );

    // At shutdown the pending count is written: one outcome record for the flooding address
    // (evicted from the table meanwhile, its count kept), with `suppressed` 15.
    gateway.shutdown().await.unwrap();
    let records = audit_records(&gateway.audit_path);
    let summaries: Vec<_> = records
        .iter()
        .filter(|r| r.get("suppressed").is_some())
        .collect();
    assert_eq!(summaries.len(), 1, "{summaries:#?}");
    let summary = summaries[0];
    assert_eq!(summary["suppressed"], 15);
    assert_eq!(summary["source_ip"], "127.0.0.7");
    assert_eq!(summary["client"], serde_json::Value::Null);
    assert_eq!(summary["reason"], "rate_limited");
    assert_eq!(summary["outcome"], "rejected");
    assert_eq!(summary["phase"], "outcome");
    assert_eq!(summary["status"], 429);
    assert_eq!(summary["op"], "delete");
    let (code, out, err) = audit_verify_trail(&gateway.audit_path);
    assert_eq!(code, 0, "{out}{err}");
}
