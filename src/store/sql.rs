//! The SQL request log (SPEC §5): SQLite (embedded default, one file) or PostgreSQL, both
//! through `sqlx` with versioned migrations (`migrations/{sqlite,postgres}/`, embedded in the
//! binary).
//!
//! [`SqlLog`] implements [`RequestLog`]: `submit` only queues (bounded by a record budget, never
//! waits); one writer task (`sql/writer.rs`) turns what is queued into `INSERT`s, one
//! transaction per batch, idempotent on `request_id`, retrying transient errors. It also answers
//! the query API ([`query`]): filtered pages, one record, streamed exports, the export audit
//! trail, and the retention purge.
//!
//! Nothing here returns a `sqlx::Error`: callers see [`StoreError`]. The SQL is written once for
//! both dialects; `dispatch!` expands a body for each pool type.

pub mod analytics;
mod columns;
mod pg_copy;
pub mod probe;
pub mod query;
mod rebuild;
pub mod rollup;
mod sqlite_export;
mod sqlite_insert;
mod sqlite_raw;
mod sqlite_read;
mod usage_export;
mod writer;

use std::borrow::Cow;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::health::{DropReason, Health};
use crate::record::ValidRecord;
use crate::store::{RequestLog, StoreError};

pub use query::{
    AuditEntry, Cursor, ExportEnd, Exported, LogEntry, LogFilter, LogPage, NewAudit, RowEncoder,
    UsageRow,
};

/// Page cache of the SQLite writer's connection (`log_store.sqlite_cache_bytes`, default 32
/// MiB) as `PRAGMA cache_size` (negative: KiB), against the 2 MiB default: holds the hot pages
/// of the indexes across transactions (issue #4: larger caches wrote random ids faster in
/// `bench-log`, 64 → 128 MiB ~80,000 → ~93,000 rows/s; issue 20 bounded the default's memory,
/// see docs/benchmarks.md). It fills only as pages are used.
fn sqlite_cache_pragma(bytes: u64) -> String {
    format!("-{}", (bytes / 1024).max(64))
}

/// How often the SQLite WAL is copied into the database file in the background.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// The writer connection checkpoints by itself only past this many WAL pages (default 1,000):
/// normally [`checkpointer`] does it first, off the writer's path. 16,384 pages of 16 KiB (the
/// page size of new files) = 256 MiB of WAL at most between checkpoints.
const SQLITE_WRITER_AUTOCHECKPOINT: &str = "16384";

/// The tables of the request log and its rollups: what a backup without the log leaves empty.
pub const LOG_TABLES: [&str; 5] = [
    "request_log",
    "request_bodies",
    "rollup",
    "session_rollup",
    "rollup_pending",
];

/// SQLite: the trigger (migration 0010) that deletes a row's request id from `request_ids`.
const REQUEST_IDS_TRIGGER: &str = "request_log_forget_request_id";

/// Longest wait for a pooled connection before a query fails (issue #4: at most 2 s).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which database holds the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlBackend {
    /// A SQLite file (created with its directory when missing).
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// A PostgreSQL server.
    Postgres {
        /// `postgres://user@host:port/db` (never logged: it may hold a password).
        url: String,
    },
}

impl SqlBackend {
    /// `batch_rows` when the configuration does not set it. SQLite rewrites every index page a
    /// transaction touches (into the WAL, then the file), so it pays per transaction far more than
    /// per row: large transactions (issue #4: 10,000 → 100,000 rows took the write path from about
    /// 41,000 to 69,000 rows/s). PostgreSQL: 10,000 → 50,000 rows per batch: 63,811 / 61,600 →
    /// 74,445 / 69,274 rows/s (same run, alternating); 25,000 to 100,000 measure alike.
    pub fn default_batch_rows(&self) -> usize {
        match self {
            Self::Sqlite { .. } => 100_000,
            Self::Postgres { .. } => 50_000,
        }
    }

    /// `write_concurrency` when the configuration does not set it: batches written at once.
    /// SQLite has one writer whatever is asked. PostgreSQL: two. Concurrent `COPY`s into one
    /// table meet on the right-hand leaf pages of its ever-growing keys (`id`, `ts_ms`), so
    /// more connections add lock waits sooner than throughput: against a PostgreSQL on the
    /// same two cores (issue #4), 1 / 2 / 3 / 4 batches at once wrote 74,300 / 99,971 /
    /// 81,873 / 80,160 rows/s. A server with many cores of its own may take more.
    pub fn default_write_concurrency(&self) -> usize {
        match self {
            Self::Sqlite { .. } => 1,
            Self::Postgres { .. } => 2,
        }
    }
}

/// Settings of the SQL request log.
#[derive(Clone, PartialEq, Eq)]
pub struct SqlConfig {
    /// The database.
    pub backend: SqlBackend,
    /// Records waiting for the writer at most; beyond it batches are dropped and counted.
    pub queue_capacity: usize,
    /// Most records written in one transaction.
    pub batch_rows: usize,
    /// Batches written at once, each on its own connection (PostgreSQL; SQLite writes one).
    pub write_concurrency: usize,
    /// Rows older than this many days are deleted hourly; 0 keeps everything.
    pub retention_days: u32,
    /// Whether the writer keeps the rollups the analytics API reads (`rollup.rs`).
    pub rollups: bool,
    /// Bytes of records waiting for the writer or being written at most (with
    /// `queue_capacity`, whichever is reached first); beyond it batches are dropped and counted.
    pub queue_bytes: usize,
    /// The SQLite writer connection's page cache, bytes.
    pub sqlite_cache_bytes: u64,
}

/// Default `log_store.queue_bytes`: 32 MiB (about 50,000 records of a few hundred bytes).
pub const DEFAULT_QUEUE_BYTES: usize = 32 << 20;
/// Default `log_store.sqlite_cache_bytes`: 32 MiB. Against 16 MiB, same run: `bench-log
/// --profile live` 24,000 → 34,500 rows/s, the default `serve`'s peak RSS under `loadgen --rate
/// max --batch 100` 105 → 124 MB (issue 20's bound: 150; docs/benchmarks.md, 2026-12-05).
pub const DEFAULT_SQLITE_CACHE_BYTES: u64 = 32 << 20;

impl std::fmt::Debug for SqlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.backend {
            SqlBackend::Sqlite { path } => format!("sqlite {}", path.display()),
            SqlBackend::Postgres { .. } => "postgres (url hidden)".to_string(),
        };
        f.debug_struct("SqlConfig")
            .field("backend", &backend)
            .field("queue_capacity", &self.queue_capacity)
            .field("batch_rows", &self.batch_rows)
            .field("write_concurrency", &self.write_concurrency)
            .field("retention_days", &self.retention_days)
            .field("rollups", &self.rollups)
            .field("queue_bytes", &self.queue_bytes)
            .field("sqlite_cache_bytes", &self.sqlite_cache_bytes)
            .finish()
    }
}

/// A connection pool of either dialect.
#[derive(Clone)]
pub(crate) enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Expands `$body` once per pool type, with `$p` bound to the pool and `$DB` to the database
/// type, so the SQL and binding code is written once and type-checked for both dialects.
macro_rules! dispatch {
    ($backend:expr, $p:ident, $DB:ident => $body:expr) => {
        match $backend {
            $crate::store::sql::Backend::Sqlite($p) => {
                #[allow(dead_code)]
                type $DB = sqlx::Sqlite;
                $body
            }
            $crate::store::sql::Backend::Postgres($p) => {
                #[allow(dead_code)]
                type $DB = sqlx::Postgres;
                $body
            }
        }
    };
}
pub(crate) use dispatch;

/// A backend failure as a neutral [`StoreError`] (the `sqlx` error stays in this module).
pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        store: "request log",
        message: e.to_string(),
    }
}

/// Checks a PostgreSQL URL as the pools will read it: parsed by sqlx (an `sslmode` among
/// `disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full`), and its `sslrootcert`
/// file, if any, read for PEM certificates. The message never shows the URL (it may hold a
/// password).
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    url.parse::<PgConnectOptions>()
        .map_err(|e| format!("not a usable PostgreSQL URL: {e}"))?;
    let query = url.split_once('?').map_or("", |(_, q)| q);
    for pair in query.split('&') {
        if let Some(("sslrootcert" | "ssl-root-cert" | "ssl-ca", value)) = pair.split_once('=') {
            let path = percent_decode(value);
            crate::tls::read_pem_certificates(std::path::Path::new(&path))
                .map_err(|e| format!("sslrootcert: {e}"))?;
        }
    }
    Ok(())
}

/// `%XX` escapes and `+` of a URL query value decoded (invalid escapes kept as written).
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a write failed, as the writer must treat it.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The database cannot be reached or cannot work right now (connection refused or lost,
    /// I/O, pool timeout, server shutting down or starting, out of disk or connections, a
    /// deadlock): the batch is held and retried until it can be written.
    Outage(StoreError),
    /// The database refused these rows or this statement for a reason that retrying will not
    /// change (constraint, data, schema): the batch is dropped after a few attempts.
    Refused(StoreError),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Outage(e) | Self::Refused(e) => e.fmt(f),
        }
    }
}

/// A `sqlx` failure of a write, classified ([`is_outage`]).
pub(crate) fn write_error(e: sqlx::Error) -> WriteError {
    if is_outage(&e) {
        WriteError::Outage(unavailable(e))
    } else {
        WriteError::Refused(unavailable(e))
    }
}

/// A failed migration, classified like a write.
fn migrate_error(e: sqlx::migrate::MigrateError) -> WriteError {
    use sqlx::migrate::MigrateError as M;
    match e {
        M::Execute(e) | M::ExecuteMigration(e, _) => write_error(e),
        e => WriteError::Refused(unavailable(e)),
    }
}

/// Whether `e` says the database is away or cannot work for now, rather than that it refuses
/// what was sent. PostgreSQL SQLSTATE classes `08` (connection), `53` (insufficient resources:
/// disk, memory, connections), `57` (operator intervention: `57P01` admin shutdown, `57P03`
/// starting up), `58` (system/I/O), `40001`/`40P01` (serialization failure, deadlock) and
/// `25006` (read-only transaction: a standby after failover); SQLite's busy, locked, out of
/// memory, read-only, I/O, full and cannot-open codes.
pub(crate) fn is_outage(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed => true,
        E::Database(d) => d.code().is_some_and(|code| match code.parse::<i32>() {
            // SQLite reports its (extended) result code as a number.
            Ok(rc) => sqlite_raw::is_outage_code(rc),
            Err(_) => {
                ["08", "53", "57", "58"].iter().any(|c| code.starts_with(c))
                    || ["40001", "40P01", "25006"].contains(&code.as_ref())
            }
        }),
        _ => false,
    }
}

/// Migrations compiled into the binary, so a deployed file needs no `migrations/` directory.
#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> BoxFuture<'static, Result<Vec<Migration>, Box<dyn std::error::Error + Send + Sync>>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(v, d, sql)| {
                    Migration::new(
                        *v,
                        Cow::Borrowed(*d),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "request log",
        include_str!("../../migrations/sqlite/0001_request_log.sql"),
    ),
    (
        2,
        "indexes and planner statistics",
        include_str!("../../migrations/sqlite/0002_indexes_and_statistics.sql"),
    ),
    (
        3,
        "uuid request ids as bytes",
        include_str!("../../migrations/sqlite/0003_uuid_request_ids_as_bytes.sql"),
    ),
    (
        4,
        "rollups",
        include_str!("../../migrations/sqlite/0004_rollups.sql"),
    ),
    (
        5,
        "probe results",
        include_str!("../../migrations/sqlite/0005_probe_results.sql"),
    ),
    (
        6,
        "request bodies and export audit sizes",
        include_str!("../../migrations/sqlite/0006_request_bodies_and_export_audit.sql"),
    ),
    (
        7,
        "provider request id and currency",
        include_str!("../../migrations/sqlite/0007_provider_request_id_and_currency.sql"),
    ),
    (
        8,
        "span id",
        include_str!("../../migrations/sqlite/0008_span_id.sql"),
    ),
    (
        9,
        "rollup journal and month buckets",
        include_str!("../../migrations/sqlite/0009_rollup_journal_and_months.sql"),
    ),
    (
        10,
        "request ids in a table of their own",
        include_str!("../../migrations/sqlite/0010_request_ids_table.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "request log",
        include_str!("../../migrations/postgres/0001_request_log.sql"),
    ),
    (
        2,
        "request log c collation",
        include_str!("../../migrations/postgres/0002_request_log_c_collation.sql"),
    ),
    (
        3,
        "single-column filter indexes",
        include_str!("../../migrations/postgres/0003_single_column_filter_indexes.sql"),
    ),
    (
        4,
        "one gin index for the key, provider, model and session filters",
        include_str!("../../migrations/postgres/0004_gin_filter_index.sql"),
    ),
    (
        5,
        "rollups",
        include_str!("../../migrations/postgres/0005_rollups.sql"),
    ),
    (
        6,
        "probe results",
        include_str!("../../migrations/postgres/0006_probe_results.sql"),
    ),
    (
        7,
        "request bodies and export audit sizes",
        include_str!("../../migrations/postgres/0007_request_bodies_and_export_audit.sql"),
    ),
    (
        8,
        "provider request id and currency",
        include_str!("../../migrations/postgres/0008_provider_request_id_and_currency.sql"),
    ),
    (
        9,
        "span id",
        include_str!("../../migrations/postgres/0009_span_id.sql"),
    ),
    (
        10,
        "rollup journal and month buckets",
        include_str!("../../migrations/postgres/0010_rollup_journal_and_months.sql"),
    ),
    (
        11,
        "rollup journal uncompressed",
        include_str!("../../migrations/postgres/0011_rollup_journal_uncompressed.sql"),
    ),
    (
        12,
        "rollup rows updated in place (fillfactor 50)",
        include_str!("../../migrations/postgres/0012_rollup_fillfactor.sql"),
    ),
];

/// Migration 0004 keeps one B-tree per filter column where the `btree_gin` extension could not
/// be created; says so at every start, with what to do, so a slower log is never a mystery.
async fn warn_without_gin_index(pool: &PgPool) -> Result<(), WriteError> {
    let (gin,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_indexes \
         WHERE tablename = 'request_log' AND indexname = 'request_log_filters')",
    )
    .fetch_one(pool)
    .await
    .map_err(write_error)?;
    if !gin {
        tracing::warn!(
            "request log: the btree_gin extension was not available when the log was created, so \
             the key, provider, model and session filters each have a B-tree index (writes are \
             about 20% slower); to switch, create the extension as a role with CREATE on the \
             database and run the statements of migrations/postgres/0004_gin_filter_index.sql"
        );
    }
    Ok(())
}

/// What must be done on the database once before the first write: nothing for SQLite (done
/// in [`SqlLog::open`]); PostgreSQL's migrations, run at open or, when the server was away
/// then, as soon as it answers.
pub(crate) struct Setup {
    done: tokio::sync::OnceCell<()>,
    postgres: Option<PgPool>,
}

impl Setup {
    fn done() -> Self {
        Self {
            done: tokio::sync::OnceCell::new_with(Some(())),
            postgres: None,
        }
    }

    /// Runs the setup unless it already succeeded (concurrent callers wait for one attempt).
    pub(crate) async fn ensure(&self) -> Result<(), WriteError> {
        self.done
            .get_or_try_init(|| async {
                match &self.postgres {
                    Some(pool) => prepare_postgres(pool).await,
                    None => Ok(()),
                }
            })
            .await
            .map(|_| ())
    }
}

/// PostgreSQL's pending migrations, then the index check.
async fn prepare_postgres(pool: &PgPool) -> Result<(), WriteError> {
    let m = Migrator::new(Embedded(POSTGRES_MIGRATIONS))
        .await
        .map_err(migrate_error)?;
    m.run(pool).await.map_err(migrate_error)?;
    warn_without_gin_index(pool).await
}

/// PostgreSQL was away at open: connects (and migrates) as soon as it answers, so the log
/// reports up and answers queries even before the first write.
async fn connect_when_up(setup: Arc<Setup>, health: Arc<Health>) {
    let mut delay = writer::FIRST_RETRY;
    loop {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(writer::RETRY_CAP);
        match setup.ensure().await {
            Ok(()) => {
                tracing::info!("Request log: PostgreSQL reachable; migrations done.");
                health.set_log_store_up(true);
                return;
            }
            Err(WriteError::Outage(e)) => {
                tracing::debug!(error = %e, "Request log: PostgreSQL still unreachable.");
            }
            Err(WriteError::Refused(e)) => {
                tracing::error!(error = %e, "Request log: PostgreSQL refused the migrations; retrying.");
            }
        }
    }
}

/// How long [`SqlLog`]'s [`RequestLog::close`] waits for the writer before it gives up and
/// counts what is unwritten as `log_write_failed` (see [`SqlLog::close_within`]).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQL request log: a handle to the pool and to the writer's queue. Cheap to clone.
#[derive(Clone)]
pub struct SqlLog {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    tx: mpsc::Sender<writer::Msg>,
    abandon: Arc<Notify>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    /// Bytes of the records counted in `depth` ([`ValidRecord::approx_bytes`]).
    bytes: Arc<AtomicUsize>,
    byte_capacity: usize,
    dialect: &'static str,
    /// Where the log lives (the backup export reads it).
    location: SqlBackend,
    retention_days: u32,
}

impl Inner {
    /// Whether a batch of `n` records and `b` bytes fits behind `depth` records and `bytes`
    /// bytes: within both budgets, or into an empty queue whatever its size (so that no batch
    /// can wait for room forever).
    fn fits(&self, depth: usize, n: usize, bytes: usize, b: usize) -> bool {
        depth == 0 || (depth + n <= self.capacity && bytes + b <= self.byte_capacity)
    }
}

impl SqlLog {
    /// Connects (creating the SQLite file if needed), runs pending migrations, starts the writer
    /// and, when `retention_days > 0`, the retention task.
    pub async fn open(cfg: &SqlConfig, health: Arc<Health>) -> Result<Self, StoreError> {
        let (backend, write_backend, dialect, setup) = match &cfg.backend {
            SqlBackend::Sqlite { path } => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        unavailable(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let opts = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    // 16 KiB pages for a new file (an existing one keeps its own): index
                    // entries are short, so a page holds four times as many and a tree is
                    // lower and wider; every row's six index inserts find their pages with
                    // fewer cache lookups and key compares. Write benchmark of issue #4:
                    // ~106,000 → ~121,000 rows/s; queries and exports unchanged.
                    .page_size(16384)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    // After a checkpoint a WAL grown past 64 MiB is cut back to that size.
                    .pragma("journal_size_limit", "67108864")
                    // Rows handed from SQLite's worker thread per wake-up (default 50): fewer
                    // thread hand-offs on long reads (exports step SQLite themselves, see
                    // sql/sqlite_export.rs); memory stays bounded.
                    .row_buffer_size(1024);
                // Migrations on a connection of their own with the writer's page cache (0003
                // moves every UUID row to a random place in the unique index: 1,000,000 rows in
                // 12 s with the default cache, 5 s with this one), closed afterwards so that
                // its memory is freed.
                let connect = |connections: u32, opts: SqliteConnectOptions| async move {
                    SqlitePoolOptions::new()
                        .max_connections(connections)
                        .acquire_timeout(ACQUIRE_TIMEOUT)
                        .connect_with(opts)
                        .await
                        .map_err(|e| unavailable(format!("sqlite {}: {e}", path.display())))
                };
                let cache = sqlite_cache_pragma(cfg.sqlite_cache_bytes);
                let migrating =
                    connect(1, opts.clone().pragma("cache_size", cache.clone())).await?;
                let m = Migrator::new(Embedded(SQLITE_MIGRATIONS))
                    .await
                    .map_err(unavailable)?;
                m.run(&migrating).await.map_err(unavailable)?;
                migrating.close().await;
                let pool = connect(4, opts.clone()).await?;
                // The writer's own connection: a large page cache keeps the hot index pages
                // across batches (no spilling dirty pages mid-transaction, no re-reading), and
                // the per-statement journal of multi-row inserts stays in memory. Readers keep
                // the small default cache, so a long export's memory stays small.
                let write_pool = connect(
                    1,
                    opts.pragma("cache_size", cache)
                        .pragma("temp_store", "memory")
                        .pragma("wal_autocheckpoint", SQLITE_WRITER_AUTOCHECKPOINT),
                )
                .await?;
                tokio::spawn(checkpointer(pool.clone()));
                (
                    Backend::Sqlite(pool),
                    Backend::Sqlite(write_pool),
                    "sqlite",
                    Setup::done(),
                )
            }
            SqlBackend::Postgres { url } => {
                let opts: PgConnectOptions = url
                    .parse()
                    .map_err(|e| unavailable(format!("invalid PostgreSQL URL: {e}")))?;
                // Lazy pools: a server away at start is connected to when it comes up.
                // No JIT on the read pool: its queries read index ranges of a few thousand
                // rows, where compiling (~10 ms once a plan's cost passes `jit_above_cost`)
                // took longer than the query (ten hours of user rollups, 59,000 rows: 54–63 → 37 ms).
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_lazy_with(opts.clone().options([("jit", "off")]));
                let setup = Setup {
                    done: tokio::sync::OnceCell::new(),
                    postgres: Some(pool.clone()),
                };
                // An outage is waited out in the background; any other refusal (credentials,
                // unknown database, a migration that fails) stops the start.
                match setup.ensure().await {
                    Ok(()) => {}
                    Err(WriteError::Outage(e)) => tracing::warn!(
                        error = %e,
                        "Request log: PostgreSQL unreachable at start; serving, queueing records \
                         and connecting when it comes up."
                    ),
                    Err(WriteError::Refused(e)) => return Err(e),
                }
                // The writer's own connections, each with its COPY staging table: reads never
                // wait behind batches in flight.
                let write_pool = writer::postgres::open_pool(opts, cfg.write_concurrency.max(1));
                (
                    Backend::Postgres(pool),
                    Backend::Postgres(write_pool),
                    "postgres",
                    setup,
                )
            }
        };
        let setup = Arc::new(setup);
        let up = setup.done.initialized();
        health.set_log_store(dialect, up);
        if !up {
            tokio::spawn(connect_when_up(setup.clone(), health.clone()));
        }
        let depth = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        // Each message holds at least one record, so the record budget bounds the channel too.
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.clamp(1, 1 << 20) + 16);
        let abandon = Arc::new(Notify::new());
        let w = writer::Writer {
            backend: write_backend,
            setup: setup.clone(),
            depth: depth.clone(),
            bytes: bytes.clone(),
            health,
            abandon: abandon.clone(),
            batch_rows: cfg.batch_rows.max(1),
            write_concurrency: cfg.write_concurrency.max(1),
            rollups: cfg.rollups,
            merge_rows: writer::MERGE_ROWS,
        };
        tokio::spawn(writer::run(w, rx));
        if cfg.rollups {
            let (backend, setup) = (backend.clone(), setup.clone());
            tokio::spawn(async move {
                if setup.ensure().await.is_ok() {
                    rollup::warn_if_missing(&backend).await;
                }
            });
        }
        if cfg.retention_days > 0 {
            tokio::spawn(retention(backend.clone(), cfg.retention_days));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                tx,
                abandon,
                depth,
                capacity: cfg.queue_capacity,
                bytes,
                byte_capacity: cfg.queue_bytes,
                dialect,
                location: cfg.backend.clone(),
                retention_days: cfg.retention_days,
            }),
        })
    }

    /// `sqlite` or `postgres`.
    pub fn dialect(&self) -> &'static str {
        self.inner.dialect
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// Where the log lives: the SQLite file or the PostgreSQL URL (which may hold a password:
    /// never log it).
    pub fn location(&self) -> &SqlBackend {
        &self.inner.location
    }

    /// SQLite: writes a consistent snapshot of the whole database to the new file `dest`
    /// (`VACUUM INTO` on a reader connection: the writer goes on meanwhile, WAL mode); without
    /// `include_log`, the copy's [`LOG_TABLES`] are then emptied (their definitions stay). Not for
    /// PostgreSQL (see `export/backup.rs`: `pg_dump`).
    pub async fn snapshot_into(
        &self,
        dest: &std::path::Path,
        include_log: bool,
    ) -> Result<(), StoreError> {
        let Backend::Sqlite(pool) = &self.inner.backend else {
            return Err(unavailable("a snapshot is taken of SQLite logs only"));
        };
        let dest = dest
            .to_str()
            .ok_or_else(|| unavailable("the snapshot path is not UTF-8"))?;
        sqlx::query("VACUUM INTO $1")
            .bind(dest)
            .execute(pool)
            .await
            .map_err(unavailable)?;
        if include_log {
            return Ok(());
        }
        let copy = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(SqliteConnectOptions::new().filename(dest))
            .await
            .map_err(unavailable)?;
        // SQLite empties a whole table at once only when no trigger is on it: the one that keeps
        // `request_ids` in step with `request_log` would delete row by row (300,000 rows: 2.5–2.9
        // s instead of 0.3). It is set aside while both are emptied, then put back.
        let trigger: Option<String> = sqlx::query_scalar(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = $1",
        )
        .bind(REQUEST_IDS_TRIGGER)
        .fetch_optional(&copy)
        .await
        .map_err(unavailable)?;
        let mut tx = copy.begin().await.map_err(unavailable)?;
        let mut statements = vec![
            format!("DROP TRIGGER IF EXISTS {REQUEST_IDS_TRIGGER}"),
            "DELETE FROM request_ids".to_string(),
        ];
        statements.extend(LOG_TABLES.iter().map(|t| format!("DELETE FROM {t}")));
        statements.extend(trigger);
        for sql in &statements {
            sqlx::query(sql)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        sqlx::query("VACUUM")
            .execute(&copy)
            .await
            .map_err(unavailable)?;
        copy.close().await;
        Ok(())
    }

    /// The earliest start of a rollup bucket whose days retention has not begun to delete
    /// (`i64::MIN` without retention): a month bucket from here on is whole.
    pub(crate) fn whole_from(&self) -> i64 {
        match self.inner.retention_days {
            0 => i64::MIN,
            days => crate::clock::now_ms() - i64::from(days) * rollup::DAY_MS,
        }
    }

    /// Waits until every record submitted before this call is written (or dropped and counted)
    /// and counted in the rollups; while the database is away, until it is back (see
    /// [`SqlLog::close_within`] for a bound).
    pub async fn flush(&self) {
        self.flush_marker(true).await;
    }

    /// Waits until every record submitted before this call is written (durable, with its
    /// journaled rollup increments), without waiting for a merge of the rollups.
    pub async fn flush_writes(&self) {
        self.flush_marker(false).await;
    }

    async fn flush_marker(&self, merge: bool) {
        let (ack, rx) = oneshot::channel();
        let msg = writer::Msg::Flush { ack, merge };
        if self.inner.tx.send(msg).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Waits until every record submitted before this call is written, but at most `limit`
    /// (the store may be away): then the writer stops, and every record not written is counted
    /// as `log_write_failed` and logged at ERROR. Returns within `limit` and a moment.
    pub async fn close_within(&self, limit: Duration) {
        let (ack, mut done) = oneshot::channel();
        let flushed = tokio::time::timeout(limit, async {
            let msg = writer::Msg::Flush { ack, merge: true };
            if self.inner.tx.send(msg).await.is_ok() {
                let _ = (&mut done).await;
            }
        })
        .await;
        if flushed.is_err() {
            self.inner.abandon.notify_one();
            // The writer drops every waiting flush as it stops (ours too, if it was queued).
            let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
        }
    }

    /// PostgreSQL: refreshes the planner's statistics of the log at once (`ANALYZE`), as
    /// autovacuum does by itself within a minute or so of the log growing by a tenth. SQLite:
    /// nothing (its statistics are fixed by a migration).
    pub async fn refresh_statistics(&self) -> Result<(), StoreError> {
        if let Backend::Postgres(p) = &self.inner.backend {
            sqlx::query("ANALYZE request_log")
                .execute(p)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// Recomputes the rollups from the raw rows (`gatemeter rollup rebuild`; no server may be
    /// writing to the log meanwhile). Returns the rows read.
    pub async fn rebuild_rollups(&self) -> Result<u64, StoreError> {
        rebuild::rebuild(&self.inner.backend).await
    }

    /// Deletes request-log rows (and rollups and probe results) that started before `cutoff_ms`,
    /// in chunks so a large purge never holds a long write lock. Returns how many request-log
    /// rows were deleted.
    pub async fn purge_before(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        purge_before(&self.inner.backend, cutoff_ms).await
    }
}

const PURGE_CHUNK: i64 = 10_000;

async fn purge_before(backend: &Backend, cutoff_ms: i64) -> Result<u64, StoreError> {
    rollup::purge_before(backend, cutoff_ms).await?;
    probe::purge_before(backend, cutoff_ms).await?;
    dispatch!(backend, p, DB => {
        sqlx::query("DELETE FROM request_bodies WHERE ts_ms < $1")
            .bind(cutoff_ms)
            .execute(p)
            .await
            .map_err(unavailable)?;
    });
    let mut total = 0u64;
    loop {
        let n = dispatch!(backend, p, DB => {
            sqlx::query(
                "DELETE FROM request_log WHERE id IN \
                 (SELECT id FROM request_log WHERE ts_ms < $1 LIMIT $2)",
            )
            .bind(cutoff_ms)
            .bind(PURGE_CHUNK)
            .execute(p)
            .await
            .map_err(unavailable)?
            .rows_affected()
        });
        total += n;
        if n < PURGE_CHUNK as u64 {
            return Ok(total);
        }
    }
}

/// SQLite: copies the WAL into the database file about once a second, on a reader connection,
/// so the writer never waits for the copy and its `fsync`s (it keeps inserting meanwhile); the
/// writer's own automatic checkpoint stays as a backstop for a WAL this task cannot keep small.
async fn checkpointer(pool: SqlitePool) {
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !pool.is_closed() {
        tick.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            if !pool.is_closed() {
                tracing::debug!(error = %e, "SQLite checkpoint failed; retrying.");
            }
        }
    }
}

/// Hourly: delete rows older than `days` days.
async fn retention(backend: Backend, days: u32) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cutoff = crate::clock::now_ms() - i64::from(days) * 86_400_000;
        match purge_before(&backend, cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, days, "Request log retention: deleted old rows."),
            Err(e) => {
                tracing::warn!(error = %e, "Request log retention failed; retrying next hour.")
            }
        }
        let closed = dispatch!(&backend, p, DB => p.is_closed());
        if closed {
            return;
        }
    }
}

impl RequestLog for SqlLog {
    fn name(&self) -> &'static str {
        self.inner.dialect
    }

    fn submit(&self, records: Vec<Box<ValidRecord>>) -> Result<(), StoreError> {
        let n = records.len();
        if n == 0 {
            return Ok(());
        }
        let b = crate::record::approx_bytes(&records);
        let (depth, bytes) = (&self.inner.depth, &self.inner.bytes);
        let (depth_before, bytes_before) =
            (depth.fetch_add(n, Relaxed), bytes.fetch_add(b, Relaxed));
        if !self.inner.fits(depth_before, n, bytes_before, b) {
            depth.fetch_sub(n, Relaxed);
            bytes.fetch_sub(b, Relaxed);
            return Err(StoreError::Full {
                store: "request log",
            });
        }
        self.inner
            .tx
            .try_send(writer::Msg::Records(records))
            .map_err(|_| {
                depth.fetch_sub(n, Relaxed);
                bytes.fetch_sub(b, Relaxed);
                StoreError::Full {
                    store: "request log",
                }
            })
    }

    /// Whether the queue's record and byte budgets have room for `n` records of `b` bytes now,
    /// and its channel a slot.
    fn has_room(&self, n: usize, b: usize) -> bool {
        let inner = &self.inner;
        inner.tx.capacity() > 0
            && inner.fits(inner.depth.load(Relaxed), n, inner.bytes.load(Relaxed), b)
    }

    /// A flush marker behind everything queued; false if the queue cannot take it now or the
    /// writer gave up (closing deadline). Rows written are durable with their journaled rollup
    /// increments, so this does not wait for a merge.
    fn sync(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            let (ack, rx) = oneshot::channel();
            let msg = writer::Msg::Flush { ack, merge: false };
            self.inner.tx.try_send(msg).is_ok() && rx.await.is_ok()
        })
    }

    /// Bounded by [`CLOSE_TIMEOUT`].
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(SqlLog::close_within(self, CLOSE_TIMEOUT))
    }

    fn close_within(&self, limit: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(SqlLog::close_within(self, limit))
    }
}

/// Counts a batch the writer gave up on.
pub(crate) fn count_failed(health: &Health, n: usize) {
    health.dropped(DropReason::LogWriteFailed, n as u64);
}

/// A migrated SQLite log at `path` whose own writer stays idle and merges nothing (rollups off):
/// for tests that write to its database themselves.
#[cfg(test)]
pub(crate) async fn open_idle_sqlite(path: PathBuf) -> SqlLog {
    let cfg = SqlConfig {
        backend: SqlBackend::Sqlite { path },
        queue_capacity: 100,
        batch_rows: 100,
        write_concurrency: 1,
        retention_days: 0,
        rollups: false,
        queue_bytes: usize::MAX,
        sqlite_cache_bytes: DEFAULT_SQLITE_CACHE_BYTES,
    };
    SqlLog::open(&cfg, Arc::new(Health::new(1)))
        .await
        .expect("opens")
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::*;

    /// Opens (and migrates) a log with small batches and queue, keeping every row.
    async fn open_small_log(backend: SqlBackend) -> SqlLog {
        let cfg = SqlConfig {
            backend,
            queue_capacity: 100,
            batch_rows: 100,
            write_concurrency: 1,
            retention_days: 0,
            rollups: true,
            queue_bytes: crate::store::sql::DEFAULT_QUEUE_BYTES,
            sqlite_cache_bytes: crate::store::sql::DEFAULT_SQLITE_CACHE_BYTES,
        };
        SqlLog::open(&cfg, Arc::new(Health::new(1)))
            .await
            .expect("opens and migrates")
    }

    /// The writer journals a batch's rollup increments in the batch's transaction; a crash
    /// before the merge leaves them in `rollup_pending`, and the next start merges them: the
    /// rollups then count every stored row once, and the journal is empty.
    #[tokio::test]
    async fn journaled_increments_left_by_a_crash_are_merged_at_start() {
        use crate::store::sql::rollup::Dim;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.db");
        let now = crate::clock::now_ms();
        let rec = |id: &str, user: &str| {
            let mut r = crate::record::test_record(
                &format!(r#"{{"model": "m", "status": 200, "duration_ms": 5, "user": "{user}"}}"#),
                now - 10,
            );
            r.request_id = Some(crate::record::RequestId(id.into()));
            r
        };
        {
            // Its pool is used directly below.
            let log = open_idle_sqlite(path.clone()).await;
            let Backend::Sqlite(pool) = log.backend() else {
                unreachable!("a SQLite log")
            };
            // The writer's own step, without its merge: as if the process died right after.
            let batch = Arc::new(vec![rec("a", "u1"), rec("b", "u1"), rec("c", "u2")]);
            sqlite_insert::write(pool, Arc::new(sqlite_insert::Prepared::of(batch)), true)
                .await
                .expect("write");
            let (pending,): (i64,) = sqlx::query_as("SELECT count(*) FROM rollup_pending")
                .fetch_one(pool)
                .await
                .expect("count");
            assert_eq!(pending, 1, "one journal row for the batch");
            let (rolled,): (i64,) = sqlx::query_as("SELECT count(*) FROM rollup")
                .fetch_one(pool)
                .await
                .expect("count");
            assert_eq!(rolled, 0, "nothing merged yet");
            log.close().await;
        }
        let log = open_small_log(SqlBackend::Sqlite { path }).await;
        let users = |log: SqlLog| async move {
            // A whole hour: answered by the hour bucket (a part of one would be raw rows).
            let hour = rollup::floor(now - 10, rollup::HOUR_MS);
            let users = log
                .grouped(Dim::User, hour, hour + rollup::HOUR_MS, None)
                .await
                .expect("grouped");
            users
                .iter()
                .map(|((u, _), c)| (u.to_string(), c.counts.requests))
                .collect::<Vec<_>>()
        };
        // Nothing submitted: the flush waits only for the merge the start began.
        log.flush().await;
        assert_eq!(
            users(log.clone()).await,
            [("u1".to_string(), 2), ("u2".to_string(), 1)]
        );
        // More rows through the writer (a repeated id among them); its flush merges them.
        log.submit(vec![rec("d", "u2"), rec("a", "u9")])
            .expect("room");
        log.flush().await;
        assert_eq!(
            users(log.clone()).await,
            [("u1".to_string(), 2), ("u2".to_string(), 2)]
        );
        let Backend::Sqlite(pool) = log.backend() else {
            unreachable!("a SQLite log")
        };
        let (pending,): (i64,) = sqlx::query_as("SELECT count(*) FROM rollup_pending")
            .fetch_one(pool)
            .await
            .expect("count");
        assert_eq!(pending, 0, "the journal is merged and emptied");
        log.close().await;
    }

    /// The log's queue is bounded in bytes too (`log_store.queue_bytes`): with the writer held
    /// back, records beyond the budget are refused (and counted by the caller as `log_full`),
    /// while a batch alone larger than the budget still goes into an empty queue; the budget is
    /// given back as rows are written.
    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = |i: usize| {
            crate::record::test_record(
                &format!(
                    r#"{{"request_id": "r{i}", "model": "m", "status": 200, "duration_ms": 1}}"#
                ),
                crate::clock::now_ms(),
            )
        };
        let one = rec(0).approx_bytes();
        assert!(one >= std::mem::size_of::<ValidRecord>());
        let cfg = SqlConfig {
            backend: SqlBackend::Sqlite {
                path: dir.path().join("log.db"),
            },
            queue_capacity: 1_000_000,
            batch_rows: 100,
            write_concurrency: 1,
            retention_days: 0,
            rollups: false,
            queue_bytes: 10 * one,
            sqlite_cache_bytes: DEFAULT_SQLITE_CACHE_BYTES,
        };
        let log = SqlLog::open(&cfg, Arc::new(Health::new(1)))
            .await
            .expect("opens");
        let Backend::Sqlite(pool) = log.backend() else {
            unreachable!("a SQLite log")
        };
        // Hold the writer back: an open write transaction on a reader connection.
        let mut blocker = pool.acquire().await.expect("connection");
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *blocker)
            .await
            .expect("lock");
        log.submit((0..8).map(rec).collect()).expect("room for 8");
        log.submit((8..10).map(rec).collect())
            .expect("room for 2 more");
        assert!(
            log.submit(vec![rec(10)]).is_err(),
            "the 11th is over the budget"
        );
        sqlx::query("COMMIT")
            .execute(&mut *blocker)
            .await
            .expect("unlock");
        drop(blocker);
        tokio::time::timeout(Duration::from_secs(10), log.flush())
            .await
            .expect("flushed");
        assert_eq!(log.inner.bytes.load(Relaxed), 0, "the budget is given back");
        log.submit((11..31).map(rec).collect())
            .expect("a batch alone fits an empty queue");
    }

    /// A batch the database refuses for a reason that is not an outage (here a trigger, as a
    /// constraint would) is tried a few times, then dropped and counted — never retried
    /// without end — and the log goes on writing; the store stays up.
    #[tokio::test]
    async fn a_refused_batch_is_dropped_and_counted_not_retried_forever() {
        let dir = tempfile::tempdir().expect("tempdir");
        let health = Arc::new(Health::new(1));
        let cfg = SqlConfig {
            backend: SqlBackend::Sqlite {
                path: dir.path().join("log.db"),
            },
            queue_capacity: 100,
            batch_rows: 100,
            write_concurrency: 1,
            retention_days: 0,
            rollups: true,
            queue_bytes: crate::store::sql::DEFAULT_QUEUE_BYTES,
            sqlite_cache_bytes: crate::store::sql::DEFAULT_SQLITE_CACHE_BYTES,
        };
        let log = SqlLog::open(&cfg, health.clone()).await.expect("opens");
        let Backend::Sqlite(pool) = log.backend() else {
            unreachable!("a SQLite log")
        };
        sqlx::query(
            "CREATE TRIGGER poison BEFORE INSERT ON request_log WHEN NEW.model = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'poisoned row'); END",
        )
        .execute(pool)
        .await
        .expect("trigger");
        let now = crate::clock::now_ms();
        let rec = |id: &str, model: &str| {
            let mut r = crate::record::test_record(
                &format!(r#"{{"model": "{model}", "status": 200, "duration_ms": 1}}"#),
                now,
            );
            r.request_id = Some(crate::record::RequestId(id.into()));
            r
        };
        log.submit(vec![rec("a", "poison"), rec("b", "m")])
            .expect("room");
        tokio::time::timeout(Duration::from_secs(5), log.flush())
            .await
            .expect("a refused batch is not retried forever");
        let failed = |h: &Health| h.snapshot().dropped[DropReason::LogWriteFailed as usize];
        assert_eq!(failed(&health), 2);
        log.submit(vec![rec("c", "m")]).expect("room");
        log.flush().await;
        let page = log
            .page(&LogFilter::default(), None, 10)
            .await
            .expect("page");
        let ids: Vec<_> = page.items.into_iter().map(|e| e.request_id).collect();
        assert_eq!(ids, [Some("c".to_string())]);
        assert_eq!(failed(&health), 2);
        assert_eq!(health.log_store(), Some(("sqlite", true)));
        log.close().await;
    }

    /// A PostgreSQL URL's TLS settings are checked at config time, without showing the URL.
    #[test]
    fn postgres_tls_settings_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("root ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["db".into()]).expect("cert");
        std::fs::write(&ca, cert.cert.pem()).expect("write");
        let encoded = ca.display().to_string().replace(' ', "%20");
        let base = "postgres://u:secret-pw@db/gm";
        check_postgres_url(&format!("{base}?sslmode=verify-full&sslrootcert={encoded}"))
            .expect("valid");
        check_postgres_url(&format!("{base}?sslmode=require")).expect("require");
        let e = check_postgres_url(&format!("{base}?sslmode=verify_full")).expect_err("mode");
        assert!(e.contains("verify_full") && !e.contains("secret-pw"), "{e}");
        let e = check_postgres_url(&format!("{base}?sslmode=verify-ca&sslrootcert=/no/ca.pem"))
            .expect_err("missing file");
        assert!(e.contains("sslrootcert") && e.contains("/no/ca.pem"), "{e}");
        assert_eq!(percent_decode("a%2Fb+c%zz%4"), "a/b c%zz%4");
    }

    /// Outages (retried without end) against refusals (dropped after a few attempts).
    #[test]
    fn outages_are_told_from_refusals() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_outage(&sqlx::Error::Io(io)));
        assert!(is_outage(&sqlx::Error::PoolTimedOut));
        assert!(!is_outage(&sqlx::Error::RowNotFound));
        assert!(sqlite_raw::is_outage_code(5)); // SQLITE_BUSY
        assert!(sqlite_raw::is_outage_code(13)); // SQLITE_FULL
        assert!(sqlite_raw::is_outage_code(10 | (4 << 8))); // SQLITE_IOERR_FSYNC
        assert!(!sqlite_raw::is_outage_code(19 | (7 << 8))); // SQLITE_CONSTRAINT_TRIGGER
        assert!(!sqlite_raw::is_outage_message(
            "sqlite error 1: no such table: request_log"
        ));
        assert!(sqlite_raw::is_outage_message(
            "sqlite error 5: database is locked"
        ));
    }

    /// A row as the migrations before the latest ones left the table: request id, time,
    /// model, key name and session id bound, the rest fixed.
    const OLD_ROW: &str = "INSERT INTO request_log (request_id, ts_ms, namespace, provider, \
         model, key_name, session_id, endpoint, api_type, method, status, duration_ms, \
         input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, \
         cache_read_tokens, cost_micros, cost_source, retry_count, provider_chain, is_streaming) \
         VALUES ($1, $2, 'n', 'p', $3, $4, $5, '/e', 'claude', 'POST', 200, 1, 0, 0, 0, 0, 0, 0, \
         'priced', 0, '[]', false)";

    /// A PostgreSQL log that already holds rows when migration 0004 runs (the upgrade of a
    /// running installation): every row is kept, the four B-trees are replaced by the GIN
    /// index, and filtered pages and new writes work on the upgraded table.
    #[tokio::test]
    async fn migration_0004_upgrades_a_postgres_log_that_holds_rows() {
        let url = std::env::var("GATEMETER_TEST_DATABASE_URL").expect(
            "GATEMETER_TEST_DATABASE_URL is not set: run the tests through scripts/test.sh or \
             scripts/with-services.sh (they start a throwaway PostgreSQL server)",
        );
        let name = format!("gm_unit_0004_{}", std::process::id());
        let admin = PgPool::connect(&url).await.expect("connect");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&admin)
            .await
            .expect("drop");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create");
        let url = format!("{}/{name}", url.rsplit_once('/').expect("a database").0);
        let now = crate::clock::now_ms();
        let keys = ["alpha", "beta", "gamma"];
        {
            let pool = PgPool::connect(&url).await.expect("connect");
            Migrator::new(Embedded(&POSTGRES_MIGRATIONS[..3]))
                .await
                .expect("migrations")
                .run(&pool)
                .await
                .expect("migrate to 0003");
            for i in 0..300_i64 {
                sqlx::query(OLD_ROW)
                    .bind(format!("old-{i}"))
                    .bind(now - 1_000 - i)
                    .bind(if i % 2 == 0 { "m-even" } else { "m-odd" })
                    .bind(keys[i as usize % 3])
                    .bind(format!("s-{}", i % 7))
                    .execute(&pool)
                    .await
                    .expect("insert");
            }
            pool.close().await;
        }

        let log = open_small_log(SqlBackend::Postgres { url }).await;
        let Backend::Postgres(pool) = log.backend() else {
            unreachable!("a PostgreSQL log")
        };
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'request_log' \
             AND indexname IN ('request_log_filters', 'request_log_key', \
             'request_log_provider', 'request_log_model', 'request_log_session')",
        )
        .fetch_all(pool)
        .await
        .expect("indexes");
        assert_eq!(indexes, ["request_log_filters"]);

        let mut r = crate::record::test_record(
            r#"{"model": "m-even", "status": 200, "duration_ms": 1}"#,
            now,
        );
        r.request_id = Some(crate::record::RequestId("new-1".into()));
        r.key = Some("beta".into());
        r.session_id = Some("s-3".into());
        log.submit(vec![r]).expect("room");
        log.flush().await;

        let log = &log;
        let ids = |filter: LogFilter| async move {
            log.page(&filter, None, 1000)
                .await
                .expect("page")
                .items
                .into_iter()
                .map(|e| e.request_id.expect("id"))
                .collect::<Vec<_>>()
        };
        // Expected from the rows' own values, newest first.
        let expect = |keep: &dyn Fn(i64) -> bool| {
            (0..300_i64)
                .filter(|&i| keep(i))
                .map(|i| format!("old-{i}"))
                .collect::<Vec<_>>()
        };
        let all = ids(LogFilter::default()).await;
        assert_eq!(all.len(), 301);
        assert_eq!(all[0], "new-1");
        assert_eq!(all[1..], expect(&|_| true));
        let by_key = ids(LogFilter {
            key: Some("beta".into()),
            ..LogFilter::default()
        })
        .await;
        assert_eq!(by_key[0], "new-1");
        assert_eq!(by_key[1..], expect(&|i| i % 3 == 1));
        let by_model_and_session = ids(LogFilter {
            model: Some("m-odd".into()),
            session_id: Some("s-3".into()),
            ..LogFilter::default()
        })
        .await;
        assert_eq!(by_model_and_session, expect(&|i| i % 2 == 1 && i % 7 == 3));
        log.close().await;
        admin.close().await;
    }

    /// A log written before migration 0003 (request ids all text) is converted on open: its
    /// canonical UUIDs become bytes, read back as the same text, and a UUID sent again is still
    /// a repeat; ids in other forms stay text.
    #[tokio::test]
    async fn migration_0003_stores_earlier_uuid_ids_as_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.db");
        let uuid = "0af76519-16cd-43dd-8448-eb211c80319c";
        let upper = uuid.to_uppercase();
        let now = crate::clock::now_ms();
        {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(&path)
                        .create_if_missing(true),
                )
                .await
                .expect("open");
            Migrator::new(Embedded(&SQLITE_MIGRATIONS[..2]))
                .await
                .expect("migrations")
                .run(&pool)
                .await
                .expect("migrate to 0002");
            for (i, id) in [uuid, upper.as_str(), "r-1"].into_iter().enumerate() {
                sqlx::query(OLD_ROW)
                    .bind(id)
                    .bind(now - i as i64)
                    .bind("m")
                    .bind(None::<&str>)
                    .bind(None::<&str>)
                    .execute(&pool)
                    .await
                    .expect("insert");
            }
            pool.close().await;
        }

        let log = open_small_log(SqlBackend::Sqlite { path }).await;
        let again = |id: &str| {
            let mut r = crate::record::test_record(
                r#"{"model": "m", "status": 200, "duration_ms": 1}"#,
                now - 10,
            );
            r.request_id = Some(crate::record::RequestId(id.into()));
            r
        };
        log.submit(vec![again(uuid), again(&upper), again("r-1"), again("new")])
            .expect("room");
        log.flush().await;
        let page = log
            .page(&LogFilter::default(), None, 10)
            .await
            .expect("page");
        let ids: Vec<_> = page
            .items
            .iter()
            .map(|e| e.request_id.clone().expect("id"))
            .collect();
        assert_eq!(ids, [uuid, upper.as_str(), "r-1", "new"]);
        let Backend::Sqlite(pool) = log.backend() else {
            unreachable!("a SQLite log")
        };
        let kinds: Vec<String> =
            sqlx::query("SELECT typeof(request_id) FROM request_log ORDER BY ts_ms DESC")
                .fetch_all(pool)
                .await
                .expect("types")
                .iter()
                .map(|r| r.get(0))
                .collect();
        assert_eq!(kinds, ["blob", "text", "text", "text"]);
        // The migrations ran on a connection of their own, with the writer's large cache; the
        // readers keep the small default, so an export's memory stays small.
        for _ in 0..4 {
            let cache: i64 = sqlx::query_scalar("PRAGMA cache_size")
                .fetch_one(pool)
                .await
                .expect("cache_size");
            assert_eq!(cache, -2000);
        }
        log.close().await;
    }
}
