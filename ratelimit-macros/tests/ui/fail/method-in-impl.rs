use ratelimit::rate_limit;

struct Api;

impl Api {
    #[rate_limit("10/minute")]
    async fn predict(&self) -> &'static str {
        "ok"
    }
}

fn main() {}
