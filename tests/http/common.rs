//! A real server on an ephemeral port and a real client.

#![allow(dead_code)] // each test file uses a part

use std::net::{IpAddr, SocketAddr};

use axum::Router;

/// Serves `app` on 127.0.0.1 on a free port, with the peer address available to handlers.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// Serves `app` without the peer address (a common misconfiguration).
pub async fn serve_without_connect_info(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A client whose connections come from `from` (any 127.0.0.0/8 address works on Linux).
pub fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// The body every example accepts.
pub fn body() -> serde_json::Value {
    serde_json::json!({"data": [1, 2, 3]})
}

/// POSTs the example body to `url` with one extra header.
pub async fn post_with(
    client: &reqwest::Client,
    url: &str,
    name: &str,
    value: &str,
) -> reqwest::Response {
    client
        .post(url)
        .header(name, value)
        .json(&body())
        .send()
        .await
        .unwrap()
}

/// What the draft's `RateLimit` field (the default header style) says is left of the first
/// policy it names: its `r=`.
pub fn remaining(r: &reqwest::Response) -> String {
    draft_parameter(r, "ratelimit", "r")
}

/// The quota the draft's `RateLimit-Policy` field names first: its `q=`.
pub fn quota(r: &reqwest::Response) -> String {
    draft_parameter(r, "ratelimit-policy", "q")
}

fn draft_parameter(r: &reqwest::Response, field: &str, name: &str) -> String {
    let value = r.headers()[field].to_str().unwrap();
    let first = value.split(',').next().unwrap();
    first
        .split(';')
        .find_map(|p| p.trim().strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{field}: {value} has no {name}="))
        .to_owned()
}
