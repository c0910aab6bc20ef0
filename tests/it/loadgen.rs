//! `gatemeter loadgen` (the built binary) against a real server: what it sends is what the
//! server counts.

use std::process::Command;

use serde_json::Value;

use crate::harness::TestApp;

/// Runs `gatemeter loadgen --report json` for 1 s at 2,000 records/s; its report, parsed.
async fn loadgen(app: &TestApp, batch: usize, connections: usize, format: &str) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatemeter"));
    cmd.args(["loadgen", "--target", &app.url("")])
        .args(["--rate", "2000", "--duration", "1"])
        .args(["--batch", &batch.to_string()])
        .args(["--connections", &connections.to_string()])
        .args(["--format", format, "--report", "json"])
        .env("RUST_LOG", "warn");
    // Off the runtime: the server under test runs on it.
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("joined")
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen run succeeds: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("report is not JSON ({e}): {stdout}"))
}

#[tokio::test]
async fn loadgen_counters_match_the_server() {
    let app = TestApp::start().await;
    for batch in [1, 25] {
        let report = loadgen(&app, batch, 4, "json").await;
        assert_eq!(report["counters"], "exact", "{report}");
        assert!(report["records_accepted"].as_u64() > Some(500), "{report}");
        assert_eq!(report["errors"], 0, "{report}");
    }
    app.stop().await;
}

#[tokio::test]
async fn otlp_loadgen_counters_match_the_server() {
    let app = TestApp::start().await;
    let report = loadgen(&app, 100, 2, "otlp").await;
    assert_eq!(report["counters"], "exact", "{report}");
    assert!(
        report["records_accepted"].as_u64() >= Some(1000),
        "{report}"
    );
    assert_eq!(report["errors"], 0, "{report}");
    app.stop().await;
}
