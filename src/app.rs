//! Builds the server from a validated config and a bound listener: stores, pipeline, router;
//! owns graceful shutdown (stop accepting, drain the queue, flush, close the request log).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::auth::{Access, Auth};
use crate::api::logs::{self, LogApi};
use crate::config::{Config, LiveStoreKind};
use crate::export::prometheus::{self, MetricsState};
use crate::health::Health;
use crate::ingest::native::{self, NativeIngest};
use crate::pipeline::Pipeline;
use crate::store::{Discard, LiveStore, MemoryStore, RequestLog, SqlLog, StoreError};

/// A server ready to run.
pub struct App {
    listener: TcpListener,
    router: Router,
    pipeline: Pipeline,
    aggregator: JoinHandle<()>,
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
        let addr = listener.local_addr()?;
        if !config.auth.has_tokens() && !config.auth.allow_open && !addr.ip().is_loopback() {
            return Err(AppError::OpenNonLoopback(addr));
        }
        let store: Arc<dyn LiveStore> = match config.live_store {
            LiveStoreKind::Memory => Arc::new(MemoryStore::new()),
        };
        let health = Arc::new(Health::new(config.pipeline.queue_capacity));
        let sql = match &config.log_store {
            Some(cfg) => Some(SqlLog::open(cfg, health.clone()).await?),
            None => None,
        };
        let log: Arc<dyn RequestLog> = match &sql {
            Some(l) => Arc::new(l.clone()),
            None => Arc::new(Discard),
        };
        let (pipeline, aggregator) = Pipeline::spawn(config.pipeline, store, log, health.clone());
        let mut router = router(config, pipeline.clone(), health);
        if let Some(log) = sql {
            let api = LogApi {
                log,
                export_max_rows: config.export_max_rows,
            };
            router = router.merge(logs::routes(api, &Auth::new(config.auth.clone())));
        }
        Ok(Self {
            listener,
            router,
            pipeline,
            aggregator,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains: in-flight requests finish, queued records
    /// are aggregated and flushed, the request log is closed.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let Self {
            listener,
            router,
            pipeline,
            aggregator,
        } = self;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        drop(pipeline);
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await?;
        aggregator
            .await
            .map_err(|e| AppError::Aggregator(e.to_string()))
    }
}

/// The HTTP routes.
pub fn router(config: &Config, pipeline: Pipeline, health: Arc<Health>) -> Router {
    let ingest = NativeIngest {
        pipeline: pipeline.clone(),
        health: health.clone(),
        config: config.ingest,
        prices: config.prices.clone(),
    };
    let auth = Auth::new(config.auth.clone());
    // Every ingest route (`/v1/*`) belongs to this group, behind the ingest guard.
    let ingest_routes = Router::new().route(
        "/v1/events",
        post(native::post_events).with_state(Arc::new(ingest)),
    );
    let metrics_routes = Router::new().route(
        "/metrics",
        get(prometheus::metrics).with_state(MetricsState {
            pipeline: pipeline.clone(),
            health,
        }),
    );
    Router::new()
        .merge(auth.guard(ingest_routes, Access::Ingest))
        .merge(auth.guard(metrics_routes, Access::Metrics))
        .route("/healthz", get(crate::api::healthz))
        .route("/readyz", get(crate::api::readyz).with_state(pipeline))
        .fallback(|| async { crate::api::ApiError::NotFound })
}
