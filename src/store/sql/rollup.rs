//! Rollups of the request log (SPEC §5): time-bucketed totals the log writer keeps in the same
//! transaction as the rows they count, so the analytics queries (`analytics.rs`) read a number
//! of rows that follows the range asked for, not the size of the log.
//!
//! What is kept (`migrations/*/…_rollups.sql`): per [`Dim`] value and [`Tier`] bucket, the
//! request and success counts, tokens by type, cost (micro-USD), the duration sum, and for every
//! dimension but users and keys a [`Dist`]: the HDR duration histogram (quantiles within 0.4 %)
//! and the failed requests by status code. Providers (with their models) have minute buckets as
//! well, for availability; everything has hour and UTC-day buckets. Sessions have one row each
//! (per user) with first and last activity.
//!
//! Exactness: only rows the insert actually stored are added (the SQLite writer checks each
//! row's change count, PostgreSQL's staged path reads `RETURNING`), so a repeated `request_id`
//! is counted in neither. A `Batch` accumulates one write's rows in memory; the dialect's
//! writer then merges it into the tables (SQLite: `sqlite_insert.rs`, one writer anyway;
//! PostgreSQL: `writer/postgres.rs`, under a transaction-level advisory lock, so concurrent
//! writers and replicas merge one at a time and histogram blobs can be merged in Rust).
//! `rebuild.rs` recomputes everything from the raw rows.

use std::collections::{BTreeMap, HashMap};

use compact_str::CompactString;
use sqlx::Row;

use super::{Backend, dispatch, unavailable};
use crate::aggregate::Latency;
use crate::calendar;
use crate::record::{ValidRecord, is_success_status};
use crate::store::StoreError;
use crate::varint;

/// One minute, hour and day in milliseconds.
pub const MINUTE_MS: i64 = 60_000;
/// One hour in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;
/// One (UTC) day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// Bucket sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// One minute (providers only).
    Minute = 0,
    /// One hour.
    Hour = 1,
    /// One UTC day.
    Day = 2,
    /// One UTC calendar month (users and keys only: their month leaderboards).
    Month = 3,
}

impl Tier {
    /// The start of the bucket holding `ts` (epoch ms).
    pub fn floor(self, ts: i64) -> i64 {
        match self {
            Self::Minute => floor(ts, MINUTE_MS),
            Self::Hour => floor(ts, HOUR_MS),
            Self::Day => floor(ts, DAY_MS),
            Self::Month => calendar::utc_month_start(ts),
        }
    }

    /// The start of the bucket after the one starting at `start`.
    pub fn next(self, start: i64) -> i64 {
        match self {
            Self::Minute => start.saturating_add(MINUTE_MS),
            Self::Hour => start.saturating_add(HOUR_MS),
            Self::Day => start.saturating_add(DAY_MS),
            Self::Month => calendar::utc_next_month_start(start),
        }
    }

    /// The `tier` column's value.
    pub const fn code(self) -> i64 {
        self as i64
    }
}

/// What a rollup row is grouped by (the `dim` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// Everything (value and detail empty).
    All = 0,
    /// `user_ref`.
    User = 1,
    /// `key_name`.
    Key = 2,
    /// `provider`, detail the model used; records blocked before forwarding have none.
    Provider = 3,
    /// The model the client asked for (`original_model`, else `model`), detail the model used.
    Model = 4,
    /// `namespace`.
    Namespace = 5,
    /// `endpoint`.
    Endpoint = 6,
}

impl Dim {
    /// The `dim` column's value.
    pub const fn code(self) -> i64 {
        self as i64
    }

    /// Whether rows of this dimension keep a [`Dist`] (users and keys are many and need none).
    pub const fn has_dist(self) -> bool {
        !matches!(self, Self::User | Self::Key)
    }

    /// Whether this dimension has month buckets: users and keys, whose month leaderboards would
    /// otherwise sum a day row per value and day (10,000 users: 300,000 rows).
    pub const fn has_months(self) -> bool {
        !self.has_dist()
    }

    fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            0 => Self::All,
            1 => Self::User,
            2 => Self::Key,
            3 => Self::Provider,
            4 => Self::Model,
            5 => Self::Namespace,
            6 => Self::Endpoint,
            _ => return None,
        })
    }
}

/// The request-log columns a rollup needs, in this order (for reading raw rows back).
pub(crate) const FACT_COLUMNS: &str = "ts_ms, namespace, user_ref, key_name, provider, model, \
     original_model, endpoint, status, duration_ms, input_tokens, output_tokens, \
     cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, cost_micros, session_id";

/// What a rollup needs of one stored row, borrowed from a record or a [`FactRow`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fact<'a> {
    pub ts_ms: i64,
    pub namespace: &'a str,
    pub user: Option<&'a str>,
    pub key: Option<&'a str>,
    pub provider: &'a str,
    pub model: &'a str,
    pub original_model: Option<&'a str>,
    pub endpoint: &'a str,
    pub status: i64,
    pub duration_ms: i64,
    pub tokens: [i64; 5],
    pub cost_micros: i64,
    pub session_id: Option<&'a str>,
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl<'a> Fact<'a> {
    /// The fact of a record as the writer stores it.
    pub fn of(r: &'a ValidRecord) -> Self {
        let t = &r.tokens;
        Self {
            ts_ms: r.timestamp_ms,
            namespace: r.namespace.as_str(),
            // `user_ref`: what a user token and the log's `user` filter match.
            user: r.user_id.as_deref().or(r.user.as_deref()),
            key: r.key.as_deref(),
            provider: r.provider.as_str(),
            model: r.model.as_str(),
            original_model: r.original_model.as_ref().map(|m| m.as_str()),
            endpoint: r.endpoint.as_str(),
            status: i64::from(r.status),
            // As stored: whole ms, so a rebuild from the rows adds the same.
            duration_ms: int(r.duration_ms.whole_ms()),
            tokens: [
                int(t.input),
                int(t.output),
                int(t.cache_write_5m),
                int(t.cache_write_1h),
                int(t.cache_read),
            ],
            cost_micros: int(r.cost_micros),
            session_id: r.session_id.as_deref(),
        }
    }

    fn success(&self) -> bool {
        u16::try_from(self.status).is_ok_and(is_success_status)
    }
}

/// A stored row read back ([`FACT_COLUMNS`]), owning its text.
#[derive(Debug, Clone, Default)]
pub(crate) struct FactRow {
    ts_ms: i64,
    text: [Option<String>; 7],
    numbers: [i64; 8],
    session_id: Option<String>,
}

impl FactRow {
    /// Reads [`FACT_COLUMNS`] starting at column `at` of `row`.
    pub fn read<'r, R>(row: &'r R, at: usize) -> Result<Self, sqlx::Error>
    where
        R: Row,
        usize: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let mut f = Self {
            ts_ms: row.try_get(at)?,
            ..Self::default()
        };
        for (i, t) in f.text.iter_mut().enumerate() {
            *t = row.try_get(at + 1 + i)?;
        }
        for (i, n) in f.numbers.iter_mut().enumerate() {
            *n = row.try_get(at + 8 + i)?;
        }
        f.session_id = row.try_get(at + 16)?;
        Ok(f)
    }

    /// A row from its [`FACT_COLUMNS`] values: start, the seven text columns, the eight
    /// numbers, the session.
    pub fn from_columns(
        ts_ms: i64,
        text: [Option<String>; 7],
        numbers: [i64; 8],
        session_id: Option<String>,
    ) -> Self {
        Self {
            ts_ms,
            text,
            numbers,
            session_id,
        }
    }

    /// The row as a [`Fact`].
    pub fn fact(&self) -> Fact<'_> {
        let s = |i: usize| self.text[i].as_deref();
        let n = &self.numbers;
        Fact {
            ts_ms: self.ts_ms,
            namespace: s(0).unwrap_or(""),
            user: s(1),
            key: s(2),
            provider: s(3).unwrap_or(""),
            model: s(4).unwrap_or(""),
            original_model: s(5),
            endpoint: s(6).unwrap_or(""),
            status: n[0],
            duration_ms: n[1],
            tokens: [n[2], n[3], n[4], n[5], n[6]],
            cost_micros: n[7],
            session_id: self.session_id.as_deref(),
        }
    }
}

/// The additive totals of a rollup or session row, in the order of `COUNT_COLUMNS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests.
    pub requests: i64,
    /// Requests with a 2xx or 3xx status.
    pub successes: i64,
    /// Tokens: input, output, cache write 5 m, cache write 1 h, cache read.
    pub tokens: [i64; 5],
    /// Cost, micro-USD.
    pub cost_micros: i64,
    /// Sum of durations, ms.
    pub duration_ms_sum: i64,
}

/// The count columns of both rollup tables, in [`Counts::values`] order.
pub(crate) const COUNT_COLUMNS: [&str; 9] = [
    "requests",
    "successes",
    "input_tokens",
    "output_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "cost_micros",
    "duration_ms_sum",
];

impl Counts {
    fn add_fact(&mut self, f: &Fact<'_>) {
        self.requests += 1;
        self.successes += i64::from(f.success());
        for (t, n) in self.tokens.iter_mut().zip(f.tokens) {
            *t += n;
        }
        self.cost_micros += f.cost_micros;
        self.duration_ms_sum += f.duration_ms;
    }

    /// Adds `o`.
    pub fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.successes += o.successes;
        for (t, n) in self.tokens.iter_mut().zip(o.tokens) {
            *t += n;
        }
        self.cost_micros += o.cost_micros;
        self.duration_ms_sum += o.duration_ms_sum;
    }

    /// Takes `o` away (a month bucket less the days of it outside a range).
    pub fn subtract(&mut self, o: &Counts) {
        self.requests -= o.requests;
        self.successes -= o.successes;
        for (t, n) in self.tokens.iter_mut().zip(o.tokens) {
            *t -= n;
        }
        self.cost_micros -= o.cost_micros;
        self.duration_ms_sum -= o.duration_ms_sum;
    }

    /// The values in `COUNT_COLUMNS` order.
    pub fn values(&self) -> [i64; 9] {
        let t = self.tokens;
        [
            self.requests,
            self.successes,
            t[0],
            t[1],
            t[2],
            t[3],
            t[4],
            self.cost_micros,
            self.duration_ms_sum,
        ]
    }

    /// From values in `COUNT_COLUMNS` order.
    pub fn from_values(v: [i64; 9]) -> Self {
        Self {
            requests: v[0],
            successes: v[1],
            tokens: [v[2], v[3], v[4], v[5], v[6]],
            cost_micros: v[7],
            duration_ms_sum: v[8],
        }
    }

    /// Reads `COUNT_COLUMNS` starting at column `at` of `row`.
    pub(crate) fn read<'r, R>(row: &'r R, at: usize) -> Result<Self, sqlx::Error>
    where
        R: Row,
        usize: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let mut v = [0i64; 9];
        for (i, x) in v.iter_mut().enumerate() {
            *x = row.try_get(at + i)?;
        }
        Ok(Self::from_values(v))
    }

    /// Total tokens of every type.
    pub fn total_tokens(&self) -> i64 {
        self.tokens.iter().sum()
    }
}

/// The duration distribution and the failures by status code of a rollup row.
#[derive(Debug, Clone, Default)]
pub struct Dist {
    /// Durations, ms.
    pub latency: Latency,
    /// Failed requests (not 2xx/3xx) by status code (0: no response).
    pub errors: BTreeMap<u16, u64>,
}

const DIST_VERSION: u8 = 1;

impl Dist {
    fn record(&mut self, f: &Fact<'_>) {
        self.latency
            .record(u64::try_from(f.duration_ms).unwrap_or(0));
        if !f.success() {
            let code = u16::try_from(f.status).unwrap_or(0);
            *self.errors.entry(code).or_default() += 1;
        }
    }

    /// Adds every value of `o`.
    pub fn merge(&mut self, o: &Dist) {
        self.latency.merge(&o.latency);
        for (code, n) in &o.errors {
            *self.errors.entry(*code).or_default() += n;
        }
    }

    /// The `dist` column's bytes: a version byte, the histogram ([`Latency::encode_into`]),
    /// then the number of status codes and per code the code and its count, as varints.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![DIST_VERSION];
        self.latency.encode_into(&mut out);
        varint::put(&mut out, self.errors.len() as u64);
        for (code, n) in &self.errors {
            varint::put(&mut out, u64::from(*code));
            varint::put(&mut out, *n);
        }
        out
    }

    /// Adds the distribution encoded in `b` ([`Dist::encode`]); `None` when `b` is not one
    /// (nothing is added then).
    ///
    /// Read in two passes, a check and then the adding, straight into `self`: no temporary
    /// histogram (a dense one is ~21 KiB to clear and then to add whole, which was most of an
    /// availability answer's time when it read thousands of rows).
    pub fn decode_into(&mut self, b: &[u8]) -> Option<()> {
        let (&version, rest) = b.split_first()?;
        if version != DIST_VERSION {
            return None;
        }
        Self::walk(rest, |_, _| {}, |_, _| {})?;
        Self::walk(
            rest,
            |v, n| self.latency.record_n(v, n),
            |code, n| *self.errors.entry(code).or_default() += n,
        )
    }

    /// Reads the bytes after the version, calling `value` per histogram bucket and `error` per
    /// status code; `None` unless they are exactly one encoded distribution.
    fn walk(
        rest: &[u8],
        value: impl FnMut(u64, u64),
        mut error: impl FnMut(u16, u64),
    ) -> Option<()> {
        let mut i = 0;
        Latency::walk_encoded(rest, &mut i, value)?;
        for _ in 0..varint::get(rest, &mut i)? {
            let code = u16::try_from(varint::get(rest, &mut i)?).ok()?;
            error(code, varint::get(rest, &mut i)?);
        }
        (i == rest.len()).then_some(())
    }
}

/// Which rollup row: dimension, tier, bucket start, value, detail.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct CellKey {
    pub dim: Dim,
    pub tier: Tier,
    pub bucket_ms: i64,
    pub value: CompactString,
    pub detail: CompactString,
}

/// One rollup row's totals: counts, and the distribution where the dimension keeps one.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    /// The additive totals.
    pub counts: Counts,
    /// Durations and failures by status (not for users and keys).
    pub dist: Option<Dist>,
}

impl Cell {
    /// Adds `o`.
    pub fn merge_from(&mut self, o: &Cell) {
        self.merge(o);
    }

    fn merge(&mut self, o: &Cell) {
        self.counts.add(&o.counts);
        if let Some(d) = &o.dist {
            self.dist.get_or_insert_with(Dist::default).merge(d);
        }
    }
}

/// One session row's increments (keyed by session id and user, `""` for none).
#[derive(Debug, Clone)]
pub(crate) struct SessionCell {
    pub namespace: CompactString,
    pub first_ms: i64,
    pub last_ms: i64,
    pub counts: Counts,
}

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// A session row's key: session id and user (`""` for none).
pub(crate) type SessionKey = (CompactString, CompactString);

/// What [`Batch::into_rows`] gives: rollup rows and session rows, each in key order.
pub(crate) type Rows = (Vec<(CellKey, Cell)>, Vec<(SessionKey, SessionCell)>);

/// The rollup increments of one write, accumulated in memory.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    cells: Map<CellKey, Cell>,
    sessions: Map<SessionKey, SessionCell>,
}

/// What a row shares with many others ([`Batch::add_all`]): the five cells with a [`Dist`]
/// it adds to are those of every row with the same key.
#[derive(PartialEq, Eq, Hash)]
struct SharedKey<'a> {
    hour: i64,
    /// The row's minute when it has a provider (for its provider's minute cell), else its hour.
    minute: i64,
    provider: &'a str,
    model: &'a str,
    /// The model the client asked for (`original_model`, else `model`).
    asked: &'a str,
    namespace: &'a str,
    endpoint: &'a str,
}

/// `ts` rounded down to a multiple of `size` (also before 1970; saturating at `i64::MIN`).
pub fn floor(ts: i64, size: i64) -> i64 {
    ts.saturating_sub(ts.rem_euclid(size))
}

impl Batch {
    /// The journal blob ([`Batch::encode`]) of the rows at `positions` of `batch`, added in
    /// arrival order whatever order they were inserted in (the order matters where a session
    /// spans namespaces: its row keeps its first record's), so both writers journal the same;
    /// `None` when they add nothing.
    pub fn journal_of(batch: &[Box<ValidRecord>], mut positions: Vec<usize>) -> Option<Vec<u8>> {
        positions.sort_unstable();
        let mut added = Batch::default();
        added.add_all(positions.into_iter().map(|i| Fact::of(&batch[i])));
        (!added.is_empty()).then(|| added.encode())
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty() && self.sessions.is_empty()
    }

    /// Adds `c` to the cell of `dim`, `tier`, `bucket_ms`, `value`, `detail`.
    fn merge_cell(
        &mut self,
        (dim, tier, bucket_ms): (Dim, Tier, i64),
        value: &str,
        detail: &str,
        c: &Cell,
    ) {
        let key = CellKey {
            dim,
            tier,
            bucket_ms,
            value: value.into(),
            detail: detail.into(),
        };
        self.cells.entry(key).or_default().merge(c);
    }

    /// Adds stored rows, in arrival order (a session's row keeps its first record's namespace):
    /// per row its minute (providers) and hour buckets, and its session; hour buckets of
    /// providers and every day bucket are derived in [`Batch::into_rows`].
    ///
    /// Rows are first added up by what they share with many others (the hour and minute,
    /// provider, models, namespace and endpoint: the five cells with a [`Dist`]), by user, by
    /// key and by session, in maps keyed by the rows' own text; each group then goes into its
    /// cells once. A row costs four hash probes and one histogram record instead of seven and
    /// five, and no text is copied for it.
    pub fn add_all<'a>(&mut self, facts: impl IntoIterator<Item = Fact<'a>>) {
        let facts = facts.into_iter();
        // Users and sessions are many: sized for a quarter of the rows at once (grown by
        // doubling from empty, their tables were rehashed ~10 % of the time).
        let many = facts.size_hint().0 / 4;
        let mut shared: Map<SharedKey<'a>, Cell> = Map::default();
        let mut users: Map<(i64, &'a str), Counts> =
            Map::with_capacity_and_hasher(many, <_>::default());
        let mut keys: Map<(i64, &'a str), Counts> = Map::default();
        let mut sessions: Map<(&'a str, &'a str), SessionCell> =
            Map::with_capacity_and_hasher(many, <_>::default());
        for f in facts {
            let hour = floor(f.ts_ms, HOUR_MS);
            let key = SharedKey {
                hour,
                minute: match f.provider {
                    "" => hour,
                    _ => floor(f.ts_ms, MINUTE_MS),
                },
                provider: f.provider,
                model: f.model,
                asked: f.original_model.unwrap_or(f.model),
                namespace: f.namespace,
                endpoint: f.endpoint,
            };
            let cell = shared.entry(key).or_default();
            cell.counts.add_fact(&f);
            cell.dist.get_or_insert_with(Dist::default).record(&f);
            if let Some(u) = f.user {
                users.entry((hour, u)).or_default().add_fact(&f);
            }
            if let Some(k) = f.key {
                keys.entry((hour, k)).or_default().add_fact(&f);
            }
            if let Some(s) = f.session_id {
                let session = sessions
                    .entry((s, f.user.unwrap_or("")))
                    .or_insert_with(|| SessionCell {
                        namespace: f.namespace.into(),
                        first_ms: f.ts_ms,
                        last_ms: f.ts_ms,
                        counts: Counts::default(),
                    });
                session.first_ms = session.first_ms.min(f.ts_ms);
                session.last_ms = session.last_ms.max(f.ts_ms);
                session.counts.add_fact(&f);
            }
        }
        for (k, c) in &shared {
            let hour = |dim| (dim, Tier::Hour, k.hour);
            if !k.provider.is_empty() {
                let minute = (Dim::Provider, Tier::Minute, k.minute);
                self.merge_cell(minute, k.provider, k.model, c);
            }
            self.merge_cell(hour(Dim::All), "", "", c);
            self.merge_cell(hour(Dim::Model), k.asked, k.model, c);
            self.merge_cell(hour(Dim::Namespace), k.namespace, "", c);
            self.merge_cell(hour(Dim::Endpoint), k.endpoint, "", c);
        }
        for (dim, groups) in [(Dim::User, users), (Dim::Key, keys)] {
            for ((hour, value), counts) in groups {
                let cell = Cell { counts, dist: None };
                self.merge_cell((dim, Tier::Hour, hour), value, "", &cell);
            }
        }
        for ((id, user), cell) in sessions {
            self.add_session((id.into(), user.into()), cell);
        }
    }

    /// The cells of `dim` as added (providers by minute, the rest by hour; nothing derived).
    pub fn cells_of(&self, dim: Dim) -> Vec<(CellKey, Cell)> {
        self.cells
            .iter()
            .filter(|(k, _)| k.dim == dim)
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect()
    }

    /// Every row to merge into the tables, in key order (so concurrent writers of PostgreSQL,
    /// serialized anyway, would also lock rows in one order): the cells added, the provider
    /// hours from their minutes, the days from the hours, the months of users and keys from
    /// their days.
    pub fn into_rows(self) -> Rows {
        let mut cells: BTreeMap<CellKey, Cell> = self.cells.into_iter().collect();
        for (from, to) in [
            (Tier::Minute, Tier::Hour),
            (Tier::Hour, Tier::Day),
            (Tier::Day, Tier::Month),
        ] {
            let derived: Vec<(CellKey, Cell)> = cells
                .iter()
                .filter(|(k, _)| k.tier == from && (to != Tier::Month || k.dim.has_months()))
                .map(|(k, c)| {
                    let mut k = k.clone();
                    k.tier = to;
                    k.bucket_ms = to.floor(k.bucket_ms);
                    (k, c.clone())
                })
                .collect();
            for (k, c) in derived {
                cells.entry(k).or_default().merge(&c);
            }
        }
        let mut sessions: Vec<_> = self.sessions.into_iter().collect();
        sessions.sort_by(|a, b| a.0.cmp(&b.0));
        (cells.into_iter().collect(), sessions)
    }
}

const JOURNAL_VERSION: u8 = 1;

fn put_i64(out: &mut Vec<u8>, v: i64) {
    varint::put(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn get_i64(b: &[u8], i: &mut usize) -> Option<i64> {
    let v = varint::get(b, i)?;
    Some(((v >> 1) as i64) ^ -((v & 1) as i64))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    varint::put(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn get_str(b: &[u8], i: &mut usize) -> Option<CompactString> {
    let n = usize::try_from(varint::get(b, i)?).ok()?;
    let bytes = b.get(*i..i.checked_add(n)?)?;
    *i += n;
    std::str::from_utf8(bytes).ok().map(CompactString::from)
}

fn put_counts(out: &mut Vec<u8>, c: &Counts) {
    for v in c.values() {
        put_i64(out, v);
    }
}

fn get_counts(b: &[u8], i: &mut usize) -> Option<Counts> {
    let mut v = [0i64; 9];
    for x in &mut v {
        *x = get_i64(b, i)?;
    }
    Some(Counts::from_values(v))
}

impl Batch {
    /// The batch as a `rollup_pending.delta` blob: a version byte; the number of cells and per
    /// cell dim, tier, bucket, value, detail, counts and its [`Dist::encode`] bytes (length 0:
    /// none); the number of sessions and per session id, user, namespace, first, last, counts.
    /// Integers are varints (signed ones zigzag), text is length-prefixed UTF-8.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![JOURNAL_VERSION];
        varint::put(&mut out, self.cells.len() as u64);
        for (k, c) in &self.cells {
            varint::put(&mut out, k.dim.code() as u64);
            varint::put(&mut out, k.tier.code() as u64);
            put_i64(&mut out, k.bucket_ms);
            put_str(&mut out, &k.value);
            put_str(&mut out, &k.detail);
            put_counts(&mut out, &c.counts);
            let dist = c.dist.as_ref().map(Dist::encode).unwrap_or_default();
            varint::put(&mut out, dist.len() as u64);
            out.extend_from_slice(&dist);
        }
        varint::put(&mut out, self.sessions.len() as u64);
        for ((id, user), s) in &self.sessions {
            put_str(&mut out, id);
            put_str(&mut out, user);
            put_str(&mut out, &s.namespace);
            put_i64(&mut out, s.first_ms);
            put_i64(&mut out, s.last_ms);
            put_counts(&mut out, &s.counts);
        }
        out
    }

    /// Adds the batch encoded in `b` ([`Batch::encode`]); `None` (and nothing added) when `b`
    /// is not one.
    pub fn decode_into(&mut self, b: &[u8]) -> Option<()> {
        let mut other = Batch::default();
        let (&version, b) = b.split_first()?;
        if version != JOURNAL_VERSION {
            return None;
        }
        let i = &mut 0;
        for _ in 0..varint::get(b, i)? {
            let dim = Dim::from_code(varint::get(b, i)?)?;
            let tier = match varint::get(b, i)? {
                0 => Tier::Minute,
                1 => Tier::Hour,
                2 => Tier::Day,
                3 => Tier::Month,
                _ => return None,
            };
            let key = CellKey {
                dim,
                tier,
                bucket_ms: get_i64(b, i)?,
                value: get_str(b, i)?,
                detail: get_str(b, i)?,
            };
            let counts = get_counts(b, i)?;
            let n = usize::try_from(varint::get(b, i)?).ok()?;
            let bytes = b.get(*i..i.checked_add(n)?)?;
            *i += n;
            let dist = match n {
                0 => None,
                _ => {
                    let mut d = Dist::default();
                    d.decode_into(bytes)?;
                    Some(d)
                }
            };
            other
                .cells
                .entry(key)
                .or_default()
                .merge(&Cell { counts, dist });
        }
        for _ in 0..varint::get(b, i)? {
            let key = (get_str(b, i)?, get_str(b, i)?);
            let cell = SessionCell {
                namespace: get_str(b, i)?,
                first_ms: get_i64(b, i)?,
                last_ms: get_i64(b, i)?,
                counts: get_counts(b, i)?,
            };
            other.add_session(key, cell);
        }
        if *i != b.len() {
            return None;
        }
        self.absorb(other);
        Some(())
    }

    /// Adds every cell and session of `other`.
    pub fn absorb(&mut self, other: Batch) {
        if self.is_empty() {
            *self = other;
            return;
        }
        for (k, c) in other.cells {
            self.cells.entry(k).or_default().merge(&c);
        }
        for (k, s) in other.sessions {
            self.add_session(k, s);
        }
    }

    fn add_session(&mut self, key: SessionKey, cell: SessionCell) {
        match self.sessions.entry(key) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(cell);
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let s = o.get_mut();
                s.first_ms = s.first_ms.min(cell.first_ms);
                s.last_ms = s.last_ms.max(cell.last_ms);
                s.counts.add(&cell.counts);
            }
        }
    }
}

/// The rollup upsert of one row, `?1` … `?15`: key, counts, dist. Counts add; the dist is
/// replaced by what the writer merged (it read the stored one first).
pub(crate) fn upsert_sql(first: &str, rows_from: &str) -> String {
    let counts = COUNT_COLUMNS.join(", ");
    let set: Vec<String> = COUNT_COLUMNS
        .iter()
        .map(|c| format!("{c} = rollup.{c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO rollup (dim, tier, bucket_ms, value, detail, {counts}, dist) {first}{rows_from} \
         ON CONFLICT (dim, tier, bucket_ms, value, detail) DO UPDATE SET {}, dist = excluded.dist",
        set.join(", ")
    )
}

/// The session upsert: counts add, first and last activity widen (`min`/`max` are the
/// dialect's two-argument functions: SQLite `min`, PostgreSQL `LEAST`).
pub(crate) fn session_upsert_sql(rows_from: &str, min: &str, max: &str) -> String {
    let counts = COUNT_COLUMNS.join(", ");
    let set: Vec<String> = COUNT_COLUMNS
        .iter()
        .map(|c| format!("{c} = session_rollup.{c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO session_rollup (session_id, user_ref, namespace, first_ms, last_ms, {counts}) \
         {rows_from} ON CONFLICT (session_id, user_ref) DO UPDATE SET \
         first_ms = {min}(session_rollup.first_ms, excluded.first_ms), \
         last_ms = {max}(session_rollup.last_ms, excluded.last_ms), {}",
        set.join(", ")
    )
}

/// Says at start when the log holds rows but no rollups (written before rollups existed, or
/// with them off): the analytics API would not count those rows until a rebuild.
pub(crate) async fn warn_if_missing(backend: &Backend) {
    let found: Result<(bool, bool), sqlx::Error> = dispatch!(backend, p, DB => {
        sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM request_log), EXISTS (SELECT 1 FROM rollup)",
        )
        .fetch_one(p)
        .await
    });
    if let Ok((true, false)) = found {
        tracing::warn!(
            "request log: it holds rows but no rollups (written before rollups existed, or with \
             log_store.rollups off), so the analytics API does not count them yet: stop the \
             servers writing to this log and run `gatemeter rollup rebuild`"
        );
    }
}

/// Deletes rollup buckets that end at or before `cutoff_ms` and sessions last active before it
/// (the retention of the raw rows: a bucket the cutoff cuts through stays whole until it ends).
pub(crate) async fn purge_before(backend: &Backend, cutoff_ms: i64) -> Result<u64, StoreError> {
    let mut total = 0;
    dispatch!(backend, p, DB => {
        for tier in [Tier::Minute, Tier::Hour, Tier::Day, Tier::Month] {
            // A bucket ends at or before the cutoff when it starts before the cutoff's own.
            total += sqlx::query("DELETE FROM rollup WHERE tier = $1 AND bucket_ms < $2")
                .bind(tier.code())
                .bind(tier.floor(cutoff_ms))
                .execute(p)
                .await
                .map_err(unavailable)?
                .rows_affected();
        }
        total += sqlx::query("DELETE FROM session_rollup WHERE last_ms < $1")
            .bind(cutoff_ms)
            .execute(p)
            .await
            .map_err(unavailable)?
            .rows_affected();
    });
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(ts_ms: i64, provider: &'static str, status: i64, duration_ms: i64) -> Fact<'static> {
        Fact {
            ts_ms,
            namespace: "ns",
            user: Some("u"),
            key: None,
            provider,
            model: "m",
            original_model: Some("asked"),
            endpoint: "/v1/messages",
            status,
            duration_ms,
            tokens: [1, 2, 3, 4, 5],
            cost_micros: 7,
            session_id: Some("s"),
        }
    }

    /// The writers hand `journal_of` their rows in the insert order; a session that spans
    /// namespaces keeps the namespace of its first record in arrival order all the same.
    #[test]
    fn a_journal_is_the_same_whatever_the_order_rows_are_added_in() {
        let rec = |ns: &str, session: &str, user: &str, ts: i64| {
            let mut r = crate::record::test_record(
                r#"{"model": "m", "status": 200, "duration_ms": 3}"#,
                ts,
            );
            r.namespace = ns.into();
            r.session_id = Some(session.into());
            r.user = Some(user.into());
            r
        };
        let batch = vec![
            rec("first", "s1", "u", 1_000),
            rec("second", "s1", "u", 2_000),
            rec("other", "s2", "u", 1_500),
            rec("third", "s1", "u", 500),
            rec("other", "s2", "v", 1_600),
            rec("other", "s2", "u", 1_700),
        ];
        let sessions = |positions: Vec<usize>| {
            let mut b = Batch::default();
            b.decode_into(&Batch::journal_of(&batch, positions).expect("rows"))
                .expect("a journal");
            let (_, sessions) = b.into_rows();
            sessions
                .into_iter()
                .map(|((id, user), s)| {
                    let who = format!("{id}/{user}");
                    (
                        who,
                        s.namespace.to_string(),
                        s.counts.requests,
                        s.first_ms,
                        s.last_ms,
                    )
                })
                .collect::<Vec<_>>()
        };
        let expected = [
            ("s1/u".to_string(), "first".to_string(), 3, 500, 2_000),
            ("s2/u".to_string(), "other".to_string(), 2, 1_500, 1_700),
            ("s2/v".to_string(), "other".to_string(), 1, 1_600, 1_600),
        ];
        for positions in [
            vec![0, 1, 2, 3, 4, 5],
            vec![3, 1, 0, 5, 4, 2],
            vec![2, 4, 5, 1, 3, 0],
        ] {
            assert_eq!(sessions(positions.clone()), expected, "{positions:?}");
        }
    }

    #[test]
    fn hours_and_days_are_derived_from_the_finest_buckets() {
        let mut b = Batch::default();
        b.add_all([
            fact(HOUR_MS + 1, "p", 200, 10),
            fact(HOUR_MS + MINUTE_MS, "p", 503, 30),
            fact(2 * HOUR_MS, "", 403, 5),
        ]);
        let (cells, sessions) = b.into_rows();
        let get = |dim, tier, bucket: i64, value: &str| {
            cells
                .iter()
                .find(|(k, _)| {
                    k.dim == dim && k.tier == tier && k.bucket_ms == bucket && k.value == value
                })
                .map(|(_, c)| c.clone())
        };
        let minutes = cells.iter().filter(|(k, _)| k.tier == Tier::Minute).count();
        assert_eq!(
            minutes, 2,
            "two provider minutes; a blocked record has none"
        );
        let hour = get(Dim::Provider, Tier::Hour, HOUR_MS, "p").expect("provider hour");
        assert_eq!((hour.counts.requests, hour.counts.successes), (2, 1));
        let dist = hour.dist.expect("providers keep a dist");
        assert_eq!(dist.errors, BTreeMap::from([(503, 1)]));
        let day = get(Dim::All, Tier::Day, 0, "").expect("day");
        assert_eq!(day.counts.requests, 3);
        assert_eq!(day.counts.tokens, [3, 6, 9, 12, 15]);
        assert_eq!(day.counts.cost_micros, 21);
        assert_eq!(day.counts.duration_ms_sum, 45);
        let model = get(Dim::Model, Tier::Day, 0, "asked").expect("requested model");
        assert_eq!(model.counts.requests, 3);
        assert!(
            get(Dim::User, Tier::Day, 0, "u")
                .expect("user")
                .dist
                .is_none()
        );
        assert_eq!(sessions.len(), 1);
        let s = &sessions[0].1;
        assert_eq!(
            (s.first_ms, s.last_ms, s.counts.requests),
            (HOUR_MS + 1, 2 * HOUR_MS, 3)
        );
    }

    /// Rows added together (grouped by what they share, then spread over their cells) or one
    /// by one give exactly each row's cells added one by one: every cell, distribution and
    /// session.
    #[test]
    fn rows_added_together_add_what_each_adds_alone() {
        let (providers, models) = (["p", "q", ""], ["m1", "m2", "m3", "m4"]);
        let (users, keys) = ([Some("u1"), Some("u2"), None], [Some("k1"), None]);
        let (namespaces, endpoints) = (["ns", "other"], ["/v1/messages", "/v1/chat"]);
        let facts: Vec<Fact<'static>> = (0..600i64)
            .map(|i| {
                let n = i as usize;
                let mut f = fact(
                    i * 7 * MINUTE_MS / 3 - DAY_MS,
                    providers[n % 3],
                    [200, 200, 503, 429, 0][n % 5],
                    (i * 37) % 900,
                );
                f.model = models[n % 4];
                f.original_model = n.is_multiple_of(3).then_some("asked");
                f.user = users[n % 3];
                f.key = keys[n % 2];
                f.namespace = namespaces[(n / 7) % 2];
                f.endpoint = endpoints[n % 2];
                f.session_id = [Some("s1"), Some("s2"), None, Some("s3")][n % 4];
                f.tokens = [i, 2 * i, 3, i % 5, 7];
                f.cost_micros = i * 11;
                f
            })
            .collect();
        let mut together = Batch::default();
        together.add_all(facts.iter().copied());
        let mut alone = Batch::default();
        for f in &facts {
            alone.add_all([*f]);
        }
        let show = |b: Batch| format!("{:?}", b.into_rows());
        let want = show(by_the_rules(&facts));
        assert!(
            want.contains("Minute") && want.contains("errors: {0: "),
            "{want}"
        );
        assert_eq!(show(together), want, "together");
        assert_eq!(show(alone), want, "alone");
    }

    /// SPEC §5's cells of each row, one by one, as the first writer added them: the model the
    /// grouped [`Batch::add_all`] is checked against.
    fn by_the_rules(facts: &[Fact<'_>]) -> Batch {
        let mut b = Batch::default();
        for f in facts {
            let mut one = Cell::default();
            one.counts.add_fact(f);
            let mut with_dist = one.clone();
            with_dist.dist.get_or_insert_with(Dist::default).record(f);
            let hour = floor(f.ts_ms, HOUR_MS);
            let h = |dim| (dim, Tier::Hour, hour);
            if !f.provider.is_empty() {
                let minute = (Dim::Provider, Tier::Minute, floor(f.ts_ms, MINUTE_MS));
                b.merge_cell(minute, f.provider, f.model, &with_dist);
            }
            b.merge_cell(h(Dim::All), "", "", &with_dist);
            if let Some(u) = f.user {
                b.merge_cell(h(Dim::User), u, "", &one);
            }
            if let Some(k) = f.key {
                b.merge_cell(h(Dim::Key), k, "", &one);
            }
            let asked = f.original_model.unwrap_or(f.model);
            b.merge_cell(h(Dim::Model), asked, f.model, &with_dist);
            b.merge_cell(h(Dim::Namespace), f.namespace, "", &with_dist);
            b.merge_cell(h(Dim::Endpoint), f.endpoint, "", &with_dist);
            if let Some(s) = f.session_id {
                let session = SessionCell {
                    namespace: f.namespace.into(),
                    first_ms: f.ts_ms,
                    last_ms: f.ts_ms,
                    counts: one.counts,
                };
                b.add_session((s.into(), f.user.unwrap_or("").into()), session);
            }
        }
        b
    }

    #[test]
    fn dist_round_trips_and_refuses_garbage() {
        let mut d = Dist::default();
        for (i, status) in [200, 500, 500, 0].into_iter().enumerate() {
            d.record(&fact(0, "p", status, 100 * (i as i64 + 1)));
        }
        let bytes = d.encode();
        let mut back = Dist::default();
        back.decode_into(&bytes).expect("decodes");
        back.decode_into(&bytes).expect("adds");
        assert_eq!(back.latency.count(), 8);
        assert_eq!(back.errors, BTreeMap::from([(0, 2), (500, 4)]));
        let mut untouched = Dist::default();
        assert!(untouched.decode_into(&bytes[..bytes.len() - 1]).is_none());
        assert!(untouched.decode_into(&[9, 0, 0]).is_none());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(untouched.decode_into(&trailing).is_none());
        assert_eq!(untouched.latency.count(), 0, "a bad blob adds nothing");
        assert!(untouched.errors.is_empty());
    }

    #[test]
    fn a_journal_blob_adds_what_its_batch_held() {
        let mut b = Batch::default();
        b.add_all([fact(HOUR_MS + 1, "p", 200, 10), fact(-DAY_MS, "p", 503, 30)]);
        let mut other = Batch::default();
        other.add_all([fact(2 * HOUR_MS, "", 403, 5)]);
        let blob = b.encode();
        let mut back = Batch::default();
        back.decode_into(&blob).expect("decodes");
        back.decode_into(&other.encode()).expect("adds");
        b.absorb(other);
        let (want, want_sessions) = b.into_rows();
        let (got, got_sessions) = back.into_rows();
        let show = |rows: &[(CellKey, Cell)]| format!("{rows:?}");
        assert_eq!(show(&got), show(&want));
        assert_eq!(format!("{got_sessions:?}"), format!("{want_sessions:?}"));
        let mut untouched = Batch::default();
        assert!(untouched.decode_into(&blob[..blob.len() - 1]).is_none());
        assert!(untouched.decode_into(&[JOURNAL_VERSION + 1]).is_none());
        assert!(untouched.is_empty());
    }

    #[test]
    fn users_and_keys_have_months() {
        let mut b = Batch::default();
        let mut f = fact(31 * DAY_MS + 5, "p", 200, 10);
        f.key = Some("k");
        b.add_all([f]);
        let (cells, _) = b.into_rows();
        let months: Vec<_> = cells
            .iter()
            .filter(|(k, _)| k.tier == Tier::Month)
            .map(|(k, c)| (k.dim, k.bucket_ms, c.counts.requests))
            .collect();
        // February 1970 starts on day 31.
        assert_eq!(
            months,
            vec![(Dim::User, 31 * DAY_MS, 1), (Dim::Key, 31 * DAY_MS, 1)]
        );
    }

    #[test]
    fn buckets_round_down_before_1970_too() {
        assert_eq!(floor(-1, MINUTE_MS), -MINUTE_MS);
        assert_eq!(floor(MINUTE_MS, MINUTE_MS), MINUTE_MS);
        assert_eq!(floor(i64::MIN + 1, DAY_MS), i64::MIN, "saturates");
        assert_eq!(floor(i64::MAX, DAY_MS) % DAY_MS, 0);
    }
}
