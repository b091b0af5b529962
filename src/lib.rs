//! tokengate: a gateway in front of the token-management API of new-api-compatible LLM aggregators.
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
pub mod emulator;
