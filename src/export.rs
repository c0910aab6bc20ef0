//! Outputs: renderings of the fleet view for other systems, and the usage CSV of the request log.

pub mod analytics;
pub mod otlp_logs;
pub mod prometheus;
pub mod usage_csv;
