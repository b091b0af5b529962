//! Refuses an operation that is not in the caller's `allow` list (403), and a search by key from
//! a caller that may not read keys (SPEC §2).

use http::Request;

use super::check::Check;
use crate::caller::Caller;
use crate::error::GatewayError;
use crate::route::{Endpoint, Operation, Route};

/// Checks the [`Route`] against the [`Caller`]'s `allow` list.
#[derive(Clone, Copy, Debug, Default)]
pub struct Authorize;

impl<B> Check<B> for Authorize {
    fn check(&self, request: &mut Request<B>) -> Result<(), GatewayError> {
        let extensions = request.extensions();
        let (Some(caller), Some(route)) = (extensions.get::<Caller>(), extensions.get::<Route>())
        else {
            return Err(GatewayError::Internal(
                "authorize runs after authenticate and route".into(),
            ));
        };
        let op = route.operation();
        if !caller.may(op) {
            return Err(GatewayError::OperationNotAllowed {
                client: caller.name.to_string(),
                op: op.as_str(),
            });
        }
        if route.endpoint == Endpoint::Search {
            key_search(caller, route)?;
        }
        Ok(())
    }
}

/// A search by key (`token`) is a key oracle: with `%` wildcards, a caller who sees the masked
/// key (its first and last four characters) recovers the rest a character at a time, and the
/// upstream's `LIKE` ignores case besides. So it is served only to a caller who may read keys
/// anyway (`reveal_key`), and only as an exact match (it holds the key it searches for).
fn key_search(caller: &Caller, route: &Route) -> Result<(), GatewayError> {
    let Some(key) = route.query_param("token").filter(|key| !key.is_empty()) else {
        return Ok(());
    };
    if !caller.may(Operation::RevealKey) {
        return Err(GatewayError::KeySearchNotAllowed {
            client: caller.name.to_string(),
        });
    }
    if key.contains('%') {
        return Err(GatewayError::BadRequest(
            "a search by key (`token`) is an exact match: `%` (written %25) would make it a wildcard search, which is refused".into(),
        ));
    }
    Ok(())
}
