//! The OTLP wire format as data, shared by the receiver (`crate::ingest::otlp`) and the Claude
//! Code mapping (`crate::claude_code::mapping`):
//!
//! - [`decode`]: protobuf and OTLP/JSON bodies into `opentelemetry-proto` types; AnyValue
//!   reading (numbers and booleans that arrive as strings).
//! - [`scan`]: a borrowed view of logs requests, and a protobuf fast path that fills it without
//!   allocating per attribute.
//!
//! - [`gatemeter`]: `gatemeter.request` records (another gatemeter's OTLP log export) back into
//!   request records, by the record's field table.
//!
//! It reads bodies and values; it answers no requests and counts nothing.

pub mod decode;
pub mod gatemeter;
pub mod scan;
