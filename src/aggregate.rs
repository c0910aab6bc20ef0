//! Live aggregates — pure: no I/O, no clock reads (time is passed in), no locks.
//!
//! [`Aggregates`] is the one mergeable shape: the pipeline's [`Aggregator`] fills one with the
//! deltas of a flush interval, live stores add deltas into their totals with
//! [`Aggregates::merge`]. The aggregator also owns what must be decided once per record before
//! anything is counted: request-id de-duplication, two-phase concurrency, and the series caps
//! that keep label cardinality bounded: the per-dimension cap and the global
//! [`SeriesBudget`], asked once per new namespace, provider, model or (namespace, status code).
//! A scope granted counters only records its observations (latency, token usage) in its
//! dimension's `__overflow__` scope, so every histogram family still sums to the true total.

pub mod latency;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::budget::{Cost, Grant, QUANTILE_SERIES, SeriesBudget, histogram_series};
use crate::catalog::{
    DURATION_BUCKETS, GENAI_DURATION_BUCKETS, GENAI_TOKEN_BUCKETS, OVERFLOW_LABEL,
};
use crate::record::{
    CostSource, Event, Label, Millis, RequestId, StartMarker, Tokens, ValidRecord, genai_operation,
};

pub use latency::{Latency, SparseLatency};

/// Series of one namespace: requests, concurrency, response time, errors, cost, abandoned and
/// tokens by type; its duration histogram and quantiles. Status codes ask one by one.
pub const NAMESPACE_COST: Cost = Cost {
    counters: 6 + crate::record::TOKEN_TYPES.len() as u64,
    histograms: histogram_series(DURATION_BUCKETS.len()) + QUANTILE_SERIES,
};

/// Series of one (provider, model) pair: requests, tokens in and out, cost, errors, unpriced
/// and tokens by type; duration and TTFB histograms and quantiles, the GenAI duration and
/// token-usage (input, output) histograms.
pub const MODEL_COST: Cost = Cost {
    counters: 6 + crate::record::TOKEN_TYPES.len() as u64,
    histograms: 2 * histogram_series(DURATION_BUCKETS.len())
        + 2 * QUANTILE_SERIES
        + histogram_series(GENAI_DURATION_BUCKETS.len())
        + 2 * histogram_series(GENAI_TOKEN_BUCKETS.len()),
};

/// Series of one provider: requests and errors, plus the counters of its `__overflow__` model
/// (paid up front, so a model refused later still counts under its provider); its duration
/// histogram and quantiles.
pub const PROVIDER_COST: Cost = Cost {
    counters: 2 + MODEL_COST.counters,
    histograms: histogram_series(DURATION_BUCKETS.len()) + QUANTILE_SERIES,
};

/// Which series a scope aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeKey {
    /// One namespace.
    Namespace(Label),
    /// One provider.
    Provider(Label),
    /// One (provider, model) pair.
    Model(Label, Label),
    /// One user (`user_id`, else `user`): requests, tokens and cost only; never a label.
    User(Label),
    /// One API key (`key_id`, else `key` name): requests, tokens, cost and last use only.
    Key(Label),
}

label_enum! {
    /// A label dimension with its own series cap.
    pub enum Dimension {
        /// Namespaces.
        Namespace = "namespace",
        /// Providers.
        Provider = "provider",
        /// (provider, model) pairs.
        Model = "model",
        /// Users.
        User = "user",
        /// API keys.
        Key = "key",
    }
}

/// Duration and time-to-first-byte distributions of one scope.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// Total request duration.
    pub duration: Latency,
    /// Time to first byte/token, for records that report it.
    pub ttfb: Latency,
    /// Exact sums of the values in `duration` and `ttfb`, µs: the histograms' `_sum` (a
    /// scope's own duration sum leaves out what `__overflow__` holds for scopes without
    /// histograms, and counts what it gave away).
    pub sums_us: [u64; 2],
}

impl Latencies {
    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        self.duration.merge(&other.duration);
        self.ttfb.merge(&other.ttfb);
        self.sums_us[0] += other.sums_us[0];
        self.sums_us[1] += other.sums_us[1];
    }

    fn record(&mut self, r: &ValidRecord) {
        let us = r.duration_ms.micros();
        self.duration.record(us);
        self.sums_us[0] += us;
        if let Some(t) = r.ttfb_ms {
            self.ttfb.record(t.micros());
            self.sums_us[1] += t.micros();
        }
    }
}

/// Exact per-bucket counts of token usage (GenAI semconv buckets), for input and output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Non-cumulative counts per bucket (last = above the largest bound), `[input, output]`.
    pub buckets: [[u64; GENAI_TOKEN_BUCKETS.len() + 1]; 2],
    /// Sum of tokens, `[input, output]`.
    pub sums: [u64; 2],
}

impl TokenUsage {
    fn record(&mut self, kind: usize, tokens: u64) {
        let i = GENAI_TOKEN_BUCKETS.partition_point(|b| *b < tokens);
        self.buckets[kind][i] += 1;
        self.sums[kind] += tokens;
    }

    fn merge(&mut self, o: &TokenUsage) {
        for k in 0..2 {
            for (a, b) in self.buckets[k].iter_mut().zip(o.buckets[k].iter()) {
                *a += b;
            }
            self.sums[k] += o.sums[k];
        }
    }
}

/// Everything counted for one scope (global, a namespace, a provider or a model).
#[derive(Debug, Clone, Default)]
pub struct ScopeAgg {
    /// Finished requests.
    pub requests: u64,
    /// Failed requests (4xx, 5xx, no response).
    pub failures: u64,
    /// Sum of durations, each rounded to the whole ms (as the request log and the seed's
    /// `total_response_time` keep them; the exact sums are `latency.sums_us`).
    pub duration_ms_sum: u64,
    /// Sum of time-to-first-byte, each rounded to the whole ms.
    pub ttfb_ms_sum: u64,
    /// Tokens by type.
    pub tokens: Tokens,
    /// Cost, micro-USD.
    pub cost_micros: u64,
    /// Requests without a cost whose model has no price.
    pub unpriced: u64,
    /// Requests per status code (global and namespace scopes).
    pub status: BTreeMap<u16, u64>,
    /// Started-not-finished requests (namespace scope; a delta may be negative).
    pub concurrency: i64,
    /// Start markers that expired (namespace scope).
    pub abandoned: u64,
    /// GenAI token usage (model scope).
    pub token_usage: Option<Box<TokenUsage>>,
    /// GenAI operation name (model scope).
    pub operation: Option<&'static str>,
    /// Latency distributions since the start of these aggregates.
    pub latency: Latencies,
    /// Latest record timestamp, epoch ms (key scope: `last_used_at`; 0 elsewhere).
    pub last_used_ms: i64,
}

impl ScopeAgg {
    fn record(&mut self, r: &ValidRecord, with_status: bool) {
        self.requests += 1;
        if !r.is_success() {
            self.failures += 1;
        }
        self.duration_ms_sum += r.duration_ms.whole_ms();
        self.ttfb_ms_sum += r.ttfb_ms.map_or(0, Millis::whole_ms);
        self.tokens.add(&r.tokens);
        self.cost_micros += r.cost_micros;
        if r.cost_source == CostSource::Unpriced {
            self.unpriced += 1;
        }
        if with_status {
            *self.status.entry(r.status).or_insert(0) += 1;
        }
        self.latency.record(r);
    }

    /// Counts a record without its latency or status code (a scope whose histograms are kept
    /// elsewhere): requests, failures, duration and TTFB sums, tokens, cost.
    fn record_usage_timed(&mut self, r: &ValidRecord) {
        self.record_usage(r);
        self.duration_ms_sum += r.duration_ms.whole_ms();
        self.ttfb_ms_sum += r.ttfb_ms.map_or(0, Millis::whole_ms);
    }

    /// Counts a record's usage only (user and key scopes: no latency, no status codes).
    fn record_usage(&mut self, r: &ValidRecord) {
        self.requests += 1;
        if !r.is_success() {
            self.failures += 1;
        }
        self.tokens.add(&r.tokens);
        self.cost_micros += r.cost_micros;
        if r.cost_source == CostSource::Unpriced {
            self.unpriced += 1;
        }
    }

    /// Adds the traffic of `o` (counters, status codes, latency) into `self`: how global and
    /// provider aggregates are derived from namespace and model scopes.
    pub fn merge_traffic(&mut self, o: &ScopeAgg) {
        self.merge_counters(o);
        self.latency.merge(&o.latency);
    }

    /// Adds the counters and status codes of `o` (not its latency) into `self`.
    pub fn merge_counters(&mut self, o: &ScopeAgg) {
        self.requests += o.requests;
        self.failures += o.failures;
        self.duration_ms_sum += o.duration_ms_sum;
        self.ttfb_ms_sum += o.ttfb_ms_sum;
        self.tokens.add(&o.tokens);
        self.cost_micros += o.cost_micros;
        self.unpriced += o.unpriced;
        for (code, n) in &o.status {
            *self.status.entry(*code).or_insert(0) += n;
        }
    }

    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &ScopeAgg) {
        self.merge_traffic(o);
        self.concurrency += o.concurrency;
        self.abandoned += o.abandoned;
        if let Some(t) = &o.token_usage {
            self.token_usage.get_or_insert_with(Box::default).merge(t);
        }
        if self.operation.is_none() {
            self.operation = o.operation;
        }
        self.last_used_ms = self.last_used_ms.max(o.last_used_ms);
    }
}

/// The mergeable aggregate shape: global plus per-scope.
#[derive(Debug, Clone, Default)]
pub struct Aggregates {
    /// Over every request.
    pub global: ScopeAgg,
    /// Per namespace, provider and model.
    pub scopes: HashMap<ScopeKey, ScopeAgg, ahash::RandomState>,
    /// Records folded into an overflow series, per [`Dimension`].
    pub overflow: [u64; Dimension::ALL.len()],
}

impl Aggregates {
    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.global.requests == 0
            && self.scopes.is_empty()
            && self.overflow == [0; Dimension::ALL.len()]
    }

    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &Aggregates) {
        self.global.merge(&o.global);
        for (k, v) in &o.scopes {
            self.scopes.entry(k.clone()).or_default().merge(v);
        }
        for (a, b) in self.overflow.iter_mut().zip(o.overflow) {
            *a += b;
        }
    }

    /// The aggregate of one scope, if any request was counted there.
    pub fn scope(&self, key: &ScopeKey) -> Option<&ScopeAgg> {
        self.scopes.get(key)
    }

    /// Keeps the labelled scopes within `room` series (their [`Cost`]s): what several writers'
    /// merged views hold beyond it (each writer keeps its own within the budget) folds into
    /// the `__overflow__` scopes, in label order, totals unchanged. Returns the folded keys
    /// with their `__overflow__` key (their window histograms belong there too).
    pub fn fit(&mut self, room: u64) -> Vec<(ScopeKey, ScopeKey)> {
        let cost = |k: &ScopeKey, s: &ScopeAgg| {
            let c = match k {
                ScopeKey::Namespace(_) => NAMESPACE_COST,
                ScopeKey::Provider(_) => PROVIDER_COST,
                ScopeKey::Model(..) => MODEL_COST,
                ScopeKey::User(_) | ScopeKey::Key(_) => return 0,
            };
            let h = if s.latency.duration.is_empty() {
                0
            } else {
                c.histograms
            };
            c.counters + h + s.status.len() as u64
        };
        let total: u64 = self.scopes.iter().map(|(k, s)| cost(k, s)).sum();
        if total <= room {
            return Vec::new();
        }
        let mut keys: Vec<ScopeKey> = self.scopes.keys().cloned().collect();
        keys.sort();
        let mut used = 0;
        let mut folded = Vec::new();
        for k in keys {
            let o = Label::const_new(OVERFLOW_LABEL);
            let (target, dim) = match &k {
                ScopeKey::Namespace(n) if *n != OVERFLOW_LABEL => {
                    (ScopeKey::Namespace(o), Dimension::Namespace)
                }
                ScopeKey::Provider(p) if *p != OVERFLOW_LABEL => {
                    (ScopeKey::Provider(o), Dimension::Provider)
                }
                ScopeKey::Model(p, m) if *p != OVERFLOW_LABEL || *m != OVERFLOW_LABEL => {
                    (ScopeKey::Model(o.clone(), o), Dimension::Model)
                }
                _ => continue,
            };
            let Some(s) = self.scopes.get(&k) else {
                continue;
            };
            let c = cost(&k, s);
            if used + c <= room {
                used += c;
                continue;
            }
            if let Some(s) = self.scopes.remove(&k) {
                self.overflow[dim as usize] += s.requests;
                self.scopes.entry(target.clone()).or_default().merge(&s);
                folded.push((k, target));
            }
        }
        folded
    }
}

/// Limits of the aggregator.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How many recent request ids are remembered for de-duplication.
    pub dedup_window: usize,
    /// After how long a start marker without its final record is abandoned, ms.
    pub pending_timeout_ms: i64,
    /// Most start markers waiting at once.
    pub max_pending: usize,
    /// Distinct label values per dimension before folding into `__overflow__`.
    pub max_series_per_dimension: usize,
}

/// Status codes 0..=599 as a bit set.
type CodeSet = [u64; 10];

fn code_bit(code: u16) -> (usize, u64) {
    let c = usize::from(code.min(639));
    (c / 64, 1u64 << (c % 64))
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            dedup_window: 200_000,
            pending_timeout_ms: 600_000,
            max_pending: 100_000,
            max_series_per_dimension: 1000,
        }
    }
}

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A finished record was counted.
    Counted,
    /// A start marker raised a concurrency gauge.
    Started,
    /// The request id was already counted (or started twice): nothing changed.
    Duplicate,
    /// Too many start markers are pending: this one was not tracked.
    PendingFull,
}

/// Hasher for keys that already are 64-bit hashes.
#[derive(Debug, Default, Clone, Copy)]
struct PreHashed(u64);

impl std::hash::Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type PreHashedSet = HashSet<u64, std::hash::BuildHasherDefault<PreHashed>>;
type PreHashedMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<PreHashed>>;

/// Remembers at least the last `cap` request ids (as 64-bit hashes), at most `2 * cap`: two
/// generations, the older dropped whole when the newer fills. No per-id eviction, so an
/// insert costs two probes and no removal.
#[derive(Debug)]
struct RecentIds {
    current: PreHashedSet,
    previous: PreHashedSet,
    cap: usize,
}

impl RecentIds {
    fn new(cap: usize) -> Self {
        Self {
            current: HashSet::default(),
            previous: HashSet::default(),
            cap,
        }
    }

    fn contains(&self, h: u64) -> bool {
        self.current.contains(&h) || self.previous.contains(&h)
    }

    /// Inserts; false when already present.
    fn insert(&mut self, h: u64) -> bool {
        if self.cap == 0 {
            return true;
        }
        if self.previous.contains(&h) || !self.current.insert(h) {
            return false;
        }
        if self.current.len() >= self.cap {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        true
    }
}

/// Label values of one dimension mapped to dense ids, capped; values beyond the cap share the
/// id of [`OVERFLOW_LABEL`].
#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<Label, u32, ahash::RandomState>,
    labels: Vec<Label>,
    overflow: Option<u32>,
}

impl Interner {
    fn intern_new(&mut self, value: Label) -> u32 {
        let id = self.labels.len() as u32;
        self.ids.insert(value.clone(), id);
        self.labels.push(value);
        id
    }

    /// The id of `value`, and whether it was folded into the overflow series.
    fn id(&mut self, value: &str, cap: usize) -> (u32, bool) {
        if let Some(id) = self.ids.get(value) {
            return (*id, false);
        }
        if self.real() < cap && value != OVERFLOW_LABEL {
            return (self.intern_new(Label::from(value)), false);
        }
        (self.overflow_id(), true)
    }

    /// Label values interned, `__overflow__` aside.
    fn real(&self) -> usize {
        self.labels.len() - usize::from(self.overflow.is_some())
    }

    /// The id of the `__overflow__` value.
    fn overflow_id(&mut self) -> u32 {
        match self.overflow {
            Some(id) => id,
            None => {
                let id = self.intern_new(Label::const_new(OVERFLOW_LABEL));
                self.overflow = Some(id);
                id
            }
        }
    }

    /// The id of `value`: known, else admitted within `cap` and the `budget` (its grant
    /// returned), else `__overflow__` (`None`).
    fn admit(
        &mut self,
        value: &str,
        cap: usize,
        budget: &SeriesBudget,
        cost: Cost,
    ) -> (u32, Option<Grant>) {
        if let Some(id) = self.ids.get(value) {
            return (*id, None);
        }
        let grant = if value == OVERFLOW_LABEL {
            Grant::Folded
        } else if self.real() < cap {
            budget.grant(cost)
        } else {
            Grant::Folded
        };
        if grant == Grant::Folded {
            return (self.overflow_id(), Some(grant));
        }
        (self.intern_new(Label::from(value)), Some(grant))
    }
}

/// Per dense id: whether the scope has histograms of its own.
fn set_detail(v: &mut Vec<bool>, id: u32, detail: bool) {
    let i = id as usize;
    if v.len() <= i {
        v.resize(i + 1, false);
    }
    v[i] = detail;
}

/// Per-id deltas of one dimension.
fn slot(v: &mut Vec<ScopeAgg>, id: u32) -> &mut ScopeAgg {
    let i = id as usize;
    if v.len() <= i {
        v.resize_with(i + 1, ScopeAgg::default);
    }
    &mut v[i]
}

fn is_untouched(s: &ScopeAgg) -> bool {
    s.requests == 0 && s.concurrency == 0 && s.abandoned == 0 && s.latency.duration.is_empty()
}

/// The single owner of live aggregation state in one process (see `pipeline`).
///
/// Per record it updates two scopes only — the namespace and the (provider, model) pair, found
/// through interned ids; global and per-provider aggregates are derived from them once per
/// flush in [`Aggregator::take`].
#[derive(Debug)]
pub struct Aggregator {
    limits: Limits,
    hasher: ahash::RandomState,
    seen: RecentIds,
    pending: PreHashedMap<(u32, i64)>,
    pending_order: VecDeque<(u64, i64)>,
    namespaces: Interner,
    providers: Interner,
    /// Models per provider id.
    models: Vec<Interner>,
    /// (provider id, model id within that provider) per dense model id.
    model_ids: Vec<Vec<u32>>,
    model_keys: Vec<(u32, u32)>,
    ns_deltas: Vec<ScopeAgg>,
    model_deltas: Vec<ScopeAgg>,
    users: Interner,
    keys: Interner,
    user_deltas: Vec<ScopeAgg>,
    key_deltas: Vec<ScopeAgg>,
    overflow: [u64; Dimension::ALL.len()],
    budget: Arc<SeriesBudget>,
    /// Per namespace id: has histograms of its own (else they go to `__overflow__`'s).
    ns_detail: Vec<bool>,
    /// Per namespace id: status codes with a series of their own.
    ns_codes: Vec<CodeSet>,
    /// Per provider id and per dense model id: has histograms of its own.
    provider_detail: Vec<bool>,
    model_detail: Vec<bool>,
    /// Dense id of (`__overflow__`, `__overflow__`): the histograms of models without their own.
    model_sink: Option<u32>,
}

impl Aggregator {
    /// A new aggregator with the given limits and no series budget.
    pub fn new(limits: Limits) -> Self {
        Self::with_budget(limits, Arc::new(SeriesBudget::unlimited()))
    }

    /// A new aggregator with the given limits, sharing the series `budget`.
    pub fn with_budget(limits: Limits, budget: Arc<SeriesBudget>) -> Self {
        Self {
            limits,
            hasher: ahash::RandomState::new(),
            seen: RecentIds::new(limits.dedup_window),
            pending: HashMap::default(),
            pending_order: VecDeque::new(),
            namespaces: Interner::default(),
            providers: Interner::default(),
            models: Vec::new(),
            model_ids: Vec::new(),
            model_keys: Vec::new(),
            ns_deltas: Vec::new(),
            model_deltas: Vec::new(),
            users: Interner::default(),
            keys: Interner::default(),
            user_deltas: Vec::new(),
            key_deltas: Vec::new(),
            overflow: [0; Dimension::ALL.len()],
            budget,
            ns_detail: Vec::new(),
            ns_codes: Vec::new(),
            provider_detail: Vec::new(),
            model_detail: Vec::new(),
            model_sink: None,
        }
    }

    fn id_hash(&self, id: &RequestId) -> u64 {
        self.hasher.hash_one(id.as_str())
    }

    fn namespace_id(&mut self, ns: &str) -> u32 {
        let cap = self.limits.max_series_per_dimension;
        let (id, grant) = self.namespaces.admit(ns, cap, &self.budget, NAMESPACE_COST);
        match grant {
            None => {}
            Some(Grant::Folded) => {
                self.overflow[Dimension::Namespace as usize] += 1;
                set_detail(&mut self.ns_detail, id, true);
            }
            Some(g) => set_detail(&mut self.ns_detail, id, g == Grant::Full),
        }
        id
    }

    /// The namespace id whose histograms take this namespace's observations.
    fn ns_hist(&mut self, ns: u32) -> u32 {
        if self.ns_detail.get(ns as usize).copied().unwrap_or(true) {
            ns
        } else {
            let id = self.namespaces.overflow_id();
            set_detail(&mut self.ns_detail, id, true);
            id
        }
    }

    /// The status code the namespace `ns` counts `code` under: its own series if it has one or
    /// the budget grants it, else the `__overflow__` namespace's.
    fn ns_code(&mut self, ns: u32, code: u16) -> u32 {
        let i = ns as usize;
        if self.ns_codes.len() <= i {
            self.ns_codes.resize(i + 1, [0; 10]);
        }
        let (w, bit) = code_bit(code);
        if self.ns_codes[i][w] & bit != 0 {
            return ns;
        }
        if Some(ns) == self.namespaces.overflow || self.budget.take(1) {
            self.ns_codes[i][w] |= bit;
            return ns;
        }
        self.namespaces.overflow_id()
    }

    /// Dense id of a (provider id, model id within it) pair, new or known.
    fn dense_model(&mut self, pid: u32, local: u32) -> u32 {
        let p = pid as usize;
        if self.models.len() <= p {
            self.models.resize_with(p + 1, Interner::default);
            self.model_ids.resize_with(p + 1, Vec::new);
        }
        let ids = &mut self.model_ids[p];
        let l = local as usize;
        if ids.len() <= l {
            ids.resize(l + 1, u32::MAX);
        }
        if ids[l] == u32::MAX {
            ids[l] = self.model_keys.len() as u32;
            self.model_keys.push((pid, local));
        }
        ids[l]
    }

    /// Dense id of (`__overflow__`, `__overflow__`), which always has histograms.
    fn model_sink(&mut self) -> u32 {
        if let Some(id) = self.model_sink {
            return id;
        }
        let pid = self.providers.overflow_id();
        set_detail(&mut self.provider_detail, pid, true);
        self.ensure_models(pid);
        let local = self.models[pid as usize].overflow_id();
        let id = self.dense_model(pid, local);
        set_detail(&mut self.model_detail, id, true);
        self.model_sink = Some(id);
        id
    }

    fn ensure_models(&mut self, pid: u32) {
        let p = pid as usize;
        if self.models.len() <= p {
            self.models.resize_with(p + 1, Interner::default);
            self.model_ids.resize_with(p + 1, Vec::new);
        }
    }

    /// Dense id of a (provider, model) pair.
    fn model_id(&mut self, provider: &str, model: &str) -> u32 {
        let cap = self.limits.max_series_per_dimension;
        let (pid, grant) = self
            .providers
            .admit(provider, cap, &self.budget, PROVIDER_COST);
        match grant {
            None => {}
            Some(Grant::Folded) => {
                self.overflow[Dimension::Provider as usize] += 1;
                set_detail(&mut self.provider_detail, pid, true);
            }
            Some(g) => set_detail(&mut self.provider_detail, pid, g == Grant::Full),
        }
        self.ensure_models(pid);
        let p = pid as usize;
        if let Some(local) = self.models[p].ids.get(model) {
            let local = *local;
            return self.dense_model(pid, local);
        }
        // The model cap counts (provider, model) pairs across all providers; a known model
        // keeps its id whatever the cap. A refused model counts under its provider's
        // `__overflow__` model (paid with the provider), which has no histograms of its own.
        let grant = if model == OVERFLOW_LABEL {
            Grant::Folded
        } else if self.model_keys.len() < cap {
            self.budget.grant(MODEL_COST)
        } else {
            Grant::Folded
        };
        let (local, detail) = if grant == Grant::Folded {
            self.overflow[Dimension::Model as usize] += 1;
            let sink = self.providers.overflow == Some(pid);
            (self.models[p].overflow_id(), sink)
        } else {
            let l = self.models[p].intern_new(Label::from(model));
            (l, grant == Grant::Full)
        };
        let id = self.dense_model(pid, local);
        if self.model_detail.len() <= id as usize || !self.model_detail[id as usize] {
            set_detail(&mut self.model_detail, id, detail);
        }
        id
    }

    /// The dense model id whose histograms take this model's observations.
    fn model_hist(&mut self, model: u32) -> u32 {
        if self
            .model_detail
            .get(model as usize)
            .copied()
            .unwrap_or(false)
        {
            model
        } else {
            self.model_sink()
        }
    }

    /// Applies one event received at `now_ms`.
    pub fn apply(&mut self, event: &Event, now_ms: i64) -> Outcome {
        match event {
            Event::Start(s) => self.start(s, now_ms),
            Event::Finish(r) => self.finish(r),
        }
    }

    fn start(&mut self, s: &StartMarker, now_ms: i64) -> Outcome {
        let h = self.id_hash(&s.request_id);
        if self.seen.contains(h) || self.pending.contains_key(&h) {
            return Outcome::Duplicate;
        }
        if self.pending.len() >= self.limits.max_pending {
            return Outcome::PendingFull;
        }
        let ns = self.namespace_id(&s.namespace);
        slot(&mut self.ns_deltas, ns).concurrency += 1;
        self.pending.insert(h, (ns, now_ms));
        self.pending_order.push_back((h, now_ms));
        Outcome::Started
    }

    fn finish(&mut self, r: &ValidRecord) -> Outcome {
        if let Some(id) = &r.request_id {
            let h = self.id_hash(id);
            if !self.seen.insert(h) {
                return Outcome::Duplicate;
            }
            if let Some((ns, _)) = self.pending.remove(&h) {
                slot(&mut self.ns_deltas, ns).concurrency -= 1;
            }
        }
        let ns = self.namespace_id(&r.namespace);
        let model = self.model_id(&r.provider, &r.model);
        let (ns_hist, model_hist) = (self.ns_hist(ns), self.model_hist(model));
        let ns_status = self.ns_code(ns, r.status);
        if ns_hist == ns && ns_status == ns {
            slot(&mut self.ns_deltas, ns).record(r, true);
        } else {
            slot(&mut self.ns_deltas, ns).record_usage_timed(r);
            slot(&mut self.ns_deltas, ns_hist).latency.record(r);
            *slot(&mut self.ns_deltas, ns_status)
                .status
                .entry(r.status)
                .or_insert(0) += 1;
        }
        let m = slot(&mut self.model_deltas, model);
        if model_hist == model {
            m.record(r, false);
        } else {
            m.record_usage_timed(r);
        }
        let m = slot(&mut self.model_deltas, model_hist);
        if model_hist != model {
            m.latency.record(r);
        }
        m.operation
            .get_or_insert_with(|| genai_operation(&r.endpoint));
        let usage = m.token_usage.get_or_insert_with(Box::default);
        usage.record(0, r.tokens.prompt_total());
        usage.record(1, r.tokens.output);
        let cap = self.limits.max_series_per_dimension;
        if let Some(user) = r.user_id.as_deref().or(r.user.as_deref()) {
            let (id, folded) = self.users.id(user, cap);
            self.overflow[Dimension::User as usize] += u64::from(folded);
            slot(&mut self.user_deltas, id).record_usage(r);
        }
        if let Some(key) = r.key_id.as_deref().or(r.key.as_deref()) {
            let (id, folded) = self.keys.id(key, cap);
            self.overflow[Dimension::Key as usize] += u64::from(folded);
            let k = slot(&mut self.key_deltas, id);
            k.record_usage(r);
            k.last_used_ms = k.last_used_ms.max(r.timestamp_ms);
        }
        Outcome::Counted
    }

    /// Abandons start markers older than the pending timeout; returns how many.
    pub fn expire(&mut self, now_ms: i64) -> u64 {
        let mut n = 0;
        while let Some(&(h, started)) = self.pending_order.front() {
            if now_ms - started < self.limits.pending_timeout_ms {
                break;
            }
            self.pending_order.pop_front();
            // The entry may have finished already, or been re-started later.
            if self.pending.get(&h).is_some_and(|(_, t)| *t == started)
                && let Some((ns, _)) = self.pending.remove(&h)
            {
                let scope = slot(&mut self.ns_deltas, ns);
                scope.concurrency -= 1;
                scope.abandoned += 1;
                n += 1;
            }
        }
        // Finished entries leave stale order entries behind; drop them when they dominate.
        if self.pending_order.len() > 2 * self.pending.len() + 1024 {
            let pending = &self.pending;
            self.pending_order
                .retain(|(h, t)| pending.get(h).is_some_and(|(_, s)| s == t));
        }
        n
    }

    /// Start markers waiting for their final record.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes the deltas accumulated since the last call, with global and per-provider
    /// aggregates derived from the namespace and model scopes.
    pub fn take(&mut self) -> Aggregates {
        let mut out = Aggregates {
            overflow: std::mem::take(&mut self.overflow),
            ..Aggregates::default()
        };
        for (id, agg) in self.ns_deltas.iter_mut().enumerate() {
            if is_untouched(agg) {
                continue;
            }
            let agg = std::mem::take(agg);
            out.global.merge_traffic(&agg);
            out.scopes
                .insert(ScopeKey::Namespace(self.namespaces.labels[id].clone()), agg);
        }
        for (id, agg) in self.model_deltas.iter_mut().enumerate() {
            if is_untouched(agg) {
                continue;
            }
            let agg = std::mem::take(agg);
            let (pid, local) = self.model_keys[id];
            let provider = self.providers.labels[pid as usize].clone();
            let p = out
                .scopes
                .entry(ScopeKey::Provider(provider.clone()))
                .or_default();
            p.merge_counters(&agg);
            // A provider without histograms of its own leaves its models' to `__overflow__`.
            if self
                .provider_detail
                .get(pid as usize)
                .copied()
                .unwrap_or(true)
            {
                p.latency.merge(&agg.latency);
            } else if !agg.latency.duration.is_empty() {
                out.scopes
                    .entry(ScopeKey::Provider(Label::const_new(OVERFLOW_LABEL)))
                    .or_default()
                    .latency
                    .merge(&agg.latency);
            }
            let model = self.models[pid as usize].labels[local as usize].clone();
            out.scopes.insert(ScopeKey::Model(provider, model), agg);
        }
        for (id, agg) in self.user_deltas.iter_mut().enumerate() {
            if agg.requests > 0 {
                let key = ScopeKey::User(self.users.labels[id].clone());
                out.scopes.insert(key, std::mem::take(agg));
            }
        }
        for (id, agg) in self.key_deltas.iter_mut().enumerate() {
            if agg.requests > 0 {
                let key = ScopeKey::Key(self.keys.labels[id].clone());
                out.scopes.insert(key, std::mem::take(agg));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::price::PriceTable;
    use crate::record::{Validation, parse_event};

    fn ev(json: &str) -> Event {
        let prices = PriceTable::default();
        parse_event(
            json,
            &Validation {
                now_ms: 1_760_000_000_000,
                prices: &prices,
                keep_requests: None,
            },
        )
        .expect(json)
    }

    #[test]
    fn counts_every_scope() {
        let mut a = Aggregator::new(Limits::default());
        for (i, status) in [200, 200, 500, 0].iter().enumerate() {
            let json = format!(
                r#"{{"request_id":"r{i}","namespace":"n","provider":"p","model":"m","status":{status},"duration_ms":{},"input_tokens":10,"output_tokens":5,"cost_usd":0.5}}"#,
                (i + 1) * 100
            );
            assert_eq!(a.apply(&ev(&json), 0), Outcome::Counted);
        }
        let d = a.take();
        assert_eq!(d.global.requests, 4);
        assert_eq!(d.global.failures, 2);
        assert_eq!(d.global.duration_ms_sum, 1000);
        assert_eq!(d.global.cost_micros, 2_000_000);
        assert_eq!(d.global.status.get(&200), Some(&2));
        assert_eq!(d.global.status.get(&0), Some(&1));
        let m = d
            .scope(&ScopeKey::Model("p".into(), "m".into()))
            .expect("model scope");
        assert_eq!(m.tokens.input, 40);
        assert_eq!(m.token_usage.as_ref().expect("usage").sums, [40, 20]);
        assert_eq!(m.latency.duration.count(), 4);
        assert!(m.status.is_empty());
        assert!(a.take().is_empty());
    }

    #[test]
    fn duplicates_are_not_counted() {
        let mut a = Aggregator::new(Limits::default());
        let e = ev(r#"{"request_id":"x","model":"m","status":200,"duration_ms":1}"#);
        assert_eq!(a.apply(&e, 0), Outcome::Counted);
        assert_eq!(a.apply(&e, 0), Outcome::Duplicate);
        assert_eq!(a.take().global.requests, 1);
    }

    #[test]
    fn dedup_window_is_bounded() {
        let mut a = Aggregator::new(Limits {
            dedup_window: 2,
            ..Limits::default()
        });
        for id in ["a", "b", "a", "c", "d", "e", "a"] {
            a.apply(
                &ev(&format!(
                    r#"{{"request_id":"{id}","model":"m","status":200,"duration_ms":1}}"#
                )),
                0,
            );
        }
        // The second "a" is within the last 2 ids' window; the third is 4 distinct ids later,
        // beyond the window (at least 2, at most 4 ids), so it counts again.
        assert_eq!(a.take().global.requests, 6);
    }

    #[test]
    fn two_phase_concurrency_and_expiry() {
        let mut a = Aggregator::new(Limits {
            pending_timeout_ms: 1000,
            ..Limits::default()
        });
        assert_eq!(
            a.apply(
                &ev(r#"{"phase":"start","request_id":"a","namespace":"n"}"#),
                0
            ),
            Outcome::Started
        );
        assert_eq!(
            a.apply(
                &ev(r#"{"phase":"start","request_id":"b","namespace":"n"}"#),
                10
            ),
            Outcome::Started
        );
        assert_eq!(
            a.apply(
                &ev(r#"{"phase":"start","request_id":"a","namespace":"n"}"#),
                20
            ),
            Outcome::Duplicate
        );
        let ns = ScopeKey::Namespace("n".into());
        assert_eq!(a.take().scope(&ns).expect("ns").concurrency, 2);
        a.apply(
            &ev(r#"{"request_id":"a","namespace":"n","model":"m","status":200,"duration_ms":1}"#),
            30,
        );
        assert_eq!(a.expire(999), 0);
        assert_eq!(a.expire(1010), 1);
        let d = a.take();
        let s = d.scope(&ns).expect("ns");
        assert_eq!(s.concurrency, -2);
        assert_eq!(s.abandoned, 1);
        assert_eq!(a.pending(), 0);
        // A late start for a finished id does not raise the gauge.
        assert_eq!(
            a.apply(
                &ev(r#"{"phase":"start","request_id":"a","namespace":"n"}"#),
                2000
            ),
            Outcome::Duplicate
        );
    }

    #[test]
    fn series_cap_folds_into_overflow() {
        let mut a = Aggregator::new(Limits {
            max_series_per_dimension: 2,
            ..Limits::default()
        });
        for ns in ["a", "b", "c", "d", "a"] {
            a.apply(
                &ev(&format!(
                    r#"{{"namespace":"{ns}","model":"m","status":200,"duration_ms":1}}"#
                )),
                0,
            );
        }
        let d = a.take();
        assert_eq!(d.overflow[Dimension::Namespace as usize], 2);
        let over = d
            .scope(&ScopeKey::Namespace(OVERFLOW_LABEL.into()))
            .expect("overflow series");
        assert_eq!(over.requests, 2);
        assert_eq!(
            d.scope(&ScopeKey::Namespace("a".into()))
                .expect("a")
                .requests,
            2
        );
    }

    #[test]
    fn users_and_keys_get_usage_scopes() {
        let mut a = Aggregator::new(Limits {
            max_series_per_dimension: 1,
            ..Limits::default()
        });
        let t0 = 1_760_000_000_000i64;
        for (user, key, ts) in [("u1", "k1", t0 - 9), ("u1", "k1", t0 - 5), ("u2", "k2", t0)] {
            let json = format!(
                r#"{{"user_id":"{user}","key":"{key}","timestamp":{ts},"model":"m","status":200,"duration_ms":1,"output_tokens":2,"cost_usd":0.25}}"#
            );
            a.apply(&ev(&json), 0);
        }
        a.apply(&ev(r#"{"model":"m","status":200,"duration_ms":1}"#), 0);
        let d = a.take();
        let u = d.scope(&ScopeKey::User("u1".into())).expect("user");
        assert_eq!(
            (u.requests, u.tokens.output, u.cost_micros),
            (2, 4, 500_000)
        );
        assert!(u.latency.duration.is_empty(), "no latency per user");
        let k = d.scope(&ScopeKey::Key("k1".into())).expect("key");
        assert_eq!((k.requests, k.last_used_ms), (2, t0 - 5));
        // Cap 1: the second user and key fold into the overflow series.
        assert_eq!(d.overflow[Dimension::User as usize], 1);
        assert_eq!(d.overflow[Dimension::Key as usize], 1);
        assert_eq!(
            d.scope(&ScopeKey::User(OVERFLOW_LABEL.into()))
                .expect("overflow")
                .requests,
            1
        );
        assert_eq!(d.global.requests, 4);
    }

    #[test]
    fn budget_degrades_histograms_then_labels_and_fit_bounds_merged_views() {
        use crate::budget::{MIN_SERIES, RESERVE, Refusal};
        let budget = Arc::new(SeriesBudget::new(MIN_SERIES));
        let mut a = Aggregator::with_budget(Limits::default(), budget.clone());
        let mut b =
            Aggregator::with_budget(Limits::default(), Arc::new(SeriesBudget::new(MIN_SERIES)));
        for i in 0..200 {
            for (agg, w) in [(&mut a, "a"), (&mut b, "b")] {
                let json = format!(
                    r#"{{"namespace":"{w}{i}","provider":"p{w}{i}","model":"m","status":200,"duration_ms":{i}}}"#
                );
                agg.apply(&ev(&json), 0);
            }
        }
        assert!(budget.refused(Refusal::Histogram) > 0);
        assert!(budget.refused(Refusal::Series) > 0);
        assert!(budget.used() <= budget.limit());
        let (da, db) = (a.take(), b.take());
        let ns_sum = |d: &Aggregates| -> (u64, u64) {
            d.scopes
                .iter()
                .filter(|(k, _)| matches!(k, ScopeKey::Namespace(_)))
                .fold((0, 0), |(r, h), (_, s)| {
                    (r + s.requests, h + s.latency.duration.count())
                })
        };
        // Every record counted once in the namespace counters and once in their histograms.
        assert_eq!(ns_sum(&da), (200, 200));
        let sink = da
            .scope(&ScopeKey::Namespace(OVERFLOW_LABEL.into()))
            .expect("overflow");
        assert!(
            sink.latency.duration.count() > sink.requests,
            "takes others' observations"
        );
        let mut merged = Aggregates::default();
        merged.merge(&da);
        merged.merge(&db);
        let room = MIN_SERIES - RESERVE;
        let folded = merged.fit(room);
        assert!(!folded.is_empty());
        assert_eq!(merged.global.requests, 400);
        assert_eq!(ns_sum(&merged), (400, 400));
        assert!(merged.fit(room).is_empty(), "fitted views stay as they are");
    }

    #[test]
    fn merge_is_addition() {
        let mut a = Aggregator::new(Limits::default());
        a.apply(
            &ev(r#"{"model":"m","status":200,"duration_ms":7,"output_tokens":3}"#),
            0,
        );
        let d1 = a.take();
        a.apply(
            &ev(r#"{"model":"m","status":404,"duration_ms":9,"output_tokens":4}"#),
            0,
        );
        let d2 = a.take();
        let mut total = Aggregates::default();
        total.merge(&d1);
        total.merge(&d2);
        assert_eq!(total.global.requests, 2);
        assert_eq!(total.global.tokens.output, 7);
        assert_eq!(total.global.latency.duration.count(), 2);
        assert_eq!(total.global.status.len(), 2);
    }
}
