//! GenAI metric points as request records, for the sources that report their calls only as
//! metrics: those listed by `service.name` in `otlp.genai_metric_sources` (the rule: README,
//! "Any OpenTelemetry GenAI source"; the other sources' points stay `covered`).
//!
//! The GenAI instrumentations record every call in two histograms:
//! `gen_ai.client.operation.duration` (seconds; one observation per call, `error.type` on a
//! failed one) and `gen_ai.client.token.usage` (one observation per token type, `input` and
//! `output`, on an answered call). For a listed source:
//! - each new observation of `operation.duration` is one call, one record (at most
//!   [`MAX_CALLS_PER_EXPORT`] per request): provider, model,
//!   operation and namespace from the point's attributes (over the resource's), read like a
//!   span's (`genai::record`); status 200, or what `error.type` names; the duration is the
//!   mean of the point's new observations; the time is the point's;
//! - the new sum of `token.usage` per token type is shared by the answered calls of the same
//!   (operation, provider, models, server) in the same export, evenly, the remainder to the
//!   first ones (all calls of that key when none answered); tokens of a key with no new call in
//!   the export wait for the next export (cumulative) or are not counted (delta);
//! - identity: `otel-metric:<stream>:<run>:<n>` — the stream (a hash of the metric, the
//!   resource's and the point's attributes), its run (a cumulative stream's start time, a
//!   delta point's time) and the call's ordinal in the run — so a retried export repeats the
//!   ids and the pipeline's de-duplication acknowledges it without counting it again.
//!
//! A cumulative stream needs its last point ([`Streams`]): the increase since it is what is
//! new. On first sight a stream that started after this process ([`Streams::new`]'s `since`)
//! is read whole; one that started before is taken as a baseline (its earlier calls were
//! counted by this process before a restart, or by no one: at most one export interval lost,
//! never counted twice). Delta points need no state.
//!
//! Records built from metrics carry no per-call detail: no trace, span, user or session;
//! durations are interval means. They go to the request log like every record (one row per
//! call, `request_id` `otel-metric:…`), so the log's analytics and exports agree with the live
//! families.
//!
//! Pure: no clock (time comes in), no I/O; [`read`] proposes new stream positions and
//! [`Streams::commit`] keeps them once the records were taken.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use compact_str::CompactString;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;

use super::{Attrs, Call, Operation, operation, record};
use crate::otlp::MAX_POINT_FUTURE_MS;
use crate::otlp::decode::{Val, hash_value, point_count, str_of};
use crate::record::{Event, MAX_TOKENS, RecordError, Validation};

/// The per-call duration histogram.
pub const DURATION: &str = "gen_ai.client.operation.duration";
/// The per-call token histogram (`gen_ai.token.type` = `input` / `output`).
pub const TOKENS: &str = "gen_ai.client.token.usage";

/// Most calls (records) one export request may add, a quarter of the default pipeline queue:
/// a point that would go beyond is refused as out of range (the stream goes on from it), so a
/// forged count cannot make an unbounded number of records.
pub const MAX_CALLS_PER_EXPORT: u64 = 50_000;

/// Most cumulative streams remembered; a point of a new stream beyond them is refused
/// (`stream_limit`) unless streams not seen for [`STALE_NS`] can be forgotten.
pub const MAX_STREAMS: usize = 100_000;

/// A stream whose last point is this much older than the newest point kept may be forgotten
/// when the table is full (its source has most likely ended; if it comes back, its next point
/// is a baseline).
pub const STALE_NS: u64 = 3600 * 1_000_000_000;

/// Where a cumulative stream was last seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cursor {
    start_ns: u64,
    time_ns: u64,
    count: u64,
    sum: f64,
}

/// The cumulative streams of the listed sources: their last points.
#[derive(Debug)]
pub struct Streams {
    since_ns: u64,
    cursors: HashMap<u64, Cursor>,
    /// The newest point time kept.
    newest_ns: u64,
}

impl Streams {
    /// No streams yet; `since_ms` is when this process started (epoch milliseconds).
    pub fn new(since_ms: i64) -> Self {
        Self {
            since_ns: u64::try_from(since_ms)
                .unwrap_or(0)
                .saturating_mul(1_000_000),
            cursors: HashMap::new(),
            newest_ns: 0,
        }
    }

    /// Whether `n` more streams fit, once stale ones are forgotten (see [`Streams::commit`]).
    fn room_for(&self, n: usize) -> bool {
        self.cursors.len() + n <= MAX_STREAMS
            || self
                .cursors
                .values()
                .any(|c| c.time_ns < self.newest_ns.saturating_sub(STALE_NS))
    }

    /// Keeps the positions of a request whose records were taken (a position older than the
    /// one kept, from a concurrent request, is ignored).
    pub fn commit(&mut self, positions: Vec<(u64, Cursor)>) {
        for (k, c) in positions {
            self.newest_ns = self.newest_ns.max(c.time_ns);
            match self.cursors.get_mut(&k) {
                Some(old) if old.start_ns == c.start_ns && old.time_ns >= c.time_ns => {}
                Some(old) => *old = c,
                None => {
                    if self.cursors.len() >= MAX_STREAMS {
                        let cutoff = self.newest_ns.saturating_sub(STALE_NS);
                        self.cursors.retain(|_, c| c.time_ns >= cutoff);
                    }
                    if self.cursors.len() < MAX_STREAMS {
                        self.cursors.insert(k, c);
                    }
                }
            }
        }
    }
}

/// Why points were not read, for the OTLP diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointError {
    /// A non-finite or negative count or sum, an unknown temporality.
    BadValue,
    /// More new calls in one export than [`MAX_CALLS_PER_EXPORT`].
    OutOfRange,
    /// The stream table is full.
    StreamLimit,
    /// Dated more than [`MAX_POINT_FUTURE_MS`] after its receipt (kept as a stream's last
    /// point, it would make the next ones look like repeats).
    Future,
}

/// What the listed sources' GenAI points of one request became.
#[derive(Debug, Default)]
pub struct MetricCalls {
    /// Request records.
    pub events: Vec<Event>,
    /// Points read as records (the duration and token points of listed sources).
    pub points: u64,
    /// Points not newer than their cumulative stream's last one (a retried export).
    pub repeated: u64,
    /// Refused points: why, and a message.
    pub refused: Vec<(PointError, String)>,
    /// Records that failed validation (point index in the request, error).
    pub rejected: Vec<(usize, RecordError)>,
    /// Stream positions to [`Streams::commit`] once the records were taken.
    pub positions: Vec<(u64, Cursor)>,
}

/// One call read from a duration point, before its tokens are known.
struct Draft<'a> {
    attrs: Attrs<'a>,
    op: &'static str,
    id: String,
    time_ns: u64,
    duration_ms: f64,
    failed: bool,
    index: usize,
}

/// The calls and tokens of one (operation, provider, models, server) key in one resource.
#[derive(Default)]
struct Group<'a> {
    calls: Vec<Draft<'a>>,
    input: u64,
    output: u64,
    /// Token stream positions, kept only when the tokens went to calls.
    positions: Vec<(u64, Cursor)>,
}

/// A histogram point, of either histogram type.
struct Point<'a> {
    attrs: &'a [KeyValue],
    start_ns: u64,
    time_ns: u64,
    count: u64,
    sum: f64,
}

fn points<'a>(data: &'a Data) -> Option<(i32, Vec<Point<'a>>)> {
    Some(match data {
        Data::Histogram(h) => (
            h.aggregation_temporality,
            h.data_points
                .iter()
                .map(|p| Point {
                    attrs: &p.attributes,
                    start_ns: p.start_time_unix_nano,
                    time_ns: p.time_unix_nano,
                    count: p.count,
                    sum: p.sum.unwrap_or(0.0),
                })
                .collect(),
        ),
        Data::ExponentialHistogram(h) => (
            h.aggregation_temporality,
            h.data_points
                .iter()
                .map(|p| Point {
                    attrs: &p.attributes,
                    start_ns: p.start_time_unix_nano,
                    time_ns: p.time_unix_nano,
                    count: p.count,
                    sum: p.sum.unwrap_or(0.0),
                })
                .collect(),
        ),
        _ => return None,
    })
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<Val<'a>> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(Val::of)
}

/// The key a duration point and the token points of the same calls share.
fn join_key(attrs: &[KeyValue]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for k in [
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.system",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "server.address",
        "server.port",
    ] {
        k.hash(&mut h);
        match attrs
            .iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.as_ref())
        {
            Some(v) => hash_value(v, &mut h),
            None => 0u8.hash(&mut h),
        }
    }
    h.finish()
}

/// What is new in a point: the count and sum since the stream's last point, the run and the
/// first new ordinal; `None` for a repeated point.
struct New {
    count: u64,
    sum: f64,
    run: u64,
    first: u64,
    position: Option<(u64, Cursor)>,
}

fn new_in(
    p: &Point<'_>,
    latest_ns: u64,
    cumulative: bool,
    stream: u64,
    streams: &Streams,
    pending: &HashMap<u64, Cursor>,
) -> Result<Option<New>, PointError> {
    if !p.sum.is_finite() || p.sum < 0.0 {
        return Err(PointError::BadValue);
    }
    if p.time_ns.max(p.start_ns) > latest_ns {
        return Err(PointError::Future);
    }
    if !cumulative {
        return Ok(Some(New {
            count: p.count,
            sum: p.sum,
            run: p.time_ns,
            first: 1,
            position: None,
        }));
    }
    let last = pending
        .get(&stream)
        .or_else(|| streams.cursors.get(&stream));
    let base = match last {
        Some(c) if c.start_ns == p.start_ns && p.count >= c.count => {
            if p.time_ns <= c.time_ns {
                return Ok(None);
            }
            (c.count, c.sum)
        }
        Some(_) => (0, 0.0), // a new run: all of it is new
        None if !streams.room_for(pending.len() + 1) => {
            return Err(PointError::StreamLimit);
        }
        None if p.start_ns >= streams.since_ns => (0, 0.0),
        None => (p.count, p.sum), // begun before this process: a baseline
    };
    Ok(Some(New {
        count: p.count - base.0,
        sum: (p.sum - base.1).max(0.0),
        run: p.start_ns,
        first: base.0 + 1,
        position: Some((
            stream,
            Cursor {
                start_ns: p.start_ns,
                time_ns: p.time_ns,
                count: p.count,
                sum: p.sum,
            },
        )),
    }))
}

/// Reads the GenAI points of the sources listed in `metric_sources` (by `service.name`) as
/// records; `namespace_attribute` names the namespace attribute. Points of other sources are
/// not looked at (the caller counts them `covered`).
pub fn read(
    req: &ExportMetricsServiceRequest,
    namespace_attribute: Option<&str>,
    metric_sources: &[String],
    streams: &Streams,
    v: &Validation<'_>,
) -> MetricCalls {
    let mut out = MetricCalls::default();
    if metric_sources.is_empty() {
        return out;
    }
    let latest_ns = u64::try_from(v.now_ms.saturating_add(MAX_POINT_FUTURE_MS))
        .unwrap_or(0)
        .saturating_mul(1_000_000);
    let mut pending: HashMap<u64, Cursor> = HashMap::new();
    let mut index = 0usize;
    let mut calls = 0u64;
    for rm in &req.resource_metrics {
        let res: &[KeyValue] = rm.resource.as_ref().map_or(&[], |r| &r.attributes);
        let service = attr(res, "service.name").and_then(str_of);
        let listed = service.is_some_and(|n| metric_sources.iter().any(|s| s == n));
        let mut res_hash = std::collections::hash_map::DefaultHasher::new();
        for kv in res {
            kv.key.hash(&mut res_hash);
            if let Some(v) = &kv.value {
                hash_value(v, &mut res_hash);
            }
        }
        let mut base = Attrs::default();
        base.fill_from(
            res.iter()
                .filter_map(|kv| Some((kv.key.as_str(), kv.value.as_ref().map(Val::of)?))),
            namespace_attribute,
        );
        let mut groups: HashMap<u64, Group<'_>> = HashMap::new();
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let first_index = index;
                index += point_count(m.data.as_ref());
                let is_duration = m.name == DURATION;
                if !listed || !(is_duration || m.name == TOKENS) {
                    continue;
                }
                let Some((temporality, pts)) = m.data.as_ref().and_then(points) else {
                    continue;
                };
                let cumulative = match temporality {
                    1 => false,
                    2 => true,
                    t => {
                        for _ in &pts {
                            out.refused.push((
                                PointError::BadValue,
                                format!("{}: aggregation temporality {t} is not delta (1) or cumulative (2)", m.name),
                            ));
                        }
                        continue;
                    }
                };
                for (j, p) in pts.iter().enumerate() {
                    let i = first_index + j;
                    let mut h = res_hash.clone();
                    m.name.hash(&mut h);
                    for kv in p.attrs {
                        kv.key.hash(&mut h);
                        if let Some(v) = &kv.value {
                            hash_value(v, &mut h);
                        }
                    }
                    let stream = h.finish();
                    let new = match new_in(p, latest_ns, cumulative, stream, streams, &pending) {
                        Ok(Some(n)) => n,
                        Ok(None) => {
                            out.repeated += 1;
                            continue;
                        }
                        Err(e) => {
                            out.refused.push((e, refusal(e, &m.name, p)));
                            continue;
                        }
                    };
                    let group = groups.entry(join_key(p.attrs)).or_default();
                    if !is_duration {
                        let n = new.sum.round();
                        if n > MAX_TOKENS as f64 {
                            out.refused.push((
                                PointError::OutOfRange,
                                format!("{TOKENS}: {n} new tokens exceed {MAX_TOKENS}"),
                            ));
                            if let Some((k, c)) = new.position {
                                pending.insert(k, c);
                                out.positions.push((k, c));
                            }
                            continue;
                        }
                        out.points += 1;
                        match attr(p.attrs, "gen_ai.token.type").and_then(str_of) {
                            Some("input") => group.input += n as u64,
                            Some("output") => group.output += n as u64,
                            _ => {}
                        }
                        if let Some((k, c)) = new.position {
                            pending.insert(k, c);
                            if n > 0.0 {
                                group.positions.push((k, c));
                            } else {
                                out.positions.push((k, c)); // nothing to carry: kept now
                            }
                        }
                        continue;
                    }
                    if let Some((k, c)) = new.position {
                        pending.insert(k, c);
                        out.positions.push((k, c));
                    }
                    if new.count == 0 {
                        out.points += 1;
                        continue;
                    }
                    if calls + new.count > MAX_CALLS_PER_EXPORT {
                        // Refused, but the stream goes on from it (its position is kept).
                        out.refused.push((
                            PointError::OutOfRange,
                            format!(
                                "{DURATION}: {} new calls would exceed {MAX_CALLS_PER_EXPORT} in one export",
                                new.count
                            ),
                        ));
                        continue;
                    }
                    calls += new.count;
                    let mut a = base;
                    a.fill_from(
                        p.attrs.iter().filter_map(|kv| {
                            Some((kv.key.as_str(), kv.value.as_ref().map(Val::of)?))
                        }),
                        namespace_attribute,
                    );
                    let Some(Operation::Call(op)) = operation(&a) else {
                        continue; // an agent or tool operation: stays covered
                    };
                    out.points += 1;
                    let failed = a.error_type.is_some();
                    let duration_ms = new.sum * 1000.0 / new.count as f64;
                    for n in 0..new.count {
                        group.calls.push(Draft {
                            attrs: a,
                            op,
                            id: format!("otel-metric:{stream:016x}:{}:{}", new.run, new.first + n),
                            time_ns: p.time_ns,
                            duration_ms,
                            failed,
                            index: i,
                        });
                    }
                }
            }
        }
        let mut groups: Vec<(u64, Group<'_>)> = groups.into_iter().collect();
        groups.sort_unstable_by_key(|(k, _)| *k);
        for (_, g) in groups {
            if g.calls.is_empty() {
                continue;
            }
            out.positions.extend(g.positions);
            let answered = g.calls.iter().filter(|c| !c.failed).count() as u64;
            let (takers, all) = if answered > 0 {
                (answered, false)
            } else {
                (g.calls.len() as u64, true)
            };
            let mut nth = 0u64;
            for c in g.calls {
                let gets = all || !c.failed;
                let share = |total: u64| {
                    if !gets {
                        return 0;
                    }
                    total / takers + u64::from(nth < total % takers)
                };
                let (input, output) = (share(g.input), share(g.output));
                if gets {
                    nth += 1;
                }
                out.push(c, input, output, v);
            }
        }
    }
    out
}

impl MetricCalls {
    /// Points this reading accounts for (read, repeated or refused): the caller's mapping
    /// counted them `covered`.
    pub fn taken(&self) -> u64 {
        self.points + self.repeated + self.refused.len() as u64
    }

    fn push(&mut self, c: Draft<'_>, input: u64, output: u64, v: &Validation<'_>) {
        let duration_ns = (c.duration_ms * 1e6) as u64;
        let call = Call {
            trace_id: &[],
            span_id: &[],
            start_ns: c.time_ns.saturating_sub(duration_ns),
            end_ns: c.time_ns,
            status: (if c.failed { 2 } else { 0 }, ""),
        };
        let result = record(&c.attrs, c.op, &call).and_then(|mut f| {
            f.request_id = Some(CompactString::from(c.id));
            f.timestamp_ms = (c.time_ns != 0).then_some((c.time_ns / 1_000_000) as i64);
            f.duration_ms = Some(c.duration_ms);
            f.input_tokens = Some(input);
            f.output_tokens = Some(output);
            f.validate(v)
        });
        match result {
            Ok(r) => self.events.push(Event::Finish(r)),
            Err(e) => self.rejected.push((c.index, e)),
        }
    }
}

fn refusal(e: PointError, metric: &str, p: &Point<'_>) -> String {
    match e {
        PointError::BadValue => format!(
            "{metric}: sum {} is not a finite non-negative number",
            p.sum
        ),
        PointError::OutOfRange => format!("{metric}: too many new calls in one point"),
        PointError::StreamLimit => {
            format!("{metric}: more than {MAX_STREAMS} GenAI metric streams")
        }
        PointError::Future => format!(
            "{metric}: a point dated {} ns is more than {} s after its receipt",
            p.time_ns.max(p.start_ns),
            MAX_POINT_FUTURE_MS / 1000
        ),
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
    use opentelemetry_proto::tonic::metrics::v1::{
        Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    use super::*;
    use crate::record::ValidRecord;

    const NOW_MS: i64 = 1_795_460_000_000;
    const SINCE_MS: i64 = NOW_MS - 3_600_000;
    const MS: u64 = 1_000_000;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn call_attrs(model: &str, error: Option<&str>) -> Vec<KeyValue> {
        let mut a = vec![
            kv("gen_ai.operation.name", "chat"),
            kv("gen_ai.provider.name", "openai"),
            kv("gen_ai.request.model", model),
        ];
        if let Some(e) = error {
            a.push(kv("error.type", e));
        }
        a
    }

    fn point(
        attrs: Vec<KeyValue>,
        start_ms: i64,
        time_ms: i64,
        count: u64,
        sum: f64,
    ) -> HistogramDataPoint {
        HistogramDataPoint {
            attributes: attrs,
            start_time_unix_nano: start_ms as u64 * MS,
            time_unix_nano: time_ms as u64 * MS,
            count,
            sum: Some(sum),
            ..Default::default()
        }
    }

    fn histogram(name: &str, temporality: i32, points: Vec<HistogramDataPoint>) -> Metric {
        Metric {
            name: name.into(),
            data: Some(Data::Histogram(Histogram {
                data_points: points,
                aggregation_temporality: temporality,
            })),
            ..Default::default()
        }
    }

    fn request(service: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service), kv("team.id", "search")],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// `calls` gpt-4o calls (of which `failed` 429s) and their tokens, as one cumulative
    /// export at `time_ms` of streams started at `start_ms`.
    fn export(
        start_ms: i64,
        time_ms: i64,
        ok: u64,
        failed: u64,
        input: u64,
        output: u64,
    ) -> ExportMetricsServiceRequest {
        let mut durations = vec![point(
            call_attrs("gpt-4o", None),
            start_ms,
            time_ms,
            ok,
            ok as f64 * 0.5,
        )];
        if failed > 0 {
            durations.push(point(
                call_attrs("gpt-4o", Some("RateLimitError")),
                start_ms,
                time_ms,
                failed,
                failed as f64 * 0.1,
            ));
        }
        let token = |t: &str, n: u64| {
            let mut a = call_attrs("gpt-4o", None);
            a.push(kv("gen_ai.token.type", t));
            point(a, start_ms, time_ms, ok, n as f64)
        };
        request(
            "batch-job",
            vec![
                histogram(
                    TOKENS,
                    2,
                    vec![token("input", input), token("output", output)],
                ),
                histogram(DURATION, 2, durations),
            ],
        )
    }

    fn read_all(
        req: &ExportMetricsServiceRequest,
        streams: &mut Streams,
    ) -> (Vec<ValidRecord>, MetricCalls) {
        let prices = crate::price::PriceTable::default();
        let v = Validation {
            now_ms: NOW_MS,
            prices: &prices,
            keep_requests: None,
        };
        let mut out = read(
            req,
            Some("team.id"),
            &["batch-job".to_string()],
            streams,
            &v,
        );
        streams.commit(std::mem::take(&mut out.positions));
        let records = std::mem::take(&mut out.events)
            .into_iter()
            .map(|e| match e {
                Event::Finish(r) => *r,
                Event::Start(_) => panic!("a start marker"),
            })
            .collect();
        (records, out)
    }

    fn totals(records: &[ValidRecord]) -> (usize, usize, u64, u64) {
        (
            records.len(),
            records.iter().filter(|r| !r.is_success()).count(),
            records.iter().map(|r| r.tokens.input).sum(),
            records.iter().map(|r| r.tokens.output).sum(),
        )
    }

    #[test]
    fn cumulative_streams_give_each_new_call_once() {
        let mut streams = Streams::new(SINCE_MS);
        let start = SINCE_MS + 1000;
        let (r, out) = read_all(&export(start, NOW_MS - 60_000, 3, 1, 100, 31), &mut streams);
        assert_eq!(totals(&r), (4, 1, 100, 31));
        assert_eq!((out.points, out.repeated), (4, 0));
        // Tokens shared by the answered calls, the remainder to the first.
        let shares: Vec<u64> = r.iter().map(|r| r.tokens.input).collect();
        assert_eq!(shares, [34, 33, 33, 0]);
        let failed = r.iter().find(|r| !r.is_success()).expect("a failure");
        assert_eq!((failed.status, failed.model.as_str()), (429, "gpt-4o"));
        assert_eq!(failed.namespace, "search");
        assert_eq!(r[0].duration_ms, crate::record::Millis::from_ms(500));
        // The same export again: nothing new.
        let (again, out) = read_all(&export(start, NOW_MS - 60_000, 3, 1, 100, 31), &mut streams);
        assert!(again.is_empty());
        assert_eq!(out.repeated, 4);
        // The next export: the increase only, with the next ordinals.
        let (next, _) = read_all(&export(start, NOW_MS, 5, 1, 160, 51), &mut streams);
        assert_eq!(totals(&next), (2, 0, 60, 20));
        let ids: Vec<String> = r
            .iter()
            .chain(&next)
            .filter_map(|r| r.request_id.as_ref().map(|i| i.as_str().to_string()))
            .collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 6, "{ids:?}");
        assert!(ids.iter().all(|i| i.starts_with("otel-metric:")));
        // A new run (the client restarted): all of it is new.
        let (run, _) = read_all(
            &export(NOW_MS - 10_000, NOW_MS - 5_000 + 1, 1, 0, 7, 2),
            &mut streams,
        );
        assert_eq!(totals(&run), (1, 0, 7, 2));
    }

    #[test]
    fn a_retry_before_the_commit_gives_the_same_ids() {
        let streams = Streams::new(SINCE_MS);
        let prices = crate::price::PriceTable::default();
        let v = Validation {
            now_ms: NOW_MS,
            prices: &prices,
            keep_requests: None,
        };
        let req = export(SINCE_MS + 1, NOW_MS, 2, 0, 10, 4);
        let sources = ["batch-job".to_string()];
        let a = read(&req, Some("team.id"), &sources, &streams, &v);
        let b = read(&req, Some("team.id"), &sources, &streams, &v);
        assert_eq!(a.events.len(), 2);
        assert_eq!(
            a.events, b.events,
            "a refused request's retry repeats its records"
        );
    }

    #[test]
    fn streams_begun_before_this_process_start_from_their_first_point() {
        let mut streams = Streams::new(SINCE_MS);
        let (r, _) = read_all(
            &export(SINCE_MS - 1, NOW_MS - 60_000, 3, 0, 30, 3),
            &mut streams,
        );
        assert!(r.is_empty(), "a baseline, not counted");
        let (r, _) = read_all(&export(SINCE_MS - 1, NOW_MS, 4, 0, 42, 4), &mut streams);
        assert_eq!(totals(&r), (1, 0, 12, 1));
    }

    #[test]
    fn delta_points_are_their_own_calls_and_unlisted_sources_are_not_read() {
        let delta = |time_ms: i64| {
            let mut t = call_attrs("gpt-4o-mini", None);
            t.push(kv("gen_ai.token.type", "input"));
            vec![
                histogram(
                    DURATION,
                    1,
                    vec![point(
                        call_attrs("gpt-4o-mini", None),
                        time_ms - 60_000,
                        time_ms,
                        2,
                        1.0,
                    )],
                ),
                histogram(TOKENS, 1, vec![point(t, time_ms - 60_000, time_ms, 2, 9.0)]),
            ]
        };
        let mut streams = Streams::new(SINCE_MS);
        let (r, _) = read_all(&request("batch-job", delta(NOW_MS - 60_000)), &mut streams);
        assert_eq!(totals(&r), (2, 0, 9, 0));
        let (r2, _) = read_all(&request("batch-job", delta(NOW_MS)), &mut streams);
        assert_eq!(totals(&r2), (2, 0, 9, 0));
        assert_ne!(r[0].request_id, r2[0].request_id);
        // A retried delta export repeats its ids (the pipeline acknowledges them).
        let (again, _) = read_all(&request("batch-job", delta(NOW_MS)), &mut streams);
        assert_eq!(
            again
                .iter()
                .map(|r| r.request_id.clone())
                .collect::<Vec<_>>(),
            r2.iter().map(|r| r.request_id.clone()).collect::<Vec<_>>()
        );
        let (none, out) = read_all(&request("chat-app", delta(NOW_MS)), &mut streams);
        assert!(none.is_empty());
        assert_eq!(out.taken(), 0);
    }

    #[test]
    fn a_full_stream_table_forgets_stale_streams_only() {
        let mut streams = Streams::new(SINCE_MS);
        let cursor = |time_ns: u64| Cursor {
            start_ns: 1,
            time_ns,
            count: 1,
            sum: 0.0,
        };
        let now_ns = NOW_MS as u64 * MS;
        let old = now_ns - 2 * STALE_NS;
        streams.commit((0..MAX_STREAMS as u64).map(|k| (k, cursor(old))).collect());
        assert!(!streams.room_for(1), "full, nothing newer to compare with");
        streams.commit(vec![(u64::MAX, cursor(now_ns))]);
        assert_eq!(streams.cursors.len(), 1, "the stale ones made room");
        streams.commit(
            (0..MAX_STREAMS as u64 - 1)
                .map(|k| (k, cursor(now_ns)))
                .collect(),
        );
        assert_eq!(streams.cursors.len(), MAX_STREAMS);
        assert!(!streams.room_for(1), "full of fresh streams");
    }

    #[test]
    fn impossible_points_are_refused() {
        let mut streams = Streams::new(SINCE_MS);
        let bad = request(
            "batch-job",
            vec![histogram(
                DURATION,
                1,
                vec![
                    point(call_attrs("m", None), SINCE_MS, NOW_MS, 1, -1.0),
                    point(
                        call_attrs("m", None),
                        SINCE_MS,
                        NOW_MS,
                        MAX_CALLS_PER_EXPORT + 1,
                        1.0,
                    ),
                ],
            )],
        );
        let (r, out) = read_all(&bad, &mut streams);
        assert!(r.is_empty());
        let reasons: Vec<PointError> = out.refused.iter().map(|(e, _)| *e).collect();
        assert_eq!(reasons, [PointError::BadValue, PointError::OutOfRange]);
        assert_eq!(out.taken(), 2);
    }
}
