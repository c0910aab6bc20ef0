//! The live-store seam: where flushed deltas go, and where `/metrics` reads fleet totals from.
//!
//! A backend must (1) take a flush of deltas without blocking the pipeline, (2) answer `view`
//! from memory — never by waiting on a network — and (3) keep sliding windows of latency
//! histograms in [`SLOT_MS`] slots so every backend reports the same windows.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::aggregate::{Aggregates, Latencies, ScopeKey};
use crate::record::Label;
use crate::store::StoreError;

/// Width of one latency time slot, ms. A window of W seconds merges the slots that cover the
/// last W seconds plus the current, partly filled slot (W to W+10 s of data).
pub const SLOT_MS: i64 = 10_000;

/// The recent windows exposed as quantile gauges: label and length in ms.
pub const WINDOWS: [(&str, i64); 2] = [("1m", 60_000), ("5m", 300_000)];

/// Latency distributions of one recent window.
#[derive(Debug, Clone, Default)]
pub struct WindowView {
    /// Window label (`1m`, `5m`).
    pub label: &'static str,
    /// Over every request.
    pub global: Latencies,
    /// Per scope.
    pub scopes: HashMap<ScopeKey, Latencies>,
}

/// What the fleet has counted: totals since the store began, plus recent windows.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    /// Totals (latency histograms since start included). API key `total_calls` and
    /// `last_used_at` are the requests and `last_used_ms` of the [`ScopeKey::Key`] scopes.
    pub totals: Aggregates,
    /// One entry per [`WINDOWS`] element, same order.
    pub windows: Vec<WindowView>,
    /// API key calls in the current UTC day and month, per key with calls in this month.
    pub key_calls: HashMap<Label, KeyCalls>,
}

/// Calls of one API key in the current UTC day and month (reset when they start). Calls are
/// attributed to the period of the flush that carried them (at most a flush interval late).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCalls {
    /// `calls_today`.
    pub today: u64,
    /// `calls_this_month`.
    pub this_month: u64,
}

/// The UTC day of `now_ms`: days since the epoch.
pub fn utc_day(now_ms: i64) -> i64 {
    now_ms.div_euclid(86_400_000)
}

/// The UTC month of `now_ms`: year * 12 + month - 1.
pub fn utc_month(now_ms: i64) -> i64 {
    // Civil-from-days (Howard Hinnant's algorithm): exact for every proleptic Gregorian date.
    let z = utc_day(now_ms) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    year * 12 + month - 1
}

/// A live aggregate store.
pub trait LiveStore: Send + Sync + 'static {
    /// Short name for the `store` label (`memory`, `redis`).
    fn name(&self) -> &'static str;
    /// Hands over one flush interval of deltas, observed at `now_ms`. Must not block on I/O.
    fn apply(&self, deltas: Aggregates, now_ms: i64);
    /// The fleet's current totals and windows, from memory.
    fn view(&self, now_ms: i64) -> Arc<FleetView>;
    /// Whether the backend is reachable.
    fn is_up(&self) -> bool;
    /// [`apply`](Self::apply), with the spool position of the last event in `deltas`
    /// (durable acknowledgement). A store that outlives the process keeps the highest position
    /// per `spool` together with the deltas, atomically, so that a replay after a crash can skip
    /// what it already holds ([`spooled_position`](Self::spooled_position)). Default: `apply`.
    fn apply_spooled(&self, deltas: Aggregates, now_ms: i64, spool: &str, pos: u64) {
        let _ = (spool, pos);
        self.apply(deltas, now_ms);
    }
    /// The highest position [`apply_spooled`](Self::apply_spooled) made durable for `spool`,
    /// read at start before the replay; `None` for a store that does not outlive the process
    /// (memory: a restarted process counts everything replayed). Default: `None`.
    fn spooled_position<'a>(
        &'a self,
        spool: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<u64>, StoreError>> + Send + 'a>> {
        let _ = spool;
        Box::pin(async { Ok(None) })
    }
    /// Resolves to true once every delta applied before the call is where a restarted process
    /// finds it again — or, for a store that does not outlive the process (memory), at once:
    /// the spool's checkpoint. Default: true.
    fn sync(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async { true })
    }
    /// Writes out whatever is still buffered (graceful shutdown, after the last `apply`).
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_months_start_on_the_first() {
        // 2024-02-29T23:59:59.999Z and 2024-03-01T00:00:00Z.
        assert_eq!(utc_month(1_709_251_199_999), 2024 * 12 + 1);
        assert_eq!(utc_month(1_709_251_200_000), 2024 * 12 + 2);
        assert_eq!(utc_month(0), 1970 * 12);
        // 2025-12-31T12:00:00Z.
        assert_eq!(utc_month(1_767_182_400_000), 2025 * 12 + 11);
        assert_eq!(utc_day(86_399_999), 0);
        assert_eq!(utc_day(86_400_000), 1);
    }
}
