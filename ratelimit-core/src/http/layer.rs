//! `Limiter::layer()`: installs the limiter for a router, applies default and
//! application-wide limits, and puts the rate limit headers on limited responses.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use axum::response::{IntoResponse, Response};
use http::Request;
use http::request::Parts;
use tower::{Layer, Service};

use super::client_ip::{IpKey, client_ip};
use super::response::{Fields, insert_headers};
use super::{KeySource, Rejection, check};
use crate::decision::Decision;
use crate::limiter::Limiter;
use crate::limits::Limits;

/// What the layer shares with the extractors of the request it serves. A task-local rather
/// than a request extension: nothing is allocated, and nothing shared between requests is
/// written (a reference count bounced between cores costs more than the whole check).
struct RequestContext {
    limiter: &'static Limiter,
    /// The most restrictive admission so far, for the response headers.
    admitted: RefCell<Option<(Decision, Fields)>>,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// The limiter of the layer serving this request, if any.
pub(crate) fn current_limiter() -> Option<&'static Limiter> {
    REQUEST.try_with(|request| request.limiter).ok()
}

/// Remembers an admission for the response headers (a no-op outside the layer).
pub(crate) fn record(decision: Decision, limits: &Limits) {
    let _ = REQUEST.try_with(|request| {
        let mut slot = request.admitted.borrow_mut();
        if slot
            .as_ref()
            .is_none_or(|(earlier, _)| decision.remaining() < earlier.remaining())
        {
            *slot = Some((
                decision,
                limits.http_rate(decision.rate_index()).fields.copy(),
            ));
        }
    });
}

/// The layer of [`Limiter::layer`].
#[derive(Clone, Copy, Debug)]
pub struct RateLimitLayer {
    limiter: &'static Limiter,
}

impl RateLimitLayer {
    pub(crate) fn new(limiter: &'static Limiter) -> RateLimitLayer {
        RateLimitLayer { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> RateLimitService<S> {
        RateLimitService {
            inner,
            limiter: self.limiter,
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: &'static Limiter,
}

impl<S, B> Service<Request<B>> for RateLimitService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this request (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = self.limiter;
        let context = RequestContext {
            limiter,
            admitted: RefCell::new(None),
        };
        Box::pin(REQUEST.scope(context, async move {
            // Only the head is borrowed across the checks: the body need not be `Sync`.
            let (parts, body) = req.into_parts();
            if let Err(rejection) = route_limits(limiter, &parts).await {
                return Ok(rejection.into_response());
            }
            let mut response = inner.call(Request::from_parts(parts, body)).await?;
            if let Some((decision, fields)) = REQUEST.with(|request| request.admitted.take()) {
                insert_headers(
                    response.headers_mut(),
                    &decision,
                    &fields,
                    limiter.http().headers,
                );
            }
            Ok(response)
        }))
    }
}

/// Application-wide limits, then default limits for routes without an attribute.
async fn route_limits(limiter: &Limiter, req: &Parts) -> Result<(), Rejection> {
    let http = limiter.http();
    if http.application_limits.is_none() && http.default_limits.is_none() {
        return Ok(());
    }
    let route = req.extensions.get::<MatchedPath>().map(MatchedPath::as_str);
    let path = route.unwrap_or_else(|| req.uri.path());
    if http.exempt.iter().any(|exempt| exempt == path) {
        return Ok(());
    }
    let owned;
    let key: &str = match &http.default_key {
        KeySource::Global => "",
        KeySource::Header(name) => req
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        KeySource::Ip | KeySource::Custom => {
            match client_ip(&req.extensions, &req.headers, &http.trusted_proxies) {
                Ok(ip) => {
                    owned = IpKey::new(ip);
                    owned.as_str()
                }
                Err(_) => {
                    super::missing_connect_info("the rate limit layer");
                    return Err(Rejection::misconfigured());
                }
            }
        }
    };
    let mut checks: [Option<(&str, &Limits)>; 2] = [None, None];
    if let Some(app) = &http.application_limits {
        checks[0] = Some(("__application", app));
    }
    if let Some(defaults) = &http.default_limits {
        if !http.limited_routes.contains(path) {
            checks[1] = Some((path, defaults));
        }
    }
    for (scope, limits) in checks.into_iter().flatten() {
        let decision = check(limiter, scope, limits, key, 1).await?;
        if !decision.is_allowed() {
            tracing::warn!(key, route = path, limit = %decision.rate(), "rate limit exceeded");
            let client = || client_ip(&req.extensions, &req.headers, &http.trusted_proxies).ok();
            return Err(http.reject(&decision, limits, None, || super::RateLimited {
                decision,
                route: path.to_owned(),
                key: key.to_owned(),
                client: client(),
                message: None,
            }));
        }
        record(decision, limits);
    }
    Ok(())
}
