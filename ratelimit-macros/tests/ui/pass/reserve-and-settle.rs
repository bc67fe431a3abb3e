//! `reserve = ESTIMATE` with the `Reservation` parameter anywhere among the extractors, a
//! stacked request limit, `concurrency`, `?` in the body, and a meter moved into a stream.

#![deny(warnings)]

use axum::Json;
use axum::extract::State;
use ratelimit::{Reservation, rate_limit};
use serde::Deserialize;

#[derive(Deserialize)]
struct Generate {
    prompt: String,
    max_tokens: u64,
}

#[rate_limit("20/minute")]
#[rate_limit("2000/minute", reserve = 1 + request.max_tokens, concurrency = 2)]
async fn generate(
    State(_state): State<()>,
    reservation: Reservation,
    Json(request): Json<Generate>,
) -> Result<String, String> {
    let used = request.prompt.split_whitespace().count() as u64;
    let after = reservation.settle(used).await.map_err(|e| e.to_string())?;
    Ok(format!("{} left", after.remaining()))
}

#[rate_limit("2000/minute", reserve = 64)]
async fn metered(reservation: Reservation) -> String {
    let mut meter = reservation.meter();
    meter.add(3);
    format!("{} of {}", meter.used(), meter.reserved())
}

pub fn main() {
    let _: axum::Router = axum::Router::new()
        .route("/generate", axum::routing::post(generate))
        .route("/metered", axum::routing::post(metered))
        .with_state(());
}
