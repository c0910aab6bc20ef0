//! OTLP log export of counted request records (SPEC §6.2): each record becomes one OTLP log
//! record (event `gatemeter.request`, GenAI semantic-convention attribute names), sent in
//! batches as OTLP/HTTP protobuf to the configured endpoint, `http://` or `https://` (rustls,
//! the system's roots plus `ca_file`, `crate::tls::client_config`).
//!
//! - Fed through the [`RequestLog`] seam; `submit` never waits: beyond `queue_capacity`
//!   waiting records the batch is dropped and counted (`queue_full`).
//! - One task batches (`batch_size` records or `interval`, whichever first) and POSTs.
//! - Retried only on 429, 502, 503, 504 (honouring `Retry-After`, in seconds or as an
//!   HTTP-date, capped at 60 s) and on connection failures or timeouts, with exponential
//!   backoff, at most `max_retries` times;
//!   any other answer drops the batch (`rejected`), as do exhausted retries
//!   (`retries_exhausted`). Records a receiver refuses in `partial_success` count as `rejected`.
//!
//! Why not `opentelemetry-otlp`'s exporter: it takes SDK log records through a logger
//! provider with its own batch processor and queue, so drops there are not visible to us by
//! reason, and the receiver's `partial_success` count does not reach us. (Its HTTP retry rules
//! were aligned with the spec in opentelemetry-rust PR #3632 — only 429/502/503/504, and
//! `Retry-After` on 429/503 — behind its experimental retry feature; that was not the reason.)
//! The request is built with `opentelemetry-proto` types and sent with hyper (already a
//! dependency); `Retry-After` is honoured on all four retryable codes. `timeout` bounds each
//! attempt whole: connect, TLS handshake, request and answer. No OTLP/gRPC: it would bring
//! tonic and HTTP/2 into the tree for a protocol every receiver also speaks as OTLP/HTTP.
//!
//! Another gatemeter's `/v1/logs` reads `gatemeter.request` records back into request records
//! (`crate::otlp::gatemeter`), so edge collectors can forward to a central one. Both
//! directions take their attribute names from the record's field table (`crate::record::fields`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use compact_str::CompactString;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::record::fields::{FIELDS, FieldId, GATEMETER_EVENT};
use crate::record::{Millis, ValidRecord, genai_operation};
use crate::store::{RequestLog, StoreError};

/// OTLP log export of request records (`otlp_export:`).
#[derive(Clone)]
pub struct OtlpExportConfig {
    /// `http(s)://host:port/path` receiving OTLP/HTTP protobuf logs (e.g. `.../v1/logs`).
    pub endpoint: hyper::Uri,
    /// PEM certificates trusted for an `https://` endpoint besides the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Most records per export request.
    pub batch_size: usize,
    /// Longest wait before a partial batch is sent.
    pub interval: Duration,
    /// Most records waiting to be exported; beyond it they are dropped and counted.
    pub queue_capacity: usize,
    /// Time limit of one export request.
    pub timeout: Duration,
    /// Retries of one batch (on 429/502/503/504 or a connection failure) before it is dropped.
    pub max_retries: u32,
    /// Headers sent with every request (authentication: their values are secrets, marked
    /// sensitive and never printed).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    /// Gzip the request bodies.
    pub gzip: bool,
}

impl std::fmt::Debug for OtlpExportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("OtlpExportConfig")
            .field("endpoint", &self.endpoint)
            .field("batch_size", &self.batch_size)
            .field("interval", &self.interval)
            .field("queue_capacity", &self.queue_capacity)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("headers (values hidden)", &names)
            .field("gzip", &self.gzip)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `body` gzipped (the export's `compression: gzip`).
fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(body)?;
    e.finish()
}

label_enum! {
    /// Why exported records were dropped (the `reason` label).
    pub enum ExportDrop {
        /// The export queue was full.
        QueueFull = "queue_full",
        /// The endpoint refused them (a non-retryable status, or `partial_success`).
        Rejected = "rejected",
        /// Every retry failed.
        RetriesExhausted = "retries_exhausted",
    }
}

/// Counters of the export.
#[derive(Debug, Default)]
pub struct ExportStats {
    exported: AtomicU64,
    dropped: [AtomicU64; ExportDrop::ALL.len()],
    retries: AtomicU64,
}

/// A copy of [`ExportStats`].
#[derive(Debug, Clone, Default)]
pub struct ExportSnapshot {
    /// Records delivered.
    pub exported: u64,
    /// Per [`ExportDrop`].
    pub dropped: Vec<u64>,
    /// Requests retried.
    pub retries: u64,
}

impl ExportStats {
    fn dropped(&self, r: ExportDrop, n: u64) {
        self.dropped[r as usize].fetch_add(n, Relaxed);
    }

    /// Reads the counters.
    pub fn snapshot(&self) -> ExportSnapshot {
        ExportSnapshot {
            exported: self.exported.load(Relaxed),
            dropped: self.dropped.iter().map(|a| a.load(Relaxed)).collect(),
            retries: self.retries.load(Relaxed),
        }
    }
}

// Records arrive boxed from the pipeline; unboxing them would copy each one.
#[allow(clippy::vec_box)]
enum Msg {
    Records(Vec<Box<ValidRecord>>),
    Flush(oneshot::Sender<()>),
}

/// The export, as a [`RequestLog`].
pub struct OtlpLogExport {
    tx: mpsc::Sender<Msg>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    stats: Arc<ExportStats>,
    close_wait: Duration,
}

impl OtlpLogExport {
    /// Starts the export task; fails only when the TLS settings of an `https://` endpoint
    /// cannot be built (its `ca_file`).
    pub fn spawn(cfg: OtlpExportConfig) -> Result<(Self, JoinHandle<()>), crate::tls::TlsError> {
        let tls = match cfg.endpoint.scheme_str() {
            Some("https") => Some(crate::tls::client_config(cfg.ca_file.as_deref())?),
            _ => None,
        };
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.clamp(1, 65_536));
        let queued = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(ExportStats::default());
        let close_wait = cfg.timeout * (cfg.max_retries + 2);
        let capacity = cfg.queue_capacity;
        let task = tokio::spawn(run(cfg, tls, rx, queued.clone(), stats.clone()));
        Ok((
            Self {
                tx,
                queued,
                capacity,
                stats,
                close_wait,
            },
            task,
        ))
    }

    /// The export's counters.
    pub fn stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }
}

impl RequestLog for OtlpLogExport {
    fn name(&self) -> &'static str {
        "otlp_export"
    }

    fn submit(&self, records: Vec<Box<ValidRecord>>) -> Result<(), StoreError> {
        let n = records.len();
        if self.queued.fetch_add(n, Relaxed) + n > self.capacity {
            self.queued.fetch_sub(n, Relaxed);
            self.stats.dropped(ExportDrop::QueueFull, n as u64);
            return Ok(()); // counted here, by the export's own reason
        }
        if self.tx.try_send(Msg::Records(records)).is_err() {
            self.queued.fetch_sub(n, Relaxed);
            self.stats.dropped(ExportDrop::QueueFull, n as u64);
        }
        Ok(())
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let (done, wait) = oneshot::channel();
            if self.tx.send(Msg::Flush(done)).await.is_ok() {
                let _ = tokio::time::timeout(self.close_wait, wait).await;
            }
        })
    }
}

async fn run(
    cfg: OtlpExportConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    mut rx: mpsc::Receiver<Msg>,
    queued: Arc<AtomicUsize>,
    stats: Arc<ExportStats>,
) {
    let mut client = Client::new(cfg.clone(), tls);
    let mut buffer: Vec<Box<ValidRecord>> = Vec::with_capacity(cfg.batch_size);
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Records(r)) => {
                    buffer.extend(r);
                    while buffer.len() >= cfg.batch_size {
                        let rest = buffer.split_off(cfg.batch_size);
                        let batch = std::mem::replace(&mut buffer, rest);
                        client.deliver(batch, &queued, &stats).await;
                    }
                }
                Some(Msg::Flush(done)) => {
                    // Everything submitted before the flush is in the channel before it.
                    while let Ok(Msg::Records(r)) = rx.try_recv() {
                        buffer.extend(r);
                    }
                    while !buffer.is_empty() {
                        let rest = buffer.split_off(cfg.batch_size.min(buffer.len()));
                        let batch = std::mem::replace(&mut buffer, rest);
                        client.deliver(batch, &queued, &stats).await;
                    }
                    let _ = done.send(());
                }
                None => break,
            },
            _ = tick.tick() => {
                if !buffer.is_empty() {
                    client.deliver(std::mem::take(&mut buffer), &queued, &stats).await;
                }
            }
        }
    }
    if !buffer.is_empty() {
        client.deliver(buffer, &queued, &stats).await;
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

enum Attempt {
    Delivered { rejected: u64 },
    Retry(Option<Duration>),
    Refused(StatusCode),
}

struct Client {
    cfg: OtlpExportConfig,
    /// Set for an `https://` endpoint.
    tls: Option<Arc<rustls::ClientConfig>>,
    sender: Option<Sender>,
    host: HeaderValue,
    path: String,
}

impl Client {
    fn new(cfg: OtlpExportConfig, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        let authority = cfg
            .endpoint
            .authority()
            .map_or_else(String::new, |a| a.to_string());
        let host =
            HeaderValue::from_str(&authority).unwrap_or(HeaderValue::from_static("localhost"));
        let path = cfg
            .endpoint
            .path_and_query()
            .map_or_else(|| "/v1/logs".to_string(), |p| p.to_string());
        Self {
            cfg,
            tls,
            sender: None,
            host,
            path,
        }
    }

    #[allow(clippy::vec_box)] // as delivered by the pipeline
    async fn deliver(
        &mut self,
        batch: Vec<Box<ValidRecord>>,
        queued: &AtomicUsize,
        stats: &ExportStats,
    ) {
        let n = batch.len() as u64;
        let raw = encode_batch(&batch).encode_to_vec();
        let (body, gzipped) = match self.cfg.gzip.then(|| gzip(&raw)) {
            Some(Ok(z)) => (z, true),
            // Writing into memory does not fail; were it to, the batch goes uncompressed.
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Could not gzip an OTLP export batch.");
                (raw, false)
            }
            None => (raw, false),
        };
        let body = Bytes::from(body);
        drop(batch);
        queued.fetch_sub(n as usize, Relaxed);
        let mut attempt = 0u32;
        loop {
            // `last_error`: why this attempt failed without an answer (for the give-up message).
            let (outcome, last_error) = match tokio::time::timeout(
                self.cfg.timeout,
                self.post(body.clone(), gzipped),
            )
            .await
            {
                Ok(Ok(a)) => (a, None),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "OTLP log export request failed.");
                    self.sender = None;
                    (Attempt::Retry(None), Some(e))
                }
                Err(_) => {
                    self.sender = None;
                    let e = format!("no answer within {:?}", self.cfg.timeout);
                    (Attempt::Retry(None), Some(e))
                }
            };
            match outcome {
                Attempt::Delivered { rejected } => {
                    let rejected = rejected.min(n);
                    stats.exported.fetch_add(n - rejected, Relaxed);
                    if rejected > 0 {
                        stats.dropped(ExportDrop::Rejected, rejected);
                    }
                    return;
                }
                Attempt::Refused(status) => {
                    tracing::warn!(%status, records = n, "OTLP log export endpoint refused a batch; dropped.");
                    stats.dropped(ExportDrop::Rejected, n);
                    return;
                }
                Attempt::Retry(after) => {
                    if attempt >= self.cfg.max_retries {
                        tracing::error!(
                            records = n,
                            last_error = last_error.as_deref().unwrap_or("a retryable status"),
                            "OTLP log export gave up on a batch after retries."
                        );
                        stats.dropped(ExportDrop::RetriesExhausted, n);
                        return;
                    }
                    attempt += 1;
                    stats.retries.fetch_add(1, Relaxed);
                    let backoff =
                        Duration::from_millis(100u64 << attempt.min(6)).min(Duration::from_secs(5));
                    tokio::time::sleep(after.unwrap_or(backoff).min(Duration::from_secs(60))).await;
                }
            }
        }
    }

    async fn post(&mut self, body: Bytes, gzipped: bool) -> Result<Attempt, String> {
        let sender = match &mut self.sender {
            Some(s) if !s.is_closed() => s,
            _ => {
                // `[::1]` as written in a URL is the address `::1`.
                let host = self
                    .cfg
                    .endpoint
                    .host()
                    .unwrap_or("localhost")
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let default_port = if self.tls.is_some() { 443 } else { 80 };
                let port = self.cfg.endpoint.port_u16().unwrap_or(default_port);
                let stream = tokio::net::TcpStream::connect((host, port))
                    .await
                    .map_err(|e| format!("connect {host}:{port}: {e}"))?;
                let _ = stream.set_nodelay(true);
                let sender = match &self.tls {
                    None => http1(stream).await?,
                    Some(config) => {
                        let name = rustls::pki_types::ServerName::try_from(host.to_string())
                            .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
                        let stream = tokio_rustls::TlsConnector::from(config.clone())
                            .connect(name, stream)
                            .await
                            .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
                        http1(stream).await?
                    }
                };
                self.sender.insert(sender)
            }
        };
        sender.ready().await.map_err(|e| e.to_string())?;
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.path.parse().map_err(|e| format!("path: {e}"))?;
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        if gzipped {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (name, value) in &self.cfg.headers {
            h.insert(name.clone(), value.clone());
        }
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| retry_after(v.to_str().ok()?, std::time::SystemTime::now()));
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(match status.as_u16() {
            200..=299 => Attempt::Delivered {
                rejected: ExportLogsServiceResponse::decode(body)
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map_or(0, |p| p.rejected_log_records.max(0) as u64),
            },
            429 | 502 | 503 | 504 => Attempt::Retry(retry_after),
            _ => Attempt::Refused(status),
        })
    }
}

/// An HTTP/1.1 client connection over `io`, its driver spawned.
async fn http1<I>(io: I) -> Result<Sender, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A `Retry-After` value: delay-seconds, or an HTTP-date (RFC 7231) relative to `now`.
fn retry_after(v: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let at = std::time::SystemTime::from(at);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.to_string())
}

/// Whole milliseconds as an integer, a fraction as a double (exact to the µs in range).
fn millis(v: Millis) -> Value {
    if v.is_whole_ms() {
        i(v.micros() / 1000)
    } else {
        Value::DoubleValue(v.as_ms_f64())
    }
}

fn i(v: u64) -> Value {
    Value::IntValue(v.min(i64::MAX as u64) as i64)
}

/// The export request for a batch.
pub fn encode_batch(records: &[Box<ValidRecord>]) -> ExportLogsServiceRequest {
    let log_records = records.iter().map(|r| log_record(r)).collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("gatemeter")),
                    kv("service.version", s(env!("CARGO_PKG_VERSION"))),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "gatemeter".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One record as an OTLP log record with GenAI semantic-convention names where they exist
/// (`gen_ai.*`, `http.*`, `url.path`, `user.*`, `session.id`) and `gatemeter.*` for the rest:
/// one attribute per field of the record's field table that has an `otlp` name
/// (`attribute`), plus the semantic-convention attributes derived from them.
pub fn log_record(r: &ValidRecord) -> LogRecord {
    let t = &r.tokens;
    let mut a = Vec::with_capacity(FIELDS.len() + 4);
    a.push(kv("event.name", s(GATEMETER_EVENT)));
    a.push(kv("gen_ai.operation.name", s(genai_operation(&r.endpoint))));
    for f in &FIELDS {
        if let (Some(key), Some(value)) = (f.otlp, attribute(r, f.id)) {
            a.push(kv(key, value));
        }
    }
    a.push(kv(
        "gen_ai.usage.cache_creation.input_tokens",
        i(t.cache_write_5m + t.cache_write_1h),
    ));
    if let Some(e) = &r.error {
        a.push(kv("error.type", s(e)));
    }
    let (severity_number, severity_text) = if r.is_success() {
        (9, "INFO")
    } else {
        (17, "ERROR")
    };
    let ns = (r.timestamp_ms.max(0) as u64).saturating_mul(1_000_000);
    LogRecord {
        time_unix_nano: ns,
        observed_time_unix_nano: ns,
        severity_number,
        severity_text: severity_text.to_string(),
        body: Some(AnyValue {
            value: Some(s(GATEMETER_EVENT)),
        }),
        attributes: a,
        event_name: GATEMETER_EVENT.to_string(),
        ..Default::default()
    }
}

/// The OTLP value of field `id` of `r`; `None` leaves the attribute out (an absent optional
/// field, a zero retry count, a non-streaming response, an empty provider chain). Read back by
/// `crate::otlp::gatemeter`.
fn attribute(r: &ValidRecord, id: FieldId) -> Option<Value> {
    let t = &r.tokens;
    let text = |v: &Option<CompactString>| v.as_deref().map(s);
    Some(match id {
        // The log record's time; a column derived from `user_id` and `user`.
        FieldId::Timestamp | FieldId::UserRef => return None,
        FieldId::RequestId => s(r.request_id.as_ref()?.as_str()),
        FieldId::Namespace => s(&r.namespace),
        FieldId::Instance => s(r.instance.as_deref()?),
        FieldId::User => return text(&r.user),
        FieldId::UserId => return text(&r.user_id),
        FieldId::Key => return text(&r.key),
        FieldId::KeyId => return text(&r.key_id),
        FieldId::Provider => s(&r.provider),
        FieldId::Model => s(&r.model),
        // The model asked for: the one used when the gateway did not redirect.
        FieldId::OriginalModel => s(r.original_model.as_deref().unwrap_or(&r.model)),
        FieldId::Endpoint => s(&r.endpoint),
        FieldId::ApiType => s(r.api_type.as_str()),
        FieldId::Method => s(&r.method),
        FieldId::Status => i(u64::from(r.status)),
        FieldId::DurationMs => millis(r.duration_ms),
        FieldId::TtfbMs => millis(r.ttfb_ms?),
        FieldId::InputTokens => i(t.input),
        FieldId::OutputTokens => i(t.output),
        FieldId::CacheWrite5m => i(t.cache_write_5m),
        FieldId::CacheWrite1h => i(t.cache_write_1h),
        FieldId::CacheRead => i(t.cache_read),
        FieldId::Cost => i(r.cost_micros),
        FieldId::CostSource => s(r.cost_source.as_str()),
        FieldId::SessionId => return text(&r.session_id),
        FieldId::RetryCount if r.retry_count == 0 => return None,
        FieldId::RetryCount => i(u64::from(r.retry_count)),
        FieldId::ProviderChain if r.provider_chain.is_empty() => return None,
        FieldId::ProviderChain => {
            Value::StringValue(serde_json::to_string(&r.provider_chain).ok()?)
        }
        FieldId::IsStreaming => r.is_streaming.then_some(Value::BoolValue(true))?,
        FieldId::Error => return text(&r.error),
        FieldId::BlockedBy => return text(&r.blocked_by),
        FieldId::BlockReason => return text(&r.block_reason),
        FieldId::UserAgent => return text(&r.user_agent),
        FieldId::ClientIp => return text(&r.client_ip),
        FieldId::MessagesCount => i(u64::from(r.messages_count?)),
        FieldId::TraceId => return text(&r.trace_id),
        FieldId::SpanId => return text(&r.span_id),
        FieldId::ProviderRequestId => return text(&r.provider_request_id),
        FieldId::CostAmount => return text(&r.cost_amount),
        FieldId::Currency => s(r.currency.as_deref()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 07:27:50 GMT
        assert_eq!(retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(retry_after("soon", now), None);
    }

    /// A record with every field set exports one attribute per field of the table that has an
    /// OTLP name, and only the derived semantic-convention attributes besides.
    #[test]
    fn a_full_record_exports_every_field_of_the_table() {
        let r = crate::record::test_full_record();
        let lr = log_record(&r);
        let mut got: Vec<&str> = lr.attributes.iter().map(|kv| kv.key.as_str()).collect();
        let mut want: Vec<&str> = FIELDS.iter().filter_map(|f| f.otlp).collect();
        want.extend([
            "event.name",
            "gen_ai.operation.name",
            "gen_ai.usage.cache_creation.input_tokens",
            "error.type",
        ]);
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn records_map_to_genai_attributes() {
        let prices = crate::price::PriceTable::default();
        let v = crate::record::Validation {
            now_ms: 1_795_460_000_000,
            prices: &prices,
            keep_requests: None,
        };
        let r = crate::record::RecordFields {
            model: Some("m".into()),
            original_model: Some("asked".into()),
            provider: Some("p".into()),
            status: Some(503),
            duration_ms: Some(10.0),
            input_tokens: Some(3),
            cache_creation_1h_tokens: Some(4),
            cost_usd: Some(0.25),
            ..Default::default()
        }
        .validate(&v)
        .expect("valid");
        let lr = log_record(&r);
        let get = |k: &str| {
            lr.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            get("gen_ai.request.model"),
            Some(Value::StringValue("asked".into()))
        );
        assert_eq!(
            get("gen_ai.response.model"),
            Some(Value::StringValue("m".into()))
        );
        assert_eq!(
            get("gen_ai.provider.name"),
            Some(Value::StringValue("p".into()))
        );
        assert_eq!(get("gen_ai.usage.input_tokens"), Some(Value::IntValue(3)));
        assert_eq!(
            get("gen_ai.usage.cache_creation.input_tokens"),
            Some(Value::IntValue(4))
        );
        assert_eq!(
            get("gatemeter.cost_usd_micros"),
            Some(Value::IntValue(250_000))
        );
        assert_eq!(get("http.response.status_code"), Some(Value::IntValue(503)));
        assert_eq!(lr.event_name, GATEMETER_EVENT);
        assert_eq!(lr.severity_text, "ERROR");
        assert_eq!(lr.time_unix_nano, 1_795_460_000_000 * 1_000_000);
    }
}

/// Export → read-back (`crate::otlp::gatemeter`): both directions of the attribute table.
#[cfg(test)]
mod read_back {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    use super::encode_batch;
    use crate::price::PriceTable;
    use crate::record::{CostSource, Millis, RecordFields, ValidRecord, Validation};

    const NOW: i64 = 1_795_460_000_000;

    /// Exports `sent` and reads it back.
    fn round_trip(sent: &ValidRecord) -> ValidRecord {
        let req = encode_batch(&[Box::new(sent.clone())]);
        let view = crate::otlp::scan::view(&req);
        let rl = &view[0];
        let lr = &rl.records[0];
        assert_eq!(lr.event_name, crate::record::fields::GATEMETER_EVENT);
        let time_ms = Some((lr.time_ns / 1_000_000) as i64);
        let v = Validation {
            now_ms: NOW,
            prices: &PriceTable::default(),
            keep_requests: None,
        };
        *crate::otlp::gatemeter::record(&rl.resource, &lr.attrs, time_ms, &v).expect("read back")
    }

    #[test]
    fn every_field_survives_export_and_read_back() {
        let mut sent = *crate::record::test_full_record();
        assert_eq!(sent.cost_source, CostSource::Reported);
        assert_eq!(round_trip(&sent), sent);
        sent.cost_source = CostSource::Priced;
        sent.cost_micros = 1_234_567;
        assert_eq!(round_trip(&sent), sent);
        // Fractional milliseconds travel as a double, exact to the µs.
        sent.duration_ms = Millis::from_micros(207_501);
        sent.ttfb_ms = Some(Millis::from_micros(1));
        assert_eq!(round_trip(&sent), sent);
        // And so do absent optional fields and defaults.
        let prices = PriceTable::default();
        let v = Validation {
            now_ms: NOW,
            prices: &prices,
            keep_requests: None,
        };
        let minimal = RecordFields {
            model: Some("m".into()),
            status: Some(0),
            duration_ms: Some(0.0),
            ..RecordFields::default()
        }
        .validate(&v)
        .expect("valid");
        assert_eq!(minimal.cost_source, CostSource::Unpriced);
        assert_eq!(round_trip(&minimal), *minimal);
    }

    #[test]
    fn unreadable_attributes_reject_the_record_naming_them() {
        let sent = crate::record::test_full_record();
        let mut req = encode_batch(&[sent]);
        let attrs = &mut req.resource_logs[0].scope_logs[0].log_records[0].attributes;
        for kv in attrs.iter_mut() {
            if kv.key == "gatemeter.provider_chain" {
                kv.value = Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                    value: Some(Value::StringValue("a,b".into())),
                });
            }
        }
        let view = crate::otlp::scan::view(&req);
        let v = Validation {
            now_ms: NOW,
            prices: &PriceTable::default(),
            keep_requests: None,
        };
        let err =
            crate::otlp::gatemeter::record(&view[0].resource, &view[0].records[0].attrs, None, &v)
                .expect_err("refused");
        assert_eq!(err.field, "attributes.gatemeter.provider_chain");
    }
}
