//! The Claude Code families of `/metrics`, from a [`Snapshot`]: Claude Code metrics as
//! cumulative counters (labels from the points' attributes), tool statistics (calls, failures,
//! a duration histogram, permission decisions), event counts, and the overflow counters.
//!
//! It renders; it does not read the task or count anything. `/metrics`
//! (`crate::export::prometheus`) calls [`write`] in its place among the other families.

use crate::catalog as c;
use crate::claude_code::state::{OVERFLOW, Snapshot};
use crate::exposition::{Encoder, Value, at};

/// Writes every Claude Code family (each one header, even when empty).
pub(crate) fn write(e: &mut Encoder, cc: &Snapshot) {
    for (i, (_, m, usd)) in c::CLAUDE_CODE_METRICS.iter().enumerate() {
        e.header(m);
        let value = |v: f64| {
            if *usd {
                Value::Micros((v * 1_000_000.0).round().max(0.0) as u64)
            } else {
                Value::F(v)
            }
        };
        if let Some(series) = cc.series.get(i) {
            for (labels, v) in series {
                let names: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
                let values: Vec<&str> = labels.iter().map(|(_, v)| v.as_str()).collect();
                e.line(m.name, "_total", &names, &values, None, value(*v));
            }
        }
        if cc.overflow_points.get(i).copied().unwrap_or(0) > 0 {
            let v = cc.overflow_value.get(i).copied().unwrap_or(0.0);
            e.line(m.name, "_total", &["series"], &[OVERFLOW], None, value(v));
        }
    }
    e.header(&c::CC_EVENTS);
    for (name, n) in &cc.events {
        e.sample(&c::CC_EVENTS, &[name], Value::U(*n));
    }
    e.header(&c::CC_TOOL_CALLS);
    for (tool, t) in &cc.tools {
        e.sample(&c::CC_TOOL_CALLS, &[tool], Value::U(t.calls));
    }
    e.header(&c::CC_TOOL_FAILURES);
    for (tool, t) in &cc.tools {
        e.sample(&c::CC_TOOL_FAILURES, &[tool], Value::U(t.failures));
    }
    e.header(&c::CC_TOOL_DURATION);
    for (tool, t) in cc
        .tools
        .iter()
        .filter(|(_, t)| !t.duration_buckets.is_empty())
    {
        let mut running = 0;
        let cumulative: Vec<u64> = t
            .duration_buckets
            .iter()
            .take(c::DURATION_BUCKETS.len())
            .map(|n| {
                running += n;
                running
            })
            .collect();
        e.histogram(
            &c::CC_TOOL_DURATION,
            &[tool],
            c::DURATION_BUCKETS,
            &cumulative,
            t.duration_count,
            Value::F(t.duration_ms_sum as f64 / 1000.0),
        );
    }
    e.header(&c::CC_TOOL_DECISIONS);
    for ((tool, decision, source), n) in &cc.decisions {
        e.sample(
            &c::CC_TOOL_DECISIONS,
            &[tool, decision, source],
            Value::U(*n),
        );
    }
    e.header(&c::CC_SERIES_OVERFLOW);
    for (i, (name, _, _)) in c::CLAUDE_CODE_METRICS.iter().enumerate() {
        e.sample(
            &c::CC_SERIES_OVERFLOW,
            &[name],
            Value::U(at(&cc.overflow_points, i)),
        );
    }
}
