//! A route's capacity across clients (`capacity =`) and the bounded wait (`queue =`), over
//! real HTTP: fair share, round robin, priority, hang-ups, the 503 of an overloaded server,
//! and the same wait for `concurrency` slots. Handlers block on a gate the test opens, so
//! what is admitted when is decided by the test, not by timing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Extension};
use axum::http::request::Parts;
use axum::routing::post;
use axum::{Json, Router};
use ratelimit::http::LimitsRef;
use ratelimit::observe::Metrics;
use ratelimit::{Limiter, Limits, Priority, rate_limit};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::common::{client_from, remaining, serve};

/// What the handlers share with the test: a gate each handler passes once (the test adds
/// permits), and the order in which clients got in.
#[derive(Clone)]
struct Gate {
    permits: Arc<Semaphore>,
    entered: Arc<Mutex<Vec<String>>>,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(0)),
            entered: Arc::new(Mutex::new(Vec::new())),
        }
    }

    async fn pass(&self, who: SocketAddr) {
        self.entered.lock().unwrap().push(who.ip().to_string());
        self.permits.acquire().await.unwrap().forget();
    }

    fn entered(&self) -> Vec<String> {
        self.entered.lock().unwrap().clone()
    }

    fn open(&self, n: usize) {
        self.permits.add_permits(n);
    }
}

#[rate_limit("1000/minute", capacity = 4, queue = "10s")]
async fn four_at_once(
    ConnectInfo(who): ConnectInfo<SocketAddr>,
    Extension(gate): Extension<Gate>,
) -> &'static str {
    gate.pass(who).await;
    "ok"
}

#[rate_limit("1000/minute", capacity = 1, queue = "10s")]
async fn one_at_once(
    ConnectInfo(who): ConnectInfo<SocketAddr>,
    Extension(gate): Extension<Gate>,
) -> &'static str {
    gate.pass(who).await;
    "ok"
}

#[rate_limit("5/minute", capacity = 1, queue = "300ms")]
async fn short_wait(
    ConnectInfo(who): ConnectInfo<SocketAddr>,
    Extension(gate): Extension<Gate>,
) -> &'static str {
    gate.pass(who).await;
    "ok"
}

/// Premium callers (`X-Tier: premium`) first.
fn tiered(parts: &Parts) -> LimitsRef {
    let limits = Limits::parse("1000/minute").unwrap();
    LimitsRef::Owned(match parts.headers.get("x-tier") {
        Some(tier) if tier == "premium" => limits.with_priority(Priority::High),
        _ => limits,
    })
}

#[rate_limit(tiered, capacity = 1, queue = "10s")]
async fn by_tier(
    ConnectInfo(who): ConnectInfo<SocketAddr>,
    Extension(gate): Extension<Gate>,
) -> &'static str {
    gate.pass(who).await;
    "ok"
}

/// A cost from the body and a capacity: the check runs after the body is read.
#[rate_limit("1000/minute", cost = items.len(), capacity = 1, queue = "10s")]
async fn costed(
    ConnectInfo(who): ConnectInfo<SocketAddr>,
    Extension(gate): Extension<Gate>,
    Json(items): Json<Vec<u32>>,
) -> &'static str {
    gate.pass(who).await;
    "ok"
}

#[rate_limit("1000/minute", concurrency = 1, queue = "5s")]
async fn one_per_client(
    ConnectInfo(who): ConnectInfo<SocketAddr>,
    Extension(gate): Extension<Gate>,
) -> &'static str {
    gate.pass(who).await;
    "ok"
}

struct Server {
    addr: SocketAddr,
    limiter: Limiter,
    metrics: Metrics,
    gate: Gate,
}

async fn server() -> Server {
    let metrics = Metrics::new();
    let limiter = Limiter::builder().observer(metrics.clone()).build();
    let gate = Gate::new();
    let app = Router::new()
        .route("/four", post(four_at_once))
        .route("/one", post(one_at_once))
        .route("/short", post(short_wait))
        .route("/tier", post(by_tier))
        .route("/costed", post(costed))
        .route("/per-client", post(one_per_client))
        .route("/metrics", ratelimit::http::metrics_json(metrics.clone()))
        .layer(Extension(gate.clone()))
        .layer(limiter.layer());
    Server {
        addr: serve(app).await,
        limiter,
        metrics,
        gate,
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs from `from` in the background.
    fn send(&self, from: &str, path: &str) -> tokio::task::JoinHandle<reqwest::Response> {
        self.send_with(client_from(from).post(self.url(path)).json(&[1, 2, 3]))
    }

    fn send_with(
        &self,
        request: reqwest::RequestBuilder,
    ) -> tokio::task::JoinHandle<reqwest::Response> {
        tokio::spawn(async move { request.send().await.unwrap() })
    }

    /// Waits until the capacity of `route` holds `in_flight` and `queued`.
    async fn until(&self, route: &str, in_flight: u32, queued: u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = self.limiter.capacity(route).unwrap_or_default();
            if stats.in_flight == in_flight && stats.queued == queued {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{route}: {stats:?}, expected {in_flight} in flight and {queued} queued"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `n` requests have entered handlers.
    async fn entered(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let entered = self.gate.entered();
            if entered.len() >= n {
                return entered;
            }
            assert!(Instant::now() < deadline, "{entered:?}: expected {n}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn a_client_with_one_request_is_served_before_a_client_with_twenty() {
    let s = server().await;
    // 20 in flight: 4 in the model, 16 waiting (a client's whole queue).
    let greedy: Vec<_> = (0..20).map(|_| s.send("127.0.10.1", "/four")).collect();
    s.until("/four", 4, 16).await;
    let modest = s.send("127.0.10.2", "/four");
    s.until("/four", 4, 17).await;
    // One of the greedy client's requests completes: with two clients the share is two
    // each, and the greedy one still holds three, so the slot goes to the modest client
    // whatever came first.
    s.gate.open(1);
    let entered = s.entered(5).await;
    assert_eq!(entered[4], "127.0.10.2", "{entered:?}");
    s.gate.open(100);
    assert_eq!(modest.await.unwrap().status(), StatusCode::OK);
    for r in greedy {
        assert_eq!(r.await.unwrap().status(), StatusCode::OK);
    }
    s.until("/four", 0, 0).await;
    let stats = s.limiter.capacity("/four").unwrap();
    assert_eq!((stats.admitted, stats.shed, stats.clients), (21, 0, 0));
}

#[tokio::test]
async fn waiting_clients_are_served_in_turn() {
    let s = server().await;
    let first = s.send("127.0.10.3", "/one");
    s.until("/one", 1, 0).await;
    // Three clients queue, the first of them three times.
    let mut waiting = Vec::new();
    for from in [
        "127.0.10.4",
        "127.0.10.4",
        "127.0.10.4",
        "127.0.10.5",
        "127.0.10.6",
    ] {
        waiting.push(s.send(from, "/one"));
        s.until("/one", 1, waiting.len() as u32).await;
    }
    s.gate.open(100);
    for r in waiting {
        assert_eq!(r.await.unwrap().status(), StatusCode::OK);
    }
    first.await.unwrap();
    let entered = s.gate.entered();
    assert_eq!(
        entered[1..4],
        ["127.0.10.4", "127.0.10.5", "127.0.10.6"],
        "round robin, not first come first served: {entered:?}"
    );
}

#[tokio::test]
async fn a_waiter_that_hangs_up_leaves_the_queue_and_takes_nothing() {
    let s = server().await;
    let holder = s.send("127.0.10.7", "/short");
    s.until("/short", 1, 0).await;
    // `/short` allows 5 a minute: the impatient client hangs up four times while waiting.
    let impatient = reqwest::Client::builder()
        .local_address("127.0.10.8".parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    for _ in 0..4 {
        let gone = impatient.post(s.url("/short")).send().await;
        assert!(gone.unwrap_err().is_timeout());
        s.until("/short", 1, 0).await; // out of the queue at once, holding nothing
    }
    s.gate.open(1);
    assert_eq!(holder.await.unwrap().status(), StatusCode::OK);
    s.until("/short", 0, 0).await;
    // Its rate was given back each time: 5 of 5 left, and its first request is admitted.
    s.gate.open(1);
    let r = client_from("127.0.10.8")
        .post(s.url("/short"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(remaining(&r), "4");
    let stats = s.limiter.capacity("/short").unwrap();
    assert_eq!((stats.admitted, stats.waited, stats.in_flight), (2, 0, 0));
}

#[tokio::test]
async fn a_wait_past_the_bound_is_a_503_with_retry_after_and_costs_no_rate() {
    let s = server().await;
    let holder = s.send("127.0.10.9", "/short");
    s.until("/short", 1, 0).await;
    let started = Instant::now();
    let r = client_from("127.0.10.10")
        .post(s.url("/short"))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(waited >= Duration::from_millis(290), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.starts_with("The server is overloaded"), "{detail}");
    s.gate.open(2);
    holder.await.unwrap();
    // The shed request's rate came back: 5 of 5 before this one.
    let r = client_from("127.0.10.10")
        .post(s.url("/short"))
        .send()
        .await
        .unwrap();
    assert_eq!(remaining(&r), "4");
    // Counted as overloaded, not as admitted.
    let seen = s.metrics.snapshot();
    let short = seen.routes["/short"];
    assert_eq!((short.allowed, short.overloaded), (2, 1), "{short:?}");
    let json: Value = client_from("127.0.10.10")
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["endpoints"]["/short"]["rejected"]["overloaded"], 1);
    assert_eq!(json["capacity"]["/short"]["limit"], 1);
    assert_eq!(json["capacity"]["/short"]["shed"], 1);
    assert!(
        s.metrics
            .prometheus()
            .contains("ratelimit_capacity_limit{route=\"/short\"} 1")
    );
}

#[tokio::test]
async fn a_higher_priority_leaves_the_queue_first() {
    let s = server().await;
    let holder = s.send("127.0.10.11", "/tier");
    s.until("/tier", 1, 0).await;
    let normal = s.send("127.0.10.12", "/tier");
    s.until("/tier", 1, 1).await;
    let premium = s.send_with(
        client_from("127.0.10.13")
            .post(s.url("/tier"))
            .header("x-tier", "premium"),
    );
    s.until("/tier", 1, 2).await;
    s.gate.open(1);
    let entered = s.entered(2).await;
    assert_eq!(entered[1], "127.0.10.13", "{entered:?}");
    s.gate.open(10);
    for r in [holder, normal, premium] {
        assert_eq!(r.await.unwrap().status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_cost_from_the_body_and_a_capacity_give_the_capacity_back_on_hang_up() {
    let s = server().await;
    let impatient = reqwest::Client::builder()
        .local_address("127.0.10.14".parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    // In the handler when it hangs up.
    let gone = impatient.post(s.url("/costed")).json(&[1, 2]).send().await;
    assert!(gone.unwrap_err().is_timeout());
    s.until("/costed", 0, 0).await;
    s.gate.open(1);
    let r = client_from("127.0.10.15")
        .post(s.url("/costed"))
        .json(&[1, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(remaining(&r), "997");
}

#[tokio::test]
async fn a_concurrency_slot_can_be_waited_for() {
    let s = server().await;
    let first = s.send("127.0.10.16", "/per-client");
    s.entered(1).await;
    // The client's second request waits for its one slot rather than a 429.
    let second = s.send("127.0.10.16", "/per-client");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.gate.entered().len(), 1);
    s.gate.open(1);
    assert_eq!(first.await.unwrap().status(), StatusCode::OK);
    s.entered(2).await;
    s.gate.open(1);
    assert_eq!(second.await.unwrap().status(), StatusCode::OK);
}
