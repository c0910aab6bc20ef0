//! The request-log seam: every counted record is handed to a [`RequestLog`] after aggregation.
//!
//! A backend takes batches without blocking the pipeline (it queues them for its own writer
//! task) and refuses with [`StoreError::Full`] when its bounded queue is full; the pipeline
//! counts such drops, except for spooled records, which wait for room
//! ([`RequestLog::has_room`]). The SQL backends (SQLite default, PostgreSQL) implement this trait.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::record::ValidRecord;
use crate::store::StoreError;

/// Where counted records are written for later querying.
pub trait RequestLog: Send + Sync + 'static {
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;
    /// Queues a batch of counted records. Must not block on I/O.
    fn submit(&self, records: Vec<Box<ValidRecord>>) -> Result<(), StoreError>;
    /// Waits until everything queued so far is written (graceful shutdown). A backend whose
    /// store may be away bounds the wait and says by how much.
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    /// Resolves to true once every record submitted before the call is written (the spool's
    /// checkpoint); false if that cannot be told now (queue full, closing). Default: true (a
    /// sink that keeps nothing, or that the spool does not cover, like the OTLP log export).
    fn sync(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async { true })
    }

    /// Whether [`submit`](Self::submit) would take a batch of `records` records weighing
    /// `bytes` ([`ValidRecord::approx_bytes`], summed) now. The pipeline asks before it
    /// hands over spooled records (`durability: spool`): those wait for room instead of being
    /// dropped, since the spool forgets what the log has taken. Default: true (a sink that
    /// never refuses, or whose refusals the spool does not cover, like the OTLP log export).
    fn has_room(&self, _records: usize, _bytes: usize) -> bool {
        true
    }

    /// [`close`](Self::close), giving up after `limit`; what is then unwritten is counted as
    /// dropped by backends that can count it (the SQL log does). Default: `close` cut off.
    fn close_within(&self, limit: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let _ = tokio::time::timeout(limit, self.close()).await;
        })
    }
}

/// A request log that keeps nothing (aggregates only).
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl RequestLog for Discard {
    fn name(&self) -> &'static str {
        "discard"
    }

    fn submit(&self, _records: Vec<Box<ValidRecord>>) -> Result<(), StoreError> {
        Ok(())
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}
