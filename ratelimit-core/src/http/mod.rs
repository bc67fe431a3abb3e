//! The axum glue, on top of the engine: what the `#[rate_limit]` attribute injects, the layer
//! that installs a limiter with its HTTP configuration, client keys, and the 429 answer.
//!
//! - `config`: what the layer is configured with (trusted proxies, default key, header
//!   style, default and application limits, exempt routes, the rejection handler);
//! - `key`: who is counted (client IP behind trusted proxies, headers);
//! - `identity`: what key functions answer (a key, the client address, a tier) and API keys
//!   that a client cannot forge ([`ApiKeys`]);
//! - `context`: what the layer shares with the extractors of the request it serves;
//! - `enforce`: the one place that checks a request and refuses it;
//! - `drain`: reading what a refused request leaves of its body, so the connection lives;
//! - `extract`: the extractors and the spec the attribute generates;
//! - `layer`: `Limiter::layer()`;
//! - `metrics`: the handlers that serve [`Metrics`](crate::observe::Metrics) (JSON, Prometheus);
//! - `response`: the 429 answer and the rate limit headers.

mod config;
mod context;
mod drain;
mod enforce;
mod extract;
mod identity;
mod key;
mod layer;
mod metrics;
mod response;
mod spec;

/// Where the attribute's `LIMITS` functions have always found it.
pub use crate::limits::LimitsRef;
pub use config::AsLimits;
pub use enforce::Leases;
pub use extract::{
    Checked, CheckedParts, Costed, CostedArg, Deferred, Guard, Held, HoldingGuard, KeyedDeferred,
    KeyedGuard, One, Resolved, ViaChecked, ViaCosted, support,
};
pub use identity::{
    ApiKeys, ClientAddr, Identity, IntoKey, KeyLookup, KeyTable, KnownKey, UnknownKey,
};
pub use key::{KeySource, TrustedProxies};
pub use layer::{RateLimitLayer, RateLimitService};
pub use metrics::{metrics_json, metrics_prometheus};
pub use response::{HeaderStyle, RateLimited, Rejection};
pub use spec::{Hooks, KeyedSpec, Policy, Spec, SpecRef};
