//! The OpenAPI 3.1 document of the caller-facing API (`openapi/tokengate.json`), compiled into
//! the binary and served by the operations listener at `GET /openapi.json`.
//!
//! It is the product's contract for callers, so the binary serves the very document the tests
//! check: `tests/openapi.rs` validates it, checks that its routes are the routes of
//! [`crate::route`] with their operations, and runs schemathesis against a gateway to check that
//! every answer conforms to it. Embedding it (rather than reading a file at run time) means a
//! deployed gateway can never serve a document other than the one it was built and tested with.

/// The document, as JSON text.
pub const DOCUMENT: &str = include_str!("../openapi/tokengate.json");
