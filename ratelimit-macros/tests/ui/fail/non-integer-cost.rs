use ratelimit::rate_limit;

#[rate_limit("10/minute", cost = 2.5)]
async fn predict() -> &'static str {
    "ok"
}

fn main() {}
