//! Clients that try to get around their limits, or to break the server, each through a real
//! server: rotated and made-up keys, huge and odd keys, spoofed forwarding chains, IPv6
//! clients rotating inside their /64, malformed bodies on every `ml_api` route, large
//! bodies sent to an exhausted route over one keep-alive connection, and a flood of long
//! keys (`adversarial_memory.rs`, a process of its own). Never a 5xx or a panic, never more
//! admitted than the limit.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use axum::Router;
use axum::http::request::Parts;
use axum::routing::post;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use ratelimit::http::{ApiKeys, ClientAddr, Identity, KeyTable, KnownKey, UnknownKey};
use ratelimit::{Limiter, Limits, rate_limit};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::apps::ml_api;
use crate::common::{client_from, serve};

async fn ml_api() -> SocketAddr {
    let config = ml_api::Config {
        redis_url: None,
        heavy: Duration::from_millis(1),
        heavy_budget_ms: 20_000,
        token_delay: Duration::ZERO,
        warmup: Duration::ZERO,
        ..Default::default()
    };
    serve(ml_api::app(&config).await.unwrap()).await
}

fn features() -> Value {
    json!({"features": [6.0, 2.7, 4.1, 1.3]})
}

/// Sends `POST /predict` with an optional API key (as raw bytes), and the status.
async fn predict_with_key(c: &reqwest::Client, addr: SocketAddr, key: Option<&[u8]>) -> u16 {
    let mut request = c.post(format!("http://{addr}/predict")).json(&features());
    if let Some(key) = key {
        request = request.header(
            "x-api-key",
            reqwest::header::HeaderValue::from_bytes(key).unwrap(),
        );
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    assert!(!status.is_server_error(), "{status}");
    if status.is_client_error() {
        assert_json_detail(response).await;
    }
    status.as_u16()
}

/// A 4xx: JSON with a `detail`.
async fn assert_json_detail(response: reqwest::Response) -> Value {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "{status} {}",
        response.url()
    );
    let body: Value = response.json().await.unwrap();
    assert!(body["detail"].is_string(), "{status}: {body}");
    body
}

#[tokio::test]
async fn made_up_api_keys_never_buy_a_fresh_budget() {
    let addr = ml_api().await;
    let c = client_from("127.0.20.1");
    let mut statuses = Vec::new();
    for i in 0..60 {
        statuses.push(predict_with_key(&c, addr, Some(format!("made-up-{i}").as_bytes())).await);
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!(admitted <= 20, "{admitted} admitted");
    assert!(statuses.iter().all(|s| [200, 401, 429].contains(s)));
    // Keys are never a budget of their own unless known: a known free key has its 20 and
    // premium its 100, each apart.
    let mut free = 0;
    while predict_with_key(&c, addr, Some(b"free-user-key")).await == 200 {
        free += 1;
    }
    assert_eq!(free, 20);
    let mut premium = 0;
    while predict_with_key(&c, addr, Some(b"premium-user-key")).await == 200 {
        premium += 1;
    }
    assert_eq!(premium, 100);
    // Without a key: the client address, at the free tier.
    let mut anonymous = 0;
    while predict_with_key(&c, addr, None).await == 200 {
        anonymous += 1;
    }
    assert_eq!(anonymous, 20);
}

#[tokio::test]
async fn an_unknown_key_is_a_401_and_odd_keys_are_unknown() {
    let addr = ml_api().await;
    let c = client_from("127.0.20.2");
    let r = c
        .post(format!("http://{addr}/predict"))
        .header("x-api-key", "nope")
        .json(&features())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(assert_json_detail(r).await["detail"], "unknown API key");
    let huge = vec![b'k'; 64 * 1024];
    for key in [&b""[..], b"\xff\xfe\x80", b"premium-user-key\x80", &huge] {
        assert_eq!(predict_with_key(&c, addr, Some(key)).await, 401, "{key:?}");
    }
}

static FIVE: LazyLock<Limits> = LazyLock::new(|| Limits::parse("5/minute").unwrap());
static KEYS: LazyLock<ApiKeys<KeyTable>> = LazyLock::new(|| {
    ApiKeys::new(KeyTable::new().with("known", KnownKey::new("acct", &FIVE)))
        .unknown(UnknownKey::CountByAddress)
});

async fn by_address_when_unknown(parts: &Parts) -> Result<Identity, ratelimit::http::Rejection> {
    KEYS.identify(parts).await
}

/// Counted by address for an unknown key: rotating keys shares the address's budget.
#[rate_limit("3/minute", key = by_address_when_unknown)]
async fn lenient() -> &'static str {
    "ok"
}

/// A key function that gives no key for every request.
fn no_key(_: &Parts) -> Option<String> {
    None
}

#[rate_limit("2/minute", key = no_key)]
async fn keyless() -> &'static str {
    "ok"
}

/// A key function built on the library's client address.
fn address_key(parts: &Parts) -> Option<String> {
    ClientAddr::of(parts).map(|addr| format!("addr:{addr}"))
}

#[rate_limit("2/minute", key = address_key)]
async fn by_address() -> &'static str {
    "ok"
}

#[rate_limit("2/minute", key = header("X-Client"))]
async fn by_header() -> &'static str {
    "ok"
}

#[rate_limit("2/minute", key = ip)]
async fn by_ip() -> &'static str {
    "ok"
}

fn app(layer: ratelimit::http::RateLimitLayer) -> Router {
    Router::new()
        .route("/lenient", post(lenient))
        .route("/keyless", post(keyless))
        .route("/by-address", post(by_address))
        .route("/by-header", post(by_header))
        .route("/by-ip", post(by_ip))
        .layer(layer)
}

async fn admitted(requests: impl IntoIterator<Item = reqwest::RequestBuilder>) -> usize {
    let mut admitted = 0;
    for request in requests {
        let response = request.send().await.unwrap();
        let status = response.status();
        assert!(!status.is_server_error(), "{status}");
        if status.is_success() {
            admitted += 1;
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            assert_json_detail(response).await;
        }
    }
    admitted
}

#[tokio::test]
async fn unknown_keys_counted_by_address_share_its_budget() {
    let addr = serve(app(Limiter::new().layer())).await;
    let c = client_from("127.0.20.3");
    let url = format!("http://{addr}/lenient");
    let rotating = (0..20).map(|i| c.post(&url).header("x-api-key", format!("k{i}")));
    assert_eq!(admitted(rotating).await, 3);
    assert_eq!(
        admitted((0..10).map(|_| c.post(&url).header("x-api-key", "known"))).await,
        5,
        "a known key: its tier, its own budget"
    );
}

#[tokio::test]
async fn none_from_a_key_function_is_each_clients_own_budget() {
    let addr = serve(app(Limiter::new().layer())).await;
    let url = format!("http://{addr}/keyless");
    for client in ["127.0.20.4", "127.0.20.5"] {
        let c = client_from(client);
        assert_eq!(admitted((0..5).map(|_| c.post(&url))).await, 2, "{client}");
    }
}

#[tokio::test]
async fn a_key_function_sees_the_forwarded_client_behind_a_trusted_proxy() {
    let layer = Limiter::new().layer().trusted_proxies(["127.0.0.0/8"]);
    let addr = serve(app(layer)).await;
    let proxy = client_from("127.0.20.6");
    let url = format!("http://{addr}/by-address");
    let from = |client: &'static str| {
        proxy
            .post(&url)
            .header("x-forwarded-for", format!("{client}, 127.0.0.9"))
    };
    assert_eq!(admitted((0..4).map(|_| from("198.51.100.1"))).await, 2);
    assert_eq!(
        admitted((0..4).map(|_| from("198.51.100.2"))).await,
        2,
        "another client behind the same proxy"
    );
}

#[tokio::test]
async fn spoofed_and_long_forwarding_chains_do_not_escape() {
    // No trusted proxy: forwarding headers are ignored, whatever they say.
    let addr = serve(app(Limiter::new().layer())).await;
    let c = client_from("127.0.20.7");
    let url = format!("http://{addr}/by-ip");
    let spoofed = (0..10).map(|i| {
        c.post(&url)
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .header("forwarded", format!("for=198.51.100.{i}"))
            .header("x-real-ip", format!("192.0.2.{i}"))
    });
    assert_eq!(admitted(spoofed).await, 2);

    // Behind a trusted proxy, the client rotates what it puts left of its own address, and
    // sends chains of thousands of hops: the right-most untrusted hop is still the client.
    let layer = Limiter::new().layer().trusted_proxies(["127.0.0.0/8"]);
    let addr = serve(app(layer)).await;
    let proxy = client_from("127.0.20.8");
    let url = format!("http://{addr}/by-ip");
    let long: String = (0..2_000)
        .map(|i| format!("10.{}.{}.1, ", i / 256, i % 256))
        .collect();
    let chains = (0..10).map(|i| {
        proxy.post(&url).header(
            "x-forwarded-for",
            format!("{long}6.6.6.{i}, garbage{i}, 203.0.113.50, 127.0.0.2"),
        )
    });
    assert_eq!(admitted(chains).await, 2);
    let garbage = (0..4).map(|i| {
        proxy
            .post(&url)
            .header("x-forwarded-for", format!("not an address {i}"))
    });
    assert_eq!(
        admitted(garbage).await,
        2,
        "unparsable: the proxy stands for the client"
    );
}

#[tokio::test]
async fn ipv6_clients_rotating_inside_one_64_are_one_client() {
    let layer = Limiter::new().layer().trusted_proxies(["127.0.0.0/8"]);
    let addr = serve(app(layer)).await;
    let proxy = client_from("127.0.20.9");
    for route in ["by-ip", "by-address"] {
        let url = format!("http://{addr}/{route}");
        let rotating = (0..10).map(|i| {
            proxy
                .post(&url)
                .header("x-forwarded-for", format!("2001:db8:7:7:{i:x}::{i:x}"))
        });
        assert_eq!(admitted(rotating).await, 2, "{route}");
        let next = (0..3).map(|_| {
            proxy
                .post(&url)
                .header("x-forwarded-for", "2001:db8:7:8::1")
        });
        assert_eq!(
            admitted(next).await,
            2,
            "{route}: the next /64 is another client"
        );
    }
}

#[tokio::test]
async fn header_keys_of_any_bytes_and_length_are_counted_not_crashed() {
    let addr = serve(app(Limiter::new().layer())).await;
    let c = client_from("127.0.20.10");
    let url = format!("http://{addr}/by-header");
    let huge = "h".repeat(64 * 1024);
    let keys: [&[u8]; 4] = [
        b"",
        b"\xff\x00\x01"[..1].as_ref(),
        b"\x80\x81",
        huge.as_bytes(),
    ];
    for key in keys {
        let value = reqwest::header::HeaderValue::from_bytes(key).unwrap();
        let requests = (0..4).map(|_| c.post(&url).header("x-client", value.clone()));
        assert_eq!(admitted(requests).await, 2, "{} bytes", key.len());
    }
}

/// The raw answer to one request on `stream`: status and headers (lower case), body read.
async fn exchange(
    stream: &mut BufReader<TcpStream>,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<String>)> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // One write: a server that answers early finds the whole request sent.
    let request = [head.as_bytes(), body].concat();
    stream.get_mut().write_all(&request).await?;
    let mut status_line = String::new();
    stream.read_line(&mut status_line).await?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("status line {status_line:?}")))?;
    let mut headers = Vec::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        headers.push(line);
    }
    let mut answer = vec![0; length];
    stream.read_exact(&mut answer).await?;
    Ok((status, headers))
}

#[tokio::test]
async fn large_bodies_refused_on_one_keep_alive_connection_never_break_it() {
    let addr = ml_api().await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.20.11:0".parse().unwrap()).unwrap();
    let mut stream = BufReader::new(socket.connect(addr).await.unwrap());
    let small = serde_json::to_vec(&json!([features()])).unwrap();
    for _ in 0..2 {
        let (status, _) = exchange(&mut stream, "/models/batch-process", &small)
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    // 100 KB bodies the server never parses (the route is exhausted) on the same connection.
    let large = vec![b' '; 100_000];
    let mut refused = 0;
    for i in 0..200 {
        let (status, headers) = exchange(&mut stream, "/models/batch-process", &large)
            .await
            .unwrap_or_else(|error| panic!("request {i}: {error}"));
        assert_eq!(status, 429, "request {i}");
        assert!(
            !headers.iter().any(|h| h == "connection: close"),
            "{headers:?}"
        );
        refused += 1;
    }
    assert_eq!(refused, 200);
}

#[tokio::test]
async fn a_body_past_the_drain_bound_closes_the_connection_cleanly() {
    let layer = Limiter::new()
        .layer()
        .drain_unread_bodies(1024, Duration::from_secs(1));
    let addr = serve(app(layer)).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.20.12:0".parse().unwrap()).unwrap();
    let mut stream = BufReader::new(socket.connect(addr).await.unwrap());
    for _ in 0..2 {
        assert_eq!(exchange(&mut stream, "/by-ip", b"{}").await.unwrap().0, 200);
    }
    // Past the bound (and past the 4 KiB that hyper drains by itself).
    let (status, headers) = exchange(&mut stream, "/by-ip", &[b' '; 6 * 1024])
        .await
        .unwrap();
    assert_eq!(status, 429);
    assert!(
        headers.iter().any(|h| h == "connection: close"),
        "{headers:?}"
    );
    // Within the bound the connection stays.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.20.12:0".parse().unwrap()).unwrap();
    let mut stream = BufReader::new(socket.connect(addr).await.unwrap());
    for _ in 0..5 {
        let (status, headers) = exchange(&mut stream, "/by-ip", &[b' '; 1000])
            .await
            .unwrap();
        assert_eq!(status, 429);
        assert!(!headers.iter().any(|h| h == "connection: close"));
    }
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(50), stream.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_body_that_stalls_is_answered_at_the_deadline_with_connection_close() {
    let layer = Limiter::new()
        .layer()
        .drain_unread_bodies(1024 * 1024, Duration::from_millis(200));
    let addr = serve(app(layer)).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.20.14:0".parse().unwrap()).unwrap();
    let mut stream = BufReader::new(socket.connect(addr).await.unwrap());
    for _ in 0..2 {
        assert_eq!(exchange(&mut stream, "/by-ip", b"{}").await.unwrap().0, 200);
    }
    // 10 KB of a promised 100 KB, then nothing: the answer comes at the deadline.
    let head = "POST /by-ip HTTP/1.1\r\nhost: test\r\ncontent-length: 100000\r\n\r\n";
    let request = [head.as_bytes(), &[b' '; 10_000]].concat();
    stream.get_mut().write_all(&request).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 429"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(150));
}

/// Bodies that are not what a route takes: malformed JSON, wrong shapes and types, odd
/// numbers, made by proptest from a fixed seed.
fn malformed_bodies(count: usize) -> Vec<Vec<u8>> {
    let json_ish = proptest::string::string_regex(r#"[\[\]{}",:0-9a-z.eE+\- \\]{0,40}"#).unwrap();
    let shapes = proptest::prop_oneof![
        json_ish.prop_map(String::into_bytes),
        proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        proptest::collection::vec(proptest::num::f64::ANY, 0..8).prop_map(|xs| {
            let xs: Vec<String> = xs.iter().map(|x| format!("{x:e}")).collect();
            format!(r#"{{"features": [{}]}}"#, xs.join(",")).into_bytes()
        }),
        proptest::prop_oneof![
            proptest::strategy::Just(r#"{"features": "abc"}"#),
            proptest::strategy::Just(r#"{"feature": [1, 2, 3, 4]}"#),
            proptest::strategy::Just(r#"[{"features": [1, 2, 3, 4]}, 7]"#),
            proptest::strategy::Just(r#"{"features": [1e999, 2, 3, 4]}"#),
            proptest::strategy::Just(r#"{"features": [null, 2, 3, 4]}"#),
            proptest::strategy::Just(
                r#"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"#
            ),
        ]
        .prop_map(|s| s.as_bytes().to_vec()),
    ];
    let mut runner = TestRunner::deterministic();
    (0..count)
        .map(|_| shapes.new_tree(&mut runner).unwrap().current())
        .collect()
}

#[tokio::test]
async fn malformed_bodies_on_every_route_are_json_4xx_never_5xx() {
    let routes = [
        ("/models/lightweight/predict", 100),
        ("/models/heavy/predict", 10),
        ("/models/batch-process", 2),
        ("/predict", 20),
        ("/predict/batch", 50),
    ];
    let bodies = malformed_bodies(120);
    let addr = ml_api().await;
    for (i, (route, limit)) in routes.into_iter().enumerate() {
        let c = client_from(&format!("127.0.21.{}", i + 1));
        let mut admitted = 0;
        for body in &bodies {
            let r = c
                .post(format!("http://{addr}{route}"))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = r.status();
            assert!(
                !status.is_server_error(),
                "{route} {status} for {:?}",
                String::from_utf8_lossy(body)
            );
            if status.is_success() {
                admitted += 1;
            } else {
                assert_json_detail(r).await;
            }
        }
        assert!(admitted <= limit, "{route}: {admitted} admitted");
    }
}

#[tokio::test]
async fn every_4xx_of_ml_api_is_json_with_a_detail() {
    let addr = ml_api().await;
    let routes = [
        "/models/lightweight/predict",
        "/models/heavy/predict",
        "/models/batch-process",
        "/predict",
        "/predict/batch",
    ];
    for (i, route) in routes.into_iter().enumerate() {
        let batch = route.contains("batch");
        // A client per case: the batch route's 2 per 5 minutes would refuse the later ones.
        let c: Vec<reqwest::Client> = (0..4)
            .map(|j| client_from(&format!("127.0.{}.{}", 22 + j, i + 1)))
            .collect();
        let url = format!("http://{addr}{route}");
        let missing = if batch { json!([{}]) } else { json!({}) };
        let wrong_type = if batch {
            json!([{"features": "four"}])
        } else {
            json!({"features": "four"})
        };
        let oversized = vec![b' '; ml_api::BATCH_BODY_LIMIT + 1];
        let cases: [(&str, reqwest::RequestBuilder, StatusCode); 4] = [
            (
                "missing field",
                c[0].post(&url).json(&missing),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                "wrong type",
                c[1].post(&url).json(&wrong_type),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                "wrong content type",
                c[2].post(&url)
                    .header("content-type", "text/plain")
                    .body("features=1,2,3,4"),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                "oversized body",
                c[3].post(&url)
                    .header("content-type", "application/json")
                    .body(oversized),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
        ];
        for (case, request, expected) in cases {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), expected, "{route}: {case}");
            assert_json_detail(r).await;
        }
    }
    let c = client_from("127.0.26.1");
    let r = c
        .get(format!("http://{addr}/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_json_detail(r).await;
    let r = c
        .get(format!("http://{addr}/predict"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_json_detail(r).await;
}
