//! The effective settings of a validated [`Config`] as YAML in the file's own shape (the keys of
//! `config/gatemeter.example.yaml`, defaults and environment overrides applied), for
//! `gatemeter check-config`. Secrets are masked: tokens print as `<hidden>`, URLs without their
//! password.

use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use super::{Config, LiveStoreKind};
use crate::store::redis::redact_url;
use crate::store::sql::SqlBackend;

/// What a token prints as.
pub const HIDDEN: &str = "<hidden>";

/// A YAML mapping built key by key, in order.
#[derive(Default)]
struct Map(Mapping);

impl Map {
    fn put(mut self, key: &str, v: impl Into<Value>) -> Self {
        self.0.insert(Value::from(key), v.into());
        self
    }

    fn secs(self, key: &str, d: Duration) -> Self {
        self.put(key, d.as_secs())
    }

    fn ms(self, key: &str, d: Duration) -> Self {
        self.put(key, d.as_millis() as u64)
    }

    fn value(self) -> Value {
        Value::Mapping(self.0)
    }
}

/// A decimal printed by `price.rs` as a YAML number (it is exact: at most 6 decimals).
fn number(s: &str) -> Value {
    serde_yaml_ng::from_str(s).unwrap_or_else(|_| Value::from(s))
}

/// A path as text; `""` for none.
fn path(p: Option<&std::path::Path>) -> Value {
    Value::from(p.map(|p| p.display().to_string()).unwrap_or_default())
}

/// `listen_tls` / `metrics_listen_tls`.
fn listen_tls(t: &crate::server::ListenTls) -> Value {
    Map::default()
        .put("cert_file", path(Some(&t.cert_file)))
        .put("key_file", path(Some(&t.key_file)))
        .value()
}

fn hidden(tokens: &[String]) -> Value {
    Value::Sequence(tokens.iter().map(|_| Value::from(HIDDEN)).collect())
}

/// The settings of `c` as YAML text.
pub fn yaml(c: &Config) -> String {
    let s = &c.server;
    let server = Map::default()
        .secs("header_timeout_secs", s.header_timeout)
        .secs("body_timeout_secs", s.body_timeout)
        .secs("idle_timeout_secs", s.idle_timeout)
        .put("max_connections", s.max_connections as u64)
        .secs("shutdown_timeout_secs", s.shutdown_timeout);
    let l = &c.pipeline.limits;
    let ingest = Map::default()
        .put("max_body_bytes", c.ingest.max_body_bytes as u64)
        .put(
            "max_records_per_request",
            c.ingest.max_records_per_request as u64,
        )
        .put("pending_timeout_secs", (l.pending_timeout_ms / 1000) as u64)
        .put("max_pending", l.max_pending as u64)
        .put("dedup_window", l.dedup_window as u64);
    let pipeline = Map::default()
        .put("queue_capacity", c.pipeline.queue_capacity as u64)
        .ms("flush_interval_ms", c.pipeline.flush_interval)
        .put(
            "max_series_per_dimension",
            l.max_series_per_dimension as u64,
        )
        .put("max_series", c.pipeline.max_series);
    let (models, multipliers) = c.prices.describe();
    let mut model_map = Map::default();
    for (name, p) in &models {
        let keys = [
            "input",
            "output",
            "cache_write_5m",
            "cache_write_1h",
            "cache_read",
        ];
        let mut m = Map::default();
        for (k, v) in keys.iter().zip(p) {
            m = m.put(k, number(v));
        }
        model_map = model_map.put(name, m.value());
    }
    let mut mult_map = Map::default();
    for (provider, m) in &multipliers {
        mult_map = mult_map.put(provider, number(m));
    }
    let mut rates = Map::default();
    for (code, r) in c.prices.exchange_rates() {
        rates = rates.put(&code, number(&r));
    }
    let pricing = Map::default()
        .put("provider_multipliers", mult_map.value())
        .put("models", model_map.value())
        .put("exchange_rates", rates.value());
    let o = &c.otlp;
    let otlp = Map::default()
        .put(
            "namespace_attribute",
            o.mapping.namespace_attribute.clone().unwrap_or_default(),
        )
        .put(
            "label_allowlist",
            Value::Sequence(
                o.mapping
                    .label_allowlist
                    .iter()
                    .map(|a| Value::from(a.as_str()))
                    .collect(),
            ),
        )
        .put(
            "max_series_per_metric",
            o.limits.max_series_per_metric as u64,
        )
        .put("max_streams", o.limits.max_streams as u64)
        .put("max_tools", o.limits.max_tools as u64)
        .put("queue_capacity", o.queue_capacity as u64)
        .put(
            "genai_event_sources",
            Value::Sequence(
                o.mapping
                    .genai_event_sources
                    .iter()
                    .map(|a| Value::from(a.as_str()))
                    .collect(),
            ),
        )
        .put(
            "genai_metric_sources",
            Value::Sequence(
                o.mapping
                    .genai_metric_sources
                    .iter()
                    .map(|a| Value::from(a.as_str()))
                    .collect(),
            ),
        );
    let r = &c.redis;
    let mut redis = Map::default()
        .put("url", redact_url(&r.url))
        .put("ca_file", path(r.ca.as_ref().map(|c| c.path.as_path())));
    if let Some(s) = &r.sentinel {
        let nodes = s.nodes.iter().map(|n| Value::from(redact_url(n))).collect();
        let sentinel = Map::default()
            .put("master_name", s.master_name.as_str())
            .put("nodes", Value::Sequence(nodes));
        redis = redis.put("sentinel", sentinel.value());
    }
    let redis = redis
        .put("key_prefix", r.key_prefix.as_str())
        .put("instance_id", r.instance_id.as_str())
        .ms("flush_interval_ms", r.flush_interval)
        .ms("refresh_interval_ms", r.refresh_interval)
        .ms("command_timeout_ms", r.command_timeout)
        .ms("connect_timeout_ms", r.connect_timeout)
        .ms("max_backoff_ms", r.max_backoff)
        .secs("heartbeat_ttl_secs", r.heartbeat_ttl);
    let log_store = match &c.log_store {
        None => Map::default().put("kind", "none"),
        Some(sql) => {
            let m = match &sql.backend {
                SqlBackend::Sqlite { path } => Map::default()
                    .put("kind", "sqlite")
                    .put("path", path.display().to_string()),
                SqlBackend::Postgres { url } => Map::default()
                    .put("kind", "postgres")
                    .put("url", redact_url(url)),
            };
            m.put("queue_capacity", sql.queue_capacity as u64)
                .put("queue_bytes", sql.queue_bytes as u64)
                .put("sqlite_cache_bytes", sql.sqlite_cache_bytes)
                .put("batch_rows", sql.batch_rows as u64)
                .put("write_concurrency", sql.write_concurrency as u64)
                .put("log_retention_days", u64::from(sql.retention_days))
                .put("rollups", sql.rollups)
                .put("store_requests", c.ingest.keep_requests.is_some())
                .put(
                    "max_request_bytes",
                    c.ingest.keep_requests.unwrap_or(65_536) as u64,
                )
        }
    }
    .put("export_max_rows", c.export_max_rows);
    let a = &c.auth;
    let mut users = Map::default();
    for (_, user) in &a.user_tokens {
        users = users.put(user, HIDDEN);
    }
    let mut auth = Map::default()
        .put("ingest_tokens", hidden(&a.ingest_tokens))
        .put("admin_tokens", hidden(&a.admin_tokens))
        // Token → user in the file; here user → hidden token (a user may have several).
        .put("user_tokens", users.value());
    if a.metrics_token.is_some() {
        auth = auth.put("metrics_token", HIDDEN);
    }
    let auth = auth.put("allow_open", a.allow_open);
    let an = &c.analytics;
    let analytics = Map::default()
        .put("time_zone", an.time_zone.name())
        .put("users_see_leaderboards", an.users_see_leaderboards)
        .put("session_active_secs", an.session_active_secs)
        .put("top_n", an.top_n as u64)
        .put("refresh_secs", an.refresh_secs);
    let mut root = Map::default().put("listen", c.listen.to_string());
    if let Some(t) = &c.listen_tls {
        root = root.put("listen_tls", listen_tls(t));
    }
    root = root.put(
        "metrics_listen",
        c.metrics_listen.map(|a| a.to_string()).unwrap_or_default(),
    );
    if let Some(t) = &c.metrics_listen_tls {
        root = root.put("metrics_listen_tls", listen_tls(t));
    }
    let mut root = root
        .put("server", server.value())
        .put(
            "live_store",
            match c.live_store {
                LiveStoreKind::Memory => "memory",
                LiveStoreKind::Redis => "redis",
            },
        )
        .put("ingest", ingest.value())
        .put("pipeline", pipeline.value())
        .put("pricing", pricing.value())
        .put("otlp", otlp.value());
    if let Some(x) = &c.otlp_export {
        root = root.put(
            "otlp_export",
            Map::default()
                .put("endpoint", redact_url(&x.endpoint.to_string()))
                .put("batch_size", x.batch_size as u64)
                .ms("interval_ms", x.interval)
                .put("queue_capacity", x.queue_capacity as u64)
                .ms("timeout_ms", x.timeout)
                .put("max_retries", u64::from(x.max_retries))
                .put("compression", if x.gzip { "gzip" } else { "none" })
                .put("ca_file", path(x.ca_file.as_deref()))
                .put("headers", {
                    let mut h = Map::default();
                    for (name, _) in &x.headers {
                        h = h.put(name.as_str(), HIDDEN);
                    }
                    h.value()
                })
                .value(),
        );
    }
    root = root
        .put("redis", redis.value())
        .put("log_store", log_store.value());
    root = match &c.spool {
        None => root.put("durability", "none"),
        Some(sp) => root.put("durability", "spool").put(
            "spool",
            Map::default()
                .put("dir", sp.dir.display().to_string())
                .put("max_bytes", sp.max_bytes)
                .put("segment_bytes", sp.segment_bytes)
                .value(),
        ),
    };
    let probes = Value::Sequence(
        c.probes
            .iter()
            .map(|p| {
                Map::default()
                    .put("name", p.name.as_str())
                    .put("provider", p.provider.as_str())
                    .put("interval_secs", p.interval.as_secs())
                    .put("timeout_ms", p.timeout.as_millis() as u64)
                    .value()
            })
            .collect(),
    );
    let mut backup = Map::default();
    if let Some(path) = &c.backup.pg_dump_path {
        backup = backup.put("pg_dump_path", path.display().to_string());
    }
    let root = root
        .put("auth", auth.value())
        .put("analytics", analytics.value())
        .put("backup", backup.value())
        .put("probes", probes);
    serde_yaml_ng::to_string(&root.value()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TLS settings are printed; a PostgreSQL URL's passwords are not.
    #[test]
    fn tls_settings_are_printed_and_passwords_hidden() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        let k = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        std::fs::write(dir.path().join("c.pem"), k.cert.pem()).expect("write");
        std::fs::write(dir.path().join("k.pem"), k.signing_key.serialize_pem()).expect("write");
        let c = Config::from_yaml_str(
            &format!(
                "listen_tls: {{cert_file: {d}/c.pem, key_file: {d}/k.pem}}\n\
                 redis: {{url: 'rediss://:pw-one@r:6380/', ca_file: {d}/c.pem, sentinel: {{master_name: mm, nodes: ['rediss://:pw-four@s1:26379', 'redis://s2:26379']}}}}\n\
                 otlp_export: {{endpoint: 'https://c/v1/logs', ca_file: {d}/c.pem}}\n\
                 log_store: {{kind: postgres, url: 'postgres://u:pw-two@db/gm?sslmode=verify-full&password=pw-three&sslrootcert={d}/c.pem'}}\n"
            ),
            std::path::Path::new("t.yaml"),
            &|_| None,
        )
        .expect("valid");
        let text = yaml(&c);
        for secret in ["pw-one", "pw-two", "pw-three", "pw-four"] {
            assert!(!text.contains(secret), "{secret} printed:\n{text}");
        }
        let v: Value = serde_yaml_ng::from_str(&text).expect("YAML");
        let file = |f: &str| Value::from(format!("{d}/{f}"));
        assert_eq!(v["listen_tls"]["key_file"], file("k.pem"));
        assert_eq!(v["redis"]["ca_file"], file("c.pem"));
        let sentinel = &v["redis"]["sentinel"];
        assert_eq!(sentinel["master_name"], Value::from("mm"));
        assert_eq!(sentinel["nodes"][0], Value::from("rediss://***@s1:26379"));
        assert_eq!(sentinel["nodes"][1], Value::from("redis://s2:26379"));
        assert_eq!(v["otlp_export"]["ca_file"], file("c.pem"));
        let url = v["log_store"]["url"].as_str().expect("url");
        assert!(
            url.contains("sslmode=verify-full&password=***&sslrootcert="),
            "{url}"
        );
    }
}
