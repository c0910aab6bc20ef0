//! The `gatemeter` command line: the clap definitions, and one module per subcommand.
//!
//! The server itself is the library ([`gatemeter::app`]); this tree holds only what the binary
//! adds around it. The developer tools (`demo`, `loadgen`, `bench-log`) use the library's public
//! API like any client, and nothing in the library imports them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub mod bench_log;
pub mod demo;
pub mod loadgen;
pub mod serve;
pub mod traffic;

#[derive(Parser)]
#[command(
    name = "gatemeter",
    version,
    about = "Observability collector for AI/LLM API gateways"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the ingest API and /metrics (default: memory store, 127.0.0.1:4318).
    Serve(Serve),
    /// Validate a config file and print the effective settings.
    CheckConfig(CheckConfig),
    /// Serve, and feed the server realistic synthetic gateway traffic and the OTLP telemetry of a
    /// few simulated Claude Code CLI sessions.
    Demo(Demo),
    /// Drive a running server with records and check its counters against what was sent.
    Loadgen(Loadgen),
    /// Benchmark the request log: write ROWS rows (all indexes in place), then time filtered
    /// queries. The database is left filled (for an export benchmark, see scripts/bench-sql.sh).
    BenchLog(BenchLog),
    /// The request log's rollups (what the analytics API reads).
    #[command(subcommand)]
    Rollup(Rollup),
}

/// `gatemeter rollup …`.
#[derive(clap::Subcommand)]
pub enum Rollup {
    /// Recompute every rollup from the request log's rows (for a log written before rollups
    /// existed or with them off). Stop the servers writing to this log first.
    Rebuild(RollupRebuild),
}

/// `gatemeter rollup rebuild`.
#[derive(Args)]
pub struct RollupRebuild {
    /// YAML config file naming the log (default: the embedded defaults, ./data/requests.db).
    #[arg(long, env = "GATEMETER_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `gatemeter serve`.
#[derive(Args)]
pub struct Serve {
    /// YAML config file (see config/gatemeter.example.yaml).
    #[arg(long, env = "GATEMETER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address; overrides the config file and GATEMETER_LISTEN.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

/// `gatemeter check-config`.
#[derive(Args)]
pub struct CheckConfig {
    /// YAML config file.
    pub file: PathBuf,
}

/// `gatemeter demo`.
#[derive(Args)]
pub struct Demo {
    /// YAML config file; by default the annotated example's price table is used.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listen address.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Synthetic gateway requests per second (the Claude Code sessions export every 2 s
    /// whatever the rate).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `gatemeter loadgen`.
#[derive(Args)]
pub struct Loadgen {
    /// Base URL of the server, e.g. http://127.0.0.1:4318.
    #[arg(long)]
    pub target: String,
    /// Records per second, or `max`.
    #[arg(long, default_value = "max")]
    pub rate: loadgen::Rate,
    /// Records per request (1 sends single JSON objects).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// `json` (native records to /v1/events) or `otlp` (Claude Code api_request events as
    /// OTLP protobuf to /v1/logs).
    #[arg(long, default_value = "json")]
    pub format: loadgen::Format,
    /// How the report is printed: `text` (for people and scripts/bench*.sh) or `json`.
    #[arg(long, value_enum, default_value_t = loadgen::ReportFormat::Text)]
    pub report: loadgen::ReportFormat,
}

/// `gatemeter bench-log`.
#[derive(Args)]
pub struct BenchLog {
    /// A SQLite file to create (must not exist yet).
    #[arg(long, conflicts_with = "database_url")]
    pub sqlite: Option<PathBuf>,
    /// A PostgreSQL URL (an empty database).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Rows to write.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Most rows per transaction [default: the database's, as `serve` uses]
    #[arg(long)]
    pub batch_rows: Option<usize>,
    /// Batches written at once [default: the database's, as `serve` uses]
    #[arg(long)]
    pub write_concurrency: Option<usize>,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The rows' request ids: random UUIDs, or ids that grow with time
    #[arg(long, value_enum, default_value_t = bench_log::RequestIds::Random)]
    pub ids: bench_log::RequestIds,
    /// The rows and the queries: `log` (one row every 10 ms, 500 users; the log list's filters)
    /// or `analytics` (29 days of traffic: 10,000 users with a skew, 200 keys, 30 models, sessions
    /// local in time; the analytics queries and a GROUP BY over the raw rows to compare)
    #[arg(long, value_enum, default_value_t = bench_log::Profile::Log)]
    pub profile: bench_log::Profile,
    /// Write without the rollups (the analytics API's tables), to measure what they cost.
    #[arg(long)]
    pub no_rollups: bool,
    /// Every Nth row (from row 150,001 on) is sent again with the request id of the row
    /// 150,000 before it, which an earlier transaction stored: the repeats a retrying client
    /// sends, skipped and not counted by the writer.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat_every: Option<u64>,
    /// The SQLite writer's page cache, MiB [default: `log_store.sqlite_cache_bytes`'s, 32]
    #[arg(long)]
    pub sqlite_cache_mib: Option<u64>,
    /// Write nothing: time the profile's queries over a database an earlier `bench-log` of the
    /// same profile filled (its newest row stands for "now"), e.g. to compare two builds'
    /// reads of one 10,000,000-row database.
    #[arg(long)]
    pub queries_only: bool,
}

/// An error and its causes on one line (`a: b: c`), for logs and reports.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
