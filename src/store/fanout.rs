//! A request log that hands every batch to several request logs (e.g. the SQL log and the OTLP
//! log export), so each sink stays independent behind the one `RequestLog` seam.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::record::ValidRecord;
use crate::store::{RequestLog, StoreError};

/// Forwards to every sink in order; the last one gets the batch without a copy.
pub struct FanOut {
    sinks: Vec<Arc<dyn RequestLog>>,
}

impl FanOut {
    /// A fan-out over `sinks` (at least one).
    pub fn new(sinks: Vec<Arc<dyn RequestLog>>) -> Self {
        Self { sinks }
    }
}

impl RequestLog for FanOut {
    fn name(&self) -> &'static str {
        "fanout"
    }

    /// Every sink gets the batch; the first refusal is returned (the pipeline counts it), the
    /// other sinks are not affected by it.
    fn submit(&self, records: Vec<Box<ValidRecord>>) -> Result<(), StoreError> {
        let mut result = Ok(());
        let Some((last, rest)) = self.sinks.split_last() else {
            return Ok(());
        };
        for sink in rest {
            if let Err(e) = sink.submit(records.clone())
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        if let Err(e) = last.submit(records)
            && result.is_ok()
        {
            result = Err(e);
        }
        result
    }

    /// True when every sink has room.
    fn has_room(&self, records: usize, bytes: usize) -> bool {
        self.sinks.iter().all(|s| s.has_room(records, bytes))
    }

    /// True when every sink confirms.
    fn sync(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            let mut all = true;
            for sink in &self.sinks {
                all &= sink.sync().await;
            }
            all
        })
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            for sink in &self.sinks {
                sink.close().await;
            }
        })
    }

    /// Every sink in turn, each with what is left of `limit`.
    fn close_within(&self, limit: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + limit;
            for sink in &self.sinks {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                sink.close_within(left).await;
            }
        })
    }
}
