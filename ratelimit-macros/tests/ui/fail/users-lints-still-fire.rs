#![deny(unused_variables)]

use ratelimit::rate_limit;

#[rate_limit("10/minute")]
async fn predict() -> &'static str {
    let unused = 1;
    "ok"
}

fn main() {}
