//! The request log through a PostgreSQL outage (issue 17, item 3), against a private cluster
//! this test stops and starts: no acknowledged record is lost while the log queue has room,
//! the log store's `gatemeter_store_up` series and `/readyz` follow the database, a start with
//! the database away keeps serving, and closing with the database away is bounded and counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatemeter::health::{DropReason, Health};
use gatemeter::store::RequestLog;
use gatemeter::store::sql::{SqlBackend, SqlConfig, SqlLog};
use serde_json::{Value, json};
use sqlx::Connection;

use super::harness::TestApp;
use super::pg_server::PgProc;
use super::redis_server::free_port;
use super::sql_log::valid;

fn yaml(url: &str) -> String {
    format!("log_store:\n  kind: postgres\n  url: {url}\n")
}

/// POSTs `n` records with ids `{tag}-{from}…`: the answer's status and body.
async fn post(app: &TestApp, tag: &str, from: usize, n: usize) -> (u16, Value) {
    let now = gatemeter::clock::now_ms();
    let records: Vec<Value> = (from..from + n)
        .map(|i| {
            json!({"request_id": format!("{tag}-{i}"), "timestamp": now, "namespace": "n",
                   "model": "m", "status": 200, "duration_ms": 1})
        })
        .collect();
    app.post_json(&serde_json::to_string(&records).expect("json"))
        .await
}

/// The records an answer acknowledged.
fn accepted(body: &Value) -> usize {
    body["accepted"].as_u64().expect("accepted") as usize
}

/// [`post`], which must be acknowledged; returns how many records were.
async fn send(app: &TestApp, tag: &str, from: usize, n: usize) -> usize {
    let (status, body) = post(app, tag, from, n).await;
    assert_eq!(status, 200, "{body}");
    accepted(&body)
}

/// Nothing was dropped on the way to the log (`log_write_failed`, `log_full`).
async fn assert_no_log_drops(app: &TestApp) {
    let m = app.metrics().await;
    for reason in ["log_write_failed", "log_full"] {
        assert_eq!(
            m.value("gatemeter_dropped_records_total", &[("reason", reason)]),
            0.0,
            "{reason}"
        );
    }
}

/// (rows, distinct request ids) in the cluster's log; None while it cannot be read.
async fn rows(url: &str) -> Option<(i64, i64)> {
    let mut c = sqlx::PgConnection::connect(url).await.ok()?;
    sqlx::query_as("SELECT count(*), count(DISTINCT request_id) FROM request_log")
        .fetch_one(&mut c)
        .await
        .ok()
}

async fn wait_rows(url: &str, want: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = rows(url).await;
        if got == Some((want as i64, want as i64)) {
            return;
        }
        assert!(Instant::now() < deadline, "log holds {got:?}, want {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn log_up(app: &TestApp) -> f64 {
    app.metrics()
        .await
        .value("gatemeter_store_up", &[("store", "postgres")])
}

async fn wait_log_up(app: &TestApp, want: f64, within: Duration) {
    let deadline = Instant::now() + within;
    while log_up(app).await != want {
        assert!(Instant::now() < deadline, "store_up never became {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/readyz`: (status, body).
async fn readyz(app: &TestApp) -> (u16, Value) {
    let resp = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("get");
    let status = resp.status().as_u16();
    let body = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
    (status, body)
}

/// PostgreSQL stopped (`-m immediate`) for 12 s — longer than the 5 attempts (≈ 11 s) after
/// which a batch used to be dropped — while records keep coming: every acknowledged record
/// is in the log afterwards, once. Meanwhile the log store reports down and the server stays
/// ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_loses_no_acknowledged_record() {
    let mut pg = PgProc::start();
    let url = pg.url();
    let app = TestApp::with_config(&yaml(&url)).await;
    assert_eq!(log_up(&app).await, 1.0);
    let mut acked = send(&app, "before", 0, 200).await;
    wait_rows(&url, acked, Duration::from_secs(5)).await;

    pg.stop();
    let down = Instant::now();
    let mut i = 0;
    while down.elapsed() < Duration::from_secs(12) {
        acked += send(&app, "during", i, 100).await;
        i += 100;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(log_up(&app).await, 0.0, "the log store reports down");
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["log_store"], "postgres", "{body}");
    assert_eq!(body["log_store_up"], false, "{body}");

    pg.launch();
    acked += send(&app, "after", 0, 200).await;
    wait_rows(&url, acked, Duration::from_secs(8)).await;
    wait_log_up(&app, 1.0, Duration::from_secs(2)).await;
    assert_eq!(readyz(&app).await.1["log_store_up"], true);
    assert_no_log_drops(&app).await;
    app.stop().await;
}

/// With `durability: spool`, an outage longer than the queues: once the log queue (300
/// records) and the ingest queue (300) are full, ingest answers 503 — spooled records wait for
/// the log instead of being dropped as `log_full` while the spool forgets them — and after the
/// database returns every acknowledged record is in the log, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_spool_an_outage_beyond_the_queues_answers_503_and_loses_nothing() {
    let mut pg = PgProc::start();
    let url = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::with_config(&format!(
        "{}  queue_capacity: 300\ndurability: spool\nspool: {{dir: '{}'}}\n\
         ingest: {{max_records_per_request: 100}}\npipeline: {{queue_capacity: 300}}\n",
        yaml(&url),
        dir.path().join("spool").display()
    ))
    .await;
    let mut acked = send(&app, "before", 0, 100).await;
    wait_rows(&url, acked, Duration::from_secs(5)).await;

    pg.stop();
    let (mut i, mut refused) = (0, 0);
    while i < 2_000 {
        let (status, body) = post(&app, "during", i, 100).await;
        match status {
            200 => acked += accepted(&body),
            503 => refused += 1,
            other => panic!("unexpected {other}: {body}"),
        }
        i += 100;
    }
    assert!(
        (600..=800).contains(&(acked - 100)),
        "the queues took {} records before refusing",
        acked - 100
    );
    assert!(refused >= 12, "{refused} batches refused");

    pg.launch();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut j = 0;
    while j < 300 {
        let (status, body) = post(&app, "after", j, 100).await;
        if status == 200 {
            acked += accepted(&body);
            j += 100;
        } else {
            assert!(Instant::now() < deadline, "still refused: {status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    wait_rows(&url, acked, Duration::from_secs(10)).await;
    assert_no_log_drops(&app).await;
    app.stop().await;
}

/// Started while PostgreSQL is away: the server starts and takes records, reports the log
/// store down (ready all the same), connects and migrates when the database comes, and the
/// records arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_the_database_away_serves_and_connects_later() {
    let mut pg = PgProc::unstarted();
    let url = pg.url();
    let app = TestApp::with_config(&yaml(&url)).await;
    assert_eq!(log_up(&app).await, 0.0);
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["log_store_up"], false, "{body}");
    let acked = send(&app, "early", 0, 300).await;
    assert_eq!(acked, 300);

    pg.launch();
    wait_rows(&url, acked, Duration::from_secs(8)).await;
    wait_log_up(&app, 1.0, Duration::from_secs(2)).await;
    assert_eq!(readyz(&app).await.1["log_store_up"], true);
    app.stop().await;
}

fn record(i: usize) -> Box<gatemeter::record::ValidRecord> {
    valid(
        json!({"request_id": format!("c-{i}"), "timestamp": gatemeter::clock::now_ms(),
                 "model": "m", "status": 200, "duration_ms": 1}),
    )
}

/// Closing while the database is away returns within the bound asked for, and counts every
/// record it could not write as `log_write_failed`.
#[tokio::test]
async fn closing_with_the_database_away_is_bounded_and_counted() {
    // Nothing listens on this port.
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    let health = Arc::new(Health::new(1));
    let cfg = SqlConfig {
        backend: SqlBackend::Postgres { url },
        queue_capacity: 1000,
        batch_rows: 100,
        write_concurrency: 2,
        retention_days: 0,
        rollups: true,
        queue_bytes: gatemeter::store::sql::DEFAULT_QUEUE_BYTES,
        sqlite_cache_bytes: gatemeter::store::sql::DEFAULT_SQLITE_CACHE_BYTES,
    };
    let log = SqlLog::open(&cfg, health.clone())
        .await
        .expect("opens with the database away");
    for chunk in 0..5 {
        log.submit((chunk * 100..chunk * 100 + 100).map(record).collect())
            .expect("room");
    }
    let t = Instant::now();
    log.close_within(Duration::from_secs(1)).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let failed = health.snapshot().dropped[DropReason::LogWriteFailed as usize];
    assert_eq!(failed, 500);
    assert_eq!(health.log_store(), Some(("postgres", false)));
}
