//! The SQLite writer's inner loop: one transaction per batch, a prepared 64-row
//! `INSERT OR IGNORE … VALUES` bound and stepped per 64 rows, through SQLite's C API on the
//! writer's own sqlx connection (`sqlite_raw.rs`), on a blocking thread. The batch's request
//! ids go first into `request_ids` (the ids the log holds, unique), sorted, which tells the
//! repeats apart before any row is written. A request id written as a canonical UUID is stored
//! as its 16 bytes (`columns::uuid_bytes`), about half the size.
//!
//! Why not `sqlx::query`: every `sqlx` statement is a round trip to the connection's worker
//! thread, and a long `VALUES` list sent as text (41 parameters a row, ~800 rows per statement)
//! makes SQLite parse a huge statement at every batch. Binding borrowed text to a statement
//! prepared once per batch costs a few hundred nanoseconds a row (issue #4: see ARCHITECTURE.md
//! for the figures).

use std::sync::Arc;

use sqlx::SqlitePool;

use super::columns::{self, COLUMNS, Value};
use super::rollup::{self, Batch};
use super::sqlite_raw::{Bind, Handle, Statement, is_outage_message, with_handle};
use super::{WriteError, unavailable, write_error};
use crate::record::ValidRecord;
use crate::store::StoreError;

/// Writes a batch in one transaction; rows whose `request_id` is already stored are skipped.
/// With `rollups`, the rows stored are added to the rollups in the same transaction. On any
/// error the transaction is rolled back (nothing of the batch is stored).
pub(crate) async fn write(
    pool: &SqlitePool,
    batch: Arc<Prepared>,
    rollups: bool,
) -> Result<(), WriteError> {
    let conn = pool.acquire().await.map_err(write_error)?;
    with_handle(conn, move |db| {
        db.and_then(|db| in_transaction(db, |db| insert_batch(db, &batch, rollups)))
    })
    .await
    .map_err(WriteError::Outage)?
    .map_err(classify)
}

/// What a batch's transaction needs that the database does not tell: the insert order
/// (`columns::insert_order`) and the request ids as the log stores them, sorted. The writer
/// works it out on another thread while the batch before is written (`writer.rs`): reading the
/// records for it, one cache miss each in insert order, took 10–13 % of the writer thread's
/// time, and SQLite's write rate is that thread's (docs/benchmarks.md, ninth session).
///
/// A place is an index into the insert order.
pub(crate) struct Prepared {
    #[allow(clippy::vec_box)]
    batch: Arc<Vec<Box<ValidRecord>>>,
    /// Positions in `batch`, in insert order: each request id once.
    positions: Vec<usize>,
    /// Each place's request id as a canonical UUID's 16 bytes ([`columns::uuid_bytes`]).
    uuids: Vec<Option<[u8; 16]>>,
    /// The places with a request id, in the order of their stored ids.
    by_id: Vec<usize>,
}

impl Prepared {
    #[allow(clippy::vec_box)]
    pub(crate) fn of(batch: Arc<Vec<Box<ValidRecord>>>) -> Self {
        let positions = columns::insert_order(&batch);
        let uuids = (positions.iter())
            .map(|&i| {
                (batch[i].request_id.as_ref()).and_then(|id| columns::uuid_bytes(id.as_str()))
            })
            .collect();
        let mut prepared = Self {
            batch,
            positions,
            uuids,
            by_id: Vec::new(),
        };
        let mut ids: Vec<(StoredId<'_>, usize)> = (0..prepared.positions.len())
            .filter_map(|at| Some((prepared.stored_id(at)?, at)))
            .collect();
        ids.sort_unstable();
        let by_id = ids.into_iter().map(|(_, at)| at).collect();
        prepared.by_id = by_id;
        prepared
    }

    /// Rows in the insert order.
    fn len(&self) -> usize {
        self.positions.len()
    }

    /// The record at place `at`.
    fn record(&self, at: usize) -> &ValidRecord {
        &self.batch[self.positions[at]]
    }

    /// The request id at place `at` as the log stores it, if the record has one.
    fn stored_id(&self, at: usize) -> Option<StoredId<'_>> {
        match self.uuids[at] {
            Some(bytes) => Some(StoredId::Uuid(bytes)),
            None => Some(StoredId::Text(
                self.record(at).request_id.as_ref()?.as_str(),
            )),
        }
    }
}

/// What a failed step's SQLite message means for the writer: an outage (held and retried) or a
/// refusal.
fn classify(message: String) -> WriteError {
    if is_outage_message(&message) {
        WriteError::Outage(unavailable(message))
    } else {
        WriteError::Refused(unavailable(message))
    }
}

/// Merges `batch` into the rollup tables in a transaction of its own (`gatemeter rollup rebuild`).
pub(crate) async fn apply_rollups(pool: &SqlitePool, batch: Batch) -> Result<(), StoreError> {
    let conn = pool.acquire().await.map_err(unavailable)?;
    with_handle(conn, move |db| {
        db.and_then(|db| in_transaction(db, |db| merge_rollups(db, batch)))
    })
    .await?
    .map_err(unavailable)
}

/// Runs `job` between `BEGIN IMMEDIATE` and `COMMIT`, rolling back when it fails.
fn in_transaction(
    db: Handle<'_>,
    job: impl FnOnce(Handle<'_>) -> Result<(), String>,
) -> Result<(), String> {
    db.exec(c"BEGIN IMMEDIATE")?;
    let result = job(db).and_then(|()| db.exec(c"COMMIT"));
    if result.is_err() {
        let _ = db.exec(c"ROLLBACK");
    }
    result
}

fn insert_batch(db: Handle<'_>, p: &Prepared, rollups: bool) -> Result<(), String> {
    let batch = &p.batch;
    // The positions in `batch` of the rows stored: all but the `skipped` places.
    let stored = |skipped: &[usize]| -> Vec<usize> {
        (p.positions.iter().enumerate())
            .filter(|(at, _)| skipped.binary_search(at).is_err())
            .map(|(_, &i)| i)
            .collect()
    };
    let before = last_row_id(db, p.len())?;
    // The repeats are known before any row is written, so the rows the batch stores are too.
    let skipped = claim_request_ids(db, p, before)?;
    // The rollup increments of those rows are added up and encoded on a thread of their own
    // while this one inserts them: SQLite's write rate is this thread's, and the rollups cost
    // it ~1 µs a row.
    let blob = std::thread::scope(|s| {
        let parallel = rollups && p.len() >= PARALLEL_ROLLUP_ROWS;
        let rollup = parallel.then(|| s.spawn(|| Batch::journal_of(batch, stored(&skipped))));
        let inserted = insert_rows(db, p, before, &skipped);
        let journal = rollup.map(|t| t.join().expect("the rollup thread does not panic"));
        inserted.map(|()| journal)
    })?;
    insert_requests(db, batch)?;
    if !rollups {
        return Ok(());
    }
    let blob = blob.unwrap_or_else(|| Batch::journal_of(batch, stored(&skipped)));
    let Some(blob) = blob else { return Ok(()) };
    // The increments are journaled with the rows; `merge_pending` folds them in later.
    let mut journal = db.prepare("INSERT INTO rollup_pending (rows, delta) VALUES (?1, ?2)")?;
    let rows = i64::try_from(batch.len()).unwrap_or(i64::MAX);
    journal.run_once([Bind::Int(rows), Bind::Bytes(&blob)])
}

/// The highest row id before a batch of `rows` rows, which are numbered from the next one on
/// ([`row_id`]); an error when they would pass `i64::MAX` (where SQLite picks ids at random).
fn last_row_id(db: Handle<'_>, rows: usize) -> Result<i64, String> {
    let mut last_id = db.prepare("SELECT coalesce(max(id), 0) FROM request_log")?;
    last_id.step()?;
    let before = last_id.int(0);
    if !i64::try_from(rows).is_ok_and(|n| n < i64::MAX - before) {
        return Err("the request log has run out of row ids".into());
    }
    Ok(before)
}

/// Batches at least this long add up their rollups on a thread of their own (a thread costs
/// some 20 µs to start; a small batch is added up in less).
const PARALLEL_ROLLUP_ROWS: usize = 2_048;

/// Inserts the rows of `p` but the `skipped` places (repeats: [`claim_request_ids`]), each
/// numbered by its place ([`row_id`]), [`ROWS_PER_INSERT`] per statement.
///
/// Why several rows per statement: SQLite opens a cursor on the table and on each of its
/// indexes at every statement run, and each index insert then descends from the root page. A
/// 64-row `VALUES` list pays that once per 64 rows: `bench-log --profile live`, the inserts
/// take 10.2–10.7 s per million rows instead of 11.1–11.4 s (docs/benchmarks.md).
///
/// Why `OR IGNORE` when nothing should be refused: a statement of several rows that a
/// constraint could abort halfway keeps a statement journal of every page it changes, so that
/// it can undo itself; under `OR IGNORE` none can, and SQLite keeps none. The price is that a
/// row refused for any reason is skipped silently; so a statement that stored fewer rows than
/// it was given fails the batch.
fn insert_rows(db: Handle<'_>, p: &Prepared, before: i64, skipped: &[usize]) -> Result<(), String> {
    // Each row numbered by its place in the insert order (a repeat leaves its number unused, as
    // a repeat does in PostgreSQL's identity column), as `request_ids` has it.
    let rows: Vec<(i64, usize)> = (0..p.len())
        .filter(|at| skipped.binary_search(at).is_err())
        .map(|at| (row_id(before, at), at))
        .collect();
    let mut statements = Chunked::new(&db, ROWS_PER_INSERT, insert_sql);
    let mut chains = vec![String::new(); ROWS_PER_INSERT];
    for rows in rows.chunks(ROWS_PER_INSERT) {
        for (&(_, at), chain) in rows.iter().zip(&mut chains) {
            columns::provider_chain(p.record(at), chain);
        }
        let values = (rows.iter().zip(&chains)).flat_map(|(&(id, at), c)| {
            let request_id = p.stored_id(at).map_or(Bind::Null, StoredId::bind);
            std::iter::once(Bind::Int(id)).chain(binds(p.record(at), c, request_id))
        });
        statements.run(rows.len(), values)?;
        let stored = usize::try_from(db.changes()).unwrap_or(0);
        if stored != rows.len() {
            return Err(format!(
                "the request log did not store {} of the {} rows of a statement",
                rows.len().saturating_sub(stored),
                rows.len()
            ));
        }
    }
    Ok(())
}

/// A multi-row `INSERT` run once per chunk of rows: chunks of the full size share one
/// statement, prepared when first needed; a shorter (last) chunk gets one of its own length.
struct Chunked<'h, 'd> {
    db: &'h Handle<'d>,
    rows: usize,
    sql: fn(usize) -> String,
    full: Option<Statement<'h>>,
}

impl<'h, 'd> Chunked<'h, 'd> {
    /// Statements of `sql(n)` for chunks of `n` rows, `rows` at most.
    fn new(db: &'h Handle<'d>, rows: usize, sql: fn(usize) -> String) -> Self {
        Self {
            db,
            rows,
            sql,
            full: None,
        }
    }

    /// Runs the statement for a chunk of `rows` rows with `values` ([`Statement::run_once`]).
    fn run<'v>(
        &mut self,
        rows: usize,
        values: impl IntoIterator<Item = Bind<'v>>,
    ) -> Result<(), String> {
        if rows != self.rows {
            return self.db.prepare(&(self.sql)(rows))?.run_once(values);
        }
        let full = match &mut self.full {
            Some(full) => full,
            empty => empty.insert(self.db.prepare(&(self.sql)(rows))?),
        };
        full.run_once(values)
    }
}

/// Rows of the request log written per `INSERT` statement (2,624 parameters; SQLite allows
/// 32,766). 64, 256 and 800 wrote at the same rate.
const ROWS_PER_INSERT: usize = 64;

/// Request ids written per `INSERT` into `request_ids` (512 parameters).
const IDS_PER_INSERT: usize = 256;

/// A request id as `request_log` and `request_ids` hold it, ordered as SQLite orders them
/// (text before blobs, each byte by byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum StoredId<'a> {
    Text(&'a str),
    Uuid([u8; 16]),
}

impl<'a> StoredId<'a> {
    /// A canonical UUID as its 16 bytes ([`columns::uuid_bytes`]), anything else as text.
    fn of(id: &'a str) -> Self {
        columns::uuid_bytes(id).map_or(Self::Text(id), Self::Uuid)
    }

    fn bind(self) -> Bind<'a> {
        match self {
            Self::Text(t) => Bind::Text(t),
            Self::Uuid(b) => Bind::Blob16(b),
        }
    }
}

/// Records the request ids of `p`'s rows in `request_ids`, each with the id its row gets
/// ([`row_id`]: `before` + 1, + 2, … by place in `p`); returns the positions in `p` of
/// the rows whose request id the log held before (repeats: `insert_order` keeps each id once
/// per batch), whose rows are not written and whose numbers stay unused.
///
/// Why a table of their own, written in id order: the rows go in in session order (see
/// `columns::insert_order`), in which random ids (UUIDs) are in no order at all. As a unique
/// index of `request_log`, each row's id went to a random page, and once the index outgrew the
/// writer's page cache, nearly every row read a page in and wrote one out; sorted, a batch
/// sweeps the table once. `bench-log --profile live`: 91,000–93,000 → 111,000–113,000 rows/s
/// (docs/benchmarks.md, 2026-12-05). Only this writer inserts into `request_log`, so only it
/// needs to keep `request_ids` (a delete trigger keeps it in step with deletes).
///
/// `OR IGNORE` keeps the row of an id stored before, with its lower log id; only when a
/// statement stored fewer ids than it was given are that statement's ids looked up. Numbers
/// are not closed up after a repeat: that took one `UPDATE` per id after it (a batch with one
/// repeat wrote 8–11 % slower).
fn claim_request_ids(db: Handle<'_>, p: &Prepared, before: i64) -> Result<Vec<usize>, String> {
    let ids: Vec<(StoredId<'_>, usize)> = (p.by_id.iter())
        .filter_map(|&at| Some((p.stored_id(at)?, at)))
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut statements = Chunked::new(&db, IDS_PER_INSERT, ids_insert_sql);
    let mut short = Vec::new();
    for chunk in ids.chunks(IDS_PER_INSERT) {
        let values =
            (chunk.iter()).flat_map(|&(id, at)| [id.bind(), Bind::Int(row_id(before, at))]);
        statements.run(chunk.len(), values)?;
        if usize::try_from(db.changes()).ok() != Some(chunk.len()) {
            short.push(chunk);
        }
    }
    if short.is_empty() {
        return Ok(Vec::new());
    }
    // Some ids were stored before: those whose row keeps a log id from before the batch.
    let mut find = db.prepare("SELECT log_id FROM request_ids WHERE request_id = ?1")?;
    let mut repeats = Vec::new();
    for &(id, at) in short.into_iter().flatten() {
        find.bind(1, id.bind())?;
        let found = find.step()?.then(|| find.int(0));
        find.reset();
        match found {
            Some(n) if n <= before => repeats.push(at),
            Some(_) => {}
            None => return Err("the request ids of a batch were not all stored".into()),
        }
    }
    repeats.sort_unstable();
    Ok(repeats)
}

/// The id of the row at place `at` of a batch's insert order, the highest id before the batch
/// being `before` (checked by [`last_row_id`] to leave room).
fn row_id(before: i64, at: usize) -> i64 {
    before.saturating_add(1 + i64::try_from(at).unwrap_or(i64::MAX - 1))
}

/// `INSERT OR IGNORE INTO request_ids (request_id, log_id) VALUES (?1, ?2), …` for `rows` ids.
fn ids_insert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|i| format!("(?{}, ?{})", 2 * i + 1, 2 * i + 2))
        .collect();
    format!(
        "INSERT OR IGNORE INTO request_ids (request_id, log_id) VALUES {}",
        values.join(", ")
    )
}

/// Folds every pending journal row into the rollup tables and deletes it, in one transaction.
/// Returns the rows of the request log the merged rows covered.
pub(crate) async fn merge_pending(pool: &SqlitePool) -> Result<u64, WriteError> {
    let conn = pool.acquire().await.map_err(write_error)?;
    with_handle(conn, move |db| {
        db.and_then(|db| {
            let mut covered = 0u64;
            in_transaction(db, |db| {
                let mut batch = Batch::default();
                let mut last = None;
                let mut read =
                    db.prepare("SELECT id, rows, delta FROM rollup_pending ORDER BY id")?;
                while read.step()? {
                    last = Some(read.int(0));
                    covered += u64::try_from(read.int(1)).unwrap_or(0);
                    let delta = read.blob_bytes(2)?.unwrap_or_default();
                    batch.decode_into(delta).ok_or_else(|| {
                        "a rollup journal row this version cannot read".to_string()
                    })?;
                }
                drop(read);
                let Some(last) = last else { return Ok(()) };
                merge_rollups(db, batch)?;
                let mut delete = db.prepare("DELETE FROM rollup_pending WHERE id <= ?1")?;
                delete.run_once([Bind::Int(last)])
            })
            .map(|()| covered)
        })
    })
    .await
    .map_err(WriteError::Outage)?
    .map_err(classify)
}

/// The stored requests of `batch` (records with a redacted `request` and a `request_id`), keyed
/// by the id in the form `request_log` holds it; a repeated id stores nothing.
fn insert_requests(db: Handle<'_>, batch: &[Box<ValidRecord>]) -> Result<(), String> {
    let mut with = batch
        .iter()
        .filter_map(|r| {
            Some((
                r.request_id.as_ref()?,
                r.request.as_deref()?,
                r.timestamp_ms,
            ))
        })
        .peekable();
    if with.peek().is_none() {
        return Ok(());
    }
    let mut stmt = db.prepare(REQUEST_INSERT)?;
    for (id, req, ts_ms) in with {
        stmt.run_once([
            stored_request_id(id.as_str()),
            Bind::Int(ts_ms),
            Bind::Text(&req.json),
            Bind::Int(i64::from(req.truncated)),
            Bind::Int(i64::try_from(req.original_bytes).unwrap_or(i64::MAX)),
        ])?;
    }
    Ok(())
}

/// One stored request (SQLite and PostgreSQL take the same statement).
pub(crate) const REQUEST_INSERT: &str = "INSERT INTO request_bodies \
     (request_id, ts_ms, request, truncated, original_bytes) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (request_id) DO NOTHING";

/// Merges the rollup increments into the tables (inside the caller's transaction): a cell with a
/// distribution reads the stored one first and writes back the merged one.
fn merge_rollups(db: Handle<'_>, batch: Batch) -> Result<(), String> {
    let (cells, sessions) = batch.into_rows();
    let mut read = db.prepare(
        "SELECT dist FROM rollup WHERE dim = ?1 AND tier = ?2 AND bucket_ms = ?3 \
         AND value = ?4 AND detail = ?5",
    )?;
    let params: Vec<String> = (1..=15).map(|i| format!("?{i}")).collect();
    let mut upsert = db.prepare(&rollup::upsert_sql(
        "",
        &format!("VALUES ({})", params.join(", ")),
    ))?;
    for (key, mut cell) in cells {
        let (dim, tier) = (key.dim.code(), key.tier.code());
        if let Some(dist) = &mut cell.dist {
            read.bind_int(1, dim)?;
            read.bind_int(2, tier)?;
            read.bind_int(3, key.bucket_ms)?;
            read.bind_text(4, &key.value)?;
            read.bind_text(5, &key.detail)?;
            if read.step()? {
                if let Some(stored) = read.blob_bytes(0)? {
                    // A blob this version cannot read is replaced, not merged (never expected).
                    let _ = dist.decode_into(stored);
                }
            }
            read.reset();
        }
        let blob = cell.dist.as_ref().map(rollup::Dist::encode);
        let head = [
            Bind::Int(dim),
            Bind::Int(tier),
            Bind::Int(key.bucket_ms),
            Bind::Text(&key.value),
            Bind::Text(&key.detail),
        ];
        let counts = cell.counts.values().map(Bind::Int);
        let dist = [blob.as_deref().map_or(Bind::Null, Bind::Bytes)];
        upsert.run_once(head.into_iter().chain(counts).chain(dist))?;
    }
    if sessions.is_empty() {
        return Ok(());
    }
    let params: Vec<String> = (1..=14).map(|i| format!("?{i}")).collect();
    let mut session = db.prepare(&rollup::session_upsert_sql(
        &format!("VALUES ({})", params.join(", ")),
        "min",
        "max",
    ))?;
    for ((id, user), s) in &sessions {
        let head = [
            Bind::Text(id),
            Bind::Text(user),
            Bind::Text(&s.namespace),
            Bind::Int(s.first_ms),
            Bind::Int(s.last_ms),
        ];
        session.run_once(head.into_iter().chain(s.counts.values().map(Bind::Int)))?;
    }
    Ok(())
}

/// A request id as `request_log` holds it: a canonical UUID as its 16 bytes
/// ([`columns::uuid_bytes`]), anything else as text.
fn stored_request_id(id: &str) -> Bind<'_> {
    StoredId::of(id).bind()
}

/// One record's values in the order of [`columns::FIELDS`], its `request_id` bound as
/// `request_id` (as the log stores it: [`Prepared::stored_id`]).
fn binds<'v>(
    r: &'v ValidRecord,
    chain: &'v str,
    request_id: Bind<'v>,
) -> impl Iterator<Item = Bind<'v>> {
    columns::values(r, chain)
        .into_iter()
        .enumerate()
        .map(move |(field, v)| match v {
            _ if field == columns::REQUEST_ID_FIELD => request_id,
            Value::Text(Some(t)) => Bind::Text(t),
            Value::Text(None) | Value::Int8(None) => Bind::Null,
            Value::Int8(Some(n)) => Bind::Int(n),
            Value::Bool(b) => Bind::Int(i64::from(b)),
        })
}

/// `INSERT OR IGNORE INTO request_log (id, …) VALUES (?1, …, ?41), (?42, …), …` for `rows`
/// rows (the id, then [`COLUMNS`] parameters a row).
fn insert_sql(rows: usize) -> String {
    let mut sql = format!(
        "INSERT OR IGNORE INTO request_log (id, {}) VALUES ",
        columns::column_list()
    );
    let per_row = COLUMNS + 1;
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for col in 1..=per_row {
            if col > 1 {
                sql.push_str(", ");
            }
            sql.push('?');
            sql.push_str(&(row * per_row + col).to_string());
        }
        sql.push(')');
    }
    sql
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use sqlx::Row;
    use sqlx::migrate::Migrator;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    use super::*;
    use crate::store::sql::rollup::{Dim, Tier};

    /// Writes `batch` as the writer does, its [`Prepared`] part worked out first.
    #[allow(clippy::vec_box)]
    async fn write(
        pool: &SqlitePool,
        batch: Arc<Vec<Box<ValidRecord>>>,
        rollups: bool,
    ) -> Result<(), WriteError> {
        super::write(pool, Arc::new(Prepared::of(batch)), rollups).await
    }

    fn record(json: Value) -> Box<ValidRecord> {
        crate::record::test_record(&json.to_string(), crate::clock::now_ms())
    }

    async fn pool(dir: &tempfile::TempDir) -> SqlitePool {
        let opts = SqliteConnectOptions::new()
            .filename(dir.path().join("log.db"))
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .expect("open");
        Migrator::new(super::super::Embedded(super::super::SQLITE_MIGRATIONS))
            .await
            .expect("migrations")
            .run(&pool)
            .await
            .expect("migrate");
        pool
    }

    #[tokio::test]
    async fn text_nulls_and_numbers_are_stored_as_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(&dir).await;
        let full = record(json!({
            "request_id": "r-1", "timestamp": 1_700_000_000_123_i64, "namespace": "ns",
            "user": "Zoë \"quoted\", =SUM(1)", "key": "k\u{1F600}", "provider": "anthropic",
            "model": "claude", "status": 529, "duration_ms": 1234, "ttfb_ms": 56,
            "input_tokens": 1, "output_tokens": 2, "cache_creation_5m_tokens": 3,
            "cache_creation_1h_tokens": 4, "cache_read_tokens": 5, "cost_usd": 99_999.123457, "session_id": "s", "retry_count": 2,
            "provider_chain": ["p1", "p2"], "error": "überlastet\nline 2"
        }));
        let bare = record(json!({"timestamp": 1_700_000_000_000_i64, "model": "m",
                                 "status": 200, "duration_ms": 1}));
        write(&pool, Arc::new(vec![full, bare]), true)
            .await
            .expect("write");
        let rows = sqlx::query(
            "SELECT request_id, ts_ms, user_ref, key_name, status, ttfb_ms, cache_read_tokens, \
             cost_micros, provider_chain, error, session_id, messages_count \
             FROM request_log ORDER BY ts_ms DESC",
        )
        .fetch_all(&pool)
        .await
        .expect("read");
        let r = &rows[0];
        assert_eq!(r.get::<String, _>("request_id"), "r-1");
        assert_eq!(r.get::<i64, _>("ts_ms"), 1_700_000_000_123);
        assert_eq!(r.get::<String, _>("user_ref"), "Zoë \"quoted\", =SUM(1)");
        assert_eq!(r.get::<String, _>("key_name"), "k\u{1F600}");
        assert_eq!(r.get::<i64, _>("status"), 529);
        assert_eq!(r.get::<Option<i64>, _>("ttfb_ms"), Some(56));
        assert_eq!(r.get::<i64, _>("cache_read_tokens"), 5);
        assert_eq!(r.get::<i64, _>("cost_micros"), 99_999_123_457);
        assert_eq!(r.get::<String, _>("provider_chain"), r#"["p1","p2"]"#);
        assert_eq!(r.get::<String, _>("error"), "überlastet\nline 2");
        let r = &rows[1];
        assert_eq!(r.get::<Option<String>, _>("request_id"), None);
        assert_eq!(r.get::<Option<String>, _>("user_ref"), None);
        assert_eq!(r.get::<Option<i64>, _>("ttfb_ms"), None);
        assert_eq!(r.get::<Option<String>, _>("session_id"), None);
        assert_eq!(r.get::<String, _>("provider_chain"), "[]");
    }

    /// Requests and cost in the hour rollups of `dim`.
    async fn hour_sums(pool: &SqlitePool, dim: Dim) -> (i64, i64) {
        sqlx::query_as(
            "SELECT sum(requests), sum(cost_micros) FROM rollup WHERE dim = ? AND tier = ?",
        )
        .bind(dim.code())
        .bind(Tier::Hour.code())
        .fetch_one(pool)
        .await
        .expect("rollup")
    }

    /// Rows are inserted sorted by session (`columns::insert_order`), yet of two records with one id in a
    /// batch the first one received is kept and counted, as in arrival order.
    #[tokio::test]
    async fn a_repeated_id_keeps_its_first_record_whatever_the_insert_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(&dir).await;
        let rec = |session: &str, user: &str, cost: f64| {
            record(
                json!({"request_id": "same", "model": "m", "status": 200, "duration_ms": 1,
                          "session_id": session, "user": user, "cost_usd": cost}),
            )
        };
        let batch = vec![
            rec("session-z", "first", 1.0),
            rec("session-a", "second", 2.0),
            record(json!({"request_id": "other", "model": "m", "status": 200,
                          "duration_ms": 1, "session_id": "session-m"})),
        ];
        write(&pool, Arc::new(batch), true).await.expect("write");
        merge_pending(&pool).await.expect("merge");
        let (session, user): (String, String) = sqlx::query_as(
            "SELECT session_id, user_ref FROM request_log WHERE request_id = 'same'",
        )
        .fetch_one(&pool)
        .await
        .expect("read");
        assert_eq!((session.as_str(), user.as_str()), ("session-z", "first"));
        let (rows, cost) = hour_sums(&pool, Dim::All).await;
        assert_eq!((rows, cost), (2, 1_000_000));
    }

    /// A batch long enough to add up its rollups on another thread, holding an id stored by an
    /// earlier batch: the repeat is skipped and not counted (the rollups are added up again).
    #[tokio::test]
    async fn a_long_batch_does_not_count_an_id_stored_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(&dir).await;
        let rec = |id: &str, cost: f64| {
            record(
                json!({"request_id": id, "model": "m", "status": 200, "duration_ms": 1,
                          "user": "u", "cost_usd": cost}),
            )
        };
        write(&pool, Arc::new(vec![rec("dup", 5.0)]), true)
            .await
            .expect("first");
        let mut batch: Vec<_> = (0..PARALLEL_ROLLUP_ROWS + 10)
            .map(|i| rec(&format!("r-{i}"), 1.0))
            .collect();
        batch.insert(100, rec("dup", 7.0));
        write(&pool, Arc::new(batch), true).await.expect("second");
        merge_pending(&pool).await.expect("merge");
        let (rows, cost) = hour_sums(&pool, Dim::User).await;
        let n = i64::try_from(PARALLEL_ROLLUP_ROWS).expect("small") + 10;
        assert_eq!((rows, cost), (n + 1, (n + 5) * 1_000_000));
    }

    /// A fresh log with `trigger` (a `CREATE TRIGGER` statement) on it.
    async fn pool_with_trigger(dir: &tempfile::TempDir, trigger: &str) -> SqlitePool {
        let pool = pool(dir).await;
        sqlx::query(trigger).execute(&pool).await.expect("trigger");
        pool
    }

    async fn held_ids(pool: &SqlitePool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM request_ids")
            .fetch_one(pool)
            .await
            .expect("count")
    }

    /// Rows of the log and its highest id.
    async fn rows_and_last_id(pool: &SqlitePool) -> (i64, i64) {
        sqlx::query_as("SELECT count(*), max(id) FROM request_log")
            .fetch_one(pool)
            .await
            .expect("count")
    }

    /// Ids in `request_ids` that name their own row (same id, same row id).
    async fn ids_naming_their_rows(pool: &SqlitePool) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM request_log l JOIN request_ids i \
             ON i.request_id = l.request_id AND i.log_id = l.id",
        )
        .fetch_one(pool)
        .await
        .expect("ids")
    }

    async fn log_rows(pool: &SqlitePool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM request_log")
            .fetch_one(pool)
            .await
            .expect("count")
    }

    #[tokio::test]
    async fn a_failing_row_rolls_back_its_whole_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool_with_trigger(
            &dir,
            "CREATE TRIGGER refuse BEFORE INSERT ON request_log WHEN NEW.request_id = 'boom' \
             BEGIN SELECT RAISE(ABORT, 'refused by test'); END",
        )
        .await;
        let r = |id: &str| {
            record(json!({"request_id": id, "model": "m", "status": 200, "duration_ms": 1}))
        };
        let count = || log_rows(&pool);
        // A short batch (one statement of its own length) and a long one (several statements
        // of ROWS_PER_INSERT rows, the refused row in the second).
        let long: Vec<_> = (0..ROWS_PER_INSERT * 3)
            .map(|i| match i == ROWS_PER_INSERT + 5 {
                true => r("boom"),
                false => r(&format!("x-{i}")),
            })
            .collect();
        for batch in [vec![r("a"), r("boom"), r("c")], long] {
            let err = write(&pool, Arc::new(batch), true)
                .await
                .expect_err("the trigger refuses a row");
            assert!(err.to_string().contains("refused by test"), "{err}");
            assert_eq!(count().await, 0, "nothing of the failed batch is kept");
            assert_eq!(held_ids(&pool).await, 0, "nor its request ids");
        }
        // The connection is usable again (no transaction left open), and ids stay unique.
        write(&pool, Arc::new(vec![r("a"), r("c"), r("a")]), true)
            .await
            .expect("write");
        write(&pool, Arc::new(vec![r("c")]), true)
            .await
            .expect("write");
        assert_eq!(count().await, 2);
    }

    /// `INSERT OR IGNORE` skips a row that the database refuses for any reason, not only a
    /// repeated id: such a row fails the batch rather than pass for a repeat (and go uncounted).
    #[tokio::test]
    async fn a_row_the_database_skips_silently_fails_its_batch() {
        let rec = |i: usize| {
            let id = (i != 100).then(|| format!("r-{i}"));
            record(
                json!({"request_id": id, "model": "m", "status": 200, "duration_ms": 1,
                          "user": format!("u-{i}")}),
            )
        };
        // A row with a request id (recorded in `request_ids`, so not taken for a repeat) and
        // one without.
        for row in ["NEW.request_id = 'r-70'", "NEW.user_ref = 'u-100'"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let pool = pool_with_trigger(
                &dir,
                &format!(
                    "CREATE TRIGGER skip BEFORE INSERT ON request_log WHEN {row} \
                     BEGIN SELECT RAISE(IGNORE); END"
                ),
            )
            .await;
            let batch: Vec<_> = (0..ROWS_PER_INSERT * 2).map(rec).collect();
            let err = write(&pool, Arc::new(batch), true)
                .await
                .expect_err("a row is missing");
            assert!(
                err.to_string().contains("did not store 1 of"),
                "{row}: {err}"
            );
            assert_eq!(log_rows(&pool).await, 0, "{row}");
            assert_eq!(
                held_ids(&pool).await,
                0,
                "{row}: the ids went with the rows"
            );
        }
    }

    /// Repeats in every statement of a long batch, and in its short last one: each is skipped
    /// and not counted; the rows stored are numbered by their place in the insert order.
    #[tokio::test]
    async fn repeats_anywhere_in_a_long_batch_are_skipped_and_not_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(&dir).await;
        let rec = |i: usize, cost: f64| {
            record(
                json!({"request_id": format!("r-{i}"), "model": "m", "status": 200,
                          "duration_ms": 1, "user": "u", "cost_usd": cost}),
            )
        };
        // Ids in each full statement and one in the short last one (records without a time
        // keep their arrival order).
        let first: Vec<_> = ((0..ROWS_PER_INSERT * 3).step_by(7))
            .chain([ROWS_PER_INSERT * 3 + 8])
            .map(|i| rec(i, 5.0))
            .collect();
        let repeated = i64::try_from(first.len()).expect("small");
        write(&pool, Arc::new(first), true).await.expect("first");
        let n = ROWS_PER_INSERT * 3 + 10;
        write(&pool, Arc::new((0..n).map(|i| rec(i, 1.0)).collect()), true)
            .await
            .expect("second");
        merge_pending(&pool).await.expect("merge");
        let n = i64::try_from(n).expect("small");
        let (rows, cost) = hour_sums(&pool, Dim::User).await;
        assert_eq!(rows, n);
        assert_eq!(cost, repeated * 5_000_000 + (n - repeated) * 1_000_000);
        // Rows are numbered by their place in the batch; a repeat leaves its number unused.
        assert_eq!(rows_and_last_id(&pool).await, (n, repeated + n));
        let placed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM request_log WHERE id > ?1 AND request_id = 'r-' || (id - ?1 - 1)",
        )
        .bind(repeated)
        .fetch_one(&pool)
        .await
        .expect("ids");
        assert_eq!(placed, n - repeated);
        assert_eq!(ids_naming_their_rows(&pool).await, n);
        assert_eq!(held_ids(&pool).await, n);
    }

    /// Repeats spread over several full `request_ids` statements, among rows without a request
    /// id (which take their places in the numbering too): every row stored once, and each id
    /// naming its own row.
    #[tokio::test]
    async fn repeats_among_rows_without_ids_over_several_id_statements() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(&dir).await;
        let rec = |i: usize, with_id: bool, cost: f64| {
            let id = with_id.then(|| format!("r-{i}"));
            record(
                json!({"request_id": id, "model": "m", "status": 200, "duration_ms": 1,
                          "user": "u", "cost_usd": cost}),
            )
        };
        let n = IDS_PER_INSERT * 3 + 10;
        let first: Vec<usize> = (0..n).step_by(5).collect();
        let without_id = |i: usize| i % 9 == 4;
        let batch = first.iter().map(|&i| rec(i, true, 5.0)).collect();
        write(&pool, Arc::new(batch), true).await.expect("first");
        let second = (0..n).map(|i| rec(i, !without_id(i), 1.0)).collect();
        write(&pool, Arc::new(second), true).await.expect("second");
        merge_pending(&pool).await.expect("merge");
        let count = |it: &mut dyn Iterator<Item = usize>| i64::try_from(it.count()).expect("small");
        let repeats = count(&mut first.iter().copied().filter(|&i| !without_id(i)));
        let idless = count(&mut (0..n).filter(|&i| without_id(i)));
        let first_len = count(&mut first.iter().copied());
        let n = count(&mut (0..n));
        let stored = first_len + n - repeats;
        let (rows, cost) = hour_sums(&pool, Dim::User).await;
        assert_eq!(rows, stored);
        assert_eq!(cost, first_len * 5_000_000 + (n - repeats) * 1_000_000);
        assert_eq!(rows_and_last_id(&pool).await, (stored, first_len + n));
        assert_eq!(ids_naming_their_rows(&pool).await, stored - idless);
        assert_eq!(held_ids(&pool).await, stored - idless);
    }

    /// Rows are numbered after the highest id; a batch that would pass `i64::MAX` (where SQLite
    /// would pick ids at random) is refused whole, with or without request ids.
    #[tokio::test]
    async fn a_batch_past_the_last_row_id_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(&dir).await;
        let idless = || {
            Arc::new(vec![record(
                json!({"model": "m", "status": 200, "duration_ms": 1}),
            )])
        };
        write(&pool, idless(), false).await.expect("first");
        sqlx::query("UPDATE request_log SET id = ?1")
            .bind(i64::MAX - 2)
            .execute(&pool)
            .await
            .expect("move");
        for ids in [false, true] {
            let rec = |i: usize| {
                let id = ids.then(|| format!("r-{i}"));
                record(json!({"request_id": id, "model": "m", "status": 200, "duration_ms": 1}))
            };
            let err = write(&pool, Arc::new(vec![rec(1), rec(2), rec(3)]), false)
                .await
                .expect_err("no room");
            assert!(err.to_string().contains("run out of row ids"), "{err}");
        }
        write(&pool, idless(), false).await.expect("one more fits");
        assert_eq!(log_rows(&pool).await, 2);
        assert_eq!(held_ids(&pool).await, 0);
    }

    /// A row deleted from the log (retention) takes its request id with it: the same id sent
    /// again is stored again, as a row of the unique index was.
    #[tokio::test]
    async fn a_deleted_row_frees_its_request_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(&dir).await;
        let rec = |id: &str| {
            record(json!({"request_id": id, "model": "m", "status": 200, "duration_ms": 1}))
        };
        let uuid = "0af76519-16cd-43dd-8448-eb211c80319c";
        write(&pool, Arc::new(vec![rec(uuid), rec("kept")]), false)
            .await
            .expect("first");
        sqlx::query("DELETE FROM request_log WHERE id = 1")
            .execute(&pool)
            .await
            .expect("delete");
        let ids: Vec<i64> = sqlx::query_scalar("SELECT log_id FROM request_ids")
            .fetch_all(&pool)
            .await
            .expect("ids");
        assert_eq!(ids, [2]);
        write(&pool, Arc::new(vec![rec(uuid), rec("kept")]), false)
            .await
            .expect("again");
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT i.log_id, typeof(i.request_id) FROM request_ids i \
             JOIN request_log l ON l.id = i.log_id AND l.request_id = i.request_id ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .expect("ids");
        assert_eq!(rows, [(2, "text".to_string()), (3, "blob".to_string())]);
        assert_eq!(log_rows(&pool).await, 2);
    }
}
