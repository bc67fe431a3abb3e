//! What the layer is configured with: everything HTTP about rate limiting.

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use dashmap::DashSet;

use super::key::{KeySource, TrustedProxies};
use super::response::{HeaderStyle, RateLimited};
use crate::limiter::Limiter;
use crate::limits::Limits;
use crate::observe::RejectionLog;

pub(crate) type RejectionHandler =
    Arc<dyn Fn(&RateLimited) -> axum::response::Response + Send + Sync>;

/// The HTTP side of rate limiting, held by the layer (and, without one, the process-wide
/// default).
#[derive(Clone)]
pub(crate) struct HttpConfig {
    pub(crate) limiter: Limiter,
    pub(crate) trusted_proxies: TrustedProxies,
    pub(crate) default_key: KeySource,
    pub(crate) headers: HeaderStyle,
    pub(crate) default_limits: Option<Arc<Limits>>,
    pub(crate) application_limits: Option<Arc<Limits>>,
    pub(crate) exempt: Arc<[String]>,
    pub(crate) on_rejected: Option<RejectionHandler>,
    /// Routes known to carry an attribute, which default limits skip.
    pub(crate) limited_routes: Arc<DashSet<String>>,
    /// Who was refused lately: one warning per client and spell.
    pub(crate) rejections: Arc<RejectionLog>,
    /// How much of a body left unread the layer drains before answering.
    pub(crate) drain: DrainPolicy,
}

/// How much of an unread request body the layer reads and discards before answering, and
/// for how long.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DrainPolicy {
    /// The most bytes read; 0 turns draining off.
    pub(crate) limit: u64,
    /// How long to wait for them.
    pub(crate) within: Duration,
}

impl DrainPolicy {
    /// 256 KiB within a second.
    pub(crate) const DEFAULT: DrainPolicy = DrainPolicy {
        limit: 256 * 1024,
        within: Duration::from_secs(1),
    };

    /// Whether a body may be left unread and is worth watching: draining is on, and the body
    /// is larger than hyper drains by itself. Hyper reads what a dropped body has already
    /// sent in the read that brought the request's head (its first read buffer is 8 KiB), and
    /// closes the connection only when more is to come; a small body of known length sent
    /// with its head therefore costs nothing here (no allocation, no timer).
    #[inline]
    pub(crate) fn watches(&self, body: &Body) -> bool {
        /// A body at most this long, of known length, comes with its head.
        const SENT_WITH_THE_HEAD: u64 = 4 * 1024;
        self.limit > 0
            && body
                .size_hint()
                .exact()
                .is_none_or(|length| length > SENT_WITH_THE_HEAD)
    }
}

impl HttpConfig {
    pub(crate) fn new(limiter: Limiter) -> HttpConfig {
        HttpConfig {
            limiter,
            trusted_proxies: TrustedProxies::default(),
            default_key: KeySource::Ip,
            headers: HeaderStyle::Draft,
            default_limits: None,
            application_limits: None,
            exempt: Arc::from([]),
            on_rejected: None,
            limited_routes: Arc::default(),
            rejections: Arc::default(),
            drain: DrainPolicy::DEFAULT,
        }
    }

    /// The configuration serving `#[rate_limit]` handlers of routers without a layer: the
    /// process-wide limiter, client IP keys, both header sets.
    pub(crate) fn global() -> &'static HttpConfig {
        static GLOBAL: LazyLock<HttpConfig> =
            LazyLock::new(|| HttpConfig::new(Limiter::global().clone()));
        &GLOBAL
    }

    /// The scope of the application-wide limits.
    pub(crate) const APPLICATION: &'static str = "__application";

    pub(crate) fn set_trusted_proxies<I, T>(&mut self, proxies: I)
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
        self.trusted_proxies = TrustedProxies::new(nets);
    }
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("limiter", &self.limiter)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("default_key", &self.default_key)
            .field("headers", &self.headers)
            .field("default_limits", &self.default_limits)
            .field("application_limits", &self.application_limits)
            .finish_non_exhaustive()
    }
}

/// Limits given to the layer: parsed [`Limits`], or a string in the rate grammar.
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
