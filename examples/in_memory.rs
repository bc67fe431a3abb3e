//! The first approach of the article, in Rust: in-memory limits per client IP.
//!
//! - `POST /predict`: 10 per minute
//! - `POST /batch-predict`: 2 per minute
//! - `GET /model-info`: never limited
//!
//! `PORT=8000 cargo run --example in_memory`, then
//! `for i in $(seq 11); do curl -s -X POST localhost:8000/predict -H 'Content-Type: application/json' -d '{"data": [1,2,3]}'; echo; done`

#[path = "support/json.rs"]
mod json;

use std::net::SocketAddr;

use axum::routing::{get, post};
use axum::{Json, Router};
use json::{JsonBody, json_fallbacks};
use ratelimit::{Limiter, rate_limit};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// A model input, as the Python seed takes it.
#[derive(Deserialize)]
pub struct ModelInput {
    /// The features.
    pub data: Vec<f64>,
}

#[rate_limit("10/minute", key = ip)]
async fn predict(JsonBody(input): JsonBody<ModelInput>) -> Json<Value> {
    let score = input.data.iter().sum::<f64>().tanh().abs();
    Json(json!({"prediction": score, "confidence": 0.87}))
}

/// Any JSON object, as the seed's `data: dict`: each list of numbers in it (at its top level,
/// or in a list of lists) is one input, and gets one prediction.
#[rate_limit("2/minute", key = ip)]
async fn batch_predict(JsonBody(body): JsonBody<Map<String, Value>>) -> Json<Value> {
    let results: Vec<Value> = body
        .values()
        .flat_map(inputs)
        .map(|input| json!({"prediction": input.iter().sum::<f64>().tanh().abs()}))
        .collect();
    Json(json!({ "results": results }))
}

/// The lists of numbers in `value`: itself, or its elements.
fn inputs(value: &Value) -> Vec<Vec<f64>> {
    let numbers =
        |v: &Value| -> Option<Vec<f64>> { v.as_array()?.iter().map(Value::as_f64).collect() };
    match numbers(value) {
        Some(input) => vec![input],
        None => value
            .as_array()
            .map(|items| items.iter().filter_map(numbers).collect())
            .unwrap_or_default(),
    }
}

async fn model_info() -> Json<Value> {
    Json(json!({"model_version": "v1.2.3", "framework": "PyTorch"}))
}

/// The application, with a limiter of its own.
pub fn app() -> Router {
    let limiter = Limiter::new();
    json_fallbacks(
        Router::new()
            .route("/predict", post(predict))
            .route("/batch-predict", post(batch_predict))
            .route("/model-info", get(model_info)),
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
