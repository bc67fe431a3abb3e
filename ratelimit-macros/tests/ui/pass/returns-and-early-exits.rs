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

// Bodies that cannot leave early run in place, the rest in a block of their own; both infer
// from the handler's return type as they did before the rewrite.
#[rate_limit("10/minute", cost = items.len())]
async fn in_place_infers_from_the_return_type(
    Json(items): Json<Vec<u8>>,
) -> std::borrow::Cow<'static, str> {
    let label = if items.len() != 1 { "items" } else { "item" };
    format!("{} {label}", items.len()).into()
}

#[rate_limit("10/minute", cost = items.len())]
async fn in_place_unit(Json(items): Json<Vec<u8>>) {
    assert!(items.len() < 1_000_000);
}

// A cost from the last argument alone is computed in its extractor, whatever the body does;
// the argument's pattern is bound for the body as written, and what only the cost uses
// counts as used.
#[derive(serde::Deserialize)]
struct Batch {
    items: Vec<u8>,
    scale: u32,
}

#[rate_limit("10/minute", cost = items.len())]
async fn costed_struct_pattern(Json(Batch { items, scale }): Json<Batch>) -> String {
    if scale == 0 {
        return String::new();
    }
    scale.to_string()
}

#[rate_limit("10/minute", cost = batch.len())]
async fn costed_mutable(Json(mut batch): Json<Vec<u8>>) -> Result<String, Oops> {
    batch.push(parse("1")? as u8);
    Ok(batch.len().to_string())
}

// A pattern that leaves part of the argument out cannot give it back: the check runs in the
// handler instead.
#[rate_limit("10/minute", cost = items.len())]
async fn partial_pattern(Json(Batch { items, .. }): Json<Batch>) -> String {
    items.len().to_string()
}

// A macro the attribute does not know might leave the function: the body keeps its block.
macro_rules! leave_when_empty {
    ($items:expr) => {
        if $items.is_empty() {
            return String::from("none");
        }
    };
}

#[rate_limit("10/minute", cost = items.len())]
async fn unknown_macro_that_returns(Json(items): Json<Vec<u8>>) -> String {
    leave_when_empty!(items);
    items.len().to_string()
}

pub fn main() {
    let _: Router = Router::new()
        .route("/a", post(with_question_mark))
        .route("/b", post(deferred_with_question_mark))
        .route("/c", post(deferred_impl_into_response))
        .route("/d", post(unit))
        .route("/e", post(in_place_infers_from_the_return_type))
        .route("/f", post(in_place_unit))
        .route("/g", post(unknown_macro_that_returns))
        .route("/h", post(costed_struct_pattern))
        .route("/i", post(costed_mutable))
        .route("/j", post(partial_pattern));
}
