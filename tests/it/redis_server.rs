//! Redis for the tests: the shared throwaway server of the test script, or a private
//! redis-server process that a test can SIGKILL, SIGSTOP, SIGCONT and restart.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOW: &str = "run the tests through scripts/test.sh or scripts/with-services.sh \
    (e.g. `scripts/with-services.sh cargo test --test it redis`), which start a throwaway redis-server";

/// URL of the shared throwaway redis-server; fails the test when missing.
pub fn shared_url() -> String {
    std::env::var("GATEMETER_TEST_REDIS_URL")
        .unwrap_or_else(|_| panic!("GATEMETER_TEST_REDIS_URL is not set: {HOW}"))
}

/// A key prefix no other test (or run) uses.
pub fn unique_prefix(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("gmtest:{tag}:{}:{nanos}:", std::process::id())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A private redis-server with append-only persistence (`appendfsync always`), so a SIGKILL
/// loses nothing it acknowledged — what a fleet's source of truth must be configured with.
pub struct RedisProc {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisProc {
    /// A port and a data directory, no server yet.
    pub fn unstarted() -> Self {
        Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        }
    }

    pub fn start() -> Self {
        let mut r = Self::unstarted();
        r.launch();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Starts (or restarts) the server on the same port and data directory.
    pub fn launch(&mut self) {
        let server = std::env::var("GATEMETER_TEST_REDIS_SERVER")
            .unwrap_or_else(|_| panic!("GATEMETER_TEST_REDIS_SERVER is not set: {HOW}"));
        let dir: PathBuf = self.dir.path().to_path_buf();
        let child = Command::new(server)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut c) = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads an integer key of a Redis (0 when absent).
pub fn get_int(url: &str, key: &str) -> i64 {
    let mut c = redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .expect("connect");
    redis::cmd("GET")
        .arg(key)
        .query::<Option<i64>>(&mut c)
        .expect("GET")
        .unwrap_or(0)
}
