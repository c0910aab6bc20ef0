//! The OTLP/HTTP receiver: the real Claude Code captures replayed with their original content
//! types, encodings and paths; protocol answers for bad input; the OTLP log export into a
//! second gatemeter.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatemeter::claude_code::mapping::Mapping;
use gatemeter::price::PriceTable;
use gatemeter::record::{Event, Validation};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use prost::Message;

use crate::harness::{Exposition, TestApp};

const CONFIG: &str = "otlp:\n  namespace_attribute: team.id\n";

fn data_dir(scenario: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/claude-code")
        .join(scenario)
}

struct Body {
    path: String,
    content_type: String,
    encoding: Option<String>,
    bytes: Vec<u8>,
}

/// The scenario's bodies in arrival order, as they were sent.
fn bodies(scenario: &str) -> Vec<Body> {
    let dir = data_dir(scenario);
    let index = std::fs::read_to_string(dir.join("index.jsonl")).expect("index");
    index
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("index line");
            let n = v["n"].as_u64().expect("n");
            let signal = v["signal"].as_str().expect("signal");
            let content_type = v["content_type"].as_str().expect("ct").to_string();
            let encoding = v["content_encoding"].as_str().map(str::to_string);
            let stem = format!("{n:04}_{signal}");
            let file = if content_type.starts_with("application/json") {
                format!("{stem}.json")
            } else if encoding.as_deref() == Some("gzip") {
                format!("{stem}.pb.gz")
            } else {
                format!("{stem}.pb")
            };
            Body {
                path: v["path"].as_str().expect("path").to_string(),
                content_type,
                encoding,
                bytes: std::fs::read(dir.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}")),
            }
        })
        .collect()
}

async fn post(
    app: &TestApp,
    path: &str,
    ct: Option<&str>,
    enc: Option<&str>,
    body: Vec<u8>,
) -> gatemeter::client::Response {
    let mut req = app.client.post(app.url(path)).body(body);
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
    }
    if let Some(enc) = enc {
        req = req.header("content-encoding", enc);
    }
    req.send().await.expect("sent")
}

async fn replay(app: &TestApp, scenario: &str) {
    replay_as(app, scenario, None).await;
}

/// [`replay`] with an ingest token (a server with `auth:`).
pub(crate) async fn replay_with_token(app: &TestApp, scenario: &str, token: &str) {
    replay_as(app, scenario, Some(token)).await;
}

async fn replay_as(app: &TestApp, scenario: &str, token: Option<&str>) {
    for b in bodies(scenario) {
        let mut req = app.client.post(app.url(&b.path)).body(b.bytes);
        req = req.header("content-type", &b.content_type);
        if let Some(enc) = b.encoding.as_deref() {
            req = req.header("content-encoding", enc);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("sent");
        assert_eq!(resp.status(), 200, "{scenario} {}", b.path);
        let ct = resp.headers()["content-type"]
            .to_str()
            .expect("ct")
            .to_string();
        assert_eq!(ct, b.content_type, "answer in the request's encoding");
        let body = resp.bytes().await.expect("body");
        if ct == "application/x-protobuf" {
            // Both export responses share field 1 = partial_success: it must be absent.
            let r = ExportLogsServiceResponse::decode(body).expect("protobuf answer");
            assert!(r.partial_success.is_none(), "{scenario}: {r:?}");
        } else {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("json answer");
            assert_eq!(
                v,
                serde_json::json!({}),
                "{scenario}: full success is an empty message"
            );
        }
    }
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

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-9, "{what}: {a} != {b}");
}

struct Expected {
    requests: u64,
    /// Failed records (`api_error` events).
    errors: u64,
    cost_micros: u64,
    /// input, output, cache_read, cache_creation (5 m, and what the 1 h split leaves over)
    tokens: [u64; 4],
    /// cache creation with a 1 h TTL
    cache_1h: u64,
    events: &'static [(&'static str, u64)],
    tools: &'static [(&'static str, u64, u64)],
    metric_cost: f64,
    metric_tokens: [f64; 4],
    active_time: f64,
    sessions: f64,
    commits: f64,
    edit_decisions: f64,
    lines_added: f64,
}

const SESSION_EVENTS: &[(&str, u64)] = &[
    ("managed_settings_resolved", 1),
    ("plugin_loaded", 3),
    ("user_prompt", 1),
    ("tool_decision", 7),
    ("api_request", 8),
    ("assistant_response", 8),
    ("tool_result", 6),
    ("retention_sweep", 1),
];
const SESSION_TOOLS: &[(&str, u64, u64)] = &[("Bash", 3, 1), ("Read", 2, 1), ("Write", 1, 0)];

fn expected(scenario: &str) -> Expected {
    // The totals of tests/data/claude-code/README.md.
    let session = |cost: u64, input: u64, active: f64, edits: f64| Expected {
        requests: 8,
        errors: 0,
        cost_micros: cost,
        tokens: [input, 311, 27200, 9600],
        cache_1h: 0,
        events: SESSION_EVENTS,
        tools: SESSION_TOOLS,
        metric_cost: cost as f64 / 1e6,
        metric_tokens: [input as f64, 311.0, 27200.0, 9600.0],
        active_time: active,
        sessions: 1.0,
        commits: 1.0,
        edit_decisions: edits,
        lines_added: 4.0,
    };
    match scenario {
        "protobuf" => session(214_380, 38_680, 10.492, 2.0),
        "json" => session(214_188, 38_632, 10.705, 2.0),
        "gzip_prefix" => session(214_508, 38_712, 10.592, 2.0),
        // The README says 1 here: it took the last point of the metric, but the session has two
        // streams (accept and reject, one each), as in every other session.
        "cumulative" => session(214_480, 38_705, 10.882, 2.0),
        "oauth_fake" => Expected {
            requests: 2,
            errors: 0,
            cost_micros: 26_128,
            tokens: [9429, 59, 6800, 2400],
            cache_1h: 0,
            events: &[
                ("managed_settings_resolved", 1),
                ("plugin_loaded", 3),
                ("user_prompt", 1),
                ("tool_decision", 1),
                ("api_request", 2),
                ("assistant_response", 2),
                ("tool_result", 1),
            ],
            tools: &[("Bash", 1, 0)],
            metric_cost: 0.026128,
            metric_tokens: [9429.0, 59.0, 6800.0, 2400.0],
            active_time: 1.471,
            sessions: 1.0,
            commits: 0.0,
            edit_decisions: 0.0,
            lines_added: 0.0,
        },
        "api_error_final" => Expected {
            requests: 1,
            errors: 1,
            cost_micros: 0,
            tokens: [0; 4],
            cache_1h: 0,
            events: &[
                ("managed_settings_resolved", 1),
                ("plugin_loaded", 3),
                ("user_prompt", 1),
                ("api_error", 1),
                ("api_retries_exhausted", 1),
            ],
            tools: &[],
            metric_cost: 0.0,
            metric_tokens: [0.0; 4],
            active_time: 0.861,
            sessions: 1.0,
            commits: 0.0,
            edit_decisions: 0.0,
            lines_added: 0.0,
        },
        // Four processes of one conversation (`claude -p`, then three `claude -p --continue`):
        // each resumed process keeps the session.id and restarts event.sequence at 0, so the
        // same (session.id, event.sequence) names different events. 7 + 1 API calls, and two
        // resumed calls that failed (500, then 529) with no retry.
        "continue" => Expected {
            requests: 10,
            errors: 2,
            cost_micros: 46_953,
            tokens: [8196, 348, 18_800, 2428],
            cache_1h: 400,
            events: &[
                ("managed_settings_resolved", 4),
                ("plugin_loaded", 12),
                ("user_prompt", 4),
                ("tool_decision", 6),
                ("api_request", 8),
                ("assistant_response", 8),
                ("tool_result", 5),
                ("api_error", 2),
            ],
            tools: &[("Bash", 3, 1), ("Read", 1, 0), ("Write", 1, 0)],
            metric_cost: 0.046953,
            metric_tokens: [8196.0, 348.0, 18_800.0, 2828.0],
            active_time: 2.192,
            sessions: 4.0,
            commits: 1.0,
            edit_decisions: 1.0,
            lines_added: 4.0,
        },
        other => panic!("unknown scenario {other}"),
    }
}

fn check(m: &Exposition, scenario: &str) {
    let e = expected(scenario);
    let ctx = |what: &str| format!("{scenario}: {what}");
    // Request records from api_request / api_error events.
    close(
        m.value("ai_gateway_requests_total", &[]),
        e.requests as f64,
        &ctx("requests"),
    );
    close(
        m.value("gatemeter_cost_usd_total", &[]),
        e.cost_micros as f64 / 1e6,
        &ctx("record cost"),
    );
    for (t, want) in ["input", "output", "cache_read", "cache_write_5m"]
        .iter()
        .zip(e.tokens)
    {
        close(
            m.value("gatemeter_tokens_total", &[("type", t)]),
            want as f64,
            &ctx(&format!("record tokens {t}")),
        );
    }
    close(
        m.value("gatemeter_tokens_total", &[("type", "cache_write_1h")]),
        e.cache_1h as f64,
        &ctx("1h"),
    );
    close(
        m.value("ai_gateway_errors_total", &[]),
        e.errors as f64,
        &ctx("errors"),
    );
    // Events and tools.
    let mut events: BTreeMap<String, u64> = BTreeMap::new();
    for s in m
        .samples
        .iter()
        .filter(|s| s.name == "claude_code_events_total")
    {
        events.insert(s.labels["event"].clone(), s.value as u64);
    }
    let want: BTreeMap<String, u64> = e.events.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(events, want, "{scenario}: events");
    for (tool, calls, failures) in e.tools {
        close(
            m.value("claude_code_tool_calls_total", &[("tool", tool)]),
            *calls as f64,
            &ctx(tool),
        );
        close(
            m.value("claude_code_tool_failures_total", &[("tool", tool)]),
            *failures as f64,
            &ctx(tool),
        );
        close(
            m.value("claude_code_tool_duration_seconds_count", &[("tool", tool)]),
            *calls as f64,
            &ctx(tool),
        );
    }
    close(
        sum(m, "claude_code_tool_calls_total", &[]),
        e.tools.iter().map(|t| t.1).sum::<u64>() as f64,
        &ctx("tool calls"),
    );
    // Claude Code metrics, re-exposed as counters.
    close(
        sum(m, "claude_code_cost_usage_usd_total", &[]),
        e.metric_cost,
        &ctx("metric cost"),
    );
    for (t, want) in ["input", "output", "cacheRead", "cacheCreation"]
        .iter()
        .zip(e.metric_tokens)
    {
        close(
            sum(m, "claude_code_token_usage_tokens_total", &[("type", t)]),
            want,
            &ctx(&format!("metric tokens {t}")),
        );
    }
    let active = sum(
        m,
        "claude_code_active_time_seconds_total",
        &[("type", "cli")],
    );
    assert!(
        (active - e.active_time).abs() < 1e-6,
        "{scenario}: active {active}"
    );
    close(
        sum(m, "claude_code_session_count_total", &[]),
        e.sessions,
        &ctx("sessions"),
    );
    close(
        sum(m, "claude_code_commits_total", &[]),
        e.commits,
        &ctx("commits"),
    );
    close(
        sum(m, "claude_code_code_edit_tool_decisions_total", &[]),
        e.edit_decisions,
        &ctx("edit decisions"),
    );
    close(
        sum(m, "claude_code_lines_of_code_total", &[("type", "added")]),
        e.lines_added,
        &ctx("lines added"),
    );
    // High-cardinality attributes never become labels.
    for s in m
        .samples
        .iter()
        .filter(|s| s.name.starts_with("claude_code_"))
    {
        for forbidden in [
            "session_id",
            "user_id",
            "user_email",
            "organization_id",
            "user_account_uuid",
            "user_account_id",
            "prompt_id",
        ] {
            assert!(!s.labels.contains_key(forbidden), "{scenario}: {s:?}");
        }
    }
    assert_eq!(
        sum(m, "gatemeter_otlp_rejected_items_total", &[]),
        0.0,
        "{scenario}"
    );
}

#[tokio::test]
async fn every_fixture_scenario_gives_the_readme_totals() {
    for scenario in [
        "protobuf",
        "json",
        "gzip_prefix",
        "cumulative",
        "oauth_fake",
        "api_error_final",
        "continue",
    ] {
        // No config: `otlp.namespace_attribute` defaults to `team.id`.
        let app = TestApp::start().await;
        replay(&app, scenario).await;
        let m = app.metrics().await;
        check(&m, scenario);
        // These two carry `team.id` on their records, not their resource: it is found there.
        let (ns, n) = match scenario {
            "oauth_fake" | "api_error_final" => {
                ("obs-team", m.value("ai_gateway_requests_total", &[]))
            }
            "continue" => ("platform", 10.0),
            _ => ("obs-team", 8.0),
        };
        close(
            m.value(
                "ai_gateway_namespace_requests_total",
                &[("namespace", ns), ("namespace_code", ns)],
            ),
            n,
            &format!("{scenario}: namespace from team.id"),
        );
        app.stop().await;
    }
}

/// `otlp.namespace_attribute: ""` turns the mapping off: every request in `default`.
#[tokio::test]
async fn an_empty_namespace_attribute_keeps_the_default_namespace() {
    let app = TestApp::with_config("otlp:\n  namespace_attribute: \"\"\n").await;
    replay(&app, "protobuf").await;
    let m = app.metrics().await;
    let l = [("namespace", "default"), ("namespace_code", "default")];
    close(
        m.value("ai_gateway_namespace_requests_total", &l),
        8.0,
        "default",
    );
    app.stop().await;

    // With no config, a session whose events carry no `team.id` (renamed in the OTLP JSON
    // capture) falls back to `default` too.
    let app = TestApp::start().await;
    for b in bodies("json") {
        let text = String::from_utf8(b.bytes).expect("OTLP JSON");
        assert!(b.encoding.is_none());
        let bytes = text.replace("\"team.id\"", "\"team.xx\"").into_bytes();
        let resp = post(&app, &b.path, Some(&b.content_type), None, bytes).await;
        assert_eq!(resp.status(), 200);
    }
    let m = app.metrics().await;
    close(
        m.value("ai_gateway_namespace_requests_total", &l),
        8.0,
        "no team.id",
    );
    app.stop().await;
}

#[tokio::test]
async fn a_replayed_session_is_not_counted_twice() {
    // Exporters retry a whole request when an answer is lost: records, points and tool events
    // must not be counted again.
    for scenario in ["protobuf", "cumulative", "continue"] {
        let app = TestApp::with_config(CONFIG).await;
        replay(&app, scenario).await;
        replay(&app, scenario).await;
        let m = app.metrics().await;
        check(&m, scenario);
        assert!(
            m.value(
                "gatemeter_otlp_accepted_items_total",
                &[("signal", "metrics"), ("use", "repeated")]
            ) > 0.0
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn api_errors_become_failed_records() {
    let app = TestApp::with_config(CONFIG).await;
    replay(&app, "api_error_final").await;
    let m = app.metrics().await;
    assert_eq!(m.value("ai_gateway_errors_total", &[]), 1.0);
    assert_eq!(
        m.value("gatemeter_status_codes_total", &[("status_code", "500")]),
        1.0
    );
    assert_eq!(
        m.value(
            "model_errors_total",
            &[("provider", "anthropic"), ("model", "claude-opus-5-5")]
        ),
        1.0
    );
    app.stop().await;
}

#[test]
fn oauth_users_are_named_by_email_and_sessions_kept() {
    let prices = PriceTable::default();
    let v = Validation {
        now_ms: 1_795_460_000_000,
        prices: &prices,
        keep_requests: None,
    };
    let mapping = Mapping {
        namespace_attribute: Some("team.id".into()),
        ..Mapping::default()
    };
    let mut records = Vec::new();
    for b in bodies("oauth_fake")
        .into_iter()
        .filter(|b| b.path.ends_with("/v1/logs"))
    {
        let req = ExportLogsServiceRequest::decode(&b.bytes[..]).expect("fixture decodes");
        let out = mapping.logs(&req, &v);
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        for e in out.events {
            if let Event::Finish(r) = e {
                records.push(r);
            }
        }
    }
    assert_eq!(records.len(), 2);
    for r in &records {
        let user = r.user.as_deref().expect("user");
        assert!(user.contains('@'), "user from user.email: {user}");
        assert!(r.user_id.is_some());
        assert!(r.session_id.is_some());
        assert_eq!(r.provider, "anthropic");
        assert_eq!(r.api_type.as_str(), "claude");
        assert_eq!(r.namespace, "obs-team");
        assert!(r.request_id.is_some());
    }
    assert_eq!(records.iter().map(|r| r.cost_micros).sum::<u64>(), 26_128);
}

fn logs_json(records: &[&str]) -> String {
    format!(
        r#"{{"resourceLogs":[{{"resource":{{"attributes":[{{"key":"team.id","value":{{"stringValue":"t1"}}}}]}},"scopeLogs":[{{"logRecords":[{}]}}]}}]}}"#,
        records.join(",")
    )
}

fn api_request(id: &str, model: Option<&str>) -> String {
    let mut attrs = vec![
        r#"{"key":"event.name","value":{"stringValue":"api_request"}}"#.to_string(),
        format!(r#"{{"key":"request_id","value":{{"stringValue":"{id}"}}}}"#),
        r#"{"key":"input_tokens","value":{"stringValue":"10"}}"#.to_string(),
        r#"{"key":"output_tokens","value":{"intValue":5}}"#.to_string(),
        r#"{"key":"cost_usd_micros","value":{"intValue":"1234"}}"#.to_string(),
        r#"{"key":"duration_ms","value":{"stringValue":"100"}}"#.to_string(),
    ];
    if let Some(m) = model {
        attrs.push(format!(
            r#"{{"key":"model","value":{{"stringValue":"{m}"}}}}"#
        ));
    }
    format!(
        r#"{{"timeUnixNano":"{}","attributes":[{}]}}"#,
        (chrono_now_ms() - 1000) as u128 * 1_000_000,
        attrs.join(",")
    )
}

fn chrono_now_ms() -> i64 {
    gatemeter::clock::now_ms()
}

#[tokio::test]
async fn partly_invalid_batches_answer_partial_success_in_both_encodings() {
    let app = TestApp::with_config(CONFIG).await;
    let body = logs_json(&[
        &api_request("a1", Some("claude-x")),
        &api_request("a2", None),
    ]);
    let resp = post(
        &app,
        "/v1/logs",
        Some("application/json"),
        None,
        body.clone().into_bytes(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value =
        serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
    let p = &v["partialSuccess"];
    assert_eq!(
        p["rejectedLogRecords"].to_string().trim_matches('"'),
        "1",
        "{v}"
    );
    let msg = p["errorMessage"].as_str().expect("message");
    assert!(
        msg.contains("log record 1") && msg.contains("model"),
        "{msg}"
    );

    // The same as protobuf: the answer is protobuf.
    let req: ExportLogsServiceRequest = serde_json::from_str(&logs_json(&[
        &api_request("b1", Some("claude-x")),
        &api_request("b2", None),
    ]))
    .expect("json");
    let resp = post(
        &app,
        "/v1/logs",
        Some("application/x-protobuf"),
        None,
        req.encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-protobuf");
    let r = ExportLogsServiceResponse::decode(resp.bytes().await.expect("body")).expect("pb");
    let p = r.partial_success.expect("partial success");
    assert_eq!(p.rejected_log_records, 1);
    assert!(p.error_message.contains("model"));

    // The two valid api_request events are counted as events; the rejected two are not.
    let m = wait_for(
        &app,
        "claude_code_events_total",
        &[("event", "api_request")],
        2.0,
    )
    .await;
    assert_eq!(m.value("ai_gateway_requests_total", &[]), 2.0);
    assert_eq!(m.value("gatemeter_cost_usd_total", &[]), 0.002468);
    assert_eq!(
        m.value("gatemeter_tokens_total", &[("type", "input")]),
        20.0
    );
    assert_eq!(
        m.value(
            "ai_gateway_namespace_requests_total",
            &[("namespace", "t1"), ("namespace_code", "t1")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "gatemeter_otlp_rejected_items_total",
            &[("signal", "logs"), ("reason", "invalid_record")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "gatemeter_ingest_rejected_records_total",
            &[("source", "otlp"), ("reason", "missing_field")]
        ),
        2.0
    );
    app.stop().await;
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn nested_json(depth: usize) -> String {
    format!(
        r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{}{{"stringValue":"x"}}{}}}]}}]}}]}}"#,
        r#"{"arrayValue":{"values":["#.repeat(depth),
        "]}}".repeat(depth)
    )
}

#[tokio::test]
async fn bad_requests_get_the_otlp_codes_and_record_nothing() {
    let app =
        TestApp::with_config("ingest:\n  max_body_bytes: 65536\n  max_records_per_request: 100\n")
            .await;
    let good = std::fs::read(data_dir("protobuf").join("0004_logs.pb")).expect("fixture");
    let json = std::fs::read(data_dir("json").join("0002_logs.json")).expect("fixture");
    let pb = "application/x-protobuf";

    // Truncated protobuf.
    let r = post(
        &app,
        "/v1/logs",
        Some(pb),
        None,
        good[..good.len() - 7].to_vec(),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.headers()["content-type"],
        pb,
        "error in the request's encoding"
    );
    // A JSON body sent as protobuf.
    let r = post(&app, "/v1/logs", Some(pb), None, json.clone()).await;
    assert_eq!(r.status(), 400);
    // Protobuf sent as JSON: the answer is a JSON Status.
    let r = post(
        &app,
        "/v1/logs",
        Some("application/json"),
        None,
        good.clone(),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("json status");
    assert_eq!(v["code"], 3);
    assert!(
        v["message"]
            .as_str()
            .expect("message")
            .contains("OTLP/JSON")
    );
    // Wrong or missing media type.
    let r = post(&app, "/v1/logs", Some("text/plain"), None, good.clone()).await;
    assert_eq!(r.status(), 415);
    let r = post(&app, "/v1/metrics", None, None, good.clone()).await;
    assert_eq!(r.status(), 415);
    // Unknown content encoding.
    let r = post(&app, "/v1/logs", Some(pb), Some("br"), good.clone()).await;
    assert_eq!(r.status(), 415);
    // Wrong method, also under a prefix.
    for path in ["/v1/logs", "/x/y/v1/metrics"] {
        let r = app.client.get(app.url(path)).send().await.expect("get");
        assert_eq!(r.status(), 405, "{path}");
        assert_eq!(r.headers()["allow"], "POST");
    }
    // Oversize on the wire and after decompression (a gzip bomb).
    let r = post(&app, "/v1/logs", Some(pb), None, vec![0u8; 70_000]).await;
    assert_eq!(r.status(), 413);
    let bomb = gzip(&vec![b'a'; 20 << 20]);
    assert!(bomb.len() < 65536);
    let r = post(&app, "/v1/logs", Some(pb), Some("gzip"), bomb).await;
    assert_eq!(r.status(), 413);
    // Corrupt gzip.
    let r = post(
        &app,
        "/v1/logs",
        Some(pb),
        Some("gzip"),
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(r.status(), 400);
    // Deeply nested AnyValues.
    let r = post(
        &app,
        "/v1/logs",
        Some("application/json"),
        None,
        nested_json(1500).into_bytes(),
    )
    .await;
    assert_eq!(r.status(), 400);

    // Nothing half-recorded; the server is healthy and still takes good data.
    let m = app.metrics().await;
    assert_eq!(m.value("ai_gateway_requests_total", &[]), 0.0);
    assert_eq!(sum(&m, "claude_code_events_total", &[]), 0.0);
    assert_eq!(sum(&m, "gatemeter_otlp_received_items_total", &[]), 0.0);
    assert_eq!(
        m.value(
            "gatemeter_otlp_rejected_requests_total",
            &[("signal", "logs"), ("reason", "undecodable")]
        ),
        4.0
    );
    assert_eq!(
        m.value(
            "gatemeter_otlp_rejected_requests_total",
            &[("signal", "logs"), ("reason", "body_too_large")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "gatemeter_otlp_rejected_requests_total",
            &[("signal", "metrics"), ("reason", "method_not_allowed")]
        ),
        1.0
    );
    let r = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    assert_eq!(
        m.value(
            "gatemeter_ingest_rejected_requests_total",
            &[("source", "otlp"), ("reason", "malformed")]
        ),
        4.0
    );
    let r = post(&app, "/v1/logs", Some(pb), None, good).await;
    assert_eq!(r.status(), 200);
    let m = app.metrics().await;
    assert_eq!(m.value("ai_gateway_requests_total", &[]), 1.0);
    app.stop().await;
}

#[tokio::test]
async fn traces_are_accepted_and_counted_as_unused() {
    let app = TestApp::start().await;
    let body = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"s","kind":1,"startTimeUnixNano":"1","endTimeUnixNano":2}]}]}]}"#;
    let r = post(
        &app,
        "/prefix/v1/traces",
        Some("application/json"),
        None,
        body.into(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let m = app.metrics().await;
    assert_eq!(
        m.value(
            "gatemeter_otlp_accepted_items_total",
            &[("signal", "traces"), ("use", "unused")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "gatemeter_otlp_unused_items_total",
            &[("signal", "traces"), ("source", "unnamed")]
        ),
        1.0,
        "counted by instrumentation scope (none here)"
    );
    app.stop().await;
}

async fn wait_for(app: &TestApp, name: &str, labels: &[(&str, &str)], want: f64) -> Exposition {
    for _ in 0..100 {
        let m = app.metrics().await;
        if m.get(name, labels) == Some(want) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = app.metrics().await;
    panic!(
        "{name}{labels:?} never reached {want}: {:?}",
        m.get(name, labels)
    );
}

#[tokio::test]
async fn records_exported_over_otlp_are_counted_by_a_central_gatemeter() {
    let central = TestApp::start().await;
    let edge = TestApp::with_config(&format!(
        "{CONFIG}otlp_export:\n  endpoint: http://{}/central/v1/logs\n  batch_size: 3\n  interval_ms: 50\n",
        central.addr
    ))
    .await;
    // Native records and Claude Code events into the edge.
    let now = chrono_now_ms();
    let native: Vec<String> = (0..5)
        .map(|i| {
            format!(
                r#"{{"request_id":"n{i}","timestamp":{now},"namespace":"edge-ns","user":"u{i}","provider":"openai","model":"gpt-x","original_model":"gpt","endpoint":"/v1/chat/completions","status":{},"duration_ms":{},"ttfb_ms":5,"input_tokens":100,"output_tokens":7,"cache_read_tokens":3,"cache_creation_1h_tokens":2,"cost_usd":0.0125,"session_id":"s1","is_streaming":true}}"#,
                if i == 4 { 502 } else { 200 },
                10 + i
            )
        })
        .collect();
    let (status, _) = edge.post_json(&format!("[{}]", native.join(","))).await;
    assert_eq!(status, 200);
    replay(&edge, "protobuf").await;

    let m = wait_for(&central, "ai_gateway_requests_total", &[], 13.0).await;
    let e = edge.metrics().await;
    for (name, labels) in [
        ("ai_gateway_requests_total", vec![]),
        ("ai_gateway_errors_total", vec![]),
        ("gatemeter_cost_usd_total", vec![]),
        ("gatemeter_tokens_total", vec![("type", "input")]),
        ("gatemeter_tokens_total", vec![("type", "output")]),
        ("gatemeter_tokens_total", vec![("type", "cache_read")]),
        ("gatemeter_tokens_total", vec![("type", "cache_write_5m")]),
        ("gatemeter_tokens_total", vec![("type", "cache_write_1h")]),
        (
            "ai_gateway_namespace_requests_total",
            vec![("namespace", "edge-ns"), ("namespace_code", "edge-ns")],
        ),
        (
            "ai_gateway_namespace_requests_total",
            vec![("namespace", "obs-team"), ("namespace_code", "obs-team")],
        ),
        (
            "model_requests_total",
            vec![("provider", "openai"), ("model", "gpt-x")],
        ),
        ("gatemeter_request_duration_seconds_sum", vec![]),
    ] {
        assert_eq!(
            m.get(name, &labels),
            e.get(name, &labels),
            "{name}{labels:?}: central and edge differ"
        );
    }
    close(
        m.value("gatemeter_cost_usd_total", &[]),
        0.27688,
        "central cost",
    );
    assert_eq!(e.value("gatemeter_otlp_export_records_total", &[]), 13.0);
    assert_eq!(
        sum(&e, "gatemeter_otlp_export_dropped_records_total", &[]),
        0.0
    );
    assert_eq!(
        m.value(
            "gatemeter_otlp_accepted_items_total",
            &[("signal", "logs"), ("use", "record")]
        ),
        13.0
    );
    edge.stop().await;
    central.stop().await;
}

#[tokio::test]
async fn series_beyond_the_cap_fold_into_one_overflow_series_and_allow_listed_ids_become_labels() {
    let app = TestApp::with_config(&format!(
        "{CONFIG}  max_series_per_metric: 2\n  label_allowlist: [session.id]\n"
    ))
    .await;
    replay(&app, "protobuf").await;
    let m = app.metrics().await;
    let tokens: Vec<_> = m
        .samples
        .iter()
        .filter(|s| s.name == "claude_code_token_usage_tokens_total")
        .collect();
    // Four token types, two series kept, the rest in one overflow series: totals unchanged.
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    let overflow = m.value(
        "claude_code_token_usage_tokens_total",
        &[("series", "__overflow__")],
    );
    assert!(overflow > 0.0);
    close(
        tokens.iter().map(|s| s.value).sum(),
        38_680.0 + 311.0 + 27_200.0 + 9_600.0,
        "token total",
    );
    assert!(
        m.value(
            "gatemeter_claude_code_series_overflow_total",
            &[("metric", "claude_code.token.usage")]
        ) > 0.0
    );
    // session.id was allow-listed: it is a label now.
    assert!(
        tokens
            .iter()
            .filter(|s| !s.labels.contains_key("series"))
            .all(|s| s.labels.contains_key("session_id")),
        "{tokens:?}"
    );
    app.stop().await;
}

/// One metrics request: a delta Sum per point `(metric, session, value JSON, time ns)`, each point
/// starting a minute before now.
fn metric_points(points: &[(&str, &str, &str, u128)]) -> Vec<u8> {
    let start = (chrono_now_ms() - 60_000) as u128 * 1_000_000;
    let metrics: Vec<String> = points
        .iter()
        .map(|(name, session, value, time)| {
            format!(
                r#"{{"name":"{name}","sum":{{"aggregationTemporality":1,"isMonotonic":true,"dataPoints":[{{"attributes":[{{"key":"session.id","value":{{"stringValue":"{session}"}}}},{{"key":"type","value":{{"stringValue":"input"}}}}],{value},"startTimeUnixNano":"{start}","timeUnixNano":"{time}"}}]}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[{{"key":"team.id","value":{{"stringValue":"t1"}}}}]}},"scopeMetrics":[{{"metrics":[{}]}}]}}]}}"#,
        metrics.join(",")
    )
    .into_bytes()
}

/// Posts metric points as OTLP/JSON; the answer's (rejected points, message).
async fn post_points(app: &TestApp, points: &[(&str, &str, &str, u128)]) -> (i64, String) {
    let resp = post(
        app,
        "/v1/metrics",
        Some("application/json"),
        None,
        metric_points(points),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value =
        serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
    let p = &v["partialSuccess"];
    let n = p["rejectedDataPoints"]
        .to_string()
        .trim_matches('"')
        .parse()
        .unwrap_or(0);
    (n, p["errorMessage"].as_str().unwrap_or("").to_string())
}

/// Metric points are bounded like native records (cost ≤ $100,000, tokens ≤ 1e8 per point) and
/// refused per point, naming the reason; a point dated far ahead is refused and does not block
/// its stream; `asDouble` as a string is read as the number.
#[tokio::test]
async fn out_of_range_and_future_metric_points_are_refused_per_point() {
    let app = TestApp::with_config(CONFIG).await;
    let now = chrono_now_ms() as u128 * 1_000_000;
    const COST: &str = "claude_code.cost.usage";
    const TOKENS: &str = "claude_code.token.usage";
    let (n, msg) = post_points(
        &app,
        &[
            (COST, "a", r#""asDouble":1e308"#, now),
            (COST, "b", r#""asDouble":0.5"#, now),
            (TOKENS, "a", r#""asInt":"9223372036854775807""#, now),
            (TOKENS, "c", r#""asInt":"9223372036854775807""#, now),
            (TOKENS, "b", r#""asInt":"100""#, now),
            (COST, "d", r#""asDouble":"1.5""#, now),
            (COST, "e", r#""asDouble":"NaN""#, now),
        ],
    )
    .await;
    assert_eq!(n, 4, "{msg}");
    assert!(
        msg.contains("out_of_range: 3 points") && msg.contains("1e308"),
        "{msg}"
    );
    assert!(msg.contains("bad_value: 1 point"), "{msg}");
    wait_for(
        &app,
        "claude_code_cost_usage_usd_total",
        &[("type", "input")],
        2.0,
    )
    .await;
    let m = wait_for(
        &app,
        "claude_code_token_usage_tokens_total",
        &[("type", "input")],
        100.0,
    )
    .await;
    assert_eq!(sum(&m, "claude_code_token_usage_tokens_total", &[]), 100.0);

    // Dated 2099: refused, and the stream's next point still counts.
    let y2099 = 4_070_908_800_000u128 * 1_000_000;
    let (n, msg) = post_points(&app, &[(COST, "f", r#""asDouble":7"#, y2099)]).await;
    assert_eq!(n, 1, "{msg}");
    assert!(msg.contains("future_timestamp"), "{msg}");
    let (n, msg) = post_points(&app, &[(COST, "f", r#""asDouble":0.25"#, now + 1)]).await;
    assert_eq!(n, 0, "{msg}");
    let m = wait_for(
        &app,
        "claude_code_cost_usage_usd_total",
        &[("type", "input")],
        2.25,
    )
    .await;
    for (reason, want) in [
        ("out_of_range", 3.0),
        ("future_timestamp", 1.0),
        ("bad_value", 1.0),
    ] {
        assert_eq!(
            m.value(
                "gatemeter_otlp_rejected_items_total",
                &[("signal", "metrics"), ("reason", reason)]
            ),
            want,
            "{reason}"
        );
    }
    assert_eq!(
        m.value(
            "gatemeter_otlp_accepted_items_total",
            &[("signal", "metrics"), ("use", "repeated")]
        ),
        0.0
    );
    app.stop().await;
}

/// A failed Claude Code call is found in the log by the request id the CLI reported
/// (`provider_request_id`), while its row keeps its own idempotency key.
#[tokio::test]
async fn a_failed_call_is_found_by_the_cli_request_id() {
    let app = TestApp::start().await;
    replay(&app, "api_error_final").await;
    let n = app.metrics().await.value("ai_gateway_requests_total", &[]) as usize;
    crate::sql_log::wait_rows(&app, None, n).await;
    let (status, page) = crate::sql_log::get_json(
        &app,
        None,
        "/api/v1/logs?provider_request_id=req_mock_49de9dd105284a96b27a",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{page}");
    let row = &items[0];
    assert_eq!(row["status"], 500, "{row}");
    assert_eq!(row["provider_request_id"], "req_mock_49de9dd105284a96b27a");
    assert!(
        row["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("cc:")),
        "the idempotency key is the event's own: {row}"
    );
    app.stop().await;
}
