//! Native ingest: formats, encodings, partial acceptance, idempotency, two-phase concurrency,
//! overload.

use std::io::Write;
use std::time::Duration;

use crate::harness::{TestApp, answer};

fn rec(id: &str, ns: &str) -> String {
    format!(
        r#"{{"request_id":"{id}","namespace":"{ns}","model":"m","status":200,"duration_ms":10,"output_tokens":3}}"#
    )
}

#[tokio::test]
async fn partial_acceptance_counts_only_valid_records() {
    let app = TestApp::start().await;
    let body = format!(
        r#"[{}, {{"model":"m"}}, {}, "nope"]"#,
        rec("a", "n"),
        rec("b", "n")
    );
    let (status, ans) = app.post_json(&body).await;
    assert_eq!(status, 200, "{ans}");
    assert_eq!(ans["accepted"], 2);
    assert_eq!(ans["rejected"], 2);
    assert_eq!(ans["errors"][0]["index"], 1);
    assert_eq!(ans["errors"][0]["field"], "status");
    assert_eq!(ans["errors"][1]["index"], 3);
    let m = app.metrics().await;
    assert_eq!(m.value("ai_gateway_requests_total", &[]), 2.0);
    assert_eq!(
        m.value("gatemeter_tokens_total", &[("type", "output")]),
        6.0
    );
    app.stop().await;
}

#[tokio::test]
async fn gzip_and_zstd_and_ndjson_bodies() {
    let app = TestApp::start().await;
    let nd = format!("{}\n{}\n", rec("g1", "n"), rec("g2", "n"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(nd.as_bytes()).expect("gzip");
    let (status, ans) = answer(
        app.post_raw(
            gz.finish().expect("gzip"),
            Some("application/x-ndjson"),
            Some("gzip"),
        )
        .await,
    )
    .await;
    assert_eq!((status, ans["accepted"].as_u64()), (200, Some(2)), "{ans}");
    let arr = format!("[{},{}]", rec("z1", "n"), rec("z2", "n"));
    let z = zstd::encode_all(arr.as_bytes(), 3).expect("zstd");
    let (status, ans) = answer(
        app.post_raw(z, Some("application/json; charset=utf-8"), Some("zstd"))
            .await,
    )
    .await;
    assert_eq!((status, ans["accepted"].as_u64()), (200, Some(2)), "{ans}");
    assert_eq!(
        app.metrics().await.value("ai_gateway_requests_total", &[]),
        4.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_request_id_is_not_counted_twice() {
    let app = TestApp::start().await;
    for _ in 0..3 {
        let (status, ans) = app
            .post_json(&format!("[{},{}]", rec("same", "n"), rec("other", "n")))
            .await;
        assert_eq!((status, ans["accepted"].as_u64()), (200, Some(2)));
    }
    let m = app.metrics().await;
    assert_eq!(m.value("ai_gateway_requests_total", &[]), 2.0);
    assert_eq!(m.value("gatemeter_duplicate_records_total", &[]), 4.0);
    app.stop().await;
}

#[tokio::test]
async fn start_and_end_phases_drive_concurrency_and_abandoned_starts_expire() {
    let app = TestApp::with_config(
        "ingest:\n  pending_timeout_secs: 1\npipeline:\n  flush_interval_ms: 50\n",
    )
    .await;
    let start = |id: &str| format!(r#"{{"phase":"start","request_id":"{id}","namespace":"live"}}"#);
    let (status, _) = app
        .post_json(&format!(
            "[{},{},{}]",
            start("p1"),
            start("p2"),
            start("p3")
        ))
        .await;
    assert_eq!(status, 200);
    let m = app.metrics().await;
    assert_eq!(
        m.value(
            "ai_gateway_namespace_concurrent_requests",
            &[("namespace", "live"), ("namespace_code", "live")]
        ),
        3.0
    );
    assert_eq!(
        m.value("ai_gateway_requests_total", &[]),
        0.0,
        "a start is not a request"
    );

    let (status, _) = app.post_json(&rec("p1", "live")).await;
    assert_eq!(status, 200);
    let m = app.metrics().await;
    assert_eq!(
        m.value(
            "ai_gateway_namespace_concurrent_requests",
            &[("namespace", "live"), ("namespace_code", "live")]
        ),
        2.0
    );
    assert_eq!(m.value("ai_gateway_requests_total", &[]), 1.0);

    // p2 and p3 never finish: after the 1 s timeout they are abandoned.
    let mut abandoned = 0.0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let m = app.metrics().await;
        abandoned = m.value(
            "gatemeter_abandoned_requests_total",
            &[("namespace", "live")],
        );
        if abandoned == 2.0 {
            assert_eq!(
                m.value(
                    "ai_gateway_namespace_concurrent_requests",
                    &[("namespace", "live"), ("namespace_code", "live")]
                ),
                0.0
            );
            assert_eq!(m.value("gatemeter_pending_requests", &[]), 0.0);
            break;
        }
    }
    assert_eq!(abandoned, 2.0);
    app.stop().await;
}

#[tokio::test]
async fn health_endpoints_and_unknown_routes() {
    let app = TestApp::start().await;
    let r = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200);
    let (_, ans) = answer(r).await;
    assert_eq!(ans["live_store"], "memory");
    let r = app.client.get(app.url("/nope")).send().await.expect("404");
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .get(app.url("/v1/events"))
        .send()
        .await
        .expect("405");
    assert_eq!(r.status(), 405);
    app.stop().await;
}

#[tokio::test]
async fn series_cap_folds_new_label_values_into_overflow() {
    let app = TestApp::with_config("pipeline:\n  max_series_per_dimension: 2\n").await;
    let body = format!(
        "[{},{},{},{}]",
        rec("1", "a"),
        rec("2", "b"),
        rec("3", "c"),
        rec("4", "d")
    );
    app.post_json(&body).await;
    let m = app.metrics().await;
    assert_eq!(
        m.value(
            "ai_gateway_namespace_requests_total",
            &[
                ("namespace", "__overflow__"),
                ("namespace_code", "__overflow__")
            ]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "gatemeter_series_overflow_total",
            &[("dimension", "namespace")]
        ),
        2.0
    );
    assert!(
        m.get(
            "ai_gateway_namespace_requests_total",
            &[("namespace", "d"), ("namespace_code", "d")]
        )
        .is_none()
    );
    app.stop().await;
}

/// SPEC §7: a cost sent in another currency (`RMB` = `CNY`) is converted with
/// `pricing.exchange_rates` into exact micro-USD, the amount and currency kept in the log; a
/// currency without a rate, or an amount without a currency, is refused naming the field.
#[tokio::test]
async fn costs_in_another_currency_are_converted_and_kept_in_the_log() {
    let app =
        TestApp::with_config("pricing:\n  exchange_rates: {CNY: 0.138, EUR: \"1.08\"}\n").await;
    let rec = |id: &str, extra: &str| {
        format!(
            r#"{{"request_id":"{id}","namespace":"fx","provider":"p","model":"m","status":200,"duration_ms":5,{extra}}}"#
        )
    };
    let body = format!(
        "[{},{},{},{},{},{}]",
        rec("rmb", r#""cost":12.5,"currency":"RMB""#),
        rec("cny", r#""cost":"7.1234567","currency":"cny""#),
        rec("eur", r#""cost":"0.000001","currency":"EUR""#),
        rec("jpy", r#""cost":100,"currency":"JPY""#),
        rec("none", r#""cost":1"#),
        rec("both", r#""cost":1,"currency":"CNY","cost_usd":0.2"#),
    );
    let (status, ans) = app.post_json(&body).await;
    assert_eq!(status, 200, "{ans}");
    assert_eq!(ans["accepted"], 3, "{ans}");
    let errors: Vec<(u64, &str)> = ans["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap_or(99),
                e["field"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [(3, "currency"), (4, "currency"), (5, "cost")],
        "{ans}"
    );
    assert!(
        ans["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("JPY")),
        "{ans}"
    );
    // 12.5 × 0.138 = 1.725 USD; 7.1234567 × 0.138 = 0.98303702… USD (half up to the µUSD);
    // 0.000001 × 1.08 = 0.00000108 USD → 1 µUSD.
    let m = app.metrics().await;
    assert_eq!(
        (m.value("gatemeter_namespace_cost_usd_total", &[("namespace", "fx")]) * 1e6).round(),
        (1_725_000 + 983_037 + 1) as f64
    );
    crate::sql_log::wait_rows(&app, None, 3).await;
    let (_, page) = crate::sql_log::get_json(&app, None, "/api/v1/logs?limit=10").await;
    let by_id = |id: &str| {
        page["items"]
            .as_array()
            .and_then(|i| i.iter().find(|e| e["request_id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no {id} in {page}"))
    };
    let rmb = by_id("rmb");
    assert_eq!(
        (&rmb["cost_micros"], &rmb["cost_amount"], &rmb["currency"]),
        (
            &serde_json::json!(1_725_000),
            &serde_json::json!("12.5"),
            &serde_json::json!("CNY")
        )
    );
    assert_eq!(by_id("cny")["cost_amount"], "7.1234567");
    assert_eq!(by_id("eur")["cost_micros"], 1);
    app.stop().await;
}
