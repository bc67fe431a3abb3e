use ratelimit::rate_limit;

#[rate_limit("10/minute", capacity = 0)]
async fn zero() -> &'static str {
    "ok"
}

#[rate_limit("10/minute", capacity = adaptive(min = 8, max = 2))]
async fn inverted() -> &'static str {
    "ok"
}

#[rate_limit("10/minute", capacity = fast)]
async fn unknown() -> &'static str {
    "ok"
}

#[rate_limit("10/minute", capacity = 4, queue = "2 fortnights")]
async fn bad_wait() -> &'static str {
    "ok"
}

#[rate_limit("10/minute", queue = "2s")]
async fn nothing_to_wait_for() -> &'static str {
    "ok"
}

fn main() {}
