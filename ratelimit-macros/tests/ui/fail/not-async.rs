use ratelimit::rate_limit;

#[rate_limit("10/minute")]
fn predict() -> &'static str {
    "ok"
}

fn main() {}
