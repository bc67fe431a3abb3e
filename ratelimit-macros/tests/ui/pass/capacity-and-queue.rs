use axum::Json;
use ratelimit::rate_limit;

#[rate_limit("10/minute", capacity = adaptive)]
async fn adaptive() -> &'static str {
    "ok"
}

#[rate_limit("10/minute", capacity = adaptive(max = 8), queue = "2s")]
async fn bounded() -> &'static str {
    "ok"
}

#[rate_limit("10/minute", capacity = 4, queue = "500ms", concurrency = 2)]
#[rate_limit("100/hour", cost = batch.len())]
async fn fixed(Json(batch): Json<Vec<u32>>) -> Json<usize> {
    Json(batch.len())
}

#[rate_limit("10/minute", concurrency = 1, queue = "1 second")]
async fn waits_for_its_slot() -> &'static str {
    "ok"
}

pub fn main() {
    let _ = axum::Router::<()>::new()
        .route("/a", axum::routing::get(adaptive))
        .route("/b", axum::routing::get(bounded))
        .route("/c", axum::routing::post(fixed))
        .route("/d", axum::routing::get(waits_for_its_slot));
}
