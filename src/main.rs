//! The `gatemeter` command: parse the CLI, turn huge pages off, start the runtime, init
//! tracing, dispatch to the subcommand in [`cli`].

use clap::Parser;

mod cli;

use cli::{Cli, Command};

// mimalloc: the ingest path allocates many small, short-lived objects (records, strings,
// batches) across tasks; it measured faster than glibc malloc here (see the closing note).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            init_tracing();
            cli::serve::run(args).await
        }
        Command::CheckConfig(args) => cli::serve::check_config(&args),
        Command::Demo(args) => {
            init_tracing();
            cli::demo::run(args).await
        }
        Command::Loadgen(args) => {
            init_tracing();
            cli::loadgen::run_command(args).await
        }
        Command::BenchLog(args) => cli::bench_log::run_command(args).await,
        Command::Rollup(cli::Rollup::Rebuild(args)) => {
            init_tracing();
            cli::serve::rebuild_rollups(&args).await
        }
    }
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

/// Turns transparent huge pages off for this process, as `MIMALLOC_ALLOW_THP=0` would (that
/// setting is read before `main`, so it cannot be set from here).
///
/// mimalloc asks for huge pages on its memory (`madvise(MADV_HUGEPAGE)`; with THP set to
/// `always` the kernel gives them anyway), and a 2 MiB page stays resident while any block on
/// it lives, so memory a usage export freed stayed in RSS: after 8 exports of 1,000,000 SQLite
/// rows, peak RSS 35–58 MB with huge pages, 23–43 MB without (docs/benchmarks.md, *Memory and
/// RSS*). Ingest throughput did not change beyond 1 %.
///
/// An operator who sets `MIMALLOC_ALLOW_THP` keeps mimalloc's own handling of it.
fn no_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // Only sets a flag of this process (inherited by children); a kernel without it changes nothing.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
}
