#![deny(warnings)]

//! Bodies of one expression, with a cost from the arguments (the check then runs in the
//! rewritten body): the rewrite adds no warning of its own, and several attributes stack.

use axum::routing::post;
use axum::{Json, Router};
use ratelimit::rate_limit;

#[rate_limit("50/minute", cost = batch.len())]
pub async fn batch(Json(batch): Json<Vec<u32>>) -> String {
    batch.len().to_string()
}

#[rate_limit("50/minute", cost = items.len())]
#[rate_limit("5/second", key = global)]
pub async fn stacked(Json(items): Json<Vec<u32>>) -> String {
    { items.len() }.to_string()
}

#[rate_limit("50/minute", cost = items.len())]
pub async fn unit(Json(items): Json<Vec<u32>>) {
    drop(items)
}

#[rate_limit("50/minute", cost = items.len())]
pub async fn question_mark(Json(items): Json<Vec<String>>) -> Result<String, String> {
    Ok(items.first().ok_or("empty")?.clone())
}

pub fn main() {
    let _: Router = Router::new()
        .route("/batch", post(batch))
        .route("/stacked", post(stacked))
        .route("/unit", post(unit))
        .route("/question-mark", post(question_mark));
}
