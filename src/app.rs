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

use crate::config::{Config, LiveStoreKind};
use crate::export::prometheus::{self, MetricsState};
use crate::health::Health;
use crate::ingest::native::{self, NativeIngest};
use crate::pipeline::Pipeline;
use crate::store::{Discard, LiveStore, MemoryStore, RedisStore, RequestLog};

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
}

impl App {
    /// Wires everything for `config` onto an already bound `listener` (tests bind port 0).
    pub fn build(config: &Config, listener: TcpListener) -> Self {
        let health = Arc::new(Health::new(config.pipeline.queue_capacity));
        let store: Arc<dyn LiveStore> = match config.live_store {
            LiveStoreKind::Memory => Arc::new(MemoryStore::new()),
            LiveStoreKind::Redis => match RedisStore::start(config.redis.clone(), health.clone()) {
                Ok(s) => Arc::new(s),
                // The URL was validated with the config; this cannot happen with a Config.
                Err(e) => unreachable!("validated Redis config refused: {e}"),
            },
        };
        let log: Arc<dyn RequestLog> = Arc::new(Discard);
        let (pipeline, aggregator) = Pipeline::spawn(config.pipeline, store, log, health.clone());
        let router = router(config, pipeline.clone(), health);
        Self {
            listener,
            router,
            pipeline,
            aggregator,
        }
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
    Router::new()
        .route(
            "/v1/events",
            post(native::post_events).with_state(Arc::new(ingest)),
        )
        .route(
            "/metrics",
            get(prometheus::metrics).with_state(MetricsState {
                pipeline: pipeline.clone(),
                health,
            }),
        )
        .route("/healthz", get(crate::api::healthz))
        .route("/readyz", get(crate::api::readyz).with_state(pipeline))
        .fallback(|| async { crate::api::ApiError::NotFound })
}
