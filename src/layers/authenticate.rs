//! Identifies the caller from its `Authorization` header (SPEC §3) and, with mutual TLS, its
//! verified client certificate (SPEC §8), and attaches a
//! [`Caller`](crate::caller::Caller), or refuses with 401.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::Request;

use super::check::Check;
use crate::caller::Authenticator;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::tls::PeerIdentity;
use crate::upstream::NEW_API_USER;

/// Inserts the [`Caller`](crate::caller::Caller) extension.
#[derive(Clone, Debug)]
pub struct Authenticate {
    authenticator: Arc<Authenticator>,
}

impl Authenticate {
    /// Authenticates with `authenticator`.
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Authenticate { authenticator }
    }
}

impl<B> Check<B> for Authenticate {
    fn check(&self, request: &mut Request<B>) -> Result<(), GatewayError> {
        let headers = request.headers();
        if headers.get_all(AUTHORIZATION).iter().nth(1).is_some() {
            return Err(GatewayError::BadRequest(
                "send one Authorization header, not several".into(),
            ));
        }
        let peer = request.extensions().get::<Arc<PeerIdentity>>();
        let caller = self.authenticator.authenticate(
            headers.get(AUTHORIZATION),
            headers.get(NEW_API_USER),
            peer.map(|p| &**p),
        )?;
        RequestContext::of(request)?.set_client(caller.name.clone());
        request.extensions_mut().insert(caller);
        Ok(())
    }
}
