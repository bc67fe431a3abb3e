use ratelimit::rate_limit;

#[rate_limit("10/minute", concurrency = 0)]
async fn heavy() -> &'static str {
    "ok"
}

#[rate_limit("10/minute", concurrency = 5000000000)]
async fn heavier() -> &'static str {
    "ok"
}

fn main() {}
