//! The OTLP log export's retry rules against a scripted OTLP/HTTP endpoint: retried only on
//! 429/502/503/504, honouring `Retry-After`; anything else drops the batch, counted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;

use crate::harness::TestApp;

#[derive(Default)]
struct Script {
    /// Answers to give, in order (status, Retry-After); then 200.
    answers: Vec<(u16, Option<u32>)>,
    /// Arrival time and record count of each request.
    seen: Vec<(Instant, usize)>,
}

type Shared = Arc<Mutex<Script>>;

async fn endpoint(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    assert_eq!(headers["content-type"], "application/x-protobuf");
    let req = ExportLogsServiceRequest::decode(body).expect("a valid export request");
    let n = req
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum();
    let mut s = s.lock().expect("lock");
    s.seen.push((Instant::now(), n));
    let (status, retry_after) = if s.answers.is_empty() {
        (200, None)
    } else {
        s.answers.remove(0)
    };
    let mut h = HeaderMap::new();
    if let Some(r) = retry_after {
        h.insert("retry-after", r.into());
    }
    (
        StatusCode::from_u16(status).expect("status"),
        h,
        [("content-type", "application/x-protobuf")],
        Vec::new(),
    )
}

async fn scripted(answers: Vec<(u16, Option<u32>)>) -> (String, Shared) {
    let shared: Shared = Arc::new(Mutex::new(Script {
        answers,
        seen: Vec::new(),
    }));
    let app = Router::new()
        .route("/v1/logs", post(endpoint))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/v1/logs"), shared)
}

async fn edge(endpoint: &str) -> TestApp {
    TestApp::with_config(&format!(
        "otlp_export:\n  endpoint: {endpoint}\n  batch_size: 100\n  interval_ms: 20\n  max_retries: 3\n"
    ))
    .await
}

async fn send_records(app: &TestApp, prefix: &str, n: usize) {
    let records: Vec<String> = (0..n)
        .map(|i| {
            format!(r#"{{"request_id":"{prefix}{i}","model":"m","status":200,"duration_ms":3}}"#)
        })
        .collect();
    let (status, _) = app.post_json(&format!("[{}]", records.join(","))).await;
    assert_eq!(status, 200);
}

async fn settle(shared: &Shared, requests: usize) {
    for _ in 0..100 {
        if shared.lock().expect("lock").seen.len() >= requests {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a wrongly retrying exporter the chance to show itself.
    tokio::time::sleep(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn retryable_answers_are_retried_honouring_retry_after() {
    let (url, shared) = scripted(vec![(503, Some(1)), (429, None), (502, None), (504, None)]).await;
    let app = edge(&url).await;
    send_records(&app, "r", 5).await;
    settle(&shared, 5).await;
    let seen = shared.lock().expect("lock").seen.clone();
    assert_eq!(
        seen.len(),
        4,
        "three retries allowed: 503, 429, 502, then 504 ends it"
    );
    assert!(seen.iter().all(|(_, n)| *n == 5));
    assert!(
        seen[1].0 - seen[0].0 >= Duration::from_millis(950),
        "Retry-After: 1 was honoured ({:?})",
        seen[1].0 - seen[0].0
    );
    let m = app.metrics().await;
    assert_eq!(m.value("gatemeter_otlp_export_retries_total", &[]), 3.0);
    assert_eq!(
        m.value(
            "gatemeter_otlp_export_dropped_records_total",
            &[("reason", "retries_exhausted")]
        ),
        5.0
    );
    assert_eq!(m.value("gatemeter_otlp_export_records_total", &[]), 0.0);
    app.stop().await;
}

#[tokio::test]
async fn a_retry_that_succeeds_delivers_once() {
    let (url, shared) = scripted(vec![(503, None)]).await;
    let app = edge(&url).await;
    send_records(&app, "r", 7).await;
    settle(&shared, 2).await;
    assert_eq!(shared.lock().expect("lock").seen.len(), 2);
    let m = app.metrics().await;
    assert_eq!(m.value("gatemeter_otlp_export_records_total", &[]), 7.0);
    assert_eq!(m.value("gatemeter_otlp_export_retries_total", &[]), 1.0);
    app.stop().await;
}

#[tokio::test]
async fn other_errors_are_not_retried() {
    for status in [400u16, 500, 401] {
        let (url, shared) = scripted(vec![(status, Some(0))]).await;
        let app = edge(&url).await;
        send_records(&app, "r", 4).await;
        settle(&shared, 1).await;
        assert_eq!(shared.lock().expect("lock").seen.len(), 1, "{status}");
        let m = app.metrics().await;
        assert_eq!(m.value("gatemeter_otlp_export_retries_total", &[]), 0.0);
        assert_eq!(
            m.value(
                "gatemeter_otlp_export_dropped_records_total",
                &[("reason", "rejected")]
            ),
            4.0,
            "{status}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn shutdown_flushes_the_export() {
    let (url, shared) = scripted(vec![]).await;
    // A long interval: only the shutdown flush can send the partial batch.
    let app = TestApp::with_config(&format!(
        "otlp_export:\n  endpoint: {url}\n  batch_size: 1000\n  interval_ms: 600000\n"
    ))
    .await;
    send_records(&app, "r", 3).await;
    app.stop().await;
    let seen = shared.lock().expect("lock").seen.clone();
    assert_eq!(seen.iter().map(|(_, n)| n).sum::<usize>(), 3);
}

#[tokio::test]
async fn a_full_export_queue_drops_and_counts() {
    let (url, shared) = scripted(vec![]).await;
    let app = TestApp::with_config(&format!(
        "otlp_export:\n  endpoint: {url}\n  queue_capacity: 4\n  interval_ms: 20\n"
    ))
    .await;
    send_records(&app, "r", 5).await; // one batch of 5 > 4: dropped whole
    send_records(&app, "s", 3).await; // fits
    settle(&shared, 1).await;
    let m = app.metrics().await;
    assert_eq!(
        m.value(
            "gatemeter_otlp_export_dropped_records_total",
            &[("reason", "queue_full")]
        ),
        5.0
    );
    assert_eq!(m.value("gatemeter_otlp_export_records_total", &[]), 3.0);
    // The records themselves were counted: the export never blocks or refuses ingest.
    assert_eq!(m.value("ai_gateway_requests_total", &[]), 8.0);
    app.stop().await;
}

/// `otlp_export.headers` (values from the environment) and `compression: gzip`: the export
/// reaches a gatemeter that requires an ingest token, gzipped; an unset variable is a config
/// error naming the header, never its value.
#[tokio::test]
async fn headers_from_the_environment_authenticate_a_gzipped_export() {
    use gatemeter::config::Config;
    let token = "export-token-0123456789";
    let receiver = TestApp::with_config(&format!(
        "auth:\n  ingest_tokens: [{token}]\nlog_store: {{kind: none}}\n"
    ))
    .await;
    let yaml = format!(
        "otlp_export:\n  endpoint: http://{}/v1/logs\n  batch_size: 2\n  interval_ms: 50\n  \
         compression: gzip\n  headers: {{authorization: \"Bearer ${{GM_TEST_EXPORT_TOKEN}}\"}}\n\
         log_store: {{kind: none}}\n",
        receiver.addr
    );
    let env = |k: &str| (k == "GM_TEST_EXPORT_TOKEN").then(|| token.to_string());
    let config = Config::from_yaml_str(&yaml, std::path::Path::new("x.yaml"), &env).expect("valid");
    assert!(
        !format!("{config:?}").contains(token),
        "the token is never printed"
    );
    let sender = TestApp::with_parsed(config, None).await;
    let body: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"request_id":"h{i}","model":"m","status":200,"duration_ms":1}}"#))
        .collect();
    let (status, ans) = sender.post_json(&format!("[{}]", body.join(","))).await;
    assert_eq!(status, 200, "{ans}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = receiver.metrics().await;
        if m.get("ai_gateway_requests_total", &[]) == Some(5.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the receiver never got the 5 records"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = Config::from_yaml_str(&yaml, std::path::Path::new("x.yaml"), &|_| None)
        .expect_err("unset variable");
    let msg = err.to_string();
    assert!(
        msg.contains("otlp_export.headers.authorization") && msg.contains("GM_TEST_EXPORT_TOKEN"),
        "{msg}"
    );
    sender.stop().await;
    receiver.stop().await;
}
