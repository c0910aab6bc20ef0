//! The one writer task of the SQL request log: drains the queue, writes what it took in one
//! statement or transaction per batch — SQLite: a prepared 64-row `INSERT OR IGNORE` stepped
//! per 64 rows in one transaction (`sqlite_insert.rs`); PostgreSQL: a binary `COPY` into a
//! staging table, then one `INSERT … SELECT … ON CONFLICT (request_id) DO NOTHING`
//! (`writer/postgres.rs`). Either way a repeated request id stores nothing.
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
//! transaction. SQLite writes one batch at a time (it has one writer anyway), with the next
//! one in flight beside it, being prepared (`sqlite_insert::Prepared`) while it waits for its
//! turn; PostgreSQL writes up to `write_concurrency` at once (default 2), on separate
//! connections — batches may then commit out of order, which idempotent inserts allow. A flush
//! waits for every record received before it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Notify, mpsc, oneshot};

use super::sqlite_insert::Prepared;
use super::{Backend, Setup, WriteError, count_failed, write_error};
use crate::health::Health;
use crate::record::ValidRecord;

pub(super) mod postgres;

/// What the writer receives.
pub(crate) enum Msg {
    /// Records to write (boxed as the pipeline hands them over: no copy).
    #[allow(clippy::vec_box)]
    Records(Vec<Box<ValidRecord>>),
    /// Answer once everything received before is written (the rollup increments are then in
    /// the journal, as durable as the rows), and with `merge` also merged into the rollups.
    Flush {
        ack: oneshot::Sender<()>,
        merge: bool,
    },
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
    /// [`MERGE_ROWS`] (smaller in tests).
    pub merge_rows: u64,
}

/// Journaled rows are merged into the rollups once this many request-log rows are waiting…
/// A merge's cost follows the rollup and session rows it touches (at 100,000 rows/s of 10,000
/// users, about the same whether it covers 5 or 10 s), so up to that rate merges come every
/// [`MERGE_LAG`]; a merge reads its journal at once (figures: docs/benchmarks.md, tenth session).
pub(crate) const MERGE_ROWS: u64 = 1_000_000;

/// …or once the oldest waiting one is this old, or as soon as the writer is idle, or when a
/// flush asks (so a quiet server's analytics are current, and a busy one upserts each rollup
/// row once per merge instead of once per batch).
pub(crate) const MERGE_LAG: Duration = Duration::from_secs(10);

/// What a job of the writer reports when it ends.
enum Done {
    /// A batch (its first record's number, its rows) is written, or counted as failed.
    Batch(u64, usize),
    /// A merge of the rollup journal ended: the request-log rows it covered, or why not.
    Merge(Result<u64, WriteError>),
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
        merge_rows,
    } = w;
    // SQLite writes one batch at a time (one writer connection; the batches take `turn`s), but
    // two are in flight: the next one is prepared while one is written. Merges run alone: a
    // due merge waits for the batches in flight, and no batch starts while it runs. PostgreSQL
    // writes batches in parallel, and merges beside them (under the rollup lock).
    let (max_in_flight, merge_alone) = match backend {
        Backend::Sqlite(_) => (2, true),
        Backend::Postgres(_) => (write_concurrency, false),
    };
    let turn = merge_alone.then(|| Arc::new(tokio::sync::Mutex::new(())));
    let mut inbox = Vec::with_capacity(64);
    let mut pending: Vec<Box<ValidRecord>> = Vec::new();
    // Records are numbered in arrival order: `received` so far, `taken` into batches.
    let (mut received, mut taken) = (0u64, 0u64);
    let mut in_flight = FuturesUnordered::new();
    // Start number → rows of each batch in flight.
    let mut in_flight_starts = BTreeMap::new();
    // A flush is answered once every record received before it is written (or counted), and,
    // with rollups, merged.
    let mut acks: Vec<(u64, oneshot::Sender<()>, bool)> = Vec::new();
    // Rows journaled and not merged (at start: whatever an earlier run left, if anything).
    let mut unmerged = u64::from(rollups);
    let mut oldest_unmerged = Instant::now();
    let mut merging = false;
    // Flushes answered when the running merge ends, and those waiting for the next one.
    let (mut merge_acks, mut next_merge_acks) = (Vec::new(), Vec::new());
    let (mut merge_not_before, mut merge_delay) = (Instant::now(), FIRST_RETRY);
    let mut open = true;
    loop {
        // Everything numbered below the watermark is written.
        let watermark = in_flight_starts
            .first_key_value()
            .map_or(taken, |(start, _)| *start);
        if acks.iter().any(|(target, ..)| *target <= watermark) {
            let (ready, waiting): (Vec<_>, Vec<_>) = acks
                .drain(..)
                .partition(|(target, ..)| *target <= watermark);
            acks = waiting;
            for (_, ack, merge) in ready {
                if !merge {
                    let _ = ack.send(());
                } else if unmerged > 0 {
                    next_merge_acks.push(ack);
                } else if merging {
                    merge_acks.push(ack);
                } else {
                    let _ = ack.send(());
                }
            }
        }
        let batches = in_flight_starts.len();
        let idle = pending.is_empty() && batches == 0;
        let merge_due = unmerged > 0
            && !merging
            && Instant::now() >= merge_not_before
            && (idle
                || !next_merge_acks.is_empty()
                || unmerged >= merge_rows
                || oldest_unmerged.elapsed() >= MERGE_LAG);
        if merge_due && !(merge_alone && batches > 0) {
            merging = true;
            unmerged = 0;
            merge_acks.append(&mut next_merge_acks);
            let (backend, setup) = (backend.clone(), setup.clone());
            in_flight.push(Box::pin(async move {
                let merged = match setup.ensure().await {
                    Ok(()) => merge_pending(&backend).await,
                    Err(e) => Err(e),
                };
                Done::Merge(merged)
            }) as JobFuture);
        }
        // SQLite's second batch only once a full one waits: taken sooner, it would be a sliver
        // of the stream (a transaction of its own), and the batch after it would be prepared
        // beside that sliver's short write, not beside a long one.
        while in_flight_starts.len() < max_in_flight
            && !(merge_alone && (merging || merge_due))
            && !pending.is_empty()
            && !(merge_alone && !in_flight_starts.is_empty() && pending.len() < batch_rows)
        {
            let take = pending.len().min(batch_rows);
            let batch: Arc<Vec<_>> = Arc::new(pending.drain(..take).collect());
            let size = crate::record::approx_bytes(&batch);
            let start = taken;
            taken += take as u64;
            in_flight_starts.insert(start, (take, size));
            let (backend, setup, health) = (backend.clone(), setup.clone(), health.clone());
            let turn = turn.clone();
            in_flight.push(Box::pin(async move {
                write_with_retry(&backend, &setup, &batch, &health, rollups, turn).await;
                Done::Batch(start, batch.len())
            }));
        }
        if !open && in_flight.is_empty() && pending.is_empty() && unmerged == 0 {
            break;
        }
        let wake = (unmerged > 0 && !merging).then_some(merge_not_before);
        tokio::select! {
            Some(done) = in_flight.next(), if !in_flight.is_empty() => match done {
                Done::Batch(start, n) => {
                    let size = in_flight_starts.remove(&start).map_or(0, |(_, size)| size);
                    depth.fetch_sub(n, Relaxed);
                    bytes.fetch_sub(size, Relaxed);
                    if rollups {
                        if unmerged == 0 {
                            oldest_unmerged = Instant::now();
                        }
                        unmerged += n as u64;
                    }
                }
                Done::Merge(result) => {
                    merging = false;
                    match result {
                        Ok(_) => merge_delay = FIRST_RETRY,
                        Err(e) => {
                            // The journal keeps the increments: merged by a later attempt (or
                            // run, when closing).
                            tracing::warn!(error = %e, "Rollup merge failed; retrying.");
                            if open {
                                unmerged = unmerged.max(1);
                                merge_not_before = Instant::now() + merge_delay;
                                merge_delay = (merge_delay * 2).min(RETRY_CAP);
                            }
                        }
                    }
                    for ack in merge_acks.drain(..) {
                        let _ = ack.send(());
                    }
                }
            },
            () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some_and(|t| t > Instant::now()) => {}
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
                        Msg::Flush { ack, merge } => acks.push((received, ack, merge)),
                    }
                }
            }
            () = abandon.notified() => {
                // Writes in flight are cancelled (a transaction not committed is rolled back);
                // everything not known to be written is counted. A merge cancelled leaves the
                // journal as it was.
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
                            lost_bytes += crate::record::approx_bytes(&r);
                        }
                        Msg::Flush { ack, merge } => acks.push((received, ack, merge)),
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

type JobFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

/// Folds the rollup journal into the rollup tables (`rollup.rs`): every pending row, in one
/// transaction. Returns the request-log rows covered.
pub(crate) async fn merge_pending(backend: &Backend) -> Result<u64, WriteError> {
    match backend {
        Backend::Sqlite(pool) => super::sqlite_insert::merge_pending(pool).await,
        Backend::Postgres(pool) => postgres::merge_pending(pool).await.map_err(write_error),
    }
}

/// Writes `batch`, retrying: without end while the database is away (the batch is held, the
/// store reported down), [`REFUSED_ATTEMPTS`] times when the database refuses it. With a
/// `turn` (SQLite), the batch is prepared while it waits for it, and written holding it.
#[allow(clippy::vec_box)]
async fn write_with_retry(
    backend: &Backend,
    setup: &Setup,
    batch: &Arc<Vec<Box<ValidRecord>>>,
    health: &Health,
    rollups: bool,
    turn: Option<Arc<tokio::sync::Mutex<()>>>,
) {
    // In line for the turn from the first poll (the batches' order), prepared meanwhile.
    let (prepared, _turn) = match turn {
        Some(turn) => {
            let (prepared, held) = tokio::join!(prepare(batch), turn.lock_owned());
            (Some(prepared), Some(held))
        }
        None => (None, None),
    };
    let mut delay = FIRST_RETRY;
    let (mut refused, mut outages) = (0u32, 0u64);
    loop {
        let result = match setup.ensure().await {
            Ok(()) => write_batch(backend, batch, prepared.as_ref(), rollups).await,
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

/// `batch` made ready for SQLite's transaction, on a blocking thread.
#[allow(clippy::vec_box)]
async fn prepare(batch: &Arc<Vec<Box<ValidRecord>>>) -> Arc<Prepared> {
    let b = Arc::clone(batch);
    match tokio::task::spawn_blocking(move || Prepared::of(b)).await {
        Ok(prepared) => Arc::new(prepared),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down: done here instead.
        Err(_) => Arc::new(Prepared::of(Arc::clone(batch))),
    }
}

/// Writes one batch in one transaction, with its rollups when `rollups`. Rows whose
/// `request_id` is already stored are skipped (and not rolled up). SQLite takes the batch's
/// [`Prepared`] part when it is done ([`prepare`]), and works it out here otherwise.
#[allow(clippy::vec_box)]
async fn write_batch(
    backend: &Backend,
    batch: &Arc<Vec<Box<ValidRecord>>>,
    prepared: Option<&Arc<Prepared>>,
    rollups: bool,
) -> Result<(), WriteError> {
    match backend {
        Backend::Sqlite(pool) => {
            let prepared =
                prepared.map_or_else(|| Arc::new(Prepared::of(Arc::clone(batch))), Arc::clone);
            super::sqlite_insert::write(pool, prepared, rollups).await
        }
        Backend::Postgres(pool) => postgres::write(pool, batch, rollups).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::open_idle_sqlite;
    use std::time::Duration;

    /// `n` records of user `u`, ids `r-{m}-0`, `r-{m}-1`, …, at `ts_ms`.
    fn records(m: usize, n: usize, ts_ms: i64) -> Msg {
        let records = (0..n)
            .map(|i| {
                let mut r = crate::record::test_record(
                    r#"{"model": "m", "status": 200, "duration_ms": 5, "user": "u"}"#,
                    ts_ms + 10,
                );
                r.timestamp_ms = ts_ms;
                r.request_id = Some(crate::record::RequestId(format!("r-{m}-{i}").into()));
                r
            })
            .collect();
        Msg::Records(records)
    }

    /// A writer with rollups on `backend`.
    fn writer(backend: &Backend, batch_rows: usize, merge_rows: u64) -> Writer {
        Writer {
            backend: backend.clone(),
            setup: Arc::new(Setup::done()),
            depth: Arc::new(AtomicUsize::new(0)),
            bytes: Arc::new(AtomicUsize::new(0)),
            health: Arc::new(Health::new(1)),
            abandon: Arc::new(Notify::new()),
            batch_rows,
            write_concurrency: 1,
            rollups: true,
            merge_rows,
        }
    }

    /// While a SQLite batch is written, what arrives waits for it unless a full batch waits: a
    /// second batch taken at once would hold only the first message to arrive.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_takes_a_second_batch_only_when_a_full_one_waits() {
        use sqlx::Connection;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.db");
        let log = open_idle_sqlite(path.clone()).await;
        let backend = log.backend().clone();
        let Backend::Sqlite(pool) = &backend else {
            unreachable!("a SQLite log")
        };
        let (tx, rx) = mpsc::channel(100);
        let writer = tokio::spawn(run(writer(&backend, 1_000, u64::MAX), rx));
        // Its merge at start is done…
        let (ack, done) = oneshot::channel();
        tx.send(Msg::Flush { ack, merge: true })
            .await
            .expect("queued");
        done.await.expect("flushed");
        // …and the database locked: the first batch waits in its `BEGIN IMMEDIATE`.
        let mut lock = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("connects");
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut lock)
            .await
            .expect("locks");
        let t = crate::clock::now_ms() - 1_000;
        tx.send(records(0, 10, t)).await.expect("queued");
        // Three more messages, each seen by the writer on its own, the later ones older.
        for m in 1..=3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send(records(m, 10, t - 100 * m as i64))
                .await
                .expect("queued");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        sqlx::query("COMMIT")
            .execute(&mut lock)
            .await
            .expect("unlocks");
        drop(tx);
        writer.await.expect("the writer ends");
        // A batch numbers its rows by time (one user, no sessions): the three later messages
        // went in as one batch when their rows are numbered oldest first. (Where the first
        // message went does not matter: on a machine too busy to take it before the others
        // came, it joins them.)
        let ids: Vec<(String,)> = sqlx::query_as("SELECT request_id FROM request_log ORDER BY id")
            .fetch_all(pool)
            .await
            .expect("ids");
        assert_eq!(ids.len(), 40);
        let later: Vec<&str> = (ids.iter())
            .map(|(id,)| &id[..3])
            .filter(|m| *m != "r-0")
            .collect();
        let want: Vec<&str> = ["r-3", "r-2", "r-1"]
            .into_iter()
            .flat_map(|m| [m; 10])
            .collect();
        assert_eq!(later, want);
    }

    /// SQLite's writer keeps two batches in flight, so it is never without one under a steady
    /// stream: a merge that is due must still run, the batches waiting for it, or the journal
    /// grows until the stream stops.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_merges_under_a_steady_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Its own writer stays idle; a second one is run below on its database.
        let log = open_idle_sqlite(dir.path().join("log.db")).await;
        let backend = log.backend().clone();
        let Backend::Sqlite(pool) = &backend else {
            unreachable!("a SQLite log")
        };
        let (tx, rx) = mpsc::channel(1_000);
        // Everything is queued before the writer starts: it is never idle until the end.
        for m in 0..100 {
            let ts = crate::clock::now_ms() - 10;
            tx.send(records(m, 50, ts)).await.expect("queued");
        }
        drop(tx);
        let writer = tokio::spawn(run(writer(&backend, 50, 100), rx));
        // The most journal rows seen waiting while the stream is written.
        let mut most = 0;
        while !writer.is_finished() {
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM rollup_pending")
                .fetch_one(pool)
                .await
                .expect("count");
            most = most.max(n);
        }
        writer.await.expect("the writer ends");
        let (rows, requests): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM request_log), \
             (SELECT coalesce(sum(requests), 0) FROM rollup WHERE dim = 0 AND tier = 1)",
        )
        .fetch_one(pool)
        .await
        .expect("totals");
        assert_eq!(rows, 5_000);
        assert_eq!(requests, 5_000, "every row merged once");
        // A merge is due once two 50-row batches wait, and runs after the one still in flight.
        assert!(most <= 3, "{most} journal rows waited for a merge");
    }
}
