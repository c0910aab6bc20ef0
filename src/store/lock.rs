//! One database backup at a time (SPEC §6.4): across the fleet through a Redis lock when the live
//! store is Redis, within the process otherwise.
//!
//! The Redis lock is the seed's `database:backup:lock` (under the configured prefix): taken with
//! `SET key "<token>:<since_ms>" NX PX <ttl>` (a random 128-bit token per holder), renewed every
//! third of the TTL while the backup runs (`PEXPIRE` only while the value is still ours, in Lua),
//! released by compare-and-delete in Lua, so a holder whose lock expired never deletes another's.
//! The guard releases on drop (a finished, failed or abandoned backup alike), at once, in a task
//! of its own. A holder that dies without releasing blocks others for one TTL at most.
//! The connection is the live store's kind of `Link` (a fixed address or Sentinel's master).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::StoreError;
use crate::store::redis::RedisConfig;
use crate::store::redis::codec::Keys;
use crate::store::redis::link::Link;

/// How long a lock lives without renewal.
pub const LOCK_TTL: Duration = Duration::from_secs(300);

/// Longest wait for a Redis answer about the lock.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);

const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('DEL', KEYS[1]) else return 0 end";

/// A named lock, local or fleet-wide. Cheap to clone.
#[derive(Clone)]
pub struct FleetLock {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// In-process: since when it is held.
    Local(Arc<Mutex<Option<i64>>>),
    /// Redis.
    Redis {
        link: Link,
        key: Arc<str>,
        ttl: Duration,
    },
}

/// What asking for the lock gave.
pub enum Acquired {
    /// Ours until the guard is dropped.
    Held(LockGuard),
    /// Someone holds it, since this time (epoch ms; 0 when unknown).
    Busy {
        /// When the holder took it.
        since_ms: i64,
    },
}

impl FleetLock {
    /// A lock of this process only.
    pub fn local() -> Self {
        Self {
            kind: Kind::Local(Arc::new(Mutex::new(None))),
        }
    }

    /// The fleet-wide lock `name` (under the configured key prefix) in Redis. Connects lazily.
    pub fn redis(cfg: &RedisConfig, name: &str) -> Result<Self, StoreError> {
        Ok(Self {
            kind: Kind::Redis {
                link: Link::new(cfg, STORE)?,
                key: Keys::new(&cfg.key_prefix).key(name).into(),
                ttl: LOCK_TTL,
            },
        })
    }

    /// The same lock with another time to live (renewed every third of it); for tests.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        if let Kind::Redis { ttl: t, .. } = &mut self.kind {
            *t = ttl;
        }
        self
    }

    /// The key the lock lives under (`None`: a local lock).
    pub fn key(&self) -> Option<&str> {
        match &self.kind {
            Kind::Local(_) => None,
            Kind::Redis { key, .. } => Some(key),
        }
    }

    /// Takes the lock if it is free; `now_ms` is recorded as the time it was taken.
    pub async fn try_acquire(&self, now_ms: i64) -> Result<Acquired, StoreError> {
        match &self.kind {
            Kind::Local(held) => {
                // A short critical section, never across an await.
                let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(since_ms) = *h {
                    return Ok(Acquired::Busy { since_ms });
                }
                *h = Some(now_ms);
                Ok(Acquired::Held(LockGuard {
                    release: Release::Local(held.clone()),
                }))
            }
            Kind::Redis { link, key, ttl } => {
                let token = format!("{:032x}:{now_ms}", rand::random::<u128>());
                let mut set = redis::cmd("SET");
                set.arg(&**key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64);
                let set: Option<String> =
                    timed(link.run(|mut c| async move { set.query_async(&mut c).await })).await?;
                if set.is_none() {
                    let mut get = redis::cmd("GET");
                    get.arg(&**key);
                    let held: Option<String> =
                        timed(link.run(|mut c| async move { get.query_async(&mut c).await }))
                            .await?;
                    let since_ms = held
                        .as_deref()
                        .and_then(|v| v.rsplit_once(':'))
                        .and_then(|(_, t)| t.parse().ok())
                        .unwrap_or(0);
                    return Ok(Acquired::Busy { since_ms });
                }
                let renew = tokio::spawn(renew(link.clone(), key.clone(), token.clone(), *ttl));
                Ok(Acquired::Held(LockGuard {
                    release: Release::Redis {
                        link: link.clone(),
                        key: key.clone(),
                        token,
                        renew,
                    },
                }))
            }
        }
    }
}

/// Whose errors these are.
const STORE: &str = "backup lock (redis)";

/// Runs one Redis call within [`REDIS_TIMEOUT`] (connecting included).
async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(REDIS_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable {
            store: STORE,
            message: "no answer in time".to_string(),
        }),
    }
}

/// Renews the lock every third of its TTL while it is ours.
async fn renew(link: Link, key: Arc<str>, token: String, ttl: Duration) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let script = redis::Script::new(RENEW);
        let mut inv = script.key(&*key);
        inv.arg(&token).arg(ttl.as_millis() as u64);
        let renewed: Result<i64, _> =
            timed(link.run(|mut c| async move { inv.invoke_async(&mut c).await })).await;
        match renewed {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!(key = %key, "Backup lock lost before the backup ended (expired).");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "Backup lock renewal failed; retrying."),
        }
    }
}

enum Release {
    Local(Arc<Mutex<Option<i64>>>),
    Redis {
        link: Link,
        key: Arc<str>,
        token: String,
        renew: tokio::task::JoinHandle<()>,
    },
}

/// The lock, held until dropped.
pub struct LockGuard {
    release: Release,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        match &self.release {
            Release::Local(held) => {
                *held.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Release::Redis {
                link,
                key,
                token,
                renew,
            } => {
                renew.abort();
                let (link, key, token) = (link.clone(), key.clone(), token.clone());
                let release = async move {
                    let script = redis::Script::new(RELEASE);
                    let mut inv = script.key(&*key);
                    inv.arg(&token);
                    let done: Result<i64, _> =
                        timed(link.run(|mut c| async move { inv.invoke_async(&mut c).await }))
                            .await;
                    if let Err(e) = done {
                        tracing::warn!(error = %e, key = %key,
                            "Could not release the backup lock; it expires by itself.");
                    }
                };
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(release);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_lock_is_held_once_and_freed_on_drop() {
        let lock = FleetLock::local();
        let Ok(Acquired::Held(guard)) = lock.try_acquire(1_000).await else {
            panic!("free at first");
        };
        assert!(matches!(
            lock.try_acquire(2_000).await,
            Ok(Acquired::Busy { since_ms: 1_000 })
        ));
        drop(guard);
        assert!(matches!(
            lock.try_acquire(3_000).await,
            Ok(Acquired::Held(_))
        ));
    }
}
