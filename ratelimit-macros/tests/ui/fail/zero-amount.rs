use ratelimit::rate_limit;

#[rate_limit("0/minute")]
async fn predict() -> &'static str {
    "ok"
}

fn main() {}
