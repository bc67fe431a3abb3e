#![deny(warnings, missing_docs)]
//! Visibility, attributes, doc comments, argument patterns and extractors survive.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::routing::post;
use axum::{Json, Router};
use ratelimit::rate_limit;
use serde::Deserialize;

/// An item of a batch.
#[derive(Deserialize)]
pub struct Item {
    /// Its features.
    pub features: Vec<f32>,
}

/// The application state.
#[derive(Clone)]
pub struct AppState {
    /// The model's name.
    pub model: &'static str,
}

/// Predicts a batch for a model.
#[rate_limit("2/5 minutes", key = ip, cost = batch.len())]
#[must_use = "a handler's answer"]
pub async fn batch_predict(
    State(state): State<AppState>,
    Path(model): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    Json(batch): Json<Vec<Item>>,
) -> Json<Vec<String>> {
    let _ = params;
    Json(
        batch
            .iter()
            .map(|i| format!("{}/{model}: {}", state.model, i.features.len()))
            .collect(),
    )
}

/// The router.
pub fn app() -> Router {
    Router::new()
        .route("/models/{model}/batch", post(batch_predict))
        .with_state(AppState { model: "m" })
}

/// Builds the router.
pub fn main() {
    let _ = app();
}
