//! Bad input gets a precise 4xx, nothing from a rejected record is counted, and the server
//! stays healthy.

use std::io::Write;

use crate::harness::{TestApp, answer};

const OK: &str = r#"{"model":"m","status":200,"duration_ms":5,"input_tokens":7}"#;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

#[tokio::test]
async fn every_kind_of_bad_input_is_refused_precisely() {
    let app = TestApp::with_config(
        "ingest:\n  max_body_bytes: 1048576\n  max_records_per_request: 100\n",
    )
    .await;

    // Per-record problems: 400 (nothing valid) naming the field.
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"{"model":"m","status":200,"duration_ms":"fast"}"#,
            "duration_ms",
            "invalid type",
        ),
        (
            r#"{"model":"m","status":200,"duration_ms":5,"input_tokens":-1}"#,
            "input_tokens",
            "invalid value",
        ),
        (
            r#"{"model":"m","status":200,"duration_ms":5,"output_tokens":999999999999}"#,
            "output_tokens",
            "exceeds",
        ),
        (r#"{"model":"m","duration_ms":5}"#, "status", "required"),
        (
            r#"{"model":"m","status":200,"duration_ms":5,"client_ip":"10.0.0.1; DROP"}"#,
            "client_ip",
            "not an IP address",
        ),
        (r#"{"status":200,"duration_ms":5}"#, "model", "required"),
        (
            r#"{"model":"m","status":200,"duration_ms":5,"cost_usd":"lots"}"#,
            "cost_usd",
            "not a decimal",
        ),
        (
            r#"{"model":"m","status":200,"duration_ms":5,"timestamp":"yesterday"}"#,
            "timestamp",
            "RFC 3339",
        ),
        (
            r#"{"model":"m","status":1000,"duration_ms":5}"#,
            "status",
            "not 0 or an HTTP status",
        ),
        (
            r#"{"model":"m","status":200,"duration_ms":5,"is_streaming":"yes"}"#,
            "is_streaming",
            "invalid type",
        ),
    ];
    for (body, field, words) in cases {
        let (status, ans) = app.post_json(body).await;
        assert_eq!(status, 400, "{body}: {ans}");
        assert_eq!(ans["accepted"], 0);
        assert_eq!(ans["rejected"], 1);
        assert_eq!(ans["errors"][0]["index"], 0);
        assert_eq!(ans["errors"][0]["field"], *field, "{body}: {ans}");
        let msg = ans["errors"][0]["message"].as_str().expect("message");
        assert!(msg.contains(words), "{body}: {msg}");
    }

    // 10,000-deep nesting, inside a record and as the whole body.
    let deep = format!(
        r#"{{"model":"m","status":200,"duration_ms":5,"x":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let (status, ans) = app.post_json(&deep).await;
    assert_eq!(status, 400, "{ans}");
    assert_eq!(ans["errors"][0]["field"], "x", "{ans}");
    let (status, ans) = app
        .post_json(&format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)))
        .await;
    assert_eq!(status, 400, "{ans}");

    // Malformed JSON body, a scalar, and non-UTF-8.
    let (status, ans) = app.post_json(r#"[{"model":"m","#).await;
    assert_eq!(
        (status, ans["error"].as_str()),
        (400, Some("malformed")),
        "{ans}"
    );
    let (status, ans) = app.post_json("42").await;
    assert_eq!(
        (status, ans["error"].as_str()),
        (400, Some("malformed")),
        "{ans}"
    );
    let (status, _) = answer(
        app.post_raw(vec![0xff, 0xfe, b'{'], Some("application/json"), None)
            .await,
    )
    .await;
    assert_eq!(status, 400);

    // Wrong content type, unknown encoding, corrupt gzip.
    let (status, ans) = answer(app.post_raw(OK.into(), Some("text/plain"), None).await).await;
    assert_eq!(status, 415);
    assert!(
        ans["message"]
            .as_str()
            .expect("msg")
            .contains("application/json"),
        "{ans}"
    );
    let (status, _) = answer(app.post_raw(OK.into(), None, None).await).await;
    assert_eq!(status, 415);
    let (status, ans) = answer(
        app.post_raw(OK.into(), Some("application/json"), Some("br"))
            .await,
    )
    .await;
    assert_eq!(
        (status, ans["error"].as_str()),
        (415, Some("unsupported_encoding"))
    );
    let (status, ans) = answer(
        app.post_raw(b"not gzip".to_vec(), Some("application/json"), Some("gzip"))
            .await,
    )
    .await;
    assert_eq!(
        (status, ans["error"].as_str()),
        (400, Some("bad_compression"))
    );

    // Oversize body, gzip bomb (16 MiB of zeros in ~16 KiB), too many records.
    let big = format!("[{}]", vec![OK; 20_000].join(","));
    assert!(big.len() > 1_048_576);
    let (status, ans) = answer(
        app.post_raw(big.into_bytes(), Some("application/json"), None)
            .await,
    )
    .await;
    assert_eq!(
        (status, ans["error"].as_str()),
        (413, Some("body_too_large")),
        "{ans}"
    );
    let bomb = gzip(&vec![b' '; 16 << 20]);
    assert!(bomb.len() < 100_000);
    let (status, ans) = answer(
        app.post_raw(bomb, Some("application/json"), Some("gzip"))
            .await,
    )
    .await;
    assert_eq!(
        (status, ans["error"].as_str()),
        (413, Some("body_too_large")),
        "{ans}"
    );
    assert!(
        ans["message"]
            .as_str()
            .expect("msg")
            .contains("decompressed"),
        "{ans}"
    );
    let many = format!("[{}]", vec![OK; 101].join(","));
    let (status, ans) = app.post_json(&many).await;
    assert_eq!(
        (status, ans["error"].as_str()),
        (413, Some("too_many_records")),
        "{ans}"
    );

    // Nothing was counted, the server is healthy, and every refusal is counted by reason.
    let m = app.metrics().await;
    assert_eq!(m.value("ai_gateway_requests_total", &[]), 0.0);
    assert_eq!(m.value("gatemeter_tokens_total", &[("type", "input")]), 0.0);
    let rejected = |r: &str| {
        m.value(
            "gatemeter_ingest_rejected_records_total",
            &[("source", "native"), ("reason", r)],
        )
    };
    // The 10,000-deep top-level array is one record that is not an object.
    assert_eq!(rejected("wrong_type"), 5.0);
    assert_eq!(rejected("missing_field"), 2.0);
    assert_eq!(rejected("invalid_value"), 4.0);
    assert_eq!(rejected("malformed"), 1.0);
    let req = |r: &str| {
        m.value(
            "gatemeter_ingest_rejected_requests_total",
            &[("source", "native"), ("reason", r)],
        )
    };
    assert_eq!(req("unsupported_media_type"), 2.0);
    assert_eq!(req("unsupported_encoding"), 1.0);
    assert_eq!(req("bad_compression"), 1.0);
    assert_eq!(req("body_too_large"), 2.0);
    assert_eq!(req("too_many_records"), 1.0);
    assert_eq!(req("malformed"), 3.0);
    assert_eq!(req("nothing_valid"), 12.0);
    let health = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);

    // And a good record still goes through afterwards.
    let (status, ans) = app.post_json(OK).await;
    assert_eq!((status, ans["accepted"].as_u64()), (200, Some(1)));
    assert_eq!(
        app.metrics().await.value("ai_gateway_requests_total", &[]),
        1.0
    );
    app.stop().await;
}
