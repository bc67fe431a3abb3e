//! The `ml_api` example over real HTTP: a real model behind per-model limits, tiers by API
//! key, cost by batch size, inference slots, warm-up scaling, metrics and quiet logs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ml_api::{Config, app};
use ratelimit::CapacityLimit;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::apps::ml_api;
use crate::common::{client_from, serve};

const SETOSA: [f64; 4] = [5.1, 3.5, 1.4, 0.2];
const VERSICOLOR: [f64; 4] = [6.0, 2.7, 4.1, 1.3];
const VIRGINICA: [f64; 4] = [7.7, 3.0, 6.1, 2.3];

fn config() -> Config {
    Config {
        redis_url: None,
        heavy: Duration::from_millis(10),
        heavy_budget_ms: 20_000,
        token_delay: Duration::from_millis(5),
        warmup: Duration::ZERO,
        ..Default::default()
    }
}

async fn start(config: Config) -> SocketAddr {
    serve(app(&config).await.unwrap()).await
}

async fn post(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    body: &Value,
) -> reqwest::Response {
    client
        .post(format!("http://{addr}{path}"))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn input(features: [f64; 4]) -> Value {
    json!({ "features": features })
}

/// The JSON `GET path` answers.
async fn get_json(client: &reqwest::Client, addr: SocketAddr, path: &str) -> Value {
    client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A heavy prediction, sent in the background: it holds a slot while it runs.
fn heavy_in_background(
    client: &reqwest::Client,
    addr: SocketAddr,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let client = client.clone();
    tokio::spawn(async move { post(&client, addr, "/models/heavy/predict", &input(SETOSA)).await })
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers()[name].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_model_answers_from_the_features() {
    let addr = start(config()).await;
    let client = client_from("127.0.8.1");
    let mut species = Vec::new();
    for features in [SETOSA, VERSICOLOR, VIRGINICA] {
        let r = post(
            &client,
            addr,
            "/models/lightweight/predict",
            &input(features),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        let answer: Value = r.json().await.unwrap();
        let p = answer["probability"].as_f64().unwrap();
        assert!(p > 0.5 && p < 1.0, "{answer}");
        let total: f64 = answer["probabilities"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "{answer}");
        species.push(answer["prediction"].as_str().unwrap().to_owned());
    }
    assert_eq!(species, ["setosa", "versicolor", "virginica"]);
}

#[tokio::test]
async fn a_wrong_number_of_features_is_a_clear_422() {
    let addr = start(config()).await;
    let client = client_from("127.0.8.2");
    for path in [
        "/models/lightweight/predict",
        "/models/heavy/predict",
        "/predict",
    ] {
        let r = post(&client, addr, path, &json!({"features": [1.0, 2.0, 3.0]})).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["detail"],
            "expected 4 features (sepal length (cm), sepal width (cm), petal length (cm), petal width (cm)), got 3"
        );
    }
    let batch = json!([input(SETOSA), {"features": [1.0]}]);
    let r = post(&client, addr, "/predict/batch", &batch).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("input 1: expected 4 features")
    );
}

#[tokio::test]
async fn each_model_has_its_own_limit() {
    let addr = start(config()).await;
    let client = client_from("127.0.8.3");
    for i in 1..=100 {
        let r = post(&client, addr, "/models/lightweight/predict", &input(SETOSA)).await;
        assert_eq!(r.status(), StatusCode::OK, "lightweight {i}");
    }
    let r = post(&client, addr, "/models/lightweight/predict", &input(SETOSA)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["detail"], "Rate limit exceeded: 100 per 1 minute");
    // The heavy model's budget is its own: 10.
    for i in 1..=10 {
        let r = post(&client, addr, "/models/heavy/predict", &input(SETOSA)).await;
        assert_eq!(r.status(), StatusCode::OK, "heavy {i}");
        assert_eq!(header(&r, "x-ratelimit-limit"), "10");
    }
    let r = post(&client, addr, "/models/heavy/predict", &input(SETOSA)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Batch processing: 2 per 5 minutes.
    let batch = json!([input(SETOSA), input(VIRGINICA)]);
    for _ in 0..2 {
        let r = post(&client, addr, "/models/batch-process", &batch).await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["results"][1]["prediction"], "virginica");
    }
    let r = post(&client, addr, "/models/batch-process", &batch).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=300).contains(&retry), "retry-after {retry}");
    // Model info is never limited.
    for _ in 0..150 {
        let r = client
            .get(format!("http://{addr}/model-info"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}

async fn predict_as(
    client: &reqwest::Client,
    addr: SocketAddr,
    api_key: Option<&str>,
) -> reqwest::Response {
    let mut request = client
        .post(format!("http://{addr}/predict"))
        .json(&input(VERSICOLOR));
    if let Some(key) = api_key {
        request = request.header("x-api-key", key);
    }
    request.send().await.unwrap()
}

/// The Python this is modelled on multiplied a shared limiter's limit by 5 on every premium
/// call: one premium user lifted everyone's limit, for ever. Here a premium call changes
/// nothing shared.
#[tokio::test]
async fn a_premium_call_leaves_a_free_callers_limit_at_20() {
    let addr = start(config()).await;
    let client = client_from("127.0.8.4");
    let r = predict_as(&client, addr, Some("free-user-key")).await;
    assert_eq!(header(&r, "x-ratelimit-limit"), "20");
    for _ in 0..30 {
        let r = predict_as(&client, addr, Some("premium-user-key")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "x-ratelimit-limit"), "100");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["tier"], "premium");
    }
    let mut admitted = 1;
    loop {
        let r = predict_as(&client, addr, Some("free-user-key")).await;
        assert_eq!(header(&r, "x-ratelimit-limit"), "20");
        if r.status() != StatusCode::OK {
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
            break;
        }
        admitted += 1;
    }
    assert_eq!(admitted, 20, "the free caller keeps 20 per minute");
    // Premium: 100 per minute, 30 used.
    let mut premium = 30;
    while predict_as(&client, addr, Some("premium-user-key"))
        .await
        .status()
        == StatusCode::OK
    {
        premium += 1;
    }
    assert_eq!(premium, 100);
    // Another free caller, and a caller without a key (counted by address), have their own 20.
    for key in [Some("free-user-key-2"), None] {
        let mut admitted = 0;
        while predict_as(&client, addr, key).await.status() == StatusCode::OK {
            admitted += 1;
        }
        assert_eq!(admitted, 20, "{key:?}");
    }
}

#[tokio::test]
async fn a_batch_costs_its_size() {
    let addr = start(config()).await;
    let client = client_from("127.0.8.5");
    let batch = |n: usize| Value::Array(vec![input(SETOSA); n]);
    let r = post(&client, addr, "/predict/batch", &batch(30)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "20");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["count"], 30);
    // 21 more do not fit in the 20 left: refused, and charged nothing.
    let r = post(&client, addr, "/predict/batch", &batch(21)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = post(&client, addr, "/predict/batch", &batch(20)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
    // More than the whole limit can never pass: a 429 that says so, with no Retry-After.
    let other = client_from("127.0.8.6");
    let r = post(&other, addr, "/predict/batch", &batch(51)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_none());
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["detail"],
        "Rate limit exceeded: this request costs more than 50 per 1 minute allows"
    );
    // It charged nothing either.
    let r = post(&other, addr, "/predict/batch", &batch(50)).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn two_inference_slots_per_client_and_a_refusal_costs_no_rate() {
    // A fixed capacity well above the two slots: this is about one client's slots.
    let addr = start(Config {
        heavy: Duration::from_millis(4000),
        heavy_capacity: CapacityLimit::fixed(16),
        ..config()
    })
    .await;
    let client = client_from("127.0.8.7");
    let first = heavy_in_background(&client, addr);
    let second = heavy_in_background(&client, addr);
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The third waits up to 2 s (`queue = "2s"`) for one of its client's slots, then is
    // refused: both are still busy.
    let asked = Instant::now();
    let third = post(&client, addr, "/models/heavy/predict", &input(SETOSA)).await;
    assert!(
        asked.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&third, "retry-after"), "1");
    let body: Value = third.json().await.unwrap();
    assert_eq!(
        body["detail"],
        "Too many concurrent requests: at most 2 in flight per client; retry when one completes"
    );
    // Another client has slots of its own.
    let other = post(
        &client_from("127.0.8.8"),
        addr,
        "/models/heavy/predict",
        &input(SETOSA),
    )
    .await;
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(first.await.unwrap().status(), StatusCode::OK);
    assert_eq!(second.await.unwrap().status(), StatusCode::OK);
    // The slots are back, and the refused request charged nothing: 3 of 10 used.
    let r = post(&client, addr, "/models/heavy/predict", &input(SETOSA)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "7");
}

#[tokio::test]
async fn a_client_that_hangs_up_gives_its_slot_back() {
    let addr = start(Config {
        heavy: Duration::from_millis(3000),
        ..config()
    })
    .await;
    let client = client_from("127.0.8.9");
    let impatient = reqwest::Client::builder()
        .local_address("127.0.8.9".parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    for _ in 0..2 {
        let gone = impatient
            .post(format!("http://{addr}/models/heavy/predict"))
            .json(&input(SETOSA))
            .send()
            .await;
        assert!(gone.unwrap_err().is_timeout());
    }
    // Both hung up well before the model answered: their slots come back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let body = input(SETOSA);
    let both = tokio::join!(
        post(&client, addr, "/models/heavy/predict", &body),
        post(&client, addr, "/models/heavy/predict", &body),
    );
    assert_eq!(both.0.status(), StatusCode::OK);
    assert_eq!(both.1.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(5000));
}

#[tokio::test]
async fn limits_run_at_a_fifth_while_the_model_warms_up_then_whole_with_counts_kept() {
    let addr = start(Config {
        warmup: Duration::from_millis(1500),
        ..config()
    })
    .await;
    let client = client_from("127.0.8.10");
    let info = || get_json(&client, addr, "/model-info");
    assert_eq!(info().await["status"], "warming_up");
    assert_eq!(info().await["limit_scale"], "1/5");
    // 100/minute runs as 20/minute, 10/minute as 2, 2 per 5 minutes as 1 (never 0).
    for i in 1..=20 {
        let r = post(&client, addr, "/models/lightweight/predict", &input(SETOSA)).await;
        assert_eq!(r.status(), StatusCode::OK, "request {i}");
        assert_eq!(header(&r, "x-ratelimit-limit"), "20");
    }
    let r = post(&client, addr, "/models/lightweight/predict", &input(SETOSA)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["detail"], "Rate limit exceeded: 20 per 1 minute");
    let batch = json!([input(SETOSA)]);
    assert_eq!(
        post(&client, addr, "/models/batch-process", &batch)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        post(&client, addr, "/models/batch-process", &batch)
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Ready: whole limits, nothing restarted, the 20 requests still counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while info().await["status"] != "ready" {
        assert!(Instant::now() < deadline, "the warm-up never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(info().await["limit_scale"], "1/1");
    let r = post(&client, addr, "/models/lightweight/predict", &input(SETOSA)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-ratelimit-limit"), "100");
    let remaining: u64 = header(&r, "x-ratelimit-remaining").parse().unwrap();
    assert!((78..=79).contains(&remaining), "remaining {remaining}");
    assert_eq!(
        post(&client, addr, "/models/batch-process", &batch)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn metrics_count_per_route_and_tier_as_json_and_prometheus() {
    let addr = start(config()).await;
    let client = client_from("127.0.8.11");
    batch_process(&client, addr, 3).await;
    for _ in 0..2 {
        predict_as(&client, addr, Some("premium-user-key")).await;
    }
    predict_as(&client, addr, None).await;
    client
        .get(format!("http://{addr}/model-info"))
        .send()
        .await
        .unwrap();
    let metrics = get_json(&client, addr, "/metrics").await;
    assert_eq!(metrics["total_requests"], 6, "{metrics}");
    assert_eq!(metrics["limited_requests"], 1);
    assert_eq!(metrics["endpoints"]["/models/batch-process"]["total"], 3);
    assert_eq!(metrics["endpoints"]["/models/batch-process"]["limited"], 1);
    assert_eq!(
        metrics["endpoints"]["/models/batch-process"]["rejected"]["rate"],
        1
    );
    assert_eq!(metrics["endpoints"]["/predict"]["total"], 3);
    assert_eq!(metrics["tiers"]["premium"]["total"], 2);
    assert_eq!(metrics["tiers"]["free"]["total"], 1);
    assert!(metrics["endpoints"].get("/model-info").is_none());
    let r = client
        .get(format!("http://{addr}/metrics/prometheus"))
        .send()
        .await
        .unwrap();
    assert!(header(&r, "content-type").starts_with("text/plain"));
    let text = r.text().await.unwrap();
    for line in [
        "ratelimit_requests_total{route=\"/models/batch-process\",outcome=\"limited\"} 1",
        "ratelimit_requests_total{route=\"/predict\",outcome=\"allowed\"} 3",
        "ratelimit_label_requests_total{label=\"premium\",outcome=\"allowed\"} 2",
        "ratelimit_check_duration_seconds_count 6",
        "ratelimit_check_duration_seconds_bucket{le=\"+Inf\"} 6",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
}

#[tokio::test]
async fn slot_refusals_are_counted_by_reason() {
    let addr = start(Config {
        heavy: Duration::from_millis(4000),
        heavy_capacity: CapacityLimit::fixed(16),
        ..config()
    })
    .await;
    let client = client_from("127.0.8.12");
    let busy: Vec<_> = (0..2).map(|_| heavy_in_background(&client, addr)).collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = post(&client, addr, "/models/heavy/predict", &input(SETOSA)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    for b in busy {
        b.await.unwrap();
    }
    let metrics = get_json(&client, addr, "/metrics").await;
    let heavy = &metrics["endpoints"]["/models/heavy/predict"];
    assert_eq!(heavy["total"], 3, "{metrics}");
    assert_eq!(heavy["rejected"]["slots"], 1);
    assert_eq!(heavy["rejected"]["rate"], 0);
    assert_eq!(heavy["limited"], 1);
}

/// Log lines, as a subscriber writes them.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A flood of 429s is one warning per client and window, not one line per request.
#[tokio::test(flavor = "current_thread")]
async fn a_flood_of_429s_is_one_warning() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    // One thread: the server's tasks log through this subscriber too.
    let addr = start(config()).await;
    let client = client_from("127.0.8.13");
    let mut refused = 0;
    for _ in 0..60 {
        if post(
            &client,
            addr,
            "/models/batch-process",
            &json!([input(SETOSA)]),
        )
        .await
        .status()
            == StatusCode::TOO_MANY_REQUESTS
        {
            refused += 1;
        }
    }
    assert_eq!(refused, 58);
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    let warning = warnings[0];
    for part in [
        "client rate limited",
        "client=127.0.8.13",
        "route=\"/models/batch-process\"",
        "limit=2 per 5 minutes",
    ] {
        assert!(warning.contains(part), "{part} not in {warning}");
    }
    // Another client limited is another warning.
    let other = client_from("127.0.8.14");
    for _ in 0..5 {
        post(
            &other,
            addr,
            "/models/batch-process",
            &json!([input(SETOSA)]),
        )
        .await;
    }
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.contains("WARN")).count(),
        2,
        "{text}"
    );
}

/// The compiled example (`cargo test` builds the examples beside the tests); built here when
/// a test run did not.
fn example_binary() -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap();
    let target = deps.parent().unwrap().parent().unwrap().to_path_buf();
    let binary = target.join("examples").join("ml_api");
    if binary.exists() {
        return binary;
    }
    let own = target.join("ml_api-binary");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--example", "ml_api", "--target-dir"])
        .arg(&own)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "cargo build --example ml_api failed");
    own.join("debug").join("examples").join("ml_api")
}

/// Runs the example's `main` with `env`, its output piped (not a terminal), until `stop`.
struct Running(Option<std::process::Child>);

impl Running {
    /// A free port is only free until someone takes it: the other tests' servers and clients
    /// take ports from the same range, so a server that could not bind its port (it exits)
    /// is started again on another.
    fn start(env: &[(&str, &str)]) -> (Running, u16) {
        for _ in 0..3 {
            let port = {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.local_addr().unwrap().port()
            };
            let mut command = std::process::Command::new(example_binary());
            command
                .env_remove("RUST_LOG")
                .env_remove("REDIS_URL")
                .env("PORT", port.to_string())
                .envs(env.iter().copied())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut running = Running(Some(command.spawn().unwrap()));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return (running, port);
                }
                let child = running.0.as_mut().expect("running");
                if child.try_wait().unwrap().is_some() {
                    // Exited before it listened: the port was taken meanwhile.
                    eprintln!(
                        "ml_api exited before listening on {port}:\n{}",
                        running.stop()
                    );
                    break;
                }
                assert!(Instant::now() < deadline, "ml_api never listened on {port}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("ml_api exited before listening, three times");
    }

    /// Stops the server and returns what it wrote.
    fn stop(mut self) -> String {
        let mut child = self.0.take().expect("running");
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        text
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `times` batch-process requests: past its 2 per 5 minutes (1 while warming up), refusals.
async fn batch_process(client: &reqwest::Client, addr: SocketAddr, times: usize) {
    for _ in 0..times {
        post(
            client,
            addr,
            "/models/batch-process",
            &json!([input(SETOSA)]),
        )
        .await;
    }
}

/// `main` as a user runs it: `PORT`, `WARMUP_SECS`, `HEAVY_MS` and `RUST_LOG` read from the
/// environment, `0.0.0.0`, logs without colour codes when not on a terminal.
#[tokio::test]
async fn main_reads_its_environment_and_logs_plainly_off_a_terminal() {
    let (server, port) = Running::start(&[("WARMUP_SECS", "0"), ("HEAVY_MS", "7")]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = client_from("127.0.8.20");
    let info = get_json(&client, addr, "/model-info").await;
    assert_eq!(info["status"], "ready");
    assert_eq!(info["limit_scale"], "1/1");
    batch_process(&client, addr, 4).await;
    let log = server.stop();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log:\n{log}"
    );
    assert!(
        log.contains(&format!("listening on 0.0.0.0:{port}")),
        "{log}"
    );
    assert!(log.contains("heavy_ms=7"), "{log}");
    assert!(log.contains("store=\"memory\""), "{log}");
    assert_eq!(log.matches("client rate limited").count(), 1, "{log}");

    // RUST_LOG=warn: the warning, not the info lines; and a warm-up of WARMUP_SECS.
    let (server, port) = Running::start(&[("RUST_LOG", "warn"), ("WARMUP_SECS", "60")]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let info = get_json(&client, addr, "/model-info").await;
    assert_eq!(info["status"], "warming_up");
    assert_eq!(info["limit_scale"], "1/5");
    batch_process(&client, addr, 3).await;
    let log = server.stop();
    assert!(!log.contains("listening on"), "{log}");
    assert_eq!(log.matches("client rate limited").count(), 1, "{log}");
}

/// `API_KEYS` and `API_KEYS_FILE` add known keys to the built-in ones; a key in neither is
/// still a 401.
#[tokio::test]
async fn api_keys_come_from_the_environment_and_a_file() {
    let file = std::env::temp_dir().join(format!("ml_api_keys_{}.txt", std::process::id()));
    std::fs::write(
        &file,
        "# key tier\nfile-premium-key premium\n\nfile-free-key free # a comment\n",
    )
    .unwrap();
    let (server, port) = Running::start(&[
        ("WARMUP_SECS", "0"),
        ("API_KEYS", "env-premium-key=premium, env-free-key=free"),
        ("API_KEYS_FILE", file.to_str().unwrap()),
    ]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = client_from("127.0.8.21");
    for (key, status, limit) in [
        ("env-premium-key", 200, Some("100")),
        ("env-free-key", 200, Some("20")),
        ("file-premium-key", 200, Some("100")),
        ("file-free-key", 200, Some("20")),
        ("premium-user-key", 200, Some("100")),
        ("not-a-key", 401, None),
    ] {
        let r = predict_as(&client, addr, Some(key)).await;
        assert_eq!(r.status().as_u16(), status, "{key}");
        assert_eq!(
            r.headers()
                .get("x-ratelimit-limit")
                .map(|v| v.to_str().unwrap()),
            limit,
            "{key}"
        );
    }
    server.stop();
    let _ = std::fs::remove_file(file);
}

/// `HEAVY_MS=3000 HEAVY_BUDGET_MS=5000`: two inferences of 3 s pass (the budget is charged
/// after each, by the time it took), and the third waits until the debt is paid.
#[tokio::test]
async fn the_compute_budget_is_charged_by_measured_inference_time() {
    let addr = start(Config {
        heavy: Duration::from_millis(3000),
        heavy_budget_ms: 5000,
        ..config()
    })
    .await;
    let client = client_from("127.0.8.30");
    for _ in 0..2 {
        let r = post(&client, addr, "/models/heavy/predict", &input(SETOSA)).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let started = Instant::now();
    let r = post(&client, addr, "/models/heavy/predict", &input(SETOSA)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "refused at once"
    );
    // The budget (5,000 ms, earned back at 1 ms every 12 ms) was full when the first
    // inference started; 3,000 were used by 3 s, 250 earned back and 3,000 used by 6 s: 750
    // owed, and this request's own millisecond: 751 × 12 ms = 9.01 s, 10 in whole seconds;
    // a little more when a loaded machine makes inference overrun its 3 s, a little less
    // for what was earned back between the requests (83 ms-units a second of HTTP).
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((8..=12).contains(&retry), "Retry-After {retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["detail"], "Rate limit exceeded: 5000 per 1 minute");
    // Another client has its own budget.
    let other = client_from("127.0.8.31");
    let r = post(&other, addr, "/models/heavy/predict", &input(SETOSA)).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// A non-streamed generation of `prompt` as `client` (max_tokens 64): its JSON and the
/// tokens left in the caller's budget after it.
async fn generate(client: &reqwest::Client, addr: SocketAddr, prompt: &str) -> (Value, u64) {
    let r = post(
        client,
        addr,
        "/v1/generate",
        &json!({"prompt": prompt, "max_tokens": 64}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let left = header(&r, "x-ratelimit-remaining-tokens").parse().unwrap();
    (r.json().await.unwrap(), left)
}

#[tokio::test]
async fn generation_is_charged_the_tokens_it_used() {
    let addr = start(config()).await;
    let client = client_from("127.0.8.40");
    let mut used = 0;
    let mut left = 0;
    for i in 0..15 {
        let prompt = format!("The limiter counts request {i}");
        let (answer, after) = generate(&client, addr, &prompt).await;
        let usage = &answer["usage"];
        let total = usage["total_tokens"].as_u64().unwrap();
        assert_eq!(
            total,
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        );
        assert!(["stop", "length"].contains(&answer["finish_reason"].as_str().unwrap()));
        assert!(!answer["text"].as_str().unwrap().is_empty());
        used += total;
        left = after;
    }
    assert_eq!(
        left,
        2000 - used,
        "the budget was charged what was used, not 64 a request"
    );
    // Both budgets are advertised: draft-11 with a policy each, and per budget as the
    // large-model APIs name them.
    let r = post(
        &client,
        addr,
        "/v1/generate",
        &json!({"prompt": "a", "max_tokens": 1}),
    )
    .await;
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "20");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "4");
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), "2000");
    assert!(header(&r, "x-ratelimit-reset-tokens").ends_with('s'));
    assert_eq!(
        header(&r, "ratelimit-policy"),
        "\"requests\";q=20;w=60, \"tokens\";q=2000;w=60"
    );
    // max_tokens outside 1..=512: a JSON 422.
    let r = post(
        &client,
        addr,
        "/v1/generate",
        &json!({"prompt": "a", "max_tokens": 513}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_stream_whose_client_hangs_up_is_charged_what_was_sent() {
    let addr = start(Config {
        token_delay: Duration::from_millis(200),
        ..config()
    })
    .await;
    // The generator is deterministic: the same prompt gives the same words. It learns from
    // the README, so the first of these prompts with an answer long enough to hang up in
    // the middle of is found first (by another client, with a budget of its own).
    let finder = client_from("127.0.8.42");
    let mut prompt = None;
    for candidate in [
        "A client that",
        "The layer",
        "A request",
        "The store",
        "Every route",
    ] {
        let (answer, _) = generate(&finder, addr, candidate).await;
        if answer["usage"]["completion_tokens"].as_u64().unwrap() > 6 {
            prompt = Some(candidate);
            break;
        }
    }
    let prompt = prompt.expect("one of the prompts has a long answer");
    let client = client_from("127.0.8.41");
    let (answer, left) = generate(&client, addr, prompt).await;
    let whole = answer["usage"]["total_tokens"].as_u64().unwrap();
    let prompt_tokens = answer["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(whole - prompt_tokens > 6, "a long enough answer: {answer}");
    assert_eq!(left, 2000 - whole);

    let mut r = client
        .post(format!("http://{addr}/v1/generate"))
        .json(&json!({"prompt": prompt, "max_tokens": 64, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    // Reserved up front: the prompt and max_tokens.
    assert_eq!(
        header(&r, "x-ratelimit-remaining-tokens"),
        (2000 - whole - prompt_tokens - 64).to_string()
    );
    let mut text = String::new();
    while text.matches("\n\n").count() < 3 {
        let chunk = r.chunk().await.unwrap().expect("more events");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.starts_with("data: {\"token\":"), "{text}");
    drop(r); // the client goes away after three tokens
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, after) = generate(&client, addr, prompt).await;
    // Left: 2,000 less the first and the last generation (the same words), less the stream.
    let streamed = 2000 - 2 * whole - after;
    assert!(
        (3..=5).contains(&(streamed - prompt_tokens)),
        "charged {streamed}: the prompt ({prompt_tokens}) and the 3 tokens read (with one or two in flight), not 64"
    );
}
