//! The embedded live store: the fleet is this one process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::live::{
    FleetView, KeyCalls, LiveStore, SLOT_MS, WINDOWS, WindowView, utc_day, utc_month,
};
use crate::aggregate::{Aggregates, Latencies, ScopeKey, SparseLatency};
use crate::record::Label;

/// One scope's latencies in one time slot, in compact form.
#[derive(Debug, Default)]
struct SparsePair {
    duration: SparseLatency,
    ttfb: SparseLatency,
}

impl SparsePair {
    fn add(&mut self, l: &Latencies) {
        self.duration.add(&l.duration);
        self.ttfb.add(&l.ttfb);
    }

    fn add_into(&self, l: &mut Latencies) {
        self.duration.add_into(&mut l.duration);
        self.ttfb.add_into(&mut l.ttfb);
    }
}

/// Latencies of one 10 s slot. Sparse, so idle scopes and quiet slots cost almost nothing.
#[derive(Debug, Default)]
struct Slot {
    global: SparsePair,
    scopes: HashMap<ScopeKey, SparsePair>,
}

/// Calls of one API key in the day and month they were last counted in.
#[derive(Debug, Default, Clone, Copy)]
struct KeyPeriods {
    day: i64,
    today: u64,
    month: i64,
    this_month: u64,
}

#[derive(Debug, Default)]
struct State {
    totals: Aggregates,
    slots: BTreeMap<i64, Slot>,
    key_calls: HashMap<Label, KeyPeriods>,
}

/// Totals and windowed histograms in process memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    // Written once per flush by the pipeline task, read by `/metrics`; both hold it for a short,
    // synchronous critical section (a merge or a clone), never across an await.
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain counters behind, still consistent enough to serve.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LiveStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn apply(&self, deltas: Aggregates, now_ms: i64) {
        if deltas.is_empty() {
            return;
        }
        let slot_id = now_ms.div_euclid(SLOT_MS);
        let oldest_kept = slot_id - WINDOWS[WINDOWS.len() - 1].1 / SLOT_MS;
        let mut st = lock(&self.state);
        let slot = st.slots.entry(slot_id).or_default();
        slot.global.add(&deltas.global.latency);
        for (k, v) in &deltas.scopes {
            if v.latency.duration.count() > 0 || v.latency.ttfb.count() > 0 {
                slot.scopes.entry(k.clone()).or_default().add(&v.latency);
            }
        }
        st.slots = st.slots.split_off(&oldest_kept);
        let (day, month) = (utc_day(now_ms), utc_month(now_ms));
        for (k, v) in &deltas.scopes {
            if let ScopeKey::Key(key) = k
                && v.requests > 0
            {
                let p = st.key_calls.entry(key.clone()).or_default();
                if p.day != day {
                    *p = KeyPeriods {
                        day,
                        today: 0,
                        ..*p
                    };
                }
                if p.month != month {
                    *p = KeyPeriods {
                        month,
                        this_month: 0,
                        ..*p
                    };
                }
                p.today += v.requests;
                p.this_month += v.requests;
            }
        }
        st.totals.merge(&deltas);
    }

    fn view(&self, now_ms: i64) -> Arc<FleetView> {
        let slot_id = now_ms.div_euclid(SLOT_MS);
        let st = lock(&self.state);
        let windows = WINDOWS
            .iter()
            .map(|(label, len)| {
                let mut w = WindowView {
                    label,
                    ..WindowView::default()
                };
                for (_, slot) in st.slots.range(slot_id - len / SLOT_MS..=slot_id) {
                    slot.global.add_into(&mut w.global);
                    for (k, v) in &slot.scopes {
                        v.add_into(w.scopes.entry(k.clone()).or_default());
                    }
                }
                w
            })
            .collect();
        let (day, month) = (utc_day(now_ms), utc_month(now_ms));
        let key_calls = st
            .key_calls
            .iter()
            .filter(|(_, p)| p.month == month)
            .map(|(k, p)| {
                let today = if p.day == day { p.today } else { 0 };
                (
                    k.clone(),
                    KeyCalls {
                        today,
                        this_month: p.this_month,
                    },
                )
            })
            .collect();
        Arc::new(FleetView {
            totals: st.totals.clone(),
            windows,
            key_calls,
        })
    }

    fn is_up(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Aggregator, Limits};
    use crate::price::PriceTable;
    use crate::record::{Validation, parse_event};

    fn deltas(durations: &[u64]) -> Aggregates {
        let prices = PriceTable::default();
        let mut a = Aggregator::new(Limits::default());
        for d in durations {
            let json = format!(r#"{{"model":"m","status":200,"duration_ms":{d}}}"#);
            let e = parse_event(
                &json,
                &Validation {
                    now_ms: 1_760_000_000_000,
                    prices: &prices,
                    keep_requests: None,
                },
            )
            .expect("valid");
            a.apply(&e, 0);
        }
        a.take()
    }

    #[test]
    fn windows_slide_and_totals_stay() {
        let s = MemoryStore::new();
        let t0 = 1_000_000_000;
        s.apply(deltas(&[100]), t0);
        s.apply(deltas(&[200, 300]), t0 + 120_000);
        let v = s.view(t0 + 120_000);
        assert_eq!(v.totals.global.requests, 3);
        assert_eq!(
            v.windows[0].global.duration.count(),
            2,
            "1m window holds the recent flush only"
        );
        assert_eq!(
            v.windows[1].global.duration.count(),
            3,
            "5m window holds both"
        );
        let later = s.view(t0 + 400_000);
        assert_eq!(later.windows[1].global.duration.count(), 2);
        assert_eq!(later.windows[0].global.duration.count(), 0);
        assert_eq!(later.totals.global.latency.duration.count(), 3);
    }
}
