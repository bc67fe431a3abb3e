//! The third approach of the article, in Rust: slowapi-style decorators with a custom key.
//!
//! - `POST /predict`: 10 per minute per client IP
//! - `POST /premium/predict`: 30 per minute keyed by the `X-User-Tier` header through a
//!   custom key function; 403 `{"detail": "Premium access required"}` unless the tier is
//!   `premium`
//!
//! `PORT=8000 cargo run --example tiers`

#[path = "support/json.rs"]
mod json;

use std::net::SocketAddr;

use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use json::{JsonBody, json_fallbacks};
use ratelimit::{Limiter, rate_limit};
use serde::Deserialize;
use serde_json::{Value, json};

/// A model input, as the Python seed takes it.
#[derive(Deserialize)]
pub struct ModelInput {
    /// The features.
    pub data: Vec<f64>,
    /// Optional inference parameters.
    #[serde(default)]
    pub parameters: serde_json::Map<String, Value>,
}

/// The caller's tier, from `X-User-Tier` (`free` when absent).
fn user_tier(parts: &Parts) -> String {
    tier(&parts.headers).to_owned()
}

fn tier(headers: &HeaderMap) -> &str {
    headers
        .get("x-user-tier")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("free")
}

#[rate_limit("10/minute")]
async fn predict(JsonBody(_input): JsonBody<ModelInput>) -> Json<Value> {
    Json(json!({"result": "prediction", "status": "success"}))
}

#[rate_limit("30/minute", key = user_tier)]
async fn premium_predict(headers: HeaderMap, JsonBody(_input): JsonBody<ModelInput>) -> Response {
    if tier(&headers) != "premium" {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"detail": "Premium access required"})),
        )
            .into_response();
    }
    Json(json!({"result": "premium prediction", "status": "success"})).into_response()
}

/// The application, with a limiter of its own.
pub fn app() -> Router {
    let limiter = Limiter::new();
    json_fallbacks(
        Router::new()
            .route("/predict", post(predict))
            .route("/premium/predict", post(premium_predict)),
    )
    .layer(limiter.layer())
}

#[allow(dead_code)] // tests include this file for `app` alone
#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".into());
    let listener = tokio::net::TcpListener::bind(format!("0.0.0.0:{port}"))
        .await
        .expect("bind");
    tracing::info!("listening on {}", listener.local_addr().expect("address"));
    axum::serve(
        listener,
        app().into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("serve");
}
