//! Configuration: one YAML file (unknown keys rejected) plus environment overrides, turned
//! into a validated, typed [`Config`]. The YAML crate is confined to this module.
//!
//! Every key is documented in `config/gatemeter.example.yaml`, which a test loads.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::aggregate::Limits;
use crate::api::auth::AuthConfig;
use crate::calendar::Zone;
use crate::export::backup::BackupConfig;
use crate::pipeline::PipelineConfig;
use crate::price::{ModelPrice, PriceTable};
use crate::server::{ListenTls, ServerConfig};
use crate::spool::SpoolConfig;
use crate::store::sql::analytics::AnalyticsConfig;
use crate::store::sql::{SqlBackend, SqlConfig};

pub use crate::export::otlp_logs::OtlpExportConfig;
pub use crate::ingest::native::IngestConfig;

pub mod effective;
pub mod probes;
pub mod redis;

/// Default listen address: OTLP/HTTP's port, loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4318";

/// Environment variable overriding `listen`.
pub const ENV_LISTEN: &str = "GATEMETER_LISTEN";

/// Environment variable setting `redis.url`; when set, it also selects the Redis live store.
pub const ENV_REDIS_URL: &str = "GATEMETER_REDIS_URL";

/// Environment variable setting `redis.sentinel.nodes` (comma-separated URLs, which may hold
/// passwords); when set, it also selects the Redis live store.
pub const ENV_REDIS_SENTINEL_NODES: &str = "GATEMETER_REDIS_SENTINEL_NODES";

/// Environment variable setting `redis.sentinel.master_name`.
pub const ENV_REDIS_SENTINEL_MASTER: &str = "GATEMETER_REDIS_SENTINEL_MASTER";

/// A configuration problem, with the key or file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key or a wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid {key}: {message}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// Why.
        message: String,
    },
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// A configured URL that may carry a credential (a password in its user part or a `password=`
/// parameter): its `Debug` output, which error messages and the raw sections' `Debug` use,
/// shows it redacted ([`crate::record::scrub::redact_url`]).
#[derive(Default, Deserialize)]
#[serde(transparent)]
pub(crate) struct RawUrl(pub(crate) String);

impl std::fmt::Debug for RawUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&crate::record::scrub::redact_url(&self.0), f)
    }
}

/// Header values from the configuration (they are often credentials): `Debug` shows the names.
#[derive(Default, Deserialize)]
#[serde(transparent)]
struct RawHeaderValues(BTreeMap<String, String>);

impl std::fmt::Debug for RawHeaderValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    listen: Option<String>,
    listen_tls: Option<RawListenTls>,
    metrics_listen: Option<String>,
    metrics_listen_tls: Option<RawListenTls>,
    server: RawServer,
    live_store: Option<String>,
    ingest: RawIngest,
    pipeline: RawPipeline,
    pricing: RawPricing,
    otlp: RawOtlp,
    otlp_export: Option<RawOtlpExport>,
    redis: redis::RawRedisConfig,
    log_store: RawLogStore,
    durability: Option<String>,
    spool: RawSpool,
    auth: RawAuth,
    analytics: RawAnalytics,
    probes: Vec<probes::RawProbe>,
    backup: RawBackup,
}

/// `listen_tls:` / `metrics_listen_tls:`: PEM files of the listener's certificate and key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListenTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl RawListenTls {
    /// Both files read and checked now (readable, PEM, the key the certificate's), so a bad
    /// file stops `check-config` and the start, naming its key.
    fn validate(self, key: &str) -> Result<ListenTls, ConfigError> {
        crate::tls::server_config(&self.cert_file, &self.key_file).map_err(|e| {
            let which = match e {
                crate::tls::TlsError::CertFile { .. } => "cert_file",
                _ => "key_file",
            };
            invalid(format!("{key}.{which}"), e.to_string())
        })?;
        Ok(ListenTls {
            cert_file: self.cert_file,
            key_file: self.key_file,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBackup {
    pg_dump_path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAnalytics {
    time_zone: Option<String>,
    users_see_leaderboards: Option<bool>,
    session_active_secs: Option<u64>,
    top_n: Option<usize>,
    refresh_secs: Option<u64>,
}

impl RawAnalytics {
    fn validate(self) -> Result<AnalyticsConfig, ConfigError> {
        let d = AnalyticsConfig::default();
        let time_zone = match self.time_zone {
            Some(name) => Zone::named(&name).map_err(|e| {
                invalid(
                    "analytics.time_zone",
                    format!("{e} (e.g. UTC, Europe/Berlin, Asia/Shanghai)"),
                )
            })?,
            None => d.time_zone,
        };
        let session_active_secs = self.session_active_secs.unwrap_or(d.session_active_secs);
        if session_active_secs == 0 || session_active_secs > 86_400 {
            return Err(invalid(
                "analytics.session_active_secs",
                format!("{session_active_secs} is not between 1 and 86400"),
            ));
        }
        Ok(AnalyticsConfig {
            time_zone,
            users_see_leaderboards: self.users_see_leaderboards.unwrap_or(false),
            session_active_secs,
            top_n: positive("analytics.top_n", self.top_n, d.top_n, 100)?,
            refresh_secs: positive(
                "analytics.refresh_secs",
                self.refresh_secs.map(|v| v as usize),
                d.refresh_secs as usize,
                3600,
            )? as u64,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSpool {
    dir: Option<PathBuf>,
    max_bytes: Option<u64>,
    segment_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    header_timeout_secs: Option<u64>,
    body_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    shutdown_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawOtlp {
    namespace_attribute: Option<String>,
    label_allowlist: Vec<String>,
    genai_event_sources: Vec<String>,
    genai_metric_sources: Vec<String>,
    max_series_per_metric: Option<usize>,
    max_streams: Option<usize>,
    max_tools: Option<usize>,
    queue_capacity: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOtlpExport {
    endpoint: RawUrl,
    batch_size: Option<usize>,
    interval_ms: Option<u64>,
    queue_capacity: Option<usize>,
    timeout_ms: Option<u64>,
    max_retries: Option<u32>,
    /// Header → value; `${VAR}` in a value is replaced by the environment variable `VAR`.
    #[serde(default)]
    headers: RawHeaderValues,
    /// `none` (default) or `gzip`.
    compression: Option<String>,
    /// PEM certificates trusted for an `https://` endpoint besides the system's roots.
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawIngest {
    max_body_bytes: Option<usize>,
    max_records_per_request: Option<usize>,
    pending_timeout_secs: Option<u64>,
    max_pending: Option<usize>,
    dedup_window: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPipeline {
    queue_capacity: Option<usize>,
    flush_interval_ms: Option<u64>,
    max_series_per_dimension: Option<usize>,
    max_series: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPricing {
    provider_multipliers: HashMap<String, f64>,
    models: BTreeMap<String, RawPrice>,
    /// Currency → USD per unit; numbers are read as the decimal they are written as.
    exchange_rates: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: f64,
    output: f64,
    cache_write_5m: Option<f64>,
    cache_write_1h: Option<f64>,
    cache_read: Option<f64>,
}

/// The OTLP receiver's mapping and Claude Code state bounds (`otlp:`).
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// How log records and points are mapped.
    pub mapping: crate::claude_code::mapping::Mapping,
    /// Bounds of the Claude Code state.
    pub limits: crate::claude_code::state::Limits,
    /// Batches waiting for the Claude Code task.
    pub queue_capacity: usize,
}

/// Which live store holds the aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveStoreKind {
    /// In process memory (one process is the fleet).
    Memory,
    /// Shared Redis (the fleet's source of truth; see `store::redis`).
    Redis,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// TLS on `listen` (certificate and key files), when configured.
    pub listen_tls: Option<ListenTls>,
    /// A separate listener for `/metrics` (then not served on `listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// TLS on `metrics_listen`, when configured.
    pub metrics_listen_tls: Option<ListenTls>,
    /// Connection timeouts, cap and shutdown deadline.
    pub server: ServerConfig,
    /// Live store backend.
    pub live_store: LiveStoreKind,
    /// Native ingest limits.
    pub ingest: IngestConfig,
    /// Queue, flush and aggregator limits.
    pub pipeline: PipelineConfig,
    /// Price table.
    pub prices: Arc<PriceTable>,
    /// OTLP receiver.
    pub otlp: OtlpConfig,
    /// OTLP log export, when configured.
    pub otlp_export: Option<OtlpExportConfig>,
    /// Redis live-store settings (used when `live_store` is Redis).
    pub redis: crate::store::redis::RedisConfig,
    /// The SQL request log; `None` keeps no log (`log_store.kind: none`).
    pub log_store: Option<SqlConfig>,
    /// Most rows in one usage CSV export.
    pub export_max_rows: u64,
    /// Durable acknowledgement: the spool's settings with `durability: spool`, else `None`.
    pub spool: Option<SpoolConfig>,
    /// Bearer tokens and roles.
    pub auth: AuthConfig,
    /// The analytics API: time zone, who sees leaderboards, session activity.
    pub analytics: AnalyticsConfig,
    /// Active provider probes (`probes:`), in order.
    pub probes: Vec<crate::probe::ProbeConfig>,
    /// The database backup export (`backup:`).
    pub backup: BackupConfig,
}

impl Default for Config {
    fn default() -> Self {
        // The defaults of an empty file; an empty file always validates.
        match Config::from_yaml_str("{}", Path::new("<defaults>"), &|_| None) {
            Ok(c) => c,
            Err(e) => unreachable!("defaults must validate: {e}"),
        }
    }
}

impl Config {
    /// Loads a file and applies the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_str(&text, path, &|k| std::env::var(k).ok())
    }

    /// Defaults plus the process environment (no file).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_yaml_str("{}", Path::new("<defaults>"), &|k| std::env::var(k).ok())
    }

    /// Parses YAML text; `env` looks up environment overrides.
    pub fn from_yaml_str(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
        };
        raw.validate(env)
    }
}

fn positive(key: &str, v: Option<usize>, default: usize, max: usize) -> Result<usize, ConfigError> {
    let v = v.unwrap_or(default);
    if v == 0 || v > max {
        return Err(invalid(key, format!("{v} is not between 1 and {max}")));
    }
    Ok(v)
}

impl RawConfig {
    fn validate(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        // The order of the checks decides which error a file with several is told about.
        let listen = listen(self.listen, env)?;
        let metrics_listen = metrics_listen(self.metrics_listen, env)?;
        if metrics_listen == Some(listen) {
            return Err(invalid(
                "metrics_listen",
                format!("{listen} is the main listener's address"),
            ));
        }
        let listen_tls = self
            .listen_tls
            .map(|t| t.validate("listen_tls"))
            .transpose()?;
        let metrics_listen_tls = match (self.metrics_listen_tls, metrics_listen) {
            (None, _) => None,
            (Some(t), Some(_)) => Some(t.validate("metrics_listen_tls")?),
            (Some(_), None) => {
                return Err(invalid(
                    "metrics_listen_tls",
                    "needs metrics_listen (listen_tls covers /metrics on the main listener)",
                ));
            }
        };
        let server = self.server.validate()?;
        let redis_url = env(ENV_REDIS_URL).filter(|u| !u.is_empty());
        let redis_env = redis_url.is_some()
            || env(ENV_REDIS_SENTINEL_NODES).is_some_and(|n| !n.trim().is_empty());
        let live_store = live_store(self.live_store.as_deref(), redis_env)?;
        let redis = self.redis.validate(redis_url, env)?;
        let (mut ingest, pipeline) = self.ingest.validate(self.pipeline)?;
        let prices = Arc::new(self.pricing.validate()?);
        let otlp = self.otlp.validate()?;
        let otlp_export = self.otlp_export.map(|x| x.validate(env)).transpose()?;
        let data_dir = env(ENV_DATA_DIR)
            .map(PathBuf::from)
            .or_else(|| self.log_store.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("data"));
        let queue_bytes_set = self.log_store.queue_bytes.is_some();
        let (mut log_store, export_max_rows, keep_requests) = self.log_store.validate(env)?;
        ingest.keep_requests = keep_requests;
        let backup = BackupConfig {
            pg_dump_path: self.backup.pg_dump_path,
        };
        let spool = self.spool.validate(self.durability, &data_dir, env)?;
        if let (Some(l), Some(_), false) = (log_store.as_mut(), &spool, queue_bytes_set) {
            // With the spool a record dropped from the log's queue is an acknowledged record
            // missing from the log: the queue is bounded by `queue_capacity` alone by default.
            l.queue_bytes = 1 << 40;
        }
        let auth = self.auth.validate(env)?;
        let analytics = self.analytics.validate()?;
        let probes = probes::validate(self.probes, env)?;
        Ok(Config {
            listen,
            listen_tls,
            metrics_listen,
            metrics_listen_tls,
            server,
            live_store,
            ingest,
            pipeline,
            prices,
            otlp,
            otlp_export,
            redis,
            log_store,
            export_max_rows,
            spool,
            auth,
            analytics,
            probes,
            backup,
        })
    }
}

/// Environment variable setting `metrics_listen`.
pub const ENV_METRICS_LISTEN: &str = "GATEMETER_METRICS_LISTEN";

/// `metrics_listen`, or `GATEMETER_METRICS_LISTEN` over it; unset or empty: none.
fn metrics_listen(
    raw: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<SocketAddr>, ConfigError> {
    let (key, v) = match env(ENV_METRICS_LISTEN) {
        Some(v) => (ENV_METRICS_LISTEN, v),
        None => ("metrics_listen", raw.unwrap_or_default()),
    };
    if v.is_empty() {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|e| {
        invalid(
            key,
            format!("{v:?} is not an address like 127.0.0.1:9464: {e}"),
        )
    })
}

/// `listen`, or `GATEMETER_LISTEN` over it.
fn listen(
    raw: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SocketAddr, ConfigError> {
    let (listen_key, listen) = match env(ENV_LISTEN) {
        Some(v) => (ENV_LISTEN, v),
        None => ("listen", raw.unwrap_or_else(|| DEFAULT_LISTEN.to_string())),
    };
    listen.parse().map_err(|e| {
        invalid(
            listen_key,
            format!("{listen:?} is not an address like 127.0.0.1:4318: {e}"),
        )
    })
}

impl RawServer {
    /// `server:`: connection timeouts, the connection cap and the shutdown deadline.
    fn validate(self) -> Result<ServerConfig, ConfigError> {
        let d = ServerConfig::default();
        let secs = |key: &str, v: Option<u64>, default: Duration, min: u64| {
            let v = v.unwrap_or(default.as_secs());
            if (min..=3600).contains(&v) {
                Ok(Duration::from_secs(v))
            } else {
                Err(invalid(key, format!("{v} is not between {min} and 3600")))
            }
        };
        Ok(ServerConfig {
            header_timeout: secs(
                "server.header_timeout_secs",
                self.header_timeout_secs,
                d.header_timeout,
                1,
            )?,
            body_timeout: secs(
                "server.body_timeout_secs",
                self.body_timeout_secs,
                d.body_timeout,
                1,
            )?,
            idle_timeout: secs(
                "server.idle_timeout_secs",
                self.idle_timeout_secs,
                d.idle_timeout,
                1,
            )?,
            max_connections: positive(
                "server.max_connections",
                self.max_connections,
                d.max_connections,
                1_000_000,
            )?,
            shutdown_timeout: secs(
                "server.shutdown_timeout_secs",
                self.shutdown_timeout_secs,
                d.shutdown_timeout,
                0,
            )?,
        })
    }
}

/// `live_store`: the file's choice, or Redis when `GATEMETER_REDIS_URL` or
/// `GATEMETER_REDIS_SENTINEL_NODES` is set (`redis_env`).
fn live_store(raw: Option<&str>, redis_env: bool) -> Result<LiveStoreKind, ConfigError> {
    Ok(match raw {
        _ if redis_env => LiveStoreKind::Redis,
        None | Some("memory") => LiveStoreKind::Memory,
        Some("redis") => LiveStoreKind::Redis,
        Some(other) => {
            return Err(invalid(
                "live_store",
                format!("{other:?} is not a live store (memory, redis)"),
            ));
        }
    })
}

impl RawIngest {
    /// `ingest:` and `pipeline:`, which bound each other (a full-size batch must fit the queue).
    fn validate(self, p: RawPipeline) -> Result<(IngestConfig, PipelineConfig), ConfigError> {
        let ingest = IngestConfig {
            max_body_bytes: positive(
                "ingest.max_body_bytes",
                self.max_body_bytes,
                8 << 20,
                1 << 30,
            )?,
            max_records_per_request: positive(
                "ingest.max_records_per_request",
                self.max_records_per_request,
                10_000,
                1_000_000,
            )?,
            // Set from `log_store.store_requests` (RawConfig::validate).
            keep_requests: None,
        };
        let pending_timeout_secs = self.pending_timeout_secs.unwrap_or(600);
        if pending_timeout_secs == 0 || pending_timeout_secs > 86_400 {
            return Err(invalid(
                "ingest.pending_timeout_secs",
                format!("{pending_timeout_secs} is not between 1 and 86400"),
            ));
        }
        let limits = Limits {
            dedup_window: self.dedup_window.unwrap_or(200_000),
            pending_timeout_ms: pending_timeout_secs as i64 * 1000,
            max_pending: positive("ingest.max_pending", self.max_pending, 100_000, 10_000_000)?,
            max_series_per_dimension: positive(
                "pipeline.max_series_per_dimension",
                p.max_series_per_dimension,
                1000,
                100_000,
            )?,
        };
        if limits.dedup_window > 10_000_000 {
            return Err(invalid("ingest.dedup_window", "at most 10000000 ids"));
        }
        let flush_ms = p.flush_interval_ms.unwrap_or(1000);
        if !(10..=60_000).contains(&flush_ms) {
            return Err(invalid(
                "pipeline.flush_interval_ms",
                format!("{flush_ms} is not between 10 and 60000"),
            ));
        }
        let pipeline = PipelineConfig {
            queue_capacity: positive(
                "pipeline.queue_capacity",
                p.queue_capacity,
                200_000,
                100_000_000,
            )?,
            flush_interval: Duration::from_millis(flush_ms),
            limits,
            max_series: positive(
                "pipeline.max_series",
                p.max_series,
                crate::budget::DEFAULT_MAX_SERIES as usize,
                100_000_000,
            )? as u64,
        };
        if pipeline.max_series < crate::budget::MIN_SERIES {
            return Err(invalid(
                "pipeline.max_series",
                format!(
                    "{} is below {}: the fixed families and the __overflow__ series need {} of it",
                    pipeline.max_series,
                    crate::budget::MIN_SERIES,
                    crate::budget::RESERVE
                ),
            ));
        }
        if pipeline.queue_capacity < ingest.max_records_per_request {
            return Err(invalid(
                "pipeline.queue_capacity",
                format!(
                    "{} is smaller than ingest.max_records_per_request ({}): a full-size batch could never be queued",
                    pipeline.queue_capacity, ingest.max_records_per_request
                ),
            ));
        }

        Ok((ingest, pipeline))
    }
}

impl RawPricing {
    /// `pricing:` into the price table.
    fn validate(self) -> Result<PriceTable, ConfigError> {
        let mut models = HashMap::new();
        for (name, p) in self.models {
            let price = ModelPrice::from_usd_per_mtok(
                p.input,
                p.output,
                p.cache_write_5m.unwrap_or(p.input),
                p.cache_write_1h.unwrap_or(p.input),
                p.cache_read.unwrap_or(p.input),
            )
            .map_err(|m| invalid(format!("pricing.models.{name}"), m))?;
            models.insert(name, price);
        }
        let mut rates = HashMap::new();
        for (code, v) in self.exchange_rates {
            // A YAML number prints as its shortest exact decimal (0.138 → "0.138"); the
            // price table parses that text into integers, so no float touches money.
            let text = match v {
                serde_yaml_ng::Value::Number(n) => n.to_string(),
                serde_yaml_ng::Value::String(s) => s,
                other => {
                    return Err(invalid(
                        format!("pricing.exchange_rates.{code}"),
                        format!("{other:?} is not a decimal number"),
                    ));
                }
            };
            rates.insert(code, text);
        }
        PriceTable::with_rates(models, self.provider_multipliers, rates)
            .map_err(|m| invalid("pricing", m))
    }
}

/// The resource attribute that names a Claude Code request's namespace unless configured.
pub const DEFAULT_NAMESPACE_ATTRIBUTE: &str = "team.id";

impl RawOtlp {
    /// `otlp:`: the mapping of log records and points, and the Claude Code state's bounds.
    fn validate(self) -> Result<OtlpConfig, ConfigError> {
        // One signal is a source's record: a source listed twice would be counted twice.
        if let Some(both) = self
            .genai_metric_sources
            .iter()
            .find(|s| self.genai_event_sources.contains(s))
        {
            return Err(invalid(
                "otlp.genai_metric_sources",
                format!("{both:?} is also in otlp.genai_event_sources; list a source in one"),
            ));
        }
        Ok(OtlpConfig {
            mapping: crate::claude_code::mapping::Mapping {
                // Claude Code's documentation suggests `team.id` for teams; `""` turns it off.
                namespace_attribute: match self.namespace_attribute {
                    None => Some(DEFAULT_NAMESPACE_ATTRIBUTE.to_string()),
                    Some(a) => Some(a).filter(|a| !a.is_empty()),
                },
                label_allowlist: self.label_allowlist,
                genai_event_sources: self.genai_event_sources,
                genai_metric_sources: self.genai_metric_sources,
            },
            limits: crate::claude_code::state::Limits {
                max_series_per_metric: positive(
                    "otlp.max_series_per_metric",
                    self.max_series_per_metric,
                    1000,
                    100_000,
                )?,
                max_streams: positive("otlp.max_streams", self.max_streams, 100_000, 10_000_000)?,
                max_tools: positive("otlp.max_tools", self.max_tools, 200, 10_000)?,
                ..crate::claude_code::state::Limits::default()
            },
            queue_capacity: positive("otlp.queue_capacity", self.queue_capacity, 1024, 1_000_000)?,
        })
    }
}

/// `${VAR}` references in `value` replaced by the environment; `Err(VAR)` for one unset.
fn expand_env(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find('}') else {
            out.push_str(&rest[at..]);
            return Ok(out);
        };
        let var = &rest[at + 2..at + end];
        out.push_str(&env(var).ok_or_else(|| var.to_string())?);
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl RawOtlpExport {
    /// `otlp_export:`.
    fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<OtlpExportConfig, ConfigError> {
        let x = self;
        let mut headers = Vec::new();
        for (name, value) in &x.headers.0 {
            let key = format!("otlp_export.headers.{name}");
            let n = hyper::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(&key, "is not an HTTP header name"))?;
            let v = expand_env(value, env)
                .map_err(|var| invalid(&key, format!("environment variable {var} is not set")))?;
            // The value is a secret: the message never shows it.
            let mut v = hyper::header::HeaderValue::from_str(&v)
                .map_err(|_| invalid(&key, "is not a valid header value"))?;
            v.set_sensitive(true);
            headers.push((n, v));
        }
        let gzip = match x.compression.as_deref() {
            None | Some("none") => false,
            Some("gzip") => true,
            Some(other) => {
                return Err(invalid(
                    "otlp_export.compression",
                    format!("{other:?} is not none or gzip"),
                ));
            }
        };
        let endpoint: hyper::Uri = x.endpoint.0.parse().map_err(|e| {
            invalid(
                "otlp_export.endpoint",
                format!("{:?} is not a URL: {e}", x.endpoint),
            )
        })?;
        let https = match endpoint.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(invalid(
                    "otlp_export.endpoint",
                    format!("{:?} must be an http:// or https:// URL", x.endpoint),
                ));
            }
        };
        if endpoint.host().is_none_or(str::is_empty) {
            return Err(invalid(
                "otlp_export.endpoint",
                format!("{:?} has no host", x.endpoint),
            ));
        }
        if let Some(ca) = &x.ca_file {
            if !https {
                return Err(invalid(
                    "otlp_export.ca_file",
                    "only for an https:// endpoint",
                ));
            }
            crate::tls::client_config(Some(ca))
                .map_err(|e| invalid("otlp_export.ca_file", e.to_string()))?;
        }
        let ms = |key: &str, v: Option<u64>, default: u64| {
            let v = v.unwrap_or(default);
            if (1..=600_000).contains(&v) {
                Ok(Duration::from_millis(v))
            } else {
                Err(invalid(key, format!("{v} is not between 1 and 600000")))
            }
        };
        Ok(OtlpExportConfig {
            endpoint,
            batch_size: positive("otlp_export.batch_size", x.batch_size, 512, 100_000)?,
            interval: ms("otlp_export.interval_ms", x.interval_ms, 1000)?,
            queue_capacity: positive(
                "otlp_export.queue_capacity",
                x.queue_capacity,
                100_000,
                100_000_000,
            )?,
            timeout: ms("otlp_export.timeout_ms", x.timeout_ms, 10_000)?,
            max_retries: x.max_retries.unwrap_or(5).min(100),
            headers,
            gzip,
            ca_file: x.ca_file,
        })
    }
}

/// Environment variable selecting PostgreSQL for the request log (its URL).
pub const ENV_DATABASE_URL: &str = "GATEMETER_DATABASE_URL";
/// Environment variable overriding `log_store.kind` (`sqlite`, `postgres`, `none`).
pub const ENV_LOG_STORE: &str = "GATEMETER_LOG_STORE";
/// Environment variable overriding `log_store.data_dir`.
pub const ENV_DATA_DIR: &str = "GATEMETER_DATA_DIR";
/// Environment variable overriding `durability` (`none`, `spool`).
pub const ENV_DURABILITY: &str = "GATEMETER_DURABILITY";
/// Environment variables adding tokens (comma-separated) to the file's.
pub const ENV_ADMIN_TOKENS: &str = "GATEMETER_ADMIN_TOKENS";
/// See [`ENV_ADMIN_TOKENS`].
pub const ENV_INGEST_TOKENS: &str = "GATEMETER_INGEST_TOKENS";
/// Environment variable replacing `auth.metrics_token`.
pub const ENV_METRICS_TOKEN: &str = "GATEMETER_METRICS_TOKEN";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLogStore {
    kind: Option<String>,
    data_dir: Option<PathBuf>,
    path: Option<PathBuf>,
    url: Option<RawUrl>,
    queue_capacity: Option<usize>,
    batch_rows: Option<usize>,
    write_concurrency: Option<usize>,
    log_retention_days: Option<u32>,
    export_max_rows: Option<u64>,
    rollups: Option<bool>,
    store_requests: Option<bool>,
    max_request_bytes: Option<usize>,
    queue_bytes: Option<u64>,
    sqlite_cache_bytes: Option<u64>,
}

impl RawLogStore {
    fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Option<SqlConfig>, u64, Option<usize>), ConfigError> {
        let export_max_rows = self.export_max_rows.unwrap_or(10_000);
        if export_max_rows == 0 || export_max_rows > 100_000_000 {
            return Err(invalid(
                "log_store.export_max_rows",
                format!("{export_max_rows} is not between 1 and 100000000"),
            ));
        }
        let max_request_bytes = positive(
            "log_store.max_request_bytes",
            self.max_request_bytes,
            65_536,
            16 << 20,
        )?;
        let keep_requests = self
            .store_requests
            .unwrap_or(false)
            .then_some(max_request_bytes);
        let env_url = env(ENV_DATABASE_URL).filter(|u| !u.is_empty());
        let kind = env(ENV_LOG_STORE).filter(|k| !k.is_empty()).or(self.kind);
        // The URL's TLS settings (`sslmode`, `sslrootcert`) are checked now, naming the key.
        let postgres = |key: &str, url: String| match crate::store::sql::check_postgres_url(&url) {
            Ok(()) => Ok(SqlBackend::Postgres { url }),
            Err(m) => Err(invalid(key, m)),
        };
        let backend = match (kind.as_deref(), env_url) {
            (Some("none"), _) => return Ok((None, export_max_rows, None)),
            (None | Some("postgres"), Some(url)) => postgres(ENV_DATABASE_URL, url)?,
            (Some("postgres"), None) => match self.url {
                Some(url) => postgres("log_store.url", url.0)?,
                None => {
                    return Err(invalid(
                        "log_store.url",
                        format!("required for kind postgres (or set {ENV_DATABASE_URL})"),
                    ));
                }
            },
            (None | Some("sqlite"), None) | (Some("sqlite"), Some(_)) => {
                let dir = env(ENV_DATA_DIR)
                    .map(PathBuf::from)
                    .or(self.data_dir)
                    .unwrap_or_else(|| PathBuf::from("data"));
                SqlBackend::Sqlite {
                    path: self.path.unwrap_or_else(|| dir.join("requests.db")),
                }
            }
            (Some(other), _) => {
                return Err(invalid(
                    "log_store.kind",
                    format!("{other:?} is not a log store (sqlite, postgres, none)"),
                ));
            }
        };
        let bytes = |key: &str, v: Option<u64>, default: u64| {
            let v = v.unwrap_or(default);
            if ((1 << 20)..=(1 << 40)).contains(&v) {
                Ok(v)
            } else {
                Err(invalid(
                    key,
                    format!("{v} is not between 1048576 (1 MiB) and 2^40"),
                ))
            }
        };
        let queue_bytes = bytes(
            "log_store.queue_bytes",
            self.queue_bytes,
            crate::store::sql::DEFAULT_QUEUE_BYTES as u64,
        )? as usize;
        let sqlite_cache_bytes = bytes(
            "log_store.sqlite_cache_bytes",
            self.sqlite_cache_bytes,
            crate::store::sql::DEFAULT_SQLITE_CACHE_BYTES,
        )?;
        let cfg = SqlConfig {
            queue_capacity: positive(
                "log_store.queue_capacity",
                self.queue_capacity,
                200_000,
                100_000_000,
            )?,
            batch_rows: positive(
                "log_store.batch_rows",
                self.batch_rows,
                backend.default_batch_rows(),
                1_000_000,
            )?,
            write_concurrency: positive(
                "log_store.write_concurrency",
                self.write_concurrency,
                backend.default_write_concurrency(),
                64,
            )?,
            retention_days: self.log_retention_days.unwrap_or(30),
            rollups: self.rollups.unwrap_or(true),
            queue_bytes,
            sqlite_cache_bytes,
            backend,
        };
        Ok((Some(cfg), export_max_rows, keep_requests))
    }
}

impl RawSpool {
    /// `durability:` and `spool:`; the spool's directory defaults to `<data_dir>/spool`.
    fn validate(
        self,
        durability: Option<String>,
        data_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<SpoolConfig>, ConfigError> {
        let (key, mode) = match env(ENV_DURABILITY).filter(|d| !d.is_empty()) {
            Some(d) => (ENV_DURABILITY, Some(d)),
            None => ("durability", durability),
        };
        let max_bytes = self.max_bytes.unwrap_or(1 << 30);
        if !((1 << 20)..=(1 << 50)).contains(&max_bytes) {
            return Err(invalid(
                "spool.max_bytes",
                format!("{max_bytes} is not between 1048576 (1 MiB) and 2^50"),
            ));
        }
        let segment_bytes = self.segment_bytes.unwrap_or(64 << 20);
        if !((1 << 16)..=(1 << 32)).contains(&segment_bytes) {
            return Err(invalid(
                "spool.segment_bytes",
                format!("{segment_bytes} is not between 65536 and 4294967296"),
            ));
        }
        match mode.as_deref() {
            None | Some("none") => Ok(None),
            Some("spool") => Ok(Some(SpoolConfig {
                dir: self.dir.unwrap_or_else(|| data_dir.join("spool")),
                max_bytes,
                segment_bytes,
            })),
            Some(other) => Err(invalid(
                key,
                format!("{other:?} is not a durability (none, spool)"),
            )),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    ingest_tokens: Vec<String>,
    admin_tokens: Vec<String>,
    user_tokens: BTreeMap<String, String>,
    metrics_token: Option<String>,
    allow_open: bool,
}

impl std::fmt::Debug for RawAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawAuth { <tokens hidden> }")
    }
}

impl RawAuth {
    fn validate(self, env: &dyn Fn(&str) -> Option<String>) -> Result<AuthConfig, ConfigError> {
        let from_env = |k: &str| -> Vec<String> {
            env(k)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut ingest_tokens = self.ingest_tokens;
        ingest_tokens.extend(from_env(ENV_INGEST_TOKENS));
        let mut admin_tokens = self.admin_tokens;
        admin_tokens.extend(from_env(ENV_ADMIN_TOKENS));
        let metrics_token = env(ENV_METRICS_TOKEN)
            .filter(|t| !t.is_empty())
            .or(self.metrics_token);
        let user_tokens: Vec<(String, String)> = self.user_tokens.into_iter().collect();
        // Tokens are secrets: messages name the list and position, never the value.
        let mut seen = std::collections::HashSet::new();
        let lists: [(&str, Vec<&String>); 4] = [
            ("auth.ingest_tokens", ingest_tokens.iter().collect()),
            ("auth.admin_tokens", admin_tokens.iter().collect()),
            (
                "auth.user_tokens",
                user_tokens.iter().map(|(t, _)| t).collect(),
            ),
            ("auth.metrics_token", metrics_token.iter().collect()),
        ];
        for (key, tokens) in lists {
            for (i, t) in tokens.into_iter().enumerate() {
                if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(invalid(
                        format!("{key}[{i}]"),
                        "a token must be at least 16 printable ASCII characters without spaces",
                    ));
                }
                if !seen.insert(t.clone()) {
                    return Err(invalid(
                        format!("{key}[{i}]"),
                        "the same token is configured twice (each token has one role)",
                    ));
                }
            }
        }
        for (i, (_, user)) in user_tokens.iter().enumerate() {
            if user.is_empty() {
                return Err(invalid(
                    format!("auth.user_tokens[{i}]"),
                    "the user id must not be empty",
                ));
            }
        }
        Ok(AuthConfig {
            ingest_tokens,
            admin_tokens,
            user_tokens,
            metrics_token,
            allow_open: self.allow_open,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Tokens;

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str(yaml, Path::new("test.yaml"), &|_| None)
    }

    /// The raw sections' `Debug` output (and the errors that quote a URL) never shows a
    /// credential written in the file: URL passwords, `password=` and key-like parameters,
    /// header values, tokens.
    #[test]
    fn raw_sections_never_print_a_credential() {
        let yaml = "redis: {url: 'redis://:redis-pw@h:6379/0', sentinel: {master_name: m, \
                    nodes: ['redis://:sentinel-pw@s:26379']}}\n\
            log_store: {kind: postgres, url: 'postgres://u:pg-pw@h/db?password=pg-param&sslmode=disable'}\n\
            otlp_export: {endpoint: 'https://u:otlp-pw@collector:4318/v1/logs?api_key=otlp-key', \
                          headers: {authorization: 'Bearer hdr-secret'}}\n\
            probes: [{name: p, provider: x, target: 'https://api.example.com/v1?key=probe-key&a=1'}]\n\
            auth: {admin_tokens: [admin-tok]}\n";
        let raw: RawConfig = serde_yaml_ng::from_str(yaml).expect("parses");
        let shown = format!("{raw:?}");
        for secret in [
            "redis-pw",
            "sentinel-pw",
            "pg-pw",
            "pg-param",
            "otlp-pw",
            "otlp-key",
            "hdr-secret",
            "probe-key",
            "admin-tok",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        for kept in [
            "collector:4318",
            "authorization",
            "api.example.com/v1",
            "a=1",
        ] {
            assert!(shown.contains(kept), "{kept} missing from {shown}");
        }
        // The validated configuration's `Debug` too.
        let cfg = parse(
            "redis: {url: 'redis://:redis-pw@h:6379/0'}\n\
             log_store: {kind: postgres, url: 'postgres://u:pg-pw@h/db?password=pg-param'}\n\
             probes: [{name: p, provider: x, target: 'https://api.example.com/v1?key=probe-key&a=1'}]\n",
        )
        .expect("valid");
        let shown = format!("{cfg:?}");
        for secret in ["redis-pw", "pg-pw", "pg-param", "probe-key"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("api.example.com/v1?key=***&a=1"), "{shown}");
        // An error quoting the URL redacts it too.
        let e = parse("otlp_export: {endpoint: 'ftp://u:otlp-pw@collector/?token=t0k'}\n")
            .expect_err("not http")
            .to_string();
        assert!(
            e.contains("collector") && !e.contains("otlp-pw") && !e.contains("t0k"),
            "{e}"
        );
    }

    /// `listen_tls`, `metrics_listen_tls` and the OTLP export's `https://` + `ca_file`: files
    /// checked at load, errors naming the key and the file.
    #[test]
    fn tls_files_are_checked_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        let k = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        std::fs::write(dir.path().join("c.pem"), k.cert.pem()).expect("write");
        std::fs::write(dir.path().join("k.pem"), k.signing_key.serialize_pem()).expect("write");
        let c = parse(&format!(
            "listen_tls: {{cert_file: {d}/c.pem, key_file: {d}/k.pem}}\n\
             metrics_listen: 127.0.0.1:9464\n\
             metrics_listen_tls: {{cert_file: {d}/c.pem, key_file: {d}/k.pem}}\n\
             otlp_export: {{endpoint: 'https://central:4318/v1/logs', ca_file: {d}/c.pem}}\n"
        ))
        .expect("valid");
        assert_eq!(
            c.listen_tls.as_ref().map(|t| t.key_file.clone()),
            Some(dir.path().join("k.pem"))
        );
        assert!(c.metrics_listen_tls.is_some());
        let x = c.otlp_export.expect("export");
        assert_eq!(x.endpoint.scheme_str(), Some("https"));
        assert_eq!(x.ca_file, Some(dir.path().join("c.pem")));
        for (yaml, key) in [
            (
                format!("listen_tls: {{cert_file: {d}/k.pem, key_file: {d}/k.pem}}"),
                "invalid listen_tls.cert_file: certificate file",
            ),
            (
                format!("listen_tls: {{cert_file: {d}/c.pem, key_file: {d}/none.pem}}"),
                "invalid listen_tls.key_file: key file",
            ),
            (
                format!("metrics_listen_tls: {{cert_file: {d}/c.pem, key_file: {d}/k.pem}}"),
                "invalid metrics_listen_tls: needs metrics_listen",
            ),
            (
                format!("otlp_export: {{endpoint: 'http://c:4318/v1/logs', ca_file: {d}/c.pem}}"),
                "invalid otlp_export.ca_file: only for an https:// endpoint",
            ),
            (
                format!("otlp_export: {{endpoint: 'https://c/v1/logs', ca_file: {d}/k.pem}}"),
                "invalid otlp_export.ca_file: CA file",
            ),
            (
                "otlp_export: {endpoint: 'ftp://c/v1/logs'}".to_string(),
                "invalid otlp_export.endpoint",
            ),
        ] {
            let e = parse(&yaml).expect_err(&yaml).to_string();
            assert!(e.starts_with(key), "{yaml}: {e}");
        }
    }

    /// The log queue's byte budget: 32 MiB by default, unbounded with the spool unless set
    /// (a record dropped there would be acknowledged and missing from the log).
    #[test]
    fn the_log_queue_bytes_follow_durability() {
        let bytes = |yaml: &str| {
            parse(yaml)
                .expect("valid")
                .log_store
                .expect("log")
                .queue_bytes
        };
        assert_eq!(bytes(""), crate::store::sql::DEFAULT_QUEUE_BYTES);
        assert_eq!(bytes("durability: spool\n"), 1 << 40);
        assert_eq!(
            bytes("durability: spool\nlog_store: {queue_bytes: 67108864}\n"),
            64 << 20
        );
        let err = parse("log_store: {queue_bytes: 5}\n").expect_err("too small");
        assert!(err.to_string().contains("log_store.queue_bytes"), "{err}");
    }

    /// One signal is a GenAI source's record: a source listed for events and for metrics is
    /// refused, naming the key.
    #[test]
    fn a_genai_source_is_listed_for_one_signal() {
        let c = parse("otlp: {genai_metric_sources: [batch-job], genai_event_sources: [chat]}\n")
            .expect("valid");
        assert_eq!(c.otlp.mapping.genai_metric_sources, ["batch-job"]);
        let e = parse("otlp: {genai_metric_sources: [a, b], genai_event_sources: [b]}\n")
            .expect_err("listed twice");
        assert!(e.to_string().contains("otlp.genai_metric_sources"), "{e}");
        assert!(e.to_string().contains("\"b\""), "{e}");
    }

    #[test]
    fn durability_is_off_by_default_and_the_spool_sits_in_the_data_dir() {
        assert_eq!(parse("").expect("defaults").spool, None);
        assert_eq!(parse("durability: none\n").expect("none").spool, None);
        let c = parse("durability: spool\nlog_store: {data_dir: /var/gm}\n").expect("spool");
        assert_eq!(
            c.spool,
            Some(SpoolConfig {
                dir: PathBuf::from("/var/gm/spool"),
                max_bytes: 1 << 30,
                segment_bytes: 64 << 20,
            })
        );
        let c = parse(
            "durability: spool\nspool: {dir: /s, max_bytes: 2097152, segment_bytes: 65536}\n",
        )
        .expect("spool settings");
        let s = c.spool.expect("on");
        assert_eq!(
            (s.dir, s.max_bytes, s.segment_bytes),
            (PathBuf::from("/s"), 2 << 20, 1 << 16)
        );
        let c = Config::from_yaml_str("", Path::new("t"), &|k| {
            (k == ENV_DURABILITY).then(|| "spool".to_string())
        })
        .expect("env");
        assert_eq!(c.spool.expect("on").dir, PathBuf::from("data/spool"));
        let e = parse("durability: fast\n").expect_err("unknown mode");
        assert!(e.to_string().contains("durability"), "{e}");
        let e = parse("spool: {max_bytes: 1000}\n").expect_err("tiny cap");
        assert!(e.to_string().contains("spool.max_bytes"), "{e}");
        let e = parse("spool: {segment_bytes: 0}\n").expect_err("zero segment");
        assert!(e.to_string().contains("spool.segment_bytes"), "{e}");
        let e = parse("spool: {sync: always}\n").expect_err("unknown key");
        assert!(e.to_string().contains("sync"), "{e}");
    }

    #[test]
    fn example_file_loads_and_prices() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gatemeter.example.yaml");
        let text = std::fs::read_to_string(&path).expect("example config exists");
        let c = Config::from_yaml_str(&text, &path, &|_| None).expect("example config validates");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        let t = Tokens {
            input: 1_000_000,
            ..Tokens::default()
        };
        assert!(
            c.prices
                .cost_micros("anthropic", "claude-sonnet-4-5-20250929", &t)
                .is_some()
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = parse("pipeline:\n  queue_capacty: 5\n").expect_err("typo");
        assert!(e.to_string().contains("queue_capacty"), "{e}");
        let e = parse("bogus: 1\n").expect_err("unknown top-level key");
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn values_are_range_checked() {
        let e = parse("pipeline:\n  queue_capacity: 0\n").expect_err("zero");
        assert!(e.to_string().contains("pipeline.queue_capacity"), "{e}");
        let e = parse("pricing:\n  models:\n    m: {input: -1, output: 1}\n")
            .expect_err("negative price");
        assert!(e.to_string().contains("pricing.models.m"), "{e}");
        let e = parse("pipeline:\n  queue_capacity: 10\n").expect_err("smaller than a batch");
        assert!(e.to_string().contains("max_records_per_request"), "{e}");
        let e = parse("listen: nowhere\n").expect_err("bad address");
        assert!(e.to_string().contains("listen"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = Config::from_yaml_str("listen: 127.0.0.1:1\n", Path::new("t"), &|k| {
            (k == ENV_LISTEN).then(|| "127.0.0.1:2".to_string())
        })
        .expect("valid");
        assert_eq!(c.listen.port(), 2);
    }

    #[test]
    fn redis_is_chosen_by_file_or_environment() {
        let c = parse("live_store: redis\nredis:\n  key_prefix: \"gm:\"\n  instance_id: a1\n")
            .expect("valid");
        assert_eq!(c.live_store, LiveStoreKind::Redis);
        assert_eq!(
            (c.redis.key_prefix.as_str(), c.redis.instance_id.as_str()),
            ("gm:", "a1")
        );
        assert_eq!(parse("").expect("empty").live_store, LiveStoreKind::Memory);
        let c = Config::from_yaml_str("", Path::new("t"), &|k| {
            (k == ENV_REDIS_URL).then(|| "redis://127.0.0.1:7000/".to_string())
        })
        .expect("valid");
        assert_eq!(c.live_store, LiveStoreKind::Redis);
        assert_eq!(c.redis.url, "redis://127.0.0.1:7000/");
        let c = Config::from_yaml_str("", Path::new("t"), &|k| match k {
            ENV_REDIS_SENTINEL_NODES => Some("redis://10.0.0.1:26379".to_string()),
            ENV_REDIS_SENTINEL_MASTER => Some("mymaster".to_string()),
            _ => None,
        })
        .expect("valid");
        assert_eq!(c.live_store, LiveStoreKind::Redis);
        let s = c
            .redis
            .sentinel
            .as_ref()
            .expect("Sentinel from the environment");
        assert_eq!(s.master_name, "mymaster");
        let e = parse("live_store: mongo\n").expect_err("unknown store");
        assert!(e.to_string().contains("live_store"), "{e}");
        let e = parse("redis:\n  flush_interval_ms: 0\n").expect_err("zero");
        assert!(e.to_string().contains("redis.flush_interval_ms"), "{e}");
    }

    #[test]
    fn stored_requests_and_backup_settings() {
        let c = parse("{}").expect("defaults");
        assert_eq!(c.ingest.keep_requests, None);
        assert_eq!(c.backup.pg_dump_path, None);
        let c = parse(
            "log_store: {store_requests: true, max_request_bytes: 1000}\n\
             backup: {pg_dump_path: /opt/pg/pg_dump}\n",
        )
        .expect("valid");
        assert_eq!(c.ingest.keep_requests, Some(1000));
        assert_eq!(
            c.backup.pg_dump_path,
            Some(PathBuf::from("/opt/pg/pg_dump"))
        );
        assert_eq!(
            parse("log_store: {store_requests: true}\n")
                .expect("valid")
                .ingest
                .keep_requests,
            Some(65_536)
        );
        // No log, nothing kept.
        let c = parse("log_store: {kind: none, store_requests: true}\n").expect("valid");
        assert_eq!(c.ingest.keep_requests, None);
        let e = parse("log_store: {max_request_bytes: 0}\n").expect_err("zero");
        assert!(e.to_string().contains("log_store.max_request_bytes"), "{e}");
    }

    #[test]
    fn log_store_defaults_and_environment() {
        let c = parse("").expect("empty");
        let l = c.log_store.expect("sqlite by default");
        assert_eq!(
            l.backend,
            SqlBackend::Sqlite {
                path: PathBuf::from("data/requests.db")
            }
        );
        assert_eq!((l.retention_days, c.export_max_rows), (30, 10_000));
        assert_eq!((l.batch_rows, l.write_concurrency), (100_000, 1));
        let c = Config::from_yaml_str("", Path::new("t"), &|k| {
            (k == ENV_DATABASE_URL).then(|| "postgres://u@h/db".to_string())
        })
        .expect("valid");
        let l = c.log_store.expect("postgres");
        assert_eq!(
            l.backend,
            SqlBackend::Postgres {
                url: "postgres://u@h/db".into()
            }
        );
        assert_eq!((l.batch_rows, l.write_concurrency), (50_000, 2));
        let l =
            parse("log_store: {kind: postgres, url: 'postgres://u@h/db', write_concurrency: 4}\n")
                .expect("valid")
                .log_store
                .expect("postgres");
        assert_eq!(l.write_concurrency, 4);
        let e = parse("log_store: {write_concurrency: 0}\n").expect_err("zero");
        assert!(e.to_string().contains("log_store.write_concurrency"), "{e}");
        assert!(
            parse("log_store: {kind: none}\n")
                .expect("none")
                .log_store
                .is_none()
        );
        let e = parse("log_store: {kind: mysql}\n").expect_err("unknown kind");
        assert!(e.to_string().contains("log_store.kind"), "{e}");
        let e = parse("log_store: {kind: postgres}\n").expect_err("no url");
        assert!(e.to_string().contains("log_store.url"), "{e}");
        let e = parse("log_store: {export_max_rows: 0}\n").expect_err("zero cap");
        assert!(e.to_string().contains("export_max_rows"), "{e}");
    }

    #[test]
    fn tokens_are_checked_and_never_echoed() {
        let e = parse("auth: {admin_tokens: [short]}\n").expect_err("short");
        assert!(e.to_string().contains("auth.admin_tokens[0]"), "{e}");
        assert!(!e.to_string().contains("short"), "{e}");
        let e = parse(
            "auth: {admin_tokens: [same-token-0123456789], ingest_tokens: [same-token-0123456789]}\n",
        )
        .expect_err("duplicate");
        assert!(e.to_string().contains("twice"), "{e}");
        assert!(!e.to_string().contains("same-token"), "{e}");
        let c = Config::from_yaml_str("", Path::new("t"), &|k| {
            (k == ENV_ADMIN_TOKENS).then(|| "env-admin-token-0123456789, ".to_string())
        })
        .expect("valid");
        assert_eq!(c.auth.admin_tokens, ["env-admin-token-0123456789"]);
        assert!(!format!("{c:?}").contains("env-admin-token"));
    }

    #[test]
    fn server_section_defaults_and_ranges() {
        let c = parse("").expect("empty");
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.server.shutdown_timeout, Duration::from_secs(20));
        let c = parse("server: {header_timeout_secs: 1, idle_timeout_secs: 2, max_connections: 3, shutdown_timeout_secs: 0}\n")
            .expect("valid");
        assert_eq!(
            (
                c.server.header_timeout,
                c.server.idle_timeout,
                c.server.max_connections
            ),
            (Duration::from_secs(1), Duration::from_secs(2), 3)
        );
        assert_eq!(c.server.shutdown_timeout, Duration::ZERO);
        for key in [
            "header_timeout_secs",
            "body_timeout_secs",
            "idle_timeout_secs",
            "max_connections",
        ] {
            let e = parse(&format!("server: {{{key}: 0}}\n")).expect_err("zero");
            assert!(e.to_string().contains(&format!("server.{key}")), "{e}");
        }
        let e = parse("server: {shutdown_timeout_secs: 3601}\n").expect_err("too long");
        assert!(
            e.to_string().contains("server.shutdown_timeout_secs"),
            "{e}"
        );
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").expect("empty");
        assert_eq!(c.pipeline.queue_capacity, 200_000);
        assert_eq!(Config::default().ingest.max_records_per_request, 10_000);
    }
}
