//! The one writer task of the SQL request log: drains the queue, writes what it took in one
//! statement or transaction per batch — SQLite: a prepared single-row `INSERT` stepped per row
//! in one transaction (`sqlite_insert.rs`); PostgreSQL: a binary `COPY` into a staging table,
//! then one `INSERT … SELECT` (`writer/postgres.rs`) — both
//! `ON CONFLICT (request_id) DO NOTHING`; retries transient failures with back-off, and counts
//! what it finally gives up on.
//!
//! Batching adapts to load: while a batch is being written, whatever arrives waits, so a quiet
//! server writes small transactions at once and a busy one writes up to `batch_rows` rows per
//! transaction. SQLite writes one batch at a time (it has one writer anyway); PostgreSQL up to
//! `write_concurrency` at once (default 2), on separate connections — batches may then commit
//! out of order, which idempotent inserts allow. A flush waits for every record received before it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use super::{Backend, count_failed};
use crate::health::Health;
use crate::record::ValidRecord;
use crate::store::StoreError;

pub(super) mod postgres;

/// What the writer receives.
pub(crate) enum Msg {
    /// Records to write (boxed as the pipeline hands them over: no copy).
    #[allow(clippy::vec_box)]
    Records(Vec<Box<ValidRecord>>),
    /// Answer once everything received before is written.
    Flush(oneshot::Sender<()>),
}

/// Attempts per batch before it is dropped and counted.
const ATTEMPTS: u32 = 5;

pub(crate) async fn run(
    backend: Backend,
    mut rx: mpsc::Receiver<Msg>,
    depth: Arc<AtomicUsize>,
    health: Arc<Health>,
    batch_rows: usize,
    write_concurrency: usize,
) {
    // SQLite has one writer at a time anyway; PostgreSQL writes batches in parallel.
    let max_in_flight = match backend {
        Backend::Sqlite(_) => 1,
        Backend::Postgres(_) => write_concurrency,
    };
    let mut inbox = Vec::with_capacity(64);
    let mut pending: Vec<Box<ValidRecord>> = Vec::new();
    // Records are numbered in arrival order: `received` so far, `taken` into batches.
    let (mut received, mut taken) = (0u64, 0u64);
    let mut in_flight = FuturesUnordered::new();
    let mut in_flight_starts = BTreeSet::new();
    // A flush is answered once every record received before it is written (or counted).
    let mut acks: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
    let mut open = true;
    loop {
        while in_flight.len() < max_in_flight && !pending.is_empty() {
            let take = pending.len().min(batch_rows);
            let batch: Arc<Vec<_>> = Arc::new(pending.drain(..take).collect());
            let start = taken;
            taken += take as u64;
            in_flight_starts.insert(start);
            let (backend, health) = (backend.clone(), health.clone());
            in_flight.push(async move {
                write_with_retry(&backend, &batch, &health).await;
                (start, batch.len())
            });
        }
        // Everything numbered below the watermark is written.
        let watermark = in_flight_starts.first().copied().unwrap_or(taken);
        if acks.iter().any(|(target, _)| *target <= watermark) {
            let (ready, waiting): (Vec<_>, Vec<_>) =
                acks.drain(..).partition(|(target, _)| *target <= watermark);
            acks = waiting;
            for (_, ack) in ready {
                let _ = ack.send(());
            }
        }
        if !open && in_flight.is_empty() && pending.is_empty() {
            break;
        }
        tokio::select! {
            Some((start, n)) = in_flight.next(), if !in_flight.is_empty() => {
                in_flight_starts.remove(&start);
                depth.fetch_sub(n, Relaxed);
            }
            k = rx.recv_many(&mut inbox, 64), if open => {
                if k == 0 {
                    open = false;
                }
                for msg in inbox.drain(..) {
                    match msg {
                        Msg::Records(r) => {
                            received += r.len() as u64;
                            pending.extend(r);
                        }
                        Msg::Flush(ack) => acks.push((received, ack)),
                    }
                }
            }
        }
    }
}

#[allow(clippy::vec_box)]
async fn write_with_retry(backend: &Backend, batch: &Arc<Vec<Box<ValidRecord>>>, health: &Health) {
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=ATTEMPTS {
        match write_batch(backend, batch).await {
            Ok(()) => return,
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, rows = batch.len(), "Request log write failed; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(error = %e, rows = batch.len(), "Request log write failed; batch dropped.");
                count_failed(health, batch.len());
            }
        }
    }
}

/// Writes one batch in one transaction. Rows whose `request_id` is already stored are skipped.
#[allow(clippy::vec_box)]
pub(crate) async fn write_batch(
    backend: &Backend,
    batch: &Arc<Vec<Box<ValidRecord>>>,
) -> Result<(), StoreError> {
    match backend {
        Backend::Sqlite(pool) => super::sqlite_insert::write(pool, batch.clone()).await,
        Backend::Postgres(pool) => write_postgres(pool, batch).await,
    }
}

/// PostgreSQL: binary `COPY` into a staging table, then one idempotent `INSERT … SELECT`
/// (see [`postgres`]).
async fn write_postgres(pool: &sqlx::PgPool, batch: &[Box<ValidRecord>]) -> Result<(), StoreError> {
    postgres::write(pool, batch).await
}
