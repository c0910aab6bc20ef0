//! Stores behind small traits: the live store (aggregates: memory or Redis) and the
//! request log (SQL). Backend errors never escape this module: callers see [`StoreError`].

pub mod fanout;
pub mod live;
pub mod lock;
pub mod log;
pub mod memory;
pub mod redis;
pub mod sql;

pub use live::{FleetView, LiveStore, WindowView};
pub use log::{Discard, RequestLog};
pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use sql::SqlLog;

/// A store failure, backend-neutral.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached.
    #[error("{store} store unavailable: {message}")]
    Unavailable {
        /// Which store.
        store: &'static str,
        /// What failed.
        message: String,
    },
    /// The store is full and refused the data.
    #[error("{store} store queue is full")]
    Full {
        /// Which store.
        store: &'static str,
    },
}
