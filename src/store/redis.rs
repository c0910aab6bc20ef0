//! The Redis live store: any number of replicas share one Redis, the fleet's source of truth.
//!
//! - [`LiveStore::apply`] never waits: it merges the deltas into this process's pending
//!   aggregates and its cumulative latency histograms (a short synchronous lock).
//! - A flush task sends everything pending every `flush_interval` as ONE `EVALSHA`: the script
//!   first sets a per-batch marker `gatemeter:flush:{writer}:{seq}` with `SET NX`, and applies
//!   the batch only if that succeeded — so a batch retried after a lost reply is applied once.
//!   A failed batch is retried as is (same seq) with back-off; newer deltas wait for the next.
//! - Counters are integers only (`INCRBY`/`HINCRBY`): the seed keys (`metrics:global:*`,
//!   `metrics:ns:{ns}:*`, `metrics:instance:{id}:{ns}`) and one hash of every scope's counters.
//! - Latency: each writer (one process run) keeps cumulative HDR histograms per scope, since
//!   start and per minute, and overwrites their blobs (naturally idempotent); reads merge all
//!   writers' blobs, so quantiles over any window and any number of replicas are exact to HDR
//!   precision.
//! - A refresh task reads the fleet's totals back every `refresh_interval` into a snapshot;
//!   [`LiveStore::view`] returns that snapshot and never awaits Redis.
//! - Redis absent, killed or hung: calls time out (`command_timeout`), the connection is
//!   rebuilt with back-off, deltas keep accumulating in memory bounded by the series caps.
//!   Minute histograms that leave every window before Redis takes them are dropped and counted
//!   (`live_store_expired`); they stay in the since-start totals.
//!
//! Redis errors never leave this module.

pub mod codec;
pub mod settings;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use self::codec::{HistScope, Keys, MINUTE_MS};
use super::StoreError;
use super::live::{FleetView, KeyCalls, LiveStore, WINDOWS, WindowView, utc_day, utc_month};
use crate::aggregate::{Aggregates, Latencies};
use crate::health::{DropReason, Health};
use crate::pipeline::now_ms;
use crate::record::Label;

pub use settings::{RawRedisConfig, RedisConfig};

/// The flush script: marker first (`SET NX EX`), then the operations in ARGV, all atomic.
/// ARGV[1] is the marker's TTL; then operations, each a code followed by its arguments.
const FLUSH_SCRIPT: &str = r"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local i, n = 2, #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'I' then redis.call('INCRBY', ARGV[i+1], ARGV[i+2]); i = i + 3
  elseif op == 'H' then redis.call('HINCRBY', ARGV[i+1], ARGV[i+2], ARGV[i+3]); i = i + 4
  elseif op == 'S' then redis.call('HSET', ARGV[i+1], ARGV[i+2], ARGV[i+3]); i = i + 4
  elseif op == 'N' then redis.call('HSETNX', ARGV[i+1], ARGV[i+2], ARGV[i+3]); i = i + 4
  elseif op == 'E' then redis.call('EXPIRE', ARGV[i+1], ARGV[i+2]); i = i + 3
  elseif op == 'X' then redis.call('SET', ARGV[i+1], ARGV[i+2], 'EX', ARGV[i+3]); i = i + 4
  elseif op == 'F' then
    local cur = tonumber(redis.call('HGET', ARGV[i+1], ARGV[i+2]) or '0') or 0
    if tonumber(ARGV[i+3]) > cur then redis.call('HSET', ARGV[i+1], ARGV[i+2], ARGV[i+3]) end
    i = i + 4
  elseif op == 'M' then
    local cur = tonumber(redis.call('GET', ARGV[i+1]) or '0') or 0
    if tonumber(ARGV[i+2]) > cur then redis.call('SET', ARGV[i+1], ARGV[i+2]) end
    i = i + 3
  else return redis.error_reply('gatemeter flush: unknown op ' .. tostring(op)) end
end
return 1
";

/// How long a flush marker is kept: far beyond any retry of its batch.
const MARKER_TTL_SECS: u64 = 86_400;

/// Minute buckets kept in Redis and locally: the longest window plus the current minute.
fn window_minutes() -> i64 {
    WINDOWS[WINDOWS.len() - 1].1 / MINUTE_MS + 1
}

/// Cumulative histograms of one minute, and which scopes changed since the last batch.
#[derive(Default)]
struct MinuteHist {
    scopes: HashMap<HistScope, Latencies>,
    dirty: HashSet<HistScope>,
    /// Records added since this minute was last frozen into a batch.
    unsent: u64,
}

/// This writer's local state: written by `apply`, frozen into batches by the flush task.
#[derive(Default)]
struct Local {
    /// Counter deltas not yet frozen into a batch (their latency parts are ignored).
    pending: Aggregates,
    /// When the last record-bearing deltas were applied (for `last_request_time`).
    last_request_ms: i64,
    total: HashMap<HistScope, Latencies>,
    total_dirty: HashSet<HistScope>,
    minutes: BTreeMap<i64, MinuteHist>,
    /// Namespaces seen by this instance (bounded by the namespace cap), for heartbeats.
    namespaces: BTreeSet<Label>,
    /// Requests since the last batch, per namespace (heartbeat counters).
    ns_requests: HashMap<Label, u64>,
}

fn scopes_of(deltas: &Aggregates) -> impl Iterator<Item = (HistScope, &Latencies)> {
    std::iter::once((None, &deltas.global.latency)).chain(
        deltas
            .scopes
            .iter()
            .map(|(k, v)| (Some(k.clone()), &v.latency)),
    )
}

/// One frozen flush: the arguments of one script call.
struct Batch {
    seq: u64,
    marker: String,
    args: Vec<Vec<u8>>,
}

struct Ops<'a> {
    args: Vec<Vec<u8>>,
    keys: &'a Keys,
}

impl Ops<'_> {
    fn op(&mut self, parts: &[&[u8]]) {
        self.args.extend(parts.iter().map(|p| p.to_vec()));
    }
    fn incr(&mut self, key: &str, n: i64) {
        if n != 0 {
            self.op(&[b"I", key.as_bytes(), n.to_string().as_bytes()]);
        }
    }
    fn hincr(&mut self, key: &str, field: &str, n: i64) {
        if n != 0 {
            self.op(&[
                b"H",
                key.as_bytes(),
                field.as_bytes(),
                n.to_string().as_bytes(),
            ]);
        }
    }
    fn hset(&mut self, key: &str, field: &str, value: &[u8]) {
        self.op(&[b"S", key.as_bytes(), field.as_bytes(), value]);
    }
}

struct Shared {
    cfg: RedisConfig,
    keys: Keys,
    /// This process run's id in histogram fields and flush markers: the instance id plus a
    /// random suffix, so a restarted process never reuses an old run's sequence numbers or
    /// overwrites its cumulative histograms.
    writer: String,
    // Held for one merge (apply) or one freeze/snapshot swap; never across an await.
    local: Mutex<Local>,
    view: Mutex<Arc<FleetView>>,
    up: AtomicBool,
    health: Arc<Health>,
    script: redis::Script,
    /// Set by `close`: the flush task sends what is left and stops.
    closing: watch::Sender<bool>,
    flushed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain counters stay usable after a panic elsewhere.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The Redis live store (see the module docs).
pub struct RedisStore {
    shared: Arc<Shared>,
    flush_task: Mutex<Option<JoinHandle<()>>>,
    refresh_task: JoinHandle<()>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.shared.cfg)
            .field("writer", &self.shared.writer)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        store: "redis",
        message: e.to_string(),
    }
}

impl RedisStore {
    /// Starts the store's background tasks (on the current tokio runtime). Never waits on
    /// Redis: a Redis that is absent is retried in the background.
    pub fn start(cfg: RedisConfig, health: Arc<Health>) -> Result<Self, StoreError> {
        // Validate the URL now; connections are made lazily by the tasks.
        redis::Client::open(cfg.url.as_str()).map_err(unavailable)?;
        let writer = format!("{}.{:08x}", cfg.instance_id, rand::random::<u32>());
        let (closing, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            keys: Keys::new(&cfg.key_prefix),
            cfg,
            writer,
            local: Mutex::new(Local::default()),
            view: Mutex::new(Arc::new(FleetView::default())),
            up: AtomicBool::new(false),
            health,
            script: redis::Script::new(FLUSH_SCRIPT),
            closing,
            flushed: Notify::new(),
        });
        let flush_task = tokio::spawn(flush_loop(shared.clone()));
        let refresh_task = tokio::spawn(refresh_loop(shared.clone()));
        info!(
            url = %settings::redact_url(&shared.cfg.url),
            instance = %shared.cfg.instance_id,
            writer = %shared.writer,
            "Redis live store started."
        );
        Ok(Self {
            shared,
            flush_task: Mutex::new(Some(flush_task)),
            refresh_task,
        })
    }

    /// This process run's writer id (instance id + random suffix).
    pub fn writer(&self) -> &str {
        &self.shared.writer
    }

    /// Waits until one refresh after this call has completed (tests and graceful paths).
    pub async fn refreshed(&self) {
        self.shared.flushed.notified().await;
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.refresh_task.abort();
        if let Some(t) = lock(&self.flush_task).take() {
            t.abort();
        }
    }
}

impl LiveStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn apply(&self, deltas: Aggregates, now_ms: i64) {
        if deltas.is_empty() {
            return;
        }
        let minute = now_ms.div_euclid(MINUTE_MS);
        let mut l = lock(&self.shared.local);
        let l = &mut *l;
        let m = l.minutes.entry(minute).or_default();
        m.unsent += deltas.global.requests;
        for (scope, lat) in scopes_of(&deltas) {
            if lat.duration.is_empty() && lat.ttfb.is_empty() {
                continue;
            }
            l.total.entry(scope.clone()).or_default().merge(lat);
            l.total_dirty.insert(scope.clone());
            m.scopes.entry(scope.clone()).or_default().merge(lat);
            m.dirty.insert(scope);
        }
        for (k, v) in &deltas.scopes {
            if let crate::aggregate::ScopeKey::Namespace(ns) = k {
                if !l.namespaces.contains(ns) {
                    l.namespaces.insert(ns.clone());
                }
                *l.ns_requests.entry(ns.clone()).or_insert(0) += v.requests;
            }
        }
        if deltas.global.requests > 0 {
            l.last_request_ms = l.last_request_ms.max(now_ms);
        }
        merge_counters(&mut l.pending, &deltas);
    }

    fn view(&self, _now_ms: i64) -> Arc<FleetView> {
        lock(&self.shared.view).clone()
    }

    fn is_up(&self) -> bool {
        self.shared.up.load(Relaxed)
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let _ = self.shared.closing.send(true);
            let task = lock(&self.flush_task).take();
            if let Some(task) = task {
                let _ = task.await;
            }
        })
    }
}

/// Adds counter deltas only (latency is kept in the cumulative histograms instead).
fn merge_counters(into: &mut Aggregates, d: &Aggregates) {
    fn counters(a: &crate::aggregate::ScopeAgg) -> crate::aggregate::ScopeAgg {
        crate::aggregate::ScopeAgg {
            latency: Latencies::default(),
            status: a.status.clone(),
            token_usage: a.token_usage.clone(),
            ..*a
        }
    }
    into.global.merge(&counters(&d.global));
    for (k, v) in &d.scopes {
        into.scopes
            .entry(k.clone())
            .or_default()
            .merge(&counters(v));
    }
    for (a, b) in into.overflow.iter_mut().zip(d.overflow) {
        *a += b;
    }
}

/// Freezes everything pending into one batch.
fn freeze(shared: &Shared, seq: u64, now: i64) -> Batch {
    let keys = &shared.keys;
    let cfg = &shared.cfg;
    let (pending, last_request_ms, hist_total, hist_minutes, namespaces, ns_requests) = {
        let mut l = lock(&shared.local);
        let l = &mut *l;
        let pending = std::mem::take(&mut l.pending);
        let hist_total: Vec<(HistScope, Vec<u8>)> = l
            .total_dirty
            .drain()
            .filter_map(|s| l.total.get(&s).map(|h| (s, codec::encode_latencies(h))))
            .collect();
        // Minutes that left every window are dropped; unsent samples in them are counted.
        let oldest = now.div_euclid(MINUTE_MS) - window_minutes() + 1;
        let kept = l.minutes.split_off(&oldest);
        let expired = std::mem::replace(&mut l.minutes, kept);
        let lost: u64 = expired.values().map(|m| m.unsent).sum();
        if lost > 0 {
            shared.health.dropped(DropReason::LiveStoreExpired, lost);
        }
        let mut hist_minutes = Vec::new();
        for (minute, m) in &mut l.minutes {
            m.unsent = 0;
            for s in m.dirty.drain() {
                if let Some(h) = m.scopes.get(&s) {
                    hist_minutes.push((*minute, s, codec::encode_latencies(h)));
                }
            }
        }
        (
            pending,
            std::mem::take(&mut l.last_request_ms),
            hist_total,
            hist_minutes,
            l.namespaces.iter().cloned().collect::<Vec<_>>(),
            std::mem::take(&mut l.ns_requests),
        )
    };

    let mut ops = Ops {
        args: vec![MARKER_TTL_SECS.to_string().into_bytes()],
        keys,
    };
    let agg = keys.agg();
    let mut fields = Vec::new();
    for (scope, a) in std::iter::once((None, &pending.global))
        .chain(pending.scopes.iter().map(|(k, v)| (Some(k.clone()), v)))
    {
        fields.clear();
        codec::scope_fields(a, &mut fields);
        for (f, n) in &fields {
            ops.hincr(&agg, &codec::agg_field(f, &scope), *n);
        }
        if a.last_used_ms > 0 {
            ops.op(&[
                b"F",
                agg.as_bytes(),
                codec::agg_field("last", &scope).as_bytes(),
                a.last_used_ms.to_string().as_bytes(),
            ]);
        }
        if let Some(op) = a.operation {
            ops.op(&[
                b"N",
                agg.as_bytes(),
                codec::agg_field("op", &scope).as_bytes(),
                op.as_bytes(),
            ]);
        }
    }
    for (d, n) in pending.overflow.iter().enumerate() {
        ops.hincr(&agg, &codec::overflow_field(d), *n as i64);
    }

    // The seed system's keys.
    let g = &pending.global;
    ops.incr(&keys.global("total_requests"), g.requests as i64);
    ops.incr(&keys.global("total_errors"), g.failures as i64);
    ops.incr(
        &keys.global("total_response_time"),
        g.duration_ms_sum as i64,
    );
    if last_request_ms > 0 {
        let k = ops.keys.global("last_request_time");
        ops.op(&[b"M", k.as_bytes(), last_request_ms.to_string().as_bytes()]);
    }
    for (k, a) in &pending.scopes {
        let crate::aggregate::ScopeKey::Namespace(ns) = k else {
            continue;
        };
        ops.incr(&keys.ns(ns, "total_requests"), a.requests as i64);
        ops.incr(
            &keys.ns(ns, "successful_requests"),
            (a.requests - a.failures) as i64,
        );
        ops.incr(&keys.ns(ns, "failed_requests"), a.failures as i64);
        ops.incr(
            &keys.ns(ns, "total_response_time"),
            a.duration_ms_sum as i64,
        );
        ops.incr(&keys.ns(ns, "concurrent_requests"), a.concurrency);
        for (code, n) in &a.status {
            ops.incr(&keys.ns(ns, &format!("status:{code}")), *n as i64);
        }
    }

    // API key calls per UTC day and month (hashes of key → calls, expiring after the period).
    let day_key = keys.key_calls_day(utc_day(now));
    let month_key = keys.key_calls_month(utc_month(now));
    let mut any_key = false;
    for (k, a) in &pending.scopes {
        if let crate::aggregate::ScopeKey::Key(key) = k
            && a.requests > 0
        {
            ops.hincr(&day_key, key, a.requests as i64);
            ops.hincr(&month_key, key, a.requests as i64);
            any_key = true;
        }
    }
    if any_key {
        ops.op(&[b"E", day_key.as_bytes(), b"259200"]);
        ops.op(&[b"E", month_key.as_bytes(), b"3456000"]);
    }

    // Histograms: cumulative blobs, overwritten.
    let total = keys.hist_total();
    for (scope, blob) in &hist_total {
        let field = format!("{}|{}", shared.writer, codec::scope_enc(scope));
        ops.hset(&total, &field, blob);
    }
    let ttl = (window_minutes() + 2) * MINUTE_MS / 1000;
    let mut touched = BTreeSet::new();
    for (minute, scope, blob) in &hist_minutes {
        let key = keys.hist_minute(*minute);
        let field = format!("{}|{}", shared.writer, codec::scope_enc(scope));
        ops.hset(&key, &field, blob);
        touched.insert(key);
    }
    for key in touched {
        ops.op(&[b"E", key.as_bytes(), ttl.to_string().as_bytes()]);
    }

    // Heartbeats, with a TTL.
    let hb_ttl = cfg.heartbeat_ttl.as_secs().to_string();
    let now_s = now.to_string();
    let hb = keys.heartbeat(&cfg.instance_id);
    ops.op(&[b"X", hb.as_bytes(), now_s.as_bytes(), hb_ttl.as_bytes()]);
    for ns in &namespaces {
        let key = keys.instance_ns(&cfg.instance_id, ns);
        ops.hset(&key, "last_seen", now_s.as_bytes());
        ops.hset(&key, "instance", cfg.instance_id.as_bytes());
        let n = ns_requests.get(ns).copied().unwrap_or(0);
        ops.hincr(&key, "requests", n as i64);
        ops.op(&[b"E", key.as_bytes(), hb_ttl.as_bytes()]);
    }

    Batch {
        seq,
        marker: keys.flush_marker(&shared.writer, seq),
        args: ops.args,
    }
}

fn connection(cfg: &RedisConfig) -> Result<ConnectionManager, StoreError> {
    let client = redis::Client::open(cfg.url.as_str()).map_err(unavailable)?;
    let mc = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.connect_timeout))
        .set_response_timeout(Some(cfg.command_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(cfg.connect_timeout);
    ConnectionManager::new_lazy_with_config(client, mc).map_err(unavailable)
}

/// Runs one Redis call with a hard deadline (connect + reply), whatever the client does.
async fn bounded<T>(
    cfg: &RedisConfig,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(cfg.connect_timeout + cfg.command_timeout, fut).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(unavailable("timed out")),
    }
}

async fn send(shared: &Shared, con: &mut ConnectionManager, b: &Batch) -> Result<bool, StoreError> {
    let mut inv = shared.script.key(&b.marker);
    for a in &b.args {
        inv.arg(a.as_slice());
    }
    let applied: i64 = bounded(&shared.cfg, inv.invoke_async(con)).await?;
    Ok(applied == 1)
}

/// State transitions of `up`, logged once each.
fn set_up(shared: &Shared, up: bool, what: &str, err: Option<&StoreError>) {
    let was = shared.up.swap(up, Relaxed);
    match (was, up, err) {
        (true, false, Some(e)) => {
            warn!(error = %e, "Redis unreachable during {what}; buffering deltas in memory.")
        }
        (false, true, _) => info!("Redis reachable."),
        _ => {}
    }
}

/// One attempt to deliver `in_flight` (or a fresh batch); on failure the batch is kept for a
/// retry with the same seq and the connection is dropped.
async fn flush_once(
    shared: &Shared,
    con: &mut Option<ConnectionManager>,
    in_flight: &mut Option<Batch>,
    seq: &mut u64,
) -> Result<(), StoreError> {
    let batch = match in_flight.take() {
        Some(b) => b,
        None => {
            *seq += 1;
            freeze(shared, *seq, now_ms())
        }
    };
    let c = match con.as_mut() {
        Some(c) => c,
        None => match connection(&shared.cfg) {
            Ok(c) => con.insert(c),
            Err(e) => {
                *in_flight = Some(batch);
                return Err(e);
            }
        },
    };
    match send(shared, c, &batch).await {
        Ok(applied) => {
            if !applied {
                debug!(
                    seq = batch.seq,
                    "Flush batch was already applied (retry after a lost reply)."
                );
            }
            set_up(shared, true, "flush", None);
            Ok(())
        }
        Err(e) => {
            set_up(shared, false, "flush", Some(&e));
            // Outcome unknown: retry the SAME batch (same seq) on a fresh connection.
            *in_flight = Some(batch);
            *con = None;
            Err(e)
        }
    }
}

async fn flush_loop(shared: Arc<Shared>) {
    let cfg = shared.cfg.clone();
    let mut closing = shared.closing.subscribe();
    let mut con: Option<ConnectionManager> = None;
    let mut in_flight: Option<Batch> = None;
    let mut seq = 0u64;
    let mut backoff = Duration::ZERO;
    loop {
        let wait = if backoff.is_zero() {
            cfg.flush_interval
        } else {
            backoff
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = closing.wait_for(|c| *c) => break,
        }
        match flush_once(&shared, &mut con, &mut in_flight, &mut seq).await {
            Ok(()) => backoff = Duration::ZERO,
            Err(_) => backoff = next_backoff(backoff, &cfg),
        }
    }
    // Graceful shutdown: the pipeline has applied its last deltas. Deliver the batch in flight,
    // then one final batch, for a few seconds at most.
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(5).max(2 * (cfg.connect_timeout + cfg.command_timeout));
    let mut rounds = if in_flight.is_some() { 2 } else { 1 };
    while rounds > 0 {
        match flush_once(&shared, &mut con, &mut in_flight, &mut seq).await {
            Ok(()) => rounds -= 1,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                error!(
                    error = %e,
                    "Redis unreachable at shutdown: this process's last deltas were not written (data loss)."
                );
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn next_backoff(cur: Duration, cfg: &RedisConfig) -> Duration {
    if cur.is_zero() {
        Duration::from_millis(50)
    } else {
        (cur * 2).min(cfg.max_backoff)
    }
}

type Fields = HashMap<Vec<u8>, Vec<u8>>;

/// Reads the fleet view: the aggregates hash, the since-start blobs and the recent minutes.
async fn read_view(shared: &Shared, con: &mut ConnectionManager) -> Result<FleetView, StoreError> {
    let keys = &shared.keys;
    let now = now_ms();
    let now_minute = now.div_euclid(MINUTE_MS);
    let first = now_minute - window_minutes() + 1;
    let mut pipe = redis::pipe();
    pipe.hgetall(keys.agg())
        .hgetall(keys.hist_total())
        .hgetall(keys.key_calls_day(utc_day(now)))
        .hgetall(keys.key_calls_month(utc_month(now)));
    for m in first..=now_minute {
        pipe.hgetall(keys.hist_minute(m));
    }
    let mut replies: Vec<Fields> = bounded(&shared.cfg, pipe.query_async(con)).await?;
    if replies.len() != 4 + (now_minute - first + 1) as usize {
        return Err(unavailable("unexpected reply shape"));
    }
    let minutes = replies.split_off(4);
    let int = |v: &[u8]| std::str::from_utf8(v).ok()?.parse::<u64>().ok();
    let mut key_calls: HashMap<Label, KeyCalls> = HashMap::new();
    for (i, fields) in replies[2..4].iter().enumerate() {
        for (k, v) in fields {
            let (Ok(k), Some(n)) = (std::str::from_utf8(k), int(v)) else {
                continue;
            };
            let e = key_calls.entry(Label::from(k)).or_default();
            if i == 0 {
                e.today = n;
            } else {
                e.this_month = n;
            }
        }
    }
    let mut totals = codec::decode_agg(&replies[0]);
    for (scope, blob) in blobs(&replies[1]) {
        let into = match scope {
            None => &mut totals.global.latency,
            Some(k) => &mut totals.scopes.entry(k).or_default().latency,
        };
        add_blob(blob, into);
    }
    let windows = WINDOWS
        .iter()
        .map(|(label, len)| {
            let mut w = WindowView {
                label,
                ..WindowView::default()
            };
            let from = (now - len).div_euclid(MINUTE_MS);
            for (i, fields) in minutes.iter().enumerate() {
                if first + (i as i64) < from {
                    continue;
                }
                for (scope, blob) in blobs(fields) {
                    let into = match scope {
                        None => &mut w.global,
                        Some(k) => w.scopes.entry(k).or_default(),
                    };
                    add_blob(blob, into);
                }
            }
            w
        })
        .collect();
    Ok(FleetView {
        totals,
        windows,
        key_calls,
    })
}

/// The `(scope, blob)` pairs of a histogram hash (every writer's), malformed fields skipped.
fn blobs(fields: &Fields) -> impl Iterator<Item = (HistScope, &[u8])> {
    fields.iter().filter_map(|(f, blob)| {
        let f = std::str::from_utf8(f).ok()?;
        let (_writer, scope) = f.split_once('|')?;
        Some((codec::scope_dec(scope)?, blob.as_slice()))
    })
}

fn add_blob(blob: &[u8], into: &mut Latencies) {
    if !codec::decode_latencies_into(blob, into) {
        debug!("Skipped a malformed histogram blob.");
    }
}

async fn refresh_loop(shared: Arc<Shared>) {
    let cfg = shared.cfg.clone();
    let mut con: Option<ConnectionManager> = None;
    let mut tick = tokio::time::interval(cfg.refresh_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let c = match con.as_mut() {
            Some(c) => c,
            None => match connection(&cfg) {
                Ok(c) => con.insert(c),
                Err(_) => continue,
            },
        };
        match read_view(&shared, c).await {
            Ok(view) => {
                *lock(&shared.view) = Arc::new(view);
                set_up(&shared, true, "refresh", None);
            }
            Err(e) => {
                set_up(&shared, false, "refresh", Some(&e));
                con = None;
            }
        }
        shared.flushed.notify_waiters();
    }
}
