//! The admin exports (issue 16): stored requests redacted before storage and exported as JSON,
//! the database backup (pg_dump / SQLite snapshot) under the fleet-wide lock, and the audit
//! trail of every export. SQLite and PostgreSQL where both apply; PostgreSQL and Redis are the
//! throwaway servers of scripts/with-services.sh.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatemeter::store::RequestLog;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::TestApp;
use crate::redis_server::{shared_url, unique_prefix};
use crate::sql_log::{
    ADMIN, ALICE, Db, INGEST, auth_yaml, fresh_postgres, get, get_json, ingest, wait_rows,
};

const CANARY: &str = "cAnArY-5ecret-77d1";

/// A log on `db` that stores requests; SQLite in `dir` (so the test can read its files).
async fn store_yaml(db: Db, dir: &Path) -> (String, Option<String>) {
    match db {
        Db::Sqlite => (
            format!(
                "log_store:\n  kind: sqlite\n  path: {}\n  store_requests: true\n",
                dir.join("requests.db").display()
            ),
            None,
        ),
        Db::Postgres => {
            let url = fresh_postgres().await;
            (
                format!("log_store:\n  kind: postgres\n  url: {url}\n  store_requests: true\n"),
                Some(url),
            )
        }
    }
}

/// The record of a gateway request carrying secrets everywhere a client puts them.
fn secret_record(id: &str, session: &str, ts: i64) -> Value {
    json!({
        "request_id": id, "timestamp": ts, "session_id": session, "user": "alice",
        "provider": "anthropic", "model": "claude-x", "status": 200, "duration_ms": 120,
        "endpoint": format!("/v1beta/models/g:generateContent?key={CANARY}&alt=sse"),
        "error": format!("upstream said x-api-key: {CANARY}"),
        "request": {
            "method": "POST",
            "url": format!("https://api.test/v1/messages?key={CANARY}&api_key={CANARY}&access_token={CANARY}&beta=true"),
            "headers": {
                "authorization": format!("Bearer {CANARY}"),
                "X-Api-Key": CANARY,
                "cookie": format!("session={CANARY}; theme=dark"),
                "Proxy-Authorization": format!("Basic {CANARY}"),
                "x-goog-api-key": CANARY,
                "api-key": CANARY,
                "content-type": "application/json",
                "anthropic-version": "2023-06-01",
            },
            "body": {
                "model": "claude-x",
                "api_key": CANARY,
                "metadata": {"user_id": "u-1", "Api_Key": CANARY, "credentials": {"password": CANARY}},
                "messages": [{"role": "user", "content": format!("my key is sk-ant-{CANARY} ok")}],
            },
            "specialSettings": {"thinking": {"budget_tokens": 1024}},
        },
    })
}

/// Captures everything the server logs on this (current-thread) test runtime.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// `pg_restore` beside the `pg_dump` the server finds.
fn pg_tool(name: &str) -> PathBuf {
    let dump = gatemeter::export::backup::pg_dump_path(&Default::default()).expect("pg_dump");
    dump.with_file_name(name)
}

/// The secrets of a request never reach the database, the exports, the log output or any
/// answer; the session request JSON has its shape and file name; only admins get it.
pub async fn the_canary_is_nowhere(db: Db) {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().expect("tempdir");
    let (store, pg_url) = store_yaml(db, dir.path()).await;
    let app = TestApp::with_config(&format!("{store}{}", auth_yaml())).await;
    let base = gatemeter::clock::now_ms() - 60_000;
    let session = "sess-0123456789";
    let mut records = vec![
        secret_record("req-1", session, base),
        secret_record("req-2", session, base + 1000),
    ];
    // Without a request object: listed, nothing to export.
    records.push(
        json!({"request_id": "req-3", "timestamp": base + 2000, "session_id": session,
        "user": "alice", "provider": "p", "model": "m", "status": 200, "duration_ms": 5}),
    );
    ingest(&app, Some(INGEST), &records).await;
    // A repeated id stores nothing twice.
    ingest(&app, Some(INGEST), &records[..1]).await;
    wait_rows(&app, Some(ADMIN), 3).await;
    // A session's detail is read from the session rollup, which follows the rows at the
    // writer's next merge (on a loaded machine the detail was once asked before it).
    crate::analytics::wait_rollups(&app, 3).await;

    let mut answers: Vec<u8> = Vec::new();
    let (s, detail) = get_json(&app, Some(ADMIN), &format!("/api/v1/sessions/{session}")).await;
    assert_eq!(s, 200, "{detail}");
    assert_eq!(detail["request_list"].as_array().expect("list").len(), 3);
    answers.extend(detail.to_string().bytes());

    let path = format!("/api/v1/sessions/{session}/requests/2/export");
    let resp = get(&app, Some(ADMIN), &path).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-disposition"],
        "attachment; filename=\"session-sess-012-seq-2-request.json\""
    );
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("application/json")
    );
    let body = resp.bytes().await.expect("body");
    answers.extend_from_slice(&body);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["sessionId"], session);
    assert_eq!(v["sequence"], 2);
    assert_eq!(v["meta"]["model"], "claude-x");
    assert_eq!(v["meta"]["provider"], "anthropic");
    assert_eq!(v["meta"]["timestampMs"], base + 1000);
    assert!(v["meta"]["timestamp"].as_str().expect("ts").ends_with('Z'));
    assert_eq!(v["headers"]["content-type"], "application/json");
    assert_eq!(v["headers"]["authorization"], "[REDACTED]");
    assert_eq!(v["headers"]["X-Api-Key"], "[REDACTED]");
    assert_eq!(v["body"]["model"], "claude-x");
    assert_eq!(v["body"]["api_key"], "[REDACTED]");
    assert_eq!(v["body"]["metadata"]["user_id"], "u-1");
    assert_eq!(v["specialSettings"]["thinking"]["budget_tokens"], 1024);
    assert!(
        v["request"]["url"]
            .as_str()
            .expect("url")
            .contains("beta=true")
    );

    // The third request has no stored object: a clear 404; beyond the session: 404; users: 403.
    let (s, e) = get_json(
        &app,
        Some(ADMIN),
        &format!("/api/v1/sessions/{session}/requests/3/export"),
    )
    .await;
    assert_eq!(s, 404);
    assert!(
        e["message"]
            .as_str()
            .expect("message")
            .contains("no request object was stored"),
        "{e}"
    );
    let (s, _) = get_json(
        &app,
        Some(ADMIN),
        &format!("/api/v1/sessions/{session}/requests/4/export"),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(get(&app, Some(ALICE), &path).await.status(), 403);
    let (s, e) = get_json(
        &app,
        Some(ADMIN),
        &format!("/api/v1/sessions/{session}/requests/0/export"),
    )
    .await;
    assert_eq!(s, 400, "{e}");

    for q in [
        "/api/v1/logs".to_string(),
        "/api/v1/export/usage.csv".to_string(),
        format!("/api/v1/sessions/{session}/requests/1/export"),
        "/api/v1/sessions".to_string(),
        "/metrics".to_string(),
    ] {
        let resp = get(&app, Some(ADMIN), &q).await;
        assert_eq!(resp.status(), 200, "{q}");
        answers.extend_from_slice(&resp.bytes().await.expect("body"));
    }
    let (_, page) = get_json(&app, Some(ADMIN), "/api/v1/logs").await;
    for item in page["items"].as_array().expect("items") {
        let (s, one) = get_json(&app, Some(ADMIN), &format!("/api/v1/logs/{}", item["id"])).await;
        assert_eq!(s, 200);
        answers.extend(one.to_string().bytes());
    }

    // The usage CSV's audit entry has its size.
    let csv = get(&app, Some(ADMIN), "/api/v1/export/usage.csv")
        .await
        .bytes()
        .await
        .expect("csv");
    let (_, audit) = get_json(&app, Some(ADMIN), "/api/v1/audit?limit=1").await;
    assert_eq!(audit["items"][0]["action"], "usage_csv");
    assert_eq!(audit["items"][0]["rows"], 3);
    assert_eq!(audit["items"][0]["bytes"], csv.len(), "{audit}");

    // The backup holds no canary either (PostgreSQL: restored to SQL text).
    let resp = get(&app, Some(ADMIN), "/api/v1/export/backup").await;
    assert_eq!(resp.status(), 200);
    let dump = resp.bytes().await.expect("backup");
    match db {
        Db::Sqlite => {
            assert!(dump.starts_with(b"SQLite format 3\0"));
            assert!(!contains(&dump, CANARY), "the snapshot holds the canary");
            assert!(
                contains(&dump, "[REDACTED]"),
                "the snapshot holds the stored request"
            );
        }
        Db::Postgres => {
            let file = dir.path().join("b.dump");
            std::fs::write(&file, &dump).expect("write");
            let out = std::process::Command::new(pg_tool("pg_restore"))
                .arg("--file=-")
                .arg(&file)
                .output()
                .expect("pg_restore");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                contains(&out.stdout, "[REDACTED]"),
                "the dump holds the stored request"
            );
            assert!(!contains(&out.stdout, CANARY), "the dump holds the canary");
        }
    }
    let (_, audit) = get_json(&app, Some(ADMIN), "/api/v1/audit").await;
    answers.extend(audit.to_string().bytes());
    let actions: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap_or(""),
                a["outcome"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(actions[0], ("backup", "ok"), "{audit}");
    assert!(audit["items"][0]["bytes"].as_i64().expect("bytes") as usize == dump.len());
    assert!(actions.contains(&("session_request_json", "ok")), "{audit}");
    assert!(
        actions.contains(&("session_request_json", "failed")),
        "{audit}"
    );
    assert!(actions.contains(&("usage_csv", "ok")), "{audit}");
    assert!(
        !contains(&answers, CANARY),
        "an API answer holds the canary"
    );
    assert!(contains(&answers, "[REDACTED]"));

    app.stop().await;
    // Stored bytes: the SQLite file and its WAL; PostgreSQL: every text of the database.
    match db {
        Db::Sqlite => {
            let mut stored = Vec::new();
            for f in ["requests.db", "requests.db-wal"] {
                if let Ok(b) = std::fs::read(dir.path().join(f)) {
                    stored.extend(b);
                }
            }
            assert!(contains(&stored, "[REDACTED]"));
            assert!(
                !contains(&stored, CANARY),
                "the database file holds the canary"
            );
            let mut c = sqlx::SqliteConnection::connect(&format!(
                "sqlite://{}?mode=ro",
                dir.path().join("requests.db").display()
            ))
            .await
            .expect("open");
            let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM request_bodies")
                .fetch_one(&mut c)
                .await
                .expect("count");
            assert_eq!(stored, 2, "one per request id");
        }
        Db::Postgres => {
            let mut c = sqlx::PgConnection::connect(pg_url.as_deref().expect("url"))
                .await
                .expect("connect");
            let n: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM request_bodies WHERE request LIKE '%' || $1 || '%') \
                 + (SELECT count(*) FROM request_log l WHERE l::text LIKE '%' || $1 || '%') \
                 + (SELECT count(*) FROM export_audit a WHERE a::text LIKE '%' || $1 || '%')",
            )
            .bind(CANARY)
            .fetch_one(&mut c)
            .await
            .expect("count");
            assert_eq!(n, 0);
            let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM request_bodies")
                .fetch_one(&mut c)
                .await
                .expect("count");
            assert_eq!(stored, 2, "one per request id");
        }
    }
    let logged = logs.0.lock().expect("lock").clone();
    // PostgreSQL's driver logs every statement at this level: the capture works.
    assert!(
        db == Db::Sqlite || !logged.is_empty(),
        "the server's log output was captured"
    );
    assert!(
        !contains(&logged, CANARY),
        "the server log holds the canary"
    );
}

crate::sql_log::conformance!(
    the_canary_is_nowhere,
    stored_requests_follow_their_rows,
    sqlite_snapshot_while_writes_continue_or_dump_restores
);

/// SQLite: the snapshot taken while records keep arriving opens and passes
/// `PRAGMA integrity_check`. PostgreSQL: the dump restores into a fresh database with equal row
/// counts; without the log, its tables are restored empty.
pub async fn sqlite_snapshot_while_writes_continue_or_dump_restores(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, pg_url) = store_yaml(db, dir.path()).await;
    let app = Arc::new(TestApp::with_config(&format!("{store}{}", auth_yaml())).await);
    let base = gatemeter::clock::now_ms() - 3_600_000;
    let batch = move |from: i64, n: i64| -> Vec<Value> {
        (from..from + n)
            .map(|i| secret_record(&format!("r-{i}"), &format!("s-{}", i % 7), base + i))
            .collect()
    };
    ingest(&app, Some(INGEST), &batch(0, 2000)).await;
    wait_rows(&app, Some(ADMIN), 2000).await;
    // Writers keep going while the backup is taken.
    let writer = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut i = 2000;
            loop {
                ingest(&app, Some(INGEST), &batch(i, 200)).await;
                i += 200;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    for include_log in [true, false] {
        let resp = get(
            &app,
            Some(ADMIN),
            &format!("/api/v1/export/backup?include_log={include_log}"),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let name = resp.headers()["content-disposition"]
            .to_str()
            .expect("name")
            .to_string();
        let file = dir.path().join(format!("backup-{include_log}"));
        std::fs::write(&file, resp.bytes().await.expect("body")).expect("write");
        match db {
            Db::Sqlite => {
                assert!(
                    name.starts_with("attachment; filename=\"backup_") && name.ends_with(".db\""),
                    "{name}"
                );
                let mut c = sqlx::SqliteConnection::connect(&format!(
                    "sqlite://{}?mode=ro",
                    file.display()
                ))
                .await
                .expect("the snapshot opens");
                let check: String = sqlx::query_scalar("PRAGMA integrity_check")
                    .fetch_one(&mut c)
                    .await
                    .expect("check");
                assert_eq!(check, "ok");
                let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM request_log")
                    .fetch_one(&mut c)
                    .await
                    .expect("count");
                let bodies: i64 = sqlx::query_scalar("SELECT count(*) FROM request_bodies")
                    .fetch_one(&mut c)
                    .await
                    .expect("count");
                if include_log {
                    assert!(rows >= 2000, "{rows}");
                    // Consistent: every stored request has its row in the same snapshot.
                    assert_eq!(bodies, rows);
                } else {
                    assert_eq!((rows, bodies), (0, 0));
                    // The request ids went with their rows, and the trigger that keeps them in
                    // step is back.
                    let (ids, triggers): (i64, i64) = sqlx::query_as(
                        "SELECT (SELECT count(*) FROM request_ids), (SELECT count(*) FROM \
                         sqlite_master WHERE type = 'trigger' AND tbl_name = 'request_log')",
                    )
                    .fetch_one(&mut c)
                    .await
                    .expect("count");
                    assert_eq!((ids, triggers), (0, 1));
                    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM export_audit")
                        .fetch_one(&mut c)
                        .await
                        .expect("count");
                    assert!(audit >= 1, "the rest of the database is kept");
                }
            }
            Db::Postgres => {
                let re = regex_like_name(&name);
                assert!(re, "{name}");
                let restored = fresh_postgres().await;
                let out = std::process::Command::new(pg_tool("pg_restore"))
                    .arg("--no-owner")
                    .arg(format!("--dbname={restored}"))
                    .arg(&file)
                    .output()
                    .expect("pg_restore");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let counts = |url: String| async move {
                    let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
                    let mut out = Vec::new();
                    for t in ["request_log", "request_bodies", "rollup", "session_rollup"] {
                        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {t}"))
                            .fetch_one(&mut c)
                            .await
                            .expect("count");
                        out.push(n);
                    }
                    out
                };
                let got = counts(restored).await;
                if include_log {
                    // Rows kept arriving: the dump is one snapshot, so its tables agree.
                    assert!(got[0] >= 2000, "{got:?}");
                    assert_eq!(got[0], got[1], "{got:?}");
                    let mut c = sqlx::PgConnection::connect(pg_url.as_deref().expect("url"))
                        .await
                        .expect("connect");
                    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM request_log")
                        .fetch_one(&mut c)
                        .await
                        .expect("count");
                    assert!(live >= got[0]);
                } else {
                    assert_eq!(got, [0, 0, 0, 0]);
                }
            }
        }
    }
    writer.abort();
    let _ = writer.await;
    // The SQLite snapshots' temporary files are gone.
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".backup-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // With the writer stopped, a dump restores to exactly the counts of the source.
    if let (Db::Postgres, Some(url)) = (db, &pg_url) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let resp = get(&app, Some(ADMIN), "/api/v1/export/backup").await;
        assert_eq!(resp.status(), 200);
        let file = dir.path().join("still.dump");
        std::fs::write(&file, resp.bytes().await.expect("body")).expect("write");
        let restored = fresh_postgres().await;
        let out = std::process::Command::new(pg_tool("pg_restore"))
            .arg("--no-owner")
            .arg(format!("--dbname={restored}"))
            .arg(&file)
            .output()
            .expect("pg_restore");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for t in ["request_log", "request_bodies", "rollup", "session_rollup"] {
            let q = format!("SELECT count(*) FROM {t}");
            let mut a = sqlx::PgConnection::connect(url).await.expect("connect");
            let mut b = sqlx::PgConnection::connect(&restored)
                .await
                .expect("connect");
            let x: i64 = sqlx::query_scalar(&q)
                .fetch_one(&mut a)
                .await
                .expect("count");
            let y: i64 = sqlx::query_scalar(&q)
                .fetch_one(&mut b)
                .await
                .expect("count");
            assert_eq!(x, y, "{t}");
            assert!(x > 0, "{t}");
        }
    }
    match Arc::try_unwrap(app) {
        Ok(app) => app.stop().await,
        Err(_) => panic!("the writer still holds the app"),
    }
}

fn regex_like_name(header: &str) -> bool {
    // attachment; filename="backup_YYYY-MM-DDTHH-mm-ss.dump"
    let Some(name) = header
        .strip_prefix("attachment; filename=\"")
        .and_then(|n| n.strip_suffix('"'))
    else {
        return false;
    };
    let b = name.as_bytes();
    name.len() == "backup_2026-12-05T04-34-56.dump".len()
        && name.starts_with("backup_")
        && name.ends_with(".dump")
        && b[11] == b'-'
        && b[14] == b'-'
        && b[17] == b'T'
        && b[20] == b'-'
        && b[23] == b'-'
        && name[7..11].bytes().all(|c| c.is_ascii_digit())
}

/// Sends a GET over a raw socket and reads until the end of the answer's head; the socket is
/// returned so that the caller can close it mid-body.
async fn raw_get(app: &TestApp, path: &str) -> (tokio::net::TcpStream, String) {
    let mut s = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.expect("read");
        assert!(
            n > 0,
            "closed before the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// Processes whose command line holds `needle` (here: a database name given to pg_dump).
fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("pg_dump") && cmd.contains(needle) {
                out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

fn redis_get(url: &str, key: &str) -> Option<String> {
    let mut c = redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .expect("connect");
    redis::cmd("GET")
        .arg(key)
        .query::<Option<String>>(&mut c)
        .expect("GET")
}

/// Two replicas over one Redis and one PostgreSQL: while one dumps, the other answers 409 saying
/// since when the lock is held; the client that goes away mid-dump leaves no pg_dump behind, the
/// lock is free within a second, and the audit says `aborted`; then a backup runs again.
#[tokio::test]
async fn one_backup_at_a_time_across_the_fleet_and_a_client_that_leaves_kills_it() {
    let redis = shared_url();
    let prefix = unique_prefix("backup");
    let pg = fresh_postgres().await;
    let db_name = pg.rsplit('/').next().expect("name").to_string();
    let yaml = |instance: &str| {
        format!(
            "live_store: redis\nredis:\n  url: {redis}\n  key_prefix: \"{prefix}\"\n  instance_id: {instance}\n\
             log_store:\n  kind: postgres\n  url: {pg}\n{}",
            auth_yaml()
        )
    };
    let a = TestApp::with_config(&yaml("a")).await;
    let b = TestApp::with_config(&yaml("b")).await;
    let base = gatemeter::clock::now_ms() - 60_000;
    let recs: Vec<Value> = (0..50)
        .map(|i| secret_record(&format!("f-{i}"), "s", base + i))
        .collect();
    ingest(&a, Some(INGEST), &recs).await;
    wait_rows(&a, Some(ADMIN), 50).await;

    // pg_dump waits for this lock: the first backup stays in progress.
    let mut blocker = sqlx::PgConnection::connect(&pg).await.expect("connect");
    let mut tx = blocker.begin().await.expect("begin");
    sqlx::query("LOCK TABLE request_log IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .expect("lock");
    let (sock, head) = raw_get(&a, "/api/v1/export/backup").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let key = format!("{prefix}database:backup:lock");
    let held = redis_get(&redis, &key).expect("the lock is in Redis");
    assert!(!processes_with(&db_name).is_empty(), "pg_dump runs");

    let (s, busy) = get_json(&b, Some(ADMIN), "/api/v1/export/backup").await;
    assert_eq!(s, 409, "{busy}");
    assert_eq!(busy["error"], "backup_in_progress");
    let since_ms: i64 = held.rsplit(':').next().expect("since").parse().expect("ms");
    let since = gatemeter::export::usage_csv::format_time(since_ms);
    assert!(
        busy["message"].as_str().expect("msg").contains(&since),
        "{busy} {since}"
    );

    // The client goes away mid-dump.
    drop(sock);
    let left = std::time::Instant::now();
    loop {
        let procs = processes_with(&db_name);
        let lock = redis_get(&redis, &key);
        if procs.is_empty() && lock.is_none() {
            break;
        }
        assert!(
            left.elapsed() < Duration::from_secs(1),
            "after a second: processes {procs:?}, lock {lock:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.rollback().await.expect("unlock");
    let mut outcomes = Vec::new();
    for _ in 0..100 {
        let (_, audit) = get_json(&a, Some(ADMIN), "/api/v1/audit").await;
        outcomes = audit["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|e| e["outcome"].as_str().unwrap_or("").to_string())
            .collect();
        if outcomes.contains(&"aborted".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(outcomes.contains(&"aborted".to_string()), "{outcomes:?}");
    assert!(outcomes.contains(&"conflict".to_string()), "{outcomes:?}");

    // Free again: the other replica backs up.
    let resp = get(&b, Some(ADMIN), "/api/v1/export/backup").await;
    assert_eq!(resp.status(), 200);
    let dump = resp.bytes().await.expect("dump");
    assert!(dump.starts_with(b"PGDMP"), "a custom-format dump");
    assert_eq!(redis_get(&redis, &key), None);
    a.stop().await;
    b.stop().await;
}

/// A pg_dump that is missing, fails at once, or fails after streaming began: a clear JSON error,
/// or a response cut short — never a truncated file served as a whole one; all audited `failed`.
#[tokio::test]
async fn a_missing_or_failing_pg_dump_is_a_clear_error() {
    let pg = fresh_postgres().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app_with = |tool: String| {
        let pg = pg.clone();
        async move {
            TestApp::with_config(&format!(
                "log_store:\n  kind: postgres\n  url: {pg}\nbackup:\n  pg_dump_path: {tool}\n{}",
                auth_yaml()
            ))
            .await
        }
    };
    let app = app_with("/nonexistent/bin/pg_dump".into()).await;
    let (s, e) = get_json(&app, Some(ADMIN), "/api/v1/export/backup").await;
    assert_eq!(s, 503, "{e}");
    assert!(
        e["message"]
            .as_str()
            .expect("msg")
            .contains("/nonexistent/bin/pg_dump"),
        "{e}"
    );
    app.stop().await;

    let script = |name: &str, body: &str| {
        let p = dir.path().join(name);
        let mut f = std::fs::File::create(&p).expect("create");
        writeln!(f, "#!/bin/sh\n{body}").expect("write");
        drop(f);
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&p)
            .status()
            .expect("chmod");
        p.display().to_string()
    };
    let app = app_with(script(
        "fails.sh",
        "echo 'pg_dump: error: connection failed: password=hunter2 refused' >&2; exit 1",
    ))
    .await;
    let (s, e) = get_json(&app, Some(ADMIN), "/api/v1/export/backup").await;
    assert_eq!(s, 500, "{e}");
    assert_eq!(e["error"], "backup_failed");
    let msg = e["message"].as_str().expect("msg");
    assert!(msg.contains("connection failed"), "{e}");
    assert!(!msg.contains("hunter2"), "{e}");
    app.stop().await;

    let app = app_with(script(
        "cut.sh",
        "head -c 300000 /dev/zero; echo 'pg_dump: error: lost the server' >&2; exit 2",
    ))
    .await;
    let resp = get(&app, Some(ADMIN), "/api/v1/export/backup").await;
    assert_eq!(resp.status(), 200);
    let read = resp.bytes().await;
    assert!(
        read.is_err(),
        "a failed dump must not end cleanly: {:?}",
        read.map(|b| b.len())
    );
    let (_, audit) = get_json(&app, Some(ADMIN), "/api/v1/audit").await;
    let last = &audit["items"][0];
    assert_eq!(last["outcome"], "failed", "{audit}");
    assert!(
        last["detail"]
            .as_str()
            .expect("detail")
            .contains("lost the server"),
        "{audit}"
    );
    assert_eq!(last["bytes"], 300_000, "{audit}");
    app.stop().await;
}

fn with_request(json: Value) -> Box<gatemeter::record::ValidRecord> {
    let prices = gatemeter::price::PriceTable::default();
    let v = gatemeter::record::Validation {
        now_ms: gatemeter::clock::now_ms(),
        prices: &prices,
        keep_requests: Some(2048),
    };
    match gatemeter::record::parse_event(&json.to_string(), &v).expect("valid") {
        gatemeter::record::Event::Finish(r) => r,
        gatemeter::record::Event::Start(_) => panic!("not a start marker"),
    }
}

/// Stored requests follow their rows: found by the row's place in its session (a UUID id,
/// stored as bytes by SQLite, joins like a text one), the first one kept when an id repeats,
/// cut and flagged past the size cap, and purged with the rows.
pub async fn stored_requests_follow_their_rows(db: Db) {
    let health = Arc::new(gatemeter::health::Health::new(1));
    let (log, _dir, url) = crate::sql_log::open_log_with(db, 1000, health).await;
    let bodies = || async {
        let q = "SELECT count(*) FROM request_bodies";
        match db {
            Db::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&url).await.expect("open");
                sqlx::query_scalar::<_, i64>(q)
                    .fetch_one(&mut c)
                    .await
                    .expect("count")
            }
            Db::Postgres => {
                let mut c = sqlx::PgConnection::connect(&url).await.expect("open");
                sqlx::query_scalar::<_, i64>(q)
                    .fetch_one(&mut c)
                    .await
                    .expect("count")
            }
        }
    };
    let now = gatemeter::clock::now_ms();
    let rec = |id: &str, ts: i64, text: &str| {
        with_request(
            json!({"request_id": id, "timestamp": ts, "session_id": "s", "model": "m",
            "provider": "p", "status": 200, "duration_ms": 1,
            "request": {"headers": {"x-api-key": "k-1"}, "body": {"text": text}}}),
        )
    };
    let uuid = "0af76519-16cd-43dd-8448-eb211c80319c";
    let big = "x".repeat(5000);
    log.submit(vec![
        rec(uuid, now - 5000, "first"),
        rec("plain-id", now - 1000, &big),
    ])
    .expect("room");
    log.flush().await;
    // A repeat of the first id with another body changes nothing.
    log.submit(vec![rec(uuid, now - 5000, "second")])
        .expect("room");
    log.flush().await;
    let one = log
        .session_request("s", 1)
        .await
        .expect("read")
        .expect("seq 1");
    let v: Value = serde_json::from_str(one.request.as_deref().expect("stored")).expect("json");
    assert_eq!(v["body"]["text"], "first");
    assert_eq!(v["headers"]["x-api-key"], "[REDACTED]");
    assert!(!one.truncated);
    let two = log
        .session_request("s", 2)
        .await
        .expect("read")
        .expect("seq 2");
    assert!(two.truncated);
    assert!(two.original_bytes > 5000);
    assert!(two.request.as_deref().expect("stored").len() <= 2048);
    assert_eq!(log.session_request("s", 3).await.expect("read"), None);
    assert_eq!(bodies().await, 2);
    // Retention takes the stored request with its row.
    log.purge_before(now - 3000).await.expect("purge");
    let left = log
        .session_request("s", 1)
        .await
        .expect("read")
        .expect("one row left");
    assert_eq!(left.ts_ms, now - 1000);
    assert!(left.request.is_some());
    assert_eq!(bodies().await, 1);
    log.purge_before(now).await.expect("purge");
    assert_eq!(bodies().await, 0);
    assert_eq!(log.session_request("s", 1).await.expect("read"), None);
    log.close().await;
}

/// The Redis lock: `SET NX PX` with a TTL, renewed while held (here a 600 ms TTL outlives
/// 2 s), busy for others with the holder's start time, released at once on drop, and never
/// deleted by a holder whose lock was taken over meanwhile (compare-and-delete).
#[tokio::test]
async fn the_redis_backup_lock_is_renewed_and_compare_and_deleted() {
    use gatemeter::store::lock::{Acquired, FleetLock};
    let url = shared_url();
    let prefix = unique_prefix("lock");
    let config = gatemeter::config::Config::from_yaml_str(
        &format!("live_store: redis\nredis:\n  url: {url}\n  key_prefix: \"{prefix}\"\n"),
        Path::new("t.yaml"),
        &|_| None,
    )
    .expect("config");
    let lock = FleetLock::redis(&config.redis, "database:backup:lock")
        .expect("lock")
        .with_ttl(Duration::from_millis(600));
    let other = FleetLock::redis(&config.redis, "database:backup:lock").expect("lock");
    let key = format!("{prefix}database:backup:lock");
    assert_eq!(lock.key(), Some(key.as_str()));
    let Ok(Acquired::Held(guard)) = lock.try_acquire(1_234).await else {
        panic!("free at first")
    };
    let value = redis_get(&url, &key).expect("set");
    assert!(value.ends_with(":1234") && value.len() > 32, "{value}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        redis_get(&url, &key),
        Some(value.clone()),
        "renewed, still ours"
    );
    assert!(matches!(
        other.try_acquire(9_999).await,
        Ok(Acquired::Busy { since_ms: 1_234 })
    ));
    drop(guard);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(redis_get(&url, &key), None, "released at once");

    // Taken over after an expiry: the old holder's release leaves the new lock alone.
    let Ok(Acquired::Held(old)) = lock.try_acquire(1).await else {
        panic!("free again")
    };
    let mut c = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .expect("connect");
    redis::cmd("SET")
        .arg(&key)
        .arg("someone-else:5")
        .query::<()>(&mut c)
        .expect("SET");
    drop(old);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(redis_get(&url, &key).as_deref(), Some("someone-else:5"));
    redis::cmd("DEL")
        .arg(&key)
        .query::<()>(&mut c)
        .expect("DEL");
}
