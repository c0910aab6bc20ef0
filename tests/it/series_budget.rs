//! The global series budget under the cardinality attack of issue 17: 100,000 distinct names
//! per dimension (namespace, provider, model, status code spread; Claude Code metric labels)
//! through native ingest and OTLP metrics. The scrape stays within the budget and 5 MB, every
//! family still sums to the true total, and the degradation is counted.

use gatemeter::client::exposition::Exposition;

use crate::harness::TestApp;

const N: usize = 100_000;
const BATCH: usize = 10_000;
const MAX_SERIES: u64 = 25_000;

fn attack_record(i: usize) -> String {
    format!(
        r#"{{"namespace":"ns-{i}","provider":"prov-{i}","model":"model-{i}","status":{},"duration_ms":{},"ttfb_ms":1,"input_tokens":{},"output_tokens":2}}"#,
        200 + i % 300,
        1 + i % 5000,
        i % 70_000
    )
}

/// Sum of the samples named `name` over every label set.
fn sum(m: &Exposition, name: &str) -> f64 {
    m.samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// Sum of the `_bucket{le="+Inf"}` samples of a histogram family.
fn inf_sum(m: &Exposition, family: &str) -> f64 {
    let name = format!("{family}_bucket");
    m.samples
        .iter()
        .filter(|s| s.name == name && s.labels.get("le").map(String::as_str) == Some("+Inf"))
        .map(|s| s.value)
        .sum()
}

fn cc_points(from: usize, to: usize, now_ns: u128) -> Vec<u8> {
    let start = now_ns - 60_000_000_000;
    let points: Vec<String> = (from..to)
        .map(|i| {
            format!(
                r#"{{"attributes":[{{"key":"session.id","value":{{"stringValue":"s{i}"}}}},{{"key":"type","value":{{"stringValue":"t{i}"}}}},{{"key":"model","value":{{"stringValue":"m{i}"}}}}],"asInt":"3","startTimeUnixNano":"{start}","timeUnixNano":"{now_ns}"}}"#
            )
        })
        .collect();
    format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[]}},"scopeMetrics":[{{"metrics":[{{"name":"claude_code.token.usage","sum":{{"aggregationTemporality":1,"isMonotonic":true,"dataPoints":[{}]}}}}]}}]}}]}}"#,
        points.join(",")
    )
    .into_bytes()
}

#[tokio::test]
async fn cardinality_attack_stays_within_the_series_budget() {
    let app = TestApp::with_config(&format!("pipeline:\n  max_series: {MAX_SERIES}\n")).await;
    let (mut duration_ms, mut input_tokens) = (0u64, 0u64);
    for b in 0..N / BATCH {
        let recs: Vec<String> = (b * BATCH..(b + 1) * BATCH).map(attack_record).collect();
        for i in b * BATCH..(b + 1) * BATCH {
            duration_ms += 1 + (i % 5000) as u64;
            input_tokens += (i % 70_000) as u64;
        }
        let (status, body) = app.post_json(&format!("[{}]", recs.join(","))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["accepted"], BATCH, "{body}");
    }
    let now_ns = gatemeter::clock::now_ms() as u128 * 1_000_000;
    for b in 0..N / BATCH {
        let resp = app
            .client
            .post(app.url("/v1/metrics"))
            .header("content-type", "application/json")
            .body(cc_points(b * BATCH, (b + 1) * BATCH, now_ns))
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 200);
    }

    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let m = Exposition::parse(&text).expect("exposition");
    let series = m.samples.len() as u64;
    assert!(text.len() <= 5 << 20, "scrape of {} bytes", text.len());
    assert!(series <= MAX_SERIES, "{series} series");
    assert_eq!(
        m.value("gatemeter_series_budget", &[("state", "used")]),
        series as f64
    );
    assert_eq!(
        m.value("gatemeter_series_budget", &[("state", "limit")]),
        MAX_SERIES as f64
    );

    // Totals stay exact: every family sums to the true total over its series, `__overflow__`
    // included.
    let n = N as f64;
    assert_eq!(m.value("ai_gateway_requests_total", &[]), n);
    for family in [
        "ai_gateway_namespace_requests_total",
        "ai_gateway_namespace_status_codes_total",
        "model_requests_total",
        "gatemeter_provider_requests_total",
    ] {
        assert_eq!(sum(&m, family), n, "{family}");
    }
    for family in [
        "gatemeter_namespace_request_duration_seconds",
        "gatemeter_provider_request_duration_seconds",
        "model_request_duration_seconds",
        "gen_ai_client_operation_duration_seconds",
    ] {
        assert_eq!(inf_sum(&m, family), n, "{family}");
        assert_eq!(sum(&m, &format!("{family}_count")), n, "{family}");
        let secs = sum(&m, &format!("{family}_sum"));
        assert!(
            (secs - duration_ms as f64 / 1000.0).abs() < 1e-3,
            "{family}: {secs}"
        );
    }
    // Input and output, one observation each per record.
    assert_eq!(inf_sum(&m, "gen_ai_client_token_usage"), 2.0 * n);
    assert_eq!(
        sum(&m, "model_tokens_input_total"),
        input_tokens as f64,
        "model_tokens_input_total"
    );
    assert_eq!(sum(&m, "claude_code_token_usage_tokens_total"), 3.0 * n);

    // Histograms degraded first (scopes with counters and no histogram), then label values
    // folded; both counted.
    let with_counters = m
        .samples
        .iter()
        .filter(|s| s.name == "model_requests_total")
        .count();
    let with_histograms = m
        .samples
        .iter()
        .filter(|s| s.name == "model_request_duration_seconds_count")
        .count();
    assert!(
        with_histograms > 1 && with_histograms < with_counters,
        "{with_histograms} of {with_counters}"
    );
    assert!(m.value("gatemeter_series_refused_total", &[("kind", "histogram")]) > 0.0);
    assert!(m.value("gatemeter_series_refused_total", &[("kind", "series")]) > 0.0);
    for d in ["namespace", "provider", "model"] {
        assert!(
            m.value("gatemeter_series_overflow_total", &[("dimension", d)]) > 0.0,
            "{d}"
        );
    }
    assert!(
        m.value(
            "gatemeter_claude_code_series_overflow_total",
            &[("metric", "claude_code.token.usage")]
        ) > 0.0
    );
    app.stop().await;
}

/// A label value that is literally `__overflow__` is the overflow series, not a second scope with
/// the same labels (one overwrote the other, and the namespace family lost requests).
#[tokio::test]
async fn a_literal_overflow_label_is_the_overflow_series() {
    let app = TestApp::with_config("pipeline:\n  max_series_per_dimension: 2\n").await;
    let records: Vec<String> = ["a", "__overflow__", "b", "c", "__overflow__", "d"]
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            format!(r#"{{"request_id":"o{i}","namespace":"{ns}","provider":"p","model":"m","status":200,"duration_ms":5}}"#)
        })
        .collect();
    let (status, v) = app.post_json(&format!("[{}]", records.join(","))).await;
    assert_eq!(status, 200, "{v}");
    let m = app.metrics().await;
    let per_ns: Vec<(String, f64)> = m
        .samples
        .iter()
        .filter(|s| s.name == "ai_gateway_namespace_requests_total")
        .map(|s| (s.labels["namespace"].clone(), s.value))
        .collect();
    assert_eq!(
        sum(&m, "ai_gateway_namespace_requests_total"),
        6.0,
        "{per_ns:?}"
    );
    let overflow: Vec<_> = per_ns.iter().filter(|(n, _)| n == "__overflow__").collect();
    assert_eq!(overflow.len(), 1, "one __overflow__ series: {per_ns:?}");
    // "a" and "b" took the two places; both literal ones, "c" and "d" are the overflow.
    assert_eq!(overflow[0].1, 4.0, "{per_ns:?}");
    app.stop().await;
}
