//! `gatemeter loadgen` against a real server: what it sends is what the server counts.

use std::time::Duration;

use gatemeter::loadgen::{CounterCheck, Format, LoadgenArgs, Rate, run};

use crate::harness::TestApp;

#[tokio::test]
async fn loadgen_counters_match_the_server() {
    let app = TestApp::start().await;
    for batch in [1, 25] {
        let args = LoadgenArgs {
            target: app.url(""),
            rate: Rate::PerSecond(2000),
            batch,
            duration: Duration::from_secs(1),
            connections: 4,
            format: Format::Json,
        };
        let report = run(&args).await.expect("loadgen run succeeds");
        assert!(matches!(report.counters, CounterCheck::Exact), "{report}");
        assert!(report.records_accepted > 500, "{report}");
        assert_eq!(report.errors, 0, "{report}");
    }
    app.stop().await;
}

#[tokio::test]
async fn otlp_loadgen_counters_match_the_server() {
    let app = TestApp::start().await;
    let args = LoadgenArgs {
        target: app.url(""),
        rate: Rate::PerSecond(2000),
        batch: 100,
        duration: Duration::from_secs(1),
        connections: 2,
        format: Format::Otlp,
    };
    let report = run(&args).await.expect("loadgen run succeeds");
    assert!(matches!(report.counters, CounterCheck::Exact), "{report}");
    assert!(report.records_accepted >= 1000, "{report}");
    assert_eq!(report.errors, 0, "{report}");
    app.stop().await;
}
