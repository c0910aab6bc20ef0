//! The connection to the Redis master, one piece of code for the live store's tasks, the backup
//! lock and the probe leases: to the server at `redis.url`, or to the master Redis Sentinel names.
//!
//! - Fixed address: the server at `redis.url` (`rediss://`: `redis.ca_file` trusted instead of
//!   the system's roots).
//! - Sentinel: the Sentinels are asked in their configured order (`SENTINEL
//!   GET-MASTER-ADDR-BY-NAME`); the first that names an address wins. The master is reached at
//!   that address with `redis.url`'s scheme, credentials and database, and must answer `ROLE` as
//!   a master (during a failover a Sentinel may still name the old one for a moment).
//! - A [`Link`]'s clones share one multiplexed connection. Any failed call (connection error,
//!   timeout, an error reply such as `READONLY` or `MASTERDOWN`) drops it, so the next call
//!   connects again, asking the Sentinels again; the callers' back-off paces the attempts.
//!   With Sentinel, a call also re-asks them when [`RECHECK`] has passed since it last did, and
//!   moves when they name another master: a demoted master keeps serving writes (lost at its
//!   demotion) until Sentinel reconfigures it, ~10 s after a failover.
//! - Each new connection has a new [`Link::generation`], so a writer knows when to send its
//!   whole state again (the new master may lack its last writes).
//!
//! TLS is rustls with verification always on (the redis crate's `-insecure` feature is not
//! built); a CA file replaces the system's roots for every `rediss://` connection, Sentinels and
//! master alike. URLs are printed only through [`redact_url`]. Redis errors stay in `store/`.

use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use tracing::{debug, info, warn};

use super::settings::{RedisCa, RedisConfig, redact_url};
use crate::store::StoreError;

/// How often a connection through Sentinel is checked against the Sentinels' answer.
pub(crate) const RECHECK: Duration = Duration::from_secs(1);

/// A handle on the master's connection (see the module docs). Cheap to clone; connects at the
/// first call.
#[derive(Clone)]
pub(crate) struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RedisConfig,
    /// Whose errors these are (`StoreError::Unavailable::store`).
    store: &'static str,
    target: Target,
    // Held for a clone or a swap, never across an await.
    current: Mutex<Current>,
}

/// The shared connection, numbered so that a failed call drops only the connection it used.
#[derive(Default)]
struct Current {
    id: u64,
    con: Option<MultiplexedConnection>,
    /// Sentinel: the master's `host:port` last connected to, and when the Sentinels last
    /// confirmed it.
    master: Option<String>,
    checked: Option<Instant>,
    /// Sentinel: the last Sentinel that answered (its index) and its connection, asked first.
    sentinel: Option<(usize, MultiplexedConnection)>,
}

/// Where Sentinel says the master is.
struct Named {
    host: String,
    port: u16,
    /// The Sentinel that said so (its URL without the password).
    by: String,
}

impl Named {
    fn at(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

enum Target {
    Fixed(Client),
    Sentinel {
        master_name: String,
        /// Each Sentinel's client and its URL without the password.
        nodes: Vec<(Client, String)>,
        /// `redis.url`: the master's scheme, credentials and database.
        master: ConnectionInfo,
    },
}

/// A client for `info`; a `rediss://` one trusts `ca` instead of the system's roots.
fn client(info: ConnectionInfo, ca: Option<&RedisCa>) -> redis::RedisResult<Client> {
    match (info.addr(), ca) {
        (ConnectionAddr::TcpTls { .. }, Some(ca)) => Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.pem.to_vec()),
            },
        ),
        _ => Client::open(info),
    }
}

fn lock(m: &Mutex<Current>) -> MutexGuard<'_, Current> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Link {
    /// Checks the URLs; nothing is sent before the first call. `store` names the user in errors.
    pub(crate) fn new(cfg: &RedisConfig, store: &'static str) -> Result<Self, StoreError> {
        let bad = |url: &str, e: redis::RedisError| StoreError::Unavailable {
            store,
            message: format!("{}: {e}", redact_url(url)),
        };
        let open = |url: &str| -> Result<(ConnectionInfo, Client), StoreError> {
            let info = url.into_connection_info().map_err(|e| bad(url, e))?;
            let c = client(info.clone(), cfg.ca.as_ref()).map_err(|e| bad(url, e))?;
            Ok((info, c))
        };
        let (info, fixed) = open(&cfg.url)?;
        let target = match &cfg.sentinel {
            None => Target::Fixed(fixed),
            Some(s) => Target::Sentinel {
                master_name: s.master_name.clone(),
                nodes: s
                    .nodes
                    .iter()
                    .map(|n| Ok((open(n)?.1, redact_url(n))))
                    .collect::<Result<_, StoreError>>()?,
                master: info,
            },
        };
        Ok(Self {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                store,
                target,
                current: Mutex::default(),
            }),
        })
    }

    /// The settings it was made with.
    pub(crate) fn config(&self) -> &RedisConfig {
        &self.inner.cfg
    }

    /// The number of the connection the next call uses (or the last one, if none is open);
    /// it changes with every new connection.
    pub(crate) fn generation(&self) -> u64 {
        lock(&self.inner.current).id
    }

    fn unavailable(&self, message: impl Display) -> StoreError {
        StoreError::Unavailable {
            store: self.inner.store,
            message: message.to_string(),
        }
    }

    /// Runs `call` on the master's connection: connects first when none is open (each step
    /// within its own timeouts), then gives `call` the connect + command timeouts. Any failure
    /// drops the connection, so the next call connects (and asks the Sentinels) again.
    pub(crate) async fn run<T, E, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        E: Display,
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let (id, con) = self.connection().await?;
        let cfg = &self.inner.cfg;
        let limit = cfg.connect_timeout + cfg.command_timeout;
        let failure = match tokio::time::timeout(limit, call(con)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        let mut cur = lock(&self.inner.current);
        if cur.id == id {
            cur.con = None;
        }
        Err(self.unavailable(failure))
    }

    /// The open connection, or a new one. With Sentinel, a connection not confirmed for
    /// [`RECHECK`] is checked first: kept if the Sentinels name its master (or none answers),
    /// replaced if they name another.
    async fn connection(&self) -> Result<(u64, MultiplexedConnection), StoreError> {
        let (master_name, nodes, master) = match &self.inner.target {
            Target::Fixed(client) => {
                if let Some(open) = self.open_connection() {
                    return Ok(open);
                }
                let con = self.open(client).await.map_err(|e| self.unavailable(e))?;
                return Ok(self.keep(con, None));
            }
            Target::Sentinel {
                master_name,
                nodes,
                master,
            } => (master_name, nodes, master),
        };
        let (open, due) = {
            let cur = lock(&self.inner.current);
            let due = cur.checked.is_none_or(|t| t.elapsed() >= RECHECK);
            (cur.con.clone().map(|c| (cur.id, c)), due)
        };
        if let (Some(open), false) = (&open, due) {
            return Ok(open.clone());
        }
        let named = self.ask_sentinels(master_name, nodes).await;
        if let Some((id, con)) = open {
            let mut cur = lock(&self.inner.current);
            cur.checked = Some(Instant::now());
            match &named {
                Ok(n) if cur.master.as_deref() != Some(n.at().as_str()) => {
                    if cur.id == id {
                        cur.con = None;
                    }
                }
                Ok(_) => return Ok((id, con)),
                Err(e) => {
                    // A working master is not dropped because no Sentinel answers.
                    debug!(error = %e, "No Sentinel answered; keeping the master's connection.");
                    return Ok((id, con));
                }
            }
        }
        let named = named?;
        let con = self.connect_master(master_name, master, &named).await?;
        Ok(self.keep(con, Some(named)))
    }

    /// The open connection, if any.
    fn open_connection(&self) -> Option<(u64, MultiplexedConnection)> {
        let cur = lock(&self.inner.current);
        cur.con.clone().map(|c| (cur.id, c))
    }

    /// Shares a new connection (or the one another caller opened meanwhile).
    fn keep(
        &self,
        con: MultiplexedConnection,
        named: Option<Named>,
    ) -> (u64, MultiplexedConnection) {
        let mut cur = lock(&self.inner.current);
        if let Some(c) = &cur.con {
            return (cur.id, c.clone());
        }
        if let (Target::Sentinel { master_name, .. }, Some(n)) = (&self.inner.target, named) {
            let at = n.at();
            if cur.master.is_none() {
                info!(master_name = %master_name, master = %at, sentinel = %n.by,
                    "Redis master found through Sentinel.");
                cur.master = Some(at);
            } else if cur.master.as_deref() != Some(at.as_str()) {
                warn!(master_name = %master_name, master = %at, sentinel = %n.by,
                    "Redis master moved (failover); connected to the new one.");
                cur.master = Some(at);
            } else {
                debug!(master = %at, "Reconnected to the Redis master.");
            }
            cur.checked = Some(Instant::now());
        }
        cur.id += 1;
        cur.con = Some(con.clone());
        (cur.id, con)
    }

    /// Connects to the master Sentinel named, with `redis.url`'s scheme, credentials and
    /// database, and checks that it is one.
    async fn connect_master(
        &self,
        master_name: &str,
        master: &ConnectionInfo,
        named: &Named,
    ) -> Result<MultiplexedConnection, StoreError> {
        let failed = |e: String| {
            self.unavailable(format!(
                "master {master_name:?} at {} (named by Sentinel {}): {e}",
                named.at(),
                named.by
            ))
        };
        let (host, port) = (named.host.clone(), named.port);
        let addr = match master.addr() {
            ConnectionAddr::TcpTls { .. } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        let c = client(master.clone().set_addr(addr), self.inner.cfg.ca.as_ref())
            .map_err(|e| failed(e.to_string()))?;
        let mut con = self.open(&c).await.map_err(failed)?;
        let role: Vec<redis::Value> = self
            .query(&mut con, &redis::cmd("ROLE"))
            .await
            .map_err(failed)?;
        match role.first() {
            Some(redis::Value::BulkString(r)) if r.as_slice() == b"master" => Ok(con),
            Some(redis::Value::BulkString(r)) => {
                let r = String::from_utf8_lossy(r);
                Err(failed(format!("its ROLE is {r}, not master")))
            }
            _ => Err(failed(format!("unexpected ROLE reply {role:?}"))),
        }
    }

    /// The master's address from the first Sentinel, in order, that names one (the last one
    /// that answered is asked first, on its open connection); otherwise why each did not.
    async fn ask_sentinels(
        &self,
        name: &str,
        nodes: &[(Client, String)],
    ) -> Result<Named, StoreError> {
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("GET-MASTER-ADDR-BY-NAME").arg(name);
        let ask = async |con: &mut MultiplexedConnection| -> Result<(String, u16), String> {
            let reply: Option<Vec<String>> = self.query(con, &cmd).await?;
            match reply.as_deref() {
                None => Err(format!("knows no master named {name:?}")),
                Some([host, port]) => port
                    .parse()
                    .map(|p| (host.clone(), p))
                    .map_err(|_| format!("answered the port {port:?}")),
                Some(other) => Err(format!("answered {other:?}")),
            }
        };
        let cached = lock(&self.inner.current).sentinel.take();
        if let Some((i, mut con)) = cached
            && let Ok((host, port)) = ask(&mut con).await
        {
            lock(&self.inner.current).sentinel = Some((i, con));
            let by = nodes.get(i).map(|n| n.1.clone()).unwrap_or_default();
            return Ok(Named { host, port, by });
        }
        let mut why = Vec::with_capacity(nodes.len());
        for (i, (client, url)) in nodes.iter().enumerate() {
            let mut con = match self.open(client).await {
                Ok(c) => c,
                Err(e) => {
                    why.push(format!("Sentinel {url}: {e}"));
                    continue;
                }
            };
            match ask(&mut con).await {
                Ok((host, port)) => {
                    lock(&self.inner.current).sentinel = Some((i, con));
                    let by = url.clone();
                    return Ok(Named { host, port, by });
                }
                Err(e) => why.push(format!("Sentinel {url}: {e}")),
            }
        }
        Err(self.unavailable(format!(
            "no Sentinel named the master {name:?}: {}",
            why.join("; ")
        )))
    }

    /// A new connection within the connect timeout (+ the command timeout for its handshake).
    async fn open(&self, client: &Client) -> Result<MultiplexedConnection, String> {
        let cfg = &self.inner.cfg;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.command_timeout));
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(cfg.connect_timeout + cfg.command_timeout, connect).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("connection timed out".to_string()),
        }
    }

    /// One command within the command timeout.
    async fn query<T: redis::FromRedisValue>(
        &self,
        con: &mut MultiplexedConnection,
        cmd: &redis::Cmd,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.inner.cfg.command_timeout, cmd.query_async(con)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("timed out".to_string()),
        }
    }
}
