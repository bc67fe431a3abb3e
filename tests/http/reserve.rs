//! `reserve = ESTIMATE` over real HTTP: the handler gets its `Reservation` and settles what
//! the work really used, from its body or from inside a streamed response that outlives it.
//! Each case runs on a server counting in memory and on one counting in a Redis the test
//! starts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::routing::post;
use ratelimit::http::HeaderStyle;
use ratelimit::{Limiter, Reservation, rate_limit};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::common::{client_from, serve};
use crate::redis_server;

/// What the work will at most take, and what it took.
#[derive(Deserialize)]
struct Work {
    estimate: u64,
    used: u64,
    /// The prompt's tokens, for the streamed route.
    #[serde(default)]
    prompt: u64,
}

#[rate_limit("100/minute", key = ip, reserve = work.estimate, algorithm = fixed_window)]
async fn settled(reservation: Reservation, Json(work): Json<Work>) -> String {
    let after = reservation.settle(work.used).await.unwrap();
    after.remaining().to_string()
}

/// 64 a minute, by GCRA: one unit every 937.5 ms.
#[rate_limit("64/minute", key = ip, reserve = work.estimate)]
async fn indebted(reservation: Reservation, Json(work): Json<Work>) -> &'static str {
    reservation.settle(work.used).await.unwrap();
    "done"
}

/// The prompt, then one token every 20 ms up to `estimate - prompt`, streamed; the meter
/// settles what was used when the stream ends or is dropped.
#[rate_limit("2000/minute", key = ip, reserve = work.estimate, algorithm = fixed_window)]
async fn streamed(reservation: Reservation, Json(work): Json<Work>) -> Body {
    let mut meter = reservation.meter();
    meter.add(work.prompt);
    let tokens = work.estimate.saturating_sub(work.prompt);
    let stream = futures_util::stream::unfold((meter, 0), move |(mut meter, i)| async move {
        if i == tokens {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        meter.add(1);
        Some((
            Ok::<_, Infallible>(format!("data: {i}\n\n")),
            (meter, i + 1),
        ))
    });
    Body::from_stream(stream)
}

/// 2 requests a minute and 100 tokens, the tokens shared with `/tokens` (a look at them).
#[rate_limit("2/minute", key = ip, algorithm = fixed_window)]
#[rate_limit("100/minute", key = ip, scope = "tokens", reserve = work.estimate, algorithm = fixed_window)]
async fn both(tokens: Reservation, Json(work): Json<Work>) -> &'static str {
    tokens.settle(work.used).await.unwrap();
    "done"
}

#[rate_limit("100/minute", key = ip, scope = "tokens", reserve = 0, algorithm = fixed_window)]
async fn tokens_left(tokens: Reservation) -> &'static str {
    tokens.settle(0).await.unwrap();
    "looked"
}

fn app(limiter: Limiter) -> Router {
    Router::new()
        .route("/both", post(both))
        .route("/tokens", post(tokens_left))
        .route("/settled", post(settled))
        .route("/indebted", post(indebted))
        .route("/streamed", post(streamed))
        // Every set of fields: both budgets, as each kind of client reads them.
        .layer(limiter.layer().headers(HeaderStyle::Both))
}

/// The same application twice: counting in memory, and in a Redis started for the test
/// (kept running while the returned server lives).
async fn servers() -> Vec<(&'static str, SocketAddr, Option<redis_server::RedisServer>)> {
    let memory = serve(app(Limiter::new())).await;
    let redis = redis_server::RedisServer::start();
    let store = ratelimit::store::RedisStore::connect(&redis.url())
        .await
        .unwrap()
        .timeout(Duration::from_secs(5));
    let limiter = Limiter::builder().store(store).build();
    let shared = serve(app(limiter)).await;
    vec![("memory", memory, None), ("redis", shared, Some(redis))]
}

fn work(estimate: u64, used: u64) -> serde_json::Value {
    json!({ "estimate": estimate, "used": used })
}

fn remaining(r: &reqwest::Response) -> u64 {
    r.headers()["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_handler_settles_and_the_over_reserved_part_comes_back() {
    for (name, addr, _server) in servers().await {
        let c = client_from("127.0.30.1");
        let url = format!("http://{addr}/settled");
        let r = c.post(&url).json(&work(64, 10)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{name}");
        // Settled before the answer: its headers describe the budget after the settlement.
        assert_eq!(remaining(&r), 90, "{name}: settled to 10: 54 back");
        assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "90");
        assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "100");
        assert_eq!(r.headers()["ratelimit-policy"], "\"tokens\";q=100;w=60");
        assert_eq!(r.text().await.unwrap(), "90");
        // An estimate of nothing is a look at the budget.
        let r = c.post(&url).json(&work(0, 0)).send().await.unwrap();
        assert_eq!(remaining(&r), 90);
        // A reservation larger than what is left is refused and reserves nothing.
        let r = c.post(&url).json(&work(91, 0)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{name}");
        let r = c.post(&url).json(&work(90, 90)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{name}");
    }
}

#[tokio::test]
async fn an_under_reserved_request_leaves_debt_that_the_next_one_waits_for() {
    for (name, addr, _server) in servers().await {
        let c = client_from("127.0.30.2");
        let url = format!("http://{addr}/indebted");
        let r = c.post(&url).json(&work(64, 100)).send().await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "the work is done: never refused"
        );
        let r = c.post(&url).json(&work(1, 1)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{name}");
        // 36 owed at 937.5 ms each and this request's own unit: 34.69 s, in whole seconds up.
        assert_eq!(r.headers()["retry-after"], "35", "{name}");
    }
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_pays_for_what_was_streamed() {
    for (name, addr, _server) in servers().await {
        let c = client_from("127.0.30.3");
        let url = format!("http://{addr}/streamed");
        let generate = json!({ "estimate": 10 + 512, "used": 0, "prompt": 10 });
        let mut r = c.post(&url).json(&generate).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{name}");
        assert_eq!(remaining(&r), 2000 - 522, "the estimate is reserved");
        let mut events = 0;
        let mut text = String::new();
        while events < 3 {
            let chunk = r.chunk().await.unwrap().expect("more events");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            events = text.matches("\n\n").count();
        }
        drop(r); // the client goes away
        // Charged the prompt and the tokens streamed before the server saw it go (3, and a
        // few in flight on a loaded machine), not the 512 reserved.
        let mut left = 0;
        for _ in 0..100 {
            let r = c.post(&url).json(&work(0, 0)).send().await.unwrap();
            left = remaining(&r);
            if left >= 2000 - 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            (2000 - 20..=2000 - 13).contains(&left),
            "{name}: {left} left"
        );
    }
}

/// Refused by its token budget: no request is charged; refused by the request limit: no
/// token is reserved.
#[tokio::test]
async fn a_refusal_by_either_budget_charges_neither() {
    for (name, addr, _server) in servers().await {
        let c = client_from("127.0.30.4");
        let both = format!("http://{addr}/both");
        let tokens = || async {
            let r = c
                .post(format!("http://{addr}/tokens"))
                .send()
                .await
                .unwrap();
            r.headers()["x-ratelimit-remaining-tokens"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        // More tokens than the budget holds: refused, and no request counted.
        let r = c.post(&both).json(&work(101, 0)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{name}");
        let r = c.post(&both).json(&work(10, 10)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{name}");
        assert_eq!(
            r.headers()["x-ratelimit-remaining-requests"],
            "1",
            "one request, not two"
        );
        assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "90");
        let r = c.post(&both).json(&work(10, 10)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{name}");
        assert_eq!(tokens().await, 80, "{name}");
        // The request limit is spent: refused, and no token reserved.
        let r = c.post(&both).json(&work(50, 0)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{name}");
        assert_eq!(tokens().await, 80, "{name}");
    }
}
