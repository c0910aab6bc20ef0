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
//! - [`client`]: the client side of the HTTP API (one HTTP/1.1 client, the exposition parser),
//!   for the tools and the tests; nothing in the server imports it.
//! - [`claude_code`]: the owner task of Claude Code metric, tool and event state (fed by OTLP).
//!
//! The developer tools (`gatemeter demo`, `loadgen`, `bench-log`) live in the binary
//! (`src/cli/`) and use this library's public API like any client.

#[macro_use]
mod label;

pub mod aggregate;
pub mod api;
pub mod app;
pub mod catalog;
pub mod claude_code;
pub mod client;
pub mod config;
pub mod export;
pub mod health;
pub mod ingest;
pub mod pipeline;
pub mod price;
pub mod record;
pub mod store;
