//! The OTLP/HTTP receiver (`POST /v1/logs`, `/v1/metrics`, `/v1/traces`, also under any path
//! prefix): Claude Code's metrics and events, and request records forwarded by another
//! gatemeter's OTLP log export.
//!
//! - [`http`]: the OTLP/HTTP protocol — media types, status codes, `partial_success`, answers in
//!   the request's encoding.
//! - the receiver's counters ([`Diagnostics`], declared with gatemeter's other own counters in
//!   [`crate::health::otlp`] so `/metrics` reads them without importing the receiver).
//!
//! Bodies are read by [`crate::otlp`] (decoding, the borrowed logs view). What each log record and data point becomes is Claude Code's mapping
//! ([`crate::claude_code::mapping`]). The receiver never touches aggregates: records go to the
//! pipeline, Claude Code inputs to the Claude Code task ([`crate::claude_code::task`]). Counts
//! of what happened to every item live in [`Diagnostics`] (rendered by
//! `crate::export::prometheus`).

use crate::claude_code::state::PointOutcome;
use crate::claude_code::task::PointCounter;
use crate::health::otlp::{Diagnostics, ItemReject, Signal, Use};

pub mod http;

impl PointCounter for Diagnostics {
    fn count(&self, outcome: PointOutcome) {
        match outcome {
            PointOutcome::Counted => self.accepted(Signal::Metrics, Use::Metric, 1),
            PointOutcome::Repeated => self.accepted(Signal::Metrics, Use::Repeated, 1),
            PointOutcome::StreamLimit => self.rejected(Signal::Metrics, ItemReject::StreamLimit, 1),
            PointOutcome::OutOfRange => self.rejected(Signal::Metrics, ItemReject::OutOfRange, 1),
        }
    }
}
