//! The OTLP receiver's own counters: every item and request by signal and outcome, lock-free
//! atomics written by the receiver (`crate::ingest::otlp`) and the Claude Code task, read by
//! `/metrics` (`gatemeter_otlp_*`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use compact_str::CompactString;

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
        /// Understood but carried by another item, so not counted again: GenAI metric points and
        /// events (the spans are the records), agent and tool spans (they wrap call spans).
        Covered = "covered",
        /// Not something gatemeter reads (other metrics, spans, other logs); by source in
        /// `gatemeter_otlp_unused_items`.
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

/// Largest number of distinct reasons one request's outcome lists before the rest are summed
/// under [`OVERFLOW`].
const MAX_REASONS: usize = 16;

/// Largest number of distinct (signal, source) series of unused items, across all requests; the
/// rest are counted under [`OVERFLOW`].
pub const MAX_UNUSED_SOURCES: usize = 64;

/// The source under which unused items beyond the caps are counted.
pub const OVERFLOW: &str = "__overflow__";

/// Unused items of one request by source (instrumentation scope or event name), bounded.
pub type Reasons = Vec<(CompactString, u64)>;

/// Adds `n` items to `source` in a bounded list (an empty source is `unnamed`).
pub fn count_reason(list: &mut Reasons, source: &str, n: u64) {
    if n == 0 {
        return;
    }
    let source = if source.is_empty() { "unnamed" } else { source };
    if let Some(e) = list.iter_mut().find(|(r, _)| r == source) {
        e.1 += n;
    } else if list.len() < MAX_REASONS {
        list.push((CompactString::from(source), n));
    } else if let Some(e) = list.iter_mut().find(|(r, _)| r == OVERFLOW) {
        e.1 += n;
    } else {
        list.push((CompactString::const_new(OVERFLOW), n));
    }
}

/// Counters of every OTLP item and request, by signal and outcome (lock-free atomics).
#[derive(Debug, Default)]
pub struct Diagnostics {
    received: [AtomicU64; SIGNALS],
    accepted: [[AtomicU64; Use::ALL.len()]; SIGNALS],
    rejected: [[AtomicU64; ItemReject::ALL.len()]; SIGNALS],
    rejected_requests: [[AtomicU64; RequestReject::ALL.len()]; SIGNALS],
    /// Unused items by (signal, source), at most [`MAX_UNUSED_SOURCES`] + overflow rows. A
    /// short synchronous section per request that has unused items (one merge of a few rows).
    unused_by: Mutex<Vec<(Signal, CompactString, u64)>>,
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
    /// Unused items by signal and source (scope or event name), in first-seen order.
    pub unused_by: Vec<(Signal, CompactString, u64)>,
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

    /// Counts unused items by source (also in the `unused` total of [`Self::accepted`]).
    pub fn unused(&self, s: Signal, by: &Reasons) {
        let total: u64 = by.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return;
        }
        self.accepted(s, Use::Unused, total);
        let mut t = self.unused_by.lock().unwrap_or_else(|e| e.into_inner());
        for (source, n) in by {
            let row = match t.iter().position(|(sig, r, _)| *sig == s && r == source) {
                Some(i) => i,
                None => {
                    let full = t.len() >= MAX_UNUSED_SOURCES;
                    let name = if full { OVERFLOW } else { source.as_str() };
                    match t.iter().position(|(sig, r, _)| *sig == s && r == name) {
                        Some(i) => i,
                        None => {
                            t.push((s, CompactString::from(name), 0));
                            t.len() - 1
                        }
                    }
                }
            };
            t[row].2 += n;
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
            unused_by: self
                .unused_by
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_sources_are_bounded_and_sum_to_the_total() {
        let mut list = Reasons::new();
        for i in 0..40 {
            count_reason(&mut list, &format!("scope-{i}"), 2);
        }
        assert_eq!(list.len(), MAX_REASONS + 1);
        assert_eq!(
            list[MAX_REASONS],
            (OVERFLOW.into(), 2 * (40 - MAX_REASONS as u64))
        );
        let d = Diagnostics::default();
        for i in 0..10 {
            let mut l = Reasons::new();
            for j in 0..10 {
                count_reason(&mut l, &format!("s-{i}-{j}"), 1);
            }
            d.unused(Signal::Traces, &l);
        }
        d.unused(Signal::Logs, &vec![("x".into(), 3)]);
        let snap = d.snapshot();
        assert_eq!(snap.unused_by.len(), MAX_UNUSED_SOURCES + 2);
        let traces: u64 = snap
            .unused_by
            .iter()
            .filter(|(s, _, _)| *s == Signal::Traces)
            .map(|(_, _, n)| n)
            .sum();
        assert_eq!(traces, 100);
        assert_eq!(
            snap.accepted[Signal::Traces as usize][Use::Unused as usize],
            100
        );
        assert!(
            snap.unused_by
                .iter()
                .any(|(s, r, n)| *s == Signal::Logs && r == OVERFLOW && *n == 3)
        );
    }

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
