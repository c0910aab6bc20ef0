//! The shipped Prometheus config follows the fleet scraping rule: the fleet job drops exactly
//! the per-process families, the per-replica job keeps exactly them (`promtool check config`
//! runs in scripts/test.sh).

use gatemeter::catalog::{self, PROCESS};

use crate::harness::TestApp;

const PROMETHEUS_YML: &str = include_str!("../../prometheus/prometheus.yml");

#[test]
fn both_jobs_use_the_catalogue_process_regex() {
    let rx = format!("regex: '{}'", catalog::process_sample_regex());
    assert_eq!(
        PROMETHEUS_YML.matches(&rx).count(),
        2,
        "prometheus/prometheus.yml must use {rx} in both jobs"
    );
    assert!(PROMETHEUS_YML.contains("action: drop"));
    assert!(PROMETHEUS_YML.contains("action: keep"));
    assert!(PROMETHEUS_YML.contains("scrape_interval: 15s"));
}

#[tokio::test]
async fn every_exposed_sample_is_either_fleet_or_process() {
    let app = TestApp::start().await;
    let (status, _) = app
        .post_json(r#"{"model":"m","status":200,"duration_ms":5}"#)
        .await;
    assert_eq!(status, 200);
    let m = app.metrics().await;
    let rx = catalog::process_sample_regex();
    let process: Vec<&str> = rx
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split('|')
        .collect();
    let mut seen_process = 0;
    for s in &m.samples {
        let family = catalog::find_by_sample(&s.name)
            .unwrap_or_else(|| panic!("{} is not in the catalogue", s.name));
        let is_process = PROCESS.iter().any(|p| p.name == family.name);
        assert_eq!(
            process.contains(&s.name.as_str()),
            is_process,
            "{} is misclassified by the scrape config",
            s.name
        );
        seen_process += usize::from(is_process);
    }
    assert!(seen_process > 0 && seen_process < m.samples.len());
    app.stop().await;
}
