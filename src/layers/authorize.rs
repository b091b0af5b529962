//! Refuses an operation that is not in the caller's `allow` list (403).

use http::Request;

use super::check::Check;
use crate::caller::Caller;
use crate::error::GatewayError;
use crate::route::Route;

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
        if caller.may(op) {
            Ok(())
        } else {
            Err(GatewayError::OperationNotAllowed {
                client: caller.name.to_string(),
                op: op.as_str(),
            })
        }
    }
}
