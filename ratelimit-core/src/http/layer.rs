//! `Limiter::layer()`: installs the limiter and the HTTP configuration for a router, applies
//! default and application-wide limits, and puts the rate limit headers on limited responses.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use axum::response::{IntoResponse, Response};
use http::Request;
use http::request::Parts;
use tower::{Layer, Service};

use super::config::{AsLimits, HttpConfig};
use super::enforce::{self, Entry, LayerState, RequestContext, enforce};
use super::key::{Key, KeySource, missing_connect_info};
use super::response::{HeaderStyle, RateLimited, Rejection, insert_headers};
use crate::limiter::Limiter;

impl Limiter {
    /// A layer that makes this limiter serve every `#[rate_limit]` handler of a router, and
    /// carries the HTTP side of rate limiting: trusted proxies, the default key, the header
    /// style, default and application-wide limits, exempt routes and the rejection handler.
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// use ratelimit_core::Limiter;
    ///
    /// let limiter = Limiter::new();
    /// let layer = limiter
    ///     .layer()
    ///     .trusted_proxies(["10.0.0.0/8"])
    ///     .default_limits("100/minute");
    /// let app: Router = Router::new().route("/", get(|| async { "hi" })).layer(layer);
    /// ```
    ///
    /// Once installed, the layer keeps its configuration for the rest of the process, so
    /// that serving a request never touches a shared reference count: build it once, at
    /// start-up.
    pub fn layer(&self) -> RateLimitLayer {
        RateLimitLayer {
            config: Arc::new(HttpConfig::new(self.clone())),
            installed: Arc::default(),
        }
    }
}

/// The layer of [`Limiter::layer`], and where its HTTP configuration is set.
#[derive(Clone, Debug)]
#[must_use]
pub struct RateLimitLayer {
    config: Arc<HttpConfig>,
    /// The configuration as installed, shared by every route the layer wraps.
    installed: Arc<OnceLock<&'static HttpConfig>>,
}

impl RateLimitLayer {
    fn edit(mut self, change: impl FnOnce(&mut HttpConfig)) -> RateLimitLayer {
        change(Arc::make_mut(&mut self.config));
        self.installed = Arc::default();
        self
    }

    fn installed(&self) -> &'static HttpConfig {
        self.installed
            .get_or_init(|| Box::leak(Box::new((*self.config).clone())))
    }

    /// Believe forwarding headers (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`) from these
    /// proxies: the client is then the right-most hop that none of them added.
    ///
    /// # Panics
    /// On a string that is not a network (`"10.0.0.0/8"`) or an address.
    pub fn trusted_proxies<I, T>(self, proxies: I) -> RateLimitLayer
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.edit(|config| config.set_trusted_proxies(proxies))
    }

    /// Who attributes without a `key`, and the default and application limits, count
    /// (default: [`KeySource::Ip`]). [`KeySource::Custom`] names no function here, so it
    /// counts as [`KeySource::Ip`].
    pub fn default_key(self, key: KeySource) -> RateLimitLayer {
        self.edit(|config| {
            config.default_key = match key {
                KeySource::Custom => KeySource::Ip,
                key => key,
            }
        })
    }

    /// Which rate limit headers limited responses carry (default: both sets).
    pub fn headers(self, style: HeaderStyle) -> RateLimitLayer {
        self.edit(|config| config.headers = style)
    }

    /// Limits for every route without a `#[rate_limit]` attribute, each route its own budget
    /// (slowapi's `default_limits`).
    ///
    /// A route is known to carry an attribute from its first request on: that first request
    /// is charged to the default limits and given back as soon as the attribute runs.
    ///
    /// # Panics
    /// On a string outside the rate grammar.
    pub fn default_limits(self, limits: impl AsLimits) -> RateLimitLayer {
        let limits = Arc::new(limits.into_limits());
        self.edit(|config| config.default_limits = Some(limits))
    }

    /// Limits over all routes together, for each client (slowapi's `application_limits`).
    /// They pass or fail with a route's own limits: a request refused by either is charged
    /// by neither.
    ///
    /// # Panics
    /// On a string outside the rate grammar.
    pub fn application_limits(self, limits: impl AsLimits) -> RateLimitLayer {
        let limits = Arc::new(limits.into_limits());
        self.edit(|config| config.application_limits = Some(limits))
    }

    /// Routes (matched path templates such as `/health`) exempt from the default and
    /// application limits.
    pub fn exempt<I, T>(self, routes: I) -> RateLimitLayer
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let routes: Arc<[String]> = routes.into_iter().map(Into::into).collect();
        self.edit(|config| config.exempt = routes)
    }

    /// Answers refused requests with `handler` instead of the default 429 JSON (slowapi's
    /// `_rate_limit_exceeded_handler`).
    pub fn on_rejected(
        self,
        handler: impl Fn(&RateLimited) -> Response + Send + Sync + 'static,
    ) -> RateLimitLayer {
        let handler = Arc::new(handler);
        self.edit(|config| config.on_rejected = Some(handler))
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> RateLimitService<S> {
        RateLimitService {
            inner,
            config: self.installed(),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub struct RateLimitService<S> {
    inner: S,
    config: &'static HttpConfig,
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
        let config = self.config;
        let context = RequestContext::new(config, LayerState::Done);
        Box::pin(context.scope(async move {
            // Only the head is borrowed across the checks: the body need not be `Sync`.
            let (parts, body) = req.into_parts();
            if let Err(rejection) = layer_limits(config, &parts).await {
                return Ok(rejection.into_response());
            }
            let mut response = inner.call(Request::from_parts(parts, body)).await?;
            if let Some(decision) = enforce::take_admitted() {
                insert_headers(response.headers_mut(), &decision, config.headers);
            }
            Ok(response)
        }))
    }
}

/// The application-wide limits and the route's default limits: checked here for a route not
/// known to carry an attribute, left to the attribute's check otherwise.
async fn layer_limits(config: &'static HttpConfig, parts: &Parts) -> Result<(), Rejection> {
    if config.application_limits.is_none() && config.default_limits.is_none() {
        return Ok(());
    }
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let path = route.unwrap_or_else(|| parts.uri.path());
    if config.exempt.iter().any(|exempt| exempt == path) {
        return Ok(());
    }
    if config.limited_routes.contains(path) {
        if config.application_limits.is_some() {
            enforce::set_layer_state(LayerState::LeftToAttribute);
        }
        return Ok(());
    }
    let key = Key::of(&config.default_key, parts, &config.trusted_proxies).map_err(|_| {
        missing_connect_info("the rate limit layer");
        Rejection::misconfigured()
    })?;
    let mut entries: arrayvec::ArrayVec<Entry<'_>, 2> = arrayvec::ArrayVec::new();
    if let Some(application) = &config.application_limits {
        entries.push(Entry {
            key: &key,
            scope: HttpConfig::APPLICATION,
            limits: application,
            cost: 1,
            message: None,
        });
    }
    if let Some(defaults) = &config.default_limits {
        entries.push(Entry {
            key: &key,
            scope: path,
            limits: defaults,
            cost: 1,
            message: None,
        });
    }
    enforce(config, path, &entries, &[]).await?;
    drop(entries);
    enforce::set_layer_state(LayerState::Charged {
        application: config.application_limits.is_some(),
        default: config.default_limits.is_some(),
        key,
    });
    Ok(())
}
