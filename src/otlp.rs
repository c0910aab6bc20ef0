//! The OTLP wire format as data, shared by the receiver (`crate::ingest::otlp`) and the Claude
//! Code mapping (`crate::claude_code::mapping`):
//!
//! - [`decode`]: protobuf and OTLP/JSON bodies into `opentelemetry-proto` types; AnyValue
//!   reading (numbers and booleans that arrive as strings).
//! - [`scan`]: borrowed views of logs and traces requests, and protobuf fast paths that fill
//!   them without allocating per attribute.
//!
//! - [`gatemeter`]: `gatemeter.request` records (another gatemeter's OTLP log export) back into
//!   request records, by the record's field table.
//!
//! It reads bodies and values; it answers no requests and counts nothing.

pub mod decode;
pub mod gatemeter;
pub mod scan;

/// How far past the receive time a metric point may be dated (clock skew), in milliseconds. A
/// point further ahead is refused: kept as its stream's last point, it would make every later
/// point look like a repeat.
pub const MAX_POINT_FUTURE_MS: i64 = 5 * 60 * 1000;
