use ratelimit::rate_limit;

#[rate_limit("10/minute", algorithm = token_bucket)]
async fn predict() -> &'static str {
    "ok"
}

fn main() {}
