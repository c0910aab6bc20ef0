//! The analytics API (SPEC §6.3), answered from the request log's rollups
//! (`store/sql/analytics.rs`) and, for API keys, from the live store:
//!
//! - `GET /api/v1/leaderboard` — scope user / key / provider / model, period today / week /
//!   month / custom, sorted by cost, requests or tokens;
//! - `GET /api/v1/sessions`, `GET /api/v1/sessions/{id}` — active or inactive sessions, one
//!   session's totals and requests in order;
//! - `GET /api/v1/availability` — per provider (and model) buckets: availability, P50/P95/P99,
//!   errors by status code, and a status green / red / unknown;
//! - `GET /api/v1/overview` — today's totals;
//! - `GET /api/v1/keys`, `GET /api/v1/keys/{key}` — API key stats.
//!
//! Periods follow `analytics.time_zone`. Parameters are strict (an unknown, repeated, empty or
//! malformed one is a 400 naming it). A user token is answered from its own rows only; its
//! leaderboards show only its own line unless `analytics.users_see_leaderboards`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::aggregate::ScopeKey;
use crate::api::auth::{Access, Auth, Principal};
use crate::api::logs::{bad, params, parse_num, store_error};
use crate::api::{ApiError, NeedsLogError, NotFoundError, QueryErrors};
use crate::calendar::{Period, Zone};
use crate::clock::now_ms;
use crate::export::usage_csv::format_micros;
use crate::pipeline::Pipeline;
use crate::store::sql::SqlLog;
pub use crate::store::sql::analytics::{AnalyticsConfig, UNKNOWN_AFTER_MS, status};
use crate::store::sql::analytics::{Keep, SessionCursor, SessionRow};
use crate::store::sql::rollup::{Cell, Counts, DAY_MS, Dim, Dist, HOUR_MS, MINUTE_MS};

/// Default and largest number of lines or sessions in one answer.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest `limit`.
pub const MAX_LIMIT: i64 = 1000;
/// Requests listed in a session's detail at most.
pub const MAX_SESSION_REQUESTS: i64 = 10_000;

/// Shared state of the analytics routes.
#[derive(Clone)]
pub struct AnalyticsApi {
    /// The request log with its rollups (`None`: `log_store.kind: none`, or rollups off).
    pub log: Option<SqlLog>,
    /// The request log holding `probe_results` (with or without rollups).
    pub probe_log: Option<SqlLog>,
    /// The live aggregates (API key stats).
    pub pipeline: Pipeline,
    /// Settings.
    pub config: AnalyticsConfig,
}

/// The routes, behind the query role (admins and users), with their OpenAPI description (a
/// route is added only through `routes!`, which takes its path from `#[utoipa::path]`).
pub fn routes(api: AnalyticsApi, auth: &Auth) -> OpenApiRouter {
    let r = OpenApiRouter::new()
        .routes(routes!(leaderboard))
        .routes(routes!(sessions))
        .routes(routes!(session))
        .routes(routes!(availability))
        .routes(routes!(overview))
        .routes(routes!(keys))
        .routes(routes!(key))
        .with_state(Arc::new(api));
    auth.guard_documented(r, Access::Query)
}

// The closed parameter values, for the OpenAPI document (the handlers match the same words).

/// What a leaderboard ranks.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum Scope {
    /// Users (`user_id`, else user name).
    User,
    /// Gateway keys.
    Key,
    /// Providers, with success rate, latency and the models used.
    Provider,
    /// Models as asked for (`original_model`), with the models actually used.
    Model,
}

/// A leaderboard's order.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum Sort {
    /// Cost, highest first.
    Cost,
    /// Requests.
    Requests,
    /// Tokens of every type.
    Tokens,
}

/// A period in `analytics.time_zone`; `custom` takes `from` and `to`.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum PeriodName {
    /// Since midnight.
    Today,
    /// Since Monday (ISO week).
    Week,
    /// Since the first of the month.
    Month,
    /// `[from, to)`.
    Custom,
}

/// Active (a request in the last `analytics.session_active_secs`) or not.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum SessionState {
    /// Recently active.
    Active,
    /// Not recently active.
    Inactive,
}

/// An availability window ending now; `custom` takes `from` and `to` (at most 93 days).
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum Window {
    /// The last hour.
    #[schema(rename = "1h")]
    H1,
    /// The last 6 hours.
    #[schema(rename = "6h")]
    H6,
    /// The last 24 hours.
    #[schema(rename = "24h")]
    H24,
    /// The last 7 days.
    #[schema(rename = "7d")]
    D7,
    /// `[from, to)`.
    #[schema(rename = "custom")]
    Custom,
}

/// Bucket width of an availability series; `auto` picks 1m, 5m, 15m or 1h by the window.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum BucketWidth {
    /// By the window: ≤ 1 h → 1m, ≤ 6 h → 5m, ≤ 24 h → 15m, else 1h.
    #[schema(rename = "auto")]
    Auto,
    /// One minute.
    #[schema(rename = "1m")]
    M1,
    /// Five minutes.
    #[schema(rename = "5m")]
    M5,
    /// Fifteen minutes.
    #[schema(rename = "15m")]
    M15,
    /// One hour.
    #[schema(rename = "1h")]
    H1,
}

/// A provider's colour.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum StatusColour {
    /// At least 50 % of the window's requests succeeded.
    Green,
    /// Less than 50 %.
    Red,
    /// No request in the last 15 minutes.
    Unknown,
}

/// Where API key stats come from.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum KeySource {
    /// Fleet-wide totals since the live store began (admins).
    LiveStore,
    /// A user's own requests that the log still holds (user tokens).
    RequestLog,
}

/// `period`, `from`, `to` (OpenAPI only: the handlers parse the query strictly themselves).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct RangeParams {
    /// Default `today`.
    #[param(inline)]
    period: Option<PeriodName>,
    /// With `period=custom` only (and then required): start, epoch ms.
    #[param(minimum = 0, maximum = 253_402_300_799_999_i64)]
    from: Option<i64>,
    /// With `period=custom` only (and then required): end, epoch ms, exclusive, after `from`.
    #[param(minimum = 0, maximum = 253_402_300_799_999_i64)]
    to: Option<i64>,
}

/// The parameters of `GET /api/v1/leaderboard` besides the range.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct LeaderboardParams {
    /// Default `user`.
    #[param(inline)]
    scope: Option<Scope>,
    /// Default `cost`.
    #[param(inline)]
    sort: Option<Sort>,
    /// Lines at most (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The parameters of `GET /api/v1/sessions`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct SessionParams {
    /// Default `active`.
    #[param(inline)]
    state: Option<SessionState>,
    /// Sessions per page (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// The parameters of `GET /api/v1/availability`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct AvailabilityParams {
    /// Only this provider.
    #[param(min_length = 1)]
    provider: Option<String>,
    /// Only this model (implies `by_model`).
    #[param(min_length = 1)]
    model: Option<String>,
    /// One series per provider and model (default `false`).
    by_model: Option<bool>,
    /// Default `24h`.
    #[param(inline)]
    window: Option<Window>,
    /// With `window=custom` only (and then required): start, epoch ms.
    #[param(minimum = 0, maximum = 253_402_300_799_999_i64)]
    from: Option<i64>,
    /// With `window=custom` only (and then required): end, epoch ms, exclusive, after `from`.
    #[param(minimum = 0, maximum = 253_402_300_799_999_i64)]
    to: Option<i64>,
    /// Default `auto`; at most 2000 buckets per answer.
    #[param(inline)]
    bucket: Option<BucketWidth>,
}

type Q = Result<Query<Vec<(String, String)>>, QueryRejection>;

impl AnalyticsApi {
    fn log(&self) -> Result<&SqlLog, ApiError> {
        self.log.as_ref().ok_or_else(|| ApiError::NotImplemented {
            code: "needs_request_log",
            message: "analytics are answered from the request log's rollups: set log_store.kind \
                      to sqlite or postgres and keep log_store.rollups on"
                .into(),
        })
    }
}

/// Tokens by type.
#[derive(Debug, utoipa::ToSchema, Serialize, PartialEq, Eq)]
pub struct TokenTotals {
    input: i64,
    output: i64,
    cache_write_5m: i64,
    cache_write_1h: i64,
    cache_read: i64,
    total: i64,
}

impl From<&Counts> for TokenTotals {
    fn from(c: &Counts) -> Self {
        let t = c.tokens;
        Self {
            input: t[0],
            output: t[1],
            cache_write_5m: t[2],
            cache_write_1h: t[3],
            cache_read: t[4],
            total: c.total_tokens(),
        }
    }
}

/// The totals every answer shares.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct Totals {
    requests: i64,
    successes: i64,
    /// successes / requests (`null` without requests).
    success_rate: Option<f64>,
    tokens: TokenTotals,
    cost_micros: i64,
    /// Exact decimal USD.
    cost_usd: String,
    /// Mean duration in ms (`null` without requests).
    avg_response_ms: Option<f64>,
}

fn ratio(a: i64, b: i64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

impl From<&Counts> for Totals {
    fn from(c: &Counts) -> Self {
        Self {
            requests: c.requests,
            successes: c.successes,
            success_rate: ratio(c.successes, c.requests),
            tokens: c.into(),
            cost_micros: c.cost_micros,
            cost_usd: format_micros(c.cost_micros),
            avg_response_ms: ratio(c.duration_ms_sum, c.requests),
        }
    }
}

/// Duration quantiles in ms (nearest rank, within 0.4 %).
#[derive(Debug, utoipa::ToSchema, Serialize, Default)]
pub struct Quantiles {
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl From<Option<&Dist>> for Quantiles {
    fn from(d: Option<&Dist>) -> Self {
        let q = |x| d.and_then(|d| d.latency.quantile(x));
        Self {
            p50_ms: q(0.5),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
        }
    }
}

/// `[from, to)` and how it was chosen.
#[derive(Debug, utoipa::ToSchema, Serialize, Clone)]
pub struct Range {
    #[schema(inline, value_type = PeriodName)]
    period: &'static str,
    from: i64,
    to: i64,
    time_zone: String,
}

fn parse_ms(p: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    let v: Option<i64> = parse_num(p, name)?;
    match v {
        Some(v) if !(0..=253_402_300_799_999).contains(&v) => Err(bad(
            name,
            format!("{v} is not a time between 1970 and 9999 (epoch milliseconds)"),
        )),
        v => Ok(v),
    }
}

/// `period` (default `today`) with `from` / `to` for `custom`.
fn range(p: &HashMap<String, String>, zone: &Zone, now: i64) -> Result<Range, ApiError> {
    let (from, to) = (parse_ms(p, "from")?, parse_ms(p, "to")?);
    let name = p.get("period").map_or("today", String::as_str);
    let period = match name {
        "today" => Some((Period::Today, "today")),
        "week" => Some((Period::Week, "week")),
        "month" => Some((Period::Month, "month")),
        "custom" => None,
        other => {
            return Err(bad(
                "period",
                format!("{other:?} is not today, week, month or custom"),
            ));
        }
    };
    let (period, from, to) = match period {
        Some((period, label)) => {
            if from.is_some() || to.is_some() {
                let which = if from.is_some() { "from" } else { "to" };
                return Err(bad(which, "only with period=custom"));
            }
            let (a, b) = zone.period(period, now);
            (label, a, b)
        }
        None => {
            let from = from.ok_or_else(|| bad("from", "required with period=custom"))?;
            let to = to.ok_or_else(|| bad("to", "required with period=custom"))?;
            if to <= from {
                return Err(bad("to", format!("{to} is not after from ({from})")));
            }
            ("custom", from, to)
        }
    };
    Ok(Range {
        period,
        from,
        to,
        time_zone: zone.name().to_string(),
    })
}

fn limit(p: &HashMap<String, String>) -> Result<i64, ApiError> {
    let limit: i64 = parse_num(p, "limit")?.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad(
            "limit",
            format!("{limit} is not between 1 and {MAX_LIMIT}"),
        ));
    }
    Ok(limit)
}

/// One line of a leaderboard.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct Line {
    rank: usize,
    name: String,
    #[serde(flatten)]
    totals: Totals,
    /// Providers: duration quantiles.
    #[serde(skip_serializing_if = "Option::is_none")]
    latency: Option<Quantiles>,
    /// Providers: the models used; models: the models actually used for the one asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    models: Option<Vec<ModelShare>>,
}

/// A model under a provider or a requested model, with its requests.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct ModelShare {
    model: String,
    requests: i64,
}

/// A leaderboard.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct Leaderboard {
    #[schema(inline, value_type = Scope)]
    scope: &'static str,
    #[schema(inline, value_type = Sort)]
    sort: &'static str,
    #[serde(flatten)]
    range: Range,
    /// True when a user token sees only its own requests.
    own_rows_only: bool,
    entries: Vec<Line>,
}

/// `GET /api/v1/leaderboard`.
#[utoipa::path(get, path = "/api/v1/leaderboard", tag = "analytics",
    summary = "Users, keys, providers or models ranked over a period",
    params(LeaderboardParams, RangeParams),
    responses((status = 200, description = "The leaderboard", body = Leaderboard),
        QueryErrors, NeedsLogError))]
pub async fn leaderboard(
    State(api): State<Arc<AnalyticsApi>>,
    Extension(who): Extension<Principal>,
    q: Q,
) -> Result<Response, ApiError> {
    let p = params(q, &["scope", "period", "from", "to", "sort", "limit"])?;
    let log = api.log()?;
    let (dim, scope) = match p.get("scope").map_or("user", String::as_str) {
        "user" => (Dim::User, "user"),
        "key" => (Dim::Key, "key"),
        "provider" => (Dim::Provider, "provider"),
        "model" => (Dim::Model, "model"),
        other => {
            return Err(bad(
                "scope",
                format!("{other:?} is not user, key, provider or model"),
            ));
        }
    };
    let sort: &'static str = match p.get("sort").map_or("cost", String::as_str) {
        "cost" => "cost",
        "requests" => "requests",
        "tokens" => "tokens",
        other => {
            return Err(bad(
                "sort",
                format!("{other:?} is not cost, requests or tokens"),
            ));
        }
    };
    let range = range(&p, &api.config.time_zone, now_ms())?;
    let limit = limit(&p)?;
    let user = who
        .forced_user()
        .filter(|_| !api.config.users_see_leaderboards);
    let grouped = log
        .grouped(dim, range.from, range.to, user)
        .await
        .map_err(store_error)?;
    // Lines by value; providers and models keep their models (the detail).
    let mut lines: BTreeMap<String, (Cell, BTreeMap<String, i64>)> = BTreeMap::new();
    for ((value, detail), cell) in grouped {
        let line = lines.entry(value.to_string()).or_default();
        line.0.merge_from(&cell);
        if matches!(dim, Dim::Provider | Dim::Model) {
            *line.1.entry(detail.to_string()).or_default() += cell.counts.requests;
        }
    }
    let key = |c: &Counts| match sort {
        "cost" => c.cost_micros,
        "requests" => c.requests,
        _ => c.total_tokens(),
    };
    let mut ordered: Vec<_> = lines.into_iter().collect();
    ordered.sort_by(|a, b| {
        key(&b.1.0.counts)
            .cmp(&key(&a.1.0.counts))
            .then(a.0.cmp(&b.0))
    });
    let entries = ordered
        .into_iter()
        .take(limit as usize)
        .enumerate()
        .map(|(i, (name, (cell, models)))| Line {
            rank: i + 1,
            name,
            totals: (&cell.counts).into(),
            latency: (dim == Dim::Provider).then(|| cell.dist.as_ref().into()),
            models: matches!(dim, Dim::Provider | Dim::Model).then(|| {
                let mut m: Vec<ModelShare> = models
                    .into_iter()
                    .map(|(model, requests)| ModelShare { model, requests })
                    .collect();
                m.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.model.cmp(&b.model)));
                m
            }),
        })
        .collect();
    Ok(Json(Leaderboard {
        scope,
        sort,
        range,
        own_rows_only: user.is_some(),
        entries,
    })
    .into_response())
}

/// One bucket of a provider's availability.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct Bucket {
    start: i64,
    requests: i64,
    successes: i64,
    /// successes / requests (`null` without requests).
    availability: Option<f64>,
    #[serde(flatten)]
    latency: Quantiles,
    /// Failed requests by status code (`"0"`: no response).
    errors: BTreeMap<String, u64>,
}

/// A provider's (or provider and model's) availability.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct ProviderAvailability {
    provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// `green` (≥ 50 % over the window), `red` (< 50 %), `unknown` (no request in 15 min).
    #[schema(inline, value_type = StatusColour)]
    status: &'static str,
    requests: i64,
    availability: Option<f64>,
    #[serde(flatten)]
    latency: Quantiles,
    errors: BTreeMap<String, u64>,
    /// Start of its latest request in the last 15 minutes (`null`: none).
    last_request_at: Option<i64>,
    buckets: Vec<Bucket>,
    /// The active probes of this provider, beside the request-based figures (admin tokens and an
    /// open server only: a user token gets none).
    probes: Vec<ProbeAvailability>,
}

/// A probe's runs in the window, beside its provider's requests.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct ProbeAvailability {
    probe: String,
    /// Whether its latest run succeeded (`null`: no run in the last 7 days).
    up: Option<bool>,
    /// Runs in the window.
    runs: i64,
    /// Successful runs in the window.
    ok: i64,
    /// ok / runs (`null` without runs).
    availability: Option<f64>,
    /// Its latest run (within 7 days of the window's end).
    last: Option<ProbeRun>,
}

/// One probe run.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct ProbeRun {
    timestamp_ms: i64,
    /// `ok`, `fail` (unexpected status), `timeout`, `refused`, `tls`, `dns` or `error`.
    outcome: &'static str,
    /// HTTP status (`null`: TCP probe, or no answer).
    status: Option<u16>,
    latency_ms: u64,
    /// What went wrong (secrets redacted).
    error: Option<String>,
}

impl From<crate::store::sql::probe::ProbeSummary> for ProbeAvailability {
    fn from(s: crate::store::sql::probe::ProbeSummary) -> Self {
        Self {
            up: s.last.as_ref().map(|l| l.ok()),
            runs: s.results,
            ok: s.ok,
            availability: ratio(s.ok, s.results),
            last: s.last.map(|l| ProbeRun {
                timestamp_ms: l.ts_ms,
                outcome: l.outcome.as_str(),
                status: (l.status != 0).then_some(l.status),
                latency_ms: l.latency_ms,
                error: l.error,
            }),
            probe: s.probe,
        }
    }
}

/// The availability answer.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct Availability {
    #[schema(inline, value_type = Window)]
    window: &'static str,
    from: i64,
    to: i64,
    bucket_ms: i64,
    own_rows_only: bool,
    providers: Vec<ProviderAvailability>,
}

fn errors_of(d: Option<&Dist>) -> BTreeMap<String, u64> {
    d.map(|d| d.errors.iter().map(|(k, v)| (k.to_string(), *v)).collect())
        .unwrap_or_default()
}

/// `GET /api/v1/availability`.
#[utoipa::path(get, path = "/api/v1/availability", tag = "analytics",
    summary = "Per provider (and model): buckets of availability, latency and errors; a colour",
    params(AvailabilityParams),
    responses((status = 200, description = "Availability by provider", body = Availability),
        QueryErrors, NeedsLogError))]
pub async fn availability(
    State(api): State<Arc<AnalyticsApi>>,
    Extension(who): Extension<Principal>,
    q: Q,
) -> Result<Response, ApiError> {
    let p = params(
        q,
        &[
            "provider", "model", "by_model", "window", "from", "to", "bucket",
        ],
    )?;
    let log = api.log()?;
    let now = now_ms();
    let (window, from, to) = match p.get("window").map_or("24h", String::as_str) {
        "1h" => ("1h", now - HOUR_MS, now),
        "6h" => ("6h", now - 6 * HOUR_MS, now),
        "24h" => ("24h", now - DAY_MS, now),
        "7d" => ("7d", now - 7 * DAY_MS, now),
        "custom" => {
            let from =
                parse_ms(&p, "from")?.ok_or_else(|| bad("from", "required with window=custom"))?;
            let to = parse_ms(&p, "to")?.ok_or_else(|| bad("to", "required with window=custom"))?;
            if to <= from {
                return Err(bad("to", format!("{to} is not after from ({from})")));
            }
            if to - from > 93 * DAY_MS {
                return Err(bad("to", "a custom window is at most 93 days"));
            }
            ("custom", from, to)
        }
        other => {
            return Err(bad(
                "window",
                format!("{other:?} is not 1h, 6h, 24h, 7d or custom"),
            ));
        }
    };
    if window != "custom" && (p.contains_key("from") || p.contains_key("to")) {
        return Err(bad(
            if p.contains_key("from") { "from" } else { "to" },
            "only with window=custom",
        ));
    }
    let span = to - from;
    let bucket_ms = match p.get("bucket").map_or("auto", String::as_str) {
        "auto" => match span {
            s if s <= HOUR_MS => MINUTE_MS,
            s if s <= 6 * HOUR_MS => 5 * MINUTE_MS,
            s if s <= DAY_MS => 15 * MINUTE_MS,
            _ => HOUR_MS,
        },
        "1m" => MINUTE_MS,
        "5m" => 5 * MINUTE_MS,
        "15m" => 15 * MINUTE_MS,
        "1h" => HOUR_MS,
        other => {
            return Err(bad(
                "bucket",
                format!("{other:?} is not auto, 1m, 5m, 15m or 1h"),
            ));
        }
    };
    if span / bucket_ms > 2_000 {
        return Err(bad(
            "bucket",
            format!("{} buckets; at most 2000 per answer", span / bucket_ms),
        ));
    }
    let by_model = match p.get("by_model").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => return Err(bad("by_model", format!("{v:?} is not true or false"))),
    };
    let want_model = p.get("model");
    let by_model = by_model || want_model.is_some();
    let user = who.forced_user();
    let keep = Keep {
        detail: by_model,
        dist: true,
    };
    let rows = log
        .bucketed(Dim::Provider, (from, to), bucket_ms, user, keep)
        .await
        .map_err(store_error)?;
    let seen = log
        .last_requests_since(now - UNKNOWN_AFTER_MS, user)
        .await
        .map_err(store_error)?;
    // (provider, model or "") → bucket → cell
    let mut series: BTreeMap<(String, String), BTreeMap<i64, Cell>> = BTreeMap::new();
    for ((bucket, provider, model), cell) in rows {
        if p.get("provider").is_some_and(|w| *w != provider.as_str())
            || want_model.is_some_and(|w| *w != model.as_str())
        {
            continue;
        }
        let model = if by_model {
            model.to_string()
        } else {
            String::new()
        };
        match series
            .entry((provider.to_string(), model))
            .or_default()
            .entry(bucket)
        {
            // Moved, not added into an empty cell: a dense histogram is ~21 KiB to add.
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(cell);
            }
            std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge_from(&cell),
        }
    }
    let mut providers: Vec<ProviderAvailability> = series
        .into_iter()
        .map(|((provider, model), buckets)| {
            let mut total = Cell::default();
            for c in buckets.values() {
                total.merge_from(c);
            }
            let last_seen = seen
                .iter()
                .filter(|((p, m), _)| *p == provider && (!by_model || *m == model))
                .map(|(_, t)| *t)
                .max();
            let c = total.counts;
            ProviderAvailability {
                status: status(c.successes, c.requests, last_seen, now),
                requests: c.requests,
                availability: ratio(c.successes, c.requests),
                latency: total.dist.as_ref().into(),
                errors: errors_of(total.dist.as_ref()),
                last_request_at: last_seen,
                buckets: buckets
                    .into_iter()
                    .map(|(start, c)| Bucket {
                        start,
                        requests: c.counts.requests,
                        successes: c.counts.successes,
                        availability: ratio(c.counts.successes, c.counts.requests),
                        latency: c.dist.as_ref().into(),
                        errors: errors_of(c.dist.as_ref()),
                    })
                    .collect(),
                model: by_model.then_some(model),
                provider,
                probes: Vec::new(),
            }
        })
        .collect();
    // Probes are the fleet's, like the probe log (admins only): a user token's answer is its own
    // requests' alone, without the probes' runs, errors or the providers only they reach.
    if let Some(plog) = api.probe_log.as_ref().filter(|_| user.is_none()) {
        let summaries = plog.probe_summaries(from, to).await.map_err(store_error)?;
        for s in summaries {
            if p.get("provider").is_some_and(|w| *w != s.provider) {
                continue;
            }
            let mut attached = false;
            for entry in providers.iter_mut().filter(|e| e.provider == s.provider) {
                entry.probes.push(s.clone().into());
                attached = true;
            }
            // A provider only probed (no request in the window) has a line of its own.
            if !attached && want_model.is_none() {
                providers.push(ProviderAvailability {
                    provider: s.provider.clone(),
                    model: by_model.then(String::new),
                    status: status(0, 0, None, now),
                    requests: 0,
                    availability: None,
                    latency: None::<&Dist>.into(),
                    errors: BTreeMap::new(),
                    last_request_at: None,
                    buckets: Vec::new(),
                    probes: vec![s.into()],
                });
            }
        }
        providers.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
    }
    Ok(Json(Availability {
        window,
        from,
        to,
        bucket_ms,
        own_rows_only: user.is_some(),
        providers,
    })
    .into_response())
}

/// The overview answer.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct Overview {
    #[serde(flatten)]
    range: Range,
    #[serde(flatten)]
    totals: Totals,
    /// failures / requests.
    error_rate: Option<f64>,
    p95_ms: Option<f64>,
    /// Distinct users with a request today.
    active_users: i64,
    /// Sessions with a request in the last `analytics.session_active_secs`.
    active_sessions: i64,
    own_rows_only: bool,
}

/// `GET /api/v1/overview`.
#[utoipa::path(get, path = "/api/v1/overview", tag = "analytics",
    summary = "Totals of a period (default today), active users and sessions",
    params(RangeParams),
    responses((status = 200, description = "The overview", body = Overview),
        QueryErrors, NeedsLogError))]
pub async fn overview(
    State(api): State<Arc<AnalyticsApi>>,
    Extension(who): Extension<Principal>,
    q: Q,
) -> Result<Response, ApiError> {
    let p = params(q, &["period", "from", "to"])?;
    let log = api.log()?;
    let now = now_ms();
    let range = range(&p, &api.config.time_zone, now)?;
    let user = who.forced_user();
    let all = log
        .grouped(Dim::All, range.from, range.to, user)
        .await
        .map_err(store_error)?;
    let mut total = Cell::default();
    for c in all.values() {
        total.merge_from(c);
    }
    let active_users = log
        .active_users(range.from, range.to, user)
        .await
        .map_err(store_error)?;
    let active_secs = i64::try_from(api.config.session_active_secs).unwrap_or(i64::MAX / 2000);
    let active_sessions = log
        .active_sessions(now - active_secs * 1000, user)
        .await
        .map_err(store_error)?;
    let c = total.counts;
    Ok(Json(Overview {
        range,
        totals: (&c).into(),
        error_rate: ratio(c.requests - c.successes, c.requests),
        p95_ms: total.dist.as_ref().and_then(|d| d.latency.quantile(0.95)),
        active_users,
        active_sessions,
        own_rows_only: user.is_some(),
    })
    .into_response())
}

/// A session in a list.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct SessionSummary {
    session_id: String,
    user: Option<String>,
    namespace: String,
    first_seen: i64,
    last_seen: i64,
    active: bool,
    #[serde(flatten)]
    totals: Totals,
}

fn summary(r: SessionRow, active_since: i64) -> SessionSummary {
    SessionSummary {
        active: r.last_ms >= active_since,
        totals: (&r.counts).into(),
        session_id: r.session_id,
        user: (!r.user.is_empty()).then_some(r.user),
        namespace: r.namespace,
        first_seen: r.first_ms,
        last_seen: r.last_ms,
    }
}

/// A page of sessions.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct SessionPage {
    #[schema(inline, value_type = SessionState)]
    state: &'static str,
    active_secs: u64,
    sessions: Vec<SessionSummary>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next_cursor: Option<String>,
}

/// A session list cursor: the last row's `last_ms`, session id and user (a session shared by
/// users is one row per user, so the id alone does not say where a page ended), the texts in hex.
fn encode_cursor(last_ms: i64, id: &str, user: &str) -> String {
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    format!("{last_ms}.{}.{}", hex(id), hex(user))
}

/// The position [`encode_cursor`] wrote. A cursor of an earlier version (no user) resumes after
/// every row of its session and time, as it did.
fn decode_cursor(c: &str) -> Option<SessionCursor> {
    let text = |hex: &str| {
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        String::from_utf8(bytes).ok()
    };
    let mut parts = c.split('.');
    let last_ms = parts.next()?.parse().ok()?;
    let session_id = text(parts.next()?)?;
    let user = parts.next().map_or(Some(String::new()), text)?;
    parts.next().is_none().then_some(SessionCursor {
        last_ms,
        session_id,
        user,
    })
}

/// `GET /api/v1/sessions`.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "analytics",
    summary = "Active or inactive sessions, latest first, in pages",
    params(SessionParams),
    responses((status = 200, description = "A page of sessions", body = SessionPage),
        QueryErrors, NeedsLogError))]
pub async fn sessions(
    State(api): State<Arc<AnalyticsApi>>,
    Extension(who): Extension<Principal>,
    q: Q,
) -> Result<Response, ApiError> {
    let p = params(q, &["state", "limit", "cursor"])?;
    let log = api.log()?;
    let state = match p.get("state").map_or("active", String::as_str) {
        "active" => "active",
        "inactive" => "inactive",
        other => return Err(bad("state", format!("{other:?} is not active or inactive"))),
    };
    let limit = limit(&p)?;
    let cursor = match p.get("cursor") {
        Some(c) => {
            Some(decode_cursor(c).ok_or_else(|| bad("cursor", "not a cursor from next_cursor"))?)
        }
        None => None,
    };
    let secs = api.config.session_active_secs;
    let since = now_ms() - i64::try_from(secs).unwrap_or(i64::MAX / 2000) * 1000;
    let mut rows = log
        .sessions(
            state == "active",
            since,
            who.forced_user(),
            cursor,
            limit + 1,
        )
        .await
        .map_err(store_error)?;
    let next_cursor = (rows.len() as i64 > limit).then(|| {
        rows.truncate(limit as usize);
        rows.last()
            .map(|r| encode_cursor(r.last_ms, &r.session_id, &r.user))
            .unwrap_or_default()
    });
    Ok(Json(SessionPage {
        state,
        active_secs: secs,
        sessions: rows.into_iter().map(|r| summary(r, since)).collect(),
        next_cursor,
    })
    .into_response())
}

/// One request of a session.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct SessionRequestOut {
    sequence: usize,
    log_id: i64,
    timestamp: i64,
    provider: String,
    model: String,
    status: i64,
    duration_ms: i64,
}

/// A session's detail.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct SessionDetail {
    session_id: String,
    users: Vec<String>,
    namespace: String,
    first_seen: i64,
    last_seen: i64,
    active: bool,
    #[serde(flatten)]
    totals: Totals,
    providers: Vec<String>,
    models: Vec<String>,
    /// The requests in order, oldest first (at most 10,000). Not `requests`: that is the
    /// count of the flattened totals (a JSON object has each key once).
    request_list: Vec<SessionRequestOut>,
    /// True when the session has more than the requests listed.
    requests_truncated: bool,
}

/// `GET /api/v1/sessions/{id}`.
#[utoipa::path(get, path = "/api/v1/sessions/{id}", tag = "analytics",
    summary = "One session: totals, providers, models and its requests in order",
    params(("id" = String, Path, min_length = 1, max_length = 2048,
        description = "Session id (at most 2048 bytes of UTF-8)")),
    responses((status = 200, description = "The session", body = SessionDetail),
        QueryErrors, NotFoundError, NeedsLogError))]
pub async fn session(
    State(api): State<Arc<AnalyticsApi>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let log = api.log()?;
    if id.is_empty() || id.len() > 2048 {
        return Err(bad("id", "must be 1 to 2048 bytes"));
    }
    let user = who.forced_user();
    let rows = log.session_rows(&id, user).await.map_err(store_error)?;
    if rows.is_empty() {
        return Err(ApiError::NoSuchRecord {
            message: format!("no session {id:?}"),
        });
    }
    let mut counts = Counts::default();
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for r in &rows {
        counts.add(&r.counts);
        first = first.min(r.first_ms);
        last = last.max(r.last_ms);
    }
    let mut requests = log
        .session_requests(&id, user, MAX_SESSION_REQUESTS + 1)
        .await
        .map_err(store_error)?;
    let requests_truncated = requests.len() as i64 > MAX_SESSION_REQUESTS;
    requests.truncate(MAX_SESSION_REQUESTS as usize);
    let providers: BTreeSet<String> = requests
        .iter()
        .filter(|r| !r.provider.is_empty())
        .map(|r| r.provider.clone())
        .collect();
    let models: BTreeSet<String> = requests.iter().map(|r| r.model.clone()).collect();
    let secs = i64::try_from(api.config.session_active_secs).unwrap_or(i64::MAX / 2000);
    Ok(Json(SessionDetail {
        session_id: id,
        users: rows
            .iter()
            .filter(|r| !r.user.is_empty())
            .map(|r| r.user.clone())
            .collect(),
        // The namespace of the session's first request: of the row (user) that began first.
        namespace: rows
            .iter()
            .min_by_key(|r| r.first_ms)
            .map(|r| r.namespace.clone())
            .unwrap_or_default(),
        first_seen: first,
        last_seen: last,
        active: last >= now_ms() - secs * 1000,
        totals: (&counts).into(),
        providers: providers.into_iter().collect(),
        models: models.into_iter().collect(),
        request_list: requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| SessionRequestOut {
                sequence: i + 1,
                log_id: r.id,
                timestamp: r.ts_ms,
                provider: r.provider,
                model: r.model,
                status: r.status,
                duration_ms: r.duration_ms,
            })
            .collect(),
        requests_truncated,
    })
    .into_response())
}

/// API key stats.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct KeyStats {
    key: String,
    total_calls: u64,
    calls_today: u64,
    calls_this_month: u64,
    /// Epoch ms of the latest request (`null`: none).
    last_used_at: Option<i64>,
    tokens: TokenTotals,
    cost_micros: i64,
    cost_usd: String,
}

/// The API key list.
#[derive(Debug, utoipa::ToSchema, Serialize)]
pub struct KeyList {
    /// `live_store` (fleet-wide totals since the store began) or `request_log` (a user's own
    /// requests that the log still holds).
    #[schema(inline, value_type = KeySource)]
    source: &'static str,
    keys: Vec<KeyStats>,
}

async fn key_stats(api: &AnalyticsApi, who: &Principal) -> Result<KeyList, ApiError> {
    if let Some(user) = who.forced_user() {
        let log = api.log()?;
        let now = now_ms();
        let utc = Zone::utc();
        let (day, month) = (
            utc.period(Period::Today, now).0,
            utc.period(Period::Month, now).0,
        );
        let rows = log
            .key_stats_of_user(user, day, month)
            .await
            .map_err(store_error)?;
        let keys = rows
            .into_iter()
            .map(|k| KeyStats {
                tokens: (&k.counts).into(),
                cost_micros: k.counts.cost_micros,
                cost_usd: format_micros(k.counts.cost_micros),
                total_calls: u64::try_from(k.counts.requests).unwrap_or(0),
                calls_today: k.today,
                calls_this_month: k.this_month,
                last_used_at: Some(k.last_used_ms),
                key: k.key,
            })
            .collect();
        return Ok(KeyList {
            source: "request_log",
            keys,
        });
    }
    let view = api.pipeline.view().await;
    let mut keys: Vec<KeyStats> = view
        .totals
        .scopes
        .iter()
        .filter_map(|(k, s)| match k {
            ScopeKey::Key(name) => {
                let calls = view.key_calls.get(name).copied().unwrap_or_default();
                let t = &s.tokens;
                let counts = Counts {
                    tokens: [
                        t.input,
                        t.output,
                        t.cache_write_5m,
                        t.cache_write_1h,
                        t.cache_read,
                    ]
                    .map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
                    ..Counts::default()
                };
                let cost = i64::try_from(s.cost_micros).unwrap_or(i64::MAX);
                Some(KeyStats {
                    key: name.as_str().to_string(),
                    total_calls: s.requests,
                    calls_today: calls.today,
                    calls_this_month: calls.this_month,
                    last_used_at: (s.last_used_ms > 0).then_some(s.last_used_ms),
                    tokens: (&counts).into(),
                    cost_micros: cost,
                    cost_usd: format_micros(cost),
                })
            }
            _ => None,
        })
        .collect();
    keys.sort_by(|a, b| b.total_calls.cmp(&a.total_calls).then(a.key.cmp(&b.key)));
    Ok(KeyList {
        source: "live_store",
        keys,
    })
}

/// `GET /api/v1/keys`.
#[utoipa::path(get, path = "/api/v1/keys", tag = "analytics",
    summary = "API key stats: calls (total, today, this month, UTC), tokens, cost, last use",
    responses((status = 200, description = "Every key with requests", body = KeyList),
        QueryErrors, NeedsLogError))]
pub async fn keys(
    State(api): State<Arc<AnalyticsApi>>,
    Extension(who): Extension<Principal>,
    q: Q,
) -> Result<Response, ApiError> {
    params(q, &[])?;
    Ok(Json(key_stats(&api, &who).await?).into_response())
}

/// `GET /api/v1/keys/{key}`.
#[utoipa::path(get, path = "/api/v1/keys/{key}", tag = "analytics",
    summary = "One API key's stats",
    params(("key" = String, Path, min_length = 1, description = "Key name")),
    responses((status = 200, description = "The key", body = KeyStats),
        QueryErrors, NotFoundError, NeedsLogError))]
pub async fn key(
    State(api): State<Arc<AnalyticsApi>>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let list = key_stats(&api, &who).await?;
    match list.keys.into_iter().find(|k| k.key == name) {
        Some(k) => Ok(Json(k).into_response()),
        None => Err(ApiError::NoSuchRecord {
            message: format!("no API key {name:?} with requests"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_at_the_edges() {
        let now = 100 * MINUTE_MS;
        let recent = Some(now - MINUTE_MS);
        assert_eq!(status(50, 100, recent, now), "green");
        assert_eq!(status(49, 100, recent, now), "red");
        assert_eq!(status(0, 0, recent, now), "unknown");
        // A request exactly 15 minutes ago still counts; a millisecond earlier does not.
        assert_eq!(status(1, 1, Some(now - UNKNOWN_AFTER_MS), now), "green");
        assert_eq!(
            status(1, 1, Some(now - UNKNOWN_AFTER_MS - 1), now),
            "unknown"
        );
        assert_eq!(status(1, 1, None, now), "unknown");
    }

    #[test]
    fn cursors_round_trip_any_session_id_and_user() {
        for (id, user) in [("s-1", "alice"), ("ü/.%", "a.b@c"), ("", "")] {
            assert_eq!(
                decode_cursor(&encode_cursor(42, id, user)),
                Some(SessionCursor {
                    last_ms: 42,
                    session_id: id.to_string(),
                    user: user.to_string(),
                })
            );
        }
        // An earlier version's cursor (no user): before every user of its session.
        assert_eq!(
            decode_cursor("7.7331").map(|c| (c.last_ms, c.session_id, c.user)),
            Some((7, "s1".to_string(), String::new()))
        );
        for bad in ["x", "1.zz", "1.73.zz", "1.73.61.61"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }
}
