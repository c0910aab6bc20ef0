//! Claude Code: everything gatemeter does with Claude Code's OpenTelemetry output, in one
//! place. Open the file for the job:
//!
//! - [`mapping`]: what each OTLP log record and metric data point becomes — request records
//!   (validated like native ones), tool events, event counts, metric points with bounded
//!   labels; also the read-back of `gatemeter.request` records forwarded by another gatemeter.
//!   Add a Claude Code event or attribute here.
//! - [`clis`]: the Gemini CLI's and Codex CLI's events as request records (the same pipeline;
//!   their tool events go through [`mapping`] into the same tool statistics).
//! - [`state`]: the pure state those inputs build — metric streams turned into cumulative
//!   series, tool statistics, event counts — and its [`state::Snapshot`]. No I/O, no clock.
//! - [`task`]: the one owner of that state, a task behind a bounded queue that answers
//!   snapshot requests in queue order.
//! - [`render`]: the `claude_code_*` families of `/metrics`, from a snapshot.
//!
//! This module never speaks HTTP and never touches the request-record aggregates: the OTLP
//! receiver (`crate::ingest::otlp`) reads bodies and sends records to the pipeline and inputs
//! to the [`task`]; `/metrics` (`crate::export::prometheus`) calls [`render`]. The receiver's
//! own counters (`gatemeter_otlp_*`) are OTLP, not Claude Code, and live with the receiver.

pub mod clis;
pub mod mapping;
pub mod render;
pub mod state;
pub mod task;
