//! The axum glue: the extractor the `#[rate_limit]` attribute injects, the layer that
//! installs a limiter (with default and application-wide limits, and the rate limit headers
//! on every limited response), client keys, and the 429 answer.

mod client_ip;
mod layer;
pub(crate) mod response;

use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use axum::extract::{FromRequestParts, MatchedPath};
use http::HeaderName;
use http::request::Parts;

pub use client_ip::TrustedProxies;
pub use layer::{RateLimitLayer, RateLimitService};
pub use response::{HeaderStyle, RateLimited, Rejection};

use crate::decision::Decision;
use crate::limiter::Limiter;
use crate::limits::Limits;
use client_ip::{IpKey, MissingConnectInfo, client_ip};

/// Who a limit counts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// The client address (IPv6 grouped by /64), behind trusted proxies the right-most
    /// forwarded hop they did not add.
    Ip,
    /// Everyone together: one budget for the whole route.
    Global,
    /// The value of a request header (an absent header is its own, shared, key).
    Header(HeaderName),
    /// A function of the request, given by the attribute's `key = path`.
    Custom,
}

/// What one `#[rate_limit]` attribute says, built once per attribute by the generated code.
#[derive(Debug)]
pub struct Policy {
    handler: &'static str,
    limits: Option<Limits>,
    key: Option<KeySource>,
    scope: Option<&'static str>,
    error_message: Option<&'static str>,
}

impl Policy {
    /// The policy of the handler named `handler` (`module::path::fn_name`, for logs and as the
    /// fallback scope when a request carries no matched route).
    pub fn new(handler: &'static str) -> Policy {
        Policy {
            handler,
            limits: None,
            key: None,
            scope: None,
            error_message: None,
        }
    }

    /// Fixed limits (without them, the spec's `limits` function answers per request).
    pub fn limits(mut self, limits: Limits) -> Policy {
        self.limits = Some(limits);
        self
    }

    /// Who is counted (default: the limiter's default key, the client IP).
    pub fn key(mut self, key: KeySource) -> Policy {
        self.key = Some(key);
        self
    }

    /// One budget shared by every handler naming the same scope.
    pub fn scope(mut self, scope: &'static str) -> Policy {
        self.scope = Some(scope);
        self
    }

    /// The `detail` of the 429 answer instead of `Rate limit exceeded: 10 per 1 minute`.
    pub fn error_message(mut self, message: &'static str) -> Policy {
        self.error_message = Some(message);
        self
    }
}

/// Limits a request resolved at run time by a `LIMITS` function: anything that lends a
/// [`Limits`].
#[derive(Debug)]
pub enum LimitsRef {
    /// Limits that live for the whole program (a `static`).
    Static(&'static Limits),
    /// Limits shared behind an `Arc`.
    Shared(Arc<Limits>),
    /// Limits made for this request.
    Owned(Limits),
}

impl LimitsRef {
    /// The limits lent.
    pub fn limits(&self) -> &Limits {
        match self {
            LimitsRef::Static(limits) => limits,
            LimitsRef::Shared(limits) => limits,
            LimitsRef::Owned(limits) => limits,
        }
    }
}

impl From<&'static Limits> for LimitsRef {
    fn from(limits: &'static Limits) -> LimitsRef {
        LimitsRef::Static(limits)
    }
}

impl From<Arc<Limits>> for LimitsRef {
    fn from(limits: Arc<Limits>) -> LimitsRef {
        LimitsRef::Shared(limits)
    }
}

impl From<Limits> for LimitsRef {
    fn from(limits: Limits) -> LimitsRef {
        LimitsRef::Owned(limits)
    }
}

impl From<&'static LazyLock<Limits>> for LimitsRef {
    fn from(limits: &'static LazyLock<Limits>) -> LimitsRef {
        LimitsRef::Static(limits)
    }
}

/// A key returned by a key function: any string type, or `Option` of one (`None` shares
/// one budget among all requests without a key).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a rate limit key",
    note = "a key function takes `&http::request::Parts` and returns a `String`, `&'static str`, `Cow<str>` or an `Option` of one (sync or async)"
)]
pub trait IntoKey {
    /// The key.
    fn into_key(self) -> Cow<'static, str>;
}

impl IntoKey for String {
    fn into_key(self) -> Cow<'static, str> {
        Cow::Owned(self)
    }
}

impl IntoKey for &'static str {
    fn into_key(self) -> Cow<'static, str> {
        Cow::Borrowed(self)
    }
}

impl IntoKey for Cow<'static, str> {
    fn into_key(self) -> Cow<'static, str> {
        self
    }
}

impl IntoKey for Box<str> {
    fn into_key(self) -> Cow<'static, str> {
        Cow::Owned(self.into())
    }
}

impl IntoKey for Arc<str> {
    fn into_key(self) -> Cow<'static, str> {
        Cow::Owned(self.as_ref().to_owned())
    }
}

impl<K: IntoKey> IntoKey for Option<K> {
    fn into_key(self) -> Cow<'static, str> {
        self.map_or(Cow::Borrowed(""), IntoKey::into_key)
    }
}

/// The hooks the generated code fills in for one attribute. Every method but `policy` has a
/// default: an attribute overrides only what it uses.
pub trait Spec: Send + Sync + 'static {
    /// The attribute's fixed part.
    fn policy() -> &'static Policy;

    /// `key = path`: the user's key function.
    fn key(parts: &Parts) -> impl Future<Output = Cow<'static, str>> + Send {
        let _ = parts;
        std::future::ready(Cow::Borrowed(""))
    }

    /// `LIMITS` given as a function: the limits of this request.
    fn limits(parts: &Parts) -> Option<LimitsRef> {
        let _ = parts;
        None
    }

    /// `cost = EXPR` when the expression uses no handler argument.
    fn cost(parts: &Parts) -> u64 {
        let _ = parts;
        1
    }

    /// `exempt_when = path`: requests that skip this limit.
    fn exempt(parts: &Parts) -> bool {
        let _ = parts;
        false
    }
}

/// The extractor the attribute injects: by the time the handler runs, the request has passed
/// the limit (or is exempt), and otherwise the client got the 429 answer.
pub struct Guard<S: Spec> {
    _spec: PhantomData<fn() -> S>,
}

impl<S: Spec, St: Send + Sync> FromRequestParts<St> for Guard<S> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &St) -> Result<Guard<S>, Rejection> {
        if S::exempt(parts) {
            return Ok(Guard { _spec: PhantomData });
        }
        let cost = S::cost(parts);
        let target = Target::<S>::resolve(parts).await?;
        target.enforce(parts, cost).await?;
        Ok(Guard { _spec: PhantomData })
    }
}

/// The extractor for an attribute whose `cost` needs the handler's arguments: it finds the
/// limiter, the key and the limits before the body is read, and the rewritten handler calls
/// [`check`](Deferred::check) once the arguments are extracted.
pub struct Deferred<S: Spec> {
    limiter: &'static Limiter,
    key: Cow<'static, str>,
    scope: Cow<'static, str>,
    route: Option<MatchedPath>,
    limits: Option<LimitsRef>,
    client: Option<IpAddr>,
    exempt: bool,
    _spec: PhantomData<fn() -> S>,
}

impl<S: Spec, St: Send + Sync> FromRequestParts<St> for Deferred<S> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &St) -> Result<Deferred<S>, Rejection> {
        let exempt = S::exempt(parts);
        let target = Target::<S>::resolve(parts).await?;
        Ok(Deferred {
            limiter: target.limiter,
            key: Cow::Owned(target.key.as_str().to_owned()),
            scope: Cow::Owned(target.scope.to_owned()),
            route: parts.extensions.get::<MatchedPath>().cloned(),
            limits: S::limits(parts),
            client: target.client,
            exempt,
            _spec: PhantomData,
        })
    }
}

impl<S: Spec> Deferred<S> {
    /// Checks the request at `cost` units now that the arguments are known.
    pub async fn check(&self, cost: u64) -> Result<(), Rejection> {
        if self.exempt {
            return Ok(());
        }
        let limits = match &self.limits {
            Some(dynamic) => dynamic.limits(),
            None => static_limits::<S>(),
        };
        let route = self
            .route
            .as_ref()
            .map_or(S::policy().handler, MatchedPath::as_str);
        let decision = check(self.limiter, &self.scope, limits, &self.key, cost).await?;
        finish::<S>(
            self.limiter,
            limits,
            decision,
            route,
            &self.key,
            self.client,
        )
    }
}

/// The limiter, key and scope of one request.
struct Target<'p, S: Spec> {
    limiter: &'static Limiter,
    key: ResolvedKey,
    scope: &'p str,
    client: Option<IpAddr>,
    _spec: PhantomData<fn() -> S>,
}

enum ResolvedKey {
    Ip(IpKey),
    Text(Cow<'static, str>),
}

impl ResolvedKey {
    fn as_str(&self) -> &str {
        match self {
            ResolvedKey::Ip(ip) => ip.as_str(),
            ResolvedKey::Text(text) => text,
        }
    }
}

impl<'p, S: Spec> Target<'p, S> {
    async fn resolve(parts: &'p Parts) -> Result<Target<'p, S>, Rejection> {
        let policy = S::policy();
        let limiter = layer::current_limiter().unwrap_or_else(Limiter::global);
        let scope = match (policy.scope, parts.extensions.get::<MatchedPath>()) {
            (Some(scope), _) => scope,
            (None, Some(route)) => {
                limiter.http().note_limited_route(route.as_str());
                route.as_str()
            }
            (None, None) => policy.handler,
        };
        let source = policy.key.as_ref().unwrap_or(&limiter.http().default_key);
        let mut client = None;
        let key = match source {
            KeySource::Ip => {
                let ip = client_ip(
                    &parts.extensions,
                    &parts.headers,
                    &limiter.http().trusted_proxies,
                )
                .map_err(|MissingConnectInfo| {
                    missing_connect_info(policy.handler);
                    Rejection::misconfigured()
                })?;
                client = Some(ip);
                ResolvedKey::Ip(IpKey::new(ip))
            }
            KeySource::Global => ResolvedKey::Text(Cow::Borrowed("")),
            KeySource::Header(name) => {
                ResolvedKey::Text(parts.headers.get(name).map_or(Cow::Borrowed(""), |v| {
                    Cow::Owned(String::from_utf8_lossy(v.as_bytes()).into_owned())
                }))
            }
            KeySource::Custom => ResolvedKey::Text(S::key(parts).await),
        };
        Ok(Target {
            limiter,
            key,
            scope,
            client,
            _spec: PhantomData,
        })
    }

    async fn enforce(&self, parts: &Parts, cost: u64) -> Result<(), Rejection> {
        let dynamic = S::limits(parts);
        let limits = match &dynamic {
            Some(dynamic) => dynamic.limits(),
            None => static_limits::<S>(),
        };
        let key = self.key.as_str();
        let decision = check(self.limiter, self.scope, limits, key, cost).await?;
        if decision.is_allowed() {
            layer::record(decision, limits);
            return Ok(());
        }
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map_or(S::policy().handler, MatchedPath::as_str);
        finish::<S>(self.limiter, limits, decision, route, key, self.client)
    }
}

fn static_limits<S: Spec>() -> &'static Limits {
    S::policy()
        .limits
        .as_ref()
        .expect("the attribute gives either fixed limits or a limits function")
}

/// One check, without a future when the store answers at once.
async fn check(
    limiter: &Limiter,
    scope: &str,
    limits: &Limits,
    key: &str,
    cost: u64,
) -> Result<Decision, Rejection> {
    let decision = match limiter.check_scoped_now(scope, limits, key, cost) {
        Some(decision) => decision,
        None => limiter
            .check_scoped(scope, limits, key, cost)
            .await
            .map_err(|error| {
                tracing::error!(%error, "rate limit store failed");
                Rejection::store_failed()
            })?,
    };
    Ok(decision)
}

/// Records an admission for the response headers, or turns a refusal into the 429.
fn finish<S: Spec>(
    limiter: &Limiter,
    limits: &Limits,
    decision: Decision,
    route: &str,
    key: &str,
    client: Option<IpAddr>,
) -> Result<(), Rejection> {
    if decision.is_allowed() {
        layer::record(decision, limits);
        return Ok(());
    }
    match client {
        Some(ip) => {
            tracing::warn!(client = %ip, route, limit = %decision.rate(), "rate limit exceeded")
        }
        None => tracing::warn!(key, route, limit = %decision.rate(), "rate limit exceeded"),
    }
    let message = S::policy().error_message;
    Err(limiter
        .http()
        .reject(&decision, limits, message, || RateLimited {
            decision,
            route: route.to_owned(),
            key: key.to_owned(),
            client,
            message: message.map(Cow::Borrowed),
        }))
}

pub(crate) fn missing_connect_info(handler: &str) {
    static ONCE: AtomicBool = AtomicBool::new(false);
    if !ONCE.swap(true, Ordering::Relaxed) {
        tracing::error!(
            handler,
            "rate limiting by client IP needs the peer address, and this server does not provide it: \
             serve the router with `axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())`"
        );
    }
}

type RejectionHandler = Arc<dyn Fn(&RateLimited) -> axum::response::Response + Send + Sync>;

/// The HTTP side of a limiter's configuration.
#[derive(Clone)]
pub(crate) struct HttpConfig {
    pub(crate) trusted_proxies: TrustedProxies,
    pub(crate) default_key: KeySource,
    pub(crate) headers: HeaderStyle,
    pub(crate) default_limits: Option<Arc<Limits>>,
    pub(crate) application_limits: Option<Arc<Limits>>,
    pub(crate) exempt: Arc<[String]>,
    pub(crate) on_rejected: Option<RejectionHandler>,
    /// Routes known to carry an attribute, which default limits skip.
    pub(crate) limited_routes: Arc<dashmap::DashSet<String>>,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            trusted_proxies: TrustedProxies::default(),
            default_key: KeySource::Ip,
            headers: HeaderStyle::Both,
            default_limits: None,
            application_limits: None,
            exempt: Arc::from([]),
            on_rejected: None,
            limited_routes: Arc::default(),
        }
    }
}

impl HttpConfig {
    fn note_limited_route(&self, route: &str) {
        if self.default_limits.is_some() && !self.limited_routes.contains(route) {
            self.limited_routes.insert(route.to_owned());
        }
    }

    /// The answer to a refusal: the custom handler's (given the details, made only then) or
    /// the default 429.
    pub(crate) fn reject(
        &self,
        decision: &Decision,
        limits: &Limits,
        message: Option<&str>,
        details: impl FnOnce() -> RateLimited,
    ) -> Rejection {
        match &self.on_rejected {
            Some(handler) => Rejection::custom(handler(&details())),
            None => Rejection::limited(
                decision,
                limits.http_rate(decision.rate_index()),
                message,
                self.headers,
            ),
        }
    }
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("trusted_proxies", &self.trusted_proxies)
            .field("default_key", &self.default_key)
            .field("headers", &self.headers)
            .field("default_limits", &self.default_limits)
            .field("application_limits", &self.application_limits)
            .finish_non_exhaustive()
    }
}

/// The process-wide limiter that serves the attribute when no layer installs one.
static GLOBAL: LazyLock<Limiter> = LazyLock::new(Limiter::new);

impl Limiter {
    /// The process-wide in-memory limiter, which serves `#[rate_limit]` handlers of routers
    /// without a [`layer`](Limiter::layer).
    pub fn global() -> &'static Limiter {
        &GLOBAL
    }

    /// A layer that makes this limiter serve every `#[rate_limit]` handler of a router,
    /// applies its default and application-wide limits, and puts the rate limit headers on
    /// limited responses.
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// use ratelimit_core::Limiter;
    ///
    /// let limiter = Limiter::builder().default_limits("100/minute").build();
    /// let app: Router = Router::new().route("/", get(|| async { "hi" })).layer(limiter.layer());
    /// ```
    ///
    /// The layer keeps its limiter for the rest of the process, so that serving a request
    /// never touches a shared reference count: build it once, at start-up (each call keeps
    /// one small handle).
    pub fn layer(&self) -> RateLimitLayer {
        RateLimitLayer::new(Box::leak(Box::new(self.clone())))
    }
}

impl crate::limiter::LimiterBuilder {
    /// Believe forwarding headers (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`) from these
    /// proxies: the client is then the right-most hop that none of them added.
    ///
    /// # Panics
    /// On a string that is not a network (`"10.0.0.0/8"`) or an address.
    pub fn trusted_proxies<I, T>(mut self, proxies: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let nets = proxies.into_iter().map(|p| {
            let p = p.as_ref();
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
                .unwrap_or_else(|_| {
                    panic!("trusted proxy {p:?} is not an address or a network such as 10.0.0.0/8")
                })
        });
        self.http.trusted_proxies = TrustedProxies::new(nets);
        self
    }

    /// Who attributes without a `key` count (default: [`KeySource::Ip`]).
    /// [`KeySource::Custom`] names no function here, so it counts as [`KeySource::Ip`].
    pub fn default_key(mut self, key: KeySource) -> Self {
        self.http.default_key = match key {
            KeySource::Custom => KeySource::Ip,
            key => key,
        };
        self
    }

    /// Which rate limit headers limited responses carry (default: both sets).
    pub fn headers(mut self, style: HeaderStyle) -> Self {
        self.http.headers = style;
        self
    }

    /// Limits for every route without a `#[rate_limit]` attribute, each route its own budget
    /// (slowapi's `default_limits`). Applied by [`Limiter::layer`].
    ///
    /// # Panics
    /// On a string outside the rate grammar.
    pub fn default_limits(mut self, limits: impl AsLimits) -> Self {
        self.http.default_limits = Some(Arc::new(limits.into_limits()));
        self
    }

    /// Limits over all routes together, for each client (slowapi's `application_limits`).
    /// Applied by [`Limiter::layer`].
    ///
    /// # Panics
    /// On a string outside the rate grammar.
    pub fn application_limits(mut self, limits: impl AsLimits) -> Self {
        self.http.application_limits = Some(Arc::new(limits.into_limits()));
        self
    }

    /// Routes (matched path templates such as `/health`) exempt from the default and
    /// application limits.
    pub fn exempt<I, T>(mut self, routes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.http.exempt = routes.into_iter().map(Into::into).collect();
        self
    }

    /// Answers refused requests with `handler` instead of the default 429 JSON (slowapi's
    /// `_rate_limit_exceeded_handler`).
    pub fn on_rejected(
        mut self,
        handler: impl Fn(&RateLimited) -> axum::response::Response + Send + Sync + 'static,
    ) -> Self {
        self.http.on_rejected = Some(Arc::new(handler));
        self
    }
}

/// Limits given to the builder: parsed [`Limits`], or a string in the rate grammar.
pub trait AsLimits {
    /// The limits; panics on a string outside the grammar.
    fn into_limits(self) -> Limits;
}

impl AsLimits for Limits {
    fn into_limits(self) -> Limits {
        self
    }
}

impl AsLimits for &str {
    fn into_limits(self) -> Limits {
        Limits::parse(self).unwrap_or_else(|e| panic!("invalid limits {self:?}: {e}"))
    }
}

/// What the code generated by `#[rate_limit]` calls; not a public API.
#[doc(hidden)]
pub mod support {
    use std::borrow::Cow;
    use std::cell::Cell;
    use std::future::Future;

    use super::IntoKey;

    /// Holds a key function's result until [`KeyFromFuture`] or [`KeyFromValue`] takes it:
    /// method resolution picks the first for a future (an `async fn`), the second for a
    /// value (a plain `fn`).
    pub struct Probe<T>(Cell<Option<T>>);

    impl<T> Probe<T> {
        /// Wraps a key function's result.
        pub fn new(value: T) -> Probe<T> {
            Probe(Cell::new(Some(value)))
        }

        fn take(&self) -> T {
            self.0.take().expect("a probe is read once")
        }
    }

    /// The key of an `async` key function.
    pub trait KeyFromFuture {
        /// The key, once the function's future completes.
        fn key_future(self) -> impl Future<Output = Cow<'static, str>> + Send;
    }

    impl<F> KeyFromFuture for Probe<F>
    where
        F: Future + Send,
        F::Output: IntoKey,
    {
        fn key_future(self) -> impl Future<Output = Cow<'static, str>> + Send {
            let future = self.take();
            async move { future.await.into_key() }
        }
    }

    /// The key of a plain key function.
    pub trait KeyFromValue {
        /// The key, at once.
        fn key_future(self) -> std::future::Ready<Cow<'static, str>>;
    }

    impl<K: IntoKey> KeyFromValue for &Probe<K> {
        fn key_future(self) -> std::future::Ready<Cow<'static, str>> {
            std::future::ready(self.take().into_key())
        }
    }

    /// A request's cost, from any integer type (a negative cost counts as 0).
    #[diagnostic::on_unimplemented(
        message = "`cost` must be an integer, not `{Self}`",
        note = "`cost = EXPR` takes an integer expression, such as `cost = batch.len()`"
    )]
    pub trait Cost {
        /// The cost in units.
        fn units(self) -> u64;
    }

    macro_rules! unsigned {
        ($($t:ty),*) => {$(impl Cost for $t { fn units(self) -> u64 { u64::try_from(self).unwrap_or(u64::MAX) } })*};
    }
    macro_rules! signed {
        ($($t:ty),*) => {$(impl Cost for $t { fn units(self) -> u64 { u64::try_from(self.max(0)).unwrap_or(u64::MAX) } })*};
    }
    unsigned!(u8, u16, u32, u64, u128, usize);
    signed!(i8, i16, i32, i64, i128, isize);

    /// The cost of `value`.
    pub fn cost<C: Cost>(value: C) -> u64 {
        value.units()
    }
}
