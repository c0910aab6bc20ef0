//! The wall clock, read in one place: milliseconds since the Unix epoch.
//!
//! Every layer that needs "now" calls [`now_ms`] here (the pipeline's flush timer, the stores'
//! retention and fleet refresh, the HTTP handlers); `aggregate/` never does — time is passed in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
