//! A layer for synchronous checks that either refuse a request or let it through, possibly
//! enriched (an extension added), in the shape of tower-http's `ValidateRequest`.
//!
//! Authentication, routing, the allow list, the caller IP and body validation are each a [`Check`]: a small type
//! with one method, testable without a server. Refusals are [`GatewayError`]s, rendered at the top.

use std::task::{Context, Poll};

use futures_util::future::{ready, Either, Ready};
use http::{Request, Response};
use tower::{Layer, Service};

use crate::error::{Body, GatewayError};

/// One synchronous check of a request with body type `B`.
pub trait Check<B>: Clone {
    /// Refuses the request, or lets it through (it may add extensions, or replace the body).
    fn check(&self, request: &mut Request<B>) -> Result<(), GatewayError>;
}

/// Applies a [`Check`] before the inner service.
#[derive(Clone, Debug)]
pub struct CheckLayer<C> {
    check: C,
}

impl<C> CheckLayer<C> {
    /// A layer running `check`.
    pub fn new(check: C) -> Self {
        CheckLayer { check }
    }
}

impl<C: Clone, S> Layer<S> for CheckLayer<C> {
    type Service = Checked<C, S>;
    fn layer(&self, inner: S) -> Self::Service {
        Checked {
            check: self.check.clone(),
            inner,
        }
    }
}

/// The service built by [`CheckLayer`].
#[derive(Clone, Debug)]
pub struct Checked<C, S> {
    check: C,
    inner: S,
}

impl<C, S, B> Service<Request<B>> for Checked<C, S>
where
    C: Check<B>,
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = Either<Ready<Result<Response<Body>, GatewayError>>, S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.check.check(&mut request) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(refusal) => Either::Left(ready(Err(refusal))),
        }
    }
}
