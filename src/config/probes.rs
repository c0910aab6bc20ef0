//! The `probes:` section, validated into the probe runner's [`ProbeConfig`]s. Header values
//! come from the environment (`value_from_env`) so that no secret sits in the file; messages
//! name the entry and key (`probes[2].headers[0].value_from_env`), never a value.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};
use crate::probe::{MAX_PROBES, Method, ProbeConfig, Secret, Target};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    name: String,
    provider: String,
    target: super::RawUrl,
    method: Option<String>,
    #[serde(default)]
    expect_status: Vec<u16>,
    #[serde(default)]
    headers: Vec<RawHeader>,
    ca_file: Option<PathBuf>,
    interval_secs: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    value: Option<String>,
    value_from_env: Option<String>,
}

impl std::fmt::Debug for RawHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawHeader")
            .field("name", &self.name)
            .field("value_from_env", &self.value_from_env)
            .finish_non_exhaustive()
    }
}

/// Default time between runs.
pub const DEFAULT_INTERVAL_SECS: u64 = 30;
/// Default timeout of one run.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;

fn label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `probes:`, in order.
pub(super) fn validate(
    raw: Vec<RawProbe>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<ProbeConfig>, ConfigError> {
    if raw.len() > MAX_PROBES {
        return Err(invalid(
            "probes",
            format!("{} probes; at most {MAX_PROBES}", raw.len()),
        ));
    }
    let mut names = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, p)| {
            let key = |k: &str| format!("probes[{i}].{k}");
            if !label_ok(&p.name) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "{:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                        p.name
                    ),
                ));
            }
            if !names.insert(p.name.clone()) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is the name of an earlier probe", p.name),
                ));
            }
            if !label_ok(&p.provider) {
                return Err(invalid(
                    key("provider"),
                    format!(
                        "{:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                        p.provider
                    ),
                ));
            }
            let interval_secs = p.interval_secs.unwrap_or(DEFAULT_INTERVAL_SECS);
            if !(1..=86_400).contains(&interval_secs) {
                return Err(invalid(
                    key("interval_secs"),
                    format!("{interval_secs} is not between 1 and 86400"),
                ));
            }
            let timeout_ms = p
                .timeout_ms
                .unwrap_or(DEFAULT_TIMEOUT_MS.min(interval_secs * 500));
            if timeout_ms == 0 || timeout_ms > 60_000 || timeout_ms >= interval_secs * 1000 {
                return Err(invalid(
                    key("timeout_ms"),
                    format!(
                        "{timeout_ms} must be between 1 and 60000 and below the interval ({} ms)",
                        interval_secs * 1000
                    ),
                ));
            }
            let target = target(&p, i, env)?;
            Ok(ProbeConfig {
                name: p.name,
                provider: p.provider,
                target,
                interval: Duration::from_secs(interval_secs),
                timeout: Duration::from_millis(timeout_ms),
            })
        })
        .collect()
}

fn target(
    p: &RawProbe,
    i: usize,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Target, ConfigError> {
    let key = |k: &str| format!("probes[{i}].{k}");
    if let Some(rest) = p.target.0.strip_prefix("tcp://") {
        for (k, set) in [
            ("method", p.method.is_some()),
            ("expect_status", !p.expect_status.is_empty()),
            ("headers", !p.headers.is_empty()),
            ("ca_file", p.ca_file.is_some()),
        ] {
            if set {
                return Err(invalid(key(k), "only for http:// and https:// targets"));
            }
        }
        let (host, port) = rest
            .rsplit_once(':')
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| {
                invalid(
                    key("target"),
                    format!("{:?} is not tcp://host:port", p.target),
                )
            })?;
        let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            invalid(
                key("target"),
                format!("{:?}: {port:?} is not a port (1-65535)", p.target),
            )
        })?;
        return Ok(Target::Tcp {
            host: host.to_string(),
            port,
        });
    }
    let url: hyper::Uri = p
        .target
        .0
        .parse()
        .map_err(|e| invalid(key("target"), format!("{:?} is not a URL: {e}", p.target)))?;
    let https = match url.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(invalid(
                key("target"),
                format!("{:?} must start with http://, https:// or tcp://", p.target),
            ));
        }
    };
    if url.host().is_none_or(str::is_empty) {
        return Err(invalid(
            key("target"),
            format!("{:?} has no host", p.target),
        ));
    }
    if url.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(invalid(
            key("target"),
            "credentials in the URL are not accepted: send them in a header with value_from_env",
        ));
    }
    let method = match p.method.as_deref() {
        None | Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some(other) => {
            return Err(invalid(
                key("method"),
                format!("{other:?} is not GET or HEAD"),
            ));
        }
    };
    for (j, s) in p.expect_status.iter().enumerate() {
        if !(100..=599).contains(s) {
            return Err(invalid(
                key(&format!("expect_status[{j}]")),
                format!("{s} is not an HTTP status (100-599)"),
            ));
        }
    }
    let mut headers = Vec::with_capacity(p.headers.len());
    for (j, h) in p.headers.iter().enumerate() {
        let hkey = |k: &str| key(&format!("headers[{j}].{k}"));
        if hyper::header::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            return Err(invalid(
                hkey("name"),
                format!("{:?} is not a header name", h.name),
            ));
        }
        let value = match (&h.value, &h.value_from_env) {
            (Some(v), None) => v.clone(),
            (None, Some(var)) => env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                invalid(
                    hkey("value_from_env"),
                    format!("the environment variable {var} is not set or empty"),
                )
            })?,
            _ => {
                return Err(invalid(
                    hkey("value_from_env"),
                    "give exactly one of value and value_from_env",
                ));
            }
        };
        if hyper::header::HeaderValue::from_str(&value).is_err() {
            // The value is a secret: the message never shows it.
            return Err(invalid(
                hkey("value_from_env"),
                "the value is not a valid header value (control characters?)",
            ));
        }
        headers.push((h.name.to_ascii_lowercase(), Secret(value)));
    }
    if let Some(ca) = &p.ca_file {
        if !https {
            return Err(invalid(key("ca_file"), "only for https:// targets"));
        }
        crate::tls::read_pem_certificates(ca)
            .map_err(|e| invalid(key("ca_file"), e.to_string()))?;
    }
    Ok(Target::Http {
        url,
        method,
        expect_status: p.expect_status.clone(),
        headers,
        ca_file: p.ca_file.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn parse(yaml: &str) -> Result<Config, crate::config::ConfigError> {
        Config::from_yaml_str(yaml, Path::new("t.yaml"), &|k| {
            (k == "PROBE_KEY").then(|| "secret-canary-value".to_string())
        })
    }

    fn err(yaml: &str) -> String {
        parse(yaml).expect_err("invalid").to_string()
    }

    #[test]
    fn probes_validate_with_defaults_and_env_headers() {
        let c = parse(
            "probes:\n\
             - {name: a, provider: anthropic, target: 'https://api.example.com/v1/models', \
                expect_status: [200, 401], headers: [{name: X-Api-Key, value_from_env: PROBE_KEY}]}\n\
             - {name: b, provider: openai, target: 'tcp://127.0.0.1:443', interval_secs: 5, timeout_ms: 100}\n",
        )
        .expect("valid");
        assert_eq!(c.probes.len(), 2);
        assert_eq!(c.probes[0].interval, std::time::Duration::from_secs(30));
        assert_eq!(c.probes[0].timeout, std::time::Duration::from_millis(5000));
        let crate::probe::Target::Http { headers, .. } = &c.probes[0].target else {
            panic!("http")
        };
        assert_eq!(headers[0].0, "x-api-key");
        assert_eq!(headers[0].1.0, "secret-canary-value");
        assert!(!format!("{c:?}").contains("secret-canary-value"));
        assert_eq!(
            c.probes[1].target,
            crate::probe::Target::Tcp {
                host: "127.0.0.1".into(),
                port: 443
            }
        );
        assert!(parse("").expect("empty").probes.is_empty());
    }

    #[test]
    fn probe_errors_name_the_entry_and_key() {
        let base = "probes:\n- {name: a, provider: p, target: 'http://h/'";
        for (extra, key) in [
            (", interval_secs: 0}", "probes[0].interval_secs"),
            (
                ", timeout_ms: 30000, interval_secs: 30}",
                "probes[0].timeout_ms",
            ),
            (", method: POST}", "probes[0].method"),
            (", expect_status: [99]}", "probes[0].expect_status[0]"),
            (
                ", headers: [{name: x, value_from_env: NOPE}]}",
                "probes[0].headers[0].value_from_env",
            ),
            (", ca_file: /x.pem}", "probes[0].ca_file"),
        ] {
            let e = err(&format!("{base}{extra}\n"));
            assert!(e.contains(key), "{extra}: {e}");
        }
        assert!(
            err("probes:\n- {name: 'a b', provider: p, target: 'tcp://h:1'}\n")
                .contains("probes[0].name")
        );
        assert!(
            err("probes:\n- {name: a, provider: p, target: 'tcp://h:1'}\n- {name: a, provider: p, target: 'tcp://h:2'}\n")
                .contains("probes[1].name")
        );
        assert!(
            err("probes:\n- {name: a, provider: p, target: 'ftp://h/'}\n")
                .contains("probes[0].target")
        );
        assert!(
            err("probes:\n- {name: a, provider: p, target: 'tcp://h'}\n")
                .contains("probes[0].target")
        );
        assert!(
            err("probes:\n- {name: a, provider: p, target: 'tcp://h:1', method: GET}\n")
                .contains("probes[0].method")
        );
        assert!(
            err("probes:\n- {name: a, provider: p, target: 'https://u:pw@h/'}\n")
                .contains("credentials")
        );
        assert!(
            err("probes:\n- {name: a, provider: p, target: 'tcp://h:1', bogus: 1}\n")
                .contains("bogus")
        );
    }
}
