//! `/metrics`: renders a [`FleetView`] and this process's [`HealthSnapshot`] as Prometheus text
//! (0.0.4) or, when the scraper asks for it, OpenMetrics 1.0.
//!
//! Every family comes from `catalog`; each is written once, as one contiguous block; samples are
//! sorted by label values so output is deterministic. Classic histogram buckets are derived from
//! the HDR histograms (durations) or exact bucket counters (GenAI token usage); `+Inf` always
//! equals `_count`. Money is printed from integer micro-USD as an exact decimal.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::aggregate::{Latency, ScopeAgg, ScopeKey};
use crate::catalog::{self as c, Metric};
use crate::export::analytics::{AnalyticsGauges, AnalyticsSnapshot};
use crate::exposition::{Encoder, Value};
use crate::health::{DropReason, HealthSnapshot, RequestReject, Source};
use crate::pipeline::Pipeline;
use crate::record::{RejectReason, TOKEN_TYPES};
use crate::store::FleetView;

/// Content type of the Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A per-model counter family and how to read its value.
type ModelColumn = (&'static Metric, fn(&ScopeAgg) -> Value);

fn seconds_from_us(us: u64) -> Value {
    Value::F(us as f64 / 1e6)
}

fn avg_seconds(s: &ScopeAgg) -> Value {
    if s.requests == 0 {
        Value::F(0.0)
    } else {
        Value::F(s.duration_ms_sum as f64 / s.requests as f64 / 1000.0)
    }
}

/// Bucket bounds in seconds as the histograms' unit, µs.
fn us_bounds(bounds_s: &[f64]) -> Vec<f64> {
    bounds_s.iter().map(|b| (b * 1e6).round()).collect()
}

/// Scopes of one kind, sorted by label values.
fn scopes<'a>(
    view: &'a FleetView,
    pick: impl Fn(&'a ScopeKey) -> Option<Vec<&'a str>>,
) -> Vec<(Vec<&'a str>, &'a ScopeKey, &'a ScopeAgg)> {
    let mut v: Vec<_> = view
        .totals
        .scopes
        .iter()
        .filter_map(|(k, s)| pick(k).map(|l| (l, k, s)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn ns_key(k: &ScopeKey) -> Option<Vec<&str>> {
    if let ScopeKey::Namespace(n) = k {
        Some(vec![n.as_str()])
    } else {
        None
    }
}
fn provider_key(k: &ScopeKey) -> Option<Vec<&str>> {
    if let ScopeKey::Provider(p) = k {
        Some(vec![p.as_str()])
    } else {
        None
    }
}
fn model_key(k: &ScopeKey) -> Option<Vec<&str>> {
    if let ScopeKey::Model(p, m) = k {
        Some(vec![p.as_str(), m.as_str()])
    } else {
        None
    }
}

mod otlp;
pub use otlp::{OtlpSnapshot, OtlpSource};

/// Renders the whole exposition (with no OTLP state).
pub fn render(
    view: &FleetView,
    health: &HealthSnapshot,
    store: (&str, bool),
    openmetrics: bool,
) -> String {
    render_all(
        view,
        health,
        store,
        &OtlpSnapshot::default(),
        &AnalyticsSnapshot::default(),
        &[],
        openmetrics,
    )
}

/// Renders the whole exposition, including the Claude Code and OTLP families: the families
/// in a fixed order, one group at a time.
pub fn render_all(
    view: &FleetView,
    health: &HealthSnapshot,
    store: (&str, bool),
    otlp: &OtlpSnapshot,
    analytics: &AnalyticsSnapshot,
    probes: &[crate::probe::ProbeSnapshot],
    openmetrics: bool,
) -> String {
    let mut e = Encoder::new(openmetrics);
    let sc = Scopes::of(view);
    let dur_bounds = us_bounds(c::DURATION_BUCKETS);
    write_seed(&mut e, view, &sc, health, &dur_bounds);
    write_traffic(&mut e, view, &sc, &dur_bounds);
    write_quantiles(&mut e, view, &sc);
    write_tokens_and_cost(&mut e, view, &sc);
    write_genai(&mut e, &sc);
    write_health(&mut e, view, health, store);
    crate::claude_code::render::write(&mut e, &otlp.claude_code);
    otlp::write_receiver(&mut e, &otlp.diagnostics);
    otlp::write_export(&mut e, &otlp.export);
    crate::export::analytics::write(&mut e, analytics);
    crate::probe::render::write(&mut e, probes);
    write_budget(&mut e, health);
    e.finish()
}

/// The series budget, last: `used` counts every series written, these two included.
fn write_budget(e: &mut Encoder, health: &HealthSnapshot) {
    e.header(&c::SERIES_BUDGET);
    let used = e.samples() + 2;
    e.sample(&c::SERIES_BUDGET, &["limit"], Value::U(health.series_limit));
    e.sample(&c::SERIES_BUDGET, &["used"], Value::U(used));
}

/// One scope of the view: its label values, key and aggregate.
type Scope<'a> = (Vec<&'a str>, &'a ScopeKey, &'a ScopeAgg);

/// The scopes with histograms of their own: those that recorded a duration (a scope the series
/// budget gave counters only has its observations in `__overflow__`'s histograms).
fn with_histograms<'s, 'a>(list: &'s [Scope<'a>]) -> impl Iterator<Item = &'s Scope<'a>> {
    list.iter()
        .filter(|(_, _, s)| !s.latency.duration.is_empty())
}

/// The view's scopes by kind, each sorted by label values.
struct Scopes<'a> {
    ns: Vec<Scope<'a>>,
    providers: Vec<Scope<'a>>,
    models: Vec<Scope<'a>>,
}

impl<'a> Scopes<'a> {
    fn of(view: &'a FleetView) -> Self {
        Self {
            ns: scopes(view, ns_key),
            providers: scopes(view, provider_key),
            models: scopes(view, model_key),
        }
    }
}

/// The seed families: request, error and response-time totals, uptime, per namespace and per
/// model.
fn write_seed(
    e: &mut Encoder,
    view: &FleetView,
    sc: &Scopes<'_>,
    health: &HealthSnapshot,
    dur_bounds: &[f64],
) {
    let g = &view.totals.global;
    let (ns, models) = (&sc.ns[..], &sc.models[..]);
    e.header(&c::REQUESTS);
    e.sample(&c::REQUESTS, &[], Value::U(g.requests));
    e.header(&c::ERRORS);
    e.sample(&c::ERRORS, &[], Value::U(g.failures));
    e.header(&c::RESPONSE_TIME);
    e.sample(&c::RESPONSE_TIME, &[], avg_seconds(g));
    e.header(&c::UPTIME);
    e.sample(&c::UPTIME, &[], Value::F(health.uptime_seconds));
    // The seed's namespace families carry its label `namespace_code` too (same value), so
    // the seed's PromQL (`by (namespace_code)`) works as written.
    e.header(&c::NS_REQUESTS);
    for (l, _, s) in ns {
        e.sample(&c::NS_REQUESTS, &[l[0], l[0]], Value::U(s.requests));
    }
    e.header(&c::NS_CONCURRENT);
    for (l, _, s) in ns {
        e.sample(
            &c::NS_CONCURRENT,
            &[l[0], l[0]],
            Value::I(s.concurrency.max(0)),
        );
    }
    e.header(&c::NS_RESPONSE_TIME);
    for (l, _, s) in ns {
        e.sample(&c::NS_RESPONSE_TIME, &[l[0], l[0]], avg_seconds(s));
    }
    e.header(&c::NS_STATUS);
    for (l, _, s) in ns {
        for (code, n) in &s.status {
            e.sample(
                &c::NS_STATUS,
                &[l[0], l[0], &code.to_string()],
                Value::U(*n),
            );
        }
    }
    let per_model: [ModelColumn; 5] = [
        (&c::MODEL_REQUESTS, |s| Value::U(s.requests)),
        (&c::MODEL_TOKENS_INPUT, |s| Value::U(s.tokens.input)),
        (&c::MODEL_TOKENS_OUTPUT, |s| Value::U(s.tokens.output)),
        (&c::MODEL_COST, |s| Value::Micros(s.cost_micros)),
        (&c::MODEL_ERRORS, |s| Value::U(s.failures)),
    ];
    for (i, (m, f)) in per_model.iter().enumerate() {
        e.header(m);
        for (l, _, s) in models {
            e.sample(m, l, f(s));
        }
        if i == 0 {
            e.header(&c::MODEL_DURATION);
            for (l, _, s) in with_histograms(models) {
                duration_histogram(
                    e,
                    &c::MODEL_DURATION,
                    l,
                    &s.latency.duration,
                    s.latency.sums_us[0],
                    dur_bounds,
                );
            }
        }
    }
}

/// Traffic beyond the seed: errors and status codes, per provider, duration and TTFB
/// histograms.
fn write_traffic(e: &mut Encoder, view: &FleetView, sc: &Scopes<'_>, dur_bounds: &[f64]) {
    let g = &view.totals.global;
    let (ns, providers, models) = (&sc.ns[..], &sc.providers[..], &sc.models[..]);
    e.header(&c::NS_ERRORS);
    for (l, _, s) in ns {
        e.sample(&c::NS_ERRORS, l, Value::U(s.failures));
    }
    e.header(&c::STATUS);
    for (code, n) in &g.status {
        e.sample(&c::STATUS, &[&code.to_string()], Value::U(*n));
    }
    e.header(&c::PROVIDER_REQUESTS);
    for (l, _, s) in providers {
        e.sample(&c::PROVIDER_REQUESTS, l, Value::U(s.requests));
    }
    e.header(&c::PROVIDER_ERRORS);
    for (l, _, s) in providers {
        e.sample(&c::PROVIDER_ERRORS, l, Value::U(s.failures));
    }
    e.header(&c::DURATION);
    duration_histogram(
        e,
        &c::DURATION,
        &[],
        &g.latency.duration,
        g.latency.sums_us[0],
        dur_bounds,
    );
    for (m, list) in [(&c::NS_DURATION, ns), (&c::PROVIDER_DURATION, providers)] {
        e.header(m);
        for (l, _, s) in with_histograms(list) {
            duration_histogram(
                e,
                m,
                l,
                &s.latency.duration,
                s.latency.sums_us[0],
                dur_bounds,
            );
        }
    }
    e.header(&c::MODEL_TTFB);
    for (l, _, s) in with_histograms(models) {
        duration_histogram(
            e,
            &c::MODEL_TTFB,
            l,
            &s.latency.ttfb,
            s.latency.sums_us[1],
            dur_bounds,
        );
    }
}

/// Latency quantiles: recent windows from the store, `all` from the since-start histograms.
fn write_quantiles(e: &mut Encoder, view: &FleetView, sc: &Scopes<'_>) {
    let (ns, providers, models) = (&sc.ns[..], &sc.providers[..], &sc.models[..]);
    quantiles(e, &c::DURATION_Q, &[], view, None, false);
    e.header(&c::NS_DURATION_Q);
    for (l, k, _) in ns {
        quantiles(e, &c::NS_DURATION_Q, l, view, Some(k), false);
    }
    e.header(&c::PROVIDER_DURATION_Q);
    for (l, k, _) in providers {
        quantiles(e, &c::PROVIDER_DURATION_Q, l, view, Some(k), false);
    }
    e.header(&c::MODEL_DURATION_Q);
    for (l, k, _) in models {
        quantiles(e, &c::MODEL_DURATION_Q, l, view, Some(k), false);
    }
    quantiles(e, &c::TTFB_Q, &[], view, None, true);
    e.header(&c::MODEL_TTFB_Q);
    for (l, k, _) in models {
        quantiles(e, &c::MODEL_TTFB_Q, l, view, Some(k), true);
    }
}

/// Tokens, cost, unpriced and abandoned requests.
fn write_tokens_and_cost(e: &mut Encoder, view: &FleetView, sc: &Scopes<'_>) {
    let g = &view.totals.global;
    let (ns, models) = (&sc.ns[..], &sc.models[..]);
    e.header(&c::TOKENS);
    for (t, n) in TOKEN_TYPES.iter().zip(g.tokens.as_array()) {
        e.sample(&c::TOKENS, &[t], Value::U(n));
    }
    e.header(&c::NS_TOKENS);
    for (l, _, s) in ns {
        for (t, n) in TOKEN_TYPES.iter().zip(s.tokens.as_array()) {
            e.sample(&c::NS_TOKENS, &[l[0], t], Value::U(n));
        }
    }
    e.header(&c::MODEL_TOKENS);
    for (l, _, s) in models {
        for (t, n) in TOKEN_TYPES.iter().zip(s.tokens.as_array()) {
            e.sample(&c::MODEL_TOKENS, &[l[0], l[1], t], Value::U(n));
        }
    }
    e.header(&c::COST);
    e.sample(&c::COST, &[], Value::Micros(g.cost_micros));
    e.header(&c::NS_COST);
    for (l, _, s) in ns {
        e.sample(&c::NS_COST, l, Value::Micros(s.cost_micros));
    }
    e.header(&c::UNPRICED);
    for (l, _, s) in models {
        e.sample(&c::UNPRICED, l, Value::U(s.unpriced));
    }
    e.header(&c::ABANDONED);
    for (l, _, s) in ns {
        e.sample(&c::ABANDONED, l, Value::U(s.abandoned));
    }
}

/// The OpenTelemetry GenAI semantic-convention histograms.
fn write_genai(e: &mut Encoder, sc: &Scopes<'_>) {
    let models = &sc.models[..];
    let genai_bounds = us_bounds(c::GENAI_DURATION_BUCKETS);
    e.header(&c::GENAI_DURATION);
    for (l, _, s) in with_histograms(models) {
        let op = s.operation.unwrap_or("chat");
        duration_histogram(
            e,
            &c::GENAI_DURATION,
            &[op, l[0], l[1]],
            &s.latency.duration,
            s.latency.sums_us[0],
            &genai_bounds,
        );
    }
    e.header(&c::GENAI_TOKENS);
    let token_bounds: Vec<f64> = c::GENAI_TOKEN_BUCKETS.iter().map(|b| *b as f64).collect();
    for (l, _, s) in models {
        let Some(usage) = &s.token_usage else {
            continue;
        };
        let op = s.operation.unwrap_or("chat");
        for (k, kind) in ["input", "output"].iter().enumerate() {
            let mut running = 0;
            let cumulative: Vec<u64> = usage.buckets[k][..c::GENAI_TOKEN_BUCKETS.len()]
                .iter()
                .map(|n| {
                    running += n;
                    running
                })
                .collect();
            let count = usage.buckets[k].iter().sum();
            e.histogram(
                &c::GENAI_TOKENS,
                &[op, l[0], l[1], kind],
                &token_bounds,
                &cumulative,
                count,
                Value::U(usage.sums[k]),
            );
        }
    }
}

/// This process's health: ingest and drop counters, queue, overflow, store, build.
fn write_health(e: &mut Encoder, view: &FleetView, health: &HealthSnapshot, store: (&str, bool)) {
    e.header(&c::INGEST_ACCEPTED);
    for s in Source::ALL {
        e.sample(
            &c::INGEST_ACCEPTED,
            &[s.as_str()],
            Value::U(health.accepted[s as usize]),
        );
    }
    e.header(&c::INGEST_REJECTED);
    for s in Source::ALL {
        for r in RejectReason::ALL {
            e.sample(
                &c::INGEST_REJECTED,
                &[s.as_str(), r.as_str()],
                Value::U(health.rejected_records[s as usize][r as usize]),
            );
        }
    }
    e.header(&c::INGEST_REJECTED_REQUESTS);
    for s in Source::ALL {
        for r in RequestReject::ALL {
            e.sample(
                &c::INGEST_REJECTED_REQUESTS,
                &[s.as_str(), r.as_str()],
                Value::U(health.rejected_requests[s as usize][r as usize]),
            );
        }
    }
    e.header(&c::DROPPED);
    for r in DropReason::ALL {
        e.sample(
            &c::DROPPED,
            &[r.as_str()],
            Value::U(health.dropped[r as usize]),
        );
    }
    e.header(&c::DUPLICATES);
    e.sample(&c::DUPLICATES, &[], Value::U(health.duplicates));
    e.header(&c::PROCESSED);
    e.sample(&c::PROCESSED, &[], Value::U(health.processed));
    e.header(&c::QUEUE_DEPTH);
    e.sample(&c::QUEUE_DEPTH, &[], Value::U(health.queue_depth));
    e.header(&c::QUEUE_CAPACITY);
    e.sample(&c::QUEUE_CAPACITY, &[], Value::U(health.queue_capacity));
    let s = &health.spool;
    e.header(&c::SPOOL_BYTES);
    e.sample(&c::SPOOL_BYTES, &[], Value::U(s.bytes));
    e.header(&c::SPOOL_SYNCS);
    e.sample(&c::SPOOL_SYNCS, &[], Value::U(s.syncs));
    e.header(&c::SPOOL_SYNC_SECONDS);
    e.sample(
        &c::SPOOL_SYNC_SECONDS,
        &[],
        Value::F(s.sync_micros as f64 / 1e6),
    );
    e.header(&c::SPOOL_RECORDS);
    e.sample(&c::SPOOL_RECORDS, &[], Value::U(s.records));
    e.header(&c::SPOOL_REPLAYED);
    e.sample(&c::SPOOL_REPLAYED, &[], Value::U(s.replayed));
    e.header(&c::PENDING);
    e.sample(&c::PENDING, &[], Value::U(health.pending));
    e.header(&c::CONNECTIONS_OPEN);
    e.sample(&c::CONNECTIONS_OPEN, &[], Value::U(health.connections_open));
    e.header(&c::CONNECTIONS_REFUSED);
    e.sample(
        &c::CONNECTIONS_REFUSED,
        &[],
        Value::U(health.connections_refused),
    );
    e.header(&c::TLS_HANDSHAKE_FAILURES);
    e.sample(
        &c::TLS_HANDSHAKE_FAILURES,
        &[],
        Value::U(health.tls_handshake_failures),
    );
    e.header(&c::SERIES_OVERFLOW);
    for d in crate::aggregate::Dimension::ALL {
        e.sample(
            &c::SERIES_OVERFLOW,
            &[d.as_str()],
            Value::U(view.totals.overflow[d as usize]),
        );
    }
    e.header(&c::SERIES_REFUSED);
    for r in crate::budget::Refusal::ALL {
        e.sample(
            &c::SERIES_REFUSED,
            &[r.as_str()],
            Value::U(health.series_refused[r as usize]),
        );
    }
    e.header(&c::STORE_UP);
    e.sample(&c::STORE_UP, &[store.0], Value::U(u64::from(store.1)));
    if let Some((name, up)) = health.log_store {
        e.sample(&c::STORE_UP, &[name], Value::U(u64::from(up)));
    }
    e.header(&c::SELF_UPTIME);
    e.sample(&c::SELF_UPTIME, &[], Value::F(health.uptime_seconds));
    e.header(&c::BUILD_INFO);
    e.sample(&c::BUILD_INFO, &[env!("CARGO_PKG_VERSION")], Value::U(1));
}

fn duration_histogram(
    e: &mut Encoder,
    m: &Metric,
    labels: &[&str],
    h: &Latency,
    sum_us: u64,
    bounds_us: &[f64],
) {
    let cumulative = h.cumulative(bounds_us);
    let bounds_s: Vec<f64> = bounds_us.iter().map(|b| b / 1e6).collect();
    e.histogram(
        m,
        labels,
        &bounds_s,
        &cumulative,
        h.count(),
        seconds_from_us(sum_us),
    );
}

/// Writes the quantile gauges of one scope (`None` = global, which also writes the header).
fn quantiles<'a>(
    e: &mut Encoder,
    m: &Metric,
    labels: &[&str],
    view: &'a FleetView,
    key: Option<&ScopeKey>,
    ttfb: bool,
) {
    if key.is_none() {
        e.header(m);
    }
    let pick = |l: &'a crate::aggregate::Latencies| -> &'a Latency {
        if ttfb { &l.ttfb } else { &l.duration }
    };
    let mut series: Vec<(&str, &Latency)> = Vec::with_capacity(3);
    for w in &view.windows {
        let lat = match key {
            None => Some(pick(&w.global)),
            Some(k) => w.scopes.get(k).map(pick),
        };
        if let Some(l) = lat {
            series.push((w.label, l));
        }
    }
    let all = match key {
        None => Some(&view.totals.global),
        Some(k) => view.totals.scopes.get(k),
    };
    if let Some(s) = all {
        series.push(("all", pick(&s.latency)));
    }
    for (window, lat) in &series {
        for (q, qs) in c::QUANTILES {
            if let Some(us) = lat.quantile(*q) {
                let mut values: Vec<&str> = labels.to_vec();
                values.push(window);
                values.push(qs);
                e.sample(m, &values, Value::F(us / 1e6));
            }
        }
    }
}

/// State of the `/metrics` handler.
#[derive(Clone)]
pub struct MetricsState {
    /// Source of the fleet view.
    pub pipeline: Pipeline,
    /// This process's health.
    pub health: std::sync::Arc<crate::health::Health>,
    /// Claude Code state and OTLP counters.
    pub otlp: OtlpSource,
    /// The analytics families' latest reading (none without a request log with rollups).
    pub analytics: Option<std::sync::Arc<AnalyticsGauges>>,
    /// The probes of this process.
    pub probes: std::sync::Arc<crate::probe::Probes>,
}

fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// `GET /metrics`.
pub async fn metrics(State(s): State<MetricsState>, headers: HeaderMap) -> Response {
    let view = s.pipeline.view().await;
    let store = s.pipeline.store();
    let om = wants_openmetrics(&headers);
    let otlp = s.otlp.snapshot().await;
    let analytics = s
        .analytics
        .as_ref()
        .map(|a| a.snapshot())
        .unwrap_or_default();
    let body = render_all(
        &view,
        &s.health.snapshot(),
        (store.name(), store.is_up()),
        &otlp,
        &analytics,
        &s.probes.snapshot(),
        om,
    );
    let ct = if om {
        OPENMETRICS_CONTENT_TYPE
    } else {
        TEXT_CONTENT_TYPE
    };
    ([(header::CONTENT_TYPE, HeaderValue::from_static(ct))], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Kind;

    #[test]
    fn empty_view_renders_every_family_once() {
        let view = FleetView::default();
        let health = crate::health::Health::new(10).snapshot();
        for om in [false, true] {
            let text = render(&view, &health, ("memory", true), om);
            for m in c::ALL {
                let name = if !om && m.kind == Kind::Counter {
                    format!("{}_total", m.name)
                } else {
                    m.name.to_string()
                };
                let n = text
                    .lines()
                    .filter(|l| *l == format!("# TYPE {name} {}", kind_str(m.kind)))
                    .count();
                assert_eq!(n, 1, "family {name} (openmetrics={om})");
            }
            assert_eq!(text.ends_with("# EOF\n"), om);
        }
    }

    fn kind_str(k: Kind) -> &'static str {
        match k {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}
