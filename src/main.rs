//! The `gatemeter` command: parse the CLI, load config, init tracing, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatemeter::app::App;
use gatemeter::config::Config;
use tokio::net::TcpListener;

// mimalloc: the ingest path allocates many small, short-lived objects (records, strings,
// batches) across tasks; it measured faster than glibc malloc here (see the closing note).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gatemeter",
    version,
    about = "Observability collector for AI/LLM API gateways"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the ingest API and /metrics (default: memory store, 127.0.0.1:4318).
    Serve {
        /// YAML config file (see config/gatemeter.example.yaml).
        #[arg(long, env = "GATEMETER_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address; overrides the config file and GATEMETER_LISTEN.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Validate a config file and print the effective settings.
    CheckConfig {
        /// YAML config file.
        file: PathBuf,
    },
    /// Serve, and feed the server realistic synthetic gateway traffic.
    Demo {
        /// YAML config file; by default the annotated example's price table is used.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Synthetic gateway requests per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Drive a running server with records and check its counters against what was sent.
    Loadgen {
        /// Base URL of the server, e.g. http://127.0.0.1:4318.
        #[arg(long)]
        target: String,
        /// Records per second, or `max`.
        #[arg(long, default_value = "max")]
        rate: gatemeter::loadgen::Rate,
        /// Records per request (1 sends single JSON objects).
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// `json` (native records to /v1/events) or `otlp` (Claude Code api_request events as
        /// OTLP protobuf to /v1/logs).
        #[arg(long, default_value = "json")]
        format: gatemeter::loadgen::Format,
    },
    /// Benchmark the request log: write ROWS rows (all indexes in place), then time filtered
    /// queries. The database is left filled (for an export benchmark, see scripts/bench-sql.sh).
    BenchLog {
        /// A SQLite file to create (must not exist yet).
        #[arg(long, conflicts_with = "database_url")]
        sqlite: Option<PathBuf>,
        /// A PostgreSQL URL (an empty database).
        #[arg(long)]
        database_url: Option<String>,
        /// Rows to write.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Most rows per transaction [default: the database's, as `serve` uses]
        #[arg(long)]
        batch_rows: Option<usize>,
        /// Batches written at once [default: the database's, as `serve` uses]
        #[arg(long)]
        write_concurrency: Option<usize>,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The rows' request ids: random UUIDs, or ids that grow with time
        #[arg(long, value_enum, default_value_t = gatemeter::logbench::RequestIds::Random)]
        ids: gatemeter::logbench::RequestIds,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(path: Option<&PathBuf>, listen: Option<SocketAddr>) -> anyhow::Result<Config> {
    let mut config = match path {
        Some(p) => Config::load(p)?,
        None => Config::from_env()?,
    };
    if let Some(addr) = listen {
        config.listen = addr;
    }
    Ok(config)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("Shutting down: draining the queue and flushing.");
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let app = App::build(&config, listener).await?;
    let log = config
        .log_store
        .as_ref()
        .map_or("none", |l| match l.backend {
            gatemeter::store::sql::SqlBackend::Sqlite { .. } => "sqlite",
            gatemeter::store::sql::SqlBackend::Postgres { .. } => "postgres",
        });
    tracing::info!(addr = %app.local_addr()?, store = ?config.live_store, log, "gatemeter listening.");
    app.run(shutdown_signal()).await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    // One core (e.g. `taskset -c 0`): a current-thread runtime avoids cross-thread wake-ups
    // between connection tasks and the aggregator; otherwise one worker per core.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(cli))
}

/// Turns transparent huge pages off for this process, as `MIMALLOC_ALLOW_THP=0` would (that
/// setting is read before `main`, so it cannot be set from here).
///
/// mimalloc asks for huge pages on its memory (`madvise(MADV_HUGEPAGE)`; with THP set to
/// `always` the kernel gives them anyway), and a 2 MiB page stays resident while any block on
/// it lives, so memory a usage export freed stayed in RSS: after 8 exports of 1,000,000 SQLite
/// rows, peak RSS 35–58 MB with huge pages, 23–43 MB without (ARCHITECTURE.md, *Runtime and
/// allocator*). Ingest throughput did not change beyond 1 %.
///
/// An operator who sets `MIMALLOC_ALLOW_THP` keeps mimalloc's own handling of it.
#[allow(unsafe_code)] // Until the safe `nix` wrapper replaces this block (layout issue).
fn no_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes one integer argument (the rest must be 0), touches no
    // memory of ours and only sets a flag of this process (inherited by children).
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, listen } => {
            init_tracing();
            serve(load_config(config.as_ref(), listen)?).await
        }
        Command::CheckConfig { file } => {
            let c = Config::load(&file)?;
            println!("{}: ok", file.display());
            println!("listen: {}", c.listen);
            println!("live_store: {:?}", c.live_store);
            println!("ingest: {:?}", c.ingest);
            println!("pipeline: {:?}", c.pipeline);
            if c.live_store == gatemeter::config::LiveStoreKind::Redis {
                // Debug redacts the URL's password.
                println!("redis: {:?}", c.redis);
            }
            println!("log_store: {:?}", c.log_store);
            println!("auth: {:?}", c.auth);
            Ok(())
        }
        Command::Demo {
            config,
            listen,
            rate,
            seed,
        } => {
            init_tracing();
            let config = match config {
                Some(p) => load_config(Some(&p), listen)?,
                None => {
                    let text = include_str!("../config/gatemeter.example.yaml");
                    let mut c =
                        Config::from_yaml_str(text, std::path::Path::new("example"), &|k| {
                            std::env::var(k).ok()
                        })?;
                    if let Some(addr) = listen {
                        c.listen = addr;
                    }
                    // Without a config the demo's request log is a throwaway file.
                    if let Some(gatemeter::store::sql::SqlConfig {
                        backend: gatemeter::store::sql::SqlBackend::Sqlite { path },
                        ..
                    }) = c.log_store.as_mut()
                    {
                        *path = std::env::temp_dir()
                            .join(format!("gatemeter-demo-{}", std::process::id()))
                            .join("requests.db");
                    }
                    c
                }
            };
            let listener = TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            let app = App::build(&config, listener).await?;
            let addr = app.local_addr()?;
            tracing::info!(%addr, "gatemeter demo: serving and generating traffic; open http://{addr}/metrics");
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let mut demo_stop = stop_rx.clone();
            let traffic = tokio::spawn(gatemeter::demo::drive(
                addr,
                gatemeter::demo::DemoArgs {
                    requests_per_second: rate,
                    seed,
                },
                async move {
                    let _ = demo_stop.wait_for(|s| *s).await;
                },
            ));
            let server = app.run(async move {
                shutdown_signal().await;
                let _ = stop_tx.send(true);
            });
            server.await?;
            let _ = tokio::time::timeout(Duration::from_secs(2), traffic).await;
            Ok(())
        }
        Command::BenchLog {
            sqlite,
            database_url,
            rows,
            batch_rows,
            write_concurrency,
            seed,
            ids,
        } => {
            use gatemeter::store::sql::{SqlBackend, SqlConfig};
            let backend = match (sqlite, database_url) {
                (Some(path), None) => {
                    anyhow::ensure!(!path.exists(), "{} already exists", path.display());
                    SqlBackend::Sqlite { path }
                }
                (None, Some(url)) => SqlBackend::Postgres { url },
                _ => anyhow::bail!("give --sqlite FILE or --database-url URL"),
            };
            let args = gatemeter::logbench::BenchArgs {
                log: SqlConfig {
                    batch_rows: batch_rows.unwrap_or(backend.default_batch_rows()),
                    write_concurrency: write_concurrency
                        .unwrap_or(backend.default_write_concurrency()),
                    backend,
                    queue_capacity: 200_000,
                    retention_days: 0,
                },
                rows,
                seed,
                ids,
            };
            print!("{}", gatemeter::logbench::run(&args).await?);
            Ok(())
        }
        Command::Loadgen {
            target,
            rate,
            batch,
            duration,
            connections,
            format,
        } => {
            init_tracing();
            let args = gatemeter::loadgen::LoadgenArgs {
                target,
                rate,
                batch,
                duration: Duration::from_secs(duration),
                connections,
                format,
            };
            let report = gatemeter::loadgen::run(&args).await;
            match report {
                Ok(r) => {
                    println!("{r}");
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}
