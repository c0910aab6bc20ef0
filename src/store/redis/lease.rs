//! Fleet-wide leases and the last probe result in Redis (SPEC §3.3): with several replicas
//! sharing Redis, each probe runs once per interval across the fleet. A replica runs a probe's
//! slot only if it took the slot's lease, `SET {prefix}gatemeter:probe:{name}:lease:{slot} NX PX`
//! (the key is per slot, so nothing is ever released: it expires); the runner then publishes
//! its result under `{prefix}gatemeter:probe:{name}:last`, which the other replicas read so
//! that every replica's `gatemeter_probe_up` shows the fleet's last result.
//!
//! Every call is bounded by the store's connect + command timeouts; Redis errors stay here.
//! The connection is the live store's kind of `Link`: after a failover, the next call reaches
//! the new master.

use super::RedisConfig;
use super::link::Link;
use crate::store::StoreError;
use crate::store::sql::probe::ProbeResult;

/// A handle on the fleet's probe leases. Cheap to clone.
#[derive(Clone)]
pub struct ProbeLeases {
    link: Link,
}

impl ProbeLeases {
    /// A lazily connecting handle (nothing is sent until the first call).
    pub fn new(cfg: RedisConfig) -> Result<Self, StoreError> {
        Ok(Self {
            link: Link::new(&cfg, "redis")?,
        })
    }

    fn key(&self, probe: &str, what: &str) -> String {
        let prefix = &self.link.config().key_prefix;
        format!("{prefix}gatemeter:probe:{probe}:{what}")
    }

    /// Takes the lease of `probe`'s `slot` for `ttl_ms`: true for exactly one caller per slot.
    pub async fn take(&self, probe: &str, slot: i64, ttl_ms: u64) -> Result<bool, StoreError> {
        let key = self.key(probe, &format!("lease:{slot}"));
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key)
            .arg(&self.link.config().instance_id)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms.max(1));
        let reply: Option<String> = self
            .link
            .run(|mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        Ok(reply.is_some())
    }

    /// Publishes `r` as the fleet's last result of its probe, kept for `ttl_ms`.
    pub async fn publish(&self, r: &ProbeResult, ttl_ms: u64) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(&r.probe, "last"))
            .arg(r.encode())
            .arg("PX")
            .arg(ttl_ms.max(1));
        self.link
            .run(|mut c| async move { cmd.query_async::<()>(&mut c).await })
            .await
    }

    /// The fleet's last result of `probe` (of `provider`), if one is published.
    pub async fn last(
        &self,
        probe: &str,
        provider: &str,
    ) -> Result<Option<ProbeResult>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(probe, "last"));
        let line: Option<String> = self
            .link
            .run(|mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        Ok(line.and_then(|l| ProbeResult::decode(probe, provider, &l)))
    }
}
