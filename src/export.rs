//! Outputs: renderings of the fleet view for other systems, the usage CSV of the request log,
//! and the probe log text.

pub mod analytics;
pub mod otlp_logs;
pub mod probe_log;
pub mod prometheus;
pub mod usage_csv;
