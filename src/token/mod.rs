//! The token domain, independent of HTTP: what a token edit is and the rules that make it valid
//! (SPEC §4).

pub mod batch;
pub mod canonical;
pub mod edit;
pub mod fields;
pub mod json;
pub mod patch;
