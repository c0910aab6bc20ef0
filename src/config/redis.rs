//! The `redis:` section of the config file, validated into the Redis store's
//! [`RedisConfig`].
//!
//! The URL may hold a password: [`RedisConfig`]'s `Debug` never prints it, and nothing here logs it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, ENV_REDIS_URL, invalid};
use crate::store::redis::{RedisCa, RedisConfig, redact_url};

/// Default Redis URL when none is configured.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379/";

/// The raw `redis:` section (serde, unknown keys rejected).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRedisConfig {
    url: Option<String>,
    ca_file: Option<PathBuf>,
    key_prefix: Option<String>,
    instance_id: Option<String>,
    flush_interval_ms: Option<u64>,
    refresh_interval_ms: Option<u64>,
    command_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    heartbeat_ttl_secs: Option<u64>,
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
            None => ("redis.url", self.url.unwrap_or_else(|| DEFAULT_URL.into())),
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
        let ca = match self.ca_file {
            None => None,
            Some(_) if !url.starts_with("rediss://") => {
                return Err(invalid(
                    "redis.ca_file",
                    format!(
                        "only for a rediss:// URL ({url_key} is {})",
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

    #[test]
    fn a_ca_file_needs_rediss_and_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        std::fs::write(&pem, cert.cert.pem()).expect("write");
        let with = |url: &str, ca: &std::path::Path| {
            RawRedisConfig {
                ca_file: Some(ca.to_path_buf()),
                ..RawRedisConfig::default()
            }
            .validate(Some(url.into()), &|_| None)
        };
        let c = with("rediss://h:6380/", &pem).expect("rediss with a CA");
        assert_eq!(c.ca.as_ref().map(|c| c.path.clone()), Some(pem.clone()));
        assert!(crate::store::redis::client(&c).is_ok());
        let e = with("redis://h:6379/", &pem).expect_err("plain URL");
        assert!(
            e.to_string()
                .contains("redis.ca_file: only for a rediss://"),
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
}
