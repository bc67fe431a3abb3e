use ratelimit::rate_limit;

#[rate_limit("10/minut")]
async fn predict() -> &'static str {
    "ok"
}

fn main() {}
