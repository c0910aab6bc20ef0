//! Active probes (issue 16): real probes against servers started here that answer 200 or 502,
//! hang past the timeout, refuse the connection, or present a self-signed certificate (trusted
//! once its CA file is configured), and a TCP target. Results rows (through the probe log
//! export), metrics and probe-log lines are checked exactly, on SQLite and PostgreSQL and
//! without a log store; three replicas over one Redis probe a target once per interval.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::harness::TestApp;
use crate::redis_server::{shared_url, unique_prefix};
use crate::sql_log::{ADMIN, ALICE, auth_yaml, get, get_json, log_store_yaml};

/// An HTTP/1.1 server answering every request with `status`; counts the requests.
async fn http_server(status: u16) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(serve_http(TokioIo::new(stream), status, counter));
        }
    });
    (addr, hits)
}

async fn serve_http<I>(io: I, status: u16, hits: Arc<AtomicUsize>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |_req| {
        hits.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"probe answer")));
            *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .await;
}

/// A server that accepts and reads, but never answers.
async fn hanging_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A loopback port with nothing listening.
async fn refused_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

/// An HTTPS server (self-signed certificate for `localhost`) answering 200; its CA file.
async fn tls_server(dir: &std::path::Path) -> (SocketAddr, std::path::PathBuf) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, key.cert.pem()).expect("write ca");
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        key.signing_key.serialize_der(),
    ));
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![key.cert.der().clone()], der)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    serve_http(TokioIo::new(tls), 200, Arc::new(AtomicUsize::new(0))).await;
                }
            });
        }
    });
    (addr, ca)
}

/// The probe log export's lines for `query` (admin), after checking its headers.
async fn probe_log(app: &TestApp, query: &str) -> Vec<String> {
    let resp = get(
        app,
        Some(ADMIN),
        &format!("/api/v1/export/probe-log{query}"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    assert_eq!(
        h["content-disposition"],
        format!("attachment; filename=\"probe-logs-{today}.txt\"").as_str()
    );
    let text = resp.text().await.expect("body");
    text.lines().map(str::to_string).collect()
}

/// `[HH:MM:SS] rest` → (seconds of the UTC day, rest) — panics on another shape.
fn split_line(line: &str) -> (i64, &str) {
    let b = line.as_bytes();
    assert!(
        b.len() > 11 && b[0] == b'[' && b[3] == b':' && b[6] == b':' && &line[9..11] == "] ",
        "{line}"
    );
    let n = |r: std::ops::Range<usize>| line[r].parse::<i64>().expect(line);
    (n(1..3) * 3600 + n(4..6) * 60 + n(7..9), &line[11..])
}

/// `OK 200 45ms` → ("OK 200", 45, "") and `FAIL - 300ms text` → ("FAIL -", 300, "text").
fn split_rest(rest: &str) -> (String, u64, String) {
    let mut parts = rest.splitn(4, ' ');
    let verdict = parts.next().expect("verdict");
    let status = parts.next().expect("status");
    let ms = parts.next().expect("latency");
    let ms: u64 = ms.strip_suffix("ms").expect(rest).parse().expect(rest);
    (
        format!("{verdict} {status}"),
        ms,
        parts.next().unwrap_or("").to_string(),
    )
}

fn day_secs_now() -> i64 {
    (gatemeter::clock::now_ms() / 1000).rem_euclid(86_400)
}

/// The probes of [`every_outcome_is_stored_counted_and_logged`]: one run each (a 60 s interval;
/// the first run is at start).
async fn outcome_probes(dir: &std::path::Path) -> (String, Arc<AtomicUsize>, u16) {
    let (ok, ok_hits) = http_server(200).await;
    let (bad, _) = http_server(502).await;
    let hang = hanging_server().await;
    let refused = refused_port().await;
    let (tls, ca) = tls_server(dir).await;
    let yaml = format!(
        "probes:
- {{name: ok, provider: prov-a, target: 'http://{ok}/health', interval_secs: 60, timeout_ms: 2000}}
- {{name: bad, provider: prov-a, target: 'http://{bad}/', method: HEAD, interval_secs: 60, timeout_ms: 2000}}
- {{name: hang, provider: prov-b, target: 'http://{hang}/', interval_secs: 60, timeout_ms: 300}}
- {{name: refused, provider: prov-b, target: 'http://127.0.0.1:{refused}/', interval_secs: 60, timeout_ms: 2000}}
- {{name: self-signed, provider: prov-c, target: 'https://localhost:{tls_port}/', interval_secs: 60, timeout_ms: 2000}}
- {{name: trusted, provider: prov-c, target: 'https://localhost:{tls_port}/', ca_file: '{ca}', expect_status: [200], interval_secs: 60, timeout_ms: 2000}}
- {{name: tcp, provider: prov-d, target: 'tcp://127.0.0.1:{ok_port}', interval_secs: 60, timeout_ms: 2000}}
",
        tls_port = tls.port(),
        ca = ca.display(),
        ok_port = ok.port(),
    );
    (yaml, ok_hits, refused)
}

/// What each probe's one line must say after the time: verdict and status, the error text
/// (`None`: starts with "TLS handshake: " and names the certificate), and the latency bounds.
fn expected_lines(refused: u16) -> Vec<(&'static str, &'static str, Option<String>, u64, u64)> {
    vec![
        ("ok", "OK 200", Some(String::new()), 0, 2000),
        (
            "bad",
            "FAIL 502",
            Some("unexpected status 502 (expected 2xx or 3xx)".into()),
            0,
            2000,
        ),
        (
            "hang",
            "FAIL -",
            Some("timed out after 300 ms".into()),
            300,
            1500,
        ),
        (
            "refused",
            "FAIL -",
            Some(format!("connection refused by 127.0.0.1:{refused}")),
            0,
            2000,
        ),
        ("self-signed", "FAIL -", None, 0, 2000),
        ("trusted", "OK 200", Some(String::new()), 0, 2000),
        ("tcp", "OK -", Some(String::new()), 0, 2000),
    ]
}

/// Waits until the probe log holds `n` lines.
async fn wait_lines(app: &TestApp, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let lines = probe_log(app, "").await;
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn every_outcome_is_stored_counted_and_logged(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (probes, ok_hits, refused) = outcome_probes(dir.path()).await;
    let store = match db {
        Db::None => "log_store:\n  kind: none\n".to_string(),
        db => log_store_yaml(db.sql()).await,
    };
    let start_secs = day_secs_now();
    let app = TestApp::with_config(&format!("{store}{}{probes}", auth_yaml())).await;
    let lines = wait_lines(&app, 7).await;
    assert_eq!(lines.len(), 7, "{lines:#?}");
    let end_secs = day_secs_now();

    // Each probe's line, by asking for it by name: exact but for the clock and the latency.
    for (probe, verdict, error, min_ms, max_ms) in expected_lines(refused) {
        let mine = probe_log(&app, &format!("?probe={probe}")).await;
        assert_eq!(mine.len(), 1, "{probe}: {mine:?}");
        let (secs, rest) = split_line(&mine[0]);
        assert!(
            (start_secs..=end_secs + 1).contains(&secs),
            "{probe}: {} not in the test's time",
            mine[0]
        );
        let (v, ms, text) = split_rest(rest);
        assert_eq!(v, verdict, "{probe}: {}", mine[0]);
        assert!((min_ms..=max_ms).contains(&ms), "{probe}: {}", mine[0]);
        match error {
            Some(e) => assert_eq!(text, e, "{probe}: {}", mine[0]),
            None => assert!(
                text.starts_with("TLS handshake: ") && text.contains("certificate"),
                "{probe}: {}",
                mine[0]
            ),
        }
    }
    assert_eq!(
        ok_hits.load(Ordering::SeqCst),
        1,
        "the HTTP target got one GET"
    );

    // Filters: status, and the newest `max_lines`, newest last.
    let ok = probe_log(&app, "?status=ok").await;
    assert_eq!(ok.len(), 3, "{ok:?}");
    assert!(ok.iter().all(|l| split_line(l).1.starts_with("OK ")));
    let failed = probe_log(&app, "?status=fail").await;
    assert_eq!(failed.len(), 4, "{failed:?}");
    let two = probe_log(&app, "?max_lines=2").await;
    assert_eq!(two, lines[5..].to_vec());
    let none = probe_log(&app, "?from=0&to=1").await;
    assert!(none.is_empty(), "{none:?}");

    // Metrics: one run each, counted under its outcome only.
    let m = app.metrics().await;
    for (probe, provider, outcome, up) in [
        ("ok", "prov-a", "ok", 1.0),
        ("bad", "prov-a", "fail", 0.0),
        ("hang", "prov-b", "timeout", 0.0),
        ("refused", "prov-b", "refused", 0.0),
        ("self-signed", "prov-c", "tls", 0.0),
        ("trusted", "prov-c", "ok", 1.0),
        ("tcp", "prov-d", "ok", 1.0),
    ] {
        let l = [("probe", probe), ("provider", provider)];
        assert_eq!(m.value("gatemeter_probe_up", &l), up, "{probe}");
        assert_eq!(
            m.value("gatemeter_probe_duration_seconds_count", &l),
            1.0,
            "{probe}"
        );
        for o in ["ok", "fail", "timeout", "refused", "tls", "dns", "error"] {
            let l = [("probe", probe), ("provider", provider), ("outcome", o)];
            let want = if o == outcome { 1.0 } else { 0.0 };
            assert_eq!(
                m.value("gatemeter_probe_results_total", &l),
                want,
                "{probe} {o}"
            );
        }
    }
    let hang_sum = m.value(
        "gatemeter_probe_duration_seconds_sum",
        &[("probe", "hang"), ("provider", "prov-b")],
    );
    assert!((0.3..1.5).contains(&hang_sum), "{hang_sum}");

    if db != Db::None {
        // The export is in the audit trail: who, filters, lines, outcome.
        let (status, audit) = get_json(&app, Some(ADMIN), "/api/v1/audit?limit=1").await;
        assert_eq!(status, 200, "{audit}");
        let e = &audit["items"][0];
        assert_eq!(
            (
                e["action"].as_str(),
                e["role"].as_str(),
                e["rows"].as_i64(),
                e["outcome"].as_str()
            ),
            (Some("probe_log"), Some("admin"), Some(0), Some("ok")),
            "{audit}"
        );
        assert_eq!(
            e["filters"],
            serde_json::json!({"filter": {"from_ms": 0, "to_ms": 1}, "max_lines": 100})
        );
        // Availability: the probes beside the (absent) requests of their providers.
        let (status, av) = get_json(&app, Some(ADMIN), "/api/v1/availability?window=1h").await;
        assert_eq!(status, 200, "{av}");
        let provider = |name: &str| -> Value {
            av["providers"]
                .as_array()
                .expect("providers")
                .iter()
                .find(|p| p["provider"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} missing: {av}"))
        };
        let a = provider("prov-a");
        assert_eq!(
            (a["requests"].as_i64(), a["status"].as_str()),
            (Some(0), Some("unknown"))
        );
        let probes: Vec<(String, bool, i64, i64)> = a["probes"]
            .as_array()
            .expect("probes")
            .iter()
            .map(|p| {
                (
                    p["probe"].as_str().expect("name").to_string(),
                    p["up"].as_bool().expect("up"),
                    p["runs"].as_i64().expect("runs"),
                    p["ok"].as_i64().expect("ok"),
                )
            })
            .collect();
        assert_eq!(
            probes,
            [
                ("bad".to_string(), false, 1, 0),
                ("ok".to_string(), true, 1, 1)
            ]
        );
        let bad = &a["probes"][0]["last"];
        assert_eq!(
            (
                bad["outcome"].as_str(),
                bad["status"].as_u64(),
                bad["error"].as_str()
            ),
            (
                Some("fail"),
                Some(502),
                Some("unexpected status 502 (expected 2xx or 3xx)")
            )
        );
        let d = provider("prov-d");
        assert_eq!(d["probes"][0]["last"]["status"], Value::Null);
        assert_eq!(d["probes"][0]["availability"], 1.0);
        // Probes are the fleet's, like their log: a user token sees none of them (it has no
        // requests here, so no provider at all), neither their errors nor their providers.
        let (status, av) = get_json(&app, Some(ALICE), "/api/v1/availability?window=1h").await;
        assert_eq!(status, 200, "{av}");
        assert_eq!(av["providers"], serde_json::json!([]), "{av}");
    }
    app.stop().await;
}

/// The runs of the probe-outcome suite: SQLite, PostgreSQL, and no log store (the ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    Sqlite,
    Postgres,
    None,
}

impl Db {
    fn sql(self) -> crate::sql_log::Db {
        match self {
            Db::Postgres => crate::sql_log::Db::Postgres,
            _ => crate::sql_log::Db::Sqlite,
        }
    }
}

#[tokio::test]
async fn probe_outcomes_sqlite() {
    every_outcome_is_stored_counted_and_logged(Db::Sqlite).await
}

#[tokio::test]
async fn probe_outcomes_postgres() {
    every_outcome_is_stored_counted_and_logged(Db::Postgres).await
}

#[tokio::test]
async fn probe_outcomes_without_a_log_store() {
    every_outcome_is_stored_counted_and_logged(Db::None).await
}

/// The table itself, on both databases: the probe log's filters and order, the per-probe
/// summaries of a window (runs, successes, the latest run before its end), and the retention
/// purge that goes with the request log's.
async fn probe_results_table_answers_and_is_purged(db: crate::sql_log::Db) {
    use gatemeter::probe::{ProbeLogFilter, ProbeOutcome, ProbeResult};
    let (log, _dir, _) =
        crate::sql_log::open_log_with(db, 100, Arc::new(gatemeter::health::Health::new(1))).await;
    let now = gatemeter::clock::now_ms();
    let run = |ts_ms: i64, probe: &str, outcome: ProbeOutcome, status: u16| ProbeResult {
        ts_ms,
        probe: probe.into(),
        provider: format!("prov-{probe}"),
        outcome,
        status,
        latency_ms: 7,
        error: (outcome != ProbeOutcome::Ok).then(|| format!("{} ✓", outcome.as_str())),
    };
    let rows = vec![
        run(now - 10 * 86_400_000, "a", ProbeOutcome::Ok, 200),
        run(now - 3000, "a", ProbeOutcome::Fail, 502),
        run(now - 2000, "a", ProbeOutcome::Ok, 200),
        run(now - 1000, "a", ProbeOutcome::Timeout, 0),
        run(now - 1500, "b", ProbeOutcome::Ok, 0),
    ];
    log.insert_probe_results(&rows).await.expect("insert");
    let all = log
        .probe_log(&ProbeLogFilter::default(), 100)
        .await
        .expect("log");
    assert_eq!(
        all,
        [
            rows[0].clone(),
            rows[1].clone(),
            rows[2].clone(),
            rows[4].clone(),
            rows[3].clone()
        ]
    );
    let failed_a = ProbeLogFilter {
        probe: Some("a".into()),
        ok: Some(false),
        ..ProbeLogFilter::default()
    };
    assert_eq!(
        log.probe_log(&failed_a, 1).await.expect("log"),
        [rows[3].clone()],
        "the newest only"
    );
    let window = ProbeLogFilter {
        from_ms: Some(now - 2500),
        to_ms: Some(now - 1000),
        ..ProbeLogFilter::default()
    };
    assert_eq!(
        log.probe_log(&window, 100).await.expect("log"),
        [rows[2].clone(), rows[4].clone()]
    );
    let s = log
        .probe_summaries(now - 60_000, now - 1200)
        .await
        .expect("summaries");
    let got: Vec<(String, String, i64, i64, Option<i64>)> = s
        .iter()
        .map(|s| {
            (
                s.probe.clone(),
                s.provider.clone(),
                s.results,
                s.ok,
                s.last.as_ref().map(|l| l.ts_ms),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a".into(), "prov-a".into(), 2, 1, Some(now - 2000)),
            ("b".into(), "prov-b".into(), 1, 1, Some(now - 1500)),
        ]
    );
    log.purge_before(now - 86_400_000).await.expect("purge");
    let kept = log
        .probe_log(&ProbeLogFilter::default(), 100)
        .await
        .expect("log");
    assert_eq!(kept.len(), 4);
    assert!(kept.iter().all(|r| r.ts_ms > now - 86_400_000));
    gatemeter::store::RequestLog::close(&log).await;
}

#[tokio::test]
async fn probe_results_table_sqlite() {
    probe_results_table_answers_and_is_purged(crate::sql_log::Db::Sqlite).await
}

#[tokio::test]
async fn probe_results_table_postgres() {
    probe_results_table_answers_and_is_purged(crate::sql_log::Db::Postgres).await
}

/// The export's parameters: admins only, strict, `max_lines` at most 1000.
#[tokio::test]
async fn probe_log_parameters_are_strict_and_admin_only() {
    let app = TestApp::with_config(&auth_yaml()).await;
    let resp = get(&app, Some(ALICE), "/api/v1/export/probe-log").await;
    assert_eq!(resp.status(), 403);
    for (query, param) in [
        ("max_lines=1001", "max_lines"),
        ("max_lines=0", "max_lines"),
        ("max_lines=x", "max_lines"),
        ("status=up", "status"),
        ("from=5&to=5", "to"),
        ("from=-1", "from"),
        ("bogus=1", "bogus"),
    ] {
        let (status, body) = get_json(
            &app,
            Some(ADMIN),
            &format!("/api/v1/export/probe-log?{query}"),
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["message"]
                .as_str()
                .expect("message")
                .contains(&format!("`{param}`")),
            "{query}: {body}"
        );
    }
    assert!(probe_log(&app, "?max_lines=1000").await.is_empty());
    app.stop().await;
}

/// A header whose value comes from the environment is sent (the target answers 200 only with
/// it), and the value appears in no answer of gatemeter's: probe log, metrics, the config's
/// `Debug`.
#[tokio::test]
async fn header_values_come_from_the_environment_and_stay_secret() {
    const CANARY: &str = "canary-secret-7f3a9c";
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let ok = req.headers().get("x-api-key").is_some_and(|v| v == CANARY);
                let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = if ok {
                    hyper::StatusCode::OK
                } else {
                    hyper::StatusCode::UNAUTHORIZED
                };
                Ok::<_, std::convert::Infallible>(resp)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    let yaml = format!(
        "{}log_store:\n  kind: none\nprobes:
- {{name: keyed, provider: p, target: 'http://{addr}/v1/models', headers: [{{name: X-Api-Key, value_from_env: PROBE_TEST_KEY}}], interval_secs: 60, timeout_ms: 2000}}
- {{name: keyless, provider: p, target: 'http://{addr}/v1/models', expect_status: [200], interval_secs: 60, timeout_ms: 2000}}
",
        auth_yaml()
    );
    let config =
        gatemeter::config::Config::from_yaml_str(&yaml, std::path::Path::new("t.yaml"), &|k| {
            (k == "PROBE_TEST_KEY").then(|| CANARY.to_string())
        })
        .expect("valid");
    assert!(!format!("{config:?}").contains(CANARY));
    let app = TestApp::with_parsed(config, None).await;
    let lines = wait_lines(&app, 2).await;
    let keyed = probe_log(&app, "?probe=keyed").await;
    assert_eq!(keyed.len(), 1, "{lines:?}");
    assert_eq!(split_rest(split_line(&keyed[0]).1).0, "OK 200");
    let keyless = probe_log(&app, "?probe=keyless").await;
    assert_eq!(
        split_rest(split_line(&keyless[0]).1).2,
        "unexpected status 401 (expected 200)"
    );
    let metrics = get(&app, Some(ADMIN), "/metrics")
        .await
        .text()
        .await
        .expect("body");
    for text in [lines.join("\n"), metrics] {
        assert!(!text.contains(CANARY), "{text}");
    }
    app.stop().await;
}

/// Three replicas over one Redis: each slot of the probe runs once across the fleet, so the
/// target sees about one request per interval (not three), and the replicas' counters add up
/// to the target's count.
#[tokio::test]
async fn three_replicas_probe_a_target_once_per_interval() {
    let (target, hits) = http_server(200).await;
    let prefix = unique_prefix("probes");
    let url = shared_url();
    let yaml = |instance: &str| {
        format!(
            "live_store: redis
log_store:
  kind: none
redis:
  url: {url}
  key_prefix: \"{prefix}\"
  instance_id: {instance}
probes:
- {{name: fleet, provider: prov-f, target: 'http://{target}/', interval_secs: 1, timeout_ms: 500}}
"
        )
    };
    let started = Instant::now();
    let mut apps = Vec::new();
    for i in 0..3 {
        apps.push(TestApp::with_config(&yaml(&format!("r{i}"))).await);
    }
    tokio::time::sleep(Duration::from_millis(5200).saturating_sub(started.elapsed())).await;
    let mut counted = 0.0;
    let mut ups = Vec::new();
    for app in &apps {
        let m = app.metrics().await;
        let l = [
            ("probe", "fleet"),
            ("provider", "prov-f"),
            ("outcome", "ok"),
        ];
        counted += m.value("gatemeter_probe_results_total", &l);
        ups.push(m.get(
            "gatemeter_probe_up",
            &[("probe", "fleet"), ("provider", "prov-f")],
        ));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = hits.load(Ordering::SeqCst);
    // One run per 1 s slot begun since the first replica started (±1 at the edges); three
    // replicas without the lease would make about three times as many.
    let slots = elapsed.ceil() as usize;
    assert!(
        (slots.saturating_sub(1)..=slots + 1).contains(&n),
        "{n} requests in {elapsed:.1} s"
    );
    assert!(
        (counted as usize) == n || (counted as usize) + 1 == n,
        "replicas counted {counted}, target saw {n}"
    );
    // Every replica shows the fleet's last result, whichever ran it.
    assert_eq!(ups, [Some(1.0); 3]);
    for app in apps {
        app.stop().await;
    }
}
