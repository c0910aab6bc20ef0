//! The one writer task of the SQL request log: drains the queue, writes what it took in one
//! statement or transaction per batch — SQLite: a prepared single-row `INSERT` stepped per row
//! in one transaction (`sqlite_insert.rs`); PostgreSQL: one `INSERT … SELECT * FROM
//! UNNEST(arrays)` — both
//! `ON CONFLICT (request_id) DO NOTHING`; retries transient failures with back-off, and counts
//! what it finally gives up on.
//!
//! Batching adapts to load: while a batch is being written, whatever arrives waits, so a quiet
//! server writes small transactions at once and a busy one writes up to `batch_rows` rows per
//! transaction. SQLite writes one batch at a time (it has one writer anyway); PostgreSQL up to
//! four at once, on separate connections — batches may then commit out of order, which
//! idempotent inserts allow. A flush waits for every record received before it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use super::{Backend, count_failed, unavailable};
use crate::health::Health;
use crate::record::ValidRecord;
use crate::store::StoreError;

/// What the writer receives.
pub(crate) enum Msg {
    /// Records to write (boxed as the pipeline hands them over: no copy).
    #[allow(clippy::vec_box)]
    Records(Vec<Box<ValidRecord>>),
    /// Answer once everything received before is written.
    Flush(oneshot::Sender<()>),
}

/// Columns bound per row (see [`push_row`]).
pub(super) const COLUMNS: usize = 36;
/// Batches a PostgreSQL log writes at once (each on its own pooled connection).
const POSTGRES_IN_FLIGHT: usize = 4;
/// Attempts per batch before it is dropped and counted.
const ATTEMPTS: u32 = 5;

pub(super) const INSERT: &str = "INSERT INTO request_log (request_id, ts_ms, namespace, instance, user_ref, \
    user_name, user_id, key_name, key_id, provider, model, original_model, endpoint, api_type, \
    method, status, duration_ms, ttfb_ms, input_tokens, output_tokens, cache_write_5m_tokens, \
    cache_write_1h_tokens, cache_read_tokens, cost_micros, cost_source, session_id, retry_count, \
    provider_chain, is_streaming, error, blocked_by, block_reason, user_agent, client_ip, \
    messages_count, trace_id) ";

pub(crate) async fn run(
    backend: Backend,
    mut rx: mpsc::Receiver<Msg>,
    depth: Arc<AtomicUsize>,
    health: Arc<Health>,
    batch_rows: usize,
) {
    // SQLite has one writer at a time anyway; PostgreSQL writes batches in parallel.
    let max_in_flight = match backend {
        Backend::Sqlite(_) => 1,
        Backend::Postgres(_) => POSTGRES_IN_FLIGHT,
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

/// PostgreSQL: the whole batch as one `INSERT … SELECT * FROM UNNEST(<one array per column>)`,
/// 36 bind parameters whatever the batch size: much less parsing and binding per row than a
/// multi-row `VALUES` list (and no 65,535-parameter limit).
async fn write_postgres(pool: &sqlx::PgPool, batch: &[Box<ValidRecord>]) -> Result<(), StoreError> {
    let n = batch.len();
    macro_rules! column {
        (|$r:ident| $e:expr) => {
            batch.iter().map(|$r| $e).collect::<Vec<_>>()
        };
    }
    let sql = format!(
        "{INSERT} SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
         $13::text[], $14::text[], $15::text[], $16::int8[], $17::int8[], $18::int8[], \
         $19::int8[], $20::int8[], $21::int8[], $22::int8[], $23::int8[], $24::int8[], \
         $25::text[], $26::text[], $27::int8[], $28::text[], $29::bool[], $30::text[], \
         $31::text[], $32::text[], $33::text[], $34::text[], $35::int8[], $36::text[]) \
         ON CONFLICT (request_id) DO NOTHING"
    );
    let chains: Vec<String> = batch
        .iter()
        .map(|r| serde_json::to_string(&r.provider_chain).unwrap_or_else(|_| "[]".to_string()))
        .collect();
    debug_assert_eq!(chains.len(), n);
    sqlx::query(&sql)
        .bind(column!(|r| r.request_id.as_ref().map(|id| id.as_str())))
        .bind(column!(|r| r.timestamp_ms))
        .bind(column!(|r| r.namespace.as_str()))
        .bind(column!(|r| r.instance.as_deref()))
        .bind(column!(|r| r.user_id.as_deref().or(r.user.as_deref())))
        .bind(column!(|r| r.user.as_deref()))
        .bind(column!(|r| r.user_id.as_deref()))
        .bind(column!(|r| r.key.as_deref()))
        .bind(column!(|r| r.key_id.as_deref()))
        .bind(column!(|r| r.provider.as_str()))
        .bind(column!(|r| r.model.as_str()))
        .bind(column!(|r| r.original_model.as_deref()))
        .bind(column!(|r| r.endpoint.as_str()))
        .bind(column!(|r| r.api_type.as_str()))
        .bind(column!(|r| r.method.as_str()))
        .bind(column!(|r| i64::from(r.status)))
        .bind(column!(|r| big(r.duration_ms)))
        .bind(column!(|r| r.ttfb_ms.map(big)))
        .bind(column!(|r| big(r.tokens.input)))
        .bind(column!(|r| big(r.tokens.output)))
        .bind(column!(|r| big(r.tokens.cache_write_5m)))
        .bind(column!(|r| big(r.tokens.cache_write_1h)))
        .bind(column!(|r| big(r.tokens.cache_read)))
        .bind(column!(|r| big(r.cost_micros)))
        .bind(column!(|r| cost_source(r.cost_source)))
        .bind(column!(|r| r.session_id.as_deref()))
        .bind(column!(|r| i64::from(r.retry_count)))
        .bind(chains)
        .bind(column!(|r| r.is_streaming))
        .bind(column!(|r| r.error.as_deref()))
        .bind(column!(|r| r.blocked_by.as_deref()))
        .bind(column!(|r| r.block_reason.as_deref()))
        .bind(column!(|r| r.user_agent.as_deref()))
        .bind(column!(|r| r.client_ip.as_deref()))
        .bind(column!(|r| r.messages_count.map(i64::from)))
        .bind(column!(|r| r.trace_id.as_deref()))
        .execute(pool)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Unsigned counters as SQL BIGINT (validation keeps them far below `i64::MAX`).
pub(super) fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn cost_source(c: crate::record::CostSource) -> &'static str {
    match c {
        crate::record::CostSource::Reported => "reported",
        crate::record::CostSource::Priced => "priced",
        crate::record::CostSource::Unpriced => "unpriced",
    }
}
