//! The one writer task of the SQL request log: drains the queue, writes what it took in one
//! statement or transaction per batch — SQLite: a prepared single-row `INSERT` stepped per row
//! in one transaction (`sqlite_insert.rs`); PostgreSQL: a binary `COPY` into a staging table,
//! then one `INSERT … SELECT` (`writer/postgres.rs`) — both
//! `ON CONFLICT (request_id) DO NOTHING`.
//!
//! A failed write is classified ([`WriteError`]): while the database is away (an outage) the
//! batch is held and retried with back-off, without end, and what arrives meanwhile waits in
//! the bounded queue (a full queue refuses at `submit`, counted `log_full`); a batch the
//! database refuses (constraint, data, schema) is dropped after [`REFUSED_ATTEMPTS`] and
//! counted `log_write_failed`. Closing gives up at a deadline: what is still unwritten then is
//! counted `log_write_failed` too.
//!
//! Batching adapts to load: while a batch is being written, whatever arrives waits, so a quiet
//! server writes small transactions at once and a busy one writes up to `batch_rows` rows per
//! transaction. SQLite writes one batch at a time (it has one writer anyway); PostgreSQL up to
//! `write_concurrency` at once (default 2), on separate connections — batches may then commit
//! out of order, which idempotent inserts allow. A flush waits for every record received before it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Notify, mpsc, oneshot};

use super::{Backend, Setup, WriteError, count_failed};
use crate::health::Health;
use crate::record::ValidRecord;

pub(super) mod postgres;

/// What the writer receives.
pub(crate) enum Msg {
    /// Records to write (boxed as the pipeline hands them over: no copy).
    #[allow(clippy::vec_box)]
    Records(Vec<Box<ValidRecord>>),
    /// Answer once everything received before is written.
    Flush(oneshot::Sender<()>),
}

/// Attempts of a batch the database refuses (not an outage) before it is dropped and counted.
pub(crate) const REFUSED_ATTEMPTS: u32 = 3;

/// First wait before a failed write is tried again; it doubles up to [`RETRY_CAP`].
pub(crate) const FIRST_RETRY: Duration = Duration::from_millis(50);

/// Longest wait between two attempts while the database is away: it is back in the log at
/// most this long (plus one connection attempt, `ACQUIRE_TIMEOUT`) after it answers again.
pub(crate) const RETRY_CAP: Duration = Duration::from_secs(2);

/// The writer's inputs besides its queue.
pub(crate) struct Writer {
    pub backend: Backend,
    pub setup: Arc<Setup>,
    pub depth: Arc<AtomicUsize>,
    /// Their bytes ([`ValidRecord::approx_bytes`]), released with them.
    pub bytes: Arc<AtomicUsize>,
    pub health: Arc<Health>,
    /// Told once, at a closing deadline: stop writing, count what is left as failed.
    pub abandon: Arc<Notify>,
    pub batch_rows: usize,
    pub write_concurrency: usize,
    /// Whether the rows written are added to the rollups (`rollup.rs`).
    pub rollups: bool,
}

pub(crate) async fn run(w: Writer, mut rx: mpsc::Receiver<Msg>) {
    let Writer {
        backend,
        setup,
        depth,
        bytes,
        health,
        abandon,
        batch_rows,
        write_concurrency,
        rollups,
    } = w;
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
    // Start number → rows of each batch in flight.
    let mut in_flight_starts = BTreeMap::new();
    // A flush is answered once every record received before it is written (or counted).
    let mut acks: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
    let mut open = true;
    loop {
        while in_flight.len() < max_in_flight && !pending.is_empty() {
            let take = pending.len().min(batch_rows);
            let batch: Arc<Vec<_>> = Arc::new(pending.drain(..take).collect());
            let size: usize = batch.iter().map(|r| r.approx_bytes()).sum();
            let start = taken;
            taken += take as u64;
            in_flight_starts.insert(start, (take, size));
            let (backend, setup, health) = (backend.clone(), setup.clone(), health.clone());
            in_flight.push(async move {
                write_with_retry(&backend, &setup, &batch, &health, rollups).await;
                (start, batch.len())
            });
        }
        // Everything numbered below the watermark is written.
        let watermark = in_flight_starts
            .first_key_value()
            .map_or(taken, |(start, _)| *start);
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
                let size = in_flight_starts.remove(&start).map_or(0, |(_, size)| size);
                depth.fetch_sub(n, Relaxed);
                bytes.fetch_sub(size, Relaxed);
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
            () = abandon.notified() => {
                // Writes in flight are cancelled (a transaction not committed is rolled back);
                // everything not known to be written is counted.
                drop(in_flight);
                let mut lost: usize = in_flight_starts.values().map(|(n, _)| n).sum::<usize>()
                    + pending.len();
                let mut lost_bytes: usize = in_flight_starts.values().map(|(_, b)| b).sum::<usize>()
                    + pending.iter().map(|r| r.approx_bytes()).sum::<usize>();
                rx.close();
                while let Ok(msg) = rx.try_recv() {
                    match msg {
                        Msg::Records(r) => {
                            lost += r.len();
                            lost_bytes += r.iter().map(|r| r.approx_bytes()).sum::<usize>();
                        }
                        Msg::Flush(ack) => acks.push((received, ack)),
                    }
                }
                depth.fetch_sub(lost, Relaxed);
                bytes.fetch_sub(lost_bytes, Relaxed);
                if lost > 0 {
                    tracing::error!(
                        rows = lost,
                        "Request log closed before it could write everything; rows dropped."
                    );
                    count_failed(&health, lost);
                }
                // Dropped, not answered: a flush waiter learns that not everything was written.
                drop(acks);
                return;
            }
        }
    }
}

/// Writes `batch`, retrying: without end while the database is away (the batch is held, the
/// store reported down), [`REFUSED_ATTEMPTS`] times when the database refuses it.
#[allow(clippy::vec_box)]
async fn write_with_retry(
    backend: &Backend,
    setup: &Setup,
    batch: &Arc<Vec<Box<ValidRecord>>>,
    health: &Health,
    rollups: bool,
) {
    let mut delay = FIRST_RETRY;
    let (mut refused, mut outages) = (0u32, 0u64);
    loop {
        let result = match setup.ensure().await {
            Ok(()) => write_batch(backend, batch, rollups).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                if outages > 0 {
                    tracing::info!(
                        rows = batch.len(),
                        attempts = outages + 1,
                        "Request log reachable again; held batch written."
                    );
                }
                health.set_log_store_up(true);
                return;
            }
            Err(WriteError::Outage(e)) => {
                outages += 1;
                health.set_log_store_up(false);
                if outages == 1 {
                    tracing::warn!(error = %e, rows = batch.len(),
                        "Request log unreachable; holding the batch and retrying until it is back.");
                } else {
                    tracing::debug!(error = %e, attempt = outages, "Request log still unreachable.");
                }
            }
            Err(WriteError::Refused(e)) => {
                refused += 1;
                if refused >= REFUSED_ATTEMPTS {
                    tracing::error!(error = %e, rows = batch.len(), attempts = refused,
                        "Request log refused a batch; batch dropped.");
                    count_failed(health, batch.len());
                    return;
                }
                tracing::warn!(error = %e, attempt = refused, rows = batch.len(),
                    "Request log refused a batch; retrying.");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_CAP);
    }
}

/// Writes one batch in one transaction, with its rollups when `rollups`. Rows whose
/// `request_id` is already stored are skipped (and not rolled up).
#[allow(clippy::vec_box)]
pub(crate) async fn write_batch(
    backend: &Backend,
    batch: &Arc<Vec<Box<ValidRecord>>>,
    rollups: bool,
) -> Result<(), WriteError> {
    match backend {
        Backend::Sqlite(pool) => super::sqlite_insert::write(pool, batch.clone(), rollups).await,
        Backend::Postgres(pool) => postgres::write(pool, batch, rollups).await,
    }
}
