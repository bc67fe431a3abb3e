//! The main job: an ML API with everything the article asks of its rate limits, on one
//! server, in front of a real model (a logistic regression trained at start-up on the iris
//! data set with `linfa-logistic`).
//!
//! | route | limit |
//! |---|---|
//! | `POST /models/lightweight/predict` | 100/minute per client IP |
//! | `POST /models/heavy/predict` | 10/minute (`HEAVY_RATE`) and 2 inference slots per client IP; an adaptive capacity across clients with a fair 2 s wait (503 beyond); inference takes `HEAVY_MS` on an accelerator of `GPU_UNITS` units, and each client may use `HEAVY_BUDGET_MS` (20,000) milliseconds of it a minute, charged by the time it took |
//! | `POST /models/batch-process` | 2 per 5 minutes per client IP (a JSON list of inputs) |
//! | `POST /predict` | by a known `X-API-Key`: free 20/minute, premium (`premium-user-key`) 100/minute; an unknown key 401; no key: the client IP at 20/minute |
//! | `POST /predict/batch` | 50 items per minute per client IP: a batch of N costs N |
//! | `GET /model-info` | never limited |
//! | `GET /metrics`, `GET /metrics/prometheus` | never limited: what the limiter saw |
//!
//! For `WARMUP_SECS` seconds after start (default 10) every limit runs at 1/5 (at least 1) while
//! the model warms up, then at full strength: the limiter is scaled at run time, with no
//! restart, no count lost and no configuration mutated. With `REDIS_URL` set, limits, slots
//! and the warm-up scale are shared by every instance on that Redis.
//!
//! A prediction takes `{"features": [sepal length, sepal width, petal length, petal width]}`
//! (centimetres) and answers the iris species with its probability. Every error is JSON
//! `{"detail": ...}`; bodies are limited to 16 KiB (a batch to 512 KiB), a 413 beyond.
//!
//! API keys: `premium-user-key` (premium), `free-user-key` and `free-user-key-2` (free), and
//! more from `API_KEYS` (`key=tier,key=tier`) or the file `API_KEYS_FILE` (`key tier` a line).
//!
//! `cargo run --release --example ml_api` (`PORT`, default 8000; `RUST_LOG`, default
//! `info`), then the README's walkthrough.

#[path = "support/accelerator.rs"]
mod accelerator;
#[path = "support/generator.rs"]
mod generator;
#[path = "support/json.rs"]
mod json;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use accelerator::Accelerator;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::HeaderMap;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use generator::Generator;
use json::{Detail, JsonBody, json_fallbacks};
use linfa::prelude::*;
use linfa_logistic::{MultiFittedLogisticRegression, MultiLogisticRegression};
use ndarray::{Array2, ArrayView1};
use ratelimit::http::{
    ApiKeys, HeaderStyle, Identity, KeyTable, KnownKey, LimitsRef, Rejection, metrics_json,
    metrics_prometheus,
};
use ratelimit::observe::Metrics;
use ratelimit::store::RedisStore;
use ratelimit::{
    Algorithm, CapacityLimit, Limiter, Limits, Reservation, Scale, StoreError, rate_limit,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// The iris species, in the order of the data set's targets.
const SPECIES: [&str; 3] = ["setosa", "versicolor", "virginica"];

/// What the features are, in order.
const FEATURES: [&str; 4] = [
    "sepal length (cm)",
    "sepal width (cm)",
    "petal length (cm)",
    "petal width (cm)",
];

/// The scale of every limit while the model warms up.
const WARMING_UP: Scale = match Scale::new(1, 5) {
    Some(scale) => scale,
    None => Scale::FULL,
};

/// The heavy model's route: the scope of its capacity.
const HEAVY_ROUTE: &str = "/models/heavy/predict";

/// How the server is configured: from the environment in `main`, by hand in tests.
#[derive(Clone, Debug)]
pub struct Config {
    /// Redis shared by every instance; `None`: limits in this process's memory.
    pub redis_url: Option<String>,
    /// How long the heavy model takes an input on one unit of the accelerator.
    pub heavy: Duration,
    /// The accelerator's parallel units: beyond as many inputs at once, each takes
    /// proportionally longer.
    pub gpu_units: usize,
    /// The heavy model's capacity across clients (the attribute says adaptive).
    pub heavy_capacity: CapacityLimit,
    /// Each client's rate on the heavy model.
    pub heavy_rate: Limits,
    /// Milliseconds of heavy inference each client may use per minute, charged by the time
    /// measured after it ran.
    pub heavy_budget_ms: u64,
    /// How long the text generator takes a token when it streams (a decoding step).
    pub token_delay: Duration,
    /// How long the model warms up after start, with limits at 1/5.
    pub warmup: Duration,
}

impl Default for Config {
    /// What `from_env` gives with none of its variables set.
    fn default() -> Config {
        Config {
            redis_url: None,
            heavy: Duration::from_millis(200),
            gpu_units: 4,
            heavy_capacity: HEAVY_CAPACITY,
            heavy_rate: Limits::parse("10/minute").expect("a rate"),
            heavy_budget_ms: 20_000,
            token_delay: Duration::from_millis(20),
            warmup: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// `REDIS_URL`, `HEAVY_MS` (default 200), `GPU_UNITS` (default 4), `HEAVY_CAPACITY`
    /// (`adaptive`, the default; a number for a fixed limit; `none`), `HEAVY_RATE` (default
    /// `10/minute`), `HEAVY_BUDGET_MS` (default 20,000), `TOKEN_MS` (default 20) and
    /// `WARMUP_SECS` (default 10).
    pub fn from_env() -> Config {
        let number = |name: &str, default: u64| match std::env::var(name) {
            Ok(value) => value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}={value:?} is not a whole number")),
            Err(_) => default,
        };
        Config {
            redis_url: std::env::var("REDIS_URL")
                .ok()
                .filter(|url| !url.is_empty()),
            heavy: Duration::from_millis(number("HEAVY_MS", 200)),
            gpu_units: number("GPU_UNITS", 4) as usize,
            heavy_capacity: match std::env::var("HEAVY_CAPACITY").as_deref().map(str::trim) {
                Err(_) | Ok("adaptive") => HEAVY_CAPACITY,
                Ok("none") => CapacityLimit::unlimited(),
                Ok(n) => CapacityLimit::fixed(n.parse().unwrap_or_else(|_| {
                    panic!("HEAVY_CAPACITY={n:?} is none of adaptive, none or a number")
                })),
            },
            heavy_rate: std::env::var("HEAVY_RATE")
                .map(|rate| {
                    Limits::parse(&rate)
                        .unwrap_or_else(|e| panic!("HEAVY_RATE={rate:?} is not a rate: {e}"))
                })
                .unwrap_or_else(|_| Limits::parse("10/minute").expect("a rate")),
            heavy_budget_ms: number("HEAVY_BUDGET_MS", 20_000),
            token_delay: Duration::from_millis(number("TOKEN_MS", 20)),
            warmup: Duration::from_secs(number("WARMUP_SECS", 10)),
        }
    }
}

/// The model and what the server knows about itself.
pub struct Model {
    classifier: MultiFittedLogisticRegression<f64, usize>,
    trained_on: usize,
    training_accuracy: f32,
    heavy: Duration,
    heavy_capacity: CapacityLimit,
    accelerator: Arc<Accelerator>,
    ready: AtomicBool,
    started: Instant,
    limiter: Limiter,
    /// The text generator of `/v1/generate`, and how long it takes a token when streaming.
    generator: Generator,
    token_delay: Duration,
}

impl Model {
    /// Trains the classifier on the iris data set that `linfa-datasets` ships.
    fn train(config: &Config, limiter: Limiter) -> Model {
        let dataset = linfa_datasets::iris();
        let classifier = MultiLogisticRegression::default()
            .max_iterations(100)
            .fit(&dataset)
            .expect("the iris data set trains a logistic regression");
        let training_accuracy = classifier
            .predict(dataset.records())
            .confusion_matrix(&dataset)
            .map_or(0.0, |matrix| matrix.accuracy());
        Model {
            classifier,
            trained_on: dataset.nsamples(),
            training_accuracy,
            heavy: config.heavy,
            heavy_capacity: config.heavy_capacity,
            accelerator: Accelerator::new(config.gpu_units),
            generator: Generator::train(),
            token_delay: config.token_delay,
            ready: AtomicBool::new(false),
            started: Instant::now(),
            limiter,
        }
    }

    /// The answer to one input, or what is wrong with it.
    fn predict_one(&self, input: &Input) -> Result<Value, Detail> {
        let rows = rows(std::slice::from_ref(input))?;
        Ok(self.predict(&rows).remove(0))
    }

    /// The species of each row, with the probability of each species.
    fn predict(&self, rows: &[[f64; 4]]) -> Vec<Value> {
        let records = Array2::from_shape_fn((rows.len(), 4), |(i, j)| rows[i][j]);
        let probabilities = self.classifier.predict_probabilities(&records);
        probabilities.outer_iter().map(answer).collect()
    }
}

/// One prediction: the most probable species and every probability.
fn answer(probabilities: ArrayView1<'_, f64>) -> Value {
    let (class, probability) =
        probabilities
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f64::MIN),
                |best, (i, p)| if p > best.1 { (i, p) } else { best },
            );
    let by_species: serde_json::Map<String, Value> = SPECIES
        .iter()
        .zip(probabilities.iter())
        .map(|(name, p)| ((*name).to_owned(), json!(p)))
        .collect();
    json!({
        "prediction": SPECIES[class],
        "class": class,
        "probability": probability,
        "probabilities": by_species,
    })
}

/// A prediction request: `{"features": [f64; 4]}`.
#[derive(Deserialize)]
pub struct Input {
    /// Sepal length, sepal width, petal length and petal width, in centimetres.
    pub features: Vec<f64>,
}

/// The most a single prediction's body may hold, and a batch's (a 413 beyond).
pub const INPUT_BODY_LIMIT: usize = 16 * 1024;
/// The most a batch's body may hold: about 8,000 inputs.
pub const BATCH_BODY_LIMIT: usize = 512 * 1024;

/// The four features of each input, or which input is wrong and why.
fn rows(inputs: &[Input]) -> Result<Vec<[f64; 4]>, Detail> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let row: [f64; 4] = input.features.as_slice().try_into().map_err(|_| {
                let at = if inputs.len() > 1 {
                    format!("input {i}: ")
                } else {
                    String::new()
                };
                Detail::unprocessable(format!(
                    "{at}expected 4 features ({}), got {}",
                    FEATURES.join(", "),
                    input.features.len()
                ))
            })?;
            if let Some(bad) = row.iter().find(|x| !x.is_finite()) {
                return Err(Detail::unprocessable(format!(
                    "features must be finite numbers, got {bad}"
                )));
            }
            Ok(row)
        })
        .collect()
}

type Shared = State<Arc<Model>>;

#[rate_limit("100/minute", key = ip)]
async fn lightweight(
    State(model): Shared,
    JsonBody(input): JsonBody<Input>,
) -> Result<Json<Value>, Detail> {
    let mut answer = model.predict_one(&input)?;
    answer["model"] = json!("lightweight");
    Ok(Json(answer))
}

/// The heavy model's compute budget of each client: `HEAVY_BUDGET_MS` milliseconds of
/// inference a minute, counted by GCRA.
#[derive(Clone)]
struct HeavyBudget(Arc<Limits>);

impl HeavyBudget {
    fn new(milliseconds: u64) -> HeavyBudget {
        let limits = Limits::parse(&format!("{}/minute", milliseconds.max(1)))
            .expect("a whole number of milliseconds a minute")
            .with_algorithm(Algorithm::Gcra)
            .with_label("compute-ms");
        HeavyBudget(Arc::new(limits))
    }
}

/// The compute budget the application was configured with (a request extension of the
/// heavy route).
fn heavy_budget(parts: &Parts) -> LimitsRef {
    let budget = parts.extensions.get::<HeavyBudget>();
    let budget = budget.cloned().unwrap_or_else(|| HeavyBudget::new(20_000));
    LimitsRef::Shared(budget.0)
}

/// The heavy model's capacity as the attribute declares it (`HEAVY_CAPACITY` may replace it).
pub const HEAVY_CAPACITY: CapacityLimit = CapacityLimit::adaptive().min(2).max(64);

/// Each client's rate on the heavy model (`HEAVY_RATE`, a request extension of its route).
#[derive(Clone)]
struct HeavyRate(Arc<Limits>);

fn heavy_rate(parts: &Parts) -> LimitsRef {
    match parts.extensions.get::<HeavyRate>() {
        Some(rate) => LimitsRef::Shared(Arc::clone(&rate.0)),
        None => LimitsRef::Owned(Limits::parse("10/minute").expect("a rate")),
    }
}

/// At most two inferences of one client at once: the slot is held while the model runs and
/// given back when the answer is sent, or when the client hangs up. Across clients, an
/// adaptive capacity follows the model's latency on the accelerator: while it is full a
/// request waits up to 2 s, the clients served in turn, each to its fair share, then is shed
/// with a 503. Each inference reserves a millisecond of the client's compute budget and
/// settles the time it took: the budget binds only when inference is slow, and a client over
/// it waits until the debt is paid.
#[rate_limit(heavy_rate, key = ip, concurrency = 2, capacity = adaptive(min = 2, max = 64), queue = "2s")]
#[rate_limit(heavy_budget, key = ip, reserve = 1)]
async fn heavy(
    State(model): Shared,
    compute: Reservation,
    JsonBody(input): JsonBody<Input>,
) -> Result<Json<Value>, Detail> {
    let rows = rows(std::slice::from_ref(&input))?;
    let started = Instant::now();
    model.accelerator.run(model.heavy).await; // a large model's forward pass
    let mut answer = model.predict(&rows).remove(0);
    let used = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if let Err(error) = compute.settle(used).await {
        tracing::warn!(%error, "the compute budget could not be settled");
    }
    answer["model"] = json!("heavy");
    answer["inference_ms"] = json!(used);
    Ok(Json(answer))
}

#[rate_limit("2/5 minutes", key = ip)]
async fn batch_process(
    State(model): Shared,
    JsonBody(batch): JsonBody<Vec<Input>>,
) -> Result<Json<Value>, Detail> {
    predict_all(&model, &batch)
}

/// The answers to a batch, or what is wrong with one of its inputs.
fn predict_all(model: &Model, batch: &[Input]) -> Result<Json<Value>, Detail> {
    let rows = rows(batch)?;
    Ok(Json(
        json!({ "results": model.predict(&rows), "count": rows.len() }),
    ))
}

static FREE: LazyLock<Limits> = LazyLock::new(|| {
    Limits::parse("20/minute")
        .expect("valid")
        .with_label("free")
});
static PREMIUM: LazyLock<Limits> = LazyLock::new(|| {
    Limits::parse("100/minute")
        .expect("valid")
        .with_label("premium")
});

/// The API keys this server knows: `premium-user-key` (premium) and `free-user-key`,
/// `free-user-key-2` (free), then those of `API_KEYS` (`key=tier` pairs separated by commas)
/// and of the file `API_KEYS_FILE` (a `key tier` pair a line; `#` starts a comment). In a
/// real service, a database or Redis behind `KeyLookup`.
static API_KEYS: LazyLock<ApiKeys<KeyTable>> = LazyLock::new(|| {
    let mut table = KeyTable::new();
    let mut add = |key: &str, tier: &str| {
        let limits = match tier {
            "premium" => &PREMIUM,
            "free" => &FREE,
            other => panic!("API key {key:?}: unknown tier {other:?} (free or premium)"),
        };
        table.insert(key, KnownKey::new(key.to_owned(), limits));
    };
    add("premium-user-key", "premium");
    add("free-user-key", "free");
    add("free-user-key-2", "free");
    if let Ok(pairs) = std::env::var("API_KEYS") {
        for pair in pairs.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, tier) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("API_KEYS: {pair:?} is not key=tier"));
            add(key.trim(), tier.trim());
        }
    }
    if let Ok(path) = std::env::var("API_KEYS_FILE") {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("API_KEYS_FILE={path}: {error}"));
        for line in text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
        {
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(key), Some(tier), None) => add(key, tier),
                _ => panic!("API_KEYS_FILE={path}: {line:?} is not `key tier`"),
            }
        }
    }
    ApiKeys::new(table)
});

/// Who calls: a known API key (its own budget at its tier's limits), or without a key the
/// client address (as `key = ip` counts it) at the free tier. An unknown key is answered
/// `401 {"detail": "unknown API key"}`: a made-up key is never a fresh budget.
async fn caller(parts: &Parts) -> Result<Identity, Rejection> {
    API_KEYS.identify(parts).await
}

/// The limits of a caller without a key (a known key brings its tier's).
fn anonymous_limits(_: &Parts) -> LimitsRef {
    LimitsRef::from(&FREE)
}

/// The tier of the request's API key (the key was checked before the handler ran).
fn tier(headers: &HeaderMap) -> &'static str {
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .and_then(|key| API_KEYS.lookup().get(key))
        .and_then(|known| known.limits.limits().label())
        .unwrap_or("free")
}

#[rate_limit(anonymous_limits, key = caller)]
async fn predict(
    State(model): Shared,
    headers: HeaderMap,
    JsonBody(input): JsonBody<Input>,
) -> Result<Json<Value>, Detail> {
    let mut answer = model.predict_one(&input)?;
    answer["tier"] = json!(tier(&headers));
    Ok(Json(answer))
}

/// What `/v1/generate` takes.
#[derive(Deserialize)]
pub struct GenerateRequest {
    /// The text to continue.
    pub prompt: String,
    /// At most this many tokens generated (1 to 512, default 64).
    #[serde(default = "default_max_tokens", deserialize_with = "max_tokens")]
    pub max_tokens: u64,
    /// Tokens as server-sent events as they are generated, instead of one JSON answer.
    #[serde(default)]
    pub stream: bool,
}

impl GenerateRequest {
    /// The prompt's length in the generator's tokens.
    fn prompt_tokens(&self) -> u64 {
        generator::tokenize(&self.prompt).len() as u64
    }
}

fn default_max_tokens() -> u64 {
    64
}

fn max_tokens<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(deserializer)?;
    if (1..=512).contains(&n) {
        Ok(n)
    } else {
        Err(serde::de::Error::custom(format!(
            "max_tokens must be between 1 and 512, got {n}"
        )))
    }
}

static FREE_TOKENS: LazyLock<Limits> = LazyLock::new(|| {
    Limits::parse("2000/minute")
        .expect("valid")
        .with_label("free")
});
static PREMIUM_TOKENS: LazyLock<Limits> = LazyLock::new(|| {
    Limits::parse("10000/minute")
        .expect("valid")
        .with_label("premium")
});

/// The token budget of a caller without a key (a known key brings its tier's).
fn anonymous_tokens(_: &Parts) -> LimitsRef {
    LimitsRef::from(&FREE_TOKENS)
}

/// Who calls, as for `/predict`, with the token budget of the caller's tier.
async fn token_caller(parts: &Parts) -> Result<Identity, Rejection> {
    let identity = API_KEYS.identify(parts).await?;
    let premium = identity.limits().and_then(Limits::label) == Some("premium");
    Ok(match (identity.limits().is_some(), premium) {
        (false, _) => identity,
        (true, true) => identity.with_limits(&PREMIUM_TOKENS),
        (true, false) => identity.with_limits(&FREE_TOKENS),
    })
}

/// Text generation, metered in tokens as the large-model APIs meter it: a request reserves
/// its prompt and `max_tokens` of the caller's token budget and is settled to what it used
/// (`usage.total_tokens`) once generation stops, at the end of a sentence or at
/// `max_tokens`. Streamed, the tokens are counted as they are sent, and a client that goes
/// away pays for those alone.
#[rate_limit(anonymous_limits, key = caller)]
#[rate_limit(
    anonymous_tokens,
    key = token_caller,
    scope = "/v1/generate tokens",
    reserve = request.prompt_tokens() + request.max_tokens
)]
async fn generate(
    State(model): Shared,
    tokens: Reservation,
    JsonBody(request): JsonBody<GenerateRequest>,
) -> Response {
    let prompt_tokens = request.prompt_tokens();
    if request.stream {
        return stream_generation(model, tokens, request, prompt_tokens);
    }
    let mut generation = model
        .generator
        .generate(&request.prompt, request.max_tokens, 0);
    let words: Vec<String> = generation.by_ref().collect();
    let finish = generation.finish().unwrap_or(generator::Finish::Length);
    let completion_tokens = words.len() as u64;
    let total_tokens = prompt_tokens + completion_tokens;
    if let Err(error) = tokens.settle(total_tokens).await {
        tracing::warn!(%error, "a generation's tokens could not be settled");
    }
    Json(json!({
        "text": generator::detokenize(words.iter().map(String::as_str)),
        "finish_reason": finish.as_str(),
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": total_tokens,
        },
    }))
    .into_response()
}

/// Tokens as server-sent events, one every `TOKEN_MS`; then the usage and why it stopped;
/// then `[DONE]`. The meter counts the prompt, then each token as it is sent, and settles
/// when the stream ends or is dropped.
fn stream_generation(
    model: Arc<Model>,
    tokens: Reservation,
    request: GenerateRequest,
    prompt_tokens: u64,
) -> Response {
    let mut meter = tokens.meter();
    meter.add(prompt_tokens);
    // The generator is cheap and deterministic: the words are decided at once and sent one
    // decoding step apart; what is metered is what was sent.
    let mut generation = model
        .generator
        .generate(&request.prompt, request.max_tokens, 0);
    let words: std::collections::VecDeque<String> = generation.by_ref().collect();
    let finish = generation.finish().unwrap_or(generator::Finish::Length);
    let delay = model.token_delay;
    let events = futures_util::stream::unfold(
        (words, meter, 0u64, false),
        move |(mut words, mut meter, sent, done)| async move {
            if done {
                return None;
            }
            let Some(word) = words.pop_front() else {
                let usage = json!({
                    "finish_reason": finish.as_str(),
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": sent,
                        "total_tokens": prompt_tokens + sent,
                    },
                });
                let event = format!("data: {usage}\n\ndata: [DONE]\n\n");
                return Some((Ok::<_, Infallible>(event), (words, meter, sent, true)));
            };
            tokio::time::sleep(delay).await;
            meter.add(1);
            let event = format!("data: {}\n\n", json!({ "token": word }));
            Some((Ok(event), (words, meter, sent + 1, false)))
        },
    );
    (
        [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response()
}

/// A batch of N inputs costs N of the 50 per minute; a batch larger than 50 is refused with
/// a 429 that says it can never pass.
#[rate_limit("50/minute", key = ip, cost = batch.len())]
async fn predict_batch(
    State(model): Shared,
    JsonBody(batch): JsonBody<Vec<Input>>,
) -> Result<Json<Value>, Detail> {
    predict_all(&model, &batch)
}

async fn model_info(State(model): Shared) -> Json<Value> {
    let scale = model.limiter.scale();
    Json(json!({
        "model": "logistic regression (linfa-logistic), multinomial",
        "data_set": "iris",
        "trained_on": model.trained_on,
        "training_accuracy": (f64::from(model.training_accuracy) * 1000.0).round() / 1000.0,
        "features": FEATURES,
        "classes": SPECIES,
        "status": if model.ready.load(Ordering::Relaxed) { "ready" } else { "warming_up" },
        "limit_scale": scale.to_string(),
        "uptime_seconds": model.started.elapsed().as_secs(),
        "heavy_capacity": heavy_capacity(&model),
    }))
}

/// The heavy model's capacity: its limit now, in flight and waiting (the limit it starts
/// with before its first request), the latency it sees, and the accelerator under it.
fn heavy_capacity(model: &Model) -> Value {
    let stats = model.limiter.capacity(HEAVY_ROUTE);
    let limit = match &stats {
        Some(stats) => stats.limit,
        None => model.heavy_capacity.initial(),
    };
    let stats = stats.unwrap_or_default();
    json!({
        "limit": limit,
        "in_flight": stats.in_flight,
        "queued": stats.queued,
        "latency_ms": stats.latency.as_millis() as u64,
        "no_load_latency_ms": stats.no_load_latency.map(|d| d.as_millis() as u64),
        "shed": stats.shed,
        "gpu_units": model.accelerator.units(),
    })
}

/// The application: the model, the limiter on memory or Redis, the warm-up, the routes.
pub async fn app(config: &Config) -> Result<Router, StoreError> {
    let metrics = Metrics::new();
    // The fixed window, opened by a client's first request: slowapi's default strategy, and
    // a client may spend its minute's budget at once, as the article's clients do.
    let builder = Limiter::builder()
        .algorithm(Algorithm::FixedWindow)
        .observer(metrics.clone())
        .capacity(HEAVY_ROUTE, config.heavy_capacity);
    let limiter = match &config.redis_url {
        Some(url) => builder.store(RedisStore::connect(url).await?).build(),
        None => builder.build(),
    };
    let model = Arc::new(Model::train(config, limiter.clone()));
    warm_up(&model, config.warmup).await;
    let routes = Router::new()
        .route(
            "/models/lightweight/predict",
            post(lightweight).layer(input_limit()),
        )
        .route(
            HEAVY_ROUTE,
            post(heavy).layer((
                input_limit(),
                Extension(HeavyBudget::new(config.heavy_budget_ms)),
                Extension(HeavyRate(Arc::new(config.heavy_rate.clone()))),
            )),
        )
        .route(
            "/models/batch-process",
            post(batch_process).layer(batch_limit()),
        )
        .route("/predict", post(predict).layer(input_limit()))
        .route("/predict/batch", post(predict_batch).layer(batch_limit()))
        .route(
            "/v1/generate",
            post(generate).layer(DefaultBodyLimit::max(INPUT_BODY_LIMIT)),
        )
        .route("/model-info", get(model_info))
        .route("/metrics", metrics_json(metrics.clone()))
        .route("/metrics/prometheus", metrics_prometheus(metrics));
    // After the routes: the 405 fallback goes on the routes registered before it.
    // Every set of rate limit fields (the default is the IETF draft's pair alone): clients
    // of model APIs read the `x-ratelimit-*-requests` / `-tokens` fields, clients written
    // against slowapi's headers the legacy `X-RateLimit-*`.
    Ok(json_fallbacks(routes)
        .layer(limiter.layer().headers(HeaderStyle::Both))
        .with_state(model))
}

fn input_limit() -> DefaultBodyLimit {
    DefaultBodyLimit::max(INPUT_BODY_LIMIT)
}

fn batch_limit() -> DefaultBodyLimit {
    DefaultBodyLimit::max(BATCH_BODY_LIMIT)
}

/// Limits at 1/5 for `length`, then whole again, on a timer: the pattern for "scale while
/// the model is not ready". With Redis, every instance follows the scale.
async fn warm_up(model: &Arc<Model>, length: Duration) {
    if length.is_zero() {
        model.ready.store(true, Ordering::Relaxed);
        return;
    }
    // For twice the warm-up at most: an instance that dies warming up must not leave the
    // fleet scaled down (with Redis, the scale expires there too).
    if let Err(error) = model.limiter.set_scale_for(WARMING_UP, length * 2).await {
        tracing::warn!(%error, "warm-up scale not shared with other instances");
    }
    tracing::info!(scale = %WARMING_UP, seconds = length.as_secs_f64(), "model warming up: limits scaled down");
    let model = Arc::clone(model);
    tokio::spawn(async move {
        tokio::time::sleep(length).await;
        if let Err(error) = model.limiter.set_scale(Scale::FULL).await {
            tracing::warn!(%error, "full scale not shared with other instances");
        }
        model.ready.store(true, Ordering::Relaxed);
        tracing::info!("model ready: limits at full strength");
    });
}

#[allow(dead_code)] // tests include this file for `app` alone
#[tokio::main]
async fn main() {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let config = Config::from_env();
    let app = app(&config).await.unwrap_or_else(|error| panic!("{error}"));
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".into());
    let listener = tokio::net::TcpListener::bind(format!("0.0.0.0:{port}"))
        .await
        .unwrap_or_else(|error| panic!("cannot listen on port {port}: {error}"));
    tracing::info!(
        store = config.redis_url.as_deref().unwrap_or("memory"),
        heavy_ms = config.heavy.as_millis() as u64,
        gpu_units = config.gpu_units,
        heavy_capacity = %config.heavy_capacity,
        "listening on {}",
        listener.local_addr().expect("address")
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("serve");
}
