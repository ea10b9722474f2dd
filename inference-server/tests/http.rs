//! The HTTP service, black-box, over a real server on port 0 with a real ONNX model.

mod common;

use common::{TestServer, load, metric, test_model_dir};
use inference_api::{ErrorBody, ModelInfo, PredictResponse};
use inference_server::http::RequestLimits;
use inference_server::infer::BatcherConfig;
use serde_json::json;

fn limits() -> RequestLimits {
    RequestLimits { max_texts: 100, max_text_length: 500, max_body_bytes: 64 * 1024 }
}

async fn tiny_server(batcher: BatcherConfig) -> TestServer {
    TestServer::start(&load(&test_model_dir("tiny-bert")), batcher, limits()).await
}

#[tokio::test]
async fn predict_answers_every_text_in_order_with_the_briefs_fields() {
    let server = tiny_server(BatcherConfig::default()).await;
    let texts = ["one", "a longer second text here", "three", "one"];
    let resp = server.post("/v1/predict", json!({ "texts": texts }).to_string()).await;
    assert_eq!(resp.status(), 200);
    let raw: serde_json::Value = resp.json().await.unwrap();
    let first = raw["results"][0].as_object().unwrap();
    for field in ["label", "score", "inference_time_ms", "model_name", "text_length", "backend", "cached", "scores", "tokens", "truncated"]
    {
        assert!(first.contains_key(field), "missing {field}");
    }
    let body: PredictResponse = serde_json::from_value(raw).unwrap();
    assert_eq!(body.results.len(), 4);
    assert_eq!(body.results[1].text_length, texts[1].len());
    assert_eq!(body.results[0].scores, body.results[3].scores);
    assert_eq!(body.results[0].backend, "onnxruntime");
    assert!(!body.results[0].cached);

    let info: ModelInfo = server.get("/v1/model").await.json().await.unwrap();
    assert_eq!(info.labels, ["NEGATIVE", "POSITIVE"]);
    assert_eq!(info.max_length, 32);
    assert_eq!(server.get("/health/live").await.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_json_error_naming_the_field() {
    let server = tiny_server(BatcherConfig::default()).await;
    let long = "x".repeat(501);
    let too_many: Vec<&str> = vec!["a"; 101];
    let huge = json!({ "texts": ["y".repeat(70 * 1024)] }).to_string();
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        ("{not json".into(), 400, None),
        (json!({}).to_string(), 422, Some("body")),
        (json!({ "texts": [] }).to_string(), 422, Some("texts")),
        (json!({ "texts": ["ok", 7] }).to_string(), 422, Some("texts[1]")),
        (json!({ "texts": ["ok", ""] }).to_string(), 422, Some("texts[1]")),
        (json!({ "texts": ["ok", long] }).to_string(), 413, Some("texts[1]")),
        (json!({ "texts": too_many }).to_string(), 413, Some("texts")),
        (huge, 413, Some("body")),
        (json!({ "texts": ["word ".repeat(60)], "options": { "truncate": false } }).to_string(), 422, Some("texts[0]")),
    ];
    for (body, status, field) in cases {
        let resp = server.post("/v1/predict", body.clone()).await;
        assert_eq!(resp.status(), status, "{}", &body[..body.len().min(80)]);
        let err: ErrorBody = resp.json().await.unwrap();
        assert_eq!(err.field.as_deref(), field, "{}", &body[..body.len().min(80)]);
        assert!(!err.message.is_empty());
    }
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"inference_errors_total{kind="422"} 5"#), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn a_full_queue_sheds_load_with_429_and_retry_after() {
    let server = tiny_server(BatcherConfig { max_queued_texts: 3, ..Default::default() }).await;
    let resp = server.post("/v1/predict", json!({ "texts": ["a", "b", "c", "d"] }).to_string()).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let err: ErrorBody = resp.json().await.unwrap();
    assert_eq!(err.error, "queue_full");
    // Within the bound the same server still answers.
    assert_eq!(server.post("/v1/predict", json!({ "texts": ["a", "b", "c"] }).to_string()).await.status(), 200);
    server.stop().await;
}

/// A text that fails (or panics) its forward pass fails alone, with a 422 naming it:
/// requests that shared the pass get their results, and the thread serves on.
#[tokio::test]
async fn a_failing_text_fails_alone_and_the_thread_serves_on() {
    use inference_server::infer::Fault;
    for fault in [Fault::Fail, Fault::Panic] {
        // Long waits, so that the concurrent requests share one pass.
        let batcher = BatcherConfig { max_wait_ms: 300, fail_on: Some("POISON".into()), fault, ..Default::default() };
        let server = tiny_server(batcher).await;
        let bodies = [
            json!({"texts": ["a good day", "a fine day"]}),
            json!({"texts": ["POISON pill", "a third day"]}),
            json!({"texts": ["fourth"]}),
        ];
        let answers = futures_util::future::join_all(bodies.iter().map(|b| server.post("/v1/predict", b.to_string()))).await;
        let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
        assert_eq!(statuses, [200, 422, 200], "{fault:?}");
        let err: ErrorBody = answers.into_iter().nth(1).unwrap().json().await.unwrap();
        assert_eq!((err.error.as_str(), err.field.as_deref()), ("inference_failed", Some("texts[0]")), "{fault:?}");
        let metrics = server.get("/metrics").await.text().await.unwrap();
        assert_eq!(metric(&metrics, "inference_batch_size_count"), 1.0, "{fault:?}: the five texts shared one pass");
        // The thread is alive and serves the next request.
        assert_eq!(server.post("/v1/predict", json!({"texts": ["after"]}).to_string()).await.status(), 200, "{fault:?}");
        server.stop().await;
    }
}

/// With its only inference thread gone, the server cannot serve: it says so on
/// `/health/ready`, so that it leaves its Service, and answers 503 rather than hanging.
#[tokio::test]
async fn a_server_without_inference_threads_is_not_ready() {
    use inference_server::infer::Fault;
    let server = tiny_server(BatcherConfig { fail_on: Some("POISON".into()), fault: Fault::Exit, ..Default::default() }).await;
    assert_eq!(server.get("/health/ready").await.status(), 200);
    assert_eq!(server.post("/v1/predict", json!({"texts": ["POISON"]}).to_string()).await.status(), 503);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.get("/health/ready").await.status() == 200 {
        assert!(tokio::time::Instant::now() < deadline, "still ready with no inference thread");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(server.get("/health/ready").await.status(), 503);
    assert_eq!(server.get("/health/live").await.status(), 200);
    assert_eq!(server.post("/v1/predict", json!({"texts": ["fine"]}).to_string()).await.status(), 503);
    server.stop().await;
}

#[tokio::test]
async fn concurrent_small_requests_share_forward_passes() {
    let server = tiny_server(BatcherConfig { max_wait_ms: 50, ..Default::default() }).await;
    let requests = (0..100).map(|i| server.post("/v1/predict", json!({ "texts": [format!("text number {i}")] }).to_string()));
    for resp in futures_util::future::join_all(requests).await {
        assert_eq!(resp.status(), 200);
    }
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let passes = metric(&metrics, "inference_batch_size_count");
    let texts = metric(&metrics, "inference_batch_size_sum");
    assert_eq!(texts, 100.0);
    assert!(passes <= 20.0, "100 concurrent requests took {passes} forward passes");
    assert!(metric(&metrics, "inference_queue_wait_seconds_count") >= 100.0);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    let server = tiny_server(BatcherConfig { max_wait_ms: 1000, ..Default::default() }).await;
    let url = format!("{}/v1/predict", server.url);
    let client = server.client.clone();
    // The batcher holds this text for a second; shutdown begins once it is queued.
    let in_flight =
        tokio::spawn(async move { client.post(url).header("content-type", "application/json").body(r#"{"texts":["late"]}"#).send().await });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server.get("/metrics").await.text().await.unwrap().contains("inference_queue_depth 1") {
        assert!(tokio::time::Instant::now() < deadline, "the request never reached the queue");
    }
    let url = server.url.clone();
    server.stop().await;
    let resp = in_flight.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<PredictResponse>().await.unwrap().results.len(), 1);
    assert!(reqwest::get(format!("{url}/health/live")).await.is_err(), "no longer accepting");
}
