//! The handlers that serve [`Metrics`]: `GET /metrics` as JSON in the shape of the seed's
//! monitoring endpoint, and as Prometheus text.

use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde_json::{Map, Value, json};

use crate::observe::{Counted, Metrics, Units};

/// `GET` answering the counts as JSON:
///
/// ```json
/// {"total_requests": 12, "limited_requests": 2,
///  "endpoints": {"/predict": {"total": 12, "limited": 2, "allowed": 10,
///                             "rejected": {"rate": 1, "slots": 1, "store_failure": 0}}},
///  "tiers": {"free": {"total": 12, "limited": 2, ...}}}
/// ```
///
/// `limited` counts every 429 (a rate, or no concurrency slot); `rejected` says why, and
/// store failures and requests shed by a route at capacity (503) are counted there too.
/// `capacity` holds each route's capacity (`capacity =`): `limit`, `in_flight`, `queued`,
/// `clients`, `latency_ms`, `no_load_latency_ms`, `admitted`, `waited`, `shed`. `tiers` holds the labels of the limits
/// ([`Limits::with_label`](crate::Limits::with_label)). A route or tier with reserved
/// budgets (`reserve =`) has `units`: `reserved`, `settled` (what the work used), `refunded`
/// and `debt`.
///
/// ```
/// use axum::Router;
/// use ratelimit_core::http::metrics_json;
/// use ratelimit_core::observe::Metrics;
/// use ratelimit_core::Limiter;
///
/// let metrics = Metrics::new();
/// let limiter = Limiter::builder().observer(metrics.clone()).build();
/// let app: Router = Router::new()
///     .route("/metrics", metrics_json(metrics))
///     .layer(limiter.layer());
/// ```
pub fn metrics_json<S: Clone + Send + Sync + 'static>(metrics: Metrics) -> MethodRouter<S> {
    get(move || {
        let metrics = metrics.clone();
        async move {
            let mut response: Response = to_json(&metrics).to_string().into_response();
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
    })
}

/// `GET` answering the counts in the Prometheus text format (see [`Metrics::register`] to
/// serve them from the application's own registry instead).
pub fn metrics_prometheus<S: Clone + Send + Sync + 'static>(metrics: Metrics) -> MethodRouter<S> {
    get(move || {
        let metrics = metrics.clone();
        async move {
            let mut response: Response = metrics.prometheus().into_response();
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
    })
}

fn to_json(metrics: &Metrics) -> Value {
    let snapshot = metrics.snapshot();
    let table = |counts: &std::collections::BTreeMap<String, Counted>| {
        counts
            .iter()
            .map(|(name, counted)| (name.clone(), counts_json(counted)))
            .collect::<Map<String, Value>>()
    };
    let capacity = snapshot
        .capacity
        .iter()
        .map(|(route, stats)| (route.clone(), capacity_json(stats)))
        .collect::<Map<String, Value>>();
    json!({
        "total_requests": snapshot.total.total(),
        "limited_requests": snapshot.total.limited + snapshot.total.no_slot,
        "endpoints": table(&snapshot.routes),
        "tiers": table(&snapshot.labels),
        "capacity": capacity,
    })
}

/// One route's capacity: `{"limit", "in_flight", "queued", "clients", "latency_ms",
/// "no_load_latency_ms", "admitted", "waited", "shed"}` (`limit` null when unlimited).
pub(crate) fn capacity_json(stats: &crate::CapacityStats) -> Value {
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    json!({
        "limit": stats.limit,
        "in_flight": stats.in_flight,
        "queued": stats.queued,
        "clients": stats.clients,
        "latency_ms": ms(stats.latency),
        "no_load_latency_ms": stats.no_load_latency.map(ms),
        "admitted": stats.admitted,
        "waited": stats.waited,
        "shed": stats.shed,
    })
}

fn counts_json(counted: &Counted) -> Value {
    let mut counts = json!({
        "total": counted.total(),
        "limited": counted.limited + counted.no_slot,
        "allowed": counted.allowed,
        "rejected": {
            "rate": counted.limited,
            "slots": counted.no_slot,
            "store_failure": counted.store_failed,
            "overloaded": counted.overloaded,
        },
    });
    let units = counted.units;
    if units != Units::default() {
        counts["units"] = json!({
            "reserved": units.reserved,
            "settled": units.settled,
            "refunded": units.refunded,
            "debt": units.debt,
        });
    }
    counts
}
