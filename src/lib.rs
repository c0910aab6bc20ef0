//! gatemeter — an observability collector for AI/LLM API gateways.
//!
//! Code map (the data path reads top to bottom):
//! - [`record`]: the request record and its validation — the one type every source produces.
//! - [`price`]: the price table; cost in integer micro-USD.
//! - [`ingest`]: HTTP sources (native `/v1/events`, OTLP `/v1/logs|metrics|traces`); body limits and decompression.
//! - [`pipeline`]: bounded queue → the one aggregator task → periodic flush to the live store.
//! - [`aggregate`]: counters, HDR latency, tokens, cost, concurrency — pure, no I/O, no clock.
//! - [`store`]: live store (memory, Redis) and request-log seams, behind small traits; the SQL
//!   request log (SQLite, PostgreSQL) in [`store::sql`].
//! - [`export`]: `/metrics` in Prometheus text and OpenMetrics; OTLP log export of records;
//!   usage CSV.
//! - [`catalog`]: every metric name — the only place names are written.
//! - [`health`]: gatemeter's own counters (per process).
//! - [`api`]: the API error type; `/healthz`, `/readyz`; roles ([`api::auth`]); log queries,
//!   usage CSV and audit ([`api::logs`]).
//! - [`config`]: YAML config → validated [`config::Config`].
//! - [`app`]: wires it all onto a listener; graceful shutdown.
//! - [`demo`], [`loadgen`]: synthetic gateway traffic, and a load generator that checks totals.
//! - [`claude_code`]: everything Claude Code — OTLP mapping, pure state, owner task, `/metrics`
//!   families.
//! - [`otlp`]: the OTLP wire format (decoding, a borrowed logs view), for the receiver and the
//!   Claude Code mapping.
//! - `exposition`: the Prometheus / OpenMetrics text encoder under every `/metrics` renderer.
//! - [`logbench`]: `gatemeter bench-log`, the request log's write and query benchmark.

#[macro_use]
mod label;

pub mod aggregate;
pub mod api;
pub mod app;
pub mod catalog;
pub mod claude_code;
pub mod clock;
pub mod config;
pub mod demo;
pub mod export;
mod exposition;
pub mod health;
pub mod ingest;
pub mod loadgen;
pub mod logbench;
pub mod otlp;
pub mod pipeline;
pub mod price;
pub mod record;
pub mod store;
