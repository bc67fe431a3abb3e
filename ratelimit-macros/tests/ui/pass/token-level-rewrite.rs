#![deny(warnings, missing_docs)]
//! The common handler, rewritten from its tokens: visibilities, our attributes (by path)
//! among others and doc comments, paths in patterns, `->` and nested generics in argument
//! types, trailing commas, `mut` patterns, costs from the last argument after others, slots
//! held by the first argument or by a guard of their own.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;

/// An item.
#[derive(Deserialize)]
pub struct Item {
    /// Its size.
    pub n: u32,
}

/// The application state: a function with an arrow in its type.
pub type Scale = Arc<dyn Fn(u32) -> u32 + Send + Sync>;

/// Doc before.
#[ratelimit::rate_limit("10/minute", key = ip)]
/// Doc between.
#[allow(clippy::unused_async)]
#[ratelimit::rate_limit("100/hour", key = global, scope = "shared")]
pub(crate) async fn two_attributes(
    State(scale): State<Arc<dyn Fn(u32) -> u32 + Send + Sync>>,
    Query(query): Query<HashMap<String, Vec<u32>>>,
    axum::Json(mut items): axum::Json<Vec<Item>>,
) -> Json<u32> {
    items.push(Item { n: 1 });
    Json(items.iter().map(|i| scale(i.n)).sum::<u32>() + query.len() as u32)
}

/// A sole argument with a trailing comma, its cost from it.
#[ratelimit::rate_limit("10/minute", key = ip, cost = items.len())]
#[rustfmt::skip]
pub async fn costed_trailing(Json(items): Json<Vec<Item>>,) -> String {
    items.len().to_string()
}

/// A cost from the last argument after another, `mut` in its pattern.
#[ratelimit::rate_limit("10/minute", key = ip, cost = items.len())]
pub async fn costed_after(State(_scale): State<Scale>, Json(mut items): Json<Vec<Item>>) -> String {
    items.pop();
    items.len().to_string()
}

/// Slots held by the only argument.
#[ratelimit::rate_limit("10/minute", key = ip, concurrency = 2)]
async fn holds_sole(Json(items): Json<Vec<Item>>) -> String {
    items.len().to_string()
}

/// Slots held by a guard of their own.
#[ratelimit::rate_limit("10/minute", key = ip, concurrency = 2)]
async fn holds_none() -> &'static str {
    ""
}

/// Builds the router.
pub fn main() {
    let scale: Scale = Arc::new(|n| n * 2);
    let _: Router = Router::new()
        .route("/two", post(two_attributes))
        .route("/costed-trailing", post(costed_trailing))
        .route("/costed-after", post(costed_after))
        .route("/holds-sole", post(holds_sole))
        .route("/holds-none", post(holds_none))
        .with_state(scale);
}
