//! How aggregates are laid out in Redis: key names (the seed system's, under the prefix),
//! hash field names of the fleet aggregates, and the compact histogram blob.
//!
//! Pure: no I/O. Field names put the label last, so label values may hold any character.

use std::collections::HashMap;

use crate::aggregate::{Aggregates, Latencies, Latency, ScopeAgg, ScopeKey, TokenUsage};
use crate::catalog::GENAI_TOKEN_BUCKETS;
use crate::record::Label;

/// Length of one minute bucket of the windowed histograms, ms.
pub const MINUTE_MS: i64 = 60_000;

/// A histogram scope: `None` is the global scope.
pub type HistScope = Option<ScopeKey>;

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (may be empty).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// A key under the prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The fleet aggregates hash (every scope's counters).
    pub fn agg(&self) -> String {
        self.key("gatemeter:agg")
    }

    /// Since-start histogram blobs of every writer.
    pub fn hist_total(&self) -> String {
        self.key("gatemeter:hist:total")
    }

    /// Histogram blobs of one minute bucket, every writer.
    pub fn hist_minute(&self, minute: i64) -> String {
        self.key(&format!("gatemeter:hist:{minute}"))
    }

    /// The idempotency marker of one flush batch.
    pub fn flush_marker(&self, writer: &str, seq: u64) -> String {
        self.key(&format!("gatemeter:flush:{writer}:{seq}"))
    }

    /// API key calls per key in one UTC day (`day` = days since the epoch).
    pub fn key_calls_day(&self, day: i64) -> String {
        self.key(&format!("gatemeter:apikey:calls:day:{day}"))
    }

    /// API key calls per key in one UTC month (`month` = year * 12 + month - 1).
    pub fn key_calls_month(&self, month: i64) -> String {
        self.key(&format!("gatemeter:apikey:calls:month:{month}"))
    }

    /// Heartbeat of one instance (written even without traffic).
    pub fn heartbeat(&self, instance: &str) -> String {
        self.key(&format!("gatemeter:heartbeat:{instance}"))
    }

    /// The seed system's per-instance, per-namespace heartbeat hash.
    pub fn instance_ns(&self, instance: &str, ns: &str) -> String {
        self.key(&format!("metrics:instance:{instance}:{ns}"))
    }

    /// A seed global counter (`total_requests`, `total_errors`, …).
    pub fn global(&self, name: &str) -> String {
        self.key(&format!("metrics:global:{name}"))
    }

    /// A seed per-namespace counter (`total_requests`, `status:200`, …).
    pub fn ns(&self, ns: &str, name: &str) -> String {
        self.key(&format!("metrics:ns:{ns}:{name}"))
    }
}

/// Encodes a scope: `g`, `n|ns`, `p|provider`, `m|len:providermodel`.
pub fn scope_enc(s: &HistScope) -> String {
    match s {
        None => "g".to_string(),
        Some(ScopeKey::Namespace(n)) => format!("n|{n}"),
        Some(ScopeKey::Provider(p)) => format!("p|{p}"),
        Some(ScopeKey::Model(p, m)) => format!("m|{}:{p}{m}", p.len()),
        Some(ScopeKey::User(u)) => format!("u|{u}"),
        Some(ScopeKey::Key(k)) => format!("k|{k}"),
    }
}

/// Decodes [`scope_enc`]; `None` for anything malformed.
pub fn scope_dec(s: &str) -> Option<HistScope> {
    if s == "g" {
        return Some(None);
    }
    let (tag, rest) = s.split_once('|')?;
    Some(Some(match tag {
        "n" => ScopeKey::Namespace(Label::from(rest)),
        "p" => ScopeKey::Provider(Label::from(rest)),
        "u" => ScopeKey::User(Label::from(rest)),
        "k" => ScopeKey::Key(Label::from(rest)),
        "m" => {
            let (len, pm) = rest.split_once(':')?;
            let len: usize = len.parse().ok()?;
            if !pm.is_char_boundary(len) {
                return None;
            }
            let (p, m) = pm.split_at(len);
            ScopeKey::Model(Label::from(p), Label::from(m))
        }
        _ => return None,
    }))
}

const TOKENS: [&str; 5] = ["tok0", "tok1", "tok2", "tok3", "tok4"];

/// The integer increments of one scope, as `(field, delta)` (zeros left out).
pub fn scope_fields(a: &ScopeAgg, out: &mut Vec<(String, i64)>) {
    let mut push = |name: &str, v: u64| {
        if v != 0 {
            out.push((name.to_string(), v as i64));
        }
    };
    push("req", a.requests);
    push("fail", a.failures);
    push("dur", a.duration_ms_sum);
    push("ttfb", a.ttfb_ms_sum);
    for (name, v) in TOKENS.iter().zip(a.tokens.as_array()) {
        push(name, v);
    }
    push("cost", a.cost_micros);
    push("unpriced", a.unpriced);
    push("aband", a.abandoned);
    for (code, n) in &a.status {
        push(&format!("st{code}"), *n);
    }
    if let Some(u) = &a.token_usage {
        for k in 0..2 {
            for (i, n) in u.buckets[k].iter().enumerate() {
                push(&format!("tub{k}_{i}"), *n);
            }
            push(&format!("tus{k}"), u.sums[k]);
        }
    }
    if a.concurrency != 0 {
        out.push(("conc".to_string(), a.concurrency));
    }
}

fn operation(s: &str) -> Option<&'static str> {
    ["chat", "embeddings", "text_completion", "generate_content"]
        .into_iter()
        .find(|o| *o == s)
}

/// Applies one stored field to a scope; false when the field is unknown.
fn set_field(a: &mut ScopeAgg, field: &str, value: &[u8]) -> bool {
    let text = std::str::from_utf8(value).unwrap_or("");
    if field == "op" {
        a.operation = operation(text);
        return true;
    }
    let Ok(v) = text.parse::<i64>() else {
        return false;
    };
    let u = v.max(0) as u64;
    match field {
        "req" => a.requests = u,
        "fail" => a.failures = u,
        "dur" => a.duration_ms_sum = u,
        "ttfb" => a.ttfb_ms_sum = u,
        "tok0" => a.tokens.input = u,
        "tok1" => a.tokens.output = u,
        "tok2" => a.tokens.cache_write_5m = u,
        "tok3" => a.tokens.cache_write_1h = u,
        "tok4" => a.tokens.cache_read = u,
        "cost" => a.cost_micros = u,
        "unpriced" => a.unpriced = u,
        "aband" => a.abandoned = u,
        "last" => a.last_used_ms = v,
        "conc" => a.concurrency = v,
        f => {
            if let Some(code) = f.strip_prefix("st") {
                let Ok(code) = code.parse::<u16>() else {
                    return false;
                };
                a.status.insert(code, u);
            } else if let Some(rest) = f.strip_prefix("tub") {
                let Some((k, i)) = rest.split_once('_') else {
                    return false;
                };
                let (Ok(k), Ok(i)) = (k.parse::<usize>(), i.parse::<usize>()) else {
                    return false;
                };
                if k > 1 || i > GENAI_TOKEN_BUCKETS.len() {
                    return false;
                }
                a.token_usage
                    .get_or_insert_with(Box::<TokenUsage>::default)
                    .buckets[k][i] = u;
            } else if let Some(k) = f.strip_prefix("tus") {
                let Ok(k) = k.parse::<usize>() else {
                    return false;
                };
                if k > 1 {
                    return false;
                }
                a.token_usage
                    .get_or_insert_with(Box::<TokenUsage>::default)
                    .sums[k] = u;
            } else {
                return false;
            }
        }
    }
    true
}

/// The hash field of a scope's counter.
pub fn agg_field(field: &str, scope: &HistScope) -> String {
    format!("{field}|{}", scope_enc(scope))
}

/// The hash field of an overflow counter.
pub fn overflow_field(dim: usize) -> String {
    format!("ovf|{dim}")
}

/// Rebuilds fleet aggregates (counters only) from the aggregates hash. Unknown fields are
/// skipped: a newer replica may write fields this one does not know.
pub fn decode_agg(fields: &HashMap<Vec<u8>, Vec<u8>>) -> Aggregates {
    let mut out = Aggregates::default();
    for (f, v) in fields {
        let Ok(f) = std::str::from_utf8(f) else {
            continue;
        };
        let Some((name, scope)) = f.split_once('|') else {
            continue;
        };
        if name == "ovf" {
            if let (Ok(d), Ok(n)) = (
                scope.parse::<usize>(),
                std::str::from_utf8(v).unwrap_or("").parse::<u64>(),
            ) && d < out.overflow.len()
            {
                out.overflow[d] = n;
            }
            continue;
        }
        let Some(scope) = scope_dec(scope) else {
            continue;
        };
        let a = match scope {
            None => &mut out.global,
            Some(k) => out.scopes.entry(k).or_default(),
        };
        set_field(a, name, v);
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

const BLOB_VERSION: u8 = 1;

fn put_latency(out: &mut Vec<u8>, l: &Latency) {
    let pairs = l.to_pairs();
    put_varint(out, pairs.len() as u64);
    let mut prev = 0;
    for (v, n) in pairs {
        put_varint(out, v - prev);
        put_varint(out, n);
        prev = v;
    }
}

fn get_latency(b: &[u8], i: &mut usize, into: &mut Latency) -> Option<()> {
    let n = get_varint(b, i)?;
    let mut prev = 0u64;
    for _ in 0..n {
        prev = prev.checked_add(get_varint(b, i)?)?;
        into.record_n(prev, get_varint(b, i)?);
    }
    Some(())
}

/// Encodes duration and TTFB distributions: version byte, then per distribution the number of
/// non-empty HDR buckets and delta-encoded `(value, count)` varints. Exact (every bucket kept),
/// and a few bytes per bucket.
pub fn encode_latencies(l: &Latencies) -> Vec<u8> {
    let mut out = vec![BLOB_VERSION];
    put_latency(&mut out, &l.duration);
    put_latency(&mut out, &l.ttfb);
    out
}

/// Adds a blob's values into `into`; false (and nothing certain added) when malformed.
pub fn decode_latencies_into(b: &[u8], into: &mut Latencies) -> bool {
    if b.first() != Some(&BLOB_VERSION) {
        return false;
    }
    let mut i = 1;
    get_latency(b, &mut i, &mut into.duration).is_some()
        && get_latency(b, &mut i, &mut into.ttfb).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_with_any_characters() {
        for s in [
            None,
            Some(ScopeKey::Namespace("a|b:c".into())),
            Some(ScopeKey::Provider("".into())),
            Some(ScopeKey::Model("p:1|".into(), "m|x:2é".into())),
            Some(ScopeKey::User("a@b.c".into())),
            Some(ScopeKey::Key("key|1".into())),
        ] {
            assert_eq!(scope_dec(&scope_enc(&s)), Some(s.clone()));
        }
        assert_eq!(scope_dec("m|9:ab"), None);
        assert_eq!(scope_dec("x|a"), None);
    }

    #[test]
    fn blobs_round_trip_exactly() {
        let mut l = Latencies::default();
        for v in [1, 1, 7, 250, 9_999, 3_600_000] {
            l.duration.record(v);
        }
        l.ttfb.record(42);
        let mut back = Latencies::default();
        assert!(decode_latencies_into(&encode_latencies(&l), &mut back));
        assert_eq!(back.duration.to_pairs(), l.duration.to_pairs());
        assert_eq!(back.ttfb.to_pairs(), l.ttfb.to_pairs());
        assert!(!decode_latencies_into(&[1, 5], &mut back));
        assert!(!decode_latencies_into(&[], &mut back));
    }

    #[test]
    fn fields_round_trip() {
        let mut a = ScopeAgg {
            requests: 3,
            failures: 1,
            cost_micros: 1_500_000,
            concurrency: -2,
            ..ScopeAgg::default()
        };
        a.tokens.cache_read = 9;
        a.status.insert(503, 1);
        a.token_usage = Some(Box::default());
        if let Some(u) = a.token_usage.as_mut() {
            u.buckets[1][3] = 2;
            u.sums = [5, 6];
        }
        let mut fields = Vec::new();
        scope_fields(&a, &mut fields);
        let scope = Some(ScopeKey::Namespace("n".into()));
        let map: HashMap<Vec<u8>, Vec<u8>> = fields
            .iter()
            .map(|(f, v)| {
                (
                    agg_field(f, &scope).into_bytes(),
                    v.to_string().into_bytes(),
                )
            })
            .collect();
        let back = decode_agg(&map);
        let b = back.scope(&ScopeKey::Namespace("n".into())).expect("scope");
        assert_eq!(
            (b.requests, b.failures, b.cost_micros, b.concurrency),
            (3, 1, 1_500_000, -2)
        );
        assert_eq!(b.tokens.cache_read, 9);
        assert_eq!(b.status.get(&503), Some(&1));
        assert_eq!(b.token_usage, a.token_usage);
    }
}
