//! TestApp: the real server on 127.0.0.1:0 with gatemeter's own HTTP client and exposition
//! parser ([`gatemeter::client`]).

use std::net::SocketAddr;
use std::path::Path;

use gatemeter::app::App;
use gatemeter::client::{Client, Response};
use gatemeter::config::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    /// Holds the SQLite request log of the test (removed on drop).
    _data: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestApp {
    pub async fn start() -> Self {
        Self::with_config("").await
    }

    pub async fn with_config(yaml: &str) -> Self {
        let mut config = Config::from_yaml_str(yaml, Path::new("test.yaml"), &|_| None)
            .expect("test config is valid");
        // The default SQLite request log goes to a temp dir of this test, never ./data.
        let mut data = None;
        if let Some(gatemeter::store::sql::SqlConfig {
            backend: gatemeter::store::sql::SqlBackend::Sqlite { path },
            ..
        }) = config.log_store.as_mut()
            && path.is_relative()
        {
            let dir = tempfile::tempdir().expect("tempdir");
            *path = dir.path().join("requests.db");
            data = Some(dir);
        }
        Self::with_parsed(config, data).await
    }

    pub async fn with_parsed(config: Config, data: Option<tempfile::TempDir>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let app = App::build(&config, listener).await.expect("app builds");
        let addr = app.local_addr().expect("addr");
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run(async move {
                let _ = rx.await;
            })
            .await
            .expect("server ran");
        });
        Self {
            addr,
            client: Client::new(),
            _data: data,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs a body to /v1/events.
    pub async fn post_raw(
        &self,
        body: Vec<u8>,
        content_type: Option<&str>,
        encoding: Option<&str>,
    ) -> Response {
        let mut req = self.client.post(self.url("/v1/events")).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(enc) = encoding {
            req = req.header("content-encoding", enc);
        }
        req.send().await.expect("request sent")
    }

    /// POSTs JSON; returns the status and the parsed answer.
    pub async fn post_json(&self, body: &str) -> (u16, serde_json::Value) {
        let resp = self
            .post_raw(body.as_bytes().to_vec(), Some("application/json"), None)
            .await;
        answer(resp).await
    }

    pub async fn metrics(&self) -> Exposition {
        let resp = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("scrape");
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        Exposition::parse(&resp.text().await.expect("body"))
    }

    /// Stops the server gracefully and waits for the drain.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
    }
}

pub async fn answer(resp: Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let json =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"));
    (status, json)
}

/// The shared exposition parser, with the tests' habit: an unreadable exposition fails the test.
#[derive(Debug)]
pub struct Exposition(gatemeter::client::exposition::Exposition);

impl Exposition {
    pub fn parse(text: &str) -> Self {
        Self(
            gatemeter::client::exposition::Exposition::parse(text)
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }
}

impl std::ops::Deref for Exposition {
    type Target = gatemeter::client::exposition::Exposition;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// The built `gatemeter` binary running as a child process, killed when the test ends, passed
/// or failed (a failed assertion would otherwise leave it running, holding the test harness's
/// output pipes).
pub struct ServerProcess {
    /// The child; take it to signal or wait for it.
    pub child: std::process::Child,
    /// The address it logged (`addr=…`) once listening.
    pub addr: String,
}

impl ServerProcess {
    /// Spawns `cmd` (a `gatemeter serve …` command) with its log piped, and waits for the
    /// address it logs when it listens.
    pub fn spawn(cmd: &mut std::process::Command) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn gatemeter");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("addr=") {
                    let addr: String = line[i + 5..]
                        .chars()
                        .take_while(|c| !c.is_whitespace())
                        .collect();
                    let _ = tx.send(addr);
                }
            }
        });
        let mut server = Self {
            child,
            addr: String::new(),
        };
        server.addr = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("server logs its address");
        server
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
