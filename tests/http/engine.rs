//! One engine under HTTP: every path that checks a request derives the same key, everything
//! that applies to a request passes or fails as one, and the values a client reads are exact.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::Query;
use axum::http::request::Parts;
use axum::routing::post;
use axum::{Json, Router};
use ratelimit::http::{HeaderStyle, KeySource};
use ratelimit::observe::{Observation, Observer};
use ratelimit::{Limiter, rate_limit};
use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};

use crate::common::{client_from, remaining, serve};

async fn status(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

/// Records the key of every decision.
#[derive(Clone, Default)]
struct Keys(Arc<Mutex<Vec<Vec<u8>>>>);

impl Observer for Keys {
    fn observe(&self, seen: &Observation<'_>) {
        self.0.lock().unwrap().push(seen.key.to_vec());
    }
}

#[rate_limit("1/minute", key = header("X-API-Key"))]
async fn by_api_key() -> &'static str {
    "ok"
}

async fn unannotated() -> &'static str {
    "ok"
}

#[tokio::test]
async fn a_header_that_is_not_text_is_keyed_by_its_bytes_on_every_path() {
    let keys = Keys::default();
    let limiter = Limiter::builder().observer(keys.clone()).build();
    let layer = limiter
        .layer()
        .default_key(KeySource::Header("x-api-key".parse().unwrap()))
        .default_limits("1/minute");
    let app = Router::new()
        .route("/attribute", post(by_api_key))
        .route("/layer", post(unannotated))
        .layer(layer);
    let addr = serve(app).await;
    let c = client_from("127.0.3.1");
    let raw = |bytes: &'static [u8]| HeaderValue::from_bytes(bytes).unwrap();
    for path in ["/attribute", "/layer"] {
        let url = format!("http://{addr}{path}");
        let send = |bytes| c.post(&url).header("x-api-key", raw(bytes));
        // Two values that a lossy conversion would make one key: two budgets.
        assert_eq!(status(send(b"\xff")).await, 200, "{path}");
        assert_eq!(status(send(b"\xfe")).await, 200, "{path}");
        assert_eq!(status(send(b"\xff")).await, 429, "{path}");
    }
    // Seven decisions (the layer also checked /attribute's first request, before it knew
    // the route carries an attribute), each keyed by the header's exact bytes.
    let seen = keys.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            b"\xff", b"\xff", b"\xfe", b"\xff", b"\xff", b"\xfe", b"\xff"
        ]
        .map(|k| k.to_vec()),
        "the attribute and the layer key the same request the same way"
    );
}

#[tokio::test]
async fn without_the_header_each_client_is_counted_by_its_address() {
    let app = Router::new()
        .route("/k", post(by_api_key))
        .layer(Limiter::new().layer());
    let addr = serve(app).await;
    let url = format!("http://{addr}/k");
    let a = client_from("127.0.3.2");
    let b = client_from("127.0.3.3");
    assert_eq!(status(a.post(&url)).await, 200);
    assert_eq!(status(a.post(&url)).await, 429, "a spent its own budget");
    assert_eq!(
        status(b.post(&url)).await,
        200,
        "one anonymous client does not block the others"
    );
    // Sending another client's address as the header spends a budget of its own.
    let c = client_from("127.0.3.4");
    assert_eq!(
        status(c.post(&url).header("x-api-key", "127.0.3.5")).await,
        200
    );
    let d = client_from("127.0.3.5");
    assert_eq!(status(d.post(&url)).await, 200);
}

#[rate_limit("5/minute", scope = "models")]
async fn scoped() -> &'static str {
    "ok"
}

#[tokio::test]
async fn default_limits_skip_routes_with_a_scoped_attribute() {
    let layer = Limiter::new().layer().default_limits("1/minute");
    let app = Router::new().route("/scoped", post(scoped)).layer(layer);
    let addr = serve(app).await;
    let c = client_from("127.0.3.6");
    let url = format!("http://{addr}/scoped");
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(status(c.post(&url)).await);
    }
    assert_eq!(
        codes,
        [200, 200, 200, 200, 200, 429],
        "the attribute's 5, not the defaults' 1"
    );
}

#[rate_limit("3/minute", key = global)]
#[rate_limit("1/minute", key = header("X-User"))]
async fn stacked() -> &'static str {
    "ok"
}

#[tokio::test]
async fn a_request_refused_by_one_stacked_limit_is_charged_by_none() {
    let app = Router::new()
        .route("/s", post(stacked))
        .layer(Limiter::new().layer());
    let addr = serve(app).await;
    let c = client_from("127.0.3.7");
    let url = format!("http://{addr}/s");
    let as_user = |user: &'static str| c.post(&url).header("x-user", user);
    assert_eq!(status(as_user("u1")).await, 200);
    for _ in 0..4 {
        assert_eq!(status(as_user("u1")).await, 429, "u1's own limit");
    }
    // The refusals took nothing from the global 3: two more users get in, then it binds.
    assert_eq!(status(as_user("u2")).await, 200);
    assert_eq!(status(as_user("u3")).await, 200);
    assert_eq!(status(as_user("u4")).await, 429);
}

#[rate_limit("1/minute", key = ip)]
async fn one_a_minute() -> &'static str {
    "ok"
}

#[tokio::test]
async fn application_limits_pass_or_fail_with_the_route_s_own() {
    let layer = Limiter::new().layer().application_limits("3/minute");
    let app = Router::new()
        .route("/limited", post(one_a_minute))
        .route("/other", post(unannotated))
        .layer(layer);
    let addr = serve(app).await;
    let c = client_from("127.0.3.8");
    let limited = format!("http://{addr}/limited");
    let other = format!("http://{addr}/other");
    // The first request teaches the layer that /limited carries an attribute.
    assert_eq!(status(c.post(&limited)).await, 200);
    for _ in 0..3 {
        assert_eq!(status(c.post(&limited)).await, 429);
    }
    // Three refusals charged nothing: 2 of the application's 3 are left.
    assert_eq!(status(c.post(&other)).await, 200);
    assert_eq!(status(c.post(&other)).await, 200);
    assert_eq!(status(c.post(&other)).await, 429);
}

#[rate_limit("10/minute", key = global)]
#[rate_limit("5/minute", key = ip)]
#[rate_limit("3/minute", key = header("X-User"))]
async fn three_keys() -> &'static str {
    "ok"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_limits_on_three_keys_under_concurrency_charge_exactly_the_admitted() {
    let app = Router::new()
        .route("/t", post(three_keys))
        .layer(Limiter::new().layer());
    let addr = serve(app).await;
    let url = format!("http://{addr}/t");
    let burst = client_from("127.0.4.1");
    let requests: Vec<_> = (0..40)
        .map(|_| {
            let request = burst.post(&url).header("x-user", "u1");
            tokio::spawn(status(request))
        })
        .collect();
    let mut admitted = 0;
    for request in requests {
        admitted += usize::from(request.await.unwrap() == 200);
    }
    assert_eq!(admitted, 3, "the user's 3");
    // Every refused request was given back: the global 10 has exactly 7 left, the burst's
    // address exactly 2 of its 5.
    let from = |ip: &str, user: &'static str| client_from(ip).post(&url).header("x-user", user);
    assert_eq!(status(from("127.0.4.1", "u2")).await, 200);
    assert_eq!(status(from("127.0.4.1", "u3")).await, 200);
    assert_eq!(
        status(from("127.0.4.1", "u4")).await,
        429,
        "the address's 5"
    );
    for user in ["u5", "u6", "u7", "u8", "u9"] {
        assert_eq!(status(from("127.0.4.2", user)).await, 200, "{user}");
    }
    assert_eq!(status(from("127.0.4.3", "u10")).await, 429, "the global 10");
}

#[rate_limit("10/minute", key = ip)]
async fn ten_a_minute() -> &'static str {
    "ok"
}

#[tokio::test]
async fn retry_after_is_rounded_up_and_the_legacy_reset_is_a_unix_time() {
    let app = Router::new()
        .route("/p", post(ten_a_minute))
        .layer(Limiter::new().layer().headers(HeaderStyle::Legacy));
    let addr = serve(app).await;
    let c = client_from("127.0.4.4");
    let url = format!("http://{addr}/p");
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let number = |r: &reqwest::Response, name: &str| -> u64 {
        r.headers()[name].to_str().unwrap().parse().unwrap()
    };
    let before = now();
    let r = c.post(&url).send().await.unwrap();
    let after = now();
    // GCRA on 10/minute: one request holds the budget back by one interval, 6 s (the Unix
    // time rounded up).
    let reset = number(&r, "x-ratelimit-reset");
    assert!(
        (before + 6..=after + 7).contains(&reset),
        "X-RateLimit-Reset {reset} is the Unix time 6 s from now ({before})"
    );
    for _ in 0..9 {
        c.post(&url).send().await.unwrap();
    }
    let r = c.post(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // The next unit comes back 6 s after the first request, less the few milliseconds the
    // ten took: rounded up, exactly 6.
    assert_eq!(number(&r, "retry-after"), 6);
}

#[rate_limit("2/minute", key = ip, algorithm = fixed_window)]
async fn fixed() -> &'static str {
    "ok"
}

#[rate_limit("10/minute", key = ip, burst = 2)]
async fn bursty() -> &'static str {
    "ok"
}

#[tokio::test]
async fn the_attribute_s_algorithm_and_burst_apply() {
    let app = Router::new()
        .route("/fixed", post(fixed))
        .route("/bursty", post(bursty))
        .layer(Limiter::new().layer());
    let addr = serve(app).await;
    let c = client_from("127.0.4.5");
    // A fixed window holds the whole minute after one request (GCRA would say 30 s).
    let r = c.post(format!("http://{addr}/fixed")).send().await.unwrap();
    let current = r.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert_eq!(current, "\"2-per-1m\";r=1;t=60");
    // A burst of 2 on 10/minute: two at once, not ten.
    let url = format!("http://{addr}/bursty");
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(status(c.post(&url)).await);
    }
    assert_eq!(codes, [200, 200, 429]);
}

fn internal(parts: &Parts) -> bool {
    parts.headers.contains_key("x-internal")
}

#[rate_limit("3/minute", key = ip, cost = batch.len(), exempt_when = internal)]
async fn batch(Json(batch): Json<Vec<Value>>) -> Json<Value> {
    Json(json!({ "n": batch.len() }))
}

#[tokio::test]
async fn exempt_when_applies_to_a_cost_from_the_arguments() {
    let app = Router::new()
        .route("/batch", post(batch))
        .layer(Limiter::new().layer());
    let addr = serve(app).await;
    let c = client_from("127.0.4.6");
    let url = format!("http://{addr}/batch");
    let three = json!([1, 2, 3]);
    for _ in 0..3 {
        let r = c.post(&url).header("x-internal", "1").json(&three);
        assert_eq!(status(r).await, 200, "exempt");
    }
    assert_eq!(status(c.post(&url).json(&three)).await, 200);
    assert_eq!(status(c.post(&url).json(&three)).await, 429);
    // An empty batch costs nothing and passes even when the budget is spent.
    assert_eq!(status(c.post(&url).json(&json!([]))).await, 200);
}

// The same options with a cost known before the arguments (the `Guard` path, through its
// hooks), stacked on a second attribute that is never exempt.
#[rate_limit("4/minute", key = ip, cost = 2, exempt_when = internal)]
#[rate_limit("5/minute", key = global, scope = "stacked-global")]
async fn costed_exempt() -> &'static str {
    "ok"
}

#[tokio::test]
async fn exempt_when_and_a_constant_cost_combine_with_a_stacked_attribute() {
    let app = Router::new()
        .route("/costed", post(costed_exempt))
        .layer(Limiter::new().layer());
    let addr = serve(app).await;
    let c = client_from("127.0.4.7");
    let url = format!("http://{addr}/costed");
    // Exempt from the first attribute, not from the second: 5 a minute for everyone.
    for _ in 0..2 {
        let r = c.post(&url).header("x-internal", "1");
        assert_eq!(status(r).await, 200, "exempt from the per-client limit");
    }
    // Cost 2 on 4 a minute: two requests, then refused; the global one counts them too.
    assert_eq!(status(c.post(&url)).await, 200);
    assert_eq!(status(c.post(&url)).await, 200);
    assert_eq!(status(c.post(&url)).await, 429);
    // The global attribute saw the two exempt requests and the two admitted (4 of 5): one
    // more exempt request passes, the next is refused by the global limit alone.
    let r = c.post(&url).header("x-internal", "1");
    assert_eq!(status(r).await, 200);
    let r = c.post(&url).header("x-internal", "1");
    assert_eq!(
        status(r).await,
        429,
        "the stacked attribute still counts exempt requests"
    );
}

// One attribute alone with a constant cost and `exempt_when`: resolved and checked where
// the extractor stands (its common case), under a layer that sends no rate limit headers.
#[rate_limit("4/minute", key = ip, cost = 2, exempt_when = internal)]
async fn costed_exempt_alone() -> &'static str {
    "ok"
}

#[tokio::test]
async fn exempt_when_and_a_constant_cost_on_one_attribute_without_headers() {
    let app = Router::new()
        .route("/alone", post(costed_exempt_alone))
        .layer(Limiter::new().layer().headers(HeaderStyle::None));
    let addr = serve(app).await;
    let c = client_from("127.0.4.8");
    let url = format!("http://{addr}/alone");
    for _ in 0..3 {
        let r = c.post(&url).header("x-internal", "1");
        assert_eq!(status(r).await, 200, "exempt: charged nothing");
    }
    // Cost 2 on 4 a minute: two requests, then refused.
    for _ in 0..2 {
        let r = c.post(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("ratelimit").is_none(), "no headers asked");
    }
    let refused = c.post(&url).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(refused.headers().get("ratelimit").is_none());
    // Another client has its own budget; an exempt request still passes.
    assert_eq!(status(client_from("127.0.4.9").post(&url)).await, 200);
    let r = c.post(&url).header("x-internal", "1");
    assert_eq!(status(r).await, 200);
}

/// Delegates to a memory store and counts its calls; its future waits one poll before
/// answering, as a networked store's does.
struct Counting {
    inner: ratelimit::MemoryStore,
    calls: std::sync::atomic::AtomicUsize,
}

impl ratelimit::Store for Counting {
    fn check<'a>(
        &'a self,
        request: ratelimit::store::CheckRequest<'a>,
    ) -> ratelimit::store::StoreFuture<'a> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ratelimit::store::StoreFuture::new(async move {
            tokio::task::yield_now().await;
            Ok(self.inner.check_now(&request))
        })
    }
}

#[rate_limit("5/minute", key = ip)]
#[rate_limit("50/minute", key = ip, scope = "all-models")]
async fn two_limits_one_key() -> &'static str {
    "ok"
}

#[tokio::test]
async fn a_request_is_one_store_call_per_key_even_when_the_store_waits() {
    let store = Arc::new(Counting {
        inner: ratelimit::MemoryStore::new(),
        calls: Default::default(),
    });
    let limiter = Limiter::builder().shared_store(store.clone()).build();
    let layer = limiter.layer().application_limits("100/minute");
    let app = Router::new()
        .route("/one", post(ten_a_minute))
        .route("/two", post(two_limits_one_key))
        .route("/none", post(unannotated))
        .layer(layer);
    let addr = serve(app).await;
    let c = client_from("127.0.4.7");
    let calls = || store.calls.load(std::sync::atomic::Ordering::SeqCst);
    // First requests teach the layer which routes carry an attribute (and give the layer's
    // charge back): from then on, everything under one key is one call.
    for path in ["/one", "/two"] {
        assert_eq!(status(c.post(format!("http://{addr}{path}"))).await, 200);
    }
    for (path, expected) in [("/one", 1), ("/two", 1), ("/none", 1), ("/two", 1)] {
        let before = calls();
        assert_eq!(status(c.post(format!("http://{addr}{path}"))).await, 200);
        assert_eq!(calls() - before, expected, "{path}");
    }
}

#[tokio::test]
async fn a_layer_around_a_whole_router_learns_routes_by_path() {
    use tower::Layer as _;
    let inner = Router::new()
        .route("/limited", post(one_a_minute))
        .route("/items/{id}", post(three_a_minute))
        .route("/plain", post(unannotated));
    let layer = Limiter::new().layer().default_limits("2/minute");
    let app = Router::new().fallback_service(layer.layer(inner));
    let addr = serve(app).await;
    let c = client_from("127.0.4.8");
    let limited = format!("http://{addr}/limited");
    let plain = format!("http://{addr}/plain");
    // The attribute's 1/minute, never the defaults' 2/minute on top.
    assert_eq!(status(c.post(&limited)).await, 200);
    assert_eq!(status(c.post(&limited)).await, 429);
    let other = client_from("127.0.4.9");
    assert_eq!(status(other.post(&limited)).await, 200);
    // The unannotated route: the defaults.
    assert_eq!(status(c.post(&plain)).await, 200);
    assert_eq!(status(c.post(&plain)).await, 200);
    assert_eq!(status(c.post(&plain)).await, 429);
    // A templated route the layer sees only by its path: the defaults it charges are given
    // back each time, and the attribute's 3 apply.
    let item = format!("http://{addr}/items/7");
    let codes = [
        status(c.post(&item)).await,
        status(c.post(&item)).await,
        status(c.post(&item)).await,
        status(c.post(&item)).await,
    ];
    assert_eq!(codes, [200, 200, 200, 429]);
}

/// The layer around the router, served as the README says (`RateLimitLayer::around` and
/// axum's `ServiceExt`): the attributes find the layer's limiter and header style, the
/// unannotated route gets the layer's defaults by its path, and the refusal is the layer's.
#[tokio::test]
async fn a_layer_around_the_router_served_directly_serves_every_route() {
    use axum::ServiceExt as _;
    let router = Router::new()
        .route("/limited", post(one_a_minute))
        .route("/plain", post(unannotated));
    let layer = Limiter::new()
        .layer()
        .headers(HeaderStyle::Legacy)
        .default_limits("2/minute");
    let service = layer.around(router);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let service = service.into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, service).await.unwrap();
    });
    let c = client_from("127.0.4.20");
    let limited = format!("http://{addr}/limited");
    let r = c.post(&limited).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["x-ratelimit-limit"],
        "1",
        "the attribute's rate"
    );
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let refused = c.post(&limited).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let plain = format!("http://{addr}/plain");
    for left in ["1", "0"] {
        let r = c.post(&plain).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-ratelimit-remaining"], left, "the defaults");
    }
    assert_eq!(status(c.post(&plain)).await, 429);
}

#[rate_limit("3/minute", key = ip)]
async fn three_a_minute() -> &'static str {
    "ok"
}

#[tokio::test]
async fn a_route_learned_to_be_plain_still_gets_the_layer_s_limits_and_headers() {
    let layer = Limiter::new().layer().default_limits("3/minute");
    let app = Router::new()
        .route("/plain", post(unannotated))
        .layer(layer);
    let addr = serve(app).await;
    let c = client_from("127.0.5.1");
    let url = format!("http://{addr}/plain");
    for left in ["2", "1", "0"] {
        let r = c.post(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(remaining(&r), left);
    }
    assert_eq!(status(c.post(&url)).await, 429);
}

#[rate_limit("1/minute", key = ip)]
async fn behind_auth() -> &'static str {
    "ok"
}

async fn require_auth(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if request.headers().contains_key("authorization") {
        next.run(request).await
    } else {
        axum::http::StatusCode::UNAUTHORIZED.into_response()
    }
}

#[tokio::test]
async fn a_layer_inside_that_answers_first_does_not_hide_the_attribute() {
    use axum::response::IntoResponse;
    let layer = Limiter::new().layer().on_rejected(|_| {
        (
            axum::http::StatusCode::IM_A_TEAPOT,
            "the layer's own answer",
        )
            .into_response()
    });
    let app = Router::new()
        .route("/x", post(behind_auth))
        .layer(axum::middleware::from_fn(require_auth))
        .layer(layer);
    let addr = serve(app).await;
    let c = client_from("127.0.5.2");
    let url = format!("http://{addr}/x");
    // The inner layer answers before the handler: nothing to learn from that.
    for _ in 0..3 {
        assert_eq!(status(c.post(&url)).await, 401);
    }
    let authorized = || c.post(&url).header("authorization", "Bearer t");
    assert_eq!(status(authorized()).await, 200);
    // Still the layer's limiter and configuration: its rejection handler answers.
    assert_eq!(status(authorized()).await, 418);
}

#[rate_limit("100/minute", key = ip, scope = "gpu", concurrency = 1)]
async fn gpu_slow() -> &'static str {
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    "slow"
}

#[rate_limit("100/minute", key = ip, scope = "gpu", concurrency = 1)]
async fn gpu_fast() -> &'static str {
    "fast"
}

/// A request refused for want of a slot is charged nothing: not its route's rate, and not
/// the application limits the layer charged before it knew the route carries an attribute.
#[tokio::test]
async fn a_request_without_a_slot_is_charged_nothing_anywhere() {
    let layer = Limiter::new().layer().application_limits("3/minute");
    let app = Router::new()
        .route("/slow", post(gpu_slow))
        .route("/fast", post(gpu_fast))
        .route("/other", post(unannotated))
        .layer(layer);
    let addr = serve(app).await;
    let c = client_from("127.0.3.30");
    let slow = tokio::spawn(status(c.post(format!("http://{addr}/slow"))));
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    // The one "gpu" slot of this client is taken: refused, the first request /fast gets.
    let r = c.post(format!("http://{addr}/fast")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(slow.await.unwrap(), 200);
    // One of the application's 3 was used by /slow; the refusal gave its charge back.
    assert_eq!(status(c.post(format!("http://{addr}/other"))).await, 200);
    assert_eq!(status(c.post(format!("http://{addr}/other"))).await, 200);
    assert_eq!(status(c.post(format!("http://{addr}/other"))).await, 429);
}

/// `concurrency` with a `cost` taken from the handler's last argument: the check runs in
/// that argument's extractor, which hands the slot to the body.
#[rate_limit("100/minute", key = ip, concurrency = 1, cost = batch.len(), algorithm = fixed_window)]
async fn slow_batch(Json(batch): Json<Vec<u8>>) -> String {
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    batch.len().to_string()
}

#[derive(serde::Deserialize)]
struct Copies {
    copies: usize,
}

/// The same with a cost from two arguments: the check runs inside the rewritten handler,
/// which holds the slot. This body cannot leave early, so it runs in place.
#[rate_limit("100/minute", key = ip, concurrency = 1, cost = batch.len() * copies.copies, algorithm = fixed_window)]
async fn slow_copies(Query(copies): Query<Copies>, Json(batch): Json<Vec<u8>>) -> String {
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    (batch.len() * copies.copies).to_string()
}

/// The same with a body that can leave early (`?`), which keeps an `async` block of its own
/// (the third way the rewrite holds the slot).
#[rate_limit("100/minute", key = ip, concurrency = 1, cost = batch.len() * copies.copies, algorithm = fixed_window)]
async fn slow_copies_with_early_exit(
    Query(copies): Query<Copies>,
    Json(batch): Json<Vec<u8>>,
) -> Result<String, StatusCode> {
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    batch.first().ok_or(StatusCode::BAD_REQUEST)?;
    Ok((batch.len() * copies.copies).to_string())
}

/// `concurrency` where the check needs no argument: it runs in front of the first argument's
/// extractor, whose pattern in the rewritten handler holds the slot: the only argument
/// (which reads the body), and the first of two.
#[rate_limit("100/minute", key = ip, concurrency = 1, algorithm = fixed_window)]
async fn slow_sole(Json(batch): Json<Vec<u8>>) -> String {
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    batch.len().to_string()
}

#[rate_limit("100/minute", key = ip, concurrency = 1, algorithm = fixed_window)]
async fn slow_first(Query(copies): Query<Copies>, Json(batch): Json<Vec<u8>>) -> String {
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    (batch.len() * copies.copies).to_string()
}

/// The slot of a request is given back when the client hangs up (the handler's future is
/// dropped), not only when the handler completes: the three ways the rewrite runs a body
/// whose cost comes from its arguments, and the two ways it holds the slot of one whose
/// check needs none, at once.
#[tokio::test]
async fn a_hung_up_request_gives_its_slot_back() {
    let app = Router::new()
        .route("/slow-batch", post(slow_batch))
        .route("/slow-copies", post(slow_copies))
        .route("/slow-copies-early", post(slow_copies_with_early_exit))
        .route("/slow-sole", post(slow_sole))
        .route("/slow-first", post(slow_first))
        .layer(Limiter::new().layer());
    let addr = serve(app).await;
    // Costs from the arguments: 2, then 3 (95 left); otherwise 1 each (98 left).
    tokio::join!(
        hang_up_then_retry(addr, "/slow-batch", "127.0.3.40", "95"),
        hang_up_then_retry(addr, "/slow-copies?copies=1", "127.0.3.41", "95"),
        hang_up_then_retry(addr, "/slow-copies-early?copies=1", "127.0.3.42", "95"),
        hang_up_then_retry(addr, "/slow-sole", "127.0.3.43", "98"),
        hang_up_then_retry(addr, "/slow-first?copies=1", "127.0.3.44", "98"),
    );
}

async fn hang_up_then_retry(addr: std::net::SocketAddr, path: &str, client: &str, left: &str) {
    let url = format!("http://{addr}{path}");
    let impatient = reqwest::Client::builder()
        .local_address(client.parse::<std::net::IpAddr>().unwrap())
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = impatient.post(&url).json(&[1u8, 2]).send().await;
    assert!(gone.unwrap_err().is_timeout(), "{path}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The slot is free again: the next request is admitted, and charged its own cost.
    let c = client_from(client);
    let next = tokio::spawn(c.post(&url).json(&[1u8, 2, 3]).send());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // While it runs, the one slot is taken.
    let r = c.post(&url).json(&[1u8]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
    assert_eq!(r.headers()["retry-after"], "1", "{path}");
    let next = next.await.unwrap().unwrap();
    assert_eq!(next.status(), StatusCode::OK, "{path}");
    assert_eq!(remaining(&next), left, "{path}");
}
