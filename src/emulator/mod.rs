//! A built-in new-api emulator: an in-memory HTTP server that answers the `/api/token` family of
//! new-api's dashboard API the way the real thing does (see `upstream-new-api.md`).
//!
//! It is the sandbox behind `tokengate emulator` / `tokengate demo` and the upstream of the
//! gateway's integration tests, which read what it received ([`Emulator::seen`]) and what it
//! stored ([`Emulator::tokens`]). It accepts what new-api accepts and answers byte for byte
//! where that is cheap:
//!
//! - **Routes** of §1, gin's trailing-slash redirects before any middleware (301 for GET with
//!   Go's HTML body, 307 otherwise, `Location` keeping the query and honouring
//!   `X-Forwarded-Prefix`), NoRoute 404 `Invalid URL (METHOD /path)` for everything else.
//! - **Auth** of §2.1 (E2, default) or §2.2 (E3), see [`Era`]; `Auth-Version` on success.
//! - **Envelope**: HTTP 200 `{"data":..,"message":..,"success":..}` (gin.H is a Go map, so its
//!   keys come out sorted), tokens in Go struct order with `DeletedAt: null`, compact,
//!   HTML-escaped, `application/json; charset=utf-8`.
//! - **Binding** like Go's `encoding/json` (unknown keys ignored, case-insensitive keys, last
//!   duplicate wins, `null` keeps zero values, Go's type-mismatch and syntax error texts).
//! - **Handlers** of §4 and §5: create (no data; gorm defaults), full-overwrite update,
//!   `status_only`, enable refusal, soft delete, batch delete, masked keys, key reveal (single and
//!   batch, DisableCache headers), E2 pagination and search patterns, E3 root scope and
//!   `auto_groups`.
//! - **Headers** of §7: `X-Oneapi-Request-Id` (unless the request has one), `X-New-Api-Version`;
//!   HTTP/1 header names are written in Go's canonical case.
//! - **Rate limits** (opt-in, [`EmulatorConfig::rate_limits`]) keyed by gin's `ClientIP()`.
//! - **Messages** in every language new-api ships: zh-TW when the first `Accept-Language` tag
//!   starts with `zh-tw`, zh-CN when it starts with any other `zh`, English otherwise (any case;
//!   `;q=` ignored; see `messages.rs`).
//!
//! # Public API
//!
//! - [`Emulator::new`] / [`Emulator::serve`] (an already-bound listener plus a shutdown future) or
//!   [`Emulator::spawn`] (loopback, returns a [`RunningEmulator`] that stops when dropped;
//!   [`RunningEmulator::shutdown`] stops and waits, [`RunningEmulator::base_url`]).
//! - Test hooks: [`Emulator::seen`] / [`Emulator::clear_seen`] (last [`SEEN_CAPACITY`]
//!   requests as [`SeenRequest`]), [`Emulator::tokens`] (the whole table as [`StoredToken`]),
//!   [`Emulator::add_user`] ([`User`]), [`Emulator::insert_token`] ([`NewToken`]),
//!   [`Emulator::set_delay`], [`Emulator::config`]; relay usage, which the emulator has no
//!   route for: [`Emulator::use_quota`], and [`Emulator::use_quota_after_next_read`] to land it
//!   between a client's read and write.
//! - Fork fields: [`EmulatorConfig::fork_billing_type`] (a `billing_type` string in the token
//!   model, overwritten by full updates like the other editable fields).
//! - [`Era`] (`FromStr`, error [`UnknownEra`]), [`EmulatorConfig`], and the header values
//!   [`AUTH_VERSION`] and [`NEW_API_VERSION`].
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use tokengate::emulator::{Emulator, EmulatorConfig};
//! let upstream = Emulator::spawn(EmulatorConfig::new("access-token", 42)).await?;
//! // point the gateway at upstream.base_url(), then inspect upstream.emulator.seen()
//! # Ok(()) }
//! ```
//!
//! Not modelled: session cookies and dashboard JWTs (only access tokens authenticate), users'
//! saved language (and the language cookie some forks read), gzip responses, database errors
//! (500), the 10 000-level JSON nesting limit (1 000 here), the `DeletedAt` field of request
//! bodies, routes outside `/api/token` (404 here), and E3 audit logs.

// Early answers travel as `Err(Response)`: a cold path, not worth boxing.
#![allow(clippy::result_large_err)]

mod auth;
mod bind;
mod config;
mod encode;
mod gostr;
mod handlers;
mod json;
mod messages;
mod pipeline;
mod ratelimit;
mod routes;
mod search;
mod server;
mod store;

pub use config::{EmulatorConfig, Era, UnknownEra, User};
pub use pipeline::{AUTH_VERSION, NEW_API_VERSION};
pub use server::{Emulator, RunningEmulator, SeenRequest, SEEN_CAPACITY};
pub use store::{NewToken, StoredToken};
