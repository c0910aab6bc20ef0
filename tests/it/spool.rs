//! Durable acknowledgement (`durability: spool`): SIGKILL under load loses and doubles
//! nothing acknowledged; a torn tail is ignored; a full spool answers 503 and counts it; the
//! default (no spool) is unchanged.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gatemeter::client::Client;
use gatemeter::price::PriceTable;
use gatemeter::record::{Event, Validation, parse_event};
use gatemeter::spool::codec;
use sqlx::Connection;

use crate::harness::{Exposition, ServerProcess, TestApp};

fn batch(sender: usize, n: usize, size: usize) -> String {
    let mut body = String::from("[");
    for r in 0..size {
        if r > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"request_id":"k{sender}-{n}-{r}","model":"m","provider":"p","status":200,"duration_ms":{r},"input_tokens":3}}"#
        ));
    }
    body.push(']');
    body
}

async fn scrape(client: &Client, addr: &str) -> Exposition {
    let resp = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape");
    Exposition::parse(&resp.text().await.expect("body"))
}

async fn logged_ids(db: &Path) -> Vec<String> {
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("connect");
    // Canonical UUIDs are stored as their 16 bytes: read as 32 hex digits.
    sqlx::query_as::<_, (String,)>(
        "SELECT CASE typeof(request_id) WHEN 'blob' THEN lower(hex(request_id)) \
         ELSE request_id END FROM request_log",
    )
    .fetch_all(&mut c)
    .await
    .expect("ids")
    .into_iter()
    .map(|(id,)| id)
    .collect()
}

/// Bytes in the spool's segment files.
fn spool_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("spool dir")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_name().to_string_lossy().ends_with(".spool"))
        .map(|e| e.metadata().expect("meta").len())
        .sum()
}

fn serve(config: &Path) -> ServerProcess {
    ServerProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_gatemeter"))
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("GATEMETER_DATABASE_URL")
            .env_remove("GATEMETER_REDIS_URL")
            .env_remove("GATEMETER_DURABILITY")
            .env_remove("GATEMETER_LISTEN"),
    )
}

/// SIGTERM and wait for exit 0.
fn terminate(server: &mut ServerProcess) {
    let ok = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(exit) = server.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "exits after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exits 0: {exit:?}");
}

/// What one SIGKILL run left: the acknowledged and the sent ids.
struct Killed {
    acked: HashSet<String>,
    sent: HashSet<String>,
}

/// Issue 17's load: 4 senders of 1,000-record batches against `server`, SIGKILL at 1.5 s.
async fn load_and_kill(mut server: ServerProcess) -> Killed {
    let addr = server.addr.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for s in 0..4 {
        let (addr, stop) = (addr.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let client = Client::new();
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let sent = client
                    .post(format!("http://{addr}/v1/events"))
                    .header("content-type", "application/json")
                    .body(batch(s, n, 1000))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => acked.push(n),
                    // Backpressure (a full queue or spool): not acknowledged, sent again as new.
                    Ok(r) if r.status() == 503 => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Ok(r) => panic!("unexpected answer {}", r.status()),
                    Err(_) => break, // the server is gone
                }
                n += 1;
            }
            (s, acked, n)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reap");
    stop.store(true, Ordering::Relaxed);
    let mut killed = Killed {
        acked: HashSet::new(),
        sent: HashSet::new(),
    };
    for t in senders {
        let (s, batches, n) = t.await.expect("sender");
        for b in 0..=n {
            for r in 0..1000 {
                let id = format!("k{s}-{b}-{r}");
                if batches.contains(&b) {
                    killed.acked.insert(id.clone());
                }
                killed.sent.insert(id);
            }
        }
    }
    assert!(
        killed.acked.len() >= 4_000,
        "load ran: {} acknowledged",
        killed.acked.len()
    );
    killed
}

/// The log after the run: every acknowledged record once, nothing but what was sent.
async fn check_log(db: &Path, killed: &Killed) -> usize {
    let ids = logged_ids(db).await;
    let logged: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(logged.len(), ids.len(), "no record logged twice");
    let missing = killed.acked.difference(&logged).count();
    assert_eq!(
        missing,
        0,
        "of {} acknowledged records, {missing} are missing from the log",
        killed.acked.len()
    );
    assert!(logged.is_subset(&killed.sent), "nothing but what was sent");
    logged.len()
}

fn write_config(
    dir: &Path,
    extra: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    write_config_with_log(dir, "", extra)
}

/// [`write_config`], with more `log_store` keys (`log`, e.g. `"queue_capacity: 10"`).
fn write_config_with_log(
    dir: &Path,
    log: &str,
    extra: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let db = dir.join("requests.db");
    let spool = dir.join("spool");
    let config = dir.join("gatemeter.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\ndurability: spool\nspool: {{dir: '{}'}}\n\
             log_store: {{kind: sqlite, path: '{}', {log}}}\n{extra}",
            spool.display(),
            db.display()
        ),
    )
    .expect("write config");
    (config, db, spool)
}

/// Issue 17's scenario with the spool on: 4 senders of 1,000-record batches, SIGKILL at 1.5 s,
/// restart on the same files. Every acknowledged record is in the log once; the restarted
/// process counts exactly what it replayed; a graceful stop leaves an empty spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_and_doubles_no_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, db, spool) = write_config(dir.path(), "");
    let killed = load_and_kill(serve(&config)).await;

    let mut server = serve(&config);
    let client = Client::new();
    let m = scrape(&client, &server.addr).await;
    let replayed = m.value("gatemeter_spool_replayed_records_total", &[]);
    eprintln!("acknowledged {}, replayed {replayed}", killed.acked.len());
    assert_eq!(
        m.value("ai_gateway_requests_total", &[]),
        replayed,
        "the restarted process counts each replayed record once"
    );
    terminate(&mut server);
    check_log(&db, &killed).await;
    assert_eq!(
        spool_bytes(&spool),
        0,
        "a graceful stop confirms and deletes every segment"
    );
}

/// A request log that falls behind: its queue holds 2,000 records, far fewer than the load
/// brings. Spooled records wait for room in it (ingest slows down, answering 503 when the
/// ingest queue fills) instead of being dropped as `log_full` while the spool forgets them:
/// after SIGKILL and a restart every acknowledged record is in the log, and none was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_falls_behind_slows_ingest_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, db, spool) = write_config_with_log(dir.path(), "queue_capacity: 2000", "");
    let killed = load_and_kill(serve(&config)).await;
    let mut server = serve(&config);
    let client = Client::new();
    let m = scrape(&client, &server.addr).await;
    let dropped = m.value("gatemeter_dropped_records_total", &[("reason", "log_full")]);
    terminate(&mut server);
    let logged = check_log(&db, &killed).await;
    eprintln!("acknowledged {}, logged {logged}", killed.acked.len());
    assert_eq!(
        dropped, 0.0,
        "nothing dropped as log_full during the replay"
    );
    assert_eq!(
        spool_bytes(&spool),
        0,
        "every segment confirmed at the stop"
    );
}

/// The same with the Redis live store, whose totals outlive the process: after the restart
/// the fleet has counted every logged record exactly once — what the crashed process had
/// flushed is not counted again (the spool position travels with the deltas), the rest is.
/// Flushes every 100 ms put many batches in Redis before the log confirms them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_redis_counts_every_logged_record_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = format!(
        "live_store: redis\nredis: {{url: '{}', key_prefix: '{}', flush_interval_ms: 100}}\n\
         pipeline: {{flush_interval_ms: 100}}\n",
        crate::redis_server::shared_url(),
        crate::redis_server::unique_prefix("spool")
    );
    let (config, db, _spool) = write_config(dir.path(), &redis);
    let killed = load_and_kill(serve(&config)).await;
    let mut server = serve(&config);
    terminate(&mut server);
    let logged = check_log(&db, &killed).await as f64;
    // A third process reads the fleet's totals back from Redis.
    let mut server = serve(&config);
    let client = Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let counted = loop {
        let counted = scrape(&client, &server.addr)
            .await
            .value("ai_gateway_requests_total", &[]);
        if counted == logged || Instant::now() > deadline {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "acknowledged {}, logged {logged}, counted {counted}",
        killed.acked.len()
    );
    assert_eq!(counted, logged, "the fleet counts every logged record once");
    terminate(&mut server);
}

fn events(ids: std::ops::Range<usize>) -> Vec<Event> {
    let prices = PriceTable::default();
    let v = Validation {
        now_ms: gatemeter::clock::now_ms(),
        prices: &prices,
        keep_requests: None,
    };
    ids.map(|i| {
        parse_event(
            &format!(r#"{{"request_id":"t{i}","model":"m","status":200,"duration_ms":{i}}}"#),
            &v,
        )
        .expect("valid")
    })
    .collect()
}

/// A segment whose last frame was cut short by a crash: the whole frames are replayed, the
/// torn one is ignored and cut off.
#[tokio::test]
async fn a_torn_tail_is_ignored_and_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).expect("mkdir");
    let whole = [codec::frame(&events(0..3)), codec::frame(&events(3..5))].concat();
    let torn = codec::frame(&events(5..9));
    let mut file = whole.clone();
    file.extend_from_slice(&torn[..torn.len() - 7]);
    let segment = spool.join("0000000000000000.spool");
    std::fs::write(&segment, &file).expect("segment");

    let app = TestApp::with_config(&format!(
        "durability: spool\nspool: {{dir: '{}'}}\nlog_store: {{kind: sqlite, path: '{}'}}\n",
        spool.display(),
        dir.path().join("requests.db").display()
    ))
    .await;
    let m = app.metrics().await;
    assert_eq!(m.value("gatemeter_spool_replayed_records_total", &[]), 5.0);
    assert_eq!(m.value("ai_gateway_requests_total", &[]), 5.0);
    // Confirmed or not yet, the torn bytes are gone from the segment.
    let left = std::fs::metadata(&segment).map_or(0, |m| m.len());
    assert!(
        left == whole.len() as u64 || left == 0,
        "torn tail cut off: {left} bytes left"
    );
    app.stop().await;
    let mut ids = logged_ids(&dir.path().join("requests.db")).await;
    ids.sort();
    assert_eq!(ids, ["t0", "t1", "t2", "t3", "t4"]);
}

/// With the request log away nothing is confirmed, so the spool fills: past its cap ingest
/// answers 503 with Retry-After, counted as `spool_full`; the bytes never pass the cap.
#[tokio::test]
async fn a_full_spool_answers_503_and_counts_the_drop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::with_config(&format!(
        "durability: spool\nspool: {{dir: '{}', max_bytes: 1048576}}\n\
         log_store: {{kind: postgres, url: 'postgres://nobody@127.0.0.1:1/none'}}\n",
        dir.path().join("spool").display()
    ))
    .await;
    let mut refused = None;
    for n in 0..100 {
        let resp = app
            .client
            .post(app.url("/v1/events"))
            .header("content-type", "application/json")
            .body(batch(0, n, 1000))
            .send()
            .await
            .expect("post");
        if resp.status() == 503 {
            assert_eq!(
                resp.headers().get("retry-after").map(|v| v.as_bytes()),
                Some(&b"1"[..])
            );
            let text = resp.text().await.expect("body");
            assert!(text.contains("spool is full"), "{text}");
            refused = Some(n);
            break;
        }
        assert_eq!(resp.status(), 200);
    }
    let n = refused.expect("the spool filled up");
    assert!(n >= 2, "a few batches fit first ({n})");
    let m = app.metrics().await;
    assert_eq!(
        m.value(
            "gatemeter_dropped_records_total",
            &[("reason", "spool_full")]
        ),
        1000.0
    );
    assert_eq!(
        m.value("ai_gateway_requests_total", &[]),
        1000.0 * n as f64,
        "what was acknowledged is counted"
    );
    assert!(m.value("gatemeter_spool_bytes", &[]) <= 1_048_576.0);
    // Not stopped gracefully: closing would wait for the absent database.
}

/// Without `durability`, nothing is spooled: no spool directory, the spool families at 0.
#[tokio::test]
async fn the_default_keeps_no_spool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::with_config(&format!(
        "log_store: {{kind: sqlite, data_dir: '{}'}}\n",
        dir.path().display()
    ))
    .await;
    let (status, _) = app
        .post_json(r#"{"model":"m","status":200,"duration_ms":1}"#)
        .await;
    assert_eq!(status, 200);
    let m = app.metrics().await;
    assert_eq!(m.value("ai_gateway_requests_total", &[]), 1.0);
    assert_eq!(m.value("gatemeter_spool_bytes", &[]), 0.0);
    assert_eq!(m.value("gatemeter_spool_records_total", &[]), 0.0);
    app.stop().await;
    assert!(!dir.path().join("spool").exists());
}

/// OTLP request records are spooled like native ones, and records that came without a
/// `request_id` are given one before they are spooled (so a replay finds them in the log).
#[tokio::test]
async fn otlp_records_and_records_without_ids_go_through_the_spool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("requests.db");
    let app = TestApp::with_config(&format!(
        "durability: spool\nspool: {{dir: '{}'}}\nlog_store: {{kind: sqlite, path: '{}'}}\n",
        dir.path().join("spool").display(),
        db.display()
    ))
    .await;
    let now_ns = (gatemeter::clock::now_ms() - 1000) as u128 * 1_000_000;
    let record = |id: &str| {
        format!(
            r#"{{"timeUnixNano":"{now_ns}","attributes":[{{"key":"event.name","value":{{"stringValue":"api_request"}}}},{{"key":"request_id","value":{{"stringValue":"{id}"}}}},{{"key":"model","value":{{"stringValue":"claude-x"}}}},{{"key":"duration_ms","value":{{"stringValue":"100"}}}}]}}"#
        )
    };
    let body = format!(
        r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{},{}]}}]}}]}}"#,
        record("otlp-1"),
        record("otlp-2")
    );
    let resp = app
        .client
        .post(app.url("/v1/logs"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    let (status, _) = app
        .post_json(r#"[{"model":"m","status":200,"duration_ms":1},{"model":"m","status":200,"duration_ms":2}]"#)
        .await;
    assert_eq!(status, 200);
    let m = app.metrics().await;
    assert_eq!(m.value("gatemeter_spool_records_total", &[]), 4.0);
    assert_eq!(m.value("ai_gateway_requests_total", &[]), 4.0);
    assert!(m.value("gatemeter_spool_syncs_total", &[]) >= 2.0);
    app.stop().await;
    let mut ids = logged_ids(&db).await;
    ids.sort();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(&ids[2..], ["otlp-1", "otlp-2"]);
    for id in &ids[..2] {
        // Stored as 16 bytes: only a canonical UUID is.
        assert_eq!(id.len(), 32, "a UUID was assigned: {id}");
    }
    assert_ne!(ids[0], ids[1]);
}

/// Two servers on one spool directory would replay and delete each other's segments: the
/// second is refused at start, naming the directory.
#[tokio::test]
async fn a_second_server_on_the_same_spool_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "durability: spool\nspool: {{dir: '{}'}}\nlog_store: {{kind: none}}\n",
        dir.path().join("spool").display()
    );
    let app = TestApp::with_config(&yaml).await;
    let config = gatemeter::config::Config::from_yaml_str(&yaml, Path::new("t.yaml"), &|_| None)
        .expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = match gatemeter::app::App::build(&config, listener).await {
        Ok(_) => panic!("a second server on the same spool started"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("another process uses this spool directory") && err.contains("spool"),
        "{err}"
    );
    app.stop().await;
}
