//! OpenTelemetry GenAI sources (issue 21): semantic-convention spans become request records in
//! every family and the log; the same calls reported again as GenAI metric points and events are
//! never counted twice, in any combination of signals and retries; what is not read is counted
//! by source. The captures of a real client (`tests/data/genai/`) are replayed with their totals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::harness::{Exposition, TestApp};
use crate::sql_log::{get_json, wait_rows};

const CONFIG: &str = "otlp:\n  namespace_attribute: team.id\n";

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

fn kv(k: &str, v: Value) -> Value {
    let v = match v {
        Value::String(s) => json!({ "stringValue": s }),
        Value::Number(n) if n.is_u64() => json!({ "intValue": n.to_string() }),
        Value::Number(n) => json!({ "doubleValue": n }),
        other => other,
    };
    json!({ "key": k, "value": v })
}

/// One call: its ids, model, tokens and outcome.
#[derive(Clone)]
struct Call {
    trace: String,
    span: String,
    model: &'static str,
    input: u64,
    output: u64,
    /// `Some(error.type)` for a failed call.
    error: Option<&'static str>,
}

fn calls() -> Vec<Call> {
    (0..6)
        .map(|i| Call {
            trace: format!("{:032x}", 0xabc000 + i / 2),
            span: format!("{:016x}", 0x5000 + i),
            model: if i % 2 == 0 { "gpt-4o-mini" } else { "gpt-4o" },
            input: 100 + i,
            output: 10 + i,
            error: (i == 5).then_some("RateLimitError"),
        })
        .collect()
}

fn resource() -> Value {
    json!({ "attributes": [
        kv("service.name", json!("chat-app")),
        kv("team.id", json!("search")),
    ]})
}

/// The calls as OpenAI instrumentation spans, plus one agent span and one foreign span.
fn spans(calls: &[Call]) -> String {
    let start = now_ns() - 5_000_000_000;
    let mut spans: Vec<Value> = calls
        .iter()
        .map(|c| {
            let mut attrs = vec![
                kv("gen_ai.operation.name", json!("chat")),
                kv("gen_ai.system", json!("openai")),
                kv("gen_ai.request.model", json!(c.model)),
                kv("server.address", json!("127.0.0.1")),
                kv("user.id", json!("alice")),
            ];
            if let Some(e) = c.error {
                attrs.push(kv("error.type", json!(e)));
            } else {
                attrs.extend([
                    kv("gen_ai.response.model", json!(c.model)),
                    kv("gen_ai.usage.input_tokens", json!(c.input)),
                    kv("gen_ai.usage.output_tokens", json!(c.output)),
                ]);
            }
            json!({
                "traceId": c.trace, "spanId": c.span, "name": format!("chat {}", c.model),
                "kind": 3, "startTimeUnixNano": start.to_string(),
                "endTimeUnixNano": (start + 800_000_000).to_string(),
                "attributes": attrs,
                "status": { "code": if c.error.is_some() { 2 } else { 0 } },
            })
        })
        .collect();
    spans.push(json!({
        "traceId": calls[0].trace, "spanId": "00000000000000aa", "name": "invoke_agent",
        "kind": 1, "startTimeUnixNano": start.to_string(), "endTimeUnixNano": start.to_string(),
        "attributes": [kv("gen_ai.operation.name", json!("invoke_agent"))],
    }));
    let foreign = json!({
        "traceId": calls[0].trace, "spanId": "00000000000000bb", "name": "GET /",
        "kind": 2, "startTimeUnixNano": start.to_string(), "endTimeUnixNano": start.to_string(),
    });
    json!({ "resourceSpans": [{ "resource": resource(), "scopeSpans": [
        { "scope": { "name": "opentelemetry.instrumentation.openai_v2" }, "spans": spans },
        { "scope": { "name": "opentelemetry.instrumentation.flask" }, "spans": [foreign] },
    ]}]})
    .to_string()
}

/// The calls as GenAI metric points (the OpenAI instrumentation's two histograms).
fn metrics(calls: &[Call]) -> String {
    let now = now_ns();
    let bounds = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536];
    let point = |attrs: Vec<Value>, sum: f64| {
        json!({ "startTimeUnixNano": (now - 10_000_000_000u128).to_string(),
                "timeUnixNano": now.to_string(), "count": "1", "sum": sum,
                "bucketCounts": ["0","0","0","0","1","0","0","0","0","0"],
                "explicitBounds": bounds, "attributes": attrs })
    };
    let mut tokens = Vec::new();
    let mut durations = Vec::new();
    for c in calls {
        let base = || {
            vec![
                kv("gen_ai.operation.name", json!("chat")),
                kv("gen_ai.system", json!("openai")),
                kv("gen_ai.request.model", json!(c.model)),
            ]
        };
        durations.push(point(base(), 0.8));
        if c.error.is_none() {
            for (t, n) in [("input", c.input), ("output", c.output)] {
                let mut a = base();
                a.push(kv("gen_ai.token.type", json!(t)));
                tokens.push(point(a, n as f64));
            }
        }
    }
    json!({ "resourceMetrics": [{ "resource": resource(), "scopeMetrics": [
        { "scope": { "name": "opentelemetry.instrumentation.openai_v2" }, "metrics": [
            { "name": "gen_ai.client.token.usage", "unit": "{token}",
              "histogram": { "aggregationTemporality": 2, "dataPoints": tokens } },
            { "name": "gen_ai.client.operation.duration", "unit": "s",
              "histogram": { "aggregationTemporality": 2, "dataPoints": durations } },
        ]},
        { "scope": { "name": "opentelemetry.instrumentation.system_metrics" }, "metrics": [
            { "name": "process.cpu.utilization", "gauge": { "dataPoints": [
                { "timeUnixNano": now.to_string(), "asDouble": 0.5 }] } },
        ]},
    ]}]})
    .to_string()
}

/// The calls as GenAI events (one user message and one choice per call), plus one unnamed
/// application log line.
fn events(calls: &[Call]) -> String {
    let now = now_ns();
    let mut records = Vec::new();
    for c in calls {
        for name in ["gen_ai.user.message", "gen_ai.choice"] {
            records.push(json!({
                "timeUnixNano": now.to_string(), "eventName": name,
                "traceId": c.trace, "spanId": c.span,
                "attributes": [kv("gen_ai.system", json!("openai"))],
                "body": { "kvlistValue": { "values": [kv("role", json!("user"))] } },
            }));
        }
    }
    records.push(json!({ "timeUnixNano": now.to_string(), "body": { "stringValue": "hello" } }));
    json!({ "resourceLogs": [{ "resource": resource(), "scopeLogs": [
        { "scope": { "name": "opentelemetry.instrumentation.openai_v2" }, "logRecords": records },
    ]}]})
    .to_string()
}

async fn post(app: &TestApp, path: &str, body: String) -> Value {
    let resp = app
        .client
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body.into_bytes())
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200, "{path}");
    serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json")
}

/// Waits until the pipeline has counted `n` records (it flushes every second).
async fn wait_requests(app: &TestApp, n: f64) -> Exposition {
    for _ in 0..100 {
        let m = app.metrics().await;
        if m.get("ai_gateway_requests_total", &[]) == Some(n) {
            return m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let m = app.metrics().await;
    panic!(
        "ai_gateway_requests_total never reached {n}: {:?}",
        m.get("ai_gateway_requests_total", &[])
    );
}

fn sum(m: &Exposition, name: &str, filter: &[(&str, &str)]) -> f64 {
    m.samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            filter
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn genai_spans_become_records_in_every_family_and_the_log() {
    let app = TestApp::with_config(CONFIG).await;
    let calls = calls();
    let answer = post(&app, "/v1/traces", spans(&calls)).await;
    assert_eq!(answer, json!({}), "full success is an empty message");
    let m = wait_requests(&app, 6.0).await;
    assert_eq!(m.value("ai_gateway_errors_total", &[]), 1.0);
    assert_eq!(
        m.value(
            "ai_gateway_namespace_requests_total",
            &[("namespace", "search"), ("namespace_code", "search")]
        ),
        6.0
    );
    for model in ["gpt-4o-mini", "gpt-4o"] {
        let ok: Vec<&Call> = calls
            .iter()
            .filter(|c| c.model == model && c.error.is_none())
            .collect();
        let l = [("provider", "openai"), ("model", model)];
        assert_eq!(m.value("model_requests_total", &l), 3.0, "{model}");
        let input: u64 = ok.iter().map(|c| c.input).sum();
        let output: u64 = ok.iter().map(|c| c.output).sum();
        assert_eq!(m.value("model_tokens_input_total", &l), input as f64);
        assert_eq!(m.value("model_tokens_output_total", &l), output as f64);
    }
    // The semantic-convention families, from the records.
    let op = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "openai"),
    ];
    assert_eq!(
        sum(&m, "gen_ai_client_operation_duration_seconds_count", &op),
        6.0
    );
    let input: u64 = calls
        .iter()
        .filter(|c| c.error.is_none())
        .map(|c| c.input)
        .sum();
    let mut with = op.to_vec();
    with.push(("gen_ai_token_type", "input"));
    assert_eq!(
        sum(&m, "gen_ai_client_token_usage_sum", &with),
        input as f64
    );
    // The agent span is understood, the foreign one counted under its scope.
    assert_eq!(
        m.value(
            "gatemeter_otlp_accepted_items_total",
            &[("signal", "traces"), ("use", "record")]
        ),
        6.0
    );
    assert_eq!(
        m.value(
            "gatemeter_otlp_accepted_items_total",
            &[("signal", "traces"), ("use", "covered")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "gatemeter_otlp_unused_items_total",
            &[
                ("signal", "traces"),
                ("source", "opentelemetry.instrumentation.flask")
            ]
        ),
        1.0
    );
    // The log keeps trace and span ids; a trace's calls are found by its id.
    wait_rows(&app, None, 6).await;
    let trace = &calls[0].trace;
    let (status, page) = get_json(&app, None, &format!("/api/v1/logs?trace_id={trace}")).await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().expect("items");
    let mut spans: Vec<&str> = items
        .iter()
        .map(|i| i["span_id"].as_str().expect("span id"))
        .collect();
    spans.sort_unstable();
    assert_eq!(spans, [calls[0].span.as_str(), calls[1].span.as_str()]);
    let (_, one) = get_json(
        &app,
        None,
        &format!("/api/v1/logs?span_id={}", calls[5].span),
    )
    .await;
    let e = &one["items"][0];
    assert_eq!(e["status"], 429);
    assert_eq!(e["error"], "RateLimitError");
    assert_eq!(e["api_type"], "openai");
    assert_eq!(e["namespace"], "search");
    assert_eq!(e["user"], "alice");
    assert_eq!(e["trace_id"], calls[5].trace.as_str());
    app.stop().await;
}

/// Which signals a source sends for the same calls.
#[derive(Debug, Clone, Copy)]
struct Combination {
    spans: bool,
    metrics: bool,
    events: bool,
}

#[tokio::test]
async fn a_call_is_counted_once_whatever_signals_report_it_and_however_often() {
    let calls = calls();
    for bits in 1..8u8 {
        let c = Combination {
            spans: bits & 1 != 0,
            metrics: bits & 2 != 0,
            events: bits & 4 != 0,
        };
        let app = TestApp::with_config(CONFIG).await;
        // Every signal twice (a retried export), interleaved.
        for _ in 0..2 {
            if c.metrics {
                post(&app, "/v1/metrics", metrics(&calls)).await;
            }
            if c.events {
                post(&app, "/v1/logs", events(&calls)).await;
            }
            if c.spans {
                post(&app, "/v1/traces", spans(&calls)).await;
            }
        }
        // Spans are the records; metrics and events alone make none.
        let want = if c.spans { 6.0 } else { 0.0 };
        let m = if c.spans {
            wait_requests(&app, want).await
        } else {
            // Nothing to wait for: give the pipeline two flushes to prove it stays at 0.
            tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
            app.metrics().await
        };
        let requests = m.get("ai_gateway_requests_total", &[]).unwrap_or(0.0);
        assert_eq!(requests, want, "{c:?}");
        let tokens = sum(&m, "model_tokens_input_total", &[]);
        let input: u64 = calls
            .iter()
            .filter(|x| x.error.is_none())
            .map(|x| x.input)
            .sum();
        assert_eq!(tokens, if c.spans { input as f64 } else { 0.0 }, "{c:?}");
        if c.spans {
            assert_eq!(
                m.value("gatemeter_duplicate_records_total", &[]),
                6.0,
                "{c:?}"
            );
        }
        let covered = |signal: &str| {
            m.get(
                "gatemeter_otlp_accepted_items_total",
                &[("signal", signal), ("use", "covered")],
            )
            .unwrap_or(0.0)
        };
        // 2 token points per successful call, 1 duration point per call; 2 events per call.
        assert_eq!(covered("metrics"), if c.metrics { 2.0 * 16.0 } else { 0.0 });
        assert_eq!(covered("logs"), if c.events { 2.0 * 12.0 } else { 0.0 });
        if c.metrics {
            assert_eq!(
                m.value(
                    "gatemeter_otlp_unused_items_total",
                    &[
                        ("signal", "metrics"),
                        ("source", "opentelemetry.instrumentation.system_metrics")
                    ]
                ),
                2.0
            );
        }
        if c.events {
            assert_eq!(
                m.value(
                    "gatemeter_otlp_unused_items_total",
                    &[("signal", "logs"), ("source", "unnamed")]
                ),
                2.0
            );
            assert_eq!(
                sum(&m, "claude_code_events_total", &[]),
                0.0,
                "GenAI events are not Claude Code events"
            );
        }
        app.stop().await;
    }
}

/// A capture of a real client's OTLP traffic (`tests/data/genai/<scenario>/`): bodies in order,
/// and the totals a correct reading gives (`expected.json`).
fn capture_dir(scenario: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/genai")
        .join(scenario)
}

async fn replay_capture(app: &TestApp, scenario: &str) -> Value {
    let dir = capture_dir(scenario);
    let index = std::fs::read_to_string(dir.join("index.jsonl")).expect("index");
    for line in index.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).expect("index line");
        let file = v["file"].as_str().expect("file");
        let body = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let resp = app
            .client
            .post(app.url(v["path"].as_str().expect("path")))
            .header("content-type", v["content_type"].as_str().expect("ct"))
            .body(body)
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), 200, "{scenario} {file}");
    }
    let expected = std::fs::read_to_string(dir.join("expected.json")).expect("expected");
    serde_json::from_str(&expected).expect("expected.json")
}

/// Checks a replayed capture against its totals: requests, errors, input and output tokens per
/// model, requests per namespace.
pub(crate) async fn check_capture(app: &TestApp, want: &Value) {
    let total = want["requests"].as_f64().expect("requests");
    let m = wait_requests(app, total).await;
    assert_eq!(
        m.value("ai_gateway_errors_total", &[]),
        want["errors"].as_f64().expect("errors")
    );
    let models: BTreeMap<String, Value> =
        serde_json::from_value(want["models"].clone()).expect("models");
    for (model, w) in &models {
        let l = [("model", model.as_str())];
        assert_eq!(
            sum(&m, "model_requests_total", &l),
            w["requests"].as_f64().expect("n"),
            "{model}"
        );
        assert_eq!(
            sum(&m, "model_tokens_input_total", &l),
            w["input"].as_f64().expect("in"),
            "{model}"
        );
        assert_eq!(
            sum(&m, "model_tokens_output_total", &l),
            w["output"].as_f64().expect("out"),
            "{model}"
        );
    }
    let statuses: BTreeMap<String, f64> =
        serde_json::from_value(want["statuses"].clone()).expect("statuses");
    for (status, n) in &statuses {
        assert_eq!(
            sum(
                &m,
                "ai_gateway_namespace_status_codes_total",
                &[("status_code", status)]
            ),
            *n,
            "status {status}"
        );
    }
    let namespaces: BTreeMap<String, f64> =
        serde_json::from_value(want["namespaces"].clone()).expect("namespaces");
    for (ns, n) in &namespaces {
        assert_eq!(
            m.value(
                "ai_gateway_namespace_requests_total",
                &[("namespace", ns), ("namespace_code", ns)]
            ),
            *n,
            "{ns}"
        );
    }
}

#[tokio::test]
async fn the_captured_openai_client_gives_its_totals_even_replayed_twice() {
    let app = TestApp::with_config(CONFIG).await;
    let want = replay_capture(&app, "openai-v2").await;
    check_capture(&app, &want).await;
    // The whole capture again (an exporter that retried everything): nothing changes.
    replay_capture(&app, "openai-v2").await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    check_capture(&app, &want).await;
    app.stop().await;
}

/// Tokens a correct reading gives per model, from a CLI capture's `expected.json` (what the
/// stand-in answered): input without the cached part, cache reads, output with Gemini's thought
/// tokens (billed as output; Codex's reasoning tokens are inside its output count already).
fn cli_tokens(w: &Value, thoughts_are_extra: bool) -> (f64, f64, f64) {
    let n = |k: &str| w[k].as_f64().expect("number");
    let output = n("output")
        + if thoughts_are_extra {
            n("thoughts")
        } else {
            0.0
        };
    (n("input") - n("cached"), n("cached"), output)
}

async fn check_cli_capture(scenario: &str, api_type: &str, tool: &str, thoughts_are_extra: bool) {
    let app = TestApp::with_config(CONFIG).await;
    // Twice: a retried export counts nothing again.
    let want = replay_capture(&app, scenario).await;
    replay_capture(&app, scenario).await;
    let m = wait_requests(&app, want["requests"].as_f64().expect("requests")).await;
    assert_eq!(m.get("ai_gateway_errors_total", &[]).unwrap_or(0.0), 0.0);
    let models: BTreeMap<String, Value> =
        serde_json::from_value(want["models"].clone()).expect("models");
    for (model, w) in &models {
        let (input, cached, output) = cli_tokens(w, thoughts_are_extra);
        let l = [("model", model.as_str())];
        assert_eq!(
            sum(&m, "model_requests_total", &l),
            w["requests"].as_f64().expect("n")
        );
        assert_eq!(
            sum(&m, "model_tokens_input_total", &l),
            input,
            "{scenario} input"
        );
        assert_eq!(
            sum(&m, "model_tokens_output_total", &l),
            output,
            "{scenario} output"
        );
        assert_eq!(
            sum(
                &m,
                "gatemeter_model_tokens_total",
                &[("model", model), ("type", "cache_read")]
            ),
            cached,
            "{scenario} cached"
        );
    }
    assert_eq!(
        m.value(
            "ai_gateway_namespace_requests_total",
            &[("namespace", "cli-team"), ("namespace_code", "cli-team")]
        ),
        want["requests"].as_f64().expect("requests")
    );
    // One tool call (the stand-in asks for one), counted once.
    let m = app.metrics().await;
    assert_eq!(
        m.value("claude_code_tool_calls_total", &[("tool", tool)]),
        1.0,
        "{scenario}"
    );
    // The log says which CLI.
    wait_rows(
        &app,
        None,
        models
            .values()
            .map(|w| w["requests"].as_u64().unwrap_or(0))
            .sum::<u64>() as usize,
    )
    .await;
    let (_, page) = get_json(&app, None, "/api/v1/logs?limit=10").await;
    for e in page["items"].as_array().expect("items") {
        assert_eq!(e["api_type"], api_type, "{e}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_captured_gemini_cli_gives_its_totals() {
    check_cli_capture("gemini-cli", "gemini", "list_directory", true).await;
}

#[tokio::test]
async fn the_captured_codex_cli_gives_its_totals() {
    check_cli_capture("codex-cli", "codex", "exec_command", false).await;
}

#[tokio::test]
async fn the_captured_openllmetry_client_gives_its_totals() {
    let app = TestApp::with_config(CONFIG).await;
    let want = replay_capture(&app, "openllmetry").await;
    check_capture(&app, &want).await;
    app.stop().await;
}

/// A source configured to send its calls as events (`otlp.genai_event_sources`): its
/// `gen_ai.client.inference.operation.details` events are the records and its call spans are
/// `covered` — still one record per call, whatever else it sends, however often.
#[tokio::test]
async fn a_source_configured_for_events_is_counted_once_from_its_events() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use prost::Message;
    let dir = capture_dir("openai-v2");
    // The capture's details events that describe a call (the instrumentation does not emit
    // one for every call).
    let mut details = 0;
    for entry in std::fs::read_dir(&dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.to_string_lossy().ends_with("_logs.pb") {
            let req = ExportLogsServiceRequest::decode(&std::fs::read(&path).expect("read")[..])
                .expect("decodes");
            details += req
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| &s.log_records)
                .filter(|r| r.event_name == "gen_ai.client.inference.operation.details")
                .count();
        }
    }
    assert!(details > 0);
    let app = TestApp::with_config(&format!(
        "{CONFIG}  genai_event_sources: [genai-client-test]\n"
    ))
    .await;
    replay_capture(&app, "openai-v2").await;
    replay_capture(&app, "openai-v2").await;
    let m = wait_requests(&app, details as f64).await;
    assert_eq!(
        m.value(
            "gatemeter_otlp_accepted_items_total",
            &[("signal", "traces"), ("use", "covered")]
        ),
        80.0,
        "every call span of the source, twice"
    );
    assert_eq!(
        m.value(
            "gatemeter_otlp_accepted_items_total",
            &[("signal", "logs"), ("use", "record")]
        ),
        2.0 * details as f64
    );
    assert_eq!(
        m.value("gatemeter_duplicate_records_total", &[]),
        details as f64
    );
    app.stop().await;
}

/// The calls as `gen_ai.client.inference.operation.details` events (semantic conventions
/// 1.37+), one per call, with the call span's context.
fn details(calls: &[Call]) -> String {
    let now = now_ns();
    let records: Vec<Value> = calls
        .iter()
        .map(|c| {
            let mut attrs = vec![
                kv("gen_ai.operation.name", json!("chat")),
                kv("gen_ai.provider.name", json!("openai")),
                kv("gen_ai.request.model", json!(c.model)),
            ];
            if let Some(e) = c.error {
                attrs.push(kv("error.type", json!(e)));
            } else {
                attrs.extend([
                    kv("gen_ai.response.model", json!(c.model)),
                    kv("gen_ai.usage.input_tokens", json!(c.input)),
                    kv("gen_ai.usage.output_tokens", json!(c.output)),
                ]);
            }
            json!({
                "timeUnixNano": now.to_string(),
                "eventName": "gen_ai.client.inference.operation.details",
                "traceId": c.trace, "spanId": c.span, "attributes": attrs,
            })
        })
        .collect();
    json!({ "resourceLogs": [{ "resource": resource(), "scopeLogs": [
        { "scope": { "name": "opentelemetry.util.genai" }, "logRecords": records },
    ]}]})
    .to_string()
}

/// The calls as an SDK aggregates them: cumulative streams started at `start_ns`, one duration
/// point per (model, error.type) and one token point per (model, token type).
fn sdk_metrics(calls: &[Call], start_ns: u128) -> String {
    let now = now_ns();
    let mut durations: BTreeMap<(&str, Option<&str>), (u64, f64)> = BTreeMap::new();
    let mut tokens: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    for c in calls {
        let d = durations.entry((c.model, c.error)).or_default();
        d.0 += 1;
        d.1 += 0.8;
        if c.error.is_none() {
            for (t, n) in [("input", c.input), ("output", c.output)] {
                let e = tokens.entry((c.model, t)).or_default();
                e.0 += 1;
                e.1 += n;
            }
        }
    }
    let attrs = |model: &str, error: Option<&str>| {
        let mut a = vec![
            kv("gen_ai.operation.name", json!("chat")),
            kv("gen_ai.system", json!("openai")),
            kv("gen_ai.request.model", json!(model)),
        ];
        match error {
            Some(e) => a.push(kv("error.type", json!(e))),
            None => a.push(kv("gen_ai.response.model", json!(model))),
        }
        a
    };
    let point = |attrs: Vec<Value>, count: u64, sum: f64| {
        json!({ "startTimeUnixNano": start_ns.to_string(), "timeUnixNano": now.to_string(),
                "count": count.to_string(), "sum": sum, "attributes": attrs })
    };
    let durations: Vec<Value> = durations
        .iter()
        .map(|((m, e), (n, s))| point(attrs(m, *e), *n, *s))
        .collect();
    let tokens: Vec<Value> = tokens
        .iter()
        .map(|((m, t), (n, s))| {
            let mut a = attrs(m, None);
            a.push(kv("gen_ai.token.type", json!(t)));
            point(a, *n, *s as f64)
        })
        .collect();
    json!({ "resourceMetrics": [{ "resource": resource(), "scopeMetrics": [
        { "scope": { "name": "opentelemetry.instrumentation.openai_v2" }, "metrics": [
            { "name": "gen_ai.client.token.usage", "unit": "{token}",
              "histogram": { "aggregationTemporality": 2, "dataPoints": tokens } },
            { "name": "gen_ai.client.operation.duration", "unit": "s",
              "histogram": { "aggregationTemporality": 2, "dataPoints": durations } },
        ]},
    ]}]})
    .to_string()
}

/// The per-source rule: a source listed in `otlp.genai_event_sources` is counted from its
/// details events, one listed in `otlp.genai_metric_sources` from its metric points, any
/// other from its spans — in every combination of signals it sends, each export retried.
#[tokio::test]
async fn each_source_is_counted_once_from_its_configured_signal() {
    let calls = calls();
    let input: u64 = calls
        .iter()
        .filter(|x| x.error.is_none())
        .map(|x| x.input)
        .sum();
    for listed in ["genai_event_sources", "genai_metric_sources"] {
        for bits in 1..8u8 {
            let c = Combination {
                spans: bits & 1 != 0,
                metrics: bits & 2 != 0,
                events: bits & 4 != 0,
            };
            let app = TestApp::with_config(&format!("{CONFIG}  {listed}: [chat-app]\n")).await;
            // Streams that start now, after the server: read whole on first sight. Each body
            // is sent twice, as an exporter retries it.
            let (m_body, e_body, s_body) = (
                sdk_metrics(&calls, now_ns()),
                details(&calls),
                spans(&calls),
            );
            for _ in 0..2 {
                if c.metrics {
                    post(&app, "/v1/metrics", m_body.clone()).await;
                }
                if c.events {
                    post(&app, "/v1/logs", e_body.clone()).await;
                }
                if c.spans {
                    post(&app, "/v1/traces", s_body.clone()).await;
                }
            }
            let from = if listed == "genai_event_sources" {
                c.events
            } else {
                c.metrics
            };
            let want = if from { 6.0 } else { 0.0 };
            let m = if from {
                wait_requests(&app, want).await
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
                app.metrics().await
            };
            let what = format!("{listed} {c:?}");
            let requests = m.get("ai_gateway_requests_total", &[]).unwrap_or(0.0);
            assert_eq!(requests, want, "{what}");
            if from {
                assert_eq!(m.value("ai_gateway_errors_total", &[]), 1.0, "{what}");
                assert_eq!(
                    sum(&m, "model_tokens_input_total", &[]),
                    input as f64,
                    "{what}"
                );
                for model in ["gpt-4o-mini", "gpt-4o"] {
                    let l = [("provider", "openai"), ("model", model)];
                    assert_eq!(m.value("model_requests_total", &l), 3.0, "{what} {model}");
                }
            }
            let accepted = |signal: &str, used: &str| {
                m.get(
                    "gatemeter_otlp_accepted_items_total",
                    &[("signal", signal), ("use", used)],
                )
                .unwrap_or(0.0)
            };
            // Call spans of a listed source are covered (the agent span always is).
            if c.spans {
                assert_eq!(accepted("traces", "record"), 0.0, "{what}");
                assert_eq!(accepted("traces", "covered"), 2.0 * 7.0, "{what}");
            }
            if c.metrics && listed == "genai_metric_sources" {
                // 3 duration points (2 models answered, 1 failed) + 2 models x 2 token
                // types per export; the retried export's are repeats.
                assert_eq!(accepted("metrics", "record"), 7.0, "{what}");
                assert_eq!(accepted("metrics", "repeated"), 7.0, "{what}");
                assert_eq!(accepted("metrics", "covered"), 0.0, "{what}");
            } else if c.metrics {
                assert_eq!(accepted("metrics", "record"), 0.0, "{what}");
                assert_eq!(accepted("metrics", "covered"), 14.0, "{what}");
            }
            if c.events && listed == "genai_event_sources" {
                assert_eq!(accepted("logs", "record"), 12.0, "{what}");
                assert_eq!(
                    m.value("gatemeter_duplicate_records_total", &[]),
                    6.0,
                    "{what}: the retried events are acknowledged, not counted"
                );
            } else if c.events {
                assert_eq!(accepted("logs", "covered"), 12.0, "{what}");
            }
            app.stop().await;
        }
    }
}

/// The real OpenAI client's metric points (the capture), read as the records of a metrics-only
/// source: the capture's totals, replayed twice. The capture's times are moved so that its
/// streams start after the server did (a stream begun before the server is a baseline).
#[tokio::test]
async fn the_captured_openai_client_metrics_give_its_totals_for_a_metrics_only_source() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use prost::Message;
    let dir = capture_dir("openai-v2");
    let want: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).expect("expected"))
            .expect("json");
    let mut bodies = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with("_metrics.pb"))
        .collect();
    files.sort();
    for f in &files {
        let req = ExportMetricsServiceRequest::decode(&std::fs::read(f).expect("read")[..])
            .expect("decodes");
        bodies.push(req);
    }
    assert!(bodies.len() >= 2, "metric exports: {}", bodies.len());
    let app = TestApp::with_config(&format!(
        "{CONFIG}  genai_metric_sources: [genai-client-test]\n"
    ))
    .await;
    let times =
        |req: &mut ExportMetricsServiceRequest, f: &mut dyn FnMut(&mut u64, &mut u64)| {
            for rm in &mut req.resource_metrics {
                for sm in &mut rm.scope_metrics {
                    for m in &mut sm.metrics {
                        match &mut m.data {
                            Some(Data::Histogram(h)) => h.data_points.iter_mut().for_each(|p| {
                                f(&mut p.start_time_unix_nano, &mut p.time_unix_nano)
                            }),
                            Some(Data::Sum(s)) => s.data_points.iter_mut().for_each(|p| {
                                f(&mut p.start_time_unix_nano, &mut p.time_unix_nano)
                            }),
                            _ => {}
                        }
                    }
                }
            }
        };
    let mut first = u64::MAX;
    let mut last = 0;
    for b in &mut bodies {
        times(b, &mut |s, t| {
            first = first.min(*s);
            last = last.max(*t);
        });
    }
    assert!(
        last - first < 60_000_000_000,
        "the capture fits in a minute"
    );
    let shift = now_ns() as u64 - first;
    for b in &mut bodies {
        times(b, &mut |s, t| {
            *s += shift;
            *t += shift;
        });
    }
    for _ in 0..2 {
        for b in &bodies {
            let resp = app
                .client
                .post(app.url("/v1/metrics"))
                .header("content-type", "application/x-protobuf")
                .body(b.encode_to_vec())
                .send()
                .await
                .expect("sent");
            assert_eq!(resp.status(), 200);
        }
    }
    let requests = want["requests"].as_f64().expect("requests");
    let m = wait_requests(&app, requests).await;
    assert_eq!(
        m.value("ai_gateway_errors_total", &[]),
        want["errors"].as_f64().expect("errors")
    );
    let models = want["models"].as_object().expect("models");
    for (model, w) in models {
        let l = [("provider", "openai"), ("model", model.as_str())];
        assert_eq!(
            m.get("model_requests_total", &l).unwrap_or(0.0),
            w["requests"].as_f64().expect("n"),
            "{model}"
        );
        assert_eq!(
            m.get("model_tokens_input_total", &l).unwrap_or(0.0),
            w["input"].as_f64().expect("n"),
            "{model} input"
        );
        assert_eq!(
            m.get("model_tokens_output_total", &l).unwrap_or(0.0),
            w["output"].as_f64().expect("n"),
            "{model} output"
        );
    }
    // One row per call in the log, marked as read from metrics.
    wait_rows(&app, None, requests as usize).await;
    let (_, page) = get_json(&app, None, "/api/v1/logs?limit=1").await;
    let id = page["items"][0]["request_id"].as_str().expect("id");
    assert!(id.starts_with("otel-metric:"), "{id}");
    app.stop().await;
}

/// A metrics-only source's impossible points are refused with a message naming the metric,
/// counted by reason, and make no record; the request's other points still count.
#[tokio::test]
async fn a_metrics_only_source_impossible_points_are_refused_by_reason() {
    let app = TestApp::with_config(&format!("{CONFIG}  genai_metric_sources: [chat-app]\n")).await;
    let now = now_ns();
    let attrs = vec![
        kv("gen_ai.operation.name", json!("chat")),
        kv("gen_ai.system", json!("openai")),
        kv("gen_ai.request.model", json!("gpt-4o")),
    ];
    let point = |count: u64, sum: f64| {
        json!({ "startTimeUnixNano": (now - 60_000_000_000).to_string(),
                "timeUnixNano": now.to_string(), "count": count.to_string(), "sum": sum,
                "attributes": attrs })
    };
    // Three calls of a point without a model: three invalid records, one rejected point.
    let no_model = json!({ "startTimeUnixNano": (now - 60_000_000_000).to_string(),
        "timeUnixNano": now.to_string(), "count": "3", "sum": 1.0,
        "attributes": [kv("gen_ai.operation.name", json!("chat"))] });
    let body = json!({ "resourceMetrics": [{ "resource": resource(), "scopeMetrics": [
        { "metrics": [
            { "name": "gen_ai.client.operation.duration", "unit": "s",
              "histogram": { "aggregationTemporality": 1, "dataPoints": [
                  point(2, 1.5), point(1_000_000, 1.0), point(1, -4.0), no_model] } },
        ]},
    ]}]})
    .to_string();
    let answer = post(&app, "/v1/metrics", body).await;
    assert_eq!(
        answer["partialSuccess"]["rejectedDataPoints"], 3,
        "{answer}"
    );
    let message = answer["partialSuccess"]["errorMessage"]
        .as_str()
        .expect("message");
    assert!(
        message.contains("out_of_range: 1 point")
            && message.contains("bad_value: 1 point")
            && message.contains("invalid_record: 1 point, first: point 3: model")
            && message.contains("gen_ai.client.operation.duration"),
        "{message}"
    );
    let m = wait_requests(&app, 2.0).await;
    assert_eq!(
        m.value(
            "gatemeter_otlp_rejected_items_total",
            &[("signal", "metrics"), ("reason", "out_of_range")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "gatemeter_otlp_accepted_items_total",
            &[("signal", "metrics"), ("use", "record")]
        ),
        1.0
    );
    app.stop().await;
}
