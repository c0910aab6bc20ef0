//! HDR latency histograms: lazily allocated, mergeable, with nearest-rank quantiles and classic
//! Prometheus buckets derived from the same data.
//!
//! Values are integers from 0 to one day in microseconds, two significant digits: every reported
//! value is within 0.4 % of a recorded one (the midpoint of its HDR bucket is returned). The live
//! aggregates record microseconds (`duration_ms: 207.5` is 207,500); the request log's rollups
//! record its whole milliseconds (`store/sql/rollup.rs`): the unit is the caller's.

use hdrhistogram::Histogram;

use crate::record::MAX_DURATION_US;
use crate::varint;

const SIGFIG: u8 = 2;

/// One latency distribution (µs, or ms: see the module). Empty histograms allocate nothing.
#[derive(Clone, Default)]
pub struct Latency(Option<Box<Histogram<u64>>>);

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Latency(count={})", self.count())
    }
}

fn new_histogram() -> Box<Histogram<u64>> {
    // Bounds are constants that hdrhistogram accepts; failure would be a programming error
    // caught by every test that records a value.
    #[allow(clippy::expect_used)]
    Box::new(Histogram::new_with_bounds(1, MAX_DURATION_US, SIGFIG).expect("valid HDR bounds"))
}

impl Latency {
    /// Records one value (values above one day in µs saturate).
    pub fn record(&mut self, v: u64) {
        self.0
            .get_or_insert_with(new_histogram)
            .saturating_record(v.min(MAX_DURATION_US));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latency) {
        if let Some(o) = &other.0 {
            let h = self.0.get_or_insert_with(new_histogram);
            // Same bounds on both sides, so `add` cannot fail.
            let _ = h.add(o.as_ref());
        }
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.0.as_ref().map_or(0, |h| h.len())
    }

    /// The non-empty HDR buckets as sorted `(value, count)` pairs: the exact content of the
    /// histogram, for storage elsewhere (rebuilt with [`Latency::record_n`]).
    pub fn to_pairs(&self) -> Vec<(u64, u64)> {
        self.0.as_ref().map_or_else(Vec::new, |h| {
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_since_last_iteration()))
                .collect()
        })
    }

    /// Records `value` (saturating at one day in µs) `n` times.
    pub fn record_n(&mut self, value: u64, n: u64) {
        if n > 0 {
            let h = self.0.get_or_insert_with(new_histogram);
            let _ = h.record_n(value.min(MAX_DURATION_US), n);
        }
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// The nearest-rank quantile (the value at rank ⌈q·n⌉ of the sorted samples), in the
    /// recorded unit, to HDR precision; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let h = self.0.as_ref()?;
        let n = h.len();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0u64;
        for v in h.iter_recorded() {
            seen += v.count_since_last_iteration();
            if seen >= rank {
                let value = v.value_iterated_to();
                let lo = h.lowest_equivalent(value);
                let hi = h.highest_equivalent(value);
                return Some((lo as f64 + hi as f64) / 2.0);
            }
        }
        Some(h.max() as f64)
    }

    /// Cumulative counts of values ≤ each bound (bounds in the recorded unit, increasing); the
    /// count of a value is attributed by the lowest value of its HDR bucket.
    pub fn cumulative(&self, bounds: &[f64]) -> Vec<u64> {
        let mut out = vec![0u64; bounds.len()];
        let Some(h) = self.0.as_ref() else { return out };
        let mut i = 0;
        let mut running = 0u64;
        for v in h.iter_recorded() {
            let lo = h.lowest_equivalent(v.value_iterated_to()) as f64;
            while i < bounds.len() && lo > bounds[i] {
                out[i] = running;
                i += 1;
            }
            running += v.count_since_last_iteration();
        }
        for slot in out.iter_mut().skip(i) {
            *slot = running;
        }
        out
    }
}

impl Latency {
    /// Appends the histogram as varints: the number of non-empty HDR buckets, then per bucket
    /// the value's increase over the previous one and the count. Read by [`Latency::decode_from`].
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let pairs = self.to_pairs();
        varint::put(out, pairs.len() as u64);
        let mut prev = 0;
        for (v, n) in pairs {
            varint::put(out, v - prev);
            varint::put(out, n);
            prev = v;
        }
    }

    /// Adds the histogram encoded at `*i` (by [`Latency::encode_into`]) into `self`,
    /// advancing `i`; `None` when the bytes are not such a histogram.
    pub fn decode_from(&mut self, b: &[u8], i: &mut usize) -> Option<()> {
        self.decode_scaled_from(b, i, 1)
    }

    /// [`Latency::decode_from`] with every value multiplied by `scale` (1000: a histogram
    /// written in milliseconds read into one of microseconds).
    pub fn decode_scaled_from(&mut self, b: &[u8], i: &mut usize, scale: u64) -> Option<()> {
        Self::walk_encoded(b, i, |v, n| self.record_n(v.saturating_mul(scale), n))
    }

    /// Reads the histogram encoded at `*i` (by [`Latency::encode_into`]), calling `bucket`
    /// with each `(value, count)`, advancing `i`; `None` when the bytes are not such a
    /// histogram (some buckets may have been passed by then).
    pub fn walk_encoded(b: &[u8], i: &mut usize, mut bucket: impl FnMut(u64, u64)) -> Option<()> {
        let n = varint::get(b, i)?;
        let mut prev = 0u64;
        for _ in 0..n {
            prev = prev.checked_add(varint::get(b, i)?)?;
            bucket(prev, varint::get(b, i)?);
        }
        Some(())
    }
}

/// A latency distribution as sorted `(value, count)` pairs of its non-empty HDR buckets: the
/// compact form of the many short time slots behind sliding windows, whose dense form would
/// cost ~21 KiB each whatever their traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseLatency(Vec<(u64, u64)>);

impl SparseLatency {
    /// Adds every value of a dense histogram (a sorted merge).
    pub fn add(&mut self, dense: &Latency) {
        let Some(h) = dense.0.as_ref() else { return };
        let other: Vec<(u64, u64)> = h
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_since_last_iteration()))
            .collect();
        if self.0.is_empty() {
            self.0 = other;
            return;
        }
        let mut merged = Vec::with_capacity(self.0.len() + other.len());
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() && j < other.len() {
            let (x, y) = (self.0[i], other[j]);
            if x.0 == y.0 {
                merged.push((x.0, x.1 + y.1));
                i += 1;
                j += 1;
            } else if x.0 < y.0 {
                merged.push(x);
                i += 1;
            } else {
                merged.push(y);
                j += 1;
            }
        }
        merged.extend_from_slice(&self.0[i..]);
        merged.extend_from_slice(&other[j..]);
        self.0 = merged;
    }

    /// Adds every value into a dense histogram.
    pub fn add_into(&self, dense: &mut Latency) {
        if self.0.is_empty() {
            return;
        }
        let h = dense.0.get_or_insert_with(new_histogram);
        for (v, n) in &self.0 {
            let _ = h.record_n(*v, *n);
        }
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(sorted: &[u64], q: f64) -> f64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1] as f64
    }

    #[test]
    fn quantiles_within_half_a_percent_of_exact() {
        // Long-tailed values from 1 ms to ~20 minutes.
        let mut values: Vec<u64> = (1..=20_000u64)
            .map(|i| 1 + (i * i * 3) % 1_200_000)
            .collect();
        let mut l = Latency::default();
        for v in &values {
            l.record(*v);
        }
        values.sort_unstable();
        for q in [0.5, 0.95, 0.99, 0.999, 1.0] {
            let got = l.quantile(q).expect("not empty");
            let want = exact(&values, q);
            assert!(
                (got - want).abs() / want <= 0.005,
                "q={q} got={got} want={want}"
            );
        }
    }

    #[test]
    fn small_values_are_exact() {
        let mut l = Latency::default();
        for v in [1, 2, 3, 100, 200] {
            l.record(v);
        }
        assert_eq!(l.quantile(0.5), Some(3.0));
        assert_eq!(l.quantile(0.99), Some(200.0));
        assert_eq!(l.cumulative(&[0.0, 2.0, 150.0, 1e9]), vec![0, 2, 4, 5]);
    }

    #[test]
    fn merge_adds_counts_and_empty_allocates_nothing() {
        let mut a = Latency::default();
        let b = Latency::default();
        a.merge(&b);
        assert!(a.0.is_none());
        let mut c = Latency::default();
        c.record(10);
        a.merge(&c);
        a.merge(&c);
        assert_eq!(a.count(), 2);
        assert_eq!(a.quantile(0.5), Some(10.0));
        assert_eq!(Latency::default().quantile(0.5), None);
    }

    #[test]
    fn sparse_round_trip_keeps_every_value() {
        let (mut a, mut b) = (Latency::default(), Latency::default());
        for v in [1, 5, 5, 300, 70_000] {
            a.record(v);
        }
        for v in [5, 299, 300, 1_000_000] {
            b.record(v);
        }
        let mut s = SparseLatency::default();
        s.add(&a);
        s.add(&b);
        s.add(&Latency::default());
        assert_eq!(s.count(), 9);
        let mut dense = Latency::default();
        s.add_into(&mut dense);
        let mut both = a.clone();
        both.merge(&b);
        for q in [0.1, 0.5, 0.9, 1.0] {
            assert_eq!(dense.quantile(q), both.quantile(q));
        }
        assert_eq!(
            dense.cumulative(&[5.0, 300.0]),
            both.cumulative(&[5.0, 300.0])
        );
    }

    #[test]
    fn saturates_above_one_day() {
        let mut l = Latency::default();
        l.record(u64::MAX);
        assert_eq!(l.count(), 1);
    }
}
