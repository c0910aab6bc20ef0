//! Simulated Claude Code CLI sessions: what a few developers' CLIs export over OTLP, so the
//! Claude Code and sessions dashboards have data on day one (`gatemeter demo`).
//!
//! Each export holds the log events of the sessions' latest turns (`user_prompt`,
//! `api_request` with tokens, cost and model, the odd `api_error` before a retry,
//! `tool_decision`, `tool_result`) and their `claude_code.*` metric points as delta sums
//! (`session.count`, `cost.usage`, `token.usage`, `active_time.total`, `lines_of_code.count`,
//! `code_edit_tool.decision`, `commit.count`, `pull_request.count`). Shapes, attribute names and
//! scopes are those of the real CLI's captures (`tests/data/claude-code/`); the metrics agree
//! with the events, as the real CLI's do. The `api_request` event is also loadgen's
//! `--format otlp` record ([`ApiRequest`], [`event`]).
//!
//! Deterministic for a seed, like [`super::Traffic`]: no I/O and no clock (the caller passes
//! the time of each export).

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{HAIKU, OPUS, Price, SONNET};

/// The CLI version the simulated sessions report.
pub(crate) const CLI_VERSION: &str = "2.1.328";
/// Instrumentation scope of the CLI's log events.
const EVENTS_SCOPE: &str = "com.anthropic.claude_code.events";
/// Instrumentation scope of the CLI's metrics.
const METRICS_SCOPE: &str = "com.anthropic.claude_code";

/// An attribute.
pub(crate) fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// A string value.
pub(crate) fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_string())
}

/// An integer value.
pub(crate) fn i(v: u64) -> any_value::Value {
    any_value::Value::IntValue(v.min(i64::MAX as u64) as i64)
}

/// A CLI's resource: the attributes the user set (`OTEL_RESOURCE_ATTRIBUTES`), then the CLI's own.
pub(crate) fn resource(user_set: &[KeyValue]) -> Resource {
    let mut attributes = user_set.to_vec();
    attributes.extend([
        kv("host.arch", s("amd64")),
        kv("os.type", s("linux")),
        kv("service.name", s("claude-code")),
        kv("service.version", s(CLI_VERSION)),
    ]);
    Resource {
        attributes,
        ..Default::default()
    }
}

/// One event as the CLI writes it: body `claude_code.<name>`; the session's attributes, then
/// `event.name`, `event.timestamp`, `event.sequence` (when given) and the event's own.
pub(crate) fn event(
    name: &str,
    time_ns: u64,
    session: &[KeyValue],
    sequence: Option<u64>,
    own: Vec<KeyValue>,
) -> LogRecord {
    let mut attributes = Vec::with_capacity(session.len() + own.len() + 3);
    attributes.extend_from_slice(session);
    attributes.push(kv("event.name", s(name)));
    let ms = i64::try_from(time_ns / 1_000_000).unwrap_or(i64::MAX);
    let stamp = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    attributes.push(kv("event.timestamp", s(&format!("{stamp:.3}"))));
    if let Some(n) = sequence {
        attributes.push(kv("event.sequence", i(n)));
    }
    attributes.extend(own);
    LogRecord {
        time_unix_nano: time_ns,
        observed_time_unix_nano: time_ns,
        body: Some(AnyValue {
            value: Some(s(&format!("claude_code.{name}"))),
        }),
        attributes,
        ..Default::default()
    }
}

/// The log records of some CLIs, each under its resource and the events scope.
pub(crate) fn logs_export(resources: Vec<(Resource, Vec<LogRecord>)>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: resources
            .into_iter()
            .map(|(resource, log_records)| ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: EVENTS_SCOPE.into(),
                        version: CLI_VERSION.into(),
                        ..Default::default()
                    }),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// What an `api_request` event carries besides the session's attributes.
pub(crate) struct ApiRequest<'a> {
    pub(crate) prompt_id: &'a str,
    pub(crate) model: &'a str,
    /// Tokens in the order of [`gatemeter::record::TOKEN_TYPES`]: input, output, cache writes
    /// 5 m and 1 h, cache reads.
    pub(crate) tokens: [u64; 5],
    pub(crate) cost_micros: u64,
    pub(crate) duration_ms: u64,
    pub(crate) ttft_ms: u64,
    pub(crate) request_id: &'a str,
}

impl ApiRequest<'_> {
    /// The event's own attributes, in the real CLI's order.
    pub(crate) fn attributes(&self) -> Vec<KeyValue> {
        let [input, output, c5, c1, read] = self.tokens;
        vec![
            kv("prompt.id", s(self.prompt_id)),
            kv("model", s(self.model)),
            kv("input_tokens", i(input)),
            kv("output_tokens", i(output)),
            kv("cache_read_tokens", i(read)),
            kv("cache_creation_tokens", i(c5 + c1)),
            kv("cache_creation_5m_tokens", i(c5)),
            kv("cache_creation_1h_tokens", i(c1)),
            kv(
                "cost_usd",
                any_value::Value::DoubleValue(self.cost_micros as f64 / 1e6),
            ),
            kv("cost_usd_micros", i(self.cost_micros)),
            kv("duration_ms", i(self.duration_ms)),
            kv("ttft_ms", i(self.ttft_ms)),
            kv("request_id", s(self.request_id)),
            kv("speed", s("normal")),
            kv("query_source", s("sdk")),
            kv("effort", s("medium")),
        ]
    }
}

// ---- The simulated developers and their sessions. ----

/// Models the CLI uses and their list prices.
const MODELS: &[(&str, Price)] = &[
    ("claude-sonnet-4-5-20250929", SONNET),
    ("claude-opus-4-1-20250805", OPUS),
    ("claude-haiku-4-5-20251001", HAIKU),
];

/// A developer: e-mail, team (`team.id`, the namespace of their requests), terminal, the
/// language of the code they edit, main model (index into [`MODELS`]).
struct Developer {
    email: &'static str,
    team: &'static str,
    terminal: &'static str,
    language: &'static str,
    model: usize,
}

const DEVELOPERS: &[Developer] = &[
    Developer {
        email: "ana@example.com",
        team: "platform",
        terminal: "vscode",
        language: "Rust",
        model: 0,
    },
    Developer {
        email: "ben@example.com",
        team: "platform",
        terminal: "tmux",
        language: "Go",
        model: 0,
    },
    Developer {
        email: "chloe@example.com",
        team: "platform",
        terminal: "iTerm.app",
        language: "Rust",
        model: 1,
    },
    Developer {
        email: "dan@example.com",
        team: "mobile",
        terminal: "vscode",
        language: "TypeScript",
        model: 0,
    },
    Developer {
        email: "eve@example.com",
        team: "mobile",
        terminal: "Apple_Terminal",
        language: "TypeScript",
        model: 0,
    },
    Developer {
        email: "femi@example.com",
        team: "data",
        terminal: "cursor",
        language: "Python",
        model: 1,
    },
];

/// Tools, their relative frequency and median duration (ms).
const TOOLS: &[(&str, u32, f64)] = &[
    ("Read", 30, 25.0),
    ("Edit", 20, 40.0),
    ("Bash", 20, 1_500.0),
    ("Grep", 12, 120.0),
    ("Glob", 6, 30.0),
    ("Write", 7, 30.0),
    ("WebFetch", 5, 900.0),
];

/// Chance that an idle developer starts a session at an export.
const START_CHANCE: f64 = 0.5;

/// One running CLI session.
struct Cli {
    /// The attributes on every event and metric point of the session.
    attributes: Vec<KeyValue>,
    resource: Resource,
    /// `event.sequence` of the next event.
    sequence: u64,
    turns_left: u32,
    /// Start of the metrics' current delta window (the previous export).
    since_ns: u64,
}

/// One turn's worth of metric increments of a session, summed until its export.
#[derive(Default)]
struct Deltas {
    session_start: Option<&'static str>,
    /// Per model: cost in micro-USD and tokens (input, output, cache read, cache creation).
    by_model: Vec<(&'static str, u64, [u64; 4])>,
    active_user_ms: u64,
    active_cli_ms: u64,
    lines_added: u64,
    lines_removed: u64,
    /// Code edit permission decisions: (decision, source, tool) and how many.
    edit_decisions: Vec<((&'static str, &'static str, &'static str), u64)>,
    commits: u64,
    pull_requests: u64,
}

/// What one export carries.
pub(crate) struct Export {
    /// The log events, for `POST /v1/logs`.
    pub(crate) logs: ExportLogsServiceRequest,
    /// The metric points, for `POST /v1/metrics`.
    pub(crate) metrics: ExportMetricsServiceRequest,
}

/// The simulated CLI sessions of [`DEVELOPERS`].
pub(crate) struct CliSessions {
    rng: SmallRng,
    /// Mixed into session and request ids, so that two runs against one server stay apart.
    run: u64,
    user_ids: Vec<String>,
    sessions: Vec<Option<Cli>>,
    requests: u64,
    last_ns: Option<u64>,
}

impl CliSessions {
    /// Sessions for `seed`; `run` only changes ids (session, request), not the traffic.
    pub(crate) fn new(seed: u64, run: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0xc1a0_de00);
        let user_ids = DEVELOPERS.iter().map(|_| hex(&mut rng, 64)).collect();
        Self {
            rng,
            run,
            user_ids,
            sessions: DEVELOPERS.iter().map(|_| None).collect(),
            requests: 0,
            last_ns: None,
        }
    }

    /// The export due at `now_ns`: every developer with a session takes a turn (model calls
    /// and tool calls), idle ones may start a session, finished ones end theirs.
    pub(crate) fn export(&mut self, now_ns: u64) -> Export {
        let since = self.last_ns.unwrap_or(now_ns.saturating_sub(2_000_000_000));
        self.last_ns = Some(now_ns);
        let mut logs = Vec::new();
        let mut metrics = Vec::new();
        for (d, dev) in DEVELOPERS.iter().enumerate() {
            let mut deltas = Deltas::default();
            if self.sessions[d].is_none() {
                if !self.rng.random_bool(START_CHANCE) {
                    continue;
                }
                let start = self.start(d, since);
                deltas.session_start = Some(start);
            }
            let mut events = self.turn(d, &mut deltas);
            let Some(cli) = self.sessions[d].as_mut() else {
                continue;
            };
            // The turn's events spread over the window, in order.
            let n = events.len() as u64;
            let step = now_ns.saturating_sub(since) / (n + 1);
            let mut records = Vec::with_capacity(events.len());
            for (k, (name, own)) in events.drain(..).enumerate() {
                let t = since + step * (k as u64 + 1);
                records.push(event(name, t, &cli.attributes, Some(cli.sequence), own));
                cli.sequence += 1;
            }
            logs.push((cli.resource.clone(), records));
            metrics.push(points(cli, &deltas, now_ns, dev.language));
            cli.since_ns = now_ns;
            cli.turns_left = cli.turns_left.saturating_sub(1);
            if cli.turns_left == 0 {
                self.sessions[d] = None;
            }
        }
        Export {
            logs: logs_export(logs),
            metrics: ExportMetricsServiceRequest {
                resource_metrics: metrics,
            },
        }
    }

    /// Starts developer `d`'s session; its start type.
    fn start(&mut self, d: usize, since_ns: u64) -> &'static str {
        let dev = &DEVELOPERS[d];
        let id = self.session_id();
        let user_set = [
            kv("deployment.environment", s("demo")),
            kv("team.id", s(dev.team)),
        ];
        let mut attributes = user_set.to_vec();
        attributes.extend([
            kv("user.id", s(&self.user_ids[d])),
            kv("user.email", s(dev.email)),
            kv("session.id", s(&id)),
            kv("anthropic.provider", s("firstParty")),
            kv("terminal.type", s(dev.terminal)),
        ]);
        let turns_left = self.rng.random_range(3..=8);
        self.sessions[d] = Some(Cli {
            attributes,
            resource: resource(&user_set),
            sequence: 0,
            turns_left,
            since_ns,
        });
        match self.rng.random_range(0..10) {
            0..7 => "fresh",
            7..9 => "continue",
            _ => "resume",
        }
    }

    /// One turn of developer `d`: a prompt, model calls with tool calls between them, perhaps
    /// a commit, and at the session's end perhaps a pull request. Its events, in order.
    fn turn(&mut self, d: usize, deltas: &mut Deltas) -> Vec<(&'static str, Vec<KeyValue>)> {
        let dev = &DEVELOPERS[d];
        let last_turn = self.sessions[d].as_ref().is_some_and(|c| c.turns_left <= 1);
        let mut events = Vec::new();
        let prompt_id = self.uuid();
        events.push((
            "user_prompt",
            vec![
                kv("prompt.id", s(&prompt_id)),
                kv(
                    "prompt_length",
                    i(self.log_normal(120.0, 0.8, 5.0, 4_000.0)),
                ),
            ],
        ));
        deltas.active_user_ms += self.log_normal(20_000.0, 0.7, 2_000.0, 300_000.0);
        let calls = self.rng.random_range(1..=4u32);
        for call in 0..calls {
            let model = if self.rng.random_bool(0.25) {
                2
            } else {
                dev.model
            };
            if self.rng.random_bool(0.03) {
                events.push(self.api_error(&prompt_id, MODELS[model].0));
            }
            events.push(self.api_request(&prompt_id, model, deltas));
            if call + 1 < calls {
                self.tool_call(deltas, &mut events);
            }
        }
        if self.rng.random_bool(if last_turn { 0.7 } else { 0.12 }) {
            deltas.commits += 1;
        }
        if last_turn && self.rng.random_bool(0.4) {
            deltas.pull_requests += 1;
        }
        events
    }

    /// An `api_request` event; its cost and tokens added to the deltas.
    fn api_request(
        &mut self,
        prompt_id: &str,
        model: usize,
        deltas: &mut Deltas,
    ) -> (&'static str, Vec<KeyValue>) {
        let (name, price) = MODELS[model];
        let mut tokens = [0u64; 5];
        tokens[0] = self.log_normal(3_000.0, 0.9, 10.0, 150_000.0);
        tokens[1] = self.log_normal(350.0, 1.0, 1.0, 32_000.0);
        tokens[4] = self.log_normal(25_000.0, 0.8, 0.0, 180_000.0);
        if self.rng.random_bool(0.3) {
            tokens[2] = self.log_normal(2_500.0, 0.8, 100.0, 50_000.0);
        }
        let cost_micros = tokens
            .iter()
            .zip(price)
            .map(|(&n, p)| n as f64 * p)
            .sum::<f64>()
            .round() as u64;
        let duration_ms = self.log_normal(4_000.0, 0.7, 300.0, 120_000.0);
        let ttft_ms = duration_ms / 4;
        deltas.active_cli_ms += duration_ms;
        let request_id = self.request_id();
        match deltas.by_model.iter_mut().find(|m| m.0 == name) {
            Some(m) => {
                m.1 += cost_micros;
                m.2[0] += tokens[0];
                m.2[1] += tokens[1];
                m.2[2] += tokens[4];
                m.2[3] += tokens[2] + tokens[3];
            }
            None => deltas.by_model.push((
                name,
                cost_micros,
                [tokens[0], tokens[1], tokens[4], tokens[2] + tokens[3]],
            )),
        }
        let attributes = ApiRequest {
            prompt_id,
            model: name,
            tokens,
            cost_micros,
            duration_ms,
            ttft_ms,
            request_id: &request_id,
        }
        .attributes();
        ("api_request", attributes)
    }

    /// An `api_error` (overloaded), retried by the CLI.
    fn api_error(&mut self, prompt_id: &str, model: &str) -> (&'static str, Vec<KeyValue>) {
        let request_id = self.request_id();
        let duration_ms = self.log_normal(800.0, 0.6, 50.0, 10_000.0);
        (
            "api_error",
            vec![
                kv("prompt.id", s(prompt_id)),
                kv("model", s(model)),
                kv("error", s("Overloaded")),
                kv("status_code", s("529")),
                kv("duration_ms", i(duration_ms)),
                kv("attempt", i(1)),
                kv("request_id", s(&request_id)),
                kv("speed", s("normal")),
                kv("query_source", s("sdk")),
                kv("effort", s("medium")),
            ],
        )
    }

    /// A tool call: the permission decision and, when accepted, the result.
    fn tool_call(&mut self, deltas: &mut Deltas, events: &mut Vec<(&'static str, Vec<KeyValue>)>) {
        let total: u32 = TOOLS.iter().map(|t| t.1).sum();
        let mut n = self.rng.random_range(0..total);
        let mut tool = TOOLS[0];
        for t in TOOLS {
            if n < t.1 {
                tool = *t;
                break;
            }
            n -= t.1;
        }
        let (name, _, median_ms) = tool;
        let edits = name == "Edit" || name == "Write";
        let asks = edits || name == "Bash" || name == "WebFetch";
        let (decision, source) = if !asks {
            ("accept", "config")
        } else if self.rng.random_bool(0.08) {
            ("reject", "user_reject")
        } else {
            match self.rng.random_range(0..10) {
                0..5 => ("accept", "config"),
                5..8 => ("accept", "user_temporary"),
                _ => ("accept", "user_permanent"),
            }
        };
        events.push((
            "tool_decision",
            vec![
                kv("decision", s(decision)),
                kv("source", s(source)),
                kv("tool_name", s(name)),
            ],
        ));
        if edits {
            let key = (decision, source, name);
            match deltas.edit_decisions.iter_mut().find(|e| e.0 == key) {
                Some(e) => e.1 += 1,
                None => deltas.edit_decisions.push((key, 1)),
            }
        }
        if decision == "reject" {
            return;
        }
        let failure = if name == "Bash" { 0.15 } else { 0.04 };
        let success = !self.rng.random_bool(failure);
        let duration_ms = self.log_normal(median_ms, 0.8, 1.0, 120_000.0);
        deltas.active_cli_ms += duration_ms;
        let mut own = vec![
            kv("tool_name", s(name)),
            kv("success", s(if success { "true" } else { "false" })),
            kv("duration_ms", i(duration_ms)),
        ];
        if !success {
            own.push(kv(
                "error",
                s(if name == "Bash" {
                    "Exit code 1"
                } else {
                    "File does not exist."
                }),
            ));
        }
        events.push(("tool_result", own));
        if edits && success {
            deltas.lines_added += self.log_normal(12.0, 0.9, 1.0, 400.0);
            deltas.lines_removed += self.log_normal(4.0, 1.0, 0.0, 200.0);
        }
    }

    fn log_normal(&mut self, median: f64, sigma: f64, min: f64, max: f64) -> u64 {
        let u1 = 1.0 - self.rng.random::<f64>();
        let u2 = self.rng.random::<f64>();
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (median * (sigma * normal).exp()).clamp(min, max).round() as u64
    }

    fn uuid(&mut self) -> String {
        let h = hex(&mut self.rng, 32);
        format!(
            "{}-{}-4{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[13..16],
            &h[16..20],
            &h[20..]
        )
    }

    /// A session id: a UUID whose first group carries the run.
    fn session_id(&mut self) -> String {
        let u = self.uuid();
        let first = u32::from_str_radix(&u[..8], 16).unwrap_or(0) ^ (self.run as u32);
        format!("{first:08x}{}", &u[8..])
    }

    fn request_id(&mut self) -> String {
        self.requests += 1;
        format!("req_demo_{:x}_{}", self.run, self.requests)
    }
}

/// `digits` random hex digits.
fn hex(rng: &mut SmallRng, digits: usize) -> String {
    (0..digits)
        .map(|_| char::from_digit(rng.random_range(0..16u32), 16).unwrap_or('0'))
        .collect()
}

/// A session's metric points for the window since its last export, as delta sums; code edits
/// are in the developer's `language`.
fn points(cli: &Cli, d: &Deltas, now_ns: u64, language: &str) -> ResourceMetrics {
    let point = |value: f64, extra: Vec<KeyValue>| {
        let mut attributes = cli.attributes.clone();
        attributes.extend(extra);
        NumberDataPoint {
            attributes,
            start_time_unix_nano: cli.since_ns,
            time_unix_nano: now_ns,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..Default::default()
        }
    };
    let sum = |name: &str, unit: &str, data_points: Vec<NumberDataPoint>| Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points,
            aggregation_temporality: AggregationTemporality::Delta as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    };
    let mut metrics = Vec::new();
    if let Some(start_type) = d.session_start {
        metrics.push(sum(
            "claude_code.session.count",
            "",
            vec![point(1.0, vec![kv("start_type", s(start_type))])],
        ));
    }
    if !d.by_model.is_empty() {
        metrics.push(sum(
            "claude_code.cost.usage",
            "USD",
            d.by_model
                .iter()
                .map(|(model, micros, _)| point(*micros as f64 / 1e6, vec![kv("model", s(model))]))
                .collect(),
        ));
        let mut tokens = Vec::new();
        for (model, _, t) in &d.by_model {
            for (n, kind) in t
                .iter()
                .zip(["input", "output", "cacheRead", "cacheCreation"])
            {
                tokens.push(point(
                    *n as f64,
                    vec![kv("model", s(model)), kv("type", s(kind))],
                ));
            }
        }
        metrics.push(sum("claude_code.token.usage", "tokens", tokens));
    }
    metrics.push(sum(
        "claude_code.active_time.total",
        "s",
        vec![
            point(d.active_user_ms as f64 / 1e3, vec![kv("type", s("user"))]),
            point(d.active_cli_ms as f64 / 1e3, vec![kv("type", s("cli"))]),
        ],
    ));
    if d.lines_added + d.lines_removed > 0 {
        metrics.push(sum(
            "claude_code.lines_of_code.count",
            "",
            vec![
                point(d.lines_added as f64, vec![kv("type", s("added"))]),
                point(d.lines_removed as f64, vec![kv("type", s("removed"))]),
            ],
        ));
    }
    if !d.edit_decisions.is_empty() {
        metrics.push(sum(
            "claude_code.code_edit_tool.decision",
            "",
            d.edit_decisions
                .iter()
                .map(|((decision, source, tool), n)| {
                    point(
                        *n as f64,
                        vec![
                            kv("decision", s(decision)),
                            kv("source", s(source)),
                            kv("tool_name", s(tool)),
                            kv("language", s(language)),
                        ],
                    )
                })
                .collect(),
        ));
    }
    if d.commits > 0 {
        metrics.push(sum(
            "claude_code.commit.count",
            "",
            vec![point(d.commits as f64, vec![])],
        ));
    }
    if d.pull_requests > 0 {
        metrics.push(sum(
            "claude_code.pull_request.count",
            "",
            vec![point(d.pull_requests as f64, vec![])],
        ));
    }
    ResourceMetrics {
        resource: Some(cli.resource.clone()),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(InstrumentationScope {
                name: METRICS_SCOPE.into(),
                version: CLI_VERSION.into(),
                ..Default::default()
            }),
            metrics,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use gatemeter::catalog::CLAUDE_CODE_METRICS;
    use gatemeter::claude_code::mapping::Mapping;
    use gatemeter::claude_code::state::{Input, ToolEvent};
    use gatemeter::price::PriceTable;
    use gatemeter::record::{Event, Validation};
    use prost::Message;

    use super::*;

    const START_NS: u64 = 1_795_458_544_000_000_000;
    const EVERY_NS: u64 = 2_000_000_000;

    fn run(seed: u64, run: u64, exports: u64) -> Vec<Export> {
        let mut cli = CliSessions::new(seed, run);
        (1..=exports)
            .map(|n| cli.export(START_NS + n * EVERY_NS))
            .collect()
    }

    /// What gatemeter's own OTLP mapping makes of the exports: every item taken, records
    /// valid, and the metrics agreeing with the events as the real CLI's do.
    #[test]
    fn the_receiver_takes_every_item_and_metrics_agree_with_events() {
        let prices = PriceTable::default();
        let mapping = Mapping {
            namespace_attribute: Some("team.id".into()),
            ..Mapping::default()
        };
        let mut event_names: BTreeMap<String, u64> = BTreeMap::new();
        let (mut records, mut record_cost, mut errors) = (0u64, 0u64, 0u64);
        let (mut namespaces, mut sessions, mut users) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        let (mut results, mut failures, mut decisions) = (0u64, 0u64, BTreeSet::new());
        let mut metric_totals: BTreeMap<&str, f64> = BTreeMap::new();
        for (n, export) in run(7, 1, 60).into_iter().enumerate() {
            let now_ms = ((START_NS + (n as u64 + 1) * EVERY_NS) / 1_000_000) as i64;
            let v = Validation {
                now_ms,
                prices: &prices,
                keep_requests: None,
            };
            let logs = mapping.logs(&export.logs, &v);
            assert!(logs.rejected.is_empty(), "{:?}", logs.rejected);
            assert!(logs.unused.is_empty(), "{:?}", logs.unused);
            for e in &logs.events {
                let Event::Finish(r) = e else { panic!("{e:?}") };
                records += 1;
                record_cost += r.cost_micros;
                errors += u64::from(r.status != 200);
                assert_eq!(r.provider.as_str(), "anthropic");
                namespaces.insert(r.namespace.to_string());
                sessions.insert(r.session_id.clone().expect("session id"));
                users.insert(r.user.clone().expect("user"));
            }
            for input in logs.inputs {
                match input {
                    Input::Event { name, id } => {
                        assert!(id.is_some(), "{name}: no identity");
                        *event_names.entry(name.to_string()).or_default() += 1;
                    }
                    Input::Tool(ToolEvent::Result { success, .. }) => {
                        results += 1;
                        failures += u64::from(!success);
                    }
                    Input::Tool(ToolEvent::Decision {
                        decision, source, ..
                    }) => {
                        decisions.insert(format!("{decision}/{source}"));
                    }
                    Input::Point(_) => panic!("a point from the logs"),
                }
            }
            let metrics = mapping.metrics(&export.metrics, now_ms);
            assert_eq!(metrics.rejected_total(), 0, "{:?}", metrics.first_error);
            for input in metrics.inputs {
                let Input::Point(p) = input else {
                    panic!("{input:?}")
                };
                *metric_totals
                    .entry(CLAUDE_CODE_METRICS[p.metric].0)
                    .or_default() += p.value;
                assert!(
                    !p.labels
                        .iter()
                        .any(|(k, _)| k == "session_id" || k.starts_with("user_")),
                    "{:?}",
                    p.labels
                );
            }
        }
        // Every Claude Code metric, event and tool panel has something.
        for (name, _, _) in CLAUDE_CODE_METRICS {
            assert!(
                metric_totals.get(name).is_some_and(|v| *v > 0.0),
                "{name}: {metric_totals:?}"
            );
        }
        for name in [
            "user_prompt",
            "api_request",
            "api_error",
            "tool_decision",
            "tool_result",
        ] {
            assert!(event_names.contains_key(name), "{name}: {event_names:?}");
        }
        assert_eq!(
            records,
            event_names["api_request"] + event_names["api_error"]
        );
        assert_eq!(errors, event_names["api_error"]);
        assert!(
            results >= 50 && failures >= 1 && failures < results / 3,
            "{results} {failures}"
        );
        assert!(decisions.contains("reject/user_reject"), "{decisions:?}");
        assert!(decisions.contains("accept/config"), "{decisions:?}");
        // The metrics' cost is the events' cost (to the micro-dollar per point).
        let metric_cost = metric_totals["claude_code.cost.usage"];
        assert!(
            (metric_cost * 1e6 - record_cost as f64).abs() < 1.0 + records as f64,
            "{metric_cost} USD against {record_cost} µUSD"
        );
        assert_eq!(
            namespaces,
            BTreeSet::from(["data".into(), "mobile".into(), "platform".into()])
        );
        assert_eq!(users.len(), DEVELOPERS.len(), "{users:?}");
        // Sessions end and new ones start: many more sessions than developers.
        assert!(sessions.len() >= 12, "{}", sessions.len());
        // Each session started (session.count) made requests in its first turn.
        assert_eq!(
            metric_totals["claude_code.session.count"] as usize,
            sessions.len()
        );
    }

    #[test]
    fn same_seed_same_exports_and_the_run_changes_only_ids() {
        let bytes = |e: &[Export]| -> Vec<Vec<u8>> {
            e.iter()
                .flat_map(|x| [x.logs.encode_to_vec(), x.metrics.encode_to_vec()])
                .collect()
        };
        let (a, b) = (run(3, 1, 20), run(3, 1, 20));
        assert_eq!(bytes(&a), bytes(&b));
        let c = run(3, 2, 20);
        assert_ne!(bytes(&a), bytes(&c));
        // Another run: the same sizes of everything, other ids.
        let sizes = |e: &[Export]| -> Vec<usize> {
            e.iter()
                .map(|x| {
                    x.logs
                        .resource_logs
                        .iter()
                        .map(|r| r.scope_logs[0].log_records.len())
                        .sum()
                })
                .collect()
        };
        assert_eq!(sizes(&a), sizes(&c));
        assert_ne!(bytes(&run(4, 1, 20)), bytes(&a));
    }
}
