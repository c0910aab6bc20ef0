//! `gatemeter serve` and `gatemeter check-config`: load the config, bind, run until a signal.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use gatemeter::app::App;
use gatemeter::config::Config;
use gatemeter::store::sql::SqlBackend;
use tokio::net::TcpListener;

/// Runs the server until SIGINT or SIGTERM, then drains the queue and flushes.
pub async fn run(args: super::Serve) -> anyhow::Result<()> {
    let config = load_config(args.config.as_ref(), args.listen)?;
    gatemeter::server::raise_file_limit(config.server.max_connections);
    let listener = bind(&config).await?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (metrics_listen)"))?,
        ),
        None => None,
    };
    let app = App::build_with_metrics(&config, listener, metrics_listener).await?;
    let log = config
        .log_store
        .as_ref()
        .map_or("none", |l| match l.backend {
            SqlBackend::Sqlite { .. } => "sqlite",
            SqlBackend::Postgres { .. } => "postgres",
        });
    let shutdown = shutdown_signal();
    tracing::info!(
        addr = %app.local_addr()?,
        tls = config.listen_tls.is_some(),
        store = ?config.live_store,
        log,
        "gatemeter listening."
    );
    if let Some(addr) = app.metrics_addr() {
        tracing::info!(
            metrics = %addr,
            tls = config.metrics_listen_tls.is_some(),
            "Serving /metrics on its own listener."
        );
    }
    app.run(shutdown).await?;
    Ok(())
}

/// `gatemeter rollup rebuild`: opens the configured log (running its migrations), recomputes
/// the rollups from its rows, closes it.
pub async fn rebuild_rollups(args: &super::RollupRebuild) -> anyhow::Result<()> {
    let config = load_config(args.config.as_ref(), None)?;
    let Some(cfg) = &config.log_store else {
        anyhow::bail!("log_store.kind is none: there is no request log to roll up");
    };
    let health = std::sync::Arc::new(gatemeter::health::Health::new(1));
    let log = gatemeter::store::SqlLog::open(cfg, health).await?;
    let started = std::time::Instant::now();
    let rows = log.rebuild_rollups().await?;
    log.close_within(std::time::Duration::from_secs(5)).await;
    tracing::info!(
        rows,
        secs = started.elapsed().as_secs_f64(),
        "Rollups rebuilt from the request log."
    );
    println!("rollups rebuilt from {rows} rows");
    Ok(())
}

/// Validates a config file and prints the effective settings.
pub fn check_config(args: &super::CheckConfig) -> anyhow::Result<()> {
    let file = &args.file;
    let c = Config::load(file)?;
    // The whole output is YAML: the verdict as a comment, then every effective setting.
    println!(
        "# {}: ok. Effective settings (defaults and environment applied, secrets hidden):",
        file.display()
    );
    print!("{}", gatemeter::config::effective::yaml(&c));
    Ok(())
}

/// The config from a file, or from the environment alone; `listen` overrides either.
pub fn load_config(path: Option<&PathBuf>, listen: Option<SocketAddr>) -> anyhow::Result<Config> {
    let mut config = match path {
        Some(p) => Config::load(p)?,
        None => Config::from_env()?,
    };
    if let Some(addr) = listen {
        config.listen = addr;
    }
    Ok(config)
}

/// The listener on the configured address.
pub async fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled: a signal right after "gatemeter listening" is logged
/// (before the server polls it) would otherwise end the process at once, without a drain.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (mut term, mut int) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let term = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            };
            tokio::select! {
                _ = term => {},
                _ = int => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("Shutting down: closing connections, draining the queue and flushing.");
    }
}
