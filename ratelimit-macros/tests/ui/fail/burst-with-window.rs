use ratelimit::rate_limit;

#[rate_limit("10/minute", algorithm = fixed_window, burst = 5)]
async fn predict() -> &'static str {
    "ok"
}

fn main() {}
