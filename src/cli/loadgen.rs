//! `gatemeter loadgen`: a load generator for `POST /v1/events` (or OTLP `POST /v1/logs`, in
//! [`otlp`]) that checks the server's totals.
//!
//! It drives [`gatemeter::client`]'s HTTP/1.1 connections, one task per keep-alive connection.
//! Bodies are not serialized per request: a small pool of templates (realistic records from
//! [`super::traffic`]) is built once, and each request copies one and writes a fresh
//! fixed-width counter into every record's `request_id`, so nothing is de-duplicated. Before
//! and after the run [`check`] scrapes `/metrics` and compares the counter deltas with what the
//! server accepted. It assumes it is the only writer while it runs.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::StatusCode;
use rand::Rng;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use gatemeter::client::{
    ClientError, Driver, Sender, Target, events_request, exchange, open, scan_u64,
};

use super::error_chain as chain;
use super::traffic::{Detail, Traffic};

mod check;
mod otlp;

use check::{Expected, scrape, settle_and_check};

/// What loadgen sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Native JSON records to `POST /v1/events`.
    #[default]
    Json,
    /// Claude Code `api_request` events as OTLP/HTTP protobuf to `POST /v1/logs`.
    Otlp,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "otlp" => Ok(Self::Otlp),
            _ => Err(format!("format {s:?} is not \"json\" or \"otlp\"")),
        }
    }
}

/// How fast records are offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// Every connection sends its next request as soon as the previous one is answered.
    Max,
    /// Records per second, paced open-loop on a fixed schedule shared by all connections.
    PerSecond(u64),
}

impl FromStr for Rate {
    type Err = LoadgenError;

    /// `max`, or a whole number of records per second greater than 0 (`_` separators allowed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        let digits: String = t.chars().filter(|&c| c != '_').collect();
        match digits.parse::<u64>() {
            Ok(n) if n > 0 && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Rate::PerSecond(n))
            }
            _ => Err(LoadgenError::InvalidRate(s.to_string())),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::PerSecond(n) => write!(f, "{n} records/s"),
        }
    }
}

/// How `gatemeter loadgen` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReportFormat {
    /// Aligned `name: value` lines (scripts/bench*.sh grep `throughput:` and `latency p99:`).
    #[default]
    Text,
    /// One JSON object (`Report::to_json`), for tests and tools.
    Json,
}

/// `gatemeter loadgen`: runs and prints the report; a counter mismatch is an error.
pub async fn run_command(args: super::Loadgen) -> anyhow::Result<()> {
    let run_args = LoadgenArgs {
        target: args.target,
        rate: args.rate,
        batch: args.batch,
        duration: Duration::from_secs(args.duration),
        connections: args.connections,
        format: args.format,
    };
    let report = run(&run_args).await?;
    match args.report {
        ReportFormat::Text => println!("{report}"),
        ReportFormat::Json => println!("{}", report.to_json()),
    }
    Ok(())
}

/// What to send, where, and for how long.
#[derive(Debug, Clone)]
pub struct LoadgenArgs {
    /// Base URL of the server: `http://host:port`.
    pub target: String,
    /// Offered rate.
    pub rate: Rate,
    /// Records per request: 1 sends single JSON objects, more sends JSON arrays.
    pub batch: usize,
    /// How long to send for.
    pub duration: Duration,
    /// Concurrent keep-alive HTTP/1.1 connections.
    pub connections: usize,
    /// Native JSON or OTLP protobuf.
    pub format: Format,
}

/// Why a load run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The rate is neither `max` nor a positive integer.
    #[error("rate {0:?} is not \"max\" or a whole number of records per second greater than 0")]
    InvalidRate(String),
    /// The target is not usable, a connection could not be made or an exchange failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Batch size, connection count or duration is out of range.
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),
    /// `/metrics` could not be read or is not gatemeter's.
    #[error("cannot read {target}/metrics: {reason}")]
    Metrics {
        /// The target.
        target: String,
        /// What went wrong.
        reason: String,
    },
    /// A connection task failed.
    #[error("a connection task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The server's counters do not match what it accepted; the report says where.
    #[error("the server's counters differ from what it accepted:\n{0}")]
    Mismatch(Box<Report>),
}

/// Outcome of comparing the server's counter deltas with what it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterCheck {
    /// Requests, tokens by type, cost and duplicates all match exactly.
    Exact,
    /// These counters differ (one line each).
    Mismatch(Vec<String>),
    /// Some requests have an unknown outcome (no answer), so the totals cannot be checked exactly.
    Inconclusive(String),
}

impl fmt::Display for CounterCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CounterCheck::Exact => f.write_str("exact"),
            CounterCheck::Mismatch(lines) => {
                f.write_str("MISMATCH")?;
                for l in lines {
                    write!(f, "\n  - {l}")?;
                }
                Ok(())
            }
            CounterCheck::Inconclusive(why) => write!(f, "inconclusive: {why}"),
        }
    }
}

/// What a load run did and measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The offered rate.
    pub rate: Rate,
    /// Records per request.
    pub batch: usize,
    /// Connections used.
    pub connections: usize,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// Requests sent.
    pub requests: u64,
    /// Records in the requests sent.
    pub records_sent: u64,
    /// Records the server accepted (sum of `accepted`).
    pub records_accepted: u64,
    /// Records the server refused (sum of `rejected`).
    pub records_rejected: u64,
    /// Requests answered 503 or 429 (nothing taken; not retried).
    pub overloaded: u64,
    /// Requests answered with another error status, or not answered at all.
    pub errors: u64,
    /// Requests that got an answer (any status).
    pub answered: u64,
    /// Paced runs only: scheduled requests that could not be sent in time.
    pub missed: u64,
    /// Median request latency (paced runs behind schedule: measured from the scheduled send time).
    pub latency_p50: Duration,
    /// 99th percentile request latency.
    pub latency_p99: Duration,
    /// Highest request latency.
    pub latency_max: Duration,
    /// The first unexpected answer or failure, for diagnosis.
    pub first_error: Option<String>,
    /// The counter check.
    pub counters: CounterCheck,
}

impl Report {
    /// Accepted records per second.
    pub fn records_per_second(&self) -> f64 {
        per_second(self.records_accepted, self.elapsed)
    }

    /// Answered requests per second.
    pub fn requests_per_second(&self) -> f64 {
        per_second(self.answered, self.elapsed)
    }

    /// The report as one JSON object: the counts as integers, durations in milliseconds, and
    /// `counters` as `"exact"`, `"mismatch"` or `"inconclusive"` (details in `counter_details`).
    pub fn to_json(&self) -> serde_json::Value {
        let (counters, details) = match &self.counters {
            CounterCheck::Exact => ("exact", Vec::new()),
            CounterCheck::Mismatch(lines) => ("mismatch", lines.clone()),
            CounterCheck::Inconclusive(why) => ("inconclusive", vec![why.clone()]),
        };
        serde_json::json!({
            "rate": self.rate.to_string(),
            "batch": self.batch,
            "connections": self.connections,
            "duration_ms": ms(self.elapsed),
            "requests_sent": self.requests,
            "records_sent": self.records_sent,
            "records_accepted": self.records_accepted,
            "records_rejected": self.records_rejected,
            "overloaded": self.overloaded,
            "errors": self.errors,
            "missed": self.missed,
            "records_per_second": self.records_per_second(),
            "requests_per_second": self.requests_per_second(),
            "latency_p50_ms": ms(self.latency_p50),
            "latency_p99_ms": ms(self.latency_p99),
            "latency_max_ms": ms(self.latency_max),
            "first_error": self.first_error,
            "counters": counters,
            "counter_details": details,
        })
    }
}

fn per_second(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rate:               {}", self.rate)?;
        writeln!(f, "batch:              {} records/request", self.batch)?;
        writeln!(f, "connections:        {}", self.connections)?;
        writeln!(f, "duration:           {:.2} s", self.elapsed.as_secs_f64())?;
        writeln!(f, "requests sent:      {}", self.requests)?;
        writeln!(f, "records sent:       {}", self.records_sent)?;
        writeln!(f, "records accepted:   {}", self.records_accepted)?;
        writeln!(f, "records rejected:   {}", self.records_rejected)?;
        writeln!(f, "overloaded (503/429): {}", self.overloaded)?;
        writeln!(f, "errors:             {}", self.errors)?;
        if self.missed > 0 {
            writeln!(f, "missed (behind schedule): {}", self.missed)?;
        }
        writeln!(
            f,
            "throughput:         {:.0} records/s",
            self.records_per_second()
        )?;
        writeln!(
            f,
            "request rate:       {:.0} requests/s",
            self.requests_per_second()
        )?;
        writeln!(f, "latency p50:        {:.3} ms", ms(self.latency_p50))?;
        writeln!(f, "latency p99:        {:.3} ms", ms(self.latency_p99))?;
        writeln!(f, "latency max:        {:.3} ms", ms(self.latency_max))?;
        if let Some(e) = &self.first_error {
            writeln!(f, "first error:        {e}")?;
        }
        write!(f, "counters:           {}", self.counters)
    }
}

// ---------------------------------------------------------------------------------------------
// Body templates.
// ---------------------------------------------------------------------------------------------

/// Digits of the per-record counter in `request_id`.
const ID_DIGITS: usize = 12;
/// Upper bound on records held by the whole template pool.
const POOL_RECORDS: usize = 8192;
/// Most templates in the pool.
const POOL_TEMPLATES: usize = 64;

/// One request body with placeholders for the record counters.
#[derive(Debug)]
struct Template {
    body: Vec<u8>,
    /// Byte offset of each record's counter digits.
    id_offsets: Vec<usize>,
    /// Tokens in the order of [`gatemeter::record::TOKEN_TYPES`].
    tokens: [u64; 5],
    cost_micros: u64,
}

impl Template {
    /// A copy of the body with the counters `first`, `first + 1`, ... written in.
    fn render(&self, first: u64) -> Bytes {
        let mut buf = self.body.clone();
        for (i, &at) in self.id_offsets.iter().enumerate() {
            write_digits(&mut buf[at..at + ID_DIGITS], first + i as u64);
        }
        Bytes::from(buf)
    }
}

/// Writes `n` in decimal, right-aligned and zero-padded (keeps the low digits if it is too wide).
fn write_digits(slot: &mut [u8], mut n: u64) {
    for b in slot.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The template pool of a run.
#[derive(Debug)]
struct Pool {
    templates: Vec<Template>,
}

impl Pool {
    fn build(batch: usize, run_id: u32) -> Self {
        let count = (POOL_RECORDS / batch.max(1)).clamp(1, POOL_TEMPLATES);
        let mut traffic = Traffic::new(u64::from(run_id), "lg", Detail::Lean, 1.0);
        let prefix = format!("{{\"request_id\":\"lg-{run_id:08x}-");
        let templates = (0..count)
            .map(|_| {
                let mut t = Template {
                    body: Vec::new(),
                    id_offsets: Vec::with_capacity(batch),
                    tokens: [0; 5],
                    cost_micros: 0,
                };
                if batch > 1 {
                    t.body.push(b'[');
                }
                for i in 0..batch {
                    if i > 0 {
                        t.body.push(b',');
                    }
                    let mut r = traffic.next_request().record;
                    r.fields.remove("request_id");
                    let rest = serde_json::Value::Object(r.fields).to_string();
                    t.body.extend_from_slice(prefix.as_bytes());
                    t.id_offsets.push(t.body.len());
                    t.body.extend_from_slice(&[b'0'; ID_DIGITS]);
                    t.body.extend_from_slice(b"\",");
                    // `rest` is a non-empty object: drop its opening brace.
                    t.body.extend_from_slice(&rest.as_bytes()[1..]);
                    for (sum, n) in t.tokens.iter_mut().zip(r.tokens) {
                        *sum += n;
                    }
                    t.cost_micros += r.cost_micros.unwrap_or(0);
                }
                if batch > 1 {
                    t.body.push(b']');
                }
                t
            })
            .collect();
        Self { templates }
    }
}

// ---------------------------------------------------------------------------------------------
// The run.
// ---------------------------------------------------------------------------------------------

/// How long to wait for answers after the run's end before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most latency recorded, microseconds (one hour).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// What every connection task shares.
struct Ctx {
    target: Target,
    format: Format,
    pool: Pool,
    batch: u64,
    next_id: AtomicU64,
    /// Paced runs: the next slot of the schedule.
    next_slot: AtomicU64,
    /// Paced runs: the schedule.
    pace: Option<Pace>,
    start: Instant,
    end: Instant,
}

/// A fixed schedule: slot `k` is due at `start + k * batch / rate` seconds.
#[derive(Debug, Clone, Copy)]
struct Pace {
    batch: u64,
    rate: u64,
}

impl Pace {
    fn offset(&self, slot: u64) -> Duration {
        let nanos =
            u128::from(slot) * u128::from(self.batch) * 1_000_000_000 / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Slots due before `d` has passed.
    fn slots_within(&self, d: Duration) -> u64 {
        let n = d.as_nanos() * u128::from(self.rate);
        let per = u128::from(self.batch) * 1_000_000_000;
        u64::try_from(n.div_ceil(per)).unwrap_or(u64::MAX)
    }
}

/// One connection's tallies.
struct ConnStats {
    requests: u64,
    records_sent: u64,
    accepted: u64,
    rejected: u64,
    overloaded: u64,
    errors: u64,
    answered: u64,
    /// Requests accepted only in part (their token and cost totals are unknown).
    partial: u64,
    /// Records of requests whose outcome is unknown (no answer).
    unknown_records: u64,
    /// Records of the request in flight, if any.
    in_flight: u64,
    tokens: [u64; 5],
    cost_micros: u64,
    latency: Histogram<u64>,
    first_error: Option<String>,
    warned: bool,
}

impl ConnStats {
    fn new() -> Self {
        Self {
            requests: 0,
            records_sent: 0,
            accepted: 0,
            rejected: 0,
            overloaded: 0,
            errors: 0,
            answered: 0,
            partial: 0,
            unknown_records: 0,
            in_flight: 0,
            tokens: [0; 5],
            cost_micros: 0,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant histogram bounds are valid"),
            first_error: None,
            warned: false,
        }
    }

    fn note_error(&mut self, what: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }

    fn merge(&mut self, o: ConnStats) {
        self.requests += o.requests;
        self.records_sent += o.records_sent;
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        self.overloaded += o.overloaded;
        self.errors += o.errors;
        self.answered += o.answered;
        self.partial += o.partial;
        self.unknown_records += o.unknown_records;
        for (a, b) in self.tokens.iter_mut().zip(o.tokens) {
            *a += b;
        }
        self.cost_micros += o.cost_micros;
        if let Err(e) = self.latency.add(&o.latency) {
            debug!(error = %e, "Latency histograms could not be merged.");
        }
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// Runs the load, then checks the server's counters against what it accepted.
///
/// Returns [`LoadgenError::Mismatch`] (with the full report) when the counters differ.
pub async fn run(args: &LoadgenArgs) -> Result<Report, LoadgenError> {
    if args.batch == 0 {
        return Err(LoadgenError::InvalidArgs("batch must be at least 1".into()));
    }
    if args.connections == 0 {
        return Err(LoadgenError::InvalidArgs(
            "connections must be at least 1".into(),
        ));
    }
    if args.duration.is_zero() {
        return Err(LoadgenError::InvalidArgs(
            "duration must be longer than 0".into(),
        ));
    }
    let target = Target::resolve(&args.target).await?;
    let before = scrape(&target).await?;

    let run_id: u32 = rand::rng().random();
    let pool = match args.format {
        Format::Json => Pool::build(args.batch, run_id),
        Format::Otlp => Pool {
            templates: otlp::pool(args.batch, run_id),
        },
    };
    debug!(
        templates = pool.templates.len(),
        body_bytes = pool.templates.first().map_or(0, |t| t.body.len()),
        "Templates built."
    );

    let mut opened = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        opened.push(open(target.addr).await?);
    }
    let pace = match args.rate {
        Rate::Max => None,
        Rate::PerSecond(rate) => Some(Pace {
            batch: args.batch as u64,
            rate,
        }),
    };
    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        target: target.clone(),
        format: args.format,
        pool,
        batch: args.batch as u64,
        next_id: AtomicU64::new(0),
        next_slot: AtomicU64::new(0),
        pace,
        start,
        end: start + args.duration,
    });
    info!(target = %target.base, run = format!("{run_id:08x}"), rate = %args.rate, batch = args.batch, connections = args.connections, duration = ?args.duration, "Load run started.");

    let tasks: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(i, o)| tokio::spawn(connection(i, o, ctx.clone())))
        .collect();
    let mut total = ConnStats::new();
    for t in tasks {
        total.merge(t.await?);
    }
    let elapsed = start.elapsed();
    let missed = pace.map_or(0, |p| {
        p.slots_within(args.duration).saturating_sub(total.requests)
    });

    let expected = Expected {
        requests: total.accepted,
        tokens: total.tokens,
        cost_micros: total.cost_micros,
        partial: total.partial,
        unknown_records: total.unknown_records,
    };
    let counters = settle_and_check(&target, &before, &expected).await?;
    let q = |q: f64| Duration::from_micros(total.latency.value_at_quantile(q));
    let report = Report {
        rate: args.rate,
        batch: args.batch,
        connections: args.connections,
        elapsed,
        requests: total.requests,
        records_sent: total.records_sent,
        records_accepted: total.accepted,
        records_rejected: total.rejected,
        overloaded: total.overloaded,
        errors: total.errors,
        answered: total.answered,
        missed,
        latency_p50: q(0.5),
        latency_p99: q(0.99),
        latency_max: Duration::from_micros(total.latency.max()),
        first_error: total.first_error,
        counters,
    };
    info!(records_per_second = report.records_per_second() as u64, counters = %report.counters, "Load run finished.");
    if matches!(report.counters, CounterCheck::Mismatch(_)) {
        return Err(LoadgenError::Mismatch(Box::new(report)));
    }
    Ok(report)
}

/// One connection's task: sends until the end, then returns its tallies.
async fn connection(index: usize, opened: (Sender, Driver), ctx: Arc<Ctx>) -> ConnStats {
    let mut stats = ConnStats::new();
    let finished = tokio::time::timeout_at(
        ctx.end + DRAIN_TIMEOUT,
        send_loop(index, opened, &ctx, &mut stats),
    )
    .await;
    if finished.is_err() && stats.in_flight > 0 {
        stats.errors += 1;
        stats.unknown_records += stats.in_flight;
        stats.note_error(|| format!("no answer within {DRAIN_TIMEOUT:?} after the end of the run"));
    }
    stats
}

/// How a connection's session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    /// The run is over.
    Done,
    /// The connection broke: open another.
    Broken,
}

/// Sessions of one connection: reconnects after a failure until the run is over.
async fn send_loop(index: usize, opened: (Sender, Driver), ctx: &Ctx, stats: &mut ConnStats) {
    let mut next = Some(opened);
    let mut template = index.wrapping_mul(7);
    loop {
        let (sender, driver) = match next.take() {
            Some(o) => o,
            None => match open(ctx.target.addr).await {
                Ok(o) => o,
                Err(e) => {
                    // Nothing was sent: count the failure and try again shortly.
                    stats.errors += 1;
                    let text = chain(&e);
                    warn_once(stats, index, &text);
                    stats.note_error(|| text);
                    if Instant::now() >= ctx.end {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // The driver is polled in this task too: no cross-task wake-up per request.
        let (driven, end) = tokio::join!(driver, session(index, sender, ctx, stats, &mut template));
        if let Err(e) = driven {
            debug!(connection = index, error = %chain(&e), "Load connection ended with an error.");
        }
        if end == SessionEnd::Done {
            return;
        }
    }
}

/// Sends on one connection until the run is over or the connection breaks; dropping the
/// sender on return lets the driver finish.
async fn session(
    index: usize,
    mut sender: Sender,
    ctx: &Ctx,
    stats: &mut ConnStats,
    template: &mut usize,
) -> SessionEnd {
    let pool = &ctx.pool.templates;
    loop {
        // When is this request due?
        let origin = match ctx.pace {
            None => {
                if Instant::now() >= ctx.end {
                    return SessionEnd::Done;
                }
                None
            }
            Some(pace) => {
                let slot = ctx.next_slot.fetch_add(1, Ordering::Relaxed);
                let due = ctx.start + pace.offset(slot);
                if due >= ctx.end || Instant::now() >= ctx.end {
                    return SessionEnd::Done;
                }
                if due > Instant::now() {
                    // On time: the timer's own lag (up to a millisecond) is not the server's.
                    tokio::time::sleep_until(due).await;
                    None
                } else {
                    // Behind schedule (the connection was busy): count the wait against the server.
                    Some(due)
                }
            }
        };

        let t = &pool[*template % pool.len()];
        *template = template.wrapping_add(1);
        let first = ctx.next_id.fetch_add(ctx.batch, Ordering::Relaxed);
        let req = match ctx.format {
            Format::Json => events_request(&ctx.target.host, "application/json", t.render(first)),
            Format::Otlp => otlp::logs_request(&ctx.target.host, t.render(first)),
        };
        let sent_at = Instant::now();
        let origin = origin.unwrap_or(sent_at);
        stats.requests += 1;
        stats.records_sent += ctx.batch;
        stats.in_flight = ctx.batch;
        let result = exchange(&mut sender, req).await;
        stats.in_flight = 0;
        match result {
            Ok((status, body)) => {
                stats.answered += 1;
                let us = u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX);
                stats.latency.saturating_record(us.clamp(1, MAX_LATENCY_US));
                match ctx.format {
                    Format::Json => tally(stats, status, &body, t, ctx.batch),
                    Format::Otlp => otlp::tally(stats, status, &body, t, ctx.batch),
                }
            }
            Err(e) => {
                stats.errors += 1;
                stats.unknown_records += ctx.batch;
                let text = chain(&e);
                warn_once(stats, index, &text);
                stats.note_error(|| format!("request failed: {text}"));
                return SessionEnd::Broken;
            }
        }
    }
}

fn warn_once(stats: &mut ConnStats, index: usize, error: &str) {
    if stats.warned {
        debug!(connection = index, error, "Load connection failed again.");
    } else {
        stats.warned = true;
        warn!(
            connection = index,
            error, "Load connection failed; reconnecting (further failures are logged at debug)."
        );
    }
}

/// Books one answer.
fn tally(stats: &mut ConnStats, status: StatusCode, body: &[u8], t: &Template, batch: u64) {
    let text = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    match status {
        StatusCode::OK => match scan_u64(body, b"\"accepted\"") {
            Some(accepted) => {
                let rejected = scan_u64(body, b"\"rejected\"").unwrap_or(0);
                stats.accepted += accepted;
                stats.rejected += rejected;
                if accepted == batch {
                    for (sum, n) in stats.tokens.iter_mut().zip(t.tokens) {
                        *sum += n;
                    }
                    stats.cost_micros += t.cost_micros;
                } else {
                    stats.partial += 1;
                    stats.note_error(|| {
                        format!(
                            "HTTP 200 with only {accepted} of {batch} records accepted: {}",
                            text()
                        )
                    });
                }
            }
            None => {
                stats.errors += 1;
                stats.unknown_records += batch;
                stats.note_error(|| format!("HTTP 200 without an \"accepted\" count: {}", text()));
            }
        },
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => stats.overloaded += 1,
        _ => {
            stats.errors += 1;
            stats.rejected += scan_u64(body, b"\"rejected\"").unwrap_or(0);
            stats.note_error(|| format!("HTTP {}: {}", status.as_u16(), text()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use gatemeter::price::PriceTable;
    use gatemeter::record::{Event, Validation, parse_event};

    fn ids_and_records(batch: usize) -> (Vec<String>, usize) {
        let pool = Pool::build(batch, 0xdead_beef);
        let prices = PriceTable::default();
        let v = Validation {
            now_ms: 1_760_000_000_000,
            prices: &prices,
            keep_requests: None,
        };
        let mut ids = Vec::new();
        let mut first = 999_999_999_990u64;
        for t in pool.templates.iter().take(3) {
            for _ in 0..2 {
                let body = t.render(first);
                first += batch as u64;
                let value: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
                let records = match value {
                    serde_json::Value::Array(a) => a,
                    o @ serde_json::Value::Object(_) => vec![o],
                    other => panic!("{other}"),
                };
                assert_eq!(records.len(), batch);
                let mut tokens = [0u64; 5];
                let mut cost = 0;
                for r in &records {
                    let json = r.to_string();
                    let rec = match parse_event(&json, &v) {
                        Ok(Event::Finish(rec)) => rec,
                        other => panic!("{json}: {other:?}"),
                    };
                    for (s, n) in tokens.iter_mut().zip(rec.tokens.as_array()) {
                        *s += n;
                    }
                    assert_eq!(
                        rec.cost_source,
                        gatemeter::record::CostSource::Reported,
                        "{json}"
                    );
                    cost += rec.cost_micros;
                    ids.push(rec.request_id.expect("has an id").as_str().to_string());
                }
                assert_eq!(tokens, t.tokens);
                assert_eq!(cost, t.cost_micros);
            }
        }
        (ids, pool.templates.len())
    }

    #[test]
    fn single_record_templates_patch_unique_ids() {
        let (ids, templates) = ids_and_records(1);
        assert_eq!(templates, POOL_TEMPLATES);
        assert_eq!(ids.len(), 6);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
        assert_eq!(ids[0], "lg-deadbeef-999999999990");
        assert_eq!(ids[1], "lg-deadbeef-999999999991");
    }

    #[test]
    fn batch_templates_patch_unique_ids() {
        let (ids, templates) = ids_and_records(100);
        assert!(templates > 1);
        assert_eq!(ids.len(), 600);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
        assert!(
            ids.iter()
                .all(|id| id.len() == "lg-deadbeef-".len() + ID_DIGITS),
            "{ids:?}"
        );
    }

    #[test]
    fn rate_from_str() {
        assert_eq!("max".parse::<Rate>().ok(), Some(Rate::Max));
        assert_eq!(" MAX ".parse::<Rate>().ok(), Some(Rate::Max));
        assert_eq!("50000".parse::<Rate>().ok(), Some(Rate::PerSecond(50_000)));
        assert_eq!(
            "1_000_000".parse::<Rate>().ok(),
            Some(Rate::PerSecond(1_000_000))
        );
        for bad in ["0", "-5", "", "1.5", "fast", "+3", "_"] {
            assert!(
                matches!(bad.parse::<Rate>(), Err(LoadgenError::InvalidRate(_))),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn unreachable_target_fails_before_sending() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let args = LoadgenArgs {
            target: format!("http://{addr}"),
            rate: Rate::Max,
            batch: 1,
            duration: Duration::from_secs(1),
            connections: 1,
            format: Format::Json,
        };
        assert!(matches!(
            run(&args).await,
            Err(LoadgenError::Client(ClientError::Connect { .. }))
        ));
        let zero = LoadgenArgs { batch: 0, ..args };
        assert!(matches!(
            run(&zero).await,
            Err(LoadgenError::InvalidArgs(_))
        ));
    }

    #[test]
    fn pace_schedule() {
        let p = Pace {
            batch: 100,
            rate: 1_000_000,
        };
        assert_eq!(p.offset(1), Duration::from_micros(100));
        assert_eq!(p.slots_within(Duration::from_secs(1)), 10_000);
        let p = Pace { batch: 1, rate: 3 };
        assert_eq!(p.slots_within(Duration::from_secs(1)), 3);
        assert_eq!(p.offset(3), Duration::from_secs(1));
    }
}
