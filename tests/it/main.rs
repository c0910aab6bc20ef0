//! Integration tests: the real server on loopback, real HTTP.

mod analytics;
mod assets;
mod bad_input;
mod cli;
mod exact;
mod exports;
mod exposition;
mod genai;
mod harness;
mod ingest;
mod live_store;
mod loadgen;
mod log_outage;
mod openapi;
mod otlp;
mod otlp_export;
mod pg_server;
mod probes;
mod prometheus;
mod redis_fleet;
mod redis_server;
mod scrape_config;
mod series_budget;
mod slow_clients;
mod spool;
mod sql_log;
