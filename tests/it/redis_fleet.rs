//! Replicas over one Redis: fleet totals on every replica, and no loss when Redis is killed,
//! hung (SIGSTOP) or absent at start. Each test runs its own redis-server (AOF on) or uses a
//! unique key prefix on the shared one.

use std::time::{Duration, Instant};

use crate::exact::{Gen, PRICED_CONFIG, exact_quantile, generate};
use crate::harness::{Exposition, TestApp};
use crate::redis_server::{RedisProc, get_int, shared_url, unique_prefix};

fn config(url: &str, prefix: &str, instance: &str) -> String {
    format!(
        "{PRICED_CONFIG}
live_store: redis
pipeline:
  flush_interval_ms: 100
redis:
  url: {url}
  key_prefix: \"{prefix}\"
  instance_id: {instance}
  flush_interval_ms: 100
  refresh_interval_ms: 100
  command_timeout_ms: 300
  connect_timeout_ms: 300
  max_backoff_ms: 1000
"
    )
}

/// Posts records `[from, to)` in batches; every answer must be 200 and quick.
pub(crate) async fn post(app: &TestApp, records: &[Gen], from: usize, to: usize, batch: usize) {
    let mut i = from;
    while i < to {
        let end = (i + batch).min(to);
        let body = format!(
            "[{}]",
            (i..end)
                .map(|k| records[k].json(k))
                .collect::<Vec<_>>()
                .join(",")
        );
        let t = Instant::now();
        let (status, ans) = app.post_json(&body).await;
        assert_eq!(status, 200, "{ans}");
        assert_eq!(ans["accepted"], end - i);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "ingest waited {:?} (it must never wait on Redis)",
            t.elapsed()
        );
        i = end;
    }
}

/// Scrapes until the fleet shows `n` requests; each scrape must answer quickly.
pub(crate) async fn wait_for_total(app: &TestApp, n: usize, limit: Duration) -> Exposition {
    let deadline = Instant::now() + limit;
    loop {
        let t = Instant::now();
        let m = app.metrics().await;
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "scrape waited {:?}",
            t.elapsed()
        );
        let got = m.get("ai_gateway_requests_total", &[]).unwrap_or(0.0);
        if got == n as f64 {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "fleet total stuck at {got}, want {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn store_up(app: &TestApp) -> f64 {
    app.metrics()
        .await
        .value("gatemeter_store_up", &[("store", "redis")])
}

pub(crate) async fn wait_store_up(app: &TestApp, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store_up(app).await != want {
        assert!(Instant::now() < deadline, "store_up never became {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 0.01 * want,
        "{what}: got {got}, want {want}"
    );
}

/// Every fleet counter, token and cost total exact; quantiles within 1 %.
pub(crate) fn check_fleet(m: &Exposition, records: &[Gen]) {
    let n = records.len() as f64;
    assert_eq!(m.value("ai_gateway_requests_total", &[]), n);
    assert_eq!(
        m.value("ai_gateway_errors_total", &[]),
        records.iter().filter(|g| g.failed()).count() as f64
    );
    for ns in ["alpha", "beta", "gamma"] {
        let rs: Vec<&Gen> = records.iter().filter(|g| g.ns == ns).collect();
        assert_eq!(
            m.value(
                "ai_gateway_namespace_requests_total",
                &[("namespace", ns), ("namespace_code", ns)]
            ),
            rs.len() as f64
        );
        assert_eq!(
            (m.value("gatemeter_namespace_cost_usd_total", &[("namespace", ns)]) * 1e6).round()
                as u64,
            rs.iter().map(|g| g.cost()).sum::<u64>()
        );
        assert_eq!(
            m.value(
                "ai_gateway_namespace_status_codes_total",
                &[
                    ("namespace", ns),
                    ("namespace_code", ns),
                    ("status_code", "200")
                ]
            ),
            rs.iter().filter(|g| g.status == 200).count() as f64
        );
    }
    assert_eq!(
        (m.value("gatemeter_cost_usd_total", &[]) * 1e6).round() as u64,
        records.iter().map(Gen::cost).sum::<u64>()
    );
    for (i, t) in [
        "input",
        "output",
        "cache_write_5m",
        "cache_write_1h",
        "cache_read",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(
            m.value("gatemeter_tokens_total", &[("type", t)]),
            records.iter().map(|g| g.tokens[i]).sum::<u64>() as f64,
            "{t}"
        );
    }
    let l = [("provider", "openai"), ("model", "gpt-4o-mini")];
    let rs: Vec<&Gen> = records
        .iter()
        .filter(|g| g.model == "gpt-4o-mini")
        .collect();
    assert_eq!(
        m.value("model_tokens_input_total", &l),
        rs.iter().map(|g| g.tokens[0]).sum::<u64>() as f64
    );
    assert_eq!(
        (m.value("model_cost_usd_total", &l) * 1e6).round() as u64,
        rs.iter().map(|g| g.cost()).sum::<u64>()
    );
    let mut d: Vec<u64> = records.iter().map(|g| g.duration_ms).collect();
    d.sort_unstable();
    for window in ["1m", "5m", "all"] {
        for (q, qs) in [(0.5, "50"), (0.95, "95"), (0.99, "99")] {
            let got = m.value(
                "gatemeter_request_duration_quantile_seconds",
                &[("window", window), ("percentile", qs)],
            );
            close(
                got * 1000.0,
                exact_quantile(&d, q),
                &format!("{window} p{qs}"),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_show_exact_fleet_totals() {
    let url = shared_url();
    let prefix = unique_prefix("fleet");
    let records = generate(30_000, 3);
    let mut apps = Vec::new();
    for i in 0..3 {
        apps.push(TestApp::with_config(&config(&url, &prefix, &format!("replica-{i}"))).await);
    }
    tokio::join!(
        post(&apps[0], &records, 0, 10_000, 500),
        post(&apps[1], &records, 10_000, 20_000, 500),
        post(&apps[2], &records, 20_000, 30_000, 500),
    );
    for app in &apps {
        let m = wait_for_total(app, 30_000, Duration::from_secs(30)).await;
        check_fleet(&m, &records);
        assert_eq!(m.value("gatemeter_store_up", &[("store", "redis")]), 1.0);
        // Per-process health stays per process: each replica processed its own third.
        assert_eq!(m.value("gatemeter_processed_records_total", &[]), 10_000.0);
    }
    // The seed system's keys hold the same totals.
    assert_eq!(
        get_int(&url, &format!("{prefix}metrics:global:total_requests")),
        30_000
    );
    let alpha = records.iter().filter(|g| g.ns == "alpha").count() as i64;
    assert_eq!(
        get_int(&url, &format!("{prefix}metrics:ns:alpha:total_requests")),
        alpha
    );
    let ok = records
        .iter()
        .filter(|g| g.ns == "alpha" && !g.failed())
        .count() as i64;
    assert_eq!(
        get_int(
            &url,
            &format!("{prefix}metrics:ns:alpha:successful_requests")
        ),
        ok
    );
    for app in apps {
        app.stop().await;
    }
}

/// Starts one replica on a private redis-server, posts a third of 10,000 records, runs
/// `fault` (which takes the server away), posts the rest (every answer 2xx and quick),
/// runs `recover`, and checks that the totals are exact.
async fn outage(
    redis: &mut RedisProc,
    tag: &str,
    fault: impl AsyncFnOnce(&mut RedisProc, &TestApp),
    recover: impl AsyncFnOnce(&mut RedisProc, &TestApp),
) {
    let records = generate(10_000, 11);
    let app = TestApp::with_config(&config(&redis.url(), "", tag)).await;
    post(&app, &records, 0, 3_334, 100).await;
    fault(redis, &app).await;
    post(&app, &records, 3_334, 10_000, 100).await;
    // /metrics does not wait on Redis either, and says it is down.
    wait_store_up(&app, 0.0).await;
    recover(redis, &app).await;
    let m = wait_for_total(&app, 10_000, Duration::from_secs(30)).await;
    check_fleet(&m, &records);
    wait_store_up(&app, 1.0).await;
    assert_eq!(
        get_int(&redis.url(), "metrics:global:total_requests"),
        10_000
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_20s_later_loses_nothing() {
    let mut redis = RedisProc::start();
    outage(
        &mut redis,
        "killed",
        async |r, app| {
            // Let part of the first third reach Redis first.
            wait_for_total(app, 3_334, Duration::from_secs(10)).await;
            r.kill();
        },
        async |r, _| {
            tokio::time::sleep(Duration::from_secs(20)).await;
            r.launch();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_then_resumed_loses_nothing() {
    let mut redis = RedisProc::start();
    outage(
        &mut redis,
        "hung",
        async |r, _| r.pause(),
        async |r, _| {
            tokio::time::sleep(Duration::from_secs(2)).await;
            r.resume();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_absent_at_start_then_caught_up() {
    let mut redis = RedisProc::unstarted();
    outage(
        &mut redis,
        "absent",
        async |_, _| {},
        async |r, _| r.launch(),
    )
    .await;
}

/// A TCP proxy to Redis that, when armed, passes the next flush batch carrying records on to
/// Redis but swallows its reply (and everything after it on that connection): the "applied,
/// but the answer was lost" case. Later connections pass normally.
struct LossyProxy {
    port: u16,
    swallow: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn lossy_proxy(upstream: u16) -> LossyProxy {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let swallow = Arc::new(AtomicBool::new(false));
    let sw = swallow.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            let lost = Arc::new(AtomicBool::new(false));
            let (armed, lost_w) = (sw.clone(), lost.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = match c2.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let chunk = &buf[..n];
                    let is_batch = chunk
                        .windows(b"metrics:global:total_requests".len())
                        .any(|w| w == b"metrics:global:total_requests");
                    if is_batch && armed.swap(false, Ordering::SeqCst) {
                        lost_w.store(true, Ordering::SeqCst);
                    }
                    if s2.write_all(chunk).is_err() {
                        break;
                    }
                }
                let _ = s2.shutdown(std::net::Shutdown::Both);
            });
            let sw = lost;
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match server.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if !sw.load(Ordering::SeqCst) && client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = client.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    LossyProxy { port, swallow }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_reply_was_lost_is_not_applied_twice() {
    use std::sync::atomic::Ordering;
    let redis = RedisProc::start();
    let proxy = lossy_proxy(redis.port);
    let via_proxy = format!("redis://127.0.0.1:{}/", proxy.port);
    let records = generate(2_000, 5);
    let app = TestApp::with_config(&config(&via_proxy, "", "lossy")).await;
    post(&app, &records, 0, 1_000, 100).await;
    wait_for_total(&app, 1_000, Duration::from_secs(10)).await;

    proxy.swallow.store(true, Ordering::SeqCst);
    post(&app, &records, 1_000, 2_000, 1_000).await;
    // The batch reaches Redis and is applied; its reply is lost, so the replica retries the
    // same batch on a new connection, where the script sees its marker and skips it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_int(&redis.url(), "metrics:global:total_requests") != 2_000 {
        assert!(Instant::now() < deadline, "the batch never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !proxy.swallow.load(Ordering::SeqCst),
        "a reply was swallowed"
    );
    let m = wait_for_total(&app, 2_000, Duration::from_secs(10)).await;
    check_fleet(&m, &records);
    // Several flush intervals (and the retry) later, still applied exactly once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        get_int(&redis.url(), "metrics:global:total_requests"),
        2_000
    );
    check_fleet(&app.metrics().await, &records);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_writers_restore_fleet_state_that_redis_lost() {
    let url = shared_url();
    let prefix = unique_prefix("lost");
    let records = generate(1_000, 17);
    let app = TestApp::with_config(&config(&url, &prefix, "restore")).await;
    post(&app, &records, 0, 1_000, 100).await;
    wait_for_total(&app, 1_000, Duration::from_secs(10)).await;
    // Redis loses the state and a seed counter with the writer's record of what it added
    // (e.g. restarted without persistence, or a failover to a replica that missed them); no
    // new traffic arrives.
    let mut c = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect");
    let seed_records: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}gatemeter:seed:*"))
        .query(&mut c)
        .expect("KEYS");
    assert_eq!(seed_records.len(), 1, "one writer: {seed_records:?}");
    let deleted: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}gatemeter:state"))
        .arg(format!("{prefix}metrics:global:total_requests"))
        .arg(&seed_records[0])
        .query(&mut c)
        .expect("DEL");
    assert_eq!(deleted, 3);
    // The next snapshot shows the loss (seen only if it lasts past a refresh: the writer may
    // re-write first, so both outcomes of this wait are fine).
    let deadline = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < deadline
        && app
            .metrics()
            .await
            .get("ai_gateway_requests_total", &[])
            .unwrap_or(0.0)
            != 0.0
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The writer re-sends its cumulative state and seed totals at least every 30 flushes (3 s
    // here).
    let m = wait_for_total(&app, 1_000, Duration::from_secs(10)).await;
    check_fleet(&m, &records);
    let total = format!("{prefix}metrics:global:total_requests");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_int(&url, &total) != 1_000 {
        assert!(Instant::now() < deadline, "the seed total never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
    assert_eq!(get_int(&url, &total), 1_000, "counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_while_redis_is_away() {
    let redis = RedisProc::unstarted();
    let app = TestApp::with_config(&config(&redis.url(), "", "ready")).await;
    let resp = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    let (status, body) = crate::harness::answer(resp).await;
    assert_eq!(
        status, 200,
        "a replica that buffers stays in service: {body}"
    );
    assert_eq!(body["live_store"], "redis");
    assert_eq!(body["live_store_up"], false);
    app.stop().await;
}

fn hlen(url: &str, key: &str) -> i64 {
    let mut c = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("connect");
    redis::cmd("HLEN").arg(key).query(&mut c).expect("HLEN")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_writes_the_last_deltas_and_retires_the_writer() {
    let url = shared_url();
    let prefix = unique_prefix("shutdown");
    let records = generate(1_000, 23);
    let state = format!("{prefix}gatemeter:state");
    // Flush intervals far beyond the test: only the shutdown path can deliver the records.
    let slow = |instance: &str| {
        config(&url, &prefix, instance)
            .replace("flush_interval_ms: 100", "flush_interval_ms: 60000")
    };
    for (i, instance) in ["first", "second"].into_iter().enumerate() {
        let app = TestApp::with_config(&slow(instance)).await;
        post(&app, &records, i * 500, (i + 1) * 500, 100).await;
        assert_eq!(
            get_int(&url, &format!("{prefix}metrics:global:total_requests")),
            i as i64 * 500
        );
        app.stop().await;
        assert_eq!(
            get_int(&url, &format!("{prefix}metrics:global:total_requests")),
            (i as i64 + 1) * 500
        );
        // The stopped writer's blob was folded into the retired totals.
        assert_eq!(hlen(&url, &state), 0, "no blob left behind by {instance}");
    }
    // A fresh replica sees the fleet's totals, histograms included.
    let reader = TestApp::with_config(&config(&url, &prefix, "reader")).await;
    let m = wait_for_total(&reader, 1_000, Duration::from_secs(10)).await;
    check_fleet(&m, &records);
    reader.stop().await;
    assert_eq!(
        hlen(&url, &state),
        0,
        "a replica that counted nothing writes no blob"
    );
}

#[test]
fn check_config_shows_the_redis_settings_without_the_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("redis.yaml");
    std::fs::write(
        &file,
        "live_store: redis\nredis:\n  url: redis://:hunter2@127.0.0.1:6399/0\n  instance_id: a\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatemeter"))
        .arg("check-config")
        .arg(&file)
        .env_remove("GATEMETER_REDIS_URL")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("live_store: redis"), "{stdout}");
    assert!(stdout.contains("redis://***@127.0.0.1:6399/0"), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_takes_back_its_concurrency() {
    let url = shared_url();
    let prefix = unique_prefix("conc");
    let app = TestApp::with_config(&config(&url, &prefix, "conc")).await;
    for id in ["s1", "s2", "s3"] {
        let (status, ans) = app
            .post_json(&format!(
                r#"{{"phase":"start","request_id":"{id}","namespace":"n"}}"#
            ))
            .await;
        assert_eq!(status, 200, "{ans}");
    }
    let (status, _) = app
        .post_json(
            r#"{"request_id":"s1","namespace":"n","model":"m","status":200,"duration_ms":5}"#,
        )
        .await;
    assert_eq!(status, 200);
    let key = format!("{prefix}metrics:ns:n:concurrent_requests");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_int(&url, &key) != 2 {
        assert!(Instant::now() < deadline, "gauge never reached 2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
    assert_eq!(get_int(&url, &key), 0);
    let reader = TestApp::with_config(&config(&url, &prefix, "reader")).await;
    let m = wait_for_total(&reader, 1, Duration::from_secs(10)).await;
    assert_eq!(
        m.value(
            "ai_gateway_namespace_concurrent_requests",
            &[("namespace", "n"), ("namespace_code", "n")]
        ),
        0.0
    );
    reader.stop().await;
}
