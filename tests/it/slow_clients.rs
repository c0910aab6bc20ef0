//! Slow, idle and too many clients, and shutdown while a client holds a half-sent request
//! (SPEC §9), on raw sockets against the real server. Timeouts are set to 1 s here.

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{ServerProcess, TestApp};

const RECORD: &str = r#"{"model":"m","status":200,"duration_ms":5}"#;

/// Reads one response (head and a `content-length` body); `None` if the connection ends first.
async fn read_response(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().expect("length"));
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().expect("status");
                let text = String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned();
                return Some((status, text));
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Seconds until the server closes `s` (reads end or fail), at most `limit`.
async fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<f64> {
    let start = Instant::now();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return start.elapsed().as_secs_f64(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

async fn get(s: &mut TcpStream, path: &str) -> Option<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: gatemeter\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    read_response(s).await
}

async fn app(server: &str) -> TestApp {
    TestApp::with_config(&format!("server: {server}\nlog_store: {{kind: none}}\n")).await
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = app("{idle_timeout_secs: 1, header_timeout_secs: 5}").await;
    let mut s = TcpStream::connect(app.addr).await.expect("connect");
    assert_eq!(get(&mut s, "/healthz").await.map(|r| r.0), Some(200));
    // Kept alive: a second request on the same connection works.
    assert_eq!(get(&mut s, "/healthz").await.map(|r| r.0), Some(200));
    let closed = closed_after(&mut s, Duration::from_secs(4))
        .await
        .expect("the idle connection is closed");
    assert!((0.8..3.0).contains(&closed), "closed after {closed} s");
    app.stop().await;
}

#[tokio::test]
async fn a_client_reading_nothing_of_its_responses_is_cut_after_the_idle_timeout() {
    let app = app("{idle_timeout_secs: 1, header_timeout_secs: 5}").await;
    let mut watcher = TcpStream::connect(app.addr).await.expect("connect");
    let open = |m: &str| m.contains("\ngatemeter_open_connections 2\n");
    // Pipelined scrapes, never read: the responses fill both socket buffers and writes stall.
    // (Each response fits hyper's buffer, so the connection counts as idle once it stalls; a
    // streamed response stalled in flight is cut by the same timeout — the unit test.)
    let reader = TcpStream::connect(app.addr).await.expect("connect");
    let (_rd, mut wr) = reader.into_split();
    let flood = tokio::spawn(async move {
        let req = b"GET /metrics HTTP/1.1\r\nhost: g\r\n\r\n".repeat(100);
        for _ in 0..50 {
            if wr.write_all(&req).await.is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, m) = get(&mut watcher, "/metrics").await.expect("scrape");
    assert!(
        open(&m),
        "both connections open while the stalled one writes"
    );
    let start = Instant::now();
    loop {
        let (_, m) = get(&mut watcher, "/metrics").await.expect("scrape");
        if m.contains("\ngatemeter_open_connections 1\n") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the stalled reader is still connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    flood.abort();
    app.stop().await;
}

#[tokio::test]
async fn a_client_trickling_headers_is_cut_while_others_are_served() {
    let app = app("{header_timeout_secs: 1, idle_timeout_secs: 10}").await;
    let slow = TcpStream::connect(app.addr).await.expect("connect");
    let (mut rd, mut wr) = slow.into_split();
    let trickle = tokio::spawn(async move {
        if wr.write_all(b"POST /v1/events HTTP/1.1\r\n").await.is_err() {
            return;
        }
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let start = Instant::now();
    // Meanwhile another client is served at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let (status, _) = app.post_json(RECORD).await;
    assert_eq!(status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let mut chunk = [0u8; 1024];
    let end = tokio::time::timeout(Duration::from_secs(4), async {
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return start.elapsed().as_secs_f64(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the trickling client is cut");
    assert!((0.8..3.0).contains(&end), "cut after {end} s");
    trickle.abort();
    app.stop().await;
}

#[tokio::test]
async fn a_trickling_body_gets_408_after_the_body_timeout() {
    let app = app("{body_timeout_secs: 1, header_timeout_secs: 5}").await;
    let s = TcpStream::connect(app.addr).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let start = Instant::now();
    let trickle = tokio::spawn(async move {
        let head = "POST /v1/events HTTP/1.1\r\nhost: gatemeter\r\n\
                    content-type: application/json\r\ncontent-length: 1000\r\n\r\n";
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..1000 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(4), rd.read_to_end(&mut answer)).await;
    let took = start.elapsed().as_secs_f64();
    assert!(read.is_ok(), "the connection is closed after the answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!((0.8..3.0).contains(&took), "answered after {took} s");
    trickle.abort();
    app.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_with_503_while_open_ones_work() {
    let app = app("{max_connections: 2, idle_timeout_secs: 30}").await;
    let mut a = TcpStream::connect(app.addr).await.expect("connect");
    let mut b = TcpStream::connect(app.addr).await.expect("connect");
    assert_eq!(get(&mut a, "/healthz").await.map(|r| r.0), Some(200));
    assert_eq!(get(&mut b, "/healthz").await.map(|r| r.0), Some(200));

    let mut c = TcpStream::connect(app.addr).await.expect("connect");
    let (status, text) = get(&mut c, "/healthz").await.expect("an answer");
    assert_eq!(status, 503, "{text}");
    let head = text.to_ascii_lowercase();
    assert!(head.contains("connection: close"), "{text}");
    assert!(head.contains("retry-after: 1"), "{text}");
    assert!(text.contains("too_many_connections"), "{text}");
    assert!(closed_after(&mut c, Duration::from_secs(2)).await.is_some());

    // The open connections still work, and count the refusal.
    let (status, metrics) = get(&mut a, "/metrics").await.expect("scrape");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("\ngatemeter_refused_connections_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\ngatemeter_open_connections 2\n"));
    // A freed place is taken again.
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut d = TcpStream::connect(app.addr).await.expect("connect");
    assert_eq!(get(&mut d, "/healthz").await.map(|r| r.0), Some(200));
    drop((a, d));
    app.stop().await;
}

#[tokio::test]
async fn sigterm_exits_0_within_the_deadline_despite_half_sent_requests() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("requests.db");
    let config = dir.path().join("gatemeter.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nserver: {{shutdown_timeout_secs: 2, header_timeout_secs: 60, body_timeout_secs: 60}}\n\
             log_store: {{kind: sqlite, path: '{}'}}\n",
            db.display()
        ),
    )
    .expect("write config");
    let mut server = ServerProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_gatemeter"))
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("GATEMETER_DATABASE_URL")
            .env_remove("GATEMETER_LISTEN"),
    );
    let addr = server.addr.clone();
    let child = &mut server.child;

    let client = gatemeter::client::Client::new();
    for i in 0..3 {
        let body = format!(
            r#"{{"request_id":"sigterm-{i}","model":"m","provider":"p","status":200,"duration_ms":5}}"#
        );
        let resp = client
            .post(format!("http://{addr}/v1/events"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 200);
    }
    // One client stops in the middle of its body (a request in flight), one in its head.
    let mut body = TcpStream::connect(addr.as_str()).await.expect("connect");
    body.write_all(
        b"POST /v1/events HTTP/1.1\r\nhost: g\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n[{\"model\":",
    )
    .await
    .expect("write");
    let mut head = TcpStream::connect(addr.as_str()).await.expect("connect");
    head.write_all(b"POST /v1/events HTTP/1.1\r\nhost: g\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let start = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "still running {:?} after SIGTERM",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exits 0: {exit:?}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "the in-flight request had its deadline: {took:?}"
    );
    drop((body, head));

    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("connect");
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM request_log")
        .fetch_one(&mut c)
        .await
        .expect("count");
    assert_eq!(
        n, 3,
        "every record acknowledged before the signal is in the log"
    );
}
