use ratelimit::rate_limit;

#[rate_limit("10/minute", key = ip, key = global)]
async fn predict() -> &'static str {
    "ok"
}

fn main() {}
