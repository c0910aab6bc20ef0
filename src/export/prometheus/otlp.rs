//! The OTLP families of `/metrics`: the receiver's diagnostics (`gatemeter_otlp_received`,
//! `_accepted`, `_unused`, `_rejected`, `_rejected_requests`) and the OTLP log export's counters; and
//! [`OtlpSource`], where a scrape reads them and the Claude Code snapshot (rendered by
//! `crate::claude_code::render`).

use std::sync::Arc;

use crate::catalog as c;
use crate::claude_code::state::Snapshot;
use crate::claude_code::task::ClaudeCode;
use crate::export::otlp_logs::{ExportDrop, ExportSnapshot, ExportStats};
use crate::exposition::{Encoder, Value, at, at2};
use crate::health::RequestReject;
use crate::health::otlp::{Diagnostics, DiagnosticsSnapshot, ItemReject, Signal, Use};

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

/// The OTLP receiver's counters, by signal.
pub(super) fn write_receiver(e: &mut Encoder, d: &DiagnosticsSnapshot) {
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
    e.header(&c::OTLP_UNUSED);
    for (sig, source, n) in &d.unused_by {
        e.sample(&c::OTLP_UNUSED, &[sig.as_str(), source], Value::U(*n));
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
        for r in RequestReject::ALL {
            e.sample(
                &c::OTLP_REJECTED_REQUESTS,
                &[sig.as_str(), r.as_str()],
                Value::U(at2(&d.rejected_requests, sig as usize, r as usize)),
            );
        }
    }
}

/// The OTLP log export's counters (zero when the export is not configured).
pub(super) fn write_export(e: &mut Encoder, x: &ExportSnapshot) {
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
