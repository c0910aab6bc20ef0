//! The synthetic gateway traffic generator, shared by `gatemeter demo` and `gatemeter loadgen`.
//!
//! It is deterministic for a seed: a small world of namespaces, users with keys, providers
//! (one of them flaky) and models (one of them unpriced), conversations that reuse a session id,
//! streaming requests with time to first byte, retries across providers, blocked requests and
//! upstream errors, log-normal long-tailed durations and token counts, and a cost reported on
//! some records and left to the price table on others. It does no I/O and reads no clock; the
//! tools that use it own the timing and the connections. [`claude_code`] simulates a few
//! developers' Claude Code CLIs the same way.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

pub(crate) mod claude_code;

/// Share of priced records that carry their own `cost_usd` in the demo (the rest use the price table).
pub(crate) const DEMO_COST_SHARE: f64 = 0.5;
/// Share of requests sent in two phases.
const TWO_PHASE_SHARE: f64 = 0.3;
/// Share of two-phase requests never finished.
const ABANDON_SHARE: f64 = 0.02;

/// How many optional fields a generated record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// Everything a full gateway record has (user agent, client ip, trace id, ...).
    Full,
    /// The fields that feed aggregates; smaller bodies for load generation.
    Lean,
}

/// How a generated request is to be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// One final record.
    Direct,
    /// A start marker now and the final record after the request's duration.
    TwoPhase,
    /// A start marker only: the request is never finished.
    Abandoned,
}

/// One generated request.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    /// The final record.
    pub(crate) record: Synthetic,
    /// How to send it.
    pub(crate) delivery: Delivery,
}

/// A generated final record and the figures it carries.
#[derive(Debug, Clone)]
pub(crate) struct Synthetic {
    /// The record's fields, `request_id` included.
    pub(crate) fields: Map<String, Value>,
    /// Its `request_id`.
    pub(crate) request_id: String,
    /// Its namespace.
    pub(crate) namespace: &'static str,
    /// Its `duration_ms`.
    pub(crate) duration_ms: u64,
    /// Tokens in the order of [`gatemeter::record::TOKEN_TYPES`].
    pub(crate) tokens: [u64; 5],
    /// The `cost_usd` it carries, in micro-USD, if any.
    pub(crate) cost_micros: Option<u64>,
}

impl Synthetic {
    /// The final record as one JSON object.
    pub(crate) fn to_json(&self) -> String {
        Value::Object(self.fields.clone()).to_string()
    }

    /// The matching `phase: start` marker.
    pub(crate) fn start_json(&self) -> String {
        serde_json::json!({"phase": "start", "request_id": self.request_id, "namespace": self.namespace}).to_string()
    }
}

/// USD per million tokens: input, output, cache write 5m, cache write 1h, cache read.
type Price = [f64; 5];

/// Which cache buckets a provider reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheStyle {
    /// Anthropic: reads and 5m/1h writes.
    Anthropic,
    /// OpenAI and Gemini: cached prompt reads only.
    ReadsOnly,
}

/// A provider serving a model on an endpoint.
struct Route {
    provider: &'static str,
    model: &'static str,
    endpoint: &'static str,
    /// Relative frequency.
    weight: u32,
    /// Median duration of a successful request, ms.
    median_ms: f64,
    /// List price (for gateway-reported costs; the server may price differently).
    price: Price,
    /// Whether the example config prices this model (if not, some records are unpriced).
    priced: bool,
    /// Share of streaming requests.
    streaming: f64,
    cache: CacheStyle,
    /// Much more likely to fail with 5xx / no response.
    flaky: bool,
    /// A model clients ask for that the gateway redirects to this one.
    redirected_from: &'static str,
    user_agent: &'static str,
}

const SONNET: Price = [3.0, 15.0, 3.75, 6.0, 0.30];
const HAIKU: Price = [1.0, 5.0, 1.25, 2.0, 0.10];
const OPUS: Price = [15.0, 75.0, 18.75, 30.0, 1.50];
const GPT4O: Price = [2.5, 10.0, 2.5, 2.5, 1.25];
const GPT4O_MINI: Price = [0.15, 0.60, 0.15, 0.15, 0.075];
const GEMINI_PRO: Price = [1.25, 10.0, 1.25, 1.25, 0.125];
const CODEX: Price = [1.25, 10.0, 1.25, 1.25, 0.125];

const CLAUDE_UA: &str = "claude-cli/2.1.3 (external, cli)";
const OPENAI_UA: &str = "openai-python/1.109.1";

const ROUTES: &[Route] = &[
    Route {
        provider: "anthropic",
        model: "claude-sonnet-4-5-20250929",
        endpoint: "/v1/messages",
        weight: 30,
        median_ms: 6_000.0,
        price: SONNET,
        priced: true,
        streaming: 0.8,
        cache: CacheStyle::Anthropic,
        flaky: false,
        redirected_from: "claude-3-7-sonnet-20250219",
        user_agent: CLAUDE_UA,
    },
    Route {
        provider: "anthropic",
        model: "claude-haiku-4-5-20251001",
        endpoint: "/v1/messages",
        weight: 16,
        median_ms: 1_500.0,
        price: HAIKU,
        priced: true,
        streaming: 0.5,
        cache: CacheStyle::Anthropic,
        flaky: false,
        redirected_from: "claude-3-5-haiku-20241022",
        user_agent: "anthropic-sdk-python/0.69.0",
    },
    Route {
        provider: "anthropic",
        model: "claude-opus-4-1-20250805",
        endpoint: "/v1/messages",
        weight: 5,
        median_ms: 15_000.0,
        price: OPUS,
        priced: true,
        streaming: 0.9,
        cache: CacheStyle::Anthropic,
        flaky: false,
        redirected_from: "claude-opus-4-20250514",
        user_agent: CLAUDE_UA,
    },
    Route {
        provider: "aws-bedrock",
        model: "claude-sonnet-4-5-20250929",
        endpoint: "/v1/messages",
        weight: 10,
        median_ms: 7_000.0,
        price: SONNET,
        priced: true,
        streaming: 0.7,
        cache: CacheStyle::Anthropic,
        flaky: false,
        redirected_from: "claude-3-7-sonnet-20250219",
        user_agent: CLAUDE_UA,
    },
    Route {
        provider: "openai",
        model: "gpt-4o-mini",
        endpoint: "/v1/chat/completions",
        weight: 15,
        median_ms: 900.0,
        price: GPT4O_MINI,
        priced: true,
        streaming: 0.4,
        cache: CacheStyle::ReadsOnly,
        flaky: false,
        redirected_from: "gpt-3.5-turbo",
        user_agent: OPENAI_UA,
    },
    Route {
        provider: "openai",
        model: "gpt-4o",
        endpoint: "/v1/chat/completions",
        weight: 8,
        median_ms: 2_500.0,
        price: GPT4O,
        priced: true,
        streaming: 0.5,
        cache: CacheStyle::ReadsOnly,
        flaky: false,
        redirected_from: "gpt-4-turbo",
        user_agent: OPENAI_UA,
    },
    Route {
        provider: "openai",
        model: "gpt-5-codex",
        endpoint: "/v1/responses",
        weight: 7,
        median_ms: 20_000.0,
        price: CODEX,
        priced: false,
        streaming: 0.9,
        cache: CacheStyle::ReadsOnly,
        flaky: false,
        redirected_from: "gpt-5",
        user_agent: "codex_cli_rs/0.46.0",
    },
    Route {
        provider: "google-vertex",
        model: "gemini-2.5-pro",
        endpoint: "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
        weight: 6,
        median_ms: 5_000.0,
        price: GEMINI_PRO,
        priced: true,
        streaming: 1.0,
        cache: CacheStyle::ReadsOnly,
        flaky: false,
        redirected_from: "gemini-1.5-pro",
        user_agent: "google-genai-sdk/1.41.0",
    },
    Route {
        provider: "example-reseller",
        model: "claude-haiku-4-5-20251001",
        endpoint: "/v1/messages",
        weight: 6,
        median_ms: 2_000.0,
        price: HAIKU,
        priced: true,
        streaming: 0.5,
        cache: CacheStyle::Anthropic,
        flaky: true,
        redirected_from: "claude-3-5-haiku-20241022",
        user_agent: "anthropic-sdk-typescript/0.65.0",
    },
    Route {
        provider: "example-reseller",
        model: "gpt-4o-mini",
        endpoint: "/v1/chat/completions",
        weight: 4,
        median_ms: 1_200.0,
        price: GPT4O_MINI,
        priced: true,
        streaming: 0.4,
        cache: CacheStyle::ReadsOnly,
        flaky: true,
        redirected_from: "gpt-3.5-turbo",
        user_agent: OPENAI_UA,
    },
];

/// Providers a failed attempt may have gone to before the final one.
const FALLBACKS: &[&str] = &[
    "example-reseller",
    "aws-bedrock",
    "anthropic",
    "openai",
    "google-vertex",
];

/// A namespace and the routes its applications use.
struct Namespace {
    name: &'static str,
    routes: &'static [usize],
    /// Whether its clients hold conversations (session ids).
    sessions: bool,
}

const NAMESPACES: &[Namespace] = &[
    Namespace {
        name: "web-app",
        routes: &[0, 1, 4, 5, 7, 8, 9],
        sessions: true,
    },
    Namespace {
        name: "support-bot",
        routes: &[1, 4, 5, 8, 9],
        sessions: true,
    },
    Namespace {
        name: "code-assist",
        routes: &[0, 2, 3, 6],
        sessions: true,
    },
    Namespace {
        name: "batch-eval",
        routes: &[0, 1, 2, 4, 5, 7],
        sessions: false,
    },
];

/// Users, their namespace (index into [`NAMESPACES`]) and relative activity.
const USERS: &[(&str, usize, u32)] = &[
    ("alice", 0, 9),
    ("bob", 0, 4),
    ("carol", 0, 6),
    ("dave", 0, 2),
    ("erin", 0, 3),
    ("frank", 1, 8),
    ("grace", 1, 5),
    ("heidi", 1, 2),
    ("ivan", 1, 3),
    ("judy", 2, 10),
    ("mallory", 2, 6),
    ("niaj", 2, 7),
    ("olivia", 2, 4),
    ("peggy", 2, 3),
    ("rupert", 2, 2),
    ("sybil", 0, 1),
    ("trent", 1, 1),
    ("victor", 2, 5),
    ("eval-runner", 3, 12),
    ("nightly-ci", 3, 6),
];

/// A user's current conversation.
#[derive(Debug, Clone, Default)]
struct Session {
    id: Option<String>,
    messages: u32,
}

/// The deterministic traffic generator.
pub(crate) struct Traffic {
    rng: SmallRng,
    id_prefix: String,
    next_id: u64,
    detail: Detail,
    cost_share: f64,
    sessions: Vec<Session>,
    user_weights: u32,
}

impl Traffic {
    /// A generator for `seed`; request ids are `{id_prefix}-{n}`; `cost_share` of the records of
    /// priced models carry `cost_usd` (1.0: every record carries it).
    pub(crate) fn new(seed: u64, id_prefix: &str, detail: Detail, cost_share: f64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            id_prefix: id_prefix.to_string(),
            next_id: 0,
            detail,
            cost_share: cost_share.clamp(0.0, 1.0),
            sessions: vec![Session::default(); USERS.len()],
            user_weights: USERS.iter().map(|u| u.2).sum(),
        }
    }

    /// The next request and how to deliver it.
    pub(crate) fn next_request(&mut self) -> Planned {
        let record = self.next_record();
        let delivery = if self.rng.random_bool(TWO_PHASE_SHARE) {
            if self.rng.random_bool(ABANDON_SHARE) {
                Delivery::Abandoned
            } else {
                Delivery::TwoPhase
            }
        } else {
            Delivery::Direct
        };
        Planned { record, delivery }
    }

    /// Standard normal deviate (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.rng.random::<f64>();
        let u2 = self.rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Log-normal value with the given median and shape, clamped.
    fn log_normal(&mut self, median: f64, sigma: f64, min: f64, max: f64) -> u64 {
        (median * (sigma * self.normal()).exp())
            .clamp(min, max)
            .round() as u64
    }

    fn pick_user(&mut self) -> usize {
        let mut n = self.rng.random_range(0..self.user_weights);
        for (i, u) in USERS.iter().enumerate() {
            if n < u.2 {
                return i;
            }
            n -= u.2;
        }
        0
    }

    fn pick_route(&mut self, ns: &Namespace) -> &'static Route {
        let total: u32 = ns.routes.iter().map(|&r| ROUTES[r].weight).sum();
        let mut n = self.rng.random_range(0..total.max(1));
        for &r in ns.routes {
            if n < ROUTES[r].weight {
                return &ROUTES[r];
            }
            n -= ROUTES[r].weight;
        }
        &ROUTES[0]
    }

    fn hex(&mut self, digits: usize) -> String {
        (0..digits)
            .map(|_| char::from_digit(self.rng.random_range(0..16u32), 16).unwrap_or('0'))
            .collect()
    }

    /// Status and error text of an attempt.
    fn outcome(&mut self, route: &Route) -> (u16, Option<&'static str>) {
        let failure = if route.flaky { 0.18 } else { 0.04 };
        if !self.rng.random_bool(failure) {
            return (200, None);
        }
        let overloaded: (u16, &str) =
            if route.provider == "anthropic" || route.provider == "aws-bedrock" {
                (529, "overloaded_error: Overloaded")
            } else {
                (503, "upstream service unavailable")
            };
        let table: &[(u16, &str, u32)] = if route.flaky {
            &[
                (500, "upstream returned 500: internal server error", 35),
                (502, "bad gateway: upstream closed the connection", 20),
                (overloaded.0, overloaded.1, 15),
                (0, "upstream connect error: connection reset by peer", 15),
                (429, "rate_limit_error: too many requests", 15),
            ]
        } else {
            &[
                (
                    429,
                    "rate_limit_error: Number of request tokens has exceeded your per-minute rate limit",
                    40,
                ),
                (overloaded.0, overloaded.1, 25),
                (500, "api_error: Internal server error", 15),
                (0, "upstream timeout: no response within 600 s", 10),
                (400, "invalid_request_error: prompt is too long", 10),
            ]
        };
        let total: u32 = table.iter().map(|t| t.2).sum();
        let mut n = self.rng.random_range(0..total);
        for &(status, error, weight) in table {
            if n < weight {
                return (status, Some(error));
            }
            n -= weight;
        }
        (500, Some("api_error"))
    }

    /// The next final record: who sent it, where it went, how it ended, what it used and cost.
    /// Each step draws from the one random stream in a fixed order, so a seed gives the same
    /// traffic.
    fn next_record(&mut self) -> Synthetic {
        self.next_id += 1;
        let request_id = format!("{}-{}", self.id_prefix, self.next_id);
        let u = self.pick_user();
        let ns = &NAMESPACES[USERS[u].1];
        let route = self.pick_route(ns);
        let mut f = Map::new();
        f.insert("request_id".into(), Value::from(request_id.clone()));
        f.insert("namespace".into(), Value::from(ns.name));
        self.put_caller(&mut f, u, route);
        self.put_model(&mut f, route);
        if ns.sessions {
            self.put_session(&mut f, u);
        }
        let record = |fields, duration_ms, tokens, cost_micros| Synthetic {
            fields,
            request_id,
            namespace: ns.name,
            duration_ms,
            tokens,
            cost_micros,
        };

        // Blocked before forwarding: no provider, no tokens.
        if self.rng.random_bool(0.005) {
            let duration_ms = self.put_blocked(&mut f);
            let cost_micros = self.cost_share_hit(route).then_some(0);
            if let Some(c) = cost_micros {
                self.put_cost(&mut f, c);
            }
            return record(f, duration_ms, [0; 5], cost_micros);
        }

        self.put_provider(&mut f, route);
        let (status, streaming) = self.put_outcome(&mut f, route);
        let duration_ms = self.duration_ms(status, route);
        f.insert("duration_ms".into(), Value::from(duration_ms));
        let tokens = self.put_tokens(&mut f, route, status, streaming, duration_ms);
        let cost_micros = self
            .cost_share_hit(route)
            .then(|| reported_cost(route, &tokens));
        if let Some(c) = cost_micros {
            self.put_cost(&mut f, c);
        }
        record(f, duration_ms, tokens, cost_micros)
    }

    /// Who called: user and key (an email and a laptop in session namespaces, a service
    /// otherwise), and in full detail the gateway's view of the client.
    fn put_caller(&mut self, f: &mut Map<String, Value>, u: usize, route: &Route) {
        let (user, ns_index, _) = USERS[u];
        let ns = &NAMESPACES[ns_index];
        let email = if ns.sessions {
            format!("{user}@example.com")
        } else {
            user.to_string()
        };
        f.insert("user".into(), Value::from(email));
        let key = if ns.sessions {
            format!("{user}-laptop")
        } else {
            format!("{user}-service")
        };
        f.insert("key".into(), Value::from(key));
        if self.detail == Detail::Lean {
            return;
        }
        f.insert("user_id".into(), Value::from(format!("u-{:04}", 1001 + u)));
        f.insert(
            "key_id".into(),
            Value::from(format!("key_{:06x}", 0x5eed00 + u * 7919)),
        );
        f.insert(
            "instance".into(),
            Value::from(if u.is_multiple_of(2) { "gw-a" } else { "gw-b" }),
        );
        f.insert("method".into(), Value::from("POST"));
        f.insert("user_agent".into(), Value::from(route.user_agent));
        f.insert(
            "client_ip".into(),
            Value::from(format!("10.20.{}.{}", ns_index, 10 + u)),
        );
        if self.rng.random_bool(0.5) {
            let trace = self.hex(32);
            f.insert("trace_id".into(), Value::from(trace));
        }
    }

    /// The model (sometimes redirected from another) and the endpoint.
    fn put_model(&mut self, f: &mut Map<String, Value>, route: &Route) {
        f.insert("model".into(), Value::from(route.model));
        if self.rng.random_bool(0.03) {
            f.insert("original_model".into(), Value::from(route.redirected_from));
        }
        f.insert("endpoint".into(), Value::from(route.endpoint));
    }

    /// The user's conversation: it lasts for several requests, then a new one starts.
    fn put_session(&mut self, f: &mut Map<String, Value>, u: usize) {
        if self.sessions[u].id.is_none() || self.rng.random_bool(0.12) {
            let id = format!("sess-{}", self.hex(16));
            self.sessions[u] = Session {
                id: Some(id),
                messages: 0,
            };
        }
        let s = &mut self.sessions[u];
        s.messages += 2;
        if let Some(id) = &s.id {
            f.insert("session_id".into(), Value::from(id.clone()));
        }
        if self.detail == Detail::Full {
            f.insert("messages_count".into(), Value::from(s.messages - 1));
        }
    }

    /// A request the gateway blocked before forwarding; its duration.
    fn put_blocked(&mut self, f: &mut Map<String, Value>) -> u64 {
        f.insert("provider".into(), Value::from(""));
        f.insert("status".into(), Value::from(403));
        let duration_ms = self.log_normal(15.0, 0.5, 2.0, 500.0);
        f.insert("duration_ms".into(), Value::from(duration_ms));
        f.insert("is_streaming".into(), Value::from(false));
        f.insert("blocked_by".into(), Value::from("sensitive-words"));
        f.insert(
            "block_reason".into(),
            Value::from("the prompt matched a blocked term"),
        );
        f.insert("error".into(), Value::from("request blocked by policy"));
        duration_ms
    }

    /// The provider, after retries on other providers for a few requests.
    fn put_provider(&mut self, f: &mut Map<String, Value>, route: &Route) {
        if self.rng.random_bool(0.06) {
            let retries = self.rng.random_range(1..=2u32);
            let mut chain: Vec<&str> = Vec::new();
            for _ in 0..retries {
                let mut p = FALLBACKS[self.rng.random_range(0..FALLBACKS.len())];
                if p == route.provider {
                    p = "example-reseller";
                }
                chain.push(p);
            }
            chain.push(route.provider);
            f.insert("retry_count".into(), Value::from(retries));
            f.insert("provider_chain".into(), Value::from(chain));
        }
        f.insert("provider".into(), Value::from(route.provider));
    }

    /// Status, streaming and error text; the status and whether it streamed.
    fn put_outcome(&mut self, f: &mut Map<String, Value>, route: &Route) -> (u16, bool) {
        let (status, error) = self.outcome(route);
        let streaming = status == 200 && self.rng.random_bool(route.streaming);
        f.insert("status".into(), Value::from(status));
        f.insert("is_streaming".into(), Value::from(streaming));
        if let Some(e) = error {
            f.insert("error".into(), Value::from(e));
        }
        (status, streaming)
    }

    /// A long-tailed duration for the outcome: successes by the route's median (a few five times
    /// longer), quick refusals, and no-answer failures that time out or fail fast.
    fn duration_ms(&mut self, status: u16, route: &Route) -> u64 {
        match status {
            200 => {
                let mut d = self.log_normal(route.median_ms, 0.9, 50.0, 120_000.0);
                if self.rng.random_bool(0.01) {
                    d = (d * 5).min(120_000);
                }
                d
            }
            429 | 400 => self.log_normal(120.0, 0.7, 20.0, 3_000.0),
            0 => {
                if self.rng.random_bool(0.5) {
                    self.log_normal(60_000.0, 0.4, 5_000.0, 120_000.0)
                } else {
                    self.log_normal(300.0, 0.8, 20.0, 10_000.0)
                }
            }
            _ => self.log_normal(2_000.0, 1.0, 50.0, 60_000.0),
        }
    }

    /// Time to first byte (streaming successes) and tokens by type, in the order of
    /// [`gatemeter::record::TOKEN_TYPES`]; lean records leave out zero counts.
    fn put_tokens(
        &mut self,
        f: &mut Map<String, Value>,
        route: &Route,
        status: u16,
        streaming: bool,
        duration_ms: u64,
    ) -> [u64; 5] {
        let mut tokens = [0u64; 5];
        if status == 200 {
            let ttfb = if streaming {
                let share = 0.03 + 0.27 * self.rng.random::<f64>();
                let t = ((duration_ms as f64 * share).round() as u64)
                    .clamp(20.min(duration_ms), duration_ms);
                f.insert("ttfb_ms".into(), Value::from(t));
                t
            } else {
                0
            };
            tokens[0] = self.log_normal(1_200.0, 1.0, 1.0, 200_000.0);
            let tokens_per_s = 30.0 + 60.0 * self.rng.random::<f64>();
            tokens[1] = ((duration_ms - ttfb) as f64 / 1000.0 * tokens_per_s)
                .clamp(1.0, 64_000.0)
                .round() as u64;
            self.cache_tokens(route.cache, &mut tokens);
        } else if status == 400 || (status >= 500 && self.rng.random_bool(0.3)) {
            // The prompt was read (and billed) before the failure.
            tokens[0] = self.log_normal(3_000.0, 1.0, 1.0, 200_000.0);
        }
        const FIELDS: [&str; 5] = [
            "input_tokens",
            "output_tokens",
            "cache_creation_5m_tokens",
            "cache_creation_1h_tokens",
            "cache_read_tokens",
        ];
        for (name, n) in FIELDS.iter().zip(tokens) {
            if n > 0 || self.detail == Detail::Full {
                f.insert((*name).into(), Value::from(n));
            }
        }
        tokens
    }

    /// Cache reads and writes of a successful request, as the provider reports them.
    fn cache_tokens(&mut self, style: CacheStyle, tokens: &mut [u64; 5]) {
        match style {
            CacheStyle::Anthropic => {
                if self.rng.random_bool(0.6) {
                    tokens[4] = self.log_normal(20_000.0, 0.8, 1_024.0, 200_000.0);
                }
                if self.rng.random_bool(0.15) {
                    tokens[2] = self.log_normal(4_000.0, 0.8, 1_024.0, 100_000.0);
                }
                if self.rng.random_bool(0.03) {
                    tokens[3] = self.log_normal(8_000.0, 0.8, 1_024.0, 100_000.0);
                }
            }
            CacheStyle::ReadsOnly => {
                if self.rng.random_bool(0.4) {
                    tokens[4] = self.log_normal(2_000.0, 0.8, 1_024.0, 100_000.0);
                }
            }
        }
    }

    /// Whether this record carries its own cost: unpriced models less often, so some stay unpriced.
    /// A share of 1.0 means every record, unpriced ones included.
    fn cost_share_hit(&mut self, route: &Route) -> bool {
        if self.cost_share >= 1.0 {
            return true;
        }
        let share = if route.priced {
            self.cost_share
        } else {
            self.cost_share * 0.6
        };
        self.rng.random_bool(share)
    }

    /// Writes `cost_usd` as an exact decimal: mostly a JSON number, sometimes a string.
    fn put_cost(&mut self, f: &mut Map<String, Value>, micros: u64) {
        let text = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
        let v = if self.rng.random_bool(0.2) {
            Value::from(text)
        } else {
            text.parse::<serde_json::Number>()
                .map(Value::Number)
                .unwrap_or(Value::from(text))
        };
        f.insert("cost_usd".into(), v);
    }
}

/// The cost a gateway reports for these tokens on this route, in micro-USD (the reseller adds
/// 10 %).
fn reported_cost(route: &Route, tokens: &[u64; 5]) -> u64 {
    let mult = if route.provider == "example-reseller" {
        1.1
    } else {
        1.0
    };
    let usd_micros: f64 = tokens
        .iter()
        .zip(route.price)
        .map(|(&n, p)| n as f64 * p)
        .sum();
    (usd_micros * mult).round() as u64
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use gatemeter::price::PriceTable;
    use gatemeter::record::{Event, Millis, Validation, parse_event};

    use super::*;

    const NOW: i64 = 1_760_000_000_000;
    #[test]
    fn generated_records_are_valid_and_varied() {
        let prices = PriceTable::default();
        let v = Validation {
            now_ms: NOW,
            prices: &prices,
            keep_requests: None,
        };
        let mut t = Traffic::new(42, "demo-test", Detail::Full, DEMO_COST_SHARE);
        let (mut namespaces, mut models, mut providers, mut sessions) = (
            HashSet::new(),
            HashSet::new(),
            HashSet::new(),
            HashSet::new(),
        );
        let (mut errors, mut no_cost, mut with_cost, mut streaming, mut retries) = (0, 0, 0, 0, 0);
        let (mut two_phase, mut abandoned, mut no_response, mut long) = (0, 0, 0, 0);
        let mut statuses = HashSet::new();
        for _ in 0..1000 {
            let p = t.next_request();
            let json = p.record.to_json();
            let r = match parse_event(&json, &v) {
                Ok(Event::Finish(r)) => r,
                other => panic!("{json} gave {other:?}"),
            };
            match p.delivery {
                Delivery::Direct => {}
                Delivery::TwoPhase | Delivery::Abandoned => {
                    let start = p.record.start_json();
                    assert!(
                        matches!(parse_event(&start, &v), Ok(Event::Start(_))),
                        "{start}"
                    );
                    if p.delivery == Delivery::Abandoned {
                        abandoned += 1;
                    } else {
                        two_phase += 1;
                    }
                }
            }
            assert_eq!(r.tokens.as_array(), p.record.tokens);
            assert_eq!(r.duration_ms, Millis::from_ms(p.record.duration_ms));
            if let Some(c) = p.record.cost_micros {
                assert_eq!(r.cost_micros, c, "{json}");
            }
            namespaces.insert(r.namespace.to_string());
            models.insert(r.model.to_string());
            providers.insert(r.provider.to_string());
            statuses.insert(r.status);
            if let Some(s) = &r.session_id {
                sessions.insert(s.to_string());
            }
            errors += usize::from(!r.is_success());
            no_response += usize::from(r.status == 0 && r.error.is_some());
            if p.record.cost_micros.is_some() {
                with_cost += 1;
            } else {
                no_cost += 1;
            }
            streaming += usize::from(r.is_streaming && r.ttfb_ms.is_some());
            retries += usize::from(
                r.retry_count > 0 && r.provider_chain.len() == r.retry_count as usize + 1,
            );
            long += usize::from(r.duration_ms >= Millis::from_ms(20_000));
        }
        assert!(namespaces.len() >= 4, "{namespaces:?}");
        assert!(models.len() >= 6, "{models:?}");
        assert!(providers.len() >= 4, "{providers:?}");
        assert!(errors >= 20, "{errors}");
        assert!(no_response >= 1, "{no_response}");
        for code in [429, 500] {
            assert!(statuses.contains(&code), "{statuses:?}");
        }
        assert!(no_cost >= 100 && with_cost >= 100, "{no_cost} {with_cost}");
        assert!(streaming >= 100, "{streaming}");
        assert!(retries >= 10, "{retries}");
        assert!(two_phase >= 100, "{two_phase}");
        assert!(abandoned >= 1, "{abandoned}");
        assert!(long >= 10, "{long}");
        // Sessions are reused: far fewer sessions than records that carry one.
        assert!(
            sessions.len() >= 20 && sessions.len() <= 400,
            "{}",
            sessions.len()
        );
    }

    #[test]
    fn same_seed_same_traffic() {
        let mut a = Traffic::new(7, "x", Detail::Full, DEMO_COST_SHARE);
        let mut b = Traffic::new(7, "x", Detail::Full, DEMO_COST_SHARE);
        let mut c = Traffic::new(8, "x", Detail::Full, DEMO_COST_SHARE);
        let mut differs = false;
        for _ in 0..100 {
            let (ra, rb, rc) = (a.next_request(), b.next_request(), c.next_request());
            assert_eq!(ra.record.to_json(), rb.record.to_json());
            assert_eq!(ra.delivery, rb.delivery);
            differs |= ra.record.to_json() != rc.record.to_json();
        }
        assert!(differs);
    }

    #[test]
    fn full_cost_share_always_reports_cost() {
        let mut t = Traffic::new(3, "lg", Detail::Lean, 1.0);
        for _ in 0..500 {
            let p = t.next_request();
            assert!(p.record.cost_micros.is_some(), "{}", p.record.to_json());
        }
    }
}
