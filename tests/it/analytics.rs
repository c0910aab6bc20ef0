//! The analytics API and the rollups behind it, on SQLite and PostgreSQL: rollups exact against
//! a model of the raw rows (any range, repeated ids, rebuild), periods in a non-UTC zone,
//! availability colours and quantiles, the session activity edge, what a user token sees, and
//! parameter errors.

use std::collections::BTreeMap;
use std::sync::Arc;

use gatemeter::calendar::{Period, Zone};
use gatemeter::health::Health;
use gatemeter::store::RequestLog;
use gatemeter::store::sql::rollup::{Counts, DAY_MS, Dim, HOUR_MS};
use serde_json::{Value, json};

use crate::harness::TestApp;
use crate::sql_log::{
    ADMIN, ALICE, BOB, Db, INGEST, auth_yaml, conformance, get_json, ingest, log_store_yaml,
    open_log_with, valid, wait_rows,
};

/// A deterministic mixed record set over the last `days` days: users, keys, three providers and
/// blocked requests (no provider), redirected models, failures, sessions.
fn records(n: i64, now: i64, days: i64) -> Vec<Value> {
    let span = days * DAY_MS;
    (0..n)
        .map(|i| {
            let x = (i * 7_919 + 13) % 104_729;
            let ts = now - span + (x * span / 104_729);
            let provider = ["anthropic", "openai", "bedrock", ""][(x % 4) as usize];
            let status = [200, 200, 200, 201, 429, 500, 0, 304][(x % 8) as usize];
            let model = ["claude-sonnet-4-5", "gpt-4o", "m3"][(x % 3) as usize];
            let endpoint = ["/v1/messages", "/v1/chat/completions"][(x % 2) as usize];
            let mut r = json!({
                "request_id": format!("a{i}"),
                "timestamp": ts,
                "namespace": format!("ns{}", x % 3),
                "user": format!("u{}", x % 10),
                "key": format!("k{}", x % 5),
                "model": model,
                "endpoint": endpoint,
                "status": status,
                "duration_ms": 20 + (x * x) % 9_000,
                "input_tokens": x % 1000,
                "output_tokens": x % 333,
                "cache_read_tokens": x % 77,
                "cost_usd": format!("0.{:06}", x % 999_999),
                "session_id": format!("s{}", x % 40),
            });
            if !provider.is_empty() {
                r["provider"] = json!(provider);
            }
            if x % 5 == 0 {
                r["original_model"] = json!("asked-model");
            }
            r
        })
        .collect()
}

/// Expected totals of `dim` per (value, detail) over `[from, to)`, from the records.
fn model(
    recs: &[Value],
    dim: Dim,
    from: i64,
    to: i64,
    user: Option<&str>,
) -> BTreeMap<(String, String), Counts> {
    let mut out: BTreeMap<(String, String), Counts> = BTreeMap::new();
    for r in recs {
        let ts = r["timestamp"].as_i64().expect("ts");
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        if ts < from || ts >= to || user.is_some_and(|u| s("user") != u) {
            continue;
        }
        let key = match dim {
            Dim::All => (String::new(), String::new()),
            Dim::User => (s("user"), String::new()),
            Dim::Key => (s("key"), String::new()),
            Dim::Provider if s("provider").is_empty() => continue,
            Dim::Provider => (s("provider"), s("model")),
            Dim::Model => {
                let asked = r["original_model"]
                    .as_str()
                    .map_or(s("model"), str::to_string);
                (asked, s("model"))
            }
            Dim::Namespace => (s("namespace"), String::new()),
            Dim::Endpoint => (s("endpoint"), String::new()),
        };
        let c = out.entry(key).or_default();
        let status = r["status"].as_i64().expect("status");
        let n = |k: &str| r[k].as_i64().unwrap_or(0);
        c.requests += 1;
        c.successes += i64::from((200..400).contains(&status));
        c.tokens[0] += n("input_tokens");
        c.tokens[1] += n("output_tokens");
        c.tokens[4] += n("cache_read_tokens");
        let cost: f64 = r["cost_usd"]
            .as_str()
            .expect("cost")
            .parse()
            .expect("number");
        c.cost_micros += (cost * 1e6).round() as i64;
        c.duration_ms_sum += n("duration_ms");
    }
    out
}

async fn grouped_counts(
    log: &gatemeter::store::SqlLog,
    dim: Dim,
    from: i64,
    to: i64,
    user: Option<&str>,
) -> BTreeMap<(String, String), Counts> {
    log.grouped(dim, from, to, user)
        .await
        .expect("grouped")
        .into_iter()
        .map(|((v, d), c)| ((v.to_string(), d.to_string()), c.counts))
        .collect()
}

const DIMS: [Dim; 7] = [
    Dim::All,
    Dim::User,
    Dim::Key,
    Dim::Provider,
    Dim::Model,
    Dim::Namespace,
    Dim::Endpoint,
];

/// Rollups equal a model of the raw rows for every dimension over aligned and unaligned ranges,
/// ignore repeated request ids, give P95 within 1 % of the exact sample quantile, and equal
/// themselves after `rebuild`.
pub async fn rollups_are_exact_and_rebuildable(db: Db) {
    let (log, _dir, _) = open_log_with(db, 100_000, Arc::new(Health::new(1))).await;
    let now = gatemeter::clock::now_ms();
    let recs = records(4_000, now, 3);
    for chunk in recs.chunks(700) {
        log.submit(chunk.iter().map(|r| valid(r.clone())).collect())
            .expect("queued");
    }
    // Written first (PostgreSQL commits concurrent batches in any order).
    log.flush().await;
    // The same ids again with other content: stored and counted once, as first written.
    let repeats: Vec<_> = recs[..500]
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r["status"] = json!(503);
            r["input_tokens"] = json!(999_999);
            valid(r)
        })
        .collect();
    log.submit(repeats).expect("queued");
    log.flush().await;

    let start = now - 3 * DAY_MS - 1;
    let ranges = [
        (start, now + 1), // everything
        (
            start.div_euclid(DAY_MS) * DAY_MS + DAY_MS,
            now.div_euclid(HOUR_MS) * HOUR_MS,
        ), // aligned
        (now - 2 * DAY_MS + 12_345, now - 5 * HOUR_MS - 678), // raw edges, hours, a day
        (now - 30 * 60_000 - 7, now - 10 * 60_000 + 3), // within the last hour
    ];
    for (from, to) in ranges {
        for dim in DIMS {
            let got = grouped_counts(&log, dim, from, to, None).await;
            assert_eq!(
                got,
                model(&recs, dim, from, to, None),
                "{db:?} {dim:?} [{from}, {to})"
            );
        }
        let got = grouped_counts(&log, Dim::Provider, from, to, Some("u3")).await;
        assert_eq!(
            got,
            model(&recs, Dim::Provider, from, to, Some("u3")),
            "{db:?} user u3"
        );
    }

    // P50/P95/P99 of one provider over everything, against the exact nearest-rank quantile.
    let cells = log
        .grouped(Dim::Provider, start, now + 1, None)
        .await
        .expect("grouped");
    let mut merged = gatemeter::store::sql::rollup::Dist::default();
    for ((p, _), c) in &cells {
        if p == "openai" {
            merged.merge(c.dist.as_ref().expect("providers keep a dist"));
        }
    }
    let mut exact: Vec<i64> = recs
        .iter()
        .filter(|r| r["provider"] == "openai")
        .map(|r| r["duration_ms"].as_i64().expect("duration"))
        .collect();
    exact.sort_unstable();
    for q in [0.5, 0.95, 0.99] {
        let rank = ((q * exact.len() as f64).ceil() as usize).clamp(1, exact.len());
        let want = exact[rank - 1] as f64;
        let got = merged.latency.quantile(q).expect("quantile");
        assert!(
            (got - want).abs() / want <= 0.01,
            "{db:?} q={q}: {got} vs {want}"
        );
    }
    let errors: u64 = merged.errors.values().sum();
    let failures = recs
        .iter()
        .filter(|r| {
            r["provider"] == "openai" && !(200..400).contains(&r["status"].as_i64().unwrap_or(0))
        })
        .count();
    assert_eq!(errors, failures as u64, "{db:?}: errors by code");

    let before: Vec<_> = futures_all(&log, start, now + 1).await;
    let rows = log.rebuild_rollups().await.expect("rebuild");
    assert_eq!(
        rows,
        recs.len() as u64,
        "{db:?}: every stored row read once"
    );
    assert_eq!(
        futures_all(&log, start, now + 1).await,
        before,
        "{db:?}: rebuild"
    );
}

/// Users' and keys' month buckets: whole UTC months, a month less its days outside a range
/// (Shanghai's month, a custom range), ranges across two months and ranges ending now (the
/// month or day less the hours still to come, which hold requests dated in the future) equal
/// the model of the raw rows; they survive `rebuild`; the rest of the dimensions agree too.
pub async fn month_buckets_are_exact(db: Db) {
    let (log, _dir, _) = open_log_with(db, 100_000, Arc::new(Health::new(1))).await;
    let now = gatemeter::clock::now_ms();
    let mut recs = records(3_000, now, 80);
    // The last four hours and the next twenty (clock skew: up to a day ahead is accepted), so
    // that the current hour, day and month hold requests before and after now.
    recs.extend(
        records(400, now + 20 * HOUR_MS, 1)
            .into_iter()
            .map(|mut r| {
                r["request_id"] = json!(format!("f{}", r["request_id"].as_str().expect("id")));
                r
            }),
    );
    log.submit(recs.iter().map(|r| valid(r.clone())).collect())
        .expect("queued");
    log.flush().await;
    let utc = Zone::utc();
    let (today, _) = utc.period(Period::Today, now);
    let (this_month, _) = utc.period(Period::Month, now);
    let shanghai = Zone::named("Asia/Shanghai").expect("zone");
    let (m, next) = utc.period(Period::Month, now - 40 * DAY_MS);
    let (sm, snext) = shanghai.period(Period::Month, now - 40 * DAY_MS);
    let ranges = [
        (m, next),                                                  // a whole UTC month
        (sm, snext),                                                // Shanghai's: less a day, hours
        (m + 3 * DAY_MS, next - 2 * DAY_MS),                        // less days at both ends
        (m + 3 * DAY_MS + 5 * HOUR_MS + 17, next + 9 * DAY_MS + 1), // into the next month
        (m - 20 * DAY_MS, now + 1),                                 // three months, to now
        // Ranges ending now: the month or day less what is still to come.
        (this_month, now),
        (today, now),
        (now - 30 * DAY_MS, now),
        (now - 30 * DAY_MS - 7 * HOUR_MS, now - 2 * HOUR_MS + 5),
        (m - 20 * DAY_MS, now + 2 * DAY_MS), // the future-dated requests too
    ];
    let check = |label: &'static str| {
        let log = log.clone();
        let recs = &recs;
        async move {
            for (from, to) in ranges {
                for dim in [Dim::User, Dim::Key, Dim::Model] {
                    assert_eq!(
                        grouped_counts(&log, dim, from, to, None).await,
                        model(recs, dim, from, to, None),
                        "{db:?} {label} {dim:?} [{from}, {to})"
                    );
                }
            }
        }
    };
    check("written").await;
    log.rebuild_rollups().await.expect("rebuild");
    check("rebuilt").await;
}

async fn futures_all(
    log: &gatemeter::store::SqlLog,
    from: i64,
    to: i64,
) -> Vec<BTreeMap<(String, String), Counts>> {
    let mut out = Vec::new();
    for dim in DIMS {
        out.push(grouped_counts(log, dim, from, to, None).await);
    }
    out
}

/// Waits until the rollups count `n` requests: rows are in the log first, their rollups follow
/// at the writer's next merge (at once when it is idle). Asks a range of whole hours, which only
/// rollups answer.
pub(crate) async fn wait_rollups(app: &TestApp, n: i64) {
    let now = gatemeter::clock::now_ms();
    let from = (now - 40 * DAY_MS).div_euclid(HOUR_MS) * HOUR_MS;
    let to = now.div_euclid(HOUR_MS) * HOUR_MS + HOUR_MS;
    let path =
        format!("/api/v1/leaderboard?scope=model&period=custom&from={from}&to={to}&limit=100");
    let mut counted = 0;
    for _ in 0..200 {
        let (_, v) = get_json(app, Some(ADMIN), &path).await;
        counted = v["entries"].as_array().map_or(0, |e| {
            e.iter().map(|l| l["requests"].as_i64().unwrap_or(0)).sum()
        });
        if counted == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the rollups count {counted} requests, not {n}");
}

async fn analytics_app(db: Db, extra: &str) -> TestApp {
    TestApp::with_config(&format!(
        "{}{}{extra}",
        log_store_yaml(db).await,
        auth_yaml()
    ))
    .await
}

fn rec(id: &str, ts: i64, user: &str, provider: &str, status: i64, duration_ms: i64) -> Value {
    json!({
        "request_id": id, "timestamp": ts, "user": user, "key": format!("key-{user}"),
        "provider": provider, "model": "m", "status": status, "duration_ms": duration_ms,
        "input_tokens": 10, "output_tokens": 5, "cost_usd": "0.000100", "session_id": format!("sess-{user}-{provider}"),
    })
}

/// Today begins at the zone's midnight: with `Asia/Shanghai` a request one millisecond before it
/// is yesterday's; the week and month contain both.
pub async fn periods_follow_the_time_zone(db: Db) {
    let app = analytics_app(db, "analytics:\n  time_zone: Asia/Shanghai\n").await;
    let now = gatemeter::clock::now_ms();
    let zone = Zone::named("Asia/Shanghai").expect("zone");
    let (today, _) = zone.period(Period::Today, now);
    let recs = vec![
        rec("y", today - 1, "alice", "p", 200, 10),
        rec("t", today, "alice", "p", 200, 10),
        rec("t2", today + 1, "bob", "p", 200, 10),
    ];
    ingest(&app, Some(INGEST), &recs).await;
    wait_rows(&app, Some(ADMIN), 3).await;
    wait_rollups(&app, 3).await;
    let (s, v) = get_json(
        &app,
        Some(ADMIN),
        "/api/v1/leaderboard?scope=user&period=today&sort=requests",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["from"], today, "{v}");
    assert_eq!(v["time_zone"], "Asia/Shanghai");
    let lines: Vec<(String, i64)> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").to_string(),
                e["requests"].as_i64().expect("n"),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![("alice".into(), 1), ("bob".into(), 1)],
        "{db:?}: {v}"
    );
    let (week, _) = zone.period(Period::Week, now);
    // On a Monday, yesterday's request belongs to last week.
    let want = if today > week { 3 } else { 2 };
    let (_, v) = get_json(&app, Some(ADMIN), "/api/v1/overview?period=week").await;
    assert_eq!(v["requests"], want, "{db:?}: {v}");
    // A custom range is exact to the millisecond.
    let q = format!(
        "/api/v1/overview?period=custom&from={}&to={}",
        today - 1,
        today + 1
    );
    let (_, v) = get_json(&app, Some(ADMIN), &q).await;
    assert_eq!(v["requests"], 2, "{db:?}: {v}");
    app.stop().await;
}

/// Availability: 50 % is green, 49 % red, a provider quiet for over 15 minutes unknown; quantiles
/// and errors by code per bucket.
pub async fn availability_colours_and_buckets(db: Db) {
    let app = analytics_app(db, "").await;
    let now = gatemeter::clock::now_ms();
    let mut recs = Vec::new();
    for i in 0..100 {
        let t = now - 10 * 60_000 + i * 1000;
        recs.push(rec(
            &format!("g{i}"),
            t,
            "alice",
            "green-p",
            if i < 50 { 200 } else { 503 },
            100 + i,
        ));
        recs.push(rec(
            &format!("r{i}"),
            t,
            "alice",
            "red-p",
            if i < 49 { 200 } else { 500 },
            100,
        ));
        recs.push(rec(
            &format!("u{i}"),
            now - 20 * 60_000 + i,
            "bob",
            "quiet-p",
            200,
            50,
        ));
    }
    ingest(&app, Some(INGEST), &recs).await;
    wait_rows(&app, Some(ADMIN), 300).await;
    wait_rollups(&app, 300).await;
    let (s, v) = get_json(&app, Some(ADMIN), "/api/v1/availability?window=1h").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["bucket_ms"], 60_000);
    let by: BTreeMap<String, Value> = v["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .map(|p| (p["provider"].as_str().expect("p").to_string(), p.clone()))
        .collect();
    assert_eq!(by["green-p"]["status"], "green", "{db:?}");
    assert_eq!(by["red-p"]["status"], "red", "{db:?}");
    assert_eq!(by["quiet-p"]["status"], "unknown", "{db:?}");
    assert_eq!(by["green-p"]["availability"], 0.5);
    assert_eq!(by["green-p"]["errors"]["503"], 50);
    assert_eq!(by["red-p"]["errors"]["500"], 51);
    // Durations 100..=199: nearest-rank P50 = 149, P99 = 198 (within HDR precision).
    let p50 = by["green-p"]["p50_ms"].as_f64().expect("p50");
    assert!((p50 - 149.0).abs() <= 1.5, "{p50}");
    let p99 = by["green-p"]["p99_ms"].as_f64().expect("p99");
    assert!((p99 - 198.0).abs() <= 2.0, "{p99}");
    let buckets: i64 = by["green-p"]["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b["requests"].as_i64().expect("n"))
        .sum();
    assert_eq!(buckets, 100);
    // A user token sees availability of its own requests only: bob has only quiet-p.
    let (_, v) = get_json(&app, Some(BOB), "/api/v1/availability?window=1h").await;
    let names: Vec<&str> = v["providers"]
        .as_array()
        .expect("p")
        .iter()
        .map(|p| p["provider"].as_str().expect("p"))
        .collect();
    assert_eq!(names, vec!["quiet-p"], "{db:?}: {v}");
    app.stop().await;
}

/// Active sessions are those with a request in the last `session_active_secs`; a user token
/// lists and opens only its own sessions and sees only its own leaderboard line.
pub async fn sessions_and_what_a_user_sees(db: Db) {
    let app = analytics_app(db, "analytics:\n  session_active_secs: 300\n").await;
    let now = gatemeter::clock::now_ms();
    let recs = vec![
        rec("a1", now - 280_000, "alice", "p", 200, 10),
        rec("a2", now - 900_000, "alice", "q", 200, 30),
        rec("a3", now - 950_000, "alice", "q", 500, 50),
        rec("b1", now - 290_000, "bob", "p", 200, 10),
        rec("b2", now - 320_000, "bob", "q", 200, 10),
    ];
    ingest(&app, Some(INGEST), &recs).await;
    wait_rows(&app, Some(ADMIN), 5).await;
    wait_rollups(&app, 5).await;
    let ids = |v: &Value| -> Vec<String> {
        v["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|s| s["session_id"].as_str().expect("id").to_string())
            .collect()
    };
    let (_, v) = get_json(&app, Some(ADMIN), "/api/v1/sessions?state=active").await;
    assert_eq!(ids(&v), vec!["sess-alice-p", "sess-bob-p"], "{db:?}: {v}");
    let (_, v) = get_json(&app, Some(ADMIN), "/api/v1/sessions?state=inactive&limit=1").await;
    assert_eq!(ids(&v), vec!["sess-bob-q"], "{db:?}: {v}");
    let cursor = v["next_cursor"].as_str().expect("more").to_string();
    let (_, v) = get_json(
        &app,
        Some(ADMIN),
        &format!("/api/v1/sessions?state=inactive&cursor={cursor}"),
    )
    .await;
    assert_eq!(ids(&v), vec!["sess-alice-q"], "{db:?}: {v}");
    assert!(v["next_cursor"].is_null());

    let (_, v) = get_json(&app, Some(ALICE), "/api/v1/sessions?state=inactive").await;
    assert_eq!(ids(&v), vec!["sess-alice-q"], "{db:?}: {v}");
    let (s, v) = get_json(&app, Some(ALICE), "/api/v1/sessions/sess-alice-q").await;
    assert_eq!(s, 200, "{v}");
    // The count of the totals and the list are two keys (they were both `requests`, and a
    // JSON reader kept only the list).
    assert_eq!(v["requests"], 2, "{v}");
    assert_eq!(v["request_list"].as_array().expect("list").len(), 2);
    assert_eq!(v["request_list"][0]["status"], 500, "oldest first");
    assert_eq!(v["avg_response_ms"], 40.0);
    assert_eq!(v["providers"], json!(["q"]));
    let (s, _) = get_json(&app, Some(ALICE), "/api/v1/sessions/sess-bob-q").await;
    assert_eq!(s, 404, "{db:?}: another user's session is not found");

    // Leaderboards: alice sees her own line only, for every scope and period.
    for scope in ["user", "key", "provider", "model"] {
        let (s, v) = get_json(
            &app,
            Some(ALICE),
            &format!("/api/v1/leaderboard?scope={scope}&period=month"),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let total: i64 = v["entries"]
            .as_array()
            .expect("e")
            .iter()
            .map(|e| e["requests"].as_i64().expect("n"))
            .sum();
        assert_eq!(total, 3, "{db:?} {scope}: {v}");
        assert_eq!(v["own_rows_only"], true);
    }
    let (_, v) = get_json(
        &app,
        Some(ALICE),
        "/api/v1/leaderboard?scope=user&period=month",
    )
    .await;
    assert_eq!(v["entries"].as_array().expect("e").len(), 1, "{v}");
    let (_, v) = get_json(&app, Some(ALICE), "/api/v1/overview?period=month").await;
    assert_eq!(
        (
            v["requests"].as_i64(),
            v["active_sessions"].as_i64(),
            v["active_users"].as_i64()
        ),
        (Some(3), Some(1), Some(1)),
        "{v}"
    );
    // The admin's count of users: over rollups (the month; whole hours before this one) and raw
    // edges, a user seen in both parts counted once.
    let hour = now.div_euclid(HOUR_MS) * HOUR_MS;
    for (from, to, want) in [
        (hour - 2 * HOUR_MS, now + 1, 2),
        (now - 930_000, now - 285_000, 2),
        (now - 300_000, now, 2),
        (now - 100_000, now, 0),
    ] {
        let q = format!("/api/v1/overview?period=custom&from={from}&to={to}");
        let (_, v) = get_json(&app, Some(ADMIN), &q).await;
        assert_eq!(v["active_users"], want, "{q}: {v}");
    }
    let (_, v) = get_json(&app, Some(ADMIN), "/api/v1/overview?period=month").await;
    assert_eq!(v["active_users"], 2, "{v}");
    let (_, v) = get_json(
        &app,
        Some(ADMIN),
        &format!(
            "/api/v1/overview?period=custom&from={}&to={}",
            now - 960_000,
            now - 900_000
        ),
    )
    .await;
    assert_eq!(v["active_users"], 1, "only alice's a2 and a3: {v}");
    let (_, v) = get_json(&app, Some(ALICE), "/api/v1/keys").await;
    let keys = v["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "{v}");
    assert_eq!(
        (keys[0]["key"].as_str(), keys[0]["total_calls"].as_i64()),
        (Some("key-alice"), Some(3))
    );
    let (s, _) = get_json(&app, Some(ALICE), "/api/v1/keys/key-bob").await;
    assert_eq!(s, 404);
    // The admin sees both users, and both keys from the live store.
    let (_, v) = get_json(
        &app,
        Some(ADMIN),
        "/api/v1/leaderboard?scope=user&period=month&sort=requests",
    )
    .await;
    assert_eq!(v["entries"][0]["name"], "alice");
    assert_eq!(v["entries"][1]["name"], "bob");
    let (_, v) = get_json(&app, Some(ADMIN), "/api/v1/keys/key-bob").await;
    assert_eq!(v["total_calls"], 2, "{v}");
    app.stop().await;

    let app = analytics_app(db, "analytics:\n  users_see_leaderboards: true\n").await;
    ingest(&app, Some(INGEST), &recs).await;
    wait_rows(&app, Some(ADMIN), 5).await;
    wait_rollups(&app, 5).await;
    let (_, v) = get_json(
        &app,
        Some(ALICE),
        "/api/v1/leaderboard?scope=user&period=month",
    )
    .await;
    assert_eq!(v["entries"].as_array().expect("e").len(), 2, "{v}");
    let (_, v) = get_json(&app, Some(ALICE), "/api/v1/overview?period=month").await;
    assert_eq!(v["requests"], 3, "other endpoints stay the user's own: {v}");
    app.stop().await;
}

/// Bad parameters are 400s naming the parameter.
pub async fn bad_parameters_are_named(db: Db) {
    let app = analytics_app(db, "").await;
    for (q, param) in [
        ("/api/v1/leaderboard?scope=team", "scope"),
        ("/api/v1/leaderboard?period=year", "period"),
        ("/api/v1/leaderboard?sort=speed", "sort"),
        ("/api/v1/leaderboard?limit=0", "limit"),
        ("/api/v1/leaderboard?period=custom&from=10", "to"),
        ("/api/v1/leaderboard?period=custom&from=10&to=5", "to"),
        ("/api/v1/leaderboard?period=today&from=10", "from"),
        ("/api/v1/leaderboard?colour=red", "colour"),
        ("/api/v1/availability?window=2h", "window"),
        ("/api/v1/availability?bucket=2m", "bucket"),
        ("/api/v1/availability?window=7d&bucket=1m", "bucket"),
        ("/api/v1/sessions?state=asleep", "state"),
        ("/api/v1/sessions?cursor=zz", "cursor"),
        ("/api/v1/overview?from=-1&period=custom&to=5", "from"),
    ] {
        let (s, v) = get_json(&app, Some(ADMIN), q).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert!(
            v["message"]
                .as_str()
                .expect("message")
                .contains(&format!("`{param}`")),
            "{q}: {v}"
        );
    }
    let (s, _) = get_json(&app, None, "/api/v1/overview").await;
    assert_eq!(s, 401, "a token is needed once tokens are configured");
    app.stop().await;
}

/// A session two users share is a row per user in the list: paged one row at a time, every row
/// comes once, also when both rows end at the same millisecond (the cursor held the session id
/// alone, and the second user's row was skipped). Its detail takes the namespace of the
/// session's first request, not of the user first by name.
pub async fn a_shared_session_is_paged_whole(db: Db) {
    let app = analytics_app(db, "").await;
    let now = gatemeter::clock::now_ms();
    let r = |id: &str, ts: i64, user: &str, session: &str, ns: &str| {
        let mut v = rec(id, ts, user, "p", 200, 10);
        v["session_id"] = json!(session);
        v["namespace"] = json!(ns);
        v
    };
    let recs = vec![
        r("s1", now - 60_000, "bob", "shared", "team-bob"),
        r("s2", now - 30_000, "bob", "shared", "team-bob"),
        r("s3", now - 30_000, "alice", "shared", "team-alice"),
        r("s4", now - 90_000, "alice", "other", "team-alice"),
    ];
    ingest(&app, Some(INGEST), &recs).await;
    wait_rows(&app, Some(ADMIN), 4).await;
    wait_rollups(&app, 4).await;
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let path = format!("/api/v1/sessions?state=active&limit=1{cursor}");
        let (s, v) = get_json(&app, Some(ADMIN), &path).await;
        assert_eq!(s, 200, "{v}");
        for x in v["sessions"].as_array().expect("sessions") {
            seen.push(format!("{}/{}", x["session_id"], x["user"]));
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "\"shared\"/\"bob\"",
            "\"shared\"/\"alice\"",
            "\"other\"/\"alice\""
        ],
        "{db:?}"
    );
    let (s, v) = get_json(&app, Some(ADMIN), "/api/v1/sessions/shared").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["namespace"], "team-bob", "{db:?}: {v}");
    assert_eq!(v["first_seen"], now - 60_000);
    // A cursor of the earlier form (no user) still resumes after its session and time.
    let old = format!(
        "{}.{}",
        now - 30_000,
        "shared"
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let (s, v) = get_json(
        &app,
        Some(ADMIN),
        &format!("/api/v1/sessions?state=active&cursor={old}"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["sessions"][0]["session_id"], "other", "{v}");
    app.stop().await;
}

conformance!(
    rollups_are_exact_and_rebuildable,
    month_buckets_are_exact,
    periods_follow_the_time_zone,
    availability_colours_and_buckets,
    sessions_and_what_a_user_sees,
    a_shared_session_is_paged_whole,
    bad_parameters_are_named,
);

/// Without a request log the analytics endpoints say what they need (501).
#[tokio::test]
async fn analytics_need_a_request_log() {
    let app = TestApp::with_config("log_store:\n  kind: none\n").await;
    let (s, v) = get_json(&app, None, "/api/v1/leaderboard").await;
    assert_eq!(s, 501, "{v}");
    assert!(
        v["message"].as_str().expect("m").contains("log_store"),
        "{v}"
    );
    let (s, v) = get_json(&app, None, "/api/v1/keys").await;
    assert_eq!(s, 200, "keys come from the live store: {v}");
    app.stop().await;
}

/// The first sample of `name` having these labels (and maybe others).
fn with_labels<'m>(
    m: &'m gatemeter::client::exposition::Exposition,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'m gatemeter::client::exposition::Sample> {
    m.samples.iter().find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).is_some_and(|h| h == v))
    })
}

/// The analytics families of `/metrics`: top-N leaderboards with `other`, provider status and
/// availability, active sessions per namespace, from the rollups on a refresh interval.
#[tokio::test]
async fn metrics_show_leaderboards_status_and_sessions() {
    let app = TestApp::with_config("analytics:\n  refresh_secs: 1\n  top_n: 2\n").await;
    let now = gatemeter::clock::now_ms();
    let mut recs = Vec::new();
    for (i, user) in ["ann", "bea", "bea", "cid", "cid", "cid", "dan"]
        .iter()
        .enumerate()
    {
        recs.push(rec(
            &format!("m{i}"),
            now - 60_000 + i as i64,
            user,
            "up-p",
            200,
            20,
        ));
    }
    for i in 0..4 {
        let status = if i == 0 { 200 } else { 500 };
        recs.push(rec(
            &format!("d{i}"),
            now - 30_000,
            "eve",
            "down-p",
            status,
            20,
        ));
    }
    let body = serde_json::to_vec(&recs).expect("json");
    let (status, v) = app
        .post_json(std::str::from_utf8(&body).expect("utf8"))
        .await;
    assert_eq!(status, 200, "{v}");
    let mut last = None;
    for _ in 0..100 {
        let m = app.metrics().await;
        let rank1 = with_labels(
            &m,
            "gatemeter_leaderboard_requests",
            &[("scope", "user"), ("period", "today"), ("rank", "1")],
        );
        // One refresh reads the families one after the other, so a refresh that began before
        // the rows were written may see only some of them: wait for one that saw them all.
        let sessions = m.get("gatemeter_active_sessions", &[("namespace", "default")]);
        if let Some(s) = rank1
            && s.value == 4.0
            && sessions == Some(5.0)
        {
            last = Some(m);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let m = last.expect("the leaderboard gauges were refreshed with every record");
    let line = |rank: &str| {
        let s = with_labels(
            &m,
            "gatemeter_leaderboard_requests",
            &[("scope", "user"), ("period", "today"), ("rank", rank)],
        )
        .unwrap_or_else(|| panic!("rank {rank}"));
        (s.labels.get("name").cloned().unwrap_or_default(), s.value)
    };
    assert_eq!(line("1"), ("eve".to_string(), 4.0));
    assert_eq!(line("2"), ("cid".to_string(), 3.0));
    assert_eq!(line("other"), ("other".to_string(), 4.0), "ann + bea + dan");
    assert!(
        m.find("gatemeter_leaderboard_requests", &[("rank", "3")])
            .is_none(),
        "top 2 only"
    );
    let status = |p: &str, s: &str| {
        m.value(
            "gatemeter_provider_status",
            &[("provider", p), ("status", s)],
        )
    };
    assert_eq!((status("up-p", "green"), status("up-p", "red")), (1.0, 0.0));
    assert_eq!(
        (status("down-p", "red"), status("down-p", "green")),
        (1.0, 0.0)
    );
    assert_eq!(
        m.value(
            "gatemeter_provider_availability_ratio",
            &[("provider", "down-p"), ("window", "5m")]
        ),
        0.25
    );
    // One session per (user, provider): 4 users on up-p, eve on down-p, all in "default".
    assert_eq!(
        m.value("gatemeter_active_sessions", &[("namespace", "default")]),
        5.0
    );
    app.stop().await;
}

/// SPEC: every endpoint answers alike on SQLite and PostgreSQL for the same records. Two servers,
/// one per backend, take the same native records (a non-UTC zone, 39 days, every scope) and the
/// same Claude Code session (OTLP); then every analytics endpoint, for the admin and for a user
/// token, gives the same JSON on both, byte for byte (the storage-assigned log ids aside, which
/// are compared through the requests they name). Records stay clear of the 5- and 15-minute
/// edges, so the two answers, taken a moment apart, cannot straddle one.
#[tokio::test]
async fn sqlite_and_postgres_give_the_same_answers() {
    let extra = "analytics:\n  time_zone: Europe/Berlin\notlp:\n  namespace_attribute: team.id\n";
    let apps = [
        analytics_app(Db::Sqlite, extra).await,
        analytics_app(Db::Postgres, extra).await,
    ];
    let now = gatemeter::clock::now_ms();
    let mut recs = records(1500, now - 20 * 60_000, 39);
    for (i, user) in ["alice", "bob", "alice"].iter().enumerate() {
        recs.push(rec(
            &format!("live{i}"),
            now - 60_000 - i as i64,
            user,
            "anthropic",
            200,
            40,
        ));
        recs.push(rec(
            &format!("old{i}"),
            now - 2 * HOUR_MS - i as i64,
            user,
            "openai",
            [200, 503][i % 2],
            90,
        ));
    }
    let cc_requests = 8; // tests/data/claude-code/README.md, scenario `protobuf`
    for app in &apps {
        ingest(app, Some(INGEST), &recs).await;
        crate::otlp::replay_with_token(app, "protobuf", INGEST).await;
    }
    let n = recs.len() as i64 + cc_requests;
    for app in &apps {
        wait_rows(app, Some(ADMIN), n as usize).await;
        wait_rollups(app, n).await;
    }

    let (from, to) = (now - 45 * DAY_MS + 1234, now - 3 * DAY_MS - 777);
    let mut paths = Vec::new();
    for scope in ["user", "key", "provider", "model"] {
        for period in [
            "today".to_string(),
            "week".to_string(),
            "month".to_string(),
            format!("custom&from={from}&to={to}"),
        ] {
            for sort in ["cost", "requests", "tokens"] {
                paths.push(format!(
                    "/api/v1/leaderboard?scope={scope}&period={period}&sort={sort}&limit=100"
                ));
            }
        }
    }
    for window in ["1h", "6h", "24h", "7d"] {
        for bucket in ["auto", "5m", "1h"] {
            if window == "7d" && bucket == "5m" {
                continue;
            }
            paths.push(format!(
                "/api/v1/availability?window={window}&bucket={bucket}"
            ));
        }
    }
    paths.push(format!(
        "/api/v1/availability?window=custom&from={from}&to={to}&by_model=true"
    ));
    paths.push("/api/v1/availability?window=7d&provider=openai&by_model=true".to_string());
    for period in [
        "today".to_string(),
        "month".to_string(),
        format!("custom&from={from}&to={to}"),
    ] {
        paths.push(format!("/api/v1/overview?period={period}"));
    }
    paths.push("/api/v1/keys".to_string());
    paths.push("/api/v1/keys/k3".to_string());
    paths.push("/api/v1/keys/key-alice".to_string());

    let mut compared = 0;
    for token in [ADMIN, ALICE] {
        // Sessions: every page of both lists, then each session's detail.
        let mut sessions = Vec::new();
        for state in ["active", "inactive"] {
            let mut cursor = String::new();
            loop {
                let path = format!("/api/v1/sessions?state={state}&limit=50{cursor}");
                let v = same_answer(&apps, token, &path).await;
                compared += 1;
                for s in v["sessions"].as_array().expect("sessions") {
                    sessions.push(s["session_id"].as_str().expect("id").to_string());
                }
                match v["next_cursor"].as_str() {
                    Some(c) => cursor = format!("&cursor={c}"),
                    None => break,
                }
            }
        }
        let least = if token == ADMIN { 40 } else { 2 };
        assert!(sessions.len() >= least, "{} sessions", sessions.len());
        for id in &sessions {
            same_answer(&apps, token, &format!("/api/v1/sessions/{id}")).await;
            compared += 1;
        }
        for path in &paths {
            same_answer(&apps, token, path).await;
            compared += 1;
        }
    }
    assert!(compared > 2 * paths.len() + 40, "{compared}");
    for app in apps {
        app.stop().await;
    }
}

/// The answer of the two servers to `path`: asserted equal (a 200 or a 404, the same on both)
/// and returned. Log ids are storage-assigned: each is replaced by the request id of its row.
/// The edges of a window relative to now are left out (the records keep clear of them).
async fn same_answer(apps: &[TestApp; 2], token: &str, path: &str) -> Value {
    let mut answers = Vec::new();
    for app in apps {
        let (status, mut v) = get_json(app, Some(token), path).await;
        assert!(status == 200 || status == 404, "{path}: {status} {v}");
        if let Some(list) = v.get_mut("request_list").and_then(Value::as_array_mut) {
            for r in list {
                let id = r["log_id"].as_i64().expect("log id");
                let (s, row) = get_json(app, Some(ADMIN), &format!("/api/v1/logs/{id}")).await;
                assert_eq!(s, 200, "{row}");
                r["log_id"] = row["request_id"].clone();
            }
        }
        // A window relative to now ends when each server was asked: a moment apart.
        if path.contains("window=") && !path.contains("window=custom") {
            for edge in ["from", "to"] {
                let ms = v[edge].take().as_i64().expect("edge");
                assert!((ms - gatemeter::clock::now_ms()).abs() < 8 * DAY_MS, "{v}");
            }
        }
        answers.push((status, v));
    }
    assert_eq!(
        answers[0], answers[1],
        "{path} as {token}: SQLite (left) and PostgreSQL (right) differ"
    );
    answers.swap_remove(0).1
}
