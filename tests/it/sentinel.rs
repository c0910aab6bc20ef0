//! Redis Sentinel (issue 20) against real processes started here: a primary, a replica and
//! one Sentinel (quorum 1), plain and all-TLS. gatemeter finds the master through the Sentinel
//! (listed after a dead address, so "the first that answers" is exercised), keeps accepting
//! while the Sentinel fails over — the primary killed, or `SENTINEL FAILOVER` (the old primary
//! then keeps taking writes, lost at its demotion ~10 s later) — and the fleet totals on the new
//! primary are exact: every record counted once, none lost. The backup lock and the probe
//! leases reach the new primary too. A Sentinel that knows no such master gives an error that
//! says so.
//!
//! redis-server comes from scripts/with-services.sh
//! (`scripts/with-services.sh cargo test --test it -- sentinel`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatemeter::config::Config;
use gatemeter::store::lock::{Acquired, FleetLock};
use gatemeter::store::redis::lease::ProbeLeases;

use crate::exact::{PRICED_CONFIG, generate};
use crate::harness::TestApp;
use crate::pki::Pki;
use crate::redis_fleet::{check_fleet, post, store_up, wait_for_total, wait_store_up};
use crate::redis_server::free_port;

const MASTER: &str = "mymaster";
const TOTAL: &str = "metrics:global:total_requests";

fn redis_server() -> String {
    std::env::var("GATEMETER_TEST_REDIS_SERVER").unwrap_or_else(|_| {
        panic!(
            "GATEMETER_TEST_REDIS_SERVER is not set: run through scripts/with-services.sh \
             (e.g. `scripts/with-services.sh cargo test --test it -- sentinel`)"
        )
    })
}

/// One redis-server process of a test (a data node or a Sentinel), killed on drop.
struct Node {
    port: u16,
    child: Option<Child>,
}

impl Node {
    /// `redis-server` with `args`, serving on `port`.
    fn spawn(port: u16, args: &[String]) -> Self {
        let child = Command::new(redis_server())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        Self {
            port,
            child: Some(child),
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A primary, a replica and a Sentinel monitoring them as [`MASTER`]; with a [`Pki`], TLS-only
/// everywhere (clients, replication, the Sentinel's links).
struct Topology {
    dir: tempfile::TempDir,
    /// The test CA's PEM, when TLS.
    ca: Option<Vec<u8>>,
    data: Vec<Node>,
    sentinel: Node,
}

fn tls_args(pki: &Pki) -> Vec<String> {
    let path = |p: PathBuf| p.display().to_string();
    vec![
        "--tls-cert-file".into(),
        path(pki.cert()),
        "--tls-key-file".into(),
        path(pki.key()),
        "--tls-ca-cert-file".into(),
        path(pki.ca()),
        "--tls-auth-clients".into(),
        "no".into(),
        "--tls-replication".into(),
        "yes".into(),
    ]
}

/// `--port N` (plain) or `--port 0 --tls-port N`.
fn port_args(port: u16, tls: bool) -> Vec<String> {
    let p = port.to_string();
    if tls {
        vec!["--port".into(), "0".into(), "--tls-port".into(), p]
    } else {
        vec!["--port".into(), p]
    }
}

impl Topology {
    async fn start(pki: Option<&Pki>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = pki.map(tls_args).unwrap_or_default();
        let data_node = |name: &str, replica_of: Option<u16>| {
            let home = dir.path().join(name);
            std::fs::create_dir(&home).expect("mkdir");
            let port = free_port();
            let mut args = port_args(port, pki.is_some());
            args.extend(tls.iter().cloned());
            for a in ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"] {
                args.push(a.into());
            }
            // A replica's first sync at once, not after diskless sync's 5 s gathering delay.
            args.extend(["--repl-diskless-sync-delay".into(), "0".into()]);
            args.extend(["--dir".into(), home.display().to_string()]);
            args.extend([
                "--logfile".into(),
                home.join("redis.log").display().to_string(),
            ]);
            if let Some(p) = replica_of {
                args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
            }
            Node::spawn(port, &args)
        };
        let primary = data_node("primary", None);
        let replica = data_node("replica", Some(primary.port));
        let mut t = Self {
            ca: pki.map(|p| std::fs::read(p.ca()).expect("CA file")),
            data: vec![primary, replica],
            sentinel: Node {
                port: 0,
                child: None,
            },
            dir,
        };
        // The Sentinel reads the master's replicas at its first INFO (the next is 10 s later),
        // so it starts once the replica is online.
        let primary = t.data[0].port;
        let tr = &t;
        t.until("the replica online", || async move {
            tr.info(primary, "replication")
                .await
                .is_some_and(|i| i.contains(",state=online,"))
        })
        .await;
        t.sentinel = t.start_sentinel(pki, primary);
        let (tr, s) = (&t, t.sentinel.port);
        t.until("the Sentinel knows the replica", || async move {
            let mut cmd = redis::cmd("SENTINEL");
            cmd.arg("REPLICAS").arg(MASTER);
            tr.query::<Vec<HashMap<String, String>>>(s, &cmd)
                .await
                .is_ok_and(|rs| {
                    rs.iter()
                        .filter(|r| {
                            r.get("flags").map(String::as_str) == Some("slave")
                                && r.get("master-link-status").map(String::as_str) == Some("ok")
                        })
                        .count()
                        == 1
                })
        })
        .await;
        t
    }

    /// A Sentinel with its own config file (it rewrites it): quorum 1, a master down after
    /// 500 ms.
    fn start_sentinel(&self, pki: Option<&Pki>, primary: u16) -> Node {
        let home = self.dir.path().join("sentinel");
        std::fs::create_dir(&home).expect("mkdir");
        let mut conf = String::new();
        let port = free_port();
        let args = port_args(port, pki.is_some())
            .into_iter()
            .chain(pki.map(tls_args).unwrap_or_default())
            .collect::<Vec<_>>();
        for pair in args.chunks(2) {
            conf += &format!("{} {}\n", pair[0].trim_start_matches('-'), pair[1]);
        }
        conf += &format!(
            "bind 127.0.0.1\ndir {d}\nlogfile {d}/sentinel.log\n\
             sentinel monitor {MASTER} 127.0.0.1 {primary} 1\n\
             sentinel down-after-milliseconds {MASTER} 500\n\
             sentinel failover-timeout {MASTER} 5000\n",
            d = home.display()
        );
        let file = home.join("sentinel.conf");
        std::fs::write(&file, conf).expect("write");
        Node::spawn(port, &[file.display().to_string(), "--sentinel".into()])
    }

    /// TLS handshakes the Sentinel refused so far (it logs each; it does not count them).
    fn refused_handshakes(&self) -> usize {
        let log = self.dir.path().join("sentinel/sentinel.log");
        std::fs::read_to_string(log)
            .expect("Sentinel log")
            .matches("Error accepting a client connection")
            .count()
    }

    fn client(&self, port: u16) -> redis::Client {
        match &self.ca {
            None => redis::Client::open(format!("redis://127.0.0.1:{port}/")),
            Some(pem) => redis::Client::build_with_tls(
                format!("rediss://127.0.0.1:{port}/"),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
        }
        .expect("client")
    }

    /// One command on a fresh connection, within 2 s.
    async fn query<T: redis::FromRedisValue>(
        &self,
        port: u16,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let client = self.client(port);
        let run = async {
            let mut con = client.get_multiplexed_async_connection().await?;
            cmd.query_async(&mut con).await
        };
        tokio::time::timeout(Duration::from_secs(2), run)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 2 s").into())
            })
    }

    async fn info(&self, port: u16, section: &str) -> Option<String> {
        self.query(port, redis::cmd("INFO").arg(section)).await.ok()
    }

    /// The port the Sentinel names for [`MASTER`].
    async fn master(&self) -> Option<u16> {
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("GET-MASTER-ADDR-BY-NAME").arg(MASTER);
        let addr: Option<Vec<String>> = self.query(self.sentinel.port, &cmd).await.ok()?;
        addr?.get(1)?.parse().ok()
    }

    async fn role(&self, port: u16) -> Option<String> {
        let role: Vec<redis::Value> = self.query(port, &redis::cmd("ROLE")).await.ok()?;
        match role.first() {
            Some(redis::Value::BulkString(r)) => Some(String::from_utf8_lossy(r).into_owned()),
            _ => None,
        }
    }

    async fn get(&self, port: u16, key: &str) -> Option<String> {
        self.query(port, redis::cmd("GET").arg(key))
            .await
            .expect("GET")
    }

    async fn total(&self, port: u16) -> i64 {
        self.get(port, TOTAL)
            .await
            .map_or(0, |v| v.parse().expect("integer"))
    }

    /// Polls `f` every 50 ms until it is true, for 20 s at most.
    async fn until<F, Fut>(&self, what: &str, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f().await {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// gatemeter's config: the Sentinel after a dead address, fast flushes and timeouts.
    fn yaml(&self, ca: Option<&Path>) -> String {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        let dead = free_port();
        let ca = ca.map_or(String::new(), |p| format!("  ca_file: {}\n", p.display()));
        format!(
            "{PRICED_CONFIG}\nlog_store: {{kind: none}}\nlive_store: redis\n\
             pipeline:\n  flush_interval_ms: 100\n\
             redis:\n  url: {scheme}://127.0.0.1:1/\n{ca}  \
             sentinel:\n    master_name: {MASTER}\n    \
             nodes: ['{scheme}://127.0.0.1:{dead}', '{scheme}://127.0.0.1:{s}']\n  \
             flush_interval_ms: 100\n  refresh_interval_ms: 100\n  command_timeout_ms: 400\n  \
             connect_timeout_ms: 400\n  max_backoff_ms: 500\n",
            s = self.sentinel.port
        )
    }

    /// Waits until the new primary's seed keys and gatemeter's fleet view both count all of
    /// `records` (once: more would never equal), then checks every fleet total.
    async fn converged(&self, app: &TestApp, records: &[crate::exact::Gen], new: u16) {
        let n = records.len();
        self.until("every record in the new primary", || async move {
            self.total(new).await == n as i64
        })
        .await;
        let m = wait_for_total(app, n, Duration::from_secs(20)).await;
        check_fleet(&m, records);
        assert_eq!(self.role(new).await.as_deref(), Some("master"));
        wait_store_up(app, 1.0).await;
    }

    /// Posts records `[from, to)` in small batches until the Sentinel names a master other
    /// than `old` (every answer 200 and quick: ingest never waits on Redis); returns where it
    /// stopped.
    async fn post_until_failover(
        &self,
        app: &TestApp,
        records: &[crate::exact::Gen],
        (from, to): (usize, usize),
        old: u16,
    ) -> (usize, u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sent = from;
        loop {
            if let Some(new) = self.master().await.filter(|p| *p != old) {
                return (sent, new);
            }
            assert!(Instant::now() < deadline, "the Sentinel never failed over");
            let end = (sent + 50).min(to);
            post(app, records, sent, end, 50).await;
            sent = end;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Plain: the primary is killed; the Sentinel promotes a replica; the records sent before,
/// during and after are all in the new primary's totals, once. The backup lock and a probe
/// lease taken before the failover are taken again on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_after_the_primary_is_killed_loses_nothing() {
    let mut t = Topology::start(None).await;
    let yaml = t.yaml(None);
    let config = Config::from_yaml_str(&yaml, Path::new("t.yaml"), &|_| None).expect("config");
    let records = generate(3_000, 31);
    let app = TestApp::with_config(&yaml).await;
    let old = t.master().await.expect("a master");
    assert_eq!(old, t.data[0].port);

    post(&app, &records, 0, 1_000, 100).await;
    let tr = &t;
    t.until("the first 1,000 in the primary", || async move {
        tr.total(old).await == 1_000
    })
    .await;
    let key = "database:backup:lock";
    let lock = FleetLock::redis(&config.redis, key).expect("lock");
    let leases = ProbeLeases::new(config.redis.clone()).expect("leases");
    let Ok(Acquired::Held(guard)) = lock.try_acquire(1).await else {
        panic!("the lock is free")
    };
    drop(guard);
    assert!(leases.take("p", 1, 60_000).await.expect("lease"));
    // The release (in a task of its own) reached the replica: the new primary has no lock.
    let replica = t.data[1].port;
    t.until("the lock released on the replica", || async move {
        tr.get(replica, key).await.is_none()
    })
    .await;

    t.data[0].kill();
    let (sent, new) = t
        .post_until_failover(&app, &records, (1_000, 2_000), old)
        .await;
    post(&app, &records, sent, 3_000, 100).await;
    assert_eq!(new, t.data[1].port);
    t.converged(&app, &records, new).await;

    // The lock and the leases reconnect to the new primary (their first call may still fail
    // on the old connection).
    let deadline = Instant::now() + Duration::from_secs(10);
    let guard = loop {
        match lock.try_acquire(2).await {
            Ok(Acquired::Held(g)) => break g,
            Ok(Acquired::Busy { since_ms }) => panic!("busy since {since_ms}"),
            Err(e) => assert!(Instant::now() < deadline, "no lock after the failover: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let held = t.get(new, key).await.expect("the lock on the new primary");
    assert!(held.ends_with(":2"), "{held}");
    drop(guard);
    let ls = &leases;
    t.until("a probe lease on the new primary", || async move {
        ls.take("p", 2, 60_000).await.unwrap_or(false)
    })
    .await;
    assert!(t.get(new, "gatemeter:probe:p:lease:2").await.is_some());

    // The final batch and the retirement at shutdown count nothing twice.
    app.stop().await;
    assert_eq!(t.total(new).await, 3_000);
}

/// TLS everywhere (clients, replication, the Sentinel's links; the test CA as `redis.ca_file`):
/// `SENTINEL FAILOVER` while records arrive, totals exact on the new primary. A replica that
/// trusts another CA reaches no Sentinel: store down, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls_fails_over_exactly_and_refuses_a_wrong_ca() {
    let pki = Pki::new();
    let t = Topology::start(Some(&pki)).await;
    let records = generate(3_000, 32);
    let app = TestApp::with_config(&t.yaml(Some(&pki.ca()))).await;
    let old = t.master().await.expect("a master");
    post(&app, &records, 0, 1_000, 100).await;
    let tr = &t;
    t.until("the first 1,000 in the primary", || async move {
        tr.total(old).await == 1_000
    })
    .await;

    let mut failover = redis::cmd("SENTINEL");
    failover.arg("FAILOVER").arg(MASTER);
    let f = &failover;
    t.until("SENTINEL FAILOVER accepted", || async move {
        tr.query::<String>(tr.sentinel.port, f).await.is_ok()
    })
    .await;
    let (sent, new) = t
        .post_until_failover(&app, &records, (1_000, 2_000), old)
        .await;
    post(&app, &records, sent, 3_000, 100).await;
    t.converged(&app, &records, new).await;
    app.stop().await;
    assert_eq!(t.total(new).await, 3_000);

    // Another CA: every attempt fails at the Sentinel's handshake. The test waits for several
    // refused handshakes in the Sentinel's log, not for a fixed time.
    let before = t.refused_handshakes();
    let wrong = TestApp::with_config(&t.yaml(Some(&pki.wrong_ca()))).await;
    post(&wrong, &records, 0, 3, 3).await;
    t.until("several refused attempts at the Sentinel", || async move {
        tr.refused_handshakes() >= before + 5
    })
    .await;
    assert_eq!(store_up(&wrong).await, 0.0);
    assert_eq!(
        t.total(new).await,
        3_000,
        "nothing written through a wrong CA"
    );
    wrong.stop().await;
}

/// A Sentinel that knows no such master says so, naming itself and the master; a Sentinel
/// whose master is down leads to an error naming the master's address. The Sentinel's
/// password (in its URL) is used and never printed.
#[tokio::test]
async fn a_sentinel_without_the_master_gives_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, gone) = (free_port(), free_port());
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {d}\nlogfile {d}/sentinel.log\n\
             requirepass sentinel-secret\nsentinel monitor {MASTER} 127.0.0.1 {gone} 1\n",
            d = dir.path().display()
        ),
    )
    .expect("write");
    let _sentinel = Node::spawn(port, &[conf.display().to_string(), "--sentinel".into()]);
    let dead = free_port();
    // Polls (the Sentinel may not listen yet) until the error says `want`.
    let error = async |master: &str, want: String| {
        let yaml = format!(
            "live_store: redis\nredis:\n  connect_timeout_ms: 300\n  command_timeout_ms: 300\n  \
             sentinel:\n    master_name: {master}\n    \
             nodes: ['redis://127.0.0.1:{dead}', 'redis://:sentinel-secret@127.0.0.1:{port}']\n"
        );
        let config = Config::from_yaml_str(&yaml, Path::new("t.yaml"), &|_| None).expect("config");
        let lock = FleetLock::redis(&config.redis, "database:backup:lock").expect("lock");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let e = match lock.try_acquire(1).await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("a lock through a Sentinel without {master}"),
            };
            assert!(!e.contains("sentinel-secret"), "{e}");
            if e.contains(&want) {
                return e;
            }
            assert!(Instant::now() < deadline, "{e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let e = error(
        "nosuch",
        format!("Sentinel redis://***@127.0.0.1:{port}: knows no master named \"nosuch\""),
    )
    .await;
    assert!(
        e.contains(&format!(
            "no Sentinel named the master \"nosuch\": Sentinel redis://127.0.0.1:{dead}: "
        )),
        "the dead Sentinel was asked first: {e}"
    );
    error(
        MASTER,
        format!(
            "master \"{MASTER}\" at 127.0.0.1:{gone} (named by Sentinel \
             redis://***@127.0.0.1:{port}): "
        ),
    )
    .await;
}
