//! The shipped assets against the catalogue (drift test): every metric a dashboard panel,
//! dashboard variable or rule names exists in `catalog.rs` (or is a recording rule of
//! `alerts/`), with the labels its matchers and groupings use; every catalogue family an operator
//! needs is on some dashboard; panels have a description, a unit and the `${datasource}`
//! variable; alerts have severity, summary, description and a runbook section.
//! (That every query returns data is scripts/e2e-assets.sh, against a real Prometheus.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gatemeter::catalog::{self, Kind, Metric};
use serde_json::Value;

/// Catalogue families deliberately on no dashboard, and why.
const OFF_DASHBOARDS: &[(&str, &str)] = &[
    (
        "ai_gateway_uptime_seconds",
        "the seed's name for gatemeter_uptime_seconds (same value), which the self-monitoring dashboard shows",
    ),
    (
        "gatemeter_otlp_unused_items",
        "which OTLP sources gatemeter does not read yet, by scope or event name: an operator's ad-hoc query; its total is the use=\"unused\" series of the self-monitoring dashboard's OTLP panel",
    ),
];

/// The dashboards the product ships (issue 18), by file name.
const DASHBOARDS: &[&str] = &[
    "claude-code.json",
    "gatemeter-self.json",
    "gateway-overview.json",
    "leaderboards.json",
    "model-cost.json",
    "namespace.json",
    "provider-availability.json",
    "sessions.json",
];

/// Series Prometheus itself makes, which rules and dashboards may use: name and labels.
const PROMETHEUS_OWN: &[(&str, &[&str])] = &[("up", &["job", "instance"])];

/// Labels every scraped series carries.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Attribute labels the Claude Code metrics carry (OTLP attributes, `.` → `_`), which the
/// catalogue cannot list (see `catalog::CC_SESSIONS`): the ones the dashboards may use.
const CLAUDE_CODE_ATTRIBUTES: &[&str] = &[
    "model",
    "type",
    "decision",
    "language",
    "source",
    "start_type",
    "team_id",
    "tool_name",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- A small PromQL reader: selectors (name and matcher labels) and grouping labels. ----

#[derive(Debug, Default, PartialEq)]
struct Uses {
    /// Metric names with the label names of their matchers.
    selectors: Vec<(String, Vec<String>)>,
    /// Labels named by `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    grouping: Vec<String>,
    /// Grafana variables (`$name`, not `$__…`).
    variables: BTreeSet<String>,
}

/// Operators and aggregations (an aggregation may be followed by `by (…)` before its parenthesis).
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "Inf",
    "NaN",
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The names, matcher labels and grouping labels of a PromQL expression (Grafana variables allowed).
fn promql_uses(expr: &str) -> Uses {
    let s: Vec<char> = expr.chars().collect();
    let mut uses = Uses::default();
    // Grafana variables, wherever they are (matcher values included).
    for (at, _) in expr.match_indices('$') {
        let name: String = expr[at + 1..]
            .chars()
            .take_while(|&c| is_ident(c))
            .collect();
        if !name.is_empty() && !name.starts_with("__") {
            uses.variables.insert(name);
        }
    }
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < s.len() {
        let c = s[i];
        if c == '$' {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < s.len() && s[i] != c {
                i += if s[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '[' {
            while i < s.len() && s[i] != ']' {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let next = skip_ws(i);
            if GROUPING.contains(&word.as_str()) {
                if s.get(next) == Some(&'(') {
                    let end = (next..s.len()).find(|&j| s[j] == ')').unwrap_or(s.len());
                    let inner: String = s[next + 1..end].iter().collect();
                    uses.grouping.extend(
                        inner
                            .split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(String::from),
                    );
                    i = end + 1;
                }
            } else if KEYWORDS.contains(&word.as_str()) || s.get(next) == Some(&'(') {
                // An operator keyword, or a function / aggregation.
            } else {
                let mut labels = Vec::new();
                if s.get(next) == Some(&'{') {
                    let end = matcher_end(&s, next);
                    let inner: String = s[next + 1..end].iter().collect();
                    labels = matcher_labels(&inner);
                    i = end + 1;
                }
                uses.selectors.push((word, labels));
            }
        } else {
            i += 1;
        }
    }
    uses
}

/// Index of the `}` closing the matcher list opened at `open` (quotes respected).
fn matcher_end(s: &[char], open: usize) -> usize {
    let mut j = open + 1;
    while j < s.len() && s[j] != '}' {
        if s[j] == '"' || s[j] == '\'' {
            let q = s[j];
            j += 1;
            while j < s.len() && s[j] != q {
                j += if s[j] == '\\' { 2 } else { 1 };
            }
        }
        j += 1;
    }
    j
}

/// The label names of a matcher list's inside (`a="x", b=~"y|z"`).
fn matcher_labels(inner: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = inner;
    loop {
        rest = rest.trim_start_matches([',', ' ', '\n']);
        let Some(op) = rest.find(['=', '!']) else {
            break;
        };
        out.push(rest[..op].trim().to_string());
        let Some(q1) = rest[op..].find('"').map(|p| p + op) else {
            break;
        };
        let Some(q2) = rest[q1 + 1..].find('"').map(|p| p + q1 + 1) else {
            break;
        };
        rest = &rest[q2 + 1..];
    }
    out
}

// ---- The assets. ----

struct Expr {
    /// Where it is, for messages.
    place: String,
    promql: String,
}

fn dashboards() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("dashboards")).expect("dashboards/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let d: Value = serde_json::from_str(&read(&path)).expect("dashboard JSON");
            out.push((
                path.file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned(),
                d,
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = out.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(names, DASHBOARDS, "dashboards/");
    out
}

fn panels(d: &Value) -> impl Iterator<Item = &Value> {
    d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
}

/// Every panel query and variable query of every dashboard (`label_values(m, l)` as `m` and a `by (l)`).
fn dashboard_exprs() -> Vec<Expr> {
    let mut out = Vec::new();
    for (file, d) in dashboards() {
        for p in panels(&d) {
            for t in p["targets"].as_array().expect("targets") {
                out.push(Expr {
                    place: format!("{file}: panel {:?}", p["title"]),
                    promql: t["expr"].as_str().expect("expr").to_string(),
                });
            }
        }
        for v in d["templating"]["list"].as_array().expect("templating") {
            if let Some(def) = v["definition"].as_str() {
                let inner = def
                    .strip_prefix("label_values(")
                    .and_then(|r| r.strip_suffix(')'))
                    .unwrap_or_else(|| panic!("{file}: variable query {def}"));
                let (metric, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
                out.push(Expr {
                    place: format!("{file}: variable {:?}", v["name"]),
                    promql: format!("sum by ({}) ({})", label.trim(), metric.trim()),
                });
            }
        }
    }
    out
}

#[derive(Debug)]
struct Rule {
    file: String,
    record: Option<String>,
    alert: Option<String>,
    expr: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for file in ["recording.rules.yml", "alerts.rules.yml"] {
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&read(&root().join("alerts").join(file))).expect("rules YAML");
        for g in doc["groups"].as_sequence().expect("groups") {
            for r in g["rules"].as_sequence().expect("rules") {
                let map = |k: &str| -> BTreeMap<String, String> {
                    r[k].as_mapping()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| {
                                    (
                                        k.as_str().expect("string key").to_string(),
                                        v.as_str().expect("string value").to_string(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                };
                out.push(Rule {
                    file: file.to_string(),
                    record: r["record"].as_str().map(String::from),
                    alert: r["alert"].as_str().map(String::from),
                    expr: r["expr"].as_str().expect("expr").to_string(),
                    labels: map("labels"),
                    annotations: map("annotations"),
                });
            }
        }
    }
    out
}

/// The labels a catalogue family's samples may carry, given the sample name used.
fn allowed_labels(sample: &str, m: &Metric) -> BTreeSet<String> {
    let mut labels: BTreeSet<String> = m.labels.iter().map(|l| l.to_string()).collect();
    labels.extend(TARGET_LABELS.iter().map(|l| l.to_string()));
    if m.kind == Kind::Histogram && sample.ends_with("_bucket") {
        labels.insert("le".into());
    }
    if catalog::CLAUDE_CODE_METRICS
        .iter()
        .any(|(_, f, _)| f.name == m.name)
    {
        labels.extend(CLAUDE_CODE_ATTRIBUTES.iter().map(|l| l.to_string()));
    }
    labels
}

/// Problems of one expression: unknown names, labels its family does not have.
fn check_expr(e: &Expr, recorded: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let uses = promql_uses(&e.promql);
    let mut problems = Vec::new();
    let mut available: BTreeSet<String> = BTreeSet::new();
    for (name, matchers) in &uses.selectors {
        let allowed: BTreeSet<String> = if let Some(labels) = recorded.get(name) {
            labels.clone()
        } else if let Some((_, labels)) = PROMETHEUS_OWN.iter().find(|(n, _)| n == name) {
            labels.iter().map(|l| l.to_string()).collect()
        } else if let Some(m) = catalog::find_by_sample(name) {
            allowed_labels(name, m)
        } else {
            problems.push(format!(
                "{}: {name} is neither a catalogue sample nor a recording rule",
                e.place
            ));
            continue;
        };
        for l in matchers {
            if l != "__name__" && !allowed.contains(l) {
                problems.push(format!(
                    "{}: {name} has no label {l} (it has {allowed:?})",
                    e.place
                ));
            }
        }
        available.extend(allowed);
    }
    for l in &uses.grouping {
        if !available.contains(l) {
            problems.push(format!(
                "{}: groups by {l}, which none of its series has",
                e.place
            ));
        }
    }
    problems
}

/// Recording rule names and the labels their series carry (grouping labels plus `labels:`).
fn recorded_labels(rules: &[Rule]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in rules {
        if let Some(name) = &r.record {
            let uses = promql_uses(&r.expr);
            let mut labels: BTreeSet<String> = r.labels.keys().cloned().collect();
            labels.extend(uses.grouping.into_iter().filter(|l| l != "le"));
            for (n, _) in &uses.selectors {
                if let Some(inherited) = out.get(n) {
                    labels.extend(inherited.iter().cloned());
                }
            }
            out.entry(name.clone()).or_default().extend(labels);
        }
    }
    out
}

#[test]
fn every_name_and_label_in_dashboards_and_rules_is_in_the_catalogue() {
    let rules = rules();
    let recorded = recorded_labels(&rules);
    let mut exprs = dashboard_exprs();
    exprs.extend(rules.iter().map(|r| Expr {
        place: format!(
            "{}: {}",
            r.file,
            r.record.as_deref().or(r.alert.as_deref()).unwrap_or("?")
        ),
        promql: r.expr.clone(),
    }));
    assert!(exprs.len() > 100, "{} expressions", exprs.len());
    let problems: Vec<String> = exprs
        .iter()
        .flat_map(|e| check_expr(e, &recorded))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_family_an_operator_needs_is_on_a_dashboard() {
    let mut used: BTreeSet<&'static str> = BTreeSet::new();
    for e in dashboard_exprs() {
        for (name, _) in promql_uses(&e.promql).selectors {
            if let Some(m) = catalog::find_by_sample(&name) {
                used.insert(m.name);
            }
        }
    }
    let missing: Vec<&str> = catalog::ALL
        .iter()
        .map(|m| m.name)
        .filter(|n| !used.contains(n) && !OFF_DASHBOARDS.iter().any(|(o, _)| o == n))
        .collect();
    assert!(
        missing.is_empty(),
        "on no dashboard and not in OFF_DASHBOARDS: {missing:?}"
    );
    for (name, _) in OFF_DASHBOARDS {
        assert!(
            catalog::ALL.iter().any(|m| m.name == *name),
            "{name} left the catalogue"
        );
        assert!(
            !used.contains(name),
            "{name} is on a dashboard now: remove it from OFF_DASHBOARDS"
        );
    }
}

#[test]
fn panels_have_description_unit_and_the_datasource_variable() {
    for (file, d) in dashboards() {
        let vars: BTreeSet<String> = d["templating"]["list"]
            .as_array()
            .expect("templating")
            .iter()
            .map(|v| v["name"].as_str().expect("name").to_string())
            .collect();
        assert!(
            vars.contains("datasource"),
            "{file}: no datasource variable"
        );
        assert!(
            d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{file}: schemaVersion"
        );
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or("?");
            assert!(
                p["description"].as_str().is_some_and(|s| s.len() > 10),
                "{file}: {title}: description"
            );
            assert!(
                p["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .is_some_and(|u| !u.is_empty()),
                "{file}: {title}: unit"
            );
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{file}: {title}");
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{file}: {title}: no query");
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{file}: {title}");
                for v in promql_uses(t["expr"].as_str().expect("expr")).variables {
                    assert!(
                        vars.contains(&v),
                        "{file}: {title}: ${v} is not a dashboard variable"
                    );
                }
            }
        }
        // No data source uid is written anywhere but as the variable.
        let text = d.to_string();
        for (i, _) in text.match_indices("\"uid\":") {
            let rest = &text[i + 6..];
            assert!(
                rest.starts_with("\"${datasource}\"") || rest.starts_with("\"gatemeter-"),
                "{file}: hard-coded uid near {}",
                &rest[..rest.len().min(40)]
            );
        }
    }
}

#[test]
fn every_alert_has_severity_summary_description_and_a_runbook_section() {
    let runbook = read(&root().join("alerts/runbook.md"));
    let tests =
        read(&root().join("alerts/rules.test.yml")) + &read(&root().join("alerts/cost.test.yml"));
    let alerts: Vec<Rule> = rules().into_iter().filter(|r| r.alert.is_some()).collect();
    assert!(alerts.len() >= 11);
    for r in alerts {
        let name = r.alert.as_deref().expect("alert");
        assert!(
            matches!(
                r.labels.get("severity").map(String::as_str),
                Some("critical" | "warning")
            ),
            "{name}"
        );
        assert!(
            r.labels.contains_key("scope"),
            "{name}: scope (inhibition) label"
        );
        for k in ["summary", "description", "runbook"] {
            assert!(
                r.annotations.get(k).is_some_and(|v| !v.is_empty()),
                "{name}: annotation {k}"
            );
        }
        assert_eq!(
            r.annotations["runbook"],
            format!("alerts/runbook.md#{}", name.to_lowercase())
        );
        assert!(
            runbook.contains(&format!("\n## {name}\n")),
            "{name}: no section in alerts/runbook.md"
        );
        // A firing case (exp_alerts with labels) and a not-firing case (exp_alerts: []).
        let cases: Vec<&str> = tests
            .split("alertname: ")
            .skip(1)
            .filter(|c| c.starts_with(&format!("{name}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_labels")),
            "{name}: no firing unit test"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{name}: no not-firing unit test"
        );
    }
}

#[test]
fn the_promql_reader_finds_names_labels_and_mistakes() {
    let u = promql_uses(
        r#"sum by (provider, le) (rate(model_request_duration_seconds_bucket{provider=~"$provider", model!="a,b"}[$__rate_interval] offset 1d)) / on () group_left x:y:z > 0.5 and 1e3"#,
    );
    assert_eq!(
        u.selectors,
        vec![
            (
                "model_request_duration_seconds_bucket".to_string(),
                vec!["provider".to_string(), "model".to_string()]
            ),
            ("x:y:z".to_string(), vec![]),
        ]
    );
    assert_eq!(u.grouping, ["provider", "le"]);
    assert_eq!(u.variables, BTreeSet::from(["provider".to_string()]));
    // The check fails on a misspelt family, a label the family lacks and a grouping label no
    // series has; it passes the same query written correctly.
    let recorded = BTreeMap::new();
    let check = |q: &str| {
        check_expr(
            &Expr {
                place: "t".into(),
                promql: q.into(),
            },
            &recorded,
        )
    };
    assert_eq!(
        check("sum(rate(gatemeter_provider_request_total[5m]))").len(),
        1
    );
    assert_eq!(
        check(r#"sum(rate(gatemeter_provider_requests_total{model="x"}[5m]))"#).len(),
        1
    );
    assert_eq!(
        check("sum by (namespace) (rate(gatemeter_provider_requests_total[5m]))").len(),
        1
    );
    assert!(
        check(r#"sum by (provider) (rate(gatemeter_provider_requests_total{provider!=""}[5m]))"#)
            .is_empty()
    );
}
