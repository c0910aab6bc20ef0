//! TLS everywhere (issue 20), against real TLS servers with a CA made in the test: gatemeter's
//! own listener (`listen_tls`), the OTLP log export to an `https://` receiver that requires a
//! header (a second gatemeter behind TLS with an ingest token), Redis over `rediss://` (a
//! private `redis-server --tls-port`) and PostgreSQL with `sslmode` (a private cluster with
//! `ssl=on` accepting only TLS connections). Each path connects with verification on and
//! refuses a server certificate from another CA.
//!
//! Redis and PostgreSQL binaries come from scripts/with-services.sh
//! (`scripts/with-services.sh cargo test --test it -- tls`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatemeter::config::Config;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::TestApp;
use crate::pg_server::PgProc;
use crate::pki::Pki;
use crate::redis_server::free_port;
use crate::sql_log::{get, ingest, wait_rows};

/// One HTTPS request to `addr` (server name `localhost`), trusting `ca`: the status and body,
/// or why it failed.
async fn https(
    addr: SocketAddr,
    ca: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let config = gatemeter::tls::client_config(Some(ca)).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A counter of an HTTPS server's `/metrics` (0 when absent).
async fn https_metric(addr: SocketAddr, ca: &Path, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, text) = https(addr, ca, "GET", "/metrics", "")
        .await
        .expect("HTTPS scrape");
    assert_eq!(status, 200, "{text}");
    crate::harness::Exposition::parse(&text)
        .get(name, labels)
        .unwrap_or(0.0)
}

/// Polls `f` until it is true or `within` has passed.
async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn records(prefix: &str, n: usize) -> Vec<serde_json::Value> {
    let now = gatemeter::clock::now_ms();
    (0..n)
        .map(|i| {
            json!({
                "request_id": format!("{prefix}-{i}"), "timestamp": now - 1000 + i as i64,
                "namespace": "tls", "provider": "anthropic", "model": "claude-x",
                "endpoint": "/v1/messages", "status": 200, "duration_ms": 100,
                "input_tokens": 10, "output_tokens": 5
            })
        })
        .collect()
}

/// `listen_tls`: HTTPS with the right CA is served; plain HTTP, a client trusting another CA
/// and a client that never finishes its handshake are each refused and counted, and the last
/// does not hold up anyone else.
#[tokio::test]
async fn listen_tls_serves_https_and_refuses_the_rest() {
    let pki = Pki::new();
    let app = TestApp::with_config(&format!(
        "{}server:\n  header_timeout_secs: 1\n",
        pki.listen_tls()
    ))
    .await;
    let addr = app.addr;
    let (status, body) = https(addr, &pki.ca(), "GET", "/healthz", "")
        .await
        .expect("HTTPS trusting the test CA");
    assert_eq!(status, 200, "{body}");
    // Plain HTTP to the TLS port: no HTTP answer.
    let plain = app.client.get(app.url("/healthz")).send().await;
    assert!(
        plain.is_err() || plain.is_ok_and(|r| r.status() != 200),
        "plain HTTP was served on the TLS port"
    );
    // A client that trusts another CA refuses the server's certificate.
    let e = https(addr, &pki.wrong_ca(), "GET", "/healthz", "")
        .await
        .expect_err("wrong CA");
    assert!(
        e.contains("handshake") && e.contains("UnknownIssuer"),
        "{e}"
    );
    // A client that sends the first bytes of a ClientHello and stops: others are served
    // meanwhile, and it is closed after the header timeout.
    let mut stalled = TcpStream::connect(addr).await.expect("connect");
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    let t = Instant::now();
    let (status, _) = https(addr, &pki.ca(), "GET", "/healthz", "")
        .await
        .expect("served while another handshake stalls");
    assert_eq!(status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf))
        .await
        .expect("the stalled handshake is closed within the header timeout");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // Clients that hang up — before a byte (a TCP health check) or once their handshake is
    // done — are not failures.
    drop(TcpStream::connect(addr).await.expect("connect"));
    for _ in 0..20 {
        let config = gatemeter::tls::client_config(Some(&pki.ca())).expect("client config");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("handshake");
        drop(tls);
    }
    // Three failed handshakes: plain HTTP, the wrong CA, the stalled one.
    eventually(
        Duration::from_secs(5),
        "3 handshake failures counted",
        || {
            let ca = pki.ca();
            async move {
                https_metric(addr, &ca, "gatemeter_tls_handshake_failures_total", &[]).await == 3.0
            }
        },
    )
    .await;
    app.stop().await;
}

/// A gatemeter from `yaml` whose `${VAR}`s see `env` (the harness's own has no environment).
async fn app_with_env(yaml: &str, env: &[(&str, &str)]) -> TestApp {
    let config = Config::from_yaml_str(yaml, Path::new("test.yaml"), &|k| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    })
    .expect("test config is valid");
    TestApp::with_parsed(config, None).await
}

const CENTRAL_TOKEN: &str = "central-ingest-token-0123456789";

/// The OTLP log export to an `https://` receiver that requires a header: a second gatemeter
/// behind `listen_tls` with an ingest token. With the CA and the header every record arrives;
/// without the header they are refused (counted `rejected`); trusting another CA nothing is
/// sent (counted `retries_exhausted`).
#[tokio::test]
async fn otlp_export_delivers_over_https_with_a_header_and_refuses_a_wrong_ca() {
    let pki = Pki::new();
    let central = TestApp::with_config(&format!(
        "{}log_store: {{kind: none}}\nauth:\n  ingest_tokens: [{CENTRAL_TOKEN}]\n",
        pki.listen_tls()
    ))
    .await;
    let endpoint = format!("https://localhost:{}/v1/logs", central.addr.port());
    let edge = |ca: &Path, header: bool| {
        let headers = if header {
            "  headers: {authorization: \"Bearer ${CENTRAL_TOKEN}\"}\n"
        } else {
            ""
        };
        format!(
            "log_store: {{kind: none}}\notlp_export:\n  endpoint: {endpoint}\n  ca_file: {}\n  \
             batch_size: 100\n  interval_ms: 20\n  max_retries: 1\n  compression: gzip\n{headers}",
            ca.display()
        )
    };
    let env = [("CENTRAL_TOKEN", CENTRAL_TOKEN)];
    let central_requests = || {
        let ca = pki.ca();
        let addr = central.addr;
        async move { https_metric(addr, &ca, "ai_gateway_requests_total", &[]).await }
    };

    let cr = &central_requests;
    let good = app_with_env(&edge(&pki.ca(), true), &env).await;
    ingest(&good, None, &records("good", 5)).await;
    eventually(
        Duration::from_secs(10),
        "5 records at the central",
        || async move { cr().await == 5.0 },
    )
    .await;
    let m = good.metrics().await;
    assert_eq!(m.value("gatemeter_otlp_export_records_total", &[]), 5.0);

    let no_header = app_with_env(&edge(&pki.ca(), false), &env).await;
    ingest(&no_header, None, &records("anonymous", 3)).await;
    let nh = &no_header;
    eventually(
        Duration::from_secs(10),
        "3 records refused",
        || async move {
            nh.metrics().await.get(
                "gatemeter_otlp_export_dropped_records_total",
                &[("reason", "rejected")],
            ) == Some(3.0)
        },
    )
    .await;

    let wrong = app_with_env(&edge(&pki.wrong_ca(), true), &env).await;
    ingest(&wrong, None, &records("untrusted", 4)).await;
    let w = &wrong;
    eventually(
        Duration::from_secs(10),
        "4 records given up",
        || async move {
            w.metrics().await.get(
                "gatemeter_otlp_export_dropped_records_total",
                &[("reason", "retries_exhausted")],
            ) == Some(4.0)
        },
    )
    .await;
    assert_eq!(
        wrong
            .metrics()
            .await
            .value("gatemeter_otlp_export_records_total", &[]),
        0.0
    );
    // Nothing but the good edge's records reached the central; the wrong CA's handshakes
    // (one try and one retry) failed on the central's side too.
    assert_eq!(central_requests().await, 5.0);
    let (addr, ca) = (central.addr, pki.ca());
    let ca = &ca;
    eventually(
        Duration::from_secs(5),
        "2 handshake failures",
        || async move {
            https_metric(addr, ca, "gatemeter_tls_handshake_failures_total", &[]).await == 2.0
        },
    )
    .await;
    for app in [good, no_header, wrong, central] {
        app.stop().await;
    }
}

/// A private redis-server answering only TLS (`--port 0 --tls-port P`), clients not asked for
/// certificates; killed on drop.
struct RedisTls {
    port: u16,
    /// The test CA's PEM text, trusted by [`RedisTls::get_int`].
    ca_pem: Vec<u8>,
    _dir: tempfile::TempDir,
    child: Child,
}

impl RedisTls {
    fn start(pki: &Pki) -> Self {
        let server = std::env::var("GATEMETER_TEST_REDIS_SERVER").unwrap_or_else(|_| {
            panic!(
                "GATEMETER_TEST_REDIS_SERVER is not set: run through scripts/with-services.sh \
                 (e.g. `scripts/with-services.sh cargo test --test it -- tls`)"
            )
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new(server)
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(pki.cert())
            .arg("--tls-key-file")
            .arg(pki.key())
            .arg("--tls-ca-cert-file")
            .arg(pki.ca())
            .args(["--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let r = Self {
            port,
            ca_pem: std::fs::read(pki.ca()).expect("CA file"),
            _dir: dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.get_int("gatemeter:tls:probe").is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer TLS on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }

    /// An integer key (0 when absent), read over TLS trusting the test CA.
    fn get_int(&self, key: &str) -> redis::RedisResult<i64> {
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(self.ca_pem.clone()),
        };
        let mut c = redis::Client::build_with_tls(self.url(), certs)?
            .get_connection_with_timeout(Duration::from_millis(500))?;
        Ok(redis::cmd("GET")
            .arg(key)
            .query::<Option<i64>>(&mut c)?
            .unwrap_or(0))
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rediss://` with `redis.ca_file`: the live store writes to a TLS-only Redis; a replica
/// trusting another CA refuses the server (store down, nothing written).
#[tokio::test]
async fn redis_over_rediss_counts_and_refuses_a_wrong_ca() {
    let pki = Pki::new();
    let redis = RedisTls::start(&pki);
    let prefix = crate::redis_server::unique_prefix("tls");
    let yaml = |ca: &Path| {
        format!(
            "log_store: {{kind: none}}\nlive_store: redis\nredis:\n  url: {}\n  ca_file: {}\n  \
             key_prefix: '{prefix}'\n  flush_interval_ms: 50\n  refresh_interval_ms: 50\n",
            redis.url(),
            ca.display()
        )
    };
    let key = format!("{prefix}metrics:global:total_requests");
    let (r, k) = (&redis, &key);

    let app = TestApp::with_config(&yaml(&pki.ca())).await;
    ingest(&app, None, &records("redis", 7)).await;
    eventually(
        Duration::from_secs(10),
        "7 requests in Redis",
        || async move { r.get_int(k).ok() == Some(7) },
    )
    .await;
    let a = &app;
    eventually(
        Duration::from_secs(5),
        "the Redis store up",
        || async move {
            a.metrics()
                .await
                .get("gatemeter_store_up", &[("store", "redis")])
                == Some(1.0)
        },
    )
    .await;

    let wrong = TestApp::with_config(&yaml(&pki.wrong_ca())).await;
    ingest(&wrong, None, &records("untrusted", 3)).await;
    // Many flush and refresh intervals: every attempt fails the handshake.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        wrong
            .metrics()
            .await
            .get("gatemeter_store_up", &[("store", "redis")]),
        Some(0.0)
    );
    assert_eq!(redis.get_int(&key).expect("GET"), 7);
    wrong.stop().await;
    app.stop().await;
}

/// PostgreSQL with `sslmode` against a cluster that accepts TLS only: `verify-full` with the
/// test CA as `sslrootcert` writes rows (and the backup's `pg_dump` connects with the same
/// URL); `require` encrypts without verifying (libpq's meaning); `verify-ca` trusting another
/// CA is refused: the log reports down and nothing is written.
#[tokio::test]
async fn postgres_sslmode_verifies_the_server_and_refuses_a_wrong_ca() {
    let pki = Pki::new();
    let pg = PgProc::start_tls(&pki.cert_pem, &pki.key_pem);
    let yaml = |query: String| {
        format!(
            "log_store:\n  kind: postgres\n  url: '{}?{query}'\n",
            pg.url()
        )
    };
    // Plain connections are refused by the cluster, so every row below came over TLS.
    let plain = format!("{}?sslmode=disable", pg.url());
    assert!(
        <sqlx::PgConnection as sqlx::Connection>::connect(&plain)
            .await
            .is_err()
    );

    let app = TestApp::with_config(&yaml(format!(
        "sslmode=verify-full&sslrootcert={}",
        pki.ca().display()
    )))
    .await;
    ingest(&app, None, &records("verified", 6)).await;
    wait_rows(&app, None, 6).await;
    // The usage CSV streams from a text COPY on a pooled (TLS) connection.
    let csv = get(&app, None, "/api/v1/export/usage.csv")
        .await
        .text()
        .await
        .expect("usage CSV");
    assert_eq!(csv.lines().count(), 7, "header and 6 rows: {csv}");
    let resp = get(&app, None, "/api/v1/export/backup").await;
    assert_eq!(resp.status(), 200);
    let dump = resp.bytes().await.expect("backup");
    assert!(dump.starts_with(b"PGDMP"), "not a pg_dump archive");
    app.stop().await;

    let app = TestApp::with_config(&yaml("sslmode=require".to_string())).await;
    ingest(&app, None, &records("required", 2)).await;
    wait_rows(&app, None, 8).await;
    app.stop().await;

    let app = TestApp::with_config(&yaml(format!(
        "sslmode=verify-ca&sslrootcert={}",
        pki.wrong_ca().display()
    )))
    .await;
    ingest(&app, None, &records("untrusted", 3)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.metrics()
            .await
            .get("gatemeter_store_up", &[("store", "postgres")]),
        Some(0.0)
    );
    let mut c =
        <sqlx::PgConnection as sqlx::Connection>::connect(&format!("{}?sslmode=require", pg.url()))
            .await
            .expect("connect over TLS");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM request_log")
        .fetch_one(&mut c)
        .await
        .expect("count");
    assert_eq!(rows, 8);
    drop(c);
    app.stop().await;
}

/// `metrics_listen_tls`: `/metrics` over HTTPS on its own listener while the main listener
/// stays plain HTTP.
#[tokio::test]
async fn metrics_listen_tls_serves_metrics_over_https() {
    let pki = Pki::new();
    let config = Config::from_yaml_str(
        &format!(
            "log_store: {{kind: none}}\nmetrics_listen: 127.0.0.1:9\nmetrics_listen_tls:\n  \
             cert_file: {}\n  key_file: {}\n",
            pki.cert().display(),
            pki.key().display()
        ),
        Path::new("test.yaml"),
        &|_| None,
    )
    .expect("valid");
    let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
    let (main, metrics) = (bind().await.expect("bind"), bind().await.expect("bind"));
    let app = gatemeter::app::App::build_with_metrics(&config, main, Some(metrics))
        .await
        .expect("app builds");
    let addr = app.local_addr().expect("addr");
    let metrics = app.metrics_addr().expect("metrics listener");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    let (status, text) = https(metrics, &pki.ca(), "GET", "/metrics", "")
        .await
        .expect("HTTPS scrape");
    assert_eq!(status, 200);
    assert!(
        text.contains("\ngatemeter_tls_handshake_failures_total 0\n"),
        "{text}"
    );
    let plain = gatemeter::client::Client::new()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("plain HTTP on the main listener");
    assert_eq!(plain.status(), 200);
    let _ = stop.send(());
    task.await.expect("task").expect("server ran");
}
