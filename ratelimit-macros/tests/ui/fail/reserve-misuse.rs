use axum::Json;
use ratelimit::{Reservation, rate_limit};

// `reserve` without a reservation to settle.
#[rate_limit("2000/minute", reserve = tokens.len())]
async fn never_settled(Json(tokens): Json<Vec<u8>>) -> &'static str {
    "ok"
}

// A reservation that no attribute reserves.
#[rate_limit("2000/minute")]
async fn nothing_reserved(reservation: Reservation) -> &'static str {
    let _ = reservation;
    "ok"
}

// `cost` and `reserve` on one attribute, and `reserve` on two.
#[rate_limit("2000/minute", cost = 1, reserve = 64)]
#[rate_limit("20/minute", reserve = 1)]
async fn both(reservation: Reservation) -> &'static str {
    let _ = reservation;
    "ok"
}

fn main() {}
