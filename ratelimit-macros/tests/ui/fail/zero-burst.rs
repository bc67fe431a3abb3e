use ratelimit::rate_limit;

#[rate_limit("10/minute", burst = 0)]
async fn predict() -> &'static str {
    "ok"
}

fn main() {}
