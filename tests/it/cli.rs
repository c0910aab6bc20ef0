//! The `gatemeter` binary: check-config, and `serve` as the README shows it.

use std::process::Command;

use crate::harness::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_gatemeter");

#[test]
fn check_config_accepts_the_example_and_names_bad_keys() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/gatemeter.example.yaml");
    let out = Command::new(BIN)
        .args(["check-config", example])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "pipeline:\n  flush_interval_ms: 5\n").expect("write");
    let out = Command::new(BIN)
        .args(["check-config"])
        .arg(&bad)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pipeline.flush_interval_ms"),
        "{out:?}"
    );
}

/// Every key path of a YAML document (`a.b.c`), sequences and empty mappings as leaves.
fn key_paths(v: &serde_yaml_ng::Value, prefix: &str, out: &mut Vec<String>) {
    match v.as_mapping() {
        Some(m) if !m.is_empty() => {
            for (k, v) in m {
                let k = k.as_str().expect("string keys");
                let path = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                key_paths(v, &path, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// `check-config` prints every effective setting as YAML in the file's shape: each key of the
/// annotated example is there (the OTLP ones included), defaults filled in (an empty file gives
/// `otlp.namespace_attribute: team.id`), and no secret — tokens, passwords in URLs — appears.
#[test]
fn check_config_prints_every_effective_setting_as_yaml_with_secrets_hidden() {
    let run = |file: &std::path::Path, env: &[(&str, &str)]| {
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(file)
            .envs(env.iter().copied())
            .output()
            .expect("runs");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("YAML");
        (text, yaml)
    };
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gatemeter.example.yaml");
    let (_, printed) = run(&example, &[]);
    let want: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&example).expect("read")).expect("YAML");
    let (mut have, mut need) = (Vec::new(), Vec::new());
    key_paths(&printed, "", &mut have);
    key_paths(&want, "", &mut need);
    for key in need {
        // Printed as what they become: the SQLite file's `path`; the spool only with
        // `durability: spool`.
        if key == "log_store.data_dir" || key.starts_with("spool.") {
            continue;
        }
        assert!(have.contains(&key), "check-config does not print {key}");
    }
    assert_eq!(printed["log_store"]["path"], "./data/requests.db");

    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").expect("write");
    let (_, printed) = run(&empty, &[]);
    assert_eq!(printed["otlp"]["namespace_attribute"], "team.id");
    assert_eq!(printed["otlp"]["queue_capacity"], 1024);

    let secrets = dir.path().join("secrets.yaml");
    std::fs::write(
        &secrets,
        "live_store: redis\nredis:\n  url: redis://:redis-canary-pw@10.0.0.5:6379/0\n\
         auth:\n  ingest_tokens: [ingest-canary-token-0001]\n\
         \x20 user_tokens: {user-canary-token-00001: alice}\n\
         \x20 metrics_token: metrics-canary-token-01\n\
         otlp_export:\n  endpoint: http://export-user:export-canary-pw@10.0.0.6:4318/v1/logs\n",
    )
    .expect("write");
    let (text, printed) = run(
        &secrets,
        &[
            ("GATEMETER_ADMIN_TOKENS", "admin-canary-token-0001"),
            (
                "GATEMETER_DATABASE_URL",
                "postgres://gm:pg-canary-pw@db:5432/gm",
            ),
            (
                "GATEMETER_REDIS_SENTINEL_NODES",
                "redis://:sentinel-canary-pw@10.0.0.7:26379,redis://10.0.0.8:26379",
            ),
            ("GATEMETER_REDIS_SENTINEL_MASTER", "mymaster"),
        ],
    );
    for canary in [
        "redis-canary-pw",
        "ingest-canary-token",
        "user-canary-token",
        "metrics-canary-token",
        "admin-canary-token",
        "pg-canary-pw",
        "export-canary-pw",
        "sentinel-canary-pw",
    ] {
        assert!(!text.contains(canary), "{canary} printed:\n{text}");
    }
    assert_eq!(printed["redis"]["url"], "redis://***@10.0.0.5:6379/0");
    let sentinel = &printed["redis"]["sentinel"];
    assert_eq!(sentinel["master_name"], "mymaster");
    assert_eq!(sentinel["nodes"][0], "redis://***@10.0.0.7:26379");
    assert_eq!(sentinel["nodes"][1], "redis://10.0.0.8:26379");
    assert_eq!(printed["log_store"]["url"], "postgres://***@db:5432/gm");
    assert_eq!(printed["auth"]["admin_tokens"][0], "<hidden>");
    assert_eq!(printed["auth"]["user_tokens"]["alice"], "<hidden>");
    assert_eq!(printed["auth"]["metrics_token"], "<hidden>");
    assert_eq!(printed["log_store"]["kind"], "postgres");
}

#[tokio::test]
async fn serve_answers_the_readme_example_and_stops_cleanly_on_sigterm() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut server = ServerProcess::spawn(
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("GATEMETER_DATA_DIR", data.path())
            .env_remove("GATEMETER_DATABASE_URL")
            .env_remove("MIMALLOC_ALLOW_THP"),
    );
    let addr = server.addr.clone();
    let child = &mut server.child;
    let client = gatemeter::client::Client::new();
    let body = r#"{"request_id": "req-1", "namespace": "team-a", "provider": "anthropic",
      "model": "claude-sonnet-4-5", "endpoint": "/v1/messages", "status": 200,
      "duration_ms": 1840, "ttfb_ms": 420, "input_tokens": 1200, "output_tokens": 350,
      "cache_read_tokens": 8000, "cost_usd": "0.012345"}"#;
    let resp = client
        .post(format!("http://{addr}/v1/events"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.expect("text"),
        r#"{"accepted":1,"rejected":0,"errors":[]}"#
    );
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    assert!(text.contains("\nai_gateway_requests_total 1\n"), "{text}");
    assert!(text.contains(
        "\nmodel_cost_usd_total{provider=\"anthropic\",model=\"claude-sonnet-4-5\"} 0.012345\n"
    ));
    // Transparent huge pages are off for the server (src/main.rs: with them, mimalloc's 2 MiB
    // pages kept a usage export's freed memory resident).
    #[cfg(target_os = "linux")]
    {
        let proc_status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("proc status");
        assert!(
            proc_status.contains("\nTHP_enabled:\t0\n"),
            "THP_enabled line: {:?}",
            proc_status.lines().find(|l| l.starts_with("THP_enabled"))
        );
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");
    // With no config the request log is a SQLite file in the data directory.
    assert!(data.path().join("requests.db").exists());
}

/// `bench-log` writes its rows with random UUIDs by default (what gateways send; the unique
/// index pays for their disorder) and with ids that grow with time on request.
#[tokio::test]
async fn bench_log_writes_random_or_ordered_request_ids() {
    use sqlx::Connection;
    for (flag, label) in [(None, "random UUIDs"), (Some("ordered"), "ordered")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("bench.db");
        let mut cmd = Command::new(BIN);
        cmd.args(["bench-log", "--rows", "3000", "--sqlite"])
            .arg(&db);
        if let Some(f) = flag {
            cmd.args(["--ids", f]);
        }
        let out = cmd.output().expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(
            stdout.contains(&format!("request ids: {label}")),
            "{stdout}"
        );
        assert!(
            stdout.contains("write: 3000 rows") && stdout.contains("(dropped 0)"),
            "{stdout}"
        );
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("connect");
        // SQLite keeps a canonical UUID as its 16 bytes: read them as 32 hex digits.
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT typeof(request_id), CASE WHEN typeof(request_id) = 'blob' \
             THEN lower(hex(request_id)) ELSE request_id END FROM request_log ORDER BY ts_ms",
        )
        .fetch_all(&mut c)
        .await
        .expect("ids");
        let kind = if flag.is_none() { "blob" } else { "text" };
        assert!(rows.iter().all(|(k, _)| k == kind), "{:?}", rows.first());
        let ids: Vec<String> = rows.into_iter().map(|(_, i)| i).collect();
        assert_eq!(ids.len(), 3000);
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), 3000);
        let mut sorted = ids.clone();
        sorted.sort();
        if flag.is_none() {
            for id in &ids {
                let b = id.as_bytes();
                assert!(
                    b.len() == 32
                        && b.iter().all(u8::is_ascii_hexdigit)
                        && b[12] == b'4'
                        && matches!(b[16], b'8' | b'9' | b'a' | b'b'),
                    "not a version 4 UUID: {id}"
                );
            }
            assert_ne!(ids, sorted, "random ids come in no order");
        } else {
            assert_eq!(ids, sorted, "ordered ids grow with time");
        }
    }
}

/// `bench-log` hands the writer a chunk of up to a million rows at once: more than the default
/// `log_store.queue_bytes` holds (32 MiB, about 50,000 records), which once made every run of
/// more than that fail at its first chunk with "queue is full".
#[tokio::test]
async fn bench_log_writes_chunks_larger_than_the_default_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bench.db");
    let out = Command::new(BIN)
        .args([
            "bench-log",
            "--rows",
            "150000",
            "--profile",
            "live",
            "--sqlite",
        ])
        .arg(&db)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("write: 150000 rows") && stdout.contains("(dropped 0)"),
        "{stdout}"
    );
}

/// `rollup rebuild` fills the rollups of a log written with them off (here by `bench-log
/// --no-rollups --profile analytics`): afterwards they count every row, exactly.
#[tokio::test]
async fn rollup_rebuild_fills_the_rollups_of_an_existing_log() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bench.db");
    let out = Command::new(BIN)
        .args([
            "bench-log",
            "--rows",
            "2000",
            "--profile",
            "analytics",
            "--no-rollups",
            "--sqlite",
        ])
        .arg(&db)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let url = format!("sqlite://{}", db.display());
    let totals = |sql: &'static str| {
        let url = url.clone();
        async move {
            let mut c = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("connect");
            sqlx::query_as::<_, (i64, i64, i64)>(sql)
                .fetch_one(&mut c)
                .await
                .expect("totals")
        }
    };
    const ROLLED: &str = "SELECT coalesce(sum(requests), 0), coalesce(sum(cost_micros), 0), \
        coalesce(sum(input_tokens), 0) FROM rollup WHERE dim = 0 AND tier = 2";
    const RAW: &str = "SELECT count(*), sum(cost_micros), sum(input_tokens) FROM request_log";
    assert_eq!(totals(ROLLED).await, (0, 0, 0), "written without rollups");
    let config = dir.path().join("gatemeter.yaml");
    std::fs::write(&config, format!("log_store:\n  path: {}\n", db.display())).expect("config");
    let out = Command::new(BIN)
        .args(["rollup", "rebuild", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("from 2000 rows"),
        "{out:?}"
    );
    let raw = totals(RAW).await;
    assert_eq!(raw.0, 2000);
    assert_eq!(totals(ROLLED).await, raw, "every row rolled up once");
}

/// A SIGTERM right after the server logs that it listens gets the graceful exit (0), not the
/// default action of a signal nobody handles yet. Repeated: the window was short.
#[test]
fn sigterm_right_after_listening_exits_0() {
    for _ in 0..10 {
        let mut server = ServerProcess::spawn(
            Command::new(env!("CARGO_BIN_EXE_gatemeter"))
                .args(["serve", "--listen", "127.0.0.1:0"])
                .env("GATEMETER_LOG_STORE", "none")
                .env_remove("GATEMETER_DATABASE_URL")
                .env_remove("GATEMETER_REDIS_URL")
                .env_remove("GATEMETER_DURABILITY"),
        );
        let ok = Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
        let exit = server.child.wait().expect("wait");
        assert!(exit.success(), "exits 0 after SIGTERM: {exit:?}");
    }
}
