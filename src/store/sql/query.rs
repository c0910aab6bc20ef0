//! Reading the request log: the filter of the log list and the usage export, keyset pages
//! (newest first), one record by id, a streamed scan for exports, and the export audit trail.
//!
//! Every filter is AND-ed and bound as a parameter (never spliced into SQL). Pages are ordered by
//! `(ts_ms, id)` descending and continue from a [`Cursor`], so a page is stable while new rows
//! arrive and costs the same at any depth (no `OFFSET`).

use bytes::Bytes;
use serde::Serialize;
use sqlx::{QueryBuilder, Row};

use super::{SqlLog, dispatch, unavailable};
use crate::store::StoreError;

/// The filters of `GET /api/v1/logs` and of the usage export, all AND-ed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogFilter {
    /// Requests that started at or after this time (epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<i64>,
    /// Requests that started before this time (epoch ms, exclusive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<i64>,
    /// The user: the record's `user_id`, or its `user` when it has no id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Gateway key name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Model actually used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// API path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Final status code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Leave out status 200.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exclude_200: bool,
    /// Session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// At least this many provider switches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_retry_count: Option<u32>,
    /// Trace id (a trace's calls; hex, as OTLP/JSON writes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Span id (one call of a trace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// The upstream provider's request id (Claude Code's `request_id`, also of failed calls).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_request_id: Option<String>,
}

/// Where a page continues: the `(ts_ms, id)` of the last row of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Start time of the last row seen.
    pub ts_ms: i64,
    /// Row id of the last row seen.
    pub id: i64,
}

impl Cursor {
    /// The opaque text form, `"<ts_ms>.<id>"`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.ts_ms, self.id)
    }

    /// Parses [`Cursor::encode`]'s form.
    pub fn decode(s: &str) -> Option<Self> {
        let (ts, id) = s.split_once('.')?;
        Some(Self {
            ts_ms: ts.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

/// One stored request (SPEC §2, without the `request` object, which is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LogEntry {
    /// Row id (for `GET /api/v1/logs/{id}`).
    pub id: i64,
    /// Idempotency key, when the record had one.
    pub request_id: Option<String>,
    /// Start time, epoch ms.
    pub timestamp_ms: i64,
    /// Namespace.
    pub namespace: String,
    /// Gateway instance.
    pub instance: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// User id.
    pub user_id: Option<String>,
    /// Key name.
    pub key: Option<String>,
    /// Key id.
    pub key_id: Option<String>,
    /// Provider.
    pub provider: String,
    /// Model used.
    pub model: String,
    /// Model asked for.
    pub original_model: Option<String>,
    /// API path.
    pub endpoint: String,
    /// API family.
    pub api_type: String,
    /// HTTP method.
    pub method: String,
    /// Final status (0 = no response).
    pub status: u16,
    /// Total duration, ms.
    pub duration_ms: i64,
    /// Time to first byte, ms.
    pub ttfb_ms: Option<i64>,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cache writes (5 min).
    pub cache_write_5m_tokens: i64,
    /// Cache writes (1 h).
    pub cache_write_1h_tokens: i64,
    /// Cache reads.
    pub cache_read_tokens: i64,
    /// Cost, integer micro-USD.
    pub cost_micros: i64,
    /// `reported`, `priced` or `unpriced`.
    pub cost_source: String,
    /// Session id.
    pub session_id: Option<String>,
    /// Provider switches.
    pub retry_count: i64,
    /// Providers tried, in order.
    pub provider_chain: Vec<String>,
    /// Streaming response.
    pub is_streaming: bool,
    /// Error.
    pub error: Option<String>,
    /// Blocking filter.
    pub blocked_by: Option<String>,
    /// Why it was blocked.
    pub block_reason: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// Client address.
    pub client_ip: Option<String>,
    /// Messages in the conversation.
    pub messages_count: Option<i64>,
    /// Trace id.
    pub trace_id: Option<String>,
    /// Span id.
    pub span_id: Option<String>,
    /// The upstream provider's request id (Claude Code's `request_id`).
    pub provider_request_id: Option<String>,
    /// A cost sent in another currency: the amount as sent.
    pub cost_amount: Option<String>,
    /// Its ISO 4217 code.
    pub currency: Option<String>,
}

/// The columns of one usage CSV row (SPEC §6.4), read by a narrower query than [`LogEntry`].
/// Text is borrowed from the database's row buffer: valid while the row is visited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsageRow<'a> {
    /// Start time, epoch ms.
    pub timestamp_ms: i64,
    /// `user_id`, else `user` (what the `user` filter matches).
    pub user: Option<&'a str>,
    /// Key name, else key id.
    pub key: Option<&'a str>,
    /// Provider.
    pub provider: &'a str,
    /// Model used.
    pub model: &'a str,
    /// Model asked for.
    pub original_model: Option<&'a str>,
    /// API path.
    pub endpoint: &'a str,
    /// Final status.
    pub status: i64,
    /// Input, output, cache write 5m, cache write 1h, cache read.
    pub tokens: [i64; 5],
    /// Cost, integer micro-USD.
    pub cost_micros: i64,
    /// Total duration, ms.
    pub duration_ms: i64,
    /// Session id.
    pub session_id: Option<&'a str>,
    /// Provider switches.
    pub retry_count: i64,
}

/// The SELECT list of a usage export; [`UsageRow`]'s fields in this order (`status` is the
/// 8th, the five token columns the 9th to 13th).
pub(crate) const USAGE_COLUMNS: &str = "ts_ms, user_ref, COALESCE(key_name, key_id), provider, model, \
    original_model, endpoint, status, input_tokens, output_tokens, cache_write_5m_tokens, \
    cache_write_1h_tokens, cache_read_tokens, cost_micros, duration_ms, session_id, retry_count";

/// How many columns [`USAGE_COLUMNS`] has.
pub(super) const USAGE_COLUMN_COUNT: usize = 17;
/// The text columns of [`USAGE_COLUMNS`] (0-based); all the others are integers.
pub(super) const USAGE_TEXT_COLUMNS: [usize; 7] = [1, 2, 3, 4, 5, 6, 15];
/// The integer columns of [`USAGE_COLUMNS`] (0-based).
pub(super) const USAGE_INT_COLUMNS: [usize; 10] = [0, 7, 8, 9, 10, 11, 12, 13, 14, 16];

/// What a usage export does with its rows: encodes each one and, when a chunk of output is
/// full, hands it back to be sent. Runs on the thread that reads the rows (a blocking thread
/// for SQLite), so it must not block or await.
pub trait RowEncoder: Send + 'static {
    /// Why a row could not be encoded.
    type Error: std::fmt::Display;
    /// Encodes one row; `Some` is a full chunk to send now.
    fn row(&mut self, row: &UsageRow<'_>) -> Result<Option<Bytes>, Self::Error>;
}

/// How a usage export ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportEnd {
    /// Every matching row (up to the limit) was encoded.
    Done,
    /// The receiver of the chunks went away (the client disconnected); the query was stopped
    /// and its connection released.
    ReceiverGone,
    /// The database or the encoder failed; the message says what failed.
    Failed(String),
}

/// The result of [`SqlLog::export_usage`]: the encoder (holding the unsent tail), the rows
/// encoded and how it ended.
#[derive(Debug)]
pub struct Exported<E> {
    /// The encoder, with whatever it has not handed out yet.
    pub encoder: E,
    /// Rows encoded.
    pub rows: u64,
    /// How it ended.
    pub end: ExportEnd,
}

/// One page of the log list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LogPage {
    /// Rows, newest first.
    pub items: Vec<LogEntry>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// An export to record in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit {
    /// When it started, epoch ms.
    pub ts_ms: i64,
    /// `admin`, `user` or `open`.
    pub role: String,
    /// The user id of a user token.
    pub actor: Option<String>,
    /// What was exported, e.g. `usage_csv`.
    pub action: String,
    /// The effective filters, as JSON.
    pub filters: String,
    /// Rows written.
    pub rows: i64,
    /// Bytes sent, where counted.
    pub bytes: Option<i64>,
    /// How it ended: `ok`, `failed`, `aborted` (the client went away) or `conflict` (another
    /// backup held the lock).
    pub outcome: String,
    /// Why: a truncation, the error's gist, who holds the lock.
    pub detail: Option<String>,
}

/// A row of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Row id.
    pub id: i64,
    /// When, epoch ms.
    pub timestamp_ms: i64,
    /// Role of the caller.
    pub role: String,
    /// User id of the caller, for user tokens.
    pub actor: Option<String>,
    /// What was exported.
    pub action: String,
    /// The effective filters (the export's query parameters, as stored).
    #[schema(value_type = Option<Object>)]
    pub filters: serde_json::Value,
    /// Rows written.
    pub rows: i64,
    /// Bytes sent (`null`: not counted).
    pub bytes: Option<i64>,
    /// How it ended: `ok`, `failed`, `aborted` or `conflict`.
    pub outcome: String,
    /// Why it ended so: a truncation, an error's gist, since when the lock was held.
    pub detail: Option<String>,
}

/// The columns of a [`LogEntry`] after `id` and `request_id`.
macro_rules! entry_columns_after_id {
    () => {
        "ts_ms, namespace, instance, user_name, user_id, key_name, \
    key_id, provider, model, original_model, endpoint, api_type, method, status, duration_ms, \
    ttfb_ms, input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, \
    cache_read_tokens, cost_micros, cost_source, session_id, retry_count, provider_chain, \
    is_streaming, error, blocked_by, block_reason, user_agent, client_ip, messages_count, trace_id, \
    span_id, provider_request_id, cost_amount, currency"
    };
}

/// What a log page or a single entry selects, in each database's terms.
pub(crate) trait EntryColumns {
    /// The `SELECT` list that [`decode_entry`] reads.
    const COLUMNS: &'static str;
}

impl EntryColumns for sqlx::Postgres {
    const COLUMNS: &'static str = concat!("id, request_id, ", entry_columns_after_id!());
}

/// SQLite stores a request id written as a canonical UUID as its 16 bytes
/// (`columns::uuid_bytes`); this gives it back as the lowercase text it came as, which the
/// mapping requires it was. Other ids are text and are read as they are.
impl EntryColumns for sqlx::Sqlite {
    const COLUMNS: &'static str = concat!(
        "id, CASE WHEN typeof(request_id) = 'blob' THEN lower(substr(hex(request_id), 1, 8) \
         || '-' || substr(hex(request_id), 9, 4) || '-' || substr(hex(request_id), 13, 4) \
         || '-' || substr(hex(request_id), 17, 4) || '-' || substr(hex(request_id), 21)) \
         ELSE request_id END AS request_id, ",
        entry_columns_after_id!()
    );
}

/// A value a filter condition compares with (always bound, never spliced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Param<'a> {
    /// The condition takes no value.
    None,
    /// An integer.
    Int(i64),
    /// Text.
    Text(&'a str),
}

/// The conditions of `f`, each ` AND …` SQL to append, followed by a placeholder for its
/// [`Param`] unless that is `Param::None`. The one place filters become SQL: the sqlx query
/// builders ([`push_filters!`]) and the raw SQLite export both read it.
pub(crate) fn filter_terms(f: &LogFilter) -> Vec<(&'static str, Param<'_>)> {
    let mut t = Vec::new();
    if let Some(v) = f.from_ms {
        t.push((" AND ts_ms >= ", Param::Int(v)));
    }
    if let Some(v) = f.to_ms {
        t.push((" AND ts_ms < ", Param::Int(v)));
    }
    let text = [
        (" AND user_ref = ", &f.user),
        (" AND key_name = ", &f.key),
        (" AND provider = ", &f.provider),
        (" AND model = ", &f.model),
        (" AND endpoint = ", &f.endpoint),
        (" AND trace_id = ", &f.trace_id),
        (" AND span_id = ", &f.span_id),
    ];
    for (sql, v) in text {
        if let Some(v) = v {
            t.push((sql, Param::Text(v)));
        }
    }
    if let Some(v) = f.status {
        t.push((" AND status = ", Param::Int(i64::from(v))));
    }
    if f.exclude_200 {
        t.push((" AND status <> 200", Param::None));
    }
    if let Some(v) = &f.session_id {
        t.push((" AND session_id = ", Param::Text(v)));
    }
    if let Some(v) = f.min_retry_count {
        t.push((" AND retry_count >= ", Param::Int(i64::from(v))));
    }
    if let Some(v) = &f.provider_request_id {
        t.push((" AND provider_request_id = ", Param::Text(v)));
    }
    t
}

/// Appends ` AND …` for every filter set in `$f` to the query builder `$qb`.
macro_rules! push_filters {
    ($qb:expr, $f:expr) => {{
        for (sql, p) in filter_terms($f) {
            $qb.push(sql);
            match p {
                Param::None => {}
                Param::Int(v) => {
                    $qb.push_bind(v);
                }
                Param::Text(v) => {
                    $qb.push_bind(v.to_string());
                }
            }
        }
    }};
}

/// Reads a [`LogEntry`] from a row of `SELECT` [`EntryColumns::COLUMNS`].
macro_rules! decode_entry {
    ($row:expr) => {{
        let row = $row;
        (|| {
            let chain: String = row.try_get("provider_chain")?;
            let status: i64 = row.try_get("status")?;
            Ok::<LogEntry, sqlx::Error>(LogEntry {
                id: row.try_get("id")?,
                request_id: row.try_get("request_id")?,
                timestamp_ms: row.try_get("ts_ms")?,
                namespace: row.try_get("namespace")?,
                instance: row.try_get("instance")?,
                user: row.try_get("user_name")?,
                user_id: row.try_get("user_id")?,
                key: row.try_get("key_name")?,
                key_id: row.try_get("key_id")?,
                provider: row.try_get("provider")?,
                model: row.try_get("model")?,
                original_model: row.try_get("original_model")?,
                endpoint: row.try_get("endpoint")?,
                api_type: row.try_get("api_type")?,
                method: row.try_get("method")?,
                status: u16::try_from(status).unwrap_or(0),
                duration_ms: row.try_get("duration_ms")?,
                ttfb_ms: row.try_get("ttfb_ms")?,
                input_tokens: row.try_get("input_tokens")?,
                output_tokens: row.try_get("output_tokens")?,
                cache_write_5m_tokens: row.try_get("cache_write_5m_tokens")?,
                cache_write_1h_tokens: row.try_get("cache_write_1h_tokens")?,
                cache_read_tokens: row.try_get("cache_read_tokens")?,
                cost_micros: row.try_get("cost_micros")?,
                cost_source: row.try_get("cost_source")?,
                session_id: row.try_get("session_id")?,
                retry_count: row.try_get("retry_count")?,
                provider_chain: serde_json::from_str(&chain).unwrap_or_default(),
                is_streaming: row.try_get("is_streaming")?,
                error: row.try_get("error")?,
                blocked_by: row.try_get("blocked_by")?,
                block_reason: row.try_get("block_reason")?,
                user_agent: row.try_get("user_agent")?,
                client_ip: row.try_get("client_ip")?,
                messages_count: row.try_get("messages_count")?,
                trace_id: row.try_get("trace_id")?,
                span_id: row.try_get("span_id")?,
                provider_request_id: row.try_get("provider_request_id")?,
                cost_amount: row.try_get("cost_amount")?,
                currency: row.try_get("currency")?,
            })
        })()
    }};
}

impl SqlLog {
    /// One page of rows matching `filter`, newest first, after `cursor`.
    pub async fn page(
        &self,
        filter: &LogFilter,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<LogPage, StoreError> {
        let limit = limit.max(1);
        let items: Vec<LogEntry> = dispatch!(self.backend(), pool, DB => {
            let mut qb = QueryBuilder::<DB>::new(format!("SELECT {} FROM request_log WHERE 1=1", <DB as EntryColumns>::COLUMNS));
            push_filters!(qb, filter);
            if let Some(c) = cursor {
                qb.push(" AND (ts_ms < ").push_bind(c.ts_ms);
                qb.push(" OR (ts_ms = ").push_bind(c.ts_ms);
                qb.push(" AND id < ").push_bind(c.id).push("))");
            }
            qb.push(" ORDER BY ts_ms DESC, id DESC LIMIT ").push_bind(i64::from(limit) + 1);
            let rows = qb.build().fetch_all(pool).await.map_err(unavailable)?;
            rows.iter()
                .map(|r| decode_entry!(r))
                .collect::<Result<_, _>>()
                .map_err(unavailable)?
        });
        let mut items = items;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|e| {
                Cursor {
                    ts_ms: e.timestamp_ms,
                    id: e.id,
                }
                .encode()
            })
        } else {
            None
        };
        Ok(LogPage { items, next_cursor })
    }

    /// One row by id; `user` restricts it to that user's rows (`None` for admins).
    pub async fn get(&self, id: i64, user: Option<&str>) -> Result<Option<LogEntry>, StoreError> {
        dispatch!(self.backend(), pool, DB => {
            let mut qb = QueryBuilder::<DB>::new(format!("SELECT {} FROM request_log WHERE id = ", <DB as EntryColumns>::COLUMNS));
            qb.push_bind(id);
            if let Some(u) = user {
                qb.push(" AND user_ref = ").push_bind(u.to_string());
            }
            let row = qb.build().fetch_optional(pool).await.map_err(unavailable)?;
            match row {
                Some(r) => decode_entry!(&r).map(Some).map_err(unavailable),
                None => Ok(None),
            }
        })
    }

    /// Whether more than `n` rows match `filter` (cheap: reads at most `n + 1` index entries).
    pub async fn more_than(&self, filter: &LogFilter, n: u64) -> Result<bool, StoreError> {
        dispatch!(self.backend(), pool, DB => {
            let mut qb = QueryBuilder::<DB>::new("SELECT count(*) FROM (SELECT 1 FROM request_log WHERE 1=1");
            push_filters!(qb, filter);
            qb.push(" LIMIT ").push_bind(i64::try_from(n).unwrap_or(i64::MAX).saturating_add(1));
            qb.push(") AS capped");
            let row = qb.build().fetch_one(pool).await.map_err(unavailable)?;
            let c: i64 = row.try_get(0).map_err(unavailable)?;
            Ok(c as u64 > n)
        })
    }

    /// Records an export in the audit trail.
    pub async fn audit(&self, a: &NewAudit) -> Result<(), StoreError> {
        dispatch!(self.backend(), pool, DB => {
            sqlx::query(
                "INSERT INTO export_audit (ts_ms, role, actor, action, filters, row_count, \
                 byte_count, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(a.ts_ms)
            .bind(a.role.as_str())
            .bind(a.actor.as_deref())
            .bind(a.action.as_str())
            .bind(a.filters.as_str())
            .bind(a.rows)
            .bind(a.bytes)
            .bind(a.outcome.as_str())
            .bind(a.detail.as_deref())
            .execute(pool)
            .await
            .map_err(unavailable)?;
            Ok(())
        })
    }

    /// The audit trail, newest first, `limit` rows older than row `before` (if given).
    pub async fn audit_list(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        dispatch!(self.backend(), pool, DB => {
            let mut qb = QueryBuilder::<DB>::new(
                "SELECT id, ts_ms, role, actor, action, filters, row_count, byte_count, outcome, \
                 detail FROM export_audit WHERE 1=1",
            );
            if let Some(b) = before {
                qb.push(" AND id < ").push_bind(b);
            }
            qb.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
            let rows = qb.build().fetch_all(pool).await.map_err(unavailable)?;
            rows.iter()
                .map(|row| {
                    let filters: String = row.try_get("filters")?;
                    Ok(AuditEntry {
                        id: row.try_get("id")?,
                        timestamp_ms: row.try_get("ts_ms")?,
                        role: row.try_get("role")?,
                        actor: row.try_get("actor")?,
                        action: row.try_get("action")?,
                        filters: serde_json::from_str(&filters).unwrap_or(serde_json::Value::Null),
                        rows: row.try_get("row_count")?,
                        bytes: row.try_get("byte_count")?,
                        outcome: row.try_get("outcome")?,
                        detail: row.try_get("detail")?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(unavailable)
        })
    }
}
