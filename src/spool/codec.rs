//! The spool's on-disk form: frames of validated events.
//!
//! A frame is `len: u32 LE | crc32(payload): u32 LE | payload`; a payload is `count: u32 LE`
//! then `count` events. An event is a tag byte (`0` start marker; `3` finished record, `4` one
//! with its stored request after it; `1`, a finished record of the earlier version: durations in
//! whole ms, ending at `trace_id`, still read) and its fields in declaration order: integers as
//! LEB128 varints (signed ones zig-zagged), text as
//! a varint length and UTF-8 bytes, an absent optional as `0` and a present one as `1` + value.
//! The encoder destructures [`ValidRecord`] and the decoder builds it with a struct literal, so
//! a field added to the record does not compile here until the spool carries it.

use compact_str::CompactString;

use crate::record::{
    ApiType, CostSource, Event, Label, Millis, RequestId, StartMarker, StoredRequest, Tokens,
    ValidRecord,
};

/// Bytes of a frame header (length and checksum).
pub const HEADER: usize = 8;

/// Largest payload accepted when reading (a longer length field is a torn or foreign frame).
pub const MAX_PAYLOAD: usize = 1 << 30;

/// Encodes `events` as one frame, header included.
pub fn frame(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 4 + events.len() * 160);
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    for e in events {
        event(&mut out, e);
    }
    let len = (out.len() - HEADER) as u32;
    let crc = crc32fast::hash(&out[HEADER..]);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..HEADER].copy_from_slice(&crc.to_le_bytes());
    out
}

/// What reading the start of `buf` as a frame found.
#[derive(Debug, PartialEq)]
pub enum Read<'a> {
    /// A whole frame whose checksum matches: its payload and its length with the header.
    Frame(&'a [u8], usize),
    /// Nothing left.
    End,
    /// A frame cut short or not matching its checksum (a write torn by a crash).
    Torn,
}

/// Reads the frame at the start of `buf`.
pub fn read_frame(buf: &[u8]) -> Read<'_> {
    if buf.is_empty() {
        return Read::End;
    }
    if buf.len() < HEADER {
        return Read::Torn;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > MAX_PAYLOAD || buf.len() - HEADER < len {
        return Read::Torn;
    }
    let payload = &buf[HEADER..HEADER + len];
    if crc32fast::hash(payload) != crc {
        return Read::Torn;
    }
    Read::Frame(payload, HEADER + len)
}

/// Decodes a payload (checksum already verified) into its events.
pub fn decode(payload: &[u8]) -> Result<Vec<Event>, DecodeError> {
    let mut r = Reader { buf: payload };
    let count = u32::from_le_bytes(r.bytes(4)?.try_into().map_err(|_| DecodeError)?) as usize;
    let mut events = Vec::with_capacity(count.min(payload.len()));
    for _ in 0..count {
        events.push(r.event()?);
    }
    if !r.buf.is_empty() {
        return Err(DecodeError);
    }
    Ok(events)
}

/// A payload whose checksum matched but that is not a list of events (a spool written by an
/// incompatible version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("spool entry is not a list of events")]
pub struct DecodeError;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn signed(out: &mut Vec<u8>, v: i64) {
    varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn text(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn opt_text(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            text(out, s);
        }
    }
}

fn opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            varint(out, v);
        }
    }
}

fn api_code(a: ApiType) -> u8 {
    match a {
        ApiType::Claude => 0,
        ApiType::Openai => 1,
        ApiType::Codex => 2,
        ApiType::Gemini => 3,
        ApiType::Other => 4,
    }
}

fn cost_code(c: CostSource) -> u8 {
    match c {
        CostSource::Reported => 0,
        CostSource::Priced => 1,
        CostSource::Unpriced => 2,
    }
}

/// Tag of a finished record, durations in µs.
const TAG_FINISH: u8 = 3;
/// Tag of a finished record followed by its stored request.
const TAG_FINISH_WITH_REQUEST: u8 = 4;
/// Tag of a finished record written by an earlier version, durations in whole ms.
const TAG_FINISH_MS: u8 = 1;

fn event(out: &mut Vec<u8>, e: &Event) {
    match e {
        Event::Start(m) => {
            out.push(0);
            text(out, m.request_id.as_str());
            text(out, &m.namespace);
            signed(out, m.timestamp_ms);
        }
        Event::Finish(r) => {
            out.push(if r.request.is_some() {
                TAG_FINISH_WITH_REQUEST
            } else {
                TAG_FINISH
            });
            record(out, r);
            if let Some(req) = &r.request {
                text(out, &req.json);
                out.push(u8::from(req.truncated));
                varint(out, req.original_bytes);
            }
        }
    }
}

fn record(out: &mut Vec<u8>, r: &ValidRecord) {
    let ValidRecord {
        request_id,
        timestamp_ms,
        namespace,
        instance,
        user,
        user_id,
        key,
        key_id,
        provider,
        model,
        original_model,
        endpoint,
        api_type,
        method,
        status,
        duration_ms,
        ttfb_ms,
        tokens,
        cost_micros,
        cost_source,
        session_id,
        retry_count,
        provider_chain,
        is_streaming,
        error,
        blocked_by,
        block_reason,
        user_agent,
        client_ip,
        messages_count,
        trace_id,
        span_id,
        request: _,
        provider_request_id,
        cost_amount,
        currency,
    } = r;
    opt_text(out, request_id.as_ref().map(RequestId::as_str));
    signed(out, *timestamp_ms);
    text(out, namespace);
    opt_text(out, instance.as_deref());
    opt_text(out, user.as_deref());
    opt_text(out, user_id.as_deref());
    opt_text(out, key.as_deref());
    opt_text(out, key_id.as_deref());
    text(out, provider);
    text(out, model);
    opt_text(out, original_model.as_deref());
    text(out, endpoint);
    out.push(api_code(*api_type));
    text(out, method);
    varint(out, u64::from(*status));
    varint(out, duration_ms.micros());
    opt_u64(out, ttfb_ms.map(Millis::micros));
    let Tokens {
        input,
        output,
        cache_write_5m,
        cache_write_1h,
        cache_read,
    } = tokens;
    for t in [input, output, cache_write_5m, cache_write_1h, cache_read] {
        varint(out, *t);
    }
    varint(out, *cost_micros);
    out.push(cost_code(*cost_source));
    opt_text(out, session_id.as_deref());
    varint(out, u64::from(*retry_count));
    varint(out, provider_chain.len() as u64);
    for p in provider_chain {
        text(out, p);
    }
    out.push(u8::from(*is_streaming));
    opt_text(out, error.as_deref());
    opt_text(out, blocked_by.as_deref());
    opt_text(out, block_reason.as_deref());
    opt_text(out, user_agent.as_deref());
    opt_text(out, client_ip.as_deref());
    opt_u64(out, messages_count.map(u64::from));
    opt_text(out, trace_id.as_deref());
    opt_text(out, span_id.as_deref());
    opt_text(out, provider_request_id.as_deref());
    opt_text(out, cost_amount.as_deref());
    opt_text(out, currency.as_deref());
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(DecodeError)
    }

    fn signed(&mut self) -> Result<i64, DecodeError> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.varint()?).map_err(|_| DecodeError)
    }

    fn text(&mut self) -> Result<CompactString, DecodeError> {
        let n = usize::try_from(self.varint()?).map_err(|_| DecodeError)?;
        let b = self.bytes(n)?;
        std::str::from_utf8(b)
            .map(CompactString::from)
            .map_err(|_| DecodeError)
    }

    fn present(&mut self) -> Result<bool, DecodeError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError),
        }
    }

    fn opt_text(&mut self) -> Result<Option<CompactString>, DecodeError> {
        Ok(if self.present()? {
            Some(self.text()?)
        } else {
            None
        })
    }

    fn opt_u64(&mut self) -> Result<Option<u64>, DecodeError> {
        Ok(if self.present()? {
            Some(self.varint()?)
        } else {
            None
        })
    }

    fn event(&mut self) -> Result<Event, DecodeError> {
        match self.byte()? {
            0 => Ok(Event::Start(StartMarker {
                request_id: RequestId(self.text()?),
                namespace: self.label()?,
                timestamp_ms: self.signed()?,
            })),
            TAG_FINISH => Ok(Event::Finish(Box::new(self.record(true)?))),
            TAG_FINISH_WITH_REQUEST => self.with_request(),
            TAG_FINISH_MS => Ok(Event::Finish(Box::new(self.record(false)?))),
            _ => Err(DecodeError),
        }
    }

    /// A current record followed by its stored request (tag 4).
    fn with_request(&mut self) -> Result<Event, DecodeError> {
        let mut r = self.record(true)?;
        r.request = Some(Box::new(StoredRequest {
            json: self.text()?.into(),
            truncated: self.byte()? != 0,
            original_bytes: self.varint()?,
        }));
        Ok(Event::Finish(Box::new(r)))
    }

    fn label(&mut self) -> Result<Label, DecodeError> {
        self.text()
    }

    /// A finished record of tag [`TAG_FINISH`] (`current`), or of the earlier
    /// [`TAG_FINISH_MS`]: durations in ms, without the fields added since.
    fn record(&mut self, current: bool) -> Result<ValidRecord, DecodeError> {
        let unit = if current {
            Millis::from_micros
        } else {
            Millis::from_ms
        };
        // Field initialisers run in the order written: the encoder's order.
        Ok(ValidRecord {
            request_id: self.opt_text()?.map(RequestId),
            timestamp_ms: self.signed()?,
            namespace: self.label()?,
            instance: self.opt_text()?,
            user: self.opt_text()?,
            user_id: self.opt_text()?,
            key: self.opt_text()?,
            key_id: self.opt_text()?,
            provider: self.label()?,
            model: self.label()?,
            original_model: self.opt_text()?,
            endpoint: self.text()?,
            api_type: match self.byte()? {
                0 => ApiType::Claude,
                1 => ApiType::Openai,
                2 => ApiType::Codex,
                3 => ApiType::Gemini,
                4 => ApiType::Other,
                _ => return Err(DecodeError),
            },
            method: self.text()?,
            status: u16::try_from(self.varint()?).map_err(|_| DecodeError)?,
            duration_ms: unit(self.varint()?),
            ttfb_ms: self.opt_u64()?.map(unit),
            tokens: Tokens {
                input: self.varint()?,
                output: self.varint()?,
                cache_write_5m: self.varint()?,
                cache_write_1h: self.varint()?,
                cache_read: self.varint()?,
            },
            cost_micros: self.varint()?,
            cost_source: match self.byte()? {
                0 => CostSource::Reported,
                1 => CostSource::Priced,
                2 => CostSource::Unpriced,
                _ => return Err(DecodeError),
            },
            session_id: self.opt_text()?,
            retry_count: self.u32()?,
            provider_chain: {
                let n = usize::try_from(self.varint()?).map_err(|_| DecodeError)?;
                let mut chain = Vec::with_capacity(n.min(self.buf.len()));
                for _ in 0..n {
                    chain.push(self.text()?);
                }
                chain
            },
            is_streaming: self.present()?,
            error: self.opt_text()?,
            blocked_by: self.opt_text()?,
            block_reason: self.opt_text()?,
            user_agent: self.opt_text()?,
            client_ip: self.opt_text()?,
            messages_count: self
                .opt_u64()?
                .map(u32::try_from)
                .transpose()
                .map_err(|_| DecodeError)?,
            trace_id: self.opt_text()?,
            // Written since tag 3 only.
            span_id: if current { self.opt_text()? } else { None },
            request: None,
            provider_request_id: if current { self.opt_text()? } else { None },
            cost_amount: if current { self.opt_text()? } else { None },
            currency: if current { self.opt_text()? } else { None },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field set to a value unlike its default, so a field the codec forgot or swapped
    /// fails the round trip.
    fn full() -> ValidRecord {
        ValidRecord {
            request_id: Some(RequestId("req-1".into())),
            timestamp_ms: 1_760_000_000_123,
            namespace: "ns".into(),
            instance: Some("gw-1".into()),
            user: Some("alice".into()),
            user_id: Some("u-1".into()),
            key: Some("key-name".into()),
            key_id: Some("key-id".into()),
            provider: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            original_model: Some("claude-x".into()),
            endpoint: "/v1/messages".into(),
            api_type: ApiType::Gemini,
            method: "POST".into(),
            status: 529,
            duration_ms: Millis::from_ms(86_400_000),
            ttfb_ms: Some(Millis::from_micros(12_345)),
            tokens: Tokens {
                input: 1,
                output: 2,
                cache_write_5m: 3,
                cache_write_1h: 4,
                cache_read: 100_000_000,
            },
            cost_micros: 100_000_000_000,
            cost_source: CostSource::Unpriced,
            session_id: Some("s".into()),
            retry_count: 7,
            provider_chain: vec!["a".into(), "b".into()],
            is_streaming: true,
            error: Some("überlastet [REDACTED]".into()),
            blocked_by: Some("filter".into()),
            block_reason: Some("why".into()),
            user_agent: Some("ua".into()),
            client_ip: Some("::1".into()),
            messages_count: Some(9),
            trace_id: Some("t".into()),
            span_id: Some("s".into()),
            request: Some(Box::new(StoredRequest {
                json: r#"{"headers":{"x-api-key":"[REDACTED]"},"body":"é"}"#.into(),
                truncated: true,
                original_bytes: 70_000,
            })),
            provider_request_id: Some("req_011".into()),
            cost_amount: Some("12.5".into()),
            currency: Some("CNY".into()),
        }
    }

    fn sparse() -> ValidRecord {
        ValidRecord {
            request_id: None,
            timestamp_ms: -5,
            instance: None,
            user: None,
            user_id: None,
            key: None,
            key_id: None,
            original_model: None,
            ttfb_ms: None,
            session_id: None,
            provider_chain: Vec::new(),
            is_streaming: false,
            error: None,
            blocked_by: None,
            block_reason: None,
            user_agent: None,
            client_ip: None,
            messages_count: None,
            trace_id: None,
            span_id: None,
            provider_request_id: None,
            cost_amount: None,
            currency: None,
            api_type: ApiType::Claude,
            cost_source: CostSource::Reported,
            status: 0,
            provider: "".into(),
            ..full()
        }
    }

    #[test]
    fn events_round_trip() {
        let events = vec![
            Event::Finish(Box::new(full())),
            Event::Start(StartMarker {
                request_id: RequestId("r".into()),
                namespace: "n".into(),
                timestamp_ms: 1,
            }),
            Event::Finish(Box::new(sparse())),
        ];
        let f = frame(&events);
        let Read::Frame(payload, len) = read_frame(&f) else {
            panic!("a whole frame");
        };
        assert_eq!(len, f.len());
        assert_eq!(decode(payload).expect("decodes"), events);
    }

    /// A spool written before durations had microseconds (tag 1, whole ms) replays with the
    /// same durations.
    #[test]
    fn records_of_the_earlier_tag_are_read_in_milliseconds() {
        let mut r = full();
        (r.provider_request_id, r.cost_amount, r.currency) = (None, None, None);
        (r.span_id, r.request) = (None, None);
        r.duration_ms = Millis::from_ms(1500);
        r.ttfb_ms = Some(Millis::from_ms(12));
        let mut old = Vec::new();
        record(&mut old, &r);
        // The same bytes with durations written in ms (as the earlier encoder did).
        let mut by_ms = r.clone();
        by_ms.duration_ms = Millis::from_micros(1500);
        by_ms.ttfb_ms = Some(Millis::from_micros(12));
        let mut body = vec![TAG_FINISH_MS];
        record(&mut body, &by_ms);
        // The earlier layout ends at trace_id: drop the four absent trailing fields.
        body.truncate(body.len() - 4);
        let mut payload = 1u32.to_le_bytes().to_vec();
        payload.extend_from_slice(&body);
        assert_eq!(decode(&payload), Ok(vec![Event::Finish(Box::new(r))]));
        assert_ne!(old, body[1..], "the units differ on disk");
    }

    #[test]
    fn torn_and_corrupt_frames_are_told_apart_from_the_end() {
        let f = frame(&[Event::Finish(Box::new(full()))]);
        assert_eq!(read_frame(&[]), Read::End);
        for cut in [1, HEADER - 1, HEADER, f.len() - 1] {
            assert_eq!(read_frame(&f[..cut]), Read::Torn, "cut at {cut}");
        }
        for i in [0, 5, HEADER + 3, f.len() - 1] {
            let mut bad = f.clone();
            bad[i] ^= 0x40;
            assert_eq!(read_frame(&bad), Read::Torn, "bit flipped at {i}");
        }
        // A payload with a valid checksum but trailing bytes is not a list of events.
        let mut long = frame(&[]);
        long.push(0);
        assert_eq!(decode(&long[HEADER..]), Err(DecodeError));
    }
}
