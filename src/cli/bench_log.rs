//! `gatemeter bench-log`: the request log's write path and filtered queries, measured on a real
//! database (SQLite file or PostgreSQL), with every index in place.
//!
//! Rows are generated outside the timed section, in chunks of a million; the timed section is
//! `submit` of a chunk (in 10,000-record handovers, as the pipeline's) plus the writer's `flush`,
//! i.e. what the database takes under a steady stream. With rollups, the time until every row
//! is written (`flush_writes`) is reported as well: the rest is the chunk's last merge, which a
//! server under a steady stream runs beside the next rows. Before the queries the database's
//! planner statistics are refreshed, as a running server's are (PostgreSQL's autovacuum). The filled database is left
//! behind, so `scripts/bench-sql.sh` can then time a usage CSV export of it over HTTP.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compact_str::{CompactString, format_compact};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use gatemeter::health::{DropReason, Health};
use gatemeter::record::{ApiType, CostSource, Millis, RequestId, Tokens, ValidRecord};
use gatemeter::store::sql::{LogFilter, SqlBackend, SqlConfig, SqlLog};
use gatemeter::store::{RequestLog, StoreError};

/// Rows generated, then written and timed, per chunk: large, so that the writer runs as under a
/// steady stream (each chunk ends with a flush, which drains the batches in flight).
const CHUNK: usize = 1_000_000;
/// Rows per `submit`, as the pipeline hands them over.
const SUBMIT: usize = 10_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// The database (its `queue_capacity` is raised to hold a chunk).
    pub log: SqlConfig,
    /// Rows to write.
    pub rows: usize,
    /// Random seed.
    pub seed: u64,
    /// How the rows' `request_id`s are made.
    pub ids: RequestIds,
    /// Which rows and queries.
    pub profile: Profile,
    /// Every this many rows one repeats the request id of the row [`REPEAT_DISTANCE`] before.
    pub repeat_every: Option<usize>,
}

/// How far back a repeated row's id was sent: farther than a transaction holds rows, so that
/// the repeat meets an id stored before its own batch.
pub const REPEAT_DISTANCE: usize = 150_000;

/// The rows written and the queries timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// One row every 10 ms up to now, 500 users, 4 models; the log list's filtered queries.
    Log,
    /// 29 days up to now: 10,000 users (a few heavy, most light), 200 keys, 30 models of 6
    /// providers, sessions of one user within a couple of hours; the analytics queries, and the
    /// month's user leaderboard by `GROUP BY` over the raw rows for comparison.
    Analytics,
    /// The analytics profile's users, keys, models and sessions as a busy fleet sends them: in
    /// time order, 100 rows per millisecond (100,000 requests a second), ending now. What the
    /// write rate with rollups on is measured with: a batch spans a second, not hours.
    Live,
}

/// The `request_id`s of the benchmark's rows. Their order decides what keeping them unique
/// costs (PostgreSQL's unique index, SQLite's `request_ids`): an ordered id is always added at
/// the right-hand edge, a random one at a random place, whose page is rarely in the cache and
/// is rewritten by every transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RequestIds {
    /// Random (version 4) UUIDs, as most gateways make them.
    Random,
    /// Ids that grow with time (as UUIDv7s or ULIDs do).
    Ordered,
}

/// Results.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// `sqlite` or `postgres`.
    pub dialect: &'static str,
    /// How the rows' request ids were made.
    pub ids: RequestIds,
    /// Rows written.
    pub rows: usize,
    /// Time the database took to write them, with the rollups merged.
    pub write_time: Duration,
    /// Of it, the time until every row was written (merges running beside the writes, as in
    /// `serve`); the rest is the last merge of the rollups, which `serve` runs beside the next
    /// rows. `None` without rollups.
    pub written_time: Option<Duration>,
    /// CPU time (user + system, every thread of this process) spent while writing: on a shared
    /// machine a steadier measure of the work than the wall time (PostgreSQL's own work is in
    /// its server processes, not here).
    pub write_cpu: Duration,
    /// Rows dropped (must be 0).
    pub dropped: u64,
    /// (description, median time) of each filtered query.
    pub queries: Vec<(String, Duration)>,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.write_time.as_secs_f64();
        let ids = match self.ids {
            RequestIds::Random => "random UUIDs",
            RequestIds::Ordered => "ordered",
        };
        writeln!(f, "database: {}; request ids: {ids}", self.dialect)?;
        if self.rows > 0 {
            writeln!(
                f,
                "write: {} rows in {:.2} s = {:.0} rows/s (dropped {}); CPU {:.2} s = {:.0} rows per CPU second",
                self.rows,
                secs,
                self.rows as f64 / secs.max(1e-9),
                self.dropped,
                self.write_cpu.as_secs_f64(),
                self.rows as f64 / self.write_cpu.as_secs_f64().max(1e-9),
            )?;
            if let Some(written) = self.written_time {
                let w = written.as_secs_f64();
                writeln!(
                    f,
                    "rows written in {w:.2} s = {:.0} a second; the last rollup merge took {:.2} s more",
                    self.rows as f64 / w.max(1e-9),
                    (secs - w).max(0.0),
                )?;
            }
        }
        for (q, t) in &self.queries {
            writeln!(
                f,
                "query {q}: {:.1} ms (median of 5)",
                t.as_secs_f64() * 1000.0
            )?;
        }
        Ok(())
    }
}

/// A random (version 4) UUID, as gateways give their requests: ids arrive in no order, so each
/// is kept unique at a random place, as it would be in production.
fn uuid_v4(rng: &mut SmallRng) -> CompactString {
    let v: u128 = rng.random();
    let v = (v & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    format_compact!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        v >> 96,
        (v >> 80) & 0xffff,
        (v >> 64) & 0xffff,
        (v >> 48) & 0xffff,
        v & 0xffff_ffff_ffff
    )
}

/// Row `i` of the benchmark: its fields from `rng`, its random id (if any) from `id_rng`, so
/// that both kinds of id write the same users, keys, sessions and statuses.
fn record(
    rng: &mut SmallRng,
    id_rng: &mut SmallRng,
    ids: RequestIds,
    i: usize,
    ts: i64,
) -> Box<ValidRecord> {
    const MODELS: [(&str, &str); 4] = [
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-haiku-4-5"),
        ("openai", "gpt-4o"),
        ("google", "gemini-2.5-pro"),
    ];
    let (provider, model) = MODELS[rng.random_range(0..MODELS.len())];
    let user = format_compact!("user-{}", rng.random_range(0..500u32));
    let status = if rng.random_range(0..100) < 5 {
        502
    } else {
        200
    };
    let retry_count = if status == 200 {
        0
    } else {
        rng.random_range(1..3)
    };
    Box::new(ValidRecord {
        request_id: Some(RequestId(match ids {
            RequestIds::Random => uuid_v4(id_rng),
            RequestIds::Ordered => format_compact!("bench-{ts}-{i}"),
        })),
        timestamp_ms: ts,
        namespace: "bench".into(),
        instance: Some("gw-1".into()),
        user: Some(user.clone()),
        user_id: Some(user),
        key: Some(format_compact!("key-{}", rng.random_range(0..100u32))),
        key_id: None,
        provider: provider.into(),
        model: model.into(),
        original_model: None,
        endpoint: "/v1/messages".into(),
        api_type: ApiType::Claude,
        method: "POST".into(),
        status,
        duration_ms: Millis::from_ms(rng.random_range(200..20_000)),
        ttfb_ms: Some(Millis::from_ms(rng.random_range(50..2000))),
        tokens: Tokens {
            input: rng.random_range(10..5000),
            output: rng.random_range(10..2000),
            cache_write_5m: 0,
            cache_write_1h: 0,
            cache_read: rng.random_range(0..20_000),
        },
        cost_micros: rng.random_range(0..50_000),
        cost_source: CostSource::Priced,
        session_id: Some(format_compact!(
            "session-{}",
            rng.random_range(0..20_000u32)
        )),
        retry_count,
        provider_chain: if retry_count > 0 {
            vec![CompactString::from("p1"), CompactString::from("p2")]
        } else {
            vec![]
        },
        is_streaming: true,
        error: None,
        blocked_by: None,
        block_reason: None,
        user_agent: Some("claude-cli/2.1".into()),
        client_ip: None,
        messages_count: Some(4),
        trace_id: None,
        span_id: None,
        request: None,
        provider_request_id: None,
        cost_amount: None,
        currency: None,
    })
}

/// Row `i` of the analytics profile at `ts`: users drawn with a skew (the cube of a uniform
/// number: user 0 is the heaviest), each user's key among 200, a session per user and two-hour
/// stretch, 30 models over 6 providers, 5 % server errors and 1 % rate limits.
fn analytics_record(
    rng: &mut SmallRng,
    id_rng: &mut SmallRng,
    ids: RequestIds,
    i: usize,
    ts: i64,
) -> Box<ValidRecord> {
    let mut r = record(rng, id_rng, ids, i, ts);
    let u: f64 = rng.random();
    let user = (u * u * u * 10_000.0) as u32;
    let model = rng.random_range(0..30u32);
    let roll = rng.random_range(0..100);
    r.user = Some(format_compact!("user-{user}"));
    r.user_id = r.user.clone();
    r.key = Some(format_compact!("key-{}", user % 200));
    r.provider = format_compact!("provider-{}", model % 6).as_str().into();
    r.model = format_compact!("model-{model}").as_str().into();
    r.original_model = (model % 7 == 0).then(|| "model-asked".into());
    r.status = match roll {
        0..5 => 502,
        5 => 429,
        _ => 200,
    };
    // Claude Code's session ids are random UUIDs: nothing in their order follows the user's.
    let mut session_rng = SmallRng::seed_from_u64(u64::from(user) << 32 ^ (ts / 7_200_000) as u64);
    r.session_id = Some(uuid_v4(&mut session_rng));
    r
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |u| {
        let tv = |t: nix::sys::time::TimeVal| {
            Duration::new(
                u64::try_from(t.tv_sec()).unwrap_or(0),
                u32::try_from(t.tv_usec()).unwrap_or(0) * 1000,
            )
        };
        tv(u.user_time()) + tv(u.system_time())
    })
}

async fn median_of_5<F, Fut>(mut f: F) -> Result<Duration, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut times = Vec::with_capacity(5);
    for _ in 0..5 {
        let t = Instant::now();
        f().await?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[2])
}

/// `gatemeter bench-log`: builds the database settings from the flags, runs, prints the report.
pub async fn run_command(args: super::BenchLog) -> anyhow::Result<()> {
    let backend = match (args.sqlite, args.database_url) {
        (Some(path), None) => {
            if args.queries_only {
                anyhow::ensure!(path.exists(), "{} does not exist", path.display());
            } else {
                anyhow::ensure!(!path.exists(), "{} already exists", path.display());
            }
            SqlBackend::Sqlite { path }
        }
        (None, Some(url)) => SqlBackend::Postgres { url },
        _ => anyhow::bail!("give --sqlite FILE or --database-url URL"),
    };
    let bench = BenchArgs {
        log: SqlConfig {
            batch_rows: args.batch_rows.unwrap_or(backend.default_batch_rows()),
            write_concurrency: args
                .write_concurrency
                .unwrap_or(backend.default_write_concurrency()),
            backend,
            queue_capacity: 200_000,
            retention_days: 0,
            rollups: !args.no_rollups,
            queue_bytes: gatemeter::store::sql::DEFAULT_QUEUE_BYTES,
            sqlite_cache_bytes: args
                .sqlite_cache_mib
                .map_or(gatemeter::store::sql::DEFAULT_SQLITE_CACHE_BYTES, |m| {
                    m << 20
                }),
        },
        rows: args.rows,
        seed: args.seed,
        ids: args.ids,
        profile: args.profile,
        repeat_every: args
            .repeat_every
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    };
    if args.queries_only {
        print!("{}", queries_only(&bench).await?);
        return Ok(());
    }
    print!("{}", run(&bench).await?);
    Ok(())
}

/// Writes `rows` rows, then times filtered queries over them.
pub async fn run(args: &BenchArgs) -> Result<BenchReport, StoreError> {
    let mut cfg = args.log.clone();
    cfg.queue_capacity = cfg.queue_capacity.max(CHUNK);
    // A chunk is handed over at once: the queue must hold it whatever it weighs.
    cfg.queue_bytes = usize::MAX;
    cfg.retention_days = 0;
    let health = Arc::new(Health::new(1));
    let log = SqlLog::open(&cfg, health.clone()).await?;
    // Rows already there would make the figures wrong: ids repeated from an earlier run (same
    // seed) would be skipped as repeats and still timed as written.
    if !log
        .page(&LogFilter::default(), None, 1)
        .await?
        .items
        .is_empty()
    {
        return Err(StoreError::Unavailable {
            store: "request log",
            message: "it is not empty: bench-log needs an empty database".into(),
        });
    }
    let mut rng = SmallRng::seed_from_u64(args.seed);
    // Ids of their own stream, seeded apart from the rest.
    let mut id_rng = SmallRng::seed_from_u64(args.seed ^ 0x05ee_d1d5);
    // Log: one row every 10 ms, ending now (a million rows span about three hours). Analytics:
    // 29 days ending now.
    let now = gatemeter::clock::now_ms();
    let step = match args.profile {
        Profile::Log => 10.0,
        // 29 days: inside the default retention of 30, so a server opening the file keeps all.
        Profile::Analytics => 29.0 * 86_400_000.0 / args.rows.max(1) as f64,
        Profile::Live => 0.01,
    };
    let start_ts = now - (args.rows as f64 * step) as i64;
    let mut write_time = Duration::ZERO;
    let mut written_time = Duration::ZERO;
    let mut write_cpu = Duration::ZERO;
    let mut done = 0;
    // The ids sent so far (only with `repeat_every`).
    let mut sent: Vec<Option<gatemeter::record::RequestId>> = Vec::new();
    while done < args.rows {
        let n = CHUNK.min(args.rows - done);
        let mut batches = Vec::with_capacity(n.div_ceil(SUBMIT));
        for start in (done..done + n).step_by(SUBMIT) {
            let end = (start + SUBMIT).min(done + n);
            batches.push(
                (start..end)
                    .map(|i| {
                        let ts = start_ts + (i as f64 * step) as i64;
                        let mut r = match args.profile {
                            Profile::Log => record(&mut rng, &mut id_rng, args.ids, i, ts),
                            Profile::Analytics | Profile::Live => {
                                analytics_record(&mut rng, &mut id_rng, args.ids, i, ts)
                            }
                        };
                        if let Some(every) = args.repeat_every {
                            if i >= REPEAT_DISTANCE && i % every == 0 {
                                r.request_id = sent[i - REPEAT_DISTANCE].clone();
                            }
                            sent.push(r.request_id.clone());
                        }
                        r
                    })
                    .collect::<Vec<_>>(),
            );
        }
        let (t, cpu) = (Instant::now(), cpu_time());
        for batch in batches {
            log.submit(batch)?;
        }
        log.flush_writes().await;
        written_time += t.elapsed();
        log.flush().await;
        write_time += t.elapsed();
        write_cpu += cpu_time().saturating_sub(cpu);
        done += n;
    }
    // Queries are planned as in a running server, whose database has analyzed the table by then.
    log.refresh_statistics().await?;
    let dropped = health.snapshot().dropped[DropReason::LogWriteFailed as usize];
    let queries = match args.profile {
        Profile::Log => log_queries(&log, start_ts, args.rows).await?,
        Profile::Analytics => analytics_queries(&log, now).await?,
        // Its rows all lie in the last hour or two, which ranges read from the raw rows: the
        // profile is for the write rate.
        Profile::Live => Vec::new(),
    };
    log.close().await;
    Ok(BenchReport {
        dialect: log.dialect(),
        ids: args.ids,
        rows: args.rows,
        write_time,
        written_time: cfg.rollups.then_some(written_time),
        write_cpu,
        dropped,
        queries,
    })
}

/// Times the profile's queries over a database filled by an earlier run; its newest row's time
/// stands for "now" (so "today", the last 30 days and the active sessions are those the writing
/// run would have asked about).
pub async fn queries_only(args: &BenchArgs) -> Result<BenchReport, StoreError> {
    if args.profile != Profile::Analytics {
        return Err(StoreError::Unavailable {
            store: "bench-log",
            message: "--queries-only times the analytics profile's queries".into(),
        });
    }
    let mut cfg = args.log.clone();
    cfg.retention_days = 0;
    let log = SqlLog::open(&cfg, Arc::new(Health::new(1))).await?;
    let newest = log.page(&LogFilter::default(), None, 1).await?.items;
    let Some(newest) = newest.first() else {
        return Err(StoreError::Unavailable {
            store: "request log",
            message: "it is empty: --queries-only needs a database bench-log filled".into(),
        });
    };
    let now = newest.timestamp_ms + 1;
    log.refresh_statistics().await?;
    let queries = analytics_queries(&log, now).await?;
    log.close().await;
    Ok(BenchReport {
        dialect: log.dialect(),
        ids: args.ids,
        rows: 0,
        write_time: Duration::ZERO,
        written_time: None,
        write_cpu: Duration::ZERO,
        dropped: 0,
        queries,
    })
}

/// The analytics queries as the API runs them (the store's part: what the handlers add is
/// sorting a few thousand lines), and the month's user leaderboard by `GROUP BY` over the raw
/// rows, as a log without rollups would have to answer it.
async fn analytics_queries(log: &SqlLog, now: i64) -> Result<Vec<(String, Duration)>, StoreError> {
    use gatemeter::calendar::{Period, Zone};
    use gatemeter::store::sql::rollup::{Dim, HOUR_MS};
    let mut out = Vec::new();
    // The calendar month as the API asks for it (its whole period), in UTC and in a zone whose
    // month edges cut UTC days, and the last 30 days to this millisecond (a custom range: its
    // first and last partial hours come from the raw rows).
    let (month_start, month_end) = Zone::utc().period(Period::Month, now);
    let shanghai = Zone::named("Asia/Shanghai").map_err(|e| StoreError::Unavailable {
        store: "time zone",
        message: e,
    })?;
    let (sh_start, sh_end) = shanghai.period(Period::Month, now);
    let ranges = [
        (month_start, month_end, "this month (UTC)"),
        (sh_start, sh_end, "this month (Asia/Shanghai)"),
        (now - 30 * 86_400_000, now, "last 30 days"),
    ];
    for (from, to, name) in ranges {
        for (dim, scope) in [
            (Dim::User, "user"),
            (Dim::Key, "key"),
            (Dim::Provider, "provider"),
            (Dim::Model, "model"),
        ] {
            let t = median_of_5(|| async { log.grouped(dim, from, to, None).await.map(|_| ()) })
                .await?;
            out.push((format!("leaderboard {scope}, {name}"), t));
        }
    }
    let t = median_of_5(|| async {
        log.month_leaderboard_by_group_by(now - 30 * 86_400_000, now)
            .await
            .map(|_| ())
    })
    .await?;
    out.push((
        "leaderboard user, last 30 days, by GROUP BY over the raw rows".to_string(),
        t,
    ));
    let t = median_of_5(|| async {
        let keep = gatemeter::store::sql::analytics::Keep {
            detail: false,
            dist: true,
        };
        log.bucketed(
            Dim::Provider,
            (now - 7 * 86_400_000, now),
            HOUR_MS,
            None,
            keep,
        )
        .await?;
        log.last_requests_since(now - 900_000, None)
            .await
            .map(|_| ())
    })
    .await?;
    out.push(("availability 7d, hourly buckets".to_string(), t));
    let t = median_of_5(|| async {
        log.sessions(true, now - 300_000, None, None, 51)
            .await
            .map(|_| ())
    })
    .await?;
    out.push(("active sessions, first page of 50".to_string(), t));
    let t = median_of_5(|| async {
        log.sessions(false, now - 300_000, None, None, 51)
            .await
            .map(|_| ())
    })
    .await?;
    out.push(("inactive sessions, first page of 50".to_string(), t));
    let busy = log.sessions(false, now - 300_000, None, None, 1).await?;
    let id = busy
        .first()
        .map(|s| s.session_id.clone())
        .unwrap_or_default();
    let t = median_of_5(|| async {
        log.session_rows(&id, None).await?;
        log.session_requests(&id, None, 10_001).await.map(|_| ())
    })
    .await?;
    out.push(("session detail".to_string(), t));
    let (from, to) = Zone::utc().period(Period::Today, now);
    let t = median_of_5(|| async {
        log.grouped(Dim::All, from, to, None).await?;
        log.active_users(from, to, None).await?;
        log.active_sessions(now - 300_000, None).await.map(|_| ())
    })
    .await?;
    out.push(("overview (today)".to_string(), t));
    Ok(out)
}

/// The log list's filtered queries.
async fn log_queries(
    log: &SqlLog,
    start_ts: i64,
    rows: usize,
) -> Result<Vec<(String, Duration)>, StoreError> {
    let mut queries = Vec::new();
    let cases = [
        (
            "user+provider, first page of 50 (indexed)",
            LogFilter {
                user: Some("user-7".into()),
                provider: Some("openai".into()),
                ..LogFilter::default()
            },
        ),
        (
            "exclude_200 + min_retry_count=2, first page of 50 (scan)",
            LogFilter {
                exclude_200: true,
                min_retry_count: Some(2),
                ..LogFilter::default()
            },
        ),
        (
            "session_id, first page of 50 (indexed)",
            LogFilter {
                session_id: Some("session-42".into()),
                ..LogFilter::default()
            },
        ),
    ];
    for (name, filter) in cases {
        let t = median_of_5(|| async { log.page(&filter, None, 50).await.map(|_| ()) }).await?;
        queries.push((name.to_string(), t));
    }
    let all = LogFilter::default();
    let t = median_of_5(|| async { log.more_than(&all, 10_000).await.map(|_| ()) }).await?;
    queries.push(("row cap check of an unfiltered export".to_string(), t));
    let count_filter = LogFilter {
        model: Some("gpt-4o".into()),
        from_ms: Some(start_ts + rows as i64 * 5),
        ..LogFilter::default()
    };
    let t = median_of_5(|| async { log.more_than(&count_filter, u64::MAX / 2).await.map(|_| ()) })
        .await?;
    queries.push(("count model=gpt-4o over the newer half".to_string(), t));
    Ok(queries)
}
