//! The Redis live store's settings, as the config layer hands them over (validated in
//! `config/redis.rs`), and URL redaction.
//!
//! The URLs may hold passwords: [`RedisConfig`]'s `Debug` never prints them, and nothing here
//! logs them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The certificates trusted for a `rediss://` server instead of the system's roots: the PEM
/// text of `redis.ca_file`, read once when the config is validated.
#[derive(Clone)]
pub struct RedisCa {
    /// The file (for messages and `check-config`).
    pub path: PathBuf,
    /// Its PEM text.
    pub pem: Arc<[u8]>,
}

/// Redis Sentinel: the master is the one the Sentinels name, reached with `RedisConfig::url`'s
/// scheme, credentials and database (its host and port are not used).
#[derive(Clone)]
pub struct RedisSentinel {
    /// The master's name as the Sentinels monitor it (`sentinel monitor <name> …`).
    pub master_name: String,
    /// The Sentinels' URLs (`redis://[[user]:password@]host:port`, `rediss://` for TLS), asked
    /// in this order. Secret: never printed.
    pub nodes: Vec<String>,
}

/// Validated Redis live-store settings.
#[derive(Clone)]
pub struct RedisConfig {
    /// Connection URL (`redis://[:password@]host:port/db`, `rediss://` for TLS). Secret: never
    /// printed.
    pub url: String,
    /// For `rediss://` (the server, or Sentinels): the CA to trust instead of the system's roots.
    pub ca: Option<RedisCa>,
    /// Redis Sentinel, when the master is found through it rather than at `url`'s address.
    pub sentinel: Option<RedisSentinel>,
    /// Prepended to every key (default empty: the seed system's names exactly).
    pub key_prefix: String,
    /// This process's id in heartbeat keys (default `hostname-pid`).
    pub instance_id: String,
    /// How often pending deltas are sent to Redis.
    pub flush_interval: Duration,
    /// How often the fleet view is read back from Redis.
    pub refresh_interval: Duration,
    /// Longest wait for one Redis reply; beyond it the call counts as failed (outcome unknown).
    pub command_timeout: Duration,
    /// Longest wait for one connection attempt.
    pub connect_timeout: Duration,
    /// Longest pause between reconnection attempts (back-off doubles up to it).
    pub max_backoff: Duration,
    /// Time to live of the instance heartbeat keys.
    pub heartbeat_ttl: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("ca_file", &self.ca.as_ref().map(|c| &c.path))
            .field("sentinel", &self.sentinel)
            .field("key_prefix", &self.key_prefix)
            .field("instance_id", &self.instance_id)
            .field("flush_interval", &self.flush_interval)
            .field("refresh_interval", &self.refresh_interval)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_backoff", &self.max_backoff)
            .field("heartbeat_ttl", &self.heartbeat_ttl)
            .finish()
    }
}

impl std::fmt::Debug for RedisSentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(|n| redact_url(n)).collect();
        f.debug_struct("RedisSentinel")
            .field("master_name", &self.master_name)
            .field("nodes", &nodes)
            .finish()
    }
}

/// The URL without its credentials (for logs and `Debug`).
pub use crate::record::scrub::redact_url;
