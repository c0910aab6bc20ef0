//! The bounded pipeline between ingest handlers and the aggregates.
//!
//! Handlers call [`Pipeline::try_submit`], which never waits: when the queue holds
//! `queue_capacity` records it fails at once and the handler answers 503 with `Retry-After`.
//! One task owns the [`Aggregator`]; it applies events in arrival order, flushes deltas to the
//! live store every flush interval, hands counted records to the request log, and answers
//! snapshot requests in queue order — so a scrape sees every record accepted before it.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::aggregate::{Aggregator, Limits, Outcome};
use crate::clock::now_ms;
use crate::health::{DropReason, Health};
use crate::record::Event;
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
    Events(Vec<Event>),
    View(oneshot::Sender<Arc<FleetView>>),
}

/// The sending side, cheap to clone, shared by every handler.
#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Msg>,
    health: Arc<Health>,
    store: Arc<dyn LiveStore>,
    capacity: usize,
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
        // Each message holds at least one record, so the record budget bounds the channel too;
        // the extra slots are for view requests.
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1) + 64);
        let task = tokio::spawn(run(cfg, rx, store.clone(), log, health.clone()));
        (
            Self {
                tx,
                health,
                store,
                capacity: cfg.queue_capacity,
            },
            task,
        )
    }

    /// Queues events without waiting; fails at once when the queue is full.
    pub fn try_submit(&self, events: Vec<Event>) -> Result<(), Overloaded> {
        let n = events.len();
        if n == 0 {
            return Ok(());
        }
        let depth = &self.health.queue_depth;
        if depth.fetch_add(n, Relaxed) + n > self.capacity {
            depth.fetch_sub(n, Relaxed);
            self.health.dropped(DropReason::QueueFull, n as u64);
            return Err(Overloaded::QueueFull);
        }
        match self.tx.try_send(Msg::Events(events)) {
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
) {
    let mut agg = Aggregator::with_budget(cfg.limits, health.series_budget().clone());
    let mut tick = tokio::time::interval(cfg.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inbox = Vec::with_capacity(256);
    loop {
        tokio::select! {
            // The tick first: under sustained load the queue is always ready and would starve it.
            biased;
            _ = tick.tick() => {
                let now = now_ms();
                agg.expire(now);
                health.set_pending(agg.pending());
                store.apply(agg.take(), now);
            }
            // Drain what is queued in one wake-up: under load a wake-up per message would cost
            // more than the records themselves.
            n = rx.recv_many(&mut inbox, 256) => {
                if n == 0 {
                    break;
                }
                for msg in inbox.drain(..) {
                    match msg {
                        Msg::Events(events) => apply(&mut agg, events, log.as_ref(), &health),
                        Msg::View(reply) => {
                            let now = now_ms();
                            store.apply(agg.take(), now);
                            let _ = reply.send(store.view(now));
                        }
                    }
                }
            }
        }
    }
    store.apply(agg.take(), now_ms());
    store.close().await;
    log.close().await;
}

fn apply(agg: &mut Aggregator, events: Vec<Event>, log: &dyn RequestLog, health: &Health) {
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
    health.queue_depth.fetch_sub(n, Relaxed);
    health.processed(n as u64, duplicates);
    if pending_full > 0 {
        health.dropped(DropReason::PendingFull, pending_full);
    }
    let logged = counted.len() as u64;
    if logged > 0 && log.submit(counted).is_err() {
        health.dropped(DropReason::LogFull, logged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::price::PriceTable;
    use crate::record::{Validation, parse_event};
    use crate::store::{Discard, MemoryStore};

    fn events(n: usize) -> Vec<Event> {
        let prices = PriceTable::default();
        let v = Validation {
            now_ms: now_ms(),
            prices: &prices,
        };
        (0..n)
            .map(|i| {
                let json = format!(
                    r#"{{"request_id":"d{i}","model":"m","status":200,"duration_ms":{i}}}"#
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
