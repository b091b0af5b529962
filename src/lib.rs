//! tokengate: a gateway in front of the token-management API (`/api/token…`) of new-api-compatible
//! LLM aggregators (new-api, one-api and their forks).
//!
//! It holds the upstream credential, authenticates internal callers with their own keys, forwards
//! only the routes of the token API (in canonical form, with the credential injected), and
//! refuses everything else. `SPEC.md` is the contract; this crate is laid out so that each of its
//! sections has one obvious home.
//!
//! # Layout
//!
//! ```text
//! cli.rs          the command line: serve, check, keys new, keys checkpoint, audit verify, audit
//!                 query, audit repair, emulator, demo, health
//! demo.rs         `tokengate demo`: emulator + gateway on loopback, a printed walk-through
//! config/         the TOML file: serde structs refusing unknown keys, checked at load (mod.rs),
//!                 read with every fault collected (read.rs)
//! gateway.rs      the running state built from a config (secrets and files resolved)
//! server.rs       listeners, HTTP/1.1 + HTTP/2, graceful drain
//! connections.rs  SPEC §7 server.max_connections: the open-connection count, the wait at the cap
//! reload.rs       SPEC §7 SIGHUP: the running stack and TLS config, swapped whole
//! tls.rs          SPEC §8: the inbound rustls config, the names of a client certificate
//! stack.rs        the request stack, top to bottom, in one function
//! admin.rs        /healthz, /readyz, /metrics, /openapi.json
//! openapi.rs      the caller-facing API's OpenAPI document (openapi/tokengate.json), compiled in
//! route.rs        SPEC §2: (method, path, query) → Endpoint, canonical upstream path
//! caller.rs       SPEC §3: keys, digests, the Caller of a request
//! policy.rs       SPEC §5: a client's rules, judged on the token as it would be stored
//! ratelimit/      SPEC §5: GCRA buckets per client and class, the global upstream cap (mod.rs),
//!                 pass-through identities (identities.rs), refusals before authentication per
//!                 source address (unauthenticated.rs)
//! read_token.rs   reading a token upstream for a check (name_prefix) or a merge (PATCH)
//! locks.rs        per-token serialisation of changes (SPEC §4.5)
//! headers.rs      SPEC §3: which headers cross, caller IP
//! trace_context.rs SPEC §3: W3C traceparent/tracestate kept, or a new trace; the trace id
//! upstream.rs     the upstream client: credential injection, timeouts, status mapping
//! upstream/       refusals.rs: new-api's HTTP-200 credential refusals, in each language it ships;
//!                 pool.rs: each thread's own connections; connect.rs: TCP, TLS, HTTP/1.1 or h2
//! forward.rs      the innermost service
//! token/          SPEC §4: strict JSON, one type per field rule, the typed edit of each operation,
//!                 the PATCH merge, the batch update body
//! error.rs        GatewayError and the SPEC §9 envelope
//! emulator/       a built-in new-api emulator (sandbox and test upstream); shares no checks with the gateway
//! layers/         one concern per layer (see stack.rs)
//! ```
//!
//! # Request stack
//!
//! ```text
//! detach (changes run on without their caller) → request context (id, trace, deadline)
//!   → access log + metrics → rescue (errors → envelope)
//!   → audit outcome → source ip → authenticate → route → rate limit → authorize → read body
//!   → validate → batch cost → batch fan-out (each id on as a PATCH) → per-token lock + PATCH
//!   merge → policy → audit intent → forward
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod audit;
pub mod caller;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod context;
pub mod demo;
pub mod emulator;
pub mod error;
pub mod forward;
pub mod gateway;
pub mod headers;
pub mod layers;
pub mod locks;
pub mod memory;
pub mod metrics;
pub mod openapi;
pub mod policy;
pub mod ratelimit;
pub mod read_token;
pub mod reload;
pub mod route;
pub mod secret;
pub mod server;
pub mod stack;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod trace_context;
pub mod upstream;

pub use config::Config;
pub use gateway::Gateway;
pub use server::run;
