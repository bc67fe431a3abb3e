use ratelimit::rate_limit;

// Three mistakes, three errors; and `predict` still exists for the rest of the crate.
#[rate_limit("10/fortnight", algorithm = leaky, key = header("Bad Header"))]
async fn predict() -> &'static str {
    "ok"
}

fn main() {
    let _ = predict;
}
