//! The live-store conformance suite: the same test functions run against every backend
//! (memory, Redis on the shared throwaway server). Same records → same fleet view: counters,
//! tokens, cost, status codes, concurrency, overflow, quantiles since start and per window.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use gatemeter::aggregate::{Aggregates, Aggregator, Limits, ScopeKey};
use gatemeter::clock::now_ms;
use gatemeter::config::Config;
use gatemeter::health::Health;
use gatemeter::record::{Validation, parse_event};
use gatemeter::store::live::{SLOT_MS, WINDOWS};
use gatemeter::store::{FleetView, LiveStore, MemoryStore, RedisStore};

use crate::exact::{Gen, PRICED_CONFIG, exact_quantile, generate};
use crate::redis_server::{shared_url, unique_prefix};

type Make = fn() -> Pin<Box<dyn Future<Output = Arc<dyn LiveStore>>>>;

fn memory() -> Pin<Box<dyn Future<Output = Arc<dyn LiveStore>>>> {
    Box::pin(async { Arc::new(MemoryStore::new()) as Arc<dyn LiveStore> })
}

/// A Redis store on the shared server, under a key prefix of its own.
pub fn redis_store(url: &str, prefix: &str, instance: &str) -> RedisStore {
    let yaml = format!(
        "live_store: redis\nredis:\n  url: {url}\n  key_prefix: \"{prefix}\"\n  instance_id: {instance}\n  flush_interval_ms: 50\n  refresh_interval_ms: 50\n"
    );
    let c = Config::from_yaml_str(&yaml, Path::new("t"), &|_| None).expect("config");
    RedisStore::start(c.redis, Arc::new(Health::new(1))).expect("store")
}

fn redis() -> Pin<Box<dyn Future<Output = Arc<dyn LiveStore>>>> {
    Box::pin(async {
        let url = shared_url();
        Arc::new(redis_store(&url, &unique_prefix("conf"), "conf")) as Arc<dyn LiveStore>
    })
}

/// Receive time of every generated record (their default timestamp).
const RECEIVED_MS: i64 = 1_700_000_000_000;

/// User and key of generated record `i`.
fn who(i: usize) -> (String, String) {
    (
        format!("user-{}@example.com", i % 7),
        format!("key-{}", i % 3),
    )
}

fn aggregate(records: &[Gen], flushes: usize, limits: Limits) -> Vec<Aggregates> {
    let c = Config::from_yaml_str(PRICED_CONFIG, Path::new("t"), &|_| None).expect("config");
    let v = Validation {
        now_ms: RECEIVED_MS,
        prices: &c.prices,
        keep_requests: None,
    };
    let mut a = Aggregator::new(limits);
    let per = records.len().div_ceil(flushes);
    records
        .chunks(per)
        .enumerate()
        .map(|(ci, chunk)| {
            for (i, g) in chunk.iter().enumerate() {
                let id = ci * per + i;
                let (user, key) = who(id);
                let json = g.json(id);
                let json = format!(
                    r#"{},"user_id":"{user}","key":"{key}"}}"#,
                    json.trim_end_matches('}')
                );
                let e = parse_event(&json, &v).expect("valid");
                a.apply(&e, 0);
            }
            a.take()
        })
        .collect()
}

/// Polls the store's view until `done` holds (Redis answers after a flush and a refresh).
async fn settle(store: &dyn LiveStore, done: impl Fn(&FleetView) -> bool) -> Arc<FleetView> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let v = store.view(now_ms());
        if done(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} store did not settle: {} requests seen",
            store.name(),
            v.totals.global.requests
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 0.01 * want,
        "{what}: got {got}, want {want}"
    );
}

async fn totals_are_exact(make: Make) {
    let store = make().await;
    let records = generate(3000, 7);
    for d in aggregate(&records, 6, Limits::default()) {
        store.apply(d, now_ms());
    }
    let v = settle(store.as_ref(), |v| v.totals.global.requests == 3000).await;
    let g = &v.totals.global;
    assert_eq!(
        g.failures,
        records.iter().filter(|r| r.failed()).count() as u64
    );
    assert_eq!(
        g.duration_ms_sum,
        records.iter().map(|r| r.duration_ms).sum::<u64>()
    );
    assert_eq!(g.cost_micros, records.iter().map(Gen::cost).sum::<u64>());
    let t = g.tokens.as_array();
    for (i, got) in t.iter().enumerate() {
        assert_eq!(
            *got,
            records.iter().map(|r| r.tokens[i]).sum::<u64>(),
            "token {i}"
        );
    }
    for code in [200u16, 0, 529] {
        assert_eq!(
            g.status.get(&code).copied().unwrap_or(0),
            records.iter().filter(|r| r.status == code).count() as u64
        );
    }
    for ns in ["alpha", "beta", "gamma"] {
        let s = v
            .totals
            .scope(&ScopeKey::Namespace(ns.into()))
            .expect("namespace");
        let rs: Vec<&Gen> = records.iter().filter(|r| r.ns == ns).collect();
        assert_eq!(s.requests, rs.len() as u64);
        assert_eq!(s.cost_micros, rs.iter().map(|r| r.cost()).sum::<u64>());
        let mut d: Vec<u64> = rs.iter().map(|r| r.duration_ms).collect();
        d.sort_unstable();
        for q in [0.5, 0.95, 0.99] {
            // The histograms hold microseconds.
            let want = exact_quantile(&d, q) * 1000.0;
            close(s.latency.duration.quantile(q).expect("q"), want, ns);
            for w in &v.windows {
                let l = w
                    .scopes
                    .get(&ScopeKey::Namespace(ns.into()))
                    .expect("window");
                close(l.duration.quantile(q).expect("q"), want, w.label);
            }
        }
    }
    let m = v
        .totals
        .scope(&ScopeKey::Model("openai".into(), "gpt-4o-mini".into()))
        .expect("model");
    let rs: Vec<&Gen> = records
        .iter()
        .filter(|r| r.model == "gpt-4o-mini")
        .collect();
    assert_eq!(m.tokens.output, rs.iter().map(|r| r.tokens[1]).sum::<u64>());
    assert_eq!(
        m.token_usage.as_ref().expect("usage").sums[1],
        m.tokens.output
    );
    assert_eq!(m.operation, Some("chat"));
    let p = v
        .totals
        .scope(&ScopeKey::Provider("local".into()))
        .expect("provider");
    assert_eq!(
        p.unpriced,
        records
            .iter()
            .filter(|r| r.provider == "local" && r.reported_micros.is_none())
            .count() as u64
    );
    let mut t: Vec<u64> = records.iter().filter_map(|r| r.ttfb_ms).collect();
    t.sort_unstable();
    close(
        g.latency.ttfb.quantile(0.99).expect("ttfb"),
        exact_quantile(&t, 0.99) * 1000.0,
        "ttfb",
    );
}

async fn users_and_keys(make: Make) {
    let store = make().await;
    let records = generate(1000, 21);
    for d in aggregate(&records, 3, Limits::default()) {
        store.apply(d, now_ms());
    }
    let v = settle(store.as_ref(), |v| v.totals.global.requests == 1000).await;
    for u in 0..7 {
        let ids: Vec<usize> = (0..1000).filter(|i| i % 7 == u).collect();
        let s = v
            .totals
            .scope(&ScopeKey::User(who(u).0.as_str().into()))
            .expect("user");
        assert_eq!(s.requests, ids.len() as u64);
        assert_eq!(
            s.cost_micros,
            ids.iter().map(|i| records[*i].cost()).sum::<u64>()
        );
        assert_eq!(
            s.tokens.input,
            ids.iter().map(|i| records[*i].tokens[0]).sum::<u64>()
        );
    }
    for k in 0..3 {
        let name = who(k).1;
        let calls = (0..1000).filter(|i| i % 3 == k).count() as u64;
        let s = v
            .totals
            .scope(&ScopeKey::Key(name.as_str().into()))
            .expect("key");
        assert_eq!((s.requests, s.last_used_ms), (calls, RECEIVED_MS), "{name}");
        let c = v.key_calls.get(name.as_str()).expect("key calls");
        assert_eq!((c.today, c.this_month), (calls, calls), "{name}");
    }
}

async fn agrees_with_memory(make: Make) {
    let store = make().await;
    let reference = MemoryStore::new();
    let records = generate(2000, 99);
    for d in aggregate(&records, 4, Limits::default()) {
        reference.apply(d.clone(), now_ms());
        store.apply(d, now_ms());
    }
    let v = settle(store.as_ref(), |v| v.totals.global.requests == 2000).await;
    let r = reference.view(now_ms());
    assert_eq!(v.totals.scopes.len(), r.totals.scopes.len());
    for (k, want) in std::iter::once((None, &r.totals.global))
        .chain(r.totals.scopes.iter().map(|(k, v)| (Some(k), v)))
    {
        let got = match k {
            None => &v.totals.global,
            Some(k) => v.totals.scope(k).expect("same scopes"),
        };
        assert_eq!(
            (
                got.requests,
                got.failures,
                got.duration_ms_sum,
                got.ttfb_ms_sum
            ),
            (
                want.requests,
                want.failures,
                want.duration_ms_sum,
                want.ttfb_ms_sum
            ),
            "{k:?}"
        );
        assert_eq!(
            (got.tokens, got.cost_micros, got.unpriced),
            (want.tokens, want.cost_micros, want.unpriced)
        );
        assert_eq!(got.status, want.status, "{k:?}");
        assert_eq!(got.token_usage, want.token_usage, "{k:?}");
        assert_eq!(got.last_used_ms, want.last_used_ms, "{k:?}");
        for q in [0.5, 0.9, 0.99, 1.0] {
            assert_eq!(
                got.latency.duration.quantile(q),
                want.latency.duration.quantile(q)
            );
            assert_eq!(got.latency.ttfb.quantile(q), want.latency.ttfb.quantile(q));
        }
    }
    assert_eq!(v.key_calls, r.key_calls);
    for (w, rw) in v.windows.iter().zip(&r.windows) {
        assert_eq!(w.label, rw.label);
        assert_eq!(w.global.duration.count(), rw.global.duration.count());
        assert_eq!(
            w.global.duration.quantile(0.95),
            rw.global.duration.quantile(0.95)
        );
    }
}

async fn concurrency_and_overflow(make: Make) {
    let store = make().await;
    let c = Config::from_yaml_str("", Path::new("t"), &|_| None).expect("config");
    let v = Validation {
        now_ms: now_ms(),
        prices: &c.prices,
        keep_requests: None,
    };
    let ev = |j: &str| parse_event(j, &v).expect(j);
    let mut a = Aggregator::new(Limits {
        max_series_per_dimension: 2,
        pending_timeout_ms: 1000,
        ..Limits::default()
    });
    for id in ["a", "b", "c"] {
        a.apply(
            &ev(&format!(
                r#"{{"phase":"start","request_id":"{id}","namespace":"n"}}"#
            )),
            0,
        );
    }
    store.apply(a.take(), now_ms());
    a.apply(
        &ev(r#"{"request_id":"a","namespace":"n","model":"m","status":200,"duration_ms":5}"#),
        10,
    );
    a.expire(1005); // b and c abandoned
    for ns in ["x", "y", "z"] {
        a.apply(
            &ev(&format!(
                r#"{{"namespace":"{ns}","model":"m","status":200,"duration_ms":1}}"#
            )),
            10,
        );
    }
    store.apply(a.take(), now_ms());
    let view = settle(store.as_ref(), |v| v.totals.global.requests == 4).await;
    let n = view
        .totals
        .scope(&ScopeKey::Namespace("n".into()))
        .expect("n");
    assert_eq!((n.concurrency, n.abandoned, n.requests), (0, 2, 1));
    // Cap 2: `n` and `x` are kept, `y` and `z` fold into the overflow series.
    assert_eq!(view.totals.overflow[0], 2);
    let over = view
        .totals
        .scope(&ScopeKey::Namespace("__overflow__".into()))
        .expect("overflow");
    assert_eq!(over.requests, 2);
}

/// Deltas filed at the edges of the windows land in the same windows on every backend: the
/// 1 m window holds the current slot and the six before it, the 5 m window the current slot
/// and the thirty before it (`SLOT_MS` slots), and a slot just older is in neither.
async fn windows_cut_at_the_same_edges(make: Make) {
    let store = make().await;
    // Start early in a slot, so the slot does not turn while the store settles.
    while now_ms().rem_euclid(SLOT_MS) > SLOT_MS / 4 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slot = now_ms().div_euclid(SLOT_MS);
    let (one_m, five_m) = (WINDOWS[0].1 / SLOT_MS, WINDOWS[1].1 / SLOT_MS);
    // (time filed, requests): oldest first, as time runs.
    let filed = [
        ((slot - five_m - 1) * SLOT_MS + SLOT_MS - 1, 1), // last ms before the 5 m window
        ((slot - five_m) * SLOT_MS, 2),                   // first ms of the 5 m window
        ((slot - one_m - 1) * SLOT_MS + SLOT_MS - 1, 4),  // last ms before the 1 m window
        ((slot - one_m) * SLOT_MS, 8),                    // first ms of the 1 m window
        (slot * SLOT_MS, 16),                             // the current slot
    ];
    let records = generate(31, 5);
    let mut at = 0;
    let mut total = 0;
    for (ms, n) in filed {
        let d = aggregate(&records[at..at + n], 1, Limits::default()).remove(0);
        assert_eq!(d.global.requests, n as u64);
        store.apply(d, ms);
        at += n;
        total += n as u64;
    }
    let v = settle(store.as_ref(), |v| {
        v.totals.global.requests == total && v.windows[1].global.duration.count() >= 26
    })
    .await;
    assert_eq!(
        now_ms().div_euclid(SLOT_MS),
        slot,
        "the slot turned during the test"
    );
    let counts: Vec<(&str, u64)> = v
        .windows
        .iter()
        .map(|w| (w.label, w.global.duration.count()))
        .collect();
    assert_eq!(
        counts,
        [("1m", 8 + 16), ("5m", 2 + 4 + 8 + 16)],
        "{}",
        store.name()
    );
}

macro_rules! conformance {
    ($($backend:ident),*) => {$(
        mod $backend {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn totals_are_exact() {
                super::totals_are_exact(super::$backend).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn agrees_with_memory() {
                super::agrees_with_memory(super::$backend).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn users_and_keys() {
                super::users_and_keys(super::$backend).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrency_and_overflow() {
                super::concurrency_and_overflow(super::$backend).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn windows_cut_at_the_same_edges() {
                super::windows_cut_at_the_same_edges(super::$backend).await
            }
        }
    )*};
}

conformance!(memory, redis);
