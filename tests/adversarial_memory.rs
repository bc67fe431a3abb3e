//! A flood of distinct 8 KiB keys through a real server grows memory by the store's fixed
//! per-key size, not by the keys' length. A test binary of its own, apart from `tests/http`:
//! resident memory is the measure, and other tests in the same process would move it.

#[path = "http/common.rs"]
mod common;

use axum::Router;
use axum::routing::post;
use ratelimit::{Limiter, rate_limit};

use common::{client_from, serve};

/// This process's resident memory.
fn resident_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: i64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[rate_limit("2/minute", key = header("X-Client"))]
async fn by_header() -> &'static str {
    "ok"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_long_keys_grows_memory_by_the_per_key_size_not_the_key_length() {
    const KEYS: usize = 100_000;
    const KEY_LEN: usize = 8 * 1024;
    let addr = serve(
        Router::new()
            .route("/by-header", post(by_header))
            .layer(Limiter::new().layer()),
    )
    .await;
    let c = client_from("127.0.20.13");
    let url = format!("http://{addr}/by-header");
    // Warm up: the connection, the route's first request, the maps' first growth.
    for i in 0..1_000 {
        let key = format!("{i:0>width$}", width = KEY_LEN);
        assert!(
            c.post(&url)
                .header("x-client", key)
                .send()
                .await
                .unwrap()
                .status()
                .is_success()
        );
    }
    let before = resident_bytes();
    let mut tasks = Vec::new();
    for part in 0..4 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut key = vec![b'k'; KEY_LEN];
            for i in (part..KEYS).step_by(4) {
                key[..12].copy_from_slice(format!("{i:012}").as_bytes());
                let value = reqwest::header::HeaderValue::from_bytes(&key).unwrap();
                let r = c.post(&url).header("x-client", value).send().await.unwrap();
                // Admitted: each key is its own budget, stored apart.
                assert!(r.status().is_success());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let per_key = (resident_bytes() - before) as f64 / KEYS as f64;
    // The store's entry is 40 bytes (about 90 with the map's spare room): far below the 8 KiB
    // a stored key would take.
    assert!(per_key < 512.0, "{per_key:.0} bytes per key");
}
