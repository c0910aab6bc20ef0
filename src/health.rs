//! gatemeter's own health counters (per process): lock-free atomics written by the ingest
//! handlers and the pipeline, read by the exporter. Label values are enums, so every series
//! is known up front and exposed even at zero.

pub mod otlp;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::http::StatusCode;

use crate::budget::{Refusal, SeriesBudget};
use crate::record::RejectReason;

label_enum! {
    /// Where records come from (the `source` label).
    pub enum Source {
        /// `POST /v1/events`.
        Native = "native",
        /// OTLP `/v1/logs` (Claude Code events, forwarded gatemeter records).
        Otlp = "otlp",
    }
}

label_enum! {
    /// Why a whole request was refused before its records could be read — by the native API
    /// or the OTLP receiver (the `reason` label of `gatemeter_ingest_rejected_requests` and
    /// `gatemeter_otlp_rejected_requests`). Each receiver gives the reasons that apply to it;
    /// [`RequestReject::status`] is the HTTP status of each.
    pub enum RequestReject {
        /// Body over the limit (before or after decompression).
        BodyTooLarge = "body_too_large",
        /// More records than allowed in one request (native).
        TooManyRecords = "too_many_records",
        /// Content-Type not accepted.
        UnsupportedMediaType = "unsupported_media_type",
        /// Content-Encoding not accepted (not gzip / zstd / identity).
        UnsupportedEncoding = "unsupported_encoding",
        /// The compressed body could not be decompressed.
        BadCompression = "bad_compression",
        /// The body is not JSON / NDJSON at all (native).
        Malformed = "malformed",
        /// Not a valid OTLP message of the signal (truncated, wrong encoding, too deep).
        Undecodable = "undecodable",
        /// Every record in the body was invalid (native).
        NothingValid = "nothing_valid",
        /// The queue was full or the server shutting down.
        Overloaded = "overloaded",
        /// Not POST (OTLP; the native route answers 405 before its handler).
        MethodNotAllowed = "method_not_allowed",
        /// The body could not be read from the connection.
        BodyRead = "body_read",
    }
}

impl RequestReject {
    /// The HTTP status a request refused for this reason is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BodyTooLarge | Self::TooManyRecords => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType | Self::UnsupportedEncoding => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::BadCompression
            | Self::Malformed
            | Self::Undecodable
            | Self::NothingValid
            | Self::BodyRead => StatusCode::BAD_REQUEST,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// How an OTLP refusal counts in the process-wide family (`source="otlp"`): an undecodable
    /// body as `malformed`, a wrong method not at all (as on the native route) — the series that
    /// family has always shown.
    pub fn process_wide(self) -> Option<Self> {
        match self {
            Self::Undecodable => Some(Self::Malformed),
            Self::MethodNotAllowed => None,
            r => Some(r),
        }
    }
}

label_enum! {
    /// Why a valid record was not taken or not passed on.
    pub enum DropReason {
        /// The ingest queue was full (the caller got 503 and may retry).
        QueueFull = "queue_full",
        /// The server was shutting down (the caller got 503).
        ShuttingDown = "shutting_down",
        /// Too many start markers pending: a start was not tracked.
        PendingFull = "pending_full",
        /// The request log's queue was full: counted but not logged.
        LogFull = "log_full",
        /// Latency samples of a time slot that left every window before the live store could take
        /// it (Redis down); they remain in the since-start totals.
        LiveStoreExpired = "live_store_expired",
        /// The request log's database refused a batch (after retries; an outage is retried
        /// without end), or closing found records it could not write: counted but not logged.
        LogWriteFailed = "log_write_failed",
        /// Durable acknowledgement: the spool was at its size cap (the caller got 503).
        SpoolFull = "spool_full",
        /// Durable acknowledgement: the spool could not write or sync (the caller got 503).
        SpoolFailed = "spool_failed",
        /// A probe result that did not reach `probe_results`: the probe writer's queue was full
        /// (the database slow or away), or the database refused it after retries. It is in the
        /// probe metrics.
        ProbeResultsDropped = "probe_results_dropped",
    }
}

const SOURCES: usize = Source::ALL.len();

/// Per-process health counters.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    accepted: [AtomicU64; SOURCES],
    rejected_records: [[AtomicU64; RejectReason::ALL.len()]; SOURCES],
    rejected_requests: [[AtomicU64; RequestReject::ALL.len()]; SOURCES],
    dropped: [AtomicU64; DropReason::ALL.len()],
    duplicates: AtomicU64,
    processed: AtomicU64,
    pending: AtomicU64,
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    tls_handshake_failures: AtomicU64,
    /// Records in the ingest queue (maintained by the pipeline).
    pub(crate) queue_depth: AtomicUsize,
    queue_capacity: usize,
    /// The request log's store (`sqlite`, `postgres`), once opened.
    log_store: OnceLock<&'static str>,
    /// Whether the request log's last attempt reached its database.
    log_store_up: AtomicBool,
    /// The global series budget, shared with everything that creates series.
    series_budget: Arc<SeriesBudget>,
    /// The durable spool's counters (maintained by `spool`).
    pub spool: SpoolCounters,
}

/// The durable spool's counters (all zero unless `durability: spool`).
#[derive(Debug, Default)]
pub struct SpoolCounters {
    /// Bytes in segment files and being written.
    pub bytes: AtomicU64,
    /// Group commits (one write and one `fdatasync` each).
    pub syncs: AtomicU64,
    /// Time spent in those writes and syncs, microseconds.
    pub sync_micros: AtomicU64,
    /// Events spooled and acknowledged.
    pub records: AtomicU64,
    /// Events replayed at start.
    pub replayed: AtomicU64,
}

/// A copy of [`SpoolCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolSnapshot {
    /// See [`SpoolCounters::bytes`].
    pub bytes: u64,
    /// See [`SpoolCounters::syncs`].
    pub syncs: u64,
    /// See [`SpoolCounters::sync_micros`].
    pub sync_micros: u64,
    /// See [`SpoolCounters::records`].
    pub records: u64,
    /// See [`SpoolCounters::replayed`].
    pub replayed: u64,
}

impl Health {
    /// Fresh counters for a queue of `queue_capacity` records.
    pub fn new(queue_capacity: usize) -> Self {
        Self {
            started: Instant::now(),
            accepted: Default::default(),
            rejected_records: Default::default(),
            rejected_requests: Default::default(),
            dropped: Default::default(),
            duplicates: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            queue_depth: AtomicUsize::new(0),
            queue_capacity,
            log_store: OnceLock::new(),
            log_store_up: AtomicBool::new(false),
            series_budget: Arc::new(SeriesBudget::unlimited()),
            spool: SpoolCounters::default(),
        }
    }

    /// With a global series budget of `max_series`.
    pub fn with_series_budget(mut self, max_series: u64) -> Self {
        self.series_budget = Arc::new(SeriesBudget::new(max_series));
        self
    }

    /// The global series budget.
    pub fn series_budget(&self) -> &Arc<SeriesBudget> {
        &self.series_budget
    }

    /// The request log's store was opened: its name and whether its database answered.
    pub(crate) fn set_log_store(&self, name: &'static str, up: bool) {
        let _ = self.log_store.set(name);
        self.set_log_store_up(up);
    }

    /// The request log's store and whether its database answered its last attempt.
    pub fn log_store(&self) -> Option<(&'static str, bool)> {
        self.log_store
            .get()
            .map(|name| (*name, self.log_store_up.load(Relaxed)))
    }

    /// Whether the request log's database answered its last attempt.
    pub(crate) fn set_log_store_up(&self, up: bool) {
        self.log_store_up.store(up, Relaxed);
    }

    /// Counts accepted records.
    pub fn accepted(&self, s: Source, n: u64) {
        self.accepted[s as usize].fetch_add(n, Relaxed);
    }

    /// Counts a rejected record.
    pub fn rejected_record(&self, s: Source, r: RejectReason) {
        self.rejected_records[s as usize][r as usize].fetch_add(1, Relaxed);
    }

    /// Counts a rejected request.
    pub fn rejected_request(&self, s: Source, r: RequestReject) {
        self.rejected_requests[s as usize][r as usize].fetch_add(1, Relaxed);
    }

    /// Counts dropped records.
    pub fn dropped(&self, r: DropReason, n: u64) {
        self.dropped[r as usize].fetch_add(n, Relaxed);
    }

    pub(crate) fn processed(&self, n: u64, duplicates: u64) {
        self.processed.fetch_add(n, Relaxed);
        self.duplicates.fetch_add(duplicates, Relaxed);
    }

    pub(crate) fn set_pending(&self, n: usize) {
        self.pending.store(n as u64, Relaxed);
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }

    /// Counts a connection refused at the connection cap.
    pub(crate) fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    /// Counts a TLS handshake that failed or did not complete in time.
    pub(crate) fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Relaxed);
    }

    /// Reads every counter at once.
    pub fn snapshot(&self) -> HealthSnapshot {
        let load = |a: &AtomicU64| a.load(Relaxed);
        HealthSnapshot {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            accepted: self.accepted.iter().map(load).collect(),
            rejected_records: self
                .rejected_records
                .iter()
                .map(|r| r.iter().map(load).collect())
                .collect(),
            rejected_requests: self
                .rejected_requests
                .iter()
                .map(|r| r.iter().map(load).collect())
                .collect(),
            dropped: self.dropped.iter().map(load).collect(),
            duplicates: load(&self.duplicates),
            processed: load(&self.processed),
            pending: load(&self.pending),
            connections_open: load(&self.connections_open),
            connections_refused: load(&self.connections_refused),
            tls_handshake_failures: load(&self.tls_handshake_failures),
            queue_depth: self.queue_depth.load(Relaxed) as u64,
            queue_capacity: self.queue_capacity as u64,
            log_store: self.log_store(),
            series_limit: self.series_budget.limit(),
            series_refused: Refusal::ALL.map(|r| self.series_budget.refused(r)),
            spool: SpoolSnapshot {
                bytes: load(&self.spool.bytes),
                syncs: load(&self.spool.syncs),
                sync_micros: load(&self.spool.sync_micros),
                records: load(&self.spool.records),
                replayed: load(&self.spool.replayed),
            },
        }
    }
}

/// A copy of the health counters, indexed by the enums' discriminants.
#[derive(Debug, Clone)]
pub struct HealthSnapshot {
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// Per [`Source`].
    pub accepted: Vec<u64>,
    /// Per [`Source`], per [`RejectReason`].
    pub rejected_records: Vec<Vec<u64>>,
    /// Per [`Source`], per [`RequestReject`].
    pub rejected_requests: Vec<Vec<u64>>,
    /// Per [`DropReason`].
    pub dropped: Vec<u64>,
    /// Records ignored as duplicates.
    pub duplicates: u64,
    /// Events applied by the aggregator.
    pub processed: u64,
    /// Start markers pending.
    pub pending: u64,
    /// HTTP connections open.
    pub connections_open: u64,
    /// HTTP connections refused at the connection cap.
    pub connections_refused: u64,
    /// TLS connections closed because their handshake failed or was late.
    pub tls_handshake_failures: u64,
    /// Records queued.
    pub queue_depth: u64,
    /// Queue capacity.
    pub queue_capacity: u64,
    /// The request log's store and whether it is up (none without a SQL log).
    pub log_store: Option<(&'static str, bool)>,
    /// The global series budget's limit.
    pub series_limit: u64,
    /// Label values the budget refused, per [`Refusal`].
    pub series_refused: [u64; Refusal::ALL.len()],
    /// The durable spool's counters (zero when it is off).
    pub spool: SpoolSnapshot,
}
