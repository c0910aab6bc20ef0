//! PostgreSQL's write path of the request log: a batch is sent as one binary
//! `COPY … FROM STDIN` straight into `request_log`; only when that fails on a repeated
//! `request_id` is it sent again into a temporary staging table of the writer's connection and
//! moved into `request_log` by one `INSERT … SELECT … ON CONFLICT (request_id) DO NOTHING`, both
//! in one transaction. The staging table empties itself at commit (`ON COMMIT DELETE ROWS`), and a
//! failed batch leaves nothing behind in either table; idempotency stays with the unique index
//! on `request_id`, so batches written at once on several connections may repeat ids.
//!
//! The writer has its own small pool (one connection per batch in flight); each connection
//! creates its staging table when it connects. The COPY rows are encoded here
//! ([`encode_row`]): per row a 16-bit field count, per field a 32-bit length (−1 for NULL)
//! and the value in PostgreSQL's binary send format (`text`: the UTF-8 bytes, `int8`:
//! big-endian, `bool`: one byte).

use std::sync::{Arc, LazyLock};

use sqlx::Executor;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::record::ValidRecord;
use crate::store::StoreError;
use crate::store::sql::columns::{self, FIELDS, Value, column_list};
use crate::store::sql::rollup::{self, Batch, Dist, FACT_COLUMNS, FactRow};
use crate::store::sql::{ACQUIRE_TIMEOUT, WriteError, unavailable, write_error};

/// The staging table (temporary: one per connection, no WAL, no locks shared with others).
const STAGING: &str = "request_log_staging";

/// Run on every new writer connection.
static CREATE_STAGING: LazyLock<String> = LazyLock::new(|| {
    let columns = FIELDS.map(|(name, kind)| format!("{name} {}", kind.sql()));
    format!(
        "CREATE TEMPORARY TABLE {STAGING} ({}) ON COMMIT DELETE ROWS",
        columns.join(", ")
    )
});

static COPY_IN: LazyLock<String> =
    LazyLock::new(|| format!("COPY {STAGING} FROM STDIN (FORMAT binary)"));

/// The fast path: straight into the log (see [`write`]).
static COPY_DIRECT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "COPY request_log ({}) FROM STDIN (FORMAT binary)",
        column_list()
    )
});

static MOVE: LazyLock<String> = LazyLock::new(|| {
    let columns = column_list();
    format!(
        "INSERT INTO request_log ({columns}) SELECT {columns} FROM {STAGING} \
         ON CONFLICT (request_id) DO NOTHING RETURNING {FACT_COLUMNS}"
    )
});

/// The advisory lock every writer (of every replica) holds while it merges rollups: merges
/// run one at a time, so a histogram read, merged and written back is never lost to another.
const ROLLUP_LOCK: i64 = 0x6761_7465_6d65_7472; // "gatemetr"

/// Stored distributions of the given rollup rows (the merge reads them under [`ROLLUP_LOCK`]).
static READ_DISTS: &str = "SELECT k.i, r.dist FROM unnest($1::int2[], $2::int2[], $3::int8[], \
     $4::text[], $5::text[]) WITH ORDINALITY AS k(dim, tier, bucket_ms, value, detail, i) \
     JOIN rollup r ON r.dim = k.dim AND r.tier = k.tier AND r.bucket_ms = k.bucket_ms \
     AND r.value = k.value COLLATE \"C\" AND r.detail = k.detail COLLATE \"C\" \
     WHERE r.dist IS NOT NULL";

static UPSERT: LazyLock<String> = LazyLock::new(|| {
    rollup::upsert_sql(
        "SELECT dim, tier, bucket_ms, value, detail, requests, successes, input_tokens, \
         output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, \
         cost_micros, duration_ms_sum, NULLIF(dist, ''::bytea) ",
        "FROM unnest($1::int2[], $2::int2[], $3::int8[], $4::text[], $5::text[], $6::int8[], \
         $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], \
         $14::int8[], $15::bytea[]) AS k(dim, tier, bucket_ms, value, detail, requests, successes, \
         input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, \
         cache_read_tokens, cost_micros, duration_ms_sum, dist)",
    )
});

static SESSION_UPSERT: LazyLock<String> = LazyLock::new(|| {
    rollup::session_upsert_sql(
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], \
         $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], \
         $13::int8[], $14::int8[])",
        "LEAST",
        "GREATEST",
    )
});

/// COPY data is sent in messages of about this size (sqlx copies each into its write buffer).
const SEND_CHUNK: usize = 256 * 1024;

/// The writer's pool: one connection per batch in flight, each with its staging table.
/// Connects lazily, so a server that is down at start is connected to when it comes up.
pub(in crate::store::sql) fn open_pool(opts: PgConnectOptions, connections: usize) -> PgPool {
    PgPoolOptions::new()
        .max_connections(u32::try_from(connections).unwrap_or(u32::MAX))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute(CREATE_STAGING.as_str()).await?;
                Ok(())
            })
        })
        .connect_lazy_with(opts)
}

/// Writes one batch in one transaction; rows whose `request_id` is already stored (or repeated
/// earlier in the batch) are skipped. `pool` must come from [`open_pool`].
#[allow(clippy::vec_box)]
pub(super) async fn write(
    pool: &PgPool,
    batch: &Arc<Vec<Box<ValidRecord>>>,
    rollups: bool,
) -> Result<(), WriteError> {
    // Rows go in in the SQLite writer's order (`columns::insert_order`: each id once, sorted), so
    // that the two backends number the same records alike.
    let order = columns::insert_order(batch);
    // The direct path's rollup increments (every row sent) are added up and encoded on a blocking
    // thread while the server takes the COPY, not after it: a batch's connection then waits for
    // them ~0 ms instead of ~1 µs a row.
    let journal = rollups.then(|| {
        let (batch, kept) = (Arc::clone(batch), order.clone());
        tokio::task::spawn_blocking(move || Batch::journal_of(&batch, kept))
    });
    // Encoded before any I/O: a row that cannot be encoded never leaves a COPY half sent.
    // Rows are encoded in arrival order, as the records lie in memory, and sent in the insert
    // order: encoded in that order, nearly every record was a cache miss (+0.3 µs a row).
    let rows = order.len();
    let data = CopyData::encode(batch, order).map_err(WriteError::Refused)?;
    // Fast path: COPY straight into the log. A repeated `request_id` (already stored, or in a
    // batch committing at the same time; repeats within the batch are left out above) makes the
    // whole COPY fail with a unique violation, and the batch is written again through the
    // staging table, which skips the repeats. Repeats are rare (retried deliveries), and the
    // direct COPY saves the staging table's heap insert and the `INSERT … SELECT` for every row.
    let direct = journal.map(|blob| Added::Records(blob, rows));
    match copy_in(pool, &COPY_DIRECT, &data, direct, batch).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNIQUE_VIOLATION) => {}
        other => return other.map_err(write_error),
    }
    let staged = Added::Returned { rollups };
    copy_in(pool, &COPY_IN, &data, Some(staged), batch)
        .await
        .map_err(write_error)
}

/// What a `COPY` added to the log, for the rollups.
enum Added {
    /// Every record of the batch (the direct `COPY` stores all or nothing): their journal blob,
    /// being encoded, and how many they are.
    Records(tokio::task::JoinHandle<Option<Vec<u8>>>, usize),
    /// The rows the staged move returns (repeats skipped); rolled up only with `rollups`.
    Returned { rollups: bool },
}

/// SQLSTATE `unique_violation`.
const UNIQUE_VIOLATION: &str = "23505";

/// A batch's rows in binary COPY format, in arrival order, and the order they are sent in.
struct CopyData {
    rows: Vec<u8>,
    /// Where each row ends in `rows`.
    ends: Vec<usize>,
    order: Vec<usize>,
}

impl CopyData {
    fn encode(batch: &[Box<ValidRecord>], order: Vec<usize>) -> Result<Self, StoreError> {
        let (mut rows, mut ends) = (Vec::new(), Vec::with_capacity(batch.len()));
        let mut chain = String::new();
        for r in batch {
            encode_row(&mut rows, r, &mut chain)?;
            ends.push(rows.len());
            if ends.len() == 1 {
                // Room for the rest at a quarter more than the first row: grown by doubling
                // instead, the buffer was copied and its new pages touched once more.
                rows.reserve((rows.len() + rows.len() / 4) * batch.len());
            }
        }
        Ok(Self { rows, ends, order })
    }

    /// Sends the header, the rows in order and the trailer in messages of about
    /// [`SEND_CHUNK`] bytes, gathered in one small buffer (the rows are not laid out in order
    /// in a second copy of the batch).
    async fn send(
        &self,
        sink: &mut sqlx::postgres::PgCopyIn<&mut sqlx::PgConnection>,
    ) -> Result<(), sqlx::Error> {
        let mut chunk = Vec::with_capacity(SEND_CHUNK + 1024);
        chunk.extend_from_slice(HEADER);
        for &i in &self.order {
            let start = i.checked_sub(1).map_or(0, |p| self.ends[p]);
            chunk.extend_from_slice(&self.rows[start..self.ends[i]]);
            if chunk.len() >= SEND_CHUNK {
                sink.send(chunk.as_slice()).await?;
                chunk.clear();
            }
        }
        chunk.extend_from_slice(&TRAILER);
        sink.send(chunk.as_slice()).await?;
        Ok(())
    }
}

/// One transaction: `copy` with `data`, then for the staged path [`MOVE`], then the rollups of
/// what was added, then the stored requests of `batch`, then commit. Dropped uncommitted on error.
async fn copy_in(
    pool: &PgPool,
    copy: &str,
    data: &CopyData,
    added: Option<Added>,
    batch: &[Box<ValidRecord>],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut sink = tx.copy_in_raw(copy).await?;
    data.send(&mut sink).await?;
    sink.finish().await?;
    let journal = match added {
        Some(Added::Records(blob, rows)) => {
            let blob = blob
                .await
                .map_err(|e| sqlx::Error::Protocol(format!("rollup increments: {e}")))?;
            blob.map(|blob| (blob, rows))
        }
        Some(Added::Returned { rollups: on }) => {
            let rows = sqlx::query(&MOVE).fetch_all(&mut *tx).await?;
            let mut rollups = Batch::default();
            if on {
                let facts = rows
                    .iter()
                    .map(|row| FactRow::read(row, 0))
                    .collect::<Result<Vec<_>, _>>()?;
                rollups.add_all(facts.iter().map(FactRow::fact));
            }
            (!rollups.is_empty()).then(|| (rollups.encode(), rows.len()))
        }
        None => None,
    };
    if let Some((blob, rows)) = journal {
        // Journaled with the rows; `merge_pending` folds them in later, under the lock.
        sqlx::query("INSERT INTO rollup_pending (rows, delta) VALUES ($1, $2)")
            .bind(i64::try_from(rows).unwrap_or(i64::MAX))
            .bind(blob)
            .execute(&mut *tx)
            .await?;
    }
    insert_requests(&mut tx, batch).await?;
    tx.commit().await
}

/// The stored requests of `batch` (records with a redacted `request` and a `request_id`) in one
/// statement; a repeated id stores nothing.
async fn insert_requests(
    tx: &mut sqlx::PgConnection,
    batch: &[Box<ValidRecord>],
) -> Result<(), sqlx::Error> {
    let (mut ids, mut ts, mut json, mut cut, mut bytes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in batch {
        if let (Some(id), Some(req)) = (&r.request_id, &r.request) {
            ids.push(id.as_str());
            ts.push(r.timestamp_ms);
            json.push(req.json.as_str());
            cut.push(req.truncated);
            bytes.push(i64::try_from(req.original_bytes).unwrap_or(i64::MAX));
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO request_bodies (request_id, ts_ms, request, truncated, original_bytes) \
         SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::bool[], $5::int8[]) \
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&ts)
    .bind(&json)
    .bind(&cut)
    .bind(&bytes)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Folds every committed journal row into the rollup tables and deletes it, in one transaction
/// under [`ROLLUP_LOCK`] (one merge at a time across writers and replicas; a batch committing
/// meanwhile is merged next time). Returns the request-log rows the merged rows covered.
pub(in crate::store::sql) async fn merge_pending(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ROLLUP_LOCK)
        .execute(&mut *tx)
        .await?;
    let pending: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("DELETE FROM rollup_pending RETURNING rows, delta")
            .fetch_all(&mut *tx)
            .await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let mut batch = Batch::default();
    let mut covered = 0u64;
    for (rows, delta) in &pending {
        covered += u64::try_from(*rows).unwrap_or(0);
        batch.decode_into(delta).ok_or_else(|| {
            sqlx::Error::Protocol("a rollup journal row this version cannot read".into())
        })?;
    }
    apply_rollups(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(covered)
}

/// Merges rollup increments into the tables inside `tx`, under [`ROLLUP_LOCK`]: reads the
/// stored distributions of the rows concerned, merges them in, upserts every row at once.
pub(in crate::store::sql) async fn apply_rollups(
    tx: &mut sqlx::PgConnection,
    batch: Batch,
) -> Result<(), sqlx::Error> {
    let (cells, sessions) = batch.into_rows();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ROLLUP_LOCK)
        .execute(&mut *tx)
        .await?;
    let n = cells.len();
    let (mut dim, mut tier, mut bucket) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut value, mut detail) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut counts: [Vec<i64>; 9] = Default::default();
    let mut dists: Vec<Option<Dist>> = Vec::with_capacity(n);
    for (k, c) in cells {
        dim.push(k.dim.code() as i16);
        tier.push(k.tier.code() as i16);
        bucket.push(k.bucket_ms);
        value.push(k.value.to_string());
        detail.push(k.detail.to_string());
        for (col, v) in counts.iter_mut().zip(c.counts.values()) {
            col.push(v);
        }
        dists.push(c.dist);
    }
    let stored: Vec<(i64, Vec<u8>)> = sqlx::query_as(READ_DISTS)
        .bind(&dim)
        .bind(&tier)
        .bind(&bucket)
        .bind(&value)
        .bind(&detail)
        .fetch_all(&mut *tx)
        .await?;
    for (i, bytes) in stored {
        // WITH ORDINALITY counts from 1.
        if let Some(Some(d)) = usize::try_from(i - 1).ok().and_then(|i| dists.get_mut(i)) {
            let _ = d.decode_into(&bytes);
        }
    }
    let blobs: Vec<Vec<u8>> = dists
        .iter()
        .map(|d| d.as_ref().map(Dist::encode).unwrap_or_default())
        .collect();
    let mut q = sqlx::query(&UPSERT)
        .bind(&dim)
        .bind(&tier)
        .bind(&bucket)
        .bind(&value)
        .bind(&detail);
    for col in &counts {
        q = q.bind(col);
    }
    q.bind(&blobs).execute(&mut *tx).await?;
    if sessions.is_empty() {
        return Ok(());
    }
    let n = sessions.len();
    let (mut id, mut user, mut ns) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut first, mut last) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut counts: [Vec<i64>; 9] = Default::default();
    for ((i, u), s) in sessions {
        id.push(i.to_string());
        user.push(u.to_string());
        ns.push(s.namespace.to_string());
        first.push(s.first_ms);
        last.push(s.last_ms);
        for (col, v) in counts.iter_mut().zip(s.counts.values()) {
            col.push(v);
        }
    }
    let mut q = sqlx::query(&SESSION_UPSERT)
        .bind(&id)
        .bind(&user)
        .bind(&ns)
        .bind(&first)
        .bind(&last);
    for col in &counts {
        q = q.bind(col);
    }
    q.execute(&mut *tx).await?;
    Ok(())
}

/// Binary COPY header: signature, flags (32 bits, 0: no OIDs), header extension length (0).
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Binary COPY trailer: a field count of −1.
const TRAILER: [u8; 2] = (-1i16).to_be_bytes();

/// Appends one row of [`FIELDS`] in binary COPY format.
fn encode_row(buf: &mut Vec<u8>, r: &ValidRecord, chain: &mut String) -> Result<(), StoreError> {
    buf.extend_from_slice(&(FIELDS.len() as i16).to_be_bytes());
    columns::provider_chain(r, chain);
    for v in columns::values(r, chain) {
        match v {
            Value::Text(t) => text(buf, t)?,
            Value::Int8(n) => int8(buf, n),
            Value::Bool(b) => boolean(buf, b),
        }
    }
    Ok(())
}

const NULL: [u8; 4] = (-1i32).to_be_bytes();

fn length(n: usize) -> Result<[u8; 4], StoreError> {
    i32::try_from(n)
        .map(i32::to_be_bytes)
        .map_err(|_| unavailable(format!("request log field of {n} bytes is too long")))
}

fn text(buf: &mut Vec<u8>, v: Option<&str>) -> Result<(), StoreError> {
    match v {
        Some(s) => {
            buf.extend_from_slice(&length(s.len())?);
            buf.extend_from_slice(s.as_bytes());
        }
        None => buf.extend_from_slice(&NULL),
    }
    Ok(())
}

fn int8(buf: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(n) => {
            buf.extend_from_slice(&8i32.to_be_bytes());
            buf.extend_from_slice(&n.to_be_bytes());
        }
        None => buf.extend_from_slice(&NULL),
    }
}

fn boolean(buf: &mut Vec<u8>, v: bool) {
    buf.extend_from_slice(&1i32.to_be_bytes());
    buf.push(u8::from(v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::columns::Kind;

    /// Splits one encoded row into its fields (`None` for NULL).
    fn fields(row: &[u8]) -> Vec<Option<&[u8]>> {
        let count = i16::from_be_bytes([row[0], row[1]]);
        let mut at = 2;
        let mut out = Vec::new();
        for _ in 0..count {
            let len = i32::from_be_bytes(row[at..at + 4].try_into().expect("4 bytes"));
            at += 4;
            if len < 0 {
                out.push(None);
            } else {
                out.push(Some(&row[at..at + len as usize]));
                at += len as usize;
            }
        }
        assert_eq!(at, row.len(), "row fully read");
        out
    }

    fn record() -> ValidRecord {
        let json = r#"{"request_id": "r-1", "timestamp": 1700000000000, "model": "m",
            "status": 200, "duration_ms": 1}"#;
        *crate::record::test_record(json, 1_700_000_000_000)
    }

    #[test]
    fn header_and_trailer_are_postgres_binary_copy() {
        assert_eq!(HEADER.len(), 11 + 4 + 4);
        assert_eq!(&HEADER[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(TRAILER, [0xff, 0xff]);
    }

    #[test]
    fn nulls_text_and_integers() {
        let mut r = record();
        r.user = Some("Zoë 漢字 🚀".into());
        r.user_id = None;
        r.timestamp_ms = i64::MIN;
        r.tokens.input = u64::MAX;
        r.tokens.output = i64::MAX as u64;
        r.ttfb_ms = None;
        r.messages_count = Some(u32::MAX);
        r.provider_chain = vec!["a\"b".into(), "ü".into()];
        r.is_streaming = true;
        let mut buf = Vec::new();
        encode_row(&mut buf, &r, &mut String::new()).expect("encodes");
        let f = fields(&buf);
        assert_eq!(f.len(), FIELDS.len());
        let at = |name: &str| {
            FIELDS
                .iter()
                .position(|(n, _)| *n == name)
                .expect("known column")
        };
        assert_eq!(f[at("request_id")], Some(&b"r-1"[..]));
        assert_eq!(f[at("ts_ms")], Some(&i64::MIN.to_be_bytes()[..]));
        // user_ref falls back to the user name; user_id is NULL.
        assert_eq!(f[at("user_ref")], Some("Zoë 漢字 🚀".as_bytes()));
        assert_eq!(f[at("user_name")], Some("Zoë 漢字 🚀".as_bytes()));
        assert_eq!(f[at("user_id")], None);
        assert_eq!(f[at("ttfb_ms")], None);
        assert_eq!(f[at("input_tokens")], Some(&i64::MAX.to_be_bytes()[..]));
        assert_eq!(f[at("output_tokens")], Some(&i64::MAX.to_be_bytes()[..]));
        assert_eq!(
            f[at("messages_count")],
            Some(&i64::from(u32::MAX).to_be_bytes()[..])
        );
        assert_eq!(f[at("provider_chain")], Some(r#"["a\"b","ü"]"#.as_bytes()));
        assert_eq!(f[at("is_streaming")], Some(&[1u8][..]));
        assert_eq!(f[at("status")], Some(&200i64.to_be_bytes()[..]));
        // Every field has the width of its declared type.
        for ((name, kind), v) in FIELDS.iter().zip(&f) {
            match (kind, v) {
                (Kind::Int8, Some(b)) => assert_eq!(b.len(), 8, "{name}"),
                (Kind::Bool, Some(b)) => assert_eq!(b.len(), 1, "{name}"),
                _ => {}
            }
        }
    }

    #[test]
    fn empty_chain_and_empty_strings() {
        let mut r = record();
        r.provider_chain = Vec::new();
        r.error = Some("".into());
        let mut buf = Vec::new();
        encode_row(&mut buf, &r, &mut String::new()).expect("encodes");
        let f = fields(&buf);
        let at = |name: &str| FIELDS.iter().position(|(n, _)| *n == name).expect("known");
        assert_eq!(f[at("provider_chain")], Some(&b"[]"[..]));
        assert_eq!(f[at("error")], Some(&b""[..]), "empty is not NULL");
    }

    #[test]
    fn statements_name_every_field_in_order() {
        assert!(CREATE_STAGING.starts_with(
            "CREATE TEMPORARY TABLE request_log_staging (request_id text, ts_ms int8,"
        ));
        assert!(MOVE.contains("(request_id, ts_ms, namespace,"));
        assert!(MOVE.contains("ON CONFLICT (request_id) DO NOTHING RETURNING ts_ms, namespace,"));
    }
}
