//! The traces fast path: a protobuf `ExportTraceServiceRequest` read in place into a borrowed
//! view of what the GenAI mapping reads (`crate::genai`), with the logs scanner's wire reader.
//!
//! Per span it keeps the ids, name, kind, times, status and every attribute (borrowed); span
//! events and links are checked as prost would check them (UTF-8, wire types, nesting) but not
//! kept, since the mapping reads neither. Like the logs path, it declines (`None`) what it does
//! not fully check — scope attributes, resource entity refs, groups, nesting deeper than
//! [`super::MAX_NESTING`] — and the caller decodes those bodies with prost and takes their
//! [`spans_view`]. Tests keep the two views equal on captures, on a generated corpus and under byte
//! flips and truncations.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use super::{FIXED32, FIXED64, Kv, LEN, Reader, VARINT, key_value, kvs, resource, scope, want};

/// One span: what the GenAI mapping reads.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRef<'a> {
    /// `trace_id` (empty when absent).
    pub trace_id: &'a [u8],
    /// `span_id` (empty when absent).
    pub span_id: &'a [u8],
    /// `name`.
    pub name: &'a str,
    /// `kind` (`SpanKind` as i32).
    pub kind: i32,
    /// `start_time_unix_nano`.
    pub start_ns: u64,
    /// `end_time_unix_nano`.
    pub end_ns: u64,
    /// `status.code` (`StatusCode` as i32; 0 without a status).
    pub status_code: i32,
    /// `status.message`.
    pub status_message: &'a str,
    /// `attributes`.
    pub attrs: Vec<Kv<'a>>,
}

/// One `ScopeSpans`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeSpansRef<'a> {
    /// The instrumentation scope's name (empty without a scope).
    pub scope: &'a str,
    /// Its spans, in order.
    pub spans: Vec<SpanRef<'a>>,
}

/// One `ResourceSpans`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceSpansRef<'a> {
    /// Resource attributes.
    pub resource: Vec<Kv<'a>>,
    /// Its scopes, in order.
    pub scopes: Vec<ScopeSpansRef<'a>>,
}

/// The view of a decoded request.
pub fn spans_view(req: &ExportTraceServiceRequest) -> Vec<ResourceSpansRef<'_>> {
    req.resource_spans
        .iter()
        .map(|rs| ResourceSpansRef {
            resource: rs
                .resource
                .as_ref()
                .map_or_else(Vec::new, |r| kvs(&r.attributes)),
            scopes: rs
                .scope_spans
                .iter()
                .map(|ss| ScopeSpansRef {
                    scope: ss.scope.as_ref().map_or("", |s| s.name.as_str()),
                    spans: ss
                        .spans
                        .iter()
                        .map(|s| SpanRef {
                            trace_id: &s.trace_id,
                            span_id: &s.span_id,
                            name: &s.name,
                            kind: s.kind,
                            start_ns: s.start_time_unix_nano,
                            end_ns: s.end_time_unix_nano,
                            status_code: s.status.as_ref().map_or(0, |st| st.code),
                            status_message: s.status.as_ref().map_or("", |st| st.message.as_str()),
                            attrs: kvs(&s.attributes),
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect()
}

/// The fast path: a protobuf `ExportTraceServiceRequest` read in place, or `None` when the body
/// holds anything it does not fully understand (the caller then decodes it with prost).
pub fn spans(body: &[u8]) -> Option<Vec<ResourceSpansRef<'_>>> {
    super::resources(body, resource_spans)
}

fn resource_spans(buf: &[u8]) -> Option<ResourceSpansRef<'_>> {
    let mut r = Reader::new(buf);
    let mut out = ResourceSpansRef::default();
    while !r.done() {
        let (f, wt) = r.key()?;
        match f {
            1 => {
                want(wt, LEN)?;
                resource(r.bytes()?, &mut out.resource)?;
            }
            2 => {
                want(wt, LEN)?;
                out.scopes.push(scope_spans(r.bytes()?)?);
            }
            3 => {
                want(wt, LEN)?;
                r.str()?;
            }
            _ => r.skip(wt)?,
        }
    }
    Some(out)
}

fn scope_spans(buf: &[u8]) -> Option<ScopeSpansRef<'_>> {
    let mut r = Reader::new(buf);
    let mut out = ScopeSpansRef::default();
    while !r.done() {
        let (f, wt) = r.key()?;
        match f {
            1 => {
                want(wt, LEN)?;
                scope(r.bytes()?, &mut out.scope)?;
            }
            2 => {
                want(wt, LEN)?;
                out.spans.push(span(r.bytes()?)?);
            }
            3 => {
                want(wt, LEN)?;
                r.str()?;
            }
            _ => r.skip(wt)?,
        }
    }
    Some(out)
}

fn span(buf: &[u8]) -> Option<SpanRef<'_>> {
    let mut r = Reader::new(buf);
    let mut s = SpanRef {
        trace_id: &[],
        span_id: &[],
        name: "",
        kind: 0,
        start_ns: 0,
        end_ns: 0,
        status_code: 0,
        status_message: "",
        attrs: Vec::with_capacity(24),
    };
    while !r.done() {
        let (f, wt) = r.key()?;
        match f {
            1 => {
                want(wt, LEN)?;
                s.trace_id = r.bytes()?;
            }
            2 => {
                want(wt, LEN)?;
                s.span_id = r.bytes()?;
            }
            3 | 5 => {
                want(wt, LEN)?;
                let text = r.str()?;
                if f == 5 {
                    s.name = text;
                }
            }
            4 => {
                want(wt, LEN)?;
                r.bytes()?;
            }
            6 => {
                want(wt, VARINT)?;
                // prost reads an enum as the varint's low 32 bits.
                s.kind = r.varint()? as i32;
            }
            7 => {
                want(wt, FIXED64)?;
                s.start_ns = r.fixed64()?;
            }
            8 => {
                want(wt, FIXED64)?;
                s.end_ns = r.fixed64()?;
            }
            9 => {
                want(wt, LEN)?;
                s.attrs.push(key_value(r.bytes()?)?);
            }
            10 | 12 | 14 => {
                want(wt, VARINT)?;
                r.varint()?;
            }
            11 => {
                want(wt, LEN)?;
                event(r.bytes()?)?;
            }
            13 => {
                want(wt, LEN)?;
                link(r.bytes()?)?;
            }
            15 => {
                want(wt, LEN)?;
                status(r.bytes()?, &mut s)?;
            }
            16 => {
                want(wt, FIXED32)?;
                r.skip(FIXED32)?;
            }
            _ => r.skip(wt)?,
        }
    }
    Some(s)
}

/// A `Status`; a repeated status merges in prost (fields present later replace).
fn status<'a>(buf: &'a [u8], s: &mut SpanRef<'a>) -> Option<()> {
    let mut r = Reader::new(buf);
    while !r.done() {
        let (f, wt) = r.key()?;
        match f {
            2 => {
                want(wt, LEN)?;
                s.status_message = r.str()?;
            }
            3 => {
                want(wt, VARINT)?;
                s.status_code = r.varint()? as i32;
            }
            _ => r.skip(wt)?,
        }
    }
    Some(())
}

/// Checks a span event (`Span.Event`) as prost would; the mapping does not read events.
fn event(buf: &[u8]) -> Option<()> {
    let mut r = Reader::new(buf);
    while !r.done() {
        let (f, wt) = r.key()?;
        match f {
            1 => {
                want(wt, FIXED64)?;
                r.fixed64()?;
            }
            2 => {
                want(wt, LEN)?;
                r.str()?;
            }
            3 => {
                want(wt, LEN)?;
                key_value(r.bytes()?)?;
            }
            4 => {
                want(wt, VARINT)?;
                r.varint()?;
            }
            _ => r.skip(wt)?,
        }
    }
    Some(())
}

/// Checks a span link (`Span.Link`) as prost would; the mapping does not read links.
fn link(buf: &[u8]) -> Option<()> {
    let mut r = Reader::new(buf);
    while !r.done() {
        let (f, wt) = r.key()?;
        match f {
            1 | 2 => {
                want(wt, LEN)?;
                r.bytes()?;
            }
            3 => {
                want(wt, LEN)?;
                r.str()?;
            }
            4 => {
                want(wt, LEN)?;
                key_value(r.bytes()?)?;
            }
            5 => {
                want(wt, VARINT)?;
                r.varint()?;
            }
            6 => {
                want(wt, FIXED32)?;
                r.skip(FIXED32)?;
            }
            _ => r.skip(wt)?,
        }
    }
    Some(())
}

/// Trace bodies for tests: every GenAI capture's traces request as protobuf (the JSON ones
/// re-encoded), and a generated corpus ([`corpus`]).
#[cfg(test)]
pub(crate) mod testdata {
    use std::path::Path;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{
        ResourceSpans, ScopeSpans, Span, Status, span::Event, span::Link,
    };
    use prost::Message;

    use crate::otlp::decode::{Encoding, message};

    /// Every `*_traces.pb` / `*_traces.json` of `tests/data/genai/*/`, as protobuf.
    pub(crate) fn captures() -> Vec<(String, Vec<u8>)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/genai");
        let mut out = Vec::new();
        for scenario in std::fs::read_dir(&root).expect("captures") {
            let dir = scenario.expect("entry").path();
            if !dir.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&dir).expect("scenario") {
                let p = f.expect("entry").path();
                let name = p.display().to_string();
                let bytes = std::fs::read(&p).expect("read");
                if name.ends_with("_traces.pb") {
                    out.push((name, bytes));
                } else if name.ends_with("_traces.json") {
                    let req: ExportTraceServiceRequest =
                        message(&bytes, Encoding::Json).expect("capture decodes");
                    out.push((name, req.encode_to_vec()));
                }
            }
        }
        out.sort();
        assert!(out.len() >= 7, "trace captures found: {}", out.len());
        out
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    /// Every key the GenAI mapping reads, and some it does not.
    const KEYS: &[&str] = &[
        "gen_ai.operation.name",
        "llm.request.type",
        "gen_ai.provider.name",
        "gen_ai.system",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.prompt_tokens",
        "gen_ai.usage.completion_tokens",
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "error.type",
        "http.response.status_code",
        "url.path",
        "gen_ai.conversation.id",
        "session.id",
        "user.id",
        "enduser.id",
        "gen_ai.response.time_to_first_chunk",
        "gen_ai.request.stream",
        "gen_ai.response.id",
        "gen_ai.response.finish_reasons",
        "gen_ai.input.messages",
        "team.id",
        "server.address",
        "caf\u{e9}.key",
    ];

    const OPERATIONS: &[&str] = &[
        "chat",
        "text_completion",
        "completion",
        "generate_content",
        "embeddings",
        "embedding",
        "rerank",
        "invoke_agent",
        "execute_tool",
        "",
    ];

    const TEXTS: &[&str] = &[
        "openai",
        "anthropic",
        "gcp.gemini",
        "gpt-4o",
        "gpt-4o-2024-08-06",
        "RateLimitError",
        "<class 'openai.InternalServerError'>",
        "429",
        "12",
        "0.25",
        "true",
        "/v1/chat/completions",
        "search",
        "na\u{ef}ve \u{1f600}",
        "",
    ];

    fn value(rng: &mut Rng, depth: usize) -> Option<AnyValue> {
        let v = match rng.below(if depth > 1 { 8 } else { 11 }) {
            0 => return None,
            1 => None,
            2 | 3 => Some(Value::StringValue((*rng.pick(TEXTS)).into())),
            4 => Some(Value::StringValue("x".repeat(100 + rng.below(300)))),
            5 => Some(Value::IntValue(rng.next() as i64 >> rng.below(64))),
            6 => Some(Value::DoubleValue(
                [0.0, 0.25, -1.0, 1e300, f64::INFINITY][rng.below(5)],
            )),
            7 => Some(Value::BoolValue(rng.below(2) == 1)),
            8 => Some(Value::ArrayValue(ArrayValue {
                values: (0..rng.below(3))
                    .filter_map(|_| value(rng, depth + 1))
                    .collect(),
            })),
            9 => Some(Value::KvlistValue(KeyValueList {
                values: (0..rng.below(3)).map(|_| kv(rng, depth + 1)).collect(),
            })),
            _ => Some(Value::BytesValue(vec![0xff, 0, 7])),
        };
        Some(AnyValue { value: v })
    }

    fn kv(rng: &mut Rng, depth: usize) -> KeyValue {
        let key = *rng.pick(KEYS);
        let value = match key {
            "gen_ai.operation.name" | "llm.request.type" if rng.below(4) > 0 => Some(AnyValue {
                value: Some(Value::StringValue((*rng.pick(OPERATIONS)).into())),
            }),
            _ if key.contains("tokens") && rng.below(3) > 0 => Some(AnyValue {
                value: Some(Value::IntValue(rng.below(5000) as i64)),
            }),
            _ => value(rng, depth),
        };
        KeyValue {
            key: key.into(),
            value,
            ..Default::default()
        }
    }

    fn attrs(rng: &mut Rng, n: usize) -> Vec<KeyValue> {
        (0..n).map(|_| kv(rng, 0)).collect()
    }

    fn id(rng: &mut Rng, len: usize) -> Vec<u8> {
        match rng.below(8) {
            0 => Vec::new(),
            1 => vec![0; len],
            _ => (0..len).map(|_| rng.next() as u8).collect(),
        }
    }

    fn span(rng: &mut Rng, now_ns: u64) -> Span {
        let start = now_ns - rng.below(10_000) as u64 * 1_000_000;
        let mut attributes = vec![KeyValue {
            key: "gen_ai.operation.name".into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue((*rng.pick(OPERATIONS)).into())),
            }),
            ..Default::default()
        }];
        if rng.below(4) > 0 {
            attributes.push(KeyValue {
                key: "gen_ai.request.model".into(),
                value: Some(AnyValue {
                    value: Some(Value::StringValue((*rng.pick(TEXTS)).into())),
                }),
                ..Default::default()
            });
        }
        let n = rng.below(12);
        attributes.extend(attrs(rng, n));
        Span {
            trace_id: id(rng, 16),
            span_id: id(rng, 8),
            trace_state: if rng.below(4) == 0 {
                "k=v".into()
            } else {
                String::new()
            },
            parent_span_id: id(rng, 8),
            flags: rng.below(512) as u32,
            name: (*rng.pick(TEXTS)).into(),
            kind: rng.below(6) as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + rng.below(5_000) as u64 * 1_000_000,
            attributes,
            dropped_attributes_count: rng.below(3) as u32,
            events: (0..rng.below(3))
                .map(|_| Event {
                    time_unix_nano: start,
                    name: "gen_ai.content.completion".into(),
                    attributes: attrs(rng, 2),
                    dropped_attributes_count: 0,
                })
                .collect(),
            dropped_events_count: 0,
            links: (0..rng.below(2))
                .map(|_| Link {
                    trace_id: id(rng, 16),
                    span_id: id(rng, 8),
                    trace_state: String::new(),
                    attributes: attrs(rng, 1),
                    dropped_attributes_count: 0,
                    flags: 1,
                })
                .collect(),
            dropped_links_count: 0,
            status: match rng.below(4) {
                0 => None,
                1 => Some(Status {
                    code: 2,
                    message: "Error code: 429 - {'error': 'rate'}".into(),
                }),
                2 => Some(Status {
                    code: 2,
                    message: String::new(),
                }),
                _ => Some(Status {
                    code: rng.below(3) as i32,
                    message: String::new(),
                }),
            },
        }
    }

    /// `n` generated requests of GenAI-looking spans dated before `now_ns`: every attribute the
    /// mapping reads in every value kind, ids missing or zero, events, links, statuses,
    /// several resources and scopes.
    pub(crate) fn corpus(n: usize, now_ns: u64) -> Vec<Vec<u8>> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        (0..n)
            .map(|_| {
                let resource_spans = (0..1 + rng.below(2))
                    .map(|_| ResourceSpans {
                        resource: (rng.below(5) > 0).then(|| Resource {
                            attributes: {
                                let mut a = attrs(&mut rng, 2);
                                a.push(KeyValue {
                                    key: "service.name".into(),
                                    value: Some(AnyValue {
                                        value: Some(Value::StringValue("chat-app".into())),
                                    }),
                                    ..Default::default()
                                });
                                a
                            },
                            dropped_attributes_count: 0,
                            entity_refs: Vec::new(),
                        }),
                        scope_spans: (0..1 + rng.below(2))
                            .map(|_| ScopeSpans {
                                scope: (rng.below(4) > 0).then(|| InstrumentationScope {
                                    name: (*rng.pick(&[
                                        "opentelemetry.instrumentation.openai_v2",
                                        "openllmetry",
                                        "",
                                    ]))
                                    .into(),
                                    version: "1.0".into(),
                                    ..Default::default()
                                }),
                                spans: (0..rng.below(8)).map(|_| span(&mut rng, now_ns)).collect(),
                                schema_url: String::new(),
                            })
                            .collect(),
                        schema_url: "https://opentelemetry.io/schemas/1.37.0".into(),
                    })
                    .collect();
                ExportTraceServiceRequest { resource_spans }.encode_to_vec()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::testdata::{captures, corpus};
    use super::*;

    const NOW_NS: u64 = 1_795_460_000_000_000_000;

    /// Equal views; a flipped double may be a NaN, unequal to itself, so unequal views are
    /// compared again as Debug text.
    fn same(fast: &[ResourceSpansRef<'_>], slow: &[ResourceSpansRef<'_>], what: &str) {
        if fast != slow {
            assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{what}");
        }
    }

    #[test]
    fn the_fast_path_reads_every_capture_like_prost() {
        for (name, body) in captures() {
            let req = ExportTraceServiceRequest::decode(&body[..]).expect("prost");
            let fast = spans(&body).unwrap_or_else(|| panic!("{name}: the fast path declined"));
            assert_eq!(fast, spans_view(&req), "{name}");
            assert!(
                fast.iter()
                    .flat_map(|r| &r.scopes)
                    .any(|s| !s.spans.is_empty())
            );
        }
    }

    #[test]
    fn the_fast_path_reads_a_generated_corpus_like_prost() {
        let mut taken = 0;
        for body in corpus(300, NOW_NS) {
            let req = ExportTraceServiceRequest::decode(&body[..]).expect("prost");
            if let Some(fast) = spans(&body) {
                assert_eq!(fast, spans_view(&req));
                taken += 1;
            }
        }
        // Only nesting deeper than MAX_NESTING is declined; the corpus nests up to 2 levels.
        assert_eq!(taken, 300);
    }

    #[test]
    fn mutated_bodies_read_by_the_fast_path_read_the_same_with_prost() {
        // Byte changes (low bit and high bit flipped) over captures and the corpus: whatever the
        // fast path accepts, prost must accept too, with the same view.
        let mut bodies: Vec<Vec<u8>> = captures().into_iter().map(|(_, b)| b).collect();
        bodies.extend(corpus(15, NOW_NS));
        let mut accepted = 0;
        for body in bodies {
            let step = (body.len() / 1500).max(11);
            for i in (0..body.len()).step_by(step) {
                for flip in [0x01, 0x80] {
                    let mut m = body.clone();
                    m[i] ^= flip;
                    if let Some(fast) = spans(&m) {
                        let req = ExportTraceServiceRequest::decode(&m[..])
                            .unwrap_or_else(|e| panic!("byte {i} ^ {flip:#x}: prost: {e}"));
                        same(&fast, &spans_view(&req), &format!("byte {i} ^ {flip:#x}"));
                        accepted += 1;
                    }
                }
            }
        }
        assert!(accepted > 1000, "mutations accepted: {accepted}");
    }

    #[test]
    fn the_fast_path_never_accepts_what_prost_refuses() {
        // Truncations: where prost fails, the fast path must too; where both succeed, they
        // must agree.
        let mut bodies: Vec<Vec<u8>> = captures().into_iter().map(|(_, b)| b).collect();
        bodies.extend(corpus(20, NOW_NS));
        for body in bodies {
            let step = (body.len() / 2000).max(1);
            for cut in (0..body.len()).step_by(step) {
                let part = &body[..cut];
                let slow = ExportTraceServiceRequest::decode(part);
                match (spans(part), &slow) {
                    (Some(fast), Ok(req)) => {
                        same(&fast, &spans_view(req), &format!("cut at {cut}"))
                    }
                    (Some(_), Err(e)) => {
                        panic!("fast path accepted what prost refuses ({e}) at {cut}")
                    }
                    (None, _) => {}
                }
            }
        }
    }

    #[test]
    fn what_the_fast_path_does_not_check_goes_to_prost() {
        use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        let with_scope_attrs = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "s".into(),
                        attributes: vec![KeyValue {
                            key: "k".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    spans: vec![Span::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        assert!(spans(&with_scope_attrs).is_none());
        assert!(spans(br#"{"resourceSpans":[]}"#).is_none());
        assert_eq!(spans(b""), Some(vec![]));
    }

    #[test]
    fn a_repeated_status_or_scope_merges_as_in_prost() {
        // Span { status { code: 2 }, status { message: "m" } }, in a scope sent twice.
        let mut span = Vec::new();
        prost::encoding::bytes::encode(15, &vec![0x18, 2], &mut span);
        prost::encoding::bytes::encode(15, &vec![0x12, 1, b'm'], &mut span);
        let mut scope_spans = Vec::new();
        prost::encoding::bytes::encode(1, &vec![0x0a, 1, b'a'], &mut scope_spans);
        prost::encoding::bytes::encode(2, &span, &mut scope_spans);
        prost::encoding::bytes::encode(1, &vec![0x12, 1, b'v'], &mut scope_spans);
        let mut rs = Vec::new();
        prost::encoding::bytes::encode(2, &scope_spans, &mut rs);
        let mut body = Vec::new();
        prost::encoding::bytes::encode(1, &rs, &mut body);
        let fast = spans(&body).expect("taken");
        let req = ExportTraceServiceRequest::decode(&body[..]).expect("prost");
        assert_eq!(fast, spans_view(&req));
        let s = &fast[0].scopes[0];
        assert_eq!((s.scope, s.spans[0].status_code), ("a", 2));
        assert_eq!(s.spans[0].status_message, "m");
    }
}
