//! The analytics families of `/metrics` (`gatemeter_active_sessions`,
//! `gatemeter_provider_availability_ratio`, `gatemeter_provider_status`,
//! `gatemeter_leaderboard_cost_usd`, `gatemeter_leaderboard_requests`): a task reads the request
//! log's rollups every `analytics.refresh_secs` into a snapshot, and a scrape renders the latest
//! snapshot without touching the database. With PostgreSQL shared by the replicas, every replica
//! renders the same fleet-wide values.
//!
//! Bounded: the 50 busiest namespaces and providers (the rest of the namespaces in
//! `__overflow__`), leaderboards of `analytics.top_n` lines plus `other` per scope and period.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::calendar::Period;
use crate::catalog as c;
use crate::clock::now_ms;
use crate::exposition::{Encoder, Value};
use crate::store::StoreError;
use crate::store::sql::SqlLog;
use crate::store::sql::analytics::{AnalyticsConfig, Keep, status};
use crate::store::sql::rollup::{Counts, DAY_MS, Dim, HOUR_MS, MINUTE_MS};

/// Provider rows as the families need them: counts per provider, nothing decoded.
const COUNTS: Keep = Keep {
    detail: false,
    dist: false,
};

/// Namespaces and providers shown at most.
pub const MAX_LABELS: usize = 50;

/// The label value of what is beyond [`MAX_LABELS`].
const OVERFLOW: &str = "__overflow__";

/// One leaderboard line: scope, period, rank (`1`…, or `other`), name, cost (micro-USD) or
/// requests.
type Line = (&'static str, &'static str, String, String, i64);

/// What a scrape renders.
#[derive(Debug, Default, Clone)]
pub struct AnalyticsSnapshot {
    sessions: Vec<(String, i64)>,
    availability: Vec<(String, &'static str, f64)>,
    status: Vec<(String, &'static str)>,
    cost: Vec<Line>,
    requests: Vec<Line>,
}

/// The refresh task's output, shared with `/metrics`.
#[derive(Debug, Default)]
pub struct AnalyticsGauges {
    latest: Mutex<Arc<AnalyticsSnapshot>>,
}

impl AnalyticsGauges {
    /// Starts the refresh task over `log`: at once, then every `refresh` (a failed refresh keeps
    /// the previous snapshot and is logged).
    pub fn spawn(
        log: SqlLog,
        config: AnalyticsConfig,
        refresh: Duration,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let gauges = Arc::new(Self::default());
        let g = gauges.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match read(&log, &config, now_ms()).await {
                    Ok(s) => {
                        if let Ok(mut latest) = g.latest.lock() {
                            *latest = Arc::new(s);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Analytics gauges not refreshed; keeping the last values.")
                    }
                }
            }
        });
        (gauges, task)
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<AnalyticsSnapshot> {
        self.latest.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A user or key name as a label value: an email address (Claude Code names its users by
/// `user.email`) keeps the first character of its local part and its domain, `a***@example.com`
/// (labels never carry emails, SPEC §6.1); any other name as it is. Model ids such as
/// `claude-3-5-sonnet@20240620` have no dotted domain and stay whole.
fn label_name(name: String) -> String {
    let Some((local, domain)) = name.rsplit_once('@') else {
        return name;
    };
    let dotted = domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.');
    match local.chars().next() {
        Some(first) if dotted && !domain.contains(char::is_whitespace) => {
            format!("{first}***@{domain}")
        }
        _ => name,
    }
}

/// Top `n` of `(name, value)` by value (ties by name) plus `other` (the rest's sum, when any);
/// user and key names as [`label_name`] shows them.
fn top(
    mut all: Vec<(String, i64)>,
    n: usize,
    scope: &'static str,
    period: &'static str,
) -> Vec<Line> {
    all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let rest: i64 = all.iter().skip(n).map(|(_, v)| v).sum();
    let more = all.len() > n;
    let mut out: Vec<Line> = all
        .into_iter()
        .take(n)
        .enumerate()
        .map(|(i, (name, v))| {
            let name = match scope {
                "user" | "key" => label_name(name),
                _ => name,
            };
            (scope, period, (i + 1).to_string(), name, v)
        })
        .collect();
    if more {
        out.push((scope, period, "other".into(), "other".into(), rest));
    }
    out
}

/// Totals per value of a provider-keyed bucket map.
fn per_provider<I: IntoIterator<Item = (String, Counts)>>(cells: I) -> BTreeMap<String, Counts> {
    let mut out: BTreeMap<String, Counts> = BTreeMap::new();
    for (p, c) in cells {
        out.entry(p).or_default().add(&c);
    }
    out
}

/// One refresh: every family's values at `now`.
pub async fn read(
    log: &SqlLog,
    config: &AnalyticsConfig,
    now: i64,
) -> Result<AnalyticsSnapshot, StoreError> {
    let mut snap = AnalyticsSnapshot::default();
    let since = now - i64::try_from(config.session_active_secs).unwrap_or(86_400) * 1000;
    let mut sessions = log.active_sessions_by_namespace(since).await?;
    sessions.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let rest: i64 = sessions.iter().skip(MAX_LABELS).map(|(_, n)| n).sum();
    sessions.truncate(MAX_LABELS);
    if rest > 0 {
        sessions.push((OVERFLOW.into(), rest));
    }
    sessions.sort();
    snap.sessions = sessions;

    // Providers of the last 7 days, the busiest first.
    let week = per_provider(
        log.bucketed(
            Dim::Provider,
            (now - 7 * DAY_MS, now),
            HOUR_MS,
            None,
            COUNTS,
        )
        .await?
        .into_iter()
        .map(|((_, p, _), c)| (p.to_string(), c.counts)),
    );
    let mut providers: Vec<(String, i64)> =
        week.into_iter().map(|(p, c)| (p, c.requests)).collect();
    providers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    providers.truncate(MAX_LABELS);
    let minutes = log
        .bucketed(Dim::Provider, (now - HOUR_MS, now), MINUTE_MS, None, COUNTS)
        .await?;
    let window = |ms: i64| {
        per_provider(
            minutes
                .iter()
                .filter(|((b, _, _), _)| *b + MINUTE_MS > now - ms)
                .map(|((_, p, _), c)| (p.to_string(), c.counts)),
        )
    };
    let (five, hour, recent) = (
        window(5 * MINUTE_MS),
        window(HOUR_MS),
        window(15 * MINUTE_MS),
    );
    providers.sort();
    for (p, _) in &providers {
        for (label, w) in [("5m", &five), ("1h", &hour)] {
            if let Some(c) = w.get(p).filter(|c| c.requests > 0) {
                let ratio = c.successes as f64 / c.requests as f64;
                snap.availability.push((p.clone(), label, ratio));
            }
        }
        let h = hour.get(p).copied().unwrap_or_default();
        // Minute buckets: "seen in the last 15 minutes" to the minute.
        let seen = recent.get(p).filter(|c| c.requests > 0).map(|_| now);
        snap.status
            .push((p.clone(), status(h.successes, h.requests, seen, now)));
    }

    for (period, label) in [
        (Period::Today, "today"),
        (Period::Week, "week"),
        (Period::Month, "month"),
    ] {
        let (from, to) = config.time_zone.period(period, now);
        for (dim, scope) in [
            (Dim::User, "user"),
            (Dim::Key, "key"),
            (Dim::Provider, "provider"),
            (Dim::Model, "model"),
        ] {
            let mut by_name: BTreeMap<String, Counts> = BTreeMap::new();
            for ((value, _), cell) in log.grouped(dim, from, to, None).await? {
                by_name
                    .entry(value.to_string())
                    .or_default()
                    .add(&cell.counts);
            }
            let cost = by_name
                .iter()
                .map(|(n, c)| (n.clone(), c.cost_micros))
                .collect();
            let reqs = by_name
                .iter()
                .map(|(n, c)| (n.clone(), c.requests))
                .collect();
            snap.cost.extend(top(cost, config.top_n, scope, label));
            snap.requests.extend(top(reqs, config.top_n, scope, label));
        }
    }
    Ok(snap)
}

/// Writes the analytics families (headers only when there is no snapshot: no request log).
pub(crate) fn write(e: &mut Encoder, s: &AnalyticsSnapshot) {
    e.header(&c::ACTIVE_SESSIONS);
    for (ns, n) in &s.sessions {
        e.sample(&c::ACTIVE_SESSIONS, &[ns], Value::I(*n));
    }
    e.header(&c::PROVIDER_AVAILABILITY);
    for (p, w, r) in &s.availability {
        e.sample(&c::PROVIDER_AVAILABILITY, &[p, w], Value::F(*r));
    }
    e.header(&c::PROVIDER_STATUS);
    for (p, st) in &s.status {
        for colour in ["green", "red", "unknown"] {
            let v = i64::from(*st == colour);
            e.sample(&c::PROVIDER_STATUS, &[p, colour], Value::I(v));
        }
    }
    e.header(&c::LEADERBOARD_COST);
    for (scope, period, rank, name, micros) in &s.cost {
        e.sample(
            &c::LEADERBOARD_COST,
            &[scope, period, rank, name],
            Value::Micros(u64::try_from(*micros).unwrap_or(0)),
        );
    }
    e.header(&c::LEADERBOARD_REQUESTS);
    for (scope, period, rank, name, n) in &s.requests {
        e.sample(
            &c::LEADERBOARD_REQUESTS,
            &[scope, period, rank, name],
            Value::I(*n),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_n_and_other() {
        let all = vec![
            ("a".into(), 5),
            ("b".into(), 9),
            ("c".into(), 5),
            ("d".into(), 1),
        ];
        let t = top(all, 2, "user", "today");
        let got: Vec<(String, String, i64)> =
            t.into_iter().map(|(_, _, r, n, v)| (r, n, v)).collect();
        assert_eq!(
            got,
            vec![
                ("1".into(), "b".into(), 9),
                ("2".into(), "a".into(), 5),
                ("other".into(), "other".into(), 6)
            ]
        );
        assert_eq!(
            top(vec![("x".into(), 1)], 2, "key", "week").len(),
            1,
            "no other"
        );
    }

    /// Users and keys named by an email are shown masked (ranked by the whole name); models
    /// and providers, and names that are not emails, as they are.
    #[test]
    fn emails_never_become_label_values() {
        let all = vec![
            ("bob@example.com".into(), 9),
            ("alice@example.com".into(), 9),
            ("carol".into(), 5),
            ("ops@".into(), 4),
            ("é@corp.example".into(), 3),
        ];
        let names = |scope| -> Vec<String> {
            top(all.clone(), 10, scope, "today")
                .into_iter()
                .map(|l| l.3)
                .collect()
        };
        assert_eq!(
            names("user"),
            [
                "a***@example.com",
                "b***@example.com",
                "carol",
                "ops@",
                "é***@corp.example"
            ]
        );
        assert_eq!(names("key")[0], "a***@example.com");
        assert_eq!(names("model")[0], "alice@example.com");
        assert_eq!(
            label_name("claude-3-5-sonnet@20240620".into()),
            "claude-3-5-sonnet@20240620"
        );
        assert_eq!(label_name("x@.com".into()), "x@.com");
    }
}
