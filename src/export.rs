//! Outputs: renderings of the fleet view for other systems, and the exports of the request log
//! (usage CSV, session request JSON, database backup) and of the probes (probe log text).

pub mod analytics;
pub mod backup;
pub mod otlp_logs;
pub mod probe_log;
pub mod prometheus;
pub mod session_json;
pub mod usage_csv;
