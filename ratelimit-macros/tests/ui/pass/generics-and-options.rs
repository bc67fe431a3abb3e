#![deny(warnings)]

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::request::Parts;
use axum::routing::get;
use ratelimit::{Limits, rate_limit};

trait Model: Send + Sync + 'static {
    fn name(&self) -> &'static str;
}

struct Tiny;

impl Model for Tiny {
    fn name(&self) -> &'static str {
        "tiny"
    }
}

fn tier(parts: &Parts) -> &'static str {
    if parts.headers.contains_key("x-premium") {
        "premium"
    } else {
        "free"
    }
}

async fn account(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get("x-account")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn limits_for(parts: &Parts) -> Limits {
    if parts.headers.contains_key("x-premium") {
        "50/minute"
    } else {
        "10/minute"
    }
    .parse()
    .unwrap()
}

fn health_check(parts: &Parts) -> bool {
    parts.uri.path() == "/health"
}

#[rate_limit("10/minute; 100/hour", key = tier, algorithm = gcra, burst = 3)]
#[rate_limit(limits_for, key = account, algorithm = moving_window, exempt_when = health_check)]
// Bounds in both places on purpose: the attribute keeps each where it was.
#[allow(clippy::multiple_bound_locations)]
async fn generic<M: Model>(State(model): State<Arc<M>>) -> String
where
    M: Send,
{
    model.name().to_owned()
}

#[rate_limit("1/s", key = global, scope = "shared", error_message = "Busy", crate = ::ratelimit)]
async fn options() -> &'static str {
    "ok"
}

#[rate_limit("10/minute", concurrency = 2)]
#[rate_limit("50/minute", key = global, concurrency = 8, cost = batch.len())]
async fn slots(axum::Json(batch): axum::Json<Vec<u32>>) -> String {
    batch.len().to_string()
}

pub fn main() {
    let _: Router = Router::new()
        .route("/m", get(generic::<Tiny>))
        .route("/o", get(options))
        .route("/s", axum::routing::post(slots))
        .with_state(Arc::new(Tiny));
}
