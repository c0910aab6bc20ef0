//! Builds the server from a validated config and a bound listener: stores, pipeline, router;
//! owns graceful shutdown (stop accepting, close connections within the deadline, drain the
//! queue, flush, close the request log).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::api::analytics::{self, AnalyticsApi};
use crate::api::auth::{Access, Auth};
use crate::api::console;
use crate::api::exports::{self, ExportApi};
use crate::api::logs::{self, LogApi};
use crate::api::openapi;
use crate::claude_code::task::ClaudeCode;
use crate::config::{Config, LiveStoreKind};
use crate::export::analytics::AnalyticsGauges;
use crate::export::otlp_logs::OtlpLogExport;
use crate::export::prometheus::{self, MetricsState, OtlpSource};
use crate::health::Health;
use crate::health::otlp::{Diagnostics, Signal};
use crate::ingest::native::{self, NativeIngest};
use crate::ingest::otlp::http::{self as otlp_http, OtlpIngest};
use crate::pipeline::Pipeline;
use crate::probe::Probes;
use crate::server::{self, ServerConfig};
use crate::spool::{Spool, SpoolCloser};
use crate::store::fanout::FanOut;
use crate::store::{Discard, LiveStore, MemoryStore, RedisStore, RequestLog, SqlLog, StoreError};

/// A server ready to run.
pub struct App {
    listener: TcpListener,
    /// TLS on the main listener (`listen_tls`).
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    /// The separate metrics listener (`metrics_listen`), its TLS (`metrics_listen_tls`) and its
    /// router (`/metrics`, `/healthz`).
    metrics: Option<(TcpListener, Option<Arc<rustls::ServerConfig>>, Router)>,
    pipeline: Pipeline,
    aggregator: JoinHandle<()>,
    claude_code: Option<ClaudeCode>,
    spool: Option<SpoolCloser>,
    background: Vec<JoinHandle<()>>,
    /// Tasks that only read (the analytics gauges' refresh): aborted once serving stops.
    readers: Vec<JoinHandle<()>>,
    server: ServerConfig,
    health: Arc<Health>,
}

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The listener failed.
    #[error("listener error: {0}")]
    Listener(#[from] std::io::Error),
    /// The aggregator task panicked.
    #[error("aggregator task failed: {0}")]
    Aggregator(String),
    /// The request log could not be opened.
    #[error("request log: {0}")]
    Store(#[from] StoreError),
    /// A listener's certificate or key, or the OTLP export's CA file, could not be used.
    #[error("{key}: {source}")]
    Tls {
        /// The config key (`listen_tls`, `metrics_listen_tls`, `otlp_export.ca_file`).
        key: &'static str,
        /// What is wrong.
        source: crate::tls::TlsError,
    },
    /// The durable spool could not be opened or replayed.
    #[error("spool {dir}: {source}")]
    Spool {
        /// The spool directory.
        dir: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// No tokens are configured and the listener is not loopback (SPEC §8).
    #[error(
        "refusing to serve on {0} without tokens: configure auth tokens, listen on loopback, or set auth.allow_open: true"
    )]
    OpenNonLoopback(SocketAddr),
}

impl App {
    /// Wires everything for `config` onto an already bound `listener` (tests bind port 0):
    /// opens the request log (running its migrations) and refuses an open non-loopback listener.
    pub async fn build(config: &Config, listener: TcpListener) -> Result<Self, AppError> {
        Self::build_with_metrics(config, listener, None).await
    }

    /// [`App::build`] with `/metrics` on its own listener (`metrics_listen`, bound by the
    /// caller): the main listener then serves no `/metrics`, the metrics listener nothing else
    /// but `/healthz`. The same open-listener rule applies to both.
    pub async fn build_with_metrics(
        config: &Config,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
    ) -> Result<Self, AppError> {
        let addr = listener.local_addr()?;
        let open = !config.auth.has_tokens() && !config.auth.allow_open;
        if open && !addr.ip().is_loopback() {
            return Err(AppError::OpenNonLoopback(addr));
        }
        if let Some(m) = &metrics_listener {
            let addr = m.local_addr()?;
            if open && !addr.ip().is_loopback() {
                return Err(AppError::OpenNonLoopback(addr));
            }
        }
        if config.log_store.is_some()
            && !config.auth.user_tokens.is_empty()
            && !config.analytics.users_see_leaderboards
            && config.auth.metrics_token.is_none()
            && metrics_listener.is_none()
        {
            tracing::warn!(
                "/metrics is open on the main listener and its leaderboard gauges \
                 (gatemeter_leaderboard_*) name the top users and keys with their cost, which \
                 the API shows a user token only for itself (analytics.users_see_leaderboards: \
                 false): set auth.metrics_token or metrics_listen to keep them from users."
            );
        }
        // The files were checked with the config; read again here (they may have changed).
        let server_tls = |key: &'static str, t: &Option<crate::server::ListenTls>| {
            t.as_ref()
                .map(|t| crate::tls::server_config(&t.cert_file, &t.key_file))
                .transpose()
                .map_err(|source| AppError::Tls { key, source })
        };
        let tls = server_tls("listen_tls", &config.listen_tls)?;
        let metrics_tls = server_tls("metrics_listen_tls", &config.metrics_listen_tls)?;
        let health = Arc::new(
            Health::new(config.pipeline.queue_capacity)
                .with_series_budget(config.pipeline.max_series),
        );
        let store: Arc<dyn LiveStore> = match config.live_store {
            LiveStoreKind::Memory => Arc::new(MemoryStore::new()),
            LiveStoreKind::Redis => match RedisStore::start(config.redis.clone(), health.clone()) {
                Ok(s) => Arc::new(s),
                // The URL was validated with the config; this cannot happen with a Config.
                Err(e) => unreachable!("validated Redis config refused: {e}"),
            },
        };
        let sql = match &config.log_store {
            Some(cfg) => Some(SqlLog::open(cfg, health.clone()).await?),
            None => None,
        };
        let mut logs: Vec<Arc<dyn RequestLog>> = Vec::new();
        if let Some(l) = &sql {
            logs.push(Arc::new(l.clone()));
        }
        let mut background = Vec::new();
        let mut export_stats = None;
        if let Some(x) = &config.otlp_export {
            let (export, task) =
                OtlpLogExport::spawn(x.clone()).map_err(|source| AppError::Tls {
                    key: "otlp_export.ca_file",
                    source,
                })?;
            export_stats = Some(export.stats());
            logs.push(Arc::new(export));
            background.push(task);
        }
        let log: Arc<dyn RequestLog> = match logs.len() {
            0 => Arc::new(Discard),
            1 => logs.remove(0),
            _ => Arc::new(FanOut::new(logs)),
        };
        let spool_error = |dir: &std::path::Path| {
            let dir = dir.to_path_buf();
            move |source| AppError::Spool { dir, source }
        };
        let spool_id = match &config.spool {
            Some(cfg) => Some(crate::spool::id(&cfg.dir).map_err(spool_error(&cfg.dir))?),
            None => None,
        };
        let (pipeline, aggregator) = Pipeline::spawn_spooled(
            config.pipeline,
            store,
            log,
            health.clone(),
            spool_id.clone(),
        );
        // What a crash left in the spool is queued again before anything is served.
        let spool = match (&config.spool, &spool_id) {
            (Some(cfg), Some(id)) => Some(
                Spool::open(cfg, id, pipeline.clone(), health.clone())
                    .await
                    .map_err(spool_error(&cfg.dir))?
                    .0,
            ),
            _ => None,
        };
        let diagnostics = Arc::new(Diagnostics::default());
        let (claude_code, cc_task) = ClaudeCode::spawn(
            config.otlp.limits,
            config.otlp.queue_capacity,
            health.series_budget().clone(),
            diagnostics.clone(),
        );
        background.push(cc_task);
        let otlp = OtlpSource {
            claude_code: claude_code.clone(),
            diagnostics,
            export: export_stats,
        };
        let rollups = sql
            .clone()
            .filter(|_| config.log_store.as_ref().is_some_and(|l| l.rollups));
        let mut readers = Vec::new();
        // Probes: with a shared Redis each runs once per interval across the fleet.
        let leases = match config.live_store {
            LiveStoreKind::Redis if !config.probes.is_empty() => {
                match crate::store::redis::lease::ProbeLeases::new(config.redis.clone()) {
                    Ok(l) => Some(l),
                    Err(e) => unreachable!("validated Redis config refused: {e}"),
                }
            }
            _ => None,
        };
        let (probes, probe_tasks) =
            Probes::spawn(&config.probes, sql.clone(), leases, health.clone());
        readers.extend(probe_tasks);
        let gauges = rollups.clone().map(|log| {
            let refresh = std::time::Duration::from_secs(config.analytics.refresh_secs);
            let (gauges, task) = AnalyticsGauges::spawn(log, config.analytics.clone(), refresh);
            readers.push(task);
            gauges
        });
        let (mut router, metrics_router) = router(
            config,
            pipeline.clone(),
            spool.clone(),
            health.clone(),
            otlp,
            gauges,
            probes.clone(),
        );
        let metrics = match metrics_listener {
            Some(l) => Some((
                l,
                metrics_tls,
                metrics_router.route("/healthz", get(crate::api::healthz)),
            )),
            None => {
                router = router.merge(metrics_router);
                None
            }
        };
        let auth = Auth::new(config.auth.clone());
        let analytics = AnalyticsApi {
            log: rollups,
            probe_log: sql.clone(),
            pipeline: pipeline.clone(),
            config: config.analytics.clone(),
        };
        // Every /api/v1 route, described: the document at /api/v1/openapi.json is theirs.
        let mut v1 = analytics::routes(analytics, &auth);
        let probe_api = crate::api::probes::ProbeApi {
            log: sql.clone(),
            probes,
            zone: config.analytics.time_zone.clone(),
        };
        v1 = v1.merge(crate::api::probes::routes(probe_api, &auth));
        if let Some(log) = sql {
            // One backup at a time: across the fleet when the replicas share Redis.
            let lock = match config.live_store {
                LiveStoreKind::Redis => {
                    crate::store::lock::FleetLock::redis(&config.redis, exports::BACKUP_LOCK)?
                }
                LiveStoreKind::Memory => crate::store::lock::FleetLock::local(),
            };
            let exports_api = ExportApi {
                log: log.clone(),
                backup: config.backup.clone(),
                lock,
            };
            v1 = v1.merge(exports::routes(exports_api, &auth));
            let api = LogApi {
                log,
                export_max_rows: config.export_max_rows,
            };
            v1 = v1.merge(logs::routes(api, &auth));
        }
        // The web console: its page and files, and what it asks first (`whoami`).
        v1 = v1.merge(console::whoami_routes(console::WhoamiApi {
            auth: auth.clone(),
            time_zone: config.analytics.time_zone.name().to_string(),
            request_log: config.log_store.is_some(),
            analytics: config.log_store.as_ref().is_some_and(|l| l.rollups),
            stored_requests: config.ingest.keep_requests.is_some(),
            session_active_secs: config.analytics.session_active_secs,
        }));
        v1 = v1.merge(crate::api::claude_code::routes(
            crate::api::claude_code::ClaudeCodeApi {
                claude_code: claude_code.clone(),
            },
            &auth,
        ));
        router = router
            .merge(openapi::serve(v1, &auth))
            .merge(console::routes());
        Ok(Self {
            listener,
            tls,
            router,
            metrics,
            pipeline,
            aggregator,
            claude_code: Some(claude_code),
            spool: spool.as_ref().map(Spool::closer),
            background,
            readers,
            server: config.server,
            health,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address of the separate metrics listener, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|(l, _, _)| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then drains: in-flight requests get until
    /// `server.shutdown_timeout` (then their connections are closed), queued records are
    /// aggregated and flushed, the request log is closed.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let Self {
            listener,
            tls,
            router,
            metrics,
            pipeline,
            aggregator,
            claude_code,
            spool,
            background,
            readers,
            server: server_config,
            health,
        } = self;
        drop(pipeline);
        drop(claude_code);
        match metrics {
            None => server::serve(listener, tls, router, server_config, health, shutdown).await,
            Some((metrics_listener, metrics_tls, metrics_router)) => {
                // One shutdown for both listeners: the main one's, passed on when it resolves
                // (or when the main server stops and drops the sender).
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let mut wait = stopped.clone();
                let metrics_server = tokio::spawn(server::serve(
                    metrics_listener,
                    metrics_tls,
                    metrics_router,
                    server_config,
                    health.clone(),
                    async move {
                        let _ = wait.wait_for(|s| *s).await;
                    },
                ));
                server::serve(listener, tls, router, server_config, health, async move {
                    shutdown.await;
                    let _ = stop.send(true);
                })
                .await;
                // Sent, or the sender is gone with the main server's future: either ends
                // `wait_for`.
                drop(stopped);
                let _ = metrics_server.await;
            }
        }
        for task in readers {
            task.abort();
        }
        // The router (and with it every pipeline handle) is gone: the aggregator drains, flushes
        // and closes the request log (which flushes the OTLP log export).
        let result = aggregator
            .await
            .map_err(|e| AppError::Aggregator(e.to_string()));
        // The aggregator's last checkpoint is published: the spool deletes what it confirmed.
        if let Some(spool) = spool {
            spool.close().await;
        }
        for task in background {
            let _ = task.await;
        }
        result
    }
}

/// The HTTP routes, and apart the guarded `/metrics` (merged in unless it has a listener of its
/// own). A path no route matches goes to the fallback, which serves OTLP paths
/// under a prefix (`/some/prefix/v1/logs`) by handing them, rewritten to their canonical path,
/// to the guarded ingest router, so every layer on the ingest routes applies to them too.
pub fn router(
    config: &Config,
    pipeline: Pipeline,
    spool: Option<Spool>,
    health: Arc<Health>,
    otlp: OtlpSource,
    analytics: Option<Arc<AnalyticsGauges>>,
    probes: Arc<Probes>,
) -> (Router, Router) {
    let otlp_ingest = Arc::new(OtlpIngest {
        pipeline: pipeline.clone(),
        spool: spool.clone(),
        claude_code: otlp.claude_code.clone(),
        diagnostics: otlp.diagnostics.clone(),
        health: health.clone(),
        max_body_bytes: config.ingest.max_body_bytes,
        prices: config.prices.clone(),
        mapping: config.otlp.mapping.clone(),
        keep_requests: config.ingest.keep_requests,
        genai_streams: std::sync::Mutex::new(crate::genai::metrics::Streams::new(
            crate::clock::now_ms(),
        )),
    });
    let ingest = NativeIngest {
        pipeline: pipeline.clone(),
        spool,
        health: health.clone(),
        config: config.ingest,
        prices: config.prices.clone(),
    };
    let auth = Auth::new(config.auth.clone());
    // Every ingest route (`/v1/*`) belongs to this group, behind the ingest guard. OTLP/HTTP:
    // every method is routed so that others get the protocol's 405.
    let ingest_routes = Router::new()
        .route(
            "/v1/events",
            post(native::post_events).with_state(Arc::new(ingest)),
        )
        .route(
            "/v1/logs",
            any(otlp_http::export).with_state(otlp_ingest.clone()),
        )
        .route(
            "/v1/metrics",
            any(otlp_http::export).with_state(otlp_ingest.clone()),
        )
        .route("/v1/traces", any(otlp_http::export).with_state(otlp_ingest));
    let metrics_routes = Router::new().route(
        "/metrics",
        get(prometheus::metrics).with_state(MetricsState {
            pipeline: pipeline.clone(),
            health,
            otlp,
            analytics,
            probes,
        }),
    );
    let ingest = auth.guard(ingest_routes, Access::Ingest);
    // OTLP endpoints under a path prefix reach the same guarded ingest routes through the
    // fallback, so only unmatched paths pay for the check (a layer on every request cost the
    // single-record path ~15 % of its throughput).
    let prefixed = ingest.clone();
    let main = Router::new()
        .merge(ingest)
        .route("/healthz", get(crate::api::healthz))
        .route("/readyz", get(crate::api::readyz).with_state(pipeline))
        .fallback(move |req: Request| otlp_under_prefix(prefixed.clone(), req));
    (main, auth.guard(metrics_routes, Access::Metrics))
}

/// Serves `/<prefix>/v1/{logs,metrics,traces}` as `/v1/...`, and the console's deep links
/// (`GET /ui/…`); anything else is a 404.
async fn otlp_under_prefix(ingest: Router, req: Request) -> Response {
    if let Some(page) = console::deep_link(req.method(), req.uri().path(), req.headers()).await {
        return page;
    }
    match canonical_otlp_path(req) {
        Some(req) => match ingest.oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        },
        None => crate::api::ApiError::NotFound.into_response(),
    }
}

/// `/<prefix>/v1/{logs,metrics,traces}` rewritten to `/v1/...`; `None` for any other path.
fn canonical_otlp_path(mut req: Request) -> Option<Request> {
    let path = req.uri().path();
    let signal = Signal::from_path(path).filter(|s| path != s.path())?;
    let mut parts = req.uri().clone().into_parts();
    let pq = match req.uri().query() {
        Some(q) => format!("{}?{q}", signal.path()),
        None => signal.path().to_string(),
    };
    parts.path_and_query = Some(pq.parse().ok()?);
    *req.uri_mut() = Uri::from_parts(parts).ok()?;
    Some(req)
}
