//! loadgen's counter check: scrapes `/metrics` before and after a run, waits for the server's
//! counters to settle, and compares their deltas with what the server accepted: requests, tokens
//! by type and cost (micro-USD, exactly) must match, and nothing may be counted as a duplicate.

use std::time::Duration;

use bytes::Bytes;
use gatemeter::catalog;
use gatemeter::client::exposition::Exposition;
use gatemeter::client::{ClientError, Target, connect, exchange};
use gatemeter::record::TOKEN_TYPES;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use tokio::time::Instant;

use super::{CounterCheck, LoadgenError};

/// Longest wait for the server's counters to settle after the run.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Counters unchanged for this long are taken as settled.
const SETTLED_AFTER: Duration = Duration::from_millis(2500);
/// A match must hold this long (past the server's flush interval, 1 s by default).
const CONFIRM_AFTER: Duration = Duration::from_millis(1500);

/// The counters loadgen reads from one scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Counters {
    requests: u64,
    tokens: [u64; 5],
    cost_micros: u64,
    duplicates: u64,
    /// Not compared: watched only to see the pipeline settle.
    processed: u64,
}

/// What the server should have added.
#[derive(Debug, Clone)]
pub(super) struct Expected {
    pub(super) requests: u64,
    pub(super) tokens: [u64; 5],
    pub(super) cost_micros: u64,
    pub(super) partial: u64,
    pub(super) unknown_records: u64,
}

fn sample_name(m: &catalog::Metric) -> String {
    m.sample_names()
        .into_iter()
        .next()
        .unwrap_or_else(|| m.name.to_string())
}

impl Counters {
    fn from_text(text: &str) -> Result<Self, String> {
        let samples = Exposition::parse(text).map_err(|e| e.to_string())?;
        let get = |m: &catalog::Metric, labels: &[(&str, &str)]| {
            samples
                .find(&sample_name(m), labels)
                .map(|s| s.text.as_str())
        };
        let int = |m: &catalog::Metric, labels: &[(&str, &str)]| -> Result<u64, String> {
            match get(m, labels) {
                None => Ok(0),
                Some(v) => {
                    parse_count(v).ok_or_else(|| format!("{} has value {v:?}", sample_name(m)))
                }
            }
        };
        let requests_name = sample_name(&catalog::REQUESTS);
        if !samples.samples.iter().any(|s| s.name == requests_name) {
            return Err(format!(
                "no {requests_name} sample: is this a gatemeter server?"
            ));
        }
        let mut tokens = [0u64; 5];
        for (slot, ty) in tokens.iter_mut().zip(TOKEN_TYPES) {
            *slot = int(&catalog::TOKENS, &[("type", ty)])?;
        }
        let cost_micros = match get(&catalog::COST, &[]) {
            None => 0,
            Some(v) => parse_micros(v)
                .ok_or_else(|| format!("{} has value {v:?}", sample_name(&catalog::COST)))?,
        };
        Ok(Self {
            requests: int(&catalog::REQUESTS, &[])?,
            tokens,
            cost_micros,
            duplicates: int(&catalog::DUPLICATES, &[])?,
            processed: int(&catalog::PROCESSED, &[])?,
        })
    }

    /// `self - before`, or `None` when a counter went down (the server restarted).
    fn delta(&self, before: &Counters) -> Option<Counters> {
        let mut tokens = [0u64; 5];
        for ((d, a), b) in tokens.iter_mut().zip(self.tokens).zip(before.tokens) {
            *d = a.checked_sub(b)?;
        }
        Some(Counters {
            requests: self.requests.checked_sub(before.requests)?,
            tokens,
            cost_micros: self.cost_micros.checked_sub(before.cost_micros)?,
            duplicates: self.duplicates.checked_sub(before.duplicates)?,
            processed: self.processed.checked_sub(before.processed)?,
        })
    }
}

/// Differences between the server's deltas and what it accepted (empty when exact).
fn compare(delta: &Counters, expected: &Expected) -> Vec<String> {
    let mut out = Vec::new();
    let requests_name = sample_name(&catalog::REQUESTS);
    if delta.requests != expected.requests {
        out.push(format!(
            "{requests_name}: +{} on the server, {} records accepted",
            delta.requests, expected.requests
        ));
    }
    if expected.partial > 0 {
        out.push(format!(
            "{} requests were accepted only in part (loadgen sends only valid records); token and cost totals cannot be checked",
            expected.partial
        ));
    } else {
        let tokens_name = sample_name(&catalog::TOKENS);
        for ((ty, got), want) in TOKEN_TYPES.iter().zip(delta.tokens).zip(expected.tokens) {
            if got != want {
                out.push(format!(
                    "{tokens_name}{{type=\"{ty}\"}}: +{got} on the server, {want} sent"
                ));
            }
        }
        if delta.cost_micros != expected.cost_micros {
            out.push(format!(
                "{}: +{} on the server, {} sent",
                sample_name(&catalog::COST),
                format_micros(delta.cost_micros),
                format_micros(expected.cost_micros)
            ));
        }
    }
    if delta.duplicates != 0 {
        out.push(format!(
            "{}: +{} (every request_id was unique)",
            sample_name(&catalog::DUPLICATES),
            delta.duplicates
        ));
    }
    out
}

fn format_micros(m: u64) -> String {
    format!("{}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// Waits until the server's counters match (and keep matching) or stop changing, then compares.
pub(super) async fn settle_and_check(
    target: &Target,
    before: &Counters,
    expected: &Expected,
) -> Result<CounterCheck, LoadgenError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = scrape(target).await?;
    let mut stable_since = Instant::now();
    let mut matched_since: Option<Instant> = None;
    loop {
        let Some(delta) = last.delta(before) else {
            return Ok(CounterCheck::Mismatch(vec![
                "a counter went down during the run: did the server restart?".into(),
            ]));
        };
        let diffs = compare(&delta, expected);
        let now = Instant::now();
        if diffs.is_empty() {
            // A match must hold past a flush, so that a late over-count is still seen.
            let since = *matched_since.get_or_insert(now);
            if now.duration_since(since) >= CONFIRM_AFTER || now >= deadline {
                return Ok(CounterCheck::Exact);
            }
        } else {
            matched_since = None;
            if now >= deadline || now.duration_since(stable_since) >= SETTLED_AFTER {
                if expected.unknown_records > 0 {
                    return Ok(CounterCheck::Inconclusive(format!(
                        "{} records got no answer and may or may not have been counted; {}",
                        expected.unknown_records,
                        diffs.join("; ")
                    )));
                }
                return Ok(CounterCheck::Mismatch(diffs));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let current = scrape(target).await?;
        if current != last {
            stable_since = Instant::now();
            last = current;
        }
    }
}

/// Reads the counters from `GET /metrics` on a fresh connection.
pub(super) async fn scrape(target: &Target) -> Result<Counters, LoadgenError> {
    let fail = |reason: String| LoadgenError::Metrics {
        target: target.base.clone(),
        reason,
    };
    let mut sender = connect(target.addr).await?;
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = Uri::from_static("/metrics");
    req.headers_mut().insert(header::HOST, target.host.clone());
    req.headers_mut()
        .insert(header::ACCEPT, HeaderValue::from_static("text/plain"));
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), exchange(&mut sender, req))
        .await
        .map_err(|_| fail("no answer within 10 s".into()))?
        .map_err(|source| ClientError::Http {
            addr: target.addr,
            source,
        })?;
    if status != StatusCode::OK {
        return Err(fail(format!("HTTP {status}")));
    }
    let text = std::str::from_utf8(&body).map_err(|e| fail(format!("not UTF-8: {e}")))?;
    Counters::from_text(text).map_err(fail)
}

/// A counter value as a whole number (`123`, or a float form of an integer like `1.5e+06`).
fn parse_count(v: &str) -> Option<u64> {
    if let Ok(n) = v.parse::<u64>() {
        return Some(n);
    }
    let f = v.parse::<f64>().ok()?;
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 1.8e19).then_some(f as u64)
}

/// A decimal USD amount as integer micro-USD, exactly when written with up to 6 decimals.
fn parse_micros(v: &str) -> Option<u64> {
    let plain = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if plain {
        let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
        if frac.len() <= 6 && !frac.contains('.') {
            let whole: u64 = if whole.is_empty() {
                0
            } else {
                whole.parse().ok()?
            };
            let frac_micros: u64 = if frac.is_empty() {
                0
            } else {
                frac.parse::<u64>().ok()? * 10u64.pow(6 - frac.len() as u32)
            };
            return whole.checked_mul(1_000_000)?.checked_add(frac_micros);
        }
    }
    let f = v.parse::<f64>().ok()?;
    (f.is_finite() && f >= 0.0).then(|| (f * 1_000_000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# HELP ai_gateway_requests_total Requests completed by the gateway fleet.
# TYPE ai_gateway_requests_total counter
ai_gateway_requests_total 1500
ai_gateway_namespace_requests_total{namespace="a \"quoted\" ns"} 7
gatemeter_tokens_total{type="input"} 100
gatemeter_tokens_total{type="output"} 200
gatemeter_tokens_total{type="cache_write_5m"} 3
gatemeter_tokens_total{type="cache_write_1h"} 0
gatemeter_tokens_total{type="cache_read"} 1.5e+06
gatemeter_cost_usd_total 12.3456
gatemeter_duplicate_records_total 2 1760000000000
gatemeter_processed_records_total 1502
model_cost_usd_total{provider="p",model="m"} 1
"#;

    #[test]
    fn metrics_text_is_parsed() {
        let c = Counters::from_text(SAMPLE).expect("parsed");
        assert_eq!(
            c,
            Counters {
                requests: 1500,
                tokens: [100, 200, 3, 0, 1_500_000],
                cost_micros: 12_345_600,
                duplicates: 2,
                processed: 1502
            }
        );
        assert!(Counters::from_text("up 1\n").is_err());
    }

    #[test]
    fn micros_are_exact() {
        assert_eq!(parse_micros("0.000001"), Some(1));
        assert_eq!(parse_micros("123"), Some(123_000_000));
        assert_eq!(parse_micros("98765.4321"), Some(98_765_432_100));
        assert_eq!(parse_micros("1e-6"), Some(1));
        assert_eq!(parse_micros("x"), None);
    }

    #[test]
    fn counter_comparison() {
        let before = Counters::default();
        let after = Counters {
            requests: 10,
            tokens: [1, 2, 3, 4, 5],
            cost_micros: 77,
            duplicates: 0,
            processed: 10,
        };
        let exp = Expected {
            requests: 10,
            tokens: [1, 2, 3, 4, 5],
            cost_micros: 77,
            partial: 0,
            unknown_records: 0,
        };
        let delta = after.delta(&before).expect("monotonic");
        assert!(compare(&delta, &exp).is_empty());
        let off = Expected {
            requests: 9,
            tokens: [1, 2, 3, 4, 6],
            cost_micros: 70,
            ..exp
        };
        let diffs = compare(&delta, &off);
        assert_eq!(diffs.len(), 3, "{diffs:?}");
        assert!(diffs[1].contains("cache_read"), "{diffs:?}");
        assert!(before.delta(&after).is_none());
    }
}
