use ratelimit::rate_limit;

fn internal(_parts: &axum::http::request::Parts) -> String {
    String::new()
}

#[rate_limit("10/minute", exempt_when = internal)]
async fn predict() -> &'static str {
    "ok"
}

fn main() {}
