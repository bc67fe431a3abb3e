//! The `redis` example and the Redis store under HTTP, against `redis-server` processes the
//! tests start themselves: instances share one limit, and losing Redis costs no request.

#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use ratelimit::store::{FailurePolicy, RedisStore};
use ratelimit::{Limiter, rate_limit};
use serde_json::{Value, json};

use crate::apps::ml_api;
use crate::apps::redis as example;
use crate::common::{client_from, remaining, serve};
use crate::redis_server::{RedisServer, free_port};
use crate::redis_stats;

fn input() -> Value {
    json!({"features": [1.0, 2.0, 3.0], "model_version": "v2"})
}

/// POSTs one prediction input to `/predict` of the server at `addr`.
async fn predict(client: &reqwest::Client, addr: std::net::SocketAddr) -> reqwest::Response {
    client
        .post(format!("http://{addr}/predict"))
        .json(&input())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn two_instances_share_one_limit() {
    let server = RedisServer::start();
    let a = serve(example::app(&server.url()).await.unwrap()).await;
    let b = serve(example::app(&server.url()).await.unwrap()).await;
    let client = client_from("127.0.6.1");
    let mut admitted = 0;
    for i in 0..30 {
        let instance = if i % 2 == 0 { a } else { b };
        let r = predict(&client, instance).await;
        if r.status() == 200 {
            admitted += 1;
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["model_version"], "v2");
            assert!(body["prediction"].as_f64().unwrap() > 0.5);
        } else {
            assert_eq!(r.status(), 429);
        }
    }
    assert_eq!(
        admitted, 20,
        "20/minute across both instances, not per instance"
    );
    // The batch endpoint: 5 per 5 minutes.
    let url = format!("http://{a}/predict/batch");
    let mut codes = Vec::new();
    for _ in 0..6 {
        let r = client
            .post(&url)
            .json(&json!([input(), input()]))
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    assert_eq!(codes, [200, 200, 200, 200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_mid_load_costs_no_request() {
    let server = RedisServer::start();
    let addr = serve(example::app(&server.url()).await.unwrap()).await;
    let mut server = Some(server);
    let mut slowest = Duration::ZERO;
    for i in 0..60 {
        if i == 20 {
            drop(server.take());
        }
        // A client of its own each time: the limit is 20/minute per address.
        let client = client_from(&format!("127.0.7.{}", i + 1));
        let started = Instant::now();
        let r = predict(&client, addr).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(r.status(), 200, "request {i}");
    }
    assert!(slowest < Duration::from_secs(1), "slowest {slowest:?}");
}

#[tokio::test]
async fn it_starts_and_limits_when_redis_is_down() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let addr = serve(example::app(&url).await.unwrap()).await;
    let client = client_from("127.0.6.2");
    let mut codes = Vec::new();
    for _ in 0..21 {
        let r = predict(&client, addr).await;
        codes.push(r.status().as_u16());
    }
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 20);
    assert_eq!(codes[20], 429, "the in-memory fallback still limits");
}

#[rate_limit("5/minute", key = ip)]
async fn guarded() -> &'static str {
    "ok"
}

#[tokio::test]
async fn failing_closed_answers_503_json() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let store = RedisStore::connect(&url)
        .await
        .unwrap()
        .on_failure(FailurePolicy::FailClosed);
    let limiter = Limiter::builder().store(store).build();
    let app = Router::new()
        .route("/g", post(guarded))
        .layer(limiter.layer());
    let addr = serve(app).await;
    let r = client_from("127.0.6.3")
        .post(format!("http://{addr}/g"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"detail": "Rate limiting is unavailable; try again shortly"})
    );
}

#[rate_limit("100/minute", key = ip, concurrency = 1)]
async fn one_at_a_time() -> &'static str {
    "ok"
}

/// Signalled when `/hold` has been admitted; `/hold` answers once `RELEASE` is signalled.
static HOLDING: tokio::sync::Notify = tokio::sync::Notify::const_new();
static RELEASE: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[rate_limit("100/minute", key = ip, concurrency = 1)]
async fn hold() -> &'static str {
    HOLDING.notify_one();
    RELEASE.notified().await;
    "ok"
}

type Calls = std::collections::BTreeMap<String, u64>;

/// How many more times Redis ran `name` in `after` than in `before`.
fn more(before: &Calls, after: &Calls, name: &str) -> u64 {
    after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
}

/// Redis's counts once it has run `releases` more `ZREM`s than in `before` (a slot is given
/// back in the background once its handler ends), for at most five seconds.
async fn after_releases(url: &str, before: &Calls, releases: u64) -> Calls {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = redis_stats::calls(url).await;
        if more(before, &now, "zrem") >= releases || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `concurrency = N` beside the key's rates: each request is one script call (the slot and
/// the rates together), and one `ZREM` giving the slot back after the handler, off the
/// request's path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_route_sends_one_command_per_request() {
    let server = RedisServer::start();
    let url = server.url();
    let store = RedisStore::connect(&url)
        .await
        .unwrap()
        .timeout(Duration::from_secs(10));
    let limiter = Limiter::builder().store(store).build();
    let app = Router::new()
        .route("/one", post(one_at_a_time))
        .route("/hold", post(hold))
        .layer(limiter.layer());
    let addr = serve(app).await;
    let client = client_from("127.0.6.4");
    let send = |path: &'static str| client.post(format!("http://{addr}{path}")).send();
    // Loads the script, so that every call below is one EVALSHA.
    assert_eq!(send("/one").await.unwrap().status(), 200);
    let empty = Calls::new();
    let before = after_releases(&url, &empty, 1).await;

    let sent = 20;
    for _ in 0..sent {
        assert_eq!(send("/one").await.unwrap().status(), 200);
    }
    let after = after_releases(&url, &before, sent).await;
    let scripts = more(&before, &after, "evalsha") + more(&before, &after, "eval");
    assert_eq!(scripts, sent, "one script call per request: {after:?}");
    assert_eq!(more(&before, &after, "zrem"), sent, "one release each");
    assert_eq!(more(&before, &after, "script"), 0);

    // A second request while the first holds the slot: refused in one call, charged nothing.
    let before = after;
    let first = tokio::spawn(send("/hold"));
    HOLDING.notified().await;
    let second = send("/hold").await.unwrap();
    assert_eq!(second.status(), 429);
    let during = redis_stats::calls(&url).await;
    let scripts = more(&before, &during, "evalsha") + more(&before, &during, "eval");
    assert_eq!(scripts, 2, "one call each: {during:?}");
    assert_eq!(more(&before, &during, "zrem"), 0, "the slot is still held");
    RELEASE.notify_one();
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    let after = after_releases(&url, &before, 1).await;
    assert_eq!(
        more(&before, &after, "zrem"),
        1,
        "only the admitted one held a slot"
    );
    // The refused one was charged nothing: 100/minute, one admitted before this one.
    RELEASE.notify_one();
    let third = send("/hold").await.unwrap();
    assert_eq!(third.status(), 200);
    assert_eq!(remaining(&third), "98");
}

fn features() -> Value {
    json!({"features": [6.0, 2.7, 4.1, 1.3]})
}

async fn ml_api_on(url: &str, heavy_ms: u64, warmup: Duration) -> std::net::SocketAddr {
    let config = ml_api::Config {
        redis_url: Some(url.to_owned()),
        heavy: Duration::from_millis(heavy_ms),
        heavy_budget_ms: 20_000,
        token_delay: Duration::ZERO,
        warmup,
        ..Default::default()
    };
    serve(ml_api::app(&config).await.unwrap()).await
}

/// Two `ml_api` instances on one Redis: one tier budget, one set of inference slots, and the
/// warm-up scale of a newly started instance applies to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ml_api_instances_share_tiers_slots_and_the_warm_up_scale() {
    let server = RedisServer::start();
    let a = ml_api_on(&server.url(), 4000, Duration::ZERO).await;
    let b = ml_api_on(&server.url(), 4000, Duration::ZERO).await;
    let client = client_from("127.0.6.20");
    // The free tier's 20 per minute, across both instances.
    let mut admitted = 0;
    for i in 0..30 {
        let r = client
            .post(format!("http://{}/predict", if i % 2 == 0 { a } else { b }))
            .header("x-api-key", "free-user-key")
            .json(&features())
            .send()
            .await
            .unwrap();
        admitted += usize::from(r.status() == 200);
    }
    assert_eq!(admitted, 20);
    // Two heavy slots per client in all: one taken on each instance; a third and a fourth
    // wait their 2 s (`queue = "2s"`) while both still run, and are refused.
    let heavy = |addr: std::net::SocketAddr| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .post(format!("http://{addr}/models/heavy/predict"))
                .json(&features())
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let (first, second) = (heavy(a), heavy(b));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (third, fourth) = (heavy(a), heavy(b));
    assert_eq!(third.await.unwrap(), 429);
    assert_eq!(fourth.await.unwrap(), 429);
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(second.await.unwrap(), 200);
    // A third instance starts and warms up: every instance runs at 1/5 until it is ready.
    let _c = ml_api_on(&server.url(), 10, Duration::from_secs(30)).await;
    let other = client_from("127.0.6.21");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = other
            .post(format!("http://{a}/models/lightweight/predict"))
            .json(&features())
            .send()
            .await
            .unwrap();
        if r.headers()["x-ratelimit-limit"] == "20" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "instance a never followed the warm-up scale"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
