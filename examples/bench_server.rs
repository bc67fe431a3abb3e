//! The server behind BENCHMARKS.md's HTTP figures: the same tiny handler without a limit
//! (`/plain`), with five static headers the size of the rate limit fields
//! (`/plain-headers`), behind a limit it never reaches (`/limited`), and behind a limit that
//! always refuses (`/blocked`).
//!
//! `MODE` chooses the router: `bare` is `/plain` alone with no layer at all (the baseline a
//! user compares with), `noop` the same behind a layer that does nothing (what any layer
//! costs through `Router::layer`), `layer` (the default) every route behind
//! `Limiter::layer()` with its default headers (the draft's pair), `no-headers`, `draft`,
//! `legacy`, `both` the same with `HeaderStyle::None`, `Draft`, `Legacy`, `Both`, and
//! `metrics` the `layer` router with [`Metrics`] observing every decision (the price of
//! counting). `outer`, `outer-noop`, `outer-no-headers` and the like put the layer around the
//! whole router instead of on every route (`Router::layer`).
//!
//! `WORKERS` sets the runtime's worker threads (tokio's default: one per core). Under
//! callgrind, which runs one thread at a time anyway, `WORKERS=1` keeps every allocation and
//! wake-up on one thread, so that a figure does not move with how the client's requests fell
//! between two workers (`scripts/callgrind-http.sh` sets it).
//!
//! `PORT=8000 MODE=layer cargo run --release --example bench_server`

use std::net::SocketAddr;

use std::convert::Infallible;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router, ServiceExt};
use ratelimit::http::{HeaderStyle, RateLimitLayer};
use ratelimit::observe::Metrics;
use ratelimit::{Limiter, rate_limit};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::Layer;
use tower::util::MapRequestLayer;

/// The request body: `{"data": [1,2,3]}`.
#[derive(Deserialize)]
pub struct Input {
    /// The features.
    pub data: Vec<f64>,
}

fn answer(input: &Input) -> Json<Value> {
    let _ = input.data.len();
    Json(json!({"prediction": 0.95, "confidence": 0.87}))
}

async fn plain(Json(input): Json<Input>) -> Json<Value> {
    answer(&input)
}

/// `/plain` with five static headers of the same sizes as `/limited`'s rate limit fields: the
/// cost of the bytes alone, apart from the limiter's work.
async fn plain_headers(Json(input): Json<Input>) -> impl IntoResponse {
    (
        [
            ("ratelimit-policy", "\"1000000000-per-1s\";q=1000000000;w=1"),
            ("ratelimit", "\"1000000000-per-1s\";r=999999999;t=1"),
            ("x-ratelimit-limit", "1000000000"),
            ("x-ratelimit-remaining", "999999999"),
            ("x-ratelimit-reset", "1795761832"),
        ],
        answer(&input),
    )
}

#[rate_limit("1000000000/second", key = ip)]
async fn limited(Json(input): Json<Input>) -> Json<Value> {
    answer(&input)
}

// A cost above what the limit admits: every request is refused, and nothing is charged.
#[rate_limit("1/hour", key = ip, cost = 2)]
async fn blocked(Json(input): Json<Input>) -> Json<Value> {
    answer(&input)
}

/// The application, for the modes that install a layer with `Router::layer` (on every route).
pub fn app() -> Router {
    let mode = std::env::var("MODE").unwrap_or_default();
    let layer = match mode.as_str() {
        "bare" => return Router::new().route("/plain", post(plain)),
        // What any layer costs through `Router::layer`, before doing anything.
        "noop" => return router().layer(MapRequestLayer::new(|request| request)),
        mode => limiter_layer(mode),
    };
    router().layer(layer)
}

/// The routes, with no layer.
fn router() -> Router {
    Router::new()
        .route("/plain", post(plain))
        .route("/plain-headers", post(plain_headers))
        .route("/limited", post(limited))
        .route("/blocked", post(blocked))
}

/// The limiter's layer of a mode (the part after `outer-` for the modes around the router).
fn limiter_layer(mode: &str) -> RateLimitLayer {
    match mode {
        "no-headers" => Limiter::new().layer().headers(HeaderStyle::None),
        "draft" => Limiter::new().layer().headers(HeaderStyle::Draft),
        "legacy" => Limiter::new().layer().headers(HeaderStyle::Legacy),
        "both" => Limiter::new().layer().headers(HeaderStyle::Both),
        "metrics" => Limiter::builder().observer(Metrics::new()).build().layer(),
        _ => Limiter::new().layer(),
    }
}

/// Serves `service` with the client's address.
/// The router with its handlers made routes once, as `into_make_service` and
/// `RateLimitLayer::around` do (else each request would make its handler's route again: an
/// allocation and a clone).
fn finished() -> Router {
    router().with_state::<()>(())
}

async fn serve<S>(listener: tokio::net::TcpListener, service: S)
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync,
    S: 'static,
    S::Future: Send,
{
    let service = ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(service);
    axum::serve(listener, service).await.expect("serve");
}

#[allow(dead_code)] // tests include this file for `app` alone
fn main() {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = std::env::var("WORKERS").ok().and_then(|w| w.parse().ok()) {
        runtime.worker_threads(workers);
    }
    runtime
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}

async fn run() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".into());
    let listener = tokio::net::TcpListener::bind(format!("0.0.0.0:{port}"))
        .await
        .expect("bind");
    let mode = std::env::var("MODE").unwrap_or_default();
    // `outer`, `outer-noop`, `outer-no-headers`...: the layer around the whole router (the way
    // axum runs a middleware before routing), where `Router::layer` wraps every route.
    match mode
        .strip_prefix("outer")
        .map(|rest| rest.trim_start_matches('-'))
    {
        Some("noop") => serve(listener, MapRequestLayer::new(|r| r).layer(finished())).await,
        Some(mode) => serve(listener, limiter_layer(mode).around(router())).await,
        None => {
            let app = app().into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, app).await.expect("serve");
        }
    }
}
