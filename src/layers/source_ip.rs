//! Works out the caller IP (SPEC §3) once, for forwarding, logs and the audit trail.

use std::sync::Arc;

use http::Request;
use ipnet::IpNet;

use super::check::Check;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::headers;

/// Records [`crate::context::SourceIp`] in the request context.
#[derive(Clone, Debug)]
pub struct SourceIp {
    trusted: Arc<[IpNet]>,
}

impl SourceIp {
    /// Honours `X-Forwarded-For` from peers in `trusted` only.
    pub fn new(trusted: Arc<[IpNet]>) -> Self {
        SourceIp { trusted }
    }
}

impl<B> Check<B> for SourceIp {
    fn check(&self, request: &mut Request<B>) -> Result<(), GatewayError> {
        let context = RequestContext::of(request)?;
        let source = headers::source_ip(context.peer.ip(), request.headers(), &self.trusted)?;
        context.set_source_ip(source);
        Ok(())
    }
}
