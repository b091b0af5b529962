//! `SIGHUP` reload (SPEC §7): the configuration is read again and, if it loads whole, a new
//! request stack and TLS configuration replace the running ones; if not, the error is logged and
//! the running configuration stays.
//!
//! Connections are never touched: each request takes the stack that is current when it arrives
//! and keeps it to its end, so in-flight requests finish as they began, and the next request on a
//! kept-alive connection already meets the new clients and policies. What is kept across a
//! reload (the trail, per-token locks, unchanged clients' rate-limit state) is decided by
//! [`Gateway::reload`].

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use crate::audit::writer::Trail;
use crate::config::Config;
use crate::error::Body;
use crate::gateway::Gateway;
use crate::stack::{self, GatewayService};

/// The running configuration: the gateway it was built from and its request stack, swapped
/// together.
pub struct Live {
    current: RwLock<Arc<Generation>>,
    /// Notified (every waiter) once a reload is in force, so a wait that depends on the
    /// configuration (the accept loop at `server.max_connections`) reads it again at once.
    reloaded: Notify,
}

/// One configuration in force.
pub struct Generation {
    /// The gateway (its TLS configuration, the admin listener's readiness probe credential).
    pub gateway: Gateway,
    stack: GatewayService,
}

impl Live {
    /// The stack of `gateway`, writing to `trail`.
    pub fn new(gateway: Gateway, trail: Arc<Trail>) -> Arc<Live> {
        Arc::new(Live {
            current: RwLock::new(Arc::new(Generation {
                stack: stack::build(&gateway, trail),
                gateway,
            })),
            reloaded: Notify::new(),
        })
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The service that hands each request to the stack current when it arrives.
    pub fn service(self: &Arc<Live>) -> LiveService {
        LiveService(self.clone())
    }

    /// Reads the configuration at `path` and, if it loads whole, puts it in force. Reloads come
    /// one at a time (from one `SIGHUP` task).
    pub fn reload(&self, path: &Path) -> Result<(), String> {
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let gateway = self
            .current()
            .gateway
            .reload(&config)
            .map_err(|e| e.to_string())?;
        let Some(trail) = gateway.trail.clone() else {
            return Err("the audit trail is not open".into());
        };
        let next = Arc::new(Generation {
            stack: stack::build(&gateway, trail),
            gateway,
        });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        self.reloaded.notify_waiters();
        Ok(())
    }

    /// Notified (with `notify_waiters`) after each reload is put in force; register with
    /// `Notified::enable` before reading [`Live::current`] so no reload slips in between.
    pub fn reloads(&self) -> &Notify {
        &self.reloaded
    }
}

/// Serves each request on the stack current when it arrives.
#[derive(Clone)]
pub struct LiveService(Arc<Live>);

impl Service<Request<Incoming>> for LiveService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Oneshot<GatewayService, Request<Incoming>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let stack = self
            .0
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .stack
            .clone();
        stack.oneshot(request)
    }
}
