//! Maps the request to one route of SPEC §2, or refuses it (400/404/405); nothing outside the
//! table goes further.

use http::Request;

use super::check::Check;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::route::route;

/// Inserts the [`Route`](crate::route::Route) extension.
#[derive(Clone, Copy, Debug, Default)]
pub struct Route;

impl<B> Check<B> for Route {
    fn check(&self, request: &mut Request<B>) -> Result<(), GatewayError> {
        let route = route(request.method(), request.uri())?;
        let context = RequestContext::of(request)?;
        context.set_op(route.operation());
        if let Some(id) = route.endpoint.token_id() {
            context.set_token_ids(vec![id.get()]);
        }
        request.extensions_mut().insert(route);
        Ok(())
    }
}
