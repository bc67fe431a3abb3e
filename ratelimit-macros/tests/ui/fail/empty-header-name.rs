use ratelimit::rate_limit;

#[rate_limit("10/minute", key = header(""))]
async fn predict() -> &'static str {
    "ok"
}

fn main() {}
