//! The examples over real HTTP: in_memory and tiers, as the Python seed tests them.

use reqwest::StatusCode;

use crate::apps::in_memory;
use crate::apps::tiers;
use crate::common::{body, client_from, post_with, remaining, serve, serve_without_connect_info};

/// POSTs a body that is not JSON, with a JSON content type.
async fn post_malformed(client: &reqwest::Client, url: &str) -> reqwest::Response {
    client
        .post(url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_eleventh_predict_gets_429_with_retry_after_and_the_detail() {
    let addr = serve(in_memory::app()).await;
    let client = client_from("127.0.0.1");
    let url = format!("http://{addr}/predict");
    for i in 1..=10 {
        let r = client.post(&url).json(&body()).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "request {i}");
        let h = r.headers();
        assert!(
            h.get("x-ratelimit-limit").is_none(),
            "the draft's fields alone by default"
        );
        assert_eq!(h["ratelimit-policy"], "\"10-per-1m\";q=10;w=60");
        assert!(
            h["ratelimit"]
                .to_str()
                .unwrap()
                .starts_with(&format!("\"10-per-1m\";r={};t=", 10 - i))
        );
    }
    let r = client.post(&url).json(&body()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=6).contains(&retry), "retry-after {retry}");
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(remaining(&r), "0");
    let detail: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        detail,
        serde_json::json!({"detail": "Rate limit exceeded: 10 per 1 minute"})
    );
}

#[tokio::test]
async fn another_client_is_unaffected_and_spoofed_forwarding_changes_nothing() {
    let addr = serve(in_memory::app()).await;
    let url = format!("http://{addr}/predict");
    let abuser = client_from("127.0.0.1");
    for _ in 0..10 {
        assert_eq!(
            abuser
                .post(&url)
                .json(&body())
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    // Pretending to be someone else is not believed: no proxy is trusted.
    for header in ["x-forwarded-for", "x-real-ip"] {
        let r = post_with(&abuser, &url, header, "198.51.100.77").await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{header}");
    }
    let r = post_with(&abuser, &url, "forwarded", "for=198.51.100.77").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let other = client_from("127.0.0.2");
    let r = other.post(&url).json(&body()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(remaining(&r), "9");
}

#[tokio::test]
async fn a_concurrent_burst_admits_exactly_the_limit() {
    let addr = serve(in_memory::app()).await;
    let url = format!("http://{addr}/predict");
    let client = client_from("127.0.0.3");
    let requests = (0..60).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            client
                .post(&url)
                .json(&body())
                .send()
                .await
                .unwrap()
                .status()
        })
    });
    let mut ok = 0;
    let mut limited = 0;
    for r in requests {
        match r.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, limited), (10, 50));
}

#[tokio::test]
async fn batch_predict_allows_two_and_model_info_is_never_limited() {
    let addr = serve(in_memory::app()).await;
    let client = client_from("127.0.0.4");
    let url = format!("http://{addr}/batch-predict");
    // Any JSON object, as the seed's `data: dict`: the seed's own curl body, and a batch.
    let answers = [
        (serde_json::json!({"data": [1, 2, 3]}), 1),
        (
            serde_json::json!({"data": [[1, 2], [3], [4, 5, 6]], "model": "v2"}),
            3,
        ),
    ];
    for (body, predictions) in answers {
        let r = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{body}");
        let answer: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            answer["results"].as_array().unwrap().len(),
            predictions,
            "{answer}"
        );
    }
    let batch = serde_json::json!({"data": [4]});
    assert_eq!(
        client
            .post(&url)
            .json(&batch)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..30 {
        let r = client
            .get(format!("http://{addr}/model-info"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers().get("ratelimit").is_none(),
            "an unlimited route carries no limit headers"
        );
    }
}

#[tokio::test]
async fn a_rejected_request_is_refused_before_its_body_is_read() {
    let addr = serve(in_memory::app()).await;
    let client = client_from("127.0.0.5");
    let url = format!("http://{addr}/predict");
    for _ in 0..10 {
        client.post(&url).json(&body()).send().await.unwrap();
    }
    // A malformed body would be a 4xx from the JSON extractor if it were read.
    let r = post_malformed(&client, &url).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// The status of a response that must be JSON `{"detail": ...}`.
async fn json_detail(r: reqwest::Response) -> StatusCode {
    let status = r.status();
    assert_eq!(r.headers()["content-type"], "application/json", "{status}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["detail"].is_string(), "{status}: {body}");
    status
}

#[tokio::test]
async fn bad_bodies_get_a_json_4xx_not_a_crash() {
    let addr = serve(in_memory::app()).await;
    let client = client_from("127.0.0.6");
    let url = format!("http://{addr}/predict");
    let r = post_malformed(&client, &url).await;
    assert_eq!(json_detail(r).await, StatusCode::BAD_REQUEST);
    let r = client
        .post(&url)
        .json(&serde_json::json!({"data": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_detail(r).await, StatusCode::UNPROCESSABLE_ENTITY);
    let r = client.post(&url).body("data=1").send().await.unwrap();
    assert_eq!(json_detail(r).await, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(json_detail(r).await, StatusCode::METHOD_NOT_ALLOWED);
    let r = client
        .get(format!("http://{addr}/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(json_detail(r).await, StatusCode::NOT_FOUND);
    assert_eq!(
        client
            .post(&url)
            .json(&body())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // The tiers example too.
    let addr = serve(tiers::app()).await;
    let r = client
        .post(format!("http://{addr}/premium/predict"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_detail(r).await, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn without_connect_info_the_answer_is_a_clear_500() {
    let addr = serve_without_connect_info(in_memory::app()).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://{addr}/predict"))
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let detail: serde_json::Value = r.json().await.unwrap();
    assert!(
        detail["detail"]
            .as_str()
            .unwrap()
            .contains("client address"),
        "{detail}"
    );
    // The server is still up.
    let r = client
        .get(format!("http://{addr}/model-info"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn premium_tier_gets_thirty_and_others_get_403() {
    let addr = serve(tiers::app()).await;
    let client = client_from("127.0.0.7");
    let url = format!("http://{addr}/premium/predict");
    for i in 1..=30 {
        let r = post_with(&client, &url, "x-user-tier", "premium").await;
        assert_eq!(r.status(), StatusCode::OK, "premium request {i}");
    }
    let r = post_with(&client, &url, "x-user-tier", "premium").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // The tier is the key: the free tier has its own budget, and is refused by the handler.
    let r = post_with(&client, &url, "x-user-tier", "free").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let detail: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        detail,
        serde_json::json!({"detail": "Premium access required"})
    );
    // And /predict is 10 per minute by IP.
    let url = format!("http://{addr}/predict");
    for _ in 0..10 {
        assert_eq!(
            client
                .post(&url)
                .json(&body())
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        client
            .post(&url)
            .json(&body())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}
