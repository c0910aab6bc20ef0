//! Outputs: renderings of the fleet view for other systems.

pub mod otlp_logs;
pub mod prometheus;
