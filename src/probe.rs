//! Active provider probes (SPEC §3.3): configured endpoints checked on an interval — HTTP(S)
//! `GET`/`HEAD` with expected status codes, or a TCP connect — each result stored
//! (`probe_results`, or the in-memory ring without a log store) and counted (`/metrics`).
//!
//! - One task per probe, so one run in flight per probe; probes naming the same target also
//!   share a lock, so one run in flight per target.
//! - Schedule: slots of `interval` aligned to the epoch (so replicas agree on them); a probe runs
//!   at its own offset in the slot (from its name: probes spread over the interval) plus a
//!   random jitter of up to a tenth of the interval (replicas do not race in step). The first
//!   run is at start, in the slot under way.
//! - Fleet: with a shared Redis a run needs the slot's lease (`store::redis::lease`), so each
//!   probe runs once per interval across the replicas; a replica that did not run a slot takes
//!   the fleet's last result for `gatemeter_probe_up`. Redis unreachable: every replica runs
//!   (probing too often beats not probing).
//! - Results never wait on the database: they go to a bounded queue that one writer task
//!   empties into `probe_results`; a full queue or a refused batch is counted
//!   (`probe_results_dropped`).
//! - Error texts are scrubbed (`record::scrub`) and any configured header value is cut out, so
//!   no secret reaches the table, the log or the export.

pub mod check;
pub mod render;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::budget::{Cost, Grant};
use crate::catalog;
use crate::clock::now_ms;
use crate::health::{DropReason, Health};
use crate::store::redis::lease::ProbeLeases;
use crate::store::sql::SqlLog;
pub use crate::store::sql::probe::{ProbeLogFilter, ProbeOutcome, ProbeResult};

/// Most probes in one configuration (their series are fixed: see `catalog::PROBE_UP`).
pub const MAX_PROBES: usize = 50;

/// Results kept in memory per process, newest last: the probe log when there is no log store.
pub const RING_CAPACITY: usize = 10_000;

/// Results waiting for the writer at most.
const WRITER_QUEUE: usize = 1024;

/// A configured header value: a secret, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// The HTTP method of an HTTP probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET` (the answer's head is read, its body not).
    Get,
    /// `HEAD`.
    Head,
}

/// What a probe checks (`Debug` shows the URL without credentials).
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// An `http://` or `https://` URL.
    Http {
        /// The URL (scheme, host, optional port, path and query).
        url: hyper::Uri,
        /// `GET` or `HEAD`.
        method: Method,
        /// Statuses that count as up; empty: any 2xx or 3xx.
        expect_status: Vec<u16>,
        /// Headers sent (values from the environment, never printed).
        headers: Vec<(String, Secret)>,
        /// A PEM file of certificates trusted besides the system's roots (`https` only).
        ca_file: Option<PathBuf>,
    },
    /// `tcp://host:port`: up when a connection is accepted.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http {
                url,
                method,
                expect_status,
                headers,
                ca_file,
            } => f
                .debug_struct("Http")
                .field("url", &crate::record::scrub::redact_url(&url.to_string()))
                .field("method", method)
                .field("expect_status", expect_status)
                .field("headers", headers)
                .field("ca_file", ca_file)
                .finish(),
            Self::Tcp { host, port } => f
                .debug_struct("Tcp")
                .field("host", host)
                .field("port", port)
                .finish(),
        }
    }
}

impl Target {
    /// A key naming the endpoint (probes with the same key take turns).
    fn endpoint(&self) -> String {
        match self {
            Target::Http { url, .. } => format!(
                "{}://{}",
                url.scheme_str().unwrap_or("http"),
                url.authority().map_or("", |a| a.as_str())
            ),
            Target::Tcp { host, port } => format!("tcp://{host}:{port}"),
        }
    }
}

/// One probe's settings (`probes:` entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Unique name (the `probe` label).
    pub name: String,
    /// The provider it checks (the `provider` label; matched to request-based availability).
    pub provider: String,
    /// What is checked.
    pub target: Target,
    /// Time between runs.
    pub interval: Duration,
    /// Longest run; beyond it the run is a `timeout`.
    pub timeout: Duration,
}

/// One probe's counters (atomics: runs record, scrapes read, no lock).
struct Stats {
    name: String,
    provider: String,
    /// What the series budget granted this probe's series: all, counters only (no histogram),
    /// or nothing (the probe runs and is stored, but has no series).
    grant: Grant,
    /// 1 up, 0 down, -1 no run yet.
    up: AtomicI8,
    /// `ts_ms` of the result `up` shows.
    up_at: AtomicU64,
    outcomes: [AtomicU64; ProbeOutcome::ALL.len()],
    /// Runs per bucket of `catalog::PROBE_BUCKETS` (not cumulative), the last one past them.
    buckets: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

/// What `/metrics` renders of one probe.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSnapshot {
    /// The series budget's grant: `Counters` renders no histogram, `Folded` nothing.
    pub grant: Grant,
    /// Name.
    pub name: String,
    /// Provider.
    pub provider: String,
    /// `Some(true)` up, `Some(false)` down, `None` before the first result.
    pub up: Option<bool>,
    /// Runs by outcome, indexed like `ProbeOutcome::ALL`.
    pub outcomes: Vec<u64>,
    /// Cumulative runs at or below each bound of `catalog::PROBE_BUCKETS`.
    pub cumulative: Vec<u64>,
    /// Runs.
    pub count: u64,
    /// Total duration, seconds.
    pub sum_seconds: f64,
}

/// The probes of this process: their counters, the writer's queue or (without a log store) the
/// recent results.
pub struct Probes {
    stats: Vec<Stats>,
    /// Recent results, newest last (a short synchronous lock: one push or one copy).
    ring: Mutex<VecDeque<ProbeResult>>,
    sink: Option<mpsc::Sender<ProbeResult>>,
    health: Arc<Health>,
}

impl Probes {
    /// No probes (nothing configured).
    pub fn none(health: Arc<Health>) -> Arc<Self> {
        Arc::new(Self {
            stats: Vec::new(),
            ring: Mutex::new(VecDeque::new()),
            sink: None,
            health,
        })
    }

    /// Starts one task per probe and, with a log, the results writer. Returns the handle and
    /// the probe tasks (abort them to stop probing; the writer ends when they are gone).
    pub fn spawn(
        configs: &[ProbeConfig],
        log: Option<SqlLog>,
        leases: Option<ProbeLeases>,
        health: Arc<Health>,
    ) -> (Arc<Self>, Vec<JoinHandle<()>>) {
        let mut tasks = Vec::new();
        let sink = match (&log, configs.is_empty()) {
            (Some(log), false) => {
                let (tx, rx) = mpsc::channel(WRITER_QUEUE);
                tasks.push(tokio::spawn(write_results(log.clone(), rx, health.clone())));
                Some(tx)
            }
            _ => None,
        };
        let probes = Arc::new(Self {
            stats: configs
                .iter()
                .map(|c| Stats {
                    name: c.name.clone(),
                    provider: c.provider.clone(),
                    // Asked once, at start, like every new label value: `up` and the outcomes
                    // are counters, the histogram's buckets, sum and count histogram detail.
                    grant: health.series_budget().grant(Cost {
                        counters: 1 + ProbeOutcome::ALL.len() as u64,
                        histograms: catalog::PROBE_BUCKETS.len() as u64 + 3,
                    }),
                    up: AtomicI8::new(-1),
                    up_at: AtomicU64::new(0),
                    outcomes: Default::default(),
                    buckets: (0..=catalog::PROBE_BUCKETS.len())
                        .map(|_| AtomicU64::new(0))
                        .collect(),
                    sum_us: AtomicU64::new(0),
                })
                .collect(),
            ring: Mutex::new(VecDeque::new()),
            sink,
            health,
        });
        let mut locks: HashMap<String, Arc<tokio::sync::Mutex<()>>> = HashMap::new();
        for (i, cfg) in configs.iter().enumerate() {
            let lock = locks.entry(cfg.target.endpoint()).or_default().clone();
            let tls = match &cfg.target {
                Target::Http { url, ca_file, .. } if url.scheme_str() == Some("https") => {
                    match crate::tls::client_config(ca_file.as_deref()) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            // The config checked the file; it changed since.
                            tracing::error!(probe = %cfg.name, error = %e, "Probe disabled: no TLS settings.");
                            continue;
                        }
                    }
                }
                _ => None,
            };
            let runner = Runner {
                index: i,
                cfg: cfg.clone(),
                tls,
                lock,
                leases: leases.clone(),
                probes: probes.clone(),
            };
            tasks.push(tokio::spawn(runner.run()));
        }
        (probes, tasks)
    }

    /// Whether any probe is configured.
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }

    /// The counters, for `/metrics`.
    pub fn snapshot(&self) -> Vec<ProbeSnapshot> {
        self.stats
            .iter()
            .map(|s| {
                let mut running = 0;
                let mut cumulative: Vec<u64> = s
                    .buckets
                    .iter()
                    .map(|b| {
                        running += b.load(Relaxed);
                        running
                    })
                    .collect();
                let count = cumulative.pop().unwrap_or(0);
                ProbeSnapshot {
                    grant: s.grant,
                    name: s.name.clone(),
                    provider: s.provider.clone(),
                    up: match s.up.load(Relaxed) {
                        1 => Some(true),
                        0 => Some(false),
                        _ => None,
                    },
                    outcomes: s.outcomes.iter().map(|o| o.load(Relaxed)).collect(),
                    cumulative,
                    count,
                    sum_seconds: s.sum_us.load(Relaxed) as f64 / 1e6,
                }
            })
            .collect()
    }

    /// The newest `limit` results of this process passing `f`, newest last (the probe log
    /// without a log store).
    pub fn recent(&self, f: &ProbeLogFilter, limit: usize) -> Vec<ProbeResult> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<ProbeResult> = ring
            .iter()
            .rev()
            .filter(|r| f.matches(r))
            .take(limit)
            .cloned()
            .collect();
        drop(ring);
        out.reverse();
        out
    }

    /// Counts a run of probe `i` and hands it to the writer (never waits).
    fn record(&self, i: usize, r: ProbeResult) {
        if let Some(s) = self.stats.get(i) {
            s.outcomes[r.outcome as usize].fetch_add(1, Relaxed);
            let secs = r.latency_ms as f64 / 1000.0;
            let b = catalog::PROBE_BUCKETS
                .iter()
                .position(|bound| secs <= *bound)
                .unwrap_or(catalog::PROBE_BUCKETS.len());
            s.buckets[b].fetch_add(1, Relaxed);
            s.sum_us
                .fetch_add(r.latency_ms.saturating_mul(1000), Relaxed);
            self.show(i, &r);
        }
        match &self.sink {
            Some(tx) => {
                if tx.try_send(r).is_err() {
                    self.health.dropped(DropReason::ProbeResultsDropped, 1);
                }
            }
            // No log store: the ring is the probe log.
            None => {
                let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
                if ring.len() == RING_CAPACITY {
                    ring.pop_front();
                }
                ring.push_back(r);
            }
        }
    }

    /// Sets probe `i`'s `up` from `r`, unless a newer result is shown already.
    fn show(&self, i: usize, r: &ProbeResult) {
        if let Some(s) = self.stats.get(i) {
            let ts = u64::try_from(r.ts_ms).unwrap_or(0);
            if s.up_at.fetch_max(ts, Relaxed) <= ts {
                s.up.store(i8::from(r.ok()), Relaxed);
            }
        }
    }
}

/// Empties the results queue into `probe_results`, a batch at a time; a batch the database
/// refuses three times is dropped and counted.
async fn write_results(log: SqlLog, mut rx: mpsc::Receiver<ProbeResult>, health: Arc<Health>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        let mut attempt = 0;
        while let Err(e) = log.insert_probe_results(&batch).await {
            attempt += 1;
            if attempt == 3 {
                tracing::warn!(error = %e, rows = batch.len(), "Probe results dropped: the log refused them.");
                health.dropped(DropReason::ProbeResultsDropped, batch.len() as u64);
                break;
            }
            tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
        }
        batch.clear();
    }
}

/// One probe's task.
struct Runner {
    index: usize,
    cfg: ProbeConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    lock: Arc<tokio::sync::Mutex<()>>,
    leases: Option<ProbeLeases>,
    probes: Arc<Probes>,
}

/// A stable offset in `[0, interval / 2)` from the probe's name (FNV-1a): probes spread.
fn offset_ms(name: &str, interval_ms: i64) -> i64 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % (interval_ms / 2).max(1) as u64) as i64
}

impl Runner {
    async fn run(self) {
        let interval_ms = i64::try_from(self.cfg.interval.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let offset = offset_ms(&self.cfg.name, interval_ms);
        let jitter_max = (interval_ms / 10).max(1);
        // The first run is at once, in the slot under way (a fleet runs it once too).
        let mut slot = (now_ms() - offset).div_euclid(interval_ms);
        let mut first = true;
        loop {
            if !first {
                let jitter = rand::random_range(0..jitter_max);
                let at = slot * interval_ms + offset + jitter;
                let wait = at - now_ms();
                if wait > 0 {
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                }
            }
            first = false;
            self.slot(slot, interval_ms).await;
            // A run that overran skips the slots it covered.
            slot = (slot + 1).max((now_ms() - offset).div_euclid(interval_ms) + 1);
        }
    }

    /// Runs `slot` if this replica holds its lease (or there is no fleet).
    async fn slot(&self, slot: i64, interval_ms: i64) {
        let ttl = u64::try_from(interval_ms).unwrap_or(u64::MAX);
        if let Some(leases) = &self.leases {
            match leases.take(&self.cfg.name, slot, ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    // Another replica runs this slot: show the fleet's last result.
                    match leases.last(&self.cfg.name, &self.cfg.provider).await {
                        Ok(Some(r)) => self.probes.show(self.index, &r),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(probe = %self.cfg.name, error = %e, "Probe: no fleet result.")
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(probe = %self.cfg.name, error = %e, "Probe lease unavailable; running anyway.");
                }
            }
        }
        let result = {
            let _turn = self.lock.lock().await;
            check::run(&self.cfg, self.tls.as_ref()).await
        };
        if let Some(leases) = &self.leases
            && let Err(e) = leases.publish(&result, ttl.saturating_mul(10)).await
        {
            tracing::debug!(probe = %self.cfg.name, error = %e, "Probe result not published to the fleet.");
        }
        self.probes.record(self.index, result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_stay_in_the_first_half_of_the_interval() {
        for name in ["a", "anthropic-api", "openai-tcp", ""] {
            let o = offset_ms(name, 30_000);
            assert!((0..15_000).contains(&o), "{name}: {o}");
        }
        assert_eq!(offset_ms("x", 1), 0);
    }

    /// Probe series ask the series budget at start: all of them while it has room, counters
    /// only past the histogram limit, nothing when it is spent (the probe still runs).
    #[tokio::test]
    async fn probe_series_ask_the_series_budget() {
        let cfg = |name: &str| ProbeConfig {
            name: name.into(),
            provider: "p".into(),
            target: Target::Tcp {
                host: "127.0.0.1".into(),
                port: 9,
            },
            interval: Duration::from_secs(3600),
            timeout: Duration::from_millis(100),
        };
        let health = Arc::new(Health::new(1).with_series_budget(crate::budget::MIN_SERIES));
        let budget = health.series_budget().clone();
        let (full, tasks) = Probes::spawn(&[cfg("full")], None, None, health.clone());
        // Past the histogram limit: counters only.
        assert!(budget.take(budget.histogram_limit() - budget.used()));
        let (counters, more) = Probes::spawn(&[cfg("counters")], None, None, health.clone());
        assert!(budget.take(budget.limit() - budget.used()));
        let (folded, rest) = Probes::spawn(&[cfg("folded")], None, None, health.clone());
        let grants: Vec<Grant> = [&full, &counters, &folded]
            .iter()
            .map(|p| p.snapshot()[0].grant)
            .collect();
        assert_eq!(grants, [Grant::Full, Grant::Counters, Grant::Folded]);
        let mut e = crate::exposition::Encoder::new(false);
        let all: Vec<ProbeSnapshot> = [&full, &counters, &folded]
            .iter()
            .flat_map(|p| p.snapshot())
            .collect();
        render::write(&mut e, &all);
        let text = e.finish();
        assert!(text.contains("gatemeter_probe_duration_seconds_count{probe=\"full\""));
        assert!(!text.contains("gatemeter_probe_duration_seconds_count{probe=\"counters\""));
        assert!(text.contains("gatemeter_probe_results_total{probe=\"counters\""));
        assert!(!text.contains("probe=\"folded\""), "{text}");
        for t in tasks.into_iter().chain(more).chain(rest) {
            t.abort();
        }
    }

    #[test]
    fn the_ring_answers_the_filter_newest_last() {
        let probes = Probes::none(Arc::new(Health::new(1)));
        for i in 0..5 {
            probes.record(
                0,
                ProbeResult {
                    ts_ms: 1000 + i,
                    probe: if i % 2 == 0 { "a" } else { "b" }.into(),
                    provider: "p".into(),
                    outcome: if i == 4 {
                        ProbeOutcome::Timeout
                    } else {
                        ProbeOutcome::Ok
                    },
                    status: 200,
                    latency_ms: 1,
                    error: None,
                },
            );
        }
        let f = ProbeLogFilter {
            probe: Some("a".into()),
            ..ProbeLogFilter::default()
        };
        let ts: Vec<i64> = probes.recent(&f, 2).iter().map(|r| r.ts_ms).collect();
        assert_eq!(ts, [1002, 1004]);
        let f = ProbeLogFilter {
            ok: Some(false),
            ..ProbeLogFilter::default()
        };
        assert_eq!(probes.recent(&f, 10).len(), 1);
    }
}
