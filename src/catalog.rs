//! The metric catalogue: every metric name, help text, type, unit, label set and bucket layout.
//!
//! This is the only place metric names are written. The exporter, the dashboards and the alert
//! rules refer to these definitions (a test checks that every name used in `dashboards/` and
//! `alerts/` exists here). Counter names are written *without* `_total`; the encoder adds it.

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter; samples carry the `_total` suffix.
    Counter,
    /// Point-in-time value.
    Gauge,
    /// Classic cumulative histogram (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// One metric family definition.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Family name (for counters, without `_total`).
    pub name: &'static str,
    /// `# HELP` text.
    pub help: &'static str,
    /// Family type.
    pub kind: Kind,
    /// OpenMetrics unit, when the name ends with it.
    pub unit: Option<&'static str>,
    /// Label names, in exposition order.
    pub labels: &'static [&'static str],
}

impl Metric {
    /// The names of the samples this family emits, e.g. `foo_total` or `foo_bucket`.
    pub fn sample_names(&self) -> Vec<String> {
        match self.kind {
            Kind::Counter => vec![format!("{}_total", self.name)],
            Kind::Gauge => vec![self.name.to_string()],
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{}{s}", self.name))
                .collect(),
        }
    }
}

macro_rules! metric {
    ($id:ident, $name:literal, $kind:ident, $unit:expr, [$($label:literal),*], $help:literal) => {
        #[doc = $help]
        pub const $id: Metric = Metric {
            name: $name,
            help: $help,
            kind: Kind::$kind,
            unit: $unit,
            labels: &[$($label),*],
        };
    };
}

const S: Option<&str> = Some("seconds");
const USD: Option<&str> = Some("usd");

// ---- Seed names: kept exactly so existing PromQL keeps working. ----
metric!(
    REQUESTS,
    "ai_gateway_requests",
    Counter,
    None,
    [],
    "Requests completed by the gateway fleet."
);
metric!(
    ERRORS,
    "ai_gateway_errors",
    Counter,
    None,
    [],
    "Requests that failed (4xx, 5xx or no response)."
);
metric!(
    RESPONSE_TIME,
    "ai_gateway_response_time_seconds",
    Gauge,
    S,
    [],
    "Average response time since start."
);
metric!(
    UPTIME,
    "ai_gateway_uptime_seconds",
    Gauge,
    S,
    [],
    "Seconds since this gatemeter process started."
);
metric!(
    NS_REQUESTS,
    "ai_gateway_namespace_requests",
    Counter,
    None,
    ["namespace", "namespace_code"],
    "Requests completed per namespace."
);
metric!(
    NS_CONCURRENT,
    "ai_gateway_namespace_concurrent_requests",
    Gauge,
    None,
    ["namespace", "namespace_code"],
    "Requests started but not yet finished, per namespace (two-phase ingest)."
);
metric!(
    NS_RESPONSE_TIME,
    "ai_gateway_namespace_response_time_seconds",
    Gauge,
    S,
    ["namespace", "namespace_code"],
    "Average response time since start, per namespace."
);
metric!(
    NS_STATUS,
    "ai_gateway_namespace_status_codes",
    Counter,
    None,
    ["namespace", "namespace_code", "status_code"],
    "Requests per namespace and final HTTP status code (0 = no response)."
);
metric!(
    MODEL_REQUESTS,
    "model_requests",
    Counter,
    None,
    ["provider", "model"],
    "Requests per provider and model."
);
metric!(
    MODEL_DURATION,
    "model_request_duration_seconds",
    Histogram,
    S,
    ["provider", "model"],
    "Request duration per provider and model (buckets derived from HDR histograms)."
);
metric!(
    MODEL_TOKENS_INPUT,
    "model_tokens_input",
    Counter,
    None,
    ["provider", "model"],
    "Input tokens (excluding cache buckets) per provider and model."
);
metric!(
    MODEL_TOKENS_OUTPUT,
    "model_tokens_output",
    Counter,
    None,
    ["provider", "model"],
    "Output tokens per provider and model."
);
metric!(
    MODEL_COST,
    "model_cost_usd",
    Counter,
    USD,
    ["provider", "model"],
    "Cost in USD per provider and model (kept as integer micro-USD)."
);
metric!(
    MODEL_ERRORS,
    "model_errors",
    Counter,
    None,
    ["provider", "model"],
    "Failed requests per provider and model."
);

// ---- Beyond the seed: traffic. ----
metric!(
    NS_ERRORS,
    "gatemeter_namespace_errors",
    Counter,
    None,
    ["namespace"],
    "Failed requests per namespace."
);
metric!(
    STATUS,
    "gatemeter_status_codes",
    Counter,
    None,
    ["status_code"],
    "Requests per final HTTP status code (0 = no response)."
);
metric!(
    PROVIDER_REQUESTS,
    "gatemeter_provider_requests",
    Counter,
    None,
    ["provider"],
    "Requests per provider (empty provider: blocked before forwarding)."
);
metric!(
    PROVIDER_ERRORS,
    "gatemeter_provider_errors",
    Counter,
    None,
    ["provider"],
    "Failed requests per provider."
);
metric!(
    DURATION,
    "gatemeter_request_duration_seconds",
    Histogram,
    S,
    [],
    "Request duration over all requests (buckets derived from HDR histograms)."
);
metric!(
    NS_DURATION,
    "gatemeter_namespace_request_duration_seconds",
    Histogram,
    S,
    ["namespace"],
    "Request duration per namespace."
);
metric!(
    PROVIDER_DURATION,
    "gatemeter_provider_request_duration_seconds",
    Histogram,
    S,
    ["provider"],
    "Request duration per provider."
);
metric!(
    MODEL_TTFB,
    "gatemeter_time_to_first_byte_seconds",
    Histogram,
    S,
    ["provider", "model"],
    "Time to first byte/token per provider and model (records that report ttfb_ms)."
);
metric!(
    DURATION_Q,
    "gatemeter_request_duration_quantile_seconds",
    Gauge,
    S,
    ["window", "percentile"],
    "Exact (HDR, nearest-rank) request duration quantiles over all requests; window 1m, 5m or all (since start)."
);
metric!(
    NS_DURATION_Q,
    "gatemeter_namespace_request_duration_quantile_seconds",
    Gauge,
    S,
    ["namespace", "window", "percentile"],
    "Request duration quantiles per namespace."
);
metric!(
    PROVIDER_DURATION_Q,
    "gatemeter_provider_request_duration_quantile_seconds",
    Gauge,
    S,
    ["provider", "window", "percentile"],
    "Request duration quantiles per provider."
);
metric!(
    MODEL_DURATION_Q,
    "gatemeter_model_request_duration_quantile_seconds",
    Gauge,
    S,
    ["provider", "model", "window", "percentile"],
    "Request duration quantiles per provider and model."
);
metric!(
    TTFB_Q,
    "gatemeter_time_to_first_byte_quantile_seconds",
    Gauge,
    S,
    ["window", "percentile"],
    "Time-to-first-byte quantiles over all requests that report it."
);
metric!(
    MODEL_TTFB_Q,
    "gatemeter_model_time_to_first_byte_quantile_seconds",
    Gauge,
    S,
    ["provider", "model", "window", "percentile"],
    "Time-to-first-byte quantiles per provider and model."
);
metric!(
    TOKENS,
    "gatemeter_tokens",
    Counter,
    None,
    ["type"],
    "Tokens over all requests by type: input, output, cache_write_5m, cache_write_1h, cache_read."
);
metric!(
    NS_TOKENS,
    "gatemeter_namespace_tokens",
    Counter,
    None,
    ["namespace", "type"],
    "Tokens per namespace and type."
);
metric!(
    MODEL_TOKENS,
    "gatemeter_model_tokens",
    Counter,
    None,
    ["provider", "model", "type"],
    "Tokens per provider, model and type."
);
metric!(
    COST,
    "gatemeter_cost_usd",
    Counter,
    USD,
    [],
    "Cost in USD over all requests (kept as integer micro-USD)."
);
metric!(
    NS_COST,
    "gatemeter_namespace_cost_usd",
    Counter,
    USD,
    ["namespace"],
    "Cost in USD per namespace."
);
metric!(
    UNPRICED,
    "gatemeter_unpriced_requests",
    Counter,
    None,
    ["provider", "model"],
    "Requests that carried no cost and whose model is not in the price table (counted at cost 0)."
);
metric!(
    ABANDONED,
    "gatemeter_abandoned_requests",
    Counter,
    None,
    ["namespace"],
    "Start markers never finished within the pending timeout."
);

// ---- OpenTelemetry GenAI semantic conventions. ----
metric!(
    GENAI_DURATION,
    "gen_ai_client_operation_duration_seconds",
    Histogram,
    S,
    [
        "gen_ai_operation_name",
        "gen_ai_provider_name",
        "gen_ai_response_model"
    ],
    "GenAI operation duration (semconv buckets, derived from HDR histograms)."
);
metric!(
    GENAI_TOKENS,
    "gen_ai_client_token_usage",
    Histogram,
    None,
    [
        "gen_ai_operation_name",
        "gen_ai_provider_name",
        "gen_ai_response_model",
        "gen_ai_token_type"
    ],
    "Tokens per GenAI operation (semconv buckets, exact counts; input includes cache reads and writes)."
);

// ---- gatemeter's own health (per process). ----
metric!(
    INGEST_ACCEPTED,
    "gatemeter_ingest_accepted_records",
    Counter,
    None,
    ["source"],
    "Records accepted by this process's ingest API (duplicates included)."
);
metric!(
    INGEST_REJECTED,
    "gatemeter_ingest_rejected_records",
    Counter,
    None,
    ["source", "reason"],
    "Records rejected by this process's ingest API, by reason."
);
metric!(
    INGEST_REJECTED_REQUESTS,
    "gatemeter_ingest_rejected_requests",
    Counter,
    None,
    ["source", "reason"],
    "Whole ingest requests rejected before any record could be read, by reason."
);
metric!(
    DROPPED,
    "gatemeter_dropped_records",
    Counter,
    None,
    ["reason"],
    "Valid records this process could not take or pass on, by reason."
);
metric!(
    DUPLICATES,
    "gatemeter_duplicate_records",
    Counter,
    None,
    [],
    "Records ignored because their request_id was already counted."
);
metric!(
    PROCESSED,
    "gatemeter_processed_records",
    Counter,
    None,
    [],
    "Records and start markers applied by the aggregator."
);
metric!(
    QUEUE_DEPTH,
    "gatemeter_queue_depth_records",
    Gauge,
    None,
    [],
    "Records waiting in the ingest queue."
);
metric!(
    SPOOL_BYTES,
    "gatemeter_spool_bytes",
    Gauge,
    Some("bytes"),
    [],
    "Bytes in the durable spool (durability: spool): records not yet confirmed by both stores."
);
metric!(
    SPOOL_SYNCS,
    "gatemeter_spool_syncs",
    Counter,
    None,
    [],
    "Group commits of the durable spool: one write and one fdatasync each."
);
metric!(
    SPOOL_SYNC_SECONDS,
    "gatemeter_spool_sync_seconds",
    Counter,
    S,
    [],
    "Time spent in the durable spool's group commits (divide by gatemeter_spool_syncs_total for the mean)."
);
metric!(
    SPOOL_RECORDS,
    "gatemeter_spool_records",
    Counter,
    None,
    [],
    "Records and start markers written to the durable spool and acknowledged."
);
metric!(
    SPOOL_REPLAYED,
    "gatemeter_spool_replayed_records",
    Counter,
    None,
    [],
    "Records and start markers replayed from the durable spool at start (left by a crash)."
);
metric!(
    QUEUE_CAPACITY,
    "gatemeter_queue_capacity_records",
    Gauge,
    None,
    [],
    "Capacity of the ingest queue in records."
);
metric!(
    PENDING,
    "gatemeter_pending_requests",
    Gauge,
    None,
    [],
    "Start markers waiting for their final record in this process."
);
metric!(
    CONNECTIONS_OPEN,
    "gatemeter_open_connections",
    Gauge,
    None,
    [],
    "HTTP connections open to this process (at most `server.max_connections`)."
);
metric!(
    CONNECTIONS_REFUSED,
    "gatemeter_refused_connections",
    Counter,
    None,
    [],
    "HTTP connections refused because `server.max_connections` were open (answered 503 and closed)."
);
metric!(
    TLS_HANDSHAKE_FAILURES,
    "gatemeter_tls_handshake_failures",
    Counter,
    None,
    [],
    "TLS connections to `listen_tls` / `metrics_listen_tls` closed because the handshake failed (not TLS, e.g. plain HTTP; an alert, e.g. the client rejecting the certificate; no common version or cipher) or did not complete within `server.header_timeout_secs`. A client hanging up is not counted."
);
metric!(
    SERIES_OVERFLOW,
    "gatemeter_series_overflow",
    Counter,
    None,
    ["dimension"],
    "Records folded into the `__overflow__` series because a label dimension reached its series cap."
);
metric!(
    SERIES_REFUSED,
    "gatemeter_series_refused",
    Counter,
    None,
    ["kind"],
    "New label values that got less than their own series from the global series budget (`pipeline.max_series`): kind=histogram got counters only (observations in `__overflow__`'s histograms), kind=series were folded into `__overflow__`."
);
// ---- Analytics (from the request log's rollups, refreshed every `analytics.refresh_secs`;
// fleet-wide when the replicas share PostgreSQL). Bounded: namespaces and providers capped,
// leaderboards top N + `other`; no user or session id is a label elsewhere. ----
metric!(
    ACTIVE_SESSIONS,
    "gatemeter_active_sessions",
    Gauge,
    None,
    ["namespace"],
    "Sessions with a request in the last `analytics.session_active_secs`, per namespace of the session's first request (the busiest 50; the rest in `__overflow__`)."
);
metric!(
    PROVIDER_AVAILABILITY,
    "gatemeter_provider_availability_ratio",
    Gauge,
    None,
    ["provider", "window"],
    "Successful (2xx/3xx) requests / requests of a provider over the window (5m, 1h); no series without requests. Requests blocked before forwarding (no provider) are left out."
);
metric!(
    PROVIDER_STATUS,
    "gatemeter_provider_status",
    Gauge,
    None,
    ["provider", "status"],
    "1 for the provider's current status, 0 for the others: green (availability over the last hour at least 50 %), red (below), unknown (no request in 15 minutes). Providers with a request in the last 7 days."
);
metric!(
    LEADERBOARD_COST,
    "gatemeter_leaderboard_cost_usd",
    Gauge,
    USD,
    ["scope", "period", "rank", "name"],
    "Top `analytics.top_n` users, keys, providers or requested models by cost in the period (today, week, month in `analytics.time_zone`); rank `other` sums the rest."
);
metric!(
    LEADERBOARD_REQUESTS,
    "gatemeter_leaderboard_requests",
    Gauge,
    None,
    ["scope", "period", "rank", "name"],
    "Top `analytics.top_n` users, keys, providers or requested models by requests in the period (today, week, month in `analytics.time_zone`); rank `other` sums the rest."
);
// ---- Active probes (per process: each replica counts the runs it made, and with a shared Redis
// a probe runs once per interval across the fleet, so sum over replicas; `up` shows the fleet's
// last run on every replica). Labels are the configured probes (at most `probe::MAX_PROBES`,
// each asking the series budget once, at start). ----
metric!(
    PROBE_UP,
    "gatemeter_probe_up",
    Gauge,
    None,
    ["probe", "provider"],
    "1 when the probe's last run succeeded, 0 when it failed (with a shared Redis: the fleet's last run); no series before the first run."
);
metric!(
    PROBE_DURATION,
    "gatemeter_probe_duration_seconds",
    Histogram,
    S,
    ["probe", "provider"],
    "Duration of the probe runs this process made, from start to answer (HTTP status line or TCP connect) or failure."
);
metric!(
    PROBE_RESULTS,
    "gatemeter_probe_results",
    Counter,
    None,
    ["probe", "provider", "outcome"],
    "Probe runs this process made, by outcome: ok, fail (unexpected status), timeout, refused, tls, dns, error."
);
metric!(
    SERIES_BUDGET,
    "gatemeter_series_budget",
    Gauge,
    None,
    ["state"],
    "The global series budget: state=limit is `pipeline.max_series`, state=used the series of this exposition (this family included)."
);
metric!(
    STORE_UP,
    "gatemeter_store_up",
    Gauge,
    None,
    ["store"],
    "1 when the store is reachable, 0 when not: the live store (`memory`, `redis`) and the request log (`sqlite`, `postgres`)."
);
metric!(
    SELF_UPTIME,
    "gatemeter_uptime_seconds",
    Gauge,
    S,
    [],
    "Seconds since this gatemeter process started."
);
metric!(
    BUILD_INFO,
    "gatemeter_build_info",
    Gauge,
    None,
    ["version"],
    "Build information; value is always 1."
);

// ---- Claude Code (OTLP receiver). Attribute-labelled families have dynamic labels: the point's
// attributes with `.` → `_`, minus session.id, user.*, organization.id and account ids unless
// allow-listed (`otlp.label_allowlist`). ----
metric!(
    CC_SESSIONS,
    "claude_code_session_count",
    Counter,
    None,
    [],
    "Claude Code sessions started (from the metric claude_code.session.count; labels: its attributes)."
);
metric!(
    CC_COST,
    "claude_code_cost_usage_usd",
    Counter,
    USD,
    [],
    "Claude Code cost in USD from the metric claude_code.cost.usage (labels: its attributes). Request-record cost from api_request events is in gatemeter_cost_usd / model_cost_usd; never add the two."
);
metric!(
    CC_TOKENS,
    "claude_code_token_usage_tokens",
    Counter,
    Some("tokens"),
    [],
    "Claude Code tokens from the metric claude_code.token.usage, by type (labels: its attributes). Request-record tokens from api_request events are in gatemeter_tokens; never add the two."
);
metric!(
    CC_ACTIVE_TIME,
    "claude_code_active_time_seconds",
    Counter,
    S,
    [],
    "Claude Code active time from the metric claude_code.active_time.total (labels: its attributes)."
);
metric!(
    CC_LINES,
    "claude_code_lines_of_code",
    Counter,
    None,
    [],
    "Lines of code changed, from the metric claude_code.lines_of_code.count (labels: its attributes)."
);
metric!(
    CC_EDIT_DECISIONS,
    "claude_code_code_edit_tool_decisions",
    Counter,
    None,
    [],
    "Code edit tool permission decisions, from the metric claude_code.code_edit_tool.decision (labels: its attributes)."
);
metric!(
    CC_COMMITS,
    "claude_code_commits",
    Counter,
    None,
    [],
    "Git commits made by Claude Code, from the metric claude_code.commit.count (labels: its attributes)."
);
metric!(
    CC_PULL_REQUESTS,
    "claude_code_pull_requests",
    Counter,
    None,
    [],
    "Pull requests created by Claude Code, from the metric claude_code.pull_request.count (labels: its attributes)."
);
metric!(
    CC_EVENTS,
    "claude_code_events",
    Counter,
    None,
    ["event"],
    "Claude Code log events received, by event name (capped; beyond it `__overflow__`)."
);
metric!(
    CC_TOOL_CALLS,
    "claude_code_tool_calls",
    Counter,
    None,
    ["tool"],
    "Tool calls (tool_result events), by tool name (capped; beyond it `__overflow__`)."
);
metric!(
    CC_TOOL_FAILURES,
    "claude_code_tool_failures",
    Counter,
    None,
    ["tool"],
    "Tool calls that failed (tool_result with success=false), by tool name."
);
metric!(
    CC_TOOL_DURATION,
    "claude_code_tool_duration_seconds",
    Histogram,
    S,
    ["tool"],
    "Duration of tool calls (tool_result duration_ms), by tool name."
);
metric!(
    CC_TOOL_DECISIONS,
    "claude_code_tool_decisions",
    Counter,
    None,
    ["tool", "decision", "source"],
    "Tool permission decisions (tool_decision events), by tool, decision and who decided."
);
metric!(
    CC_SERIES_OVERFLOW,
    "gatemeter_claude_code_series_overflow",
    Counter,
    None,
    ["metric"],
    "Claude Code metric points folded into the overflow series because the metric reached its series cap."
);
metric!(
    OTLP_RECEIVED,
    "gatemeter_otlp_received_items",
    Counter,
    None,
    ["signal"],
    "OTLP items received (log records, metric data points, spans), by signal."
);
metric!(
    OTLP_ACCEPTED,
    "gatemeter_otlp_accepted_items",
    Counter,
    None,
    ["signal", "use"],
    "OTLP items accepted, by signal and what they became (record, tool, event, metric, repeated, covered, unused)."
);
metric!(
    OTLP_UNUSED,
    "gatemeter_otlp_unused_items",
    Counter,
    None,
    ["signal", "source"],
    "OTLP items accepted but not read (use=\"unused\"), by signal and source: the instrumentation scope (spans, metric points) or event name (log records); at most 64 sources, then __overflow__."
);
metric!(
    OTLP_REJECTED,
    "gatemeter_otlp_rejected_items",
    Counter,
    None,
    ["signal", "reason"],
    "OTLP items rejected (reported in partial_success), by signal and reason."
);
metric!(
    OTLP_REJECTED_REQUESTS,
    "gatemeter_otlp_rejected_requests",
    Counter,
    None,
    ["signal", "reason"],
    "OTLP export requests refused as a whole (4xx/5xx), by signal and reason."
);
metric!(
    OTLP_EXPORTED,
    "gatemeter_otlp_export_records",
    Counter,
    None,
    [],
    "Request records delivered to the OTLP log export endpoint."
);
metric!(
    OTLP_EXPORT_DROPPED,
    "gatemeter_otlp_export_dropped_records",
    Counter,
    None,
    ["reason"],
    "Request records the OTLP log export gave up on, by reason."
);
metric!(
    OTLP_EXPORT_RETRIES,
    "gatemeter_otlp_export_retries",
    Counter,
    None,
    [],
    "OTLP log export requests retried (after 429/502/503/504 or a connection failure)."
);

/// The Claude Code metrics re-exposed as cumulative counters: OTLP name, family, and whether
/// the value is USD (printed rounded to the micro-dollar).
pub const CLAUDE_CODE_METRICS: &[(&str, Metric, bool)] = &[
    ("claude_code.session.count", CC_SESSIONS, false),
    ("claude_code.cost.usage", CC_COST, true),
    ("claude_code.token.usage", CC_TOKENS, false),
    ("claude_code.active_time.total", CC_ACTIVE_TIME, false),
    ("claude_code.lines_of_code.count", CC_LINES, false),
    (
        "claude_code.code_edit_tool.decision",
        CC_EDIT_DECISIONS,
        false,
    ),
    ("claude_code.commit.count", CC_COMMITS, false),
    ("claude_code.pull_request.count", CC_PULL_REQUESTS, false),
];

/// Every family, in exposition order.
pub const ALL: &[Metric] = &[
    REQUESTS,
    ERRORS,
    RESPONSE_TIME,
    UPTIME,
    NS_REQUESTS,
    NS_CONCURRENT,
    NS_RESPONSE_TIME,
    NS_STATUS,
    MODEL_REQUESTS,
    MODEL_DURATION,
    MODEL_TOKENS_INPUT,
    MODEL_TOKENS_OUTPUT,
    MODEL_COST,
    MODEL_ERRORS,
    NS_ERRORS,
    STATUS,
    PROVIDER_REQUESTS,
    PROVIDER_ERRORS,
    DURATION,
    NS_DURATION,
    PROVIDER_DURATION,
    MODEL_TTFB,
    DURATION_Q,
    NS_DURATION_Q,
    PROVIDER_DURATION_Q,
    MODEL_DURATION_Q,
    TTFB_Q,
    MODEL_TTFB_Q,
    TOKENS,
    NS_TOKENS,
    MODEL_TOKENS,
    COST,
    NS_COST,
    UNPRICED,
    ABANDONED,
    GENAI_DURATION,
    GENAI_TOKENS,
    INGEST_ACCEPTED,
    INGEST_REJECTED,
    INGEST_REJECTED_REQUESTS,
    DROPPED,
    DUPLICATES,
    PROCESSED,
    QUEUE_DEPTH,
    QUEUE_CAPACITY,
    SPOOL_BYTES,
    SPOOL_SYNCS,
    SPOOL_SYNC_SECONDS,
    SPOOL_RECORDS,
    SPOOL_REPLAYED,
    PENDING,
    CONNECTIONS_OPEN,
    CONNECTIONS_REFUSED,
    TLS_HANDSHAKE_FAILURES,
    SERIES_OVERFLOW,
    SERIES_REFUSED,
    STORE_UP,
    SELF_UPTIME,
    BUILD_INFO,
    CC_SESSIONS,
    CC_COST,
    CC_TOKENS,
    CC_ACTIVE_TIME,
    CC_LINES,
    CC_EDIT_DECISIONS,
    CC_COMMITS,
    CC_PULL_REQUESTS,
    CC_EVENTS,
    CC_TOOL_CALLS,
    CC_TOOL_FAILURES,
    CC_TOOL_DURATION,
    CC_TOOL_DECISIONS,
    CC_SERIES_OVERFLOW,
    OTLP_RECEIVED,
    OTLP_ACCEPTED,
    OTLP_UNUSED,
    OTLP_REJECTED,
    OTLP_REJECTED_REQUESTS,
    OTLP_EXPORTED,
    OTLP_EXPORT_DROPPED,
    OTLP_EXPORT_RETRIES,
    ACTIVE_SESSIONS,
    PROVIDER_AVAILABILITY,
    PROVIDER_STATUS,
    LEADERBOARD_COST,
    LEADERBOARD_REQUESTS,
    PROBE_UP,
    PROBE_DURATION,
    PROBE_RESULTS,
    SERIES_BUDGET,
];

/// The per-process families: each replica's own health, which differs between replicas and
/// is summed over them. Every other family is a fleet total (with the Redis store, any replica
/// answers the same), to be scraped from ONE replica — see `prometheus/prometheus.yml`.
pub const PROCESS: &[Metric] = &[
    UPTIME,
    INGEST_ACCEPTED,
    INGEST_REJECTED,
    INGEST_REJECTED_REQUESTS,
    DROPPED,
    DUPLICATES,
    PROCESSED,
    QUEUE_DEPTH,
    QUEUE_CAPACITY,
    SPOOL_BYTES,
    SPOOL_SYNCS,
    SPOOL_SYNC_SECONDS,
    SPOOL_RECORDS,
    SPOOL_REPLAYED,
    PENDING,
    CONNECTIONS_OPEN,
    CONNECTIONS_REFUSED,
    TLS_HANDSHAKE_FAILURES,
    STORE_UP,
    SELF_UPTIME,
    BUILD_INFO,
    PROBE_UP,
    PROBE_DURATION,
    PROBE_RESULTS,
];

/// A regular expression matching exactly the sample names of [`PROCESS`] families (for
/// Prometheus relabelling: `keep` on the per-replica job, `drop` on the fleet job).
pub fn process_sample_regex() -> String {
    let mut names: Vec<String> = PROCESS.iter().flat_map(|m| m.sample_names()).collect();
    names.sort();
    format!("({})", names.join("|"))
}

/// Bucket bounds (seconds) for gatemeter's own duration histograms: 5 ms to 10 min.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

/// Bucket bounds (seconds) of `gatemeter_probe_duration_seconds`: 1 ms to 60 s.
pub const PROBE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Bucket bounds of `gen_ai.client.operation.duration` from the OpenTelemetry GenAI semantic conventions.
pub const GENAI_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Bucket bounds of `gen_ai.client.token.usage` from the OpenTelemetry GenAI semantic conventions.
pub const GENAI_TOKEN_BUCKETS: &[u64] = &[
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
];

/// Quantiles exposed by the `*_quantile_seconds` gauges.
/// (The label is `percentile`, not `quantile`: Prometheus reserves `quantile` for summaries,
/// whose `_count` must be monotonic, which a sliding window is not.)
pub const QUANTILES: &[(f64, &str)] = &[(0.5, "50"), (0.95, "95"), (0.99, "99")];

/// Label value of the series that absorbs label values beyond a dimension's series cap.
pub const OVERFLOW_LABEL: &str = "__overflow__";

/// Finds a family by any of its sample names (`foo_total`, `foo_bucket`, `foo`, ...).
pub fn find_by_sample(sample: &str) -> Option<&'static Metric> {
    ALL.iter()
        .find(|m| m.sample_names().iter().any(|s| s == sample))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "duplicate family {}", m.name);
            assert!(
                !m.name.ends_with("_total"),
                "{}: the encoder adds _total",
                m.name
            );
            assert!(
                m.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                m.name
            );
            if let Some(unit) = m.unit {
                assert!(
                    m.name.ends_with(&format!("_{unit}")),
                    "{} must end with its unit",
                    m.name
                );
            }
        }
        let samples: Vec<String> = ALL.iter().flat_map(|m| m.sample_names()).collect();
        let unique: HashSet<&String> = samples.iter().collect();
        assert_eq!(
            unique.len(),
            samples.len(),
            "sample names collide across families"
        );
    }

    #[test]
    fn buckets_strictly_increase() {
        for w in DURATION_BUCKETS
            .windows(2)
            .chain(GENAI_DURATION_BUCKETS.windows(2))
            .chain(PROBE_BUCKETS.windows(2))
        {
            assert!(w[0] < w[1]);
        }
        for w in GENAI_TOKEN_BUCKETS.windows(2) {
            assert!(w[0] < w[1]);
        }
    }

    #[test]
    fn seed_names_are_present() {
        for seed in [
            "ai_gateway_requests_total",
            "ai_gateway_errors_total",
            "ai_gateway_response_time_seconds",
            "ai_gateway_uptime_seconds",
            "ai_gateway_namespace_requests_total",
            "ai_gateway_namespace_concurrent_requests",
            "ai_gateway_namespace_response_time_seconds",
            "ai_gateway_namespace_status_codes_total",
            "model_requests_total",
            "model_request_duration_seconds_bucket",
            "model_tokens_input_total",
            "model_tokens_output_total",
            "model_cost_usd_total",
            "model_errors_total",
        ] {
            assert!(find_by_sample(seed).is_some(), "seed sample {seed} missing");
        }
    }
}
