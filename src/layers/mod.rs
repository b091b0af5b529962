//! The layers of the request stack, one concern each. [`crate::stack::build`] lists them in
//! order; read it first.

pub mod access_log;
pub mod audit;
pub mod authenticate;
pub mod authorize;
pub mod batch_update;
pub mod capture_before;
pub mod check;
pub mod detach;
pub mod patch;
pub mod policy;
pub mod rate_limit;
pub mod read_body;
pub mod request_context;
pub mod rescue;
pub mod route;
pub mod source_ip;
pub mod validate;

use std::future::Future;
use std::pin::Pin;

/// The future of a layer that must await (read a body, log after the response).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
