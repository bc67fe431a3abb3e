//! The second approach of the article, in Rust: limits in Redis, shared by every instance
//! behind the load balancer (what fastapi-limiter does, in one round trip per request).
//!
//! - `POST /predict`: 20 per minute per client IP, body `{"features": [..], "model_version": "default"}`
//! - `POST /predict/batch`: 5 per 5 minutes per client IP, a JSON list of those
//!
//! `REDIS_URL` (default `redis://127.0.0.1:6379`); it starts and serves even when Redis is
//! down, counting in memory until Redis is back (one warning says so).
//!
//! `PORT=8000 cargo run --features redis --example redis`, then
//! `for i in $(seq 21); do curl -s -X POST localhost:8000/predict -H 'Content-Type: application/json' -d '{"features": [1,2,3]}'; echo; done`

#[path = "support/json.rs"]
mod json;

use std::net::SocketAddr;

use axum::routing::post;
use axum::{Json, Router};
use json::{JsonBody, json_fallbacks};
use ratelimit::store::RedisStore;
use ratelimit::{Limiter, StoreError, rate_limit};
use serde::Deserialize;
use serde_json::{Value, json};

/// A prediction request, as the seed's `PredictionRequest`.
#[derive(Deserialize)]
pub struct PredictionRequest {
    /// The features.
    pub features: Vec<f64>,
    /// Which model answers.
    #[serde(default = "default_version")]
    pub model_version: String,
}

fn default_version() -> String {
    "default".to_owned()
}

fn predict_one(request: &PredictionRequest) -> f64 {
    // A stand-in for inference that depends on the input: a logistic of the mean.
    let mean = request.features.iter().sum::<f64>() / request.features.len().max(1) as f64;
    1.0 / (1.0 + (-mean).exp())
}

#[rate_limit("20/minute", key = ip)]
async fn predict(JsonBody(request): JsonBody<PredictionRequest>) -> Json<Value> {
    Json(json!({
        "prediction": predict_one(&request),
        "model_version": request.model_version,
    }))
}

#[rate_limit("5/5 minutes", key = ip)]
async fn predict_batch(JsonBody(batch): JsonBody<Vec<PredictionRequest>>) -> Json<Value> {
    let predictions: Vec<f64> = batch.iter().map(predict_one).collect();
    Json(json!({ "batch_predictions": predictions }))
}

/// The application on the Redis at `redis_url`.
pub async fn app(redis_url: &str) -> Result<Router, StoreError> {
    let store = RedisStore::connect(redis_url).await?;
    let limiter = Limiter::builder().store(store).build();
    Ok(json_fallbacks(
        Router::new()
            .route("/predict", post(predict))
            .route("/predict/batch", post(predict_batch)),
    )
    .layer(limiter.layer()))
}

#[allow(dead_code)] // tests include this file for `app` alone
#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let app = app(&redis_url).await.unwrap_or_else(|e| panic!("{e}"));
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".into());
    let listener = tokio::net::TcpListener::bind(format!("0.0.0.0:{port}"))
        .await
        .expect("bind");
    tracing::info!(redis = %redis_url, "listening on {}", listener.local_addr().expect("address"));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("serve");
}
