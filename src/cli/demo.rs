//! `gatemeter demo`: serve, and post the synthetic traffic of [`super::traffic`] to the server
//! (gateway records, and every 2 s the OTLP logs and metrics of a few simulated Claude Code CLI
//! sessions); two probes of its own listener (unless the config has probes) feed the probe panels.
//!
//! [`drive`] owns the timing and the one keep-alive connection; the traffic itself depends only
//! on the seed.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use gatemeter::app::App;
use gatemeter::client::{self, Sender};
use gatemeter::config::Config;
use gatemeter::probe::{Method, ProbeConfig, Target};
use gatemeter::store::sql::{SqlBackend, SqlConfig};

use super::error_chain;
use super::serve::{bind, load_config, shutdown_signal};
use super::traffic::claude_code::CliSessions;
use super::traffic::{DEMO_COST_SHARE, Delivery, Detail, Traffic};

/// Serves `args.config` (by default the annotated example config) and feeds it demo traffic
/// until SIGINT or SIGTERM.
pub async fn run(args: super::Demo) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(p) => load_config(Some(p), args.listen)?,
        None => example_config(args.listen)?,
    };
    let listener = bind(&config).await?;
    if config.probes.is_empty() {
        config.probes = demo_probes(listener.local_addr()?);
    }
    let app = App::build(&config, listener).await?;
    let addr = app.local_addr()?;
    info!(%addr, "gatemeter demo: serving and generating traffic; open http://{addr}/metrics");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut demo_stop = stop_rx.clone();
    let traffic = tokio::spawn(drive(
        addr,
        DemoArgs {
            requests_per_second: args.rate,
            seed: args.seed,
            // With tokens configured (GATEMETER_INGEST_TOKENS in docker-compose.yml), the demo
            // ingests like any client.
            token: config
                .auth
                .ingest_tokens
                .first()
                .or(config.auth.admin_tokens.first())
                .cloned(),
        },
        async move {
            let _ = demo_stop.wait_for(|s| *s).await;
        },
    ));
    let server = app.run(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    server.await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), traffic).await;
    Ok(())
}

/// The annotated example config (its price table); its request log is a throwaway file.
fn example_config(listen: Option<SocketAddr>) -> anyhow::Result<Config> {
    let text = include_str!("../../config/gatemeter.example.yaml");
    let mut c = Config::from_yaml_str(text, std::path::Path::new("example"), &|k| {
        std::env::var(k).ok()
    })?;
    if let Some(addr) = listen {
        c.listen = addr;
    }
    if let Some(SqlConfig {
        backend: SqlBackend::Sqlite { path },
        ..
    }) = c.log_store.as_mut()
    {
        *path = std::env::temp_dir()
            .join(format!("gatemeter-demo-{}", std::process::id()))
            .join("requests.db");
    }
    Ok(c)
}

/// Two probes of the demo's own listener, so the probe panels have data: an HTTP probe of
/// `/healthz` standing for `anthropic` and a TCP probe standing for `openai` (every 5 s).
fn demo_probes(addr: SocketAddr) -> Vec<ProbeConfig> {
    let probe = |name: &str, provider: &str, target: Target| ProbeConfig {
        name: name.into(),
        provider: provider.into(),
        target,
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
    };
    let url = format!("http://{addr}/healthz").parse();
    let mut probes = vec![probe(
        "demo-openai-tcp",
        "openai",
        Target::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        },
    )];
    if let Ok(url) = url {
        probes.insert(
            0,
            probe(
                "demo-anthropic-http",
                "anthropic",
                Target::Http {
                    url,
                    method: Method::Get,
                    expect_status: vec![200],
                    headers: Vec::new(),
                    ca_file: None,
                },
            ),
        );
    }
    probes
}

/// Settings of `gatemeter demo`'s traffic (no `Debug`: it holds a token).
#[derive(Clone, PartialEq)]
pub struct DemoArgs {
    /// Average number of gateway requests simulated per second.
    pub requests_per_second: f64,
    /// Seed of the generator: the same seed gives the same traffic.
    pub seed: u64,
    /// Bearer token for ingest, when the server wants one.
    pub token: Option<String>,
}

/// Why the demo traffic could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The rate is not a positive finite number.
    #[error("requests per second must be a positive number, not {0}")]
    InvalidRate(f64),
}

/// How often a batch is sent.
const TICK: Duration = Duration::from_millis(100);
/// Two-phase requests finish after their duration divided by this, so the gauge moves quickly.
const TWO_PHASE_TIME_SCALE: u64 = 10;
/// Longest wait before a two-phase request's final record is sent.
const MAX_TWO_PHASE_WAIT: Duration = Duration::from_secs(60);
/// Most final records waiting to be sent; beyond it a request is sent in one phase.
const MAX_WAITING: usize = 50_000;
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Most new requests generated per tick (caps the rate at 50,000 requests per second).
const MAX_PER_TICK: f64 = 5_000.0;
/// Most lines per request body (the server's default limit is 10,000 records).
const MAX_BATCH: usize = 1_000;
/// Least time between two warnings about rejected batches.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How often the simulated Claude Code CLIs export their logs and metrics.
const CLAUDE_CODE_EVERY: Duration = Duration::from_secs(2);

/// Posts synthetic gateway traffic to `http://{target}/v1/events` until `shutdown` resolves.
///
/// Every ~100 ms the requests due in that tick are sent as one batch (alternately a JSON array
/// and NDJSON) over one keep-alive HTTP/1.1 connection. A share of requests uses the two-phase
/// protocol (a start marker now, the final record after a scaled-down duration) so the
/// concurrency gauge moves; a few are never finished and expire as abandoned. Every 2 s the
/// simulated Claude Code sessions' events go to `/v1/logs` and their metric points to
/// `/v1/metrics` (OTLP protobuf, delta sums) on the same connection. When the server cannot be
/// reached, batches are dropped and the connection is retried with back-off.
pub async fn drive(
    target: SocketAddr,
    args: DemoArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DemoError> {
    let rate = args.requests_per_second;
    if !rate.is_finite() || rate <= 0.0 {
        return Err(DemoError::InvalidRate(rate));
    }
    tokio::pin!(shutdown);
    // Ids differ from run to run (a server that outlives one demo must not de-duplicate the
    // next); the traffic itself depends only on the seed.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut traffic = Traffic::new(
        args.seed,
        &format!("demo-{run:x}"),
        Detail::Full,
        DEMO_COST_SHARE,
    );
    let mut cli = CliSessions::new(args.seed, run);
    let mut next_cli = Instant::now();
    let mut link = Link::new(target, args.token.as_deref());
    let mut waiting: BinaryHeap<Waiting> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut owed = 0.0f64;
    let mut ticks = 0u64;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = Instant::now();
    info!(%target, requests_per_second = rate, seed = args.seed, "Sending demo traffic.");

    'run: loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        owed += rate * now.duration_since(last).as_secs_f64();
        last = now;
        // A rate beyond what one connection can carry is capped rather than queued without bound.
        owed = owed.min(MAX_PER_TICK);
        let due = owed.floor();
        owed -= due;

        let mut lines: Vec<String> = Vec::new();
        for _ in 0..due as u64 {
            let planned = traffic.next_request();
            match planned.delivery {
                Delivery::Direct => lines.push(planned.record.to_json()),
                Delivery::TwoPhase if waiting.len() >= MAX_WAITING => {
                    lines.push(planned.record.to_json());
                }
                Delivery::TwoPhase => {
                    lines.push(planned.record.start_json());
                    let wait =
                        Duration::from_millis(planned.record.duration_ms / TWO_PHASE_TIME_SCALE)
                            .min(MAX_TWO_PHASE_WAIT);
                    seq += 1;
                    waiting.push(Waiting {
                        due: now + wait,
                        seq,
                        json: planned.record.to_json(),
                    });
                }
                Delivery::Abandoned => lines.push(planned.record.start_json()),
            }
        }
        while waiting.peek().is_some_and(|w| w.due <= now) {
            if let Some(w) = waiting.pop() {
                lines.push(w.json);
            }
        }
        if now >= next_cli {
            next_cli = now + CLAUDE_CODE_EVERY;
            let now_ns = gatemeter::clock::now_ms().max(0) as u64 * 1_000_000;
            let export = cli.export(now_ns);
            let bodies = [
                (Answer::OtlpLogs, export.logs.encode_to_vec()),
                (Answer::OtlpMetrics, export.metrics.encode_to_vec()),
            ];
            for (answer, body) in bodies {
                tokio::select! {
                    biased;
                    () = &mut shutdown => break 'run,
                    () = link.send(answer, Bytes::from(body), "application/x-protobuf", 1) => {}
                }
            }
        }
        if lines.is_empty() {
            continue;
        }
        for chunk in lines.chunks(MAX_BATCH) {
            ticks += 1;
            let ndjson = ticks.is_multiple_of(2);
            let (body, content_type) = if ndjson {
                (chunk.join("\n"), "application/x-ndjson")
            } else {
                (format!("[{}]", chunk.join(",")), "application/json")
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break 'run,
                () = link.send(Answer::Events, Bytes::from(body), content_type, chunk.len()) => {}
            }
        }
    }
    info!(waiting = waiting.len(), "Demo traffic stopped.");
    Ok(())
}

/// A final record waiting for its two-phase request to finish (earliest first in the heap).
struct Waiting {
    due: Instant,
    seq: u64,
    json: String,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: `BinaryHeap` is a max-heap and the earliest must come out first.
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// Where a batch goes, and how its answer tells of rejected items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// `POST /v1/events`: JSON `{"accepted": .., "rejected": ..}`.
    Events,
    /// `POST /v1/logs`: `ExportLogsServiceResponse` (protobuf), `partial_success`.
    OtlpLogs,
    /// `POST /v1/metrics`: `ExportMetricsServiceResponse` (protobuf), `partial_success`.
    OtlpMetrics,
}

impl Answer {
    fn path(self) -> &'static str {
        match self {
            Self::Events => "/v1/events",
            Self::OtlpLogs => "/v1/logs",
            Self::OtlpMetrics => "/v1/metrics",
        }
    }

    /// What a 200 answer says about rejected items, if it rejected any.
    fn rejection(self, body: &[u8]) -> Option<String> {
        let text = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned();
        match self {
            Self::Events => client::scan_u64(body, b"\"rejected\"")
                .is_some_and(|n| n > 0)
                .then(|| text(body)),
            Self::OtlpLogs => ExportLogsServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .filter(|p| p.rejected_log_records > 0)
                .map(|p| {
                    format!(
                        "{} log records rejected: {}",
                        p.rejected_log_records, p.error_message
                    )
                }),
            Self::OtlpMetrics => ExportMetricsServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .filter(|p| p.rejected_data_points > 0)
                .map(|p| {
                    format!(
                        "{} points rejected: {}",
                        p.rejected_data_points, p.error_message
                    )
                }),
        }
    }
}

/// The demo's one connection: reconnects with back-off, rate-limits its warnings.
struct Link {
    target: SocketAddr,
    host: HeaderValue,
    authorization: Option<HeaderValue>,
    sender: Option<Sender>,
    backoff: Duration,
    retry_at: Option<Instant>,
    dropped: u64,
    last_warn: Option<Instant>,
    suppressed: u64,
}

impl Link {
    fn new(target: SocketAddr, token: Option<&str>) -> Self {
        let host = HeaderValue::from_str(&target.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let authorization = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok());
        Self {
            target,
            host,
            authorization,
            sender: None,
            backoff: Duration::from_millis(250),
            retry_at: None,
            dropped: 0,
            last_warn: None,
            suppressed: 0,
        }
    }

    /// Sends one batch; on any failure the batch is dropped (this is demo traffic) and counted.
    async fn send(
        &mut self,
        kind: Answer,
        body: Bytes,
        content_type: &'static str,
        records: usize,
    ) {
        let Some(mut sender) = self.ready().await else {
            self.dropped += records as u64;
            return;
        };
        let mut req = client::post_request(&self.host, kind.path(), content_type, body);
        if let Some(a) = &self.authorization {
            req.headers_mut().insert(header::AUTHORIZATION, a.clone());
        }
        match client::exchange(&mut sender, req).await {
            Ok((StatusCode::OK, answer)) => {
                self.sender = Some(sender);
                if let Some(rejection) = kind.rejection(&answer) {
                    self.warn_limited(StatusCode::OK, &rejection);
                }
            }
            Ok((status, answer)) => {
                self.sender = Some(sender);
                self.dropped += records as u64;
                self.warn_limited(
                    status,
                    &String::from_utf8_lossy(&answer[..answer.len().min(300)]),
                );
            }
            Err(e) => {
                self.dropped += records as u64;
                warn!(target = %self.target, error = %error_chain(&e), retry_in = ?self.backoff, "Demo connection failed; reconnecting.");
                self.fail();
            }
        }
    }

    /// The connection, (re)connecting when needed and allowed by the back-off.
    async fn ready(&mut self) -> Option<Sender> {
        if let Some(s) = self.sender.take()
            && !s.is_closed()
        {
            return Some(s);
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        match client::connect(self.target).await {
            Ok(s) => {
                if self.retry_at.take().is_some() {
                    info!(target = %self.target, dropped_records = self.dropped, "Demo connection restored.");
                }
                self.backoff = Duration::from_millis(250);
                Some(s)
            }
            Err(e) => {
                warn!(target = %self.target, error = %error_chain(&e), retry_in = ?self.backoff, "Cannot reach the server; demo records are dropped until it answers.");
                self.fail();
                None
            }
        }
    }

    fn fail(&mut self) {
        self.sender = None;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn warn_limited(&mut self, status: StatusCode, answer: &str) {
        let now = Instant::now();
        if self
            .last_warn
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            self.suppressed += 1;
            debug!(%status, "Demo batch not fully accepted.");
            return;
        }
        warn!(%status, %answer, similar_since_last = self.suppressed, "Demo batch not fully accepted.");
        self.last_warn = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_records_come_out_earliest_first() {
        let now = Instant::now();
        let mut heap = BinaryHeap::new();
        for (i, ms) in [30u64, 10, 20].into_iter().enumerate() {
            heap.push(Waiting {
                due: now + Duration::from_millis(ms),
                seq: i as u64,
                json: ms.to_string(),
            });
        }
        let order: Vec<String> = std::iter::from_fn(|| heap.pop().map(|w| w.json)).collect();
        assert_eq!(order, ["10", "20", "30"]);
    }

    #[tokio::test]
    async fn unreachable_server_is_retried_until_shutdown() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let args = DemoArgs {
            requests_per_second: 200.0,
            seed: 1,
            token: None,
        };
        let stop = tokio::time::sleep(Duration::from_millis(700));
        let done = tokio::time::timeout(Duration::from_secs(5), drive(addr, args, stop)).await;
        assert!(matches!(done, Ok(Ok(()))), "{done:?}");
    }

    /// The value of the first sample whose line starts with `prefix` (`name ` or `name{…`).
    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| {
                l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0)
            })
            .reduce(f64::max)
    }

    /// The demo against a server that wants an ingest token (docker-compose.yml sets one):
    /// without it every batch is refused; with the config's token the gateway records and the
    /// simulated Claude Code sessions (logs and metrics) are all taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_traffic_and_claude_code_sessions_reach_a_server_with_tokens() {
        let yaml = "listen: 127.0.0.1:0\nlog_store: {kind: none}\nauth:\n  ingest_tokens: [demo-ingest-token-0123456789]\n";
        let config =
            Config::from_yaml_str(yaml, std::path::Path::new("test"), &|_| None).expect("config");
        let listener = bind(&config).await.expect("bind");
        let app = App::build(&config, listener).await.expect("app");
        let addr = app.local_addr().expect("addr");
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(app.run(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        let scrape = || async move {
            client::Client::new()
                .get(format!("http://{addr}/metrics"))
                .send()
                .await
                .expect("scrape")
                .text()
                .await
                .expect("body")
        };
        let args = |token: Option<&str>| DemoArgs {
            requests_per_second: 100.0,
            seed: 5,
            token: token.map(String::from),
        };

        let stop = tokio::time::sleep(Duration::from_millis(600));
        drive(addr, args(None), stop).await.expect("drive");
        let text = scrape().await;
        assert_eq!(sample(&text, "ai_gateway_requests_total "), Some(0.0));
        assert_eq!(sample(&text, "claude_code_session_count_total{"), None);

        let token = config.auth.ingest_tokens.first().map(String::as_str);
        let stop = tokio::time::sleep(Duration::from_millis(4_500));
        drive(addr, args(token), stop).await.expect("drive");
        let text = scrape().await;
        assert!(
            sample(&text, "ai_gateway_requests_total ").is_some_and(|n| n >= 100.0),
            "{text}"
        );
        // Two or three Claude Code exports: sessions, cost, tokens, active time, tools, events.
        for family in [
            "claude_code_session_count_total{",
            "claude_code_cost_usage_usd_total{",
            "claude_code_token_usage_tokens_total{",
            "claude_code_active_time_seconds_total{",
            "claude_code_tool_calls_total{",
            "claude_code_tool_decisions_total{",
            "claude_code_events_total{event=\"api_request\"}",
        ] {
            assert!(
                sample(&text, family).is_some_and(|n| n > 0.0),
                "{family} missing:\n{text}"
            );
        }
        for refused in [
            "gatemeter_otlp_rejected_items_total{",
            "gatemeter_ingest_rejected_records_total{",
        ] {
            assert!(
                sample(&text, refused).is_none_or(|n| n == 0.0),
                "{refused}:\n{text}"
            );
        }
        let _ = stop_tx.send(true);
        server.await.expect("join").expect("server");
    }

    #[tokio::test]
    async fn invalid_rate_is_refused() {
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let err = drive(
            addr,
            DemoArgs {
                requests_per_second: 0.0,
                seed: 1,
                token: None,
            },
            std::future::pending(),
        )
        .await;
        assert!(matches!(err, Err(DemoError::InvalidRate(_))));
    }
}
