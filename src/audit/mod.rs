//! The audit trail (SPEC §6): every modification recorded, durably and tamper-evidently, before
//! the upstream sees it.
//!
//! - [`canonical`]: RFC 8785 canonical JSON, the bytes that are hashed and written;
//! - [`chain`]: the audit key, the HMAC-SHA256 `hash` of a record and its `prev` link
//!   ([`chain::seal`], [`chain::line`]: what the writer appends);
//! - [`checkpoint`]: signed checkpoints (SPEC §6.3): the keys, the signed text, the digest of
//!   the lines, and what the writer signs and resumes from;
//! - [`signed`]: checking a trail's checkpoints with the public key (`audit verify --public-key`);
//! - [`changes`]: what a change does to a token (`before`, `changes`);
//! - [`record`]: the fields of an `intent` or `outcome` record, from the request's context;
//! - [`writer`]: the one writer thread: bounded queue, group-commit fsync, rotation, resume,
//!   fail-closed;
//! - [`verify`]: listing a trail's files, checking a whole trail (`tokengate audit verify`), and
//!   reading the verified tail a writer resumes from;
//! - [`query`]: the changes a trail records, paired, filtered and printed while the chain is
//!   checked (`tokengate audit query`);
//! - [`ship`]: the central store in PostgreSQL (`[audit.postgres]`): the shipper, and verify and
//!   query over the table;
//! - [`repair`]: cutting a torn last line off the live file (`tokengate audit repair`);
//! - [`lock`]: one writer per trail (`<path>.lock`, held while a process writes).

pub mod canonical;
pub mod chain;
pub mod changes;
pub mod checkpoint;
pub mod lock;
pub mod query;
pub mod record;
pub mod repair;
pub mod ship;
pub mod signed;
pub mod verify;
pub mod writer;
