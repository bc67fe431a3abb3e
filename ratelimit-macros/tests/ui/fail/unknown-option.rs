use ratelimit::rate_limit;

#[rate_limit("10/minute", per_user = true)]
async fn predict() -> &'static str {
    "ok"
}

fn main() {}
