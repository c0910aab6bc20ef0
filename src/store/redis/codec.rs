//! How aggregates are laid out in Redis: key names (the seed system's, under the prefix),
//! hash field names of the fleet aggregates, and the compact histogram blob.
//!
//! Pure: no I/O. Each writer's data is a blob of its own cumulative values, so a flush is a
//! handful of Redis commands whatever the number of series, and a re-write is idempotent.
//! Blobs are versioned varint records; label strings are length-prefixed (any character).

use std::collections::HashMap;

use crate::aggregate::{Aggregates, Latencies, ScopeAgg, ScopeKey, TokenUsage};
use crate::catalog::GENAI_TOKEN_BUCKETS;
use crate::record::Label;
use crate::varint;

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

    /// Every writer's cumulative state blob (counters and since-start histograms of every
    /// scope), one field per writer.
    pub fn state(&self) -> String {
        self.key("gatemeter:state")
    }

    /// The merged state blob of every writer that shut down gracefully.
    pub fn retired(&self) -> String {
        self.key("gatemeter:retired")
    }

    /// Histogram blobs of one [`SLOT_MS`](crate::store::live::SLOT_MS) time slot (numbered
    /// `epoch ms / SLOT_MS`), every writer.
    pub fn hist_slot(&self, slot: i64) -> String {
        self.key(&format!("gatemeter:slot:{slot}"))
    }

    /// A writer's idempotency marker: the number of its last applied flush batch.
    pub fn flush_marker(&self, writer: &str) -> String {
        self.key(&format!("gatemeter:flush:{writer}"))
    }

    /// What a writer has added to the seed keys so far, one field per key: a batch carries
    /// the writer's totals and adds the difference, so a batch lost in a failover is made up
    /// by the next one.
    pub fn seed_base(&self, writer: &str) -> String {
        self.key(&format!("gatemeter:seed:{writer}"))
    }

    /// The highest durable-spool position whose deltas Redis holds, per spool.
    pub fn spool(&self, spool: &str) -> String {
        self.key(&format!("gatemeter:spool:{spool}"))
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
    push("lsum0", a.latency.sums_us[0]);
    push("lsum1", a.latency.sums_us[1]);
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
    if a.last_used_ms != 0 {
        out.push(("last".to_string(), a.last_used_ms));
    }
    if let Some(i) = a
        .operation
        .and_then(|o| OPERATIONS.iter().position(|x| *x == o))
    {
        out.push(("op".to_string(), i as i64));
    }
}

const OPERATIONS: [&str; 4] = ["chat", "embeddings", "text_completion", "generate_content"];

/// Applies one stored field to a scope; false when the field is unknown.
fn set_field(a: &mut ScopeAgg, field: &str, v: i64) -> bool {
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
        "lsum0" => a.latency.sums_us[0] = u,
        "lsum1" => a.latency.sums_us[1] = u,
        "last" => a.last_used_ms = v,
        "op" => a.operation = OPERATIONS.get(u as usize).copied(),
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

/// Version 2: histograms and their sums (`lsum*`) in microseconds. Version 1 (before
/// fractional milliseconds) held them in milliseconds and is still read, scaled by 1000, so a
/// fleet's cumulative blobs survive the upgrade; counts blobs did not change.
const BLOB_VERSION: u8 = 2;
/// The blob version whose histograms are in milliseconds.
const BLOB_VERSION_MS: u8 = 1;
/// The version of per-label counts blobs (unchanged).
const COUNTS_VERSION: u8 = 1;

/// The factor from a state or slot blob's histogram unit to microseconds, by its version.
fn blob_scale(b: &[u8]) -> Option<u64> {
    match *b.first()? {
        BLOB_VERSION => Some(1),
        BLOB_VERSION_MS => Some(1000),
        _ => None,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    varint::put(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn get_str<'b>(b: &'b [u8], i: &mut usize) -> Option<&'b str> {
    let n = usize::try_from(varint::get(b, i)?).ok()?;
    let s = b.get(*i..i.checked_add(n)?)?;
    *i += n;
    std::str::from_utf8(s).ok()
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes a writer's cumulative aggregates: overflow counters, then per scope its counters
/// (named fields) and its duration and TTFB distributions.
pub fn encode_state(a: &Aggregates) -> Vec<u8> {
    let mut out = vec![BLOB_VERSION];
    varint::put(&mut out, a.overflow.len() as u64);
    for n in a.overflow {
        varint::put(&mut out, n);
    }
    varint::put(&mut out, 1 + a.scopes.len() as u64);
    let mut fields = Vec::new();
    for (scope, agg) in
        std::iter::once((None, &a.global)).chain(a.scopes.iter().map(|(k, v)| (Some(k.clone()), v)))
    {
        put_str(&mut out, &scope_enc(&scope));
        fields.clear();
        scope_fields(agg, &mut fields);
        varint::put(&mut out, fields.len() as u64);
        for (f, v) in &fields {
            put_str(&mut out, f);
            varint::put(&mut out, zigzag(*v));
        }
        agg.latency.duration.encode_into(&mut out);
        agg.latency.ttfb.encode_into(&mut out);
    }
    out
}

/// Adds one writer's state blob into `into` (counters summed, histograms merged). Unknown
/// fields are skipped (a newer replica may write more); false when the blob is malformed.
pub fn decode_state_into(b: &[u8], into: &mut Aggregates) -> bool {
    decode_state(b, into).is_some()
}

fn decode_state(b: &[u8], into: &mut Aggregates) -> Option<()> {
    let scale = blob_scale(b)?;
    let mut i = 1;
    let dims = varint::get(b, &mut i)?;
    for d in 0..dims {
        let n = varint::get(b, &mut i)?;
        if let Some(slot) = into.overflow.get_mut(d as usize) {
            *slot += n;
        }
    }
    let scopes = varint::get(b, &mut i)?;
    for _ in 0..scopes {
        let scope = scope_dec(get_str(b, &mut i)?)?;
        let mut counters = ScopeAgg::default();
        let mut sums = false;
        for _ in 0..varint::get(b, &mut i)? {
            let f = get_str(b, &mut i)?;
            let v = unzigzag(varint::get(b, &mut i)?);
            sums |= f.starts_with("lsum");
            set_field(&mut counters, f, v);
        }
        counters
            .latency
            .duration
            .decode_scaled_from(b, &mut i, scale)?;
        counters.latency.ttfb.decode_scaled_from(b, &mut i, scale)?;
        if !sums && !counters.latency.duration.is_empty() {
            // Written before histograms had sums of their own: they were the scope's (ms).
            counters.latency.sums_us = [
                counters.duration_ms_sum.saturating_mul(1000),
                counters.ttfb_ms_sum.saturating_mul(1000),
            ];
        } else {
            for s in &mut counters.latency.sums_us {
                *s = s.saturating_mul(scale);
            }
        }
        let target = match scope {
            None => &mut into.global,
            Some(k) => into.scopes.entry(k).or_default(),
        };
        target.merge(&counters);
    }
    Some(())
}

/// Encodes one time slot's distributions of every scope.
pub fn encode_slot(scopes: &HashMap<HistScope, Latencies>) -> Vec<u8> {
    let mut out = vec![BLOB_VERSION];
    varint::put(&mut out, scopes.len() as u64);
    for (scope, l) in scopes {
        put_str(&mut out, &scope_enc(scope));
        l.duration.encode_into(&mut out);
        l.ttfb.encode_into(&mut out);
    }
    out
}

/// Adds a slot blob's distributions: the global scope into `global`, the others into `scopes`.
pub fn decode_slot_into(
    b: &[u8],
    global: &mut Latencies,
    scopes: &mut HashMap<ScopeKey, Latencies>,
) -> bool {
    (|| {
        let scale = blob_scale(b)?;
        let mut i = 1;
        for _ in 0..varint::get(b, &mut i)? {
            let into = match scope_dec(get_str(b, &mut i)?)? {
                None => &mut *global,
                Some(k) => scopes.entry(k).or_default(),
            };
            into.duration.decode_scaled_from(b, &mut i, scale)?;
            into.ttfb.decode_scaled_from(b, &mut i, scale)?;
        }
        Some(())
    })()
    .is_some()
}

/// Encodes per-label counts (API key calls).
pub fn encode_counts(counts: &HashMap<Label, u64>) -> Vec<u8> {
    let mut out = vec![COUNTS_VERSION];
    varint::put(&mut out, counts.len() as u64);
    for (k, n) in counts {
        put_str(&mut out, k);
        varint::put(&mut out, *n);
    }
    out
}

/// Adds per-label counts into `into`; false when malformed.
pub fn decode_counts_into(b: &[u8], into: &mut HashMap<Label, u64>) -> bool {
    (|| {
        if b.first() != Some(&COUNTS_VERSION) {
            return None;
        }
        let mut i = 1;
        for _ in 0..varint::get(b, &mut i)? {
            let k = Label::from(get_str(b, &mut i)?);
            *into.entry(k).or_insert(0) += varint::get(b, &mut i)?;
        }
        Some(())
    })()
    .is_some()
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
    fn state_blobs_round_trip_and_add_up() {
        let mut a = Aggregates::default();
        a.overflow[1] = 4;
        a.global.requests = 3;
        a.global.latency.duration.record(250);
        let s = a
            .scopes
            .entry(ScopeKey::Namespace("n|s".into()))
            .or_default();
        s.requests = 3;
        s.failures = 1;
        s.cost_micros = 1_500_000;
        s.concurrency = -2;
        s.tokens.cache_read = 9;
        s.status.insert(503, 1);
        s.last_used_ms = 1_700_000_000_000;
        s.operation = Some("embeddings");
        s.latency.duration.record(7);
        s.latency.ttfb.record(3_600_000);
        let mut u = Box::<TokenUsage>::default();
        u.buckets[1][3] = 2;
        u.sums = [5, 6];
        s.token_usage = Some(u);
        let blob = encode_state(&a);
        let mut back = Aggregates::default();
        assert!(decode_state_into(&blob, &mut back));
        assert!(
            decode_state_into(&blob, &mut back),
            "a second writer adds up"
        );
        let b = back
            .scope(&ScopeKey::Namespace("n|s".into()))
            .expect("scope");
        assert_eq!(
            (b.requests, b.failures, b.cost_micros, b.concurrency),
            (6, 2, 3_000_000, -4)
        );
        assert_eq!((b.tokens.cache_read, b.status.get(&503)), (18, Some(&2)));
        assert_eq!(
            (b.last_used_ms, b.operation),
            (1_700_000_000_000, Some("embeddings"))
        );
        assert_eq!(b.token_usage.as_ref().expect("usage").sums, [10, 12]);
        assert_eq!(b.latency.ttfb.count(), 2);
        assert_eq!(back.global.latency.duration.quantile(0.5), Some(250.0));
        assert_eq!(back.overflow[1], 8);
        assert!(!decode_state_into(&blob[..blob.len() - 1], &mut back));
        assert!(!decode_state_into(&[], &mut back));
    }

    /// A blob of version 1 (before fractional milliseconds: histograms and their sums in ms),
    /// as a replica not yet upgraded writes it, is read into microseconds.
    #[test]
    fn version_1_blobs_are_read_in_microseconds() {
        let mut a = Aggregates::default();
        a.global.requests = 1;
        a.global.duration_ms_sum = 207;
        a.global.latency.duration.record(207);
        a.global.latency.sums_us = [207, 0];
        let mut blob = encode_state(&a);
        blob[0] = BLOB_VERSION_MS;
        let mut back = Aggregates::default();
        assert!(decode_state_into(&blob, &mut back));
        let g = &back.global;
        assert_eq!((g.duration_ms_sum, g.latency.sums_us), (207, [207_000, 0]));
        let p50 = g.latency.duration.quantile(0.5).expect("a value");
        assert!((p50 - 207_000.0).abs() / 207_000.0 < 0.004, "{p50}");
        let mut slot = HashMap::new();
        slot.insert(None, a.global.latency.clone());
        let mut blob = encode_slot(&slot);
        blob[0] = BLOB_VERSION_MS;
        let (mut g, mut scopes) = (Latencies::default(), HashMap::new());
        assert!(decode_slot_into(&blob, &mut g, &mut scopes));
        assert_eq!(g.duration.quantile(0.5), Some(p50));
        blob[0] = 3;
        assert!(
            !decode_slot_into(&blob, &mut g, &mut scopes),
            "unknown version"
        );
    }

    #[test]
    fn slot_and_count_blobs_round_trip() {
        let mut m = HashMap::new();
        let mut l = Latencies::default();
        for v in [1, 1, 7, 250, 9_999, 3_600_000] {
            l.duration.record(v);
        }
        l.ttfb.record(42);
        m.insert(None, l.clone());
        m.insert(Some(ScopeKey::Provider("p".into())), l.clone());
        let (mut g, mut scopes) = (Latencies::default(), HashMap::new());
        assert!(decode_slot_into(&encode_slot(&m), &mut g, &mut scopes));
        assert_eq!(g.duration.to_pairs(), l.duration.to_pairs());
        assert_eq!(
            scopes[&ScopeKey::Provider("p".into())].ttfb.to_pairs(),
            l.ttfb.to_pairs()
        );
        assert!(!decode_slot_into(&[1, 5], &mut g, &mut scopes));
        let counts: HashMap<Label, u64> = [("k1".into(), 3), ("k|2".into(), 4)].into();
        let mut back = HashMap::new();
        assert!(decode_counts_into(&encode_counts(&counts), &mut back));
        assert_eq!(back, counts);
    }
}
