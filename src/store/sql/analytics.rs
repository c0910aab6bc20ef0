//! The analytics queries (SPEC §6.3) over the rollups (`rollup.rs`): leaderboards, provider
//! availability, the overview, sessions.
//!
//! A range `[from, to)` in epoch ms is answered exactly: the UTC days wholly inside it from day
//! buckets, the hours around them from hour buckets, and the pieces of an hour at either end (a
//! custom range, or a day that starts at a half hour in its time zone) from the raw rows, rolled
//! up in memory the same way. A reader restricted to one user is answered from that user's raw
//! rows (the `user_ref` index), so no rollup of anyone else's requests is ever read for it.

use std::collections::BTreeMap;
use std::ffi::c_int;

use compact_str::CompactString;
use sqlx::Row;

use super::rollup::{
    Batch, Cell, Counts, DAY_MS, Dim, Dist, FACT_COLUMNS, FactRow, HOUR_MS, MINUTE_MS, Tier, floor,
};
use super::sqlite_raw::Statement;
use super::sqlite_read::{self, Owned};
use super::{Backend, SqlLog, dispatch, unavailable};
use crate::calendar::Zone;
use crate::store::StoreError;

/// Settings of the analytics API (`analytics:` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyticsConfig {
    /// Where today, this week (ISO, Monday) and this month begin.
    pub time_zone: Zone,
    /// Whether a user token sees every line of a leaderboard (else only its own).
    pub users_see_leaderboards: bool,
    /// A session is active when its last request started this recently.
    pub session_active_secs: u64,
    /// Lines of each top-N leaderboard family on `/metrics` (plus `other`).
    pub top_n: usize,
    /// How often the analytics families of `/metrics` are read from the rollups.
    pub refresh_secs: u64,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            time_zone: Zone::utc(),
            users_see_leaderboards: false,
            session_active_secs: 300,
            top_n: 10,
            refresh_secs: 15,
        }
    }
}

/// A provider with no request for this long is `unknown`.
pub const UNKNOWN_AFTER_MS: i64 = 15 * MINUTE_MS;

/// The colour of a provider: `unknown` when its latest request started more than 15 minutes
/// before `now` (or there is none), else by the window's availability: `green` at 50 % and
/// above, `red` below.
pub fn status(successes: i64, requests: i64, last_seen: Option<i64>, now: i64) -> &'static str {
    match last_seen {
        Some(t) if t >= now - UNKNOWN_AFTER_MS && requests > 0 => {
            if successes * 2 >= requests {
                "green"
            } else {
                "red"
            }
        }
        _ => "unknown",
    }
}

/// Totals per (value, detail) of one dimension.
pub type Grouped = BTreeMap<(CompactString, CompactString), Cell>;

/// Totals per (bucket start, value, detail).
pub type Bucketed = BTreeMap<(i64, CompactString, CompactString), Cell>;

/// What a [`SqlLog::bucketed`] read keeps of each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// The detail (a provider's model): else one cell per value.
    pub detail: bool,
    /// The distribution (durations, failures by status).
    pub dist: bool,
}

/// Raw rows read at most for one answer; a reader's range that holds more is refused (400).
pub const MAX_RAW_ROWS: i64 = 2_000_000;

/// Pieces of a range answered by rollups: (tier, start, end, sign): the buckets starting in
/// `[start, end)` are added (`1`) or taken away (`-1`: days of a month bucket outside the range).
type Rolled = Vec<(Tier, i64, i64, i64)>;

/// How a range of a dimension whose rollups carry counts only (users and keys) may be covered:
/// a coarser bucket less the finer buckets of it outside the range (counts subtract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Subtract {
    /// Buckets starting here or later are whole (retention deletes every tier at one cutoff,
    /// so an older coarse bucket may outlive the finer buckets it would be taken from).
    whole_from: i64,
    /// The present: buckets starting after it hold only records dated in the future (rare), so
    /// taking them away costs next to nothing.
    now: i64,
}

/// What reading the buckets of `tier` in `[a, b)` costs, in rough rows per value: a day holds
/// more values than an hour, a month more than a day; buckets after `now` are (nearly) empty.
fn cost(tier: Tier, a: i64, b: i64, now: i64) -> i64 {
    let weight = match tier {
        Tier::Minute | Tier::Hour => 2,
        Tier::Day => 3,
        Tier::Month => 4,
    };
    let (mut n, mut t) = (0, a);
    while t < b && t <= now {
        n += 1;
        t = tier.next(t);
    }
    weight * n
}

/// Covers the `fine`-aligned range `[a, b)` down to `coarse` alignment: each end either adds
/// the fine buckets inside it or rounds outward and takes away the fine buckets outside it,
/// whichever [`cost`]s less (a range within one coarse bucket likewise, both ends at once).
/// Pushes the fine pieces and returns the coarse-aligned range left (empty when none).
fn round_out(
    (fine, coarse): (Tier, Tier),
    (a, b): (i64, i64),
    sub: Subtract,
    out: &mut Rolled,
) -> (i64, i64) {
    let up = |t: i64| {
        let f = coarse.floor(t);
        if f == t { t } else { coarse.next(f) }
    };
    let (ca, cb) = (coarse.floor(a), coarse.floor(b));
    let may = |c: i64| c >= sub.whole_from;
    // Rounding out reads the coarse bucket too.
    let whole = |c: i64| cost(coarse, c, coarse.next(c), sub.now);
    if up(a) > cb {
        // Inside one coarse bucket, neither end aligned.
        let end = coarse.next(ca);
        let add = cost(fine, a, b, sub.now);
        let take = whole(ca) + cost(fine, ca, a, sub.now) + cost(fine, b, end, sub.now);
        if may(ca) && take < add {
            out.push((coarse, ca, end, 1));
            out.push((fine, ca, a, -1));
            out.push((fine, b, end, -1));
            out.retain(|p| p.1 < p.2);
        } else {
            out.push((fine, a, b, 1));
        }
        return (ca, ca);
    }
    let start = if a == ca {
        a
    } else if may(ca) && whole(ca) + cost(fine, ca, a, sub.now) < cost(fine, a, up(a), sub.now) {
        out.push((fine, ca, a, -1));
        ca
    } else {
        out.push((fine, a, up(a), 1));
        up(a)
    };
    let end = if b == cb {
        b
    } else if may(cb) && whole(cb) + cost(fine, b, up(b), sub.now) < cost(fine, cb, b, sub.now) {
        out.push((fine, b, up(b), -1));
        up(b)
    } else {
        out.push((fine, cb, b, 1));
        cb
    };
    (start, end)
}

/// The pieces of `[from, to)` that rollups answer and those left to the raw rows (start, end).
/// Without `sub`, whole UTC days from day buckets and the hours around them from hour buckets;
/// with it (users and keys), months and days too may be rounded out and their outside taken
/// away, which reads far fewer rows for the ranges asked most: those ending now, whose month
/// and day are mostly still to come.
fn pieces(from: i64, to: i64, sub: Option<Subtract>) -> (Rolled, Vec<(i64, i64)>) {
    let (mut rolled, mut raw) = (Vec::new(), Vec::new());
    if from >= to {
        return (rolled, raw);
    }
    let h0 = from.div_euclid(HOUR_MS) * HOUR_MS
        + if from.rem_euclid(HOUR_MS) == 0 {
            0
        } else {
            HOUR_MS
        };
    let h1 = floor(to, HOUR_MS);
    if h0 >= h1 {
        raw.push((from, to));
        return (rolled, raw);
    }
    if from < h0 {
        raw.push((from, h0));
    }
    if h1 < to {
        raw.push((h1, to));
    }
    let Some(sub) = sub else {
        let d0 = h0.div_euclid(DAY_MS) * DAY_MS
            + if h0.rem_euclid(DAY_MS) == 0 {
                0
            } else {
                DAY_MS
            };
        let d1 = floor(h1, DAY_MS);
        if d0 < d1 {
            if h0 < d0 {
                rolled.push((Tier::Hour, h0, d0, 1));
            }
            rolled.push((Tier::Day, d0, d1, 1));
            if d1 < h1 {
                rolled.push((Tier::Hour, d1, h1, 1));
            }
        } else {
            rolled.push((Tier::Hour, h0, h1, 1));
        }
        return (rolled, raw);
    };
    let (d0, d1) = round_out((Tier::Hour, Tier::Day), (h0, h1), sub, &mut rolled);
    if d0 < d1 {
        // Days before retention's cutoff stay days: the months after it are whole.
        let split = if sub.whole_from <= d0 {
            d0
        } else {
            (floor(sub.whole_from, DAY_MS) + DAY_MS).min(d1)
        };
        if d0 < split {
            rolled.push((Tier::Day, d0, split, 1));
        }
        if split < d1 {
            let (m0, m1) = round_out((Tier::Day, Tier::Month), (split, d1), sub, &mut rolled);
            if m0 < m1 {
                rolled.push((Tier::Month, m0, m1, 1));
            }
        }
    }
    // Neighbours of one tier and sign read as one range.
    let mut merged: Rolled = Vec::with_capacity(rolled.len());
    for p in rolled {
        match merged.last_mut() {
            Some(last) if (last.0, last.2, last.3) == (p.0, p.1, p.3) => last.2 = p.2,
            _ => merged.push(p),
        }
    }
    (merged, raw)
}

/// Text column `col` of a SQLite row (NULL reads as empty).
fn text_of(s: &Statement<'_>, col: c_int) -> Result<CompactString, String> {
    Ok(CompactString::from(
        sqlite_read::text(s, col)?.unwrap_or(""),
    ))
}

/// `COUNT_COLUMNS` from column `at` of a SQLite row.
fn counts_of(s: &Statement<'_>, at: c_int) -> Counts {
    Counts::from_values(std::array::from_fn(|i| s.int(at + i as c_int)))
}

fn merge(into: &mut Cell, counts: Counts, dist: Option<&[u8]>) {
    into.counts.add(&counts);
    if let Some(b) = dist {
        let _ = into.dist.get_or_insert_with(Dist::default).decode_into(b);
    }
}

impl SqlLog {
    /// Raw rows of `[from, to)` (only `user`'s when given), rolled up in memory.
    async fn raw_batch(&self, from: i64, to: i64, user: Option<&str>) -> Result<Batch, StoreError> {
        let sql = format!(
            "SELECT {FACT_COLUMNS} FROM request_log WHERE ts_ms >= $1 AND ts_ms < $2 \
             AND ($3 IS NULL OR user_ref = $3) LIMIT $4"
        );
        let facts = match self.backend() {
            Backend::Sqlite(p) => {
                let binds = vec![
                    Owned::Int(from),
                    Owned::Int(to),
                    user.map_or(Owned::Null, |u| Owned::Text(u.to_string())),
                    Owned::Int(MAX_RAW_ROWS + 1),
                ];
                sqlite_read::rows(p, sql, binds, |s| {
                    let mut text: [Option<String>; 7] = Default::default();
                    for (t, col) in text.iter_mut().zip(1..) {
                        *t = sqlite_read::text(s, col)?.map(str::to_string);
                    }
                    Ok(FactRow::from_columns(
                        s.int(0),
                        text,
                        std::array::from_fn(|i| s.int(8 + i as c_int)),
                        sqlite_read::text(s, 16)?.map(str::to_string),
                    ))
                })
                .await?
            }
            Backend::Postgres(p) => {
                let rows = sqlx::query(&sql)
                    .bind(from)
                    .bind(to)
                    .bind(user)
                    .bind(MAX_RAW_ROWS + 1)
                    .fetch_all(p)
                    .await
                    .map_err(unavailable)?;
                rows.iter()
                    .map(|r| FactRow::read(r, 0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(unavailable)?
            }
        };
        if facts.len() as i64 > MAX_RAW_ROWS {
            return Err(StoreError::Unavailable {
                store: "request log",
                message: format!("more than {MAX_RAW_ROWS} rows to read for one answer"),
            });
        }
        let mut batch = Batch::default();
        batch.add_all(facts.iter().map(FactRow::fact));
        Ok(batch)
    }

    /// Totals of `dim` per (value, detail) over `[from, to)`; only `user`'s requests when given.
    pub async fn grouped(
        &self,
        dim: Dim,
        from: i64,
        to: i64,
        user: Option<&str>,
    ) -> Result<Grouped, StoreError> {
        let mut out = Grouped::new();
        let (rolled, raw) = match user {
            Some(_) => (Vec::new(), vec![(from, to)]),
            None => pieces(
                from,
                to,
                dim.has_months().then(|| Subtract {
                    whole_from: self.whole_from(),
                    now: crate::clock::now_ms(),
                }),
            ),
        };
        if !dim.has_dist() {
            // Users and keys are many and carry no distribution: summed by the database, every
            // piece in one statement (one snapshot: a bucket and the buckets taken from it are
            // read as of the same moment).
            for (value, detail, counts) in self.rollup_sums(dim, &rolled).await? {
                out.entry((value, detail)).or_default().counts = counts;
            }
        } else {
            for (tier, a, b, _) in rolled {
                let rows = self.rollup_rows(dim, tier, a, b, true).await?;
                for (_, value, detail, counts, dist) in rows {
                    merge(
                        out.entry((value, detail)).or_default(),
                        counts,
                        dist.as_deref(),
                    );
                }
            }
        }
        for (a, b) in raw {
            if a >= b {
                continue;
            }
            for (key, cell) in self.raw_batch(a, b, user).await?.cells_of(dim) {
                out.entry((key.value, key.detail))
                    .or_default()
                    .merge_from(&cell);
            }
        }
        Ok(out)
    }

    /// Totals of `dim` per `bucket_ms` bucket (a multiple of a minute; of an hour from an hour up),
    /// value and detail, for buckets from the one containing `from` up to `to`. What `keep`
    /// leaves out is not read: without `detail` the details of a value are one cell (detail
    /// `""`), without `dist` no distribution is decoded.
    pub async fn bucketed(
        &self,
        dim: Dim,
        (from, to): (i64, i64),
        bucket_ms: i64,
        user: Option<&str>,
        keep: Keep,
    ) -> Result<Bucketed, StoreError> {
        let start = floor(from, bucket_ms);
        let mut out = Bucketed::new();
        let detail = |d: CompactString| {
            if keep.detail {
                d
            } else {
                CompactString::default()
            }
        };
        if let Some(user) = user {
            for (key, mut cell) in self.raw_batch(start, to, Some(user)).await?.cells_of(dim) {
                if !keep.dist {
                    cell.dist = None;
                }
                out.entry((
                    floor(key.bucket_ms, bucket_ms),
                    key.value,
                    detail(key.detail),
                ))
                .or_default()
                .merge_from(&cell);
            }
            return Ok(out);
        }
        let tier = if bucket_ms % DAY_MS == 0 && dim != Dim::Provider {
            Tier::Day
        } else if bucket_ms % HOUR_MS == 0 || dim != Dim::Provider {
            Tier::Hour
        } else {
            Tier::Minute
        };
        for (bucket, value, d, counts, dist) in
            self.rollup_rows(dim, tier, start, to, keep.dist).await?
        {
            let e = out
                .entry((floor(bucket, bucket_ms), value, detail(d)))
                .or_default();
            merge(e, counts, dist.as_deref());
        }
        Ok(out)
    }

    /// The counts of `dim` summed per (value, detail) over `pieces` (each added or taken away),
    /// in one statement; values whose requests all lay in buckets taken away are left out.
    async fn rollup_sums(
        &self,
        dim: Dim,
        pieces: &Rolled,
    ) -> Result<Vec<(CompactString, CompactString, Counts)>, StoreError> {
        if pieces.is_empty() {
            return Ok(Vec::new());
        }
        let (mut parts, mut binds) = (Vec::new(), Vec::new());
        for &(tier, a, b, sign) in pieces {
            binds.extend([a, b]);
            let cols: Vec<String> = super::rollup::COUNT_COLUMNS
                .iter()
                .map(|c| {
                    if sign < 0 {
                        format!("-{c} AS {c}")
                    } else {
                        (*c).to_string()
                    }
                })
                .collect();
            // Codes of our own enums, not input; the bounds are bound.
            parts.push(format!(
                "SELECT value, detail, {} FROM rollup WHERE dim = {} AND tier = {} \
                 AND bucket_ms >= ${} AND bucket_ms < ${}",
                cols.join(", "),
                dim.code(),
                tier.code(),
                binds.len() - 1,
                binds.len()
            ));
        }
        let sums: Vec<String> = super::rollup::COUNT_COLUMNS
            .iter()
            .map(|c| format!("CAST(sum({c}) AS BIGINT)"))
            .collect();
        let sql = match pieces.as_slice() {
            // One bucket (a UTC month's leaderboard) holds each (value, detail) once: nothing
            // to add up (the aggregation was 60 % of its time on PostgreSQL).
            [(tier, a, b, 1)] if tier.next(*a) >= *b => parts.remove(0),
            _ => format!(
                "SELECT value, detail, {} FROM ({}) AS p GROUP BY value, detail \
                 HAVING sum(requests) <> 0",
                sums.join(", "),
                parts.join(" UNION ALL ")
            ),
        };
        self.rollup_query(
            sql,
            binds,
            |s| Ok((text_of(s, 0)?, text_of(s, 1)?, counts_of(s, 2))),
            |r| {
                Ok((
                    CompactString::from(r.try_get::<String, _>(0)?),
                    CompactString::from(r.try_get::<String, _>(1)?),
                    Counts::read(r, 2)?,
                ))
            },
        )
        .await
    }

    /// Runs a rollup read with the integers `binds` as `$1`, `$2`, … (in order of first
    /// appearance) and reads each row with the backend's reader.
    async fn rollup_query<T: Send + 'static>(
        &self,
        sql: String,
        binds: Vec<i64>,
        sqlite: fn(&Statement<'_>) -> Result<T, String>,
        postgres: fn(&sqlx::postgres::PgRow) -> Result<T, sqlx::Error>,
    ) -> Result<Vec<T>, StoreError> {
        match self.backend() {
            Backend::Sqlite(p) => {
                let binds = binds.into_iter().map(Owned::Int).collect();
                sqlite_read::rows(p, sql, binds, sqlite).await
            }
            Backend::Postgres(p) => {
                let mut q = sqlx::query(&sql);
                for v in binds {
                    q = q.bind(v);
                }
                let rows = q.fetch_all(p).await.map_err(unavailable)?;
                rows.iter()
                    .map(postgres)
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(unavailable)
            }
        }
    }

    /// Rollup rows of `dim` and `tier` with a bucket start in `[from, to)`.
    #[allow(clippy::type_complexity)]
    async fn rollup_rows(
        &self,
        dim: Dim,
        tier: Tier,
        from: i64,
        to: i64,
        dist: bool,
    ) -> Result<Vec<(i64, CompactString, CompactString, Counts, Option<Vec<u8>>)>, StoreError> {
        // Codes of our own enums, not input; the bounds are bound.
        let sql = format!(
            "SELECT bucket_ms, value, detail, {}, {} FROM rollup \
             WHERE dim = {} AND tier = {} AND bucket_ms >= $1 AND bucket_ms < $2",
            super::rollup::COUNT_COLUMNS.join(", "),
            if dist { "dist" } else { "NULL" },
            dim.code(),
            tier.code(),
        );
        self.rollup_query(
            sql,
            vec![from, to],
            |s| {
                Ok((
                    s.int(0),
                    text_of(s, 1)?,
                    text_of(s, 2)?,
                    counts_of(s, 3),
                    s.blob_bytes(12)?.map(<[u8]>::to_vec),
                ))
            },
            |r| {
                Ok((
                    r.try_get::<i64, _>(0)?,
                    CompactString::from(r.try_get::<String, _>(1)?),
                    CompactString::from(r.try_get::<String, _>(2)?),
                    Counts::read(r, 3)?,
                    r.try_get::<Option<Vec<u8>>, _>(12)?,
                ))
            },
        )
        .await
    }

    /// The start of the latest request at or after `since` of each (provider, model), from the
    /// raw rows (`ts_ms` index; a short recent range); only `user`'s when given.
    pub async fn last_requests_since(
        &self,
        since: i64,
        user: Option<&str>,
    ) -> Result<BTreeMap<(String, String), i64>, StoreError> {
        dispatch!(self.backend(), p, DB => {
            let rows: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT provider, model, max(ts_ms) FROM request_log \
                 WHERE ts_ms >= $1 AND provider <> '' AND ($2 IS NULL OR user_ref = $2) \
                 GROUP BY provider, model",
            )
            .bind(since)
            .bind(user)
            .fetch_all(p)
            .await
            .map_err(unavailable)?;
            Ok(rows.into_iter().map(|(p, m, t)| ((p, m), t)).collect())
        })
    }

    /// A user's requests per API key that the log holds: totals, calls since `day` and since
    /// `month` (epoch ms), latest request.
    pub async fn key_stats_of_user(
        &self,
        user: &str,
        day: i64,
        month: i64,
    ) -> Result<Vec<UserKeyStats>, StoreError> {
        let sums: Vec<String> = super::rollup::COUNT_COLUMNS
            .iter()
            .map(|c| match *c {
                "requests" => "count(*)".to_string(),
                "successes" => {
                    "sum(CASE WHEN status >= 200 AND status < 400 THEN 1 ELSE 0 END)".to_string()
                }
                "duration_ms_sum" => "sum(duration_ms)".to_string(),
                c => format!("sum({c})"),
            })
            .map(|e| format!("CAST({e} AS BIGINT)"))
            .collect();
        let sql = format!(
            "SELECT key_name, max(ts_ms), \
             CAST(sum(CASE WHEN ts_ms >= $2 THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(sum(CASE WHEN ts_ms >= $3 THEN 1 ELSE 0 END) AS BIGINT), {} \
             FROM request_log WHERE user_ref = $1 AND key_name IS NOT NULL \
             GROUP BY key_name ORDER BY count(*) DESC, key_name",
            sums.join(", ")
        );
        dispatch!(self.backend(), p, DB => {
            let rows = sqlx::query(&sql)
                .bind(user)
                .bind(day)
                .bind(month)
                .fetch_all(p)
                .await
                .map_err(unavailable)?;
            rows.iter()
                .map(|r| {
                    Ok(UserKeyStats {
                        key: r.try_get(0)?,
                        last_used_ms: r.try_get(1)?,
                        today: u64::try_from(r.try_get::<i64, _>(2)?).unwrap_or(0),
                        this_month: u64::try_from(r.try_get::<i64, _>(3)?).unwrap_or(0),
                        counts: Counts::read(r, 4)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(unavailable)
        })
    }

    /// Sessions active at or after `since` (`active`) or last active before it, newest first,
    /// after the `(last_ms, session_id)` cursor; only `user`'s when given.
    pub async fn sessions(
        &self,
        active: bool,
        since: i64,
        user: Option<&str>,
        after: Option<SessionCursor>,
        limit: i64,
    ) -> Result<Vec<SessionRow>, StoreError> {
        // No cursor: before every row (no row's `last_ms` is `i64::MAX`).
        let after = after.unwrap_or(SessionCursor {
            last_ms: i64::MAX,
            session_id: String::new(),
            user: String::new(),
        });
        let sql = format!(
            "SELECT session_id, user_ref, namespace, first_ms, last_ms, {} FROM session_rollup \
             WHERE ({}) AND ($2 IS NULL OR user_ref = $2) \
             AND (last_ms < $3 OR (last_ms = $3 AND (session_id < $4 \
                  OR (session_id = $4 AND user_ref < $6)))) \
             ORDER BY last_ms DESC, session_id DESC, user_ref DESC LIMIT $5",
            super::rollup::COUNT_COLUMNS.join(", "),
            if active {
                "last_ms >= $1"
            } else {
                "last_ms < $1"
            },
        );
        dispatch!(self.backend(), p, DB => {
            let rows = sqlx::query(&sql)
                .bind(since)
                .bind(user)
                .bind(after.last_ms)
                .bind(&after.session_id)
                .bind(limit)
                .bind(&after.user)
                .fetch_all(p)
                .await
                .map_err(unavailable)?;
            rows.iter().map(SessionRow::read).collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
    }

    /// The rows of session `id` (one per user; only `user`'s when given).
    pub async fn session_rows(
        &self,
        id: &str,
        user: Option<&str>,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let sql = format!(
            "SELECT session_id, user_ref, namespace, first_ms, last_ms, {} FROM session_rollup \
             WHERE session_id = $1 AND ($2 IS NULL OR user_ref = $2) ORDER BY user_ref",
            super::rollup::COUNT_COLUMNS.join(", ")
        );
        dispatch!(self.backend(), p, DB => {
            let rows = sqlx::query(&sql)
                .bind(id)
                .bind(user)
                .fetch_all(p)
                .await
                .map_err(unavailable)?;
            rows.iter().map(SessionRow::read).collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
    }

    /// The requests of session `id` in order (log id, time, provider, model, status, duration),
    /// at most `limit`; only `user`'s when given.
    pub async fn session_requests(
        &self,
        id: &str,
        user: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SessionRequest>, StoreError> {
        dispatch!(self.backend(), p, DB => {
            let rows = sqlx::query(
                "SELECT id, ts_ms, provider, model, status, duration_ms FROM request_log \
                 WHERE session_id = $1 AND ($2 IS NULL OR user_ref = $2) \
                 ORDER BY ts_ms, id LIMIT $3",
            )
            .bind(id)
            .bind(user)
            .bind(limit)
            .fetch_all(p)
            .await
            .map_err(unavailable)?;
            rows.iter()
                .map(|r| {
                    Ok(SessionRequest {
                        id: r.try_get(0)?,
                        ts_ms: r.try_get(1)?,
                        provider: r.try_get(2)?,
                        model: r.try_get(3)?,
                        status: r.try_get(4)?,
                        duration_ms: r.try_get(5)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(unavailable)
        })
    }

    /// Request `seq` (1-based, in the order of [`SqlLog::session_requests`]) of session `id`
    /// with its stored request, if any; `None` when the session has fewer requests.
    pub async fn session_request(
        &self,
        id: &str,
        seq: i64,
    ) -> Result<Option<StoredSessionRequest>, StoreError> {
        dispatch!(self.backend(), p, DB => {
            let row = sqlx::query(
                "SELECT l.id, l.ts_ms, l.provider, l.model, b.request, b.truncated, \
                 b.original_bytes FROM request_log l \
                 LEFT JOIN request_bodies b ON b.request_id = l.request_id \
                 WHERE l.session_id = $1 ORDER BY l.ts_ms, l.id LIMIT 1 OFFSET $2",
            )
            .bind(id)
            .bind(seq - 1)
            .fetch_optional(p)
            .await
            .map_err(unavailable)?;
            row.map(|r| {
                Ok(StoredSessionRequest {
                    id: r.try_get(0)?,
                    ts_ms: r.try_get(1)?,
                    provider: r.try_get(2)?,
                    model: r.try_get(3)?,
                    request: r.try_get(4)?,
                    truncated: r.try_get::<Option<bool>, _>(5)?.unwrap_or(false),
                    original_bytes: r.try_get::<Option<i64>, _>(6)?.unwrap_or(0),
                })
            })
            .transpose()
            .map_err(|e: sqlx::Error| unavailable(e))
        })
    }

    /// The month's user leaderboard the way a log without rollups answers it: `GROUP BY`
    /// over the raw rows of `[from, to)` (for `gatemeter bench-log --profile analytics`).
    pub async fn month_leaderboard_by_group_by(
        &self,
        from: i64,
        to: i64,
    ) -> Result<usize, StoreError> {
        dispatch!(self.backend(), p, DB => {
            let mut tx = p.begin().await.map_err(unavailable)?;
            if matches!(self.backend(), Backend::Postgres(_)) {
                // PostgreSQL's default (the read pool turns JIT off for the rollups' reads).
                sqlx::query("SET LOCAL jit = on").execute(&mut *tx).await.map_err(unavailable)?;
            }
            let rows = sqlx::query(
                "SELECT user_ref, count(*), sum(cost_micros), sum(input_tokens), \
                 sum(output_tokens), sum(cache_read_tokens) FROM request_log \
                 WHERE ts_ms >= $1 AND ts_ms < $2 GROUP BY user_ref",
            )
            .bind(from)
            .bind(to)
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
            Ok(rows.len())
        })
    }

    /// Sessions last active at or after `since` per namespace (of their first request).
    pub async fn active_sessions_by_namespace(
        &self,
        since: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        dispatch!(self.backend(), p, DB => {
            sqlx::query_as::<_, (String, i64)>(
                "SELECT namespace, count(DISTINCT session_id) FROM session_rollup \
                 WHERE last_ms >= $1 GROUP BY namespace",
            )
            .bind(since)
            .fetch_all(p)
            .await
            .map_err(unavailable)
        })
    }

    /// The number of users with a request in `[from, to)` (only `user` counted when given),
    /// counted by the database: the user rollups of the range's whole hours and days and the
    /// raw rows of its edges, made distinct in one statement, so no user's line is read out.
    pub async fn active_users(
        &self,
        from: i64,
        to: i64,
        user: Option<&str>,
    ) -> Result<i64, StoreError> {
        if let Some(u) = user {
            return dispatch!(self.backend(), p, DB => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM (SELECT 1 FROM request_log \
                     WHERE ts_ms >= $1 AND ts_ms < $2 AND user_ref = $3 LIMIT 1) AS v",
                )
                .bind(from)
                .bind(to)
                .bind(u)
                .fetch_one(p)
                .await
                .map_err(unavailable)
            });
        }
        let (mut sql, mut binds) = (Vec::new(), Vec::new());
        let range = |binds: &mut Vec<i64>, a: i64, b: i64| {
            binds.extend([a, b]);
            (binds.len() - 1, binds.len())
        };
        let (rolled, raw) = pieces(from, to, None);
        for (tier, a, b, _) in rolled {
            let (a, b) = range(&mut binds, a, b);
            // Codes of our own enums, not input.
            sql.push(format!(
                "SELECT value AS v FROM rollup WHERE dim = {} AND tier = {} \
                 AND bucket_ms >= ${a} AND bucket_ms < ${b}",
                Dim::User.code(),
                tier.code()
            ));
        }
        for (a, b) in raw {
            let (a, b) = range(&mut binds, a, b);
            sql.push(format!(
                "SELECT user_ref AS v FROM request_log \
                 WHERE ts_ms >= ${a} AND ts_ms < ${b} AND user_ref IS NOT NULL"
            ));
        }
        if sql.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "SELECT count(DISTINCT v) FROM ({}) AS t",
            sql.join(" UNION ALL ")
        );
        dispatch!(self.backend(), p, DB => {
            let mut q = sqlx::query_scalar::<_, i64>(&sql);
            for v in &binds {
                q = q.bind(*v);
            }
            q.fetch_one(p).await.map_err(unavailable)
        })
    }

    /// Sessions last active at or after `since` (only `user`'s when given).
    ///
    /// SQLite (3.46, no statistics for the table) chose to scan the whole table in
    /// `session_id` order, which spares the sort of `DISTINCT` (106 ms at 1.2 million
    /// sessions, against well under 1 ms for a range of the `last_ms` index): it is told
    /// the index. A user's count reads that user's index range.
    pub async fn active_sessions(&self, since: i64, user: Option<&str>) -> Result<i64, StoreError> {
        let sql = match (user, self.backend()) {
            (None, Backend::Sqlite(_)) => {
                "SELECT count(DISTINCT session_id) FROM session_rollup \
                 INDEXED BY session_rollup_last WHERE last_ms >= $1"
            }
            (None, Backend::Postgres(_)) => {
                "SELECT count(DISTINCT session_id) FROM session_rollup WHERE last_ms >= $1"
            }
            (Some(_), _) => {
                "SELECT count(DISTINCT session_id) FROM session_rollup \
                 WHERE user_ref = $2 AND last_ms >= $1"
            }
        };
        dispatch!(self.backend(), p, DB => {
            let mut q = sqlx::query_scalar::<_, i64>(sql).bind(since);
            if let Some(u) = user {
                q = q.bind(u);
            }
            q.fetch_one(p).await.map_err(unavailable)
        })
    }
}

/// Where a page of the session list ended: its last row's keys, in the list's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCursor {
    /// The row's last request start, epoch ms.
    pub last_ms: i64,
    /// Its session id.
    pub session_id: String,
    /// Its user (`""`: before every user, as a cursor naming none).
    pub user: String,
}

/// One session (and user) of the session rollup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Session id.
    pub session_id: String,
    /// The user (`""` when the records named none).
    pub user: String,
    /// Namespace of its first request.
    pub namespace: String,
    /// First and last request start, epoch ms.
    pub first_ms: i64,
    /// Last request start, epoch ms.
    pub last_ms: i64,
    /// Totals.
    pub counts: Counts,
}

impl SessionRow {
    fn read<R>(r: &R) -> Result<Self, sqlx::Error>
    where
        R: Row,
        usize: sqlx::ColumnIndex<R>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(Self {
            session_id: r.try_get(0)?,
            user: r.try_get(1)?,
            namespace: r.try_get(2)?,
            first_ms: r.try_get(3)?,
            last_ms: r.try_get(4)?,
            counts: Counts::read(r, 5)?,
        })
    }
}

/// One API key's stats over one user's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKeyStats {
    /// Key name.
    pub key: String,
    /// Latest request start, epoch ms.
    pub last_used_ms: i64,
    /// Calls since the start of the UTC day.
    pub today: u64,
    /// Calls since the start of the UTC month.
    pub this_month: u64,
    /// Totals.
    pub counts: Counts,
}

/// One request of a session with its stored request (SPEC §6.4 session request JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSessionRequest {
    /// Log id.
    pub id: i64,
    /// Start, epoch ms.
    pub ts_ms: i64,
    /// Provider.
    pub provider: String,
    /// Model used.
    pub model: String,
    /// The redacted request object as JSON; `None` when none was stored.
    pub request: Option<String>,
    /// Whether its body was cut to the size cap.
    pub truncated: bool,
    /// Its size before the cut, bytes.
    pub original_bytes: i64,
}

/// One request of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    /// Log id (`/api/v1/logs/{id}`).
    pub id: i64,
    /// Start, epoch ms.
    pub ts_ms: i64,
    /// Provider.
    pub provider: String,
    /// Model used.
    pub model: String,
    /// Final status.
    pub status: i64,
    /// Duration, ms.
    pub duration_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEVER: Subtract = Subtract {
        whole_from: i64::MIN,
        now: i64::MAX,
    };

    #[test]
    fn ranges_split_into_days_hours_and_raw_edges() {
        let d = DAY_MS;
        let h = HOUR_MS;
        // Two whole days: one day piece.
        assert_eq!(
            pieces(d, 3 * d, None),
            (vec![(Tier::Day, d, 3 * d, 1)], vec![])
        );
        // Shanghai's day: 16:00 to 16:00 UTC, hours either side of no whole UTC day.
        assert_eq!(
            pieces(d + 16 * h, 2 * d + 16 * h, None),
            (vec![(Tier::Hour, d + 16 * h, 2 * d + 16 * h, 1)], vec![])
        );
        // Half-hour zone month: raw half hours, hours, days, hours, raw half hour.
        let (rolled, raw) = pieces(d - h / 2, 5 * d + 3 * h + h / 2, None);
        assert_eq!(
            rolled,
            vec![
                (Tier::Day, d, 5 * d, 1),
                (Tier::Hour, 5 * d, 5 * d + 3 * h, 1)
            ]
        );
        assert_eq!(
            raw,
            vec![(d - h / 2, d), (5 * d + 3 * h, 5 * d + 3 * h + h / 2)]
        );
        // Within one hour: all raw.
        assert_eq!(pieces(10, 20, Some(NEVER)), (vec![], vec![(10, 20)]));
        assert_eq!(pieces(20, 20, Some(NEVER)), (vec![], vec![]));
        // February 1970 (days 31 to 59) and a day either side: a month piece for users and
        // keys, days for the rest.
        assert_eq!(
            pieces(30 * d, 60 * d, Some(NEVER)).0,
            vec![
                (Tier::Day, 30 * d, 31 * d, 1),
                (Tier::Day, 59 * d, 60 * d, 1),
                (Tier::Month, 31 * d, 59 * d, 1),
            ]
        );
        assert_eq!(
            pieces(30 * d, 60 * d, None).0,
            vec![(Tier::Day, 30 * d, 60 * d, 1)]
        );
        // Shanghai's February: 16:00 UTC on January 31 to 16:00 UTC on February 28. The month
        // less its last day's last 8 hours, with the hours before it.
        assert_eq!(
            pieces(30 * d + 16 * h, 58 * d + 16 * h, Some(NEVER)).0,
            vec![
                (Tier::Hour, 30 * d + 16 * h, 31 * d, 1),
                (Tier::Hour, 58 * d + 16 * h, 59 * d, -1),
                (Tier::Month, 31 * d, 59 * d, 1),
            ]
        );
        // Not a month whose first days retention deleted.
        assert_eq!(
            pieces(
                30 * d,
                60 * d,
                Some(Subtract {
                    whole_from: 31 * d + 1,
                    now: i64::MAX
                })
            )
            .0,
            vec![(Tier::Day, 30 * d, 60 * d, 1)]
        );
        // A few days of a month stay days.
        assert_eq!(
            pieces(40 * d, 45 * d, Some(NEVER)).0,
            vec![(Tier::Day, 40 * d, 45 * d, 1)]
        );
    }

    /// The ranges asked most end now: the month and the day are mostly still to come, so a
    /// month bucket less what is to come (the current hour) is read, not its days and hours.
    #[test]
    fn ranges_ending_now_read_the_month_less_the_current_hour() {
        let (d, h) = (DAY_MS, HOUR_MS);
        // Now: 10:31 on March 5 1970 (day 63; March starts on day 59).
        let now = 63 * d + 10 * h + 31 * MINUTE_MS;
        let sub = Subtract {
            whole_from: i64::MIN,
            now,
        };
        let (rolled, raw) = pieces(59 * d, now, Some(sub));
        assert_eq!(raw, vec![(63 * d + 10 * h, now)]);
        assert_eq!(
            rolled,
            vec![
                (Tier::Hour, 63 * d + 10 * h, 64 * d, -1),
                (Tier::Day, 64 * d, 90 * d, -1),
                (Tier::Month, 59 * d, 90 * d, 1),
            ]
        );
        // The last 30 days: February less its days before the range and the hours of the
        // first day before it, then March less the current hour.
        let (rolled, _) = pieces(now - 30 * d, now, Some(sub));
        assert_eq!(
            rolled,
            vec![
                (Tier::Hour, 33 * d, 33 * d + 11 * h, -1),
                (Tier::Hour, 63 * d + 10 * h, 64 * d, -1),
                (Tier::Day, 31 * d, 33 * d, -1),
                (Tier::Day, 64 * d, 90 * d, -1),
                (Tier::Month, 31 * d, 90 * d, 1),
            ]
        );
        // Today: the day less the current hour.
        assert_eq!(
            pieces(63 * d, now, Some(sub)).0,
            vec![
                (Tier::Hour, 63 * d + 10 * h, 64 * d, -1),
                (Tier::Day, 63 * d, 64 * d, 1),
            ]
        );
    }

    /// Whatever the range, retention cutoff and present, the pieces add up to every hour of
    /// the range's whole hours once and to nothing else; the raw edges are the rest; nothing
    /// is taken from a bucket older than the cutoff.
    #[test]
    fn pieces_cover_each_hour_once() {
        let (d, h) = (DAY_MS, HOUR_MS);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: i64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as i64
        };
        for _ in 0..3_000 {
            let base = 20_000 * d;
            let from = base + next(120 * d);
            let span = if next(2) == 0 { 3 * d } else { 100 * d };
            let to = from + next(span);
            let now = from + next(130 * d) - 10 * d;
            let whole_from = if next(3) == 0 {
                i64::MIN
            } else {
                base + next(120 * d)
            };
            let sub = Subtract { whole_from, now };
            for s in [None, Some(sub)] {
                let (rolled, raw) = pieces(from, to, s);
                let mut hours: BTreeMap<i64, i64> = BTreeMap::new();
                for &(tier, a, b, sign) in &rolled {
                    assert!(a < b, "{rolled:?}");
                    assert_eq!(tier.floor(a), a);
                    let mut t = a;
                    while t < b {
                        *hours.entry(t).or_default() += sign;
                        t += h;
                    }
                    if let Some(sub) = s {
                        assert!(
                            sign > 0 && tier != Tier::Month || a >= sub.whole_from,
                            "{tier:?} {a} before the cutoff {}: {rolled:?}",
                            sub.whole_from
                        );
                    } else {
                        assert!(sign > 0 && tier != Tier::Month);
                    }
                }
                hours.retain(|_, n| *n != 0);
                let h0 = raw.first().filter(|r| r.0 == from).map_or(from, |r| r.1);
                let h1 = raw.last().filter(|r| r.1 == to).map_or(to, |r| r.0);
                let want: BTreeMap<i64, i64> = if rolled.is_empty() {
                    BTreeMap::new()
                } else {
                    (0..)
                        .map(|i| h0 + i * h)
                        .take_while(|t| *t < h1)
                        .map(|t| (t, 1))
                        .collect()
                };
                assert_eq!(hours, want, "[{from}, {to}) {s:?}: {rolled:?}");
                let raw_ms: i64 = raw.iter().map(|(a, b)| b - a).sum();
                let hours_ms = want.len() as i64 * h;
                assert_eq!(raw_ms + hours_ms, to - from, "[{from}, {to}): {raw:?}");
            }
        }
    }
}
