//! What promtool 2.42 does not check: families contiguous, series unique, buckets increasing,
//! `+Inf` equal to `_count`; plus OpenMetrics negotiation.

use std::collections::{BTreeMap, HashSet};

use crate::exact::{PRICED_CONFIG, generate};
use crate::harness::{Exposition, TestApp};

fn family_of(sample: &str, families: &[(String, String)]) -> Option<String> {
    families
        .iter()
        .map(|(f, _)| f)
        .filter(|f| {
            sample == f.as_str()
                || sample
                    .strip_prefix(f.as_str())
                    .is_some_and(|s| ["_total", "_bucket", "_sum", "_count"].contains(&s))
        })
        .max_by_key(|f| f.len())
        .cloned()
}

/// A series: sample name and labels.
type Series = (String, BTreeMap<String, String>);

/// Checks the structural rules; returns the number of samples checked.
pub fn check_structure(text: &str) -> usize {
    let e = Exposition::parse(text);
    // Families contiguous: once a family's block ends, it never reappears.
    let mut closed: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let fam = if let Some(rest) = line
            .strip_prefix("# TYPE ")
            .or_else(|| line.strip_prefix("# HELP "))
        {
            rest.split(' ').next().map(str::to_string)
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let name = line.split(['{', ' ']).next().expect("name");
            Some(
                family_of(name, &e.families)
                    .unwrap_or_else(|| panic!("sample {name} has no TYPE line")),
            )
        };
        if fam != current {
            if let Some(c) = current.take() {
                closed.insert(c);
            }
            let f = fam.expect("family");
            assert!(!closed.contains(&f), "family {f} is not contiguous");
            current = Some(f);
        }
    }
    // Series unique.
    let mut seen = HashSet::new();
    for s in &e.samples {
        assert!(
            seen.insert((s.name.clone(), s.labels.clone())),
            "duplicate series {} {:?}",
            s.name,
            s.labels
        );
    }
    // Histograms: le increasing, counts non-decreasing, +Inf == _count.
    let mut buckets: BTreeMap<Series, Vec<(f64, f64)>> = BTreeMap::new();
    for s in e.samples.iter().filter(|s| s.name.ends_with("_bucket")) {
        let mut labels = s.labels.clone();
        let le = labels.remove("le").expect("bucket has le");
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().expect("le is a number")
        };
        buckets
            .entry((s.name.trim_end_matches("_bucket").to_string(), labels))
            .or_default()
            .push((le, s.value));
    }
    for ((name, labels), b) in &buckets {
        for w in b.windows(2) {
            assert!(w[0].0 < w[1].0, "{name} {labels:?}: le not increasing");
            assert!(
                w[0].1 <= w[1].1,
                "{name} {labels:?}: bucket counts decrease"
            );
        }
        let last = b.last().expect("one bucket");
        assert!(
            last.0.is_infinite(),
            "{name} {labels:?}: last bucket is not +Inf"
        );
        let count = e
            .samples
            .iter()
            .find(|s| s.name == format!("{name}_count") && &s.labels == labels)
            .expect("_count");
        assert_eq!(last.1, count.value, "{name} {labels:?}: +Inf != _count");
        assert!(
            e.samples
                .iter()
                .any(|s| s.name == format!("{name}_sum") && &s.labels == labels),
            "{name}: no _sum"
        );
    }
    assert!(!buckets.is_empty());
    e.samples.len()
}

async fn populated() -> TestApp {
    let app = TestApp::with_config(PRICED_CONFIG).await;
    let recs = generate(2000, 7);
    let body = format!(
        "[{}]",
        recs.iter()
            .enumerate()
            .map(|(i, g)| g.json(i))
            .collect::<Vec<_>>()
            .join(",")
    );
    let (status, _) = app.post_json(&body).await;
    assert_eq!(status, 200);
    // A label value that needs escaping.
    let (status, _) = app
        .post_json(r#"{"namespace":"we\"ird\\ns","model":"m","status":200,"duration_ms":3}"#)
        .await;
    assert_eq!(status, 200);
    app
}

#[tokio::test]
async fn exposition_is_well_formed() {
    let app = populated().await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    assert!(check_structure(&text) > 1000);
    let e = Exposition::parse(&text);
    assert_eq!(
        e.value(
            "ai_gateway_namespace_requests_total",
            &[
                ("namespace", "we\"ird\\ns"),
                ("namespace_code", "we\"ird\\ns")
            ]
        ),
        1.0
    );
    // Every family of the catalogue is present, and nothing else.
    let names: HashSet<&str> = e.families.iter().map(|(n, _)| n.as_str()).collect();
    for m in gatemeter::catalog::ALL {
        let exposed = m
            .sample_names()
            .into_iter()
            .next()
            .expect("one sample name");
        let family = if m.kind == gatemeter::catalog::Kind::Counter {
            exposed
        } else {
            m.name.to_string()
        };
        assert!(names.contains(family.as_str()), "{family} missing");
    }
    assert_eq!(names.len(), gatemeter::catalog::ALL.len());
    app.stop().await;
}

#[tokio::test]
async fn openmetrics_when_asked() {
    let app = populated().await;
    let resp = app
        .client
        .get(app.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .expect("scrape");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/openmetrics-text")
    );
    let text = resp.text().await.expect("text");
    assert!(text.ends_with("# EOF\n"));
    assert!(text.contains("# TYPE ai_gateway_requests counter\n"));
    assert!(text.contains("\nai_gateway_requests_total 2001\n"));
    assert!(text.contains("# UNIT model_request_duration_seconds seconds\n"));
    check_structure(&text);
    app.stop().await;
}

/// `metrics_listen` (SPEC §10): `/metrics` on its own listener (with `/healthz`), and no longer
/// on the main one, which keeps ingest; the metrics listener serves no ingest route. Both stop
/// with the one shutdown.
#[tokio::test]
async fn metrics_listen_moves_metrics_to_their_own_listener() {
    use gatemeter::app::App;
    use gatemeter::client::Client;
    use gatemeter::config::Config;

    let config = Config::from_yaml_str(
        "metrics_listen: 127.0.0.1:9\nlog_store: {kind: none}\n",
        std::path::Path::new("t.yaml"),
        &|_| None,
    )
    .expect("valid");
    assert_eq!(
        config.metrics_listen,
        Some("127.0.0.1:9".parse().expect("addr"))
    );
    let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
    let (main, metrics) = (bind().await.expect("bind"), bind().await.expect("bind"));
    let app = App::build_with_metrics(&config, main, Some(metrics))
        .await
        .expect("builds");
    let (main, metrics) = (
        app.local_addr().expect("addr"),
        app.metrics_addr().expect("metrics addr"),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    let client = Client::new();
    let status = |url: String| {
        let client = client.clone();
        async move {
            client
                .get(url)
                .send()
                .await
                .expect("answer")
                .status()
                .as_u16()
        }
    };
    let ok = r#"{"model":"m","status":200,"duration_ms":1}"#;
    let resp = client
        .post(format!("http://{main}/v1/events"))
        .header("content-type", "application/json")
        .body(ok)
        .send()
        .await
        .expect("ingest");
    assert_eq!(resp.status(), 200);
    assert_eq!(status(format!("http://{main}/metrics")).await, 404);
    assert_eq!(status(format!("http://{metrics}/healthz")).await, 200);
    let resp = client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    let m = Exposition::parse(&resp.text().await.expect("text"));
    assert_eq!(m.value("ai_gateway_requests_total", &[]), 1.0);
    let resp = client
        .post(format!("http://{metrics}/v1/events"))
        .header("content-type", "application/json")
        .body(ok)
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 404, "no ingest on the metrics listener");
    let _ = stop.send(());
    server.await.expect("joined").expect("ran");
    assert!(
        tokio::net::TcpStream::connect(metrics).await.is_err(),
        "the metrics listener is closed too"
    );
}
