//! The record's fields, declared once (SPEC §2): one row per field with its name in every shape
//! that carries it — the JSON record on the wire, the query API's log entry, the `request_log`
//! column and its SQL type, the OTLP log-export attribute, the usage CSV column.
//!
//! To add a field, add its row to the `fields!` table below; the compiler and the tests then
//! name every shape still missing it:
//! - derived from [`FIELDS`]: the writers' column list and types (`store/sql/columns.rs`), the
//!   OTLP export's attributes (`export/otlp_logs.rs`) and their read-back
//!   (`otlp/gatemeter.rs`), both through an exhaustive `match` on [`FieldId`];
//! - checked against [`FIELDS`] by unit tests: the wire record (`raw_record!` in `record.rs`),
//!   [`RecordFields`](super::RecordFields), [`ValidRecord`](super::ValidRecord), the writers'
//!   values (`columns::values`), the log entry and its `SELECT` list (`store/sql/query.rs`), the
//!   SQLite schema and the PostgreSQL migration (`migrations/`), the usage CSV header
//!   (`export/usage_csv.rs`), and an export → read-back round trip.
//!
//! Pure data: no I/O, nothing above the record imported.

/// Event name of request records in the OTLP log export (`gatemeter.request`), by which another
/// gatemeter recognises them on read-back.
pub const GATEMETER_EVENT: &str = "gatemeter.request";

/// The SQL type of a `request_log` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    /// Text (`text` / `TEXT`).
    Text,
    /// 64-bit integer (`int8` / `INTEGER`).
    Int8,
    /// Boolean (`bool`; an integer 0/1 in SQLite).
    Bool,
}

/// One field of the record in every shape; `None` where a shape does not carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDef {
    /// Which field.
    pub id: FieldId,
    /// Key in the JSON record of `POST /v1/events` (SPEC §2); `None` for fields no source sends.
    pub wire: Option<&'static str>,
    /// Key in a log entry of the query API (`LogEntry`).
    pub entry: Option<&'static str>,
    /// Column of `request_log` that the writers fill.
    pub column: &'static str,
    /// Its SQL type.
    pub sql: SqlType,
    /// Attribute of the `gatemeter.request` OTLP log record; `None` when carried otherwise (the
    /// timestamp is the log record's time) or not at all.
    pub otlp: Option<&'static str>,
    /// Column of the usage CSV (SPEC §6.4).
    pub csv: Option<&'static str>,
}

/// Declares [`FieldId`] and [`FIELDS`] from one table.
macro_rules! fields {
    ($($(#[$doc:meta])* $id:ident = ($wire:expr, $entry:expr, $column:literal, $sql:ident, $otlp:expr, $csv:expr),)*) => {
        /// A field of the record: a row of [`FIELDS`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum FieldId {
            $($(#[$doc])* $id,)*
        }

        /// Every field of the record, in the order of the writers' columns.
        pub const FIELDS: [FieldDef; [$(stringify!($id)),*].len()] = [
            $(FieldDef {
                id: FieldId::$id,
                wire: $wire,
                entry: $entry,
                column: $column,
                sql: SqlType::$sql,
                otlp: $otlp,
                csv: $csv,
            },)*
        ];
    };
}

fields! {
    //                wire                                 log entry                         column                   SQL   OTLP attribute                                  CSV
    /// Idempotency key.
    RequestId =      (Some("request_id"),               Some("request_id"),              "request_id",            Text, Some("gatemeter.request_id"),                   None),
    /// Request start, epoch milliseconds (the OTLP log record's time).
    Timestamp =      (Some("timestamp"),                Some("timestamp_ms"),            "ts_ms",                 Int8, None,                                           Some("time")),
    /// Tenant / app grouping.
    Namespace =      (Some("namespace"),                Some("namespace"),               "namespace",             Text, Some("gatemeter.namespace"),                    None),
    /// Gateway instance.
    Instance =       (Some("instance"),                 Some("instance"),                "instance",              Text, Some("gatemeter.instance"),                     None),
    /// `user_id`, else `user`: what the log's `user` filter matches (derived, stored only).
    UserRef =        (None,                             None,                            "user_ref",              Text, None,                                           Some("user")),
    /// Who made the request.
    User =           (Some("user"),                     Some("user"),                    "user_name",             Text, Some("user.name"),                              None),
    /// Stable user id.
    UserId =         (Some("user_id"),                  Some("user_id"),                 "user_id",               Text, Some("user.id"),                                None),
    /// Gateway API key name.
    Key =            (Some("key"),                      Some("key"),                     "key_name",              Text, Some("gatemeter.key"),                          Some("key")),
    /// Gateway API key id.
    KeyId =          (Some("key_id"),                   Some("key_id"),                  "key_id",                Text, Some("gatemeter.key_id"),                       None),
    /// Upstream provider.
    Provider =       (Some("provider"),                 Some("provider"),                "provider",              Text, Some("gen_ai.provider.name"),                   Some("provider")),
    /// Model used.
    Model =          (Some("model"),                    Some("model"),                   "model",                 Text, Some("gen_ai.response.model"),                  Some("model")),
    /// Model asked for.
    OriginalModel =  (Some("original_model"),           Some("original_model"),          "original_model",        Text, Some("gen_ai.request.model"),                   Some("original_model")),
    /// API path.
    Endpoint =       (Some("endpoint"),                 Some("endpoint"),                "endpoint",              Text, Some("url.path"),                               Some("endpoint")),
    /// API family.
    ApiType =        (Some("api_type"),                 Some("api_type"),                "api_type",              Text, Some("gatemeter.api_type"),                     None),
    /// HTTP method.
    Method =         (Some("method"),                   Some("method"),                  "method",                Text, Some("http.request.method"),                    None),
    /// Final status code.
    Status =         (Some("status"),                   Some("status"),                  "status",                Int8, Some("http.response.status_code"),              Some("status")),
    /// Total duration, ms.
    DurationMs =     (Some("duration_ms"),              Some("duration_ms"),             "duration_ms",           Int8, Some("gatemeter.duration_ms"),                  Some("duration_ms")),
    /// Time to first byte, ms.
    TtfbMs =         (Some("ttfb_ms"),                  Some("ttfb_ms"),                 "ttfb_ms",               Int8, Some("gatemeter.ttfb_ms"),                      None),
    /// Input tokens.
    InputTokens =    (Some("input_tokens"),             Some("input_tokens"),            "input_tokens",          Int8, Some("gen_ai.usage.input_tokens"),              Some("input_tokens")),
    /// Output tokens.
    OutputTokens =   (Some("output_tokens"),            Some("output_tokens"),           "output_tokens",         Int8, Some("gen_ai.usage.output_tokens"),             Some("output_tokens")),
    /// Cache writes, 5 min TTL.
    CacheWrite5m =   (Some("cache_creation_5m_tokens"), Some("cache_write_5m_tokens"),   "cache_write_5m_tokens", Int8, Some("gatemeter.cache_creation_5m_tokens"),     Some("cache_write_5m_tokens")),
    /// Cache writes, 1 h TTL.
    CacheWrite1h =   (Some("cache_creation_1h_tokens"), Some("cache_write_1h_tokens"),   "cache_write_1h_tokens", Int8, Some("gatemeter.cache_creation_1h_tokens"),     Some("cache_write_1h_tokens")),
    /// Cache reads.
    CacheRead =      (Some("cache_read_tokens"),        Some("cache_read_tokens"),       "cache_read_tokens",     Int8, Some("gen_ai.usage.cache_read.input_tokens"),   Some("cache_read_tokens")),
    /// Cost: USD on the wire and in the CSV, integer micro-USD everywhere else.
    Cost =           (Some("cost_usd"),                 Some("cost_micros"),             "cost_micros",           Int8, Some("gatemeter.cost_usd_micros"),              Some("cost_usd")),
    /// Where the cost came from.
    CostSource =     (None,                             Some("cost_source"),             "cost_source",           Text, Some("gatemeter.cost_source"),                  None),
    /// Conversation / CLI session.
    SessionId =      (Some("session_id"),               Some("session_id"),              "session_id",            Text, Some("session.id"),                             Some("session_id")),
    /// Provider switches.
    RetryCount =     (Some("retry_count"),              Some("retry_count"),             "retry_count",           Int8, Some("gatemeter.retry_count"),                  Some("retry_count")),
    /// Providers tried, in order (a JSON array as text in SQL and OTLP).
    ProviderChain =  (Some("provider_chain"),           Some("provider_chain"),          "provider_chain",        Text, Some("gatemeter.provider_chain"),               None),
    /// Streaming response.
    IsStreaming =    (Some("is_streaming"),             Some("is_streaming"),            "is_streaming",          Bool, Some("gatemeter.is_streaming"),                 None),
    /// Error message or type.
    Error =          (Some("error"),                    Some("error"),                   "error",                 Text, Some("gatemeter.error"),                        None),
    /// Filter that blocked the request.
    BlockedBy =      (Some("blocked_by"),               Some("blocked_by"),              "blocked_by",            Text, Some("gatemeter.blocked_by"),                   None),
    /// Why it was blocked.
    BlockReason =    (Some("block_reason"),             Some("block_reason"),            "block_reason",          Text, Some("gatemeter.block_reason"),                 None),
    /// Client user agent.
    UserAgent =      (Some("user_agent"),               Some("user_agent"),              "user_agent",            Text, Some("user_agent.original"),                    None),
    /// Client address.
    ClientIp =       (Some("client_ip"),                Some("client_ip"),               "client_ip",             Text, Some("client.address"),                         None),
    /// Messages in the conversation.
    MessagesCount =  (Some("messages_count"),           Some("messages_count"),          "messages_count",        Int8, Some("gatemeter.messages_count"),               None),
    /// Distributed trace id.
    TraceId =        (Some("trace_id"),                 Some("trace_id"),                "trace_id",              Text, Some("gatemeter.trace_id"),                     None),
    /// Span id of the call (an OTLP GenAI span's own id), so a record is found from a trace.
    SpanId =         (Some("span_id"),                  Some("span_id"),                 "span_id",               Text, Some("gatemeter.span_id"),                      None),
    /// The upstream provider's id of the request (Claude Code's `request_id`): searchable,
    /// never the idempotency key.
    ProviderRequestId = (Some("provider_request_id"),   Some("provider_request_id"),     "provider_request_id",   Text, Some("gatemeter.provider_request_id"),          None),
    /// A cost sent in another currency: the amount as sent (exact decimal text).
    CostAmount =     (Some("cost"),                     Some("cost_amount"),             "cost_amount",           Text, Some("gatemeter.cost_amount"),                  None),
    /// Its ISO 4217 currency (`RMB` stored as `CNY`).
    Currency =       (Some("currency"),                 Some("currency"),                "currency",              Text, Some("gatemeter.currency"),                     None),
}

/// The field exported as OTLP attribute `key`, if any.
pub fn by_otlp_key(key: &str) -> Option<FieldId> {
    FIELDS.iter().find(|f| f.otlp == Some(key)).map(|f| f.id)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// A field's name in one shape.
    type Name = fn(&FieldDef) -> Option<&'static str>;

    #[test]
    fn every_name_is_unique_within_its_shape() {
        let shapes: [(&str, Name); 5] = [
            ("wire", |f| f.wire),
            ("entry", |f| f.entry),
            ("column", |f| Some(f.column)),
            ("otlp", |f| f.otlp),
            ("csv", |f| f.csv),
        ];
        for (shape, name) in shapes {
            let mut seen = HashSet::new();
            for f in &FIELDS {
                if let Some(n) = name(f) {
                    assert!(seen.insert(n), "{shape} name {n:?} used twice");
                }
            }
        }
        for (i, f) in FIELDS.iter().enumerate() {
            assert_eq!(f.id as usize, i, "{:?} is out of order", f.id);
            if let Some(k) = f.otlp {
                assert_eq!(by_otlp_key(k), Some(f.id));
            }
        }
    }
}
