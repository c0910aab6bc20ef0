//! The SQLite writer's inner loop: one transaction per batch, one prepared single-row
//! `INSERT … ON CONFLICT (request_id) DO NOTHING` bound and stepped per row, through SQLite's C
//! API on the writer's own sqlx connection (`sqlite_raw.rs`), on a blocking thread. A request id
//! written as a canonical UUID is stored as its 16 bytes (`columns::uuid_bytes`): the unique
//! index, where random UUIDs land anywhere, is then about half the size.
//!
//! Why not `sqlx::query`: every `sqlx` statement is a round trip to the connection's worker
//! thread, and a multi-row `VALUES` list (36 parameters a row, ~900 rows per statement) makes
//! SQLite parse a huge statement and keep a statement journal for it. Binding borrowed text to a
//! prepared statement costs a few hundred nanoseconds a row (issue #4: see ARCHITECTURE.md for
//! the figures).

use std::sync::Arc;

use sqlx::SqlitePool;

use super::columns::{self, COLUMNS, Value};
use super::rollup::{self, Batch};
use super::sqlite_raw::{Bind, Handle, is_outage_message, with_handle};
use super::{WriteError, unavailable, write_error};
use crate::record::ValidRecord;
use crate::store::StoreError;

/// Writes `batch` in one transaction; rows whose `request_id` is already stored are skipped.
/// With `rollups`, the rows stored are added to the rollups in the same transaction. On any
/// error the transaction is rolled back (nothing of the batch is stored).
#[allow(clippy::vec_box)]
pub(crate) async fn write(
    pool: &SqlitePool,
    batch: Arc<Vec<Box<ValidRecord>>>,
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

fn insert_batch(db: Handle<'_>, batch: &[Box<ValidRecord>], rollups: bool) -> Result<(), String> {
    let positions = columns::insert_order(batch);
    let order: Vec<&ValidRecord> = positions.iter().map(|&i| &*batch[i]).collect();
    // The positions in `batch` of the rows stored: all but the `skipped` places of `order`.
    let stored = |skipped: &[usize]| -> Vec<usize> {
        (positions.iter().enumerate())
            .filter(|(at, _)| skipped.binary_search(at).is_err())
            .map(|(_, &i)| i)
            .collect()
    };
    // The rollup increments of the rows are added up and encoded on a thread of their own
    // while this one inserts them: SQLite's write rate is this thread's, and the rollups cost
    // it ~1 µs a row. They are added up assuming every row is stored; when the insert skipped
    // some (repeated request ids: they are not counted again), they are added up here again,
    // from the rows stored only.
    let (skipped, journal) = std::thread::scope(|s| {
        let parallel = rollups && order.len() >= PARALLEL_ROLLUP_ROWS;
        let rollup = parallel.then(|| s.spawn(|| Batch::journal_of(batch, stored(&[]))));
        let inserted = insert_rows(db, &order);
        let journal = rollup.map(|t| t.join().expect("the rollup thread does not panic"));
        inserted.map(|skipped| (skipped, journal))
    })?;
    insert_requests(db, batch)?;
    if !rollups {
        return Ok(());
    }
    let blob = match journal {
        Some(blob) if skipped.is_empty() => blob,
        _ => Batch::journal_of(batch, stored(&skipped)),
    };
    let Some(blob) = blob else { return Ok(()) };
    // The increments are journaled with the rows; `merge_pending` folds them in later.
    let mut journal = db.prepare("INSERT INTO rollup_pending (rows, delta) VALUES (?1, ?2)")?;
    let rows = i64::try_from(batch.len()).unwrap_or(i64::MAX);
    journal.run_once([Bind::Int(rows), Bind::Bytes(&blob)])
}

/// Batches at least this long add up their rollups on a thread of their own (a thread costs
/// some 20 µs to start; a small batch is added up in less).
const PARALLEL_ROLLUP_ROWS: usize = 2_048;

/// Inserts `order`'s rows; returns the positions of those skipped as repeats, in order.
fn insert_rows(db: Handle<'_>, order: &[&ValidRecord]) -> Result<Vec<usize>, String> {
    let mut stmt = db.prepare(&insert_one_sql())?;
    let mut chain = String::new();
    let mut skipped = Vec::new();
    for (i, r) in order.iter().enumerate() {
        columns::provider_chain(r, &mut chain);
        stmt.run_once(binds(r, &chain))?;
        // A repeated request id changed nothing: it is not counted again.
        if db.changes() != 1 {
            skipped.push(i);
        }
    }
    Ok(skipped)
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
        let id = columns::uuid_bytes(id.as_str()).map_or(Bind::Text(id.as_str()), Bind::Blob16);
        stmt.run_once([
            id,
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

/// One record's values in the order of [`columns::FIELDS`]; a `request_id` written as a
/// canonical UUID is bound as its 16 bytes ([`columns::uuid_bytes`]).
fn binds<'v>(r: &'v ValidRecord, chain: &'v str) -> impl Iterator<Item = Bind<'v>> {
    columns::values(r, chain)
        .into_iter()
        .enumerate()
        .map(|(field, v)| match v {
            Value::Text(Some(id)) if field == columns::REQUEST_ID_FIELD => {
                columns::uuid_bytes(id).map_or(Bind::Text(id), Bind::Blob16)
            }
            Value::Text(Some(t)) => Bind::Text(t),
            Value::Text(None) | Value::Int8(None) => Bind::Null,
            Value::Int8(Some(n)) => Bind::Int(n),
            Value::Bool(b) => Bind::Int(i64::from(b)),
        })
}

/// `INSERT INTO request_log (…) VALUES (?1, …, ?36) ON CONFLICT (request_id) DO NOTHING`.
fn insert_one_sql() -> String {
    let mut sql = format!(
        "INSERT INTO request_log ({}) VALUES (",
        columns::column_list()
    );
    for i in 1..=COLUMNS {
        if i > 1 {
            sql.push_str(", ");
        }
        sql.push('?');
        sql.push_str(&i.to_string());
    }
    sql.push_str(") ON CONFLICT (request_id) DO NOTHING");
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

    #[tokio::test]
    async fn a_failing_row_rolls_back_its_whole_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(&dir).await;
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON request_log WHEN NEW.request_id = 'boom' \
             BEGIN SELECT RAISE(ABORT, 'refused by test'); END",
        )
        .execute(&pool)
        .await
        .expect("trigger");
        let r = |id: &str| {
            record(json!({"request_id": id, "model": "m", "status": 200, "duration_ms": 1}))
        };
        let err = write(&pool, Arc::new(vec![r("a"), r("boom"), r("c")]), true)
            .await
            .expect_err("the trigger refuses a row");
        assert!(err.to_string().contains("refused by test"), "{err}");
        let count = || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM request_log")
                .fetch_one(&pool)
                .await
                .expect("count")
        };
        assert_eq!(count().await, 0, "nothing of the failed batch is kept");
        // The connection is usable again (no transaction left open), and ids stay unique.
        write(&pool, Arc::new(vec![r("a"), r("c"), r("a")]), true)
            .await
            .expect("write");
        write(&pool, Arc::new(vec![r("c")]), true)
            .await
            .expect("write");
        assert_eq!(count().await, 2);
    }
}
