//! Every option of the attribute and of the layer, through a real server.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::StatusCode as AxumStatus;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use ratelimit::{Limiter, Limits, rate_limit};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{body, client_from, quota, remaining, serve};

async fn hits(client: &reqwest::Client, url: &str, n: usize) -> Vec<u16> {
    let mut codes = Vec::new();
    for _ in 0..n {
        codes.push(
            client
                .post(url)
                .json(&body())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    codes
}

#[rate_limit("5/minute", key = ip, cost = batch.len())]
async fn batch(Json(batch): Json<Vec<Value>>) -> Json<Value> {
    Json(json!({ "n": batch.len() }))
}

#[tokio::test]
async fn cost_may_use_the_parsed_arguments() {
    let app = Router::new()
        .route("/batch", post(batch))
        .layer(Limiter::new().layer());
    let addr = serve(app).await;
    let client = client_from("127.0.1.1");
    let url = format!("http://{addr}/batch");
    let three = json!([1, 2, 3]);
    let r = client.post(&url).json(&three).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(remaining(&r), "2");
    assert_eq!(
        client
            .post(&url)
            .json(&three)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        client
            .post(&url)
            .json(&json!([1, 2]))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let r = client
        .post(&url)
        .json(&json!([1, 2, 3, 4, 5, 6]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let detail: Value = r.json().await.unwrap();
    assert!(
        detail["detail"]
            .as_str()
            .unwrap()
            .contains("costs more than 5 per 1 minute"),
        "{detail}"
    );
}

#[rate_limit("3/minute", key = global)]
#[rate_limit("2/minute", key = ip, error_message = "Slow down, please")]
async fn stacked() -> &'static str {
    "ok"
}

#[tokio::test]
async fn several_attributes_all_apply() {
    let app = Router::new()
        .route("/stacked", post(stacked))
        .layer(Limiter::new().layer());
    let addr = serve(app).await;
    let url = format!("http://{addr}/stacked");
    let a = client_from("127.0.1.2");
    let b = client_from("127.0.1.3");
    assert_eq!(hits(&a, &url, 3).await, [200, 200, 429]);
    let r = a.post(&url).send().await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"detail": "Slow down, please"})
    );
    // The global budget of 3 had 2 taken by a; b gets the last one.
    assert_eq!(hits(&b, &url, 2).await, [200, 429]);
}

#[rate_limit("2/minute", scope = "inference")]
async fn model_a() -> &'static str {
    "a"
}

#[rate_limit("2/minute", scope = "inference")]
async fn model_b() -> &'static str {
    "b"
}

#[rate_limit("2/minute")]
async fn item(Path(id): Path<u32>) -> String {
    id.to_string()
}

#[tokio::test]
async fn scopes_share_a_budget_and_routes_are_keyed_by_their_template() {
    let app = Router::new()
        .route("/a", post(model_a))
        .route("/b", post(model_b))
        .route("/items/{id}", post(item))
        .layer(Limiter::new().layer());
    let addr = serve(app).await;
    let c = client_from("127.0.1.4");
    assert_eq!(hits(&c, &format!("http://{addr}/a"), 1).await, [200]);
    assert_eq!(hits(&c, &format!("http://{addr}/b"), 2).await, [200, 429]);
    assert_eq!(hits(&c, &format!("http://{addr}/items/1"), 1).await, [200]);
    assert_eq!(
        hits(&c, &format!("http://{addr}/items/2"), 2).await,
        [200, 429]
    );
}

static FREE: LazyLock<Limits> = LazyLock::new(|| "1/minute".parse().unwrap());
static PREMIUM: LazyLock<Limits> = LazyLock::new(|| "5/minute".parse().unwrap());

fn tier_limits(parts: &Parts) -> &'static Limits {
    match parts.headers.get("x-api-key").map(|v| v.as_bytes()) {
        Some(b"premium-user-key") => &PREMIUM,
        _ => &FREE,
    }
}

async fn api_key(parts: &Parts) -> Option<String> {
    tokio::task::yield_now().await; // a real one would ask a database
    parts
        .headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn is_internal(parts: &Parts) -> bool {
    parts.headers.contains_key("x-internal")
}

#[rate_limit(tier_limits, key = api_key, exempt_when = is_internal)]
async fn tiered() -> &'static str {
    "ok"
}

#[rate_limit("2/minute", key = header("X-Tenant"), algorithm = sliding_window)]
async fn by_header() -> &'static str {
    "ok"
}

#[tokio::test]
async fn dynamic_limits_async_keys_header_keys_and_exemptions() {
    let app = Router::new()
        .route("/tiered", post(tiered))
        .route("/tenant", post(by_header))
        .layer(Limiter::new().layer());
    let addr = serve(app).await;
    let c = client_from("127.0.1.5");
    let url = format!("http://{addr}/tiered");
    let send = |key: &'static str| c.post(&url).header("x-api-key", key).send();
    for _ in 0..5 {
        assert_eq!(
            send("premium-user-key").await.unwrap().status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        send("premium-user-key").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(send("free-1").await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        send("free-1").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send("free-2").await.unwrap().status(),
        StatusCode::OK,
        "another key, another budget"
    );
    let r = c
        .post(&url)
        .header("x-api-key", "free-1")
        .header("x-internal", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "exempt");

    let url = format!("http://{addr}/tenant");
    for tenant in ["acme", "globex"] {
        for expected in [200, 200, 429] {
            let r = c
                .post(&url)
                .header("x-tenant", tenant)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), expected, "{tenant}");
        }
    }
}

fn tenant_of(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get("x-tenant")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

// Two key functions on one handler, one `async`, one plain: each attribute counts by its own.
#[rate_limit("3/minute", key = api_key)]
#[rate_limit("4/minute", key = tenant_of, scope = "tenants")]
async fn two_key_functions() -> &'static str {
    "ok"
}

#[tokio::test]
async fn each_attribute_counts_by_its_own_key_function() {
    let app = Router::new()
        .route("/two-keys", post(two_key_functions))
        .layer(Limiter::new().layer());
    let addr = serve(app).await;
    let c = client_from("127.0.1.9");
    let url = format!("http://{addr}/two-keys");
    let send = |key: &'static str, tenant: &'static str| {
        c.post(&url)
            .header("x-api-key", key)
            .header("x-tenant", tenant)
            .send()
    };
    let steps = [
        ("k1", "acme", 200),
        ("k1", "acme", 200),
        ("k1", "acme", 200),
        // The key's three are spent; the tenant, refused with it, is not charged.
        ("k1", "acme", 429),
        ("k2", "acme", 200),
        // The tenant's four are spent, though the key has two left.
        ("k2", "acme", 429),
        // Another tenant, the same key: charged once only, by the request it let through.
        ("k2", "globex", 200),
        ("k2", "globex", 200),
        ("k2", "globex", 429),
    ];
    for (step, (key, tenant, expected)) in steps.into_iter().enumerate() {
        let status = send(key, tenant).await.unwrap().status();
        assert_eq!(status.as_u16(), expected, "step {step}: {key} of {tenant}");
    }
}

#[derive(Clone)]
struct AppState {
    greeting: &'static str,
}

#[rate_limit("1/minute")]
async fn with_state(State(state): State<AppState>) -> impl IntoResponse {
    state.greeting
}

async fn unlimited() -> &'static str {
    "free"
}

#[tokio::test]
async fn defaults_application_limits_exemptions_and_a_custom_rejection() {
    let layer = Limiter::new()
        .layer()
        .default_limits("2/minute")
        .application_limits("6/minute")
        .exempt(["/health"])
        .on_rejected(|limited| {
            (
                AxumStatus::SERVICE_UNAVAILABLE,
                format!("busy: {}", limited.decision.rate()),
            )
                .into_response()
        });
    let app = Router::new()
        .route("/state", get(with_state))
        .route("/plain", get(unlimited))
        .route("/health", get(unlimited))
        .with_state(AppState { greeting: "hello" })
        .layer(layer);
    let addr = serve(app).await;
    let c = client_from("127.0.1.6");
    let get = |path: &str| c.get(format!("http://{addr}{path}")).send();
    // /plain has no attribute: the default 2/minute applies.
    assert_eq!(get("/plain").await.unwrap().status(), StatusCode::OK);
    let r = get("/plain").await.unwrap();
    assert_eq!(quota(&r), "2", "the defaults' headers");
    let r = get("/plain").await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text().await.unwrap(), "busy: 2 per 1 minute");
    // /state has its own 1/minute; the default limits do not apply to it.
    let r = get("/state").await.unwrap();
    assert_eq!(
        (r.status(), r.text().await.unwrap()),
        (StatusCode::OK, "hello".to_owned())
    );
    assert_eq!(
        get("/state").await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // /health is exempt from both; after 6 counted requests the application limit binds.
    for _ in 0..10 {
        assert_eq!(get("/health").await.unwrap().status(), StatusCode::OK);
    }
    let other = client_from("127.0.1.7");
    for _ in 0..2 {
        assert_eq!(
            other
                .get(format!("http://{addr}/plain"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
}

#[rate_limit("1/minute")]
async fn global_default() -> &'static str {
    "ok"
}

#[tokio::test]
async fn without_a_layer_the_process_wide_limiter_serves() {
    let app = Router::new().route("/g", post(global_default));
    let addr = serve(app).await;
    let c = client_from("127.0.1.8");
    let url = format!("http://{addr}/g");
    assert_eq!(hits(&c, &url, 2).await, [200, 429]);
}

#[rate_limit("4/minute", key = ip, cost = 2)]
async fn fixed_cost() -> &'static str {
    "ok"
}

#[tokio::test]
async fn a_constant_cost_is_charged_before_the_body() {
    let app = Router::new()
        .route("/c", post(fixed_cost))
        .layer(Limiter::new().layer());
    let addr = serve(app).await;
    let c = client_from("127.0.1.9");
    assert_eq!(
        hits(&c, &format!("http://{addr}/c"), 3).await,
        [200, 200, 429]
    );
}

#[rate_limit("3/minute")]
async fn styled() -> &'static str {
    "ok"
}

#[tokio::test]
async fn header_styles_and_trusted_proxies() {
    use ratelimit::http::HeaderStyle;
    for (style, draft, legacy) in [
        (HeaderStyle::Both, true, true),
        (HeaderStyle::Draft, true, false),
        (HeaderStyle::Legacy, false, true),
        (HeaderStyle::None, false, false),
    ] {
        let addr = serve(
            Router::new()
                .route("/s", post(styled))
                .layer(Limiter::new().layer().headers(style)),
        )
        .await;
        let r = client_from("127.0.2.1")
            .post(format!("http://{addr}/s"))
            .send()
            .await
            .unwrap();
        let h = r.headers();
        assert_eq!(
            h.contains_key("ratelimit") && h.contains_key("ratelimit-policy"),
            draft,
            "{style:?}"
        );
        assert_eq!(h.contains_key("x-ratelimit-remaining"), legacy, "{style:?}");
    }

    // Behind a trusted proxy (the client's loopback address), the forwarded client counts.
    let addr = serve(
        Router::new()
            .route("/s", post(styled))
            .layer(Limiter::new().layer().trusted_proxies(["127.0.2.0/24"])),
    )
    .await;
    let proxy = client_from("127.0.2.2");
    let url = format!("http://{addr}/s");
    let via = |client: &'static str| {
        proxy
            .post(&url)
            .header("x-forwarded-for", format!("6.6.6.6, {client}"))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(via("198.51.100.1").await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        via("198.51.100.1").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        via("198.51.100.2").await.unwrap().status(),
        StatusCode::OK,
        "another client behind the proxy"
    );
}
