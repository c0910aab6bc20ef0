//! Claude Code state fed by the OTLP receiver: its metric streams turned into cumulative
//! counters, its tool statistics and its event counts.
//!
//! - **Streams** are identified by metric, every attribute of the point and of its resource
//!   (so `session.id` separates streams even though it is never a label). A delta point adds its
//!   value; a cumulative point adds the increase since the stream's previous point, or its whole
//!   value after a reset (a new start time, or a value that went down). A point not newer than
//!   the stream's last one (a retried export) is ignored.
//! - **Series** are what `/metrics` shows: a stream's increments go to the series of its
//!   *label set* (the attributes left after the deny-list). Each metric holds at most
//!   `max_series_per_metric` series, and each new series asks the global [`SeriesBudget`];
//!   beyond either, increments go to one overflow series, counted.
//! - **Tools**: calls, failures and a duration histogram per tool, decisions per
//!   (tool, decision, source); tool names are capped and ask the budget (a tool granted
//!   counters only has its durations in the `__overflow__` tool's histogram; decision triples
//!   and event names beyond the budget count under `__overflow__`). Retried exports are recognised by the
//!   event's identity (session, sequence number, name and time; else `tool_use_id`) and not
//!   counted twice.
//!
//! Pure: no I/O, no clock (times come from the points). Only the Claude Code task
//! ([`super::task`]) owns a [`ClaudeCodeState`]; readers get a [`Snapshot`]. It does not read
//! OTLP ([`super::mapping`] makes its [`Input`]s) and does not render ([`super::render`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use compact_str::CompactString;

use crate::budget::{Cost, Grant, SeriesBudget, histogram_series};
use crate::catalog;

/// Series of one tool: calls and failures; its duration histogram.
const TOOL_COST: Cost = Cost {
    counters: 2,
    histograms: histogram_series(catalog::DURATION_BUCKETS.len()),
};

/// Label set of a series: (name, value) pairs sorted by name; names already sanitised.
pub type Labels = Vec<(CompactString, CompactString)>;

/// Bounds of the state.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Series per metric before the overflow series takes the rest.
    pub max_series_per_metric: usize,
    /// Metric streams tracked at once (stale ones are evicted first).
    pub max_streams: usize,
    /// Distinct tool names before `__overflow__`.
    pub max_tools: usize,
    /// Distinct event names before `__overflow__`.
    pub max_event_names: usize,
    /// Tool event ids remembered for de-duplication (at least this many, at most twice).
    pub dedup_window: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_series_per_metric: 1000,
            max_streams: 100_000,
            max_tools: 200,
            max_event_names: 64,
            dedup_window: 100_000,
        }
    }
}

/// How a Sum's points relate to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    /// Each point is the change since the previous one.
    Delta,
    /// Each point is the running total since `start`.
    Cumulative,
}

/// One monotonic Sum data point of a known Claude Code metric.
#[derive(Debug, Clone)]
pub struct Point {
    /// Index into [`catalog::CLAUDE_CODE_METRICS`].
    pub metric: usize,
    /// Hash of the stream identity (metric, all point and resource attributes).
    pub stream: u64,
    /// The series labels (attributes after the deny-list).
    pub labels: Labels,
    /// Temporality of the Sum.
    pub temporality: Temporality,
    /// `start_time_unix_nano`.
    pub start_ns: u64,
    /// `time_unix_nano`.
    pub time_ns: u64,
    /// The value (finite, not negative, within bounds: checked by the mapping).
    pub value: f64,
    /// The largest increment the point may add (the mapping's `max_increment`); a cumulative
    /// point whose increase is larger is refused ([`PointOutcome::OutOfRange`]).
    pub max_increment: f64,
}

/// What happened to a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointOutcome {
    /// Its increment was added.
    Counted,
    /// Not newer than the stream's last point: ignored.
    Repeated,
    /// The stream table is full of live streams: not counted.
    StreamLimit,
    /// A cumulative point whose increase exceeds the point's bound: not counted (the stream
    /// moves on from it, as it is a running total).
    OutOfRange,
}

/// A tool event from the logs.
#[derive(Debug, Clone)]
pub enum ToolEvent {
    /// `tool_result`.
    Result {
        /// Tool name.
        tool: CompactString,
        /// Whether the call succeeded.
        success: bool,
        /// How long it ran.
        duration_ms: Option<u64>,
        /// The event's identity (else a hash of `tool_use_id`), for de-duplication.
        id: Option<u64>,
    },
    /// `tool_decision`.
    Decision {
        /// Tool name.
        tool: CompactString,
        /// `accept` / `reject`.
        decision: CompactString,
        /// Who decided (`config`, `user_temporary`, ...).
        source: CompactString,
        /// The event's identity (else a hash of `tool_use_id`), for de-duplication.
        id: Option<u64>,
    },
}

/// What the Claude Code task is given.
#[derive(Debug, Clone)]
pub enum Input {
    /// A metric point.
    Point(Point),
    /// A tool event.
    Tool(ToolEvent),
    /// A Claude Code event was received (any event, counted by name).
    Event {
        /// `event.name`.
        name: CompactString,
        /// Hash of (`session.id`, `event.sequence`, name, time), for de-duplication.
        id: Option<u64>,
    },
}

/// Statistics of one tool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolStats {
    /// `tool_result` events.
    pub calls: u64,
    /// Of which failed.
    pub failures: u64,
    /// Duration histogram: counts per bucket of [`catalog::DURATION_BUCKETS`] plus `+Inf`
    /// (not cumulative); empty for a tool the series budget gave counters only (its durations
    /// are in the `__overflow__` tool's).
    pub duration_buckets: Vec<u64>,
    /// Calls with a duration.
    pub duration_count: u64,
    /// Sum of durations, ms.
    pub duration_ms_sum: u64,
}

/// Everything `/metrics` shows; cheap enough to clone per scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Per known metric: label set → cumulative value.
    pub series: Vec<BTreeMap<Labels, f64>>,
    /// Per known metric: the overflow series' value.
    pub overflow_value: Vec<f64>,
    /// Per known metric: points folded into the overflow series.
    pub overflow_points: Vec<u64>,
    /// Per tool name.
    pub tools: BTreeMap<CompactString, ToolStats>,
    /// Per (tool, decision, source).
    pub decisions: BTreeMap<(CompactString, CompactString, CompactString), u64>,
    /// Per event name.
    pub events: BTreeMap<CompactString, u64>,
    /// Points ignored as repeats.
    pub repeated_points: u64,
    /// Points not counted because the stream table was full.
    pub stream_limit_points: u64,
    /// Tool events ignored as repeats.
    pub repeated_tool_events: u64,
    /// Events ignored as repeats.
    pub repeated_events: u64,
}

#[derive(Debug, Clone, Copy)]
struct Stream {
    start_ns: u64,
    time_ns: u64,
    value: f64,
}

/// Two generations of 64-bit ids: remembers at least `window` ids, at most twice that.
#[derive(Debug, Default)]
struct Seen {
    window: usize,
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

impl Seen {
    /// True when `id` is new (and remembers it).
    fn insert(&mut self, id: u64) -> bool {
        if self.current.contains(&id) || self.previous.contains(&id) {
            return false;
        }
        if self.current.len() >= self.window.max(1) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(id);
        true
    }
}

/// The state; see the module docs.
#[derive(Debug)]
pub struct ClaudeCodeState {
    limits: Limits,
    streams: HashMap<u64, Stream>,
    newest_ns: u64,
    totals: Snapshot,
    seen: Seen,
    budget: Arc<SeriesBudget>,
}

/// Streams whose last point is older than this (relative to the newest point) may be evicted.
const STALE_NS: u64 = 3600 * 1_000_000_000;

/// Label value of overflow series and tools.
pub const OVERFLOW: &str = catalog::OVERFLOW_LABEL;

impl ClaudeCodeState {
    /// Empty state, with no series budget.
    pub fn new(limits: Limits) -> Self {
        Self::with_budget(limits, Arc::new(SeriesBudget::unlimited()))
    }

    /// Empty state sharing the series `budget`.
    pub fn with_budget(limits: Limits, budget: Arc<SeriesBudget>) -> Self {
        let n = catalog::CLAUDE_CODE_METRICS.len();
        Self {
            limits,
            streams: HashMap::new(),
            newest_ns: 0,
            totals: Snapshot {
                series: vec![BTreeMap::new(); n],
                overflow_value: vec![0.0; n],
                overflow_points: vec![0; n],
                ..Snapshot::default()
            },
            seen: Seen {
                window: limits.dedup_window,
                ..Seen::default()
            },
            budget,
        }
    }

    /// Applies one input.
    pub fn apply(&mut self, input: Input) -> Option<PointOutcome> {
        match input {
            Input::Point(p) => Some(self.point(p)),
            Input::Tool(t) => {
                self.tool(t);
                None
            }
            Input::Event { name, id } => {
                if let Some(id) = id
                    && !self
                        .seen
                        .insert(id ^ 3u64.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                {
                    self.totals.repeated_events += 1;
                    return None;
                }
                let max = self.limits.max_event_names;
                let events = &mut self.totals.events;
                let key =
                    if events.contains_key(&name) || (events.len() < max && self.budget.take(1)) {
                        name
                    } else {
                        CompactString::const_new(OVERFLOW)
                    };
                *events.entry(key).or_default() += 1;
                None
            }
        }
    }

    fn point(&mut self, p: Point) -> PointOutcome {
        if p.metric >= self.totals.series.len() {
            return PointOutcome::StreamLimit;
        }
        self.newest_ns = self.newest_ns.max(p.time_ns);
        let increment = match self.streams.get_mut(&p.stream) {
            Some(s) => {
                if p.time_ns <= s.time_ns && p.start_ns <= s.start_ns {
                    self.totals.repeated_points += 1;
                    return PointOutcome::Repeated;
                }
                let inc = match p.temporality {
                    Temporality::Delta => p.value,
                    Temporality::Cumulative => {
                        if p.start_ns != s.start_ns || p.value < s.value {
                            p.value // reset: the new run's total is all new
                        } else {
                            p.value - s.value
                        }
                    }
                };
                *s = Stream {
                    start_ns: p.start_ns,
                    time_ns: p.time_ns,
                    value: p.value,
                };
                inc
            }
            None => {
                if self.streams.len() >= self.limits.max_streams {
                    let cutoff = self.newest_ns.saturating_sub(STALE_NS);
                    self.streams.retain(|_, s| s.time_ns >= cutoff);
                    if self.streams.len() >= self.limits.max_streams {
                        self.totals.stream_limit_points += 1;
                        return PointOutcome::StreamLimit;
                    }
                }
                self.streams.insert(
                    p.stream,
                    Stream {
                        start_ns: p.start_ns,
                        time_ns: p.time_ns,
                        value: p.value,
                    },
                );
                p.value
            }
        };
        if increment > p.max_increment {
            return PointOutcome::OutOfRange;
        }
        let series = &mut self.totals.series[p.metric];
        if let Some(v) = series.get_mut(&p.labels) {
            *v += increment;
        } else if series.len() < self.limits.max_series_per_metric && self.budget.take(1) {
            series.insert(p.labels, increment);
        } else {
            self.totals.overflow_value[p.metric] += increment;
            self.totals.overflow_points[p.metric] += 1;
        }
        PointOutcome::Counted
    }

    /// The tool's key, with its stats created if new: its own (granted by the cap and the
    /// budget) or `__overflow__`'s.
    fn tool_key(&mut self, tool: CompactString) -> CompactString {
        if self.totals.tools.contains_key(&tool) && tool != OVERFLOW {
            return tool;
        }
        let grant = if tool == OVERFLOW {
            Grant::Folded
        } else if self.totals.tools.len() < self.limits.max_tools {
            self.budget.grant(TOOL_COST)
        } else {
            Grant::Folded
        };
        let (key, detail) = match grant {
            Grant::Folded => (CompactString::const_new(OVERFLOW), true),
            g => (tool, g == Grant::Full),
        };
        self.totals
            .tools
            .entry(key.clone())
            .or_insert_with(|| ToolStats {
                duration_buckets: if detail {
                    vec![0; catalog::DURATION_BUCKETS.len() + 1]
                } else {
                    Vec::new()
                },
                ..ToolStats::default()
            });
        key
    }

    fn tool(&mut self, t: ToolEvent) {
        let (id, salt) = match &t {
            ToolEvent::Result { id, .. } => (*id, 1u64),
            ToolEvent::Decision { id, .. } => (*id, 2u64),
        };
        if let Some(id) = id
            && !self
                .seen
                .insert(id ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        {
            self.totals.repeated_tool_events += 1;
            return;
        }
        match t {
            ToolEvent::Result {
                tool,
                success,
                duration_ms,
                ..
            } => {
                let key = self.tool_key(tool);
                let stats = self.totals.tools.entry(key.clone()).or_default();
                stats.calls += 1;
                stats.failures += u64::from(!success);
                if let Some(ms) = duration_ms {
                    let s = ms as f64 / 1000.0;
                    let i = catalog::DURATION_BUCKETS
                        .iter()
                        .position(|b| s <= *b)
                        .unwrap_or(catalog::DURATION_BUCKETS.len());
                    let key = if stats.duration_buckets.is_empty() {
                        self.overflow_tool()
                    } else {
                        key
                    };
                    let stats = self.totals.tools.entry(key).or_default();
                    stats.duration_buckets[i] += 1;
                    stats.duration_count += 1;
                    stats.duration_ms_sum += ms;
                }
            }
            ToolEvent::Decision {
                tool,
                decision,
                source,
                ..
            } => {
                let key = self.tool_key(tool);
                // Decision and source come from small fixed vocabularies; cap them anyway.
                let cap = |s: CompactString| {
                    if s.len() <= 32 {
                        s
                    } else {
                        CompactString::const_new(OVERFLOW)
                    }
                };
                let mut triple = (key, cap(decision), cap(source));
                if !self.totals.decisions.contains_key(&triple) && !self.budget.take(1) {
                    let o = CompactString::const_new(OVERFLOW);
                    triple = (o.clone(), o.clone(), o);
                }
                *self.totals.decisions.entry(triple).or_default() += 1;
            }
        }
    }

    /// The `__overflow__` tool (with its histogram), created if needed; its key.
    fn overflow_tool(&mut self) -> CompactString {
        let key = CompactString::const_new(OVERFLOW);
        self.totals
            .tools
            .entry(key.clone())
            .or_insert_with(|| ToolStats {
                duration_buckets: vec![0; catalog::DURATION_BUCKETS.len() + 1],
                ..ToolStats::default()
            });
        key
    }

    /// A copy for readers.
    pub fn snapshot(&self) -> Snapshot {
        self.totals.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(stream: u64, t: Temporality, start: u64, time: u64, value: f64) -> Input {
        Input::Point(Point {
            metric: 0,
            stream,
            labels: vec![("type".into(), "input".into())],
            temporality: t,
            start_ns: start,
            time_ns: time,
            value,
            max_increment: 100.0,
        })
    }

    fn total(s: &ClaudeCodeState) -> f64 {
        s.snapshot().series[0].values().sum::<f64>() + s.snapshot().overflow_value[0]
    }

    #[test]
    fn delta_points_add_and_repeats_are_ignored() {
        let mut s = ClaudeCodeState::new(Limits::default());
        assert_eq!(
            s.apply(point(1, Temporality::Delta, 0, 10, 5.0)),
            Some(PointOutcome::Counted)
        );
        assert_eq!(
            s.apply(point(1, Temporality::Delta, 10, 20, 3.0)),
            Some(PointOutcome::Counted)
        );
        // The same export again (a retry after a lost answer).
        assert_eq!(
            s.apply(point(1, Temporality::Delta, 10, 20, 3.0)),
            Some(PointOutcome::Repeated)
        );
        assert_eq!(total(&s), 8.0);
    }

    #[test]
    fn cumulative_points_add_increases_and_handle_resets() {
        let mut s = ClaudeCodeState::new(Limits::default());
        s.apply(point(1, Temporality::Cumulative, 100, 110, 5.0));
        s.apply(point(1, Temporality::Cumulative, 100, 120, 8.0));
        s.apply(point(1, Temporality::Cumulative, 100, 120, 8.0)); // repeated
        assert_eq!(total(&s), 8.0);
        // The process restarted: a new start time, the total starts again.
        s.apply(point(1, Temporality::Cumulative, 200, 210, 2.0));
        assert_eq!(total(&s), 10.0);
        // A value that went down without a new start time is a reset too.
        s.apply(point(1, Temporality::Cumulative, 200, 220, 1.0));
        assert_eq!(total(&s), 11.0);
        // Two streams (two sessions) with the same labels add into one series.
        s.apply(point(2, Temporality::Cumulative, 100, 130, 4.0));
        assert_eq!(total(&s), 15.0);
        assert_eq!(s.snapshot().series[0].len(), 1);
    }

    /// A cumulative increase beyond the bound is not counted; the stream goes on from it.
    #[test]
    fn cumulative_increases_beyond_the_bound_are_refused() {
        let mut s = ClaudeCodeState::new(Limits::default());
        s.apply(point(1, Temporality::Cumulative, 100, 110, 5.0));
        assert_eq!(
            s.apply(point(1, Temporality::Cumulative, 100, 120, 1e6)),
            Some(PointOutcome::OutOfRange)
        );
        assert_eq!(
            s.apply(point(1, Temporality::Cumulative, 100, 130, 1e6 + 2.0)),
            Some(PointOutcome::Counted)
        );
        assert_eq!(total(&s), 7.0);
    }

    #[test]
    fn series_beyond_the_cap_go_to_the_overflow_series() {
        let mut s = ClaudeCodeState::new(Limits {
            max_series_per_metric: 2,
            ..Limits::default()
        });
        for i in 0..5u64 {
            s.apply(Input::Point(Point {
                metric: 0,
                stream: i,
                labels: vec![("type".into(), CompactString::from(format!("t{i}")))],
                temporality: Temporality::Delta,
                start_ns: 0,
                time_ns: 1,
                value: 1.0,
                max_increment: 1.0,
            }));
        }
        let snap = s.snapshot();
        assert_eq!(snap.series[0].len(), 2);
        assert_eq!(snap.overflow_value[0], 3.0);
        assert_eq!(snap.overflow_points[0], 3);
    }

    #[test]
    fn tool_events_are_counted_once_and_names_capped() {
        let mut s = ClaudeCodeState::new(Limits {
            max_tools: 1,
            ..Limits::default()
        });
        let result = |tool: &str, ok: bool, id: u64| {
            Input::Tool(ToolEvent::Result {
                tool: tool.into(),
                success: ok,
                duration_ms: Some(120),
                id: Some(id),
            })
        };
        s.apply(result("Bash", true, 1));
        s.apply(result("Bash", false, 2));
        s.apply(result("Bash", false, 2)); // retried export
        s.apply(result("Read", true, 3)); // beyond the cap
        s.apply(Input::Tool(ToolEvent::Decision {
            tool: "Bash".into(),
            decision: "accept".into(),
            source: "config".into(),
            id: Some(1),
        }));
        let snap = s.snapshot();
        let bash = &snap.tools["Bash"];
        assert_eq!((bash.calls, bash.failures, bash.duration_count), (2, 1, 2));
        assert_eq!(snap.tools[OVERFLOW].calls, 1);
        assert_eq!(snap.repeated_tool_events, 1);
        assert_eq!(
            snap.decisions[&("Bash".into(), "accept".into(), "config".into())],
            1
        );
    }
}
