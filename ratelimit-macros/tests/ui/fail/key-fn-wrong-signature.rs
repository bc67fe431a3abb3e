use ratelimit::rate_limit;

fn user_tier(tier: u32) -> String {
    tier.to_string()
}

#[rate_limit("10/minute", key = user_tier)]
async fn predict() -> &'static str {
    "ok"
}

fn main() {}
