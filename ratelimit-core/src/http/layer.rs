//! `Limiter::layer()`: installs the limiter and the HTTP configuration for a router, applies
//! default and application-wide limits, and puts the rate limit headers on limited responses.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::response::{IntoResponse, Response};
use http::Request;
use http::request::Parts;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::config::{AsLimits, DrainPolicy, HttpConfig};
use super::context::{LayerState, RequestContext};
use super::drain::{Drain, Watched};
use super::enforce::{Entry, enforce, now_or_never};
use super::key::{Key, KeySource, missing_connect_info};
use super::response::{HeaderStyle, RateLimited, Rejection, insert_budget_headers, insert_headers};
use crate::decision::Decision;
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

    /// Which rate limit headers limited responses carry (default: the IETF draft's
    /// `RateLimit-Policy` and `RateLimit`; [`HeaderStyle::Both`] adds the legacy
    /// `X-RateLimit-*`).
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

    /// How much of a request body left unread the layer reads and discards before it
    /// answers (default: 256 KiB within 1 second; 0 turns it off).
    ///
    /// A request refused before its body is read (the point of checking first) leaves the
    /// body on the connection, and the server would close the connection under a client
    /// still sending it: the client sees a broken pipe instead of its 429, and a client that
    /// honours `Retry-After` still fails. Read to its end, the connection stays usable;
    /// past `limit` bytes or `within`, the answer carries `Connection: close` and the client
    /// reconnects cleanly. Bodies that handlers leave unread are drained the same way.
    pub fn drain_unread_bodies(self, limit: u64, within: Duration) -> RateLimitLayer {
        self.edit(|config| config.drain = DrainPolicy { limit, within })
    }

    /// Answers refused requests with `handler` instead of the default 429 JSON (slowapi's
    /// `_rate_limit_exceeded_handler`). Requests refused for want of a concurrency slot
    /// (`concurrency = N`) have no rate decision to describe and keep the default answer
    /// (429, `Retry-After: 1`, the attribute's `error_message` if any).
    pub fn on_rejected(
        self,
        handler: impl Fn(&RateLimited) -> Response + Send + Sync + 'static,
    ) -> RateLimitLayer {
        let handler = Arc::new(handler);
        self.edit(|config| config.on_rejected = Some(handler))
    }
}

impl RateLimitLayer {
    /// The layer around a whole router, the way axum runs a middleware before routing,
    /// instead of on every route (`Router::layer`, for which axum boxes each route and
    /// clones the box for each request: about 900 instructions a request before the layer
    /// does anything). Serve the result with axum's
    /// `ServiceExt::into_make_service_with_connect_info`.
    ///
    /// The router's handlers are made routes once (`Router::with_state(())`, as axum's own
    /// `into_make_service` does): a router served without it would make each request's
    /// route again, an allocation each. The layer then sees no matched route before the
    /// handler runs: `default_limits` count by the request's path (a templated route's
    /// attribute gives the layer's charge back), and `exempt` names paths.
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// use ratelimit_core::Limiter;
    ///
    /// let app = Router::new().route("/", get(|| async { "hi" }));
    /// let service = Limiter::new().layer().default_limits("100/minute").around(app);
    /// // axum::serve(listener, service.into_make_service_with_connect_info::<SocketAddr>())
    /// ```
    pub fn around(&self, router: axum::Router) -> RateLimitService<axum::Router> {
        self.layer(router.with_state(()))
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> RateLimitService<S> {
        RateLimitService {
            inner,
            config: self.installed(),
            // One per wrapped service (with `Router::layer`, one per route and method), kept
            // for the process, like the configuration.
            route: Box::leak(Box::default()),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub struct RateLimitService<S> {
    inner: S,
    config: &'static HttpConfig,
    route: &'static RouteState,
}

/// What the service learned of the one route it wraps (with `Router::layer`, each route gets
/// its own service): that its handler carries an attribute, once one ran in a request it
/// served. Such a route skips the default limits, and its application limits are checked with
/// the attribute's. (That a route carries none is never concluded: a layer inside this one may
/// answer before the handler runs.)
#[derive(Debug, Default)]
struct RouteState {
    /// The matched path's address (the router keeps one per route): 0 before the first
    /// request, `MIXED` when the service sees several routes (a layer around a whole router).
    path: AtomicUsize,
    kind: AtomicU8,
}

const MIXED: usize = usize::MAX;
const UNKNOWN: u8 = 0;
const LIMITED: u8 = 1;
/// No attribute ran in a request of the route so far. Never a reason to skip a limit (a layer
/// inside may have answered first); only to not watch its bodies (an attribute that runs
/// later makes it `LIMITED`).
const PLAIN: u8 = 2;

impl RouteState {
    /// What is known of the request's matched route, and whether this service may learn it.
    #[inline(always)]
    fn kind(&self, extensions: &http::Extensions) -> (u8, bool) {
        let known = self.path.load(Ordering::Relaxed);
        if known == MIXED {
            // Around a whole router: no need to look for a matched path.
            return (UNKNOWN, false);
        }
        let Some(route) = extensions.get::<MatchedPath>() else {
            // Requests that reach this service unrouted (it goes around a router, or serves
            // a fallback): it never learns.
            self.path.store(MIXED, Ordering::Relaxed);
            return (UNKNOWN, false);
        };
        let at = route.as_str().as_ptr() as usize;
        match known {
            known if known == at => (self.kind.load(Ordering::Relaxed), true),
            0 => match self
                .path
                .compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => (UNKNOWN, true),
                Err(known) if known == at => (self.kind.load(Ordering::Relaxed), true),
                Err(_) => {
                    self.path.store(MIXED, Ordering::Relaxed);
                    (UNKNOWN, false)
                }
            },
            _ => {
                self.path.store(MIXED, Ordering::Relaxed);
                (UNKNOWN, false)
            }
        }
    }
}

impl<S> Service<Request<Body>> for RateLimitService<S>
where
    S: Service<Request<Body>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let config = self.config;
        let (kind, learn) = self.route.kind(req.extensions());
        let route = learn.then_some(self.route);
        let layer_limits = config.application_limits.is_some() || config.default_limits.is_some();
        if !layer_limits {
            // No limits of the layer's own: the route is called at once, in its context.
            if kind != PLAIN && config.drain.watches(req.body()) {
                return self.scoped(req.map(Watched::body), LayerState::Done, None, route);
            }
            return self.scoped(req, LayerState::Done, None, route);
        }
        let limited = kind == LIMITED
            || (kind == UNKNOWN && layer_limits && !learn && {
                // A layer around several routes: what the attributes recorded, by path.
                let path = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map(MatchedPath::as_str);
                config
                    .limited_routes
                    .contains(path.unwrap_or_else(|| req.uri().path()))
            });
        if layer_limits && !config.limiter.answers_now() {
            return self.call_waiting(req, limited, route);
        }
        // The store answers at once: the layer's own limits are checked here, so that the
        // wrapped service is called now (no clone of it, no box).
        let (state, admitted) = if layer_limits {
            let (parts, body) = req.into_parts();
            let checked = now_or_never(layer_limits_of(config, &parts, limited));
            req = Request::from_parts(parts, body);
            match checked {
                Some(Ok(outcome)) => outcome,
                Some(Err(rejection)) => {
                    let response = rejection.into_response();
                    return ResponseFuture::new(drained(req.into_body(), response, config.drain));
                }
                // Cannot happen: an in-memory store never waits. Refuse rather than let the
                // request through unchecked.
                None => {
                    return ResponseFuture::new(Inner::Ready {
                        response: Some(Rejection::store_failed().into_response()),
                    });
                }
            }
        } else {
            (LayerState::Done, None)
        };
        if kind != PLAIN && config.drain.watches(req.body()) {
            // A refusal, or a handler, may leave the body unread: it comes back to be drained.
            req = req.map(Watched::body);
        }
        self.scoped(req, state, admitted, route)
    }
}

impl<S> RateLimitService<S> {
    /// The wrapped service's future for `req`, in the request's context.
    #[inline(always)]
    fn scoped<E>(
        &mut self,
        req: Request<Body>,
        layer: LayerState,
        admitted: Option<Decision>,
        route: Option<&'static RouteState>,
    ) -> ResponseFuture<S::Future, E>
    where
        S: Service<Request<Body>>,
    {
        // The context first, then the route's future: it is called once its context is ready.
        ResponseFuture {
            inner: Inner::Scoped {
                future: Scoped {
                    context: RequestContext::new(self.config, layer, admitted, route.is_none()),
                    route,
                    future: Some(self.inner.call(req)),
                },
            },
        }
    }

    /// With a store that waits (Redis), the layer's own limits are awaited before the wrapped
    /// service is called: a clone of it serves the request (tower's usual swap), in a boxed
    /// future.
    fn call_waiting(
        &mut self,
        req: Request<Body>,
        limited: bool,
        route: Option<&'static RouteState>,
    ) -> ResponseFuture<S::Future, S::Error>
    where
        S: Service<Request<Body>, Response = Response> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config;
        let future = async move {
            // Only the head is borrowed across the checks: the body need not be `Sync`.
            let (parts, mut body) = req.into_parts();
            let (state, admitted) = match layer_limits_of(config, &parts, limited).await {
                Ok(outcome) => outcome,
                Err(rejection) => {
                    let response = rejection.into_response();
                    return Ok(match config.drain.watches(&body) {
                        true => Drain::new(body, response, config.drain).await,
                        false => response,
                    });
                }
            };
            if config.drain.watches(&body) {
                body = Watched::body(body);
            }
            let context = RequestContext::new(config, state, admitted, route.is_none());
            let future = Some(inner.call(Request::from_parts(parts, body)));
            let mut scoped = std::pin::pin!(Scoped {
                context,
                route,
                future,
            });
            let response = scoped.as_mut().await?;
            Ok(match scoped.unread() {
                Some((body, policy)) => Drain::new(body, response, policy).await,
                None => response,
            })
        };
        ResponseFuture::new(Inner::Waiting {
            future: Box::pin(future),
        })
    }
}

type BoxedResponse<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

pin_project! {
    /// The response future of [`RateLimitService`]: the wrapped service's, run in the request's
    /// context and given the rate limit headers, or the layer's own 429. Nothing is allocated
    /// unless the store waits.
    pub struct ResponseFuture<F, E> {
        #[pin]
        inner: Inner<F, E>,
    }
}

impl<F, E> ResponseFuture<F, E> {
    #[inline(always)]
    fn new(inner: Inner<F, E>) -> ResponseFuture<F, E> {
        ResponseFuture { inner }
    }
}

pin_project! {
    #[project = InnerProjection]
    enum Inner<F, E> {
        /// The wrapped service's future, in the request's context, which its extractors find.
        Scoped { #[pin] future: Scoped<F> },
        /// Refused by the layer.
        Ready { response: Option<Response> },
        /// Refused by the layer, once what the client sends of the body is read.
        Draining { drain: Drain },
        /// The store waits.
        Waiting { future: BoxedResponse<E> },
    }
}

pin_project! {
    /// A route's future inside its request context: on completion, the admission goes into
    /// the headers and an attribute that ran marks the route as carrying one. Kept small: the
    /// whole response future is moved several times on its way into axum's box.
    struct Scoped<F> {
        // `None` once complete, or dropped (in its context, as it may leave a body or a
        // settlement there).
        #[pin]
        future: Option<F>,
        context: RequestContext,
        route: Option<&'static RouteState>,
    }

    impl<F> PinnedDrop for Scoped<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let mut future = this.future;
            if future.is_some() {
                this.context.run(|| future.set(None));
            }
        }
    }
}

impl<F> Scoped<F> {
    /// The body the route left unread, once its future completed, and how to drain it
    /// before the answer goes out.
    fn unread(self: Pin<&mut Self>) -> Option<(Body, DrainPolicy)> {
        let this = self.project();
        let body = this.context.take_unread()?;
        Some((body, this.context.config().drain))
    }
}

impl<F, E> Future for Scoped<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    /// The route's answer, given its headers where it stands (a response moved is about
    /// twenty instructions, each time).
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Response, E>> {
        let this = self.project();
        let mut slot = this.future;
        // Polled, and dropped once complete, in the request's context.
        let current = this.context.enter();
        let Some(future) = slot.as_mut().as_pin_mut() else {
            panic!("a rate limited route's future polled after it completed");
        };
        let mut poll = future.poll(cx);
        if poll.is_ready() {
            slot.set(None);
        }
        drop(current);
        let Poll::Ready(result) = &mut poll else {
            return poll;
        };
        if let Some(route) = this.route {
            match this.context.attributed() {
                // Written once: a store on every request would bounce the line between cores.
                true if route.kind.load(Ordering::Relaxed) == LIMITED => {}
                true => route.kind.store(LIMITED, Ordering::Relaxed),
                false if route.kind.load(Ordering::Relaxed) != UNKNOWN => {}
                false => {
                    let _ = route.kind.compare_exchange(
                        UNKNOWN,
                        PLAIN,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            }
        }
        // A route without an attribute, and no layer limits, recorded nothing: no headers.
        let style = this.context.config().headers;
        let budget = match style {
            HeaderStyle::None => None,
            _ => this.context.take_budget(),
        };
        if let (Ok(response), Some(budget)) = (result, budget) {
            match budget {
                (admitted, Some(reserved)) => insert_budget_headers(
                    response.headers_mut(),
                    admitted.as_ref(),
                    Some(&reserved),
                    style,
                ),
                (Some(decision), None) => {
                    insert_headers(response.headers_mut(), &decision, style);
                }
                (None, None) => {}
            }
        }
        poll
    }
}

impl<F, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.project().inner;
        match inner.as_mut().project() {
            InnerProjection::Scoped { mut future } => {
                let poll = future.as_mut().poll(cx);
                if !matches!(poll, Poll::Ready(Ok(_))) {
                    return poll;
                }
                // The body left unread is drained in the future's own place.
                let Some((body, policy)) = future.unread() else {
                    return poll;
                };
                let Poll::Ready(Ok(response)) = poll else {
                    unreachable!("matched above");
                };
                inner.set(Inner::Draining {
                    drain: Drain::new(body, response, policy),
                });
                match inner.project() {
                    InnerProjection::Draining { drain } => Pin::new(drain).poll(cx).map(Ok),
                    _ => unreachable!("just set"),
                }
            }
            InnerProjection::Ready { response } => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| Rejection::store_failed().into_response()))),
            InnerProjection::Draining { drain } => Pin::new(drain).poll(cx).map(Ok),
            InnerProjection::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, E> std::fmt::Debug for ResponseFuture<F, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// The layer's own refusal: at once when there is no body to read, else once it is drained.
fn drained<F, E>(body: Body, response: Response, policy: DrainPolicy) -> Inner<F, E> {
    match policy.watches(&body) {
        true => Inner::Draining {
            drain: Drain::new(body, response, policy),
        },
        false => Inner::Ready {
            response: Some(response),
        },
    }
}

/// The application-wide limits and the route's default limits: checked here for a route not
/// known to carry an attribute (`limited`), left to the attribute's check otherwise. Returns
/// what the attribute's check must know, and the admission for the headers.
async fn layer_limits_of(
    config: &'static HttpConfig,
    parts: &Parts,
    limited: bool,
) -> Result<(LayerState, Option<Decision>), Rejection> {
    if config.application_limits.is_none() && config.default_limits.is_none() {
        return Ok((LayerState::Done, None));
    }
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let path = route.unwrap_or_else(|| parts.uri.path());
    if config.exempt.iter().any(|exempt| exempt == path) {
        return Ok((LayerState::Done, None));
    }
    if limited {
        let state = match config.application_limits {
            Some(_) => LayerState::LeftToAttribute,
            None => LayerState::Done,
        };
        return Ok((state, None));
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
            reserves: false,
        });
    }
    if let Some(defaults) = &config.default_limits {
        entries.push(Entry {
            key: &key,
            scope: path,
            limits: defaults,
            cost: 1,
            message: None,
            reserves: false,
        });
    }
    let admitted = enforce(config, path, &entries, &[]).await?;
    drop(entries);
    let state = LayerState::Charged {
        application: config.application_limits.is_some(),
        default: config.default_limits.is_some(),
        by_uri: route.is_none(),
        key,
    };
    Ok((state, admitted))
}
