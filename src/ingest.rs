//! Sources: HTTP endpoints that turn incoming bodies into [`crate::record::Event`]s and hand
//! them to the pipeline. They never touch aggregates or stores directly.

pub mod body;
pub mod native;
pub mod otlp;
