//! gatemeter — an observability collector for AI/LLM API gateways.
//!
//! Code map, from the ground floor up (a module imports only modules above it in this list;
//! ARCHITECTURE.md has one line per file):
//! - [`record`]: the request record and its validation — the one type every source produces.
//! - [`catalog`]: every metric name — the only place names are written.
//! - [`clock`]: the wall clock, read in one place; [`varint`]: LEB128 for compact blobs;
//!   [`calendar`]: today / week / month in an IANA time zone.
//! - [`budget`]: the global series budget shared by everything that creates series.
//! - [`otlp`]: the OTLP wire format (decoding, a borrowed logs view).
//! - [`price`]: the price table; cost in integer micro-USD.
//! - [`aggregate`]: counters, HDR latency, tokens, cost, concurrency — pure, no I/O, no clock.
//! - [`health`]: gatemeter's own counters (per process) and the one list of refusal reasons.
//! - `exposition`: the Prometheus / OpenMetrics text encoder under every `/metrics` renderer.
//! - [`genai`]: OpenTelemetry GenAI semantic-convention spans → request records (any OTel
//!   GenAI source: OpenAI / Anthropic instrumentations, OpenLLMetry, OpenLIT).
//! - [`claude_code`]: everything Claude Code — OTLP mapping, pure state, owner task, `/metrics`
//!   families.
//! - [`store`]: live store (memory, Redis) and request-log seams, behind small traits; the SQL
//!   request log (SQLite, PostgreSQL) in [`store::sql`].
//! - [`tls`]: the one rustls client setup (system roots plus an optional CA file).
//! - [`probe`]: active provider probes — one task per probe, the fleet's Redis lease, results
//!   to `probe_results` (or an in-memory ring) and to the `gatemeter_probe_*` families.
//! - [`pipeline`]: bounded queue → the one aggregator task → periodic flush to the live store.
//! - [`spool`]: durable acknowledgement — the group-committed, fsync'd spool of validated
//!   batches, replayed into the pipeline at start, trimmed at the pipeline's checkpoints.
//! - [`api`]: the API error type; `/healthz`, `/readyz`; roles ([`api::auth`]); log queries,
//!   usage CSV and audit ([`api::logs`]).
//! - [`ingest`]: HTTP sources (native `/v1/events`, OTLP `/v1/logs|metrics|traces`); body limits
//!   and decompression.
//! - [`export`]: `/metrics` in Prometheus text and OpenMetrics; OTLP log export of records;
//!   usage CSV.
//! - [`server`]: HTTP/1.1 connections under the router: header, body and idle timeouts, the
//!   connection cap, shutdown within a deadline.
//! - [`config`]: YAML config → validated [`config::Config`]; each section's typed settings are
//!   declared by the module that uses them.
//! - [`app`]: wires it all onto a listener; graceful shutdown.
//! - [`client`]: the client side of the HTTP API (one HTTP/1.1 client, the exposition parser),
//!   for the tools and the tests; nothing in the server imports it.
//!
//! The developer tools (`gatemeter demo`, `loadgen`, `bench-log`) live in the binary
//! (`src/cli/`) and use this library's public API like any client.

#[macro_use]
mod label;

pub mod aggregate;
pub mod api;
pub mod app;
pub mod budget;
pub mod calendar;
pub mod catalog;
pub mod claude_code;
pub mod client;
pub mod clock;
pub mod config;
pub mod export;
mod exposition;
pub mod genai;
pub mod health;
pub mod ingest;
pub mod otlp;
pub mod pipeline;
pub mod price;
pub mod probe;
pub mod record;
pub mod server;
pub mod spool;
pub mod store;
pub mod tls;
pub mod varint;
