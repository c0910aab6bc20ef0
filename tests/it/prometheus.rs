//! A real Prometheus (the `prometheus` binary on PATH, as `scripts/test.sh` installs it) scrapes
//! a gatemeter and answers the seed system's PromQL as written.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatemeter::client::Client;

use crate::harness::TestApp;
use crate::redis_server::free_port;

/// A Prometheus on a free loopback port, scraping `target` every second; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: gatemeter\n    static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .expect("write config");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus on PATH (Debian package prometheus; scripts/test.sh installs it)");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The instant vector of `promql` as (labels, value) pairs; empty while Prometheus starts.
    /// `promql` may end in `&time=…` (an evaluation instant), passed as it is.
    async fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let (promql, at) = promql.split_once("&time=").unwrap_or((promql, ""));
        let mut q = String::new();
        for b in promql.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                q.push(b as char);
            } else {
                q.push_str(&format!("%{b:02X}"));
            }
        }
        let Ok(resp) = Client::new()
            .get(format!("{}/api/v1/query?query={q}&time={at}", self.url))
            .send()
            .await
        else {
            return Vec::new();
        };
        let body: serde_json::Value =
            serde_json::from_str(&resp.text().await.unwrap_or_default()).unwrap_or_default();
        body["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|s| {
                        let v = s["value"][1].as_str().and_then(|v| v.parse().ok());
                        (s["metric"].clone(), v.unwrap_or(f64::NAN))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Polls `promql` until `done` accepts its answer (30 s at most).
    async fn until(
        &self,
        promql: &str,
        done: impl Fn(&[(serde_json::Value, f64)]) -> bool,
    ) -> Vec<(serde_json::Value, f64)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.query(promql).await;
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "{promql}: last answer {got:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(app: &TestApp, ns: &str, n: usize, from: usize) {
    let body: Vec<String> = (from..from + n)
        .map(|i| {
            format!(
                r#"{{"request_id":"{ns}-{i}","namespace":"{ns}","model":"m","status":200,"duration_ms":5}}"#
            )
        })
        .collect();
    let (status, ans) = app.post_json(&format!("[{}]", body.join(","))).await;
    assert_eq!(
        (status, ans["accepted"].as_u64()),
        (200, Some(n as u64)),
        "{ans}"
    );
}

/// SPEC §6.1: `sum(rate(ai_gateway_namespace_requests_total[5m])) by (namespace_code)`, the
/// seed's query, gives one rate per namespace, in the ratio of the requests sent.
#[tokio::test]
async fn the_seed_promql_by_namespace_code_gives_per_namespace_rates() {
    let app = TestApp::start().await;
    post(&app, "team-a", 1, 0).await;
    post(&app, "team-b", 1, 0).await;
    let prom = Prometheus::start(&app.addr.to_string());
    // Scraped once with one request each, then more: 10 in team-a, 4 in team-b.
    prom.until("ai_gateway_namespace_requests_total", |r| r.len() == 2)
        .await;
    post(&app, "team-a", 10, 1).await;
    post(&app, "team-b", 4, 1).await;
    let seed = "sum(rate(ai_gateway_namespace_requests_total[5m])) by (namespace_code)";
    let got = prom
        .until(seed, |r| r.len() == 2 && r.iter().all(|(_, v)| *v > 0.0))
        .await;
    let rate = |ns: &str| {
        let want = serde_json::json!({ "namespace_code": ns });
        got.iter()
            .find(|(m, _)| *m == want)
            .unwrap_or_else(|| panic!("no {want} in {got:?}"))
            .1
    };
    assert!(rate("team-a") > rate("team-b"), "rates {got:?}");
    // Grouped by `namespace_code` or by `namespace`, at one instant: the same rates, and the
    // label adds no series (one per namespace).
    let at = "&time=".to_string() + &(gatemeter::clock::now_ms() as f64 / 1000.0).to_string();
    let by_code = prom.query(&(seed.to_string() + at.as_str())).await;
    let by_ns = prom
        .query(&(seed.replace("by (namespace_code)", "by (namespace)") + at.as_str()))
        .await;
    assert_eq!(by_code.len(), 2, "{by_code:?}");
    for (m, v) in &by_code {
        let ns = m["namespace_code"].clone();
        let same = by_ns.iter().find(|(n, _)| n["namespace"] == ns);
        assert_eq!(same.map(|s| s.1), Some(*v), "{by_code:?} {by_ns:?}");
    }
    let count = prom
        .query("count(ai_gateway_namespace_requests_total) by (namespace)")
        .await;
    assert!(
        count.len() == 2 && count.iter().all(|(_, n)| *n == 1.0),
        "{count:?}"
    );
    drop(prom);
    app.stop().await;
}
