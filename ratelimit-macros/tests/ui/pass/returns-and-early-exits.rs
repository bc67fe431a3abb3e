#![deny(warnings)]

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use ratelimit::rate_limit;

#[derive(Debug)]
struct Oops;

impl IntoResponse for Oops {
    fn into_response(self) -> axum::response::Response {
        StatusCode::BAD_REQUEST.into_response()
    }
}

fn parse(n: &str) -> Result<u32, Oops> {
    n.parse().map_err(|_| Oops)
}

#[rate_limit("10/minute")]
async fn with_question_mark(body: String) -> Result<String, Oops> {
    if body.is_empty() {
        return Err(Oops);
    }
    let n = parse(&body)?;
    Ok(format!("{}", n + 1))
}

#[rate_limit("10/minute", cost = body.len())]
async fn deferred_with_question_mark(body: String) -> Result<String, Oops> {
    if body.is_empty() {
        return Err(Oops);
    }
    let n = parse(&body)?;
    Ok(format!("{}", n * 2))
}

#[rate_limit("10/minute", cost = items.len())]
async fn deferred_impl_into_response(Json(items): Json<Vec<u8>>) -> impl IntoResponse {
    if items.is_empty() {
        return (StatusCode::NO_CONTENT, String::new());
    }
    (StatusCode::OK, format!("{}", items.len()))
}

#[rate_limit("10/minute")]
async fn unit() {}

pub fn main() {
    let _: Router = Router::new()
        .route("/a", post(with_question_mark))
        .route("/b", post(deferred_with_question_mark))
        .route("/c", post(deferred_impl_into_response))
        .route("/d", post(unit));
}
