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
    /// Totals (latency histograms since start included).
    pub totals: Aggregates,
    /// One entry per [`WINDOWS`] element, same order.
    pub windows: Vec<WindowView>,
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
    /// Writes out whatever is still buffered (graceful shutdown, after the last `apply`).
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}
