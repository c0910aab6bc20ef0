//! `gatemeter rollup rebuild`: the rollups recomputed from the raw rows, each chunk merged in a
//! transaction of its own by the dialect's writer code (`sqlite_insert.rs`, `writer/postgres.rs`).
//! Apart from `rollup.rs` so that the rollup model does not import the writers that use it.

use sqlx::Row;

use super::rollup::{Batch, FACT_COLUMNS, FactRow};
use super::{Backend, dispatch, unavailable};
use crate::store::StoreError;

/// Raw rows read per step of `rebuild`.
const REBUILD_CHUNK: i64 = 50_000;

/// Chunks rolled up in memory before each merge.
const MERGE_CHUNKS: u64 = 10;

/// Recomputes every rollup from the raw rows: empties both tables, then reads `request_log` in
/// id order, [`REBUILD_CHUNK`] rows at a time, merging each chunk like the writer does. Run it
/// with no server writing to the log (rows written meanwhile could be counted twice); if it is
/// interrupted, run it again. Returns the rows read.
pub(crate) async fn rebuild(backend: &Backend) -> Result<u64, StoreError> {
    dispatch!(backend, p, DB => {
        sqlx::query("DELETE FROM rollup").execute(p).await.map_err(unavailable)?;
        sqlx::query("DELETE FROM session_rollup").execute(p).await.map_err(unavailable)?;
        // Journaled increments of rows read below anyway.
        sqlx::query("DELETE FROM rollup_pending").execute(p).await.map_err(unavailable)?;
    });
    let sql =
        format!("SELECT id, {FACT_COLUMNS} FROM request_log WHERE id > $1 ORDER BY id LIMIT $2");
    let (mut after, mut total) = (i64::MIN, 0u64);
    let (mut batch, mut chunks) = (Batch::default(), 0u64);
    loop {
        let (facts, last) = dispatch!(backend, p, DB => {
            let rows = sqlx::query(&sql)
                .bind(after)
                .bind(REBUILD_CHUNK)
                .fetch_all(p)
                .await
                .map_err(unavailable)?;
            let last: Option<i64> = match rows.last() {
                Some(r) => Some(r.try_get(0).map_err(unavailable)?),
                None => None,
            };
            let facts = rows
                .iter()
                .map(|r| FactRow::read(r, 1))
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            (facts, last)
        });
        let Some(last) = last else {
            if !batch.is_empty() {
                apply(backend, batch).await?;
            }
            return Ok(total);
        };
        after = last;
        total += facts.len() as u64;
        batch.add_all(facts.iter().map(FactRow::fact));
        // Merged every few chunks: a rollup row is upserted once per merge, not per chunk.
        chunks += 1;
        if chunks % MERGE_CHUNKS == 0 {
            apply(backend, std::mem::take(&mut batch)).await?;
        }
    }
}

/// Merges `batch` into the tables in a transaction of its own (the writer journals its
/// increments instead, merged by `writer::merge_pending`).
pub(crate) async fn apply(backend: &Backend, batch: Batch) -> Result<(), StoreError> {
    match backend {
        Backend::Sqlite(pool) => super::sqlite_insert::apply_rollups(pool, batch).await,
        Backend::Postgres(pool) => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            super::writer::postgres::apply_rollups(&mut tx, batch)
                .await
                .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)
        }
    }
}
