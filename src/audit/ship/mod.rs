//! The central store (SPEC §6.3): every record of the local trail copied to one PostgreSQL table
//! that several replicas share, each under its own `origin`, and read back from there.
//!
//! - [`target`]: the URL (a secret) and table of `[audit.postgres]`, connecting, creating the
//!   table;
//! - [`table`]: the table's schema and indexes, and the columns of a row derived from its line;
//! - [`source`]: reading the local trail back, durable records only, across rotations;
//! - [`shipper`]: the task that copies them, in order and in batches, off the request path;
//! - [`check`]: an origin's chain checked from its rows (the verify code on each `line`);
//! - [`read`]: `audit verify --postgres` and `audit query --postgres`;
//! - [`cli`]: their command lines.

pub mod check;
pub mod cli;
pub mod read;
pub mod shipper;
pub mod source;
pub mod table;
pub mod target;
