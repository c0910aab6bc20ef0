//! The Redis live store: any number of replicas share one Redis, the fleet's source of truth.
//!
//! - [`LiveStore::apply`] never waits: it merges the deltas into this writer's local state (a
//!   short synchronous lock). A *writer* is one process run: `instance_id` + a random suffix.
//! - A flush task sends everything new every `flush_interval` as ONE `EVALSHA`. The script
//!   skips a batch whose number is not above the writer's last applied one (kept in
//!   `gatemeter:flush:{writer}`), so a batch retried after a lost reply is applied once. A
//!   failed batch is retried unchanged (same number) with back-off; newer deltas wait for the
//!   next batch.
//! - What a batch writes: the writer's cumulative state blob (counters, tokens, cost and
//!   since-start HDR histograms of every scope) in `gatemeter:state`, its blob of each changed
//!   time slot in `gatemeter:slot:{slot}` (expiring), its API key calls of the UTC day and month
//!   — all overwrites, idempotent by nature — and the seed keys (`metrics:global:*`,
//!   `metrics:ns:{ns}:*`) by `INCRBY`, plus the heartbeats (`metrics:instance:{id}:{ns}`,
//!   `gatemeter:heartbeat:{id}`) with a TTL. Integers only; never `INCRBYFLOAT`.
//! - A batch carries the writer's seed totals, not its increments: the script adds each total's
//!   difference to what `gatemeter:seed:{writer}` says the writer added so far, and records the
//!   total there. So a master that lost batches (a failover promotes a replica that missed
//!   them; a restart without persistence) gets them back from the next batch, and after any
//!   new connection (`Link::generation`) the next batch re-sends everything (totals, state
//!   blob, the slots kept here): the fleet totals converge to exact on whichever master
//!   serves.
//! - A refresh task reads every writer's blobs back every `refresh_interval` and merges them
//!   (counters add up, HDR histograms merge exactly) into a snapshot; [`LiveStore::view`]
//!   returns that snapshot and never awaits Redis.
//! - Redis absent, killed or hung: calls time out (`command_timeout`), the connection is
//!   rebuilt with back-off, deltas keep accumulating in memory bounded by the series caps.
//!   Slot histograms that leave every window before Redis takes them are dropped and counted
//!   (`live_store_expired`); they stay in the since-start totals.
//! - The connection (`redis/link.rs`) is to `redis.url` or to the master Redis Sentinel names.
//!
//! Redis errors never leave this module.

pub mod codec;
pub mod lease;
pub(crate) mod link;
pub mod settings;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use self::codec::{HistScope, Keys};
use self::link::Link;
use super::StoreError;
use super::live::{
    FleetView, KeyCalls, LiveStore, SLOT_MS, WINDOWS, WindowView, utc_day, utc_month,
};
use crate::aggregate::{Aggregates, Latencies, ScopeAgg, ScopeKey};
use crate::clock::now_ms;
use crate::health::{DropReason, Health};
use crate::record::Label;

pub use settings::{RedisCa, RedisConfig, RedisSentinel, redact_url};

/// The flush script, atomic: KEYS[1] holds the writer's last applied batch number; a batch
/// whose number is not above it was applied already (its reply was lost) and is skipped.
/// KEYS[2] holds what the writer added to each seed key so far (`T key total` adds
/// `total - that`, in integers: no Lua number arithmetic). ARGV[1] is the TTL of both, ARGV[2]
/// the batch number; then operations, each a code followed by its arguments.
const FLUSH_SCRIPT: &str = r"
local last = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if last >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
local i, n = 3, #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'T' then
    local added = redis.call('HGET', KEYS[2], ARGV[i+1]) or '0'
    if added ~= ARGV[i+2] then
      redis.call('INCRBY', ARGV[i+1], ARGV[i+2])
      redis.call('DECRBY', ARGV[i+1], added)
      redis.call('HSET', KEYS[2], ARGV[i+1], ARGV[i+2])
    end
    i = i + 3
  elseif op == 'H' then redis.call('HINCRBY', ARGV[i+1], ARGV[i+2], ARGV[i+3]); i = i + 4
  elseif op == 'S' then redis.call('HSET', ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]); i = i + 6
  elseif op == 'W' then redis.call('HSET', ARGV[i+1], ARGV[i+2], ARGV[i+3]); i = i + 4
  elseif op == 'E' then redis.call('EXPIRE', ARGV[i+1], ARGV[i+2]); i = i + 3
  elseif op == 'X' then redis.call('SET', ARGV[i+1], ARGV[i+2], 'EX', ARGV[i+3]); i = i + 4
  elseif op == 'M' then
    local cur = tonumber(redis.call('GET', ARGV[i+1]) or '0') or 0
    if tonumber(ARGV[i+2]) > cur then redis.call('SET', ARGV[i+1], ARGV[i+2]) end
    i = i + 3
  else return redis.error_reply('gatemeter flush: unknown op ' .. tostring(op)) end
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
";

/// How long a writer's flush marker and seed record outlive its last flush: far beyond any
/// retry of a batch.
const MARKER_TTL_SECS: u64 = 7 * 86_400;

/// A writer re-sends everything (state blob, seed totals, kept slots) at least every this many
/// flushes, even without traffic: a Redis that lost its data (no persistence) gets the live
/// writers' totals back.
const STATE_REWRITE_FLUSHES: u64 = 30;

/// Time slots kept in Redis: the longest window plus the current slot. The slots are the
/// memory store's ([`SLOT_MS`]), so both backends cut windows at the same edges.
fn window_slots() -> i64 {
    WINDOWS[WINDOWS.len() - 1].1 / SLOT_MS + 1
}

/// Cumulative histograms of one time slot (this writer), and whether they changed since the
/// last batch.
#[derive(Default)]
struct SlotHist {
    scopes: HashMap<HistScope, Latencies>,
    dirty: bool,
    /// Records added since this slot was last frozen into a batch.
    unsent: u64,
}

/// This writer's API key calls in one UTC day and month.
#[derive(Default)]
struct KeyPeriods {
    day: i64,
    today: HashMap<Label, u64>,
    month: i64,
    this_month: HashMap<Label, u64>,
}

/// This writer's local state: written by `apply`, frozen into batches by the flush task.
#[derive(Default)]
struct Local {
    /// When the last record-bearing deltas were applied (for `last_request_time`).
    last_request_ms: i64,
    /// Everything this writer counted since it started (counters and histograms).
    state: Aggregates,
    dirty: bool,
    slots: BTreeMap<i64, SlotHist>,
    keys: KeyPeriods,
    /// Namespaces seen by this instance (bounded by the namespace cap), for heartbeats.
    namespaces: BTreeSet<Label>,
    /// Requests since the last batch, per namespace (heartbeat counters).
    ns_requests: HashMap<Label, u64>,
    /// The durable spool's id and the position of the last event in the deltas (with the
    /// spool on); sent with the next batch while `spool_dirty`.
    spool: Option<(String, u64)>,
    spool_dirty: bool,
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
    /// `applies` when it was frozen: the batch carries every delta applied before.
    applies: u64,
    /// The link's generation when it was frozen.
    generation: u64,
    marker: String,
    /// This writer's seed record (what it added to each seed key).
    seed_base: String,
    args: Vec<Vec<u8>>,
}

struct Ops {
    args: Vec<Vec<u8>>,
}

impl Ops {
    fn op(&mut self, parts: &[&[u8]]) {
        self.args.extend(parts.iter().map(|p| p.to_vec()));
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
        self.op(&[b"W", key.as_bytes(), field.as_bytes(), value]);
    }
}

struct Shared {
    cfg: RedisConfig,
    /// The master's connection, shared by the flush and refresh tasks (a failure seen by one
    /// makes both reconnect).
    link: Link,
    keys: Keys,
    /// This process run's id in histogram fields and flush markers: the instance id plus a
    /// random suffix, so a restarted process never reuses an old run's sequence numbers or
    /// overwrites its cumulative histograms.
    writer: String,
    // Held for one merge (apply) or one freeze/snapshot swap; never across an await.
    local: Mutex<Local>,
    view: Mutex<Arc<FleetView>>,
    /// Whether the last flush and the last snapshot read succeeded (both: up).
    flush_ok: AtomicBool,
    read_ok: AtomicBool,
    /// Whether the state was logged once (the first failure at start is logged too).
    state_logged: AtomicBool,
    health: Arc<Health>,
    script: redis::Script,
    /// Set by `close`: the flush task sends what is left and stops.
    closing: watch::Sender<bool>,
    /// `apply` calls with deltas so far (counted under `local`'s lock).
    applies: AtomicU64,
    /// The `applies` of the last batch Redis took (`sync` waits on it).
    flushed: watch::Sender<u64>,
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
        // Validate the URLs now; connections are made lazily by the tasks.
        let link = Link::new(&cfg, "redis")?;
        let writer = format!("{}.{:08x}", cfg.instance_id, rand::random::<u32>());
        let (closing, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            keys: Keys::new(&cfg.key_prefix),
            cfg,
            link,
            writer,
            local: Mutex::new(Local::default()),
            view: Mutex::new(Arc::new(FleetView::default())),
            flush_ok: AtomicBool::new(false),
            read_ok: AtomicBool::new(false),
            state_logged: AtomicBool::new(false),
            health,
            script: redis::Script::new(FLUSH_SCRIPT),
            closing,
            applies: AtomicU64::new(0),
            flushed: watch::channel(0).0,
        });
        let flush_task = tokio::spawn(flush_loop(shared.clone()));
        let refresh_task = tokio::spawn(refresh_loop(shared.clone()));
        info!(
            url = %settings::redact_url(&shared.cfg.url),
            sentinel = ?shared.cfg.sentinel,
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
        let mut l = lock(&self.shared.local);
        self.shared.applies.fetch_add(1, Relaxed);
        merge_local(&mut l, &deltas, now_ms);
    }

    /// The position joins the deltas under the same lock, so a batch carries both or neither.
    fn apply_spooled(&self, deltas: Aggregates, now_ms: i64, spool: &str, pos: u64) {
        let mut l = lock(&self.shared.local);
        self.shared.applies.fetch_add(1, Relaxed);
        match &mut l.spool {
            Some((id, p)) if id.as_str() == spool => {
                if pos > *p {
                    *p = pos;
                    l.spool_dirty = true;
                }
            }
            _ => {
                l.spool = Some((spool.to_string(), pos));
                l.spool_dirty = true;
            }
        }
        if !deltas.is_empty() {
            merge_local(&mut l, &deltas, now_ms);
        }
    }

    fn spooled_position<'a>(
        &'a self,
        spool: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<u64>, StoreError>> + Send + 'a>> {
        Box::pin(async move {
            let mut get = redis::cmd("GET");
            get.arg(self.shared.keys.spool(spool));
            let pos: Option<u64> = self
                .shared
                .link
                .run(|mut c| async move { get.query_async(&mut c).await })
                .await?;
            Ok(Some(pos.unwrap_or(0)))
        })
    }

    fn view(&self, _now_ms: i64) -> Arc<FleetView> {
        lock(&self.shared.view).clone()
    }

    fn is_up(&self) -> bool {
        self.shared.flush_ok.load(Relaxed) && self.shared.read_ok.load(Relaxed)
    }

    /// Waits until a batch carrying every delta applied so far is in Redis (however long
    /// Redis is away); false if the store closed first.
    fn sync(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            let target = self.shared.applies.load(Relaxed);
            let mut flushed = self.shared.flushed.subscribe();
            flushed.wait_for(|f| *f >= target).await.is_ok()
        })
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

/// Merges one flush of deltas into this writer's local state (under `local`'s lock).
fn merge_local(l: &mut Local, deltas: &Aggregates, now_ms: i64) {
    let slot = now_ms.div_euclid(SLOT_MS);
    let (day, month) = (utc_day(now_ms), utc_month(now_ms));
    let m = l.slots.entry(slot).or_default();
    m.unsent += deltas.global.requests;
    for (scope, lat) in scopes_of(deltas) {
        if !(lat.duration.is_empty() && lat.ttfb.is_empty()) {
            m.scopes.entry(scope).or_default().merge(lat);
            m.dirty = true;
        }
    }
    let k = &mut l.keys;
    if k.day != day {
        k.day = day;
        k.today.clear();
    }
    if k.month != month {
        k.month = month;
        k.this_month.clear();
    }
    for (scope, v) in &deltas.scopes {
        match scope {
            ScopeKey::Namespace(ns) => {
                if !l.namespaces.contains(ns) {
                    l.namespaces.insert(ns.clone());
                }
                *l.ns_requests.entry(ns.clone()).or_insert(0) += v.requests;
            }
            ScopeKey::Key(key) if v.requests > 0 => {
                *k.today.entry(key.clone()).or_insert(0) += v.requests;
                *k.this_month.entry(key.clone()).or_insert(0) += v.requests;
            }
            _ => {}
        }
    }
    if deltas.global.requests > 0 {
        l.last_request_ms = l.last_request_ms.max(now_ms);
    }
    l.state.merge(deltas);
    l.dirty = true;
}

/// The counters of a scope, without its histograms (the seed keys need no latency).
fn counters(a: &ScopeAgg) -> ScopeAgg {
    ScopeAgg {
        latency: Latencies::default(),
        status: a.status.clone(),
        token_usage: None,
        ..*a
    }
}

/// What `freeze` takes out of [`Local`], blobs encoded under the lock (`apply` waits for at
/// most one encoding per flush interval).
struct Frozen {
    /// This writer's totals (counters only) for the seed keys.
    seed: Aggregates,
    last_request_ms: i64,
    state: Option<Vec<u8>>,
    slots: Vec<(i64, Vec<u8>)>,
    keys: Option<(i64, Vec<u8>, i64, Vec<u8>)>,
    namespaces: Vec<Label>,
    ns_requests: HashMap<Label, u64>,
    spool: Option<(String, u64)>,
}

fn take_frozen(shared: &Shared, now: i64, rewrite: bool) -> (Frozen, u64) {
    let mut l = lock(&shared.local);
    let applies = shared.applies.load(Relaxed);
    let l = &mut *l;
    // Slots that left every window are dropped; records not yet sent in them are counted.
    let oldest = now.div_euclid(SLOT_MS) - window_slots() + 1;
    let kept = l.slots.split_off(&oldest);
    let expired = std::mem::replace(&mut l.slots, kept);
    let lost: u64 = expired.values().map(|m| m.unsent).sum();
    if lost > 0 {
        shared.health.dropped(DropReason::LiveStoreExpired, lost);
    }
    let slots = l
        .slots
        .iter_mut()
        .filter(|(_, m)| m.dirty || rewrite)
        .map(|(slot, m)| {
            m.dirty = false;
            m.unsent = 0;
            (*slot, codec::encode_slot(&m.scopes))
        })
        .collect();
    // Redis holds every sent slot. `apply` files deltas under the time its caller has just
    // read, so a slot two behind the current one takes no more; only the last two are kept
    // here (a fresh entry for an older one would overwrite the writer's whole blob).
    let settled = now.div_euclid(SLOT_MS) - 1;
    l.slots = l.slots.split_off(&settled);
    let dirty = std::mem::take(&mut l.dirty) || rewrite;
    let k = &l.keys;
    let frozen = Frozen {
        seed: Aggregates {
            global: counters(&l.state.global),
            scopes: (l.state.scopes.iter())
                .filter(|(k, _)| matches!(k, ScopeKey::Namespace(_)))
                .map(|(k, v)| (k.clone(), counters(v)))
                .collect(),
            ..Aggregates::default()
        },
        last_request_ms: std::mem::take(&mut l.last_request_ms),
        // A writer that counted nothing writes no blob (nothing to retire later either).
        state: (dirty && !l.state.is_empty()).then(|| codec::encode_state(&l.state)),
        slots,
        keys: (dirty && !k.this_month.is_empty()).then(|| {
            (
                k.day,
                codec::encode_counts(&k.today),
                k.month,
                codec::encode_counts(&k.this_month),
            )
        }),
        namespaces: l.namespaces.iter().cloned().collect(),
        ns_requests: std::mem::take(&mut l.ns_requests),
        spool: if std::mem::take(&mut l.spool_dirty) {
            l.spool.clone()
        } else {
            None
        },
    };
    (frozen, applies)
}

/// The flush task's own state.
#[derive(Default)]
struct Flusher {
    /// The last batch's number.
    seq: u64,
    /// The seed totals sent so far (what Redis has, unless a failover lost some).
    seed_sent: HashMap<String, i64>,
    /// The link's generation when the last applied batch was frozen.
    synced: u64,
}

impl Flusher {
    /// Adds a seed total to the batch unless it was sent already.
    fn total(&mut self, ops: &mut Ops, key: String, total: i64) {
        if self.seed_sent.get(&key) != Some(&total) {
            ops.op(&[b"T", key.as_bytes(), total.to_string().as_bytes()]);
            self.seed_sent.insert(key, total);
        }
    }
}

/// Freezes everything pending into one batch: this writer's cumulative blobs and seed totals
/// (idempotent: a batch adds only what its seed record lacks), guarded by the batch marker.
/// Everything is sent, changed or not, every [`STATE_REWRITE_FLUSHES`] and after a new
/// connection (`generation` is the link's now): the master may lack earlier batches.
fn freeze(shared: &Shared, fl: &mut Flusher, now: i64, generation: u64) -> Batch {
    let keys = &shared.keys;
    let cfg = &shared.cfg;
    fl.seq += 1;
    let seq = fl.seq;
    let rewrite = generation != fl.synced || seq.is_multiple_of(STATE_REWRITE_FLUSHES);
    if rewrite {
        fl.seed_sent.clear();
    }
    let (f, applies) = take_frozen(shared, now, rewrite);
    let mut ops = Ops {
        args: vec![
            MARKER_TTL_SECS.to_string().into_bytes(),
            seq.to_string().into_bytes(),
        ],
    };
    let writer = shared.writer.as_str();
    if let Some((spool, pos)) = &f.spool {
        // In the same script as the deltas: Redis holds both or neither.
        ops.op(&[
            b"M",
            keys.spool(spool).as_bytes(),
            pos.to_string().as_bytes(),
        ]);
    }
    if let Some(blob) = &f.state {
        ops.hset(&keys.state(), writer, blob);
    }
    let ttl = ((window_slots() + 2) * SLOT_MS / 1000).to_string();
    for (slot, blob) in &f.slots {
        let key = keys.hist_slot(*slot);
        ops.hset(&key, writer, blob);
        ops.op(&[b"E", key.as_bytes(), ttl.as_bytes()]);
    }
    if let Some((day, today, month, this_month)) = &f.keys {
        let (dk, mk) = (keys.key_calls_day(*day), keys.key_calls_month(*month));
        ops.hset(&dk, writer, today);
        ops.op(&[b"E", dk.as_bytes(), b"259200"]);
        ops.hset(&mk, writer, this_month);
        ops.op(&[b"E", mk.as_bytes(), b"3456000"]);
    }

    // The seed system's keys: this writer's totals (the script adds what Redis lacks).
    let g = &f.seed.global;
    fl.total(&mut ops, keys.global("total_requests"), g.requests as i64);
    fl.total(&mut ops, keys.global("total_errors"), g.failures as i64);
    fl.total(
        &mut ops,
        keys.global("total_response_time"),
        g.duration_ms_sum as i64,
    );
    if f.last_request_ms > 0 {
        let k = keys.global("last_request_time");
        ops.op(&[b"M", k.as_bytes(), f.last_request_ms.to_string().as_bytes()]);
    }
    for (k, a) in &f.seed.scopes {
        let ScopeKey::Namespace(ns) = k else {
            continue;
        };
        fl.total(&mut ops, keys.ns(ns, "total_requests"), a.requests as i64);
        fl.total(
            &mut ops,
            keys.ns(ns, "successful_requests"),
            (a.requests - a.failures) as i64,
        );
        fl.total(&mut ops, keys.ns(ns, "failed_requests"), a.failures as i64);
        fl.total(
            &mut ops,
            keys.ns(ns, "total_response_time"),
            a.duration_ms_sum as i64,
        );
        fl.total(&mut ops, keys.ns(ns, "concurrent_requests"), a.concurrency);
        for (code, n) in &a.status {
            fl.total(&mut ops, keys.ns(ns, &format!("status:{code}")), *n as i64);
        }
    }

    // Heartbeats, with a TTL.
    let hb_ttl = cfg.heartbeat_ttl.as_secs().to_string();
    let now_s = now.to_string();
    let hb = keys.heartbeat(&cfg.instance_id);
    ops.op(&[b"X", hb.as_bytes(), now_s.as_bytes(), hb_ttl.as_bytes()]);
    for ns in &f.namespaces {
        let key = keys.instance_ns(&cfg.instance_id, ns);
        ops.op(&[
            b"S",
            key.as_bytes(),
            b"last_seen",
            now_s.as_bytes(),
            b"instance",
            cfg.instance_id.as_bytes(),
        ]);
        let n = f.ns_requests.get(ns).copied().unwrap_or(0);
        ops.hincr(&key, "requests", n as i64);
        ops.op(&[b"E", key.as_bytes(), hb_ttl.as_bytes()]);
    }

    Batch {
        seq,
        applies,
        generation,
        marker: keys.flush_marker(writer),
        seed_base: keys.seed_base(writer),
        args: ops.args,
    }
}

/// Sends one batch: true if applied now, false if it had been (a retry after a lost reply).
async fn send(shared: &Shared, b: &Batch) -> Result<bool, StoreError> {
    let mut inv = shared.script.key(&b.marker);
    inv.key(&b.seed_base);
    for a in &b.args {
        inv.arg(a.as_slice());
    }
    let applied: i64 = shared
        .link
        .run(|mut con| async move { inv.invoke_async(&mut con).await })
        .await?;
    Ok(applied == 1)
}

#[derive(Clone, Copy)]
enum Task {
    Flush,
    Read,
}

/// Records the outcome of a Redis call; logs when the store goes down or up (and the first
/// failure after start, so an absent Redis is visible in the logs).
fn set_up(shared: &Shared, task: Task, ok: bool, err: Option<&StoreError>) {
    let was = shared.flush_ok.load(Relaxed) && shared.read_ok.load(Relaxed);
    match task {
        Task::Flush => shared.flush_ok.store(ok, Relaxed),
        Task::Read => shared.read_ok.store(ok, Relaxed),
    }
    let now = shared.flush_ok.load(Relaxed) && shared.read_ok.load(Relaxed);
    let first = !shared.state_logged.swap(true, Relaxed);
    match (was, now, err) {
        (true, false, Some(e)) => {
            warn!(error = %e, "Redis unreachable; buffering deltas in memory.")
        }
        (false, false, Some(e)) if first => {
            warn!(error = %e, "Redis unreachable at start; buffering deltas in memory.")
        }
        (false, true, _) => info!("Redis reachable."),
        _ => {}
    }
}

/// One attempt to deliver `in_flight` (or a fresh batch); on failure the batch is kept for a
/// retry with the same seq (and the link has dropped the connection).
async fn flush_once(
    shared: &Shared,
    in_flight: &mut Option<Batch>,
    fl: &mut Flusher,
) -> Result<(), StoreError> {
    let batch = match in_flight.take() {
        Some(b) => b,
        None => freeze(shared, fl, now_ms(), shared.link.generation()),
    };
    match send(shared, &batch).await {
        Ok(applied) => {
            if !applied {
                debug!(
                    seq = batch.seq,
                    "Flush batch was already applied (retry after a lost reply)."
                );
            }
            set_up(shared, Task::Flush, true, None);
            fl.synced = batch.generation;
            shared.flushed.send_if_modified(|f| {
                let newer = batch.applies > *f;
                *f = (*f).max(batch.applies);
                newer
            });
            Ok(())
        }
        Err(e) => {
            set_up(shared, Task::Flush, false, Some(&e));
            // Outcome unknown: retry the SAME batch (same seq) on a fresh connection.
            *in_flight = Some(batch);
            Err(e)
        }
    }
}

async fn flush_loop(shared: Arc<Shared>) {
    let cfg = shared.cfg.clone();
    let mut closing = shared.closing.subscribe();
    let mut in_flight: Option<Batch> = None;
    let mut fl = Flusher::default();
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
        match flush_once(&shared, &mut in_flight, &mut fl).await {
            Ok(()) => backoff = Duration::ZERO,
            Err(_) => backoff = next_backoff(backoff, &cfg),
        }
    }
    // Graceful shutdown: the pipeline has applied its last deltas. Deliver the batch in flight,
    // then one final batch, for a few seconds at most.
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(5).max(2 * (cfg.connect_timeout + cfg.command_timeout));
    // The final batch carries the state blob, so Redis holds exactly this writer's totals,
    // and takes back this writer's share of the concurrency gauges (its totals drop to 0): a
    // stopped process has no requests in flight (its pending starts would otherwise raise the
    // fleet's gauge for good).
    {
        let mut l = lock(&shared.local);
        l.dirty = true;
        for (k, v) in l.state.scopes.iter_mut() {
            if matches!(k, ScopeKey::Namespace(_)) {
                v.concurrency = 0;
            }
        }
    }
    let mut rounds = if in_flight.is_some() { 2 } else { 1 };
    while rounds > 0 {
        match flush_once(&shared, &mut in_flight, &mut fl).await {
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
    if let Err(e) = retire(&shared).await {
        // Nothing is lost: the writer's blob stays in `gatemeter:state`.
        warn!(error = %e, "Could not fold this writer's totals into the retired totals.");
    }
}

/// Folds `gatemeter:state` field `{writer}` into `gatemeter:retired` and deletes the field and
/// the writer's seed record (KEYS[3]), if `gatemeter:retired` is still what was read
/// (compare-and-swap; retried on a race).
const RETIRE_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[2]) or ''
if cur ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3])
return 1
";

/// At graceful shutdown, after the final batch: this writer will never write again, so its
/// cumulative blob can join the merged totals of retired writers. Keeps `gatemeter:state` at
/// one blob per running writer (plus writers that crashed) instead of one per process ever
/// started.
async fn retire(shared: &Shared) -> Result<(), StoreError> {
    let own = {
        let l = lock(&shared.local);
        if l.state.is_empty() {
            return Ok(());
        }
        l.state.clone()
    };
    let (state, retired) = (shared.keys.state(), shared.keys.retired());
    let script = redis::Script::new(RETIRE_SCRIPT);
    for _ in 0..5 {
        let mut get = redis::cmd("GET");
        get.arg(&retired);
        let cur: Option<Vec<u8>> = shared
            .link
            .run(|mut c| async move { get.query_async(&mut c).await })
            .await?;
        let mut merged = Aggregates::default();
        if let Some(b) = &cur
            && !codec::decode_state_into(b, &mut merged)
        {
            return Err(unavailable(
                "gatemeter:retired is not readable by this version",
            ));
        }
        merged.merge(&own);
        let mut inv = script.key(&state);
        inv.key(&retired)
            .key(shared.keys.seed_base(&shared.writer))
            .arg(&shared.writer)
            .arg(cur.unwrap_or_default())
            .arg(codec::encode_state(&merged));
        let done: i64 = shared
            .link
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        if done == 1 {
            debug!(writer = %shared.writer, "Writer retired.");
            return Ok(());
        }
    }
    Err(unavailable("gatemeter:retired kept changing"))
}

fn next_backoff(cur: Duration, cfg: &RedisConfig) -> Duration {
    if cur.is_zero() {
        Duration::from_millis(50)
    } else {
        (cur * 2).min(cfg.max_backoff)
    }
}

type Fields = HashMap<Vec<u8>, Vec<u8>>;

/// Every writer's blob of a hash, logging (once per refresh) malformed ones.
fn each_blob(fields: &Fields, mut add: impl FnMut(&[u8]) -> bool) {
    let bad = fields.values().filter(|b| !add(b)).count();
    if bad > 0 {
        debug!(
            bad,
            "Skipped malformed blobs (written by an incompatible version?)."
        );
    }
}

/// The snapshot pipeline's replies: the state hash, the retired blob, then hashes.
type Replies = (Fields, Option<Vec<u8>>, Vec<Fields>);

fn split_replies(v: Vec<redis::Value>) -> Result<Replies, StoreError> {
    let mut it = v.into_iter();
    let mut next = || it.next().ok_or_else(|| unavailable("short reply"));
    let state: Fields = redis::from_redis_value(next()?).map_err(unavailable)?;
    let retired: Option<Vec<u8>> = redis::from_redis_value(next()?).map_err(unavailable)?;
    let rest = it
        .map(|v| redis::from_redis_value(v).map_err(unavailable))
        .collect::<Result<Vec<Fields>, _>>()?;
    Ok((state, retired, rest))
}

/// Every this many refreshes, every slot of the windows is read again, settled or not: a
/// writer that was cut off from Redis sends its older slots late.
const FULL_READ_EVERY: u64 = 10;

/// Slot hashes read earlier that no writer changes any more, so a refresh reads only the
/// recent slots (a handful of commands, not one per slot of the longest window).
#[derive(Default)]
struct SlotCache {
    settled: BTreeMap<i64, Fields>,
    refreshes: u64,
}

impl SlotCache {
    /// The newest slot counted as settled at `now_slot`: writers file deltas under their
    /// current slot and send them within a flush interval; one more slot covers clock skew.
    fn last_settled(cfg: &RedisConfig, now_slot: i64) -> i64 {
        let flush_slots = (cfg.flush_interval.as_millis() as u64).div_ceil(SLOT_MS as u64) as i64;
        now_slot - flush_slots - 2
    }
}

/// Reads the fleet view: every writer's state, the recent time slots, the API key periods.
async fn read_view(shared: &Shared, cache: &mut SlotCache) -> Result<FleetView, StoreError> {
    let keys = &shared.keys;
    let now = now_ms();
    let now_slot = now.div_euclid(SLOT_MS);
    let first = now_slot - window_slots() + 1;
    let settled = SlotCache::last_settled(&shared.cfg, now_slot);
    let full = cache.refreshes.is_multiple_of(FULL_READ_EVERY);
    cache.refreshes += 1;
    let to_read: Vec<i64> = (first..=now_slot)
        .filter(|s| full || *s > settled || !cache.settled.contains_key(s))
        .collect();
    // MULTI/EXEC: a writer retiring between two reads would be counted twice or not at all.
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.hgetall(keys.state())
        .get(keys.retired())
        .hgetall(keys.key_calls_day(utc_day(now)))
        .hgetall(keys.key_calls_month(utc_month(now)));
    for s in &to_read {
        pipe.hgetall(keys.hist_slot(*s));
    }
    let (state, retired, mut replies): Replies = shared
        .link
        .run(|mut c| async move { pipe.query_async(&mut c).await })
        .await
        .and_then(split_replies)?;
    if replies.len() != 2 + to_read.len() {
        return Err(unavailable("unexpected reply shape"));
    }
    let mut recent = BTreeMap::new();
    for (s, fields) in to_read.into_iter().zip(replies.split_off(2)) {
        if s <= settled {
            cache.settled.insert(s, fields);
        } else {
            recent.insert(s, fields);
        }
    }
    cache.settled = cache.settled.split_off(&first);
    let slots: Vec<(i64, &Fields)> = cache
        .settled
        .iter()
        .chain(&recent)
        .map(|(s, f)| (*s, f))
        .collect();
    // Each writer keeps within the series budget; their union may not: fitted after each
    // writer, so the merged view holds at most about twice the budget while it is built.
    let room = shared
        .health
        .series_budget()
        .limit()
        .saturating_sub(crate::budget::RESERVE);
    let mut totals = Aggregates::default();
    let mut folded = HashMap::new();
    let mut add = |b: &[u8], totals: &mut Aggregates| {
        let mut one = Aggregates::default();
        let ok = codec::decode_state_into(b, &mut one);
        totals.merge(&one);
        folded.extend(totals.fit(room));
        ok
    };
    each_blob(&state, |b| add(b, &mut totals));
    if let Some(b) = &retired
        && !add(b, &mut totals)
    {
        debug!("Skipped a malformed retired-writers blob.");
    }
    let (mut today, mut this_month) = (HashMap::new(), HashMap::new());
    each_blob(&replies[0], |b| codec::decode_counts_into(b, &mut today));
    each_blob(&replies[1], |b| {
        codec::decode_counts_into(b, &mut this_month)
    });
    let key_calls = this_month
        .into_iter()
        .map(|(k, m)| {
            let t = today.get(&k).copied().unwrap_or(0);
            (
                k,
                KeyCalls {
                    today: t,
                    this_month: m,
                },
            )
        })
        .collect();
    let windows = WINDOWS
        .iter()
        .map(|(label, len)| {
            let mut w = WindowView {
                label,
                ..WindowView::default()
            };
            let from = (now - len).div_euclid(SLOT_MS);
            for (slot, fields) in &slots {
                if *slot >= from {
                    each_blob(fields, |b| {
                        codec::decode_slot_into(b, &mut w.global, &mut w.scopes)
                    });
                }
            }
            for (from, to) in &folded {
                if let Some(l) = w.scopes.remove(from) {
                    w.scopes.entry(to.clone()).or_default().merge(&l);
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

async fn refresh_loop(shared: Arc<Shared>) {
    let mut cache = SlotCache::default();
    let mut tick = tokio::time::interval(shared.cfg.refresh_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match read_view(&shared, &mut cache).await {
            Ok(view) => {
                *lock(&shared.view) = Arc::new(view);
                set_up(&shared, Task::Read, true, None);
            }
            Err(e) => set_up(&shared, Task::Read, false, Some(&e)),
        }
    }
}
