//! A set of records with known values gives exact counters, tokens and cost for every seed
//! metric, and quantiles within 1 % of the exact sorted-sample quantiles.

use std::collections::BTreeMap;

use crate::harness::TestApp;

pub const PRICED_CONFIG: &str = "
pricing:
  models:
    claude-sonnet-4-5: { input: 3.0, output: 15.0, cache_write_5m: 3.75, cache_write_1h: 6.0, cache_read: 0.30 }
    claude-haiku-4-5:  { input: 1.0, output: 5.0, cache_write_5m: 1.25, cache_write_1h: 2.0, cache_read: 0.10 }
    gpt-4o-mini:       { input: 0.15, output: 0.60, cache_read: 0.075 }
    gemini-2.5-pro:    { input: 1.25, output: 10.0, cache_read: 0.125 }
";

/// Nano-USD per token: input, output, cache 5m, cache 1h, cache read (mirrors PRICED_CONFIG).
fn price(model: &str) -> Option<[u64; 5]> {
    Some(match model {
        "claude-sonnet-4-5" => [3000, 15000, 3750, 6000, 300],
        "claude-haiku-4-5" => [1000, 5000, 1250, 2000, 100],
        "gpt-4o-mini" => [150, 600, 150, 150, 75],
        "gemini-2.5-pro" => [1250, 10000, 1250, 1250, 125],
        _ => return None,
    })
}

const NAMESPACES: [&str; 3] = ["alpha", "beta", "gamma"];
const MODELS: [(&str, &str); 6] = [
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-haiku-4-5"),
    ("openai", "gpt-4o-mini"),
    ("bedrock", "claude-sonnet-4-5"),
    ("vertex", "gemini-2.5-pro"),
    ("local", "llama-3-70b"),
];
const STATUSES: [u16; 10] = [200, 200, 200, 201, 302, 400, 429, 500, 529, 0];

pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone)]
pub struct Gen {
    pub ns: &'static str,
    pub provider: &'static str,
    pub model: &'static str,
    pub status: u16,
    pub duration_ms: u64,
    pub ttfb_ms: Option<u64>,
    pub tokens: [u64; 5],
    pub reported_micros: Option<u64>,
}

impl Gen {
    pub fn json(&self, id: usize) -> String {
        let mut s = format!(
            r#"{{"request_id":"exact-{id}","namespace":"{}","provider":"{}","model":"{}","endpoint":"/v1/messages","status":{},"duration_ms":{},"input_tokens":{},"output_tokens":{},"cache_creation_5m_tokens":{},"cache_creation_1h_tokens":{},"cache_read_tokens":{}"#,
            self.ns,
            self.provider,
            self.model,
            self.status,
            self.duration_ms,
            self.tokens[0],
            self.tokens[1],
            self.tokens[2],
            self.tokens[3],
            self.tokens[4]
        );
        if let Some(t) = self.ttfb_ms {
            s.push_str(&format!(r#","ttfb_ms":{t},"is_streaming":true"#));
        }
        if let Some(m) = self.reported_micros {
            s.push_str(&format!(
                r#","cost_usd":"{}.{:06}""#,
                m / 1_000_000,
                m % 1_000_000
            ));
        }
        s.push('}');
        s
    }

    pub fn cost(&self) -> u64 {
        if let Some(m) = self.reported_micros {
            return m;
        }
        match price(self.model) {
            Some(p) => {
                let nano: u64 = p.iter().zip(self.tokens).map(|(p, t)| p * t).sum();
                (nano + 500) / 1000
            }
            None => 0,
        }
    }

    pub fn failed(&self) -> bool {
        !(200..400).contains(&self.status)
    }
}

pub fn generate(n: usize, seed: u64) -> Vec<Gen> {
    let mut r = Lcg(seed);
    (0..n)
        .map(|_| {
            let (provider, model) = MODELS[r.below(MODELS.len() as u64) as usize];
            // Log-uniform from 1 ms to ~10 minutes.
            let exp = (r.below(1_000_000) as f64 / 1_000_000.0) * (600_000f64).ln();
            let duration_ms = exp.exp().round().max(1.0) as u64;
            let streaming = r.below(2) == 0;
            Gen {
                ns: NAMESPACES[r.below(3) as usize],
                provider,
                model,
                status: STATUSES[r.below(STATUSES.len() as u64) as usize],
                duration_ms,
                ttfb_ms: streaming.then_some(duration_ms / 4),
                tokens: [
                    r.below(50_000),
                    r.below(4_000),
                    if r.below(3) == 0 { r.below(20_000) } else { 0 },
                    if r.below(5) == 0 { r.below(10_000) } else { 0 },
                    if r.below(2) == 0 { r.below(100_000) } else { 0 },
                ],
                reported_micros: (r.below(3) == 0).then(|| r.below(5_000_000)),
            }
        })
        .collect()
}

pub fn exact_quantile(sorted: &[u64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

fn close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1e-12),
        "{what}: got {got}, want {want}"
    );
}

#[tokio::test]
async fn known_records_give_exact_totals_and_quantiles() {
    let app = TestApp::with_config(PRICED_CONFIG).await;
    let records = generate(6000, 42);
    for (chunk_no, chunk) in records.chunks(500).enumerate() {
        let base = chunk_no * 500;
        if chunk_no % 2 == 0 {
            let body = format!(
                "[{}]",
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, g)| g.json(base + i))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let (status, ans) = app.post_json(&body).await;
            assert_eq!(status, 200, "{ans}");
            assert_eq!(ans["accepted"], 500);
        } else {
            let body = chunk
                .iter()
                .enumerate()
                .map(|(i, g)| g.json(base + i) + "\n")
                .collect::<String>();
            let resp = app
                .post_raw(body.into_bytes(), Some("application/x-ndjson"), None)
                .await;
            assert_eq!(resp.status(), 200);
        }
    }
    let m = app.metrics().await;

    let n = records.len() as f64;
    let failures = records.iter().filter(|g| g.failed()).count() as f64;
    let dur_sum: u64 = records.iter().map(|g| g.duration_ms).sum();
    assert_eq!(m.value("ai_gateway_requests_total", &[]), n);
    assert_eq!(m.value("ai_gateway_errors_total", &[]), failures);
    close(
        m.value("ai_gateway_response_time_seconds", &[]),
        dur_sum as f64 / n / 1000.0,
        1e-9,
        "avg response time",
    );

    // Per namespace.
    for ns in NAMESPACES {
        let rs: Vec<&crate::exact::Gen> = records.iter().filter(|g| g.ns == ns).collect();
        assert_eq!(
            m.value(
                "ai_gateway_namespace_requests_total",
                &[("namespace", ns), ("namespace_code", ns)]
            ),
            rs.len() as f64
        );
        let sum: u64 = rs.iter().map(|g| g.duration_ms).sum();
        close(
            m.value(
                "ai_gateway_namespace_response_time_seconds",
                &[("namespace", ns), ("namespace_code", ns)],
            ),
            sum as f64 / rs.len() as f64 / 1000.0,
            1e-9,
            ns,
        );
        let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
        for g in &rs {
            *by_status.entry(g.status).or_default() += 1;
        }
        for (code, count) in by_status {
            assert_eq!(
                m.value(
                    "ai_gateway_namespace_status_codes_total",
                    &[
                        ("namespace", ns),
                        ("namespace_code", ns),
                        ("status_code", &code.to_string())
                    ]
                ),
                count as f64
            );
        }
        assert_eq!(
            m.value(
                "ai_gateway_namespace_concurrent_requests",
                &[("namespace", ns), ("namespace_code", ns)]
            ),
            0.0
        );
        let cost: u64 = rs.iter().map(|g| g.cost()).sum();
        assert_eq!(
            (m.value("gatemeter_namespace_cost_usd_total", &[("namespace", ns)]) * 1e6).round()
                as u64,
            cost
        );
        // Quantiles over the namespace since start, and both windows (everything is recent).
        let mut d: Vec<u64> = rs.iter().map(|g| g.duration_ms).collect();
        d.sort_unstable();
        for window in ["1m", "5m", "all"] {
            for (q, qs) in [(0.5, "50"), (0.95, "95"), (0.99, "99")] {
                let got = m.value(
                    "gatemeter_namespace_request_duration_quantile_seconds",
                    &[("namespace", ns), ("window", window), ("percentile", qs)],
                );
                close(
                    got * 1000.0,
                    exact_quantile(&d, q),
                    0.01,
                    &format!("{ns} {window} p{qs}"),
                );
            }
        }
    }

    // Per model: requests, tokens, cost to the micro-dollar, errors, histograms.
    let mut total_cost = 0u64;
    let mut total_tokens = [0u64; 5];
    for (provider, model) in MODELS {
        let rs: Vec<&Gen> = records
            .iter()
            .filter(|g| g.provider == provider && g.model == model)
            .collect();
        let l = [("provider", provider), ("model", model)];
        assert_eq!(m.value("model_requests_total", &l), rs.len() as f64);
        assert_eq!(
            m.value("model_errors_total", &l),
            rs.iter().filter(|g| g.failed()).count() as f64
        );
        let input: u64 = rs.iter().map(|g| g.tokens[0]).sum();
        let output: u64 = rs.iter().map(|g| g.tokens[1]).sum();
        assert_eq!(m.value("model_tokens_input_total", &l), input as f64);
        assert_eq!(m.value("model_tokens_output_total", &l), output as f64);
        let cost: u64 = rs.iter().map(|g| g.cost()).sum();
        total_cost += cost;
        assert_eq!(
            (m.value("model_cost_usd_total", &l) * 1e6).round() as u64,
            cost,
            "{provider}/{model} cost"
        );
        for (i, t) in [
            "input",
            "output",
            "cache_write_5m",
            "cache_write_1h",
            "cache_read",
        ]
        .iter()
        .enumerate()
        {
            let s: u64 = rs.iter().map(|g| g.tokens[i]).sum();
            total_tokens[i] += s;
            assert_eq!(
                m.value(
                    "gatemeter_model_tokens_total",
                    &[("provider", provider), ("model", model), ("type", t)]
                ),
                s as f64
            );
        }
        let unpriced = if price(model).is_none() {
            rs.iter().filter(|g| g.reported_micros.is_none()).count()
        } else {
            0
        };
        assert_eq!(
            m.value("gatemeter_unpriced_requests_total", &l),
            unpriced as f64
        );

        // Histogram: count, sum exact; buckets within HDR precision of exact counts.
        assert_eq!(
            m.value("model_request_duration_seconds_count", &l),
            rs.len() as f64
        );
        let sum: u64 = rs.iter().map(|g| g.duration_ms).sum();
        close(
            m.value("model_request_duration_seconds_sum", &l),
            sum as f64 / 1000.0,
            1e-9,
            "histogram sum",
        );
        for le in gatemeter::catalog::DURATION_BUCKETS {
            let le_s = format!("{le}");
            let got = m.value(
                "model_request_duration_seconds_bucket",
                &[l[0], l[1], ("le", &le_s)],
            );
            let bound = le * 1000.0;
            let exact = rs
                .iter()
                .filter(|g| (g.duration_ms as f64) <= bound)
                .count() as f64;
            let near = rs
                .iter()
                .filter(|g| ((g.duration_ms as f64) - bound).abs() <= bound * 0.01)
                .count() as f64;
            assert!(
                (got - exact).abs() <= near,
                "{model} le={le}: got {got}, exact {exact}, near {near}"
            );
        }
        // GenAI token usage histogram: exact count and sum; input includes cache tokens.
        let op = [
            ("gen_ai_operation_name", "chat"),
            ("gen_ai_provider_name", provider),
            ("gen_ai_response_model", model),
        ];
        let input_all: u64 = rs
            .iter()
            .map(|g| g.tokens[0] + g.tokens[2] + g.tokens[3] + g.tokens[4])
            .sum();
        let with = |t: &'static str| [op[0], op[1], op[2], ("gen_ai_token_type", t)];
        assert_eq!(
            m.value("gen_ai_client_token_usage_count", &with("input")),
            rs.len() as f64
        );
        assert_eq!(
            m.value("gen_ai_client_token_usage_sum", &with("input")),
            input_all as f64
        );
        assert_eq!(
            m.value("gen_ai_client_token_usage_sum", &with("output")),
            output as f64
        );
        assert_eq!(
            m.value("gen_ai_client_operation_duration_seconds_count", &op),
            rs.len() as f64
        );
    }
    assert_eq!(
        (m.value("gatemeter_cost_usd_total", &[]) * 1e6).round() as u64,
        total_cost
    );
    for (i, t) in [
        "input",
        "output",
        "cache_write_5m",
        "cache_write_1h",
        "cache_read",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(
            m.value("gatemeter_tokens_total", &[("type", t)]),
            total_tokens[i] as f64,
            "{t}"
        );
    }

    // Global quantiles, duration and ttfb.
    let mut d: Vec<u64> = records.iter().map(|g| g.duration_ms).collect();
    d.sort_unstable();
    let mut t: Vec<u64> = records.iter().filter_map(|g| g.ttfb_ms).collect();
    t.sort_unstable();
    for window in ["1m", "5m", "all"] {
        for (q, qs) in [(0.5, "50"), (0.95, "95"), (0.99, "99")] {
            let got = m.value(
                "gatemeter_request_duration_quantile_seconds",
                &[("window", window), ("percentile", qs)],
            );
            close(
                got * 1000.0,
                exact_quantile(&d, q),
                0.01,
                &format!("global {window} p{qs}"),
            );
            let got = m.value(
                "gatemeter_time_to_first_byte_quantile_seconds",
                &[("window", window), ("percentile", qs)],
            );
            close(
                got * 1000.0,
                exact_quantile(&t, q),
                0.01,
                &format!("ttfb {window} p{qs}"),
            );
        }
    }
    assert_eq!(
        m.value(
            "gatemeter_ingest_accepted_records_total",
            &[("source", "native")]
        ),
        n
    );
    assert_eq!(m.value("gatemeter_processed_records_total", &[]), n);
    app.stop().await;
}

/// Gateways send `duration_ms: 207.5`: such records are accepted (fast path and serde alike)
/// and the histograms keep the fraction: quantiles of 1.5 ms and 0.25 ms values read 1.5 ms and
/// 0.25 ms (whole milliseconds would give 1 or 2, and 0), sums to the microsecond.
#[tokio::test]
async fn fractional_milliseconds_reach_quantiles_and_sums() {
    let app = TestApp::start().await;
    let rec = |i: usize, d: &str, t: &str, extra: &str| {
        format!(
            r#"{{"request_id":"f-{i}","namespace":"frac","provider":"p","model":"m","status":200,"duration_ms":{d},"ttfb_ms":{t}{extra}}}"#
        )
    };
    // Half through the scanner, half through serde (an escaped string sends a record there).
    let body: Vec<String> = (0..20)
        .map(|i| {
            rec(
                i,
                "1.5",
                "0.25",
                if i % 2 == 0 {
                    ""
                } else {
                    r#","user":"a\u0041""#
                },
            )
        })
        .chain((20..30).map(|i| rec(i, "207.5", "2.0E1", "")))
        .collect();
    let (status, ans) = app.post_json(&format!("[{}]", body.join(","))).await;
    assert_eq!(status, 200, "{ans}");
    assert_eq!(ans["accepted"], 30, "{ans}");
    let m = app.metrics().await;
    let l = [("provider", "p"), ("model", "m")];
    close(
        m.value("model_request_duration_seconds_sum", &l),
        (20.0 * 1.5 + 10.0 * 207.5) / 1000.0,
        1e-12,
        "duration sum",
    );
    close(
        m.value("gatemeter_time_to_first_byte_seconds_sum", &l),
        (20.0 * 0.25 + 10.0 * 20.0) / 1000.0,
        1e-12,
        "ttfb sum",
    );
    for window in ["1m", "all"] {
        let q = |name: &str, labels: &[(&str, &str)], p: &str| {
            let mut l = labels.to_vec();
            l.extend([("window", window), ("percentile", p)]);
            m.value(name, &l)
        };
        let ns = [("namespace", "frac")];
        close(
            q(
                "gatemeter_namespace_request_duration_quantile_seconds",
                &ns,
                "50",
            ) * 1e3,
            1.5,
            0.004,
            "p50",
        );
        close(
            q(
                "gatemeter_namespace_request_duration_quantile_seconds",
                &ns,
                "99",
            ) * 1e3,
            207.5,
            0.004,
            "p99",
        );
        close(
            q(
                "gatemeter_model_time_to_first_byte_quantile_seconds",
                &l,
                "50",
            ) * 1e3,
            0.25,
            0.004,
            "ttfb p50",
        );
    }
    // The seed's average keeps whole (rounded) milliseconds, like the request log: 2 and 208.
    close(
        m.value(
            "ai_gateway_namespace_response_time_seconds",
            &[("namespace", "frac"), ("namespace_code", "frac")],
        ),
        (20.0 * 2.0 + 10.0 * 208.0) / 30.0 / 1000.0,
        1e-9,
        "seed average",
    );
    for (bad, why) in [("-1.5", "negative"), ("86400000.5", "limit")] {
        let (status, ans) = app.post_json(&rec(99, bad, "0", "")).await;
        assert_eq!(status, 400, "{ans}");
        assert_eq!(ans["errors"][0]["field"], "duration_ms", "{ans}");
        let msg = ans["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(why), "{msg}");
    }
    app.stop().await;
}
