//! `/api/v1/openapi.json`: the document covers every `/api/v1` route the code registers (found in
//! the source, not in a list kept here), every route it lists is served, its query parameters
//! are the ones the handlers accept, its enum values are accepted, and it is well formed
//! (OpenAPI 3.1, responses everywhere, every `$ref` resolves). schemathesis (scripts/test.sh)
//! then checks the answers against it.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Value, json};

use crate::harness::TestApp;
use crate::sql_log::{ADMIN, ALICE, INGEST, auth_yaml, get, get_json, ingest};

const DOC: &str = "/api/v1/openapi.json";

/// Every `/api/v1` path written as a string literal in `source`, and those of them registered
/// with axum directly (`.route(`, `.route_service(`, `.nest(`): such a route would be served
/// without a description, so none may exist.
fn api_paths_in(source: &str) -> (BTreeSet<String>, Vec<String>) {
    let mut paths = BTreeSet::new();
    let mut direct = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find("\"/api/v1") {
        let lit = &rest[i + 1..];
        let end = lit.find('"').unwrap_or(lit.len());
        let path = lit[..end].split('?').next().unwrap_or_default();
        let before = rest[..i].trim_end();
        if before.ends_with(".route(")
            || before.ends_with(".route_service(")
            || before.ends_with(".nest(")
        {
            direct.push(path.to_string());
        }
        // Paths only (a message such as "/api/v1/x is ..." has a space).
        if !path.contains(char::is_whitespace) {
            paths.insert(path.to_string());
        }
        rest = &lit[end..];
    }
    (paths, direct)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The `/api/v1` routes of the crate's source, and any registered without a description.
fn routes_in_source() -> (BTreeSet<String>, Vec<String>) {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let (mut all, mut direct) = (BTreeSet::new(), Vec::new());
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        let (p, d) = api_paths_in(&text);
        all.extend(p);
        direct.extend(d.into_iter().map(|d| format!("{}: {d}", f.display())));
    }
    (all, direct)
}

/// The scan sees a route registered directly, which the document would not have.
#[test]
fn the_source_scan_finds_an_undescribed_route() {
    let src = r#"
        let r = OpenApiRouter::new().routes(routes!(list))
            .route("/api/v1/secret", get(secret));
        #[utoipa::path(get, path = "/api/v1/logs")]
        let url = "/api/v1/logs?user=a";
        let m = "see /api/v1/logs for more";
    "#;
    let (paths, direct) = api_paths_in(src);
    assert_eq!(
        paths,
        BTreeSet::from(["/api/v1/secret".to_string(), "/api/v1/logs".to_string()])
    );
    assert_eq!(direct, vec!["/api/v1/secret".to_string()]);
}

/// Resolves a local `$ref` (`#/a/b`) in `doc`.
fn resolve<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
    doc.pointer(r.strip_prefix('#')?)
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    out.push(x.as_str().unwrap_or("<not a string>").to_string());
                } else {
                    refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// A request path for a documented path: `{id}` → `1` (a log row and a session of
/// [`app_with_records`]), `{key}` → `key-a`.
fn concrete(path: &str) -> String {
    path.replace("{id}", "1")
        .replace("{key}", "key-a")
        .replace("{seq}", "1")
}

/// The query parameters of an operation (resolving `$ref`s).
fn query_params(doc: &Value, op: &Value) -> Vec<Value> {
    op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match p["$ref"].as_str() {
            Some(r) => resolve(doc, r).cloned().expect("parameter ref"),
            None => p.clone(),
        })
        .filter(|p| p["in"] == "query")
        .collect()
}

fn enum_values(doc: &Value, schema: &Value) -> Vec<String> {
    let s = match schema["$ref"].as_str() {
        Some(r) => resolve(doc, r).expect("schema ref"),
        None => schema,
    };
    let direct = s["enum"].as_array().cloned().unwrap_or_default();
    // utoipa writes an optional inline enum as oneOf [null, {enum}].
    let nested = s["oneOf"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|x| x["enum"].as_array().cloned().unwrap_or_default());
    direct
        .into_iter()
        .chain(nested)
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// Fails on a JSON text with a repeated key in an object (which `serde_json::Value` would read
/// silently, keeping the last).
fn distinct_keys(text: &str) -> Result<(), serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    struct Distinct;
    impl<'de> DeserializeSeed<'de> for Distinct {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(Distinct)
        }
    }
    impl<'de> Visitor<'de> for Distinct {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            while a.next_element_seed(Distinct)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let mut seen = BTreeSet::new();
            while let Some(k) = m.next_key::<String>()? {
                if !seen.insert(k.clone()) {
                    return Err(A::Error::custom(format!("key {k:?} appears twice")));
                }
                m.next_value_seed(Distinct)?;
            }
            Ok(())
        }
    }
    Distinct.deserialize(&mut serde_json::Deserializer::from_str(text))
}

#[test]
fn repeated_keys_are_found() {
    assert!(distinct_keys(r#"{"a": 1, "b": [{"c": 2, "d": null}]}"#).is_ok());
    let e = distinct_keys(r#"{"a": 1, "b": {"requests": 2, "requests": []}}"#).expect_err("dup");
    assert!(e.to_string().contains("requests"), "{e}");
}

async fn app_with_records() -> TestApp {
    let app = TestApp::with_config(&format!(
        "log_store:\n  kind: sqlite\n  store_requests: true\n{}",
        auth_yaml()
    ))
    .await;
    let now = gatemeter::clock::now_ms();
    let records: Vec<Value> = (0..4)
        .map(|i| {
            json!({
                "request_id": format!("r{i}"), "timestamp": now - 1000 * i, "user": "alice",
                "key": "key-a", "provider": "p", "model": "m", "status": 200,
                "duration_ms": 100, "session_id": "1",
                "request": {"headers": {"accept": "*/*"}, "body": {"model": "m"}},
            })
        })
        .collect();
    ingest(&app, Some(INGEST), &records).await;
    crate::sql_log::wait_rows(&app, Some(ADMIN), records.len()).await;
    app
}

/// Every route of the source is in the document, every documented route is served, and the
/// document is well formed.
#[tokio::test]
async fn every_route_is_described_and_the_document_is_well_formed() {
    let app = app_with_records().await;
    let (s, doc) = get_json(&app, Some(ALICE), DOC).await;
    assert_eq!(s, 200, "a user token reads the document: {doc}");
    assert_eq!(get(&app, None, DOC).await.status(), 401);
    assert_eq!(get(&app, Some(INGEST), DOC).await.status(), 403);

    let version = doc["openapi"].as_str().expect("openapi");
    assert!(version.starts_with("3.1."), "{version}");
    let paths = doc["paths"].as_object().expect("paths");

    // Every route the code registers is described (and none is registered around utoipa).
    let (in_source, direct) = routes_in_source();
    assert!(
        direct.is_empty(),
        "routes registered without a description (use routes!): {direct:?}"
    );
    assert!(
        in_source.len() >= 12,
        "the scan found too little: {in_source:?}"
    );
    let documented: BTreeSet<String> = paths.keys().cloned().collect();
    let missing: Vec<_> = in_source.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the document: {missing:?}"
    );

    // Bearer tokens, everywhere.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], json!([{ "bearer": [] }]));

    for (path, item) in paths {
        assert!(path.starts_with("/api/v1/"), "{path}");
        let ops = item.as_object().expect("path item");
        assert_eq!(
            ops.keys().collect::<Vec<_>>(),
            vec!["get"],
            "{path}: GET only"
        );
        let op = &item["get"];
        let responses = op["responses"].as_object().expect("responses");
        for code in ["200", "400", "401", "403", "503"] {
            assert!(responses.contains_key(code), "{path}: no {code} response");
        }
        for (code, r) in responses {
            let r = match r["$ref"].as_str() {
                Some(x) => resolve(&doc, x).expect("response ref"),
                None => r,
            };
            assert!(
                r["content"].as_object().is_some_and(|c| !c.is_empty()),
                "{path} {code}: no content"
            );
            if code != "200" {
                assert_eq!(
                    r["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{path} {code}"
                );
            }
        }
        // Served, and answering: 200 with a JSON object of distinct keys (or a file: CSV,
        // text, a database backup).
        let (status, json, body) = {
            let resp = get(&app, Some(ADMIN), &concrete(path)).await;
            let status = resp.status().as_u16();
            let json = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("application/json"));
            (status, json, resp.text().await.expect("body"))
        };
        assert_eq!(
            status, 200,
            "{path} is documented but answers {status}: {body}"
        );
        if json {
            distinct_keys(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        }
        // The query parameters are the ones the handler accepts: its 400 for an unknown one
        // lists them.
        let documented: BTreeSet<String> = query_params(&doc, op)
            .iter()
            .map(|p| p["name"].as_str().expect("name").to_string())
            .collect();
        let probe = format!("{}?zz_undocumented=1", concrete(path));
        let (status, v) = {
            let resp = get(&app, Some(ADMIN), &probe).await;
            let status = resp.status().as_u16();
            let text = resp.text().await.expect("body");
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        };
        if status == 400 {
            assert_eq!(v["error"], "unknown_parameter", "{probe}: {v}");
            let msg = v["message"].as_str().expect("message");
            let accepted: BTreeSet<String> = msg
                .rsplit_once("(accepted: ")
                .map(|(_, a)| a.trim_end_matches(')'))
                .unwrap_or("")
                .split(", ")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            assert_eq!(accepted, documented, "{path}: handler vs document");
        } else {
            assert!(
                documented.is_empty(),
                "{path} documents query parameters but ignores unknown ones"
            );
        }
        // Every documented enum value is accepted (a 400 may only name another parameter).
        for p in query_params(&doc, op) {
            let name = p["name"].as_str().expect("name");
            for value in enum_values(&doc, &p["schema"]) {
                let q = format!("{}?{name}={value}", concrete(path));
                // Exports answer text; their errors are JSON like every other.
                let resp = get(&app, Some(ADMIN), &q).await;
                let status = resp.status().as_u16();
                let text = resp.text().await.expect("body");
                let v = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
                let named = v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&format!("`{name}`")));
                assert!(
                    status != 400 || !named,
                    "{q}: a documented value is refused: {v}"
                );
            }
        }
    }

    // Every $ref resolves.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        assert!(resolve(&doc, r).is_some(), "dangling $ref {r}");
    }
    app.stop().await;
}

/// The document describes what this server serves: without a request log, no log routes (they
/// are not served), and the analytics routes say they answer 501.
#[tokio::test]
async fn without_a_request_log_the_document_has_no_log_routes() {
    let app = TestApp::with_config("log_store:\n  kind: none\n").await;
    let (s, doc) = get_json(&app, None, DOC).await;
    assert_eq!(s, 200, "open API: open document");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(!paths.contains_key("/api/v1/logs"), "{:?}", paths.keys());
    assert!(paths["/api/v1/leaderboard"]["get"]["responses"]["501"].is_object());
    // Not served as the log list (the OTLP fallback takes `/api` + `/v1/logs` as a prefixed
    // OTLP path, and answers a GET with 405).
    assert_ne!(get(&app, None, "/api/v1/logs").await.status(), 200);
    app.stop().await;
}
