//! The global series budget: how many series `/metrics` may show across every family
//! (request families, histogram buckets, quantile gauges, Claude Code families, …), shared by
//! the two owners that create series — the pipeline's aggregator and the Claude Code task.
//!
//! A new label value (a namespace, a (provider, model) pair, a Claude Code label set, a tool…)
//! asks for its series once, when first seen; series never disappear afterwards (counters stay
//! monotonic). Degradation is deterministic, in this order:
//! 1. **Histogram detail** (duration and token histograms, quantile gauges) is granted only
//!    while less than half the budget beyond the reserve is used ([`SeriesBudget::histogram_limit`]): later scopes
//!    get counters only, their observations go to the `__overflow__` series' histograms.
//! 2. **Own series**: once the budget is full, new label values fold into `__overflow__`.
//!
//! Room for the fixed families and the `__overflow__` series is kept aside ([`RESERVE`]): they
//! never ask. Refusals are counted by [`Refusal`] (`gatemeter_series_refused_total`).
//!
//! Shared by reference; one atomic per grant, taken only for a label value never seen before.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::catalog;

/// The default budget: under a cardinality attack (100,000 distinct names per dimension) a
/// scrape stays near 3 MB and the process well under 150 MB (docs/benchmarks.md).
pub const DEFAULT_MAX_SERIES: u64 = 25_000;

/// Series kept aside for the families that never ask (health, globals, `__overflow__` series,
/// status codes of the `__overflow__` namespace and of the global family).
pub const RESERVE: u64 = 3000;

/// The smallest budget accepted: the reserve plus room for some labelled scopes.
pub const MIN_SERIES: u64 = RESERVE + 1000;

/// Quantile gauges of one scope: `percentile` values times windows (`1m`, `5m`, `all`).
pub const QUANTILE_SERIES: u64 = catalog::QUANTILES.len() as u64 * 3;

/// Series of one classic histogram with `bounds` finite bounds: buckets, `+Inf`, `_sum`, `_count`.
pub const fn histogram_series(bounds: usize) -> u64 {
    bounds as u64 + 3
}

/// What a new label value costs: its counter series and its histogram series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Counters and gauges.
    pub counters: u64,
    /// Histogram buckets and quantile gauges (degraded first).
    pub histograms: u64,
}

/// What a new label value was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Counters and histograms of its own.
    Full,
    /// Counters of its own; its observations go to the `__overflow__` histograms.
    Counters,
    /// Nothing: it folds into `__overflow__`.
    Folded,
}

label_enum! {
    /// Why a new label value got less than it asked for.
    pub enum Refusal {
        /// Counters only: histogram detail is spent.
        Histogram = "histogram",
        /// Folded into `__overflow__`: the budget is spent.
        Series = "series",
    }
}

/// The budget; see the module docs.
#[derive(Debug)]
pub struct SeriesBudget {
    limit: u64,
    used: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl SeriesBudget {
    /// A budget of `limit` series in all (at least [`MIN_SERIES`]).
    pub fn new(limit: u64) -> Self {
        Self {
            limit: limit.max(MIN_SERIES),
            used: AtomicU64::new(RESERVE),
            refused: Default::default(),
        }
    }

    /// A budget that never refuses (for tests and tools).
    pub fn unlimited() -> Self {
        Self::new(u64::MAX / 4)
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Histogram detail is granted only while `used` stays at or below this: the reserve plus
    /// half of the rest.
    pub fn histogram_limit(&self) -> u64 {
        RESERVE + (self.limit - RESERVE) / 2
    }

    /// Series granted so far, the reserve included.
    pub fn used(&self) -> u64 {
        self.used.load(Relaxed)
    }

    /// Refusals so far, by kind.
    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r as usize].load(Relaxed)
    }

    fn take_within(&self, n: u64, ceiling: u64) -> bool {
        self.used
            .fetch_update(Relaxed, Relaxed, |u| {
                u.checked_add(n).filter(|t| *t <= ceiling)
            })
            .is_ok()
    }

    /// Asks for the series of one new label value.
    pub fn grant(&self, cost: Cost) -> Grant {
        if self.take_within(cost.counters + cost.histograms, self.histogram_limit()) {
            return Grant::Full;
        }
        if self.take_within(cost.counters, self.limit) {
            self.refused[Refusal::Histogram as usize].fetch_add(1, Relaxed);
            return Grant::Counters;
        }
        self.refused[Refusal::Series as usize].fetch_add(1, Relaxed);
        Grant::Folded
    }

    /// Asks for `n` counter series; false (counted) when the budget is spent.
    pub fn take(&self, n: u64) -> bool {
        matches!(
            self.grant(Cost {
                counters: n,
                histograms: 0
            }),
            Grant::Full | Grant::Counters
        )
    }
}

impl Default for SeriesBudget {
    fn default() -> Self {
        Self::unlimited()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_degrade_before_series() {
        let b = SeriesBudget::new(MIN_SERIES);
        let cost = Cost {
            counters: 10,
            histograms: 90,
        };
        let mut grants = Vec::new();
        loop {
            let g = b.grant(cost);
            grants.push(g);
            if g == Grant::Folded {
                break;
            }
        }
        let first_counters = grants.iter().position(|g| *g == Grant::Counters);
        let first_folded = grants.iter().position(|g| *g == Grant::Folded);
        // Full grants until half the budget, then counters only, then nothing.
        assert!(first_counters.is_some_and(|c| grants[..c].iter().all(|g| *g == Grant::Full)));
        assert!(first_counters < first_folded);
        assert!(b.used() <= b.limit());
        assert!(b.used() + 10 > b.limit(), "counters fill the budget");
        assert_eq!(b.refused(Refusal::Series), 1);
        assert_eq!(
            b.refused(Refusal::Histogram) as usize,
            first_folded.unwrap_or(0) - first_counters.unwrap_or(0)
        );
        assert!(!b.take(10));
    }
}
