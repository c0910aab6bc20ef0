//! The request-log conformance suite: every test runs against SQLite (a temp file) and
//! PostgreSQL (a fresh database per test on the throwaway server of scripts/test.sh), through
//! the real server and real HTTP — plus a test that both give byte-identical answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use gatemeter::config::Config;
use gatemeter::export::usage_csv;
use gatemeter::health::Health;
use gatemeter::price::PriceTable;
use gatemeter::record::{Event, Validation, parse_event};
use gatemeter::store::RequestLog;
use gatemeter::store::sql::{ExportEnd, LogFilter, SqlBackend, SqlConfig, SqlLog};
use serde_json::{Value, json};
use sqlx::Connection;

use crate::harness::TestApp;

pub(crate) const ADMIN: &str = "admin-token-0123456789abcdef";
pub(crate) const ALICE: &str = "alice-token-0123456789abcdef";
pub(crate) const BOB: &str = "bob-token-0123456789abcdef";
pub(crate) const INGEST: &str = "ingest-token-0123456789abcdef";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A fresh, empty PostgreSQL database on the test server; its URL.
pub(crate) async fn fresh_postgres() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let url = std::env::var("GATEMETER_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "GATEMETER_TEST_DATABASE_URL is not set: run the tests through scripts/test.sh or \
             scripts/with-services.sh (they start a throwaway PostgreSQL server)"
        )
    });
    let name = format!(
        "gm_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos()
    );
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to the test PostgreSQL server");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    let base = url.rsplit_once('/').expect("url has a database").0;
    format!("{base}/{name}")
}

/// The `log_store` YAML of a fresh log on `db` (SQLite: the harness puts it in a temp dir).
pub(crate) async fn log_store_yaml(db: Db) -> String {
    match db {
        Db::Sqlite => "log_store:\n  kind: sqlite\n".to_string(),
        Db::Postgres => format!(
            "log_store:\n  kind: postgres\n  url: {}\n",
            fresh_postgres().await
        ),
    }
}

pub(crate) fn auth_yaml() -> String {
    format!(
        "auth:\n  ingest_tokens: [{INGEST}]\n  admin_tokens: [{ADMIN}]\n  user_tokens:\n    {ALICE}: alice\n    {BOB}: bob\n"
    )
}

async fn app(db: Db, extra: &str) -> TestApp {
    TestApp::with_config(&format!("{}{extra}", log_store_yaml(db).await)).await
}

fn base_ms() -> i64 {
    gatemeter::clock::now_ms() - 3_600_000
}

/// POSTs records (as a JSON array) with a token; panics unless all were accepted.
pub(crate) async fn ingest(app: &TestApp, token: Option<&str>, records: &[Value]) {
    for chunk in records.chunks(5000) {
        let mut req = app
            .client
            .post(app.url("/v1/events"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(chunk).expect("json"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("post");
        let status = resp.status();
        let body: Value =
            serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json answer");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["accepted"], chunk.len(), "{body}");
    }
}

pub(crate) async fn get(
    app: &TestApp,
    token: Option<&str>,
    path: &str,
) -> gatemeter::client::Response {
    let mut req = app.client.get(app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("get")
}

pub(crate) async fn get_json(app: &TestApp, token: Option<&str>, path: &str) -> (u16, Value) {
    let resp = get(app, token, path).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

/// Waits until the log holds `n` rows (PostgreSQL may commit batches out of order, so the
/// newest row alone says nothing about the others).
pub(crate) async fn wait_rows(app: &TestApp, token: Option<&str>, n: usize) {
    for _ in 0..400 {
        let mut count = 0;
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("/api/v1/logs?limit=1000&cursor={c}"),
                None => "/api/v1/logs?limit=1000".to_string(),
            };
            let (status, page) = get_json(app, token, &q).await;
            assert_eq!(status, 200, "{page}");
            count += page["items"].as_array().expect("items").len();
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        if count >= n {
            assert_eq!(count, n, "more rows than records sent");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{n} rows never reached the request log");
}

fn rec(i: i64, base: i64) -> Value {
    json!({
        "request_id": format!("r{i}"),
        "timestamp": base + i * 1000,
        "namespace": "team",
        "user": format!("user-{}", i % 3),
        "key": format!("key-{}", i % 2),
        "provider": if i % 2 == 0 { "anthropic" } else { "openai" },
        "model": if i % 2 == 0 { "claude-sonnet-4-5" } else { "gpt-4o" },
        "endpoint": if i % 2 == 0 { "/v1/messages" } else { "/v1/chat/completions" },
        "status": if i % 4 == 3 { 502 } else { 200 },
        "duration_ms": 100 + i,
        "input_tokens": 10 * i,
        "output_tokens": i,
        "cost_usd": format!("0.{:06}", i),
        "session_id": format!("s{}", i % 5),
        "trace_id": format!("t{}", i % 4),
        "span_id": format!("sp{i}"),
        "retry_count": i % 3,
        "provider_chain": if i % 3 == 0 { vec![] } else { vec!["p1", "p2"] },
    })
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["request_id"].as_str().expect("id").to_string())
        .collect()
}

/// Filters are AND-ed, newest first; keyset pages cover everything once; detail by id.
pub async fn filters_pages_and_detail(db: Db) {
    let app = app(db, "").await;
    let base = base_ms();
    let records: Vec<Value> = (0..20).map(|i| rec(i, base)).collect();
    ingest(&app, None, &records).await;
    wait_rows(&app, None, 20).await;

    let list = |q: String| {
        let app = &app;
        async move {
            let (s, v) = get_json(app, None, &format!("/api/v1/logs?{q}")).await;
            assert_eq!(s, 200, "{q}: {v}");
            ids(&v)
        }
    };
    let all = list("limit=1000".into()).await;
    let expect_all: Vec<String> = (0..20).rev().map(|i| format!("r{i}")).collect();
    assert_eq!(all, expect_all, "newest first");
    // Each filter alone, against a model of it.
    let model = |f: &dyn Fn(i64) -> bool| -> Vec<String> {
        (0..20)
            .rev()
            .filter(|i| f(*i))
            .map(|i| format!("r{i}"))
            .collect()
    };
    assert_eq!(list("user=user-1".into()).await, model(&|i| i % 3 == 1));
    assert_eq!(list("key=key-0".into()).await, model(&|i| i % 2 == 0));
    assert_eq!(list("provider=openai".into()).await, model(&|i| i % 2 == 1));
    assert_eq!(list("model=gpt-4o".into()).await, model(&|i| i % 2 == 1));
    assert_eq!(
        list("endpoint=%2Fv1%2Fmessages".into()).await,
        model(&|i| i % 2 == 0)
    );
    assert_eq!(list("status=502".into()).await, model(&|i| i % 4 == 3));
    assert_eq!(
        list("exclude_200=true".into()).await,
        model(&|i| i % 4 == 3)
    );
    assert_eq!(list("session_id=s2".into()).await, model(&|i| i % 5 == 2));
    assert_eq!(list("trace_id=t1".into()).await, model(&|i| i % 4 == 1));
    assert_eq!(
        list("trace_id=t1&span_id=sp5".into()).await,
        model(&|i| i == 5)
    );
    assert_eq!(
        list("min_retry_count=2".into()).await,
        model(&|i| i % 3 == 2)
    );
    assert_eq!(
        list(format!("from={}&to={}", base + 5000, base + 9000)).await,
        model(&|i| (5..9).contains(&i))
    );
    // AND-ed.
    assert_eq!(
        list("provider=anthropic&user=user-0&min_retry_count=1".into()).await,
        model(&|i| i % 2 == 0 && i % 3 == 0 && i % 3 >= 1)
    );
    assert_eq!(
        list("provider=anthropic&session_id=s4".into()).await,
        model(&|i| i % 2 == 0 && i % 5 == 4)
    );

    // Keyset pages: default 50; limit 3 walks everything exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/api/v1/logs?limit=3&cursor={c}"),
            None => "/api/v1/logs?limit=3".to_string(),
        };
        let (s, page) = get_json(&app, None, &q).await;
        assert_eq!(s, 200);
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, expect_all);

    // Detail: the whole record with its provider chain.
    let (_, page) = get_json(&app, None, "/api/v1/logs?session_id=s1&limit=1").await;
    let id = page["items"][0]["id"].as_i64().expect("id");
    let (s, one) = get_json(&app, None, &format!("/api/v1/logs/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(one["request_id"], "r16");
    assert_eq!(one["provider_chain"], json!(["p1", "p2"]));
    assert_eq!(one["cost_micros"], 16);
    assert_eq!(one["input_tokens"], 160);
    let (s, _) = get_json(&app, None, "/api/v1/logs/999999").await;
    assert_eq!(s, 404);

    // Bad parameters: 400 naming the parameter.
    for (q, name) in [
        ("from=abc", "from"),
        ("to=-5", "to"),
        ("from=10&to=5", "to"),
        ("status=abc", "status"),
        ("status=1000", "status"),
        ("exclude_200=maybe", "exclude_200"),
        ("min_retry_count=-1", "min_retry_count"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("cursor=zzz", "cursor"),
        ("usr=alice", "usr"),
        ("user=a&user=b", "user"),
        ("user=", "user"),
    ] {
        let (s, v) = get_json(&app, None, &format!("/api/v1/logs?{q}")).await;
        assert_eq!(s, 400, "{q}: {v}");
        let msg = v["message"].as_str().expect("message");
        assert!(msg.contains(&format!("`{name}`")), "{q}: {msg}");
    }
    let (s, v) = get_json(&app, None, "/api/v1/logs/abc").await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().expect("msg").contains("`id`"));
    app.stop().await;
}

/// Parses a usage CSV: checks the BOM, returns the rows (header first) as strings.
fn parse_csv(body: &[u8]) -> Vec<Vec<String>> {
    assert!(body.starts_with(usage_csv::BOM), "starts with a BOM");
    let rest = &body[usage_csv::BOM.len()..];
    assert!(
        !rest
            .windows(usage_csv::BOM.len())
            .any(|w| w == usage_csv::BOM),
        "exactly one BOM"
    );
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(rest);
    r.records()
        .map(|rec| {
            rec.expect("valid CSV")
                .iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn label_safe(s: &str) -> String {
    s.replace(['\t', '\r', '\n'], " ")
}

/// Hostile text: neutralised, re-parses to the original values; numbers stay numbers.
pub async fn usage_csv_is_safe_and_exact(db: Db) {
    let app = app(db, "").await;
    let base = base_ms();
    let hostile = [
        "=HYPERLINK(\"http://evil\",\"x\")",
        "+cmd|' /C calc'!A0",
        "@SUM(1+1)",
        "-2+3",
        // Ingest refuses control characters in ids and labels, so leading tab / CR and
        // newlines cannot reach these columns; export/usage_csv.rs tests them on the writer.
        "has \"quotes\", commas; and semicolons",
        "ünïcødé ✓ 日本",
        "'already quoted",
        "back\\slash \\N",
    ];
    let records: Vec<Value> = hostile
        .iter()
        .enumerate()
        .map(|(i, h)| {
            // Labels refuse control characters; free text keeps them.
            let label = label_safe(h);
            json!({
                "request_id": format!("h{i}"),
                "timestamp": base + i as i64 * 1000,
                "user": h, "key": h, "provider": label, "model": label,
                "original_model": label, "endpoint": format!("/v1/{label}"), "session_id": h,
                "status": 200, "duration_ms": 7, "input_tokens": 3, "output_tokens": 4,
                "cache_creation_5m_tokens": 1, "cache_creation_1h_tokens": 2, "cache_read_tokens": 5,
                "cost_usd": "1.5", "retry_count": 1,
            })
        })
        .collect();
    ingest(&app, None, &records).await;
    wait_rows(&app, None, hostile.len()).await;

    let resp = get(&app, None, "/api/v1/export/usage.csv").await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "text/csv; charset=utf-8");
    let cd = h["content-disposition"].to_str().expect("ascii");
    let today = &usage_csv::format_time(gatemeter::clock::now_ms())[..10];
    assert_eq!(cd, format!("attachment; filename=\"usage-{today}.csv\""));
    assert_eq!(h["x-gatemeter-truncated"], "false");
    let body = resp.bytes().await.expect("body");
    let rows = parse_csv(&body);
    assert_eq!(rows[0], usage_csv::HEADER.map(str::to_string).to_vec());
    assert_eq!(rows.len(), hostile.len() + 1, "header + one row per record");
    for row in &rows[1..] {
        // Text cells: neutralised when dangerous, and exactly the original once restored.
        for &col in &[1usize, 2, 3, 4, 5, 16] {
            let cell = &row[col];
            assert!(
                !matches!(
                    cell.as_bytes().first(),
                    Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
                ),
                "cell {col} starts with a formula character: {cell:?}"
            );
        }
        let original = usage_csv::restore(&row[1]);
        assert!(
            hostile.contains(&original),
            "{original:?} is one of the originals"
        );
        for col in [2usize, 3, 4, 5, 16] {
            assert_eq!(usage_csv::restore(&row[col]), original, "column {col}");
        }
        assert_eq!(row[6], format!("/v1/{original}"), "endpoint starts with /");
        // Numbers are plain numbers.
        assert_eq!(
            &row[7..16],
            &["200", "3", "4", "1", "2", "5", "15", "1.500000", "7"]
        );
        assert_eq!(row[17], "1");
    }
    // Newest first: the last hostile string is the first row.
    assert_eq!(usage_csv::restore(&rows[1][1]), hostile[hostile.len() - 1]);
    app.stop().await;
}

/// 10,001 matching rows → 10,000 rows and the truncation signal (header and last line).
pub async fn usage_csv_row_cap(db: Db) {
    let app = app(db, "").await;
    let base = base_ms() - 20_000_000;
    let records: Vec<Value> = (0..10_001)
        .map(|i| {
            json!({"request_id": format!("c{i}"), "timestamp": base + i * 1000, "model": "m",
                   "status": 200, "duration_ms": 1, "user": "u"})
        })
        .collect();
    ingest(&app, None, &records).await;
    wait_rows(&app, None, 10_001).await;
    // The list's default page is 50; 1000 at most.
    let (_, page) = get_json(&app, None, "/api/v1/logs?user=u").await;
    assert_eq!(page["items"].as_array().expect("items").len(), 50);
    assert!(page["next_cursor"].is_string());
    let (_, page) = get_json(&app, None, "/api/v1/logs?user=u&limit=1000").await;
    assert_eq!(page["items"].as_array().expect("items").len(), 1000);
    let resp = get(&app, None, "/api/v1/export/usage.csv?user=u").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-gatemeter-truncated"], "true");
    assert_eq!(resp.headers()["x-gatemeter-row-cap"], "10000");
    let body = resp.bytes().await.expect("body");
    let rows = parse_csv(&body);
    assert_eq!(
        rows.len(),
        1 + 10_000 + 1,
        "header, 10,000 rows, the signal"
    );
    let last = rows.last().expect("rows");
    assert_eq!(last.len(), 1, "the signal is not a data row: {last:?}");
    assert!(last[0].starts_with("# truncated at 10000 rows"), "{last:?}");
    assert!(rows[1..=10_000].iter().all(|r| r.len() == 18));
    // Exactly at the cap: no signal.
    let resp = get(
        &app,
        None,
        &format!("/api/v1/export/usage.csv?from={}", base + 1000),
    )
    .await;
    assert_eq!(resp.headers()["x-gatemeter-truncated"], "false");
    let rows = parse_csv(&resp.bytes().await.expect("body"));
    assert_eq!(rows.len(), 1 + 10_000);
    assert_eq!(rows.last().expect("rows").len(), 18);
    app.stop().await;
}

/// Roles: a user token gets only its own rows whatever it asks; admins get all; 401/403.
pub async fn roles_force_the_user(db: Db) {
    let app = app(db, &auth_yaml()).await;
    let base = base_ms();
    let records: Vec<Value> = (0..6)
        .map(|i| {
            json!({"request_id": format!("a{i}"), "timestamp": base + i * 1000, "model": "m",
                   "status": 200, "duration_ms": 1,
                   "user_id": if i % 2 == 0 { "alice" } else { "bob" }, "session_id": "shared"})
        })
        .collect();
    // Ingest: no token 401, user token 403, ingest and admin tokens accepted.
    let (s, v) = app.post_json(&records[0].to_string()).await;
    assert_eq!(s, 401, "{v}");
    let resp = app
        .client
        .post(app.url("/v1/events"))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .body(records[0].to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 403);
    ingest(&app, Some(INGEST), &records[..3]).await;
    ingest(&app, Some(ADMIN), &records[3..]).await;
    wait_rows(&app, Some(ADMIN), 6).await;

    let (s, all) = get_json(&app, Some(ADMIN), "/api/v1/logs").await;
    assert_eq!(s, 200);
    assert_eq!(ids(&all), ["a5", "a4", "a3", "a2", "a1", "a0"]);
    for q in [
        "",
        "?user=bob",
        "?user=alice",
        "?session_id=shared",
        "?user=bob&session_id=shared",
    ] {
        let (s, page) = get_json(&app, Some(ALICE), &format!("/api/v1/logs{q}")).await;
        assert_eq!(s, 200, "{q}");
        assert_eq!(ids(&page), ["a4", "a2", "a0"], "alice asking {q:?}");
        let resp = get(&app, Some(ALICE), &format!("/api/v1/export/usage.csv{q}")).await;
        let rows = parse_csv(&resp.bytes().await.expect("csv"));
        assert_eq!(rows.len(), 4, "alice's CSV {q:?}");
        assert!(rows[1..].iter().all(|r| r[1] == "alice"), "{rows:?}");
    }
    let (_, page) = get_json(&app, Some(BOB), "/api/v1/logs?user=alice").await;
    assert_eq!(ids(&page), ["a5", "a3", "a1"]);
    // Someone else's record by id: not found.
    let bob_row = all["items"][0]["id"].as_i64().expect("id");
    let (s, _) = get_json(&app, Some(ALICE), &format!("/api/v1/logs/{bob_row}")).await;
    assert_eq!(s, 404);
    let (s, _) = get_json(&app, Some(BOB), &format!("/api/v1/logs/{bob_row}")).await;
    assert_eq!(s, 200);
    // 401 without or with an unknown token; 403 for the wrong role.
    let resp = get(&app, None, "/api/v1/logs").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        get(&app, Some("nope-nope-nope-nope"), "/api/v1/logs")
            .await
            .status(),
        401
    );
    assert_eq!(get(&app, Some(INGEST), "/api/v1/logs").await.status(), 403);
    assert_eq!(get(&app, Some(ALICE), "/api/v1/audit").await.status(), 403);
    assert_eq!(
        get(&app, None, "/api/v1/export/usage.csv").await.status(),
        401
    );

    // Every export is in the audit trail, with who, filters, rows and outcome.
    let (s, audit) = get_json(&app, Some(ADMIN), "/api/v1/audit").await;
    assert_eq!(s, 200, "{audit}");
    let items = audit["items"].as_array().expect("items");
    assert_eq!(items.len(), 5, "{audit}");
    let newest = &items[0];
    assert_eq!(newest["role"], "user");
    assert_eq!(newest["actor"], "alice");
    assert_eq!(newest["action"], "usage_csv");
    assert_eq!(newest["rows"], 3);
    assert_eq!(newest["outcome"], "ok");
    assert_eq!(
        newest["filters"]["user"], "alice",
        "the forced filter is recorded"
    );
    assert_eq!(newest["filters"]["session_id"], "shared");
    assert!(newest["timestamp_ms"].as_i64().expect("ts") > base);
    // An admin's export names the admin token by its place in the list, never the token.
    let resp = get(&app, Some(ADMIN), "/api/v1/export/usage.csv").await;
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await.expect("csv");
    let (_, audit) = get_json(&app, Some(ADMIN), "/api/v1/audit").await;
    assert_eq!(audit["items"][0]["role"], "admin", "{audit}");
    assert_eq!(
        audit["items"][0]["actor"], "auth.admin_tokens[0]",
        "{audit}"
    );
    assert!(!audit.to_string().contains(ADMIN));
    app.stop().await;
}

pub fn valid(json: Value) -> Box<gatemeter::record::ValidRecord> {
    let prices = PriceTable::default();
    let v = Validation {
        now_ms: gatemeter::clock::now_ms(),
        prices: &prices,
        keep_requests: None,
    };
    match parse_event(&json.to_string(), &v).expect("valid") {
        Event::Finish(r) => r,
        Event::Start(_) => panic!("not a start marker"),
    }
}

async fn open_log(db: Db, queue_capacity: usize) -> (SqlLog, Option<tempfile::TempDir>) {
    let (log, dir, _) = open_log_with(db, queue_capacity, Arc::new(Health::new(1))).await;
    (log, dir)
}

/// Opens a fresh log; also returns a URL a test can reach the same database by.
pub(crate) async fn open_log_with(
    db: Db,
    queue_capacity: usize,
    health: Arc<Health>,
) -> (SqlLog, Option<tempfile::TempDir>, String) {
    let (backend, dir, url) = match db {
        Db::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("log.db");
            let url = format!("sqlite://{}", path.display());
            (SqlBackend::Sqlite { path }, Some(dir), url)
        }
        Db::Postgres => {
            let url = fresh_postgres().await;
            (SqlBackend::Postgres { url: url.clone() }, None, url)
        }
    };
    let cfg = SqlConfig {
        backend,
        queue_capacity,
        batch_rows: 1000,
        write_concurrency: 2,
        retention_days: 0,
        rollups: true,
        queue_bytes: gatemeter::store::sql::DEFAULT_QUEUE_BYTES,
        sqlite_cache_bytes: gatemeter::store::sql::DEFAULT_SQLITE_CACHE_BYTES,
    };
    let log = SqlLog::open(&cfg, health).await.expect("log opens");
    (log, dir, url)
}

/// The `request_id` of every stored row (up to 1,000), newest first; "" for a row without one.
async fn stored_ids(log: &SqlLog) -> Vec<String> {
    log.page(&LogFilter::default(), None, 1000)
        .await
        .expect("page")
        .items
        .into_iter()
        .map(|e| e.request_id.unwrap_or_default())
        .collect()
}

/// A batch the database keeps refusing is retried, then dropped and counted — never silently.
pub async fn store_counts_what_it_cannot_write(db: Db) {
    let health = Arc::new(Health::new(1));
    let (log, _dir, url) = open_log_with(db, 100, health.clone()).await;
    // Break the database behind the log's back.
    match db {
        Db::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("connect");
            sqlx::query("DROP TABLE request_log")
                .execute(&mut c)
                .await
                .expect("drop");
        }
        Db::Postgres => {
            let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
            sqlx::query("DROP TABLE request_log")
                .execute(&mut c)
                .await
                .expect("drop");
        }
    }
    let now = gatemeter::clock::now_ms();
    let batch = (0..3)
        .map(|i| {
            valid(
                json!({"request_id": format!("f{i}"), "timestamp": now, "model": "m",
                         "status": 200, "duration_ms": 1}),
            )
        })
        .collect();
    log.submit(batch).expect("queued");
    log.flush().await;
    let dropped = health.snapshot().dropped[gatemeter::health::DropReason::LogWriteFailed as usize];
    assert_eq!(dropped, 3);
    assert!(log.page(&LogFilter::default(), None, 1).await.is_err());
}

/// `flush_writes` returns once every row submitted before it is in the log (it does not wait
/// for the rollups' merge, which `flush` does).
pub async fn flush_writes_waits_for_every_row(db: Db) {
    let (log, _dir) = open_log(db, 2_000).await;
    let now = gatemeter::clock::now_ms();
    for part in 0..3 {
        let batch = (0..300)
            .map(|i| {
                valid(
                    json!({"request_id": format!("w{part}-{i}"), "timestamp": now - i,
                    "model": "m", "status": 200, "duration_ms": 1}),
                )
            })
            .collect();
        log.submit(batch).expect("room");
    }
    log.flush_writes().await;
    assert_eq!(stored_ids(&log).await.len(), 900);
}

/// The store itself: idempotent on request_id, bounded queue, retention purge.
pub async fn store_idempotent_bounded_and_purged(db: Db) {
    let (log, _dir) = open_log(db, 5).await;
    let now = gatemeter::clock::now_ms();
    let r = |id: &str, ts: i64| {
        valid(
            json!({"request_id": id, "timestamp": ts, "model": "m", "status": 200, "duration_ms": 1}),
        )
    };
    log.submit(vec![r("x", now - 5000), r("y", now - 4000)])
        .expect("room");
    log.submit(vec![r("x", now - 5000), r("z", now - 1000)])
        .expect("room");
    // 4 queued of 5: a batch of 2 does not fit and is refused at once.
    assert!(log.submit(vec![r("p", now), r("q", now)]).is_err());
    log.flush().await;
    let got = stored_ids(&log).await;
    assert_eq!(got, ["z", "y", "x"], "x stored once");
    // Records without a request id are all kept.
    let anon =
        |ts: i64| valid(json!({"timestamp": ts, "model": "m", "status": 200, "duration_ms": 1}));
    log.submit(vec![anon(now - 3000), anon(now - 3000)])
        .expect("room");
    log.flush().await;
    let page = log
        .page(&LogFilter::default(), None, 100)
        .await
        .expect("page");
    assert_eq!(page.items.len(), 5);
    // Retention: everything before the cutoff goes.
    assert_eq!(log.purge_before(now - 3500).await.expect("purge"), 2);
    let page = log
        .page(&LogFilter::default(), None, 100)
        .await
        .expect("page");
    assert_eq!(page.items.len(), 3);
    assert!(page.items.iter().all(|e| e.timestamp_ms >= now - 3500));
    log.close().await;
}

/// Request ids written as canonical UUIDs (which SQLite stores as their 16 bytes) come back as
/// the same text, and stay unique across batches; an id in any other form (uppercase, no
/// hyphens, braces) is a different id, kept as it came.
pub async fn store_keeps_uuid_ids_exactly(db: Db) {
    let (log, _dir, url) = open_log_with(db, 1000, Arc::new(Health::new(1))).await;
    let now = gatemeter::clock::now_ms();
    let uuid = "0af76519-16cd-43dd-8448-eb211c80319c";
    let ids = [
        uuid.to_string(),
        uuid.to_uppercase(),
        uuid.replace('-', ""),
        format!("{{{uuid}}}"),
        "00000000-0000-0000-0000-000000000000".to_string(),
        "ffffffff-ffff-ffff-ffff-ffffffffffff".to_string(),
    ];
    let row = |id: &str, i: usize| {
        let mut r = valid(
            json!({"timestamp": now - i as i64, "model": "m", "status": 200,
                                 "duration_ms": 1}),
        );
        r.request_id = Some(gatemeter::record::RequestId(id.into()));
        r
    };
    log.submit(ids.iter().enumerate().map(|(i, id)| row(id, i)).collect())
        .expect("room");
    log.flush().await;
    // Every id again, in later batches: all are repeats.
    log.submit(ids.iter().map(|id| row(id, 100)).collect())
        .expect("room");
    log.submit(vec![row(uuid, 200), row(&uuid.to_uppercase(), 200)])
        .expect("room");
    log.flush().await;

    assert_eq!(
        stored_ids(&log).await,
        ids,
        "each id once, as it came, newest first"
    );
    let newest = log
        .page(&LogFilter::default(), None, 1)
        .await
        .expect("page");
    let one = log
        .get(newest.items[0].id, None)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(one.request_id.as_deref(), Some(uuid));
    if db == Db::Sqlite {
        let mut c = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("connect");
        let kinds: Vec<(String, i64)> = sqlx::query_as(
            "SELECT typeof(request_id), length(request_id) FROM request_log \
             ORDER BY ts_ms DESC",
        )
        .fetch_all(&mut c)
        .await
        .expect("types");
        let blob = |k: &(String, i64)| k.0 == "blob" && k.1 == 16;
        assert_eq!(
            kinds.iter().map(blob).collect::<Vec<_>>(),
            [true, false, false, false, true, true],
            "canonical UUIDs stored as 16 bytes: {kinds:?}"
        );
    }
    log.close().await;
}

/// Every value comes back exactly (NULLs, empty strings, non-ASCII text, integer extremes), and a
/// repeated request_id is stored once: within one batch (the first is kept) and across batches
/// written at the same time (batches of 2 rows, several in flight on PostgreSQL).
pub async fn store_keeps_values_and_ids_exactly(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = match db {
        Db::Sqlite => SqlBackend::Sqlite {
            path: dir.path().join("log.db"),
        },
        Db::Postgres => SqlBackend::Postgres {
            url: fresh_postgres().await,
        },
    };
    let cfg = SqlConfig {
        backend,
        queue_capacity: 1000,
        batch_rows: 2,
        write_concurrency: 2,
        retention_days: 0,
        rollups: true,
        queue_bytes: gatemeter::store::sql::DEFAULT_QUEUE_BYTES,
        sqlite_cache_bytes: gatemeter::store::sql::DEFAULT_SQLITE_CACHE_BYTES,
    };
    let log = SqlLog::open(&cfg, Arc::new(Health::new(1)))
        .await
        .expect("log opens");
    let now = gatemeter::clock::now_ms();
    let base = |id: Option<&str>, ts: i64| {
        let mut r = valid(json!({"timestamp": now, "model": "m", "status": 200, "duration_ms": 1}));
        r.request_id = id.map(|i| gatemeter::record::RequestId(i.into()));
        r.timestamp_ms = ts;
        r
    };
    // Every optional field set; non-ASCII, quotes, backslashes, tabs and newlines in text.
    let mut full = base(Some("id-ü-漢字"), i64::MAX);
    full.instance = Some("gw-ö".into());
    full.user = Some("Zoë 🚀".into());
    full.user_id = Some("u-\"quoted\"-\\".into());
    full.key = Some("key\tname".into());
    full.key_id = Some("k-1".into());
    full.provider = "прованс".into();
    full.original_model = Some("m-orig".into());
    full.ttfb_ms = Some(gatemeter::record::Millis::from_micros(u64::MAX));
    full.tokens.input = u64::MAX;
    full.tokens.output = i64::MAX as u64;
    full.tokens.cache_write_5m = 1;
    full.tokens.cache_write_1h = 0;
    full.tokens.cache_read = 7;
    full.cost_micros = u64::MAX;
    full.session_id = Some("s\nline".into());
    full.retry_count = u32::MAX;
    full.provider_chain = vec!["a\"b".into(), "ü".into()];
    full.is_streaming = true;
    full.error = Some("".into());
    full.blocked_by = Some("filter".into());
    full.block_reason = Some("naughty ✗".into());
    full.user_agent = Some("ua/1".into());
    full.client_ip = Some("::1".into());
    full.messages_count = Some(u32::MAX);
    full.trace_id = Some("0af7651916cd43dd8448eb211c80319c".into());
    // Every optional field absent; the oldest possible time.
    let mut bare = base(None, i64::MIN);
    bare.provider_chain = Vec::new();
    let mut repeat = base(Some("id-ü-漢字"), now);
    repeat.model = "other".into();

    // One batch with the id twice (and a record without id, which is always kept).
    log.submit(vec![full.clone(), repeat, bare.clone()])
        .expect("room");
    // Then many repeats spread over batches written at the same time.
    let dup = |i: usize| base(Some(&format!("d{}", i % 25)), now - 1000 - i as i64);
    log.submit((0..50).map(dup).collect()).expect("room");
    log.submit((0..50).rev().map(dup).collect()).expect("room");
    log.flush().await;

    let page = log
        .page(&LogFilter::default(), None, 1000)
        .await
        .expect("page");
    assert_eq!(
        page.items.len(),
        1 + 1 + 25,
        "each id once, the anonymous row kept"
    );
    let mut ids: Vec<_> = page
        .items
        .iter()
        .filter_map(|e| e.request_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 26);

    let first = &page.items[0];
    assert_eq!(first.request_id.as_deref(), Some("id-ü-漢字"));
    assert_eq!(
        first.model, "m",
        "the first of a repeated id in a batch is kept"
    );
    assert_eq!(first.timestamp_ms, i64::MAX);
    assert_eq!(first.instance.as_deref(), Some("gw-ö"));
    assert_eq!(first.user.as_deref(), Some("Zoë 🚀"));
    assert_eq!(first.user_id.as_deref(), Some("u-\"quoted\"-\\"));
    assert_eq!(first.key.as_deref(), Some("key\tname"));
    assert_eq!(first.key_id.as_deref(), Some("k-1"));
    assert_eq!(first.provider, "прованс");
    assert_eq!(first.original_model.as_deref(), Some("m-orig"));
    assert_eq!(
        first.ttfb_ms,
        Some((u64::MAX / 1000) as i64),
        "whole ms of the largest µs"
    );
    assert_eq!(first.input_tokens, i64::MAX);
    assert_eq!(first.output_tokens, i64::MAX);
    assert_eq!(first.cache_write_5m_tokens, 1);
    assert_eq!(first.cache_write_1h_tokens, 0);
    assert_eq!(first.cache_read_tokens, 7);
    assert_eq!(first.cost_micros, i64::MAX);
    assert_eq!(first.session_id.as_deref(), Some("s\nline"));
    assert_eq!(first.retry_count, i64::from(u32::MAX));
    assert_eq!(first.provider_chain, ["a\"b", "ü"]);
    assert!(first.is_streaming);
    assert_eq!(first.error.as_deref(), Some(""), "empty text is not NULL");
    assert_eq!(first.blocked_by.as_deref(), Some("filter"));
    assert_eq!(first.block_reason.as_deref(), Some("naughty ✗"));
    assert_eq!(first.user_agent.as_deref(), Some("ua/1"));
    assert_eq!(first.client_ip.as_deref(), Some("::1"));
    assert_eq!(first.messages_count, Some(i64::from(u32::MAX)));
    assert_eq!(
        first.trace_id.as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c")
    );
    // The user filter matches user_id when there is one.
    let by_user = LogFilter {
        user: Some("u-\"quoted\"-\\".into()),
        ..LogFilter::default()
    };
    let page_u = log.page(&by_user, None, 10).await.expect("page");
    assert_eq!(page_u.items.len(), 1);

    let last = page.items.last().expect("rows");
    assert_eq!(last.request_id, None);
    assert_eq!(last.timestamp_ms, i64::MIN);
    for v in [
        &last.instance,
        &last.user,
        &last.user_id,
        &last.key,
        &last.key_id,
        &last.original_model,
        &last.session_id,
        &last.error,
        &last.blocked_by,
        &last.block_reason,
        &last.user_agent,
        &last.client_ip,
        &last.trace_id,
    ] {
        assert_eq!(*v, None);
    }
    assert_eq!(last.ttfb_ms, None);
    assert_eq!(last.messages_count, None);
    assert!(last.provider_chain.is_empty());
    assert_eq!(last.model, bare.model.as_str());
    log.close().await;
}

/// The retention task deletes rows older than `log_retention_days` (it runs at start, then
/// hourly).
pub async fn retention_task_deletes_old_rows(db: Db) {
    let (log, _dir, url) = open_log_with(db, 100, Arc::new(Health::new(1))).await;
    let now = gatemeter::clock::now_ms();
    let day = 86_400_000;
    let r = |id: &str, ts: i64| {
        valid(
            json!({"request_id": id, "timestamp": ts, "model": "m", "status": 200, "duration_ms": 1}),
        )
    };
    log.submit(vec![r("old", now - 31 * day), r("new", now - 29 * day)])
        .expect("room");
    log.flush().await;
    let backend = match db {
        Db::Sqlite => SqlBackend::Sqlite {
            path: url.trim_start_matches("sqlite://").into(),
        },
        Db::Postgres => SqlBackend::Postgres { url },
    };
    let cfg = SqlConfig {
        backend,
        queue_capacity: 10,
        batch_rows: 10,
        write_concurrency: 2,
        retention_days: 30,
        rollups: true,
        queue_bytes: gatemeter::store::sql::DEFAULT_QUEUE_BYTES,
        sqlite_cache_bytes: gatemeter::store::sql::DEFAULT_SQLITE_CACHE_BYTES,
    };
    let _with_retention = SqlLog::open(&cfg, Arc::new(Health::new(1)))
        .await
        .expect("reopen");
    for _ in 0..100 {
        let page = log
            .page(&LogFilter::default(), None, 10)
            .await
            .expect("page");
        let ids: Vec<_> = page
            .items
            .iter()
            .map(|e| e.request_id.clone().unwrap_or_default())
            .collect();
        if ids == ["new"] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the 31-day-old row was not deleted");
}

/// Records accepted just before a graceful stop are in the log afterwards.
pub async fn shutdown_flushes_the_log(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (yaml, backend) = match db {
        Db::Sqlite => {
            let path = dir.path().join("stop.db");
            (
                format!("log_store:\n  kind: sqlite\n  path: {}\n", path.display()),
                SqlBackend::Sqlite { path },
            )
        }
        Db::Postgres => {
            let url = fresh_postgres().await;
            (
                format!("log_store:\n  kind: postgres\n  url: {url}\n"),
                SqlBackend::Postgres { url },
            )
        }
    };
    let app = TestApp::with_config(&yaml).await;
    let base = base_ms();
    let records: Vec<Value> = (0..3000).map(|i| rec(i, base)).collect();
    ingest(&app, None, &records).await;
    app.stop().await;
    let cfg = SqlConfig {
        backend,
        queue_capacity: 10,
        batch_rows: 10,
        write_concurrency: 2,
        retention_days: 0,
        rollups: true,
        queue_bytes: gatemeter::store::sql::DEFAULT_QUEUE_BYTES,
        sqlite_cache_bytes: gatemeter::store::sql::DEFAULT_SQLITE_CACHE_BYTES,
    };
    let log = SqlLog::open(&cfg, Arc::new(Health::new(1)))
        .await
        .expect("reopen");
    assert!(
        log.more_than(&LogFilter::default(), 2999)
            .await
            .expect("count")
    );
    assert!(
        !log.more_than(&LogFilter::default(), 3000)
            .await
            .expect("count")
    );
}

/// Runs a whole usage export of `filter` into memory.
async fn export_all(log: &SqlLog, filter: &LogFilter) -> (Vec<u8>, u64, ExportEnd) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let encoder = usage_csv::Encoder::new().expect("encoder");
    let export = log.export_usage(filter, 1_000_000, encoder, tx);
    let collect = async {
        let mut body = Vec::new();
        while let Some(chunk) = rx.recv().await {
            body.extend_from_slice(&chunk);
        }
        body
    };
    let (exported, mut body) = tokio::join!(export, collect);
    let exported = exported.expect("export ran");
    body.extend(exported.encoder.finish().expect("tail"));
    (body, exported.rows, exported.end)
}

/// The head of an `INSERT` of one row written as something other than gatemeter would write
/// it; the values follow.
const RAW_INSERT: &str = "INSERT INTO request_log (ts_ms, namespace, user_ref, provider, model, \
    endpoint, api_type, method, status, duration_ms, input_tokens, output_tokens, \
    cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, cost_micros, cost_source, \
    retry_count, provider_chain, is_streaming) VALUES";

/// Writes `n` plain rows for user `u` through the log, one per millisecond from `first_ms`,
/// and waits until they are stored.
async fn write_plain_rows(log: &SqlLog, n: i64, first_ms: i64) {
    let batch = (0..n)
        .map(|i| {
            valid(
                json!({"request_id": format!("r{i}"), "timestamp": first_ms + i,
                         "model": "m", "status": 200, "duration_ms": 1, "user": "u"}),
            )
        })
        .collect();
    log.submit(batch).expect("room");
    log.flush().await;
}

/// The export read paths (raw SQLite statement, PostgreSQL binary COPY): text the ingest API
/// never lets through (control characters, NUL on SQLite — PostgreSQL text cannot hold one),
/// NULL columns, negative money; and an export whose receiver goes away (the client
/// disconnected) stops its query and frees its connection, again and again.
pub async fn export_reads_raw_rows_and_stops_when_the_receiver_goes(db: Db) {
    let (log, _dir, url) = open_log_with(db, 20_000, Arc::new(Health::new(1))).await;
    let now = gatemeter::clock::now_ms();
    let hostile = match db {
        Db::Sqlite => "\t=x\0nul\r\n\"q\", ✓ 日本 \\ back",
        Db::Postgres => "\t=x\r\n\"q\", ✓ 日本 \\ back",
    };
    let insert = format!(
        "{RAW_INSERT} ($1, 'n', $2, '=p', 'm', '/e', 'claude', 'POST', 200, 5, 1, 2, 3, 4, 5, \
         -1234567, 'priced', 0, '[]', false)"
    );
    match db {
        Db::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("connect");
            sqlx::query(&insert)
                .bind(now)
                .bind(hostile)
                .execute(&mut c)
                .await
                .expect("insert");
        }
        Db::Postgres => {
            let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
            sqlx::query(&insert)
                .bind(now)
                .bind(hostile)
                .execute(&mut c)
                .await
                .expect("insert");
        }
    }
    let only = LogFilter {
        user: Some(hostile.to_string()),
        ..LogFilter::default()
    };
    let (body, rows, end) = export_all(&log, &only).await;
    assert_eq!((rows, &end), (1, &ExportEnd::Done));
    let csv = parse_csv(&body);
    assert_eq!(csv.len(), 2, "header and the row");
    let row = &csv[1];
    assert_eq!(usage_csv::restore(&row[1]), hostile);
    assert_eq!(
        row[2..],
        [
            "",
            "'=p",
            "m",
            "",
            "/e",
            "200",
            "1",
            "2",
            "3",
            "4",
            "5",
            "15",
            "-1.234567",
            "5",
            "",
            "0"
        ]
    );

    // 10,000 more rows: about a dozen 64 KiB chunks.
    write_plain_rows(&log, 10_000, now - 100_000).await;
    // More aborted exports than either pool has connections (4 SQLite readers, 8 PostgreSQL).
    let all = LogFilter::default();
    for _ in 0..12 {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let encoder = usage_csv::Encoder::new().expect("encoder");
        let export = log.export_usage(&all, 1_000_000, encoder, tx);
        let hang_up = async move { rx.recv().await.is_some() };
        let (exported, got_one) = tokio::join!(export, hang_up);
        let exported = exported.expect("export ran");
        assert!(got_one);
        assert_eq!(exported.end, ExportEnd::ReceiverGone);
        assert!(exported.rows < 10_001, "{}", exported.rows);
    }
    // Every connection came back (or was replaced): whole exports and queries still run.
    let (body, rows, end) = export_all(&log, &LogFilter::default()).await;
    assert_eq!((rows, end), (10_001, ExportEnd::Done));
    assert_eq!(parse_csv(&body).len(), 1 + 10_001);
    assert!(
        log.more_than(&LogFilter::default(), 10_000)
            .await
            .expect("query")
    );
    if db == Db::Postgres {
        // The server stopped the cut-off COPYs (their connections were closed).
        let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
        let mut running = -1i64;
        for _ in 0..100 {
            running = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND state = 'active' AND query LIKE 'COPY%'",
            )
            .fetch_one(&mut c)
            .await
            .expect("pg_stat_activity");
            if running == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(running, 0, "COPYs still running");
    }
    log.close().await;
}

/// The same records through SQLite and PostgreSQL give identical answers.
#[tokio::test]
async fn sqlite_and_postgres_answer_identically() {
    let base = base_ms();
    let records: Vec<Value> = (0..40).map(|i| rec(i, base)).collect();
    let mut answers = Vec::new();
    for db in [Db::Sqlite, Db::Postgres] {
        let app = app(db, "").await;
        ingest(&app, None, &records).await;
        wait_rows(&app, None, 40).await;
        let mut out = Vec::new();
        for q in [
            "limit=1000",
            "limit=7",
            "provider=openai&exclude_200=true",
            "user=user-2&min_retry_count=1",
            &format!("from={}&to={}&session_id=s3", base + 3000, base + 30_000),
        ] {
            let (s, v) = get_json(&app, None, &format!("/api/v1/logs?{q}")).await;
            assert_eq!(s, 200);
            out.push(v.to_string());
            let filters: Vec<&str> = q.split('&').filter(|p| !p.starts_with("limit=")).collect();
            let csv = get(
                &app,
                None,
                &format!("/api/v1/export/usage.csv?{}", filters.join("&")),
            )
            .await
            .bytes()
            .await
            .expect("csv");
            out.push(String::from_utf8(csv.to_vec()).expect("utf-8"));
        }
        answers.push(out);
        app.stop().await;
    }
    assert_eq!(answers[0].len(), answers[1].len());
    for (a, b) in answers[0].iter().zip(&answers[1]) {
        assert_eq!(a, b, "SQLite and PostgreSQL differ");
    }
}

/// No tokens: a non-loopback listener is refused unless `auth.allow_open`.
#[tokio::test]
async fn open_server_refuses_non_loopback() {
    let config = Config::from_yaml_str(
        "log_store: {kind: none}\n",
        std::path::Path::new("t"),
        &|_| None,
    )
    .expect("valid");
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let err = gatemeter::app::App::build(&config, listener)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("allow_open"), "{err}");
    let config = Config::from_yaml_str(
        "log_store: {kind: none}\nauth: {allow_open: true}\n",
        std::path::Path::new("t"),
        &|_| None,
    )
    .expect("valid");
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    assert!(gatemeter::app::App::build(&config, listener).await.is_ok());
    let config = Config::from_yaml_str(
        &format!("log_store: {{kind: none}}\n{}", auth_yaml()),
        std::path::Path::new("t"),
        &|_| None,
    )
    .expect("valid");
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    assert!(gatemeter::app::App::build(&config, listener).await.is_ok());
}

/// `/metrics` behind a token when one is configured.
#[tokio::test]
async fn metrics_token_guards_metrics() {
    let app = TestApp::with_config(
        "log_store: {kind: none}\nauth:\n  metrics_token: metrics-token-0123456789\n",
    )
    .await;
    assert_eq!(get(&app, None, "/metrics").await.status(), 401);
    assert_eq!(
        get(&app, Some("metrics-token-0123456789"), "/metrics")
            .await
            .status(),
        200
    );
    app.stop().await;
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Db::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Db::Postgres).await
            })*
        }
    };
}
/// The conformance tests' two runs (SQLite and PostgreSQL), shared with `analytics.rs`.
pub(crate) use conformance;

conformance!(
    filters_pages_and_detail,
    usage_csv_is_safe_and_exact,
    usage_csv_row_cap,
    roles_force_the_user,
    store_idempotent_bounded_and_purged,
    flush_writes_waits_for_every_row,
    store_counts_what_it_cannot_write,
    store_keeps_values_and_ids_exactly,
    store_keeps_uuid_ids_exactly,
    retention_task_deletes_old_rows,
    shutdown_flushes_the_log,
    export_reads_raw_rows_and_stops_when_the_receiver_goes,
);

/// SQLite can hold text that is not UTF-8 (written by something other than gatemeter). The
/// export's encoding thread refuses it naming the column, after sending every row before it
/// (newest first: more than one reader batch of 512), and its reading thread stops.
#[tokio::test]
async fn sqlite_export_fails_at_a_value_that_is_not_utf8() {
    let (log, _dir, url) = open_log_with(Db::Sqlite, 20_000, Arc::new(Health::new(1))).await;
    let now = gatemeter::clock::now_ms();
    write_plain_rows(&log, 1500, now - 10_000).await;
    let mut c = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connect");
    sqlx::query(&format!(
        "{RAW_INSERT} ($1, 'n', CAST(x'ff61' AS TEXT), 'p', 'm', '/e', 'claude', 'POST', 200, \
         5, 1, 2, 3, 4, 5, 6, 'priced', 0, '[]', false)"
    ))
    .bind(now - 20_000)
    .execute(&mut c)
    .await
    .expect("insert");
    let (body, rows, end) = export_all(&log, &LogFilter::default()).await;
    assert_eq!(rows, 1500);
    match end {
        ExportEnd::Failed(e) => assert!(e.contains("column 1 is not UTF-8"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(parse_csv(&body).len(), 1 + 1500);
}

/// The B-trees of the key, provider, model and session filters (migration 0003), which
/// migration 0004 replaces with one GIN index where it can.
const FILTER_BTREES: [&str; 4] = [
    "request_log_key",
    "request_log_provider",
    "request_log_model",
    "request_log_session",
];

/// A fresh log's writer and readers on the PostgreSQL database at `url`.
async fn open_postgres_log(url: &str) -> SqlLog {
    let cfg = SqlConfig {
        backend: SqlBackend::Postgres {
            url: url.to_string(),
        },
        queue_capacity: 1000,
        batch_rows: 1000,
        write_concurrency: 2,
        retention_days: 0,
        rollups: true,
        queue_bytes: gatemeter::store::sql::DEFAULT_QUEUE_BYTES,
        sqlite_cache_bytes: gatemeter::store::sql::DEFAULT_SQLITE_CACHE_BYTES,
    };
    SqlLog::open(&cfg, Arc::new(Health::new(1)))
        .await
        .expect("log opens")
}

/// request_log's indexes in the PostgreSQL database at `url`: (name, access method), by name.
async fn pg_indexes(url: &str) -> Vec<(String, String)> {
    let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_as(
        "SELECT i.relname::text, am.amname::text FROM pg_index x \
         JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
         JOIN pg_am am ON am.oid = i.relam WHERE t.relname = 'request_log' ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .expect("indexes")
}

/// Writes 40 rows of `rec` and checks every filter the shared GIN index (or, without
/// btree_gin, its B-trees) serves — alone, with each other and with the user's index — against
/// the rows' own values, with more rows than a page so the order and the cursor count too.
async fn filters_find_exactly_their_rows(log: &SqlLog) {
    let base = base_ms();
    log.submit((0..40).map(|i| valid(rec(i, base))).collect())
        .expect("room");
    log.flush().await;
    let expect = |keep: &dyn Fn(i64) -> bool| -> Vec<String> {
        (0..40)
            .rev()
            .filter(|&i| keep(i))
            .map(|i| format!("r{i}"))
            .collect()
    };
    let cases: Vec<(LogFilter, Vec<String>)> = vec![
        (
            LogFilter {
                key: Some("key-1".into()),
                ..Default::default()
            },
            expect(&|i| i % 2 == 1),
        ),
        (
            LogFilter {
                session_id: Some("s3".into()),
                ..Default::default()
            },
            expect(&|i| i % 5 == 3),
        ),
        (
            LogFilter {
                model: Some("gpt-4o".into()),
                provider: Some("openai".into()),
                ..Default::default()
            },
            expect(&|i| i % 2 == 1),
        ),
        (
            LogFilter {
                provider: Some("anthropic".into()),
                session_id: Some("s4".into()),
                ..Default::default()
            },
            expect(&|i| i % 2 == 0 && i % 5 == 4),
        ),
        (
            LogFilter {
                user: Some("user-2".into()),
                key: Some("key-0".into()),
                ..Default::default()
            },
            expect(&|i| i % 3 == 2 && i % 2 == 0),
        ),
        (
            LogFilter {
                model: Some("gpt-4o".into()),
                session_id: Some("s0".into()),
                ..Default::default()
            },
            expect(&|i| i % 2 == 1 && i % 5 == 0),
        ),
        (
            LogFilter {
                model: Some("gpt-4o".into()),
                provider: Some("anthropic".into()),
                ..Default::default()
            },
            vec![],
        ),
        (
            LogFilter {
                session_id: Some("s3".into()),
                key: Some("key-1".into()),
                ..Default::default()
            },
            expect(&|i| i % 5 == 3 && i % 2 == 1),
        ),
    ];
    for (filter, want) in cases {
        let mut got = Vec::new();
        let mut cursor = None;
        loop {
            let page = log.page(&filter, cursor, 3).await.expect("page");
            got.extend(page.items.iter().map(|e| e.request_id.clone().expect("id")));
            match page.next_cursor {
                Some(c) => {
                    cursor = Some(gatemeter::store::sql::Cursor::decode(&c).expect("cursor"))
                }
                None => break,
            }
        }
        assert_eq!(got, want, "{filter:?}");
    }
}

/// On PostgreSQL the key, provider, model and session filters share one GIN index (migration
/// 0004): the test server has btree_gin. The log is opened with sequential scans off, as a
/// large table would be planned: the 40 rows of the check are then found through the indexes,
/// the GIN index among them (EXPLAIN shows it), not by reading the whole table.
#[tokio::test]
async fn postgres_filters_share_one_gin_index() {
    let url = fresh_postgres().await;
    let no_seqscan = format!("{url}?options=-c%20enable_seqscan%3Doff");
    let log = open_postgres_log(&no_seqscan).await;
    let names = pg_indexes(&url).await;
    assert!(
        names.contains(&("request_log_filters".into(), "gin".into())),
        "{names:?}"
    );
    for gone in FILTER_BTREES {
        assert!(
            !names.iter().any(|(n, _)| n == gone),
            "{gone} still there: {names:?}"
        );
    }
    filters_find_exactly_their_rows(&log).await;
    let mut c = sqlx::PgConnection::connect(&no_seqscan)
        .await
        .expect("connect");
    for filter in [
        "session_id = 's3'",
        "key_name = 'key-1'",
        "model = 'gpt-4o' AND session_id = 's0'",
    ] {
        let plan: Vec<(String,)> = sqlx::query_as(&format!(
            "EXPLAIN SELECT id FROM request_log WHERE {filter} ORDER BY ts_ms DESC, id DESC LIMIT 3"
        ))
        .fetch_all(&mut c)
        .await
        .expect("explain");
        let plan: Vec<String> = plan.into_iter().map(|(l,)| l).collect();
        assert!(
            plan.iter().any(|l| l.contains("request_log_filters")),
            "{filter}: {plan:#?}"
        );
    }
}

/// `bench-log` refuses a log that already has rows: an earlier run's ids (same seed) would be
/// skipped as repeats and still be timed as written.
#[tokio::test]
async fn bench_log_refuses_a_log_that_is_not_empty() {
    let url = fresh_postgres().await;
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_gatemeter"))
            .args(["bench-log", "--rows", "500", "--database-url", &url])
            .output()
            .expect("runs")
    };
    let first = run();
    assert!(first.status.success(), "{first:?}");
    assert!(String::from_utf8_lossy(&first.stdout).contains("write: 500 rows"));
    let second = run();
    assert!(!second.status.success(), "{second:?}");
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("not empty"),
        "{second:?}"
    );
}

/// A role that may not create extensions (no CREATE on its database): migration 0004 keeps the
/// four B-trees instead of failing, and every filter still finds exactly its rows.
#[tokio::test]
async fn postgres_without_btree_gin_keeps_the_btrees() {
    let url = fresh_postgres().await;
    let role = format!("gm_nogin_{}", url.rsplit('/').next().expect("name"));
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    for sql in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT CREATE ON SCHEMA public TO {role}"),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.expect(&sql);
    }
    let (base, db) = url.rsplit_once('/').expect("url");
    let host = base.rsplit_once('@').expect("user@host").1;
    let limited = format!("postgres://{role}@{host}/{db}");
    let log = open_postgres_log(&limited).await;
    let names = pg_indexes(&url).await;
    for kept in FILTER_BTREES {
        assert!(
            names.contains(&(kept.into(), "btree".into())),
            "{kept} missing: {names:?}"
        );
    }
    assert!(
        !names.iter().any(|(n, _)| n == "request_log_filters"),
        "{names:?}"
    );
    filters_find_exactly_their_rows(&log).await;
}

/// New SQLite files use 16 KiB pages: fewer, wider index levels (writes ~15% faster than 4 KiB).
#[tokio::test]
async fn sqlite_log_files_use_16k_pages() {
    let (_log, _dir, url) = open_log_with(Db::Sqlite, 1000, Arc::new(Health::new(1))).await;
    let mut c = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connect");
    let (size,): (i64,) = sqlx::query_as("PRAGMA page_size")
        .fetch_one(&mut c)
        .await
        .expect("page_size");
    assert_eq!(size, 16384);
}

/// Secrets in free text never reach a sink: canaries sent in a native record's `error`,
/// `block_reason`, `user_agent` and endpoint query, and in a Claude Code `api_error` message,
/// are found nowhere — not in `/api/v1/logs`, the usage CSV, the SQLite file and its WAL (the
/// bytes), nor the OTLP export — while the records themselves are stored, redacted.
#[tokio::test]
async fn secrets_in_text_fields_are_found_nowhere() {
    use std::sync::Mutex;

    const CANARIES: [&str; 4] = ["sk-canary-789", "abc.def", "zzz", "AIzaCanary0000"];
    const TEXT: &str =
        "invalid x-api-key sk-canary-789 (Authorization: Bearer abc.def) api_key=zzz";
    // The OTLP export's endpoint: keeps every body it is sent.
    let exported: Arc<Mutex<Vec<u8>>> = Arc::default();
    let sink = axum::Router::new()
        .route(
            "/v1/logs",
            axum::routing::post(
                |axum::extract::State(s): axum::extract::State<Arc<Mutex<Vec<u8>>>>,
                 body: axum::body::Bytes| async move {
                    s.lock().expect("lock").extend_from_slice(&body);
                    [("content-type", "application/x-protobuf")]
                },
            ),
        )
        .with_state(exported.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sink_addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, sink).await;
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("requests.db");
    let app = TestApp::with_config(&format!(
        "log_store:\n  kind: sqlite\n  path: {}\notlp_export:\n  endpoint: http://{sink_addr}/v1/logs\n  interval_ms: 20\n",
        db.display()
    ))
    .await;

    let now = gatemeter::clock::now_ms();
    let native = json!({"request_id": "native", "timestamp": now, "model": "m", "status": 401,
        "duration_ms": 3, "error": TEXT, "block_reason": "password=zzz", "user_agent": "cli Bearer abc.def",
        "endpoint": "/v1beta/models/g:generateContent?key=AIzaCanary0000", "client_ip": "::1"});
    ingest(&app, None, &[native]).await;
    let attr = |k: &str, v: &str| format!(r#"{{"key":"{k}","value":{{"stringValue":"{v}"}}}}"#);
    let api_error = format!(
        r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"timeUnixNano":"{}","attributes":[{}]}}]}}]}}]}}"#,
        now as u128 * 1_000_000,
        [
            attr("event.name", "api_error"),
            attr("session.id", "s1"),
            attr("event.sequence", "1"),
            attr("model", "claude-x"),
            attr("status_code", "401"),
            attr("error", TEXT),
        ]
        .join(",")
    );
    let resp = app
        .client
        .post(app.url("/v1/logs"))
        .header("content-type", "application/json")
        .body(api_error)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "{}", "accepted whole");
    wait_rows(&app, None, 2).await;

    let logs = get(&app, None, "/api/v1/logs")
        .await
        .text()
        .await
        .expect("logs");
    let csv = get(&app, None, "/api/v1/export/usage.csv")
        .await
        .text()
        .await
        .expect("csv");
    let has = |bytes: &[u8], s: &str| bytes.windows(s.len()).any(|w| w == s.as_bytes());
    for _ in 0..200 {
        let sent = exported.lock().expect("lock").clone();
        if has(&sent, "native") && has(&sent, "cc:s1:1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let page: Value = serde_json::from_str(&logs).expect("json");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{logs}");
    for e in items {
        let err = e["error"].as_str().expect("error kept");
        assert!(err.contains("[REDACTED]"), "{err}");
    }
    let exported = exported.lock().expect("lock").clone();
    assert!(
        has(&exported, "native") && has(&exported, "cc:s1:1") && has(&exported, "[REDACTED]"),
        "the export carried both records"
    );
    let files = |when: &str| {
        let mut out = Vec::new();
        for suffix in ["", "-wal"] {
            let path = format!("{}{suffix}", db.display());
            if let Ok(bytes) = std::fs::read(&path) {
                out.push((format!("{path} ({when})"), bytes));
            }
        }
        out
    };
    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("/api/v1/logs".into(), logs.into_bytes()),
        ("usage CSV".into(), csv.into_bytes()),
        ("OTLP export".into(), exported),
    ];
    places.extend(files("running"));
    app.stop().await;
    places.extend(files("stopped"));
    assert!(
        places.iter().any(|(p, _)| p.ends_with("-wal (running)")),
        "a WAL was read"
    );
    for (place, bytes) in &places {
        for c in CANARIES {
            assert!(!has(bytes, c), "{c:?} found in {place}");
        }
    }
}
