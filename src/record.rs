//! The request record (SPEC §2): the one type every source produces, and its validation.
//!
//! Sources hand JSON (or already-decoded values) to [`parse_event`]; what comes out is an
//! [`Event`] — a finished [`ValidRecord`] or a start marker — whose every field is typed and in
//! range. Errors name the field and the reason. No I/O and no clock reads here: the caller passes
//! the receive time in [`Validation`].

use std::fmt;

use compact_str::CompactString;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::price::PriceTable;
pub use crate::price::{TOKEN_TYPES, Tokens};

pub mod fields;
pub mod request;
mod scan;
pub mod scrub;

pub use request::StoredRequest;

/// A bounded label value (namespace, provider, model): short strings are stored inline.
pub type Label = CompactString;

/// Largest token count accepted in one bucket of one record.
pub const MAX_TOKENS: u64 = 100_000_000;
/// Largest duration accepted (one day), in milliseconds.
pub const MAX_DURATION_MS: u64 = 86_400_000;
/// [`MAX_DURATION_MS`] in microseconds: the range of the latency histograms.
pub const MAX_DURATION_US: u64 = MAX_DURATION_MS * 1000;
/// Largest cost accepted for one request, in USD.
pub const MAX_COST_USD: f64 = 100_000.0;
/// Earliest accepted timestamp: 2000-01-01T00:00:00Z in epoch milliseconds.
pub const MIN_TIMESTAMP_MS: i64 = 946_684_800_000;
/// How far in the future a timestamp may be (clock skew), in milliseconds.
pub const MAX_FUTURE_MS: i64 = 86_400_000;

const MAX_ID_LEN: usize = 256;
const MAX_ENDPOINT_LEN: usize = 2048;
const MAX_TEXT_LEN: usize = 4096;
const MAX_CHAIN: usize = 64;

/// Idempotency key of a record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(pub CompactString);

impl RequestId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A duration in milliseconds, kept to the microsecond: gateways send `duration_ms: 207.5`, and
/// the latency histograms record microseconds. Printed as an exact decimal (`207.5`, `12`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(u64);

impl Millis {
    /// `us` microseconds.
    pub const fn from_micros(us: u64) -> Self {
        Self(us)
    }

    /// `ms` whole milliseconds.
    pub const fn from_ms(ms: u64) -> Self {
        Self(ms.saturating_mul(1000))
    }

    /// The duration in microseconds.
    pub const fn micros(self) -> u64 {
        self.0
    }

    /// The duration rounded to the nearest whole millisecond (halves up): what the request
    /// log's integer `duration_ms` / `ttfb_ms` columns and the seed's `total_response_time`
    /// keep.
    pub const fn whole_ms(self) -> u64 {
        self.0.saturating_add(500) / 1000
    }

    /// Whether the duration is a whole number of milliseconds.
    pub const fn is_whole_ms(self) -> bool {
        self.0.is_multiple_of(1000)
    }

    /// The duration in milliseconds as a float (exact below 2^53 µs).
    pub fn as_ms_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ms, us) = (self.0 / 1000, self.0 % 1000);
        if us == 0 {
            return write!(f, "{ms}");
        }
        let frac = format!("{us:03}");
        write!(f, "{ms}.{}", frac.trim_end_matches('0'))
    }
}

/// Which API family a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiType {
    /// Anthropic Messages API.
    Claude,
    /// OpenAI-compatible chat/completions/embeddings.
    Openai,
    /// OpenAI Responses API (Codex).
    Codex,
    /// Google Gemini.
    Gemini,
    /// Anything else.
    Other,
}

impl ApiType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Claude => "claude",
            Self::Openai => "openai",
            Self::Codex => "codex",
            Self::Gemini => "gemini",
            Self::Other => "other",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "claude" => Self::Claude,
            "openai" => Self::Openai,
            "codex" => Self::Codex,
            "gemini" => Self::Gemini,
            "other" => Self::Other,
            _ => return None,
        })
    }

    /// Derives the API family from the request path.
    pub fn from_endpoint(endpoint: &str) -> Self {
        let path = endpoint.split('?').next().unwrap_or(endpoint);
        if path.ends_with("/messages") || path.contains("/messages/") {
            Self::Claude
        } else if path.ends_with("/responses") || path.contains("/responses/") {
            Self::Codex
        } else if path.contains(":generateContent")
            || path.contains(":streamGenerateContent")
            || path.contains("/v1beta/")
        {
            Self::Gemini
        } else if path.contains("/chat/completions")
            || path.ends_with("/completions")
            || path.ends_with("/embeddings")
        {
            Self::Openai
        } else {
            Self::Other
        }
    }
}

/// The GenAI semantic-convention operation name for an endpoint.
pub fn genai_operation(endpoint: &str) -> &'static str {
    if endpoint.contains("embed") {
        "embeddings"
    } else if endpoint.ends_with("/completions") && !endpoint.ends_with("/chat/completions") {
        "text_completion"
    } else if endpoint.contains("generateContent") {
        "generate_content"
    } else {
        "chat"
    }
}

/// Where a record's cost came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostSource {
    /// The record carried `cost_usd`.
    Reported,
    /// Computed from the price table.
    Priced,
    /// No cost and the model is not priced: cost 0, counted as unpriced.
    Unpriced,
}

impl CostSource {
    /// The stored and exported name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reported => "reported",
            Self::Priced => "priced",
            Self::Unpriced => "unpriced",
        }
    }

    /// The source named `s` ([`CostSource::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "reported" => Self::Reported,
            "priced" => Self::Priced,
            "unpriced" => Self::Unpriced,
            _ => return None,
        })
    }
}

/// A validated, finished gateway request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRecord {
    /// Idempotency key.
    pub request_id: Option<RequestId>,
    /// Request start, epoch milliseconds.
    pub timestamp_ms: i64,
    /// Tenant / app grouping.
    pub namespace: Label,
    /// Gateway instance that served it.
    pub instance: Option<Label>,
    /// Who made the request.
    pub user: Option<CompactString>,
    /// Stable user id.
    pub user_id: Option<CompactString>,
    /// Gateway API key name (never the secret).
    pub key: Option<CompactString>,
    /// Gateway API key id.
    pub key_id: Option<CompactString>,
    /// Upstream provider; empty when blocked before forwarding.
    pub provider: Label,
    /// Model actually used.
    pub model: Label,
    /// Model the client asked for, when redirected.
    pub original_model: Option<Label>,
    /// API path.
    pub endpoint: CompactString,
    /// API family.
    pub api_type: ApiType,
    /// HTTP method.
    pub method: CompactString,
    /// Final status code (0 = no response).
    pub status: u16,
    /// Total duration (milliseconds to the microsecond).
    pub duration_ms: Millis,
    /// Time to first byte/token (milliseconds to the microsecond).
    pub ttfb_ms: Option<Millis>,
    /// Tokens by bucket.
    pub tokens: Tokens,
    /// Cost in integer micro-USD.
    pub cost_micros: u64,
    /// Where the cost came from.
    pub cost_source: CostSource,
    /// Conversation / CLI session.
    pub session_id: Option<CompactString>,
    /// Provider switches.
    pub retry_count: u32,
    /// Providers tried, in order.
    pub provider_chain: Vec<CompactString>,
    /// Streaming response.
    pub is_streaming: bool,
    /// Error message or type.
    pub error: Option<CompactString>,
    /// Filter that blocked the request.
    pub blocked_by: Option<CompactString>,
    /// Why it was blocked.
    pub block_reason: Option<CompactString>,
    /// Client user agent.
    pub user_agent: Option<CompactString>,
    /// Client address.
    pub client_ip: Option<CompactString>,
    /// Messages in the conversation.
    pub messages_count: Option<u32>,
    /// Distributed trace id.
    pub trace_id: Option<CompactString>,
    /// Span id of the call.
    pub span_id: Option<CompactString>,
    /// The upstream provider's id of the request (not the idempotency key).
    pub provider_request_id: Option<CompactString>,
    /// A cost sent in another currency: the amount as sent (a plain decimal).
    pub cost_amount: Option<CompactString>,
    /// Its ISO 4217 currency code (`RMB` as `CNY`).
    pub currency: Option<Label>,
    /// The request's headers and body, redacted (`log_store.store_requests`; only with a
    /// `request_id`, which ties it to its row).
    pub request: Option<Box<StoredRequest>>,
}

/// What a batch of records weighs in a byte-sized queue ([`ValidRecord::approx_bytes`], summed).
pub fn approx_bytes(records: &[Box<ValidRecord>]) -> usize {
    records.iter().map(|r| r.approx_bytes()).sum()
}

impl ValidRecord {
    /// The memory a boxed record holds, in bytes (the struct, and the text too long to be kept
    /// inline): what byte-sized queues count.
    pub fn approx_bytes(&self) -> usize {
        let heap = |s: &str| if s.len() > 24 { s.len() } else { 0 };
        let opt = |s: &Option<CompactString>| s.as_deref().map_or(0, heap);
        let texts = [
            &self.user,
            &self.user_id,
            &self.key,
            &self.key_id,
            &self.session_id,
            &self.error,
            &self.blocked_by,
            &self.block_reason,
            &self.user_agent,
            &self.client_ip,
            &self.trace_id,
            &self.provider_request_id,
            &self.cost_amount,
            &self.original_model,
            &self.instance,
            &self.currency,
        ];
        std::mem::size_of::<Self>()
            + texts.iter().map(|t| opt(t)).sum::<usize>()
            + self.request_id.as_ref().map_or(0, |r| heap(r.as_str()))
            + heap(&self.namespace)
            + heap(&self.provider)
            + heap(&self.model)
            + heap(&self.endpoint)
            + heap(&self.method)
            + self.provider_chain.capacity() * std::mem::size_of::<CompactString>()
            + self.provider_chain.iter().map(|p| heap(p)).sum::<usize>()
    }

    /// 2xx and 3xx are successes; 4xx, 5xx and 0 (no response) are failures.
    pub fn is_success(&self) -> bool {
        is_success_status(self.status)
    }
}

/// Whether a final status counts as a success: 2xx and 3xx; 4xx, 5xx and 0 (no response) are
/// failures.
pub fn is_success_status(status: u16) -> bool {
    (200..400).contains(&status)
}

/// The first phase of a two-phase request: raises the namespace's concurrency gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartMarker {
    /// Id the final record will carry.
    pub request_id: RequestId,
    /// Namespace whose gauge it raises.
    pub namespace: Label,
    /// When the request started, epoch milliseconds.
    pub timestamp_ms: i64,
}

/// What one ingested JSON object means.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A request started (phase `start`).
    Start(StartMarker),
    /// A request finished.
    Finish(Box<ValidRecord>),
}

/// A record that could not be accepted: which field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// JSON path of the offending field (`(record)` for the object itself).
    pub field: String,
    /// Why it was rejected.
    pub message: String,
    /// Stable reason code for counting.
    pub reason: RejectReason,
}

label_enum! {
    /// Why a record was rejected (the `reason` label of the rejection counter).
    pub enum RejectReason {
        /// Not JSON, or not an object.
        Malformed = "malformed",
        /// A field has the wrong JSON type.
        WrongType = "wrong_type",
        /// A required field is absent.
        MissingField = "missing_field",
        /// A field is out of range or not allowed.
        InvalidValue = "invalid_value",
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl RecordError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            message: message.into(),
            reason: RejectReason::InvalidValue,
        }
    }

    fn missing(field: &str) -> Self {
        Self {
            field: field.to_string(),
            message: "is required".to_string(),
            reason: RejectReason::MissingField,
        }
    }

    /// A record whose JSON could not be read at all.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self {
            field: "(record)".to_string(),
            message: message.into(),
            reason: RejectReason::Malformed,
        }
    }
}

/// What validation needs from outside: the receive time, the price table and whether the
/// `request` object is kept.
#[derive(Debug, Clone, Copy)]
pub struct Validation<'a> {
    /// Receive time, epoch milliseconds.
    pub now_ms: i64,
    /// Prices for records without `cost_usd`.
    pub prices: &'a PriceTable,
    /// `Some(max_bytes)`: the `request` object of a record with a `request_id` is kept, redacted
    /// and cut to that many bytes of JSON ([`request::keep`]); `None`: it is skipped.
    pub keep_requests: Option<usize>,
}

/// A timestamp as sent: epoch milliseconds or RFC 3339 text.
#[derive(Debug)]
enum RawTime {
    Millis(f64),
    Text(CompactString),
}

impl<'de> Deserialize<'de> for RawTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawTime;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("epoch milliseconds or an RFC 3339 string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawTime, E> {
                Ok(RawTime::Millis(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawTime, E> {
                Ok(RawTime::Millis(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawTime, E> {
                Ok(RawTime::Millis(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawTime, E> {
                Ok(RawTime::Text(CompactString::from(v)))
            }
        }
        d.deserialize_any(V)
    }
}

/// A cost as sent: on the wire a JSON number or a decimal string in USD; from a source that
/// has it exact (OTLP read-back), integer micro-USD.
#[derive(Debug)]
enum RawCost {
    Usd(f64),
    Micros(u64),
}

impl<'de> Deserialize<'de> for RawCost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawCost;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a USD amount as a number or decimal string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawCost, E> {
                Ok(RawCost::Usd(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawCost, E> {
                Ok(RawCost::Usd(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawCost, E> {
                Ok(RawCost::Usd(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawCost, E> {
                v.trim()
                    .parse::<f64>()
                    .map(RawCost::Usd)
                    .map_err(|_| E::custom(format!("{v:?} is not a decimal number")))
            }
        }
        d.deserialize_any(V)
    }
}

/// An amount of money in some currency as sent: a JSON number or a decimal string, kept as
/// decimal text (a number as its shortest exact form, so `12.5` stays `12.5`) and converted
/// with integer arithmetic only ([`price::convert_micros`](crate::price::convert_micros)).
#[derive(Debug)]
struct RawAmount(CompactString);

impl<'de> Deserialize<'de> for RawAmount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawAmount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an amount as a number or decimal string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawAmount, E> {
                Ok(RawAmount(compact_str::format_compact!("{v}")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawAmount, E> {
                Ok(RawAmount(compact_str::format_compact!("{v}")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawAmount, E> {
                Ok(RawAmount(compact_str::format_compact!("{v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawAmount, E> {
                Ok(RawAmount(CompactString::from(v.trim())))
            }
        }
        d.deserialize_any(V)
    }
}

/// A map key, borrowed from the input when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The value of an unknown field: skipped, but through `deserialize_any`, so the JSON parser's
/// nesting limit (128) applies — serde's `IgnoredAny` would skip a 10,000-deep value silently.
struct Skipped;

impl<'de> Deserialize<'de> for Skipped {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skipped;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Skipped, E> {
                Ok(Skipped)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Skipped, A::Error> {
                while seq.next_element::<Skipped>()?.is_some() {}
                Ok(Skipped)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Skipped, A::Error> {
                while map.next_entry::<de::IgnoredAny, Skipped>()?.is_some() {}
                Ok(Skipped)
            }
        }
        d.deserialize_any(V)
    }
}

/// Declares the wire record: every field optional, unknown fields skipped (depth-limited).
macro_rules! raw_record {
    ($($field:ident: $ty:ty,)*) => {
        /// The record as it arrives on the wire.
        #[derive(Debug, Default)]
        struct RawRecord {
            $($field: Option<$ty>,)*
        }

        impl<'de> Deserialize<'de> for RawRecord {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = RawRecord;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a request record (JSON object)")
                    }
                    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawRecord, A::Error> {
                        let mut r = RawRecord::default();
                        while let Some(key) = map.next_key::<Key<'de>>()? {
                            match key.0.as_ref() {
                                $(stringify!($field) => r.$field = map.next_value()?,)*
                                _ => {
                                    map.next_value::<Skipped>()?;
                                }
                            }
                        }
                        Ok(r)
                    }
                }
                d.deserialize_map(V)
            }
        }

        /// A known field of the wire record.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[allow(non_camel_case_types)]
        enum Field {
            $($field,)*
        }

        impl Field {
            /// How many fields there are.
            const COUNT: usize = [$(stringify!($field)),*].len();

            /// The field called `key`, if any.
            fn of(key: &str) -> Option<Self> {
                match key {
                    $(stringify!($field) => Some(Self::$field),)*
                    _ => None,
                }
            }
        }

        impl RawRecord {
            /// Reads the value of field `f` with the fast scanner; `None` when it gives up.
            #[inline]
            fn scan_field(&mut self, f: Field, s: &mut scan::Scanner<'_>) -> Option<()> {
                match f {
                    $(Field::$field => self.$field = <$ty as scan::Scan>::scan(s)?,)*
                }
                Some(())
            }
        }
    };
}

raw_record! {
    phase: CompactString,
    request_id: CompactString,
    timestamp: RawTime,
    namespace: CompactString,
    instance: CompactString,
    user: CompactString,
    user_id: CompactString,
    key: CompactString,
    key_id: CompactString,
    provider: CompactString,
    model: CompactString,
    original_model: CompactString,
    endpoint: CompactString,
    api_type: CompactString,
    method: CompactString,
    status: u16,
    duration_ms: f64,
    ttfb_ms: f64,
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_5m_tokens: u64,
    cache_creation_1h_tokens: u64,
    cache_read_tokens: u64,
    cost_usd: RawCost,
    session_id: CompactString,
    retry_count: u32,
    provider_chain: Vec<CompactString>,
    is_streaming: bool,
    error: CompactString,
    blocked_by: CompactString,
    block_reason: CompactString,
    user_agent: CompactString,
    client_ip: CompactString,
    messages_count: u32,
    trace_id: CompactString,
    span_id: CompactString,
    provider_request_id: CompactString,
    cost: RawAmount,
    currency: CompactString,
    request: serde_json::Value,
}

/// The fast path's reading of `json` and serde's, both as `Debug` text, when the fast path
/// reads it at all: the differential check of `record/scan.rs`'s tests and of the fuzz target
/// `fuzz/record_fast_path` (built with `--cfg fuzzing`).
#[cfg(any(test, fuzzing))]
pub fn fast_and_serde(json: &str) -> Option<(String, Option<String>)> {
    let fast = scan::object(json)?;
    let serde = serde_json::from_str::<RawRecord>(json).ok();
    Some((format!("{fast:?}"), serde.map(|r| format!("{r:?}"))))
}

/// Parses and validates one JSON object.
pub fn parse_event(json: &str, v: &Validation<'_>) -> Result<Event, RecordError> {
    if let Some(raw) = scan::object(json) {
        return raw.validate(v, Source::Scanner);
    }
    let raw: RawRecord = match serde_json::from_str(json) {
        Ok(raw) => raw,
        Err(e) => return Err(locate_error(json, e)),
    };
    raw.validate(v, Source::Other)
}

/// Parses a JSON array of records in one pass, validating each. Returns `None` when any
/// element fails to *deserialize* (wrong type, bad syntax): the caller then falls back to
/// per-element parsing to report each failure with its index.
pub fn parse_array(json: &str, v: &Validation<'_>) -> Option<Vec<Result<Event, RecordError>>> {
    let mut out = Vec::new();
    if scan::array(json, |raw| out.push(raw.validate(v, Source::Scanner))).is_some() {
        return Some(out);
    }
    struct Batch<'a, 'b>(&'a Validation<'b>);
    impl<'de> de::DeserializeSeed<'de> for Batch<'_, '_> {
        type Value = Vec<Result<Event, RecordError>>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Batch<'_, '_> {
        type Value = Vec<Result<Event, RecordError>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of records")
        }
        // Each element is validated as soon as it is read: no intermediate Vec of raw records.
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(16).min(4096));
            while let Some(raw) = seq.next_element::<RawRecord>()? {
                out.push(raw.validate(self.0, Source::Other));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let out = de::DeserializeSeed::deserialize(Batch(v), &mut de).ok()?;
    de.end().ok()?;
    Some(out)
}

/// Re-reads a record that failed to deserialize, to name the field that failed (cold path).
fn locate_error(json: &str, first: serde_json::Error) -> RecordError {
    let mut de = serde_json::Deserializer::from_str(json);
    let (field, err) = match serde_path_to_error::deserialize::<_, RawRecord>(&mut de) {
        Ok(_) => (String::new(), first),
        Err(e) => (e.path().to_string(), e.into_inner()),
    };
    let reason = match err.classify() {
        serde_json::error::Category::Data => RejectReason::WrongType,
        _ => RejectReason::Malformed,
    };
    let message = strip_position(&err.to_string());
    // Syntax errors deep inside a value are reported at the top-level field that holds them.
    let field = if reason == RejectReason::Malformed {
        field.split(['[', '.']).next().unwrap_or("").to_string()
    } else {
        field
    };
    let field = if field.is_empty() || field == "." {
        "(record)".to_string()
    } else {
        field
    };
    let message = if reason == RejectReason::Malformed {
        format!("invalid JSON: {message}")
    } else {
        message
    };
    RecordError {
        field,
        message,
        reason,
    }
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Which parser produced a [`RawRecord`]: the scanner has already refused control characters
/// in every string (see `scan::STOP`), so its ids need no second look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The fast scanner: no control character in any string.
    Scanner,
    /// Any other producer (serde, OTLP mapping): strings not yet checked.
    Other,
}

#[inline]
fn id_field(
    field: &str,
    v: Option<CompactString>,
    source: Source,
) -> Result<Option<CompactString>, RecordError> {
    match v {
        // C0 controls and DEL; a byte scan (multi-byte UTF-8 never contains these bytes), a fold
        // without early exit so that it vectorises (ids are short; most have none).
        Some(s)
            if s.len() > MAX_ID_LEN
                || (source == Source::Other
                    && s.bytes()
                        .fold(false, |bad, b| bad | (b < 0x20) | (b == 0x7f))) =>
        {
            Err(id_error(field, &s))
        }
        Some(s) if s.is_empty() => Ok(None),
        v => Ok(v),
    }
}

/// Why [`id_field`] refused `s` (kept out of line: the hot path never builds a message).
#[cold]
fn id_error(field: &str, s: &str) -> RecordError {
    if s.len() > MAX_ID_LEN {
        RecordError::invalid(
            field,
            format!("is {} bytes long; the limit is {MAX_ID_LEN}", s.len()),
        )
    } else {
        RecordError::invalid(field, "contains control characters")
    }
}

/// `s` with its secret-looking values redacted ([`scrub`]); `s` itself (not copied) when it has
/// none.
#[inline]
fn secret_free(s: CompactString) -> CompactString {
    match scrub::scrub(&s) {
        Some(t) => CompactString::from(t),
        None => s,
    }
}

/// Free text is scrubbed of secrets ([`scrub`]), then truncated (at a character boundary) rather
/// than rejected: losing a whole record because an upstream error message is long would be worse
/// than losing its tail. Scrubbing comes first, so a cut never leaves half a key unrecognised.
fn text_field(v: Option<CompactString>, limit: usize) -> Option<CompactString> {
    let s = secret_free(v?);
    if s.is_empty() {
        return None;
    }
    if s.len() <= limit {
        return Some(s);
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut t = CompactString::from(&s[..end]);
    t.push('…');
    Some(t)
}

/// An IP address (v4 or v6), or a socket address (`1.2.3.4:5678`, `[::1]:80`), kept as sent.
fn ip_field(v: Option<CompactString>) -> Result<Option<CompactString>, RecordError> {
    match v {
        Some(s)
            if s.parse::<std::net::IpAddr>().is_err()
                && s.parse::<std::net::SocketAddr>().is_err() =>
        {
            Err(RecordError::invalid(
                "client_ip",
                format!("{s:?} is not an IP address"),
            ))
        }
        v => Ok(v),
    }
}

#[inline]
fn tokens_field(field: &str, v: Option<u64>) -> Result<u64, RecordError> {
    let n = v.unwrap_or(0);
    if n > MAX_TOKENS {
        return Err(tokens_error(field, n));
    }
    Ok(n)
}

#[cold]
fn tokens_error(field: &str, n: u64) -> RecordError {
    RecordError::invalid(
        field,
        format!("{n} exceeds the limit of {MAX_TOKENS} tokens per request"),
    )
}

/// A duration in milliseconds as sent (a whole or decimal number), to the nearest microsecond.
#[inline]
fn millis_field(field: &str, ms: f64) -> Result<Millis, RecordError> {
    if !(0.0..=MAX_DURATION_MS as f64).contains(&ms) {
        return Err(millis_error(field, ms));
    }
    Ok(Millis((ms * 1000.0).round() as u64))
}

#[cold]
fn millis_error(field: &str, ms: f64) -> RecordError {
    if ms < 0.0 {
        RecordError::invalid(field, format!("{ms} is negative"))
    } else {
        RecordError::invalid(
            field,
            format!("{ms} exceeds the limit of {MAX_DURATION_MS} (one day)"),
        )
    }
}

fn timestamp(raw: Option<RawTime>, now_ms: i64) -> Result<i64, RecordError> {
    let ms = match raw {
        None => return Ok(now_ms),
        Some(RawTime::Millis(f)) => {
            if !f.is_finite() || f.fract() != 0.0 {
                return Err(RecordError::invalid(
                    "timestamp",
                    "epoch milliseconds must be a whole number",
                ));
            }
            f as i64
        }
        Some(RawTime::Text(s)) => {
            let t = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    RecordError::invalid("timestamp", format!("{s:?} is not RFC 3339: {e}"))
                })?;
            (t.unix_timestamp_nanos() / 1_000_000) as i64
        }
    };
    if ms < MIN_TIMESTAMP_MS {
        let hint = if ms > 0 && ms < 100_000_000_000 {
            " (it looks like seconds; send milliseconds)"
        } else {
            ""
        };
        return Err(RecordError::invalid(
            "timestamp",
            format!("{ms} is before 2000-01-01{hint}"),
        ));
    }
    if ms > now_ms + MAX_FUTURE_MS {
        return Err(RecordError::invalid(
            "timestamp",
            format!("{ms} is more than a day in the future"),
        ));
    }
    Ok(ms)
}

impl RawRecord {
    fn validate(self, v: &Validation<'_>, source: Source) -> Result<Event, RecordError> {
        let id_field = |field: &str, value| id_field(field, value, source);
        let request_id = id_field("request_id", self.request_id)?.map(RequestId);
        let namespace =
            id_field("namespace", self.namespace)?.unwrap_or_else(|| Label::const_new("default"));
        let timestamp_ms = timestamp(self.timestamp, v.now_ms)?;
        match self.phase.as_deref() {
            None | Some("end") | Some("final") => {}
            Some("start") => {
                let request_id = request_id.ok_or_else(|| RecordError {
                    field: "request_id".into(),
                    message: "is required with phase \"start\"".into(),
                    reason: RejectReason::MissingField,
                })?;
                return Ok(Event::Start(StartMarker {
                    request_id,
                    namespace,
                    timestamp_ms,
                }));
            }
            Some(other) => {
                return Err(RecordError::invalid(
                    "phase",
                    format!("{other:?} is not one of \"start\", \"end\""),
                ));
            }
        }

        let model = id_field("model", self.model)?.ok_or_else(|| RecordError::missing("model"))?;
        let status = self.status.ok_or_else(|| RecordError::missing("status"))?;
        if status != 0 && !(100..=599).contains(&status) {
            return Err(RecordError::invalid(
                "status",
                format!("{status} is not 0 or an HTTP status 100-599"),
            ));
        }
        let duration_ms = millis_field(
            "duration_ms",
            self.duration_ms
                .ok_or_else(|| RecordError::missing("duration_ms"))?,
        )?;
        let ttfb_ms = self
            .ttfb_ms
            .map(|t| millis_field("ttfb_ms", t))
            .transpose()?;
        if let Some(t) = ttfb_ms
            && t > duration_ms
        {
            return Err(RecordError::invalid(
                "ttfb_ms",
                format!("{t} exceeds duration_ms ({duration_ms})"),
            ));
        }
        let tokens = Tokens {
            input: tokens_field("input_tokens", self.input_tokens)?,
            output: tokens_field("output_tokens", self.output_tokens)?,
            cache_write_5m: tokens_field(
                "cache_creation_5m_tokens",
                self.cache_creation_5m_tokens,
            )?,
            cache_write_1h: tokens_field(
                "cache_creation_1h_tokens",
                self.cache_creation_1h_tokens,
            )?,
            cache_read: tokens_field("cache_read_tokens", self.cache_read_tokens)?,
        };
        let provider = id_field("provider", self.provider)?.unwrap_or_default();
        let endpoint = match self.endpoint {
            Some(e) if e.len() > MAX_ENDPOINT_LEN => {
                return Err(RecordError::invalid(
                    "endpoint",
                    format!("is {} bytes long; the limit is {MAX_ENDPOINT_LEN}", e.len()),
                ));
            }
            // Keys travel in the query (`?key=…`); a bare path is a route: not scanned.
            Some(e) if memchr::memchr(b'?', e.as_bytes()).is_some() => secret_free(e),
            Some(e) => e,
            None => CompactString::default(),
        };
        let api_type = match self.api_type.as_deref() {
            None | Some("") => ApiType::from_endpoint(&endpoint),
            Some(s) => ApiType::parse(s).ok_or_else(|| {
                RecordError::invalid(
                    "api_type",
                    format!("{s:?} is not one of claude, openai, codex, gemini, other"),
                )
            })?,
        };
        let method = match id_field("method", self.method)? {
            None => CompactString::const_new("POST"),
            Some(m) if m.len() <= 16 && m.bytes().all(|b| b.is_ascii_alphabetic()) => {
                m.to_ascii_uppercase()
            }
            Some(m) => {
                return Err(RecordError::invalid(
                    "method",
                    format!("{m:?} is not an HTTP method"),
                ));
            }
        };
        let currency = self
            .currency
            .map(|c| {
                crate::price::currency_code(&c)
                    .map(Label::from)
                    .ok_or_else(|| {
                        RecordError::invalid(
                            "currency",
                            format!("{c:?} is not an ISO 4217 code like CNY or EUR"),
                        )
                    })
            })
            .transpose()?;
        let (cost_amount, converted) = match (self.cost, &currency) {
            (None, None) => (None, None),
            (None, Some(_)) => return Err(RecordError::missing("cost")),
            (Some(_), None) => return Err(RecordError::missing("currency")),
            (Some(RawAmount(amount)), Some(cur)) => {
                let micros = v
                    .prices
                    .convert_micros(&amount, cur)
                    .map_err(|(field, m)| RecordError::invalid(field, m))?;
                if micros > (MAX_COST_USD * 1e6) as u64 {
                    return Err(RecordError::invalid(
                        "cost",
                        format!("{amount} {cur} exceeds {MAX_COST_USD} USD"),
                    ));
                }
                (Some(amount), Some(micros))
            }
        };
        let (cost_micros, cost_source) = match (self.cost_usd, converted) {
            // Read back from another gatemeter: the converted cost travels exact.
            (Some(RawCost::Micros(m)), _) if cost_amount.is_some() => (m, CostSource::Reported),
            (Some(_), Some(_)) => {
                return Err(RecordError::invalid(
                    "cost",
                    "send cost_usd, or cost with currency; not both",
                ));
            }
            (None, Some(m)) => (m, CostSource::Reported),
            (cost_usd, None) => match cost_usd {
                Some(RawCost::Micros(m)) => {
                    if m as f64 > MAX_COST_USD * 1_000_000.0 {
                        return Err(RecordError::invalid(
                            "cost_usd",
                            format!("{m} micro-USD exceeds {MAX_COST_USD} USD"),
                        ));
                    }
                    (m, CostSource::Reported)
                }
                Some(RawCost::Usd(usd)) => {
                    if !usd.is_finite() || !(0.0..=MAX_COST_USD).contains(&usd) {
                        return Err(RecordError::invalid(
                            "cost_usd",
                            format!("{usd} is not an amount between 0 and {MAX_COST_USD} USD"),
                        ));
                    }
                    ((usd * 1_000_000.0).round() as u64, CostSource::Reported)
                }
                None => match v.prices.cost_micros(&provider, &model, &tokens) {
                    Some(c) => (c, CostSource::Priced),
                    None => (0, CostSource::Unpriced),
                },
            },
        };
        let retry_count = self.retry_count.unwrap_or(0);
        if retry_count > 1000 {
            return Err(RecordError::invalid(
                "retry_count",
                format!("{retry_count} exceeds the limit of 1000"),
            ));
        }
        let provider_chain = self.provider_chain.unwrap_or_default();
        if provider_chain.len() > MAX_CHAIN {
            return Err(RecordError::invalid(
                "provider_chain",
                format!(
                    "has {} entries; the limit is {MAX_CHAIN}",
                    provider_chain.len()
                ),
            ));
        }
        for (i, p) in provider_chain.iter().enumerate() {
            if p.len() > MAX_ID_LEN {
                return Err(RecordError::invalid(
                    &format!("provider_chain[{i}]"),
                    "is too long",
                ));
            }
        }
        let request = match (self.request, v.keep_requests, &request_id) {
            (Some(r), Some(max), Some(_)) => request::keep(r, max).map(Box::new),
            _ => None,
        };
        Ok(Event::Finish(Box::new(ValidRecord {
            request_id,
            timestamp_ms,
            namespace,
            instance: id_field("instance", self.instance)?,
            user: id_field("user", self.user)?,
            user_id: id_field("user_id", self.user_id)?,
            key: id_field("key", self.key)?,
            key_id: id_field("key_id", self.key_id)?,
            provider,
            model,
            original_model: id_field("original_model", self.original_model)?,
            endpoint,
            api_type,
            method,
            status,
            duration_ms,
            ttfb_ms,
            tokens,
            cost_micros,
            cost_source,
            session_id: id_field("session_id", self.session_id)?,
            retry_count,
            provider_chain,
            is_streaming: self.is_streaming.unwrap_or(false),
            error: text_field(self.error, MAX_TEXT_LEN),
            blocked_by: id_field("blocked_by", self.blocked_by)?,
            block_reason: text_field(self.block_reason, MAX_TEXT_LEN),
            user_agent: text_field(self.user_agent, 1024),
            client_ip: ip_field(id_field("client_ip", self.client_ip)?)?,
            messages_count: self.messages_count,
            trace_id: id_field("trace_id", self.trace_id)?,
            span_id: id_field("span_id", self.span_id)?,
            request,
            provider_request_id: id_field("provider_request_id", self.provider_request_id)?,
            cost_amount,
            currency,
        })))
    }
}

/// A record assembled field by field by a source that does not speak the JSON record (OTLP
/// events). It has the JSON record's fields and goes through the very same validation, so no
/// source bypasses it; `timestamp_ms` is epoch milliseconds and `cost_usd` a USD amount.
#[derive(Debug, Default, Clone)]
pub struct RecordFields {
    /// `request_id`.
    pub request_id: Option<CompactString>,
    /// `timestamp`, epoch milliseconds.
    pub timestamp_ms: Option<i64>,
    /// `namespace`.
    pub namespace: Option<CompactString>,
    /// `instance`.
    pub instance: Option<CompactString>,
    /// `user`.
    pub user: Option<CompactString>,
    /// `user_id`.
    pub user_id: Option<CompactString>,
    /// `key`.
    pub key: Option<CompactString>,
    /// `key_id`.
    pub key_id: Option<CompactString>,
    /// `provider`.
    pub provider: Option<CompactString>,
    /// `model`.
    pub model: Option<CompactString>,
    /// `original_model`.
    pub original_model: Option<CompactString>,
    /// `endpoint`.
    pub endpoint: Option<CompactString>,
    /// `api_type`.
    pub api_type: Option<CompactString>,
    /// `method`.
    pub method: Option<CompactString>,
    /// `status`.
    pub status: Option<u16>,
    /// `duration_ms` (decimals kept to the microsecond).
    pub duration_ms: Option<f64>,
    /// `ttfb_ms` (decimals kept to the microsecond).
    pub ttfb_ms: Option<f64>,
    /// `input_tokens`.
    pub input_tokens: Option<u64>,
    /// `output_tokens`.
    pub output_tokens: Option<u64>,
    /// `cache_creation_5m_tokens`.
    pub cache_creation_5m_tokens: Option<u64>,
    /// `cache_creation_1h_tokens`.
    pub cache_creation_1h_tokens: Option<u64>,
    /// `cache_read_tokens`.
    pub cache_read_tokens: Option<u64>,
    /// `cost_usd`.
    pub cost_usd: Option<f64>,
    /// The cost in exact integer micro-USD; wins over `cost_usd`.
    pub cost_micros: Option<u64>,
    /// Where a given cost came from (a record read back from another gatemeter); without it, a
    /// given cost is `reported`.
    pub cost_source: Option<CostSource>,
    /// `session_id`.
    pub session_id: Option<CompactString>,
    /// `retry_count`.
    pub retry_count: Option<u32>,
    /// `provider_chain`.
    pub provider_chain: Option<Vec<CompactString>>,
    /// `is_streaming`.
    pub is_streaming: Option<bool>,
    /// `error`.
    pub error: Option<CompactString>,
    /// `blocked_by`.
    pub blocked_by: Option<CompactString>,
    /// `block_reason`.
    pub block_reason: Option<CompactString>,
    /// `user_agent`.
    pub user_agent: Option<CompactString>,
    /// `client_ip`.
    pub client_ip: Option<CompactString>,
    /// `messages_count`.
    pub messages_count: Option<u32>,
    /// `trace_id`.
    pub trace_id: Option<CompactString>,
    /// `span_id`.
    pub span_id: Option<CompactString>,
    /// `provider_request_id`.
    pub provider_request_id: Option<CompactString>,
    /// `cost`: an amount in `currency`, as decimal text.
    pub cost: Option<CompactString>,
    /// `currency`.
    pub currency: Option<CompactString>,
    /// `request` (headers and body; kept only as [`Validation::keep_requests`] says).
    pub request: Option<serde_json::Value>,
}

impl RecordFields {
    /// Validates exactly like a JSON record (a finished one: there is no phase).
    pub fn validate(self, v: &Validation<'_>) -> Result<Box<ValidRecord>, RecordError> {
        let raw = RawRecord {
            phase: None,
            request_id: self.request_id,
            timestamp: self.timestamp_ms.map(|ms| RawTime::Millis(ms as f64)),
            namespace: self.namespace,
            instance: self.instance,
            user: self.user,
            user_id: self.user_id,
            key: self.key,
            key_id: self.key_id,
            provider: self.provider,
            model: self.model,
            original_model: self.original_model,
            endpoint: self.endpoint,
            api_type: self.api_type,
            method: self.method,
            status: self.status,
            duration_ms: self.duration_ms,
            ttfb_ms: self.ttfb_ms,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_creation_5m_tokens: self.cache_creation_5m_tokens,
            cache_creation_1h_tokens: self.cache_creation_1h_tokens,
            cache_read_tokens: self.cache_read_tokens,
            cost_usd: self
                .cost_micros
                .map(RawCost::Micros)
                .or(self.cost_usd.map(RawCost::Usd)),
            session_id: self.session_id,
            retry_count: self.retry_count,
            provider_chain: self.provider_chain,
            is_streaming: self.is_streaming,
            error: self.error,
            blocked_by: self.blocked_by,
            block_reason: self.block_reason,
            user_agent: self.user_agent,
            client_ip: self.client_ip,
            messages_count: self.messages_count,
            trace_id: self.trace_id,
            span_id: self.span_id,
            request: self.request,
            provider_request_id: self.provider_request_id,
            cost: self.cost.map(RawAmount),
            currency: self.currency,
        };
        let cost_given = self.cost_micros.is_some() || self.cost_usd.is_some();
        match raw.validate(v, Source::Other)? {
            Event::Finish(mut r) => {
                if let (true, Some(source)) = (cost_given, self.cost_source) {
                    r.cost_source = source;
                }
                Ok(r)
            }
            Event::Start(_) => Err(RecordError::malformed("not a finished record")),
        }
    }
}

/// A valid finished record from `json` (panics otherwise), for other modules' unit tests.
#[cfg(test)]
pub(crate) fn test_record(json: &str, now_ms: i64) -> Box<ValidRecord> {
    let prices = PriceTable::default();
    let v = Validation {
        now_ms,
        prices: &prices,
        keep_requests: None,
    };
    match parse_event(json, &v) {
        Ok(Event::Finish(r)) => r,
        other => panic!("expected a finished record, got {other:?}"),
    }
}

/// A JSON record with every wire field set to a value of its own, for the tests that check a
/// shape of the record against its field table.
#[cfg(test)]
pub(crate) const TEST_FULL_JSON: &str = r#"{"request_id": "r-1", "timestamp": 1700000000000,
    "namespace": "ns", "instance": "i-1", "user": "ann", "user_id": "u-1", "key": "ci",
    "key_id": "k-1", "provider": "p", "model": "m", "original_model": "om",
    "endpoint": "/v1/messages", "api_type": "claude", "method": "PUT", "status": 201,
    "duration_ms": 900, "ttfb_ms": 80, "input_tokens": 11, "output_tokens": 12,
    "cache_creation_5m_tokens": 13, "cache_creation_1h_tokens": 14, "cache_read_tokens": 15,
    "cost": "1.5", "currency": "USD", "session_id": "s-1", "retry_count": 3, "provider_chain": ["a", "b\"c"],
    "is_streaming": true, "error": "e", "blocked_by": "f", "block_reason": "w",
    "user_agent": "ua", "client_ip": "10.0.0.1", "messages_count": 7, "trace_id": "t-1",
    "span_id": "s-1", "provider_request_id": "req_1"}"#;

/// [`TEST_FULL_JSON`] validated.
#[cfg(test)]
pub(crate) fn test_full_record() -> Box<ValidRecord> {
    test_record(TEST_FULL_JSON, 1_700_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_760_000_000_000;

    fn parse(json: &str) -> Result<Event, RecordError> {
        let prices = PriceTable::default();
        parse_event(
            json,
            &Validation {
                now_ms: NOW,
                prices: &prices,
                keep_requests: None,
            },
        )
    }

    fn finish(json: &str) -> ValidRecord {
        match parse(json) {
            Ok(Event::Finish(r)) => *r,
            other => panic!("expected a finished record, got {other:?}"),
        }
    }

    #[test]
    fn minimal_record_gets_defaults() {
        let r = finish(r#"{"model":"m","status":200,"duration_ms":5}"#);
        assert_eq!(r.namespace, "default");
        assert_eq!(r.timestamp_ms, NOW);
        assert_eq!(r.method, "POST");
        assert_eq!(r.api_type, ApiType::Other);
        assert_eq!(r.cost_source, CostSource::Unpriced);
        assert!(r.is_success());
    }

    #[test]
    fn full_record() {
        let r = finish(
            r#"{"request_id":"r1","timestamp":"2025-10-09T08:53:20.5Z","namespace":"team-a","provider":"anthropic",
            "model":"claude-sonnet-4-5","endpoint":"/v1/messages","method":"post","status":529,"duration_ms":1200,
            "ttfb_ms":300,"input_tokens":10,"output_tokens":20,"cache_creation_5m_tokens":1,"cache_creation_1h_tokens":2,
            "cache_read_tokens":3,"cost_usd":"0.001234","provider_chain":["a","b"],"retry_count":1,"is_streaming":true,
            "unknown":{"deep":[1,2,3]}}"#,
        );
        assert_eq!(r.timestamp_ms, NOW + 500);
        assert_eq!(r.api_type, ApiType::Claude);
        assert_eq!(r.method, "POST");
        assert_eq!(r.cost_micros, 1234);
        assert_eq!(r.cost_source, CostSource::Reported);
        assert_eq!(r.tokens.as_array(), [10, 20, 1, 2, 3]);
        assert!(!r.is_success());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"model":"m","status":200,"duration_ms":5,"input_tokens":-3}"#,
                "input_tokens",
                RejectReason::WrongType,
            ),
            (
                r#"{"model":"m","status":200,"duration_ms":5,"input_tokens":"many"}"#,
                "input_tokens",
                RejectReason::WrongType,
            ),
            (
                r#"{"model":"m","status":200,"duration_ms":5,"output_tokens":1000000000000}"#,
                "output_tokens",
                RejectReason::InvalidValue,
            ),
            (
                r#"{"model":"m","status":200}"#,
                "duration_ms",
                RejectReason::MissingField,
            ),
            (
                r#"{"status":200,"duration_ms":1}"#,
                "model",
                RejectReason::MissingField,
            ),
            (
                r#"{"model":"m","status":999,"duration_ms":1}"#,
                "status",
                RejectReason::InvalidValue,
            ),
            (
                r#"{"model":"m","status":200,"duration_ms":1,"timestamp":1700000000}"#,
                "timestamp",
                RejectReason::InvalidValue,
            ),
            (
                r#"{"model":"m","status":200,"duration_ms":10,"ttfb_ms":11}"#,
                "ttfb_ms",
                RejectReason::InvalidValue,
            ),
            (
                r#"{"model":"m","status":200,"duration_ms":1,"cost_usd":-1}"#,
                "cost_usd",
                RejectReason::InvalidValue,
            ),
            (
                r#"{"model":"m","status":200,"duration_ms":1,"provider_chain":["a",5]}"#,
                "provider_chain[1]",
                RejectReason::WrongType,
            ),
            (
                r#"{"phase":"start"}"#,
                "request_id",
                RejectReason::MissingField,
            ),
            (
                r#"{"phase":"middle","request_id":"x"}"#,
                "phase",
                RejectReason::InvalidValue,
            ),
            (r#"[1,2]"#, "(record)", RejectReason::WrongType),
            (r#"{"model": "#, "model", RejectReason::Malformed),
            (r#"{"model"  "#, "(record)", RejectReason::Malformed),
        ];
        for (json, field, reason) in cases {
            let err = parse(json).expect_err(json);
            assert_eq!(err.field, field, "{json}: {err}");
            assert_eq!(err.reason, reason, "{json}: {err}");
            assert!(!err.message.contains("line 1"), "{}", err.message);
        }
    }

    /// `duration_ms` / `ttfb_ms` take decimals to the microsecond, whichever parser reads
    /// them; a string, a negative or an over-long duration is refused with the field named.
    #[test]
    fn fractional_milliseconds_are_kept_to_the_microsecond() {
        // The scanner reads the first; the escape sends the second to serde.
        for extra in ["", r#","user":"\u0041""#] {
            let r = finish(&format!(
                r#"{{"model":"m","status":200,"duration_ms":207.5,"ttfb_ms":0.0125{extra}}}"#
            ));
            assert_eq!(r.duration_ms, Millis::from_micros(207_500));
            assert_eq!(
                r.ttfb_ms,
                Some(Millis::from_micros(13)),
                "rounded to the µs"
            );
            assert_eq!(r.duration_ms.whole_ms(), 208);
            assert_eq!(r.duration_ms.to_string(), "207.5");
        }
        let r = finish(r#"{"model":"m","status":200,"duration_ms":1e3,"ttfb_ms":999.999}"#);
        assert_eq!(r.duration_ms, Millis::from_ms(1000));
        assert_eq!(r.duration_ms.to_string(), "1000");
        assert_eq!(r.ttfb_ms.map(|t| t.to_string()), Some("999.999".into()));
        for (json, reason) in [
            (
                r#"{"model":"m","status":200,"duration_ms":"207.5"}"#,
                RejectReason::WrongType,
            ),
            (
                r#"{"model":"m","status":200,"duration_ms":-0.5}"#,
                RejectReason::InvalidValue,
            ),
            (
                r#"{"model":"m","status":200,"duration_ms":86400000.001}"#,
                RejectReason::InvalidValue,
            ),
        ] {
            let err = parse(json).expect_err(json);
            assert_eq!(
                (err.field.as_str(), err.reason),
                ("duration_ms", reason),
                "{json}"
            );
        }
        let err = parse(r#"{"model":"m","status":200,"duration_ms":10,"ttfb_ms":10.001}"#)
            .expect_err("ttfb above duration");
        assert_eq!(err.field, "ttfb_ms");
        assert!(
            err.message.contains("10.001 exceeds duration_ms (10)"),
            "{}",
            err.message
        );
    }

    #[test]
    fn seconds_timestamp_gets_a_hint() {
        let err = parse(r#"{"model":"m","status":200,"duration_ms":1,"timestamp":1700000000}"#)
            .expect_err("seconds");
        assert!(
            err.message.contains("looks like seconds"),
            "{}",
            err.message
        );
    }

    /// The scanner leaves strings with control characters to serde; validation must then
    /// still refuse them in ids, whichever way a record arrives.
    #[test]
    fn control_characters_in_ids_are_refused_on_every_path() {
        let prices = PriceTable::default();
        let v = Validation {
            now_ms: NOW,
            prices: &prices,
            keep_requests: None,
        };
        // An escaped C0 control, a raw DEL (JSON allows it unescaped) and an escaped DEL.
        for c in ["\\u0001", "\u{7f}", "\\u007f"] {
            let rec = format!(r#"{{"model":"m{c}","status":200,"duration_ms":5}}"#);
            let one = parse(&rec).expect_err("refused");
            assert_eq!(one.field, "model");
            assert!(one.message.contains("control"), "{}", one.message);
            let ok = r#"{"model":"m","status":200,"duration_ms":5}"#;
            let array = format!("[{ok},{rec}]");
            let got = parse_array(&array, &v).expect("deserializes");
            assert!(got[0].is_ok());
            let err = got[1].as_ref().expect_err("refused");
            assert_eq!(err.field, "model");
        }
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowed() {
        let deep = format!(
            "{{\"model\":\"m\",\"status\":200,\"duration_ms\":1,\"x\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let err = parse(&deep).expect_err("too deep");
        assert_eq!(err.reason, RejectReason::Malformed);
        assert_eq!(err.field, "x");
        assert!(err.message.contains("recursion limit"), "{}", err.message);
        // Shallow unknown values are ignored.
        assert!(parse(r#"{"model":"m","status":200,"duration_ms":1,"x":[[{"a":[1]}]]}"#).is_ok());
    }

    #[test]
    fn start_marker() {
        match parse(r#"{"phase":"start","request_id":"a","namespace":"n"}"#) {
            Ok(Event::Start(s)) => {
                assert_eq!(s.request_id.as_str(), "a");
                assert_eq!(s.namespace, "n");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn long_error_text_is_truncated_at_a_char_boundary() {
        let msg = "é".repeat(3000);
        let r = finish(&format!(
            r#"{{"model":"m","status":500,"duration_ms":1,"error":"{msg}"}}"#
        ));
        let e = r.error.expect("error kept");
        assert!(e.len() <= MAX_TEXT_LEN + '…'.len_utf8());
        assert!(e.ends_with('…'));
    }

    /// Every free-text field is scrubbed of secrets, on the JSON path and the
    /// [`RecordFields`] path (OTLP events) alike; ids are kept as sent.
    #[test]
    fn secrets_in_text_fields_are_redacted_on_every_path() {
        let secret = "bad x-api-key: sk-canary-789 Bearer abc.def api_key=zzz";
        let json = format!(
            r#"{{"model":"m","status":401,"duration_ms":1,"error":"{secret}","block_reason":"{secret}",
            "user_agent":"{secret}","endpoint":"/v1/x?key=AIzaCanary0000&a=b"}}"#
        );
        let fields = RecordFields {
            model: Some("m".into()),
            status: Some(401),
            duration_ms: Some(1.0),
            error: Some(secret.into()),
            block_reason: Some(secret.into()),
            user_agent: Some(secret.into()),
            endpoint: Some("/v1/x?key=AIzaCanary0000&a=b".into()),
            ..RecordFields::default()
        };
        let prices = PriceTable::default();
        let v = Validation {
            now_ms: NOW,
            prices: &prices,
            keep_requests: None,
        };
        for r in [finish(&json), *fields.validate(&v).expect("valid")] {
            let dbg = format!("{r:?}");
            for canary in ["sk-canary-789", "abc.def", "zzz", "AIzaCanary0000"] {
                assert!(!dbg.contains(canary), "{canary} in {dbg}");
            }
            let want = "bad x-api-key: [REDACTED] Bearer [REDACTED] api_key=[REDACTED]";
            assert_eq!(r.error.as_deref(), Some(want));
            assert_eq!(r.block_reason.as_deref(), Some(want));
            assert_eq!(r.user_agent.as_deref(), Some(want));
            assert_eq!(r.endpoint, "/v1/x?key=[REDACTED]&a=b");
        }
    }

    #[test]
    fn client_ip_must_be_an_ip_address() {
        for ok in [
            "10.0.0.1",
            "::1",
            "2001:db8::8a2e:370:7334",
            "10.0.0.1:443",
            "[::1]:80",
        ] {
            let r = finish(&format!(
                r#"{{"model":"m","status":200,"duration_ms":1,"client_ip":"{ok}"}}"#
            ));
            assert_eq!(r.client_ip.as_deref(), Some(ok));
        }
        for bad in [
            "localhost",
            "10.0.0.256",
            "1.2.3.4, 5.6.7.8",
            "sk-canary-789",
        ] {
            let err = parse(&format!(
                r#"{{"model":"m","status":200,"duration_ms":1,"client_ip":"{bad}"}}"#
            ))
            .expect_err(bad);
            assert_eq!(err.field, "client_ip");
            assert_eq!(err.reason, RejectReason::InvalidValue);
        }
    }

    /// The field names of a struct as its derived `Debug` prints them (`Name { a: .., b: .. }`).
    fn debug_field_names(debug: &str) -> Vec<String> {
        let inner = &debug[debug.find('{').expect("a struct") + 1..debug.rfind('}').expect("}")];
        let mut names = Vec::new();
        let mut depth = 0i32;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' | '[' | '(' => depth += 1,
                '}' | ']' | ')' => depth -= 1,
                ':' if depth == 0 && start <= i => {
                    names.push(
                        inner[start..i]
                            .trim()
                            .trim_start_matches(',')
                            .trim()
                            .to_string(),
                    );
                    start = usize::MAX;
                }
                ',' if depth == 0 => start = i + 1,
                _ => {}
            }
        }
        names
    }

    /// The wire record (`raw_record!`) has exactly the fields of the table that have a wire
    /// name, plus `phase` and the `request` object (not a column: `request_bodies`); the
    /// scanner reads the same list (`Field`).
    #[test]
    fn the_wire_record_is_the_field_table() {
        let wire: Vec<&str> = fields::FIELDS.iter().filter_map(|f| f.wire).collect();
        for name in &wire {
            assert!(Field::of(name).is_some(), "raw_record! lacks {name}");
        }
        assert!(Field::of("phase").is_some());
        assert!(Field::of("request").is_some());
        assert_eq!(
            Field::COUNT,
            wire.len() + 2,
            "raw_record! has a field the table (record/fields.rs) lacks"
        );
        let raw = debug_field_names(&format!("{:?}", RawRecord::default()));
        let mut want: Vec<&str> = wire.clone();
        want.insert(0, "phase");
        want.push("request");
        assert_eq!(raw, want, "raw_record! is not in the table's order");
    }

    /// [`RecordFields`] has a field per wire field (`timestamp` as `timestamp_ms`), plus the
    /// exact cost and its source.
    #[test]
    fn record_fields_are_the_field_table() {
        let got = debug_field_names(&format!("{:?}", RecordFields::default()));
        let mut want: Vec<String> = fields::FIELDS
            .iter()
            .filter_map(|f| f.wire)
            .map(|w| match w {
                "timestamp" => "timestamp_ms".to_string(),
                w => w.to_string(),
            })
            .collect();
        let at = want.iter().position(|w| w == "cost_usd").expect("cost") + 1;
        want.splice(
            at..at,
            ["cost_micros".to_string(), "cost_source".to_string()],
        );
        want.push("request".to_string());
        assert_eq!(got, want, "RecordFields and record/fields.rs differ");
    }

    /// [`ValidRecord`] has a field per row of the table but the derived `user_ref`, named as in
    /// the log entry (the token buckets grouped in [`Tokens`]).
    #[test]
    fn the_valid_record_is_the_field_table() {
        let r = finish(r#"{"model":"m","status":200,"duration_ms":5}"#);
        let got: Vec<String> = debug_field_names(&format!("{r:?}"))
            .into_iter()
            .flat_map(|name| match name.as_str() {
                "tokens" => TOKEN_TYPES.iter().map(|t| format!("{t}_tokens")).collect(),
                _ => vec![name],
            })
            .collect();
        let mut want: Vec<&str> = fields::FIELDS.iter().filter_map(|f| f.entry).collect();
        want.push("request");
        assert_eq!(got, want, "ValidRecord and record/fields.rs differ");
    }

    /// The `request` object is kept only when asked for and with a `request_id`, redacted.
    #[test]
    fn the_request_object_is_kept_redacted_only_when_asked() {
        let json = r#"{"request_id": "r", "model": "m", "status": 200, "duration_ms": 1,
            "request": {"headers": {"Authorization": "Bearer canary-1"}, "body": {"api_key": "canary-2"}}}"#;
        let prices = PriceTable::default();
        let mut v = Validation {
            now_ms: NOW,
            prices: &prices,
            keep_requests: None,
        };
        let parse = |v: &Validation<'_>, j: &str| match parse_event(j, v) {
            Ok(Event::Finish(r)) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(parse(&v, json).request, None);
        v.keep_requests = Some(65_536);
        let kept = parse(&v, json).request.expect("kept");
        assert!(!kept.json.contains("canary"), "{}", kept.json);
        assert!(kept.json.contains("[REDACTED]"));
        let no_id = json.replace(r#""request_id": "r","#, "");
        assert_eq!(parse(&v, &no_id).request, None);
        // Through the array path (serde), too.
        let arr = format!("[{json}]");
        let all = parse_array(&arr, &v).expect("array");
        let Ok(Event::Finish(r)) = &all[0] else {
            panic!("{all:?}")
        };
        assert!(r.request.is_some());
    }

    #[test]
    fn api_type_from_endpoint() {
        assert_eq!(ApiType::from_endpoint("/v1/messages"), ApiType::Claude);
        assert_eq!(
            ApiType::from_endpoint("/v1/chat/completions"),
            ApiType::Openai
        );
        assert_eq!(ApiType::from_endpoint("/v1/responses"), ApiType::Codex);
        assert_eq!(
            ApiType::from_endpoint("/v1beta/models/gemini-2.5-pro:generateContent"),
            ApiType::Gemini
        );
        assert_eq!(ApiType::from_endpoint("/health"), ApiType::Other);
    }
}
