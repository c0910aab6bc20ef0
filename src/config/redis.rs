//! The `redis:` section of the config file, validated into the Redis store's
//! [`RedisConfig`].
//!
//! The URLs may hold passwords: [`RedisConfig`]'s `Debug` never prints them, and nothing here
//! logs them.

use std::path::PathBuf;
use std::time::Duration;

use redis::IntoConnectionInfo;
use serde::Deserialize;

use super::{
    ConfigError, ENV_REDIS_SENTINEL_MASTER, ENV_REDIS_SENTINEL_NODES, ENV_REDIS_URL, invalid,
};
use crate::store::redis::{RedisCa, RedisConfig, RedisSentinel, redact_url};

/// Default Redis URL when none is configured.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379/";

/// The raw `redis:` section (serde, unknown keys rejected).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRedisConfig {
    url: Option<super::RawUrl>,
    ca_file: Option<PathBuf>,
    sentinel: Option<RawSentinel>,
    key_prefix: Option<String>,
    instance_id: Option<String>,
    flush_interval_ms: Option<u64>,
    refresh_interval_ms: Option<u64>,
    command_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    heartbeat_ttl_secs: Option<u64>,
}

/// The raw `redis.sentinel` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSentinel {
    master_name: Option<String>,
    nodes: Option<Vec<super::RawUrl>>,
}

/// Most Sentinels one config may list.
const MAX_SENTINELS: usize = 16;

fn is_tcp_url(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://")
}

/// A Sentinel's URL: `redis://` or `rediss://` (verified), database 0.
fn sentinel_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let shown = redact_url(url);
    let info = url
        .into_connection_info()
        .map_err(|e| invalid(key, format!("{shown} is not a Redis URL: {e}")))?;
    if !is_tcp_url(url) {
        return Err(invalid(
            key,
            format!("{shown}: a Sentinel is reached by redis:// or rediss://"),
        ));
    }
    if url.ends_with("#insecure") {
        return Err(invalid(
            key,
            "certificate verification cannot be turned off (#insecure); set redis.ca_file to \
             trust a private CA",
        ));
    }
    if info.redis_settings().db() != 0 {
        return Err(invalid(
            key,
            format!("{shown}: a Sentinel has no databases (the master's is redis.url's)"),
        ));
    }
    Ok(())
}

/// `redis.sentinel`, with `GATEMETER_REDIS_SENTINEL_NODES` and `…_MASTER` over its keys; `None`
/// when neither the file nor the environment mentions Sentinel.
fn sentinel(
    raw: Option<RawSentinel>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<RedisSentinel>, ConfigError> {
    let env_nodes = env(ENV_REDIS_SENTINEL_NODES).filter(|n| !n.trim().is_empty());
    let env_master = env(ENV_REDIS_SENTINEL_MASTER).filter(|m| !m.is_empty());
    if raw.is_none() && env_nodes.is_none() && env_master.is_none() {
        return Ok(None);
    }
    let raw = raw.unwrap_or_default();
    let nodes: Vec<(String, String)> = match env_nodes {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| (ENV_REDIS_SENTINEL_NODES.to_string(), u.to_string()))
            .collect(),
        None => (raw.nodes.unwrap_or_default().into_iter().enumerate())
            .map(|(i, u)| (format!("redis.sentinel.nodes[{i}]"), u.0))
            .collect(),
    };
    if nodes.is_empty() {
        return Err(invalid(
            "redis.sentinel.nodes",
            format!(
                "at least one Sentinel URL, e.g. redis://10.0.0.1:26379 (or set \
                 {ENV_REDIS_SENTINEL_NODES})"
            ),
        ));
    }
    if nodes.len() > MAX_SENTINELS {
        return Err(invalid(
            "redis.sentinel.nodes",
            format!("{} Sentinels; at most {MAX_SENTINELS}", nodes.len()),
        ));
    }
    for (key, url) in &nodes {
        sentinel_url(key, url)?;
    }
    let (master_key, master_name) = match env_master {
        Some(m) => (ENV_REDIS_SENTINEL_MASTER, Some(m)),
        None => ("redis.sentinel.master_name", raw.master_name),
    };
    let Some(master_name) = master_name.filter(|m| !m.is_empty()) else {
        return Err(invalid(
            master_key,
            "required with Sentinel: the name the Sentinels monitor the master under",
        ));
    };
    if master_name.len() > 128 || !key_part_ok(&master_name) {
        return Err(invalid(
            master_key,
            "at most 128 characters, no spaces or control characters",
        ));
    }
    Ok(Some(RedisSentinel {
        master_name,
        nodes: nodes.into_iter().map(|(_, u)| u).collect(),
    }))
}

/// `hostname-pid`: unique per running process on one host.
fn default_instance_id(env: &dyn Fn(&str) -> Option<String>) -> String {
    let host = env("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gatemeter".to_string());
    format!("{host}-{}", std::process::id())
}

fn millis(
    key: &str,
    v: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    let v = v.unwrap_or(default);
    if !(min..=max).contains(&v) {
        return Err(invalid(key, format!("{v} is not between {min} and {max}")));
    }
    Ok(Duration::from_millis(v))
}

fn key_part_ok(s: &str) -> bool {
    s.chars().all(|c| !c.is_control() && !c.is_whitespace())
}

impl RawRedisConfig {
    /// Validates; `url_override` (from `GATEMETER_REDIS_URL`) wins over the file.
    pub fn validate(
        self,
        url_override: Option<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RedisConfig, ConfigError> {
        let (url_key, url) = match url_override {
            Some(u) => (ENV_REDIS_URL, u),
            None => (
                "redis.url",
                self.url.map_or_else(|| DEFAULT_URL.into(), |u| u.0),
            ),
        };
        if let Err(e) = redis::Client::open(url.as_str()) {
            return Err(invalid(
                url_key,
                format!("{} is not a Redis URL: {e}", redact_url(&url)),
            ));
        }
        if url.starts_with("rediss://") && url.ends_with("#insecure") {
            return Err(invalid(
                url_key,
                "certificate verification cannot be turned off (#insecure); set redis.ca_file \
                 to trust a private CA",
            ));
        }
        let sentinel = sentinel(self.sentinel, env)?;
        if sentinel.is_some() && !is_tcp_url(&url) {
            return Err(invalid(
                url_key,
                format!(
                    "{}: with Sentinel, redis:// or rediss:// (its scheme, credentials and \
                     database reach the master Sentinel names; host and port are not used)",
                    redact_url(&url)
                ),
            ));
        }
        let tls_somewhere = url.starts_with("rediss://")
            || sentinel
                .iter()
                .flat_map(|s| &s.nodes)
                .any(|n| n.starts_with("rediss://"));
        let ca = match self.ca_file {
            None => None,
            Some(_) if !tls_somewhere => {
                return Err(invalid(
                    "redis.ca_file",
                    format!(
                        "only for rediss:// ({url_key} is {} and no Sentinel is rediss://)",
                        redact_url(&url)
                    ),
                ));
            }
            Some(path) => {
                let e = |m: String| invalid("redis.ca_file", m);
                crate::tls::read_pem_certificates(&path).map_err(|x| e(x.to_string()))?;
                let pem = std::fs::read(&path)
                    .map_err(|x| e(format!("CA file {}: {x}", path.display())))?;
                Some(RedisCa {
                    path,
                    pem: pem.into(),
                })
            }
        };
        let key_prefix = self.key_prefix.unwrap_or_default();
        if key_prefix.len() > 64 || !key_part_ok(&key_prefix) {
            return Err(invalid(
                "redis.key_prefix",
                "at most 64 characters, no spaces or control characters",
            ));
        }
        let instance_id = match self.instance_id.filter(|s| !s.is_empty()) {
            Some(id) => id,
            None => default_instance_id(env),
        };
        if instance_id.len() > 128 || !key_part_ok(&instance_id) || instance_id.contains('|') {
            return Err(invalid(
                "redis.instance_id",
                "at most 128 characters, no spaces, control characters or `|`",
            ));
        }
        let heartbeat = self.heartbeat_ttl_secs.unwrap_or(30);
        if !(1..=86_400).contains(&heartbeat) {
            return Err(invalid(
                "redis.heartbeat_ttl_secs",
                format!("{heartbeat} is not between 1 and 86400"),
            ));
        }
        Ok(RedisConfig {
            url,
            ca,
            sentinel,
            key_prefix,
            instance_id,
            flush_interval: millis(
                "redis.flush_interval_ms",
                self.flush_interval_ms,
                1000,
                10,
                60_000,
            )?,
            refresh_interval: millis(
                "redis.refresh_interval_ms",
                self.refresh_interval_ms,
                1000,
                10,
                60_000,
            )?,
            command_timeout: millis(
                "redis.command_timeout_ms",
                self.command_timeout_ms,
                1000,
                1,
                60_000,
            )?,
            connect_timeout: millis(
                "redis.connect_timeout_ms",
                self.connect_timeout_ms,
                1000,
                1,
                60_000,
            )?,
            max_backoff: millis(
                "redis.max_backoff_ms",
                self.max_backoff_ms,
                5000,
                10,
                300_000,
            )?,
            heartbeat_ttl: Duration::from_secs(heartbeat),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(redact_url("redis://h:1/"), "redis://h:1/");
        let c = RawRedisConfig::default()
            .validate(Some("redis://u:pw@h:1/".into()), &|_| None)
            .expect("valid");
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = RawRedisConfig::default()
            .validate(Some("http://x".into()), &|_| None)
            .expect_err("not redis");
        assert!(e.to_string().contains("GATEMETER_REDIS_URL"), "{e}");
        let raw = RawRedisConfig {
            instance_id: Some("a b".into()),
            ..RawRedisConfig::default()
        };
        let e = raw.validate(None, &|_| None).expect_err("space");
        assert!(e.to_string().contains("redis.instance_id"), "{e}");
    }

    /// A PEM file with one (self-signed) certificate in `dir`.
    fn ca_file(dir: &tempfile::TempDir) -> PathBuf {
        let pem = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        std::fs::write(&pem, cert.cert.pem()).expect("write");
        pem
    }

    #[test]
    fn a_ca_file_needs_rediss_and_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = ca_file(&dir);
        let with = |url: &str, ca: &std::path::Path| {
            RawRedisConfig {
                ca_file: Some(ca.to_path_buf()),
                ..RawRedisConfig::default()
            }
            .validate(Some(url.into()), &|_| None)
        };
        let c = with("rediss://h:6380/", &pem).expect("rediss with a CA");
        assert_eq!(c.ca.as_ref().map(|c| c.path.clone()), Some(pem.clone()));
        assert!(crate::store::redis::link::Link::new(&c, "redis").is_ok());
        let e = with("redis://h:6379/", &pem).expect_err("plain URL");
        assert!(
            e.to_string().contains("redis.ca_file: only for rediss://"),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "nothing\n").expect("write");
        let e = with("rediss://h:6380/", &junk).expect_err("no certificate");
        assert!(
            e.to_string().contains("redis.ca_file") && e.to_string().contains("junk.pem"),
            "{e}"
        );
        // Verification is never off (nor is the redis crate's insecure mode built).
        let e = RawRedisConfig::default()
            .validate(Some("rediss://h:6380/#insecure".into()), &|_| None)
            .expect_err("#insecure");
        assert!(e.to_string().contains("cannot be turned off"), "{e}");
    }

    fn with_sentinel(
        yaml: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RedisConfig, ConfigError> {
        let raw: RawRedisConfig = serde_yaml_ng::from_str(yaml).expect("YAML");
        raw.validate(None, env)
    }

    #[test]
    fn sentinel_settings_are_kept_in_order_and_never_printed() {
        let c = with_sentinel(
            "url: 'redis://:master-pw@unused:1/2'\nsentinel:\n  master_name: mymaster\n  \
             nodes: ['redis://:sentinel-pw@10.0.0.1:26379', 'redis://10.0.0.2:26379/']\n",
            &|_| None,
        )
        .expect("valid");
        let s = c.sentinel.as_ref().expect("Sentinel");
        assert_eq!(s.master_name, "mymaster");
        assert_eq!(s.nodes.len(), 2);
        assert!(s.nodes[0].contains("10.0.0.1"), "{:?}", s.nodes);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("sentinel-pw") && !shown.contains("master-pw"),
            "{shown}"
        );
        assert!(shown.contains("10.0.0.2:26379"), "{shown}");
        assert!(crate::store::redis::link::Link::new(&c, "redis").is_ok());
        // Without a `sentinel` section or its variables: the fixed address.
        let c = with_sentinel("url: 'redis://h:1/'\n", &|_| None).expect("valid");
        assert!(c.sentinel.is_none());
    }

    #[test]
    fn bad_sentinel_settings_name_their_key() {
        let err = |yaml: &str| with_sentinel(yaml, &|_| None).expect_err(yaml).to_string();
        let e = err("sentinel: {nodes: ['redis://s:26379']}\n");
        assert!(e.contains("redis.sentinel.master_name: required"), "{e}");
        let e = err("sentinel: {master_name: m}\n");
        assert!(e.contains("redis.sentinel.nodes: at least one"), "{e}");
        let e = err("sentinel: {master_name: m, nodes: ['redis://s:1', 'http://s:2']}\n");
        assert!(e.contains("redis.sentinel.nodes[1]"), "{e}");
        let e = err("sentinel: {master_name: m, nodes: ['redis://:pw@s:1/3']}\n");
        assert!(
            e.contains("redis.sentinel.nodes[0]") && e.contains("no databases"),
            "{e}"
        );
        assert!(!e.contains("pw@"), "password printed: {e}");
        let e = err("sentinel: {master_name: m, nodes: ['rediss://s:1/#insecure']}\n");
        assert!(e.contains("cannot be turned off"), "{e}");
        let e = err("sentinel: {master_name: 'a b', nodes: ['redis://s:1']}\n");
        assert!(e.contains("redis.sentinel.master_name"), "{e}");
        let e = err(
            "url: 'redis+unix:///tmp/r.sock'\nsentinel: {master_name: m, nodes: ['redis://s:1']}\n",
        );
        assert!(
            e.contains("redis.url") && e.contains("with Sentinel"),
            "{e}"
        );
        assert!(
            serde_yaml_ng::from_str::<RawRedisConfig>("sentinel: {master: m}\n").is_err(),
            "unknown keys are refused"
        );
    }

    /// The environment's list and name replace the file's; its errors name the variable.
    #[test]
    fn sentinel_environment_overrides() {
        let env = |nodes: &'static str| {
            move |k: &str| match k {
                ENV_REDIS_SENTINEL_NODES => Some(nodes.to_string()),
                ENV_REDIS_SENTINEL_MASTER => Some("from-env".to_string()),
                _ => None,
            }
        };
        let yaml = "sentinel: {master_name: m, nodes: ['redis://file:1']}\n";
        let c = with_sentinel(yaml, &env(" redis://a:1, rediss://b:2 ,")).expect("valid");
        let s = c.sentinel.expect("Sentinel");
        assert_eq!(s.master_name, "from-env");
        assert_eq!(s.nodes, ["redis://a:1", "rediss://b:2"]);
        let e = with_sentinel(yaml, &env("redis://a:1,ftp://b"))
            .expect_err("bad URL")
            .to_string();
        assert!(e.contains(ENV_REDIS_SENTINEL_NODES), "{e}");
    }

    /// `ca_file` serves TLS to the Sentinels even when the master is plain, and the reverse.
    #[test]
    fn a_ca_file_serves_rediss_sentinels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = ca_file(&dir);
        let yaml = |url: &str, node: &str| {
            format!(
                "url: '{url}'\nca_file: {}\nsentinel: {{master_name: m, nodes: ['{node}']}}\n",
                pem.display()
            )
        };
        for (url, node) in [
            ("redis://h:1/", "rediss://s:26379"),
            ("rediss://h:1/", "redis://s:26379"),
        ] {
            let c = with_sentinel(&yaml(url, node), &|_| None).expect("valid");
            assert!(c.ca.is_some());
            assert!(crate::store::redis::link::Link::new(&c, "redis").is_ok());
        }
        let e = with_sentinel(&yaml("redis://h:1/", "redis://s:26379"), &|_| None)
            .expect_err("no TLS anywhere")
            .to_string();
        assert!(e.contains("redis.ca_file: only for rediss://"), "{e}");
    }
}
