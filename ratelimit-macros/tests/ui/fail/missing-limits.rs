use ratelimit::rate_limit;

#[rate_limit(key = ip)]
async fn predict() -> &'static str {
    "ok"
}

fn main() {}
