//! The load scenario of the heavy model's capacity (BENCHMARKS.md, "Capacity under
//! overload"): 30 client addresses with 2 requests each in flight, plus one light client
//! sending one at a time, against `ml_api`'s heavy model on an accelerator of `GPU_UNITS=4`
//! units with `HEAVY_MS=200`, for 15 s; run three times, with the adaptive capacity, a fixed
//! model-wide limit of 60 and no model-wide limit. Prints a table and writes the limit,
//! in-flight count and p99 latency over time of the three runs as one SVG chart.
//!
//! `cargo run --release --example capacity_load -- [SECONDS] [CHART.svg]` (defaults 15 and
//! `target/capacity-load.svg`); `scripts/capacity-load.sh` runs it.

#[allow(dead_code)]
#[path = "ml_api.rs"]
mod ml_api;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plotters::prelude::*;
use ratelimit::{CapacityLimit, Limits};
use serde_json::{Value, json};

const CLIENTS: usize = 30;
const IN_FLIGHT_EACH: usize = 2;
const GPU_UNITS: usize = 4;
const HEAVY_MS: u64 = 200;
/// The heavy route's wait bound (`queue = "2s"`).
const QUEUE_BOUND: Duration = Duration::from_secs(2);

/// One answered request.
#[derive(Clone, Copy, Debug)]
struct Done {
    /// Seconds since the run started, when the answer came.
    at: f64,
    /// From sending to the answer.
    total: Duration,
    /// Admission to response, as the handler measured it (`inference_ms`; 0 unless 200).
    model: Duration,
    status: u16,
    light: bool,
}

/// One reading of `/model-info`.
#[derive(Clone, Copy, Debug)]
struct Reading {
    at: f64,
    limit: Option<f64>,
    in_flight: f64,
}

struct Run {
    name: &'static str,
    done: Vec<Done>,
    readings: Vec<Reading>,
    seconds: f64,
}

async fn run(name: &'static str, capacity: CapacityLimit, length: Duration) -> Run {
    let config = ml_api::Config {
        heavy: Duration::from_millis(HEAVY_MS),
        gpu_units: GPU_UNITS,
        heavy_capacity: capacity,
        heavy_rate: Limits::parse("100000/minute").expect("a rate"),
        heavy_budget_ms: 100_000_000,
        warmup: Duration::ZERO,
        ..Default::default()
    };
    let app = ml_api::app(&config).await.expect("the app in memory");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let started = Instant::now();
    let until = started + length;
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let url = format!("http://{addr}/models/heavy/predict");
    let body = json!({"features": [6.0, 2.7, 4.1, 1.3]});
    for client in 0..=CLIENTS {
        let light = client == CLIENTS;
        let from: IpAddr = format!("127.0.20.{}", client + 1).parse().unwrap();
        let http = reqwest::Client::builder()
            .local_address(from)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let loops = if light { 1 } else { IN_FLIGHT_EACH };
        for _ in 0..loops {
            let (http, url, body, done) = (http.clone(), url.clone(), body.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < until {
                    let sent = Instant::now();
                    let Ok(response) = http.post(&url).json(&body).send().await else {
                        continue;
                    };
                    let status = response.status().as_u16();
                    let answer: Value = response.json().await.unwrap_or_default();
                    let model = answer["inference_ms"].as_u64().unwrap_or(0);
                    done.lock().unwrap().push(Done {
                        at: started.elapsed().as_secs_f64(),
                        total: sent.elapsed(),
                        model: Duration::from_millis(model),
                        status,
                        light,
                    });
                    if status == 503 {
                        // As a client told to retry later would, briefly.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
    }
    let mut readings = Vec::new();
    let info = reqwest::Client::new();
    while Instant::now() < until {
        if let Ok(response) = info.get(format!("http://{addr}/model-info")).send().await {
            let info: Value = response.json().await.unwrap_or_default();
            let capacity = &info["heavy_capacity"];
            readings.push(Reading {
                at: started.elapsed().as_secs_f64(),
                limit: capacity["limit"].as_f64(),
                in_flight: capacity["in_flight"].as_f64().unwrap_or(0.0),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for task in tasks {
        let _ = task.await;
    }
    server.abort();
    let done = done.lock().unwrap().clone();
    Run {
        name,
        done,
        readings,
        seconds: length.as_secs_f64(),
    }
}

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

/// The table row of one run, and whether it meets the bounds (the adaptive run).
fn summarize(run: &Run) -> (String, Vec<String>) {
    let ok: Vec<&Done> = run.done.iter().filter(|d| d.status == 200).collect();
    let mut model: Vec<Duration> = ok.iter().map(|d| d.model).collect();
    let mut total: Vec<Duration> = ok.iter().map(|d| d.total).collect();
    // Answers within the run's length: what was still in flight at its end is not counted.
    let goodput = ok.iter().filter(|d| d.at <= run.seconds).count() as f64 / run.seconds;
    let capacity = GPU_UNITS as f64 * 1000.0 / HEAVY_MS as f64;
    let light: Vec<&Done> = run.done.iter().filter(|d| d.light).collect();
    let light_ok = light.iter().filter(|d| d.status == 200).count();
    let mut light_wait: Vec<Duration> = light
        .iter()
        .filter(|d| d.status == 200)
        .map(|d| d.total.saturating_sub(d.model))
        .collect();
    let shed = run.done.iter().filter(|d| d.status == 503).count();
    let limited = run.done.iter().filter(|d| d.status == 429).count();
    let late: Vec<f64> = run
        .readings
        .iter()
        .filter(|r| r.at >= 10.0)
        .filter_map(|r| r.limit)
        .collect();
    let range = match (
        late.iter().copied().reduce(f64::min),
        late.iter().copied().reduce(f64::max),
    ) {
        (Some(lo), Some(hi)) => format!("{lo:.0}–{hi:.0}"),
        _ => "none".to_owned(),
    };
    let (p50_model, p99_model) = (percentile(&mut model, 0.5), percentile(&mut model, 0.99));
    let (p50_total, p99_total) = (percentile(&mut total, 0.5), percentile(&mut total, 0.99));
    let p99_light_wait = percentile(&mut light_wait, 0.99);
    let light_rate = light_ok as f64 / light.len().max(1) as f64;
    let row = format!(
        "| {} | {range} | {} / {} | {} / {} | {goodput:.1}/s ({:.0}%) | {light_ok}/{} ({:.0}%) | {} | {shed} | {limited} |",
        run.name,
        ms(p50_model),
        ms(p99_model),
        ms(p50_total),
        ms(p99_total),
        100.0 * goodput / capacity,
        light.len(),
        100.0 * light_rate,
        ms(p99_light_wait),
    );
    let mut misses = Vec::new();
    if run.name == "adaptive" {
        let heavy = Duration::from_millis(HEAVY_MS);
        if late.iter().any(|&l| !(4.0..=12.0).contains(&l)) || late.is_empty() {
            misses.push(format!("limit after 10 s {range}, not within 4–12"));
        }
        if p99_model > heavy * 3 {
            misses.push(format!(
                "p99 in the model {} ms > 3 × HEAVY_MS",
                ms(p99_model)
            ));
        }
        if p99_total > heavy * 3 + QUEUE_BOUND {
            misses.push(format!(
                "p99 end to end {} ms > 3 × HEAVY_MS + the bound",
                ms(p99_total)
            ));
        }
        if goodput < 0.9 * capacity {
            misses.push(format!("goodput {goodput:.1}/s < 90% of {capacity:.0}/s"));
        }
        if light_rate < 0.9 {
            misses.push(format!("light client {:.0}% answered", 100.0 * light_rate));
        }
        if light_wait
            .iter()
            .any(|&w| w > QUEUE_BOUND + Duration::from_millis(50))
        {
            misses.push("the light client waited past the bound".to_owned());
        }
    }
    (row, misses)
}

/// p99 of the end-to-end latency of the requests answered 200 in each second.
fn p99_per_second(run: &Run) -> Vec<(f64, f64)> {
    let seconds = run.seconds.ceil() as usize;
    (0..seconds)
        .filter_map(|s| {
            let mut in_second: Vec<Duration> = run
                .done
                .iter()
                .filter(|d| d.status == 200 && d.at >= s as f64 && d.at < (s + 1) as f64)
                .map(|d| d.total)
                .collect();
            (!in_second.is_empty()).then(|| {
                (
                    s as f64 + 0.5,
                    percentile(&mut in_second, 0.99).as_secs_f64(),
                )
            })
        })
        .collect()
}

fn chart(runs: &[Run], path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(320);
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(120, 120, 120),
    ];
    let seconds = runs.iter().map(|r| r.seconds).fold(1.0, f64::max);
    let mut upper = ChartBuilder::on(&top)
        .caption(
            "Heavy model: limit (solid) and requests in flight (dashed)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..seconds, 0.0..70.0)?;
    upper
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("requests")
        .draw()?;
    for (run, color) in runs.iter().zip(colors) {
        let limit: Vec<(f64, f64)> = run
            .readings
            .iter()
            .filter_map(|r| Some((r.at, r.limit?.min(70.0))))
            .collect();
        if !limit.is_empty() {
            upper
                .draw_series(LineSeries::new(limit, color.stroke_width(2)))?
                .label(format!("{} limit", run.name))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color));
        }
        let in_flight: Vec<(f64, f64)> = run.readings.iter().map(|r| (r.at, r.in_flight)).collect();
        upper
            .draw_series(DashedLineSeries::new(
                in_flight,
                4,
                3,
                color.stroke_width(1),
            ))?
            .label(format!("{} in flight", run.name))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.mix(0.5)));
    }
    upper
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    let mut lower = ChartBuilder::on(&bottom)
        .caption(
            "p99 end-to-end latency of requests answered 200, per second",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..seconds, 0.0..4.0)?;
    lower
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("seconds")
        .draw()?;
    for (run, color) in runs.iter().zip(colors) {
        lower
            .draw_series(LineSeries::new(
                p99_per_second(run)
                    .into_iter()
                    .map(|(x, y)| (x, y.min(4.0))),
                color.stroke_width(2),
            ))?
            .label(run.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color));
    }
    lower
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[allow(clippy::print_stdout)] // the table is this program's output
#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(15, |s| s.parse().expect("seconds"));
    let path = args
        .next()
        .unwrap_or_else(|| "target/capacity-load.svg".to_owned());
    let length = Duration::from_secs(seconds);
    let mut runs = Vec::new();
    for (name, capacity) in [
        ("adaptive", ml_api::HEAVY_CAPACITY),
        ("fixed 60", CapacityLimit::fixed(60)),
        ("no limit", CapacityLimit::unlimited()),
    ] {
        runs.push(run(name, capacity, length).await);
    }
    let mut out = String::new();
    out.push_str(&format!(
        "{CLIENTS} clients × {IN_FLIGHT_EACH} in flight + 1 light client, GPU_UNITS={GPU_UNITS}, HEAVY_MS={HEAVY_MS}, {seconds} s; capacity {:.0}/s\n\n",
        GPU_UNITS as f64 * 1000.0 / HEAVY_MS as f64
    ));
    out.push_str("| run | limit after 10 s | in the model p50 / p99 ms | end to end p50 / p99 ms | goodput | light client 200 | light p99 wait ms | 503 | 429 |\n|---|---|---|---|---|---|---|---|---|\n");
    let mut misses = Vec::new();
    for run in &runs {
        let (row, missed) = summarize(run);
        out.push_str(&row);
        out.push('\n');
        misses.extend(missed);
    }
    let adaptive = &runs[0];
    let limits: Vec<String> = adaptive
        .readings
        .iter()
        .filter(|r| (r.at * 4.0).round() as u64 % 4 == 0)
        .filter_map(|r| Some(format!("{:.0}s: {:.0}", r.at, r.limit?)))
        .collect();
    out.push_str(&format!(
        "\nadaptive limit over time: {}\n",
        limits.join(", ")
    ));
    print!("{out}");
    match chart(&runs, &path) {
        Ok(()) => eprintln!("chart: {path}"),
        Err(error) => eprintln!("no chart: {error}"),
    }
    if misses.is_empty() {
        eprintln!("the adaptive run meets every bound");
    } else {
        eprintln!("the adaptive run misses: {}", misses.join("; "));
        std::process::exit(1);
    }
}
