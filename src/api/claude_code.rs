//! `GET /api/v1/claude-code`: what Claude Code's own telemetry says, as JSON (the console's
//! Claude Code page): its metrics (cost, tokens, sessions, active time, lines of code, edit
//! decisions, commits, pull requests) as cumulative series with their labels, cost and tokens
//! by model and by user, tool calls and failures, permission decisions and event counts.
//!
//! Read from the Claude Code task's snapshot (the same one `/metrics` renders), so the figures
//! are this process's since it started, like the `claude_code_*` families. Per-user figures
//! exist only for series that carry a user label (`user.email` / `user.id` allow-listed in
//! `otlp.label_allowlist`); a user token sees only those series of its own user, and not the
//! tool, decision and event totals, which mix every user's.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::auth::{Access, Auth, Principal};
use crate::api::logs::params;
use crate::api::{ApiError, QueryErrors};
use crate::catalog::CLAUDE_CODE_METRICS;
use crate::claude_code::state::{Labels, OVERFLOW, Snapshot};
use crate::claude_code::task::ClaudeCode;

/// The label names that name a user, in order of preference (the record's user is
/// `user.email`, else `user.id`).
pub const USER_LABELS: [&str; 3] = ["user_email", "user_id", "user_account_uuid"];

/// Shared state: the Claude Code task's handle.
#[derive(Clone)]
pub struct ClaudeCodeApi {
    /// The task whose snapshots `/metrics` renders.
    pub claude_code: ClaudeCode,
}

/// The route, behind the query role.
pub fn routes(api: ClaudeCodeApi, auth: &Auth) -> OpenApiRouter {
    let r = OpenApiRouter::new()
        .routes(routes!(claude_code))
        .with_state(Arc::new(api));
    auth.guard_documented(r, Access::Query)
}

/// One cumulative series of a Claude Code metric.
#[derive(Debug, Serialize, ToSchema)]
pub struct Series {
    /// The point's attributes kept as labels (`.` → `_`); `{"series": "__overflow__"}` for the
    /// series beyond the per-metric cap.
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One Claude Code metric.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricSeries {
    /// The OTLP name, e.g. `claude_code.cost.usage`.
    metric: &'static str,
    /// Its `/metrics` family, e.g. `claude_code_cost_usage_usd`.
    family: &'static str,
    /// `USD`, `tokens`, `seconds` or `null`.
    unit: Option<&'static str>,
    /// Sum of the series shown.
    total: f64,
    series: Vec<Series>,
}

/// Cost and tokens of one model or one user.
#[derive(Debug, Serialize, ToSchema, Default)]
pub struct Usage {
    /// The model or user.
    name: String,
    cost_usd: f64,
    /// Tokens by `type` (`input`, `output`, `cacheRead`, `cacheCreation`).
    tokens: BTreeMap<String, f64>,
}

/// One tool's calls (from `tool_result` events).
#[derive(Debug, Serialize, ToSchema)]
pub struct Tool {
    tool: String,
    calls: u64,
    failures: u64,
    /// Mean duration of the calls that reported one (`null`: none did).
    avg_duration_ms: Option<f64>,
}

/// Permission decisions of one tool (from `tool_decision` events).
#[derive(Debug, Serialize, ToSchema)]
pub struct Decision {
    tool: String,
    /// `accept` or `reject`.
    decision: String,
    /// Who decided (`config`, `user_temporary`, `user_permanent`, `user_abort`, …).
    source: String,
    count: u64,
}

/// The answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClaudeCodeStats {
    /// True for a user token: only series labelled with its own user, no fleet totals.
    own_rows_only: bool,
    /// Every Claude Code metric, in catalogue order (series sorted by labels).
    metrics: Vec<MetricSeries>,
    /// Cost and tokens by the `model` label, most expensive first.
    by_model: Vec<Usage>,
    /// Cost and tokens by user label, most expensive first; empty unless a user attribute is
    /// allow-listed as a label (`otlp.label_allowlist`).
    by_user: Vec<Usage>,
    /// Tool calls and failures (`null` for a user token: they mix every user's).
    tools: Option<Vec<Tool>>,
    /// Permission decisions (`null` for a user token).
    decisions: Option<Vec<Decision>>,
    /// Claude Code events received by name (`null` for a user token).
    events: Option<BTreeMap<String, u64>>,
}

fn user_of(labels: &Labels) -> Option<&str> {
    USER_LABELS
        .iter()
        .find_map(|u| labels.iter().find(|(k, _)| k == u).map(|(_, v)| v.as_str()))
}

fn label<'a>(labels: &'a Labels, name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The answer for `user` (`None`: everything) from one snapshot.
pub fn stats(snap: &Snapshot, user: Option<&str>) -> ClaudeCodeStats {
    let mut metrics = Vec::with_capacity(CLAUDE_CODE_METRICS.len());
    let mut by_model: BTreeMap<String, Usage> = BTreeMap::new();
    let mut by_user: BTreeMap<String, Usage> = BTreeMap::new();
    for (i, (name, family, usd)) in CLAUDE_CODE_METRICS.iter().enumerate() {
        let mut series = Vec::new();
        if let Some(map) = snap.series.get(i) {
            for (labels, v) in map {
                if user.is_some() && user_of(labels) != user {
                    continue;
                }
                series.push(Series {
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    value: *v,
                });
                let cost = *name == "claude_code.cost.usage";
                let tokens = *name == "claude_code.token.usage";
                if !(cost || tokens) {
                    continue;
                }
                let kind = label(labels, "type").unwrap_or("unknown").to_string();
                let add = |u: &mut Usage| {
                    if cost {
                        u.cost_usd += v;
                    } else {
                        *u.tokens.entry(kind.clone()).or_default() += v;
                    }
                };
                if let Some(m) = label(labels, "model") {
                    add(by_model.entry(m.to_string()).or_default());
                }
                if let Some(u) = user_of(labels) {
                    add(by_user.entry(u.to_string()).or_default());
                }
            }
        }
        // The overflow series has no user: only an unrestricted answer shows it.
        if user.is_none() && snap.overflow_points.get(i).copied().unwrap_or(0) > 0 {
            series.push(Series {
                labels: BTreeMap::from([("series".to_string(), OVERFLOW.to_string())]),
                value: snap.overflow_value.get(i).copied().unwrap_or(0.0),
            });
        }
        // `+ 0.0`: an empty sum is -0.0, which would print as `-0`.
        let total = series.iter().map(|s| s.value).sum::<f64>() + 0.0;
        metrics.push(MetricSeries {
            metric: name,
            family: family.name,
            unit: if *usd { Some("USD") } else { family.unit },
            total: if *usd {
                (total * 1_000_000.0).round() / 1_000_000.0
            } else {
                total
            },
            series,
        });
    }
    let ranked = |m: BTreeMap<String, Usage>| {
        let mut v: Vec<Usage> = m
            .into_iter()
            .map(|(name, u)| Usage {
                name,
                cost_usd: (u.cost_usd * 1_000_000.0).round() / 1_000_000.0,
                tokens: u.tokens,
            })
            .collect();
        v.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd).then(a.name.cmp(&b.name)));
        v
    };
    let fleet = user.is_none();
    ClaudeCodeStats {
        own_rows_only: !fleet,
        metrics,
        by_model: ranked(by_model),
        by_user: ranked(by_user),
        tools: fleet.then(|| {
            snap.tools
                .iter()
                .map(|(t, s)| Tool {
                    tool: t.to_string(),
                    calls: s.calls,
                    failures: s.failures,
                    avg_duration_ms: (s.duration_count > 0)
                        .then(|| s.duration_ms_sum as f64 / s.duration_count as f64),
                })
                .collect()
        }),
        decisions: fleet.then(|| {
            snap.decisions
                .iter()
                .map(|((tool, decision, source), n)| Decision {
                    tool: tool.to_string(),
                    decision: decision.to_string(),
                    source: source.to_string(),
                    count: *n,
                })
                .collect()
        }),
        events: fleet.then(|| {
            snap.events
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect()
        }),
    }
}

/// `GET /api/v1/claude-code`.
#[utoipa::path(get, path = "/api/v1/claude-code", tag = "analytics",
    summary = "Claude Code's telemetry: cost and tokens by model and user, tools, decisions, metrics",
    responses((status = 200, description = "This process's Claude Code figures since it started",
        body = ClaudeCodeStats), QueryErrors))]
pub async fn claude_code(
    State(api): State<Arc<ClaudeCodeApi>>,
    Extension(who): Extension<Principal>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    params(q, &[])?;
    let snap = api.claude_code.snapshot().await;
    Ok(Json(stats(&snap, who.forced_user())).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use compact_str::CompactString;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (CompactString::from(*k), CompactString::from(*v)))
            .collect()
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot {
            series: vec![BTreeMap::new(); CLAUDE_CODE_METRICS.len()],
            overflow_value: vec![0.0; CLAUDE_CODE_METRICS.len()],
            overflow_points: vec![0; CLAUDE_CODE_METRICS.len()],
            ..Snapshot::default()
        };
        let cost = CLAUDE_CODE_METRICS
            .iter()
            .position(|m| m.0 == "claude_code.cost.usage")
            .expect("cost");
        let tokens = CLAUDE_CODE_METRICS
            .iter()
            .position(|m| m.0 == "claude_code.token.usage")
            .expect("tokens");
        s.series[cost].insert(labels(&[("model", "opus"), ("user_email", "a@x")]), 1.5);
        s.series[cost].insert(labels(&[("model", "opus"), ("user_email", "b@x")]), 0.25);
        s.series[cost].insert(labels(&[("model", "haiku"), ("user_email", "b@x")]), 0.5);
        s.series[tokens].insert(
            labels(&[("model", "opus"), ("type", "input"), ("user_email", "a@x")]),
            100.0,
        );
        s.overflow_points[cost] = 1;
        s.overflow_value[cost] = 9.0;
        s
    }

    #[test]
    fn sums_by_model_and_user_and_totals() {
        let a = stats(&snapshot(), None);
        let names: Vec<(&str, f64)> = a
            .by_model
            .iter()
            .map(|u| (u.name.as_str(), u.cost_usd))
            .collect();
        assert_eq!(names, [("opus", 1.75), ("haiku", 0.5)]);
        assert_eq!(a.by_model[0].tokens["input"], 100.0);
        let users: Vec<(&str, f64)> = a
            .by_user
            .iter()
            .map(|u| (u.name.as_str(), u.cost_usd))
            .collect();
        assert_eq!(users, [("a@x", 1.5), ("b@x", 0.75)]);
        let cost = a
            .metrics
            .iter()
            .find(|m| m.metric == "claude_code.cost.usage")
            .expect("cost");
        // Three series and the overflow one.
        assert_eq!(cost.series.len(), 4);
        assert_eq!(cost.total, 11.25);
        assert!(a.tools.is_some() && !a.own_rows_only);
    }

    /// A user token sees its own series only: no other user's, no overflow, no fleet totals.
    #[test]
    fn a_user_sees_only_its_own_series() {
        let b = stats(&snapshot(), Some("b@x"));
        assert!(b.own_rows_only);
        assert!(b.tools.is_none() && b.decisions.is_none() && b.events.is_none());
        let cost = b
            .metrics
            .iter()
            .find(|m| m.metric == "claude_code.cost.usage")
            .expect("cost");
        assert_eq!(cost.series.len(), 2);
        assert_eq!(cost.total, 0.75);
        assert!(b.by_user.iter().all(|u| u.name == "b@x"));
        let json = serde_json::to_string(&b).expect("json");
        assert!(!json.contains("a@x"), "{json}");
        // A user with no labelled series sees nothing at all.
        let c = stats(&snapshot(), Some("c@x"));
        assert!(c.metrics.iter().all(|m| m.series.is_empty()));
    }
}
