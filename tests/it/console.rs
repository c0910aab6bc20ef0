//! The web console (issue 19): `/` and `/ui/…` serve the embedded page and files with their
//! media types, a strict Content-Security-Policy and revalidating cache headers; no file loads
//! anything from outside the origin or runs inline script; the ES modules import only files
//! that are served. `GET /api/v1/whoami` tells each role who it is (and a caller without a token
//! that it must sign in, without an error); `GET /api/v1/claude-code` answers the Claude Code
//! page from the real captured Claude Code session, and hides the fleet totals from a user.
//! The pages themselves run in a real browser in scripts/console-browser.sh.

use std::path::Path;

use serde_json::Value;

use crate::harness::TestApp;
use crate::sql_log::{ADMIN, ALICE, INGEST, auth_yaml, get, get_json};

fn media_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        other => panic!("an asset of an unexpected kind: {other:?}"),
    }
}

fn url_of(name: &str) -> String {
    if name == "index.html" {
        "/".to_string()
    } else {
        format!("/ui/assets/{name}")
    }
}

async fn app() -> TestApp {
    TestApp::with_config(&format!(
        "log_store:\n  kind: sqlite\nanalytics:\n  time_zone: Europe/Berlin\n{}",
        auth_yaml()
    ))
    .await
}

/// Every file is served at its path with its media type, the bytes embedded, the CSP and
/// `no-cache` + ETag; a matching `If-None-Match` is a bodiless 304. No token is needed: the
/// files hold no data.
#[tokio::test]
async fn files_are_served_with_types_csp_and_validators() {
    let app = app().await;
    let mut served = 0;
    for (name, bytes) in gatemeter::api::console::embedded() {
        let path = url_of(name);
        let resp = get(&app, None, &path).await;
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers().clone();
        assert_eq!(h["content-type"], media_type(name), "{path}");
        let csp = h["content-security-policy"].to_str().expect("ascii");
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        for part in [
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{csp} lacks {part}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-cache");
        let etag = h["etag"].to_str().expect("ascii").to_string();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        assert_eq!(&resp.bytes().await.expect("body")[..], bytes, "{path}");
        let again = app
            .client
            .get(app.url(&path))
            .header("if-none-match", &etag)
            .send()
            .await
            .expect("get");
        assert_eq!(again.status(), 304, "{path}");
        assert!(again.bytes().await.expect("body").is_empty());
        served += 1;
    }
    assert!(served >= 5, "{served} files");
    // Deep links load the page; an unknown file is a 404, not the page.
    for path in ["/ui", "/ui/", "/ui/logs", "/ui/sessions/abc"] {
        let resp = get(&app, None, path).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    }
    let resp = get(&app, None, "/ui/assets/nope.js").await;
    assert_eq!(resp.status(), 404);
    // An OTLP client whose path prefix is `/ui` still reaches the receiver, not the page.
    let resp = app
        .client
        .post(app.url("/ui/v1/logs"))
        .bearer_auth(INGEST)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    assert_eq!(get(&app, Some(INGEST), "/ui/v1/logs").await.status(), 405);
    // The API stays behind its tokens.
    assert_eq!(get(&app, None, "/api/v1/logs").await.status(), 401);
    app.stop().await;
}

/// Each `http://` / `https://` in `text`, other than the SVG namespace (a name, never loaded).
fn external_urls(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for scheme in ["http://", "https://"] {
        let mut rest = text;
        while let Some(i) = rest.find(scheme) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| c.is_whitespace() || "\"'`)<>".contains(c))
                .unwrap_or(tail.len());
            let url = &tail[..end];
            if url != "http://www.w3.org/2000/svg" {
                out.push(url.to_string());
            }
            rest = &tail[scheme.len()..];
        }
    }
    out
}

#[test]
fn the_url_scan_finds_an_outside_load() {
    assert_eq!(
        external_urls(
            r#"<script src="https://cdn.example/x.js"></script> http://www.w3.org/2000/svg"#
        ),
        ["https://cdn.example/x.js"]
    );
    assert_eq!(
        external_urls("@import url(http://fonts.example/a.css);"),
        ["http://fonts.example/a.css"]
    );
}

/// Nothing is loaded from outside the origin, no script or style is inline (the CSP would
/// refuse it, so it would be a broken page), and every module import names a served file.
#[test]
fn files_load_nothing_from_outside_and_nothing_inline() {
    let names: Vec<&str> = gatemeter::api::console::embedded()
        .map(|(n, _)| n)
        .collect();
    for (name, bytes) in gatemeter::api::console::embedded() {
        let text = std::str::from_utf8(bytes).expect("UTF-8");
        assert_eq!(external_urls(text), Vec::<String>::new(), "{name}");
        assert!(
            !text.contains("//cdn") && !text.contains("@import"),
            "{name}"
        );
        if name.ends_with(".html") {
            let lower = text.to_ascii_lowercase();
            let mut rest = lower.as_str();
            while let Some(i) = rest.find("<script") {
                let tag = &rest[i..i + rest[i..].find('>').expect("tag end")];
                assert!(tag.contains(" src=\"/ui/assets/"), "inline script: {tag}");
                rest = &rest[i + 7..];
            }
            assert!(!lower.contains(" style="), "inline style in {name}");
            assert!(!lower.contains("<style"), "inline style in {name}");
            assert!(!lower.contains(" onclick=") && !lower.contains(" onload="));
            // The files it names are served.
            for r in lower.split("/ui/assets/").skip(1) {
                let file = &r[..r.find('"').expect("quoted")];
                assert!(names.contains(&file), "{name} names {file}, not embedded");
            }
        }
        if name.ends_with(".js") {
            assert!(!text.contains("eval("), "{name}");
            assert!(
                !text.contains("innerHTML"),
                "{name}: data must not become markup"
            );
            let mut imports = 0;
            for part in text.split(" from \"").skip(1) {
                let target = &part[..part.find('"').expect("quoted")];
                let file = target.strip_prefix("./").expect("relative import");
                assert!(
                    names.contains(&file),
                    "{name} imports {target}, not embedded"
                );
                imports += 1;
            }
            let statements = text.lines().filter(|l| l.starts_with("import ")).count();
            assert_eq!(
                imports, statements,
                "{name}: an import this test does not read"
            );
        }
    }
}

/// `whoami`: no token → `none` (200, so the page's first call is not an error); each token its
/// role; an unknown token 401, an ingest token 403; with no tokens configured, `open`.
#[tokio::test]
async fn whoami_names_each_role_and_the_time_zone() {
    let app = app().await;
    let (s, none) = get_json(&app, None, "/api/v1/whoami").await;
    assert_eq!(s, 200, "{none}");
    assert_eq!(none["role"], "none");
    assert_eq!(none["admin"], false);
    let (s, admin) = get_json(&app, Some(ADMIN), "/api/v1/whoami").await;
    assert_eq!(s, 200, "{admin}");
    assert_eq!(admin["role"], "admin");
    assert_eq!(admin["admin"], true);
    assert_eq!(admin["user"], Value::Null);
    assert_eq!(admin["time_zone"], "Europe/Berlin");
    assert_eq!(admin["request_log"], true);
    assert_eq!(admin["analytics"], true);
    assert_eq!(admin["stored_requests"], false);
    let (s, alice) = get_json(&app, Some(ALICE), "/api/v1/whoami").await;
    assert_eq!(s, 200, "{alice}");
    assert_eq!(alice["role"], "user");
    assert_eq!(alice["user"], "alice");
    assert_eq!(alice["admin"], false);
    let (s, e) = get_json(&app, Some("not-a-token-0123456789"), "/api/v1/whoami").await;
    assert_eq!((s, e["error"].as_str()), (401, Some("unauthorized")), "{e}");
    let (s, e) = get_json(&app, Some(INGEST), "/api/v1/whoami").await;
    assert_eq!((s, e["error"].as_str()), (403, Some("forbidden")), "{e}");
    let (s, e) = get_json(&app, Some(ADMIN), "/api/v1/whoami?x=1").await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("unknown_parameter")),
        "{e}"
    );
    app.stop().await;

    let open = TestApp::with_config("log_store:\n  kind: none\n").await;
    let (s, w) = get_json(&open, None, "/api/v1/whoami").await;
    assert_eq!(s, 200, "{w}");
    assert_eq!(w["role"], "open");
    assert_eq!(w["admin"], true);
    assert_eq!(w["request_log"], false);
    assert_eq!(w["analytics"], false);
    assert_eq!(w["time_zone"], "UTC");
    open.stop().await;
}

/// The real captured Claude Code session (tests/data/claude-code/json) through the OTLP
/// receiver, then `GET /api/v1/claude-code`: the README's tools, cost and token totals for an
/// admin; nothing of anyone else's for a user token (the session's series carry no user label).
#[tokio::test]
async fn claude_code_page_data_from_a_real_session() {
    let app = TestApp::with_config(&format!(
        "log_store:\n  kind: sqlite\notlp:\n  namespace_attribute: team.id\n{}",
        auth_yaml()
    ))
    .await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/claude-code/json");
    let index = std::fs::read_to_string(dir.join("index.jsonl")).expect("index");
    for line in index.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).expect("index line");
        let n = v["n"].as_u64().expect("n");
        let signal = v["signal"].as_str().expect("signal");
        let body = std::fs::read(dir.join(format!("{n:04}_{signal}.json"))).expect("body");
        let resp = app
            .client
            .post(app.url(v["path"].as_str().expect("path")))
            .bearer_auth(INGEST)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 200, "{line}");
    }
    let (s, cc) = get_json(&app, Some(ADMIN), "/api/v1/claude-code").await;
    assert_eq!(s, 200, "{cc}");
    assert_eq!(cc["own_rows_only"], false);
    let tools: Vec<(String, u64, u64)> = cc["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| {
            (
                t["tool"].as_str().expect("tool").to_string(),
                t["calls"].as_u64().expect("calls"),
                t["failures"].as_u64().expect("failures"),
            )
        })
        .collect();
    assert_eq!(
        tools,
        [
            ("Bash".to_string(), 3, 1),
            ("Read".to_string(), 2, 1),
            ("Write".to_string(), 1, 0)
        ]
    );
    let decisions: u64 = cc["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .map(|d| d["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(decisions, 7, "{cc}");
    assert_eq!(cc["events"]["api_request"], 8);
    let metric = |name: &str| -> f64 {
        cc["metrics"]
            .as_array()
            .expect("metrics")
            .iter()
            .find(|m| m["metric"] == name)
            .and_then(|m| m["total"].as_f64())
            .unwrap_or_else(|| panic!("{name} in {cc}"))
    };
    assert!((metric("claude_code.cost.usage") - 0.214188).abs() < 1e-6);
    assert_eq!(metric("claude_code.session.count"), 1.0);
    let by_model_cost: f64 = cc["by_model"]
        .as_array()
        .expect("by_model")
        .iter()
        .map(|u| u["cost_usd"].as_f64().expect("cost"))
        .sum();
    assert!((by_model_cost - 0.214188).abs() < 1e-6, "{cc}");
    let input: f64 = cc["by_model"]
        .as_array()
        .expect("by_model")
        .iter()
        .map(|u| u["tokens"]["input"].as_f64().unwrap_or(0.0))
        .sum();
    assert_eq!(input, 38_632.0);

    let (s, mine) = get_json(&app, Some(ALICE), "/api/v1/claude-code").await;
    assert_eq!(s, 200, "{mine}");
    assert_eq!(mine["own_rows_only"], true);
    assert_eq!(mine["tools"], Value::Null);
    assert_eq!(mine["decisions"], Value::Null);
    assert_eq!(mine["events"], Value::Null);
    assert!(
        mine["metrics"]
            .as_array()
            .expect("metrics")
            .iter()
            .all(|m| m["series"].as_array().is_some_and(Vec::is_empty)),
        "{mine}"
    );
    assert_eq!(mine["by_model"], serde_json::json!([]));
    app.stop().await;
}
