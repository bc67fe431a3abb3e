use ratelimit::rate_limit;

#[rate_limit("ten/minute")]
async fn predict() -> &'static str {
    "ok"
}

fn main() {}
