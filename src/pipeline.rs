//! The bounded pipeline between ingest handlers and the aggregates.
//!
//! Handlers call [`Pipeline::try_submit`], which never waits: when the queue holds
//! `queue_capacity` records it fails at once and the handler answers 503 with `Retry-After`.
//! One task owns the [`Aggregator`]; it applies events in arrival order, flushes deltas to the
//! live store every flush interval, hands counted records to the request log, and answers
//! snapshot requests in queue order — so a scrape sees every record accepted before it.
//!
//! With durable acknowledgement (`durability: spool`) batches arrive with their spool position,
//! in spool order. After each flush the task asks the request log and the live store to confirm
//! everything handed to them so far ([`RequestLog::sync`], [`LiveStore::sync`]) and publishes
//! the highest position both confirmed ([`Pipeline::confirmed`]): the spool may then forget it.
//! Spooled records never meet a full request log: they wait for room, holding theirs in the
//! ingest queue, and a checkpoint covers only batches the log has been handed (`LogFeed`).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::aggregate::{Aggregator, Limits, Outcome};
use crate::clock::now_ms;
use crate::health::{DropReason, Health};
use crate::record::{Event, ValidRecord};
use crate::store::{FleetView, LiveStore, RequestLog};

/// Pipeline settings.
#[derive(Debug, Clone, Copy)]
pub struct PipelineConfig {
    /// Most records waiting at once.
    pub queue_capacity: usize,
    /// How often deltas go to the live store (and pending starts are expired).
    pub flush_interval: Duration,
    /// Aggregator limits.
    pub limits: Limits,
    /// The global series budget of `/metrics` (every family; see `crate::budget`).
    pub max_series: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 200_000,
            flush_interval: Duration::from_secs(1),
            limits: Limits::default(),
            max_series: crate::budget::DEFAULT_MAX_SERIES,
        }
    }
}

/// Why a submission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overloaded {
    /// The queue is full; retry shortly.
    #[error("the ingest queue is full")]
    QueueFull,
    /// The pipeline has stopped (shutdown).
    #[error("the server is shutting down")]
    ShuttingDown,
}

enum Msg {
    /// Events, with the spool position of their batch when durability is on.
    Events(Vec<Event>, Option<u64>),
    /// Replayed events the live store already holds (up to its spooled position): their
    /// records go to the request log only.
    LogOnly(Vec<Event>, u64),
    View(oneshot::Sender<Arc<FleetView>>),
}

/// The sending side, cheap to clone, shared by every handler.
#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Msg>,
    health: Arc<Health>,
    store: Arc<dyn LiveStore>,
    capacity: usize,
    confirmed: watch::Receiver<u64>,
}

/// Room for `n` records reserved in the queue ([`Pipeline::try_reserve`]); dropped unused, it
/// gives the room back.
pub struct Reserved {
    tx: mpsc::Sender<Msg>,
    health: Arc<Health>,
    n: usize,
}

impl Reserved {
    /// Queues the events the room was reserved for (at most that many), tagged with their spool
    /// position when durability is on. Fails only if the task stopped or the channel is full.
    pub fn submit(mut self, events: Vec<Event>, spool_pos: Option<u64>) -> Result<(), Overloaded> {
        let n = std::mem::take(&mut self.n);
        debug_assert!(events.len() <= n, "more events than reserved");
        let depth = &self.health.queue_depth;
        depth.fetch_sub(n - events.len().min(n), Relaxed);
        let n = events.len().min(n);
        match self.tx.try_send(Msg::Events(events, spool_pos)) {
            Ok(()) => Ok(()),
            Err(e) => {
                depth.fetch_sub(n, Relaxed);
                let (reason, err) = match e {
                    mpsc::error::TrySendError::Full(_) => {
                        (DropReason::QueueFull, Overloaded::QueueFull)
                    }
                    mpsc::error::TrySendError::Closed(_) => {
                        (DropReason::ShuttingDown, Overloaded::ShuttingDown)
                    }
                };
                self.health.dropped(reason, n as u64);
                Err(err)
            }
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if self.n > 0 {
            self.health.queue_depth.fetch_sub(self.n, Relaxed);
        }
    }
}

impl Pipeline {
    /// Starts the aggregator task. It runs until every `Pipeline` clone is dropped, then
    /// flushes the last deltas and closes the request log.
    pub fn spawn(
        cfg: PipelineConfig,
        store: Arc<dyn LiveStore>,
        log: Arc<dyn RequestLog>,
        health: Arc<Health>,
    ) -> (Self, JoinHandle<()>) {
        Self::spawn_spooled(cfg, store, log, health, None)
    }

    /// [`spawn`](Self::spawn), for the durable spool `spool` (its id) when it is on: deltas go
    /// to the live store with the position of their last event ([`LiveStore::apply_spooled`]).
    pub fn spawn_spooled(
        cfg: PipelineConfig,
        store: Arc<dyn LiveStore>,
        log: Arc<dyn RequestLog>,
        health: Arc<Health>,
        spool: Option<Arc<str>>,
    ) -> (Self, JoinHandle<()>) {
        // Each message holds at least one record, so the record budget bounds the channel too;
        // the extra slots are for view requests.
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1) + 64);
        let (confirmed_tx, confirmed) = watch::channel(0);
        let task = tokio::spawn(run(
            cfg,
            rx,
            store.clone(),
            log,
            health.clone(),
            confirmed_tx,
            spool,
        ));
        (
            Self {
                tx,
                health,
                store,
                capacity: cfg.queue_capacity,
                confirmed,
            },
            task,
        )
    }

    /// Queues events without waiting; fails at once when the queue is full.
    pub fn try_submit(&self, events: Vec<Event>) -> Result<(), Overloaded> {
        if events.is_empty() {
            return Ok(());
        }
        self.try_reserve(events.len())?.submit(events, None)
    }

    /// Reserves room for `n` records without waiting; fails at once (counted) when the queue
    /// is full. The spool reserves before it writes, so a batch it acknowledges has its room.
    pub fn try_reserve(&self, n: usize) -> Result<Reserved, Overloaded> {
        let depth = &self.health.queue_depth;
        if depth.fetch_add(n, Relaxed) + n > self.capacity {
            depth.fetch_sub(n, Relaxed);
            self.health.dropped(DropReason::QueueFull, n as u64);
            return Err(Overloaded::QueueFull);
        }
        if self.tx.is_closed() {
            depth.fetch_sub(n, Relaxed);
            self.health.dropped(DropReason::ShuttingDown, n as u64);
            return Err(Overloaded::ShuttingDown);
        }
        Ok(Reserved {
            tx: self.tx.clone(),
            health: self.health.clone(),
            n,
        })
    }

    /// Queues a replayed spool batch, waiting for room: only the spool's replay at start
    /// uses it, before the server answers anyone (handlers never wait on a full queue). With
    /// `live` false the live store holds the batch already: only the request log gets it.
    pub async fn submit_replayed(
        &self,
        events: Vec<Event>,
        spool_pos: u64,
        live: bool,
    ) -> Result<(), Overloaded> {
        let n = events.len();
        let depth = &self.health.queue_depth;
        loop {
            // An empty queue takes any batch (the capacity may have shrunk since it was spooled).
            let before = depth.fetch_add(n, Relaxed);
            if before == 0 || before + n <= self.capacity {
                break;
            }
            depth.fetch_sub(n, Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let msg = if live {
            Msg::Events(events, Some(spool_pos))
        } else {
            Msg::LogOnly(events, spool_pos)
        };
        if self.tx.send(msg).await.is_err() {
            depth.fetch_sub(n, Relaxed);
            return Err(Overloaded::ShuttingDown);
        }
        Ok(())
    }

    /// The highest spool position whose records the request log has written and the live
    /// store has taken (0 before the first); see the module docs.
    pub fn confirmed(&self) -> watch::Receiver<u64> {
        self.confirmed.clone()
    }

    /// The fleet view including every event queued before this call. Falls back to the
    /// store's latest view (at most one flush interval old) if the queue cannot take the request.
    pub async fn view(&self) -> Arc<FleetView> {
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send(Msg::View(reply)).is_ok()
            && let Ok(Ok(view)) = tokio::time::timeout(Duration::from_secs(5), rx).await
        {
            return view;
        }
        self.store.view(now_ms())
    }

    /// Whether the aggregator task is running.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// This process's health counters.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The live store behind the pipeline.
    pub fn store(&self) -> &Arc<dyn LiveStore> {
        &self.store
    }
}

async fn run(
    cfg: PipelineConfig,
    mut rx: mpsc::Receiver<Msg>,
    store: Arc<dyn LiveStore>,
    log: Arc<dyn RequestLog>,
    health: Arc<Health>,
    confirmed: watch::Sender<u64>,
    spool: Option<Arc<str>>,
) {
    // Deltas to the live store, with the spool position they reach when the spool is on.
    let flush = |agg: &mut Aggregator, applied_pos: u64, now: i64| match &spool {
        Some(id) if applied_pos > 0 => store.apply_spooled(agg.take(), now, id, applied_pos),
        _ => store.apply(agg.take(), now),
    };
    let confirmed = Arc::new(confirmed);
    let mut agg = Aggregator::with_budget(cfg.limits, health.series_budget().clone());
    // The spool position of the last batch applied, and the last one a checkpoint was asked for.
    let (mut applied_pos, mut asked_pos) = (0u64, 0u64);
    let mut checkpoint: Option<JoinHandle<()>> = None;
    let mut tick = tokio::time::interval(cfg.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inbox = Vec::with_capacity(256);
    let mut feed = LogFeed::default();
    loop {
        tokio::select! {
            // The tick first: under sustained load the queue is always ready and would starve it.
            biased;
            _ = tick.tick() => {
                let now = now_ms();
                agg.expire(now);
                health.set_pending(agg.pending());
                flush(&mut agg, applied_pos, now);
                // One checkpoint at a time: a slow log only delays the next one. It covers
                // what the log has been handed: the live store took at least that much.
                let pos = feed.logged_pos;
                if pos > asked_pos && checkpoint.as_ref().is_none_or(|t| t.is_finished()) {
                    asked_pos = pos;
                    checkpoint = Some(tokio::spawn(confirm(
                        log.clone(),
                        store.clone(),
                        pos,
                        confirmed.clone(),
                        None,
                    )));
                }
            }
            // Spooled records waiting for room in the request log.
            _ = tokio::time::sleep(HELD_RETRY), if feed.is_holding() => {
                feed.hand_over(log.as_ref(), &health);
            }
            // Drain what is queued in one wake-up: under load a wake-up per message would cost
            // more than the records themselves.
            n = rx.recv_many(&mut inbox, 256) => {
                if n == 0 {
                    break;
                }
                for msg in inbox.drain(..) {
                    match msg {
                        Msg::Events(events, pos) => {
                            let n = events.len();
                            let counted = apply(&mut agg, events, &health);
                            if let Some(pos) = pos {
                                applied_pos = applied_pos.max(pos);
                            }
                            feed.push(counted, n, pos, log.as_ref(), &health);
                        }
                        Msg::LogOnly(events, pos) => {
                            let n = events.len();
                            let records = finished(events);
                            applied_pos = applied_pos.max(pos);
                            feed.push(records, n, Some(pos), log.as_ref(), &health);
                        }
                        Msg::View(reply) => {
                            let now = now_ms();
                            flush(&mut agg, applied_pos, now);
                            let _ = reply.send(store.view(now));
                        }
                    }
                }
            }
        }
    }
    flush(&mut agg, applied_pos, now_ms());
    feed.hand_over_within(FINAL_CHECKPOINT_WAIT, log.as_ref(), &health)
        .await;
    let logged_pos = feed.logged_pos;
    if logged_pos > *confirmed.borrow() {
        // The last checkpoint, before the stores close: what they confirm now is not replayed
        // at the next start (a live store that cannot confirm leaves it to the replay).
        if let Some(t) = checkpoint.take() {
            let _ = t.await;
        }
        confirm(
            log.clone(),
            store.clone(),
            logged_pos,
            confirmed.clone(),
            Some(FINAL_CHECKPOINT_WAIT),
        )
        .await;
    }
    store.close().await;
    log.close().await;
}

/// How long the last checkpoint at shutdown waits for the stores to confirm.
const FINAL_CHECKPOINT_WAIT: Duration = Duration::from_secs(5);

/// Publishes `pos` as confirmed once the request log and the live store both confirm having
/// taken everything handed to them before this call (within `limit`, when given).
async fn confirm(
    log: Arc<dyn RequestLog>,
    store: Arc<dyn LiveStore>,
    pos: u64,
    confirmed: Arc<watch::Sender<u64>>,
    limit: Option<Duration>,
) {
    let both = async { tokio::join!(log.sync(), store.sync()) };
    let (logged, stored) = match limit {
        Some(limit) => tokio::time::timeout(limit, both)
            .await
            .unwrap_or((false, false)),
        None => both.await,
    };
    if logged && stored {
        confirmed.send_if_modified(|c| {
            let newer = pos > *c;
            if newer {
                *c = pos;
            }
            newer
        });
    }
}

/// Counted records as the request log takes them (boxed as the events carried them: they
/// move on without a copy).
#[allow(clippy::vec_box)]
type Records = Vec<Box<ValidRecord>>;

/// How often spooled records waiting for the request log ask it for room again.
const HELD_RETRY: Duration = Duration::from_millis(2);

/// A batch's counted records on their way to the request log, with its spool position and the
/// ingest-queue room its events still hold.
struct Held {
    records: Records,
    /// What the records weigh ([`ValidRecord::approx_bytes`]), for the log's room check.
    bytes: usize,
    pos: u64,
    events: usize,
}

/// Hands counted records to the request log. Records without a spool position go at once and
/// are dropped (`log_full`) when the log is full. Spooled ones wait, in spool order, until the
/// log has room ([`RequestLog::has_room`]): the spool forgets what the log has taken, so
/// dropping them would lose acknowledged records. While they wait they keep their room in the
/// ingest queue, so a log that falls behind slows ingest down (503 at the queue or the spool)
/// instead of growing memory.
#[derive(Default)]
struct LogFeed {
    held: std::collections::VecDeque<Held>,
    /// The spool position up to which every batch's records are in the log's hands.
    logged_pos: u64,
}

impl LogFeed {
    fn push(
        &mut self,
        records: Records,
        events: usize,
        pos: Option<u64>,
        log: &dyn RequestLog,
        health: &Health,
    ) {
        match pos {
            None => {
                health.queue_depth.fetch_sub(events, Relaxed);
                submit(records, log, health);
            }
            Some(pos) => {
                self.held.push_back(Held {
                    bytes: crate::record::approx_bytes(&records),
                    records,
                    pos,
                    events,
                });
                self.hand_over(log, health);
            }
        }
    }

    /// Hands over the held batches the log has room for, in order.
    fn hand_over(&mut self, log: &dyn RequestLog, health: &Health) {
        while let Some(next) = self.held.front() {
            if !next.records.is_empty() && !log.has_room(next.records.len(), next.bytes) {
                return;
            }
            let Held {
                records,
                pos,
                events,
                ..
            } = self.held.pop_front().expect("a front");
            health.queue_depth.fetch_sub(events, Relaxed);
            submit(records, log, health);
            self.logged_pos = self.logged_pos.max(pos);
        }
    }

    /// At shutdown: hands over what is held, waiting for room up to `limit`. What is still held
    /// then stays in the spool (it is not confirmed) and the next start replays it.
    async fn hand_over_within(&mut self, limit: Duration, log: &dyn RequestLog, health: &Health) {
        let deadline = tokio::time::Instant::now() + limit;
        self.hand_over(log, health);
        while self.is_holding() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(HELD_RETRY).await;
            self.hand_over(log, health);
        }
        if let Some(first) = self.held.front() {
            let records: usize = self.held.iter().map(|h| h.records.len()).sum();
            tracing::warn!(
                records,
                from_position = first.pos,
                "The request log had no room for these spooled records before shutdown; \
                 they stay in the spool and the next start replays them."
            );
        }
    }

    fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }
}

/// Queues `records` in the log, counting them as `log_full` if it refuses.
fn submit(records: Records, log: &dyn RequestLog, health: &Health) {
    let n = records.len() as u64;
    if n > 0 && log.submit(records).is_err() {
        health.dropped(DropReason::LogFull, n);
    }
}

/// The records of replayed events whose deltas the live store holds (they go to the log only).
fn finished(events: Vec<Event>) -> Records {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Finish(r) => Some(r),
            Event::Start(_) => None,
        })
        .collect()
}

/// Applies `events` to the aggregates; returns the records counted (first seen), for the log.
fn apply(agg: &mut Aggregator, events: Vec<Event>, health: &Health) -> Records {
    let now = now_ms();
    let n = events.len();
    let mut duplicates = 0u64;
    let mut pending_full = 0u64;
    let mut counted = Vec::with_capacity(n);
    for event in events {
        match agg.apply(&event, now) {
            Outcome::Counted => {
                if let Event::Finish(r) = event {
                    counted.push(r);
                }
            }
            Outcome::Started => {}
            Outcome::Duplicate => duplicates += 1,
            Outcome::PendingFull => pending_full += 1,
        }
    }
    health.processed(n as u64, duplicates);
    if pending_full > 0 {
        health.dropped(DropReason::PendingFull, pending_full);
    }
    counted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::price::PriceTable;
    use crate::record::{Validation, parse_event};
    use crate::store::{Discard, MemoryStore};

    fn events(n: usize) -> Vec<Event> {
        tagged_events("d", n)
    }

    /// `n` valid events with ids `{tag}{i}`.
    fn tagged_events(tag: &str, n: usize) -> Vec<Event> {
        let prices = PriceTable::default();
        let v = Validation {
            now_ms: now_ms(),
            prices: &prices,
            keep_requests: None,
        };
        (0..n)
            .map(|i| {
                let json = format!(
                    r#"{{"request_id":"{tag}{i}","model":"m","status":200,"duration_ms":{i}}}"#
                );
                parse_event(&json, &v).expect("valid")
            })
            .collect()
    }

    #[tokio::test]
    async fn shutdown_drains_the_queue_and_flushes() {
        let store = Arc::new(MemoryStore::new());
        let health = Arc::new(Health::new(10_000));
        // A flush interval far beyond the test: only the final flush can deliver the deltas.
        let cfg = PipelineConfig {
            flush_interval: Duration::from_secs(3600),
            ..PipelineConfig::default()
        };
        let (p, task) = Pipeline::spawn(cfg, store.clone(), Arc::new(Discard), health.clone());
        for _ in 0..10 {
            p.try_submit(events(100)).expect("room");
        }
        drop(p);
        task.await.expect("aggregator ends");
        assert_eq!(
            store.view(now_ms()).totals.global.requests,
            100,
            "ids repeat across batches"
        );
        let h = health.snapshot();
        assert_eq!((h.processed, h.duplicates, h.queue_depth), (1000, 900, 0));
    }

    /// A request log that takes at most `room` records (it never writes them out).
    #[derive(Default)]
    struct TightLog {
        taken: std::sync::Mutex<Vec<String>>,
        room: std::sync::atomic::AtomicUsize,
    }

    impl RequestLog for TightLog {
        fn name(&self) -> &'static str {
            "tight"
        }

        fn submit(&self, records: Vec<Box<ValidRecord>>) -> Result<(), crate::store::StoreError> {
            if !self.has_room(records.len(), 0) {
                return Err(crate::store::StoreError::Full { store: "tight" });
            }
            let mut taken = self.taken.lock().expect("lock");
            taken.extend(records.iter().map(|r| format!("{:?}", r.request_id)));
            Ok(())
        }

        fn has_room(&self, records: usize, _bytes: usize) -> bool {
            let taken = self.taken.lock().expect("lock").len();
            taken + records <= self.room.load(Relaxed)
        }

        fn close(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async {})
        }
    }

    /// Spooled batches meeting a full request log wait for room instead of being dropped, and
    /// the spool position confirmed never passes a batch the log has not taken.
    #[tokio::test]
    async fn spooled_records_wait_for_room_in_the_log() {
        let store = Arc::new(MemoryStore::new());
        let health = Arc::new(Health::new(10_000));
        let log = Arc::new(TightLog::default());
        log.room.store(100, Relaxed);
        let cfg = PipelineConfig {
            flush_interval: Duration::from_millis(5),
            ..PipelineConfig::default()
        };
        let (p, task) = Pipeline::spawn(cfg, store.clone(), log.clone(), health.clone());
        for pos in 1..=5 {
            p.try_reserve(100)
                .expect("room")
                .submit(tagged_events(&format!("b{pos}-"), 100), Some(pos))
                .expect("queued");
        }
        let mut confirmed = p.confirmed();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            log.taken.lock().expect("lock").len(),
            100,
            "the log is full"
        );
        assert_eq!(*confirmed.borrow(), 1, "only the batch the log took");
        assert_eq!(
            health.snapshot().queue_depth,
            400,
            "held batches keep their room"
        );
        log.room.store(usize::MAX, Relaxed);
        tokio::time::timeout(Duration::from_secs(5), confirmed.wait_for(|&c| c == 5))
            .await
            .expect("every batch confirmed")
            .expect("pipeline running");
        let h = health.snapshot();
        assert_eq!(log.taken.lock().expect("lock").len(), 500);
        assert_eq!(
            (h.dropped[DropReason::LogFull as usize], h.queue_depth),
            (0, 0)
        );
        assert_eq!(store.view(now_ms()).totals.global.requests, 500);
        drop(p);
        task.await.expect("aggregator ends");
    }

    #[tokio::test]
    async fn submissions_beyond_capacity_fail_at_once() {
        let store = Arc::new(MemoryStore::new());
        let health = Arc::new(Health::new(150));
        let cfg = PipelineConfig {
            queue_capacity: 150,
            ..PipelineConfig::default()
        };
        let (p, task) = Pipeline::spawn(cfg, store, Arc::new(Discard), health.clone());
        // The aggregator task has not run yet on this single-threaded test runtime.
        p.try_submit(events(100)).expect("fits");
        assert_eq!(p.try_submit(events(100)), Err(Overloaded::QueueFull));
        assert_eq!(
            health.snapshot().dropped[DropReason::QueueFull as usize],
            100
        );
        drop(p);
        task.await.expect("aggregator ends");
    }
}
