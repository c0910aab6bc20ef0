//! The Claude Code and OTLP families of `/metrics`: Claude Code metrics as cumulative counters
//! (attribute labels), tool statistics, event counts, the receiver's diagnostics and the OTLP
//! log export's counters.

use std::sync::Arc;

use crate::catalog as c;
use crate::claude_code::state::{OVERFLOW, Snapshot};
use crate::claude_code::task::ClaudeCode;
use crate::export::otlp_logs::{ExportDrop, ExportSnapshot, ExportStats};
use crate::export::prometheus::{Encoder, Value};
use crate::ingest::otlp::{
    Diagnostics, DiagnosticsSnapshot, ItemReject, RequestReason, Signal, Use,
};

/// Where the OTLP part of a scrape comes from.
#[derive(Clone)]
pub struct OtlpSource {
    /// The Claude Code task.
    pub claude_code: ClaudeCode,
    /// Receiver counters.
    pub diagnostics: Arc<Diagnostics>,
    /// Export counters, when the export is configured.
    pub export: Option<Arc<ExportStats>>,
}

impl OtlpSource {
    /// Reads everything (the Claude Code snapshot in queue order).
    pub async fn snapshot(&self) -> OtlpSnapshot {
        OtlpSnapshot {
            claude_code: self.claude_code.snapshot().await,
            diagnostics: self.diagnostics.snapshot(),
            export: self
                .export
                .as_ref()
                .map(|e| e.snapshot())
                .unwrap_or_default(),
        }
    }
}

/// Everything the OTLP families show.
#[derive(Debug, Clone, Default)]
pub struct OtlpSnapshot {
    /// Claude Code state.
    pub claude_code: Arc<Snapshot>,
    /// Receiver counters.
    pub diagnostics: DiagnosticsSnapshot,
    /// Export counters.
    pub export: ExportSnapshot,
}

fn at(v: &[u64], i: usize) -> u64 {
    v.get(i).copied().unwrap_or(0)
}

fn at2(v: &[Vec<u64>], i: usize, j: usize) -> u64 {
    v.get(i).map_or(0, |r| at(r, j))
}

pub(crate) fn write(e: &mut Encoder, s: &OtlpSnapshot) {
    let cc = &s.claude_code;
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
    for (tool, t) in &cc.tools {
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

    let d = &s.diagnostics;
    e.header(&c::OTLP_RECEIVED);
    for sig in Signal::ALL {
        e.sample(
            &c::OTLP_RECEIVED,
            &[sig.as_str()],
            Value::U(at(&d.received, sig as usize)),
        );
    }
    e.header(&c::OTLP_ACCEPTED);
    for sig in Signal::ALL {
        for u in Use::ALL {
            e.sample(
                &c::OTLP_ACCEPTED,
                &[sig.as_str(), u.as_str()],
                Value::U(at2(&d.accepted, sig as usize, u as usize)),
            );
        }
    }
    e.header(&c::OTLP_REJECTED);
    for sig in Signal::ALL {
        for r in ItemReject::ALL {
            e.sample(
                &c::OTLP_REJECTED,
                &[sig.as_str(), r.as_str()],
                Value::U(at2(&d.rejected, sig as usize, r as usize)),
            );
        }
    }
    e.header(&c::OTLP_REJECTED_REQUESTS);
    for sig in Signal::ALL {
        for r in RequestReason::ALL {
            e.sample(
                &c::OTLP_REJECTED_REQUESTS,
                &[sig.as_str(), r.as_str()],
                Value::U(at2(&d.rejected_requests, sig as usize, r as usize)),
            );
        }
    }

    let x = &s.export;
    e.header(&c::OTLP_EXPORTED);
    e.sample(&c::OTLP_EXPORTED, &[], Value::U(x.exported));
    e.header(&c::OTLP_EXPORT_DROPPED);
    for r in ExportDrop::ALL {
        e.sample(
            &c::OTLP_EXPORT_DROPPED,
            &[r.as_str()],
            Value::U(at(&x.dropped, r as usize)),
        );
    }
    e.header(&c::OTLP_EXPORT_RETRIES);
    e.sample(&c::OTLP_EXPORT_RETRIES, &[], Value::U(x.retries));
}
