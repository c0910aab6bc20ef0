//! The OTLP receiver's own counters: every item and request by signal and outcome, lock-free
//! atomics written by the receiver (`crate::ingest::otlp`) and the Claude Code task, read by
//! `/metrics` (`gatemeter_otlp_*`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::RequestReject;

label_enum! {
    /// OTLP signal (the `signal` label).
    pub enum Signal {
        /// `/v1/logs`.
        Logs = "logs",
        /// `/v1/metrics`.
        Metrics = "metrics",
        /// `/v1/traces`.
        Traces = "traces",
    }
}

impl Signal {
    /// The signal whose path `path` ends with (`/v1/logs`, ... after any prefix).
    pub fn from_path(path: &str) -> Option<Self> {
        let path = path.trim_end_matches('/');
        if path.ends_with("/v1/logs") {
            Some(Self::Logs)
        } else if path.ends_with("/v1/metrics") {
            Some(Self::Metrics)
        } else if path.ends_with("/v1/traces") {
            Some(Self::Traces)
        } else {
            None
        }
    }

    /// The canonical path.
    pub fn path(self) -> &'static str {
        match self {
            Self::Logs => "/v1/logs",
            Self::Metrics => "/v1/metrics",
            Self::Traces => "/v1/traces",
        }
    }
}

label_enum! {
    /// What an accepted item became (the `use` label).
    pub enum Use {
        /// A request record (api_request, api_error, gatemeter.request).
        Record = "record",
        /// A tool event (tool_result, tool_decision).
        Tool = "tool",
        /// Another Claude Code event (counted by name only).
        Event = "event",
        /// A Claude Code metric point that was counted.
        Metric = "metric",
        /// A metric point not newer than its stream's last one (a retried export): ignored.
        Repeated = "repeated",
        /// Not something gatemeter reads (other metrics, spans, other logs).
        Unused = "unused",
    }
}

label_enum! {
    /// Why an item was rejected (the `reason` label; reported in `partial_success`).
    pub enum ItemReject {
        /// An api_request / api_error that fails record validation (e.g. no model).
        InvalidRecord = "invalid_record",
        /// A metric point with a NaN, infinite or negative value, or a malformed attribute.
        BadValue = "bad_value",
        /// The metric stream table is full.
        StreamLimit = "stream_limit",
        /// A metric point whose value (or increment) exceeds the bounds of one native record.
        OutOfRange = "out_of_range",
        /// A metric point dated more than the tolerance after its receipt.
        Future = "future_timestamp",
    }
}

const SIGNALS: usize = Signal::ALL.len();

/// Counters of every OTLP item and request, by signal and outcome (lock-free atomics).
#[derive(Debug, Default)]
pub struct Diagnostics {
    received: [AtomicU64; SIGNALS],
    accepted: [[AtomicU64; Use::ALL.len()]; SIGNALS],
    rejected: [[AtomicU64; ItemReject::ALL.len()]; SIGNALS],
    rejected_requests: [[AtomicU64; RequestReject::ALL.len()]; SIGNALS],
}

/// A copy of [`Diagnostics`], indexed by the enums' discriminants.
#[derive(Debug, Clone, Default)]
pub struct DiagnosticsSnapshot {
    /// Per [`Signal`].
    pub received: Vec<u64>,
    /// Per [`Signal`], per [`Use`].
    pub accepted: Vec<Vec<u64>>,
    /// Per [`Signal`], per [`ItemReject`].
    pub rejected: Vec<Vec<u64>>,
    /// Per [`Signal`], per [`RequestReject`].
    pub rejected_requests: Vec<Vec<u64>>,
}

impl Diagnostics {
    /// Counts received items.
    pub fn received(&self, s: Signal, n: u64) {
        self.received[s as usize].fetch_add(n, Relaxed);
    }

    /// Counts accepted items.
    pub fn accepted(&self, s: Signal, u: Use, n: u64) {
        if n > 0 {
            self.accepted[s as usize][u as usize].fetch_add(n, Relaxed);
        }
    }

    /// Counts rejected items.
    pub fn rejected(&self, s: Signal, r: ItemReject, n: u64) {
        if n > 0 {
            self.rejected[s as usize][r as usize].fetch_add(n, Relaxed);
        }
    }

    /// Counts a refused request.
    pub fn rejected_request(&self, s: Signal, r: RequestReject) {
        self.rejected_requests[s as usize][r as usize].fetch_add(1, Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> DiagnosticsSnapshot {
        let load = |a: &AtomicU64| a.load(Relaxed);
        DiagnosticsSnapshot {
            received: self.received.iter().map(load).collect(),
            accepted: self
                .accepted
                .iter()
                .map(|r| r.iter().map(load).collect())
                .collect(),
            rejected: self
                .rejected
                .iter()
                .map(|r| r.iter().map(load).collect())
                .collect(),
            rejected_requests: self
                .rejected_requests
                .iter()
                .map(|r| r.iter().map(load).collect())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_found_under_any_prefix() {
        assert_eq!(Signal::from_path("/v1/logs"), Some(Signal::Logs));
        assert_eq!(
            Signal::from_path("/some/prefix/v1/metrics"),
            Some(Signal::Metrics)
        );
        assert_eq!(Signal::from_path("/x/v1/traces/"), Some(Signal::Traces));
        assert_eq!(Signal::from_path("/v1/events"), None);
        assert_eq!(Signal::from_path("/v1/logsx"), None);
    }
}
